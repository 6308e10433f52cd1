"""Threshold calibration on a held-out slice, and accuracy-cost curves over thresholds.

A cascade's threshold trades accuracy for large-model cost. Instead of one hand-picked
point, the report shows the whole curve, computed offline from *full-information* records
(RouteLLM-style): a method whose early stages never settle (threshold above 1, e.g.
``cope@t=1.01``) runs every stage on every problem, so for any threshold t the cascade's
outcome is read off the record: it settles at the first stage whose vote share reaches t,
pays the stages up to there, and answers that stage's top answer. The plain cascade needs
no extra run: its stage 1 is ``small_only``'s vote (same prompt, same stored samples) and
its stage 2 is ``large_only``.

Calibration: on the problems of the held-out slice (ids ``cal/...``, never evaluated), pick
the threshold whose share of problems calling the large model is closest to a target
share; the evaluation problems then report accuracy and cost at that threshold. Vote
shares are discrete (k / votes), so the candidate thresholds are the shares that occur.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cope.humaneval import is_calibration

TARGET_LARGE_SHARES = (0.25, 0.5, 0.75)  # shares of problems that may call the large model


@dataclass
class Stage:
    share: float
    top: object
    correct: bool
    cost: float  # $ of this stage (its plans and executions)
    large: bool  # this stage calls the paid model


@dataclass
class Point:
    threshold: float
    accuracy: float
    cost: float  # mean $ per problem
    large_share: float  # share of problems that called the paid model
    n: int


def settle(stages: Sequence[Stage], threshold: float) -> tuple[bool, float, bool]:
    """(correct, cost, called the large model) of a cascade with this threshold."""
    cost, large = 0.0, False
    for k, st in enumerate(stages):
        cost += st.cost
        large = large or st.large
        if k == len(stages) - 1 or (st.top is not None and st.share >= threshold):
            return st.correct, cost, large
    return False, cost, large


def curve(per_problem: Sequence[Sequence[Stage]], thresholds: Sequence[float]) -> list[Point]:
    points = []
    for t in thresholds:
        outs = [settle(stages, t) for stages in per_problem]
        n = max(len(outs), 1)
        points.append(Point(t, sum(o[0] for o in outs) / n, sum(o[1] for o in outs) / n,
                            sum(o[2] for o in outs) / n, len(outs)))
    return points


def candidate_thresholds(per_problem: Sequence[Sequence[Stage]]) -> list[float]:
    """Every vote share that occurs before the last stage, plus 0 and 1.01 (all / none)."""
    shares = {round(st.share, 6) for stages in per_problem for st in stages[:-1]}
    return sorted(shares | {0.0, 1.01})


def calibrate(per_problem: Sequence[Sequence[Stage]], target: float) -> Point:
    """The threshold whose large-call share on these problems is closest to ``target``
    (ties: the cheaper one)."""
    points = curve(per_problem, candidate_thresholds(per_problem))
    return min(points, key=lambda p: (abs(p.large_share - target), p.cost))


# ---------------------------------------------------------------- from run records


def cope_stages(result: dict, check: Callable[[object], bool], paid: Callable[[str], bool]
                ) -> list[Stage]:
    out = []
    for st in result["stages"]:
        large = paid(st["executor"]) or bool(st.get("planner") and paid(st["planner"]))
        out.append(Stage(float(st["share"]), st["top"], bool(check(st["top"])),
                         float(st["cost_usd"]), large))
    return out


def cascade_stages(small: dict, large: dict, check: Callable[[object], bool]) -> list[Stage]:
    """The plain cascade from small_only's vote and large_only's answer."""
    s = small["stages"][0]
    return [Stage(float(s["share"]), s["top"], bool(check(s["top"])), 0.0, False),
            Stage(1.0, large["answer"], bool(large["correct"]), float(large["cost_usd"]), True)]


def full_information_method(methods: Sequence[str], base: str = "cope") -> str | None:
    """The sweep variant of ``base`` whose early stages never settle (threshold > 1)."""
    best = None
    for name in methods:
        if name.startswith(f"{base}@t="):
            try:
                t = float(name.split("=", 1)[1])
            except ValueError:
                continue
            if t > 1 and (best is None or t > best[0]):
                best = (t, name)
    return best[1] if best else None


def split(records: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """(evaluation records, held-out calibration records)."""
    return ([r for r in records if not is_calibration(r["id"])],
            [r for r in records if is_calibration(r["id"])])


def method_curves(records: Sequence[dict], check_for: Callable[[dict], Callable],
                  paid: Callable[[str], bool]) -> dict[str, list[list[Stage]]]:
    """Per cascade ("cope", "cascade"): the stage outcomes of every problem."""
    if not records:
        return {}
    names = list(records[0]["methods"])
    out: dict[str, list[list[Stage]]] = {}
    full = full_information_method(names)
    if full:
        out["cope"] = [cope_stages(r["methods"][full], check_for(r), paid) for r in records]
    if "small_only" in names and "large_only" in names:
        out["cascade"] = [cascade_stages(r["methods"]["small_only"], r["methods"]["large_only"],
                                         check_for(r)) for r in records]
    return out


def make_checker(cfg_dict: dict) -> Callable[[dict], Callable[[object], bool]]:
    """record -> (answer -> correct): math from the record's gold answer; code by running the
    problem's tests again (the problems are regenerated from the run's data config)."""
    from cope.answers import check_math
    from cope.tasks import DataConfig, load_problems, rules_for

    problems: dict[tuple[int, str], object] = {}

    def problem(record: dict):
        if not problems:
            data = cfg_dict.get("data", {})
            for seed in cfg_dict.get("seeds", [0]):
                cfg = DataConfig(**{**data, "seed": int(data.get("seed", 0)) + seed})
                for p in load_problems(cfg):
                    problems[(seed, p.id)] = p
        return problems[(record["seed"], record["id"])]

    def check_for(record: dict) -> Callable[[object], bool]:
        if record.get("task_type", "math") == "math":
            return lambda answer: answer is not None and check_math(answer, record["gold"])
        memo: dict[object, bool] = {}

        def check(answer: object) -> bool:
            if answer is None:
                return False
            if answer not in memo:
                memo[answer] = rules_for("code").check(answer, problem(record))
            return memo[answer]
        return check

    return check_for


def write_section(report, run, records: Sequence[dict], cfg_dict: dict) -> None:
    """The calibration table and the accuracy-cost curves (a report section and a figure)."""
    from reprokit.report import new_figure, save_figure

    evaluation, held_out = split(records)
    roster = {m["name"]: m for m in cfg_dict.get("models", [])}
    paid = lambda name: bool(roster.get(name, {}).get("price_in") or  # noqa: E731
                             roster.get(name, {}).get("price_out"))
    check_for = make_checker(cfg_dict)
    ev = method_curves(evaluation, check_for, paid)
    cal = method_curves(held_out, check_for, paid)
    if not ev:
        report.section("Threshold calibration and accuracy-cost curves",
                       "No full-information records (a `cope@t=` sweep above 1, and "
                       "small_only + large_only): nothing to calibrate.")
        return
    large_cost = sum(r["methods"]["large_only"]["cost_usd"] for r in evaluation) / max(
        len(evaluation), 1) if evaluation and "large_only" in evaluation[0]["methods"] else 0.0
    rel = (lambda c: f"{c / large_cost:.2f}") if large_cost else (lambda c: "n/a")  # noqa: E731
    rows = []
    for target in TARGET_LARGE_SHARES:
        for name in ev:
            if name not in cal or not cal[name]:
                rows.append((f"{100 * target:.0f}%", name, "no held-out problems", "", "", "",
                             ""))
                continue
            chosen = calibrate(cal[name], target)
            point = curve(ev[name], [chosen.threshold])[0]
            rows.append((f"{100 * target:.0f}%", name, f"{chosen.threshold:g}",
                         f"{100 * chosen.large_share:.0f}% (n={chosen.n})",
                         f"{point.accuracy:.3f}", rel(point.cost),
                         f"{100 * point.large_share:.0f}% (n={point.n})"))
    report.section("Threshold calibration and accuracy-cost curves", (
        f"Thresholds are calibrated on a held-out slice ({len(held_out)} problems with ids "
        f"`cal/…`, never in the claims) for a target share of problems that call the large "
        f"model, then applied to the {len(evaluation)} evaluated problems. Every point is "
        "read off full-information records (every stage run on every problem; see "
        "`cope.calibrate`), the plain cascade from small_only's vote and large_only's answer."))
    report.table(("target large-call share", "cascade", "threshold (held-out)",
                  "held-out large-call share", "evaluated accuracy", "evaluated cost / large-only",
                  "evaluated large-call share"), rows)
    fig, axes = new_figure(1, 1, size=(6, 4))
    ax = axes[0][0]
    curve_rows = []
    for name, per_problem in ev.items():
        pts = curve(per_problem, candidate_thresholds(per_problem))
        xs = [p.cost / large_cost if large_cost else p.cost for p in pts]
        ax.plot(xs, [p.accuracy for p in pts], marker="o", label=name)
        curve_rows += [(name, f"{p.threshold:g}", f"{p.accuracy:.3f}", rel(p.cost),
                        f"{100 * p.large_share:.0f}%") for p in pts]
    for ref in ("small_only", "large_only"):
        if evaluation and ref in evaluation[0]["methods"]:
            acc = sum(r["methods"][ref]["correct"] for r in evaluation) / len(evaluation)
            c = sum(r["methods"][ref]["cost_usd"] for r in evaluation) / len(evaluation)
            ax.scatter([c / large_cost if large_cost else c], [acc], marker="*", s=120,
                       label=ref, zorder=3)
    ax.set_xlabel("large-model cost / large-only" if large_cost else "large-model cost ($)")
    ax.set_ylabel("accuracy (evaluated problems)")
    ax.set_title("accuracy-cost curve over thresholds")
    ax.legend(fontsize=8)
    path = save_figure(fig, run.figure_path("threshold_curve"))
    report.table(("cascade", "threshold", "accuracy", "cost / large-only", "large-call share"),
                 curve_rows)
    report.figure(path, "Accuracy against large-model cost for every threshold (evaluated "
                  "problems); stars: the single models.")
