import json

import pytest
import torch

import perln.module
from perln.config import load
from perln.data import load_tokens, save_tokens
from perln.experiments import Arm, run_arm


class Killed(Exception):
    pass


def test_resume_continues_a_killed_arm_to_the_same_result(tmp_path, monkeypatch):
    cfg = load("smoke", ["train.steps=12", "train.checkpoint_every=5", "probe.every=4"])
    straight, killed = tmp_path / "perln" / "straight", tmp_path / "perln" / "killed"
    for path in (straight, killed):
        path.mkdir(parents=True)
    train, val, _ = load_tokens(cfg.data)
    tokens = tmp_path / "tokens.pt"
    save_tokens(tokens, train, val)
    arm = Arm("peri", 2e-2, 0)
    run_arm(cfg, arm, straight, tokens, "cpu", 1, 1)

    save = perln.module.PeriodicCheckpoint.on_train_batch_end

    def save_then_die(self, trainer, *args):
        save(self, trainer, *args)
        if trainer.global_step == 8:  # after the checkpoint at step 5
            raise Killed

    monkeypatch.setattr(perln.module.PeriodicCheckpoint, "on_train_batch_end", save_then_die)
    with pytest.raises(Killed):
        run_arm(cfg, arm, killed, tokens, "cpu", 1, 1)
    assert (killed / "checkpoints" / arm.name / "last.ckpt").exists()
    assert not (killed / "arms" / f"{arm.name}.json").exists()
    monkeypatch.setattr(perln.module.PeriodicCheckpoint, "on_train_batch_end", save)
    summary = run_arm(cfg, arm, killed, tokens, "cpu", 1, 1)
    assert summary["resumed_from"] == 5

    a = json.loads((straight / "arms" / f"{arm.name}.json").read_text())["history"]
    b = json.loads((killed / "arms" / f"{arm.name}.json").read_text())["history"]
    assert a["step"] == b["step"] == list(range(12))
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
    assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-6)
    assert [p["step"] for p in b["probes"]] == [p["step"] for p in a["probes"]]
    wa = torch.load(straight / "checkpoints" / arm.name / "final.pt")
    wb = torch.load(killed / "checkpoints" / arm.name / "final.pt")
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-6, atol=1e-7)
    assert not (killed / "checkpoints" / arm.name / "last.ckpt").exists()
