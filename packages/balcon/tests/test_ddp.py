"""DDP on CPU (gloo, 2 processes): the path `--devices N` takes on GPUs, run for real.

Lightning's DDP launcher re-runs the command once per extra rank, so every check here starts
real subprocesses: `python -m balcon.cli reproduce --devices 2` for the run folder, and a
small script around `train_arm` for what each rank drew and computed.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

pytestmark = pytest.mark.ddp

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
ENV.pop("BALCON_RUN_PATH", None)

# A toy case where 2 ranks × 16 images and 1 process × 32 images must train identically:
# no BatchNorm (CPU DDP has no SyncBatchNorm, so BN statistics would be per rank) and
# identity views (strength 0: the views' random stream depends on the rank).
TOY = """
import json, sys
import torch
from torch import nn
import balcon.model
import reprokit.backbones as backbones

def toy(in_channels=1):
    return nn.Sequential(nn.Flatten(), nn.Linear(64 * in_channels, 32), nn.ReLU()), 32

backbones.BACKBONES["toy"] = toy
balcon.model.projector = lambda i, h, o: nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, o))

from balcon.config import load
from balcon.data import build_data
from balcon.experiments import Arm, train_arm
from reprokit.runtime import setup

devices, out = int(sys.argv[1]), sys.argv[2]
cfg = load("smoke", ["model.backbone=toy", "model.backbone_kwargs={}", "train.steps=6",
                     "train.batch_size=32", "train.log_every=1", "train.lr=0.5",
                     "train.warmup_steps=0"])
runtime = setup("cpu", "32-true", threads=1)
data = build_data(cfg.data, long_tailed=True)
module, _ = train_arm(cfg, Arm("long_tailed", 1.0, 1.0, True, 0.0, 0), data, runtime, devices,
                      record_batches=True)
rank = module.global_rank
json.dump({"batches": [b.tolist() for b in module.seen_batches], "loss": module.loss_curve,
           "weight": module.net.encoder[1].weight.detach().flatten()[:200].tolist()},
          open(f"{out}/toy-{devices}-rank{rank}.json", "w"))
"""


# The CLI behind an audit hook: in a relaunched rank (LOCAL_RANK > 0) every write under the
# runs root (open for writing, mkdir, rename, remove, symlink) is logged to a file outside it.
AUDITED_CLI = """
import os, sys
root, log = os.environ["AUDIT_ROOT"], os.environ["AUDIT_LOG"]
if int(os.environ.get("LOCAL_RANK", "0")) > 0:
    out = open(log, "a", buffering=1)
    writing = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT

    def under(path):
        try:
            return os.path.abspath(os.fsdecode(path)).startswith(root)
        except TypeError:  # a file descriptor
            return False

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            if (isinstance(mode, str) and set(mode) & set("wax+")) or (flags or 0) & writing:
                if under(path):
                    out.write(f"{event} {path}\\n")
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.rename", "os.symlink",
                       "os.replace", "shutil.rmtree"):
            paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
            if any(under(p) for p in paths):
                out.write(f"{event} {paths}\\n")

    sys.addaudithook(hook)
from balcon.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run(args, cwd, timeout=180):
    proc = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_ddp_ranks_share_the_global_batch_and_train_like_one_process(tmp_path):
    script = tmp_path / "toy.py"
    script.write_text(TOY)
    _run([sys.executable, str(script), "2", str(tmp_path)], tmp_path)
    _run([sys.executable, str(script), "1", str(tmp_path)], tmp_path)
    r0, r1, one = (json.loads((tmp_path / f"toy-{n}-rank{r}.json").read_text())
                   for n, r in ((2, 0), (2, 1), (1, 0)))
    assert len(r0["batches"]) == len(one["batches"]) == 6
    for a, b, full in zip(r0["batches"], r1["batches"], one["batches"]):
        assert len(a) == len(b) == 16 and not set(a) & set(b)   # different images per rank
        assert sorted(a + b) == sorted(full)                     # together the global batch
    # every rank computes the loss of the gathered global batch, and the averaged gradient
    # is the 1-process gradient: the same loss curve and the same weights
    for (s0, l0), (s1, l1), (s, loss) in zip(r0["loss"], r1["loss"], one["loss"]):
        assert s0 == s1 == s and l0 == pytest.approx(l1, abs=1e-6)
        assert l0 == pytest.approx(loss, rel=1e-4, abs=1e-5)
    assert one["loss"][-1][1] < one["loss"][0][1]                # it did train
    assert torch.allclose(torch.tensor(r0["weight"]), torch.tensor(one["weight"]), atol=1e-5)
    assert r0["weight"] == r1["weight"]                          # DDP keeps replicas equal


