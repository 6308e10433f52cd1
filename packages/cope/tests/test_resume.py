"""A run killed mid-way keeps its finished problems; --resume does only the rest."""

import json

import pytest
from cope_helpers import large_responder, make_config, small_responder

from cope.backends import ScriptedBackend
from cope.experiments import PROBLEMS_FILE, run_experiment
from cope.report import build_report
from reprokit.runs import RunDir


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


def _scripted():
    return {"small": ScriptedBackend(small_responder), "large": ScriptedBackend(large_responder)}


def test_a_line_cut_mid_write_is_moved_aside_not_glued_to(tmp_path):
    cfg = make_config(tmp_path)
    run = RunDir("cope", "r1", root=tmp_path / "runs")
    run.save_config(cfg)
    run_experiment(cfg, run, _scripted())
    path = run.path / PROBLEMS_FILE
    lines = path.read_bytes().splitlines(keepends=True)
    # a kill while writing the 5th record: 4 whole lines, then half of the 5th
    path.write_bytes(b"".join(lines[:4]) + lines[4][:len(lines[4]) // 2])
    resumed = RunDir("cope", "r1", root=tmp_path / "runs", resume=True)
    summary = run_experiment(cfg, resumed, _scripted())
    assert summary == {"new_problems": 2, "skipped": 4}
    text = path.read_text()
    records = [json.loads(line) for line in text.splitlines()]  # every line parses
    assert sorted(r["id"] for r in records) == [f"p{i}" for i in range(6)]
    assert (run.path / (PROBLEMS_FILE + ".partial")).read_bytes() == \
        lines[4][:len(lines[4]) // 2] + b"\n"


def test_repair_jsonl_keeps_whole_files_and_finds_the_last_newline(tmp_path):
    from cope.experiments import repair_jsonl

    whole = tmp_path / "a.jsonl"
    whole.write_text('{"a": 1}\n{"a": 2}\n')
    assert repair_jsonl(whole) == 0 and whole.read_text() == '{"a": 1}\n{"a": 2}\n'
    cut = tmp_path / "b.jsonl"
    cut.write_text('{"a": 1}\n' + '{"b": "' + "x" * 200_000)  # longer than one read block
    assert repair_jsonl(cut) == 200_007 and cut.read_text() == '{"a": 1}\n'
    only = tmp_path / "c.jsonl"
    only.write_text('{"a"')
    assert repair_jsonl(only) == 4 and only.read_text() == ""


def test_resume_with_another_config_is_refused_naming_the_keys(tmp_path):
    from cope.experiments import check_resume
    from reprokit.errors import ConfigError

    cfg = make_config(tmp_path)
    run = RunDir("cope", "r1", root=tmp_path / "runs")
    run.save_config(cfg)
    run_experiment(cfg, run, _scripted())
    changed = make_config(tmp_path, budget_usd=0.001)
    changed.methods[3]["stages"][0]["threshold"] = 0.5
    changed.models[1]["base_url"] = "http://elsewhere/v1"
    resumed = RunDir("cope", "r1", root=tmp_path / "runs", resume=True)
    with pytest.raises(ConfigError) as info:
        run_experiment(changed, resumed, _scripted())
    text = str(info.value)
    for key in ("budget_usd", "methods.3.stages.0.threshold", "models.1.base_url"):
        assert key in text
    assert "--run-name" in text
    assert len(run.read_log(PROBLEMS_FILE)) == 6  # nothing was appended
    # threads only change speed: allowed
    check_resume(resumed, make_config(tmp_path, threads=3))
    # the same settings over a task file whose content changed: refused
    data = {"sha256": "a" * 64}
    run.write_json("data.json", data)
    with pytest.raises(ConfigError, match="task file content"):
        check_resume(resumed, cfg, {"sha256": "b" * 64})


def test_report_rebuilds_from_a_copied_run_folder_and_leaves_latest_alone(tmp_path):
    import shutil

    cfg = make_config(tmp_path)
    run = RunDir("cope", "r1", root=tmp_path / "runs")
    run.save_config(cfg)
    run_experiment(cfg, run, {"small": ScriptedBackend(small_responder),
                              "large": ScriptedBackend(large_responder)})
    first = build_report(run.path).read_text()
    RunDir("cope", "r2", root=tmp_path / "runs")  # latest -> r2
    copy = tmp_path / "pkg" / "results" / "cpu"  # not <root>/cope/<run>
    shutil.copytree(run.path, copy)
    (copy / "report.md").unlink()
    assert build_report(copy).read_text() == first
    assert (copy / "figures" / "accuracy_vs_cost.png").stat().st_size > 1000
    assert (tmp_path / "runs" / "cope" / "latest").readlink().name == "r2"
