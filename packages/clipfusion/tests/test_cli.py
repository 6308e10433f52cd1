"""Smoke reproduce end to end, resume, and clear errors for bad input."""

import json
import re

import pytest
from PIL import Image

from clipfusion.cli import main
from reprokit.data.anomaly import make_synthetic_mvtec
from reprokit.runs import iter_jsonl


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["reproduce", "--scale", "smoke", "--out", str(out), "--run-name", "t"]) == 0
    return out / "clipfusion" / "t"


def test_smoke_reproduce_writes_a_complete_report(smoke_run):
    report = (smoke_run / "report.md").read_text()
    assert report.startswith("# CLIPFusion")
    assert "## Claims" in report.split("## Setting")[0]  # the claims table comes first
    verdicts = re.findall(r"\*\*(holds|does not hold|inconclusive)\*\*", report)
    assert len(verdicts) >= 5
    assert "RANDOMLY INITIALISED" in report and "random init" in report
    for fig in ("shots.png", "roc.png", "maps_brick.png", "maps_grass.png"):
        assert (smoke_run / "figures" / fig).stat().st_size > 1000
        assert f"figures/{fig}" in report
    records = list(iter_jsonl(smoke_run / "metrics.jsonl"))
    arms = {(r["shots"], r["arm"]) for r in records}
    assert {(0, "fused"), (0, "clip"), (0, "diff"), (2, "fused"), (2, "diff_V")} <= arms
    for r in records:
        assert 0.0 <= r["pixel_auroc"] <= 1.0 and 0.0 <= r["pixel_aupro"] <= 1.0
    result = json.loads((smoke_run / "results" / "brick.json").read_text())
    assert result["n_anomalous"] == 3 and result["timing"]["images"] > 0
    assert json.loads((smoke_run / "environment.json").read_text())["packages"]["torch"]


def test_resume_of_a_finished_run_only_rewrites_the_report(smoke_run):
    before = len(list(iter_jsonl(smoke_run / "metrics.jsonl")))
    (smoke_run / "report.md").unlink()
    assert main(["reproduce", "--scale", "smoke", "--out", str(smoke_run.parent.parent),
                 "--run-name", "t", "--resume"]) == 0
    assert (smoke_run / "report.md").is_file()
    assert len(list(iter_jsonl(smoke_run / "metrics.jsonl"))) == before


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    return err


def test_bad_options_fail_clearly(capsys, tmp_path):
    out = ["--out", str(tmp_path)]
    assert "--shots" in _error(capsys, ["reproduce", "--scale", "smoke", "--shots", "a,b", *out])
    assert "unknown key" in _error(capsys, ["reproduce", "--scale", "smoke",
                                            "--set", "fusion.alpa=0.3", *out])
    assert "fusion.alpha" in _error(capsys, ["reproduce", "--scale", "smoke",
                                             "--set", "fusion.alpha=2", *out])


def test_malformed_dataset_fails_clearly(capsys, tmp_path):
    root = tmp_path / "mvtec"
    make_synthetic_mvtec(root, categories=("brick",), n_train=2, n_test_good=1, n_test_defect=1,
                         image_size=32)
    base = ["reproduce", "--scale", "smoke", "--out", str(tmp_path / "runs"),
            "--set", "data.kind=mvtec", "--set", "data.categories=[brick]"]
    err = _error(capsys, [*base, "--run-name", "a", "--set", f"data.root={tmp_path / 'none'}"])
    assert "does not exist" in err
    err = _error(capsys, [*base, "--run-name", "b", "--set", f"data.root={root}",
                          "--set", "data.categories=[bottle]"])
    assert "unknown category 'bottle'" in err and "brick" in err
    Image.new("L", (40, 32)).save(root / "brick" / "ground_truth" / "hole" / "000_mask.png")
    err = _error(capsys, [*base, "--run-name", "c", "--set", f"data.root={root}"])
    assert "000_mask.png is 40x32" in err
    (root / "brick" / "ground_truth" / "hole" / "000_mask.png").unlink()
    err = _error(capsys, [*base, "--run-name", "d", "--set", f"data.root={root}"])
    assert "has no mask" in err and "000_mask.png" in err
