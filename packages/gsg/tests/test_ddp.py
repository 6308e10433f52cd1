"""``gsg reproduce --devices 2`` on CPU: two real processes (Fabric DDP over gloo).

Fabric's DDP launcher re-runs the command line once per extra rank, so the run is started
as a subprocess of this very file: run as a script (``__main__`` below) it instruments the
process and then calls ``gsg.cli.main``, and the relaunched rank runs the same instrumentation.
It records, per rank and outside the run folder:

- ``batches-<rank>.jsonl``: a hash of every image of every training batch, per step;
- ``writes-<rank>.txt``: every file opened for writing, created, renamed or removed under
  the runs root (a ``sys.addaudithook`` hook, so nothing gsg does can bypass it);
- ``params-<rank>.json``: a hash of the trained weights of each arm;

and, with ``GSG_DDP_KILL_AFTER_EPOCH=k``, SIGKILLs the whole run (every rank) right after
rank 0 renamed the epoch-k checkpoint into place: a crash, not a clean exit.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ARM_ARGS = [
    "--scale", "smoke", "--seeds", "0", "--accelerator", "cpu", "--threads", "1",
    "--set", "experiments.methods=[byol_gsg]",       # EMA target + GSG partners under DDP
    "--set", "experiments.collapse=false", "--set", "experiments.batch_sizes=[]",
    "--set", "experiments.equal_compute=false",
    "--set", "train.epochs=2", "--set", "train.checkpoint_every=1",
]
PER_DEVICE_BATCH = 128


def _row_hashes(batch) -> list[str]:
    import torch

    x = batch
    while isinstance(x, (list, tuple)):   # (images, labels) or a list of views: the first
        x = x[0]
    assert isinstance(x, torch.Tensor)
    return [hashlib.sha1(row.numpy().tobytes()).hexdigest()[:16]
            for row in x.detach().cpu().contiguous()]


def _weights_hash(module) -> str:
    """Parameters only: BatchNorm's running statistics are each rank's own (DDP broadcasts
    rank 0's buffers before every forward, so the last step's update differs)."""
    h = hashlib.sha1()
    for name, t in sorted(module.named_parameters()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _record_batches(log, rank: int):
    """Wrap SSLTraining.train_step so that every step appends its batch's image hashes."""
    from gsg.module import SSLTraining

    real = SSLTraining.train_step

    def train_step(self, batch):
        lrs = [g["lr"] for g in self.optimizer.param_groups]  # this step's update
        log.write(json.dumps({"rank": rank, "epoch": self.epoch, "step": self.step, "lr": lrs,
                              "rows": _row_hashes(batch)}) + "\n")
        return real(self, batch)

    SSLTraining.train_step = train_step
    return real


def _driver(argv: list[str]) -> int:
    """The instrumented ``gsg`` command (both ranks run this)."""
    log_dir = Path(os.environ["GSG_DDP_LOG"])
    root = os.path.realpath(os.environ["GSG_DDP_ROOT"])
    rank = int(os.environ.get("LOCAL_RANK", "0"))   # Fabric sets it for the relaunched ranks
    writes = open(log_dir / f"writes-{rank}.txt", "a", buffering=1)  # noqa: SIM115 (opened before the hook)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def under_root(path) -> str | None:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, (str, os.PathLike)):
            return None
        path = os.path.abspath(os.fspath(path))   # the link itself, not its target
        full = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        return full if full == root or full.startswith(root + os.sep) else None

    def audit(event: str, args: tuple) -> None:
        paths = []
        if event == "open":
            path, mode, flags = args
            if (mode is not None and any(c in mode for c in "wax+")) or (
                    mode is None and isinstance(flags, int) and flags & write_flags):
                paths = [path]
        elif event in ("os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.symlink",
                       "shutil.rmtree", "os.truncate"):
            paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
        for p in paths:
            full = under_root(p)
            if full is not None:
                writes.write(f"{event} {full}\n")

    import gsg.experiments as experiments
    from gsg.cli import main

    batches = open(log_dir / f"batches-{rank}.jsonl", "a", buffering=1)  # noqa: SIM115
    _record_batches(batches, rank)

    real_train_arm = experiments.train_arm

    def train_arm(cfg, arm, *args, **kwargs):
        training, result = real_train_arm(cfg, arm, *args, **kwargs)
        (log_dir / f"params-{rank}.json").write_text(json.dumps(
            {"arm": arm.key, "weights": _weights_hash(training.module), "steps": result["steps"]}))
        return training, result

    experiments.train_arm = train_arm
    kill_after = int(os.environ.get("GSG_DDP_KILL_AFTER_EPOCH", "0"))
    if kill_after:
        from gsg.module import SSLTraining

        real_save = SSLTraining.save

        def save(self, path):
            real_save(self, path)
            if self.fabric.is_global_zero and self.epoch == kill_after:
                assert path.is_file()
                os.killpg(os.getpgid(0), signal.SIGKILL)   # every rank, mid-run

        SSLTraining.save = save
    sys.addaudithook(audit)
    return main(argv)


