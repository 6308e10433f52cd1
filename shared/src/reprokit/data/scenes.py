"""Digit scenes: real handwritten digits re-rendered with every nuisance resampled per view.

An *instance* is one of scikit-learn's 1,797 handwritten 8×8 digits; its class is the digit.
A *rendering* pastes the instance, as an alpha mask, onto a textured RGB canvas with every
nuisance drawn afresh: the glyph's size, position, small rotation and colour, the background
(a tinted, rotated crop of one of scikit-image's bundled textures and photographs, from
``reprokit.data.shapes``), clutter (strokes and blobs) and pixel noise.

Why this setting: in pixels, and through a randomly initialised encoder, a rendering's nearest
neighbours are renderings of similar colour, background and position, not of the same digit.
Two renderings of one instance share only the handwritten glyph, so a self-supervised method
that makes its two views agree has to encode the glyph, which is what separates the classes
("latent-cluster data whose nuisance dimensions the augmentations resample", in image form).
Training views are therefore fresh renderings, not augmentations of a stored image:
``DigitScenes.views(glyphs)`` is the batched "augmentation" a training step calls.

Evaluation is on fixed renderings: the kNN bank / probe training set is one rendering of every
training instance (seed ``bank_seed``), the test set one rendering of every held-out instance
(scikit-learn's digits split 70/30, stratified) with backgrounds from texture rows no training
rendering uses (the bottom 40 % of each texture, as in ``reprokit.data.shapes``).

- ``DigitScenes(size, ...)``: the renderer (its nuisance ranges) — ``render(glyphs, seed|generator,
  region)``, ``views(glyphs)``;
- ``load_digit_scenes(...)``: ``SceneData`` — training glyphs (balanced, or long-tailed exactly
  as ``long_tailed_counts``), fixed bank and test renderings, their nuisance factors.
Everything is a deterministic function of the seeds (CPU torch generators), vectorised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from reprokit.data.images import TensorSplit, load_digits, long_tailed_counts
from reprokit.data.shapes import (
    TEST_REGION,
    TRAIN_REGION,
    draw_clutter,
    foreground_colors,
    pixel_grid,
    textured_background,
)
from reprokit.errors import ConfigError

BANK_SEED = 1000         # the fixed rendering of the training instances (kNN bank, probe)
TEST_SEED = 12345        # the fixed rendering of the held-out instances


@dataclass(frozen=True)
class DigitScenes:
    """Renders (N, 1, 8, 8) glyphs in [0, 1] as (N, 3, size, size) scenes in [0, 1].

    `glyph_scale`: the glyph's side as a fraction of the canvas side; `max_rotation` in
    degrees (small: a 6 turned by 180° is a 9); `clutter`: strokes/blobs (each present with
    p = 0.7); `noise`: per-pixel Gaussian std; `texture_contrast`: range of the background
    texture's amplitude. `strength` scales the nuisance ranges (0 = every rendering the
    same: centred, upright, white on mid-grey, no texture, clutter or noise).
    """

    size: int = 16
    glyph_scale: tuple[float, float] = (0.5, 0.8)
    max_rotation: float = 15.0
    clutter: int = 2
    noise: float = 0.05
    texture_contrast: tuple[float, float] = (0.1, 0.35)
    min_color_distance: float = 0.45
    strength: float = 1.0

    def __post_init__(self):
        if self.size < 8:
            raise ConfigError(f"digit scenes: size must be at least 8 px, got {self.size}")
        lo, hi = self.glyph_scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"digit scenes: glyph_scale must satisfy 0 < lo <= hi <= 1, "
                              f"got {self.glyph_scale}")

    @torch.no_grad()
    def render(self, glyphs: torch.Tensor, generator: torch.Generator | int | None = None,
               region: tuple[float, float] = TRAIN_REGION) -> tuple[torch.Tensor, dict]:
        """(images, factors): one rendering per glyph, every nuisance drawn from `generator`
        (a seed, a CPU generator, or None for torch's global generator)."""
        if isinstance(generator, int):
            generator = torch.Generator().manual_seed(generator)
        g = generator if generator is not None else torch.default_generator
        glyphs = glyphs.float().cpu()
        if glyphs.ndim != 4 or glyphs.shape[1] != 1:
            raise ConfigError(f"digit scenes: glyphs must be (N, 1, h, w), got {tuple(glyphs.shape)}")
        n, size, s = glyphs.shape[0], self.size, self.strength

        def u(lo, hi, *shape):
            return lo + (hi - lo) * torch.rand(*shape, generator=g)

        # glyph geometry: side (fraction of the canvas), rotation, centre inside the canvas
        lo, hi = self.glyph_scale
        mid = (lo + hi) / 2
        scale = mid + u(lo - mid, hi - mid, n) * s
        angle = u(-1, 1, n) * math.radians(self.max_rotation) * s
        centre = u(-1, 1, n, 2) * (1 - scale)[:, None] * s
        # affine_grid maps canvas coordinates to glyph coordinates: R(−angle)(x − c) / scale
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        a = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)
        t = -(a @ centre[:, :, None])[:, :, 0]
        theta = torch.cat([a, t[:, :, None]], 2)
        grid = F.affine_grid(theta, [n, 1, size, size], align_corners=False)
        mask = F.grid_sample(glyphs, grid, mode="bilinear", padding_mode="zeros",
                             align_corners=False)[:, 0].clamp(0, 1)

        contrast = tuple(c * s for c in self.texture_contrast)
        background, bg_color, tex_id, tex_contrast = textured_background(n, size, g, region,
                                                                         contrast)
        fg_color = foreground_colors(bg_color, g, self.min_color_distance)
        if s <= 0:
            background = torch.full_like(background, 0.5)
            fg_color = torch.ones_like(fg_color)
        images = background * (1 - mask[:, None]) + fg_color[:, :, None, None] * mask[:, None]
        images, clutter_mask = draw_clutter(images, pixel_grid(size), g,
                                            self.clutter if s > 0 else 0)
        if self.noise > 0 and s > 0:
            images = images + self.noise * s * torch.randn(images.shape, generator=g)
        factors = {"scale": scale, "angle": angle, "centre": centre, "fg_color": fg_color,
                   "bg_color": bg_color, "texture": tex_id, "texture_contrast": tex_contrast,
                   "glyph_mask": mask, "clutter_mask": clutter_mask}
        return images.clamp(0, 1).contiguous(), factors

    def views(self, glyphs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Fresh training renderings of a batch of glyphs (the views of a training step), on
        the glyphs' device."""
        images, _ = self.render(glyphs, generator, TRAIN_REGION)
        return images.to(glyphs.device)

    __call__ = views


@dataclass(frozen=True)
class SceneData:
    """Training glyphs and labels; fixed renderings of the training instances (``bank``: kNN
    bank / probe training set) and of the held-out instances (``test``); their factors."""

    glyphs: torch.Tensor
    labels: torch.Tensor
    bank: TensorSplit
    test: TensorSplit
    test_glyphs: torch.Tensor
    renderer: DigitScenes
    bank_factors: dict = field(default_factory=dict)
    test_factors: dict = field(default_factory=dict)

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return (3, self.renderer.size, self.renderer.size)

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=10).tolist()


