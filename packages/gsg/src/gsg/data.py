"""Training data and the representation monitors.

- digits (offline default): scikit-learn's 8×8 digits pasted at a fixed random position of a
  ``canvas``×``canvas`` image, kept in memory and served a whole shuffled batch per item
  (``reprokit.data.images.TensorBatches``, one epoch per pass); views are made batched, inside
  the training step (``reprokit.data.augment.TensorAugment``: shifts, small rotations, noise,
  erasing).
- CIFAR-10/100 and ImageFolder: per-image SimSiam/MoCo-v2 views (``natural_image_views``)
  through ``MultiViewDataset`` and a DataLoader with workers and pinned memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from gsg.config import DataConfig, EvalConfig
from reprokit.data.augment import (
    CIFAR_MEAN,
    CIFAR_STD,
    TensorAugment,
    eval_transform,
    natural_image_views,
)
from reprokit.data.images import (
    MultiViewDataset,
    TensorBatches,
    TensorSplit,
    image_folder,
    load_digits,
    torchvision_dataset,
)
from reprokit.errors import DatasetError
from reprokit.evaluation import (
    effective_rank,
    extract_features,
    extract_loader_features,
    knn_accuracy,
    linear_probe_accuracy,
    normalized_std,
)


def paste_on_canvas(images: torch.Tensor, canvas: int, generator: torch.Generator) -> torch.Tensor:
    """Each (C, h, w) image at a uniformly random (fixed) position of a zero canvas."""
    n, c, h, w = images.shape
    if canvas == h == w:
        return images
    out = images.new_zeros(n, c, canvas, canvas)
    top = torch.randint(0, canvas - h + 1, (n,), generator=generator)
    left = torch.randint(0, canvas - w + 1, (n,), generator=generator)
    rows = (top[:, None] + torch.arange(h))[:, :, None]          # (n, h, 1)
    cols = (left[:, None] + torch.arange(w))[:, None, :]          # (n, 1, w)
    idx = torch.arange(n)[:, None, None]
    for ch in range(c):
        out[idx, ch, rows, cols] = images[:, ch]
    return out


def corrupted_digits(cfg: DataConfig) -> tuple[TensorSplit, TensorSplit]:
    """Digits on a ``canvas``-px canvas with fixed per-image Gaussian noise (train and test)."""
    train, test = load_digits()
    gen = torch.Generator().manual_seed(cfg.corruption_seed)

    def corrupt(images: torch.Tensor) -> torch.Tensor:
        images = paste_on_canvas(images, cfg.canvas, gen)
        noise = torch.randn(images.shape, generator=gen) * cfg.noise
        return (images + noise).clamp(0, 1)

    return TensorSplit(corrupt(train.images), train.labels), TensorSplit(corrupt(test.images),
                                                                         test.labels)


def digits_views(cfg: DataConfig) -> TensorAugment:
    """Shifts, small rotations, noise and erasing; no flips (a flipped 2 is not a 2)."""
    return TensorAugment(max_shift=cfg.max_shift, max_rotation=15.0, noise_std=cfg.augment_noise,
                         erase_prob=0.5, erase_max_area=0.25, strength=cfg.augment_strength)


@dataclass
class TrainingData:
    """What a run trains and is evaluated on."""

    loader: DataLoader
    augment: TensorAugment | None        # None: the loader already yields lists of views
    in_shape: tuple[int, int, int]
    eval_train: object                   # TensorSplit or Dataset of (image, label)
    eval_test: object


def natural_datasets(cfg: DataConfig, n_views: int):
    size = cfg.image_size
    mean, std = (CIFAR_MEAN, CIFAR_STD) if cfg.name.startswith("cifar") else \
        ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    views = natural_image_views(size, mean=mean, std=std)
    evals = eval_transform(size, mean, std, resize=None if cfg.name.startswith("cifar")
                           else int(size * 256 / 224))
    if cfg.name == "imagefolder":
        root = Path(cfg.root)
        train_base = image_folder(root / "train")
        eval_train, eval_test = image_folder(root / "train", evals), image_folder(root / "val", evals)
    else:
        train_base = torchvision_dataset(cfg.name, cfg.root, True, download=cfg.download)
        eval_train = torchvision_dataset(cfg.name, cfg.root, True, transform=evals)
        eval_test = torchvision_dataset(cfg.name, cfg.root, False, transform=evals)
    if cfg.eval_train_subset and cfg.eval_train_subset < len(eval_train):
        g = torch.Generator().manual_seed(0)
        keep = torch.randperm(len(eval_train), generator=g)[:cfg.eval_train_subset].tolist()
        eval_train = torch.utils.data.Subset(eval_train, keep)
    return MultiViewDataset(train_base, views, n_views), eval_train, eval_test


def build_training_data(cfg: DataConfig, batch_size: int, n_views: int, seed: int,
                        accelerator: str = "cpu") -> TrainingData:
    if cfg.name == "digits":
        train, test = corrupted_digits(cfg)
        loader = DataLoader(TensorBatches(train.images, batch_size, seed), batch_size=None,
                            shuffle=False, num_workers=0)
        return TrainingData(loader, digits_views(cfg), tuple(train.images.shape[1:]), train, test)
    train_set, eval_train, eval_test = natural_datasets(cfg, n_views)
    if batch_size > len(train_set):
        raise DatasetError(f"batch size {batch_size} exceeds the {len(train_set)} training images")
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=True,
                        num_workers=cfg.workers, pin_memory=accelerator == "cuda",
                        persistent_workers=cfg.workers > 0, generator=gen,
                        prefetch_factor=4 if cfg.workers > 0 else None)
    return TrainingData(loader, None, (3, cfg.image_size, cfg.image_size), eval_train, eval_test)


# ---------------------------------------------------------------- monitors


def _features(fn, data, device, batch_size: int = 512, workers: int = 0):
    """(features, labels) of `fn` over a TensorSplit or an (image, label) dataset."""
    if isinstance(data, TensorSplit):
        return extract_features(fn, data.images, batch_size, device), data.labels
    return extract_loader_features(fn, DataLoader(data, batch_size=batch_size,
                                                  num_workers=workers), device)


class Monitor:
    """kNN accuracy (backbone features), collapse monitors (projector outputs), linear probe."""

    def __init__(self, data: TrainingData, cfg: EvalConfig, workers: int = 0):
        self.data, self.cfg, self.workers = data, cfg, workers

    @torch.no_grad()
    def __call__(self, net, device, linear: bool = False, seed: int = 0) -> dict:
        was_training = net.training
        net.eval()
        try:
            ftr, ytr = _features(net.backbone, self.data.eval_train, device, workers=self.workers)
            fte, yte = _features(net.backbone, self.data.eval_test, device, workers=self.workers)
            zte = net.projector(fte.to(device)).float().cpu()
        finally:
            net.train(was_training)
        out = {"knn": knn_accuracy(ftr, ytr, fte, yte, k=self.cfg.knn_k,
                                   temperature=self.cfg.knn_temperature),
               "z_std": normalized_std(zte), "z_std_healthy": zte.shape[1] ** -0.5,
               "z_erank": effective_rank(zte), "z_dim": zte.shape[1],
               "feat_erank": effective_rank(fte)}
        if linear:
            out["linear"] = linear_probe_accuracy(ftr, ytr, fte, yte, epochs=self.cfg.linear_epochs,
                                                  lr=self.cfg.linear_lr, seed=seed)
        return out


def raw_pixel_knn(cfg: DataConfig, eval_cfg: EvalConfig) -> float | None:
    """kNN on raw pixels: the floor a representation has to beat (digits only)."""
    if cfg.name != "digits":
        return None
    train, test = corrupted_digits(cfg)
    return knn_accuracy(train.images.flatten(1), train.labels, test.images.flatten(1),
                        test.labels, k=eval_cfg.knn_k, temperature=eval_cfg.knn_temperature)
