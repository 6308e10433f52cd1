"""Instrumentation: what the paper measures, as plain functions of a model and its gradients.

- ``activation_stats``: per-layer variance and max |x| of the residual stream after each block,
  on a fixed probe batch;
- ``layer_grad_norms``: the gradient norm of each block's parameters;
- ``count_spikes``: values that jump above ``factor`` × the median of the previous window;
- ``DivergenceDetector``: NaN/Inf, or a loss beyond a bound for several steps in a row.

They cost nothing when not called: the model has no hooks; the probe forward asks the model
for its hidden states (``return_hidden=True``) only on probe steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from perln.model import GPT


@torch.no_grad()
def activation_stats(model: GPT, idx: torch.Tensor) -> dict[str, list[float]]:
    """Variance (over all batch, position and channel entries) and max |x| of the residual
    stream after each block, in float32; a list of ``n_layer`` values each."""
    _, _, hidden = model(idx, return_hidden=True)
    stacked = torch.stack([h.float() for h in hidden])           # (L, B, T, D)
    flat = stacked.flatten(1)
    return {"variance": flat.var(dim=1).tolist(), "max_abs": flat.abs().amax(dim=1).tolist()}


def layer_grad_norms(model: GPT) -> list[float]:
    """L2 norm of the gradients of each block's parameters (missing gradients count as 0)."""
    norms = []
    for block in model.blocks:
        grads = [p.grad.detach().float().norm() for p in block.parameters() if p.grad is not None]
        norms.append(torch.stack(grads).norm() if grads else torch.zeros(()))
    return torch.stack(norms).tolist()


def count_spikes(values: Sequence[float], factor: float, window: int, skip: int = 0,
                 min_history: int | None = None) -> int:
    """Steps whose value exceeds `factor` × the median of the (up to) `window` steps before it.

    Steps from ``max(skip, min_history)`` on are judged (``min_history`` defaults to
    `window`); non-finite values are not spikes here, they are divergence.
    """
    arr = np.asarray(values, dtype=float)
    first = max(skip, window if min_history is None else min_history, 1)
    count = 0
    for i in range(first, arr.size):
        past = arr[max(0, i - window):i]
        past = past[np.isfinite(past)]
        if past.size and math.isfinite(arr[i]) and arr[i] > factor * np.median(past):
            count += 1
    return count


class DivergenceDetector:
    """Diverged: a NaN/Inf loss or gradient norm, or a loss above `bound` for `patience`
    steps in a row. A single jump that recovers is a loss spike, counted elsewhere."""

    def __init__(self, bound: float, patience: int, allow_inf_grad: bool = False):
        self.bound, self.patience = bound, patience
        # under a GradScaler (fp16 autocast) an overflowing gradient is skipped and the scale
        # lowered: that is routine, not divergence; a non-finite loss still is
        self.allow_inf_grad = allow_inf_grad
        self.above = 0

    def update(self, loss: float, grad_norm: float) -> str | None:
        """Feed one step; return why training has diverged at this step, or None."""
        if not math.isfinite(loss):
            return f"loss is {loss}"
        if not math.isfinite(grad_norm) and not self.allow_inf_grad:
            return f"gradient norm is {grad_norm}"
        self.above = self.above + 1 if loss > self.bound else 0
        if self.above >= self.patience:
            return (f"loss above the bound {self.bound:.3g} for {self.patience} steps "
                    f"(last {loss:.3g})")
        return None

    def state_dict(self) -> dict:
        return {"above": self.above}

    def load_state_dict(self, state: dict) -> None:
        self.above = int(state.get("above", 0))
