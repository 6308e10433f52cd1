"""``clipfusion bench``: throughput of each branch, the fused pipeline, and a WinCLIP-style
multi-scale sliding-window pass on the same CLIP backbone (the cost the paper argues against).

Each measurement: warm-up passes, then timed passes over random images of the dataset size
(weights do not change the cost). Reported: images per second and ms per image.
"""

from __future__ import annotations

import time

import torch

from clipfusion.clip_branch import PatchCLIP, winclip_window_map
from clipfusion.config import Config
from clipfusion.diffusion_branch import MapDiff
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


@torch.no_grad()
def run_bench(cfg: Config, runtime: Runtime, batch: int, repeats: int,
              scales: tuple[int, ...] = (2, 3)) -> dict:
    clip = PatchCLIP(cfg.clip).to(runtime.device)
    diff = MapDiff(cfg.diffusion).to(runtime.device)
    category = cfg.data.categories[0]
    size = cfg.data.image_size
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=gen).to(runtime.device)
    clip.text_embeddings(category)
    diff.prompt(category)

    def clip_pass():
        with runtime.autocast():
            f = clip.encode_images(images)
            clip.language_map(f["patches"], category)

    def diff_pass():
        with runtime.autocast():
            diff.encode_images(images, category)

    def fused_pass():
        clip_pass()
        diff_pass()

    def winclip_pass():
        with runtime.autocast():
            winclip_window_map(clip, images, category, scales=scales)

    out = {"device": runtime.device_name, "accelerator": runtime.accelerator,
           "precision": runtime.precision, "batch": batch, "image_size": size,
           "weights": {"clip": clip.weights, "diffusion": diff.weights}}
    for name, fn in (("patchclip", clip_pass), ("mapdiff", diff_pass),
                     ("fused", fused_pass), ("winclip_sliding_window", winclip_pass)):
        sec = _time(fn, runtime, repeats)
        out[name] = {"images_per_s": round(batch / sec, 3),
                     "ms_per_image": round(1000 * sec / batch, 3)}
    out["winclip_windows_per_image"] = sum(
        (clip.model.visual.grid_size[0] - k + 1) * (clip.model.visual.grid_size[1] - k + 1)
        for k in scales)
    out["speedup_fused_vs_winclip"] = round(
        out["fused"]["images_per_s"] / out["winclip_sliding_window"]["images_per_s"], 3)
    out["speedup_patchclip_vs_winclip"] = round(
        out["patchclip"]["images_per_s"] / out["winclip_sliding_window"]["images_per_s"], 3)
    return out
