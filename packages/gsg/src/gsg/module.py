"""SimSiam, SimSiam+GSG, BYOL and BYOL+GSG (with or without predictor), and their training loop.

`SSLModule.forward` is a whole training step's forward: views of the batch (2, or 4 for GSG)
→ the online network (and BYOL's EMA target) once per view, as the reference code calls its
encoder, so BatchNorm sees one view's batch (``model.bn_views: concat``: one pass over all
views) → the loss. `SSLTraining` runs it on Lightning Fabric (devices, precision, DDP) in a
plain loop: a step is one forward call of the module (`reprokit.fabric.step_forward`),
``fabric.backward``, the optimiser and LR-schedule steps, then BYOL's target update. A
non-finite loss skips the step, is recorded and ends the run (data, not a crash). Monitors
(kNN, collapse) run every ``eval.every`` epochs; ``last.ckpt`` is written every
``train.checkpoint_every`` epochs and resumed from.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gsg.config import GSGConfig
from gsg.losses import GuidedStopGradientLoss, SymmetricCosineLoss, random_partners
from gsg.model import EMATarget, SiameseNet, ema_momentum
from reprokit.data.augment import TensorAugment
from reprokit.fabric import save_atomic, step_forward
from reprokit.optim import LARS, split_decay_params, warmup_cosine


def parse_method(method: str) -> tuple[str, bool]:
    """``"byol_gsg"`` → ("byol", True)."""
    family, _, suffix = method.partition("_")
    if family not in ("simsiam", "byol") or suffix not in ("", "gsg"):
        raise ValueError(f"unknown method {method!r}")
    return family, suffix == "gsg"


class SSLModule(nn.Module):
    def __init__(self, cfg: GSGConfig, method: str, predictor: bool = True,
                 in_shape: tuple[int, int, int] = (1, 8, 8),
                 augment: TensorAugment | None = None):
        super().__init__()
        self.cfg, self.method = cfg, method
        self.family, self.gsg = parse_method(method)
        self.n_views = 4 if self.gsg else 2
        self.net = SiameseNet(cfg.model, self.family, predictor, in_shape)
        self.target = EMATarget(self.net) if self.family == "byol" else None
        self.loss_fn = GuidedStopGradientLoss() if self.gsg else SymmetricCosineLoss()
        self.augment = augment
        self.channels_last = cfg.model.channels_last and cfg.model.backbone.startswith("resnet")

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

    def forward(self, batch) -> torch.Tensor:
        """The loss of a training batch: one call per step (Fabric wraps it once)."""
        return self.compute_loss(self.make_views(batch))

    def update_target(self, step: int, total_steps: int) -> None:
        """BYOL: the EMA step after optimiser step `step` (counted from 1)."""
        if self.target is not None:
            t = self.cfg.train
            self.target.update(self.net, ema_momentum(t.ema_momentum, step, total_steps,
                                                      t.ema_cosine))

    def configure_optimizers(self, total_steps: int, epochs: int, world_size: int = 1):
        """SGD (or LARS) with a per-step warm-up + cosine schedule; the predictor's LR stays
        fixed with ``train.fixed_predictor_lr`` (SimSiam). Under DDP ``train.batch_size`` is
        per device: the linear scaling rule follows the global batch."""
        t = self.cfg.train
        lr = t.base_lr * t.batch_size * world_size / 256
        pred_params = list(self.net.predictor.parameters())
        pred_ids = {id(p) for p in pred_params}
        body = nn.ModuleList([self.net.backbone, self.net.projector])
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
        warmup = t.warmup_epochs * total_steps // max(1, epochs)

        def cosine(step: int) -> float:
            return warmup_cosine(step, total_steps, warmup)

        def fixed(step: int) -> float:
            return 1.0

        lambdas = [cosine] * n_body + ([fixed if t.fixed_predictor_lr else cosine]
                                       if pred_params else [])
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambdas)


class SSLTraining:
    """One arm's training on a launched Fabric: `fit` runs the epochs (from a checkpoint when
    given one); `step`, `epoch` (completed), `history` and `nonfinite_step` are its record."""

    def __init__(self, fabric, module: SSLModule, epochs: int, steps_per_epoch: int,
                 monitor=None, seed: int = 0, checkpoint: Path | None = None,
                 checkpoint_every: int = 0):
        self.fabric, self.module, self.monitor, self.seed = fabric, module, monitor, seed
        self.epochs, self.total_steps = epochs, epochs * steps_per_epoch
        optimizer, self.scheduler = module.configure_optimizers(self.total_steps, epochs,
                                                                fabric.world_size)
        self.model, self.optimizer = fabric.setup(module, optimizer)
        self.forward = step_forward(fabric, self.model)
        self.checkpoint, self.checkpoint_every = checkpoint, checkpoint_every
        self.step = self.epoch = 0
        self.history: list[dict] = []     # one record per monitored epoch
        self.nonfinite_step: int | None = None
        self._losses: list[torch.Tensor] = []

    def train_step(self, batch) -> bool:
        """One optimiser step; False (and no update) when the loss is not finite."""
        loss = self.forward(batch)
        if not torch.isfinite(loss):
            self.nonfinite_step = self.step
            return False
        self.optimizer.zero_grad(set_to_none=True)
        self.fabric.backward(loss)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.module.update_target(self.step, self.total_steps)
        self._losses.append(loss.detach())
        return True

    def fit(self, loader, resume_from: Path | None = None) -> None:
        if resume_from is not None:
            self.load(resume_from)
        device_batches = self.fabric.device.type != "cpu"
        while self.epoch < self.epochs and self.nonfinite_step is None:
            # every epoch's order is a function of (seed, epoch): a resumed run replays it
            set_epoch = getattr(getattr(loader, "dataset", None), "set_epoch", None)
            if callable(set_epoch):
                set_epoch(self.epoch)
            elif hasattr(getattr(loader, "sampler", None), "set_epoch"):
                loader.sampler.set_epoch(self.epoch)
            for batch in loader:
                if not self.train_step(self.fabric.to_device(batch) if device_batches else batch):
                    break
            self.epoch += 1
            self.record_epoch()
            if (self.checkpoint is not None and self.checkpoint_every
                    and self.epoch % self.checkpoint_every == 0 and self.nonfinite_step is None):
                self.save(self.checkpoint)

    def record_epoch(self) -> None:
        """The epoch's mean loss and, every ``eval.every`` epochs (and the first and last),
        the monitors."""
        loss = torch.stack(self._losses).mean().item() if self._losses else float("nan")
        self._losses.clear()
        every = self.module.cfg.eval.every
        last = self.epoch == self.epochs or self.nonfinite_step is not None
        if self.monitor is not None and (self.epoch % every == 0 or last or self.epoch == 1):
            self.history.append({"epoch": self.epoch, "loss": loss,
                                 **self.monitor(self.module.net, self.fabric.device,
                                                seed=self.seed)})

    def _state(self) -> dict:
        return {"module": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler,
                "epoch": self.epoch, "step": self.step, "history": self.history,
                "nonfinite_step": self.nonfinite_step,
                # the views and GSG's partners come from torch's global generator: restoring
                # it makes a resumed run draw what the uninterrupted one would have
                "torch_rng": torch.get_rng_state()}

    def save(self, path: Path) -> None:
        save_atomic(self.fabric, path, self._state())

    def load(self, path: Path) -> None:
        state = self._state()
        self.fabric.load(path, state)
        self.epoch, self.step, self.history = state["epoch"], state["step"], state["history"]
        self.nonfinite_step = state["nonfinite_step"]
        torch.set_rng_state(state["torch_rng"])
