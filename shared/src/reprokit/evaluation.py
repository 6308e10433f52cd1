"""Representation evaluators shared by the self-supervised packages.

- ``extract_features``: a model's features of in-memory images (eval mode, no grad, batched);
  ``extract_loader_features``: its twin for a DataLoader of (image, label) batches (folder and
  torchvision datasets with per-image transforms), returning (features, labels). Both restore
  the model's training mode and return float features on the CPU.
- ``knn_accuracy``: weighted kNN (Wu et al., 2018), the standard SSL monitor: cosine
  similarity on L2-normalised features, the k nearest training features vote for their
  class with weight exp(sim / T).
- ``linear_probe_accuracy``: a linear classifier on frozen, standardised features.
- ``normalized_std``: collapse monitor (SimSiam §4): the per-dimension std of the
  L2-normalised outputs, averaged; about 1/√d for a healthy embedding, 0 when collapsed.
- ``effective_rank``: exp of the entropy of the normalised singular values of the centred
  embeddings (Roy & Vetterli, 2007): d for an isotropic embedding, 1 for a line; it sees
  dimensional collapse that ``normalized_std`` can miss.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def extract_features(model: nn.Module, images: torch.Tensor, batch_size: int = 512,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """Run `model` in eval mode over in-memory `images`; features on the CPU."""
    was_training = model.training
    model.eval()
    out = [model(images[i:i + batch_size].to(device)).float().cpu()
           for i in range(0, images.shape[0], batch_size)]
    model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def extract_loader_features(model: nn.Module, loader: Iterable,
                            device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Run `model` in eval mode over every (images, labels) batch of `loader` (the DataLoader
    twin of ``extract_features``); returns (features float on the CPU, labels), in loader order."""
    was_training = model.training
    model.eval()
    feats, labels = [], []
    try:
        for images, y in loader:
            feats.append(model(images.to(device, non_blocking=True)).float().cpu())
            labels.append(torch.as_tensor(y))
    finally:
        model.train(was_training)
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor,
                query_features: torch.Tensor, num_classes: int, k: int = 200,
                temperature: float = 0.1, chunk: int = 1024) -> torch.Tensor:
    """Class predictions of the weighted kNN classifier for each query."""
    train = F.normalize(train_features.float(), dim=1)
    k = min(k, train.shape[0])
    preds = []
    for start in range(0, query_features.shape[0], chunk):
        query = F.normalize(query_features[start:start + chunk].float(), dim=1)
        sim, idx = (query @ train.T).topk(k, dim=1)
        weights = (sim / temperature).exp()
        votes = torch.zeros(query.shape[0], num_classes, device=query.device)
        votes.scatter_add_(1, train_labels[idx], weights)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


def knn_accuracy(train_features, train_labels, test_features, test_labels, k: int = 200,
                 temperature: float = 0.1, num_classes: int | None = None) -> float:
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    pred = knn_predict(train_features, train_labels, test_features, num_classes, k, temperature)
    return (pred == test_labels).float().mean().item()


def linear_probe_accuracy(train_features, train_labels, test_features, test_labels,
                          epochs: int = 100, lr: float = 1e-2, weight_decay: float = 1e-4,
                          batch_size: int = 1024, seed: int = 0,
                          num_classes: int | None = None) -> float:
    """Train a linear layer on frozen features (standardised with the training statistics)."""
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    mean = train_features.mean(0, keepdim=True)
    std = train_features.std(0, keepdim=True).clamp_min(1e-6)
    xtr, xte = (train_features - mean) / std, (test_features - mean) / std
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head = nn.Linear(xtr.shape[1], num_classes)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(xtr.shape[0] / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    with torch.enable_grad():
        for _ in range(epochs):
            perm = torch.randperm(xtr.shape[0], generator=gen)
            for i in range(0, xtr.shape[0], batch_size):
                idx = perm[i:i + batch_size]
                loss = F.cross_entropy(head(xtr[idx]), train_labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    with torch.no_grad():
        return (head(xte).argmax(1) == test_labels).float().mean().item()


@torch.no_grad()
def normalized_std(z: torch.Tensor) -> float:
    """Mean per-dimension std of L2-normalised embeddings (≈ 1/√d healthy, → 0 collapsed)."""
    return F.normalize(z.float(), dim=1).std(dim=0).mean().item()


@torch.no_grad()
def effective_rank(z: torch.Tensor, eps: float = 1e-12) -> float:
    """exp(entropy) of the normalised singular values of the centred embeddings."""
    z = z.float() - z.float().mean(0, keepdim=True)
    s = torch.linalg.svdvals(z)
    if s.sum() <= eps:
        return 0.0
    p = s / s.sum()
    p = p[p > eps]
    return math.exp(-(p * p.log()).sum().item())
