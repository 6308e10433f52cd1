"""Image datasets for self-supervised learning.

- ``load_digits()``: the offline default, scikit-learn's bundled 8×8 digits (1,797 images,
  10 classes), as in-memory tensors with a fixed stratified train/test split;
- ``noisy_digits()``: the self-supervised cpu setting — clean training digits (views add fresh
  noise), fixed-noise kNN bank and test set, balanced or exactly long-tailed;
- ``torchvision_dataset()``: CIFAR-10/100 and STL-10 from a local root (downloaded when online);
- ``image_folder()``: ImageNet-style ``root/<class>/*.jpg`` folders.

In-memory tensors suit batched augmentation (``reprokit.data.augment.TensorAugment``), which is
much faster on a CPU than per-image PIL transforms; ``TensorBatches`` serves them to a
``DataLoader(..., batch_size=None)`` a whole shuffled batch per item (no per-image collation),
either one epoch per iteration (trainers that count epochs) or as an endless stream (trainers
that stop at ``max_steps``). Folder datasets use per-image transforms and ``MultiViewDataset``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, IterableDataset

from reprokit.errors import ConfigError, DatasetError, require_online


@dataclass(frozen=True)
class TensorSplit:
    """Images (N, C, H, W) float in [0, 1] and integer labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        if self.images.shape[0] != self.labels.shape[0]:
            raise DatasetError("images and labels differ in length")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1

    def subset(self, index: torch.Tensor) -> TensorSplit:
        return TensorSplit(self.images[index], self.labels[index])


