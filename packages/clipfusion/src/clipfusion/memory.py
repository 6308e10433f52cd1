"""Memory-bank search: the cosine of each query feature to its nearest neighbour in a bank.

Features are L2-normalised, so one matrix product gives every cosine and the nearest
neighbour is its row maximum (top-1). Both run on the device that holds the features (the
GPU on a GPU run), in chunks of query rows so that a similarity block stays below
``max_elements`` (fp32: 4 bytes each).

``per_reference_similarity`` keeps the maximum *per reference image*. The k-shot reference
sets are nested prefixes of one permutation per seed, so the similarity to any bank is the
maximum over its members' rows: one search per (query, reference image) for the whole
shots × seeds protocol, instead of one per (query, k, seed). max is exact, so the result is
the same as searching the concatenated bank.
"""

from __future__ import annotations

import torch

MAX_ELEMENTS = 1 << 24  # 16 M similarities per block (64 MiB in fp32)


def top1_similarity(query: torch.Tensor, bank: torch.Tensor,
                    max_elements: int = MAX_ELEMENTS) -> torch.Tensor:
    """query (..., D), bank (M, D) -> (...): max_j <q, bank_j>, on the query's device."""
    flat = query.reshape(-1, query.shape[-1])
    bank = bank.to(flat.device, flat.dtype)
    step = max(1, max_elements // max(1, bank.shape[0]))
    best = torch.cat([(flat[i:i + step] @ bank.T).amax(dim=1)
                      for i in range(0, flat.shape[0], step)])
    return best.reshape(query.shape[:-1])


def memory_bank_distance(query: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """½(1 − max cos) of each query feature (..., D) to the bank (M, D); zero for a feature
    that is in the bank."""
    return (0.5 * (1.0 - top1_similarity(query, bank))).clamp_min(0.0)


def per_reference_similarity(query: torch.Tensor, refs: torch.Tensor,
                             max_elements: int = MAX_ELEMENTS) -> torch.Tensor:
    """query (N, P, D), refs (R, P', D) -> (R, N, P): the top-1 cosine of each query location
    within each reference image; one batched matmul (R, chunk, P') + amax per chunk."""
    q = query.reshape(-1, query.shape[-1])
    refs = refs.to(q.device, q.dtype)
    step = max(1, max_elements // max(1, refs.shape[0] * refs.shape[1]))
    out = torch.cat([torch.matmul(q[i:i + step], refs.transpose(1, 2)).amax(dim=2)
                     for i in range(0, q.shape[0], step)], dim=1)
    return out.reshape(refs.shape[0], *query.shape[:-1])


def bank_distance(similarity: torch.Tensor, members: list[int]) -> torch.Tensor:
    """½(1 − max over the bank's reference images) from a (R, N, P) per-reference table."""
    best = similarity[members].amax(dim=0)
    return (0.5 * (1.0 - best)).clamp_min(0.0)
