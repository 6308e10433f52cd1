import math

import torch

from reprokit.backbones import build_backbone
from reprokit.evaluation import (
    effective_rank,
    extract_features,
    extract_loader_features,
    knn_accuracy,
    knn_predict,
    linear_probe_accuracy,
    normalized_std,
)


def _clusters(n_per_class=30, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[:4] * 5
    x = torch.cat([c + 0.3 * torch.randn(n_per_class, dim, generator=g) for c in centres])
    y = torch.arange(4).repeat_interleave(n_per_class)
    return x, y


def test_knn_on_separable_features():
    xtr, ytr = _clusters(seed=0)
    xte, yte = _clusters(seed=1)
    assert knn_accuracy(xtr, ytr, xte, yte, k=20) == 1.0
    # random labels cannot be predicted
    shuffled = ytr[torch.randperm(len(ytr), generator=torch.Generator().manual_seed(0))]
    assert knn_accuracy(xtr, shuffled, xte, yte, k=20) < 0.6


def test_knn_weights_votes_by_similarity():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    labels = torch.tensor([0, 1, 1])
    # k=3: the query is close to train[0]; weights exp(cos/T) with small T make it win
    pred = knn_predict(train, labels, torch.tensor([[1.0, 0.05]]), num_classes=2, k=3,
                       temperature=0.05)
    assert pred.tolist() == [0]


def test_linear_probe_separable():
    xtr, ytr = _clusters(seed=0)
    xte, yte = _clusters(seed=1)
    assert linear_probe_accuracy(xtr, ytr, xte, yte, epochs=30, lr=0.1) == 1.0


def test_collapse_monitors():
    spread = torch.randn(2000, 64, generator=torch.Generator().manual_seed(0))
    assert abs(normalized_std(spread) - 1 / math.sqrt(64)) < 0.005
    collapsed = torch.ones(2000, 64) + 1e-4 * spread
    assert normalized_std(collapsed) < 1e-3
    assert effective_rank(spread) > 55
    line = torch.randn(500, 1) @ torch.randn(1, 64)
    assert abs(effective_rank(line) - 1.0) < 1e-3
    assert effective_rank(torch.ones(10, 4)) == 0.0


def test_extract_features_restores_mode():
    net, dim = build_backbone("digits_mlp", hidden=32)
    net.train()
    feats = extract_features(net, torch.rand(10, 1, 8, 8), batch_size=4)
    assert feats.shape == (10, dim) and net.training


def test_extract_loader_features_match_the_in_memory_path():
    from torch.utils.data import DataLoader, TensorDataset

    net, dim = build_backbone("digits_mlp", hidden=32)
    net.train()
    images, labels = torch.rand(10, 1, 8, 8), torch.arange(10) % 3
    loader = DataLoader(TensorDataset(images, labels), batch_size=4)  # batches of 4, 4, 2
    feats, ys = extract_loader_features(net, loader)
    assert net.training  # training mode restored
    assert feats.shape == (10, dim) and feats.dtype == torch.float32
    assert torch.equal(ys, labels)  # labels in loader order
    assert torch.allclose(feats, extract_features(net, images, batch_size=4), atol=1e-6)
    # eval mode inside: dropout-free and deterministic, the same features twice
    assert torch.equal(extract_loader_features(net, loader)[0], feats)


def test_extract_loader_features_by_hand():
    from torch import nn

    double = nn.Linear(2, 1, bias=False)
    double.weight.data = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    batches = [(torch.tensor([[1.0, 1.0]], dtype=torch.float64), [7]),
               (torch.tensor([[0.0, 3.0], [2.0, 0.0]], dtype=torch.float64), [8, 9])]
    feats, ys = extract_loader_features(double, batches)
    assert feats.dtype == torch.float32  # float features, whatever the model's dtype
    assert feats.flatten().tolist() == [3.0, 6.0, 2.0]
    assert ys.tolist() == [7, 8, 9]
