import pytest
import torch

from reprokit.config import ConfigError
from reprokit.data.shapes import load_shapes, long_tailed_counts


def test_same_seed_same_images_and_factors():
    a_train, a_test = load_shapes(3, 2, size=16, seed=1, num_classes=4)
    b_train, b_test = load_shapes(3, 2, size=16, seed=1, num_classes=4)
    assert torch.equal(a_train.images, b_train.images) and torch.equal(a_train.labels, b_train.labels)
    assert torch.equal(a_train.masks, b_train.masks)
    assert all(torch.equal(a_train.factors[k], b_train.factors[k]) for k in a_train.factors)
    assert torch.equal(a_test.images, b_test.images)
    other, other_test = load_shapes(3, 2, size=16, seed=2, num_classes=4)
    assert not torch.equal(other.images, a_train.images)
    # the test set is fixed: it does not depend on the training seed
    assert torch.equal(other_test.images, a_test.images)
    assert a_train.images.shape == (12, 3, 16, 16)
    assert 0.0 <= float(a_train.images.min()) and float(a_train.images.max()) <= 1.0


def test_long_tailed_counts_are_exact():
    # n_c = floor(n_max * rho^(-c/(C-1))): 40, 40*10^(-1/3)=18.56, 40*10^(-2/3)=8.61, 4
    assert long_tailed_counts(4, 40, 10.0) == [40, 18, 8, 4]
    train, test = load_shapes(40, 2, size=16, seed=0, num_classes=4, imbalance_ratio=10.0)
    assert train.class_counts()[:4] == [40, 18, 8, 4]
    assert test.class_counts()[:4] == [2, 2, 2, 2]


def test_train_and_test_do_not_overlap():
    train, test = load_shapes(5, 5, size=16, seed=3, num_classes=3)
    flat_train = train.images.flatten(1)
    flat_test = test.images.flatten(1)
    assert torch.cdist(flat_test, flat_train).min() > 0


def test_bad_arguments_name_the_option():
    with pytest.raises(ConfigError, match="num_classes"):
        load_shapes(2, 2, num_classes=1)
    with pytest.raises(ConfigError, match="test_seed"):
        load_shapes(2, 2, seed=12345)
