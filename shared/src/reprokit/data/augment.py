"""Augmentations for multi-view self-supervised learning.

- ``TensorAugment``: batched augmentation of in-memory image tensors (all images of a batch
  at once: random affine via ``affine_grid`` — shifts, rotations, zoom, or a random resized
  crop —, optional flips, colour jitter (brightness, contrast, saturation, hue), random
  grayscale, Gaussian noise, random erasing). ``digits_augment``: digits, where flips are off
  (a flipped 2 is not a 2) and shifts, small rotations, noise and erasing carry the
  invariances. ``shapes_augment``: the procedural shapes (``reprokit.data.shapes``), where
  crops, any rotation, flips and strong colour jitter carry them.
- ``GaussianNoiseViews``: fresh per-view Gaussian noise on clean images (after an optional
  ``TensorAugment``), the views of ``reprokit.data.images.noisy_digits``.
- ``natural_image_views()``: the SimSiam / MoCo-v2 per-image pipeline for natural images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class TensorAugment:
    """Random views of a batch (B, C, H, W) in [0, 1].

    `strength` scales every geometric and photometric range at once (0 = identity).
    With `crop_area` set, the zoom and shift are a random resized crop instead (the crop
    covers a uniform fraction of the image area in `crop_area`, aspect ratio in 3/4–4/3,
    anywhere inside the image; `scale_range` and `max_shift` are then unused). Hue jitter
    rotates colours around the grey axis by up to ``hue`` × 180°.
    """

    max_shift: float = 0.15          # fraction of the image size
    max_rotation: float = 15.0       # degrees
    scale_range: tuple[float, float] = (0.85, 1.15)
    flip: bool = False
    brightness: float = 0.0          # multiplicative jitter range
    contrast: float = 0.0
    noise_std: float = 0.05
    erase_prob: float = 0.5
    erase_max_area: float = 0.25     # fraction of the image
    strength: float = 1.0
    crop_area: tuple[float, float] | None = None   # random resized crop (fraction of the area)
    saturation: float = 0.0
    hue: float = 0.0                 # fraction of a half turn
    jitter_prob: float = 1.0         # probability that the colour jitter applies to an image
    grayscale_prob: float = 0.0
    padding_mode: str = "zeros"      # grid_sample padding: zeros | border | reflection

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        b = x.shape[0]
        s = self.strength
        if s <= 0:
            return x

        def uniform(low, high, *shape):
            return low + (high - low) * torch.rand(*shape, generator=generator, device=x.device)

        angle = uniform(-1, 1, b) * math.radians(self.max_rotation) * s
        if self.crop_area is not None:
            lo, hi = self.crop_area
            area = 1 - uniform(1 - hi, 1 - lo, b) * min(s, 1.0)
            log_aspect = uniform(-1, 1, b) * math.log(4 / 3) * min(s, 1.0)
            # half-sizes of the crop in affine_grid units (the image spans [-1, 1])
            half = torch.stack([torch.sqrt(area * torch.exp(log_aspect)),
                                torch.sqrt(area / torch.exp(log_aspect))], 1).clamp(max=1)
            shift = uniform(-1, 1, b, 2) * (1 - half)
        else:
            lo, hi = self.scale_range
            zoom = 1 + uniform(lo - 1, hi - 1, b) * s
            half = (1 / zoom)[:, None].expand(b, 2)
            shift = uniform(-1, 1, b, 2) * 2 * self.max_shift * s  # affine_grid spans [-1, 1]
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([cos * half[:, 0], -sin * half[:, 1], shift[:, 0]], 1),
                             torch.stack([sin * half[:, 0], cos * half[:, 1], shift[:, 1]], 1)],
                            1)
        if self.flip:
            mirror = torch.rand(b, generator=generator, device=x.device) < 0.5
            theta[mirror, 0, :2] *= -1
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, padding_mode=self.padding_mode, align_corners=False)
        out = self._color(out, uniform, generator, s)
        if self.noise_std > 0:
            noise = torch.randn(out.shape, generator=generator, device=x.device)
            out = out + noise * self.noise_std * s
        if self.erase_prob > 0:
            out = self._erase(out, generator, s)
        return out.clamp(0, 1)

    def _color(self, out: torch.Tensor, uniform, generator, s: float) -> torch.Tensor:
        """Brightness, contrast, saturation and hue jitter (with `jitter_prob`), then grayscale."""
        b = out.shape[0]
        if self.jitter_prob < 1:
            keep = (torch.rand(b, generator=generator, device=out.device)
                    >= self.jitter_prob).float().view(b, 1, 1, 1)
        else:
            keep = None
        before = out
        if self.brightness > 0:
            out = out * (1 + uniform(-1, 1, b, 1, 1, 1) * self.brightness * s)
        if self.contrast > 0:
            mean = out.mean(dim=(1, 2, 3), keepdim=True)
            out = (out - mean) * (1 + uniform(-1, 1, b, 1, 1, 1) * self.contrast * s) + mean
        if out.shape[1] == 3 and self.saturation > 0:
            gray = out.mean(dim=1, keepdim=True)
            out = (out - gray) * (1 + uniform(-1, 1, b, 1, 1, 1) * self.saturation * s) + gray
        if out.shape[1] == 3 and self.hue > 0:
            out = torch.einsum("bij,bjhw->bihw", _hue_rotation(
                uniform(-1, 1, b) * math.pi * self.hue * s), out)
        if keep is not None:
            out = keep * before + (1 - keep) * out
        if out.shape[1] == 3 and self.grayscale_prob > 0:
            gray = (torch.rand(b, generator=generator, device=out.device)
                    < self.grayscale_prob).view(b, 1, 1, 1)
            out = torch.where(gray, out.mean(dim=1, keepdim=True).expand_as(out), out)
        return out

    def _erase(self, x: torch.Tensor, generator, s: float) -> torch.Tensor:
        b, _, h, w = x.shape
        rand = lambda *shape: torch.rand(*shape, generator=generator, device=x.device)  # noqa: E731
        area = rand(b) * self.erase_max_area * min(s, 1.0)
        aspect = torch.exp((rand(b) - 0.5) * math.log(3.0) * 2)
        eh = (torch.sqrt(area * aspect) * h).clamp(max=h)
        ew = (torch.sqrt(area / aspect) * w).clamp(max=w)
        top = rand(b) * (h - eh)
        left = rand(b) * (w - ew)
        ys = torch.arange(h, device=x.device)[None, :, None]
        xs = torch.arange(w, device=x.device)[None, None, :]
        box = ((ys >= top[:, None, None]) & (ys < (top + eh)[:, None, None])
               & (xs >= left[:, None, None]) & (xs < (left + ew)[:, None, None]))
        apply = (rand(b) < self.erase_prob)[:, None, None]
        return x.masked_fill((box & apply)[:, None], 0.0)


def _hue_rotation(angle: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) rotations of RGB space by `angle` around the grey axis (1, 1, 1)/√3
    (Rodrigues' formula): a hue shift that keeps each pixel's mean intensity."""
    k = torch.tensor([[0.0, -1, 1], [1, 0, -1], [-1, 1, 0]], device=angle.device) / math.sqrt(3)
    eye = torch.eye(3, device=angle.device)
    a = angle.view(-1, 1, 1)
    return eye + torch.sin(a) * k + (1 - torch.cos(a)) * (k @ k)


