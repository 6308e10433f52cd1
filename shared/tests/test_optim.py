import pytest
import torch

from reprokit.backbones import build_backbone
from reprokit.errors import ConfigError
from reprokit.optim import LARS, split_decay_params, warmup_cosine


def test_warmup_cosine_by_hand():
    assert warmup_cosine(0, 100, warmup_steps=10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, warmup_steps=10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, warmup_steps=10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, warmup_steps=10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, warmup_steps=10, final_fraction=0.1) == pytest.approx(0.1)


def test_lars_step_by_hand():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # ‖w‖ = 5
    w.grad = torch.tensor([0.0, 1.0])                 # ‖g‖ = 1
    opt = LARS([w], lr=1.0, momentum=0.9, weight_decay=0.0, eta=0.01)
    opt.step()  # trust = 0.01 * 5 / 1 = 0.05
    assert torch.allclose(w.detach(), torch.tensor([3.0, 3.95]))
    w.grad = torch.tensor([0.0, 1.0])
    opt.step()  # ‖w‖ changed slightly; v = 0.9*0.05 + trust2
    trust2 = 0.01 * torch.tensor([3.0, 3.95]).norm().item()
    assert w[1].item() == pytest.approx(3.95 - (0.045 + trust2), abs=1e-6)


def test_split_decay_params_and_backbones():
    net, dim = build_backbone("digits_cnn", width=8)
    decay, no_decay = split_decay_params(net)
    assert all(p.ndim >= 2 for p in decay) and all(p.ndim < 2 for p in no_decay)
    assert net(torch.rand(2, 1, 8, 8)).shape == (2, dim)
    with pytest.raises(ConfigError, match="unknown backbone"):
        build_backbone("vgg")
