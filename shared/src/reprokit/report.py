"""Figures, seed summaries, computed verdicts and ``report.md``.

A claim's verdict is never typed: it is the output of a statistical test applied to
measured per-seed (or per-problem) values, and the test is printed next to it.

- ``compare(a, b)``: is mean(a) − mean(b) > ``margin``? Welch's t-test for independent
  groups, or, with ``paired=True``, a paired t-test on the per-seed differences (use it
  whenever the two arms share a seed's initial weights or data order: the shared part of
  the noise cancels). The verdict is read off the two-sided ``confidence`` interval of the
  difference minus the margin: *holds* when its lower end is above 0, *does not hold* when
  its upper end is below 0, *inconclusive* otherwise, or when either side has fewer than
  ``min_n`` (default 3, at least 2) finite values. t quantiles come from ``scipy.stats``.
- ``threshold(a, t)``: the one-sample version against a fixed number (``above=False``
  asks whether mean(a) < t).
- ``all_of(*parts)``: holds when every part holds, does not hold when any part does not;
  ``correction="holm"`` first widens each part's interval by Holm's step-down rule so the
  whole claim keeps the family-wise confidence.
- ``signal_gate(learned, floor)``: a claim that compares methods is only decided when the
  baseline is measurably above a floor (a random encoder, a uniform guess, the small
  model alone); otherwise it is *inconclusive* with the reason "no signal".

Each test returns an object that carries its verdict, the estimate and its interval:
``Claim`` renders them in the report ("Δ = +0.021 [−0.004, +0.046] (95% CI, paired, n=5)")
and appends the test to the rule, so a reader sees the effect size and its uncertainty,
not only a word.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np


class Verdict(StrEnum):
    HOLDS = "holds"
    DOES_NOT_HOLD = "does not hold"
    INCONCLUSIVE = "inconclusive"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation and range of per-seed values (NaNs counted apart)."""

    values: tuple[float, ...]

    @property
    def finite(self) -> np.ndarray:
        arr = np.asarray(self.values, dtype=float)
        return arr[np.isfinite(arr)]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def n_finite(self) -> int:
        return int(self.finite.size)

    @property
    def mean(self) -> float:
        return float(self.finite.mean()) if self.n_finite else float("nan")

    @property
    def std(self) -> float:
        return float(self.finite.std(ddof=1)) if self.n_finite > 1 else 0.0

    @property
    def sem(self) -> float:
        return self.std / math.sqrt(self.n_finite) if self.n_finite > 1 else 0.0

    @property
    def min(self) -> float:
        return float(self.finite.min()) if self.n_finite else float("nan")

    @property
    def max(self) -> float:
        return float(self.finite.max()) if self.n_finite else float("nan")

    def format(self, digits: int = 3) -> str:
        """``0.912 ± 0.004 (n=3)``; non-finite seeds are reported, not hidden."""
        if not self.n_finite:
            return f"no finite value (n={self.n})"
        text = f"{_num(self.mean, digits)} ± {_num(self.std, digits)} (n={self.n_finite}"
        if self.n_finite < self.n:
            text += f", {self.n - self.n_finite} non-finite"
        return text + ")"


def summarize(values: Sequence[float]) -> Summary:
    return Summary(tuple(float(v) for v in values))


def _num(x: float, digits: int = 3) -> str:
    if not math.isfinite(x):
        return str(x)
    if x != 0 and (abs(x) >= 10 ** (digits + 2) or abs(x) < 10 ** -(digits)):
        return f"{x:.{max(digits - 1, 1)}e}"
    if abs(x) >= 1:  # `digits` significant figures, trailing zeros kept
        return f"{x:.{max(0, digits - 1 - int(math.floor(math.log10(abs(x)))))}f}"
    return f"{x:.{digits}f}"


def fmt(x: float, digits: int = 3) -> str:
    """A number for a report table."""
    return _num(float(x), digits)


# ---------------------------------------------------------------- statistical verdicts

CONFIDENCE = 0.95
MIN_N = 3


def _signed(x: float, digits: int) -> str:
    text = _num(x, digits)
    return text if text.startswith("-") or not math.isfinite(x) else "+" + text


