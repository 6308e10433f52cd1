from dataclasses import replace

import pytest
import torch

from balcon.config import BalconConfig, load
from balcon.data import ShardedBatches
from balcon.losses import BalancedContrastiveLoss
from balcon.model import SimCLRNet
from balcon.module import SimCLRModule, build_optimizer, fit
from reprokit.data.augment import digits_augment
from reprokit.errors import DatasetError
from reprokit.runtime import setup


def test_forward_is_the_step_loss_on_tensor_and_multiview_batches():
    torch.manual_seed(0)
    net = SimCLRNet("digits_mlp", {"hidden": 16, "depth": 1}, 16, 8)
    module = SimCLRModule(net, BalancedContrastiveLoss(1.0, 1.0, 0.5), digits_augment(1.0))
    images = torch.rand(12, 1, 8, 8)
    batch = (images, torch.zeros(12, dtype=torch.long))
    loss = module(batch, 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    # the views are a function of (seed, step, rank): the same step draws the same views
    # (BN in train mode is deterministic), another step or rank other ones
    with torch.no_grad():
        assert torch.equal(module.views(batch, 3), module.views(batch, 3))
        assert not torch.equal(module.views(batch, 3), module.views(batch, 4))
        module.global_rank = 1
        assert not torch.equal(module.views(batch, 3), SimCLRModule(
            net, module.loss_fn, module.augment).views(batch, 3))
    # Two identical views: the positive is the most similar view, so the loss drops below
    # its value for independent augmentations.
    same = module(([images, images], torch.zeros(12)), 0)
    assert same.item() < loss.item()


def test_optimizers_follow_the_config():
    cfg = load("paper")
    net = SimCLRNet("digits_mlp", {"hidden": 16, "depth": 1}, 16, 8)
    opt, sched = build_optimizer(net, cfg.train)
    assert type(opt).__name__ == "LARS"
    base = cfg.train.lr * cfg.train.batch_size / 256
    assert opt.param_groups[0]["initial_lr"] == base
    assert opt.param_groups[1]["lars"] is False and opt.param_groups[1]["weight_decay"] == 0
    # per-step linear warmup from base/warmup, then cosine
    assert opt.param_groups[0]["lr"] == pytest.approx(base / cfg.train.warmup_steps)
    for _ in range(cfg.train.warmup_steps):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(base)


def _toy_data(n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=gen)


def _toy_module(seed=0):
    torch.manual_seed(seed)
    net = SimCLRNet("digits_mlp", {"hidden": 16, "depth": 1}, 16, 8)
    return SimCLRModule(net, BalancedContrastiveLoss(1.0, 1.0, 0.5), digits_augment(1.0))


def _loader(images):
    return lambda start: torch.utils.data.DataLoader(ShardedBatches(images, 16, 0, start),
                                                     batch_size=None)


def test_fit_is_the_hand_written_loop():
    """fit = views, per-view forward, loss, backward, SGD step, per-step lr: the same
    weights and loss curve as the loop written out here."""
    cfg = replace(load("smoke").train, steps=5, batch_size=16, log_every=2, warmup_steps=2,
                  lr=0.5)
    images = _toy_data()
    module, ref = _toy_module(), _toy_module()
    done = []
    fit(module, cfg, _loader(images), setup("cpu", "32-true", threads=1), on_step=done.append,
        progress=False)
    assert done == [1, 2, 3, 4, 5]
    opt, sched = build_optimizer(ref.net, cfg)
    curve = []
    for step, batch in zip(range(cfg.steps), _loader(images)(0)):
        loss = ref(batch, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 2 == 0 or step == 4:
            curve.append((step, loss.item()))
    assert module.loss_curve == curve and [s for s, _ in curve] == [0, 2, 4]
    for p, q in zip(module.net.parameters(), ref.net.parameters()):
        assert torch.equal(p, q)
    assert module.nonfinite_steps == 0 and module.gather is None


def test_fit_checkpoints_and_resumes_to_the_uninterrupted_result(tmp_path):
    cfg = replace(load("smoke").train, steps=6, batch_size=16, log_every=1, warmup_steps=2,
                  checkpoint_every=2)
    images, runtime = _toy_data(), setup("cpu", "32-true", threads=1)
    whole = _toy_module()
    fit(whole, cfg, _loader(images), runtime, progress=False)
    ckpt = tmp_path / "arm" / "last.ckpt"

    class Stop(Exception):
        pass

    def stop_after_3(done):
        if done == 3:
            raise Stop

    cut = _toy_module()
    with pytest.raises(Stop):
        fit(cut, cfg, _loader(images), runtime, checkpoint=ckpt, on_step=stop_after_3, progress=False)
    state = torch.load(ckpt, weights_only=False)
    assert state["global_step"] == 2 and [s for s, _ in state["loss_curve"]] == [0, 1]
    assert not list(ckpt.parent.glob("*.tmp"))  # written to a temporary file, then renamed
    starts = []
    resumed = _toy_module(seed=1)  # other initial weights: the checkpoint must replace them

    def make_loader(start):
        starts.append(start)
        return _loader(images)(start)

    fit(resumed, cfg, make_loader, runtime, checkpoint=ckpt, progress=False)
    assert starts == [2]
    assert resumed.loss_curve == whole.loss_curve
    for p, q in zip(resumed.net.parameters(), whole.net.parameters()):
        assert torch.equal(p, q)


def test_ctrl_c_mid_training_names_the_checkpoint_and_resume(tmp_path):
    cfg = replace(load("smoke").train, steps=6, batch_size=16, checkpoint_every=2)
    ckpt = tmp_path / "last.ckpt"

    def interrupt(done):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(SystemExit, match=r"arm x: interrupted at step 2; the checkpoint of "
                                         r"step 2 is .*last.ckpt; rerun with --resume"):
        fit(_toy_module(), cfg, _loader(_toy_data()), setup("cpu", "32-true", threads=1),
            checkpoint=ckpt, name="arm x", on_step=interrupt, progress=False)
    assert torch.load(ckpt, weights_only=False)["global_step"] == 2


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

    torch.manual_seed(0)
    net = SimCLRNet("digits_mlp", {"hidden": 16, "depth": 2}, 16, 8)
    ref = copy.deepcopy(net)
    v1, v2 = torch.rand(10, 1, 8, 8), torch.rand(10, 1, 8, 8) * 2  # views with different stats
    per_view = SimCLRModule(net, BalancedContrastiveLoss(), None, bn_views="per_view")
    z1, z2 = per_view.embed(torch.cat([v1, v2]))
    # the reference code: h_i = f(x_i); h_j = f(x_j) — BN statistics over one view each
    r1, r2 = ref(v1), ref(v2)
    assert torch.allclose(z1, r1, atol=1e-6) and torch.allclose(z2, r2, atol=1e-6)
    bn, bn_ref = net.encoder[2], ref.encoder[2]
    assert torch.allclose(bn.running_mean, bn_ref.running_mean)
    # one pass over both views normalises with the statistics of 2B: a different result
    joint = SimCLRModule(copy.deepcopy(ref), BalancedContrastiveLoss(), None, bn_views="joint")
    j1, _ = joint.embed(torch.cat([v1, v2]))
    assert not torch.allclose(j1, r1, atol=1e-3)


def test_a_loader_without_batches_is_a_clear_error():
    cfg = replace(load("smoke").train, steps=3, batch_size=16)
    with pytest.raises(DatasetError, match="yields no batch"):
        fit(_toy_module(), cfg, lambda start: torch.utils.data.DataLoader([], batch_size=16),
            setup("cpu", "32-true", threads=1), progress=False)
