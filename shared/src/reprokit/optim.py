"""Optimisers and schedules used by more than one package."""

from __future__ import annotations

import math

import torch
from torch import nn


def warmup_cosine(step: int, total_steps: int, warmup_steps: int = 0,
                  final_fraction: float = 0.0) -> float:
    """Learning-rate multiplier: linear warmup from 0, then cosine decay to `final_fraction`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(optimizer: torch.optim.Optimizer, total_steps: int,
                            warmup_steps: int = 0, final_fraction: float = 0.0):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, total_steps, warmup_steps, final_fraction))


def split_decay_params(model: nn.Module) -> tuple[list, list]:
    """(weights that get weight decay, biases and norm gains that do not)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return decay, no_decay


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratio (You et al., 2017), as SimCLR/BYOL use it.

    For each parameter with ``lars=True`` in its group:
        g ← g + wd·w;  r = η·‖w‖ / ‖g‖ (1 if either norm is 0);  v ← m·v + r·g;  w ← w − lr·v.
    Biases and norm parameters are conventionally put in a group with ``lars=False,
    weight_decay=0`` (see ``split_decay_params``).
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                if group["lars"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0),
                                        group["eta"] * w_norm / g_norm, torch.ones_like(w_norm))
                    g = g * trust
                state = self.state[p]
                if "momentum" not in state:
                    state["momentum"] = torch.clone(g).detach()
                else:
                    state["momentum"].mul_(group["momentum"]).add_(g)
                p.add_(state["momentum"], alpha=-group["lr"])
        return loss
