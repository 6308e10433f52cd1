"""Training data and the representation monitors.

- digits (offline default, ``reprokit.data.images.noisy_digits``): the clean 8×8 training
  digits, kept in memory and served a whole shuffled batch per item
  (``reprokit.data.images.TensorBatches``, one epoch per pass); each view is the clean digit
  plus fresh Gaussian noise, made batched inside the training step
  (``reprokit.data.augment.GaussianNoiseViews``); kNN bank, probe and test images carry one
  fixed draw of the same noise, so raw pixels and a random encoder are poor and denoising is
  what a representation has to learn.
- CIFAR-10/100 and ImageFolder: per-image SimSiam/MoCo-v2 views (``natural_image_views``)
  through ``MultiViewDataset`` and a DataLoader with workers and pinned memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from gsg.config import DataConfig, EvalConfig
from reprokit.data.augment import (
    CIFAR_MEAN,
    CIFAR_STD,
    GaussianNoiseViews,
    TensorAugment,
    eval_transform,
    natural_image_views,
)
from reprokit.data.images import (
    MultiViewDataset,
    NoisyDigits,
    TensorBatches,
    TensorSplit,
    image_folder,
    noisy_digits,
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


def digits_data(cfg: DataConfig) -> NoisyDigits:
    """Clean training digits (views add fresh noise), fixed-noise kNN bank and test set."""
    return noisy_digits(cfg.noise, bank_seed=cfg.bank_seed, test_seed=cfg.test_seed)


def digits_views(cfg: DataConfig) -> GaussianNoiseViews:
    """Fresh N(0, augment_noise²) noise per view on the clean digit; with augment_strength > 0,
    shifts, small rotations and erasing first (no flips: a flipped 2 is not a 2)."""
    geometric = None
    if cfg.augment_strength > 0:
        geometric = TensorAugment(max_shift=cfg.max_shift, max_rotation=15.0, noise_std=0.0,
                                  erase_prob=0.5, erase_max_area=0.25,
                                  strength=cfg.augment_strength)
    return GaussianNoiseViews(cfg.augment_noise, geometric)


@dataclass
class TrainingData:
    """What a run trains and is evaluated on."""

    loader: DataLoader
    augment: object | None               # views of a batch; None: the loader yields lists of views
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
                        accelerator: str = "cpu", world_size: int = 1,
                        rank: int = 0) -> TrainingData:
    """The training loader (`batch_size` per process) and the monitors' splits. Both kinds of
    loader draw each epoch's order from (seed, epoch) once told the epoch (``set_epoch``), and
    under DDP give every process a disjoint shard of it."""
    if cfg.name == "digits":
        digits = digits_data(cfg)
        loader = DataLoader(TensorBatches(digits.train.images, batch_size, seed), batch_size=None,
                            shuffle=False, num_workers=0)
        return TrainingData(loader, digits_views(cfg), tuple(digits.train.images.shape[1:]),
                            digits.bank, digits.test)
    train_set, eval_train, eval_test = natural_datasets(cfg, n_views)
    if batch_size * world_size > len(train_set):
        raise DatasetError(f"batch size {batch_size} × {world_size} processes exceeds the "
                           f"{len(train_set)} training images")
    sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=seed, drop_last=True)
    loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler, drop_last=True,
                        num_workers=cfg.workers, pin_memory=accelerator == "cuda",
                        persistent_workers=cfg.workers > 0,
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


def raw_pixel_floors(cfg: DataConfig, eval_cfg: EvalConfig, seed: int = 0) -> dict | None:
    """kNN and linear-probe accuracy on raw pixels (digits only): with a random encoder's,
    the floors a learned representation has to beat."""
    if cfg.name != "digits":
        return None
    digits = digits_data(cfg)
    bank, test = digits.bank, digits.test
    xtr, xte = bank.images.flatten(1), test.images.flatten(1)
    return {"knn": knn_accuracy(xtr, bank.labels, xte, test.labels, k=eval_cfg.knn_k,
                                temperature=eval_cfg.knn_temperature),
            "linear": linear_probe_accuracy(xtr, bank.labels, xte, test.labels,
                                            epochs=eval_cfg.linear_epochs, lr=eval_cfg.linear_lr,
                                            seed=seed)}
