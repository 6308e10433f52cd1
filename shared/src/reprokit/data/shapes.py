"""Procedural shapes: an offline image data set on which self-supervised learning has
something to learn.

Each image is one shape (its class: circle, ring, square, triangle, star, cross, crescent,
arrow, L or T) rendered anti-aliased on a textured background, with every nuisance drawn
afresh per image: foreground colour, position, scale, rotation, background (a crop of one of
scikit-image's bundled textures and photographs, randomly tinted, scaled and rotated),
clutter (thin strokes and small blobs in other colours) and a little pixel noise. A class
is a shape up to rotation and mirror image (every class's mirror image is a rotation of
itself, so horizontal flips preserve the class).

Why this setting: on raw pixels, or through a randomly initialised encoder, an image's nearest
neighbours are images of similar colour, position and background, not of the same shape; a
representation that is invariant to crops and colour jitter (what SimSiam/BYOL/SimCLR views
teach) has to encode the shape.

Status: experimental, used by no package yet. In a first measurement (16 px, a 4-stage CNN of
width 16, 1,200 steps, kNN k=20) SimSiam/SimCLR did not yet beat the raw-pixel and
random-encoder floors (e.g. 0.24 vs 0.27 on an easier setting where a supervised CNN reaches
0.72). Re-rendered digit scenes (each view a fresh rendering of one handwritten digit on
these backgrounds) did not beat the floors either; gsg and balcon use
``reprokit.data.images.noisy_digits`` instead (measured candidates: packages/gsg/README.md).

- ``render_shapes(labels, size, seed, region)``: images of given labels, plus the nuisance
  factors and the shape masks (``ShapeSplit``);
- ``load_shapes(...)``: (train, test) ``ShapeSplit``s; the test set is fixed (its own seed,
  balanced) and shares no background region with training (backgrounds of train images are
  cropped from the top 60 % of each texture, test images from the bottom 40 %);
- ``long_tailed_counts``: the CIFAR-LT per-class counts n_c = floor(n_max · ρ^(−c/(C−1)));
  ``load_shapes(imbalance_ratio=ρ)`` draws exactly those counts for training.

Views that suit the data: ``reprokit.data.augment.shapes_augment`` (batched).

Everything is a deterministic function of the seeds (CPU torch generators), vectorised over
images: ~10k 32-px images render in about a second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F

from reprokit.data.images import TensorSplit, long_tailed_counts
from reprokit.errors import ConfigError

SHAPES = ("circle", "ring", "square", "triangle", "star", "cross", "crescent", "arrow", "L", "T")
# Grayscale textures and photographs bundled with scikit-image (no download).
BACKGROUNDS = ("brick", "grass", "gravel", "camera", "coins", "moon", "page", "text",
               "astronaut", "coffee", "chelsea", "rocket")
TEST_SEED = 12345            # the fixed held-out test set: the same for every training seed
TRAIN_REGION = (0.0, 0.6)    # rows of each background image that training crops come from
TEST_REGION = (0.6, 1.0)


def _polygon(points) -> torch.Tensor:
    return torch.tensor(points, dtype=torch.float32)


def _regular(n: int, radius: float = 1.0, phase: float = math.pi / 2) -> torch.Tensor:
    a = phase + 2 * math.pi * torch.arange(n) / n
    return radius * torch.stack([torch.cos(a), torch.sin(a)], 1)


def _star(points: int = 5, outer: float = 1.0, inner: float = 0.45) -> torch.Tensor:
    a = math.pi / 2 + math.pi * torch.arange(2 * points) / points
    r = torch.where(torch.arange(2 * points) % 2 == 0, outer, inner)
    return torch.stack([r * torch.cos(a), r * torch.sin(a)], 1)


# Polygons in a unit frame (the shape fits the unit disc); mirror-symmetric up to rotation.
POLYGONS = {
    "square": _regular(4, 1.0, math.pi / 4) * 0.85,
    "triangle": _regular(3, 1.0),
    "star": _star(),
    "cross": _polygon([(-.3, -1), (.3, -1), (.3, -.3), (1, -.3), (1, .3), (.3, .3), (.3, 1),
                       (-.3, 1), (-.3, .3), (-1, .3), (-1, -.3), (-.3, -.3)]),
    "arrow": _polygon([(0, 1), (.75, .15), (.28, .15), (.28, -1), (-.28, -1), (-.28, .15),
                       (-.75, .15)]),
    # an L with equal arms is symmetric about its diagonal: its mirror image is a rotation
    "L": _polygon([(-.75, -.75), (.75, -.75), (.75, -.3), (-.3, -.3), (-.3, .75), (-.75, .75)]),
    "T": _polygon([(-.85, .85), (.85, .85), (.85, .4), (.22, .4), (.22, -.95), (-.22, -.95),
                   (-.22, .4), (-.85, .4)]),
}


def polygon_sdf(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Signed distance from points p (..., 2) to the polygon with vertices v (K, 2):
    negative inside. The even-odd crossing rule gives the sign, the nearest edge the size."""
    d = ((p - v[0]) ** 2).sum(-1)
    sign = torch.ones_like(d)
    k = v.shape[0]
    for i in range(k):
        vi, vj = v[i], v[i - 1]
        e, w = vj - vi, p - vi
        t = ((w * e).sum(-1) / (e * e).sum()).clamp(0, 1)
        b = w - e * t[..., None]
        d = torch.minimum(d, (b * b).sum(-1))
        c1, c2 = p[..., 1] >= vi[1], p[..., 1] < vj[1]
        c3 = e[0] * w[..., 1] > e[1] * w[..., 0]
        flip = (c1 & c2 & c3) | (~c1 & ~c2 & ~c3)
        sign = torch.where(flip, -sign, sign)
    return sign * d.sqrt()


