"""``balcon bench``: images/s of a SimCLR training step, this package vs plain PyTorch.

Both loops do the same work on the cpu config's backbone, input shape and batch: two batched
TensorAugment views, the encoder once per view (BN per view) in the config's memory format,
the contrastive loss, backward, an SGD step. "ours" is the Lightning
``SimCLRModule`` under ``lightning.Trainer`` (as ``reproduce`` runs it) with the fused
balanced loss at α = λ = 1; "plain" is a hand-written loop with NT-Xent as cross-entropy.
"""

from __future__ import annotations

import time

import lightning as L
import torch
import torch.nn.functional as F

from balcon.config import TrainConfig, load
from balcon.losses import BalancedContrastiveLoss
from balcon.model import SimCLRNet
from balcon.module import SimCLRModule
from reprokit.data.augment import TensorAugment
from reprokit.data.images import TensorBatches
from reprokit.errors import ConfigError
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


def plain_step_loop(net, images, augment, batch_size, steps, warmup, device,
                    temperature=0.5, channels_last=False):
    """The reference: a minimal SimCLR step in plain PyTorch, as the PyTorch SimCLR code
    writes it (the encoder called once per view, NT-Xent as cross-entropy)."""
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    batches = iter(TensorBatches(images, batch_size, 0,
                                 labels=torch.zeros(len(images), dtype=torch.long), infinite=True))
    n2 = 2 * batch_size
    targets = torch.arange(n2, device=device).roll(batch_size)
    eye = torch.eye(n2, dtype=torch.bool, device=device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        x, _ = next(batches)
        x = x.to(device)
        x1, x2 = augment(x), augment(x)
        x1, x2 = x1.contiguous(memory_format=fmt), x2.contiguous(memory_format=fmt)
        z = F.normalize(torch.cat([net(x1), net(x2)]), dim=1)
        logits = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
        loss = F.cross_entropy(logits, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return steps * batch_size / (time.perf_counter() - start)


class _Timer(L.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == self.warmup:
            _sync(module.device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, module):
        _sync(module.device)
        self.end = time.perf_counter()


def ours_loop(cfg, net, images, augment, batch_size, steps, warmup, runtime):
    train = TrainConfig(steps=warmup + steps, batch_size=batch_size, optimizer="sgd", lr=0.1,
                        warmup_steps=0, log_every=10**9)
    module = SimCLRModule(net, BalancedContrastiveLoss(1.0, 1.0, 0.5, True), train, augment,
                          bn_views=cfg.model.bn_views, channels_last=cfg.model.channels_last)
    timer = _Timer(warmup)
    trainer = L.Trainer(accelerator=runtime.accelerator, devices=1, precision="32-true",
                        max_steps=warmup + steps, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=False,
                        callbacks=[timer], limit_val_batches=0, num_sanity_val_steps=0)
    loader = torch.utils.data.DataLoader(
        TensorBatches(images, batch_size, 0, labels=torch.zeros(len(images), dtype=torch.long),
                      infinite=True),
        batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    return steps * batch_size / (timer.end - timer.start)


def bench(scale: str = "cpu", backbone: str | None = None, batch_size: int | None = None,
          steps: int = 30, warmup: int = 5, accelerator: str = "auto",
          threads: int | None = None, rounds: int = 2, overrides: list[str] = ()) -> dict:
    """The training step of `scale`'s config (backbone, input shape, augmentation, BN per
    view, memory format), this package's Lightning loop vs plain PyTorch."""
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
    batch_size = cfg.train.batch_size
    runtime = setup(accelerator, "32-true", threads=threads or 1, seed=0)
    images, augment, in_shape = _inputs(cfg, max(4 * batch_size, 1024))
    kwargs = _backbone_kwargs(cfg, in_shape)
    device = runtime.device

    def fresh_net():
        torch.manual_seed(0)
        net = SimCLRNet(cfg.model.backbone, kwargs, cfg.model.proj_hidden, cfg.model.proj_dim)
        if cfg.model.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return net.to(device)

    # Alternate the two loops and keep each one's best, so that a busy machine (other
    # processes) penalises neither side systematically.
    plain, ours = [], []
    for _ in range(rounds):
        plain.append(plain_step_loop(fresh_net(), images.to(device), augment, batch_size,
                                     steps, warmup, device,
                                     temperature=cfg.train.temperature,
                                     channels_last=cfg.model.channels_last))
        ours.append(ours_loop(cfg, fresh_net(), images, augment, batch_size, steps, warmup,
                              runtime))
    return {"scale": scale, "data": cfg.data.name, "input": list(in_shape),
            "backbone": cfg.model.backbone, "backbone_kwargs": kwargs,
            "batch_size": batch_size, "bn_views": cfg.model.bn_views,
            "channels_last": cfg.model.channels_last, "steps": steps, "rounds": rounds,
            "device": runtime.device_name, "threads": runtime.threads,
            "ours_images_per_s": [round(v, 1) for v in ours],
            "plain_images_per_s": [round(v, 1) for v in plain],
            "ratio": round(max(ours) / max(plain), 3), "goal": 1.0}
