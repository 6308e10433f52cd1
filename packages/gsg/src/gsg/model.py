"""The networks: backbone → projector → (predictor), and BYOL's EMA target network.

Heads follow the references, with widths set by the config (scaled down on CPU):
- SimSiam projector: ``proj_layers`` × (Linear, BN, ReLU) with the last ReLU replaced by a
  BN without affine (SimSiam's ImageNet head; its CIFAR head has 2 layers);
  predictor: Linear(d, d/4), BN, ReLU, Linear(d/4, d) (2048 → 512 → 2048 in the paper).
- BYOL: the GSG reference code gives BYOL the SimSiam heads (``byol_heads: simsiam``, the
  default); ``byol_heads: byol`` uses BYOL's own: Linear(·, h), BN, ReLU, Linear(h, d) for
  both projector and predictor (h = 4096, d = 256 in the BYOL paper).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from gsg.config import ModelConfig
from reprokit.backbones import build_backbone


def simsiam_projector(dim_in: int, hidden: int, dim_out: int, layers: int = 3) -> nn.Sequential:
    mods: list[nn.Module] = []
    width = dim_in
    for _ in range(layers - 1):
        mods += [nn.Linear(width, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        width = hidden
    mods += [nn.Linear(width, dim_out, bias=False), nn.BatchNorm1d(dim_out, affine=False)]
    return nn.Sequential(*mods)


def mlp_head(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    """Linear, BN, ReLU, Linear: SimSiam's predictor and BYOL's projector/predictor."""
    return nn.Sequential(nn.Linear(dim_in, hidden, bias=False), nn.BatchNorm1d(hidden),
                         nn.ReLU(inplace=True), nn.Linear(hidden, dim_out))


class SiameseNet(nn.Module):
    """Online network f (backbone + projector) and predictor h; ``predictor=False`` uses h = id."""

    def __init__(self, cfg: ModelConfig, family: str, predictor: bool = True,
                 in_shape: tuple[int, int, int] = (1, 8, 8)):
        super().__init__()
        kwargs = dict(cfg.backbone_kwargs)
        if cfg.backbone == "digits_mlp":
            kwargs["in_shape"] = in_shape
        else:
            kwargs["in_channels"] = in_shape[0]
        self.backbone, feat_dim = build_backbone(cfg.backbone, **kwargs)
        if family == "simsiam" or (family == "byol" and cfg.byol_heads == "simsiam"):
            self.projector = simsiam_projector(feat_dim, cfg.proj_hidden, cfg.proj_dim,
                                               cfg.proj_layers)
            pred = mlp_head(cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim)
        elif family == "byol":
            self.projector = mlp_head(feat_dim, cfg.proj_hidden, cfg.proj_dim)
            pred = mlp_head(cfg.proj_dim, cfg.proj_hidden, cfg.proj_dim)
        else:
            raise ValueError(f"unknown family {family!r}")
        self.predictor = pred if predictor else nn.Identity()
        self.feature_dim = feat_dim

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.project(x)
        return z, self.predictor(z)


class EMATarget(nn.Module):
    """BYOL's target network ξ ← τ ξ + (1 − τ) θ, a copy of the online backbone + projector."""

    def __init__(self, online: SiameseNet):
        super().__init__()
        self.backbone = copy.deepcopy(online.backbone)
        self.projector = copy.deepcopy(online.projector)
        for p in self.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

    @torch.no_grad()
    def update(self, online: SiameseNet, tau: float) -> None:
        for mine, theirs in ((self.backbone, online.backbone), (self.projector, online.projector)):
            params = list(mine.parameters())
            torch._foreach_mul_(params, tau)
            torch._foreach_add_(params, list(theirs.parameters()), alpha=1 - tau)
            # BN running statistics follow the online network (as in BYOL's reference code).
            for b_mine, b_theirs in zip(mine.buffers(), theirs.buffers(), strict=True):
                b_mine.copy_(b_theirs)


def ema_momentum(base: float, step: int, total_steps: int, cosine: bool) -> float:
    """τ: constant, or BYOL's τ = 1 − (1 − τ_base)(cos(πk/K) + 1)/2."""
    if not cosine:
        return base
    return 1 - (1 - base) * (math.cos(math.pi * min(step, total_steps) / max(1, total_steps)) + 1) / 2