def _take_counts(labels: torch.Tensor, counts: list[int], seed: int) -> torch.Tensor:
    """Indices: exactly counts[c] instances of class c (a seeded random choice), sorted."""
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c, k in enumerate(counts):
        idx = torch.nonzero(labels == c).flatten()
        if k > idx.numel():
            raise ConfigError(f"digit scenes: class {c} has {idx.numel()} training instances, "
                              f"{k} requested")
        keep.append(idx[torch.randperm(idx.numel(), generator=g)[:k]])
    return torch.cat(keep).sort().values


def load_digit_scenes(renderer: DigitScenes | None = None, *, imbalance_ratio: float = 1.0,
                      n_per_class: int | None = None, subset_seed: int = 0,
                      bank_seed: int = BANK_SEED, test_seed: int = TEST_SEED) -> SceneData:
    """The digit scenes. Training instances: every training digit (about 125 per class), or
    `n_per_class` per class, or the long-tailed counts ``long_tailed_counts(10, n, ρ)`` with
    n = `n_per_class` or the smallest class size; chosen by `subset_seed`. The bank renders
    the chosen training instances once (from `bank_seed`, training texture rows), the test set
    every held-out instance (from `test_seed`, held-out texture rows)."""
    renderer = renderer or DigitScenes()
    if bank_seed == test_seed:
        raise ConfigError(f"digit scenes: bank_seed and test_seed must differ (both {bank_seed})")
    train, test = load_digits()
    sizes = torch.bincount(train.labels, minlength=10)
    if imbalance_ratio != 1.0 or n_per_class is not None:
        n_max = int(sizes.min()) if n_per_class is None else n_per_class
        keep = _take_counts(train.labels, long_tailed_counts(10, n_max, imbalance_ratio),
                            subset_seed)
        train = train.subset(keep)
    bank_images, bank_factors = renderer.render(train.images, bank_seed, TRAIN_REGION)
    test_images, test_factors = renderer.render(test.images, test_seed, TEST_REGION)
    return SceneData(train.images, train.labels, TensorSplit(bank_images, train.labels),
                     TensorSplit(test_images, test.labels), test.images, renderer,
                     bank_factors, test_factors)
