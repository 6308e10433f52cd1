"""Datasets: balanced and long-tailed (noisy) digits (offline), CIFAR (local/online), ImageNet-LT.

Long-tailed subsets follow the usual CIFAR-LT recipe (Cui et al., 2019): class c (in label
order, c = 0 the head) keeps

    n_c = floor(n_max · ρ^(−c / (C − 1)))

images, with n_max the smallest class count of the full split and ρ = n_0 / n_{C−1} the
imbalance ratio. Which images of a class are kept is fixed by a seeded permutation, so the
subset is the same on every machine. Test sets stay balanced (as in ImageNet-LT).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from reprokit.data.images import long_tailed_counts
from reprokit.errors import ConfigError, DatasetError


def long_tailed_indices(labels: Sequence[int] | torch.Tensor, imbalance_ratio: float,
                        seed: int = 0) -> torch.Tensor:
    """Sorted indices of a deterministic long-tailed subset of `labels` (see module docs)."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    num_classes = int(labels.max()) + 1
    per_class = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]
    if any(len(idx) == 0 for idx in per_class):
        raise DatasetError("long-tailed subset: some class has no images")
    counts = long_tailed_counts(num_classes, min(len(idx) for idx in per_class), imbalance_ratio)
    gen = torch.Generator().manual_seed(seed)
    keep = [idx[torch.randperm(len(idx), generator=gen)[:n]] for idx, n in zip(per_class, counts)]
    return torch.cat(keep).sort().values


def class_counts(labels: torch.Tensor, num_classes: int | None = None) -> list[int]:
    labels = torch.as_tensor(labels, dtype=torch.long)
    return torch.bincount(labels, minlength=num_classes or 0).tolist()


# ---------------------------------------------------------------- ImageNet-LT