def shape_sdf(name: str, p: torch.Tensor) -> torch.Tensor:
    """Signed distance of points p (..., 2), in the shape's unit frame, to shape `name`."""
    r = p.norm(dim=-1)
    if name == "circle":
        return r - 0.9
    if name == "ring":
        return (r - 0.7).abs() - 0.28
    if name == "crescent":
        bite = (p - torch.tensor([0.45, 0.0])).norm(dim=-1) - 0.75
        return torch.maximum(r - 0.95, -bite)
    return polygon_sdf(p, POLYGONS[name])


@lru_cache(maxsize=1)
def _background_bank(side: int = 128) -> torch.Tensor:
    """(len(BACKGROUNDS), side, side) grayscale backgrounds in [0, 1], contrast-normalised."""
    from skimage import data as skdata

    out = []
    for name in BACKGROUNDS:
        img = torch.as_tensor(getattr(skdata, name)(), dtype=torch.float32)
        if img.ndim == 3:
            img = img[..., :3].mean(-1)
        img = img / 255.0
        h, w = img.shape
        s = min(h, w)
        img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        img = F.interpolate(img[None, None], size=(side, side), mode="area")[0, 0]
        img = (img - img.mean()) / (img.std() + 1e-6)
        out.append(img)
    return torch.stack(out)


@dataclass(frozen=True)
class ShapeSplit(TensorSplit):
    """Images (N, 3, H, W) in [0, 1], labels (N,), the shape masks (N, H, W) in [0, 1] and the
    per-image nuisance factors (``factors``: name → (N, ...) tensor)."""

    masks: torch.Tensor | None = None
    factors: dict = field(default_factory=dict)

    def subset(self, index: torch.Tensor) -> ShapeSplit:
        return ShapeSplit(self.images[index], self.labels[index],
                          None if self.masks is None else self.masks[index],
                          {k: v[index] for k, v in self.factors.items()})

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=len(SHAPES)).tolist()


