import torch

from balcon.config import BalconConfig, load
from balcon.losses import BalancedContrastiveLoss
from balcon.model import SimCLRNet
from balcon.module import SimCLRModule
from reprokit.data.augment import digits_augment


def test_training_step_on_tensor_and_multiview_batches():
    cfg = load("smoke")
    torch.manual_seed(0)
    net = SimCLRNet("digits_mlp", {"hidden": 16, "depth": 1}, 16, 8)
    module = SimCLRModule(net, BalancedContrastiveLoss(1.0, 1.0, 0.5), cfg.train,
                          digits_augment(1.0))
    images = torch.rand(12, 1, 8, 8)
    loss = module.training_step((images, torch.zeros(12, dtype=torch.long)), 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    # Two identical views: the positive is the most similar view, so the loss drops below
    # its value for independent augmentations.
    same = module.training_step(([images, images], torch.zeros(12)), 0)
    assert same.item() < loss.item()


def test_optimizers_follow_the_config():
    cfg = load("paper")
    net = SimCLRNet("digits_mlp", {"hidden": 16, "depth": 1}, 16, 8)
    module = SimCLRModule(net, BalancedContrastiveLoss(), cfg.train, None)
    opt = module.configure_optimizers()["optimizer"]
    assert type(opt).__name__ == "LARS"
    assert opt.param_groups[0]["initial_lr"] == cfg.train.lr * cfg.train.batch_size / 256
    assert opt.param_groups[1]["lars"] is False and opt.param_groups[1]["weight_decay"] == 0


def test_every_scale_config_parses():
    for scale in ("smoke", "cpu", "paper"):
        cfg = load(scale)
        assert isinstance(cfg, BalconConfig) and cfg.scale == scale
    paper = load("paper")
    assert paper.data.name == "cifar10" and paper.model.backbone == "resnet18_cifar"
    assert paper.train.temperature == 0.5
    lt = load("paper", ["data.name=imagenet_lt", "model.backbone=resnet50",
                        "experiments=[grid,bias]"])
    assert lt.data.name == "imagenet_lt"


def test_per_view_batchnorm_matches_a_hand_written_per_view_forward():
    import copy

    cfg = load("smoke")
    torch.manual_seed(0)
    net = SimCLRNet("digits_mlp", {"hidden": 16, "depth": 2}, 16, 8)
    ref = copy.deepcopy(net)
    v1, v2 = torch.rand(10, 1, 8, 8), torch.rand(10, 1, 8, 8) * 2  # views with different stats
    per_view = SimCLRModule(net, BalancedContrastiveLoss(), cfg.train, None, bn_views="per_view")
    z1, z2 = per_view.embed(torch.cat([v1, v2]))
    # the reference code: h_i = f(x_i); h_j = f(x_j) — BN statistics over one view each
    r1, r2 = ref(v1), ref(v2)
    assert torch.allclose(z1, r1, atol=1e-6) and torch.allclose(z2, r2, atol=1e-6)
    bn, bn_ref = net.encoder[2], ref.encoder[2]
    assert torch.allclose(bn.running_mean, bn_ref.running_mean)
    # one pass over both views normalises with the statistics of 2B: a different result
    joint = SimCLRModule(copy.deepcopy(ref), BalancedContrastiveLoss(), cfg.train, None,
                         bn_views="joint")
    j1, _ = joint.embed(torch.cat([v1, v2]))
    assert not torch.allclose(j1, r1, atol=1e-3)