def _launch(tmp_path: Path, name: str, out: Path, extra: list[str] = (), kill_after: int = 0,
            timeout: float = 300) -> tuple[subprocess.CompletedProcess, Path]:
    log_dir = tmp_path / f"log-{name}"
    log_dir.mkdir()
    env = {**os.environ, "GSG_DDP_LOG": str(log_dir), "GSG_DDP_ROOT": str(out),
           "GSG_DDP_KILL_AFTER_EPOCH": str(kill_after), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    for var in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, __file__, "reproduce", "--out", str(out), "--run-name", "ddp",
           "--devices", "2", "--set", f"train.batch_size={PER_DEVICE_BATCH}", *ARM_ARGS, *extra]
    # a session of its own: the kill takes the run's process group, not pytest
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          start_new_session=True)
    return proc, log_dir


def _steps(log_dir: Path, rank: int) -> list[dict]:
    path = log_dir / f"batches-{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _writes(log_dir: Path, rank: int) -> list[str]:
    path = log_dir / f"writes-{rank}.txt"
    return path.read_text().splitlines() if path.is_file() else []


def _one_process_reference(tmp_path: Path) -> tuple[dict, list[dict]]:
    """The same arm in this process with the global batch (2 × per-device) on 1 device."""
    from gsg import config
    from gsg.experiments import Arm, train_arm
    from reprokit.runtime import setup

    cfg = config.load("smoke", ["train.epochs=2", "train.checkpoint_every=1"])
    log_path = tmp_path / "batches-ref.jsonl"
    with open(log_path, "w", buffering=1) as log:
        from gsg.module import SSLTraining

        real = _record_batches(log, 0)
        try:
            runtime = setup("cpu", threads=1)
            _, result = train_arm(cfg, Arm("byol_gsg", True, 2, 2 * PER_DEVICE_BATCH, 0),
                                  runtime)
        finally:
            SSLTraining.train_step = real
    return result, [json.loads(line) for line in log_path.read_text().splitlines()]


def _comparable(result: dict) -> dict:
    """A result without its timings and resume flag (what must match across runs)."""
    drop = {"train_seconds", "train_cpu_seconds", "images_per_second", "resumed_from_checkpoint"}
    return {k: v for k, v in result.items() if k not in drop}


