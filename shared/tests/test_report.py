import math

import numpy as np
import pytest
from scipy import stats

from reprokit.report import (
    Claim,
    Report,
    Verdict,
    all_of,
    compare,
    markdown_table,
    new_figure,
    plot_band,
    save_figure,
    signal_gate,
    summarize,
    threshold,
)


def test_summary_statistics_by_hand():
    s = summarize([1.0, 2.0, 3.0])
    assert s.mean == 2.0 and s.std == pytest.approx(1.0) and s.sem == pytest.approx(1 / math.sqrt(3))
    assert s.format(3) == "2.00 ± 1.00 (n=3)"
    partial = summarize([1.0, float("nan")])
    assert partial.mean == 1.0 and "1 non-finite" in partial.format()
    assert summarize([float("nan")]).format().startswith("no finite value")


def test_compare_rule():
    assert compare([1.9, 2.0, 2.1], [0.9, 1.0, 1.1]).verdict == Verdict.HOLDS
    assert compare([0.9, 1.0, 1.1], [1.9, 2.0, 2.1]).verdict == Verdict.DOES_NOT_HOLD
    # diff 0.1 within the noise of widely spread seeds
    assert compare([1.0, 2.0, 3.0], [0.9, 1.9, 2.9]).verdict == Verdict.INCONCLUSIVE
    # a margin moves the bar: 2 - 1 - 1.5 < 0 and the interval [0.77, 1.23] is below 1.5
    assert compare([1.9, 2.0, 2.1], [0.9, 1.0, 1.1], margin=1.5).verdict == Verdict.DOES_NOT_HOLD
    assert compare([float("nan")] * 3, [1.0] * 3).verdict == Verdict.INCONCLUSIVE
    assert threshold([5.0, 5.1, 4.9], 1.0).verdict == Verdict.HOLDS
    assert threshold([5.0, 5.1, 4.9], 6.0, above=False).verdict == Verdict.HOLDS
    assert threshold([5.0, 5.1, 4.9], 1.0, above=False).verdict == Verdict.DOES_NOT_HOLD
    assert all_of(Verdict.INCONCLUSIVE).verdict == Verdict.INCONCLUSIVE
    assert all_of(compare([1.9, 2.0, 2.1], [0.9, 1.0, 1.1]),
                  compare([0.9, 1.0, 1.1], [1.9, 2.0, 2.1])).verdict == Verdict.DOES_NOT_HOLD
    assert all_of(compare([1.9, 2.0, 2.1], [0.9, 1.0, 1.1]),
                  Verdict.INCONCLUSIVE).verdict == Verdict.INCONCLUSIVE


