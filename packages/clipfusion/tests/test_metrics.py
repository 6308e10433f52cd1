"""Metrics against hand-computed values."""

import math

import pytest
import torch
from torchmetrics.functional.classification import binary_average_precision

from clipfusion.metrics import aupro, auroc, average_precision, f1_max, image_metrics, pixel_metrics

SCORES = [0.1, 0.4, 0.35, 0.8]
LABELS = [0, 0, 1, 1]


def test_image_metrics_by_hand():
    # ranked: 0.8 (pos), 0.4 (neg), 0.35 (pos), 0.1 (neg): 3 of 4 pos/neg pairs ordered
    assert auroc(SCORES, LABELS) == pytest.approx(0.75)
    # thresholds 0.8, 0.4, 0.35, 0.1 give F1 = 2/3, 1/2, 4/5, 2/3
    assert f1_max(SCORES, LABELS) == pytest.approx(0.8)
    # AP = Σ (R_n − R_{n−1}) P_n = 0.5·1 + 0.5·(2/3)
    m = image_metrics(torch.tensor(SCORES), torch.tensor(LABELS))
    assert m["image_ap"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert m["image_auroc"] == pytest.approx(0.75) and m["image_f1max"] == pytest.approx(0.8)


def test_ap_matches_torchmetrics():
    gen = torch.Generator().manual_seed(0)
    s = torch.rand(500, generator=gen)
    t = (torch.rand(500, generator=gen) < 0.3 + 0.4 * s).long()
    ours = pixel_metrics(s.view(5, 10, 10), t.view(5, 10, 10), with_aupro=False)["pixel_ap"]
    assert ours == pytest.approx(float(binary_average_precision(s, t)), abs=1e-6)
    assert average_precision(s, t) == pytest.approx(ours, abs=1e-6)


def _crafted():
    masks = torch.zeros(2, 4, 4, dtype=torch.long)
    masks[0, 0, 0] = 1  # region A: 1 pixel
    masks[1, 2, 1:4] = 1  # region B: 3 pixels
    return masks


def test_perfect_and_inverted_maps():
    masks = _crafted()
    perfect = masks.float() + 0.01 * torch.rand(2, 4, 4)
    m = pixel_metrics(perfect, masks)
    for key in ("pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro"):
        assert m[key] == pytest.approx(1.0), key
    inverted = pixel_metrics(-perfect, masks)
    assert inverted["pixel_auroc"] == pytest.approx(0.0)
    assert inverted["pixel_aupro"] == pytest.approx(0.0)


def test_aupro_hand_computed_with_unequal_regions():
    masks = _crafted()
    scores = torch.zeros(2, 4, 4)
    scores[0, 0, 0] = 1.0  # region A found at the top threshold
    scores[1, 2, 1:4] = 0.5  # region B found only at 0.5
    scores[1, 0, 0] = 0.75  # one false positive in between (28 normal pixels)
    # curve: (0, 0) → (0, ½) [A found; per-REGION mean, not pixel share ¼] → (1/28, ½)
    #        → (1/28, 1) → (1, 1); area to FPR 0.3 = ½·(1/28) + 1·(0.3 − 1/28)
    expected = (0.5 / 28 + (0.3 - 1 / 28)) / 0.3
    assert aupro(scores, masks) == pytest.approx(expected)
    # integrated to a limit below the first false positive: only the ½ plateau counts
    assert aupro(scores, masks, fpr_limit=0.01) == pytest.approx(0.5)


def test_aupro_regions_are_8_connected():
    masks = torch.zeros(1, 5, 5, dtype=torch.long)
    masks[0, 0, 0] = masks[0, 1, 1] = 1  # diagonal neighbours: one region
    masks[0, 4, 4] = 1  # a second region
    scores = torch.zeros(1, 5, 5)
    scores[0, 0, 0] = 1.0  # half of region 1 found first, then the rest with region 2
    scores[0, 1, 1] = scores[0, 4, 4] = 0.5
    # PRO is ¼ at t = 1 (half of region 1, none of region 2) and 1 at t = 0.5, both at FPR 0
    assert aupro(scores, masks) == pytest.approx(1.0)
    scores[0, 2, 2] = 0.75  # 1 of 22 normal pixels above 0.5: plateau at ¼ until FPR 1/22
    expected = (0.25 / 22 + (0.3 - 1 / 22)) / 0.3
    assert aupro(scores, masks) == pytest.approx(expected)


def test_single_class_gives_nan():
    assert math.isnan(auroc([0.1, 0.2], [0, 0]))
    assert math.isnan(aupro(torch.rand(1, 3, 3), torch.zeros(1, 3, 3)))