class Decision:
    """What a claim's verdict can be built from: a test, a combination, or a gated one.

    ``verdict`` is the outcome, ``lines()`` the measured estimates (with intervals) that
    decided it, ``rule_text()`` the test in words.
    """

    verdict: Verdict

    def lines(self) -> list[str]:
        raise NotImplementedError

    def rule_text(self) -> str:
        raise NotImplementedError

    def __bool__(self) -> bool:
        raise TypeError("a Decision is not a truth value: use .verdict == Verdict.HOLDS")


@dataclass(frozen=True, eq=False)
class Comparison(Decision):
    """One t-test: ``estimate`` = mean(a) − mean(b) (or mean(a) − t), its two-sided
    interval [``low``, ``high``] at ``confidence``, and the verdict read off it."""

    verdict: Verdict
    estimate: float
    low: float
    high: float
    p_value: float
    kind: str  # "Welch", "paired" or "one-sample"
    n: tuple[int, ...]  # finite values per side (pairs for a paired test)
    margin: float
    confidence: float
    min_n: int
    label: str
    reason: str = ""
    above: bool = True
    data: tuple[tuple[float, ...], tuple[float, ...] | float] = field(default=((), 0.0), repr=False)

    @property
    def half_width(self) -> float:
        """Half the interval's width: roughly the smallest difference this noise decides."""
        return (self.high - self.low) / 2

    def at(self, confidence: float) -> Comparison:
        """The same test at another confidence level (Holm's correction uses it)."""
        a, b = self.data
        if self.kind == "one-sample":
            return threshold(a, b, above=self.above, confidence=confidence, min_n=self.min_n,
                             label=self.label)
        return compare(a, b, paired=self.kind == "paired", margin=self.margin,
                       confidence=confidence, min_n=self.min_n, label=self.label)

    def describe(self, digits: int = 3) -> str:
        """``Δ = +0.021 [−0.004, +0.046] (95% CI, paired, n=5)``."""
        head = f"{self.label}: " if self.label else ""
        sym = "Δ" if self.kind != "one-sample" else f"mean − {_num(float(self.data[1]), digits)}"
        if self.reason:
            return f"{head}{sym} = {_signed(self.estimate, digits)} ({self.reason})"
        ns = "n=" + "/".join(str(k) for k in self.n)
        level = f"{100 * self.confidence:g}% CI"
        return (f"{head}{sym} = {_signed(self.estimate, digits)} "
                f"[{_signed(self.low, digits)}, {_signed(self.high, digits)}] "
                f"({level}, {self.kind}, {ns})")

    def lines(self) -> list[str]:
        return [self.describe()]

    def rule_text(self) -> str:
        level = f"{100 * self.confidence:g}%"
        if self.kind == "one-sample":
            side = ">" if self.above else "<"
            return (f"one-sample t-test, mean {side} {_num(float(self.data[1]))}: decided by the "
                    f"{level} CI, n ≥ {self.min_n}")
        test = "paired t-test over seeds" if self.kind == "paired" else "Welch t-test"
        m = f" − {_num(self.margin)}" if self.margin else ""
        return f"{test}: {level} CI of Δ{m} above / below 0, n ≥ {self.min_n} a side"


def _finite(values) -> np.ndarray:
    arr = np.asarray([float(v) for v in values], dtype=float)
    return arr[np.isfinite(arr)]


def _no_spread(x: np.ndarray) -> bool:
    """All values equal up to rounding (t-tests are undefined there)."""
    return bool(np.ptp(x) <= 1e-12 * max(1.0, float(np.abs(x).max())))


def _decide(low: float, high: float) -> Verdict:
    if low > 0:
        return Verdict.HOLDS
    if high < 0:
        return Verdict.DOES_NOT_HOLD
    return Verdict.INCONCLUSIVE


def _check_args(confidence: float, min_n: int) -> None:
    if not 0.5 < confidence < 1:
        raise ValueError(f"confidence must be in (0.5, 1), got {confidence}")
    if min_n < 2:
        raise ValueError(f"min_n must be at least 2 (one value has no spread), got {min_n}")


