"""Figures, seed summaries, computed verdicts and ``report.md``.

A claim's verdict is never typed: it is the output of a rule applied to measured values,
and the rule is printed next to it. The rules here compare two groups of per-seed values:

- ``compare(a, b)``: *holds* when mean(a) − mean(b) exceeds ``margin`` by more than
  ``z`` standard errors of the difference, *does not hold* when it falls short of
  ``margin`` by more than that, *inconclusive* in between (with one seed a side, the
  standard error is unknown and any difference that clears the margin counts).
- ``threshold(a, t)``: the same test of mean(a) against a fixed number.

Both take ``min_n`` (default 1): with fewer than ``min_n`` finite values on a side (for
``threshold``, in `a`), the verdict is *inconclusive*. ``min_n=2`` asks for a measured seed
spread on both sides instead of letting a single seed per side decide.
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


def compare(a: Sequence[float], b: Sequence[float], margin: float = 0.0, z: float = 2.0,
            min_n: int = 1) -> Verdict:
    """Is mean(a) − mean(b) > margin, beyond seed noise? Inconclusive when either side has
    fewer than `min_n` (at least 1) finite values. (See the module docstring.)"""
    sa, sb = summarize(a), summarize(b)
    need = max(1, min_n)
    if sa.n_finite < need or sb.n_finite < need:
        return Verdict.INCONCLUSIVE
    diff = sa.mean - sb.mean - margin
    noise = z * math.sqrt(sa.sem**2 + sb.sem**2)
    if diff > noise:
        return Verdict.HOLDS
    if diff < -noise:
        return Verdict.DOES_NOT_HOLD
    return Verdict.INCONCLUSIVE


def threshold(a: Sequence[float], t: float, z: float = 2.0, min_n: int = 1) -> Verdict:
    """Is mean(a) > t, beyond seed noise? Inconclusive when `a` has fewer than `min_n`
    finite values."""
    if summarize(a).n_finite < min_n:
        return Verdict.INCONCLUSIVE
    return compare(a, [t], margin=0.0, z=z)


def all_of(*verdicts: Verdict) -> Verdict:
    """Holds if every part holds; does not hold if any part does not hold."""
    if any(v == Verdict.DOES_NOT_HOLD for v in verdicts):
        return Verdict.DOES_NOT_HOLD
    if all(v == Verdict.HOLDS for v in verdicts):
        return Verdict.HOLDS
    return Verdict.INCONCLUSIVE


@dataclass
class Claim:
    """One row of the claims table.

    `claim` is the paper's statement, `measured` the text built from the data (use
    ``Summary.format``), `rule` the decision rule in words, `verdict` its computed output.
    """

    claim: str
    measured: str
    rule: str
    verdict: Verdict
    evidence: list[str] = field(default_factory=list)  # figure files behind the row


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
            (i + 1, c.claim, c.measured, c.rule, f"**{c.verdict}**")
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
