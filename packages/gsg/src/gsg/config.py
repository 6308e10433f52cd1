"""The experiment config: one dataclass tree, one YAML file per scale (``configs/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from reprokit.config import SCALES, load_config, scale_config_path, to_dict  # noqa: F401 (re-exported)
from reprokit.errors import ConfigError

METHODS = ("simsiam", "simsiam_gsg", "byol", "byol_gsg")


@dataclass
class DataConfig:
    name: str = "digits"            # digits | cifar10 | cifar100 | imagefolder
    root: str = "data"              # cifar/imagefolder root (imagefolder: root/train, root/val)
    download: bool = False
    # digits only, to leave the representation something to learn: the kNN bank and test
    # images carry one fixed draw of Gaussian noise of std `noise` (kNN on raw pixels falls
    # from 0.98 to ≈ 0.48 at 0.7); training views are the clean digit plus fresh noise of std
    # `augment_noise` (never a noise pattern shared by the views of an image).
    noise: float = 0.7
    bank_seed: int = 1000           # the fixed noise of the kNN bank / probe training images
    test_seed: int = 12345          # ... and of the test images
    augment_noise: float = 0.7      # digits views: fresh Gaussian noise std
    augment_strength: float = 0.0   # digits views: shifts/rotations/erasing before the noise
    max_shift: float = 0.125        # digits views: fraction of the image size
    image_size: int = 32            # natural images
    workers: int = 8
    eval_train_subset: int = 0      # kNN bank / probe train subset for big datasets (0 = all)


@dataclass
class ModelConfig:
    backbone: str = "digits_mlp"
    backbone_kwargs: dict = field(default_factory=lambda: {"hidden": 256, "depth": 2})
    proj_hidden: int = 256
    proj_dim: int = 128
    proj_layers: int = 3            # SimSiam projector depth (CIFAR SimSiam uses 2)
    pred_hidden: int = 32           # SimSiam bottleneck (dim/4); BYOL's own predictor: proj_hidden
    byol_heads: str = "simsiam"     # simsiam (as the GSG reference code) | byol (BYOL's MLP heads)
    channels_last: bool = True      # conv backbones on GPU
    # BatchNorm statistics: per_view runs the networks once per view (BN over B images, as the
    # reference code calls the encoder per view); concat runs all V views in one pass (BN over V·B)
    bn_views: str = "per_view"


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "sgd"          # sgd | lars
    base_lr: float = 0.05           # lr = base_lr × batch / 256
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 0
    fixed_predictor_lr: bool = True  # SimSiam: the predictor keeps the base lr (no decay)
    ema_momentum: float = 0.99      # BYOL target network (the GSG reference code: 0.99)
    ema_cosine: bool = False        # BYOL's schedule: τ → 1 along a cosine
    checkpoint_every: int = 0       # epochs between checkpoints (0 = only at the end of an arm)
    precision: str = "auto"
    # torch CPU threads (0 = every core). The cpu scale uses 1: its matrices are so small that
    # a second thread mostly spin-waits (≈ 10× the CPU time per step on a busy 2-core machine).
    threads: int = 0


@dataclass
class EvalConfig:
    every: int = 5                  # epochs between monitor evaluations
    knn_k: int = 20
    knn_temperature: float = 0.1
    linear_epochs: int = 100
    linear_lr: float = 1e-2


@dataclass
class ExperimentConfig:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    equal_compute: bool = True      # baselines also run with 2× epochs (GSG does 4 passes, not 2)
    collapse: bool = True           # the no-predictor runs
    collapse_epochs: int = 60
    collapse_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    batch_sizes: list[int] = field(default_factory=lambda: [16, 32, 128])
    sweep_methods: list[str] = field(default_factory=lambda: ["simsiam", "simsiam_gsg"])
    sweep_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    sweep_epochs: int = 20
    workers: int = 0                # arms trained in parallel processes (0: one per core on CPU)


@dataclass
class GSGConfig:
    scale: str = "cpu"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    experiments: ExperimentConfig = field(default_factory=ExperimentConfig)

    def validate(self) -> GSGConfig:
        bad = sorted(set(self.experiments.methods + self.experiments.sweep_methods) - set(METHODS))
        if bad:
            raise ConfigError(f"experiments.methods: unknown method(s) {bad}; choose from {METHODS}")
        if self.train.optimizer not in ("sgd", "lars"):
            raise ConfigError(f"train.optimizer must be sgd or lars, got {self.train.optimizer!r}")
        if self.data.name not in ("digits", "cifar10", "cifar100", "imagefolder"):
            raise ConfigError(f"data.name {self.data.name!r} unknown; "
                              "choose digits, cifar10, cifar100 or imagefolder")
        if self.model.byol_heads not in ("simsiam", "byol"):
            raise ConfigError(f"model.byol_heads must be simsiam or byol, got {self.model.byol_heads!r}")
        if self.data.noise < 0 or self.data.augment_noise < 0:
            raise ConfigError("data.noise and data.augment_noise must be ≥ 0")
        if self.model.bn_views not in ("per_view", "concat"):
            raise ConfigError(f"model.bn_views must be per_view or concat, got {self.model.bn_views!r}")
        for b in [self.train.batch_size, *self.experiments.batch_sizes]:
            if b < 2:
                raise ConfigError(f"batch size {b} is too small: GSG pairs each image with "
                                  "another image of its batch, so a batch needs at least 2")
        if not self.experiments.seeds:
            raise ConfigError("experiments.seeds is empty")
        if self.eval.every < 1:
            raise ConfigError("eval.every must be at least 1")
        return self


def config_path(scale: str) -> Path:
    return scale_config_path("gsg", scale)


def load(scale: str, overrides: list[str] = ()) -> GSGConfig:
    cfg = load_config(GSGConfig, config_path(scale), list(overrides))
    cfg.scale = scale
    return cfg.validate()
