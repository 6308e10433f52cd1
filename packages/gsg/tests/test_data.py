import numpy as np
import pytest
import torch
from PIL import Image

from gsg import config
from gsg.data import corrupted_digits, paste_on_canvas
from gsg.experiments import Arm, train_arm
from reprokit.runtime import setup


def test_paste_on_canvas_keeps_each_digit_intact():
    images = torch.rand(5, 1, 8, 8)
    out = paste_on_canvas(images, 12, torch.Generator().manual_seed(0))
    assert out.shape == (5, 1, 12, 12)
    for img, big in zip(images, out, strict=True):
        assert torch.isclose(big.sum(), img.sum())
        nz = big[0].nonzero()
        assert (nz.max(0).values - nz.min(0).values <= 7).all()


def test_corrupted_digits_are_fixed_and_noisy():
    cfg = config.load("smoke").data
    a, _ = corrupted_digits(cfg)
    b, _ = corrupted_digits(cfg)
    assert torch.equal(a.images, b.images)          # the corruption is part of the data set
    cfg.noise = 0.0
    clean, _ = corrupted_digits(cfg)
    assert (a.images - clean.images).abs().mean() > 0.05
    assert a.images.min() >= 0 and a.images.max() <= 1


def test_image_folder_path_trains_with_multiview_loader(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(4):
                pixels = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    cfg = config.load("smoke", [
        "data.name=imagefolder", f"data.root={tmp_path}", "data.image_size=16",
        "data.workers=0", "model.backbone=digits_cnn", "model.backbone_kwargs={width: 4}"])
    _, result = train_arm(cfg, Arm("simsiam_gsg", True, 1, 4, 0), setup("cpu", threads=1))
    assert result["steps"] == 2 and not result["diverged"]
    assert 0 <= result["final"]["knn"] <= 1


def test_batch_larger_than_the_data_set_fails_clearly():
    from reprokit.errors import DatasetError

    cfg = config.load("smoke")
    with pytest.raises(DatasetError, match="exceeds"):
        train_arm(cfg, Arm("simsiam", True, 1, 5000, 0), setup("cpu", threads=1))
