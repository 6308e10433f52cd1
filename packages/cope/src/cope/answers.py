"""Answer extraction, normalisation (the key votes are counted on) and checking.

Math: the answer is what follows the last "Answer:" (else the last ``\\boxed{}``, else the
last number in the reply); numbers are normalised so "7", "7.0" and "+7" vote together;
checking compares numbers with a tolerance and falls back to math-verify for expressions.
A reply with nothing parsable yields ``None``: a recorded outcome (never a crash), which
counts as wrong and as a vote for nobody.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

# Exponents are part of a number: "1e400" must not be read as 1 (it is inf: not a match).
NUMBER = r"[-+−]?\s?\$?\d[\d,]*(?:\.\d+)?(?:[eE][-+−]?\d+)?(?:/\d+)?"
_ANSWER_RE = re.compile(r"answer\s*(?:is)?\s*[:=]?\s*", re.IGNORECASE)
_NUMBER_RE = re.compile(NUMBER)
_BOXED_RE = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")


def _to_number(text: str) -> float | None:
    clean = text.replace(" ", "").replace(",", "").replace("$", "").replace("−", "-")
    try:
        if "/" in clean:
            num, den = clean.split("/", 1)
            return float(num) / float(den)
        return float(clean)
    except (ValueError, ZeroDivisionError):
        return None


def normalize(answer: str | None) -> str | None:
    """Canonical text of an answer: numbers as shortest exact decimals, else stripped text."""
    if answer is None:
        return None
    text = answer.strip().rstrip(".").strip()
    if not text:
        return None
    value = _to_number(text)
    if value is None or not math.isfinite(value):
        return text
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.10g}"


def extract_math_answer(text: str) -> str | None:
    """The model's final answer, normalised; None when the reply has none."""
    if not text:
        return None
    markers = list(_ANSWER_RE.finditer(text))
    if markers:
        tail = text[markers[-1].end():]
        boxed = _BOXED_RE.search(tail)
        if boxed:
            return normalize(boxed.group(1))
        line = (tail.strip().splitlines() or [""])[0].strip().rstrip(".").strip("$ ")
        if "\\" in line or "{" in line:  # a LaTeX expression: "Answer: $\frac{14}{3}$"
            return normalize(line)
        number = _NUMBER_RE.search(tail)
        if number:  # "Answer: 7 apples" -> 7
            return normalize(number.group(0))
    boxed_all = _BOXED_RE.findall(text)
    if boxed_all:
        return normalize(boxed_all[-1])
    numbers = _NUMBER_RE.findall(text)
    return normalize(numbers[-1]) if numbers else None


def check_math(predicted: str | None, gold: str, rel_tol: float = 1e-6) -> bool:
    """Numbers within a relative tolerance; other expressions through math-verify."""
    if predicted is None:
        return False
    p, g = _to_number(predicted), _to_number(str(gold))
    if p is not None and g is not None:
        return math.isclose(p, g, rel_tol=rel_tol, abs_tol=1e-9)
    if normalize(predicted) == normalize(str(gold)):
        return True
    try:
        from math_verify import parse, verify

        return bool(verify(parse(f"${gold}$"), parse(f"${predicted}$")))
    except Exception:  # math-verify could not parse one side: not a match
        return False


@dataclass(frozen=True)
class Vote:
    """Majority vote over samples. ``share`` = top count / all samples (unparsable included)."""

    top: str | None
    share: float
    counts: dict[str, int]
    n: int
    n_malformed: int


def majority_vote(answers: Sequence[str | None]) -> Vote:
    """Ties go to the answer seen first, so the result is deterministic."""
    valid = [a for a in answers if a is not None]
    counts = Counter(valid)
    n = len(answers)
    if not counts:
        return Vote(None, 0.0, {}, n, n)
    best = max(counts.values())
    top = next(a for a in valid if counts[a] == best)
    return Vote(top, best / n if n else 0.0, dict(counts), n, n - len(valid))