def _cli(run_name, out, *extra):
    return [sys.executable, str(out.parent / "audited_cli.py"), "reproduce", "--scale", "smoke",
            "--accelerator", "cpu", "--devices", "2", "--out", str(out), "--run-name", run_name,
            "--seeds", "0", "--set", "experiments=[grid]", "--set", "grid.alphas=[1.0]",
            "--set", "grid.lambdas=[1.0,2.0]", "--set", "train.steps=160",
            "--set", "train.checkpoint_every=20", "--set", "train.batch_size=32", *extra]


def _complete_checkpoint(path) -> bool:
    try:
        return path.stat().st_size > 0 and "global_step" in torch.load(
            path, map_location="cpu", weights_only=False)
    except Exception:  # absent, or being written
        return False


def test_ddp_cli_run_writes_once_and_resumes_to_the_same_result(tmp_path):
    out = tmp_path / "runs"
    (tmp_path / "audited_cli.py").write_text(AUDITED_CLI)
    audit = tmp_path / "rank1-writes.log"
    ENV.update(AUDIT_ROOT=str(tmp_path), AUDIT_LOG=str(audit))
    _run(_cli("full", out), tmp_path)
    full = out / "balcon" / "full"
    # only rank 0 wrote: rank 1 (it did run: it logged its hook's file) wrote nothing under
    # the test's folder, and the run folder holds one copy of everything
    assert audit.exists() and audit.read_text() == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audited_cli.py", "rank1-writes.log",
                                                          "runs"]
    assert sorted(p.name for p in (out / "balcon").iterdir()) == ["full", "latest"]
    names = sorted(str(p.relative_to(full)) for p in full.rglob("*") if p.is_file())
    assert [n for n in names if not n.startswith(("figures/", "results/"))] == [
        "baseline_long_tailed.json", "config.yaml", "environment.json", "metrics.jsonl",
        "plan.json", "report.md", "timing.jsonl"]
    lines = (full / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines)) == 2                    # one line per arm
    assert sorted(json.loads(line)["key"] for line in lines) == sorted(
        p.stem for p in (full / "results").glob("*.json"))
    assert len((full / "timing.jsonl").read_text().splitlines()) == 1

    # kill both ranks in the middle of the second arm, after a checkpoint, then --resume
    proc = subprocess.Popen(_cli("cut", out), cwd=tmp_path, env=ENV, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cut = out / "balcon" / "cut"
    deadline = time.time() + 120
    second = None
    while time.time() < deadline and proc.poll() is None:
        ckpts = list((cut / "checkpoints").glob("*/last.ckpt")) if cut.is_dir() else []
        done = list((cut / "results").glob("*.json")) if (cut / "results").is_dir() else []
        if done and ckpts and _complete_checkpoint(ckpts[0]):
            second = ckpts[0]
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert second is not None, "the run ended before it could be killed mid-arm"
    assert len(list((cut / "results").glob("*.json"))) == 1
    _run(_cli("cut", out, "--resume"), tmp_path)
    for path in (full / "results").glob("*.json"):
        a, b = json.loads(path.read_text()), json.loads((cut / "results" / path.name).read_text())
        assert [s for s, _ in a["loss_curve"]] == [s for s, _ in b["loss_curve"]]
        assert [v for _, v in a["loss_curve"]] == pytest.approx(
            [v for _, v in b["loss_curve"]], rel=1e-5, abs=1e-6)
        for key in ("knn_acc", "linear_acc", "final_loss", "embedding_std"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    lines = (cut / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines)) == 2
    assert not list((cut / "checkpoints").glob("*/last.ckpt"))  # finished arms drop theirs
    assert audit.read_text() == ""  # rank 1 of the killed and of the resumed run: no writes
