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
    for fig in ("shots.png", "curves.png", "maps_brick.png", "maps_grass.png"):
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


def _small_mvtec(tmp_path):
    root = tmp_path / "mvtec"
    make_synthetic_mvtec(root, categories=("brick",), n_train=5, n_test_good=1, n_test_defect=1,
                         image_size=32)
    base = ["reproduce", "--scale", "smoke", "--out", str(tmp_path / "runs"),
            "--set", "data.kind=mvtec", "--set", "data.categories=[brick]",
            "--set", f"data.root={root}"]
    return root, base


def _no_models(monkeypatch):
    """Building a model fails loudly: the data checks must come first."""
    import clipfusion.experiments

    def refuse(*args, **kwargs):
        raise AssertionError("the models were built before the data was checked")

    monkeypatch.setattr(clipfusion.experiments.Pipeline, "__init__", refuse)


def test_a_test_set_of_only_good_images_is_an_error_naming_the_category(capsys, tmp_path,
                                                                        monkeypatch):
    import shutil

    root, base = _small_mvtec(tmp_path)
    for defect in ("blend", "scratch", "hole"):
        shutil.rmtree(root / "brick" / "test" / defect)
    _no_models(monkeypatch)
    err = _error(capsys, [*base, "--run-name", "g"])
    assert "category 'brick'" in err and "no anomalous image" in err


def test_a_truncated_png_fails_before_the_models_are_built(capsys, tmp_path, monkeypatch):
    root, base = _small_mvtec(tmp_path)
    png = root / "brick" / "test" / "scratch" / "000.png"
    png.write_bytes(png.read_bytes()[:-30])  # cut inside the last chunks
    _no_models(monkeypatch)
    err = _error(capsys, [*base, "--run-name", "t"])
    assert "cannot decode image" in err and "scratch/000.png" in err


def test_visa_split_script_layout_masks_named_like_the_image(tmp_path):
    """VisA converted by its split script: MVTec layout, defect folder "bad", masks
    ground_truth/bad/<stem>.png with values 0/255; run end to end."""
    import shutil

    root, base = _small_mvtec(tmp_path)
    cat = root / "brick"
    (cat / "test" / "bad").mkdir()
    (cat / "ground_truth" / "bad").mkdir()
    for i, defect in enumerate(("blend", "scratch", "hole")):
        shutil.move(cat / "test" / defect / "000.png", cat / "test" / "bad" / f"{i:03d}.png")
        shutil.move(cat / "ground_truth" / defect / "000_mask.png",
                    cat / "ground_truth" / "bad" / f"{i:03d}.png")
        shutil.rmtree(cat / "test" / defect)
        shutil.rmtree(cat / "ground_truth" / defect)
    assert main([*base, "--run-name", "v", "--shots", "0,1", "--seeds", "0"]) == 0
    result = json.loads((tmp_path / "runs" / "clipfusion" / "v" / "results" / "brick.json")
                        .read_text())
    assert result["n_anomalous"] == 3 and result["n_test"] == 4
