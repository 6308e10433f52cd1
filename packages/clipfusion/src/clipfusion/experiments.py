"""The reproduction: per category, features once, then maps, arms and metrics per shot/seed.

For each category the test images and *all* training images go through both branches once
(features are cached in memory); a k-shot reference set for seed s is the first k images of a
seeded permutation of the training images (nested: the 1-shot image is in the 2-shot set).
Zero-shot uses no reference and is deterministic, so it is evaluated once.

Arms (what is scored): ``clip`` (PatchCLIP alone: L, plus V when k > 0, plus its global
score), ``diff`` (MapDiff alone: L, plus V), ``fused`` (the paper's M), and for k > 0 each map
alone (``clip_L``, ``clip_V``, ``diff_L``, ``diff_V``) and ``fused_V`` (the fusion of the two
visual maps only). One JSON per category (``results/<category>.json``, written atomically)
holds every record, so ``--resume`` skips finished categories.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from clipfusion.clip_branch import PatchCLIP, memory_bank_distance
from clipfusion.config import Config
from clipfusion.diffusion_branch import MapDiff, feature_distance
from clipfusion.fusion import branch_map, fuse, gaussian_smooth, image_score, standardize, upsample
from clipfusion.metrics import image_metrics, pixel_metrics, roc_curve
from reprokit.data.anomaly import anomaly_dataset, make_synthetic_mvtec
from reprokit.errors import ConfigError
from reprokit.progress import track
from reprokit.runs import RunDir
from reprokit.runtime import Runtime

ZERO_SHOT_ARMS = ("clip", "diff", "fused")
FEW_SHOT_ARMS = ("clip_L", "clip_V", "diff_L", "diff_V", "clip", "diff", "fused", "fused_V")
CURVE_ARMS = ("clip", "diff", "fused")


@dataclass
class Features:
    clip_global: torch.Tensor  # (N, D)
    clip_patches: torch.Tensor  # (N, gh, gw, D)
    diff_attention: torch.Tensor  # (N, h, w)
    diff_features: list[torch.Tensor]  # [(N, C, h, w)]

    def select(self, index: list[int]) -> Features:
        return Features(self.clip_global[index], self.clip_patches[index],
                        self.diff_attention[index], [f[index] for f in self.diff_features])


class Pipeline:
    """Both branches on one device, with per-branch timing."""

    def __init__(self, cfg: Config, runtime: Runtime):
        self.cfg = cfg
        self.runtime = runtime
        self.clip = PatchCLIP(cfg.clip).to(runtime.device)
        self.diff = MapDiff(cfg.diffusion).to(runtime.device)
        self.seconds = {"clip": 0.0, "diff": 0.0}
        self.images_seen = 0

    @property
    def weights(self) -> dict[str, str]:
        return {"clip": self.clip.weights, "diffusion": self.diff.weights}

    def _sync(self) -> None:
        if self.runtime.accelerator == "cuda":
            torch.cuda.synchronize()

    @torch.no_grad()
    def extract(self, images: torch.Tensor, category: str) -> Features:
        store = "cpu"
        keep = torch.float16 if self.runtime.accelerator == "cuda" else torch.float32
        with self.runtime.autocast():
            t0 = time.perf_counter()
            c = self.clip.encode_images(images)
            self._sync()
            t1 = time.perf_counter()
            d = self.diff.encode_images(images, category)
            self._sync()
            t2 = time.perf_counter()
        self.seconds["clip"] += t1 - t0
        self.seconds["diff"] += t2 - t1
        self.images_seen += images.shape[0]
        return Features(c["global"].float().to(store), c["patches"].to(store, keep),
                        d["attention"].float().to(store),
                        [f.to(store, keep) for f in d["features"]])

    def extract_dataset(self, dataset, category: str, what: str) -> tuple[Features, dict]:
        feats, images, masks, labels, defects = [], [], [], [], []
        bs = self.cfg.batch_size
        n = len(dataset)
        if what == "test" and self.cfg.data.max_test_images:
            n = min(n, self.cfg.data.max_test_images)
        batches = range(0, n, bs)
        for start in track(batches, f"{category} {what}", total=len(batches)):
            items = [dataset[i] for i in range(start, min(n, start + bs))]
            batch = torch.stack([it["image"] for it in items])
            feats.append(self.extract(batch, category))
            images.append(batch)
            masks.append(torch.stack([it["mask"][0] for it in items]))
            labels += [it["label"] for it in items]
            defects += [it["defect"] for it in items]
        joined = Features(
            torch.cat([f.clip_global for f in feats]), torch.cat([f.clip_patches for f in feats]),
            torch.cat([f.diff_attention for f in feats]),
            [torch.cat([f.diff_features[i] for f in feats])
             for i in range(len(feats[0].diff_features))])
        meta = {"images": torch.cat(images), "masks": torch.cat(masks),
                "labels": torch.tensor(labels), "defects": defects}
        return joined, meta


def raw_maps(pipe: Pipeline, test: Features, bank: Features | None, category: str,
             size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The four maps (N, H, W) at image size (V maps only with a bank) and the global score."""
    maps = {
        "clip_L": upsample(pipe.clip.language_map(test.clip_patches.float(), category), size),
        "diff_L": upsample(test.diff_attention, size),
        "global": pipe.clip.global_score(test.clip_global, category),
    }
    if bank is not None:
        patches = bank.clip_patches.float().reshape(-1, bank.clip_patches.shape[-1])
        maps["clip_V"] = upsample(memory_bank_distance(test.clip_patches.float(), patches), size)
        maps["diff_V"] = feature_distance([f.float() for f in test.diff_features],
                                          [f.float() for f in bank.diff_features], size)
    return maps


