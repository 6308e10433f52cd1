import json
import re

import pytest
import torch

from gsg import config
from gsg.cli import main
from gsg.experiments import Arm, plan, train_arm, unique_arms
from gsg.module import SSLModule
from reprokit.runtime import setup

VERDICT = re.compile(r"\*\*(holds|does not hold|inconclusive)\*\*")


def test_smoke_reproduce_writes_a_complete_report_and_resumes(tmp_path, capsys):
    args = ["reproduce", "--scale", "smoke", "--out", str(tmp_path), "--run-name", "t"]
    assert main(args) == 0
    run = tmp_path / "gsg" / "t"
    report = (run / "report.md").read_text()
    assert report.index("## Claims") < report.index("## Setting")
    claims = report[report.index("## Claims"):report.index("## Setting")]
    assert len(VERDICT.findall(claims)) == 6        # 2 × claim 1, claim 2, 3 × claim 3
    assert "without a predictor" in claims and "small batch" in claims
    for name in ("learning_curves", "collapse_curves", "batch_sweep"):
        png = run / "figures" / f"{name}.png"
        assert png.is_file() and png.stat().st_size > 5000
        assert f"figures/{name}.png" in report
    cfg = config.load("smoke")
    arms = unique_arms(plan(cfg))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted(r["arm"] for r in records) == sorted(a.key for a in arms)
    assert all(0 <= r["knn"] <= 1 and 0 <= r["linear"] <= 1 for r in records)
    result = json.loads((run / "results" / f"{arms[0].key}.json").read_text())
    assert result["history"][-1]["epoch"] == arms[0].epochs
    assert result["view_passes"] == result["steps"] * result["batch_size"] * result["n_views"]

    # a finished run resumes without training: every arm is read back, the report rewritten
    (run / "report.md").unlink()
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0
    out = capsys.readouterr().out
    assert out.count("done earlier, read back") == len(arms)
    assert (run / "report.md").read_text() == report


def test_resume_with_another_config_is_refused(tmp_path, capsys):
    args = ["reproduce", "--scale", "smoke", "--out", str(tmp_path), "--run-name", "t",
            "--set", "experiments.collapse=false", "--set", "experiments.batch_sizes=[]",
            "--set", "experiments.equal_compute=false", "--seeds", "0"]
    assert main(args) == 0
    assert main(args[:-1] + ["1", "--resume"]) == 2
    assert "differs" in capsys.readouterr().err


@pytest.mark.parametrize("override,needle", [
    (["data.name=cifar10", "data.root=/nonexistent/cifar"], "/nonexistent/cifar"),
    (["data.name=imagefolder", "data.root=/nonexistent/imagenet"], "/nonexistent/imagenet"),
    (["experiments.batch_sizes=[1]"], "at least 2"),
    (["train.optimizer=adam"], "train.optimizer"),
])
def test_bad_input_is_a_one_line_error(tmp_path, capsys, override, needle):
    args = ["reproduce", "--scale", "smoke", "--out", str(tmp_path)]
    for o in override:
        args += ["--set", o]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and needle in err and "\n" not in err


def test_non_finite_loss_is_recorded_and_stops_the_run(monkeypatch):
    cfg = config.load("smoke")
    real = SSLModule.compute_loss
    calls = []

    def nan_from_the_third_step(self, x):
        calls.append(1)
        loss = real(self, x)
        return loss * float("nan") if len(calls) > 2 else loss

    monkeypatch.setattr(SSLModule, "compute_loss", nan_from_the_third_step)
    runtime = setup("cpu", threads=1)
    training, result = train_arm(cfg, Arm("simsiam_gsg", True, 3, 128, 0), runtime)
    # the run stops at once (27 steps in 3 epochs): two updates, the third step skipped
    assert result["diverged"] and result["nonfinite_step"] == 2
    assert result["steps"] == 2 and len(calls) == 3
    assert all(torch.isfinite(p).all() for p in training.module.parameters())
    # the stopped epoch is recorded with its monitors, and nothing after it
    assert [h["epoch"] for h in result["history"]] == [1]


def test_checkpoint_resume_continues_an_interrupted_arm(tmp_path):
    cfg = config.load("smoke", ["train.checkpoint_every=1"])
    runtime = setup("cpu", threads=1)
    ckpt = tmp_path / "last.ckpt"
    _, first = train_arm(cfg, Arm("byol_gsg", True, 1, 128, 0), runtime, ckpt_path=ckpt)
    assert ckpt.is_file()
    _, resumed = train_arm(cfg, Arm("byol_gsg", True, 2, 128, 0), runtime, ckpt_path=ckpt,
                           resume=True)
    assert resumed["resumed_from_checkpoint"]
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["history"][0] == first["history"][0]
    assert resumed["steps"] == 2 * first["steps"]


def test_arms_in_parallel_processes_give_the_sequential_results(tmp_path):
    from gsg.experiments import run_experiments
    from reprokit.runs import RunDir

    overrides = ["experiments.collapse=false", "experiments.batch_sizes=[]",
                 "experiments.equal_compute=false", "experiments.methods=[simsiam,byol_gsg]",
                 "experiments.seeds=[0]", "train.epochs=1"]
    runtime = setup("cpu", threads=1)
    out = {}
    for workers in (1, 2):
        cfg = config.load("smoke", overrides + [f"experiments.workers={workers}"])
        run = RunDir("gsg", f"w{workers}", root=tmp_path)
        out[workers] = run_experiments(cfg, run, runtime)
    assert sorted(out[1]) == sorted(out[2]) and len(out[1]) == 2
    for key, result in out[1].items():
        assert result["final"] == out[2][key]["final"]      # same numbers from a spawned worker
