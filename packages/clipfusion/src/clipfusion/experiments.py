"""The reproduction: per category, features once, then maps, arms and metrics per shot/seed.

For each category the test images, the reference images some draw uses and the calibration
images go through both branches once (features are kept on the model's device); a k-shot
reference set for seed s is the first k images of a seeded permutation of the training
images minus the calibration images (nested: the 1-shot image is in the 2-shot set).
Zero-shot uses no reference and is deterministic, so it is evaluated once.

Scoring is per image (non-transductive): every map and the global score are z-scored with a
mean/std from normal images that are not test images (``fusion.normalization``, config.py),
so an image's map and score do not depend on the other test images. The transductive z-score
over the test set is computed next to it as the ``fused_transductive`` ablation arm.

Arms (what is scored): ``clip`` (PatchCLIP alone: L, plus V when k > 0, plus its global
score), ``diff`` (MapDiff alone: L, plus V), ``fused`` (the paper's M), for k > 0 each map
alone (``clip_L``, ``clip_V``, ``diff_L``, ``diff_V``) and ``fused_V`` (the fusion of the two
visual maps only), and ``fused_transductive``. One JSON per category
(``results/<category>.json``, written atomically) holds every record, so ``--resume`` skips
finished categories.

With ``world > 1`` processes (``--devices``), each rank encodes every world-th test image
(and all reference/calibration images, which every rank needs for the banks); rank 0
gathers the raw maps per setting, in the original order, and does the scoring, metrics and
every write. Other ranks get ``run=None``: they cannot write.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from clipfusion.clip_branch import PatchCLIP
from clipfusion.config import Config
from clipfusion.diffusion_branch import MapDiff
from clipfusion.fusion import (
    branch_map,
    fuse,
    gaussian_smooth,
    image_score,
    moments,
    standardize,
    upsample,
)
from clipfusion.memory import per_reference_similarity
from clipfusion.metrics import image_metrics, pixel_metrics, pro_curve, roc_curve
from reprokit.data.anomaly import anomaly_dataset, make_synthetic_mvtec
from reprokit.errors import ConfigError, DatasetError
from reprokit.progress import track
from reprokit.runs import RunDir
from reprokit.runtime import Runtime

ZERO_SHOT_ARMS = ("clip", "diff", "fused", "fused_transductive")
FEW_SHOT_ARMS = ("clip_L", "clip_V", "diff_L", "diff_V", "clip", "diff", "fused", "fused_V",
                 "fused_transductive")
CURVE_ARMS = ("clip", "diff", "fused")
MAP_KEYS = ("clip_L", "clip_V", "diff_L", "diff_V", "global")


@dataclass
class Features:
    clip_global: torch.Tensor  # (N, D)
    clip_language: list[torch.Tensor]  # per language block (N, gh, gw, D)
    clip_bank: list[torch.Tensor]  # per bank block (N, gh·gw, C)
    diff_attention: torch.Tensor  # (N, h, w)
    diff_features: list[torch.Tensor]  # per feature block (N, h·w, C), normalised
    diff_grids: list[tuple[int, int]]  # (h, w) of each feature block

    def select(self, index: list[int]) -> Features:
        return Features(self.clip_global[index], [x[index] for x in self.clip_language],
                        [x[index] for x in self.clip_bank], self.diff_attention[index],
                        [f[index] for f in self.diff_features], self.diff_grids)

    @staticmethod
    def cat(parts: list[Features]) -> Features:
        def join(get):
            return torch.cat([get(p) for p in parts])

        first = parts[0]
        return Features(
            join(lambda p: p.clip_global),
            [join(lambda p, i=i: p.clip_language[i]) for i in range(len(first.clip_language))],
            [join(lambda p, i=i: p.clip_bank[i]) for i in range(len(first.clip_bank))],
            join(lambda p: p.diff_attention),
            [join(lambda p, i=i: p.diff_features[i]) for i in range(len(first.diff_features))],
            first.diff_grids)


class Pipeline:
    """Both branches on one device, with per-branch timing."""

    def __init__(self, cfg: Config, runtime: Runtime):
        self.cfg = cfg
        self.runtime = runtime
        self.clip = PatchCLIP(cfg.clip).to(runtime.device)
        self.diff = MapDiff(cfg.diffusion).to(runtime.device).channels_last()
        self.seconds = {"clip": 0.0, "diff": 0.0}
        self.images_seen = 0

    @property
    def weights(self) -> dict[str, str]:
        return {"clip": self.clip.weights, "diffusion": self.diff.weights}

    @property
    def input_sizes(self) -> dict[str, tuple[int, int]]:
        """The resolution each branch reads the image files at."""
        s = self.cfg.diffusion.image_size
        return {"clip": tuple(self.clip.input_size), "diff": (s, s)}

    def _sync(self) -> None:
        if self.runtime.accelerator == "cuda":
            torch.cuda.synchronize()

    @torch.inference_mode()
    def extract(self, images: dict[str, torch.Tensor], category: str) -> Features:
        """Features of a batch; ``images`` {"clip": (B, 3, ...), "diff": (B, 3, ...)} at each
        branch's input size. Kept on the model's device (fp16 on a GPU)."""
        keep = torch.float16 if self.runtime.accelerator == "cuda" else torch.float32
        with self.runtime.autocast():
            t0 = time.perf_counter()
            c = self.clip.encode_images(images["clip"])
            self._sync()
            t1 = time.perf_counter()
            d = self.diff.encode_images(images["diff"], category)
            self._sync()
            t2 = time.perf_counter()
        self.seconds["clip"] += t1 - t0
        self.seconds["diff"] += t2 - t1
        self.images_seen += images["clip"].shape[0]
        return Features(c["global"].float(), [x.to(keep) for x in c["language"]],
                        [x.to(keep) for x in c["bank"]], d["attention"].float(),
                        [f.flatten(2).transpose(1, 2).to(keep) for f in d["features"]],
                        [tuple(f.shape[-2:]) for f in d["features"]])

    def extract_dataset(self, dataset, indices: list[int], category: str,
                        what: str) -> tuple[Features | None, dict]:
        """Features and metadata (images at the metric size, masks, labels, defect types) of
        the dataset items `indices`, in batches of ``batch_size``."""
        feats, images, masks, labels, defects = [], [], [], [], []
        bs = self.cfg.batch_size
        size = (self.cfg.data.image_size, self.cfg.data.image_size)
        sizes = self.input_sizes
        batches = range(0, len(indices), bs)
        for start in track(batches, f"{category} {what}", total=len(batches)):
            items = [dataset.load(i, [*sizes.values(), size]) for i in indices[start:start + bs]]
            batch = {b: torch.stack([it["images"][s] for it in items]) for b, s in sizes.items()}
            feats.append(self.extract(batch, category))
            images.append(torch.stack([it["images"][size] for it in items]))
            masks.append(torch.stack([it["mask"][0] for it in items]))
            labels += [it["label"] for it in items]
            defects += [it["defect"] for it in items]
        if not feats:
            return None, {"images": torch.zeros(0, 3, *size), "masks": torch.zeros(0, *size),
                          "labels": torch.zeros(0, dtype=torch.long), "defects": []}
        meta = {"images": torch.cat(images), "masks": torch.cat(masks),
                "labels": torch.tensor(labels), "defects": defects}
        return Features.cat(feats), meta


# ---------------------------------------------------------------- maps


def _similarity_tables(query: Features, refs: Features) -> dict[str, list[torch.Tensor]]:
    """Per bank block: the top-1 cosine of each query location within each reference image,
    (R, N, P) — computed once per category and reused by every k-shot draw."""
    return {"clip": [per_reference_similarity(q.float(), r.float())
                     for q, r in zip(query.clip_bank, refs.clip_bank, strict=True)],
            "diff": [per_reference_similarity(q.float(), r.float())
                     for q, r in zip(query.diff_features, refs.diff_features, strict=True)]}


def _visual_map(tables: list[torch.Tensor], members: list[int], grids: list[tuple[int, int]],
                size: tuple[int, int], query_rows: list[int] | None = None) -> torch.Tensor:
    """V map (N, *size) of the bank made of the reference images `members`: per block
    ½(1 − max over members), upsampled to `size`, averaged over blocks. `query_rows` picks
    query images (leave-one-out on the references)."""
    maps = []
    for table, grid in zip(tables, grids, strict=True):
        t = table if query_rows is None else table[:, query_rows]
        dist = (0.5 * (1.0 - t[members].amax(dim=0))).clamp_min(0.0)
        maps.append(upsample(dist.reshape(-1, *grid), size))
    return torch.stack(maps).mean(0)


def language_maps(pipe: Pipeline, feats: Features, category: str,
                  size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The maps that need no bank: both L maps at image size and the CLIP global score."""
    return {"clip_L": upsample(pipe.clip.language_map(feats.clip_language, category), size),
            "diff_L": upsample(feats.diff_attention, size),
            "global": pipe.clip.global_score(feats.clip_global, category)}


