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


def test_long_tailed_scenes_are_a_subset_of_the_balanced_ones():
    from balcon.data import ScenesData

    balanced = ScenesData(long_tailed=False, imbalance_ratio=10.0, image_size=12)
    lt = ScenesData(long_tailed=True, imbalance_ratio=10.0, image_size=12)
    assert lt.train_counts() == long_tailed_counts(10, min(balanced.train_counts()), 10.0)
    # training inputs are glyphs, the bank is a fixed rendering of the same instances
    assert lt.train.images.shape[1:] == (1, 8, 8) and lt.bank.images.shape[1:] == (3, 12, 12)
    assert torch.equal(lt.bank.labels, lt.train.labels)
    keep = long_tailed_indices(balanced.train.labels, 10.0, 0)
    assert torch.equal(lt.bank.images, balanced.bank.images[keep])
    assert torch.equal(lt.test.images, balanced.test.images)  # one fixed balanced test set
    assert lt.input_shape == (3, 12, 12)
    # views are fresh renderings: two draws of the same glyphs differ, one seed repeats
    views = lt.augment(1.0)
    a = views(lt.train.images[:8], generator=torch.Generator().manual_seed(1))
    b = views(lt.train.images[:8], generator=torch.Generator().manual_seed(1))
    c = views(lt.train.images[:8], generator=torch.Generator().manual_seed(2))
    assert a.shape == (8, 3, 12, 12) and torch.equal(a, b) and not torch.equal(a, c)


def test_shapes_long_tailed_subset_and_bias_views():
    from balcon.data import ShapesData

    lt = ShapesData(long_tailed=True, imbalance_ratio=4.0, image_size=12, train_per_class=20,
                    test_per_class=3)
    assert lt.train_counts() == long_tailed_counts(10, 20, 4.0)
    assert lt.test.images.shape == (30, 3, 12, 12)
    encoder = torch.nn.Flatten()
    feats, labels = lt.view_features(encoder, 1.0, 3, "cpu", seed=0)
    assert feats.shape == (3, 30, 3 * 12 * 12) and torch.equal(labels, lt.test.labels)
    assert not torch.equal(feats[0], feats[1])  # each of the M views is its own draw
