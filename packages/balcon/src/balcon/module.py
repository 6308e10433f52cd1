"""SimCLR with a pluggable contrastive loss, and the training loop that runs it.

A batch is either in-memory images ``(images, labels)`` (digits), augmented here on the
whole batch at once by ``TensorAugment`` (far faster on a CPU than per-image transforms), or
``([view_1, view_2], labels)`` from ``MultiViewDataset`` (CIFAR, ImageNet-LT).

BatchNorm: by default (``bn_views="per_view"``) the network is called once per view, as the
PyTorch SimCLR reference code does (``h_i = f(x_i); h_j = f(x_j)``), so each view's BN
statistics cover B images; ``"joint"`` runs both views in one pass (statistics over 2B, as
google-research/simclr's TF code does with its concatenated batch). On several GPUs the
embeddings of every device are gathered, so each anchor sees the negatives of the global
batch, as in SimCLR.

The loop (`fit`) is a plain PyTorch loop on Lightning Fabric: Fabric places the model and
batches, launches DDP and writes collective checkpoints, for tens of µs of wrapper calls per
step (see `reprokit.fabric`); ``lightning.Trainer``'s hooks, closures and result collection
cost ≈ 0.4 ms, 10 % of a step of the cpu scale's MLP. The whole forward of a step (views →
embeddings → gather → loss) is one call — of the DDP-wrapped module under DDP, so DDP sees one
forward per backward; of the module itself on one device (`reprokit.fabric.step_forward`).
"""

from __future__ import annotations

import math
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from balcon.config import TrainConfig
from balcon.model import SimCLRNet
from reprokit.data.augment import TensorAugment
from reprokit.errors import ConfigError, DatasetError
from reprokit.fabric import make_fabric, save_atomic, step_forward
from reprokit.optim import LARS, split_decay_params, warmup_cosine_scheduler
from reprokit.progress import track

BN_VIEWS = ("per_view", "joint")


