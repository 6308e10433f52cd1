"""``clipfusion bench``: where the time of one test image goes, the fused pipeline before and
after this package's speed-ups, and the WinCLIP-style reference on the same CLIP backbone.

Everything is timed in one process, side by side, on random images of the configured sizes
(weights do not change the cost; random weights are used). Each number is the median of
``repeats`` timed calls after a warm-up, divided by the batch size: milliseconds per image.

- **stages** (the current path): CLIP pass (transformer + L map), VAE encode, UNet pass
  (+ attention L map and V features), memory-bank search (both branches, one k-shot bank of
  k = max(shots) references, from the per-reference table), fusion (z-scores, sum,
  smoothing, image score of the fused arm).
- **fused_protocol**: one test image through the whole cpu/paper protocol: its encoders once
  and, for every k-shot draw (shots > 0 × seeds), its V maps and fusion. "before" is the
  previous code path (NCHW convolutions under no_grad; one nearest-neighbour search per
  draw against the concatenated bank); "after" is the current one (channels-last,
  inference_mode, one batched per-reference search reused by every draw). Both give the same
  maps (tests/test_scoring.py). The reference images' own encoding (a few images per
  category, shared by all test images) is left out of both.
- **winclip_reference**: WinCLIP's pipeline on the same CLIP: the full-image pass, every
  2×2 and 3×3 window of patches through the transformer (zero-shot map) and the few-shot
  window bank (each window against the k references' windows). The ratio fused/winclip is a
  ratio of per-image latencies of two different pipelines on one backbone; it says what the
  fused method costs, not which is more accurate.
"""

from __future__ import annotations

import time

import torch

from clipfusion.clip_branch import PatchCLIP, winclip_reference, window_embeddings
from clipfusion.config import Config
from clipfusion.diffusion_branch import MapDiff, feature_distance
from clipfusion.fusion import fuse, gaussian_smooth, image_score, standardize, upsample
from clipfusion.memory import memory_bank_distance, per_reference_similarity
from reprokit.runtime import Runtime


def _time(fn, runtime: Runtime, repeats: int, warmup: int = 1) -> float:
    """Seconds per call (median of `repeats` after `warmup`)."""
    def sync():
        if runtime.accelerator == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def _fusion(maps: dict, size, cfg: Config) -> torch.Tensor:
    """The fused arm from raw maps (z-scores with fixed statistics, as at test time)."""
    z = {k: standardize(v, (0.0, 1.0)) for k, v in maps.items()}
    m = fuse(z["clip_L"] + z["clip_V"], z["diff_L"] + z["diff_V"], cfg.fusion.alpha)
    m = gaussian_smooth(upsample(m, size), cfg.fusion.smoothing_sigma)
    return image_score(m, cfg.fusion.topk_fraction, z["global"], cfg.fusion.global_weight)


