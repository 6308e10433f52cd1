"""The Lightning module: SimCLR with a pluggable contrastive loss.

A batch is either in-memory images ``(images, labels)`` (digits), augmented here on the
whole batch at once by ``TensorAugment`` (far faster on a CPU than per-image transforms), or
``([view_1, view_2], labels)`` from ``MultiViewDataset`` (CIFAR, ImageNet-LT). Both views go
through the network in one forward pass. On several GPUs the embeddings of every device are
gathered, so each anchor sees the negatives of the global batch, as in SimCLR.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn

from balcon.config import TrainConfig
from balcon.model import SimCLRNet
from reprokit.data.augment import TensorAugment
from reprokit.optim import LARS, split_decay_params, warmup_cosine_scheduler


class SimCLRModule(L.LightningModule):
    def __init__(self, net: SimCLRNet, loss: nn.Module, train: TrainConfig,
                 augment: TensorAugment | None = None):
        super().__init__()
        self.net, self.loss_fn, self.train_cfg, self.augment = net, loss, train, augment
        self.loss_curve: list[tuple[int, float]] = []
        self.nonfinite_steps = 0

    def views(self, batch) -> torch.Tensor:
        """Both views of the batch, stacked: (2B, C, H, W), view 1 first."""
        inputs = batch[0]
        if isinstance(inputs, list | tuple):
            return torch.cat([inputs[0], inputs[1]])
        if self.augment is None:
            raise RuntimeError("in-memory batches need a TensorAugment")
        # One call on the stacked batch: every image draws its own random transform, so the
        # two copies get independent views, with half the kernel launches of two calls.
        return self.augment(torch.cat([inputs, inputs]))

    def training_step(self, batch, batch_idx):
        z1, z2 = self.net(self.views(batch)).chunk(2)
        trainer = self._trainer  # None when the step is called by hand (tests, bench)
        if trainer is not None and trainer.world_size > 1:
            z1 = self.all_gather(z1, sync_grads=True).flatten(0, 1)
            z2 = self.all_gather(z2, sync_grads=True).flatten(0, 1)
        loss = self.loss_fn(z1, z2)
        step = self.global_step
        if step % self.train_cfg.log_every == 0 or step == self.train_cfg.steps - 1:
            value = loss.item()
            self.loss_curve.append((step, value))
            if not math.isfinite(value):
                self.nonfinite_steps += 1
            if trainer is not None:
                self.log("train/loss", loss, prog_bar=True)
        return loss

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