@torch.no_grad()
def render_shapes(labels: torch.Tensor, size: int = 32, seed: int = 0,
                  region: tuple[float, float] = TRAIN_REGION, *, noise: float = 0.03,
                  clutter: int = 3, scale_range: tuple[float, float] = (0.35, 0.65),
                  texture_contrast: tuple[float, float] = (0.1, 0.35),
                  min_color_distance: float = 0.45) -> ShapeSplit:
    """Render one image per label (indices into ``SHAPES``); all nuisances are drawn from
    `seed`. `region` picks the rows of every background image that crops come from."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    n = labels.shape[0]
    if size < 8:
        raise ConfigError(f"shapes: size must be at least 8 px, got {size}")
    if n and (labels.min() < 0 or labels.max() >= len(SHAPES)):
        raise ConfigError(f"shapes: labels must be in [0, {len(SHAPES)}), got {labels.unique()}")
    g = torch.Generator().manual_seed(seed)

    def u(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    # pixel centres in [-1, 1]
    lin = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    yy, xx = torch.meshgrid(-lin, lin, indexing="ij")
    grid = torch.stack([xx, yy], -1)                                   # (H, W, 2)
    px = 2.0 / size                                                    # pixel width

    # --- the shape: scale, rotation, position, colour
    scale = u(*scale_range, n)
    angle = u(0, 2 * math.pi, n)
    centre = u(-1, 1, n, 2) * (0.95 - scale)[:, None]
    cos, sin = torch.cos(angle), torch.sin(angle)
    rel = grid[None] - centre[:, None, None, :]                        # (N, H, W, 2)
    local = torch.stack([cos[:, None, None] * rel[..., 0] + sin[:, None, None] * rel[..., 1],
                         -sin[:, None, None] * rel[..., 0] + cos[:, None, None] * rel[..., 1]],
                        -1) / scale[:, None, None, None]
    sdf = torch.empty(n, size, size)
    for k, name in enumerate(SHAPES):
        sel = labels == k
        if sel.any():
            sdf[sel] = shape_sdf(name, local[sel]) * scale[sel, None, None]
    mask = (0.5 - sdf / px).clamp(0, 1)                                # anti-aliased coverage

    # --- background: a rotated, scaled crop of a bundled image, tinted between two colours
    bank = _background_bank()
    tex_id = torch.randint(0, bank.shape[0], (n,), generator=g)
    zoom = u(0.15, 0.4, n)                                             # crop side / image side
    tex_angle = u(0, 2 * math.pi, n)
    lo, hi = region
    # crop centre: x anywhere, y inside the region's rows (grid_sample's y runs top to bottom)
    cx = u(-1 + zoom, 1 - zoom, n)
    y_lo, y_hi = 2 * lo - 1 + zoom, 2 * hi - 1 - zoom
    cy = y_lo + (y_hi - y_lo).clamp(min=0) * torch.rand(n, generator=g)
    tc, ts = torch.cos(tex_angle) * zoom, torch.sin(tex_angle) * zoom
    # a rotation of at most `zoom`·√2 around the centre stays within the region (nearly)
    theta = torch.stack([torch.stack([tc, -ts, cx], 1), torch.stack([ts, tc, cy], 1)], 1)
    tex_grid = F.affine_grid(theta, [n, 1, size, size], align_corners=False)
    texture = torch.empty(n, size, size)
    for t in range(bank.shape[0]):
        sel = tex_id == t
        if sel.any():
            texture[sel] = F.grid_sample(bank[t].expand(int(sel.sum()), 1, -1, -1).contiguous(),
                                         tex_grid[sel], mode="bilinear", padding_mode="reflection",
                                         align_corners=False)[:, 0]
    contrast = u(*texture_contrast, n)
    bg_color = u(0, 1, n, 3)
    bg_tint = u(-1, 1, n, 3)
    background = (bg_color[:, :, None, None]
                  + (contrast[:, None] * bg_tint)[:, :, None, None] * texture[:, None])

    # foreground colour far enough from the background colour to be visible
    fg_color = u(0, 1, n, 3)
    for _ in range(8):
        close = (fg_color - bg_color).norm(dim=1) < min_color_distance
        if not close.any():
            break
        fg_color[close] = torch.rand(int(close.sum()), 3, generator=g)
    close = (fg_color - bg_color).norm(dim=1) < min_color_distance
    fg_color[close] = 1 - bg_color[close].round()                    # a far corner of the cube
    shade = 1 + 0.15 * (local[..., 0] * u(-1, 1, n)[:, None, None]
                        + local[..., 1] * u(-1, 1, n)[:, None, None])  # soft lighting gradient
    foreground = fg_color[:, :, None, None] * shade[:, None]
    images = background * (1 - mask[:, None]) + foreground * mask[:, None]

    # --- clutter: thin strokes and small blobs in random colours, drawn over everything
    clutter_mask = torch.zeros(n, size, size)
    for _ in range(clutter):
        present = (torch.rand(n, generator=g) < 0.7).float()
        col = u(0, 1, n, 3)
        if torch.rand(1, generator=g).item() < 0.5:              # a stroke: a short thick segment
            a, b = u(-1, 1, n, 2), u(-1, 1, n, 2)
            b = a + (b - a) * 0.5
            ab = (b - a)[:, None, None, :]
            ap = grid[None] - a[:, None, None, :]
            t = ((ap * ab).sum(-1) / (ab * ab).sum(-1).clamp(min=1e-6)).clamp(0, 1)
            dist = (ap - ab * t[..., None]).norm(dim=-1) - u(0.5, 1.0, n)[:, None, None] * px
        else:                                                    # a blob
            c = u(-1, 1, n, 2)
            dist = ((grid[None] - c[:, None, None, :]).norm(dim=-1)
                    - u(0.06, 0.14, n)[:, None, None])
        m = (0.5 - dist / px).clamp(0, 1) * present[:, None, None]
        images = images * (1 - m[:, None]) + col[:, :, None, None] * m[:, None]
        clutter_mask = torch.maximum(clutter_mask, m)

    if noise > 0:
        images = images + noise * torch.randn(images.shape, generator=g)
    images = images.clamp(0, 1)
    factors = {"scale": scale, "angle": angle, "centre": centre, "fg_color": fg_color,
               "bg_color": bg_color, "texture": tex_id, "texture_contrast": contrast,
               "clutter_mask": clutter_mask}
    return ShapeSplit(images.contiguous(), labels, mask, factors)


def _labels_for(counts: Sequence[int], seed: int) -> torch.Tensor:
    """Exactly counts[c] labels of class c, in a seeded random order."""
    labels = torch.cat([torch.full((int(k),), c, dtype=torch.long) for c, k in enumerate(counts)])
    return labels[torch.randperm(labels.shape[0], generator=torch.Generator().manual_seed(seed))]


def load_shapes(n_train_per_class: int = 500, n_test_per_class: int = 200, *, size: int = 32,
                seed: int = 0, imbalance_ratio: float = 1.0,
                train_counts: Sequence[int] | None = None, test_seed: int = TEST_SEED,
                num_classes: int = len(SHAPES), **render_kwargs) -> tuple[ShapeSplit, ShapeSplit]:
    """(train, test). Train: `n_train_per_class` images per class, or the long-tailed counts
    ``long_tailed_counts(num_classes, n_train_per_class, imbalance_ratio)``, or exactly
    `train_counts`; drawn from `seed`. Test: balanced, `n_test_per_class` per class, drawn
    from `test_seed` (fixed by default, so every training seed is scored on the same images)
    and from background rows that no training image uses. `render_kwargs` go to
    ``render_shapes`` (noise, clutter, ...) for both splits."""
    if not 2 <= num_classes <= len(SHAPES):
        raise ConfigError(f"shapes: num_classes must be in [2, {len(SHAPES)}], got {num_classes}")
    if n_train_per_class < 1 or n_test_per_class < 1:
        raise ConfigError("shapes: n_train_per_class and n_test_per_class must be positive")
    if train_counts is None:
        train_counts = long_tailed_counts(num_classes, n_train_per_class, imbalance_ratio)
    elif len(train_counts) != num_classes or min(train_counts) < 1:
        raise ConfigError(f"shapes: train_counts needs {num_classes} positive counts, "
                          f"got {list(train_counts)}")
    if seed == test_seed:
        raise ConfigError(f"shapes: the training seed must differ from test_seed={test_seed}")
    train = render_shapes(_labels_for(train_counts, seed), size, seed, TRAIN_REGION,
                          **render_kwargs)
    test = render_shapes(_labels_for([n_test_per_class] * num_classes, test_seed), size,
                         test_seed, TEST_REGION, **render_kwargs)
    return train, test
