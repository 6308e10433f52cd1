"""``balcon bench``: images/s of a SimCLR training step, this package vs plain PyTorch.

Both loops do the same work on the same backbone and batch: two batched TensorAugment views,
one forward pass, the contrastive loss, backward, an SGD step. "ours" is the Lightning
``SimCLRModule`` under ``lightning.Trainer`` (as ``reproduce`` runs it) with the fused
balanced loss at α = λ = 1; "plain" is a hand-written loop with NT-Xent as cross-entropy.
"""

from __future__ import annotations

import time

import lightning as L
import torch
import torch.nn.functional as F

from balcon.config import TrainConfig
from balcon.losses import BalancedContrastiveLoss
from balcon.model import SimCLRNet
from balcon.module import SimCLRModule
from reprokit.data.augment import TensorAugment, digits_augment
from reprokit.data.images import TensorBatches
from reprokit.errors import ConfigError
from reprokit.runtime import setup

SHAPES = {"digits_mlp": (1, 8, 8), "digits_cnn": (1, 8, 8), "resnet18_cifar": (3, 32, 32),
          "resnet50": (3, 96, 96)}


def _inputs(backbone: str, n: int) -> tuple[torch.Tensor, TensorAugment, dict]:
    if backbone not in SHAPES:
        raise ConfigError(f"bench: unknown backbone {backbone!r}; choose one of {sorted(SHAPES)}")
    c, h, w = SHAPES[backbone]
    images = torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(0))
    augment = digits_augment() if c == 1 else TensorAugment(flip=True, brightness=0.4,
                                                            contrast=0.4)
    kwargs = {"in_channels": c} if backbone != "digits_mlp" else {}
    return images, augment, kwargs


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_step_loop(net, images, augment, batch_size, steps, warmup, device, temperature=0.5):
    """The reference: a minimal SimCLR step in plain PyTorch."""
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    batches = iter(TensorBatches(images, batch_size, 0,
                                 labels=torch.zeros(len(images), dtype=torch.long), infinite=True))
    n2 = 2 * batch_size
    targets = torch.arange(n2, device=device).roll(batch_size)
    eye = torch.eye(n2, dtype=torch.bool, device=device)
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        x, _ = next(batches)
        x = x.to(device)
        z = F.normalize(net(torch.cat([augment(x), augment(x)])), dim=1)
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


def ours_loop(net, images, augment, batch_size, steps, warmup, runtime):
    cfg = TrainConfig(steps=warmup + steps, batch_size=batch_size, optimizer="sgd", lr=0.1,
                      warmup_steps=0, log_every=10**9)
    module = SimCLRModule(net, BalancedContrastiveLoss(1.0, 1.0, 0.5, True), cfg, augment)
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


def bench(backbone: str = "digits_cnn", batch_size: int = 256, steps: int = 30, warmup: int = 5,
          accelerator: str = "auto", threads: int | None = None) -> dict:
    if steps < 1 or warmup < 1 or batch_size < 2:
        raise ConfigError("bench: --steps and --warmup must be ≥ 1, --batch-size ≥ 2")
    runtime = setup(accelerator, "32-true", threads=threads, seed=0)
    images, augment, kwargs = _inputs(backbone, max(4 * batch_size, 1024))
    device = runtime.device

    def fresh_net():
        torch.manual_seed(0)
        return SimCLRNet(backbone, kwargs, 128, 64).to(device)

    # Alternate the two loops twice and keep each one's best, so that a busy machine
    # (other processes) penalises neither side systematically.
    plain, ours = [], []
    for _ in range(2):
        plain.append(plain_step_loop(fresh_net(), images.to(device), augment, batch_size,
                                     steps, warmup, device))
        ours.append(ours_loop(fresh_net(), images, augment, batch_size, steps, warmup, runtime))
    return {"backbone": backbone, "batch_size": batch_size, "steps": steps,
            "device": runtime.device_name, "threads": runtime.threads,
            "ours_images_per_s": round(max(ours), 1), "plain_images_per_s": round(max(plain), 1),
            "ratio": round(max(ours) / max(plain), 3), "goal": 1.0}