class SimCLRModule(nn.Module):
    def __init__(self, net: SimCLRNet, loss: nn.Module, augment: TensorAugment | None = None,
                 bn_views: str = "per_view", channels_last: bool = False, seed: int = 0):
        super().__init__()
        if bn_views not in BN_VIEWS:
            raise ConfigError(f"model.bn_views must be one of {BN_VIEWS}, got {bn_views!r}")
        self.net, self.loss_fn, self.augment = net, loss, augment
        self.bn_views, self.channels_last, self.seed = bn_views, channels_last, seed
        self.global_rank = 0   # set by `fit`: the views' random stream depends on the rank
        self.gather = None     # set by `fit` under DDP: all-gather with gradients, flattened
        self.loss_curve: list[tuple[int, float]] = []
        self.nonfinite_steps = 0
        self.seen_batches: list[torch.Tensor] = []  # first labels/indices per step (DDP tests)
        self.record_batches = False

    def views(self, batch, step: int) -> torch.Tensor:
        """Both views of the batch, stacked: (2B, C, H, W), view 1 first."""
        inputs = batch[0]
        if isinstance(inputs, list | tuple):
            return torch.cat([inputs[0], inputs[1]])
        if self.augment is None:
            raise RuntimeError("in-memory batches need a TensorAugment")
        # One call on the stacked batch: every image draws its own random transform, so the
        # two copies get independent views, with half the kernel launches of two calls.
        # The random stream is a function of (seed, step, rank): a resumed run draws the
        # same views as an uninterrupted one, and DDP ranks draw different ones.
        gen = torch.Generator(device=inputs.device).manual_seed(
            (self.seed * 1_000_003 + step) * 1024 + self.global_rank)
        return self.augment(torch.cat([inputs, inputs]), generator=gen)

    def embed(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projector outputs (z1, z2) of the stacked views, BN per view or over both."""
        if self.channels_last and views.ndim == 4:
            views = views.contiguous(memory_format=torch.channels_last)
        if self.bn_views == "joint":
            return self.net(views).chunk(2)
        v1, v2 = views.chunk(2)
        return self.net(v1), self.net(v2)

    def forward(self, batch, step: int) -> torch.Tensor:
        """The loss of one training step (`step`: the optimizer steps completed before it)."""
        if self.record_batches:
            self.seen_batches.append(torch.as_tensor(batch[1]).clone())
        z1, z2 = self.embed(self.views(batch, step))
        if self.gather is not None:  # every rank's loss sees the global batch's negatives
            z1, z2 = self.gather(z1), self.gather(z2)
        return self.loss_fn(z1, z2)


def build_optimizer(net: nn.Module, cfg: TrainConfig):
    """SGD or LARS (SimCLR's linear lr scaling, no decay on biases and norm gains) and the
    per-step warmup-cosine schedule."""
    lr = cfg.lr * cfg.batch_size / 256
    decay, no_decay = split_decay_params(net)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "lars":
        groups[1]["lars"] = False  # SimCLR exempts biases and BN gains from LARS
        opt = LARS(groups, lr=lr, momentum=cfg.momentum)
    else:
        opt = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    return opt, warmup_cosine_scheduler(opt, cfg.steps, cfg.warmup_steps)


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a scheduler's kill) ends the loop like Ctrl-C: with a message, not silently."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _endless(loader):
    """Batches without end: epoch after epoch of a finite loader (natural images)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise DatasetError("the training loader yields no batch (fewer images than "
                               "train.batch_size?)")


def fit(module: SimCLRModule, cfg: TrainConfig, make_loader, runtime, devices: int = 1, *,
        checkpoint: Path | None = None, name: str = "training", on_step=None,
        progress: bool = True):
    """Train `module` for ``cfg.steps`` optimizer steps; returns the Fabric it ran on.

    `make_loader(start_step)` builds the training loader, continuing at `start_step`. With a
    `checkpoint` path and ``cfg.checkpoint_every > 0``, the state is saved there every that
    many steps and a run that finds the file resumes from it. `on_step(steps_done)` is called
    after every optimizer step (the bench's timer); `progress` shows a bar named `name` on a
    terminal (rank 0).
    """
    fabric = make_fabric(runtime, devices)
    if devices > 1 and runtime.accelerator == "cuda":
        # SyncBatchNorm needs NCCL; on CPU (gloo) each rank normalises its own shard
        module.net = nn.SyncBatchNorm.convert_sync_batchnorm(module.net)
    optimizer, scheduler = build_optimizer(module.net, cfg)
    model, optimizer = fabric.setup(module, optimizer)
    forward = step_forward(fabric, model)  # the module itself on one device
    every = cfg.checkpoint_every if checkpoint is not None else 0
    start = 0
    if every and Path(checkpoint).is_file():
        rest = fabric.load(checkpoint, {"model": model, "optimizer": optimizer,
                                        "scheduler": scheduler})
        start = int(rest["global_step"])
        module.loss_curve = [tuple(p) for p in rest["loss_curve"]]
        module.nonfinite_steps = int(rest["nonfinite_steps"])
    module.global_rank = fabric.global_rank
    if fabric.world_size > 1:
        module.gather = lambda z: fabric.all_gather(z, sync_grads=True).flatten(0, 1)
    # In-memory data shards its global batches itself (an IterableDataset: Fabric leaves it
    # alone); a map-style loader gets a DistributedSampler under DDP.
    # (on a CPU there is nothing to move: the wrapper's per-batch copy would be pure cost)
    loader = fabric.setup_dataloaders(make_loader(start),
                                      move_to_device=fabric.device.type != "cpu")
    step, saved = start, (start if start else None)
    try:
        with _sigterm_as_interrupt():
            batches = _endless(loader)
            if progress and fabric.is_global_zero:
                batches = track(batches, name, total=cfg.steps - start)
            for step, batch in zip(range(start, cfg.steps), batches):
                loss = forward(batch, step)
                optimizer.zero_grad(set_to_none=True)
                fabric.backward(loss)
                optimizer.step()
                scheduler.step()
                if step % cfg.log_every == 0 or step == cfg.steps - 1:
                    value = loss.item()
                    module.loss_curve.append((step, value))
                    if not math.isfinite(value):
                        module.nonfinite_steps += 1
                if on_step is not None:
                    on_step(step + 1)
                if every and (step + 1) % every == 0:
                    save_atomic(fabric, checkpoint, {
                        "model": model, "optimizer": optimizer, "scheduler": scheduler,
                        "global_step": step + 1, "loss_curve": module.loss_curve,
                        "nonfinite_steps": module.nonfinite_steps})
                    saved = step + 1
    except KeyboardInterrupt:
        where = f"the checkpoint of step {saved} is {checkpoint}" if saved else "no checkpoint"
        raise SystemExit(f"{name}: interrupted at step {step}; {where}; rerun with --resume "
                         "to continue") from None
    finally:
        module.gather = None  # the module outlives this Fabric (evaluation, results)
    return fabric
