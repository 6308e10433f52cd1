import math

import pytest

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
    # means 2 vs 1, sems 0.0577 each -> noise 2*0.0816 = 0.163 < diff 1
    assert compare([1.9, 2.0, 2.1], [0.9, 1.0, 1.1]) == Verdict.HOLDS
    assert compare([0.9, 1.0, 1.1], [1.9, 2.0, 2.1]) == Verdict.DOES_NOT_HOLD
    # diff 0.1 within noise of widely spread seeds
    assert compare([1.0, 2.0, 3.0], [0.9, 1.9, 2.9]) == Verdict.INCONCLUSIVE
    # a margin moves the bar: 2 - 1 - 1.5 < 0
    assert compare([1.9, 2.0, 2.1], [0.9, 1.0, 1.1], margin=1.5) == Verdict.DOES_NOT_HOLD
    assert compare([float("nan")], [1.0]) == Verdict.INCONCLUSIVE
    assert threshold([5.0, 5.1, 4.9], 1.0) == Verdict.HOLDS
    assert all_of(Verdict.HOLDS, Verdict.HOLDS) == Verdict.HOLDS
    assert all_of(Verdict.HOLDS, Verdict.INCONCLUSIVE) == Verdict.INCONCLUSIVE
    assert all_of(Verdict.HOLDS, Verdict.DOES_NOT_HOLD) == Verdict.DOES_NOT_HOLD


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
    assert "| 1 | Pre-LN grows faster | 5.00 ± 0.500 (n=3) vs 1.00 ± 0.100 (n=3)" in text
    assert "**holds**" in text and "1 holds, 0 does not hold, 0 inconclusive." in text
    assert "](figures/f.png)" in text


def test_markdown_table_escapes_pipes():
    table = markdown_table(["a", "b"], [["x|y", 1]])
    assert table.splitlines()[2] == "| x\\|y | 1 |"


def test_min_n_needs_that_many_finite_values_a_side():
    # one seed a side clears the margin: holds by default, inconclusive with min_n=2
    assert compare([2.0], [1.0]) == Verdict.HOLDS
    assert compare([2.0], [1.0], min_n=2) == Verdict.INCONCLUSIVE
    # non-finite seeds do not count towards min_n
    assert compare([1.9, 2.0, 2.1], [1.0, float("nan")], min_n=2) == Verdict.INCONCLUSIVE
    assert compare([1.9, 2.0, 2.1], [0.9, 1.0, 1.1], min_n=2) == Verdict.HOLDS
    assert compare([0.9, 1.0, 1.1], [1.9, 2.0, 2.1], min_n=3) == Verdict.DOES_NOT_HOLD
    assert compare([1.9, 2.1], [0.9, 1.0, 1.1], min_n=3) == Verdict.INCONCLUSIVE
    # threshold: only `a` counts (the threshold is a single number)
    assert threshold([5.0], 1.0) == Verdict.HOLDS
    assert threshold([5.0], 1.0, min_n=2) == Verdict.INCONCLUSIVE
    assert threshold([5.0, 5.1, 4.9], 1.0, min_n=3) == Verdict.HOLDS
    assert threshold([0.5, 0.6, 0.4], 1.0, min_n=2) == Verdict.DOES_NOT_HOLD
