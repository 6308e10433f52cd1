"""Lightning module: AdamW with warmup + cosine, clipping, and the paper's instrumentation.

Per optimizer step the module keeps the loss, the global gradient norm *before clipping* and
the largest |x| of the residual stream on the training batch as device tensors and reads them to the host every ``probe.sync_every`` steps (no per-step
GPU sync). Every ``probe.every`` steps it probes the residual stream on a fixed batch and
the per-layer gradient norms. A diverged run (NaN/Inf, or a loss beyond the bound) stops
the trainer and is recorded as data. Under DDP the recorded loss is the mean over ranks and
the stream peak the max over ranks (one all-reduce per host read), so the history describes
the global batch.

The history lives in the module and travels in its checkpoints, so a resumed arm ends with
the same history as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

# Lightning 2.6 trips over its own deprecation on import with torch 2.14; it is harmless.
warnings.filterwarnings("ignore", message=".*treespec.*")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402

from perln.config import ProbeConfig, TrainConfig  # noqa: E402
from perln.model import GPT, ModelConfig  # noqa: E402
from perln.probes import DivergenceDetector, activation_stats, layer_grad_norms  # noqa: E402


def lr_factor(step: int, total: int, warmup_fraction: float, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to `min_ratio` at the last step."""
    warmup = int(warmup_fraction * total)
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup - 1))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def new_history() -> dict:
    return {"step": [], "loss": [], "grad_norm": [], "lr": [],
            "peak_abs": [],     # max |x| of the residual stream, training batch, any block
            "probes": [],       # {step, variance[L], max_abs[L]}: weights after `step` updates
            "grad_probes": [],  # {step, layer_grad_norm[L]}: gradient of optimizer step `step`
            "evals": []}        # {step, val_loss}


