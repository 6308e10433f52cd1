import pytest
import torch

from reprokit.data.augment import TensorAugment, digits_augment
from reprokit.data.images import (
    MultiViewDataset,
    TensorBatches,
    image_folder,
    load_digits,
    torchvision_dataset,
)
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


def _index_images(n: int) -> torch.Tensor:
    """Image i is the constant i: a batch's values are its indices."""
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()


def _indices(batch: torch.Tensor) -> list[int]:
    return batch[:, 0, 0, 0].long().tolist()


def test_tensor_batches_epochs_cover_every_index_once():
    batches = TensorBatches(_index_images(10), batch_size=3, seed=0)
    assert len(batches) == 3  # 10 // 3: the incomplete last batch is dropped
    epochs = [[_indices(b) for b in batches] for _ in range(3)]
    for epoch in epochs:
        assert len(epoch) == 3 and all(len(b) == 3 for b in epoch)
        seen = [i for b in epoch for i in b]
        assert len(set(seen)) == 9 and set(seen) <= set(range(10))  # each index at most once
    assert epochs[0] != epochs[1]  # a fresh shuffle per epoch
    # the same seed replays the same epochs (a repeated or resumed run), another seed does not
    again = TensorBatches(_index_images(10), batch_size=3, seed=0)
    assert [[_indices(b) for b in again] for _ in range(3)] == epochs
    other = TensorBatches(_index_images(10), batch_size=3, seed=1)
    assert [_indices(b) for b in other] != epochs[0]
    # an exact multiple: every index exactly once per epoch
    exact = TensorBatches(_index_images(8), batch_size=4, seed=3)
    for _ in range(2):
        assert sorted(i for b in exact for i in _indices(b)) == list(range(8))


def test_tensor_batches_epoch_stream_is_pinned():
    # epoch k uses permutation k + 1 of the seeded generator (one is drawn at construction)
    gen = torch.Generator().manual_seed(5)
    perms = [torch.randperm(12, generator=gen) for _ in range(3)]
    batches = TensorBatches(_index_images(12), batch_size=4, seed=5)
    for perm in perms[1:]:
        assert [_indices(b) for b in batches] == [perm[i:i + 4].tolist() for i in (0, 4, 8)]


def test_tensor_batches_infinite_stream_restarts_from_the_seed():
    images, labels = _index_images(7), torch.arange(7) * 10
    batches = TensorBatches(images, batch_size=3, seed=2, labels=labels, infinite=True)
    with pytest.raises(TypeError):
        len(batches)
    stream = iter(batches)
    first = [next(stream) for _ in range(6)]  # three passes of 7 // 3 = 2 batches
    for x, y in first:
        assert torch.equal(y, torch.tensor(_indices(x)) * 10)  # labels follow their images
    gen = torch.Generator().manual_seed(2)
    expected = []
    for _ in range(3):
        perm = torch.randperm(7, generator=gen).tolist()
        expected += [perm[0:3], perm[3:6]]
    assert [_indices(x) for x, _ in first] == expected
    # every iter() starts the same stream again
    restart = iter(batches)
    assert [_indices(next(restart)[0]) for _ in range(6)] == expected


def test_tensor_batches_in_a_dataloader_and_errors():
    from torch.utils.data import DataLoader

    loader = DataLoader(TensorBatches(_index_images(9), batch_size=3, seed=0), batch_size=None)
    assert len(loader) == 3
    batches = list(loader)
    assert [b.shape for b in batches] == [(3, 1, 2, 2)] * 3
    assert sorted(i for b in batches for i in _indices(b)) == list(range(9))
    with pytest.raises(DatasetError, match="exceeds"):
        TensorBatches(_index_images(4), batch_size=5, seed=0)
    with pytest.raises(DatasetError, match="differ"):
        TensorBatches(_index_images(4), batch_size=2, seed=0, labels=torch.arange(3))


