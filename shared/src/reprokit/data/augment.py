"""Augmentations for multi-view self-supervised learning.

- ``TensorAugment``: batched augmentation of in-memory image tensors (all images of a batch
  at once: random affine via ``affine_grid``, optional flips, brightness/contrast jitter,
  Gaussian noise, random erasing). Used for digits, where flips are off (a flipped 2 is not
  a 2) and shifts, small rotations, noise and erasing carry the invariances.
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

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        b = x.shape[0]
        s = self.strength
        if s <= 0:
            return x

        def uniform(low, high, *shape):
            return low + (high - low) * torch.rand(*shape, generator=generator, device=x.device)

        angle = uniform(-1, 1, b) * math.radians(self.max_rotation) * s
        lo, hi = self.scale_range
        scale = 1 + uniform(lo - 1, hi - 1, b) * s
        shift = uniform(-1, 1, b, 2) * 2 * self.max_shift * s  # affine_grid spans [-1, 1]
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                             torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        if self.flip:
            mirror = torch.rand(b, generator=generator, device=x.device) < 0.5
            theta[mirror, 0, :2] *= -1
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)
        if self.brightness > 0:
            out = out * (1 + uniform(-1, 1, b, 1, 1, 1) * self.brightness * s)
        if self.contrast > 0:
            mean = out.mean(dim=(1, 2, 3), keepdim=True)
            out = (out - mean) * (1 + uniform(-1, 1, b, 1, 1, 1) * self.contrast * s) + mean
        if self.noise_std > 0:
            noise = torch.randn(out.shape, generator=generator, device=x.device)
            out = out + noise * self.noise_std * s
        if self.erase_prob > 0:
            out = self._erase(out, generator, s)
        return out.clamp(0, 1)

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


def digits_augment(strength: float = 1.0) -> TensorAugment:
    """Defaults for 8×8 digits: shifts, small rotations, noise and erasing, no flips."""
    return TensorAugment(max_shift=0.125, max_rotation=15.0, noise_std=0.1, erase_prob=0.5,
                         erase_max_area=0.25, strength=strength)


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
