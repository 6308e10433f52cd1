"""One Lightning module for SimSiam, SimSiam+GSG, BYOL and BYOL+GSG, with or without predictor.

A training step: views of the batch (2, or 4 for GSG) → a forward pass of the online network
(and of the EMA target for BYOL) per view, as the reference code calls its encoder, so
BatchNorm sees one view's batch (``model.bn_views: concat``: one pass over all views) → the
loss. BYOL's target network is updated after every optimiser step. A non-finite loss skips
the step, is recorded and stops the run (data, not a crash). Monitors (kNN, collapse) run
every ``eval.every`` epochs.
"""

from __future__ import annotations

import lightning as L
import torch

from gsg.config import GSGConfig
from gsg.losses import GuidedStopGradientLoss, SymmetricCosineLoss, random_partners
from gsg.model import EMATarget, SiameseNet, ema_momentum
from reprokit.data.augment import TensorAugment
from reprokit.optim import LARS, split_decay_params, warmup_cosine


class RecordEpoch(L.Callback):
    """Calls ``record_epoch`` at each epoch end; put it before any checkpoint callback so the
    checkpoint holds the epoch's record (callbacks run in list order, before the module hook)."""

    def on_train_epoch_end(self, trainer, module):
        module.record_epoch()


def parse_method(method: str) -> tuple[str, bool]:
    """``"byol_gsg"`` → ("byol", True)."""
    family, _, suffix = method.partition("_")
    if family not in ("simsiam", "byol") or suffix not in ("", "gsg"):
        raise ValueError(f"unknown method {method!r}")
    return family, suffix == "gsg"


