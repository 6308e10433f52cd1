"""``balcon bench``: images/s of a SimCLR training step, this package's loop vs plain PyTorch.

Both sides run the same step on the scale's backbone, input shape, batch and optimizer: the
same loader of seeded global batches, the two views from one batched augmentation call with
the same random stream, the encoder once per view (BN per view) in the config's memory
format, InfoNCE, backward, SGD/LARS with the same parameter groups and the same per-step
warmup-cosine learning rate. "ours" is `balcon.module.fit` — the loop ``reproduce`` trains
every arm with (Lightning Fabric, `SimCLRModule`, the fused balanced loss at α = λ = 1) —
with a timing hook; "plain" is that step written out by hand, NT-Xent as cross-entropy.
Starting from the same weights, both compute the same losses (reported, and tested).

The two sides alternate in one process and one thread (`reprokit.bench`: an untimed round,
then rounds that reverse the order every other round), each with a fresh network; each
side's rate is taken at its median step time, and the ratio is the median of the per-round
ratios.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from balcon.config import load
from balcon.data import ShardedBatches
from balcon.losses import BalancedContrastiveLoss
from balcon.model import SimCLRNet
from balcon.module import SimCLRModule, fit
from reprokit.bench import alternating_rounds, median_rate
from reprokit.data.augment import TensorAugment
from reprokit.errors import ConfigError
from reprokit.optim import LARS, split_decay_params, warmup_cosine_scheduler
from reprokit.runtime import setup


def _inputs(cfg, n: int) -> tuple[torch.Tensor, object, tuple[int, int, int]]:
    """Training inputs of the config's shape, the config's training augmentation, and the
    encoder's input shape (random pixels cost the same as real ones; the data set itself is
    not what is timed)."""
    name, size, strength = cfg.data.name, cfg.data.image_size, cfg.train.augment_strength
    gen = torch.Generator().manual_seed(0)
    if name == "digits":  # the data's own views (with or without per-view noise)
        from balcon.data import build_data

        augment = build_data(cfg.data, long_tailed=False).augment(strength)
        return torch.rand(n, 1, 8, 8, generator=gen), augment, (1, 8, 8)
    images = torch.rand(n, 3, size, size, generator=gen)
    # natural images are augmented per image by the loader: time the batched stand-in
    return images, TensorAugment(flip=True, brightness=0.4, contrast=0.4), (3, size, size)


def _backbone_kwargs(cfg, in_shape: tuple[int, int, int]) -> dict:
    kwargs = dict(cfg.model.backbone_kwargs)
    if cfg.model.backbone == "digits_mlp":
        kwargs.setdefault("in_shape", in_shape)
    else:
        kwargs.setdefault("in_channels", in_shape[0])
    return kwargs


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _loader(images, batch_size: int):
    """What `train_arm` gets from in-memory data: endless seeded global batches."""
    return lambda start_step: torch.utils.data.DataLoader(
        ShardedBatches(images, batch_size, 0, start_step), batch_size=None)


def plain_step_loop(net, make_loader, augment, train, total, warmup, device, bn_views,
                    channels_last=False):
    """The reference: the same SimCLR step in plain PyTorch, as the PyTorch SimCLR code
    writes it. Returns (images/s over the steps after `warmup`, [first loss, last loss])."""
    decay, no_decay = split_decay_params(net)
    groups = [{"params": decay, "weight_decay": train.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    base_lr = train.lr * train.batch_size / 256
    if train.optimizer == "lars":
        groups[1]["lars"] = False
        opt = LARS(groups, lr=base_lr, momentum=train.momentum)
    else:
        opt = torch.optim.SGD(groups, lr=base_lr, momentum=train.momentum)
    sched = warmup_cosine_scheduler(opt, total, train.warmup_steps)  # the same per-step lr
    batches = iter(make_loader(0))
    n2 = 2 * train.batch_size
    targets = torch.arange(n2, device=device).roll(train.batch_size)
    eye = torch.eye(n2, dtype=torch.bool, device=device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    losses, stamps = [], []
    for step in range(total):
        x, _ = next(batches)
        x = x.to(device)
        # both views in one call, from the stream SimCLRModule draws at this step (seed 0)
        gen = torch.Generator(device=x.device).manual_seed(step * 1024)
        views = augment(torch.cat([x, x]), generator=gen)
        if views.ndim == 4:
            views = views.contiguous(memory_format=fmt)
        if bn_views == "joint":
            z = net(views)
        else:
            x1, x2 = views.chunk(2)
            z = torch.cat([net(x1), net(x2)])
        z = F.normalize(z, dim=1)
        logits = (z @ z.T / train.temperature).masked_fill(eye, float("-inf"))
        loss = F.cross_entropy(logits, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step in (0, total - 1):
            losses.append(loss.detach())
        _sync(device)
        stamps.append(time.perf_counter())
    return median_rate(stamps, train.batch_size, warmup), [v.item() for v in losses]


class _Timer:
    """`fit`'s on_step hook: a timestamp at the end of every step."""

    def __init__(self, device):
        self.device, self.stamps = device, []

    def __call__(self, done: int) -> None:
        _sync(self.device)
        self.stamps.append(time.perf_counter())


