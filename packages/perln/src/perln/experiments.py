"""The sweep: norm placement × learning rate × seed, one Lightning run per arm.

Each finished arm writes ``arms/<arm>.json`` (atomically) with its whole history; a killed
sweep resumes by skipping those and continuing unfinished arms from ``checkpoints/<arm>/
last.ckpt``. A diverged arm is a finished arm: its result says when and why it diverged.
On CPU, arms run in parallel worker processes (one torch thread each by default), which
uses small cores far better than intra-op threads on these tiny matrices.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import torch

from perln.config import PerlnConfig
from perln.data import StepBatches, read_tokens
from perln.model import FP16_MAX
from perln.module import PeriodicCheckpoint, PerlnModule
from perln.probes import count_spikes
from reprokit.data.text import TokenStream
from reprokit.errors import ConfigError
from reprokit.progress import progress_enabled, track
from reprokit.progress import quiet_lightning as reprokit_quiet_lightning
from reprokit.runs import RunDir
from reprokit.runtime import available_cpus, select_accelerator, setup

log = logging.getLogger("perln")
LOSS_SPIKE_MIN_HISTORY = 5  # steps of history before a loss can count as a spike


@dataclass(frozen=True)
class Arm:
    placement: str
    lr: float
    seed: int
    frozen_gain: bool = False  # the ablation: Peri-LN with its output-norm gains γ frozen

    @property
    def variant(self) -> str:
        """What the report groups by: the placement, or ``peri-frozen`` for the ablation."""
        return f"{self.placement}-frozen" if self.frozen_gain else self.placement

    @property
    def name(self) -> str:
        return f"{self.variant}-lr{self.lr:g}-seed{self.seed}"


def arms_of(cfg: PerlnConfig) -> list[Arm]:
    """Seeds outermost: a sweep cut short still has every placement and lr for its first
    seeds; the frozen-gain ablation comes after the placements of each seed."""
    s = cfg.sweep
    arms = []
    for seed in s.seeds:
        grid = sorted({float(lr) for p in s.placements for lr in cfg.lrs_of(p)})
        arms += [Arm(p, lr, int(seed)) for lr in grid for p in s.placements
                 if any(math.isclose(lr, x) for x in cfg.lrs_of(p))]
        arms += [Arm("peri", float(lr), int(seed), frozen_gain=True) for lr in s.frozen_gain_lrs]
    return arms


def check_strategy(cfg: PerlnConfig, accelerator: str) -> None:
    """Lightning runs FSDP on GPUs only: refuse it on CPU before any folder or process."""
    if str(cfg.train.strategy).startswith("fsdp") and accelerator != "cuda":
        raise ConfigError(
            f"train.strategy={cfg.train.strategy} needs CUDA GPUs (Lightning's FSDP refuses "
            f"the {accelerator} accelerator); on CPU use train.strategy=ddp with --devices N")


def training_precision(cfg: PerlnConfig, accelerator: str) -> str:
    """The precision asked of reprokit.runtime: an fp16 stream on a GPU means real fp16
    autocast (16-mixed, with Lightning's GradScaler), unless a precision was set by hand."""
    if cfg.train.stream_dtype == "fp16" and accelerator == "cuda" and cfg.train.precision == "auto":
        return "16-mixed"
    return cfg.train.precision


def result_path(run_path: Path, arm: Arm) -> Path:
    return Path(run_path) / "arms" / f"{arm.name}.json"


def quiet_lightning() -> None:
    reprokit_quiet_lightning()
    warnings.filterwarnings("ignore", ".*IterableDataset.*")
    warnings.filterwarnings("ignore", ".*when resuming from a mid-epoch checkpoint.*")
    warnings.filterwarnings("ignore", ".*on_train_batch_start.*")


def make_trainer(cfg: PerlnConfig, accelerator: str, precision: str, devices, callbacks,
                 progress: bool):
    import lightning as L

    bar = progress and progress_enabled()   # a rich bar on terminals, none in CI or logs
    if bar:
        from lightning.pytorch.callbacks import RichProgressBar
    kwargs = {"enable_progress_bar": bar, "callbacks": [RichProgressBar(leave=False)] if bar else []}
    return L.Trainer(
        accelerator=accelerator, devices=devices, strategy=cfg.train.strategy,
        num_nodes=cfg.train.num_nodes, precision=precision, max_steps=cfg.train.steps,
        accumulate_grad_batches=cfg.train.accumulate,
        gradient_clip_val=None,  # the module clips itself, after reading the unclipped norm
        logger=False, enable_checkpointing=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, use_distributed_sampler=False,
        enable_progress_bar=kwargs["enable_progress_bar"],
        callbacks=list(kwargs["callbacks"]) + list(callbacks),
    )


def build_module(cfg: PerlnConfig, arm: Arm, val_tokens: torch.Tensor,
                 instrument: bool = True) -> PerlnModule:
    val_stream = TokenStream(val_tokens, cfg.model.block_size)
    probe_idx = val_stream.fixed_batches(cfg.probe.batch_size, 1)[0][0]
    val_batches = val_stream.fixed_batches(cfg.train.batch_size, cfg.train.eval_batches)
    model_cfg = replace(cfg.model, norm_placement=arm.placement,
                        freeze_output_gain=cfg.model.freeze_output_gain or arm.frozen_gain)
    return PerlnModule(model_cfg, cfg.train, cfg.probe, arm.lr, probe_idx, val_batches,
                       instrument=instrument)


def run_arm(cfg: PerlnConfig, arm: Arm, run_path: Path, tokens_path: Path,
            accelerator: str = "auto", devices="auto", threads: int | None = None,
            progress: bool = False) -> dict:
    """Train one arm to the end (or to divergence) and write its result JSON."""
    quiet_lightning()
    run_path = Path(run_path)
    started, cpu_started = time.perf_counter(), time.process_time()
    accelerator = select_accelerator(accelerator)
    runtime = setup(accelerator, training_precision(cfg, accelerator), threads, seed=arm.seed)
    train_tokens, val_tokens = read_tokens(tokens_path)
    module = build_module(cfg, arm, val_tokens)  # seeded: the same init for every placement
    ckpt = run_path / "checkpoints" / arm.name / "last.ckpt"
    start_step = 0
    if ckpt.exists():
        start_step = int(torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"])
    batches = StepBatches(TokenStream(train_tokens, cfg.model.block_size), cfg.train.batch_size,
                          arm.seed, start_micro_step=start_step * cfg.train.accumulate)
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    trainer = make_trainer(cfg, runtime.accelerator, runtime.precision, devices,
                           [PeriodicCheckpoint(ckpt, cfg.train.checkpoint_every)], progress)
    trainer.fit(module, loader, ckpt_path=str(ckpt) if ckpt.exists() else None)
    module.finish(trainer.global_step)
    if not trainer.is_global_zero:
        return {}
    result = summarize_arm(cfg, arm, module.history, module.diverged)
    result.update(n_params=module.model.num_params(), resumed_from=start_step,
                  seconds=time.perf_counter() - started,
                  cpu_seconds=time.process_time() - cpu_started, device=runtime.device_name)
    final = run_path / "checkpoints" / arm.name / "final.pt"
    final.parent.mkdir(parents=True, exist_ok=True)
    torch.save(module.model.state_dict(), final)
    run = RunDir("perln", run_path.name, root=run_path.parent.parent, resume=True)
    (run.path / "arms").mkdir(exist_ok=True)
    run.write_json(f"arms/{arm.name}.json", result)
    if ckpt.exists():
        ckpt.unlink()  # the result and the final weights now hold everything
    return {k: v for k, v in result.items() if k != "history"}


def summarize_arm(cfg: PerlnConfig, arm: Arm, history: dict, diverged: dict | None) -> dict:
    """The arm's result: scalar summaries the report uses, plus the full history."""
    p = cfg.probe
    skip = int(cfg.train.warmup_fraction * cfg.train.steps)
    evals = history["evals"]
    final_val = evals[-1]["val_loss"] if evals and diverged is None else float("nan")
    # the stream's largest |x| over the training steps before divergence (at the step it
    # diverged the stream may already be inf/NaN), and how often it passed fp16's maximum
    end = diverged["step"] if diverged else len(history["step"])
    peaks = [x for s, x in zip(history["step"], history.get("peak_abs", []), strict=False)
             if s < end and math.isfinite(x)]
    return {
        "arm": arm.name, "placement": arm.placement, "variant": arm.variant,
        "frozen_gain": arm.frozen_gain, "lr": arm.lr, "seed": arm.seed,
        "steps": cfg.train.steps, "completed_steps": len(history["step"]),
        "diverged": diverged is not None, "divergence": diverged,
        "final_val_loss": final_val,
        "peak_abs_before_divergence": max(peaks) if peaks else float("nan"),
        "fp16_overflow_fraction": (sum(x > FP16_MAX for x in peaks) / len(peaks)
                                   if peaks else float("nan")),
        # the loss falls through warmup, so a jump is a spike from the first steps on; the
        # gradient norm moves with the warming lr, so its spikes are judged after warmup
        "loss_spikes": count_spikes(history["loss"], p.loss_spike_factor, p.spike_window,
                                    min_history=LOSS_SPIKE_MIN_HISTORY),
        "grad_spikes": count_spikes(history["grad_norm"], p.grad_spike_factor, p.spike_window,
                                    skip),
        "history": history,
    }


def default_workers(accelerator: str) -> int:
    return max(1, available_cpus()) if accelerator == "cpu" else 1


def run_sweep(cfg: PerlnConfig, run: RunDir, tokens_path: Path, accelerator: str = "auto",
              devices="auto") -> list[dict]:
    """Train every arm without a result yet; return the summaries of those trained now."""
    accelerator = select_accelerator(accelerator)
    check_strategy(cfg, accelerator)
    todo = [a for a in arms_of(cfg) if not result_path(run.path, a).exists()]
    done = len(arms_of(cfg)) - len(todo)
    if done:
        log.info("resuming: %d arm(s) already finished, %d to go", done, len(todo))
    workers = cfg.sweep.workers or default_workers(accelerator)
    workers = max(1, min(workers, len(todo))) if todo else 1
    if devices not in (1, "1", "auto") or cfg.train.strategy not in ("auto", "single_device"):
        workers = 1  # one multi-process Trainer at a time: every rank runs the arms in order
    threads = cfg.sweep.threads or max(1, available_cpus() // workers)
    summaries = []

    def finished(summary: dict) -> None:
        if not summary:  # a DDP rank other than 0: rank 0 records the arm
            return
        summaries.append(summary)
        run.log({"event": "arm_finished", **summary})
        status = (f"diverged at step {summary['divergence']['step']}" if summary["diverged"]
                  else f"val loss {summary['final_val_loss']:.3f}")
        log.info("arm %s: %s, %d loss / %d grad-norm spikes, %.0f s", summary["arm"], status,
                 summary["loss_spikes"], summary["grad_spikes"], summary["seconds"])

    if workers == 1:
        for arm in todo:
            finished(run_arm(cfg, arm, run.path, tokens_path, accelerator, devices, threads,
                             progress=progress_enabled()))
        return summaries
    context = get_context("spawn")  # fork is unsafe with torch's thread pools
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(run_arm, cfg, arm, run.path, tokens_path, accelerator, 1,
                               threads, False) for arm in todo]
        for future in track(as_completed(futures), f"{len(todo)} arms", total=len(futures)):
            finished(future.result())
    return summaries


def is_finite(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)
