"""The two losses: SimSiam/BYOL's symmetric negative cosine, and guided stop-gradient (GSG).

Both take *sources* (predictor outputs p, or the projections themselves when there is no
predictor) and *targets* (SimSiam: the online projections z; BYOL: the EMA target network's
projections). Targets never receive gradients (stop-gradient, ``sg``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reprokit.errors import ConfigError


def negative_cosine(p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample −cos(p, sg(target))."""
    return -F.cosine_similarity(p, target.detach(), dim=-1)


class SymmetricCosineLoss(nn.Module):
    """SimSiam's loss (and BYOL's, up to the affine map 2 − 2cos):

        L = −½ [cos(p₁, sg t₂) + cos(p₂, sg t₁)],  averaged over the batch,

    with t = z (SimSiam) or t = the target network's projection (BYOL).
    """

    def forward(self, p1: torch.Tensor, p2: torch.Tensor, t1: torch.Tensor,
                t2: torch.Tensor) -> torch.Tensor:
        return 0.5 * (negative_cosine(p1, t2) + negative_cosine(p2, t1)).mean()


def random_partners(batch_size: int, generator: torch.Generator | None = None,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """A random permutation r with r(i) ≠ i for every i (a derangement).

    r is one random cycle through the batch: with σ a uniform permutation, r(σ(k)) = σ(k+1),
    so every image's partner is uniform over the *other* images. (The reference code uses a
    plain ``randperm``, which pairs about one image per batch with itself.)
    """
    if batch_size < 2:
        raise ConfigError(f"GSG needs at least 2 images in a batch to pair them, got {batch_size}; "
                          "raise the batch size (or drop_last the final partial batch)")
    sigma = torch.randperm(batch_size, generator=generator, device=device)
    partners = torch.empty_like(sigma)
    partners[sigma] = sigma.roll(-1)
    return partners


class GuidedStopGradientLoss(nn.Module):
    """GSG (Lee & Lee, NeurIPS 2023). Image i has views 1₁, 1₂; its partner r(i) views 2₁, 2₂.

    On the projections z, the four cross-image distances d(1j, 2k) = ‖z_1j − z_2k‖₂ pick the
    closest pair (j*, k*) (the reference code measures them on the targets: the online z for
    SimSiam, the EMA network's z for BYOL; pass those as `z`). The two closest views are the sources (through the predictor, with
    gradients), their siblings the stop-gradient targets:

        L = −½ [cos(p_1j*, sg t_1j̄*) + cos(p_2k*, sg t_2k̄*)],  averaged over the batch,

    where j̄ is the other view of the same image. Pulling each of the two nearest views of two
    different images towards its sibling pushes them apart: a contrastive effect without a
    negative term.

    Inputs are stacked by view, shape (4, B, D): views 0, 1 are image i's first pair and views
    2, 3 a second, independent pair of views of image i; the partner's views are views 2, 3
    of image r(i), i.e. ``x[2:][:, partners]``.
    """

    def forward(self, z: torch.Tensor, p: torch.Tensor, t: torch.Tensor,
                partners: torch.Tensor) -> torch.Tensor:
        if z.shape[0] != 4 or p.shape != z.shape or t.shape != z.shape:
            raise ValueError(f"GSG expects (4, B, D) tensors, got z {tuple(z.shape)}, "
                             f"p {tuple(p.shape)}, t {tuple(t.shape)}")
        batch = z.shape[1]
        if batch < 2:
            raise ConfigError(f"GSG needs at least 2 images in a batch to pair them, got {batch}")
        if (partners == torch.arange(batch, device=partners.device)).any():
            raise ValueError("GSG partners must pair every image with a different image")
        own = slice(0, 2)
        z1, p1, t1 = z[own], p[own], t[own]                       # image i: (2, B, D)
        z2, p2, t2 = z[2:, partners], p[2:, partners], t[2:, partners]  # image r(i)
        with torch.no_grad():
            dist = torch.cdist(z1.transpose(0, 1).float(), z2.transpose(0, 1).float())  # (B, 2, 2)
            closest = dist.flatten(1).argmin(dim=1)
            j, k = closest // 2, closest % 2
        rows = torch.arange(batch, device=z.device)
        loss = negative_cosine(p1[j, rows], t1[1 - j, rows]) + negative_cosine(p2[k, rows],
                                                                               t2[1 - k, rows])
        return 0.5 * loss.mean()