class PerlnModule(L.LightningModule):
    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, probe_cfg: ProbeConfig,
                 lr: float, probe_idx: torch.Tensor, val_batches: list, instrument: bool = True):
        super().__init__()
        self.model = GPT(model_cfg, train_cfg.stream_dtype)
        self.model.track_peak = instrument
        # a plain attribute, not a second registered child (that would duplicate the weights
        # in every state dict)
        self.__dict__["forward_fn"] = torch.compile(self.model) if train_cfg.compile \
            else self.model
        self.train_cfg, self.probe_cfg, self.lr = train_cfg, probe_cfg, lr
        self.probe_idx, self.val_batches = probe_idx, val_batches
        self.instrument = instrument
        self.detector = DivergenceDetector(
            probe_cfg.divergence_factor * math.log(model_cfg.vocab_size),
            probe_cfg.divergence_patience)
        self.grad_scaled = False  # 16-mixed: an inf gradient is a skipped step, not divergence
        self.history = new_history()
        self.diverged: dict | None = None
        self._micro_losses: list[torch.Tensor] = []
        self._micro_peaks: list[torch.Tensor] = []
        self._pending: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._last_probe = -1

    # ------------------------------------------------------------ training
    def training_step(self, batch, batch_idx):
        x, y = batch
        _, loss = self.forward_fn(x, y)
        if self.instrument:
            self._micro_losses.append(loss.detach())
            if self.model.peak is not None:
                self._micro_peaks.append(self.model.peak)
        return loss

    def on_fit_start(self) -> None:
        # Lightning's 16-mixed runs a GradScaler, which skips steps whose gradients overflow
        self.grad_scaled = str(self.trainer.precision).startswith("16")
        self.detector.allow_inf_grad = self.grad_scaled

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]      # matrices and embeddings
        no_decay = [p for p in params if p.dim() < 2]    # norm gains and biases
        t = self.train_cfg
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": t.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr, betas=(t.beta1, t.beta2), fused=True)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, t.steps, t.warmup_fraction, t.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None):
        """Called once per optimizer step with unclipped gradients: record, then clip."""
        step = self.global_step
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.train_cfg.grad_clip > 0:
            total = torch.nn.utils.clip_grad_norm_(params, self.train_cfg.grad_clip)
        elif self.instrument:
            total = torch.nn.utils.get_total_norm([p.grad for p in params])
        if not self.instrument:
            return
        if self.grad_probe_due(step):
            # Clipping scales every layer alike; undo it so the per-layer norms are pre-clip.
            scale = 1.0
            if self.train_cfg.grad_clip > 0:
                scale = max(1.0, float(total) / self.train_cfg.grad_clip)
            norms = [n * scale for n in layer_grad_norms(self.model)]
            self.history["grad_probes"].append({"step": step, "layer_grad_norm": norms})
        loss = (torch.stack(self._micro_losses).mean() if self._micro_losses
                else total * float("nan"))
        peak = (torch.stack(self._micro_peaks).amax() if self._micro_peaks
                else total * float("nan"))
        self._micro_losses.clear()
        self._micro_peaks.clear()
        self._pending.append((step, loss, total, peak))
        if len(self._pending) >= self.probe_cfg.sync_every:
            self.flush()

    def grad_probe_due(self, step: int) -> bool:
        return step % self.probe_cfg.every == 0 or step == self.train_cfg.steps - 1

    def on_train_batch_start(self, batch, batch_idx):
        if self.diverged is not None:
            return -1  # ends the (single, endless) epoch
        step = self.global_step
        if self.instrument and step != self._last_probe:
            self._last_probe = step
            if step % self.probe_cfg.every == 0:
                self.probe(step)
            if step % self.train_cfg.eval_every == 0:
                self.evaluate(step)
        return None

    # ------------------------------------------------------------ instrumentation
    def flush(self) -> None:
        """Read the pending losses and gradient norms to the host; check for divergence."""
        if not self._pending:
            return
        steps = [s for s, *_ in self._pending]
        values = torch.stack([torch.stack([loss.float(), norm.float(), peak.float()])
                              for _, loss, norm, peak in self._pending])
        self._pending.clear()
        values = reduce_over_ranks(values).cpu().tolist()
        t = self.train_cfg
        for step, (loss, norm, peak) in zip(steps, values, strict=True):
            self.history["step"].append(step)
            self.history["loss"].append(loss)
            self.history["grad_norm"].append(norm)
            self.history["peak_abs"].append(peak)
            self.history["lr"].append(self.lr * lr_factor(step, t.steps, t.warmup_fraction,
                                                          t.min_lr_ratio))
            reason = self.detector.update(loss, norm)
            if reason is not None and self.diverged is None:
                self.diverged = {"step": step, "reason": reason}
        if self.diverged is not None and self._trainer is not None:
            self.trainer.should_stop = True

    @torch.no_grad()
    def probe(self, step: int) -> None:
        stats = activation_stats(self.model, self.probe_idx.to(self.device))
        self.history["probes"].append({"step": step, **stats})

    @torch.no_grad()
    def evaluate(self, step: int) -> float:
        losses = [self.model(x.to(self.device), y.to(self.device))[1].float()
                  for x, y in self.val_batches]
        val = torch.stack(losses).mean().item()
        self.history["evals"].append({"step": step, "val_loss": val})
        return val

    def finish(self, final_step: int) -> None:
        """After training: read what is pending, then probe and evaluate the final weights."""
        self.flush()
        if self.diverged is None:
            if not self.history["probes"] or self.history["probes"][-1]["step"] != final_step:
                self.probe(final_step)
            if not self.history["evals"] or self.history["evals"][-1]["step"] != final_step:
                self.evaluate(final_step)

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.flush()
        checkpoint["perln"] = {"history": self.history, "diverged": self.diverged,
                               "detector": self.detector.state_dict()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("perln", {})
        self.history = state.get("history", new_history())
        self.diverged = state.get("diverged")
        self.detector.load_state_dict(state.get("detector", {}))


def reduce_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """Rows of (loss, grad norm, peak |x|): the loss averaged over DDP ranks, the peak their
    max (the gradient norm is already the same on every rank after DDP's all-reduce)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    loss = values[:, :1].clone()
    peak = values[:, 2:].clone()
    dist.all_reduce(loss, op=dist.ReduceOp.SUM)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    return torch.cat([loss / dist.get_world_size(), values[:, 1:2], peak], dim=1)


class PeriodicCheckpoint(Callback):
    """Save ``last.ckpt`` every `every` optimizer steps, atomically (write, then rename)."""

    def __init__(self, path: Path, every: int):
        self.path, self.every = Path(path), every
        self._last = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if not self.every or step % self.every or step == self._last:
            return
        if getattr(pl_module, "diverged", None) is not None:
            return
        self._last = step
        if trainer.is_global_zero:  # rank 0 writes every file (save_checkpoint does too)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