def compare(a: Sequence[float], b: Sequence[float], *, paired: bool = False,
            margin: float = 0.0, confidence: float = CONFIDENCE, min_n: int = MIN_N,
            label: str = "") -> Comparison:
    """Is mean(a) − mean(b) > margin beyond seed noise? (See the module docstring.)

    With ``paired=True`` `a` and `b` are aligned by seed; a pair with a non-finite value on
    either side is dropped.
    """
    from scipy import stats

    _check_args(confidence, min_n)
    a_t, b_t = tuple(float(v) for v in a), tuple(float(v) for v in b)
    kw = dict(margin=margin, confidence=confidence, min_n=min_n, label=label,
              data=(a_t, b_t))
    if paired:
        if len(a_t) != len(b_t):
            raise ValueError(f"a paired comparison needs one value per seed on each side, "
                             f"got {len(a_t)} and {len(b_t)}")
        both = np.isfinite(a_t) & np.isfinite(b_t)
        diff = np.asarray(a_t)[both] - np.asarray(b_t)[both]
        n = (int(diff.size),)
        est = float(diff.mean()) if diff.size else float("nan")
        if diff.size < min_n:
            return Comparison(Verdict.INCONCLUSIVE, est, math.nan, math.nan, math.nan,
                              "paired", n, reason=f"{diff.size} finite pairs < {min_n}", **kw)
        if _no_spread(diff):  # the interval is the point itself
            low = high = est
            p = 0.0 if est != margin else 1.0
        else:
            res = stats.ttest_rel(diff, np.zeros_like(diff))
            low, high = (float(x) for x in res.confidence_interval(confidence))
            p = float(res.pvalue)
        kind = "paired"
    else:
        xa, xb = _finite(a_t), _finite(b_t)
        n = (int(xa.size), int(xb.size))
        est = float(xa.mean() - xb.mean()) if xa.size and xb.size else float("nan")
        if min(n) < min_n:
            return Comparison(Verdict.INCONCLUSIVE, est, math.nan, math.nan, math.nan,
                              "Welch", n, reason=f"n={n[0]}/{n[1]}, fewer than {min_n} a side",
                              **kw)
        if _no_spread(xa) and _no_spread(xb):
            low = high = est
            p = 0.0 if est != margin else 1.0
        else:
            res = stats.ttest_ind(xa, xb, equal_var=False)
            low, high = (float(x) for x in res.confidence_interval(confidence))
            p = float(res.pvalue)
        kind = "Welch"
    return Comparison(_decide(low - margin, high - margin), est, low, high, p, kind, n, **kw)


def threshold(a: Sequence[float], t: float, *, above: bool = True,
              confidence: float = CONFIDENCE, min_n: int = MIN_N,
              label: str = "") -> Comparison:
    """Is mean(a) > t (``above=False``: < t) beyond seed noise? A one-sample t-test."""
    from scipy import stats

    _check_args(confidence, min_n)
    a_t = tuple(float(v) for v in a)
    x = _finite(a_t) - float(t)
    est = float(x.mean()) if x.size else float("nan")
    kw = dict(margin=0.0, confidence=confidence, min_n=min_n, label=label, above=above,
              data=(a_t, float(t)))
    if x.size < min_n:
        return Comparison(Verdict.INCONCLUSIVE, est, math.nan, math.nan, math.nan,
                          "one-sample", (int(x.size),),
                          reason=f"{x.size} finite values < {min_n}", **kw)
    if _no_spread(x):
        low = high = est
        p = 0.0 if est != 0 else 1.0
    else:
        res = stats.ttest_1samp(x, 0.0)
        low, high = (float(v) for v in res.confidence_interval(confidence))
        p = float(res.pvalue)
    verdict = _decide(low, high) if above else _decide(-high, -low)
    return Comparison(verdict, est, low, high, p, "one-sample", (int(x.size),), **kw)


def _as_decision(part: Decision | Verdict) -> Decision:
    return part if isinstance(part, Decision) else Fixed(Verdict(part))


