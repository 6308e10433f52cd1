"""Combining the four maps into one, smoothing, and the image score.

    M = α (M_CLIP,L + M_CLIP,V) + (1 − α) (M_Diff,L + M_Diff,V)

Zero-shot has no V maps (their terms are dropped). Each map is first brought to a common
scale by an affine z-score whose mean and std come from *normal* images only — the k reference
images, or held-out calibration images (experiments.py) — so an image's score never depends
on the rest of the test set (the transductive z-score over the test pixels is kept as a
labelled ablation). An affine map changes no single map's metrics, only the weights in the
sum. The fused map is at the image size (the branches' maps are upsampled) and smoothed with
a Gaussian; the image score is the mean of its top fraction of pixels plus ``global_weight`` ×
the standardised CLIP global score.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def moments(values: torch.Tensor) -> tuple[float, float]:
    """(mean, std) over every element: the affine calibration of one map type."""
    values = values.float()
    return float(values.mean()), (float(values.std()) if values.numel() > 1 else 0.0)


def standardize(maps: torch.Tensor, stats: tuple[float, float] | None = None) -> torch.Tensor:
    """(x − mean) / std with the given (mean, std) — from normal reference or calibration
    images — or, with ``stats=None``, from `maps` itself (the transductive z-score when
    `maps` is the whole test set). A zero std leaves the scale alone."""
    mean, std = moments(maps) if stats is None else stats
    return (maps - mean) / (std if std > 0 else 1.0)


def branch_map(language: torch.Tensor, visual: torch.Tensor | None) -> torch.Tensor:
    """M_branch = M_L + M_V (both already standardised); zero-shot: M_L alone."""
    return language if visual is None else language + visual


def fuse(clip_map: torch.Tensor, diff_map: torch.Tensor, alpha: float) -> torch.Tensor:
    """α M_CLIP + (1 − α) M_Diff."""
    return alpha * clip_map + (1.0 - alpha) * diff_map


def gaussian_smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (N, H, W) maps (kernel ±4σ, reflect padding); σ = 0 returns them."""
    if sigma <= 0:
        return maps
    radius = max(1, int(math.ceil(4 * sigma)))
    radius = min(radius, (min(maps.shape[-2:]) - 1))
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = F.pad(maps[:, None], (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    out = F.conv2d(out, kernel.view(1, 1, -1, 1))
    return out[:, 0]


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) -> (N, *size), bilinear."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps.float()
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear",
                         align_corners=False)[:, 0]


def image_score(maps: torch.Tensor, topk_fraction: float = 0.01,
                global_score: torch.Tensor | None = None,
                global_weight: float = 1.0) -> torch.Tensor:
    """Mean of the top ``topk_fraction`` of each map's pixels (+ weighted global score)."""
    flat = maps.flatten(1)
    k = max(1, int(round(topk_fraction * flat.shape[1])))
    score = flat.topk(k, dim=1).values.mean(1)
    if global_score is not None and global_weight:
        score = score + global_weight * global_score
    return score
