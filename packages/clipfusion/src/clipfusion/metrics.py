"""Anomaly-detection metrics: image and pixel AUROC, AP, F1-max, and AUPRO.

AUROC and AP come from torchmetrics (exact, thresholds=None). F1-max is the largest
F1 = 2PR/(P+R) over the thresholds of torchmetrics' precision–recall curve.

AUPRO (the definition used by anomalib and the MVTec-AD evaluation code; some papers instead
report the un-normalised area, or integrate to FPR 1):

- regions: the connected components (8-connectivity) of each image's ground-truth mask;
- for a threshold t: PRO(t) = mean over all regions of the fraction of the region's pixels
  with score ≥ t; FPR(t) = fraction of all normal pixels (mask 0, over all images) with
  score ≥ t;
- AUPRO = ∫₀^0.3 PRO d(FPR) / 0.3, the curve linearly interpolated at FPR = 0.3 — a perfect
  map scores 1, a map that ranks every normal pixel above every defect pixel scores 0.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_precision_recall_curve,
    binary_roc,
)

FPR_LIMIT = 0.3


def _flat(scores, target) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.as_tensor(scores, dtype=torch.float32).flatten()
    t = torch.as_tensor(target).flatten().long()
    if s.shape != t.shape:
        raise ValueError(f"scores {tuple(s.shape)} and targets {tuple(t.shape)} differ")
    return s, t


def _both_classes(t: torch.Tensor) -> bool:
    return bool((t == 1).any() and (t == 0).any())


def auroc(scores, target) -> float:
    s, t = _flat(scores, target)
    return float(binary_auroc(s, t)) if _both_classes(t) else float("nan")


def _pr_metrics(s: torch.Tensor, t: torch.Tensor) -> tuple[float, float]:
    """(AP, F1-max) from one precision–recall curve; AP = Σ (R_n − R_{n−1}) P_n, the step
    sum torchmetrics' binary_average_precision computes."""
    precision, recall, _ = binary_precision_recall_curve(s, t)
    ap = -torch.sum((recall[1:] - recall[:-1]) * precision[:-1])
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    return float(ap), float(f1.max())


def average_precision(scores, target) -> float:
    s, t = _flat(scores, target)
    return float(binary_average_precision(s, t)) if _both_classes(t) else float("nan")


def f1_max(scores, target) -> float:
    s, t = _flat(scores, target)
    return _pr_metrics(s, t)[1] if _both_classes(t) else float("nan")


def roc_curve(scores, target, points: int = 101) -> dict[str, list[float]]:
    """ROC curve resampled on a fixed FPR grid (for figures; small to store)."""
    s, t = _flat(scores, target)
    if not _both_classes(t):
        return {"fpr": [], "tpr": []}
    fpr, tpr, _ = binary_roc(s, t)
    grid = np.linspace(0, 1, points)
    return {"fpr": grid.tolist(), "tpr": np.interp(grid, fpr.numpy(), tpr.numpy()).tolist()}


def _pro_points(scores, masks) -> tuple[np.ndarray, np.ndarray] | None:
    """The exact PRO curve (FPR, PRO), one point per distinct score, from (0, 0); None
    without defect regions or without normal pixels."""
    scores = np.asarray(torch.as_tensor(scores, dtype=torch.float32)).reshape(-1, *np.shape(
        scores)[-2:])
    masks = np.asarray(torch.as_tensor(masks)).reshape(scores.shape) > 0
    region_of = np.zeros(scores.shape, dtype=np.int64)
    n_regions = 0
    structure = np.ones((3, 3), dtype=bool)
    for i in range(scores.shape[0]):
        labels, n = ndimage.label(masks[i], structure=structure)
        region_of[i][labels > 0] = labels[labels > 0] + n_regions
        n_regions += n
    normal = ~masks
    if n_regions == 0 or not normal.any():
        return None
    sizes = np.bincount(region_of.ravel(), minlength=n_regions + 1).astype(np.float64)
    # each defect pixel adds 1/(size of its region · number of regions) to PRO once it is
    # above the threshold; each normal pixel adds 1/(number of normal pixels) to FPR
    weight_pro = np.where(region_of > 0, 1.0 / (sizes[region_of] * n_regions), 0.0).ravel()
    weight_fpr = normal.ravel() / normal.sum()
    order = np.argsort(-scores.ravel(), kind="mergesort")
    s_sorted = scores.ravel()[order]
    pro = np.cumsum(weight_pro[order])
    fpr = np.cumsum(weight_fpr[order])
    # one curve point per distinct score (the last index of each run of ties)
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1]
    return np.r_[0.0, fpr[last]], np.r_[0.0, pro[last]]


def aupro(scores, masks, fpr_limit: float = FPR_LIMIT) -> float:
    """AUPRO of maps (N, H, W) against binary masks (N, H, W); see the module docstring."""
    points = _pro_points(scores, masks)
    if points is None:
        return float("nan")
    fpr, pro = points
    inside = fpr <= fpr_limit
    x, y = fpr[inside], pro[inside]
    if x[-1] < fpr_limit:
        j = np.searchsorted(fpr, fpr_limit)  # first point beyond the limit
        x0, x1, y0, y1 = fpr[j - 1], fpr[j], pro[j - 1], pro[j]
        y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0) if x1 > x0 else y1
        x, y = np.r_[x, fpr_limit], np.r_[y, y_lim]
    return float(np.trapezoid(y, x) / fpr_limit)


def pro_curve(scores, masks, fpr_limit: float = FPR_LIMIT,
              points: int = 61) -> dict[str, list[float]]:
    """The PRO curve resampled on a fixed FPR grid in [0, fpr_limit] (for figures; the area
    under it / fpr_limit is AUPRO up to the resampling)."""
    pts = _pro_points(scores, masks)
    if pts is None:
        return {"fpr": [], "pro": []}
    grid = np.linspace(0, fpr_limit, points)
    return {"fpr": grid.tolist(), "pro": np.interp(grid, pts[0], pts[1]).tolist()}


def _level_metrics(scores, target, prefix: str) -> dict[str, float]:
    s, t = _flat(scores, target)
    if not _both_classes(t):
        return {f"{prefix}_{m}": float("nan") for m in ("auroc", "ap", "f1max")}
    ap, f1 = _pr_metrics(s, t)
    return {f"{prefix}_auroc": float(binary_auroc(s, t)), f"{prefix}_ap": ap,
            f"{prefix}_f1max": f1}


def image_metrics(scores, labels) -> dict[str, float]:
    return _level_metrics(scores, labels, "image")


def pixel_metrics(maps, masks, with_aupro: bool = True) -> dict[str, float]:
    out = _level_metrics(maps, masks, "pixel")
    if with_aupro:
        out["pixel_aupro"] = aupro(maps, masks)
    return out


METRICS = ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max",
           "pixel_aupro")
