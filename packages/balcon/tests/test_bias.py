import pytest
import torch

from balcon.bias import bias_floor, class_prototypes, prototype_bias
from reprokit.errors import ConfigError


def synthetic_views(n_per_class=4000, d=3, sigma_class=0.3, sigma_aug=0.5, m=16, seed=0):
    """Clusters with known answer: image x = μ_y + σ_c·ε, view = x + σ_t·η.

    Then E‖p̂_M(x) − μ_y‖² = d·(σ_c² + σ_t²/M)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0]])[:, :d]
    labels = torch.arange(3).repeat_interleave(n_per_class)
    images = centres[labels] + sigma_class * torch.randn(len(labels), d, generator=gen)
    views = images + sigma_aug * torch.randn(m, len(labels), d, generator=gen)
    return views, labels, centres


def test_bias_matches_the_known_answer():
    d, sc, st = 3, 0.3, 0.5
    views, labels, centres = synthetic_views(d=d, sigma_class=sc, sigma_aug=st)
    out = prototype_bias(views, labels, [1, 2, 4, 16])
    for m, b in zip(out["views"], out["bias"]):
        assert b**2 == pytest.approx(d * (sc**2 + st**2 / m), rel=0.03)
    assert out["bias"] == sorted(out["bias"], reverse=True)
    # relative bias: within-class / total; the between-class part is ‖μ_y − μ̄‖² = 32/3 here.
    between = (centres - centres.mean(0)).pow(2).sum(1).mean().item()
    for m, r in zip(out["views"], out["relative_bias"]):
        within = d * (sc**2 + st**2 / m)
        assert r == pytest.approx(within / (within + between), rel=0.03)
    torch.testing.assert_close(class_prototypes(views, labels, 3), centres, atol=0.03, rtol=0)


def test_floor_recovers_class_spread_and_augmentation_noise():
    d, sc, st = 3, 0.2, 0.6
    views, labels, _ = synthetic_views(d=d, sigma_class=sc, sigma_aug=st, seed=1)
    out = prototype_bias(views, labels, [1, 2, 4, 8, 16])
    floor, noise = bias_floor(out["views"], out["bias"])
    assert floor == pytest.approx(d * sc**2, rel=0.1)
    assert noise == pytest.approx(d * st**2, rel=0.05)


def test_no_augmentation_noise_means_no_dependence_on_m():
    views, labels, _ = synthetic_views(n_per_class=50, sigma_aug=0.0, m=4)
    out = prototype_bias(views, labels, [1, 4])
    assert out["bias"][0] == pytest.approx(out["bias"][1], rel=1e-9)


def test_bad_views_are_errors():
    views, labels, _ = synthetic_views(n_per_class=5, m=4)
    with pytest.raises(ConfigError):
        prototype_bias(views, labels, [1, 8])
    with pytest.raises(ConfigError):
        prototype_bias(views[0], labels, [1])


def test_relative_floor_removes_the_augmentation_noise():
    from balcon.bias import relative_floor

    d, sc, st = 3, 0.3, 0.8
    views, labels, centres = synthetic_views(d=d, sigma_class=sc, sigma_aug=st, seed=2)
    out = prototype_bias(views, labels, [1, 2, 4, 8, 16])
    between = (centres - centres.mean(0)).pow(2).sum(1).mean().item()
    expected = d * sc**2 / (d * sc**2 + between)
    assert relative_floor(out["views"], out["bias"], out["relative_bias"]) == \
        pytest.approx(expected, rel=0.1)
