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
