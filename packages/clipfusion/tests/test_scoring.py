"""Per-image scoring, normal-image statistics, the batched memory-bank search, WinCLIP
settings, and equality of the fast paths with the plain ones."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from clipfusion.clip_branch import PatchCLIP
from clipfusion.config import load
from clipfusion.diffusion_branch import MapDiff
from clipfusion.experiments import (
    Pipeline,
    _similarity_tables,
    arm_outputs,
    language_maps,
    normal_statistics,
    visual_maps,
)
from clipfusion.fusion import moments, upsample
from clipfusion.memory import memory_bank_distance, per_reference_similarity, top1_similarity
from clipfusion.prompts import prompt_ensemble
from reprokit.errors import ConfigError
from reprokit.runtime import setup

SIZE = (32, 32)


@pytest.fixture(scope="module")
def cfg():
    return load("smoke")


@pytest.fixture(scope="module")
def pipe(cfg):
    return Pipeline(cfg, setup("cpu", "32-true", threads=1))


def _images(n, seed):
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return {"clip": x, "diff": x}


def _setting(pipe, cfg, test_seed, members=(0, 1)):
    refs = pipe.extract(_images(4, 100), "brick")  # rows 0-1: references, 2-3: calibration
    bank, cal = refs.select([0, 1]), refs.select([2, 3])
    test = pipe.extract(_images(4, test_seed), "brick")
    maps = language_maps(pipe, test, "brick", SIZE)
    members = list(members)
    maps.update(visual_maps(_similarity_tables(test, bank), members, test, SIZE))
    ref_maps = language_maps(pipe, bank, "brick", SIZE)
    cal_maps = language_maps(pipe, cal, "brick", SIZE)
    stats = normal_statistics(cfg, members, ref_maps, _similarity_tables(bank, bank), cal_maps,
                              _similarity_tables(cal, bank), bank, SIZE)
    return test, bank, cal, maps, stats


def test_an_images_score_does_not_depend_on_the_other_test_images(pipe, cfg):
    _, _, _, maps_a, stats_a = _setting(pipe, cfg, test_seed=1)
    _, _, _, maps_b, stats_b = _setting(pipe, cfg, test_seed=2)
    # test set B = image 0 of A followed by three other images
    maps_b = {k: torch.cat([maps_a[k][:1], v[1:]]) for k, v in maps_b.items()}
    assert stats_a == stats_b  # statistics come from reference/calibration images only
    out_a, out_b = arm_outputs(maps_a, stats_a, cfg), arm_outputs(maps_b, stats_b, cfg)
    for arm in ("clip", "diff", "fused", "fused_V", "clip_L", "diff_V"):
        torch.testing.assert_close(out_a[arm][0][0], out_b[arm][0][0], rtol=0, atol=0)
        assert out_a[arm][1][0] == out_b[arm][1][0], arm
    # the transductive ablation does depend on the rest of the test set
    assert out_a["fused_transductive"][1][0] != out_b["fused_transductive"][1][0]


def test_reference_statistics_by_hand(pipe, cfg):
    test, bank, cal, maps, stats = _setting(pipe, cfg, test_seed=1)
    ref_l = language_maps(pipe, bank, "brick", SIZE)
    cal_l = language_maps(pipe, cal, "brick", SIZE)
    assert stats["clip_L"] == pytest.approx(moments(ref_l["clip_L"]))
    assert stats["global"] == pytest.approx(moments(ref_l["global"]))

    # V: leave-one-out, each reference against the other's patches (the plain search)
    def v_clip(query_feats, bank_feats):
        gh = query_feats.clip_language[0].shape[1]
        d = memory_bank_distance(query_feats.clip_bank[0],
                                 bank_feats.clip_bank[0].reshape(-1, bank_feats.clip_bank[0]
                                                                 .shape[-1]))
        return upsample(d.reshape(-1, gh, gh), SIZE)

    loo = torch.cat([v_clip(bank.select([0]), bank.select([1])),
                     v_clip(bank.select([1]), bank.select([0]))])
    assert stats["clip_V"] == pytest.approx(moments(loo), rel=1e-5)
    # k = 1: V from the calibration images against the 1-shot bank; global from calibration
    one = normal_statistics(cfg, [0], ref_l, _similarity_tables(bank, bank), cal_l,
                            _similarity_tables(cal, bank), bank, SIZE)
    assert one["clip_V"] == pytest.approx(moments(v_clip(cal, bank.select([0]))), rel=1e-5)
    assert one["global"] == pytest.approx(moments(cal_l["global"]))
    # zero-shot: calibration images only
    zero = normal_statistics(cfg, [], ref_l, None, cal_l, None, bank, SIZE)
    assert set(zero) == {"clip_L", "diff_L", "global"}
    assert zero["diff_L"] == pytest.approx(moments(cal_l["diff_L"]))
    # "calibration" mode ignores the references even at k = 2
    c = normal_statistics(replace(cfg, fusion=replace(cfg.fusion, normalization="calibration")),
                          [0, 1], ref_l, _similarity_tables(bank, bank), cal_l,
                          _similarity_tables(cal, bank), bank, SIZE)
    assert c["clip_L"] == pytest.approx(moments(cal_l["clip_L"]))


def test_per_reference_table_equals_the_concatenated_bank_search(pipe):
    test = pipe.extract(_images(3, 5), "grass")
    refs = pipe.extract(_images(3, 6), "grass")
    tables = _similarity_tables(test, refs)
    for members in ([0], [2, 0], [0, 1, 2]):
        fast = visual_maps(tables, members, test, SIZE)
        # the old path: one search per draw against the concatenated bank, per block
        sub = refs.select(members)
        diff = torch.stack([
            upsample(memory_bank_distance(q, b.reshape(-1, b.shape[-1])).reshape(-1, *grid),
                     SIZE)
            for q, b, grid in zip(test.diff_features, sub.diff_features, test.diff_grids,
                                  strict=True)]).mean(0)
        torch.testing.assert_close(fast["diff_V"], diff, atol=1e-6, rtol=1e-5)
    # chunking does not change the result
    q, r = test.clip_bank[0], refs.clip_bank[0]
    torch.testing.assert_close(per_reference_similarity(q, r, max_elements=7),
                               per_reference_similarity(q, r))
    torch.testing.assert_close(top1_similarity(q, r[0], max_elements=5), top1_similarity(q, r[0]))


def test_batched_channels_last_unet_equals_one_image_at_a_time(cfg):
    plain = MapDiff(cfg.diffusion)
    fast = MapDiff(cfg.diffusion).channels_last()
    x = _images(3, 9)["diff"]
    batched = fast.encode_images(x, "brick")
    for i in range(3):
        one = plain.encode_images(x[i:i + 1], "brick")
        torch.testing.assert_close(batched["attention"][i:i + 1], one["attention"],
                                   atol=1e-5, rtol=1e-4)
        for a, b in zip(batched["features"], one["features"], strict=True):
            torch.testing.assert_close(a[i:i + 1], b, atol=1e-5, rtol=1e-4)


def test_winclip_defaults_and_prompts(cfg):
    assert cfg.clip.temperature == 0.07 and cfg.clip.prompt_states == "winclip"
    assert cfg.clip.bank_tokens == "unprojected"
    p = prompt_ensemble("metal_nut")
    assert len(p["normal"]) == 7 * 21 and len(p["anomalous"]) == 4 * 21
    assert not any("broken" in t for t in p["anomalous"])
    assert "a jpeg corrupted photo of a damaged metal nut." in p["anomalous"]
    assert len(prompt_ensemble("x", "extended")["anomalous"]) == 5 * 21


def test_softmax_temperature_by_hand(cfg):
    clip = PatchCLIP(cfg.clip)
    clip._text_cache["t"] = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    feat = torch.tensor([[0.6, 0.8]])
    # p(anomalous) = e^(0.8/0.07) / (e^(0.6/0.07) + e^(0.8/0.07)) = sigmoid(0.2 / 0.07)
    expected = torch.sigmoid(torch.tensor(0.2 / 0.07))
    torch.testing.assert_close(clip.anomaly_probability(feat, "t"), expected[None])


def test_bank_tokens_and_layers(cfg):
    c = replace(cfg.clip, embed_dim=16, layers=2)
    x = _images(1, 3)["clip"]
    unproj = PatchCLIP(c).encode_images(x)
    proj = PatchCLIP(replace(c, bank_tokens="projected")).encode_images(x)
    assert unproj["bank"][0].shape[-1] == c.width and proj["bank"][0].shape[-1] == 16
    # the last block's bank tokens through the projection are the language tokens
    torch.testing.assert_close(proj["bank"][0], proj["language"][0].flatten(1, 2))
    two = PatchCLIP(replace(c, bank_layers=[1, -1])).encode_images(x)
    assert len(two["bank"]) == 2
    torch.testing.assert_close(two["bank"][1], unproj["bank"][0])
    assert not torch.allclose(two["bank"][0], two["bank"][1])
    # unprojected = ln_post of the block output, normalised
    model = PatchCLIP(c)
    tokens = model.run_blocks(model.embed_tokens(model.preprocess(x)), {1})[1]
    torch.testing.assert_close(unproj["bank"][0],
                               F.normalize(model.model.visual.ln_post(tokens[:, 1:]), dim=-1))
    with pytest.raises(ConfigError, match="clip.bank_layers: block 3"):
        PatchCLIP(replace(c, bank_layers=[3]))


def test_config_rejects_bad_winclip_values():
    with pytest.raises(ConfigError, match="clip.temperature"):
        load("smoke", ["clip.temperature=100"])
    with pytest.raises(ConfigError, match="fusion.normalization"):
        load("smoke", ["fusion.normalization=test"])
    with pytest.raises(ConfigError, match="clip.bank_tokens"):
        load("smoke", ["clip.bank_tokens=x"])
