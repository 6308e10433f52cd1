"""The experiment config: one dataclass tree, one YAML file per scale (``configs/*.yaml``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from perln.model import PLACEMENTS, STREAM_DTYPES, ModelConfig
from reprokit.config import SCALES, load_config, scale_config_path  # noqa: F401 (SCALES re-exported)
from reprokit.errors import ConfigError


@dataclass
class DataConfig:
    source: str = "stdlib"        # stdlib | hf:<dataset>[:<config>] | a local file or folder
    tokenizer: str = "bytes"      # bytes | a hub tokenizer (gpt2, Xenova/gpt-4 for cl100k)
    max_chars: int = 2_000_000    # stdlib: characters read from the standard library
    max_docs: int = 100_000       # hf: documents streamed
    text_field: str = "text"      # hf: the column holding the text
    val_fraction: float = 0.05
    # evaluate on another corpus instead of a split of `source` ("" = split `source`), e.g.
    # hf:allenai/c4:en, its `val_split` split, `val_docs` documents streamed
    val_source: str = ""
    val_split: str = "validation"
    val_docs: int = 10_000


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 8            # sequences per device and micro-batch
    accumulate: int = 1            # micro-batches per optimizer step
    warmup_fraction: float = 0.1
    min_lr_ratio: float = 0.1      # cosine decays to this fraction of the peak lr
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0         # 0 disables clipping (the norm is still recorded)
    precision: str = "auto"        # reprokit.runtime: bf16-mixed on recent GPUs, fp32 on CPU
    # the residual stream is rounded to this dtype between blocks (compute stays fp32): fp16
    # is where the paper's Pre-LN overflows; on a GPU, fp16 also selects 16-mixed precision
    # (autocast + GradScaler) when `precision` is auto
    stream_dtype: str = "fp32"     # fp32 | fp16 | bf16
    compile: bool = False
    strategy: str = "auto"         # Lightning strategy: auto | ddp | fsdp ...
    num_nodes: int = 1
    checkpoint_every: int = 100    # optimizer steps between checkpoints (0: none)
    eval_every: int = 100
    eval_batches: int = 4


@dataclass
class ProbeConfig:
    every: int = 25                # steps between probes of activations and per-layer grads
    batch_size: int = 8            # fixed probe batch (validation windows)
    sync_every: int = 10           # steps between host reads of loss and grad norm
    divergence_factor: float = 1.5  # diverged: NaN/Inf, or loss > factor * ln(vocab) ...
    divergence_patience: int = 10   # ... for this many steps in a row (one-step jumps that
                                    # recover are loss spikes, not divergence)
    spike_window: int = 20         # spikes: value > factor * median of the previous window
    loss_spike_factor: float = 1.25
    grad_spike_factor: float = 3.0


@dataclass
class SweepConfig:
    placements: list = field(default_factory=lambda: list(PLACEMENTS))
    lrs: list[float] = field(default_factory=lambda: [3e-3, 2e-2])
    # per-placement lr grids (e.g. {post: [3e-3, 1e-2]}); a placement not named uses `lrs`
    placement_lrs: dict = field(default_factory=dict)
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    # claims 1, 2 and 4 are judged at this lr; unset: the highest lr at which no Pre-LN seed
    # diverged (the most aggressive setting where both placements still have data)
    contrast_lr: float | None = None
    frozen_gain_lrs: list[float] = field(default_factory=list)  # Peri-LN with γ frozen, ablation
    workers: int = 0               # arms trained in parallel processes (0: one per 1-2 cores)
    threads: int = 0               # torch threads per worker (0: cores / workers)
    sample_tokens: int = 300       # generated from the best model for the report


@dataclass
class PerlnConfig:
    scale: str = "cpu"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    def validate(self) -> None:
        self.model.validate()
        t, p, s = self.train, self.probe, self.sweep
        positive = {"train.steps": t.steps, "train.batch_size": t.batch_size,
                    "train.accumulate": t.accumulate, "probe.every": p.every,
                    "probe.batch_size": p.batch_size, "probe.sync_every": p.sync_every,
                    "probe.divergence_patience": p.divergence_patience,
                    "train.eval_every": t.eval_every, "train.eval_batches": t.eval_batches}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= t.warmup_fraction < 1:
            raise ConfigError(f"train.warmup_fraction must be in [0, 1), got {t.warmup_fraction}")
        if t.stream_dtype not in STREAM_DTYPES:
            raise ConfigError(f"train.stream_dtype must be one of {tuple(STREAM_DTYPES)}, "
                              f"got {t.stream_dtype!r}")
        if t.grad_clip < 0:
            raise ConfigError(f"train.grad_clip must be >= 0, got {t.grad_clip}")
        if not s.placements or not s.lrs or not s.seeds:
            raise ConfigError("sweep.placements, sweep.lrs and sweep.seeds must be non-empty")
        for placement in s.placements:
            if placement not in PLACEMENTS:
                raise ConfigError(f"sweep.placements: unknown placement {placement!r}; "
                                  f"choose from {PLACEMENTS}")
        if not isinstance(s.placement_lrs, dict) or set(s.placement_lrs) - set(s.placements):
            raise ConfigError(f"sweep.placement_lrs must map placements of sweep.placements "
                              f"to lr lists, got {s.placement_lrs!r}")
        grids = {"sweep.lrs": s.lrs, "sweep.frozen_gain_lrs": s.frozen_gain_lrs}
        grids.update({f"sweep.placement_lrs.{p}": v for p, v in s.placement_lrs.items()})
        for name, grid in grids.items():
            if not isinstance(grid, list) or (not grid and name != "sweep.frozen_gain_lrs"):
                raise ConfigError(f"{name} must be a non-empty list of numbers, got {grid!r}")
            for lr in grid:
                if isinstance(lr, str):  # a YAML string such as 1e-2 (reprokit coerces typed
                    try:                 # fields; this one is a plain dict value)
                        lr = float(lr)
                    except ValueError:
                        pass
                if not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
                    raise ConfigError(f"{name} must be positive numbers, got {lr!r}")
            grid[:] = [float(lr) for lr in grid]
        if s.frozen_gain_lrs and "peri" not in s.placements:
            raise ConfigError("sweep.frozen_gain_lrs needs peri in sweep.placements (the "
                              "ablation is compared with Peri-LN at the same lr)")
        if s.contrast_lr is not None and not any(
                math.isclose(s.contrast_lr, lr) for lr in self.lrs_of("pre")):
            raise ConfigError(f"sweep.contrast_lr={s.contrast_lr} is not one of Pre-LN's lrs "
                              f"{self.lrs_of('pre')}")
        if len(set(s.seeds)) != len(s.seeds):
            raise ConfigError(f"sweep.seeds has duplicates: {s.seeds}")


    def lrs_of(self, placement: str) -> list[float]:
        """The lr grid of one placement: its own entry in sweep.placement_lrs, or sweep.lrs."""
        return list(self.sweep.placement_lrs.get(placement, self.sweep.lrs))


def config_path(scale: str) -> Path:
    return scale_config_path("perln", scale)


def load(scale: str, overrides: list[str] = ()) -> PerlnConfig:
    cfg = load_config(PerlnConfig, config_path(scale), list(overrides))
    cfg.scale = scale
    cfg.validate()
    return cfg