def digits_augment(strength: float = 1.0) -> TensorAugment:
    """Defaults for 8×8 digits: shifts, small rotations, noise and erasing, no flips."""
    return TensorAugment(max_shift=0.125, max_rotation=15.0, noise_std=0.1, erase_prob=0.5,
                         erase_max_area=0.25, strength=strength)


def shapes_augment(strength: float = 1.0) -> TensorAugment:
    """Views for the procedural shapes: a random resized crop (20–100 % of the area), any
    rotation, flips, SimCLR-strength colour jitter (0.4, 0.4, 0.4, hue 0.1 turn … with p 0.8)
    and grayscale (p 0.2), light noise; borders reflect so a crop never shows black corners."""
    return TensorAugment(crop_area=(0.2, 1.0), max_rotation=180.0, flip=True, brightness=0.4,
                         contrast=0.4, saturation=0.4, hue=0.2, jitter_prob=0.8,
                         grayscale_prob=0.2, noise_std=0.03, erase_prob=0.0,
                         padding_mode="reflection", strength=strength)


@dataclass
class GaussianNoiseViews:
    """Views of clean images: an optional ``TensorAugment`` (`augment`), then fresh additive
    N(0, `std`²) noise per view and pixel, not clamped — the training views of
    ``reprokit.data.images.noisy_digits`` (whose evaluation images carry the same noise, drawn
    once). Two views share the image and nothing of their noise."""

    std: float = 0.7
    augment: TensorAugment | None = None

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.augment is not None:
            x = self.augment(x, generator)
        if self.std <= 0:
            return x
        return x + self.std * torch.randn(x.shape, generator=generator, device=x.device)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def natural_image_views(size: int, strength: float = 1.0, blur: bool | None = None,
                        mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """SimSiam / MoCo-v2 augmentation: random resized crop (0.2–1), flip, colour jitter
    (0.4, 0.4, 0.4, 0.1 with p=0.8), grayscale (p=0.2), Gaussian blur (p=0.5, for images of
    96 px and more; CIFAR recipes leave it out), normalisation."""
    from torchvision.transforms import v2

    blur = size >= 96 if blur is None else blur
    steps = [
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=(max(0.08, 1 - 0.8 * strength), 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4 * strength, 0.4 * strength, 0.4 * strength,
                                       0.1 * strength)], p=0.8),
        v2.RandomGrayscale(p=0.2),
    ]
    if blur:
        kernel = 2 * (size // 20) + 1
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(steps)


def eval_transform(size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, resize: int | None = None):
    """Deterministic transform for feature extraction (resize, centre crop, normalise)."""
    from torchvision.transforms import v2

    return v2.Compose([v2.ToImage(), v2.Resize(resize or size, antialias=True),
                       v2.CenterCrop(size), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(mean, std)])
