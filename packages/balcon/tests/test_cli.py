import json

import pytest

from balcon.cli import main
from reprokit.runs import iter_jsonl


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["reproduce", "--scale", "smoke", "--out", str(out), "--run-name", "s"]) == 0
    return out / "balcon" / "s"


def test_smoke_reproduce_writes_a_complete_report(smoke_run):
    report = (smoke_run / "report.md").read_text()
    assert report.startswith("# balcon")
    claims = report.split("## Claims")[1].split("## Setting")[0]
    rows = [line for line in claims.splitlines() if line.startswith("| ") and "Claim" not in line]
    assert len(rows) == 9
    assert all(any(f"**{v}**" in row for v in ("holds", "does not hold", "inconclusive"))
               for row in rows)
    for section in ("## Setting", "## 1. (α, λ) grid", "## 2. Balanced loss", "## 3. Prototype",
                    "## Limits"):
        assert section in report
    for fig in ("grid_heatmap", "loss_curves", "longtail", "bias"):
        path = smoke_run / "figures" / f"{fig}.png"
        assert path.stat().st_size > 1000 and f"figures/{fig}.png" in report
    records = list(iter_jsonl(smoke_run / "metrics.jsonl"))
    # smoke: 2×2 grid × 2 seeds, 2 data × 2 losses × 1 seed, 1 extra strength × 2 seeds
    assert len(records) == 8 + 4 + 2
    assert all(0 <= r["linear_acc"] <= 1 for r in records)
    result = json.loads(next((smoke_run / "results").glob("*.json")).read_text())
    assert set(result["bias"]) == {"1", "1.5"} and len(result["bias"]["1"]["bias"]) == 3


def test_resume_skips_finished_arms_and_rewrites_the_report(smoke_run, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in (smoke_run / "results").glob("*.json")}
    (smoke_run / "report.md").unlink()
    out = str(smoke_run.parent.parent)
    assert main(["reproduce", "--scale", "smoke", "--out", out, "--run-name", "s",
                 "--resume"]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in (smoke_run / "results").glob("*.json")}
    assert after == before
    assert "resuming: 14 finished arm(s)" in capsys.readouterr().err
    assert (smoke_run / "report.md").exists()


def test_bad_input_is_a_one_line_error(tmp_path, capsys):
    assert main(["reproduce", "--scale", "smoke", "--out", str(tmp_path),
                 "--set", "data.name=mnist"]) == 2
    assert "data.name must be one of" in capsys.readouterr().err
    assert main(["reproduce", "--scale", "smoke", "--out", str(tmp_path),
                 "--set", "train.batchsize=3"]) == 2
    assert "unknown key" in capsys.readouterr().err
    assert main(["reproduce", "--scale", "smoke", "--out", str(tmp_path), "--resume",
                 "--run-name", "nothing-here"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["reproduce", "--scale", "smoke", "--out", str(tmp_path), "--seeds", "a,b"]) == 2
    assert "--seeds" in capsys.readouterr().err


def test_missing_cifar_folder_names_it(tmp_path, capsys):
    code = main(["reproduce", "--scale", "paper", "--out", str(tmp_path), "--accelerator", "cpu",
                 "--set", f"data.root={tmp_path / 'nowhere'}"])
    assert code == 2
    assert "nowhere" in capsys.readouterr().err


def test_folder_data_runs_the_paper_code_path(tmp_path):
    """ImageNet-LT layout (split files + per-image transforms + MultiViewDataset), tiny."""
    from PIL import Image

    rng = __import__("random").Random(0)
    for split, per_class in (("train", (6, 4, 3)), ("test", (3, 3, 3))):
        lines = []
        for label, n in enumerate(per_class):
            for j in range(n):
                rel = f"{split}/n{label}/{j}.png"
                (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
                colour = tuple(rng.randrange(256) for _ in range(3))
                Image.new("RGB", (20, 20), colour).save(tmp_path / rel)
                lines.append(f"{rel} {label}\n")
        (tmp_path / f"{split}.txt").write_text("".join(lines))
    out = tmp_path / "runs"
    args = ["reproduce", "--scale", "smoke", "--out", str(out), "--run-name", "lt",
            "--accelerator", "cpu", "--set", "data.name=imagenet_lt",
            "--set", f"data.root={tmp_path}", "--set", "data.train_split_file=train.txt",
            "--set", "data.test_split_file=test.txt", "--set", "data.image_size=16",
            "--set", "model.backbone=digits_cnn", "--set", "model.backbone_kwargs={width: 4}",
            "--set", "train.batch_size=4", "--set", "train.steps=2",
            "--set", "grid.alphas=[1.0]", "--set", "grid.lambdas=[1.0]",
            "--set", "experiments=[grid,bias]", "--set", "bias.train_strengths=[1.0]",
            "--set", "bias.strengths=[1.0]", "--set", "bias.views=[1,2]",
            "--set", "eval.knn_k=3", "--seeds", "0"]
    assert main(args) == 0
    run = out / "balcon" / "lt"
    (result,) = [json.loads(p.read_text()) for p in (run / "results").glob("*.json")]
    assert 0 <= result["linear_acc"] <= 1 and result["bias"]["1"]["views"] == [1, 2]
    assert "## Claims" in (run / "report.md").read_text()