def visual_maps(tables: dict, members: list[int], feats: Features, size: tuple[int, int],
                query_rows: list[int] | None = None) -> dict[str, torch.Tensor]:
    gh, gw = feats.clip_language[0].shape[1:3]
    return {"clip_V": _visual_map(tables["clip"], members, [(gh, gw)] * len(tables["clip"]),
                                  size, query_rows),
            "diff_V": _visual_map(tables["diff"], members, feats.diff_grids, size, query_rows)}


def normal_statistics(cfg: Config, members: list[int], ref_maps: dict, ref_tables: dict,
                      cal_maps: dict, cal_tables: dict, refs: Features,
                      size: tuple[int, int]) -> dict[str, tuple[float, float]]:
    """(mean, std) of each map type and of the global score from normal images only.

    ``reference``: the L maps and global score of the k references (the global score needs
    two), the V maps leave-one-out (each reference against the bank of the other k − 1,
    needs k ≥ 2); what k cannot give comes from the calibration images (their V maps against
    the k-shot bank). ``calibration``: always the calibration images."""
    how = cfg.fusion.normalization
    k = len(members)
    stats = {}
    for key in ("clip_L", "diff_L", "global"):
        need = 2 if key == "global" else 1
        if how == "reference" and k >= need:
            stats[key] = moments(ref_maps[key][members])
        else:
            stats[key] = moments(cal_maps[key])
    if k:
        if how == "reference" and k >= 2:
            loo = [visual_maps(ref_tables, [o for o in members if o != m], refs, size, [m])
                   for m in members]
            for key in ("clip_V", "diff_V"):
                stats[key] = moments(torch.cat([v[key] for v in loo]))
        else:
            v = visual_maps(cal_tables, members, refs, size)
            for key in ("clip_V", "diff_V"):
                stats[key] = moments(v[key])
    return stats