class SSLModule(L.LightningModule):
    def __init__(self, cfg: GSGConfig, method: str, predictor: bool = True,
                 in_shape: tuple[int, int, int] = (1, 8, 8), steps_per_epoch: int = 1,
                 epochs: int | None = None, augment: TensorAugment | None = None,
                 monitor=None, seed: int = 0):
        super().__init__()
        self.cfg, self.method, self.seed = cfg, method, seed
        self.family, self.gsg = parse_method(method)
        self.n_views = 4 if self.gsg else 2
        self.net = SiameseNet(cfg.model, self.family, predictor, in_shape)
        self.target = EMATarget(self.net) if self.family == "byol" else None
        self.loss_fn = GuidedStopGradientLoss() if self.gsg else SymmetricCosineLoss()
        self.augment, self.monitor = augment, monitor
        self.epochs = epochs or cfg.train.epochs
        self.total_steps = self.epochs * steps_per_epoch
        self.channels_last = cfg.model.channels_last and cfg.model.backbone.startswith("resnet")
        self.history: list[dict] = []     # one record per monitored epoch (saved in checkpoints)
        self.nonfinite_step: int | None = None
        self._losses: list[torch.Tensor] = []

    # ---------------------------------------------------------------- training

    def make_views(self, batch) -> torch.Tensor:
        """(V·B, C, H, W): V views of the batch, view-major."""
        if self.augment is None:       # a DataLoader of MultiViewDataset: ([views], labels)
            views, _ = batch
            views = views[:self.n_views]
        else:                          # in-memory images: batched augmentation on the device
            views = [self.augment(batch) for _ in range(self.n_views)]
        x = torch.cat(views)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward_views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z, p, t), each (V, B, d): projections, predictions and targets (BYOL: the EMA
        network's projections; SimSiam: z). ``bn_views: per_view`` runs the networks once per
        view, so every BatchNorm normalises over the B images of one view as in the reference
        code; ``concat`` runs the V·B images in one pass (BN statistics over all views)."""
        v, b = self.n_views, x.shape[0] // self.n_views
        if self.cfg.model.bn_views == "per_view":
            outs = [self.net(xv) for xv in x.split(b)]
            z, p = torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])
            t = (torch.stack([self.target(xv) for xv in x.split(b)])
                 if self.target is not None else None)
        else:
            z, p = self.net(x)
            z, p = z.view(v, b, -1), p.view(v, b, -1)
            t = self.target(x).view(v, b, -1) if self.target is not None else None
        z, p = z.float(), p.float()
        return z, p, (t.float() if t is not None else z)

    def compute_loss(self, x: torch.Tensor) -> torch.Tensor:
        """The loss of one step on (V·B, C, H, W) view-major views."""
        z, p, t = self.forward_views(x)
        b = z.shape[1]
        if self.gsg:  # distances on the targets, as the reference code measures them
            return self.loss_fn(t, p, t, random_partners(b, device=z.device))
        return self.loss_fn(p[0], p[1], t[0], t[1])

    def training_step(self, batch, batch_idx):
        loss = self.compute_loss(self.make_views(batch))
        if not torch.isfinite(loss):
            self.nonfinite_step = self.global_step
            self.trainer.should_stop = True
            return None                 # skip the update: the run ends with its data recorded
        self._losses.append(loss.detach())
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.target is not None:
            tau = ema_momentum(self.cfg.train.ema_momentum, self.global_step, self.total_steps,
                               self.cfg.train.ema_cosine)
            self.target.update(self.net, tau)

    def record_epoch(self) -> None:
        """Mean loss of the epoch and, every ``eval.every`` epochs, the monitors (by `RecordEpoch`)."""
        epoch = self.current_epoch + 1
        loss = torch.stack(self._losses).mean().item() if self._losses else float("nan")
        self._losses.clear()
        last = epoch == self.epochs or self.trainer.should_stop
        if self.monitor is not None and (epoch % self.cfg.eval.every == 0 or last or epoch == 1):
            record = {"epoch": epoch, "loss": loss,
                      **self.monitor(self.net, self.device, seed=self.seed)}
            self.history.append(record)

    # ---------------------------------------------------------------- optimiser

    def configure_optimizers(self):
        t = self.cfg.train
        # Under DDP train.batch_size is per device: the linear scaling rule and the schedule's
        # length follow the global batch (the loader is sharded, so fewer steps per epoch).
        trainer = self._trainer
        world = trainer.world_size if trainer is not None else 1
        if trainer is not None:
            self.total_steps = int(trainer.estimated_stepping_batches)
        lr = t.base_lr * self.cfg.train.batch_size * world / 256
        pred_params = list(self.net.predictor.parameters())
        pred_ids = {id(p) for p in pred_params}
        body = torch.nn.ModuleList([self.net.backbone, self.net.projector])
        if t.optimizer == "lars":
            decay, no_decay = split_decay_params(body)
            groups = [dict(params=decay), dict(params=no_decay, weight_decay=0.0, lars=False)]
            opt_cls, kwargs = LARS, dict(lr=lr, momentum=t.momentum, weight_decay=t.weight_decay)
        else:
            groups = [dict(params=[p for p in body.parameters() if id(p) not in pred_ids])]
            opt_cls, kwargs = torch.optim.SGD, dict(lr=lr, momentum=t.momentum,
                                                    weight_decay=t.weight_decay)
        n_body = len(groups)
        if pred_params:
            groups.append(dict(params=pred_params))
        opt = opt_cls(groups, **kwargs)
        warmup = t.warmup_epochs * self.total_steps // max(1, self.epochs)

        def cosine(step: int) -> float:
            return warmup_cosine(step, self.total_steps, warmup)

        def fixed(step: int) -> float:
            return 1.0

        lambdas = [cosine] * n_body + ([fixed if t.fixed_predictor_lr else cosine]
                                       if pred_params else [])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambdas)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---------------------------------------------------------------- checkpoints

    def on_train_epoch_start(self) -> None:
        # Lightning calls set_epoch on samplers only; an in-memory TensorBatches is told here,
        # so a resumed run replays the interrupted epoch's batch order.
        loader = self.trainer.train_dataloader
        set_epoch = getattr(getattr(loader, "dataset", None), "set_epoch", None)
        if callable(set_epoch):
            set_epoch(self.current_epoch)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["gsg_history"] = self.history
        checkpoint["gsg_nonfinite_step"] = self.nonfinite_step
        # the views and GSG's partners come from torch's global generator: restoring it makes a
        # resumed run draw what the uninterrupted one would have (every rank draws alike)
        checkpoint["gsg_torch_rng"] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = checkpoint.get("gsg_history", [])
        self.nonfinite_step = checkpoint.get("gsg_nonfinite_step")
        if "gsg_torch_rng" in checkpoint:
            torch.set_rng_state(checkpoint["gsg_torch_rng"])
