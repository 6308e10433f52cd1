"""DDP on CPU (gloo, 2 processes through Lightning's launcher), end to end through the CLI.

Lightning's DDP launcher re-runs the command line for rank 1, so the CLI is run as a
subprocess of a small driver script (written here) that adds instrumentation to every rank:
it records the batches each rank drew, logs any write a rank > 0 makes under the run folder
(an audit hook plus torch.save), and can kill every rank right after a checkpoint.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from reprokit.runs import iter_jsonl

pytestmark = pytest.mark.ddp

DRIVER = textwrap.dedent('''
    import hashlib, json, os, sys
    from pathlib import Path

    import torch

    import perln.data, perln.module
    from perln.cli import main

    RUN = Path(os.environ["T_RUN"]).resolve()
    SIDE = Path(os.environ["T_SIDE"])
    LAUNCHED = int(os.environ.get("LOCAL_RANK", "0"))  # > 0: started by Lightning's launcher

    def note(name, record):
        with open(SIDE / name, "a") as f:
            f.write(json.dumps(record) + "\\n")

    if LAUNCHED:  # every write a child rank makes under the run folder
        def audit(event, args):
            path = None
            if event == "open" and args[1] is not None and any(c in str(args[1]) for c in "wax+"):
                path = args[0]
            elif event in ("os.rename", "os.remove", "os.mkdir", "os.symlink", "os.unlink"):
                path = args[0] if event != "os.symlink" else args[1]
            if isinstance(path, (str, bytes, os.PathLike)) and not isinstance(path, int):
                p = Path(os.fsdecode(path)).resolve()
                if p.is_relative_to(RUN):
                    note(f"writes-{LAUNCHED}.jsonl", [event, str(p)])
        sys.addaudithook(audit)
        save = torch.save
        def logged_save(obj, f, *a, **k):
            if isinstance(f, (str, os.PathLike)) and Path(f).resolve().is_relative_to(RUN):
                note(f"writes-{LAUNCHED}.jsonl", ["torch.save", str(f)])
            return save(obj, f, *a, **k)
        torch.save = logged_save

    draws = perln.data.StepBatches.__iter__
    def recorded(self):
        rank, world = perln.data._rank()
        for i, (x, y) in enumerate(draws(self)):
            if i < 3:
                note(f"batches-{rank}.jsonl", {"seed": self.seed, "micro_step": i,
                     "world": world, "sha": hashlib.sha1(x.numpy().tobytes()).hexdigest()})
            yield x, y
    perln.data.StepBatches.__iter__ = recorded

    die_arm, die_step = os.environ.get("T_DIE_ARM"), int(os.environ.get("T_DIE_STEP", "-1"))
    checkpoint = perln.module.PeriodicCheckpoint.on_train_batch_end
    def checkpoint_then_die(self, trainer, *args):
        checkpoint(self, trainer, *args)
        if self.path.parent.name == die_arm and trainer.global_step == die_step:
            os._exit(17)  # every rank, as if the job were killed
    perln.module.PeriodicCheckpoint.on_train_batch_end = checkpoint_then_die

    sys.exit(main(sys.argv[1:]))
''')

ARMS = ["pre-lr0.02-seed0", "peri-lr0.02-seed0"]
SMALL = ["--scale", "smoke", "--accelerator", "cpu", "--seeds", "0",
         "--set", "sweep.placements=[pre,peri]", "--set", "sweep.lrs=[2e-2]",
         "--set", "sweep.sample_tokens=0", "--set", "train.steps=12",
         "--set", "train.checkpoint_every=5"]


def perln(tmp_path: Path, name: str, *extra: str, devices: int = 2, side: str = "",
          env: dict | None = None) -> tuple[int, Path, Path]:
    """Run the CLI through the driver; (exit code, run folder, side folder)."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    run = tmp_path / "runs" / "perln" / name
    side_dir = tmp_path / "side" / (side or name)
    side_dir.mkdir(parents=True, exist_ok=True)
    strategy = ["--set", "train.strategy=ddp"] if devices > 1 else []
    cmd = [sys.executable, str(driver), "reproduce", "--out", str(tmp_path / "runs"),
           "--run-name", name, "--devices", str(devices), *extra]
    if "--resume" not in extra:
        cmd += SMALL + strategy
    full_env = {**os.environ, "T_RUN": str(run), "T_SIDE": str(side_dir),
                "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                **(env or {})}
    full_env.pop("LOCAL_RANK", None)
    full_env.pop("PERLN_RUN_NAME", None)
    proc = subprocess.Popen(cmd, env=full_env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher's children are in its group
        out, _ = proc.communicate()
        pytest.fail(f"perln hung under DDP:\n{out[-3000:]}")
    if proc.returncode not in (0, 17):
        pytest.fail(f"perln exited {proc.returncode}:\n{out[-3000:]}")
    return proc.returncode, run, side_dir


def history(run: Path, arm: str) -> dict:
    return json.loads((run / "arms" / f"{arm}.json").read_text())["history"]


def jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_ddp_on_cpu_matches_one_process_writes_once_and_resumes(tmp_path):
    code, ddp, side = perln(tmp_path, "ddp")
    assert code == 0

    # the two ranks drew different batches, each a function of (seed, micro-step, rank)
    by_rank = {r: jsonl(side / f"batches-{r}.jsonl") for r in (0, 1)}
    assert by_rank[0] and by_rank[1] and all(b["world"] == 2 for b in by_rank[0] + by_rank[1])
    first = {r: [b["sha"] for b in by_rank[r] if b["micro_step"] == 0] for r in (0, 1)}
    assert first[0] and first[1] and not set(first[0]) & set(first[1])

    # only rank 0 wrote under the run folder
    assert jsonl(side / "writes-1.jsonl") == []

    # metrics.jsonl: each arm once, no duplicated line
    lines = (ddp / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines))
    events = Counter(json.loads(line)["event"] for line in lines)
    assert events["arm_finished"] == len(ARMS) and events["session_finished"] == 1

    # one process with the same global batch (2 micro-batches per step) trains the same model
    code, single, side1 = perln(tmp_path, "one", "--set", "train.accumulate=2", devices=1)
    assert code == 0
    drawn = jsonl(side1 / "batches-0.jsonl")
    assert all(b["world"] == 1 for b in drawn)
    # micro-step m of rank r is global micro-batch 2m + r: rank 0's and rank 1's first
    # batches are the single process's first and second
    assert {b["sha"] for b in drawn if b["micro_step"] == 0} == set(first[0])
    assert {b["sha"] for b in drawn if b["micro_step"] == 1} == set(first[1])
    for arm in ARMS:
        a, b = history(ddp, arm), history(single, arm)
        assert a["step"] == b["step"] == list(range(12))
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert [e["val_loss"] for e in a["evals"]] == pytest.approx(
            [e["val_loss"] for e in b["evals"]], rel=1e-4)

    # kill every rank in the second arm after its step-5 checkpoint, then --resume under DDP
    code, killed, _ = perln(tmp_path, "killed", env={"T_DIE_ARM": ARMS[1], "T_DIE_STEP": "8"})
    assert code == 17
    assert (killed / "arms" / f"{ARMS[0]}.json").exists()
    assert not (killed / "arms" / f"{ARMS[1]}.json").exists()
    assert (killed / "checkpoints" / ARMS[1] / "last.ckpt").exists()
    code, resumed, side2 = perln(tmp_path, "killed", "--resume", side="resumed")
    assert code == 0 and resumed == killed
    assert jsonl(side2 / "writes-1.jsonl") == []
    summary = json.loads((killed / "arms" / f"{ARMS[1]}.json").read_text())
    assert summary["resumed_from"] == 5
    for arm in ARMS:
        a, b = history(ddp, arm), history(killed, arm)
        assert b["step"] == list(range(12))
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-6)
    records = list(iter_jsonl(killed / "metrics.jsonl"))
    assert Counter(r["arm"] for r in records if r["event"] == "arm_finished") == \
        Counter(ARMS)