def arm_outputs(maps: dict[str, torch.Tensor], stats: dict[str, tuple[float, float]] | None,
                cfg: Config, transductive_arm: bool = True) -> dict[str, tuple]:
    """arm -> (smoothed map (N, H, W), image score (N,)). ``stats`` None: raw maps
    (``normalization=none``); the transductive arm z-scores with the maps' own statistics."""
    f = cfg.fusion

    def z(key, table):
        if table is None:
            return maps[key].float()
        return standardize(maps[key], table.get(key))

    few = "clip_V" in maps

    def combos(table):
        g = z("global", table)
        clip = branch_map(z("clip_L", table), z("clip_V", table) if few else None)
        diff = branch_map(z("diff_L", table), z("diff_V", table) if few else None)
        return g, clip, diff

    g, clip, diff = combos(stats)
    out_maps = {"clip": (clip, True), "diff": (diff, False),
                "fused": (fuse(clip, diff, f.alpha), True)}
    if few:
        out_maps.update({
            "clip_L": (z("clip_L", stats), True), "clip_V": (z("clip_V", stats), False),
            "diff_L": (z("diff_L", stats), False), "diff_V": (z("diff_V", stats), False),
            "fused_V": (fuse(z("clip_V", stats), z("diff_V", stats), f.alpha), False)})
    if transductive_arm:
        gt, clip_t, diff_t = combos({})  # {}: every key z-scored by its own test moments
        out_maps["fused_transductive"] = (fuse(clip_t, diff_t, f.alpha), True, gt)
    out = {}
    for arm, spec in out_maps.items():
        m, uses_global = spec[0], spec[1]
        glob = spec[2] if len(spec) > 2 else g
        smooth = gaussian_smooth(m, f.smoothing_sigma)
        out[arm] = (smooth, image_score(smooth, f.topk_fraction,
                                        glob if uses_global else None, f.global_weight))
    return out


def prepare_data(cfg: Config, run: RunDir) -> str:
    d = cfg.data
    if d.kind != "synthetic":
        return d.root
    root = d.root or str(run.path / "data")
    make_synthetic_mvtec(root, categories=d.categories, n_train=d.n_train,
                         n_test_good=d.n_test_good, n_test_defect=d.n_test_defect,
                         image_size=d.image_size, seed=d.seed)
    return root