@dataclass(frozen=True, eq=False)
class Fixed(Decision):
    """A verdict with no test behind it; only *inconclusive* is allowed (missing data)."""

    verdict: Verdict
    reason: str = "no data"

    def __post_init__(self):
        if self.verdict != Verdict.INCONCLUSIVE:
            raise ValueError("a decided verdict must come from a test (compare/threshold), "
                             f"not be given as {self.verdict!r}")

    def lines(self) -> list[str]:
        return [self.reason]

    def rule_text(self) -> str:
        return ""


@dataclass(frozen=True, eq=False)
class AllOf(Decision):
    """Every part must hold; any part that does not hold decides the claim."""

    parts: tuple[Decision, ...]
    correction: str | None = None

    @property
    def verdict(self) -> Verdict:
        verdicts = [p.verdict for p in self.parts]
        if any(v == Verdict.DOES_NOT_HOLD for v in verdicts):
            return Verdict.DOES_NOT_HOLD
        if verdicts and all(v == Verdict.HOLDS for v in verdicts):
            return Verdict.HOLDS
        return Verdict.INCONCLUSIVE

    def lines(self) -> list[str]:
        return [line for p in self.parts for line in p.lines()]

    def rule_text(self) -> str:
        inner = sorted({p.rule_text() for p in self.parts if p.rule_text()})
        corr = ", Holm-corrected" if self.correction == "holm" else ""
        return f"all of {len(self.parts)} parts{corr} ({'; '.join(inner)})"


def all_of(*parts: Decision | Verdict, correction: str | None = None) -> AllOf:
    """Holds if every part holds; does not hold if any part does not hold.

    ``correction="holm"``: the parts' p-values are sorted, and the i-th smallest (of m) is
    re-tested at confidence 1 − α/(m − i + 1), Holm's step-down levels, so "every part
    holds" keeps the family-wise 1 − α of the parts' own level.
    """
    decisions = [_as_decision(p) for p in parts]
    if correction not in (None, "holm"):
        raise ValueError(f"correction must be None or 'holm', got {correction!r}")
    if correction == "holm":
        tests = [(i, d) for i, d in enumerate(decisions)
                 if isinstance(d, Comparison) and math.isfinite(d.p_value)]
        order = sorted(tests, key=lambda item: item[1].p_value)
        m = len(order)
        for rank, (i, d) in enumerate(order):
            alpha = 1 - d.confidence
            decisions[i] = d.at(1 - alpha / (m - rank))
    return AllOf(tuple(decisions), correction)


@dataclass(frozen=True, eq=False)
class Gated(Decision):
    """A method comparison decided only when its baseline learned (beat the floor)."""

    gate: Comparison
    decision: Decision

    @property
    def verdict(self) -> Verdict:
        if self.gate.verdict != Verdict.HOLDS:
            return Verdict.INCONCLUSIVE
        return self.decision.verdict

    def lines(self) -> list[str]:
        out = [f"gate {self.gate.describe()}"]
        if self.gate.verdict != Verdict.HOLDS:
            out.append("no signal: the baseline does not beat the floor")
        return out + self.decision.lines()

    def rule_text(self) -> str:
        return (f"gate: baseline > floor ({self.gate.rule_text()}), else inconclusive; then "
                + self.decision.rule_text())


@dataclass(frozen=True)
class SignalGate:
    """``gate.guard(decision)``: the decision, or inconclusive when the baseline is at the floor."""

    test: Comparison

    @property
    def passed(self) -> bool:
        return self.test.verdict == Verdict.HOLDS

    def guard(self, decision: Decision | Verdict) -> Gated:
        return Gated(self.test, _as_decision(decision))


def signal_gate(learned: Sequence[float], floor: Sequence[float] | float, *,
                paired: bool = False, margin: float = 0.0,
                confidence: float = CONFIDENCE, min_n: int = MIN_N,
                label: str = "baseline − floor") -> SignalGate:
    """The baseline must be measurably above the floor (per-seed values or one number)."""
    if isinstance(floor, int | float):
        if margin:
            floor = float(floor) + margin
        test = threshold(learned, float(floor), confidence=confidence, min_n=min_n,
                         label=label)
    else:
        test = compare(learned, floor, paired=paired, margin=margin, confidence=confidence,
                       min_n=min_n, label=label)
    return SignalGate(test)