def ours_loop(cfg, net, make_loader, augment, train, total, warmup, runtime):
    """`fit` as `train_arm` calls it (no checkpoints, no progress bar), timed by its hook."""
    module = SimCLRModule(net, BalancedContrastiveLoss(1.0, 1.0, train.temperature, True),
                          augment, bn_views=cfg.model.bn_views,
                          channels_last=cfg.model.channels_last)
    timer = _Timer(runtime.device)
    fit(module, train, make_loader, runtime, 1, name="bench", on_step=timer, progress=False)
    return (median_rate(timer.stamps, train.batch_size, warmup),
            [v for _, v in module.loss_curve])


def bench(scale: str = "cpu", backbone: str | None = None, batch_size: int | None = None,
          steps: int = 200, warmup: int = 10, accelerator: str = "auto",
          threads: int | None = None, rounds: int = 5, overrides: list[str] = ()) -> dict:
    """The training step of `scale`'s config (backbone, input shape, augmentation, BN per
    view, memory format, optimizer), this package's loop vs plain PyTorch."""
    overrides = list(overrides)
    if backbone:
        overrides += [f"model.backbone={backbone}", "model.backbone_kwargs={}"]
    if batch_size:
        overrides.append(f"train.batch_size={batch_size}")
    try:
        cfg = load(scale, overrides)
    except ConfigError as err:
        raise ConfigError(f"bench: {err}") from None
    if steps < 1 or warmup < 1 or rounds < 1:
        raise ConfigError("bench: --steps, --warmup and --rounds must be ≥ 1")
    total = warmup + steps
    # the scale's optimizer and schedule over the benched steps; the loss curve only at the
    # first and last step (one .item() each), checkpoints off
    train = replace(cfg.train, steps=total, log_every=total, checkpoint_every=0)
    runtime = setup(accelerator, "32-true", threads=threads or 1, seed=0)
    images, augment, in_shape = _inputs(cfg, max(4 * train.batch_size, 1024))
    device = runtime.device
    make_loader = _loader(images.to(device), train.batch_size)
    kwargs = _backbone_kwargs(cfg, in_shape)

    def fresh_net():
        torch.manual_seed(0)
        net = SimCLRNet(cfg.model.backbone, kwargs, cfg.model.proj_hidden, cfg.model.proj_dim)
        if cfg.model.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return net.to(device)

    sides = {
        "plain": lambda: plain_step_loop(fresh_net(), make_loader, augment, train, total,
                                         warmup, device, cfg.model.bn_views,
                                         cfg.model.channels_last),
        "ours": lambda: ours_loop(cfg, fresh_net(), make_loader, augment, train, total,
                                  warmup, runtime)}
    losses: dict[str, list[float]] = {}

    def rate_of(side: str) -> float:
        rate, side_losses = sides[side]()
        losses.setdefault(side, side_losses)  # deterministic: every call computes the same
        return rate

    rates, first = alternating_rounds({side: lambda side=side: rate_of(side)
                                       for side in ("plain", "ours")}, rounds)
    ratios = [o / p for o, p in zip(rates["ours"], rates["plain"])]
    return {"scale": scale, "data": cfg.data.name, "input": list(in_shape),
            "backbone": cfg.model.backbone, "backbone_kwargs": kwargs,
            "batch_size": train.batch_size, "bn_views": cfg.model.bn_views,
            "channels_last": cfg.model.channels_last, "optimizer": train.optimizer,
            "steps": steps, "warmup": warmup, "rounds": rounds, "first": first,
            "device": runtime.device_name, "threads": runtime.threads,
            "ours_images_per_s": [round(v, 1) for v in rates["ours"]],
            "plain_images_per_s": [round(v, 1) for v in rates["plain"]],
            "ratios": [round(v, 3) for v in ratios],
            "ratio": round(statistics.median(ratios), 3), "goal": 1.0,
            # the same step: first- and last-step loss of each side's first run
            "ours_losses": losses["ours"], "plain_losses": losses["plain"]}
