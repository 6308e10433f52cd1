import json
import math
from dataclasses import dataclass

import pytest

from reprokit.errors import ConfigError
from reprokit.runs import RunDir, iter_jsonl


@dataclass
class Cfg:
    lr: float = 0.1


def test_run_directory_layout(tmp_path):
    run = RunDir("perln", "cpu-1", root=tmp_path)
    assert run.path == tmp_path / "perln" / "cpu-1"
    assert run.figures.is_dir() and run.checkpoints.is_dir()
    assert (tmp_path / "perln" / "latest").resolve() == run.path.resolve()
    run.save_config(Cfg())
    assert "lr: 0.1" in (run.path / "config.yaml").read_text()
    run.save_environment()
    assert "packages" in json.loads((run.path / "environment.json").read_text())
    assert run.figure_path("loss") == run.figures / "loss.png"


def test_existing_run_needs_resume(tmp_path):
    RunDir("p", "r", root=tmp_path).log({"a": 1})
    with pytest.raises(ConfigError, match="--resume"):
        RunDir("p", "r", root=tmp_path)
    again = RunDir("p", "r", root=tmp_path, resume=True)
    assert again.read_log() == [{"a": 1}]
    with pytest.raises(ConfigError, match="does not exist"):
        RunDir("p", "missing", root=tmp_path, resume=True)


def test_metrics_keep_non_finite_values_and_survive_truncation(tmp_path):
    run = RunDir("p", "r", root=tmp_path)
    run.log({"step": 1, "loss": float("nan"), "max": float("inf")})
    run.log({"step": 2, "loss": 1.5})
    with open(run.path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 3, "lo')  # a writer killed mid-line
    records = run.read_log()
    assert [r["step"] for r in records] == [1, 2]
    assert math.isnan(records[0]["loss"]) and records[0]["max"] == math.inf
    assert list(iter_jsonl(tmp_path / "nothing.jsonl")) == []


def test_json_results_round_trip(tmp_path):
    run = RunDir("p", "r", root=tmp_path)
    run.write_json("arm.json", {"loss": [1.0, float("nan")]})
    out = run.read_json("arm.json")
    assert out["loss"][0] == 1.0 and math.isnan(out["loss"][1])
    assert not list(run.path.glob("*.tmp"))


def test_read_json_without_reopening_the_run(tmp_path):
    from reprokit.runs import read_json

    run = RunDir("p", "r", root=tmp_path)
    run.write_json("a.json", {"x": float("-inf")})
    assert read_json(run.path / "a.json") == {"x": float("-inf")}


def test_run_view_reads_rank0s_run_and_creates_nothing(tmp_path):
    from reprokit.runs import RunView

    run = RunDir("pkg", "a", root=tmp_path)
    run.write_json("results.json", {"x": 1})
    RunDir("pkg", "b", root=tmp_path)  # `latest` now points at b
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    view = RunView(tmp_path / "pkg" / "a")
    assert view.read_json("results.json") == {"x": 1}
    assert view.checkpoints == run.checkpoints
    RunView(tmp_path / "pkg" / "never-made")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "pkg" / "latest").resolve().name == "b"
    assert not hasattr(view, "write_json") and not hasattr(view, "log")
