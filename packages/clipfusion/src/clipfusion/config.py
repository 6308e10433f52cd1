"""The experiment config: one dataclass tree, one YAML file per scale (configs/*.yaml).

Defaults that the paper's text does not pin down are documented next to each field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from reprokit.config import SCALES, load_config, scale_config_path
from reprokit.errors import ConfigError

NORMALIZATIONS = ("reference", "calibration", "test_zscore", "none")

@dataclass
class DataConfig:
    kind: str = "synthetic"  # synthetic (offline MVTec-layout textures) | mvtec | visa
    root: str | None = None  # dataset folder; synthetic: None = <run dir>/data
    split_csv: str | None = None  # VisA only (default <root>/split_csv/1cls.csv)
    categories: list[str] = field(default_factory=lambda: ["brick", "grass", "gravel"])
    # masks and maps are resized to this and metrics are computed here; each branch reads the
    # image file at its own input size (the ViT's, diffusion.image_size), not an upsampled copy
    image_size: int = 128
    max_test_images: int | None = None  # cap per category (None: all)
    # synthetic generator (reprokit.data.anomaly.make_synthetic_mvtec)
    n_train: int = 8
    n_test_good: int = 8
    n_test_defect: int = 4  # per defect type (blend, scratch, hole)
    seed: int = 0


@dataclass
class ClipConfig:
    """PatchCLIP. ``model="tiny"`` builds a small randomly initialised OpenCLIP ViT from the
    fields below; any other value is an OpenCLIP model name (e.g. ViT-B-16-plus-240)."""

    model: str = "tiny"
    pretrained: str | None = None  # OpenCLIP tag (laion400m_e31), a local .bin/.pt path, or None
    image_size: int = 128  # tiny only (named models use their own input size)
    patch_size: int = 8
    width: int = 128
    layers: int = 4
    heads: int = 4
    embed_dim: int = 128
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    # softmax over {normal, anomalous} of cos / temperature: 0.07 is CLIP's temperature and
    # anomalib's WinCLIP value (logits x 14.3); the earlier "logit scale 100" is 0.01
    temperature: float = 0.07
    # "winclip": WinCLIP's 7 normal / 4 anomalous states; "extended" adds "broken {}"
    prompt_states: str = "winclip"
    # transformer blocks (1-based; negative from the end) whose patch tokens give the language
    # map L (each through ln_post + projection, probabilities averaged over blocks)
    language_layers: list[int] = field(default_factory=lambda: [-1])
    # blocks whose patch tokens form the few-shot memory bank (distances averaged over blocks),
    # "unprojected" (ln_post, no projection: the width-dim output tokens anomalib's WinCLIP
    # matches) or "projected" (the joint image-text space)
    bank_layers: list[int] = field(default_factory=lambda: [-1])
    bank_tokens: str = "unprojected"
    init_seed: int = 0  # seed of the random initialisation (random weights only)


@dataclass
class DiffusionConfig:
    """MapDiff. ``checkpoint=None`` builds a tiny random VAE, UNet and CLIP text encoder;
    otherwise a diffusers Stable Diffusion folder or hub id (e.g.
    stabilityai/stable-diffusion-2-1-base)."""

    checkpoint: str | None = None
    image_size: int = 128  # the VAE's input size (512 for SD 1.5 / 2.1-base)
    # noise level: t = 100 of 1000 keeps the image recognisable while the UNet still acts as a
    # denoiser; small t (the issue: "a small timestep") is the default of diffusion-feature
    # methods such as DIFT.
    timestep: int = 100
    prompt: str = "a photo of a {cls} with a damaged defect"
    attention_words: list[str] = field(default_factory=lambda: ["damaged", "defect"])
    # cross-attention layers recorded for the L map: those in these UNet parts
    attention_blocks: list[str] = field(default_factory=lambda: ["up_blocks"])
    feature_blocks: list[int] = field(default_factory=lambda: [1, 2])  # up_blocks hooked for V
    noise_seed: int = 0  # one fixed noise draw shared by every image (queries and references)
    # tiny random model
    block_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    vae_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    init_seed: int = 0


@dataclass
class FusionConfig:
    # M = alpha (M_CLIP,L + M_CLIP,V) + (1 - alpha) (M_Diff,L + M_Diff,V); 0.5 weighs the
    # branches equally (the paper's value is not given in the text used here).
    alpha: float = 0.5
    # each of the four maps (and the global score) is z-scored before it is summed, with a
    # mean/std that never looks at the test set (a deployed detector scores one image alone):
    # "reference": from the k reference images (L maps and global score on the references,
    #   V maps leave-one-out: each reference against the bank of the others); where k cannot
    #   give them (zero-shot; V and the global score at k = 1) from the calibration images;
    # "calibration": always from the calibration images (fixed per branch and category);
    # "test_zscore": mean/std over the category's test pixels (transductive; ablation only);
    # "none": raw maps summed.
    normalization: str = "reference"
    # normal train/good images held out of every reference draw and never in the test set
    calibration_images: int = 2
    smoothing_sigma: float = 4.0  # Gaussian smoothing of the final map, in pixels (WinCLIP: 4)
    # image score = mean of the top fraction of map pixels (+ weight x the CLIP global score)
    topk_fraction: float = 0.01
    global_weight: float = 1.0


@dataclass
class Config:
    scale: str = "cpu"
    shots: list[int] = field(default_factory=lambda: [0, 1, 2, 4])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # reference-image draws
    batch_size: int = 8
    accelerator: str = "auto"
    precision: str = "auto"  # fp16/bf16 autocast on GPU through reprokit.runtime
    figure_examples: int = 4  # test images per category in the map grids
    data: DataConfig = field(default_factory=DataConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)

    def validate(self) -> Config:
        if self.scale not in SCALES:
            raise ConfigError(f"scale must be one of {SCALES}, got {self.scale!r}")
        if self.data.kind not in ("synthetic", "mvtec", "visa"):
            raise ConfigError(f"data.kind must be synthetic, mvtec or visa, got "
                              f"{self.data.kind!r}")
        if self.data.kind != "synthetic" and not self.data.root:
            raise ConfigError(f"data.root is required for data.kind={self.data.kind}")
        if not self.shots or any(int(k) < 0 for k in self.shots):
            raise ConfigError(f"shots must be non-negative integers, got {self.shots}")
        if not self.seeds:
            raise ConfigError("seeds must not be empty")
        if not 0.0 <= self.fusion.alpha <= 1.0:
            raise ConfigError(f"fusion.alpha must be in [0, 1], got {self.fusion.alpha}")
        if self.fusion.normalization not in NORMALIZATIONS:
            raise ConfigError(f"fusion.normalization must be one of {NORMALIZATIONS}, got "
                              f"{self.fusion.normalization!r}")
        if self.fusion.calibration_images < 2:
            raise ConfigError("fusion.calibration_images must be >= 2 (a std needs two images),"
                              f" got {self.fusion.calibration_images}")
        if not 0 < self.clip.temperature <= 1:
            raise ConfigError(f"clip.temperature must be in (0, 1] (logits = cos / T; CLIP's "
                              f"0.07; a logit scale of 100 is T = 0.01), got "
                              f"{self.clip.temperature}")
        if self.clip.prompt_states not in ("winclip", "extended"):
            raise ConfigError(f"clip.prompt_states must be winclip or extended, got "
                              f"{self.clip.prompt_states!r}")
        if self.clip.bank_tokens not in ("unprojected", "projected"):
            raise ConfigError(f"clip.bank_tokens must be unprojected or projected, got "
                              f"{self.clip.bank_tokens!r}")
        for key in ("language_layers", "bank_layers"):
            layers = getattr(self.clip, key)
            if not layers or any(int(i) == 0 for i in layers):
                raise ConfigError(f"clip.{key} must list transformer blocks (1-based, or "
                                  f"negative from the end), got {layers}")
        if not 0 < self.fusion.topk_fraction <= 1:
            raise ConfigError("fusion.topk_fraction must be in (0, 1]")
        if not 0 <= self.diffusion.timestep < 1000:
            raise ConfigError(f"diffusion.timestep must be in [0, 1000), got "
                              f"{self.diffusion.timestep}")
        if not self.diffusion.attention_words:
            raise ConfigError("diffusion.attention_words must name at least one word")
        if self.data.kind == "synthetic":
            from reprokit.data.anomaly import SYNTHETIC_CATEGORIES

            bad = [c for c in self.data.categories if c not in SYNTHETIC_CATEGORIES]
            if bad:
                raise ConfigError(f"synthetic categories must be among {SYNTHETIC_CATEGORIES}, "
                                  f"got {bad}")
        self.shots = sorted({int(k) for k in self.shots})
        return self


def config_path(scale: str) -> Path:
    return scale_config_path("clipfusion", scale)


def load(scale: str, overrides: list[str] = ()) -> Config:
    cfg = load_config(Config, config_path(scale), list(overrides))
    cfg.scale = scale
    return cfg.validate()
