import pytest
import torch

from reprokit.data.augment import TensorAugment, digits_augment
from reprokit.data.images import MultiViewDataset, image_folder, load_digits, torchvision_dataset
from reprokit.errors import ConfigError, DatasetError, OfflineError


def test_digits_loader():
    train, test = load_digits(test_fraction=0.3, split_seed=0)
    assert train.images.shape[1:] == (1, 8, 8) and len(train) + len(test) == 1797
    assert 0.0 <= float(train.images.min()) and float(train.images.max()) == 1.0
    assert train.num_classes == 10
    # stratified: every class in both splits, in about the same share
    counts = torch.bincount(test.labels, minlength=10)
    assert counts.min() >= 50
    # a fixed split: the same seed gives the same images
    again, _ = load_digits(test_fraction=0.3, split_seed=0)
    assert torch.equal(train.images, again.images)
    flat_train = {tuple(x.flatten().tolist()) for x in train.images}
    overlap = sum(tuple(x.flatten().tolist()) in flat_train for x in test.images)
    assert overlap <= 5  # digits has a handful of pixel-identical duplicates, no shared indices
    with pytest.raises(ConfigError):
        load_digits(test_fraction=1.5)


def test_missing_dataset_roots_are_named(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match="not found under"):
        torchvision_dataset("cifar10", tmp_path / "cifar")
    with pytest.raises(DatasetError, match="does not exist"):
        image_folder(tmp_path / "imagenet")
    with pytest.raises(ConfigError, match="unknown dataset"):
        torchvision_dataset("mnist-ish", tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="bundled digits"):
        torchvision_dataset("cifar10", tmp_path, download=True)


def test_tensor_augment_is_batched_reproducible_and_bounded():
    x = torch.rand(32, 1, 8, 8)
    aug = digits_augment()
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    c = aug(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(TensorAugment(strength=0.0)(x), x)
    # identity geometry without noise or erasing keeps the image (grid_sample at pixel centres)
    still = TensorAugment(max_shift=0, max_rotation=0, scale_range=(1, 1), noise_std=0,
                          erase_prob=0)(x)
    assert torch.allclose(still, x, atol=1e-5)


def test_erasing_zeroes_a_rectangle():
    x = torch.ones(64, 1, 16, 16)
    out = TensorAugment(max_shift=0, max_rotation=0, scale_range=(1, 1), noise_std=0,
                        erase_prob=1.0, erase_max_area=0.25)(x, torch.Generator().manual_seed(0))
    erased = (out == 0).float().mean(dim=(1, 2, 3))
    assert (erased > 0).float().mean() > 0.8 and erased.max() <= 0.26


def test_multiview_dataset():
    base = [(torch.zeros(1, 2, 2), 3)]
    views, label = MultiViewDataset(base, lambda im: im + 1, n_views=4)[0]
    assert label == 3 and len(views) == 4 and torch.equal(views[0], torch.ones(1, 2, 2))
