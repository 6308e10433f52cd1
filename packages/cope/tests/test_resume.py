"""A run killed mid-way keeps its finished problems; --resume does only the rest."""

import json

import pytest
from cope_helpers import large_responder, small_responder

from cope.backends import ScriptedBackend
from cope.config import CopeConfig
from cope.experiments import PROBLEMS_FILE, run_experiment
from cope.report import build_report
from cope.tasks import DataConfig
from reprokit.runs import RunDir

METHODS = [
    {"name": "small_only", "stages": [{"executor": "small", "executions_per_plan": 4}]},
    {"name": "large_only", "stages": [{"executor": "large", "executions_per_plan": 1,
                                       "temperature": 0.0}]},
    {"name": "cascade_no_plan", "stages": [
        {"executor": "small", "executions_per_plan": 4},
        {"executor": "large", "executions_per_plan": 1, "temperature": 0.0}]},
    {"name": "cope", "stages": [
        {"planner": "small", "plans": 4, "executions_per_plan": 1, "executor": "small"},
        {"planner": "large", "executor": "small", "executions_per_plan": 4},
        {"planner": "large", "executor": "large", "executions_per_plan": 1,
         "temperature": 0.0}]},
]


def make_config(tmp_path) -> CopeConfig:
    rows = [{"id": f"p{i}", "question": f"{kind} question {i}", "answer": gold}
            for i, (kind, gold) in enumerate([("EASY", "1"), ("MEDIUM", "2"), ("HARD", "3")] * 2)]
    path = tmp_path / "problems.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return CopeConfig(scale="test", data=DataConfig(source="jsonl", path=str(path), size=6),
                      models=[{"name": "small", "backend": "hf", "model": "scripted"},
                              {"name": "large", "backend": "openai", "model": "scripted",
                               "price_in": 2.5, "price_out": 10.0}],
                      methods=METHODS, chunk_size=3, sweep_thresholds=[0.5])


class Crash(BaseException):
    """Stands in for a kill: not an Exception, so nothing catches it."""


def test_resume_after_a_crash_skips_finished_problems(tmp_path):
    cfg = make_config(tmp_path)
    run = RunDir("cope", "r1", root=tmp_path / "runs")
    run.save_config(cfg)
    seen = []

    def crashing_small(text, k):
        seen.append(text)
        if "question 3" in text:  # the second chunk
            raise Crash()
        return small_responder(text, k)

    backends = {"small": ScriptedBackend(crashing_small),
                "large": ScriptedBackend(large_responder)}
    with pytest.raises(Crash):
        run_experiment(cfg, run, backends)
    kept = run.read_log(PROBLEMS_FILE)
    assert [r["id"] for r in kept] == ["p0", "p1", "p2"]

    resumed = RunDir("cope", "r1", root=tmp_path / "runs", resume=True)
    small = ScriptedBackend(small_responder)
    summary = run_experiment(cfg, resumed, {"small": small,
                                            "large": ScriptedBackend(large_responder)})
    assert summary == {"new_problems": 3, "skipped": 3}
    asked = " ".join(p for prompts, _ in small.calls for p in prompts)
    assert "question 0" not in asked and "question 5" in asked
    records = resumed.read_log(PROBLEMS_FILE)
    assert sorted(r["id"] for r in records) == [f"p{i}" for i in range(6)]
    assert set(records[0]["methods"]) == {"small_only", "large_only", "cascade_no_plan",
                                          "cope", "cope@t=0.5"}
    # a finished run resumed again does nothing new
    again = run_experiment(cfg, RunDir("cope", "r1", root=tmp_path / "runs", resume=True),
                           {"small": small, "large": ScriptedBackend(large_responder)})
    assert again["new_problems"] == 0

    report = build_report(resumed.path).read_text()
    assert "## Claims" in report and "**holds**" in report
    assert (resumed.figures / "accuracy_vs_cost.png").stat().st_size > 1000
    # scripted COPE: easy at stage 1, medium at 2, hard at 3 -> reached 100/67/33 %
    assert "stage 1: 100%, 2: 67%, 3: 33%" in report