def run_bench(cfg: Config, runtime: Runtime, batch: int, repeats: int,
              scales: tuple[int, ...] = (2, 3)) -> dict:
    dev = runtime.device
    clip = PatchCLIP(cfg.clip).to(dev)
    old_diff = MapDiff(cfg.diffusion).to(dev)
    diff = MapDiff(cfg.diffusion).to(dev).channels_last()
    category = cfg.data.categories[0]
    size = (cfg.data.image_size, cfg.data.image_size)
    k = max(max(cfg.shots), 1)
    draws = max(1, len([s for s in cfg.shots if s > 0]) * len(cfg.seeds))
    gen = torch.Generator().manual_seed(0)
    c_in, d_in = tuple(clip.input_size), (cfg.diffusion.image_size,) * 2
    x_clip = torch.rand(batch, 3, *c_in, generator=gen).to(dev)
    x_diff = torch.rand(batch, 3, *d_in, generator=gen).to(dev)
    r_clip = torch.rand(k, 3, *c_in, generator=gen).to(dev)
    r_diff = torch.rand(k, 3, *d_in, generator=gen).to(dev)
    clip.text_embeddings(category)
    diff.prompt(category)
    old_diff.prompt(category)
    gh, gw = clip.model.visual.grid_size

    with torch.inference_mode(), runtime.autocast():
        test_c, ref_c = clip.encode_images(x_clip), clip.encode_images(r_clip)
        test_d, ref_d = diff.encode_images(x_diff, category), diff.encode_images(r_diff,
                                                                                category)
        latents = diff.encode_latents(x_diff)
        ref_windows = [e.reshape(-1, e.shape[-1]) for _, e in window_embeddings(clip, r_clip,
                                                                                scales)]

    def flat(f):  # (B, C, h, w) -> (B, h·w, C)
        return f.flatten(2).transpose(1, 2)

    def tables():
        return ([per_reference_similarity(q, r) for q, r in zip(test_c["bank"], ref_c["bank"],
                                                                 strict=True)],
                [per_reference_similarity(flat(q), flat(r))
                 for q, r in zip(test_d["features"], ref_d["features"], strict=True)])

    def v_from_tables(tc, td, members):
        def one(table, grid):
            d = (0.5 * (1 - table[members].amax(0))).clamp_min(0).reshape(-1, *grid)
            return upsample(d, size)

        grids = [tuple(f.shape[-2:]) for f in test_d["features"]]
        return (torch.stack([one(t, (gh, gw)) for t in tc]).mean(0),
                torch.stack([one(t, g) for t, g in zip(td, grids, strict=True)]).mean(0))

    lang = {"clip_L": upsample(clip.language_map(test_c["language"], category), size),
            "diff_L": upsample(test_d["attention"], size),
            "global": clip.global_score(test_c["global"], category)}

    def search():
        tc, td = tables()
        return v_from_tables(tc, td, list(range(k)))

    def fusion():
        cv, dv = v_from_tables(*tables_once, list(range(k)))
        return _fusion({**lang, "clip_V": cv, "diff_V": dv}, size, cfg)

    tables_once = tables()

    # ---- the previous path: NCHW, no_grad, one search per draw on the concatenated bank
    @torch.no_grad()
    def before():
        with runtime.autocast():
            c = clip.encode_images(x_clip)
            d = old_diff.encode_images(x_diff, category)
        maps = {"clip_L": upsample(clip.language_map(c["language"], category), size),
                "diff_L": upsample(d["attention"], size),
                "global": clip.global_score(c["global"], category)}
        for _ in range(draws):
            bank = ref_c["bank"][0].reshape(-1, ref_c["bank"][0].shape[-1])
            cv = upsample(memory_bank_distance(c["bank"][0], bank).reshape(-1, gh, gw), size)
            dv = feature_distance(d["features"], ref_d["features"], size)
            _fusion({**maps, "clip_V": cv, "diff_V": dv}, size, cfg)

    @torch.inference_mode()
    def after():
        with runtime.autocast():
            c = clip.encode_images(x_clip)
            d = diff.encode_images(x_diff, category)
        maps = {"clip_L": upsample(clip.language_map(c["language"], category), size),
                "diff_L": upsample(d["attention"], size),
                "global": clip.global_score(c["global"], category)}
        tc = [per_reference_similarity(q, r) for q, r in zip(c["bank"], ref_c["bank"],
                                                             strict=True)]
        td = [per_reference_similarity(flat(q), flat(r))
              for q, r in zip(d["features"], ref_d["features"], strict=True)]
        for _ in range(draws):
            cv, dv = v_from_tables(tc, td, list(range(k)))
            _fusion({**maps, "clip_V": cv, "diff_V": dv}, size, cfg)

    def timed(fn):
        with torch.inference_mode(), runtime.autocast():
            return round(1000 * _time(fn, runtime, repeats) / batch, 3)

    stages = {
        "clip_pass": timed(lambda: clip.language_map(clip.encode_images(x_clip)["language"],
                                                     category)),
        "vae_encode": timed(lambda: diff.encode_latents(x_diff)),
        "unet_pass": timed(lambda: diff.unet_maps(latents, category)),
        "memory_bank_search": timed(search),
        "fusion": timed(fusion),
    }
    stages_total = round(sum(stages.values()), 3)
    before_ms = round(1000 * _time(before, runtime, repeats) / batch, 3)
    after_ms = round(1000 * _time(after, runtime, repeats) / batch, 3)
    winclip_0 = timed(lambda: winclip_reference(clip, x_clip, category, None, scales))
    winclip_k = timed(lambda: winclip_reference(clip, x_clip, category, ref_windows, scales))
    windows = sum((gh - s + 1) * (gw - s + 1) for s in scales)
    return {
        "device": runtime.device_name, "accelerator": runtime.accelerator,
        "precision": runtime.precision, "threads": torch.get_num_threads(), "batch": batch,
        "sizes": {"clip": list(c_in), "diffusion": list(d_in), "maps": list(size)},
        "weights": {"clip": clip.weights, "diffusion": diff.weights},
        "k_shot_bank": k, "draws_per_image": draws,
        "stage_ms_per_image": stages, "stages_total_ms": stages_total,
        "fused_protocol_ms_per_image": {"before": before_ms, "after": after_ms},
        "fused_protocol_images_per_s": {"before": round(1000 / before_ms, 3),
                                        "after": round(1000 / after_ms, 3)},
        "speedup_after_vs_before": round(before_ms / after_ms, 3),
        "winclip_reference_ms_per_image": {"zero_shot": winclip_0, f"{k}_shot": winclip_k},
        "winclip_windows_per_image": windows,
        "ratio_fused_vs_winclip_latency": round(stages_total / winclip_k, 3),
        "what_the_ratios_measure": (
            "speedup_after_vs_before: per-image latency of the fused pipeline over the whole "
            "shots x seeds protocol, previous code path / current (same maps); "
            "ratio_fused_vs_winclip_latency: the current fused per-image latency (sum of the "
            "stages, one k-shot bank) / WinCLIP-style full pipeline with its few-shot window "
            "bank, same CLIP backbone (> 1: fused is slower)"),
    }
