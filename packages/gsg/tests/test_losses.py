import math

import pytest
import torch
import torch.nn.functional as F

from gsg.losses import GuidedStopGradientLoss, SymmetricCosineLoss, random_partners
from reprokit.errors import ConfigError


def cos(a, b):
    a, b = a.detach(), b.detach()
    return float((a @ b) / (a.norm() * b.norm()))


def test_symmetric_cosine_equals_formula_and_stops_target_gradients():
    p1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    p2 = torch.tensor([[1.0, 1.0], [3.0, 0.0]], requires_grad=True)
    t1 = torch.tensor([[0.0, 1.0], [1.0, 1.0]], requires_grad=True)
    t2 = torch.tensor([[1.0, 1.0], [0.0, -1.0]], requires_grad=True)
    loss = SymmetricCosineLoss()(p1, p2, t1, t2)
    by_hand = -0.5 * ((cos(p1[0], t2[0]) + cos(p1[1], t2[1])) / 2
                      + (cos(p2[0], t1[0]) + cos(p2[1], t1[1])) / 2)
    # p1[0]·t2[0]: cos 45° ; p1[1]·t2[1]: cos 180° ; p2[0]·t1[0]: cos 45° ; p2[1]·t1[1]: cos 45°
    assert by_hand == pytest.approx(-0.5 * ((math.sqrt(0.5) - 1) / 2 + math.sqrt(0.5)))
    assert loss.item() == pytest.approx(by_hand, abs=1e-6)
    loss.backward()
    assert t1.grad is None and t2.grad is None
    assert p1.grad.abs().sum() > 0 and p2.grad.abs().sum() > 0


def _gsg_inputs():
    """Batch of 2 with partners swapped; image 0's view 1 and its partner's view 1 are closest."""
    z = torch.tensor([
        [[1.0, 0.0], [0.0, 1.0]],      # view 1 of images 0, 1
        [[-1.0, 0.0], [0.0, -1.0]],    # view 2
        [[0.0, 5.0], [0.9, 0.1]],      # view 3 (the partner's first view)
        [[0.0, -5.5], [-3.0, 0.0]],    # view 4 (the partner's second view)
    ], requires_grad=True)
    # predictor outputs: any vectors not parallel to their targets (cos' = 0 at ±1)
    p = torch.randn(4, 2, 2, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    t = z
    return z, p, t, torch.tensor([1, 0])


def test_gsg_picks_closest_cross_image_pair_and_matches_formula():
    z, p, t, partners = _gsg_inputs()
    loss = GuidedStopGradientLoss()(z, p, t, partners)
    # image 0 (views z[0,0]=(1,0), z[1,0]=(-1,0)); partner image 1 views z[2,1]=(.9,.1),
    # z[3,1]=(-3,0). Closest: (1,0)–(.9,.1) → j*=1, k*=1: sources p[0,0], p[2,1];
    # targets the siblings t[1,0], t[3,1].
    term0 = cos(p[0, 0], t[1, 0]) + cos(p[2, 1], t[3, 1])
    # image 1 (views (0,1), (0,-1)); partner image 0 views z[2,0]=(0,5), z[3,0]=(0,-5).
    # d((0,1),(0,5)) = 4 is the smallest → sources p[0,1], p[2,0]; targets t[1,1], t[3,0].
    term1 = cos(p[0, 1], t[1, 1]) + cos(p[2, 0], t[3, 0])
    expected = -0.5 * (term0 + term1) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_gsg_sends_gradients_only_through_sources():
    z, p, t, partners = _gsg_inputs()
    loss = GuidedStopGradientLoss()(z, p, t, partners)
    loss.backward()
    # sources: (view 0, image 0), (view 2, image 1), (view 0, image 1), (view 2, image 0)
    grad_norm = p.grad.norm(dim=-1)
    sources = torch.zeros(4, 2, dtype=torch.bool)
    sources[0, 0] = sources[2, 1] = sources[0, 1] = sources[2, 0] = True
    assert (grad_norm[sources] > 0).all()
    assert (grad_norm[~sources] == 0).all()
    assert z.grad is None or z.grad.abs().sum() == 0  # targets are stop-gradient


def test_gsg_chooses_the_other_pair_when_geometry_changes():
    z, p, t, partners = _gsg_inputs()
    z2 = z.detach().clone()
    z2[1, 0] = torch.tensor([-3.1, 0.0])   # image 0's view 2 now nearest the partner's view 4
    p2 = p.detach().clone().requires_grad_(True)
    GuidedStopGradientLoss()(z2, p2, z2, partners).backward()
    norms = p2.grad.norm(dim=-1)
    assert norms[1, 0] > 0 and norms[3, 1] > 0
    assert norms[0, 0] == 0 and norms[2, 1] == 0


def test_random_partners_is_a_derangement():
    gen = torch.Generator().manual_seed(0)
    for b in (2, 3, 7, 64):
        for _ in range(20):
            r = random_partners(b, gen)
            assert sorted(r.tolist()) == list(range(b))
            assert (r != torch.arange(b)).all()


def test_no_partner_fails_clearly():
    with pytest.raises(ConfigError, match="at least 2"):
        random_partners(1)
    z = torch.randn(4, 1, 3)
    with pytest.raises(ConfigError, match="at least 2"):
        GuidedStopGradientLoss()(z, z, z, torch.tensor([0]))
    with pytest.raises(ValueError, match="different image"):
        GuidedStopGradientLoss()(torch.randn(4, 3, 2), torch.randn(4, 3, 2),
                                 torch.randn(4, 3, 2), torch.tensor([0, 2, 1]))


def test_gsg_is_vectorised_and_matches_a_loop():
    gen = torch.Generator().manual_seed(1)
    z, p = torch.randn(4, 16, 8, generator=gen), torch.randn(4, 16, 8, generator=gen)
    partners = random_partners(16, gen)
    loss = GuidedStopGradientLoss()(z, p, z, partners)
    total = 0.0
    for i in range(16):
        r = int(partners[i])
        best = min(((j, k) for j in range(2) for k in range(2)),
                   key=lambda jk: float((z[jk[0], i] - z[2 + jk[1], r]).norm()))
        j, k = best
        total += -0.5 * (F.cosine_similarity(p[j, i], z[1 - j, i], dim=0)
                         + F.cosine_similarity(p[2 + k, r], z[3 - k, r], dim=0))
    assert loss.item() == pytest.approx(float(total) / 16, abs=1e-5)
