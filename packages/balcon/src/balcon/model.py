"""SimCLR's network: an encoder f (reprokit backbone) and a projector head g."""

from __future__ import annotations

from torch import nn

from reprokit.backbones import build_backbone


def projector(dim_in: int, hidden: int, dim_out: int) -> nn.Module:
    """SimCLR's 2-layer MLP head; the loss sees g(f(x)), evaluation uses f(x)."""
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, dim_out))


class SimCLRNet(nn.Module):
    def __init__(self, backbone: str, backbone_kwargs: dict | None = None, proj_hidden: int = 128,
                 proj_dim: int = 64):
        super().__init__()
        self.encoder, self.feature_dim = build_backbone(backbone, **(backbone_kwargs or {}))
        self.projector = projector(self.feature_dim, proj_hidden, proj_dim)

    def forward(self, x):
        return self.projector(self.encoder(x))
