import numpy as np
import pytest
import torch
from PIL import Image

from gsg import config
from gsg.data import digits_data, digits_views
from gsg.experiments import Arm, train_arm
from gsg.module import SSLModule
from reprokit.runtime import setup


def test_digits_views_share_the_digit_not_the_noise():
    cfg = config.load("smoke").data
    digits = digits_data(cfg)
    again = digits_data(cfg)
    assert torch.equal(digits.bank.images, again.bank.images)      # fixed evaluation noise
    assert torch.equal(digits.test.images, again.test.images)
    clean = digits.train.images
    noise = digits.bank.images - clean                              # the bank is the same digits
    assert abs(noise.std().item() - cfg.noise) < 0.02
    views = digits_views(cfg)
    a, b = views(clean[:256]), views(clean[:256])
    # each view is the clean digit plus its own noise: the two noises are uncorrelated
    na, nb = (a - clean[:256]).flatten(), (b - clean[:256]).flatten()
    assert abs(na.std().item() - cfg.augment_noise) < 0.02
    assert abs(torch.corrcoef(torch.stack([na, nb]))[0, 1].item()) < 0.02


def test_per_view_batchnorm_matches_a_hand_written_per_view_forward():
    cfg = config.load("smoke")
    torch.manual_seed(0)
    module = SSLModule(cfg, "byol_gsg", True, (1, 8, 8))
    module.train()
    x = torch.randn(4 * 16, 1, 8, 8)
    z, p, t = module.forward_views(x)
    net, target = module.net, module.target
    for v in range(4):   # each view normalised over its own 16 images
        xv = x[16 * v:16 * (v + 1)]
        zv = net.projector(net.backbone(xv))
        assert torch.allclose(z[v], zv, atol=1e-5)
        assert torch.allclose(p[v], net.predictor(zv), atol=1e-5)
        assert torch.allclose(t[v], target.projector(target.backbone(xv)), atol=1e-5)
    # the concatenated variant normalises over all 64 images: different numbers
    cfg.model.bn_views = "concat"
    zc, _, _ = module.forward_views(x)
    assert zc.shape == z.shape and not torch.allclose(zc, z, atol=1e-3)
    zall = net.projector(net.backbone(x)).view(4, 16, -1)
    assert torch.allclose(zc, zall, atol=1e-5)


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