def read_split_file(path: str | os.PathLike) -> list[tuple[str, int]]:
    """ImageNet-LT split file (Liu et al., 2019): one ``relative/path.JPEG <label>`` a line."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"split file {path} does not exist")
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DatasetError(f"split file {path}, line {number}: expected '<path> <label>', "
                               f"got {line.strip()!r}")
        entries.append((parts[0], int(parts[1])))
    if not entries:
        raise DatasetError(f"split file {path} lists no images")
    return entries


class SplitFileDataset(Dataset):
    """Images listed by a split file, relative to `root`; items are (image, label)."""

    def __init__(self, root: str | os.PathLike, split_file: str | os.PathLike, transform=None,
                 check_files: bool = True):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"image root {self.root} does not exist")
        self.entries = read_split_file(split_file)
        if check_files:
            missing = next((p for p, _ in self.entries if not (self.root / p).is_file()), None)
            if missing is not None:
                raise DatasetError(f"{split_file} lists {missing}, which is not under {self.root}")
        self.targets = [label for _, label in self.entries]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int):
        from PIL import Image

        rel, label = self.entries[i]
        with Image.open(self.root / rel) as img:
            image = img.convert("RGB")
        return (self.transform(image) if self.transform else image), label


def dataset_targets(dataset: Dataset) -> torch.Tensor:
    """Labels of a torchvision-style dataset (``targets`` or ``labels``), through Subsets."""
    if isinstance(dataset, Subset):
        return dataset_targets(dataset.dataset)[torch.as_tensor(dataset.indices)]
    for attr in ("targets", "labels"):
        if hasattr(dataset, attr):
            return torch.as_tensor(getattr(dataset, attr), dtype=torch.long)
    raise DatasetError(f"{type(dataset).__name__} exposes no targets/labels")


# ---------------------------------------------------------------- training/evaluation data


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed group, (0, 1) outside DDP."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ShardedBatches(torch.utils.data.IterableDataset):
    """Endless shuffled global batches of in-memory images, each split across DDP ranks.

    Every pass over the data is a fresh permutation (from `seed`) cut into full batches of
    `batch_size` (the global batch); rank r of w keeps rows r, r + w, … of each, so the ranks
    see disjoint images and together exactly the batch a 1-process run sees. Items are
    ``(images, indices)``: the dataset indices, so a test can check who drew what.
    ``start_step`` skips that many global batches: a resumed run continues the same stream.
    """

    def __init__(self, images: torch.Tensor, batch_size: int, seed: int, start_step: int = 0):
        n = images.shape[0]
        if not 2 <= batch_size <= n:
            raise DatasetError(f"train.batch_size must be in 2..{n} (the training images), "
                               f"got {batch_size}")
        self.images, self.batch_size, self.seed = images, batch_size, seed
        self.start_step = start_step

    def __iter__(self):
        rank, world = dist_rank_world()
        if self.batch_size % world:
            raise ConfigError(f"train.batch_size {self.batch_size} must be divisible by the "
                              f"{world} processes")
        n, b = self.images.shape[0], self.batch_size
        per_pass = n // b
        gen = torch.Generator().manual_seed(self.seed)
        skip = self.start_step
        while True:
            order = torch.randperm(n, generator=gen)
            if skip >= per_pass:  # the permutation is drawn anyway: the stream stays the same
                skip -= per_pass
                continue
            for start in range(skip * b, per_pass * b, b):
                idx = order[start:start + b][rank::world]
                yield self.images[idx], idx
            skip = 0



class InMemoryData:
    """A balanced or long-tailed in-memory training set, a balanced test set, and batched
    views (``TensorAugment``). Subclasses load the splits and name the augmentation."""

    num_classes = 10
    in_channels = 1

    def __init__(self, train, test, long_tailed: bool, imbalance_ratio: float, lt_seed: int):
        if long_tailed:
            train = train.subset(long_tailed_indices(train.labels, imbalance_ratio, lt_seed))
        self.train, self.test = train, test
        self.bank = train  # what the kNN bank / linear probe are fitted on

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one training input (what an MLP encoder flattens)."""
        return tuple(self.test.images.shape[1:])

    def train_counts(self) -> list[int]:
        return class_counts(self.train.labels, self.num_classes)

    def test_size(self) -> int:
        return len(self.test)

    def train_loader(self, batch_size: int, seed: int, num_workers: int = 0,
                     start_step: int = 0):
        # endless shuffled (images, indices) batches: the loop stops at train.steps
        return torch.utils.data.DataLoader(
            ShardedBatches(self.train.images, batch_size, seed, start_step), batch_size=None)

    def augment(self, strength: float):
        raise NotImplementedError

    @torch.no_grad()
    def features(self, encoder, split: str, device, max_images: int = 0):
        from reprokit.evaluation import extract_features

        data = self.bank if split == "train" else self.test
        images, labels = data.images, data.labels
        if max_images:
            images, labels = images[:max_images], labels[:max_images]
        return extract_features(encoder, images, device=device), labels

    @torch.no_grad()
    def view_features(self, encoder, strength: float, m_max: int, device, seed: int,
                      max_images: int = 0):
        """(m_max, N, D) features of m_max augmented views of each test image."""
        from reprokit.evaluation import extract_features

        images, labels = self.view_sources()
        if max_images:
            images, labels = images[:max_images], labels[:max_images]
        augment = self.augment(strength)
        gen = torch.Generator().manual_seed(seed)
        views = [extract_features(encoder, augment(images, generator=gen), device=device)
                 for _ in range(m_max)]
        return torch.stack(views), labels

    def view_sources(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What the views of a test image are drawn from (the image itself, by default)."""
        return self.test.images, self.test.labels


class DigitsData(InMemoryData):
    """scikit-learn digits, balanced or long-tailed training set, balanced test set.

    With ``view_noise`` σ > 0 it is reprokit's ``noisy_digits``: the nuisance is Gaussian
    pixel noise drawn per view — a training view is the clean digit plus fresh noise
    (``GaussianNoiseViews``, after ``digits_augment`` at ``view_augment`` × the strength if
    that is > 0), while the kNN bank / probe set and the test set carry one fixed noise draw
    each. Raw pixels and a random encoder then see mostly noise, and what two views share is
    the digit: a representation has to learn to see through the noise."""

    def __init__(self, long_tailed: bool, imbalance_ratio: float, lt_seed: int = 0,
                 test_fraction: float = 0.3, view_noise: float = 0.0,
                 view_augment: float = 1.0):
        from reprokit.data.images import load_digits, noisy_digits

        self.view_noise, self.view_augment = view_noise, view_augment
        if view_noise <= 0:
            super().__init__(*load_digits(test_fraction=test_fraction), long_tailed,
                             imbalance_ratio, lt_seed)
            return
        if test_fraction != 0.3:
            raise ConfigError("data.test_fraction: noisy digits use the fixed 70/30 split")
        d = noisy_digits(view_noise, imbalance_ratio=imbalance_ratio if long_tailed else 1.0,
                         subset_seed=lt_seed)
        self.train, self.bank, self.test = d.train, d.bank, d.test
        self.clean_test = load_digits()[1]

    def augment(self, strength: float):
        from reprokit.data.augment import GaussianNoiseViews, digits_augment

        if self.view_noise <= 0:
            return digits_augment(strength)
        geometric = None
        if self.view_augment > 0 and strength > 0:
            geometric = digits_augment(strength * self.view_augment)
            geometric.noise_std = 0.0  # the per-view Gaussian noise is the noise
        return GaussianNoiseViews(std=self.view_noise * strength, augment=geometric)

    def view_sources(self) -> tuple[torch.Tensor, torch.Tensor]:
        # a test image's views are drawn around its clean digit (the surrogate prototype)
        test = getattr(self, "clean_test", self.test)
        return test.images, test.labels


class NaturalImageData:
    """CIFAR-10/100 (optionally long-tailed) or ImageNet-LT, with per-image transforms."""

    def __init__(self, name: str, root: str, long_tailed: bool, imbalance_ratio: float,
                 lt_seed: int = 0, image_size: int = 32, download: bool = False,
                 train_split_file: str = "", test_split_file: str = "", num_workers: int = 0):
        from reprokit.data import augment as aug
        from reprokit.data.images import torchvision_dataset

        self.name, self.image_size, self.num_workers = name, image_size, num_workers
        cifar = name.startswith("cifar")
        self.mean, self.std = (aug.CIFAR_MEAN, aug.CIFAR_STD) if cifar else \
            (aug.IMAGENET_MEAN, aug.IMAGENET_STD)
        if cifar:
            self.train_base = torchvision_dataset(name, root, train=True, download=download)
            self.test_base = torchvision_dataset(name, root, train=False, download=download)
            if long_tailed:
                idx = long_tailed_indices(dataset_targets(self.train_base), imbalance_ratio,
                                          lt_seed)
                self.train_base = Subset(self.train_base, idx.tolist())
        else:  # ImageNet-LT is long-tailed by its split file
            if not long_tailed:
                raise ConfigError("imagenet_lt has no balanced training set here: set "
                                  "grid.data=long_tailed and leave out the 'longtail' experiment")
            root_path = Path(root)
            self.train_base = SplitFileDataset(root_path, root_path / train_split_file)
            self.test_base = SplitFileDataset(root_path, root_path / test_split_file)
        self.train_labels = dataset_targets(self.train_base)
        self.num_classes = int(max(self.train_labels.max(),
                                   dataset_targets(self.test_base).max())) + 1
        self.in_channels = 3

    def train_counts(self) -> list[int]:
        return class_counts(self.train_labels, self.num_classes)

    def test_size(self) -> int:
        return len(self.test_base)

    def _loader(self, dataset, batch_size: int, shuffle: bool, drop_last: bool = False):
        return torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
            num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0)

    def train_loader(self, batch_size: int, seed: int, num_workers: int = 0,
                     start_step: int = 0):
        # per-image transforms: Fabric's DistributedSampler shards these across ranks
        # (then train.batch_size is per device); a resumed arm restarts its epoch order.
        from reprokit.data.augment import natural_image_views
        from reprokit.data.images import MultiViewDataset

        views = natural_image_views(self.image_size, mean=self.mean, std=self.std)
        torch.manual_seed(seed)  # the loader's shuffling order
        return self._loader(MultiViewDataset(self.train_base, views, 2), batch_size,
                            shuffle=True, drop_last=True)

    def augment(self, strength: float):
        return None  # views come from the loader

    @torch.no_grad()
    def features(self, encoder, split: str, device, max_images: int = 0):
        from reprokit.data.augment import eval_transform
        from reprokit.evaluation import extract_loader_features

        base = self.train_base if split == "train" else self.test_base
        if max_images and max_images < len(base):
            base = Subset(base, range(max_images))
        transform = eval_transform(self.image_size, self.mean, self.std,
                                   resize=None if self.name.startswith("cifar")
                                   else round(self.image_size * 256 / 224))  # 224 → 256
        return extract_loader_features(
            encoder, self._loader(_Transformed(base, transform), 256, False), device)

    @torch.no_grad()
    def view_features(self, encoder, strength: float, m_max: int, device, seed: int,
                      max_images: int = 0):
        from reprokit.data.augment import natural_image_views
        from reprokit.evaluation import extract_loader_features

        base = self.test_base
        if max_images and max_images < len(base):
            base = Subset(base, range(max_images))
        views = natural_image_views(self.image_size, strength, mean=self.mean, std=self.std)
        torch.manual_seed(seed)
        feats, labels = [], None
        for _ in range(m_max):
            f, labels = extract_loader_features(
                encoder, self._loader(_Transformed(base, views), 256, False), device)
            feats.append(f)
        return torch.stack(feats), labels


class _Transformed(Dataset):
    def __init__(self, base: Dataset, transform):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        image, label = self.base[i]
        return self.transform(image), label


def build_data(cfg, long_tailed: bool):
    """The dataset object for `cfg.data` (a ``balcon.config.DataConfig``)."""
    if cfg.name == "digits":
        return DigitsData(long_tailed, cfg.imbalance_ratio, cfg.lt_seed, cfg.test_fraction,
                          cfg.view_noise, cfg.view_augment)
    return NaturalImageData(cfg.name, cfg.root, long_tailed, cfg.imbalance_ratio, cfg.lt_seed,
                            cfg.image_size, cfg.download, cfg.train_split_file,
                            cfg.test_split_file, cfg.num_workers)
