"""The experiment config: one dataclass tree, one YAML file per scale (``configs/*.yaml``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from perln.model import PLACEMENTS, ModelConfig
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
    lrs: list = field(default_factory=lambda: [3e-3, 2e-2])
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    contrast_lr: float = 2e-2      # the aggressive lr at which claims 1, 2 and 4 are judged
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
        if t.grad_clip < 0:
            raise ConfigError(f"train.grad_clip must be >= 0, got {t.grad_clip}")
        if not s.placements or not s.lrs or not s.seeds:
            raise ConfigError("sweep.placements, sweep.lrs and sweep.seeds must be non-empty")
        for placement in s.placements:
            if placement not in PLACEMENTS:
                raise ConfigError(f"sweep.placements: unknown placement {placement!r}; "
                                  f"choose from {PLACEMENTS}")
        for lr in s.lrs:
            if not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
                raise ConfigError(f"sweep.lrs must be positive numbers, got {lr!r}")
        if not any(math.isclose(s.contrast_lr, lr) for lr in s.lrs):
            raise ConfigError(f"sweep.contrast_lr={s.contrast_lr} is not one of sweep.lrs={s.lrs}")
        if len(set(s.seeds)) != len(s.seeds):
            raise ConfigError(f"sweep.seeds has duplicates: {s.seeds}")


def config_path(scale: str) -> Path:
    return scale_config_path("perln", scale)


def load(scale: str, overrides: list[str] = ()) -> PerlnConfig:
    cfg = load_config(PerlnConfig, config_path(scale), list(overrides))
    cfg.scale = scale
    cfg.validate()
    return cfg
