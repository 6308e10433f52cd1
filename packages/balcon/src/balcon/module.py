"""The Lightning module: SimCLR with a pluggable contrastive loss.

A batch is either in-memory images ``(images, labels)`` (digits), augmented here on the
whole batch at once by ``TensorAugment`` (far faster on a CPU than per-image transforms), or
``([view_1, view_2], labels)`` from ``MultiViewDataset`` (CIFAR, ImageNet-LT).

BatchNorm: by default (``bn_views="per_view"``) the network is called once per view, as the
PyTorch SimCLR reference code does (``h_i = f(x_i); h_j = f(x_j)``), so each view's BN
statistics cover B images; ``"joint"`` runs both views in one pass (statistics over 2B, as
google-research/simclr's TF code does with its concatenated batch). On several GPUs the
embeddings of every device are gathered, so each anchor sees the negatives of the global
batch, as in SimCLR.

Optimisation is manual (one backward and one optimizer step per batch, no closure): the
same work as a plain PyTorch loop, with less of Lightning's per-step machinery around it.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn

from balcon.config import TrainConfig
from balcon.model import SimCLRNet
from reprokit.data.augment import TensorAugment
from reprokit.errors import ConfigError
from reprokit.optim import LARS, split_decay_params, warmup_cosine_scheduler

BN_VIEWS = ("per_view", "joint")


class SimCLRModule(L.LightningModule):
    def __init__(self, net: SimCLRNet, loss: nn.Module, train: TrainConfig,
                 augment: TensorAugment | None = None, bn_views: str = "per_view",
                 channels_last: bool = False, seed: int = 0):
        super().__init__()
        if bn_views not in BN_VIEWS:
            raise ConfigError(f"model.bn_views must be one of {BN_VIEWS}, got {bn_views!r}")
        self.net, self.loss_fn, self.train_cfg, self.augment = net, loss, train, augment
        self.bn_views, self.channels_last, self.seed = bn_views, channels_last, seed
        self.automatic_optimization = False
        self.loss_curve: list[tuple[int, float]] = []
        self.nonfinite_steps = 0
        self.seen_batches: list[torch.Tensor] = []  # first labels/indices per step (DDP tests)
        self.record_batches = False

    def views(self, batch) -> torch.Tensor:
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
        rank = self.global_rank if self._trainer is not None else 0
        gen = torch.Generator(device=inputs.device).manual_seed(
            (self.seed * 1_000_003 + self.global_step) * 1024 + rank)
        return self.augment(torch.cat([inputs, inputs]), generator=gen)

    def embed(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projector outputs (z1, z2) of the stacked views, BN per view or over both."""
        if self.channels_last and views.ndim == 4:
            views = views.contiguous(memory_format=torch.channels_last)
        if self.bn_views == "joint":
            return self.net(views).chunk(2)
        v1, v2 = views.chunk(2)
        return self.net(v1), self.net(v2)

    def training_step(self, batch, batch_idx):
        step = self.global_step  # completed steps; the optimizer step below increments it
        if self.record_batches:
            self.seen_batches.append(torch.as_tensor(batch[1]).clone())
        z1, z2 = self.embed(self.views(batch))
        trainer = self._trainer  # None when the step is called by hand (tests, bench)
        if trainer is not None and trainer.world_size > 1:
            z1 = self.all_gather(z1, sync_grads=True).flatten(0, 1)
            z2 = self.all_gather(z2, sync_grads=True).flatten(0, 1)
        loss = self.loss_fn(z1, z2)
        if trainer is not None:
            opt, sched = self.optimizers(), self.lr_schedulers()
            opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            opt.step()
            sched.step()
        if step % self.train_cfg.log_every == 0 or step == self.train_cfg.steps - 1:
            value = loss.item()
            self.loss_curve.append((step, value))
            if not math.isfinite(value):
                self.nonfinite_steps += 1
            if trainer is not None:
                self.log("train/loss", loss, prog_bar=True)
        return loss

    # The loss curve is part of an arm's result: keep it across a checkpoint and --resume.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["balcon"] = {"loss_curve": self.loss_curve,
                                "nonfinite_steps": self.nonfinite_steps}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("balcon", {})
        self.loss_curve = [tuple(p) for p in state.get("loss_curve", [])]
        self.nonfinite_steps = state.get("nonfinite_steps", 0)

    def configure_optimizers(self):
        cfg = self.train_cfg
        lr = cfg.lr * cfg.batch_size / 256
        decay, no_decay = split_decay_params(self.net)
        groups = [{"params": decay, "weight_decay": cfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        if cfg.optimizer == "lars":
            groups[1]["lars"] = False  # SimCLR exempts biases and BN gains from LARS
            opt = LARS(groups, lr=lr, momentum=cfg.momentum)
        else:
            opt = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
        sched = warmup_cosine_scheduler(opt, cfg.steps, cfg.warmup_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
