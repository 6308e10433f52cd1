import json
import re

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


def test_resume_of_a_missing_run_is_a_clear_error(tmp_path, capsys):
    assert main(["reproduce", "--out", str(tmp_path), "--run-name", "nope", "--resume"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_paper_config_parses_and_describes_the_400m_setting():
    cfg = load("paper")
    assert (cfg.model.n_layer, cfg.model.d_model, cfg.model.n_head) == (24, 1024, 16)
    assert cfg.data.source.startswith("hf:") and cfg.data.tokenizer != "bytes"
    assert any(abs(lr - 2e-3) < 1e-12 for lr in cfg.sweep.lrs)
    with pytest.raises(ConfigError):
        load("huge")