@pytest.mark.ddp
def test_ddp_two_cpu_processes_shard_sync_write_once_and_resume(tmp_path):
    # ---- an uninterrupted 2-process run
    out_a = tmp_path / "a"
    proc, log_a = _launch(tmp_path, "a", out_a)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_a = out_a / "gsg" / "ddp"
    (key,) = [p.stem for p in (run_a / "results").glob("*.json")]
    result_a = json.loads((run_a / "results" / f"{key}.json").read_text())
    steps0, steps1 = _steps(log_a, 0), _steps(log_a, 1)
    assert len(steps0) == len(steps1) == result_a["steps"] > 0

    # the ranks drew different (disjoint) batches of the per-device size ...
    for s0, s1 in zip(steps0, steps1):
        assert s0["step"] == s1["step"]
        assert len(s0["rows"]) == len(s1["rows"]) == PER_DEVICE_BATCH
        assert not set(s0["rows"]) & set(s1["rows"])
    # ... whose union, step by step, is the 1-process run's batch of the global size
    ref, ref_steps = _one_process_reference(tmp_path)
    assert len(ref_steps) == len(steps0) == ref["steps"]
    for s0, s1, r in zip(steps0, steps1, ref_steps):
        assert s0["rows"] + s1["rows"] == r["rows"]
        # the learning rate follows the global batch (linear scaling) and the sharded
        # loader's schedule length: step for step the 1-process run's
        assert s0["lr"] == s1["lr"] == pytest.approx(r["lr"], rel=1e-9)
    # gradients were averaged: the replicas end with identical weights
    p0 = json.loads((log_a / "params-0.json").read_text())
    p1 = json.loads((log_a / "params-1.json").read_text())
    assert p0 == p1 and p0["steps"] == ref["steps"]
    # consistent with the 1-process run: only batch-local statistics differ (BatchNorm and
    # GSG's partners per 128-image shard, each rank's view draws), so the results stay close
    # (measured on the smoke digits: epoch losses −0.0104/−0.0282 vs −0.0116/−0.0341, kNN
    # 0.298 vs 0.263 on 540 test images; the exact checks above and below are the sharp ones)
    ddp_loss = [h["loss"] for h in result_a["history"]]
    ref_loss = [h["loss"] for h in ref["history"]]
    assert [h["epoch"] for h in result_a["history"]] == [h["epoch"] for h in ref["history"]]
    assert all(abs(a - b) < 0.02 for a, b in zip(ddp_loss, ref_loss)), (ddp_loss, ref_loss)
    assert abs(result_a["final"]["knn"] - ref["final"]["knn"]) < 0.1

    # only rank 0 wrote into the run folder (and the hook did see rank 0's writes)
    assert _writes(log_a, 1) == []
    written = _writes(log_a, 0)
    assert any(w.endswith(f"results/{key}.json") or f"results/{key}.json" in w for w in written)
    assert any("metrics.jsonl" in w for w in written)
    lines = (run_a / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines)) == 1
    assert (run_a / "report.md").is_file()

    # ---- the same run killed (SIGKILL, both ranks) after epoch 1's checkpoint ...
    out_b = tmp_path / "b"
    proc, log_b = _launch(tmp_path, "b", out_b, kill_after=1)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    run_b = out_b / "gsg" / "ddp"
    assert (run_b / "checkpoints" / key / "last.ckpt").is_file()
    assert not list((run_b / "results").glob("*.json"))
    assert _steps(log_b, 0) == [s for s in steps0 if s["epoch"] == 0]
    # ... and resumed under DDP: it continues from the checkpoint with epoch 2's batches and
    # ends exactly where the uninterrupted run did
    proc, log_c = _launch(tmp_path, "c", out_b, extra=["--resume"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result_c = json.loads((run_b / "results" / f"{key}.json").read_text())
    assert result_c["resumed_from_checkpoint"]
    for rank, steps in ((0, steps0), (1, steps1)):
        assert _steps(log_c, rank) == [s for s in steps if s["epoch"] == 1]
    assert _comparable(result_c) == _comparable(result_a)
    assert json.loads((log_c / "params-0.json").read_text())["weights"] == p0["weights"]
    assert _writes(log_c, 1) == []
    lines = (run_b / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines)) == 1


if __name__ == "__main__":
    sys.exit(_driver(sys.argv[1:]))
