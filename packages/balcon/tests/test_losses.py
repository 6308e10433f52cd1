import math

import pytest
import torch
import torch.nn.functional as F

from balcon.losses import BalancedContrastiveLoss, NTXentLoss, build_loss
from reprokit.errors import ConfigError


def direct_ntxent(z1, z2, tau):
    """NT-Xent written out term by term, as in the SimCLR paper."""
    z = torch.cat([z1, z2])
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        sim = lambda a, b: float(z[a] @ z[b] / (z[a].norm() * z[b].norm()))  # noqa: E731
        denominator = sum(math.exp(sim(i, k) / tau) for k in range(n2) if k != i)
        total += -math.log(math.exp(sim(i, pos) / tau) / denominator)
    return total / n2


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_infonce_point_is_exactly_ntxent(tau):
    gen = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    balanced = BalancedContrastiveLoss(1.0, 1.0, tau, include_positive=True)(z1, z2)
    baseline = NTXentLoss(tau)(z1, z2)
    assert balanced.item() == pytest.approx(direct_ntxent(z1, z2, tau), rel=1e-5)
    assert baseline.item() == pytest.approx(direct_ntxent(z1, z2, tau), rel=1e-5)
    # PyTorch's cross-entropy form: logits over the other 2N−1 views, target the positive.
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (z @ z.T / tau).fill_diagonal_(float("-inf"))
    target = torch.tensor([6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 5])
    assert balanced.item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)


def test_weights_split_the_two_forces():
    gen = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(8, 4, generator=gen), torch.randn(8, 4, generator=gen)
    tau = 0.5
    attract = BalancedContrastiveLoss(1.0, 0.0, tau)(z1, z2)
    cos = F.cosine_similarity(torch.cat([z1, z2]), torch.cat([z2, z1]))
    assert attract.item() == pytest.approx(-(cos / tau).mean().item(), rel=1e-6)
    repel = BalancedContrastiveLoss(0.0, 1.0, tau)(z1, z2)
    mixed = BalancedContrastiveLoss(0.7, 1.9, tau)(z1, z2)
    assert mixed.item() == pytest.approx(0.7 * attract.item() + 1.9 * repel.item(), rel=1e-5)


def decoupled_grad_by_hand(u, alpha, lam, tau):
    """dL/du for the decoupled loss, written from the formula (u: unit rows, 2N×D)."""
    n2 = u.shape[0]
    n = n2 // 2
    pos = [(i + n) % n2 for i in range(n2)]
    sim = u @ u.T / tau
    grad = torch.zeros_like(u)
    for i in range(n2):
        negatives = [k for k in range(n2) if k not in (i, pos[i])]
        w = torch.softmax(sim[i, negatives], dim=0)
        # anchor i pulls toward its positive and is pushed by its negatives ...
        grad[i] += -alpha * u[pos[i]] / tau + lam * (w[:, None] * u[negatives]).sum(0) / tau
        # ... and, as the positive / a negative of other anchors, gets the mirrored terms.
        grad[pos[i]] += -alpha * u[i] / tau
        for wk, k in zip(w, negatives):
            grad[k] += lam * wk * u[i] / tau
    return grad / n2


@pytest.mark.parametrize("alpha,lam", [(1.0, 1.0), (0.5, 2.0), (2.0, 0.3)])
def test_decoupled_gradient_matches_hand_formula(alpha, lam):
    gen = torch.Generator().manual_seed(2)
    u = F.normalize(torch.randn(10, 3, generator=gen, dtype=torch.float64), dim=1)
    z = u.clone().requires_grad_(True)
    loss = BalancedContrastiveLoss(alpha, lam, 0.5, include_positive=False)
    loss(z[:5], z[5:]).backward()
    g_hand = decoupled_grad_by_hand(u, alpha, lam, 0.5)
    # The loss normalises z first: at unit norm its gradient is the tangential part.
    tangential = g_hand - (g_hand * u).sum(1, keepdim=True) * u
    torch.testing.assert_close(z.grad, tangential, rtol=1e-9, atol=1e-12)


def test_decoupled_gradcheck():
    gen = torch.Generator().manual_seed(3)
    z1 = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    loss = BalancedContrastiveLoss(1.3, 0.7, 0.5, include_positive=False)
    assert torch.autograd.gradcheck(loss, (z1, z2))


def test_decoupled_excludes_the_positive():
    # With 2 images the only negatives of view i are the two views of the other image.
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    tau = 1.0
    value = BalancedContrastiveLoss(0.0, 1.0, tau, include_positive=False)(z1, z2).item()
    # Views 0, 1 are image 0 and 1; views 2, 3 their second views: N(0) = N(2) = {1, 3}.
    u = F.normalize(torch.cat([z1, z2]), dim=1)
    expected = []
    for i, negs in enumerate([(1, 3), (0, 2), (1, 3), (0, 2)]):
        expected.append(math.log(sum(math.exp(float(u[i] @ u[k]) / tau) for k in negs)))
    assert value == pytest.approx(sum(expected) / 4, rel=1e-6)


def test_bad_parameters_are_errors():
    with pytest.raises(ConfigError):
        BalancedContrastiveLoss(-1.0, 1.0)
    with pytest.raises(ConfigError):
        NTXentLoss(0.0)
    with pytest.raises(ConfigError):
        build_loss("triplet")
    with pytest.raises(ConfigError):
        BalancedContrastiveLoss()(torch.randn(3, 2), torch.randn(4, 2))


def direct_balanced(z1, z2, alpha, lam, tau, include_positive):
    """L(α, λ) term by term from its definition."""
    z = F.normalize(torch.cat([z1, z2]), dim=1).tolist()
    n2 = len(z)
    sim = lambda a, b: sum(x * y for x, y in zip(z[a], z[b])) / tau  # noqa: E731
    total = 0.0
    for i in range(n2):
        pos = (i + n2 // 2) % n2
        others = [k for k in range(n2) if k != i and (include_positive or k != pos)]
        total += -alpha * sim(i, pos) + lam * math.log(sum(math.exp(sim(i, k)) for k in others))
    return total / n2


@pytest.mark.parametrize("include_positive", [True, False])
@pytest.mark.parametrize("alpha,lam", [(0.5, 2.0), (2.0, 0.1), (0.0, 1.0), (1.0, 0.0)])
def test_family_matches_its_definition(alpha, lam, include_positive):
    gen = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(5, 4, generator=gen), torch.randn(5, 4, generator=gen)
    loss = BalancedContrastiveLoss(alpha, lam, 0.3, include_positive)
    expected = direct_balanced(z1, z2, alpha, lam, 0.3, include_positive)
    assert loss(z1, z2).item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert loss(z1, z2).item() == pytest.approx(expected, rel=1e-5, abs=1e-5)  # cached mask