def arm_outputs(maps: dict[str, torch.Tensor], cfg: Config) -> dict[str, tuple]:
    """arm -> (smoothed map (N, H, W), image score (N,))."""
    f = cfg.fusion
    how = f.normalization
    few = "clip_V" in maps
    g = standardize(maps["global"], how)
    clip = branch_map(maps["clip_L"], maps.get("clip_V"), how)
    diff = branch_map(maps["diff_L"], maps.get("diff_V"), how)
    combos = {"clip": (clip, True), "diff": (diff, False),
              "fused": (fuse(clip, diff, f.alpha), True)}
    if few:
        combos.update({
            "clip_L": (standardize(maps["clip_L"], how), True),
            "clip_V": (standardize(maps["clip_V"], how), False),
            "diff_L": (standardize(maps["diff_L"], how), False),
            "diff_V": (standardize(maps["diff_V"], how), False),
            "fused_V": (fuse(standardize(maps["clip_V"], how),
                             standardize(maps["diff_V"], how), f.alpha), False),
        })
    out = {}
    for arm, (m, uses_global) in combos.items():
        smooth = gaussian_smooth(m, f.smoothing_sigma)
        score = image_score(smooth, f.topk_fraction, g if uses_global else None,
                            f.global_weight)
        out[arm] = (smooth, score)
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
    if max(cfg.shots) > len(train_set):
        raise ConfigError(f"shots={max(cfg.shots)} but {category!r} has only "
                          f"{len(train_set)} training images")
    return train_set, test_set


def run_category(pipe: Pipeline, cfg: Config, run: RunDir, category: str, datasets) -> dict:
    size = (cfg.data.image_size, cfg.data.image_size)
    train_set, test_set = datasets
    max_k = max(cfg.shots)
    seconds0, seen0 = dict(pipe.seconds), pipe.images_seen
    test, meta = pipe.extract_dataset(test_set, category, "test")
    n_test = len(meta["labels"])
    # references: only the training images some seed's k-shot set uses are encoded
    cat_index = cfg.data.categories.index(category)
    perms = {s: np.random.default_rng([s, cat_index]).permutation(len(train_set)).tolist()
             for s in cfg.seeds}
    needed = sorted({i for p in perms.values() for i in p[:max_k]}) if max_k else []
    train_feats = None
    if needed:
        from torch.utils.data import Subset

        train_feats, _ = pipe.extract_dataset(Subset(train_set, needed), category, "train")
    position = {i: j for j, i in enumerate(needed)}
    timing = {"images": pipe.images_seen - seen0,
              **{f"{b}_seconds": pipe.seconds[b] - seconds0[b] for b in pipe.seconds}}

    labels, masks = meta["labels"], meta["masks"]
    records, curves = [], {}
    examples = _example_indices(meta["defects"], cfg.figure_examples)
    example_maps = {}
    settings = [(0, None)] if 0 in cfg.shots else []
    settings += [(k, s) for k in cfg.shots if k > 0 for s in cfg.seeds]
    for k, seed in settings:
        bank = None
        if k > 0:
            bank = train_feats.select([position[i] for i in perms[seed][:k]])
        outputs = arm_outputs(raw_maps(pipe, test, bank, category, size), cfg)
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
                      "pixel": roc_curve(outputs[arm][0], masks)} for arm in CURVE_ARMS}
            example_maps[k] = {arm: outputs[arm][0][examples].numpy().astype(np.float16)
                               for arm in CURVE_ARMS}
    np.savez_compressed(
        run.path / "maps" / f"{category}.npz",
        images=(meta["images"][examples] * 255).round().byte().numpy(),
        masks=masks[examples].numpy().astype(np.uint8),
        defects=np.array([meta["defects"][i] for i in examples]),
        **{f"k{k}_{arm}": m for k, arms in example_maps.items() for arm, m in arms.items()})
    result = {"category": category, "n_test": n_test, "n_anomalous": int(labels.sum()),
              "n_train": len(train_set), "records": records, "curves": curves,
              "timing": timing}
    run.write_json(f"results/{category}.json", result)
    return result


def run_all(cfg: Config, run: RunDir, runtime: Runtime) -> dict:
    """Every category (skipping those already in the run dir); returns pipeline info."""
    (run.path / "results").mkdir(exist_ok=True)
    (run.path / "maps").mkdir(exist_ok=True)
    root = prepare_data(cfg, run)
    todo = [c for c in cfg.data.categories
            if not (run.path / "results" / f"{c}.json").is_file()]
    info = run.read_json("pipeline.json") if (run.path / "pipeline.json").is_file() else {}
    # every folder is checked before the models are built: bad data fails in seconds
    datasets = {c: open_datasets(cfg, root, c) for c in todo}
    if todo:
        t0 = time.perf_counter()
        pipe = Pipeline(cfg, runtime)
        info = {"weights": pipe.weights, "data_root": str(root),
                "build_seconds": time.perf_counter() - t0,
                "attention_layers": pipe.diff.recorded_layers}
        run.write_json("pipeline.json", info)
        for category in todo:
            t = time.perf_counter()
            run_category(pipe, cfg, run, category, datasets[category])
            log(f"[clipfusion] {category} done in {time.perf_counter() - t:.1f}s")
    else:
        log("[clipfusion] every category already has results; rewriting the report")
    return info