@dataclass
class Claim:
    """One row of the claims table.

    `claim` is the paper's statement, `measured` the text built from the data (use
    ``Summary.format``), `rule` the decision rule in words, `verdict` a ``Decision``
    (``compare``/``threshold``/``all_of``/a gate) or a bare *inconclusive* when there is no
    data. The row shows the decision's estimates with their intervals under `measured`, and
    the statistical test after `rule`; ``claim.verdict`` is the plain ``Verdict``.
    """

    claim: str
    measured: str
    rule: str
    verdict: Verdict | Decision
    evidence: list[str] = field(default_factory=list)  # figure files behind the row
    decision: Decision = field(init=False, repr=False)

    def __post_init__(self):
        self.decision = _as_decision(self.verdict)
        self.verdict = self.decision.verdict

    @property
    def measured_cell(self) -> str:
        lines = [self.measured] if self.measured else []
        return "\n".join(lines + self.decision.lines())

    @property
    def rule_cell(self) -> str:
        test = self.decision.rule_text()
        return f"{self.rule}\n[{test}]" if test else self.rule


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", "<br>")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


class Report:
    """Builds ``report.md`` from sections, tables, figures and the claims table."""

    def __init__(self, title: str, path: str | os.PathLike):
        self.title = title
        self.path = Path(path)
        self.parts: list[str] = []
        self.claims: list[Claim] = []

    def text(self, text: str) -> Report:
        self.parts.append(text.strip() + "\n")
        return self

    def section(self, title: str, text: str = "") -> Report:
        self.parts.append(f"## {title}\n\n{text.strip()}\n" if text else f"## {title}\n")
        return self

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[object]],
              caption: str = "") -> Report:
        block = markdown_table(headers, rows) + "\n"
        self.parts.append((f"{caption}\n\n" if caption else "") + block)
        return self

    def figure(self, path: str | os.PathLike, caption: str) -> Report:
        rel = os.path.relpath(Path(path), self.path.parent)
        self.parts.append(f"![{caption}]({rel})\n\n*{caption}*\n")
        return self

    def add_claim(self, claim: Claim) -> Report:
        self.claims.append(claim)
        return self

    def claims_table(self) -> str:
        rows = [
            (i + 1, c.claim, c.measured_cell, c.rule_cell, f"**{c.verdict}**")
            for i, c in enumerate(self.claims)
        ]
        return markdown_table(("#", "Claim (paper)", "Measured", "Rule", "Verdict"), rows)

    def render(self) -> str:
        out = [f"# {self.title}\n"]
        if self.claims:
            counts = {v: sum(c.verdict == v for c in self.claims) for v in Verdict}
            out.append("## Claims\n\n" + self.claims_table() + "\n\n"
                       + ", ".join(f"{n} {v}" for v, n in counts.items()) + ".\n")
        out += self.parts
        return "\n".join(out)

    def write(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(self.render())
        return self.path


# ---------------------------------------------------------------- figures


def new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (4.5, 3.4), **kw):
    """A matplotlib figure on the Agg backend (no display needed), sized per panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows),
                             squeeze=False, **kw)
    return fig, axes


def save_figure(fig, path: str | os.PathLike) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_band(ax, x, runs: Sequence[Sequence[float]], label: str, color=None, log: bool = False):
    """Mean curve over seeds with a min–max band (runs of different length are cut to the shortest)."""
    n = min(len(r) for r in runs)
    arr = np.asarray([list(r)[:n] for r in runs], dtype=float)
    x = np.asarray(list(x)[:n])
    with np.errstate(all="ignore"):
        mean = np.nanmean(arr, axis=0)
    line = ax.plot(x, mean, label=label, color=color)[0]
    if arr.shape[0] > 1:
        ax.fill_between(x, np.nanmin(arr, axis=0), np.nanmax(arr, axis=0),
                        color=line.get_color(), alpha=0.2, linewidth=0)
    if log:
        ax.set_yscale("log")
    return line
