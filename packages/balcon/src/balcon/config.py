"""The experiment config (one dataclass tree; one YAML per scale in ``configs/``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from reprokit.config import load_config, scale_config_path
from reprokit.errors import ConfigError

DATASETS = ("digits", "cifar10", "cifar100", "imagenet_lt")


@dataclass
class DataConfig:
    name: str = "digits"              # digits | cifar10 | cifar100 | imagenet_lt
    root: str = "data"                # folder of CIFAR / ImageNet (unused for digits)
    download: bool = False            # CIFAR only, needs the network
    imbalance_ratio: float = 10.0     # ρ = n_head / n_tail of the long-tailed training set
    lt_seed: int = 0                  # which images of a class the long-tailed subset keeps
    test_fraction: float = 0.3        # digits: stratified test split
    view_noise: float = 0.0           # digits: σ of fresh per-view pixel noise (fixed noise on
                                      # the evaluation images); 0 = the plain digits setting
    view_augment: float = 1.0         # digits with view_noise: digits_augment strength factor
    image_size: int = 32              # natural images: crop size
    train_split_file: str = "ImageNet_LT_train.txt"   # imagenet_lt: relative to root
    test_split_file: str = "ImageNet_LT_test.txt"
    num_workers: int = 0


@dataclass
class ModelConfig:
    backbone: str = "digits_mlp"      # reprokit.backbones name
    backbone_kwargs: dict = field(default_factory=dict)
    proj_hidden: int = 128
    proj_dim: int = 64
    bn_views: str = "per_view"        # per_view: the net runs once per view (BN over B, as the
                                      # PyTorch SimCLR reference); joint: one pass over 2B
    channels_last: bool = True        # CNN inputs in NHWC (faster convolutions on CPU)


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 256
    optimizer: str = "sgd"            # sgd | lars (SimCLR uses LARS at large batch)
    lr: float = 0.3                   # base lr, scaled by batch_size / 256 as SimCLR does
    momentum: float = 0.9
    weight_decay: float = 1e-5
    warmup_steps: int = 20
    temperature: float = 0.5          # the paper's τ
    augment_strength: float = 1.0     # training augmentation strength (digits: TensorAugment)
    log_every: int = 10               # loss curve resolution
    checkpoint_every: int = 0         # steps between checkpoints (0 = none)
    workers: int = 0                  # arms trained in parallel processes on CPU (0: one per
                                      # core, 1 thread each); always 1 with --devices > 1
    precision: str = "auto"


@dataclass
class EvalConfig:
    knn_k: int = 20
    knn_temperature: float = 0.1
    probe_epochs: int = 100
    probe_lr: float = 1e-2
    max_images: int = 0               # cap on evaluation images (0 = all); for paper scale


@dataclass
class GridConfig:
    alphas: list = field(default_factory=lambda: [0.5, 1.0, 2.0])
    lambdas: list = field(default_factory=lambda: [0.0, 0.5, 1.0, 2.0])
    include_positive: bool = True     # N(i) includes the positive: (1, 1) is InfoNCE
    data: str = "long_tailed"         # long_tailed | balanced: the training set of the grid


@dataclass
class BiasConfig:
    views: list = field(default_factory=lambda: [1, 2, 4, 8, 16])
    strengths: list = field(default_factory=lambda: [0.5, 1.0, 1.5])   # measurement
    train_strengths: list = field(default_factory=lambda: [0.5, 1.0, 1.5])  # InfoNCE encoders
    max_images: int = 0               # cap on evaluation images (0 = all)
    seeds: list = field(default_factory=list)  # strength-sweep seeds ([] = the grid's seeds)


@dataclass
class BalconConfig:
    scale: str = "cpu"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    bias: BiasConfig = field(default_factory=BiasConfig)
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    confirm_seeds: list = field(default_factory=lambda: [100, 101, 102])  # experiment 2
    experiments: list = field(default_factory=lambda: ["grid", "longtail", "bias"])

    def validate(self) -> BalconConfig:
        if self.data.name not in DATASETS:
            raise ConfigError(f"data.name must be one of {DATASETS}, got {self.data.name!r}")
        if self.train.optimizer not in ("sgd", "lars"):
            raise ConfigError(f"train.optimizer must be 'sgd' or 'lars', "
                              f"got {self.train.optimizer!r}")
        if self.grid.data not in ("long_tailed", "balanced"):
            raise ConfigError(f"grid.data must be 'long_tailed' or 'balanced', "
                              f"got {self.grid.data!r}")
        unknown = set(self.experiments) - {"grid", "longtail", "bias"}
        if unknown:
            raise ConfigError(f"experiments: unknown {sorted(unknown)}; "
                              "choose from grid, longtail, bias")
        if "longtail" in self.experiments and "grid" not in self.experiments:
            raise ConfigError("experiment 'longtail' confirms the grid's best setting: "
                              "it needs 'grid' too")
        if not self.seeds:
            raise ConfigError("seeds must list at least one seed")
        if 1.0 not in [float(a) for a in self.grid.alphas] or \
                1.0 not in [float(b) for b in self.grid.lambdas]:
            raise ConfigError("grid.alphas and grid.lambdas must contain 1.0 (InfoNCE's point)")
        if self.model.bn_views not in ("per_view", "joint"):
            raise ConfigError(f"model.bn_views must be 'per_view' or 'joint', "
                              f"got {self.model.bn_views!r}")
        if self.train.workers < 0:
            raise ConfigError(f"train.workers must be ≥ 0, got {self.train.workers}")
        if self.train.steps < 1 or self.train.batch_size < 2:
            raise ConfigError("train.steps must be ≥ 1 and train.batch_size ≥ 2")
        return self


def config_path(scale: str) -> Path:
    return scale_config_path("balcon", scale)


def load(scale: str, overrides: list[str] = ()) -> BalconConfig:
    cfg = load_config(BalconConfig, config_path(scale), list(overrides))
    cfg.scale = scale
    return cfg.validate()
