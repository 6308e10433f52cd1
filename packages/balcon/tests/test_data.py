import pytest
import torch

from balcon.data import (
    DigitsData,
    SplitFileDataset,
    class_counts,
    long_tailed_counts,
    long_tailed_indices,
    read_split_file,
)
from reprokit.errors import ConfigError, DatasetError


def test_long_tailed_counts_follow_the_exponential_profile():
    # n_c = floor(100 · 10^(−c/9)): 100, 77.4, 59.9, 46.4, 35.9, 27.8, 21.5, 16.7, 12.9, 10
    assert long_tailed_counts(10, 100, 10.0) == [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]
    assert long_tailed_counts(4, 50, 1.0) == [50, 50, 50, 50]
    with pytest.raises(ConfigError):
        long_tailed_counts(10, 100, 0.5)


def test_long_tailed_indices_keep_those_counts_deterministically():
    labels = torch.arange(5).repeat_interleave(torch.tensor([40, 50, 60, 45, 70]))
    idx = long_tailed_indices(labels, imbalance_ratio=4.0, seed=3)
    # n_max is the smallest class (40): 40 · 4^(−c/4) = 40, 28.3, 20, 14.1, 10
    assert class_counts(labels[idx], 5) == [40, 28, 20, 14, 10]
    assert torch.equal(idx, long_tailed_indices(labels, 4.0, seed=3))
    assert not torch.equal(idx, long_tailed_indices(labels, 4.0, seed=4))
    assert len(set(idx.tolist())) == len(idx)


def test_long_tailed_digits():
    balanced = DigitsData(long_tailed=False, imbalance_ratio=10.0)
    lt = DigitsData(long_tailed=True, imbalance_ratio=10.0)
    n_max = min(balanced.train_counts())
    assert lt.train_counts() == long_tailed_counts(10, n_max, 10.0)
    assert lt.train_counts()[0] / lt.train_counts()[-1] == pytest.approx(10, rel=0.05)
    assert torch.equal(lt.test.labels, balanced.test.labels)  # the test set stays balanced


def write_split(tmp_path, lines):
    from PIL import Image

    for rel, _ in lines:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (6, 5), color=(10, 200, 30)).save(path)
    split = tmp_path / "split.txt"
    split.write_text("".join(f"{rel} {label}\n" for rel, label in lines) + "\n")
    return split


def test_imagenet_lt_split_file(tmp_path):
    lines = [("train/n01/a.png", 0), ("train/n01/b.png", 0), ("train/n02/c.png", 1)]
    split = write_split(tmp_path, lines)
    assert read_split_file(split) == lines
    dataset = SplitFileDataset(tmp_path, split)
    assert len(dataset) == 3 and dataset.targets == [0, 0, 1]
    image, label = dataset[2]
    assert image.size == (6, 5) and label == 1


def test_split_file_errors_name_the_problem(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_split_file(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("train/a.png 0\ntrain/b.png\n")
    with pytest.raises(DatasetError, match="line 2"):
        read_split_file(bad)
    split = tmp_path / "split.txt"
    split.write_text("train/absent.png 3\n")
    with pytest.raises(DatasetError, match="absent.png"):
        SplitFileDataset(tmp_path, split)


def test_noisy_digits_views_carry_fresh_noise_and_evaluation_fixed_noise():
    lt = DigitsData(long_tailed=True, imbalance_ratio=10.0, view_noise=0.7, view_augment=0.0)
    clean = DigitsData(long_tailed=True, imbalance_ratio=10.0)
    assert lt.train_counts() == clean.train_counts()           # the same long-tailed digits
    assert torch.equal(lt.train.images, clean.train.images)    # training inputs stay clean
    assert torch.equal(lt.bank.labels, lt.train.labels)
    # the bank / test images are the clean digits plus one fixed N(0, 0.7²) draw
    residual = lt.test.images - clean.test.images
    assert 0.65 < residual.std() < 0.75 and abs(residual.mean()) < 0.02
    assert torch.equal(lt.test.images, DigitsData(False, 10.0, view_noise=0.7).test.images)
    # a view is clean digit + fresh noise of σ·strength: same seed, same view; else not
    x = lt.train.images[:64]
    views = lt.augment(0.5)
    a = views(x, generator=torch.Generator().manual_seed(1))
    b = views(x, generator=torch.Generator().manual_seed(1))
    c = views(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 0.32 < (a - x).std() < 0.38
    # the prototype bias draws views around the clean test digits
    feats, labels = lt.view_features(torch.nn.Flatten(), 1.0, 2, "cpu", seed=0)
    assert feats.shape == (2, 540, 64) and torch.equal(labels, clean.test.labels)
    assert 0.65 < (feats[0] - clean.test.images.flatten(1)).std() < 0.75
