import pytest
import torch

from gsg import config
from gsg.model import EMATarget, SiameseNet, ema_momentum
from gsg.module import SSLModule
from reprokit.errors import ConfigError


def small_cfg(*overrides):
    return config.load("smoke", list(overrides))


def test_ema_update_is_the_convex_combination():
    cfg = small_cfg()
    online = SiameseNet(cfg.model, "byol", True, (1, 8, 8))
    target = EMATarget(online)
    before = [p.clone() for p in target.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
        online.backbone[2].running_mean.fill_(3.0)
    target.update(online, tau=0.9)
    online_params = dict(online.backbone.named_parameters()) | {
        f"p.{k}": v for k, v in online.projector.named_parameters()}
    for old, new, cur in zip(before, target.parameters(), online_params.values(), strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * cur)
    assert torch.equal(target.backbone[2].running_mean, online.backbone[2].running_mean)
    assert not any(p.requires_grad for p in target.parameters())


def test_ema_momentum_schedule():
    assert ema_momentum(0.99, 50, 100, cosine=False) == 0.99
    assert ema_momentum(0.996, 0, 100, cosine=True) == pytest.approx(0.996)
    assert ema_momentum(0.996, 50, 100, cosine=True) == pytest.approx(0.998)
    assert ema_momentum(0.996, 100, 100, cosine=True) == pytest.approx(1.0)


def test_no_predictor_means_identity_head():
    cfg = small_cfg()
    net = SiameseNet(cfg.model, "simsiam", False, (1, 8, 8))
    z, p = net(torch.rand(4, 1, 8, 8))
    assert torch.equal(z, p)


@pytest.mark.parametrize("method", ["simsiam", "simsiam_gsg", "byol", "byol_gsg"])
def test_training_step_backpropagates(method):
    cfg = small_cfg()
    module = SSLModule(cfg, method, True, (1, 8, 8),
                       augment=lambda x: x + 0.01 * torch.randn_like(x))
    x = module.make_views(torch.rand(8, 1, 8, 8))
    assert x.shape == (8 * module.n_views, 1, 8, 8)
    loss = module.compute_loss(x)
    loss.backward()
    assert torch.isfinite(loss)
    assert module.net.backbone[1].weight.grad.abs().sum() > 0
    if module.target is not None:
        assert all(p.grad is None for p in module.target.parameters())


def test_small_batch_is_a_config_error():
    with pytest.raises(ConfigError, match="at least 2"):
        small_cfg("experiments.batch_sizes=[1, 128]")
    with pytest.raises(ConfigError, match="unknown method"):
        small_cfg("experiments.methods=[simclr]")
    with pytest.raises(ConfigError, match="unknown key"):
        small_cfg("train.epoch=3")


def test_paper_config_parses_and_builds_the_same_module():
    cfg = config.load("paper")
    assert (cfg.data.name, cfg.model.backbone, cfg.train.epochs, cfg.train.batch_size) == \
        ("cifar10", "resnet18_cifar", 200, 512)
    module = SSLModule(cfg, "simsiam_gsg", True, (3, 32, 32),
                       augment=lambda x: x)
    torch.manual_seed(0)
    x = module.make_views(torch.rand(4, 3, 32, 32))
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(module.compute_loss(x))


def test_fit_is_the_hand_written_loop():
    """SSLTraining.fit = per epoch: the seeded batch order, views, loss, backward, SGD and
    schedule steps, BYOL's EMA update after each step — the same weights and epoch losses as
    that loop written out here (same global random stream for views and GSG partners)."""
    from torch.utils.data import DataLoader

    from gsg.module import SSLTraining
    from reprokit.data.images import TensorBatches
    from reprokit.fabric import make_fabric
    from reprokit.runtime import setup

    cfg = small_cfg("train.warmup_epochs=1")
    images = torch.rand(96, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    augment = lambda x: x + 0.1 * torch.randn_like(x)  # noqa: E731 (global generator)
    loader = DataLoader(TensorBatches(images, 32, 0), batch_size=None)
    fabric = make_fabric(setup("cpu", "32-true", threads=1))
    torch.manual_seed(1)
    module = SSLModule(cfg, "byol_gsg", True, (1, 8, 8), augment)
    monitored = []

    def monitor(net, device, seed):   # records the epoch and which network it was shown
        monitored.append(net is module.net)
        return {}

    training = SSLTraining(fabric, module, 2, len(loader), monitor)
    torch.manual_seed(1)
    ref = SSLModule(cfg, "byol_gsg", True, (1, 8, 8), augment)
    opt, sched = ref.configure_optimizers(2 * len(loader), 2)

    torch.manual_seed(2)
    training.fit(loader)
    torch.manual_seed(2)
    step, losses = 0, []
    for epoch in range(2):
        loader.dataset.set_epoch(epoch)
        epoch_losses = []
        for batch in loader:
            loss = ref(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            ref.update_target(step, 2 * len(loader))
            epoch_losses.append(loss.item())
        losses.append(sum(epoch_losses) / len(epoch_losses))
    assert training.step == step == 6 and training.epoch == 2
    for p, q in zip(module.state_dict().values(), ref.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    assert training.scheduler.get_last_lr() == sched.get_last_lr()
    # an epoch record: its mean loss, after the monitor saw the online network (epochs 1, 2)
    assert [h["epoch"] for h in training.history] == [1, 2] and monitored == [True, True]
    assert [h["loss"] for h in training.history] == pytest.approx(losses, rel=1e-6)
