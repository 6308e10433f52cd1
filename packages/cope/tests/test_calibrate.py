"""Threshold calibration and accuracy-cost curves, on hand-built stage outcomes."""

import pytest

from cope.calibrate import (
    Stage,
    calibrate,
    candidate_thresholds,
    cascade_stages,
    curve,
    full_information_method,
    settle,
)


def _problem(shares, corrects, costs, large=(False, True, True)):
    return [Stage(s, f"a{k}", c, cost, lg)
            for k, (s, c, cost, lg) in enumerate(zip(shares, corrects, costs, large))]


# Three problems, three stages each (costs: stage 2 = 1 $, stage 3 = 2 $).
P = [_problem((1.0, 1.0, 1.0), (True, True, True), (0, 1, 2)),
     _problem((0.5, 0.75, 1.0), (False, True, True), (0, 1, 2)),
     _problem((0.25, 0.5, 1.0), (False, False, True), (0, 1, 2))]


def test_settle_stops_at_the_first_confident_stage():
    assert settle(P[1], 0.75) == (True, 1.0, True)  # stage 2 reaches 0.75
    assert settle(P[1], 0.5) == (False, 0.0, False)  # stage 1 already at 0.5
    assert settle(P[2], 0.75) == (True, 3.0, True)  # last stage answers whatever its share
    no_answer = [Stage(1.0, None, False, 0.0, False), Stage(1.0, "x", True, 2.0, True)]
    assert settle(no_answer, 0.5) == (True, 2.0, True)  # no answer never settles


def test_curve_by_hand():
    low, mid, high = curve(P, [0.0, 0.75, 1.01])
    assert (low.accuracy, low.cost, low.large_share) == (pytest.approx(1 / 3), 0.0, 0.0)
    # t=0.75: p0 stage 1 (ok, 0 $), p1 stage 2 (ok, 1 $), p2 stage 3 (ok, 3 $)
    assert (mid.accuracy, mid.cost, mid.large_share) == (1.0, pytest.approx(4 / 3),
                                                         pytest.approx(2 / 3))
    assert (high.accuracy, high.cost, high.large_share) == (1.0, 3.0, 1.0)


def test_calibrate_picks_the_threshold_for_a_target_large_share():
    assert candidate_thresholds(P) == [0.0, 0.25, 0.5, 0.75, 1.0, 1.01]
    assert calibrate(P, 0.0).large_share == 0.0
    chosen = calibrate(P, 0.6)
    assert chosen.large_share == pytest.approx(2 / 3)
    assert calibrate(P, 1.0).large_share == 1.0


def test_cascade_from_small_only_and_large_only():
    small = {"stages": [{"share": 0.5, "top": "3"}]}
    large = {"answer": "4", "correct": True, "cost_usd": 0.25}
    stages = cascade_stages(small, large, check=lambda a: a == "4")
    assert settle(stages, 0.5) == (False, 0.0, False)
    assert settle(stages, 0.75) == (True, 0.25, True)


def test_full_information_method():
    assert full_information_method(["cope", "cope@t=0.5", "cope@t=1.01"]) == "cope@t=1.01"
    assert full_information_method(["cope", "cope@t=1"]) is None
