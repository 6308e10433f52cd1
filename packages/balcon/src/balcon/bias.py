"""The prototype representation bias, measured.

The paper's supervised objective pulls f(t(x)) toward the class prototype
μ_y = E_{x|y} E_t f(t(x)); self-supervised learning only sees the surrogate prototype
E_t f(t(x)) of one image, estimated from M augmentations. For a labelled evaluation set
(images x_i, labels y_i) and features of M_max augmented views of every image,
``view_features[m, i] = f(t_m(x_i))``, this module measures

    p̂_M(x_i) = (1/M) Σ_{m<M} f(t_m(x_i))                  surrogate prototype (M views)
    μ_y      = mean of f(t_m(x_i)) over all views of all images of class y
    bias(M)  = sqrt( mean_i ‖p̂_M(x_i) − μ_{y_i}‖² )          prototype representation bias
    relative_bias(M) = bias(M)² / mean_i ‖p̂_M(x_i) − μ̄‖²     (μ̄: mean over all views)

bias² splits into a floor that no number of views removes (how far an image's own mean
representation sits from its class prototype) and an augmentation-noise term that falls
as 1/M. The relative bias is the within-class share of the spread of the surrogate
prototypes: scale-free, so encoders can be compared (a collapsed encoder has a tiny
absolute bias but no class structure; its relative bias stays near 1).
Callers L2-normalise features first so every encoder lives on the unit sphere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from reprokit.errors import ConfigError


def class_prototypes(view_features: torch.Tensor, labels: torch.Tensor,
                     num_classes: int) -> torch.Tensor:
    """μ_y: the mean over every view of every image of class y. (C, D)."""
    per_image = view_features.mean(0)  # every image has the same number of views
    sums = torch.zeros(num_classes, per_image.shape[1], dtype=per_image.dtype)
    sums.index_add_(0, labels, per_image)
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).unsqueeze(1)
    return sums / counts


def prototype_bias(view_features: torch.Tensor, labels: torch.Tensor,
                   views: Sequence[int]) -> dict[str, list[float]]:
    """bias(M) and relative_bias(M) for each M in `views` (see the module docstring).

    `view_features` is (M_max, N, D); returns ``{"views", "bias", "relative_bias"}``.
    """
    if view_features.ndim != 3 or view_features.shape[1] != labels.shape[0]:
        raise ConfigError("view_features must be (M, N, D) with N = len(labels)")
    m_max = view_features.shape[0]
    if not views or min(views) < 1 or max(views) > m_max:
        raise ConfigError(f"views must lie in 1..{m_max}, got {list(views)}")
    feats = view_features.double()
    labels = labels.long()
    prototypes = class_prototypes(feats, labels, int(labels.max()) + 1)
    grand_mean = feats.mean(dim=(0, 1))
    out: dict[str, list[float]] = {"views": list(views), "bias": [], "relative_bias": []}
    for m in views:
        surrogate = feats[:m].mean(0)
        within = (surrogate - prototypes[labels]).pow(2).sum(1).mean().item()
        total = (surrogate - grand_mean).pow(2).sum(1).mean().item()
        out["bias"].append(float(np.sqrt(within)))
        out["relative_bias"].append(within / total if total > 0 else float("nan"))
    return out


def bias_floor(views: Sequence[int], bias: Sequence[float]) -> tuple[float, float]:
    """Least-squares fit of bias(M)² = floor + noise/M; returns (floor, noise).

    floor is the bias left with infinitely many augmentations, noise the augmentation
    variance that extra views average away."""
    m = np.asarray(views, dtype=float)
    b2 = np.asarray(bias, dtype=float) ** 2
    if len(m) < 2 or not np.all(np.isfinite(b2)):
        return float("nan"), float("nan")
    design = np.stack([np.ones_like(m), 1.0 / m], axis=1)
    (floor, noise), *_ = np.linalg.lstsq(design, b2, rcond=None)
    return float(floor), float(noise)


def relative_floor(views: Sequence[int], bias: Sequence[float],
                   relative_bias: Sequence[float]) -> float:
    """The relative bias with infinitely many views: the floor of bias(M)² over the floor of
    the total spread (bias(M)² / relative_bias(M)), both fitted as floor + noise/M. This is the
    paper's bias of E_t f(t(x)) itself, free of the augmentation noise that M views leave."""
    b2 = np.asarray(bias, dtype=float) ** 2
    total = b2 / np.asarray(relative_bias, dtype=float)
    floor, _ = bias_floor(views, np.sqrt(b2))
    total_floor, _ = bias_floor(views, np.sqrt(total))
    if not (np.isfinite(floor) and np.isfinite(total_floor)) or total_floor <= 0:
        return float("nan")
    return float(max(floor, 0.0) / total_floor)
