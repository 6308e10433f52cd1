import json
import re
import shutil

import pytest

from perln.cli import main
from perln.config import DataConfig, load
from perln.data import load_tokens
from reprokit.errors import ConfigError, DatasetError
from reprokit.runs import iter_jsonl


def test_smoke_reproduce_writes_a_complete_report(tmp_path, capsys):
    assert main(["reproduce", "--scale", "smoke", "--out", str(tmp_path), "--run-name", "s",
                 "--accelerator", "cpu"]) == 0
    run = tmp_path / "perln" / "s"
    report_path = run / "report.md"
    assert str(report_path) in capsys.readouterr().out
    report = report_path.read_text()
    assert "## Claims" in report
    rows = [line for line in report.splitlines() if re.match(r"^\| [1-4] \|", line)]
    assert len(rows) == 4
    assert all(re.search(r"\*\*(holds|does not hold|inconclusive)\*\*", r) for r in rows)
    for name in ("variance_growth", "max_abs", "layer_grad_norms", "global_grad_norm",
                 "loss_curves", "variance_over_training"):
        assert (run / "figures" / f"{name}.png").stat().st_size > 1000
        assert f"figures/{name}.png" in report
    for section in ("## Setting", "## Learning-rate sweep", "## Sample from the best model",
                    "## Limits"):
        assert section in report
    records = list(iter_jsonl(run / "metrics.jsonl"))
    assert len([r for r in records if r["event"] == "arm_finished"]) == 12
    arms = list((run / "arms").glob("*.json"))
    assert len(arms) == 12
    result = json.loads(arms[0].read_text())
    assert len(result["history"]["loss"]) == result["steps"]
    # a finished run resumes to a rewritten report and trains nothing
    report_path.unlink()
    assert main(["reproduce", "--scale", "smoke", "--out", str(tmp_path), "--run-name", "s",
                 "--resume"]) == 0
    assert report_path.exists()
    records = list(iter_jsonl(run / "metrics.jsonl"))
    assert len([r for r in records if r["event"] == "arm_finished"]) == 12  # nothing retrained
    assert len([r for r in records if r["event"] == "session_finished"]) == 2


@pytest.mark.parametrize("setting, words", [
    ("sweep.placements=[pre,middle]", "unknown placement 'middle'"),
    ("model.n_head=3", "not divisible"),
    ("sweep.contrast_lr=0.5", "contrast_lr"),
    ("train.stepz=3", "unknown key"),
])
def test_bad_configuration_stops_with_a_clear_message(tmp_path, capsys, setting, words):
    code = main(["reproduce", "--scale", "smoke", "--out", str(tmp_path), "--set", setting])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and words in err
    assert not (tmp_path / "perln").exists() or not any((tmp_path / "perln").iterdir())


def test_empty_corpus_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "empty.txt").write_text("   \n")
    with pytest.raises(DatasetError, match="no non-empty text"):
        load_tokens(DataConfig(source=str(tmp_path / "corpus")))
    code = main(["reproduce", "--scale", "smoke", "--out", str(tmp_path / "runs"),
                 "--set", f"data.source={tmp_path / 'corpus'}"])
    assert code == 2 and "no non-empty text" in capsys.readouterr().err


def test_a_failed_start_leaves_no_run_folder_and_keeps_latest(tmp_path, capsys):
    root = tmp_path / "runs"
    assert main(["reproduce", "--scale", "smoke", "--out", str(root), "--run-name", "good",
                 "--set", "sweep.placements=[pre,peri]", "--set", "sweep.lrs=[2e-2]",
                 "--seeds", "0", "--set", "train.steps=4", "--set", "sweep.sample_tokens=0"]) == 0
    latest = root / "perln" / "latest"
    assert latest.is_symlink() and latest.resolve() == (root / "perln" / "good").resolve()
    capsys.readouterr()
    missing = tmp_path / "no-such-corpus.txt"
    code = main(["reproduce", "--scale", "smoke", "--out", str(root), "--run-name", "bad",
                 "--set", f"data.source={missing}"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and str(missing) in err and "does not exist" in err
    assert not (root / "perln" / "bad").exists()
    assert latest.resolve() == (root / "perln" / "good").resolve()
    # a copy of a run folder (as in results/cpu) rebuilds its report anywhere, latest untouched
    copy = tmp_path / "results" / "cpu"
    shutil.copytree(root / "perln" / "good", copy, ignore=shutil.ignore_patterns("checkpoints"))
    (copy / "report.md").unlink()
    assert main(["report", "--path", str(copy)]) == 0
    assert "## Claims" in (copy / "report.md").read_text()
    assert latest.resolve() == (root / "perln" / "good").resolve()
    assert not (tmp_path / "results" / "latest").exists()


def test_readme_lr_override_in_scientific_notation_parses():
    # YAML reads 1e-2 (no dot) as a string; the README's own example must still work
    cfg = load("smoke", ["sweep.lrs=[1e-2,1e-1]", "sweep.contrast_lr=1e-1"])
    assert cfg.sweep.lrs == [0.01, 0.1] and cfg.sweep.contrast_lr == 0.1


def test_fsdp_on_cpu_is_refused_before_any_folder(tmp_path, capsys):
    code = main(["reproduce", "--scale", "smoke", "--out", str(tmp_path), "--accelerator", "cpu",
                 "--set", "train.strategy=fsdp"])
    assert code == 2
    err = capsys.readouterr().err
    assert "train.strategy=fsdp needs CUDA GPUs" in err and "train.strategy=ddp" in err
    assert not (tmp_path / "perln").exists()


def test_paper_scale_offline_fails_at_once_naming_the_dataset(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    code = main(["reproduce", "--scale", "paper", "--out", str(tmp_path), "--accelerator", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert "mlfoundations/dclm-baseline-1.0" in err and "offline" in err
    assert "data.source=stdlib" in err  # the offline alternative, as a perln option
    assert not (tmp_path / "perln").exists()


def test_resume_of_a_missing_run_is_a_clear_error(tmp_path, capsys):
    assert main(["reproduce", "--out", str(tmp_path), "--run-name", "nope", "--resume"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_paper_config_parses_and_describes_the_400m_setting():
    cfg = load("paper")
    assert (cfg.model.n_layer, cfg.model.d_model, cfg.model.n_head) == (24, 1024, 16)
    assert cfg.data.source.startswith("hf:") and cfg.data.tokenizer != "bytes"
    assert any(abs(lr - 2e-3) < 1e-12 for lr in cfg.sweep.lrs)
    assert cfg.sweep.placements == ["pre", "peri", "post"] and len(cfg.sweep.seeds) == 5
    assert cfg.lrs_of("post") != cfg.lrs_of("pre")  # post has its own (lower) grid
    assert cfg.data.val_source == "hf:allenai/c4:en" and cfg.data.val_split == "validation"
    assert "dclm" in cfg.data.source
    with pytest.raises(ConfigError):
        load("huge")
