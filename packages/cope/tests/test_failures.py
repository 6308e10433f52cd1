"""Verdicts never come from failures: failed methods, refused credentials, the floor rule."""

import json
import re

import pytest
from cope_helpers import large_responder, make_config, small_responder
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from cope.backends import OpenAIBackend, ScriptedBackend
from cope.cli import main
from cope.experiments import Backends, run_experiment
from cope.report import build_report, failed_methods
from cope.server import ServerThread, free_port
from reprokit.runs import RunDir


def verdicts(report: str) -> dict[str, str]:
    """Claim text -> verdict, from the claims table rows."""
    out = {}
    for line in report.splitlines():
        m = re.match(r"\| \d+ \| (.+?) \| .* \| \*\*(.+?)\*\* \|$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def run_with(tmp_path, large, small=None, **overrides):
    cfg = make_config(tmp_path, **overrides)
    run = RunDir("cope", "r", root=tmp_path / "runs")
    run.save_config(cfg)
    run_experiment(cfg, run, {"small": small or ScriptedBackend(small_responder),
                              "large": large})
    return run, build_report(run.path).read_text()


def test_an_unreachable_large_model_makes_its_claims_inconclusive(tmp_path):
    dead = OpenAIBackend(f"http://127.0.0.1:{free_port()}/v1", "m", max_retries=0,
                         timeout_s=2, name="large")
    run, report = run_with(tmp_path, dead)
    assert failed_methods(run.path) == ["large_only"]
    top = report.split("## Claims")[0]
    assert "not every method was measured" in top and "`large_only` had failed calls on 6/6" \
        in top and "APIConnectionError" in top
    v = verdicts(report)
    assert len(v) == 5
    for claim, verdict in v.items():
        uses_large = "large" in claim or "cheaper" in claim or "costs less" in claim
        if uses_large:
            assert verdict == "inconclusive", claim
    assert "large_only ⚠ failed calls" in report


def test_a_few_failed_calls_under_the_share_do_not_void_a_method(tmp_path):
    hits = {"n": 0}

    def sometimes(text, k):
        hits["n"] += 1
        if "question 5" in text:
            raise ConnectionError("one problem failed")
        return large_responder(text, k)

    run, report = run_with(tmp_path, ScriptedBackend(sometimes), max_error_share=0.5)
    assert "not every method was measured" not in report
    assert failed_methods(run.path) == []


def _fake_backends(large):
    def build(roster, device="cpu"):
        return Backends({"small": ScriptedBackend(small_responder), "large": large})
    return build


def _task_file(tmp_path):
    path = tmp_path / "tasks.jsonl"
    rows = [{"id": f"p{i}", "question": f"{k} question {i}", "answer": g}
            for i, (k, g) in enumerate([("EASY", "1"), ("MEDIUM", "2"), ("HARD", "3")])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_exits_non_zero_when_a_whole_method_failed(tmp_path, monkeypatch, capsys):
    dead = OpenAIBackend(f"http://127.0.0.1:{free_port()}/v1", "m", max_retries=0,
                         timeout_s=2, name="large")
    monkeypatch.setattr("cope.experiments.build_backends", _fake_backends(dead))
    rc = main(["reproduce", "--scale", "smoke", "--tasks", str(_task_file(tmp_path)),
               "--out", str(tmp_path / "runs"), "--run-name", "r", "--accelerator", "cpu"])
    assert rc == 3
    assert "large_only" in capsys.readouterr().err
    report = (tmp_path / "runs" / "cope" / "r" / "report.md").read_text()
    assert verdicts(report)["COPE's accuracy is comparable to the large model alone"] \
        == "inconclusive"


def test_cli_stops_at_once_on_refused_credentials(tmp_path, monkeypatch, capsys):
    app = FastAPI()
    hits = []

    @app.post("/v1/chat/completions")
    def chat(body: dict):
        hits.append(body)
        return JSONResponse({"error": {"message": "bad key"}}, status_code=401)

    with ServerThread(app) as url:
        large = OpenAIBackend(url, "m", max_retries=5, backoff_s=0.01, name="large")
        monkeypatch.setattr("cope.experiments.build_backends", _fake_backends(large))
        rc = main(["reproduce", "--scale", "smoke", "--tasks", str(_task_file(tmp_path)),
                   "--out", str(tmp_path / "runs"), "--run-name", "r"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "401" in err and "'large'" in err and "api_key_env" in err
    assert 1 <= len(hits) <= 3  # the first batch's requests, none retried


def test_a_bad_task_file_fails_before_any_model_loads(tmp_path, monkeypatch, capsys):
    def no_models(*a, **k):
        raise AssertionError("models were loaded for a bad task file")

    monkeypatch.setattr("cope.experiments.build_backends", no_models)
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "question": "q", "answer": "1"}\n[1, 2]\n')
    rc = main(["reproduce", "--scale", "smoke", "--tasks", str(path),
               "--out", str(tmp_path / "runs")])
    assert rc == 2 and f"{path}:2: expected a JSON object" in capsys.readouterr().err


def test_the_report_names_the_task_file_its_sha256_and_types(tmp_path, monkeypatch):
    monkeypatch.setattr("cope.experiments.build_backends",
                        _fake_backends(ScriptedBackend(large_responder)))
    tasks = _task_file(tmp_path)
    assert main(["reproduce", "--scale", "smoke", "--tasks", str(tasks), "--out",
                 str(tmp_path / "runs"), "--run-name", "r", "--set", "data.size=1"]) == 0
    report = (tmp_path / "runs" / "cope" / "r" / "report.md").read_text()
    import hashlib

    digest = hashlib.sha256(tasks.read_bytes()).hexdigest()
    assert f"task file `{tasks.resolve()}` (sha256 `{digest}`), 3 problems" in report
    assert "task types finished: math: 3" in report and "chain_sum" not in report


@pytest.mark.parametrize("small_answer, large_answer", [
    ("Answer: 9", "Answer: 9"),  # both always wrong: large-only scores 0
    ("Answer: 1", "Answer: 1"),  # both always right: large is no better than small
])
def test_comparable_to_large_needs_a_large_model_above_small_and_zero(
        tmp_path, small_answer, large_answer):
    def small(text, k):
        return "Plan: p" if "Write a one-sentence plan" in text else small_answer

    def large(text, k):
        return "LARGE plan" if "Write a short plan" in text else large_answer

    cfg = make_config(tmp_path)
    rows = [{"id": f"q{i}", "question": f"EASY question {i}", "answer": "1"} for i in range(8)]
    (tmp_path / "problems.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    run = RunDir("cope", "r", root=tmp_path / "runs")
    run.save_config(cfg)
    run_experiment(cfg, run, {"small": ScriptedBackend(small), "large": ScriptedBackend(large)})
    report = build_report(run.path).read_text()
    row = next(line for line in report.splitlines() if "comparable to the large" in line)
    assert row.endswith("**inconclusive** |")
    assert "no signal" in row


def test_the_budget_caps_every_method_and_the_report_counts_capped_problems(tmp_path):
    large = ScriptedBackend(large_responder)
    (tmp_path / "probe").mkdir()
    probe_run, _ = run_with(tmp_path / "probe", large)
    one = max(r["methods"]["large_only"]["cost_usd"]
              for r in probe_run.read_log("problems.jsonl"))
    run, report = run_with(tmp_path, ScriptedBackend(large_responder), budget_usd=1.5 * one,
                           chunk_size=1)
    records = run.read_log("problems.jsonl")
    for method in ("large_only", "cope", "cascade_no_plan"):
        spent = sum(r["methods"][method]["cost_usd"] for r in records)
        assert spent <= 1.5 * one + 2 * one, method  # the cap plus at most one batch's stage
    capped = [r["id"] for r in records if r["methods"]["large_only"]["reason"] == "budget_cap"]
    assert len(capped) == 4  # two problems paid, then nothing more
    row = next(line for line in report.splitlines() if line.startswith("| large_only |"))
    assert row.split(" | ")[-2] == "4"  # the "stopped by budget" column


def test_the_report_says_which_sandbox_isolation_was_active(tmp_path, monkeypatch):
    from cope.sandbox import describe_isolation, isolation

    monkeypatch.setattr("cope.experiments.build_backends",
                        _fake_backends(ScriptedBackend(large_responder)))
    path = tmp_path / "code.jsonl"
    path.write_text(json.dumps({"id": "c", "task_type": "code", "question": "EASY: add(a, b)",
                                "tests": ["assert add(1, 2) == 3"]}) + "\n")
    assert main(["reproduce", "--scale", "smoke", "--tasks", str(path), "--out",
                 str(tmp_path / "runs"), "--run-name", "r"]) == 0
    run = tmp_path / "runs" / "cope" / "r"
    report = (run / "report.md").read_text()
    assert "- Code sandbox isolation: " + describe_isolation(isolation()) in report
    assert json.loads((run / "sandbox.json").read_text())["probe_ok"]
