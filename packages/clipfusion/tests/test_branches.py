"""Attention capture, memory banks, fusion arithmetic, offline errors."""

import pytest
import torch

from clipfusion.attention import AttentionStore, RecordingAttnProcessor
from clipfusion.clip_branch import PatchCLIP, winclip_window_map
from clipfusion.config import load
from clipfusion.diffusion_branch import MapDiff, feature_distance, token_positions
from clipfusion.fusion import branch_map, fuse, gaussian_smooth, image_score, moments, standardize
from clipfusion.memory import memory_bank_distance
from reprokit.errors import OfflineError


@pytest.fixture(scope="module")
def cfg():
    return load("smoke")


@pytest.fixture(scope="module")
def mapdiff(cfg):
    return MapDiff(cfg.diffusion)


@pytest.fixture(scope="module")
def patchclip(cfg):
    return PatchCLIP(cfg.clip)


def _images(n, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_attention_capture_shapes_and_normalisation(mapdiff):
    out = mapdiff.encode_images(_images(2), "brick")
    assert mapdiff.recorded_layers and all(".attn2" in n for n in mapdiff.recorded_layers)
    assert set(out["attention_tokens"]) == set(mapdiff.recorded_layers)
    latent = 32 // 2  # smoke VAE: two blocks, one downsampling
    for probs in out["attention_tokens"].values():
        assert probs.shape[0] == 2 and probs.shape[2] == 77
        side = int(probs.shape[1] ** 0.5)
        assert side * side == probs.shape[1] and latent % side == 0
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:2]))
    assert out["attention"].shape == (2, latent, latent)
    assert (out["attention"] > 0).all() and (out["attention"] < 1).all()


def test_recording_processor_does_not_change_the_unet(mapdiff):
    """Swapping in the recorder must give the same UNet output as the stock processor."""
    from diffusers.models.attention_processor import AttnProcessor

    unet = mapdiff.unet
    hidden, _ = mapdiff.prompt("grass")
    sample = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    recorded = unet(sample, 10, encoder_hidden_states=hidden).sample
    saved = dict(unet.attn_processors)
    try:
        unet.set_attn_processor(AttnProcessor())
        stock = unet(sample, 10, encoder_hidden_states=hidden).sample
    finally:
        unet.set_attn_processor(saved)
    torch.testing.assert_close(recorded, stock, atol=1e-5, rtol=1e-4)
    assert any(isinstance(p, RecordingAttnProcessor) for p in unet.attn_processors.values())


def test_token_positions():
    assert token_positions([49406, 5, 7, 8, 7, 8, 49407], [7, 8]) == [2, 3, 4, 5]
    assert token_positions([1, 2, 3], [9]) == []
    assert len(AttentionStore()) == 0


def test_prompt_words_are_found(mapdiff):
    hidden, positions = mapdiff.prompt("brick")
    assert hidden.shape[:2] == (1, 77) and len(positions) >= 2  # "damaged", "defect"


def test_memory_bank_distance_zero_for_reference_itself(patchclip, mapdiff):
    x = _images(3)
    f = patchclip.encode_images(x)
    ref = f["bank"][0][:1]
    d = memory_bank_distance(f["bank"][0], ref.reshape(-1, ref.shape[-1]))
    assert d.shape == f["bank"][0].shape[:2]
    assert d[0].abs().max() < 1e-5 and d[1:].mean() > 1e-3
    feats = mapdiff.encode_images(x, "brick")["features"]
    again = mapdiff.encode_images(x[:1], "brick")["features"]  # fixed noise: same features
    v = feature_distance(feats, again, (32, 32))
    assert v.shape == (3, 32, 32)
    assert v[0].abs().max() < 1e-4 and v[1:].mean() > 1e-3


def test_memory_bank_distance_by_hand():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    query = torch.tensor([[0.6, 0.8], [-1.0, 0.0]])
    # nearest cosines 0.8 and 0.0 -> ½(1 − cos) = 0.1 and 0.5
    torch.testing.assert_close(memory_bank_distance(query, bank), torch.tensor([0.1, 0.5]))