def test_welch_matches_scipy_and_the_formula_by_hand():
    a, b = [0.61, 0.64, 0.70, 0.66], [0.55, 0.60, 0.52]
    res = compare(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    lo, hi = ref.confidence_interval(0.95)
    assert res.p_value == pytest.approx(ref.pvalue) and res.kind == "Welch"
    assert (res.low, res.high) == (pytest.approx(lo), pytest.approx(hi))
    # by hand: Welch-Satterthwaite degrees of freedom and a t quantile
    va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 3
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    est = np.mean(a) - np.mean(b)
    assert res.estimate == pytest.approx(est)
    assert (res.low, res.high) == (pytest.approx(est - half), pytest.approx(est + half))
    assert res.half_width == pytest.approx(half)
    assert res.verdict == (Verdict.HOLDS if lo > 0 else Verdict.INCONCLUSIVE)
    # another confidence level widens the interval, as the t quantile says
    wide = compare(a, b, confidence=0.99)
    assert wide.half_width == pytest.approx(stats.t.ppf(0.995, df) * math.sqrt(va + vb))


def test_paired_matches_scipy_ttest_rel():
    a, b = [3.1, 2.4, 5.0, 4.2, 3.3], [2.9, 2.5, 4.6, 3.9, 3.0]
    res = compare(a, b, paired=True)
    ref = stats.ttest_rel(a, b)
    lo, hi = ref.confidence_interval(0.95)
    assert res.kind == "paired" and res.n == (5,)
    assert res.p_value == pytest.approx(ref.pvalue)
    assert (res.low, res.high) == (pytest.approx(lo), pytest.approx(hi))
    one = threshold(a, 3.0)
    ref1 = stats.ttest_1samp(a, 3.0)
    assert one.p_value == pytest.approx(ref1.pvalue)
    assert one.low == pytest.approx(ref1.confidence_interval(0.95)[0] - 3.0)


def test_two_standard_errors_no_longer_decide_at_three_seeds():
    # n = 3 a side, each sem = 1/sqrt(3): SE of the difference 0.816; the difference is
    # 2.2 SE = 1.796, above the old 2-SE bar (1.63) but inside Welch's 95% interval (df = 4)
    b = [1.0, 2.0, 3.0]
    a = [x + 2.2 * math.sqrt(2 / 3) for x in b]
    res = compare(a, b)
    assert res.estimate / math.sqrt(2 / 3) == pytest.approx(2.2)
    assert res.estimate > 2 * math.sqrt(2 / 3)
    assert res.verdict == Verdict.INCONCLUSIVE and res.low < 0 < res.high


def test_one_seed_a_side_never_decides():
    assert compare([2.0], [1.0]).verdict == Verdict.INCONCLUSIVE
    assert "fewer than 3" in compare([2.0], [1.0]).describe()
    assert compare([9.0, 9.1], [1.0, 1.1]).verdict == Verdict.INCONCLUSIVE  # 2 < min_n=3
    assert compare([9.0, 9.1], [1.0, 1.1], min_n=2).verdict == Verdict.HOLDS
    assert threshold([5.0], 1.0).verdict == Verdict.INCONCLUSIVE
    # non-finite seeds do not count towards min_n
    assert compare([1.9, 2.0, 2.1], [1.0, 1.1, float("nan")]).verdict == Verdict.INCONCLUSIVE
    with pytest.raises(ValueError, match="min_n"):
        compare([2.0], [1.0], min_n=1)
    with pytest.raises(ValueError, match="one value per seed"):
        compare([1.0, 2.0, 3.0], [1.0, 2.0], paired=True)


def test_paired_test_sees_through_a_shared_seed_effect():
    seed_effect = [0.0, 5.0, 10.0, -3.0, 7.0]
    b = list(seed_effect)
    a = [s + d for s, d in zip(seed_effect, [0.10, 0.12, 0.09, 0.11, 0.10])]
    assert compare(a, b).verdict == Verdict.INCONCLUSIVE  # seed spread swamps Welch
    paired = compare(a, b, paired=True)
    assert paired.verdict == Verdict.HOLDS
    assert paired.estimate == pytest.approx(0.104)
    # a non-finite seed drops its pair, on either side
    a_nan = a[:4] + [float("nan")]
    assert compare(a_nan, b, paired=True).n == (4,)


def test_holm_correction_tightens_the_weaker_part():
    strong = compare([1.9, 2.0, 2.1], [0.9, 1.0, 1.1], label="strong")
    weak = compare([1.15, 1.25, 1.05, 1.3, 1.2], [1.0, 1.1, 0.95, 1.05, 1.0], label="weak")
    assert strong.verdict == weak.verdict == Verdict.HOLDS
    assert weak.p_value > strong.p_value
    plain = all_of(strong, weak)
    holm = all_of(strong, weak, correction="holm")
    assert plain.verdict == Verdict.HOLDS
    # the smallest p is tested at 1 - 0.05/2, the next at 1 - 0.05/1
    strong_h, weak_h = holm.parts
    assert strong_h.confidence == pytest.approx(0.975) and weak_h.confidence == pytest.approx(0.95)
    assert "2 parts, Holm-corrected" in holm.rule_text()
    # five parts: Holm levels 1 - 0.05/5, /4, /3, /2, /1 by rank of p
    five = all_of(*[weak] * 4, strong, correction="holm")
    assert sorted(p.confidence for p in five.parts) == pytest.approx([0.95, 0.975, 1 - 0.05 / 3, 0.9875, 0.99])
    with pytest.raises(ValueError, match="correction"):
        all_of(strong, correction="bonferroni")


def test_signal_gate_makes_a_comparison_at_the_floor_inconclusive():
    floor = [0.50, 0.51, 0.49, 0.50]
    base = [0.50, 0.52, 0.49, 0.51]
    method = [0.60, 0.61, 0.62, 0.60]  # far above the baseline, but the baseline learned nothing
    decided = compare(method, base, paired=True)
    assert decided.verdict == Verdict.HOLDS
    gated = signal_gate(base, floor, paired=True).guard(decided)
    assert gated.verdict == Verdict.INCONCLUSIVE
    assert any("no signal" in line for line in gated.lines())
    assert "gate" in gated.rule_text()
    learned = signal_gate(method, 0.5).guard(compare(method, base, paired=True))
    assert learned.verdict == Verdict.HOLDS
    claim = Claim("m beats b", "", "compare(m, b)", gated)
    assert claim.verdict == Verdict.INCONCLUSIVE and "no signal" in claim.measured_cell


def test_a_decided_verdict_must_come_from_a_test():
    with pytest.raises(ValueError, match="must come from a test"):
        Claim("c", "m", "r", Verdict.HOLDS)
    assert Claim("c", "m", "r", Verdict.INCONCLUSIVE).verdict == Verdict.INCONCLUSIVE
    with pytest.raises(TypeError):
        bool(compare([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]))


def test_report_puts_computed_claims_first(tmp_path):
    peri, pre = [1.0, 1.1, 0.9], [5.0, 5.5, 4.5]
    verdict = compare(pre, peri)
    fig, axes = new_figure()
    plot_band(axes[0, 0], range(3), [[1, 2, 3], [2, 3, 4]], "x")
    png = save_figure(fig, tmp_path / "figures" / "f.png")
    report = Report("Demo", tmp_path / "report.md")
    report.section("Setting", "tiny")
    report.figure(png, "a figure")
    report.add_claim(Claim("Pre-LN grows faster", f"{summarize(pre).format()} vs "
                           f"{summarize(peri).format()}", "compare(pre, peri)", verdict, [png.name]))
    text = report.write().read_text()
    assert png.stat().st_size > 1000
    assert text.index("## Claims") < text.index("## Setting")
    assert "| 1 | Pre-LN grows faster | 5.00 ± 0.500 (n=3) vs 1.00 ± 0.100 (n=3)<br>Δ = +4.00 [" in text
    assert "(95% CI, Welch, n=3/3)" in text and "[Welch t-test: 95% CI" in text
    assert "**holds**" in text and "1 holds, 0 does not hold, 0 inconclusive." in text
    assert "](figures/f.png)" in text


def test_markdown_table_escapes_pipes():
    table = markdown_table(["a", "b"], [["x|y", 1]])
    assert table.splitlines()[2] == "| x\\|y | 1 |"