def _example_indices(defects: list[str], n: int) -> list[int]:
    """One image per defect type first (then more anomalous ones), and one good image."""
    chosen, seen = [], set()
    for i, d in enumerate(defects):
        if d != "good" and d not in seen:
            chosen.append(i)
            seen.add(d)
    chosen = chosen[: max(1, n - 1)]
    for i, d in enumerate(defects):
        if len(chosen) >= n - 1:
            break
        if d != "good" and i not in chosen:
            chosen.append(i)
    goods = [i for i, d in enumerate(defects) if d == "good"]
    if goods:
        chosen.append(goods[0])
    return chosen[:n]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def open_datasets(cfg: Config, root: str, category: str):
    """(train, test) datasets of a category, checked (a malformed folder fails here)."""
    kind = "visa" if cfg.data.kind == "visa" else "mvtec"
    size = (cfg.data.image_size, cfg.data.image_size)
    train_set = anomaly_dataset(kind, root, category, "train", size, cfg.data.split_csv)
    test_set = anomaly_dataset(kind, root, category, "test", size, cfg.data.split_csv)
    labels = test_set.labels[:cfg.data.max_test_images or None]
    if 1 not in labels or 0 not in labels:
        what = "anomalous" if 1 not in labels else "good"
        raise DatasetError(f"category {category!r}: the test set ({len(labels)} images under "
                           f"{root}) has no {what} image, so no metric can be computed")
    need = max(cfg.shots) + cfg.fusion.calibration_images
    if need > len(train_set):
        raise ConfigError(f"shots={max(cfg.shots)} plus fusion.calibration_images="
                          f"{cfg.fusion.calibration_images} need {need} training images but "
                          f"{category!r} has only {len(train_set)}")
    return train_set, test_set


def _gather(obj, rank: int, world: int) -> list | None:
    """Every rank's `obj` on rank 0 (None elsewhere); no communication with one process."""
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def _to_cpu(maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu() for k, v in maps.items()}


def run_category(pipe: Pipeline, cfg: Config, run: RunDir | None, category: str, datasets,
                 rank: int = 0, world: int = 1) -> dict | None:
    size = (cfg.data.image_size, cfg.data.image_size)
    train_set, test_set = datasets
    max_k = max(cfg.shots)
    seconds0, seen0 = dict(pipe.seconds), pipe.images_seen
    n_all = len(test_set)
    if cfg.data.max_test_images:
        n_all = min(n_all, cfg.data.max_test_images)
    mine = list(range(rank, n_all, world))
    test, meta = pipe.extract_dataset(test_set, mine, category, "test")
    # calibration images: the last ones of train/good, never in a reference draw
    n_cal = cfg.fusion.calibration_images
    pool = len(train_set) - n_cal
    cal_index = list(range(pool, len(train_set)))
    cat_index = cfg.data.categories.index(category)
    perms = {s: np.random.default_rng([s, cat_index]).permutation(pool).tolist()
             for s in cfg.seeds}
    needed = sorted({i for p in perms.values() for i in p[:max_k]}) if max_k else []
    refs, _ = pipe.extract_dataset(train_set, needed + cal_index, category, "train")
    position = {i: j for j, i in enumerate(needed)}
    ref_rows = list(range(len(needed)))
    cal_rows = list(range(len(needed), len(needed) + n_cal))
    cal = refs.select(cal_rows)
    bank_refs = refs.select(ref_rows) if needed else None
    timing = {"images": pipe.images_seen - seen0,
              **{f"{b}_seconds": pipe.seconds[b] - seconds0[b] for b in pipe.seconds}}

    # bank-free maps once; per-reference similarity tables once (every draw reuses them)
    t0 = time.perf_counter()
    test_lang = language_maps(pipe, test, category, size) if test is not None else None
    ref_maps = language_maps(pipe, refs, category, size)
    cal_maps = {k: v[cal_rows] for k, v in ref_maps.items()}
    ref_maps = {k: v[ref_rows] for k, v in ref_maps.items()}
    tables = ref_tables = cal_tables = None
    if bank_refs is not None:
        if test is not None:
            tables = _similarity_tables(test, bank_refs)
        ref_tables = _similarity_tables(bank_refs, bank_refs)
        cal_tables = _similarity_tables(cal, bank_refs)

    settings = [(0, None)] if 0 in cfg.shots else []
    settings += [(k, s) for k in cfg.shots if k > 0 for s in cfg.seeds]
    metas = _gather(meta, rank, world)
    if rank == 0:
        order = np.argsort(np.concatenate([np.arange(r, n_all, world) for r in range(world)]),
                           kind="stable")
        meta = {"images": torch.cat([m["images"] for m in metas])[order],
                "masks": torch.cat([m["masks"] for m in metas])[order],
                "labels": torch.cat([m["labels"] for m in metas])[order],
                "defects": [d for m in metas for d in m["defects"]]}
        meta["defects"] = [meta["defects"][i] for i in order]
        labels, masks = meta["labels"], meta["masks"]
        examples = _example_indices(meta["defects"], cfg.figure_examples)
    records, curves, example_maps = [], {}, {}
    search_seconds = time.perf_counter() - t0
    score_seconds = 0.0
    for k, seed in settings:
        t1 = time.perf_counter()
        members = [position[i] for i in perms[seed][:k]] if k else []
        if test is None:
            maps = {}
        else:
            maps = dict(test_lang)
            if k:
                maps.update(visual_maps(tables, members, test, size))
        shards = _gather(_to_cpu(maps), rank, world)
        search_seconds += time.perf_counter() - t1
        if rank != 0:
            continue
        t2 = time.perf_counter()
        maps = {key: torch.cat([s[key] for s in shards if key in s])[order]
                for key in shards[0]}
        if cfg.fusion.normalization in ("reference", "calibration"):
            stats = normal_statistics(cfg, members, ref_maps, ref_tables, cal_maps, cal_tables,
                                      bank_refs, size)
        elif cfg.fusion.normalization == "test_zscore":
            stats = {}
        else:
            stats = None
        outputs = arm_outputs(maps, stats, cfg)
        score_seconds += time.perf_counter() - t2
        summary = []
        for arm, (smooth, score) in outputs.items():
            rec = {"category": category, "shots": k, "seed": seed, "arm": arm,
                   **image_metrics(score, labels), **pixel_metrics(smooth, masks)}
            records.append(rec)
            run.log(rec)
            summary.append(f"{arm} {rec['pixel_auroc']:.3f}/{rec['image_auroc']:.3f}")
        log(f"[clipfusion] {category} k={k} seed={seed}: pixel/image AUROC " + ", ".join(summary))
        if (k == 0 or k == max_k) and seed in (None, cfg.seeds[0]):
            curves[str(k)] = {
                arm: {"image": roc_curve(outputs[arm][1], labels),
                      "pixel": roc_curve(outputs[arm][0], masks),
                      "pro": pro_curve(outputs[arm][0], masks)} for arm in CURVE_ARMS}
            example_maps[k] = {arm: outputs[arm][0][examples].numpy().astype(np.float16)
                               for arm in outputs}
    if rank != 0:
        return None
    np.savez_compressed(
        run.path / "maps" / f"{category}.npz",
        images=(meta["images"][examples] * 255).round().byte().numpy(),
        masks=masks[examples].numpy().astype(np.uint8),
        defects=np.array([meta["defects"][i] for i in examples]),
        **{f"k{k}_{arm}": m for k, arms in example_maps.items() for arm, m in arms.items()})
    timing.update({"search_seconds": search_seconds, "score_seconds": score_seconds,
                   "world": world})
    result = {"category": category, "n_test": n_all, "n_anomalous": int(labels.sum()),
              "n_train": len(train_set), "n_calibration": n_cal, "records": records,
              "curves": curves, "timing": timing}
    run.write_json(f"results/{category}.json", result)
    return result


