"""Throughput of gsg's training loop against a plain-PyTorch loop of the same SimSiam step.

"ours" is `SSLTraining.fit` on Fabric, as ``reproduce`` runs an arm (its epochs, data loader,
one forward call per step, ``fabric.backward``, optimiser and LR-schedule steps, loss
record). "plain" is the same step written out by hand: the same network, batches (the same
`TensorBatches` stream), batched augmentation, one forward per view, symmetric
negative-cosine loss, finiteness check, SGD with the same two parameter groups and per-step
warm-up + cosine schedule; bf16 autocast on CUDA and channels_last for ResNets on both sides.
One thread, steps timed after a warm-up, in `reprokit.bench`'s alternating rounds (each side
at its median step time; the ratio is the median over rounds). Images come from memory (the
digits, or random 32-px images for CIFAR configs): this measures the step, not the data
loader.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from gsg.config import GSGConfig
from gsg.data import digits_data, digits_views
from gsg.model import SiameseNet
from gsg.module import SSLModule, SSLTraining
from reprokit.bench import alternating_rounds, median_rate
from reprokit.data.augment import TensorAugment
from reprokit.data.images import TensorBatches
from reprokit.fabric import make_fabric
from reprokit.optim import warmup_cosine
from reprokit.progress import quiet_lightning
from reprokit.runtime import Runtime, setup


def _images(cfg: GSGConfig, n: int):
    if cfg.data.name == "digits":
        return digits_data(cfg.data).train.images, digits_views(cfg.data)
    size = cfg.data.image_size
    return torch.rand(n, 3, size, size), TensorAugment(flip=True, noise_std=0.0, erase_prob=0.0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class _TimedTraining(SSLTraining):
    """`SSLTraining` with a timestamp and the loss kept after every step (nothing else
    changes: the loss is the tensor the loop records anyway)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.times: list[float] = []
        self.losses: list[torch.Tensor] = []

    def train_step(self, batch) -> bool:
        ok = super().train_step(batch)
        _sync(self.fabric.device)
        self.times.append(time.perf_counter())
        self.losses.append(self._losses[-1])
        return ok


def _epochs_for(steps: int, loader) -> int:
    return -(-steps // len(loader))


def ours(cfg: GSGConfig, method: str, images, augment, runtime: Runtime,
         steps: int) -> tuple[list[float], list[float]]:
    """(end time of each step, [first loss, last loss]) of `steps` steps of the loop."""
    torch.manual_seed(0)
    fabric = make_fabric(runtime)
    loader = DataLoader(TensorBatches(images, cfg.train.batch_size, 0), batch_size=None)
    module = SSLModule(cfg, method, True, tuple(images.shape[1:]), augment)
    epochs = _epochs_for(steps, loader)
    training = _TimedTraining(fabric, module, epochs, len(loader))
    training.fit(loader)
    return training.times[:steps], [training.losses[0].item(), training.losses[steps - 1].item()]


def plain(cfg: GSGConfig, images, augment, runtime: Runtime,
          steps: int) -> tuple[list[float], list[float]]:
    """SimSiam's step by hand (see the module docstring); returns what `ours` does."""
    torch.manual_seed(0)
    device, t, batch = runtime.device, cfg.train, cfg.train.batch_size
    net = SiameseNet(cfg.model, "simsiam", True, tuple(images.shape[1:])).to(device)
    channels_last = cfg.model.channels_last and cfg.model.backbone.startswith("resnet")
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    loader = DataLoader(TensorBatches(images, batch, 0), batch_size=None)
    epochs = _epochs_for(steps, loader)
    total, warmup = epochs * len(loader), t.warmup_epochs * len(loader)
    predictor = list(net.predictor.parameters())
    body = [*net.backbone.parameters(), *net.projector.parameters()]
    opt = torch.optim.SGD([{"params": body}, {"params": predictor}],
                          lr=t.base_lr * batch / 256, momentum=t.momentum,
                          weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [
        lambda s: warmup_cosine(s, total, warmup),
        (lambda s: 1.0) if t.fixed_predictor_lr else (lambda s: warmup_cosine(s, total, warmup))])
    times, losses = [], []
    for epoch in range(epochs):
        loader.dataset.set_epoch(epoch)
        for x in loader:
            x = x.to(device)
            v = torch.cat([augment(x), augment(x)])
            if channels_last:
                v = v.contiguous(memory_format=torch.channels_last)
            with runtime.autocast():
                if cfg.model.bn_views == "per_view":
                    outs = [net(u) for u in v.split(batch)]
                    z, p = torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])
                else:
                    z, p = (out.view(2, batch, -1) for out in net(v))
            z, p = z.float(), p.float()
            loss = 0.5 * (-F.cosine_similarity(p[0], z[1].detach(), dim=-1)
                          - F.cosine_similarity(p[1], z[0].detach(), dim=-1)).mean()
            if not torch.isfinite(loss):
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.detach())
            _sync(device)
            times.append(time.perf_counter())
    return times[:steps], [losses[0].item(), losses[steps - 1].item()]


def run_bench(cfg: GSGConfig, method: str = "simsiam", steps: int = 200, rounds: int = 5,
              accelerator: str = "auto") -> dict:
    quiet_lightning()
    runtime = setup(accelerator, cfg.train.precision, threads=cfg.train.threads or None, seed=0)
    batch = cfg.train.batch_size
    warmup = max(2, steps // 5)
    images, augment = _images(cfg, max((steps + warmup) * batch // 4, 2 * batch))
    images = images.to(runtime.device)
    runs = {"ours": lambda: ours(cfg, method, images, augment, runtime, steps + warmup),
            "plain": lambda: plain(cfg, images, augment, runtime, steps + warmup)}
    losses: dict[str, list[float]] = {}

    def rate_of(side: str) -> float:
        times, side_losses = runs[side]()
        losses.setdefault(side, side_losses)   # deterministic: every call computes the same
        return median_rate(times, batch, warmup)

    rates, first = alternating_rounds({side: lambda side=side: rate_of(side) for side in runs},
                                      rounds)
    ours_rates, plain_rates = rates["ours"], rates["plain"]
    ratios = [o / p for o, p in zip(ours_rates, plain_rates)]
    return {"method": method, "backbone": cfg.model.backbone, "batch_size": batch,
            "device": runtime.device_name, "precision": runtime.precision,
            "threads": runtime.threads, "steps": steps, "rounds": rounds, "first": first,
            "images_per_second": [round(x, 1) for x in ours_rates],
            "plain_pytorch_simsiam_images_per_second": [round(x, 1) for x in plain_rates],
            "ratios": [round(x, 3) for x in ratios],
            "ratio": round(statistics.median(ratios), 3),
            # the same step (for simsiam): first and last loss of each side's first run
            "ours_losses": losses["ours"], "plain_losses": losses["plain"],
            "note": "ratio: median over rounds. GSG makes 4 views per image (2 for the "
                    "baselines): expect ~0.5 for *_gsg"}


__all__ = ["run_bench"]