def test_tensor_batches_shard_a_global_batch_across_ranks(monkeypatch):
    import reprokit.data.images as images_mod

    one = TensorBatches(_index_images(13), batch_size=6, seed=4)
    global_epochs = [[_indices(b) for b in one] for _ in range(2)]       # 13 // 6 = 2 batches
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(images_mod, "_rank_and_world", lambda rank=rank: (rank, 2))
        per_rank = TensorBatches(_index_images(13), batch_size=3, seed=4)
        assert len(per_rank) == 2                  # 13 // (2 × 3): the global batch count
        shards.append([[_indices(b) for b in per_rank] for _ in range(2)])
    # rank 0 takes the first half of each global batch, rank 1 the second: disjoint, and
    # together the 1-process run's batch of the global size, epoch after epoch
    for e in range(2):
        for k in range(2):
            assert shards[0][e][k] + shards[1][e][k] == global_epochs[e][k]
    monkeypatch.setattr(images_mod, "_rank_and_world", lambda: (0, 3))
    with pytest.raises(DatasetError, match="global batch 3 × 6"):
        list(TensorBatches(_index_images(13), batch_size=6, seed=4))


def test_tensor_batches_set_epoch_replays_that_epoch():
    run = TensorBatches(_index_images(10), batch_size=5, seed=7)
    epochs = [[_indices(b) for b in run] for _ in range(3)]
    resumed = TensorBatches(_index_images(10), batch_size=5, seed=7)   # a fresh object
    resumed.set_epoch(2)
    assert [_indices(b) for b in resumed] == epochs[2]
    resumed.set_epoch(0)
    assert [_indices(b) for b in resumed] == epochs[0]


def test_noisy_digits_fixed_noise_disjoint_splits_and_exact_long_tail():
    from reprokit.data.images import long_tailed_counts, noisy_digits

    a, b = noisy_digits(0.5), noisy_digits(0.5)
    for x, y in ((a.bank, b.bank), (a.test, b.test), (a.train, b.train)):
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
    clean_train, clean_test = load_digits()
    assert torch.equal(a.train.images, clean_train.images)           # views start from clean digits
    # the bank is the training digits under N(0, 0.5²) noise; the test set gets another draw
    bank_noise = a.bank.images - clean_train.images
    test_noise = a.test.images - clean_test.images
    assert abs(bank_noise.std().item() - 0.5) < 0.01 and abs(bank_noise.mean().item()) < 0.01
    assert abs(test_noise.std().item() - 0.5) < 0.02
    assert not torch.equal(bank_noise[:100], test_noise[:100])
    assert not torch.equal(noisy_digits(0.5, bank_seed=1).bank.images, a.bank.images)
    # train and test are different handwritten digits: no test image equals a training image
    flat_train, flat_test = clean_train.images.flatten(1), clean_test.images.flatten(1)
    assert (torch.cdist(flat_test, flat_train).min(dim=1).values > 0).all()
    assert torch.bincount(a.test.labels).tolist() == torch.bincount(clean_test.labels).tolist()

    lt = noisy_digits(0.5, imbalance_ratio=10.0, n_per_class=100, subset_seed=3)
    assert torch.bincount(lt.train.labels, minlength=10).tolist() == long_tailed_counts(10, 100, 10.0)
    assert lt.bank.images.shape == lt.train.images.shape
    assert torch.equal(lt.test.images, a.test.images)                 # one fixed test set
    # the subset is a subset of the training digits, chosen by the seed
    other = noisy_digits(0.5, imbalance_ratio=10.0, n_per_class=100, subset_seed=4)
    assert not torch.equal(other.train.images, lt.train.images)
    assert (torch.cdist(lt.train.images.flatten(1), flat_train).min(dim=1).values == 0).all()
    with pytest.raises(ConfigError, match="requested"):
        noisy_digits(0.5, n_per_class=500)
    with pytest.raises(ConfigError, match="noise"):
        noisy_digits(-1.0)


def test_gaussian_noise_views_are_fresh_per_view():
    from reprokit.data.augment import GaussianNoiseViews

    x = torch.rand(512, 1, 8, 8)
    views = GaussianNoiseViews(0.3)
    a, b = views(x), views(x)
    na, nb = (a - x).flatten(), (b - x).flatten()
    assert abs(na.std().item() - 0.3) < 0.01
    assert abs(torch.corrcoef(torch.stack([na, nb]))[0, 1].item()) < 0.02
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(views(x, g1), views(x, g2))
    shifted = GaussianNoiseViews(0.0, TensorAugment(max_shift=0.25, max_rotation=0.0,
                                                    noise_std=0.0, erase_prob=0.0))
    assert not torch.equal(shifted(x), x) and torch.equal(GaussianNoiseViews(0.0)(x), x)