def test_clip_maps_and_winclip_windows(patchclip):
    f = patchclip.encode_images(_images(2))
    lang = patchclip.language_map(f["language"], "brick")
    assert lang.shape == f["language"][0].shape[:3] and ((lang >= 0) & (lang <= 1)).all()
    assert patchclip.global_score(f["global"], "brick").shape == (2,)
    assert "brick" in patchclip._text_cache  # text embeddings are cached per category
    win = winclip_window_map(patchclip, _images(2), "brick", scales=(2,))
    assert win.shape == lang.shape and ((win >= 0) & (win <= 1)).all()


def test_fusion_arithmetic():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    b = torch.tensor([[4.0, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(fuse(a, b, 0.25), 0.25 * a + 0.75 * b)
    z = standardize(a)  # its own moments: mean 2.5, std sqrt(5/3)
    assert z.mean().abs() < 1e-6 and (z.std() - 1).abs() < 1e-6
    assert moments(a) == pytest.approx((2.5, (5 / 3) ** 0.5))
    # with given (mean, std), e.g. from normal reference images
    torch.testing.assert_close(standardize(a, (1.0, 2.0)), (a - 1) / 2)
    torch.testing.assert_close(standardize(a, (1.0, 0.0)), a - 1)  # zero std: shift only
    torch.testing.assert_close(branch_map(a, None), a)
    torch.testing.assert_close(branch_map(a, b), a + b)
    # M = α (L_c + V_c) + (1 − α)(L_d + V_d)
    m = fuse(branch_map(a, b), branch_map(b, a), 0.5)
    torch.testing.assert_close(m, a + b)


def test_smoothing_and_image_score():
    const = torch.full((1, 9, 9), 3.0)
    torch.testing.assert_close(gaussian_smooth(const, 1.5), const)
    spike = torch.zeros(1, 21, 21)
    spike[0, 10, 10] = 1.0
    smooth = gaussian_smooth(spike, 1.0)  # far from the borders: mass is kept
    assert smooth.sum() == pytest.approx(1.0, abs=1e-5) and smooth.argmax() == 10 * 21 + 10
    # separable Gaussian: the centre weight is (1/Σ exp(−x²/2))², x = −4..4
    norm = sum(torch.exp(-0.5 * torch.tensor(float(x)) ** 2) for x in range(-4, 5))
    assert smooth.max() == pytest.approx(float(1 / norm**2), rel=1e-5)
    maps = torch.arange(200.0).view(2, 10, 10)
    # top 5% of 100 pixels = the 5 largest: mean of 95..99 and 195..199
    torch.testing.assert_close(image_score(maps, 0.05), torch.tensor([97.0, 197.0]))
    torch.testing.assert_close(image_score(maps, 0.05, torch.tensor([1.0, -1.0]), 2.0),
                               torch.tensor([99.0, 195.0]))


def test_offline_hub_weights_fail_fast(monkeypatch, cfg):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from dataclasses import replace

    with pytest.raises(OfflineError, match="clip.model=tiny"):
        PatchCLIP(replace(cfg.clip, model="ViT-B-16-plus-240", pretrained="laion400m_e31"))
    with pytest.raises(OfflineError, match="diffusion.checkpoint=null"):
        MapDiff(replace(cfg.diffusion, checkpoint="stable-diffusion-v1-5/stable-diffusion-v1-5"))


def test_local_checkpoint_folder_loads_the_same_model(mapdiff, tmp_path, cfg):
    """The real-weights path (diffusers folder) on a saved copy of the tiny model."""
    from dataclasses import replace

    for name in ("vae", "unet", "text_encoder", "scheduler"):
        getattr(mapdiff, name).save_pretrained(tmp_path / name)
    loaded = MapDiff(replace(cfg.diffusion, checkpoint=str(tmp_path)))
    assert loaded.weights == f"Stable Diffusion {tmp_path}"
    x = _images(1, seed=3)
    a = mapdiff.encode_images(x, "grass")
    b = loaded.encode_images(x, "grass")
    torch.testing.assert_close(a["attention"], b["attention"])
    torch.testing.assert_close(a["features"][0], b["features"][0])