def run_all(cfg: Config, run: RunDir | None, runtime: Runtime, rank: int = 0, world: int = 1,
            run_path=None) -> dict:
    """Every category (skipping those already in the run dir); returns pipeline info.
    Rank 0 holds `run`; other ranks pass ``run=None`` and the run's path (read only)."""
    from pathlib import Path

    path = Path(run.path if run is not None else run_path)
    if run is not None:
        (path / "results").mkdir(exist_ok=True)
        (path / "maps").mkdir(exist_ok=True)
        root = prepare_data(cfg, run)
    else:
        root = cfg.data.root or str(path / "data")
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # rank 0 has written the synthetic data
    todo = [c for c in cfg.data.categories if not (path / "results" / f"{c}.json").is_file()]
    info = {}
    if (path / "pipeline.json").is_file():
        import json

        info = json.loads((path / "pipeline.json").read_text())
    # every folder is checked before the models are built: bad data fails in seconds
    datasets = {c: open_datasets(cfg, root, c) for c in todo}
    if todo:
        t0 = time.perf_counter()
        pipe = Pipeline(cfg, runtime)
        info = {"weights": pipe.weights, "data_root": str(root),
                "build_seconds": time.perf_counter() - t0,
                "attention_layers": pipe.diff.recorded_layers, "world": world,
                "input_sizes": {b: list(s) for b, s in pipe.input_sizes.items()}}
        if run is not None:
            run.write_json("pipeline.json", info)
        for category in todo:
            t = time.perf_counter()
            run_category(pipe, cfg, run, category, datasets[category], rank, world)
            if rank == 0:
                log(f"[clipfusion] {category} done in {time.perf_counter() - t:.1f}s")
    elif rank == 0:
        log("[clipfusion] every category already has results; rewriting the report")
    return info