def load_digits(test_fraction: float = 0.3, split_seed: int = 0) -> tuple[TensorSplit, TensorSplit]:
    """scikit-learn's digits as (train, test); pixel values 0..16 scaled to [0, 1]."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    bunch = sk_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=test_fraction, random_state=split_seed,
        stratify=labels.numpy())
    return (TensorSplit(images[idx_train], labels[idx_train]),
            TensorSplit(images[idx_test], labels[idx_test]))


TORCHVISION_DATASETS = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "stl10": "STL10"}


def torchvision_dataset(name: str, root: str | os.PathLike, train: bool = True, transform=None,
                        download: bool = False, stl10_split: str | None = None) -> Dataset:
    """CIFAR-10/100 or STL-10 under `root`. Missing files: downloaded if `download` and online,
    otherwise a clear error naming the folder."""
    import torchvision

    key = name.lower()
    if key not in TORCHVISION_DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {sorted(TORCHVISION_DATASETS)}")
    if download:
        require_online(f"downloading {name}", "the bundled digits (--data digits)")
    cls = getattr(torchvision.datasets, TORCHVISION_DATASETS[key])
    try:
        if key == "stl10":
            split = stl10_split or ("train+unlabeled" if train else "test")
            return cls(str(root), split=split, transform=transform, download=download)
        return cls(str(root), train=train, transform=transform, download=download)
    except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
        raise DatasetError(
            f"{name} not found under {Path(root).resolve()} ({err}); pass --download when "
            "online, or point --data-root at a folder that holds it") from err


def image_folder(root: str | os.PathLike, transform=None) -> Dataset:
    """``root/<class>/<image>`` folders (ImageNet and its subsets)."""
    import torchvision

    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist")
    try:
        return torchvision.datasets.ImageFolder(str(root), transform=transform)
    except FileNotFoundError as err:
        raise DatasetError(f"image folder {root} is malformed: {err}") from err


class MultiViewDataset(Dataset):
    """Wraps a (image, label) dataset to return ``([view_1, ..., view_n], label)``."""

    def __init__(self, base: Dataset, transform, n_views: int = 2):
        if n_views < 1:
            raise ConfigError("n_views must be at least 1")
        self.base, self.transform, self.n_views = base, transform, n_views

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        image, label = self.base[i]
        return [self.transform(image) for _ in range(self.n_views)], label


class TensorBatches(IterableDataset):
    """Shuffled whole batches of in-memory tensors, one tensor slice per item.

    Items are ``images[idx]``, or ``(images[idx], labels[idx])`` when `labels` are given; use
    ``DataLoader(batches, batch_size=None)``. Each pass over the data is a fresh permutation cut
    into ``len(images) // batch_size`` full batches (the incomplete last batch is dropped).
    Everything follows from `seed`, so a repeated run, or a resumed one (which builds a new
    object), replays the same batches:

    - ``infinite=False`` (epochs): every ``iter()`` is one epoch, reshuffled; ``len()`` is the
      number of batches, so a trainer can count epochs (``max_epochs``). The shuffles come
      from one generator seeded at construction, which draws an initial order there and a new
      one at the start of each epoch (so epoch 1 uses its second permutation).
    - ``infinite=True`` (steps): ``iter()`` yields passes without end, each reshuffled, and
      restarts from the seed every time it is called; there is no ``len()``, the trainer stops
      at ``max_steps``.

    Under DDP (``torch.distributed`` initialised when the loader is iterated) `batch_size` is
    per process, as in Lightning: every rank draws the same seeded permutation, cuts it into
    global batches of ``world_size × batch_size`` and takes its own slice of each, so the
    ranks' batches are disjoint and together are exactly the 1-process run's batch of the
    global size. ``set_epoch(e)`` positions the epoch stream at epoch `e` (a resumed run
    calls it, as ``DistributedSampler.set_epoch`` is called, so epoch `e` replays its order).
    """

    def __init__(self, images: torch.Tensor, batch_size: int, seed: int,
                 labels: torch.Tensor | None = None, infinite: bool = False):
        n = images.shape[0]
        if batch_size > n:
            raise DatasetError(f"batch size {batch_size} exceeds the {n} training images")
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        if labels is not None and labels.shape[0] != n:
            raise DatasetError("images and labels differ in length")
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.seed, self.infinite = seed, infinite
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(n, generator=self.generator)

    def __len__(self) -> int:
        if self.infinite:
            raise TypeError("an infinite TensorBatches has no length")
        _, world = _rank_and_world()
        return self.images.shape[0] // (self.batch_size * world)

    def set_epoch(self, epoch: int) -> None:
        """The next ``iter()`` yields epoch `epoch` (0-based) of the seeded stream."""
        self.generator = torch.Generator().manual_seed(self.seed)
        n = self.images.shape[0]
        for _ in range(epoch + 1):   # the construction-time draw, then one per earlier epoch
            self.order = torch.randperm(n, generator=self.generator)

    def _batches(self, order: torch.Tensor):
        rank, world = _rank_and_world()
        b = self.batch_size
        step = b * world
        if step > order.shape[0]:
            raise DatasetError(f"global batch {world} × {b} exceeds the {order.shape[0]} "
                               "training images")
        for start in range(0, order.shape[0] - step + 1, step):
            idx = order[start + rank * b:start + (rank + 1) * b]
            yield self.images[idx] if self.labels is None else (self.images[idx],
                                                                self.labels[idx])

    def __iter__(self):
        n = self.images.shape[0]
        if not self.infinite:
            self.order = torch.randperm(n, generator=self.generator)
            yield from self._batches(self.order)
            return
        gen = torch.Generator().manual_seed(self.seed)
        while True:
            yield from self._batches(torch.randperm(n, generator=gen))


def _rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) without one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def long_tailed_counts(num_classes: int, n_max: int, imbalance_ratio: float) -> list[int]:
    """Per-class counts n_c = floor(n_max · ρ^(−c/(C−1))); ρ = 1 keeps every class at n_max
    (CIFAR-LT; class 0 is the head)."""
    if imbalance_ratio < 1:
        raise ConfigError(f"imbalance_ratio must be ≥ 1, got {imbalance_ratio}")
    if num_classes < 2:
        return [n_max] * num_classes
    # The small epsilon keeps exact products (e.g. 100 · 10^-1 = 10) from flooring to 9.
    return [max(1, math.floor(n_max * imbalance_ratio ** (-c / (num_classes - 1)) + 1e-9))
            for c in range(num_classes)]


@dataclass(frozen=True)
class NoisyDigits:
    """Digits behind Gaussian noise. ``train``: the clean training digits, what training views
    are made from (``reprokit.data.augment.GaussianNoiseViews`` draws fresh noise per view);
    ``bank``: the same digits under one fixed noise draw (kNN bank / probe training set);
    ``test``: the held-out digits under another fixed draw."""

    train: TensorSplit
    bank: TensorSplit
    test: TensorSplit
    noise: float


BANK_NOISE_SEED = 1000
TEST_NOISE_SEED = 12345


def noisy_digits(noise: float = 0.7, *, imbalance_ratio: float = 1.0,
                 n_per_class: int | None = None, subset_seed: int = 0,
                 bank_seed: int = BANK_NOISE_SEED, test_seed: int = TEST_NOISE_SEED) -> NoisyDigits:
    """scikit-learn's digits (``load_digits`` split) with additive N(0, `noise`²) pixel noise
    on the evaluation images (not clamped: a plain Gaussian channel).

    Why: the digits are clean enough that raw pixels already give kNN 0.98. Behind heavy noise
    raw pixels and a random encoder are poor, and a view pair that shares the digit but not
    the noise rewards exactly the invariance that recovers it (denoising). The noise must be
    fresh per view: a fixed per-image noise pattern shared by all views lets a network match
    views by their noise.

    Training digits: all (about 125 per class), or exactly ``long_tailed_counts(10, n, ρ)``
    per class with n = `n_per_class` (default: the smallest class size) when `imbalance_ratio`
    ρ > 1 or `n_per_class` is given, chosen by `subset_seed`. The test set is always the full
    balanced held-out split."""
    if noise < 0:
        raise ConfigError(f"noisy digits: noise must be ≥ 0, got {noise}")
    if bank_seed == test_seed:
        raise ConfigError(f"noisy digits: bank_seed and test_seed must differ (both {bank_seed})")
    train, test = load_digits()
    if imbalance_ratio != 1.0 or n_per_class is not None:
        sizes = torch.bincount(train.labels, minlength=10)
        n_max = int(sizes.min()) if n_per_class is None else n_per_class
        counts = long_tailed_counts(10, n_max, imbalance_ratio)
        g = torch.Generator().manual_seed(subset_seed)
        keep = []
        for c, k in enumerate(counts):
            idx = torch.nonzero(train.labels == c).flatten()
            if k > idx.numel():
                raise ConfigError(f"noisy digits: class {c} has {idx.numel()} training digits, "
                                  f"{k} requested (n_per_class={n_per_class})")
            keep.append(idx[torch.randperm(idx.numel(), generator=g)[:k]])
        train = train.subset(torch.cat(keep).sort().values)

    def corrupt(images: torch.Tensor, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return images + noise * torch.randn(images.shape, generator=g)

    return NoisyDigits(train, TensorSplit(corrupt(train.images, bank_seed), train.labels),
                       TensorSplit(corrupt(test.images, test_seed), test.labels), noise)
