"""Contrastive losses: NT-Xent (SimCLR's InfoNCE) and the balanced family L(α, λ).

Both take the projector outputs of the two views of a batch, ``z1`` and ``z2`` (N, D). The 2N
embeddings are L2-normalised, so s(a, b) = aᵀb is the cosine similarity; view i's positive
is the other view of the same image and every other embedding of the batch is a negative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reprokit.errors import ConfigError


def similarity_logits(z1: torch.Tensor, z2: torch.Tensor, temperature: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2N×2N matrix s(z_i, z_k)/τ and, for each row i, the column of its positive."""
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ConfigError(f"z1 and z2 must both be (N, D); got {tuple(z1.shape)}, "
                          f"{tuple(z2.shape)}")
    z = torch.cat([z1, z2])
    if z.dtype in (torch.float16, torch.bfloat16):
        z = z.float()  # exp/logsumexp over 2N terms wants fp32 under mixed precision
    z = F.normalize(z, dim=1)
    n = z1.shape[0]
    logits = z @ z.T / temperature
    positive = torch.arange(2 * n, device=z.device).roll(n)  # i ↔ i + N
    return logits, positive


def _attraction(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """s(z_i, z_i⁺)/τ per anchor. A gather, not logits[rows, positive]: its backward writes
    one entry per row instead of materialising a second 2N×2N gradient buffer."""
    return logits.gather(1, positive[:, None]).squeeze(1)


class NTXentLoss(nn.Module):
    """NT-Xent (Chen et al., 2020), SimCLR's InfoNCE, in its cross-entropy form:

        ℓ_i = −log  exp(s(z_i, z_i⁺)/τ) / Σ_{k ≠ i} exp(s(z_i, z_k)/τ),

    averaged over the 2N views. The sum runs over all other views, the positive included.
    """

    def __init__(self, temperature: float = 0.5):
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        logits, positive = similarity_logits(z1, z2, self.temperature)
        self_mask = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
        return F.cross_entropy(logits.masked_fill(self_mask, float("-inf")), positive)


class BalancedContrastiveLoss(nn.Module):
    """The balanced contrastive family L(α, λ), averaged over the 2N views:

        L_i(α, λ) = −α · s(z_i, z_i⁺)/τ  +  λ · log Σ_{k ∈ N(i)} exp(s(z_i, z_k)/τ)

    - ``alpha`` (α ≥ 0) weights the attracting force of the positive pair;
    - ``lam`` (λ ≥ 0) weights the repelling force of the negatives (the log-sum-exp);
    - ``include_positive``: N(i) = all k ≠ i (then α = λ = 1 is exactly NT-Xent/InfoNCE), or
      all k ∉ {i, i⁺} (the decoupled variant of Yeh et al., 2022, at α = λ = 1).

    This explicit family is this project's reading of the paper's "balancing positive and
    negative pair interactions"; the paper's exact parameterisation was not available.
    The whole loss is one pass over the 2N×2N similarity matrix (no loop over the batch).
    """

    def __init__(self, alpha: float = 1.0, lam: float = 1.0, temperature: float = 0.5,
                 include_positive: bool = True):
        super().__init__()
        if alpha < 0 or lam < 0:
            raise ConfigError(f"alpha and lam must be non-negative, got {alpha}, {lam}")
        if temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        self.alpha, self.lam, self.temperature = alpha, lam, temperature
        self.include_positive = include_positive
        self._masks: dict = {}

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        logits, positive = similarity_logits(z1, z2, self.temperature)
        masked = logits.masked_fill(self._excluded(positive), float("-inf"))
        if self.include_positive:
            # λ·lse − α·pos = λ·(lse − pos) + (λ − α)·pos, and lse − pos is exactly PyTorch's
            # fused cross-entropy with the positive as the target (faster than logsumexp).
            ce = F.cross_entropy(masked, positive)
            if self.lam == self.alpha:  # InfoNCE and its multiples: no extra attraction term
                return self.lam * ce
            return self.lam * ce + (self.lam - self.alpha) * _attraction(logits, positive).mean()
        return (self.lam * torch.logsumexp(masked, dim=1)
                - self.alpha * _attraction(logits, positive)).mean()

    def _excluded(self, positive: torch.Tensor) -> torch.Tensor:
        """The 2N×2N mask of k ∉ N(i): the anchor itself, and the positive if decoupled
        (cached per batch size and device: it is the same every step)."""
        key = (positive.shape[0], positive.device)
        if key not in self._masks:
            rows = torch.arange(positive.shape[0], device=positive.device)
            mask = rows[:, None] == rows[None, :]
            if not self.include_positive:
                mask = mask | (positive[:, None] == rows[None, :])
            self._masks = {key: mask}  # keep one: the batch size rarely changes
        return self._masks[key]

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, lam={self.lam}, temperature={self.temperature}, "
                f"include_positive={self.include_positive}")


def build_loss(name: str, alpha: float = 1.0, lam: float = 1.0, temperature: float = 0.5,
               include_positive: bool = True) -> nn.Module:
    """``ntxent`` (the baseline) or ``balanced`` (the L(α, λ) family)."""
    if name == "ntxent":
        return NTXentLoss(temperature)
    if name == "balanced":
        return BalancedContrastiveLoss(alpha, lam, temperature, include_positive)
    raise ConfigError(f"unknown loss {name!r}; choose 'ntxent' or 'balanced'")
