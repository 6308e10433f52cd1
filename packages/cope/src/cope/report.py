"""``report.md`` rebuilt from a run directory alone (config.yaml + problems.jsonl).

Verdicts compare per-problem values, paired by problem: e.g. COPE's cost is below the
large model's when the mean per-problem difference (large − COPE) exceeds 0 by more than
two standard errors (reprokit.report.threshold on the differences).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import yaml

from cope.config import CopeConfig
from cope.experiments import PROBLEMS_FILE
from reprokit.report import (
    Claim,
    Report,
    Verdict,
    fmt,
    new_figure,
    save_figure,
    summarize,
    threshold,
)
from reprokit.runs import RunDir, iter_jsonl

ACCURACY_MARGIN = 0.05  # "comparable accuracy": COPE at most 5 points below large-alone


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
            "budget_capped": sum(row["reason"] == "budget_cap" for row in rows),
            "errors": sum(bool(row["errors"]) for row in rows),
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


def _paired(records: list[dict], a: str, b: str, field: str) -> list[float]:
    """Per-problem a − b (problems where both methods ran)."""
    return [float(r["methods"][a][field]) - float(r["methods"][b][field])
            for r in records if a in r["methods"] and b in r["methods"]]


def build_report(run_path: str | Path) -> Path:
    run_path = Path(run_path)
    run = RunDir("cope", run_path.name, root=run_path.parent.parent, resume=True)
    cfg_dict, records = _load(run_path)
    cfg = CopeConfig(**{k: v for k, v in cfg_dict.items()
                        if k in ("scale", "seeds", "models", "methods", "budget_usd",
                                 "chunk_size")})
    table = method_table(records)
    report = Report(f"COPE: small and large LLMs collaborating through plans "
                    f"({cfg.scale} scale)", run.report_path)
    roster = {m["name"]: m for m in cfg.models}
    env_notes = _read_notes(run_path)

    # ---------------- setting
    data = cfg_dict.get("data", {})
    lines = [
        f"- Scale **{cfg.scale}**; seeds {cfg.seeds}; {len(records)} problems finished.",
        f"- Problems: `{data.get('source')}` / `{data.get('name')}` with options "
        f"`{data.get('options')}`, size {data.get('size')} per seed, data seed "
        f"{data.get('seed')} (+ seed offset).",
        "- Models (roster; price in $ per million input/output tokens):",
    ]
    for name, m in roster.items():
        lines.append(f"  - **{name}**: backend `{m.get('backend')}`, model `{m.get('model')}`, "
                     f"price {m.get('price_in', 0)}/{m.get('price_out', 0)}; played by: "
                     f"{env_notes.get(name, 'see config.yaml')}")
    same = len({m.get("serve_model") or m.get("model") for m in roster.values()}) == 1
    if same:
        lines.append("- **Both roles are played by the same weights.** The 'large' model is "
                     "the small model behind an OpenAI-compatible loopback server with a "
                     "price attached, so this run tests the cascade's mechanics (batching, "
                     "voting, escalation, plan reuse, the cost ledger), not the paper's "
                     "accuracy/cost trade-off, which needs a genuinely stronger large model "
                     "(see README: vLLM on a GPU, or a hosted API).")
    lines.append(f"- Budget cap per method: {cfg.budget_usd or 'none'}; problems per "
                 f"batch: {cfg.chunk_size}.")
    report.section("Setting", "\n".join(lines))

    # ---------------- claims
    _claims(report, records, table)

    # ---------------- tables
    rows = []
    large_cost = table.get("large_only", {}).get("total_cost", 0.0)
    for name, t in table.items():
        reached = " / ".join(f"{100 * v:.0f}%" for v in t["reached"].values())
        settled = " / ".join(f"{100 * v:.0f}%" for v in t["settled"].values())
        rel = fmt(t["total_cost"] / large_cost) if large_cost else "n/a"
        rows.append((name, t["n"], summarize(t["correct"]).format(),
                     f"{t['total_cost'] * 1e6:.1f}", rel, reached, settled,
                     f"{100 * t['malformed_share']:.0f}%", t["errors"], t["budget_capped"]))
    report.section("Accuracy and cost per method")
    report.table(("method", "problems", "accuracy (mean ± std over problems)",
                  "large-model cost (µ$)", "cost / large-only", "reached stage 1/2/3",
                  "settled at stage 1/2/3", "unparsable outputs", "problems with errors",
                  "stopped by budget"),
                 rows, caption="Cost counts only the paid (large) model; small models are free. "
                 "'reached' is the escalation rate per stage.")
    tok_rows = [(name, ", ".join(f"{k}: {v}" for k, v in sorted(t["tokens"].items())))
                for name, t in table.items()]
    report.table(("method", "tokens by model/role (prompt + completion)"), tok_rows)
    report.text(_cost_structure(records, roster))

    # ---------------- figures
    fig_path = _plot(run, table)
    report.figure(fig_path, "Accuracy vs large-model cost for every method (sweeps included); "
                  "right: stage at which each cascade settled its problems.")

    # ---------------- examples
    report.section("Examples (first problems, COPE)", _examples(records))

    # ---------------- limits
    report.section("Limits", "\n".join([
        "- Accuracy differences between methods are over a small problem set; the verdicts "
        "treat problems as samples (paired differences, two standard errors), so small gaps "
        "are *inconclusive*, not wins.",
        "- Methods share generated samples when they send the same prompt (common random "
        "numbers): each is charged for every call it makes, as if it ran alone.",
        "- With the same 135M model in both roles, the large-model stage differs from the "
        "small one only in decoding (greedy vs sampled) and prompts: the paper's claim that "
        "COPE matches a strong model at ~45% lower cost (MATH, GPT-4o) cannot be tested "
        "here; the cost side of the claim (escalating only unsure problems) can.",
        "- No MATH-500/AIME/MBPP/MT-Bench/ALFWorld offline; `--scale paper` loads MATH-500 "
        "(or GSM8K/MBPP via data.source) from the hub and needs real models.",
    ]))
    return report.write()


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


def _claims(report: Report, records: list[dict], table: dict[str, dict]) -> None:
    if not all(m in table for m in ("cope", "large_only", "small_only")):
        return
    cope, large, small = table["cope"], table["large_only"], table["small_only"]
    saved = large["total_cost"] - cope["total_cost"]
    rel = saved / large["total_cost"] if large["total_cost"] else float("nan")
    cost_diff = _paired(records, "large_only", "cope", "cost_usd")
    report.add_claim(Claim(
        "COPE costs less than using the large model alone (≈45% less on MATH)",
        f"large-model cost: COPE {cope['total_cost'] * 1e6:.1f} µ$ vs large-only "
        f"{large['total_cost'] * 1e6:.1f} µ$ (ratio {fmt(1 - rel)}; the paper: ≈0.55)",
        "per-problem cost difference (large − COPE) > 0 beyond 2 standard errors",
        threshold(cost_diff, 0.0) if cost_diff else Verdict.INCONCLUSIVE))
    acc_diff = _paired(records, "cope", "large_only", "correct")
    report.add_claim(Claim(
        "COPE's accuracy is comparable to the large model alone",
        f"accuracy: COPE {cope['accuracy']:.3f} vs large-only {large['accuracy']:.3f} "
        f"(n={cope['n']})",
        f"per-problem accuracy difference (COPE − large) > −{ACCURACY_MARGIN} beyond 2 "
        "standard errors",
        threshold(acc_diff, -ACCURACY_MARGIN) if acc_diff else Verdict.INCONCLUSIVE))
    small_diff = _paired(records, "cope", "small_only", "correct")
    report.add_claim(Claim(
        "COPE is more accurate than the small model alone",
        f"accuracy: COPE {cope['accuracy']:.3f} vs small-only {small['accuracy']:.3f}",
        "per-problem accuracy difference (COPE − small) > 0 beyond 2 standard errors",
        threshold(small_diff, 0.0) if small_diff else Verdict.INCONCLUSIVE))
    if "cascade_no_plan" in table:
        plain = table["cascade_no_plan"]
        diff = _paired(records, "cope", "cascade_no_plan", "correct")
        report.add_claim(Claim(
            "Planning helps: COPE beats a cascade without plans",
            f"accuracy: COPE {cope['accuracy']:.3f} (cost {cope['total_cost'] * 1e6:.1f} µ$) "
            f"vs no-plan cascade {plain['accuracy']:.3f} "
            f"(cost {plain['total_cost'] * 1e6:.1f} µ$)",
            "per-problem accuracy difference (COPE − no-plan cascade) > 0 beyond 2 standard "
            "errors",
            threshold(diff, 0.0) if diff else Verdict.INCONCLUSIVE))
    reached = cope["reached"]
    escalated = reached.get(2, 0.0)
    report.add_claim(Claim(
        "The cascade escalates only part of the problems (the small stage settles some)",
        "reached stage " + ", ".join(f"{s}: {100 * v:.0f}%" for s, v in reached.items()),
        "share of problems escalated past stage 1 is below 1 beyond 2 standard errors",
        threshold([1.0 - float(r["methods"]["cope"]["stages_run"] >= 2) for r in records],
                  0.0) if records and escalated < 1.0 else Verdict.DOES_NOT_HOLD))


def _plot(run: RunDir, table: dict[str, dict]) -> Path:
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
