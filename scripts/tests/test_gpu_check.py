"""``scripts/gpu-check.sh --tiny`` runs every part on CPU and writes what the GPU run will."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SCRIPTS))

import gpu_check  # noqa: E402


def _run(out: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPTS / "gpu-check.sh"), "--tiny", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})})


def test_tiny_run_writes_one_json_per_part_and_a_summary(tmp_path):
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = {p: json.loads((tmp_path / f"{p}.json").read_text()) for p in gpu_check.PARTS}
    for name, r in records.items():
        assert r["part"] == name and r["tiny"] is True and r["elapsed_s"] > 0
        assert r["status"] == "ok", r.get("traceback") or r
        assert r["device"]["torch"]
        assert f"[gpu-check] {name}: ok" in proc.stdout          # each part prints its time
    perln = records["perln"]["results"]["placements"]
    assert set(perln) == {"pre", "peri"}
    for v in perln.values():
        assert v["tokens_per_s"] > 0 and v["params"] > 0 and v["mfu"] is None   # no GPU peak
        assert all(loss == loss for loss in v["loss_first_last"])            # finite, trained
    gsg = records["gsg"]["results"]["methods"]
    assert gsg["simsiam_gsg"]["n_views"] == 4 and gsg["simsiam"]["n_views"] == 2
    assert all(v["images_per_s"] > 0 for v in gsg.values())
    clip = records["clipfusion"]["results"]
    assert clip["fused_images_per_s"] > 0 and clip["sliding_window_images_per_s"] > 0
    assert clip["fused_vs_sliding_window"] == pytest.approx(
        clip["fused_images_per_s"] / clip["sliding_window_images_per_s"], rel=1e-2)
    assert clip["weights"]["diffusion"].startswith("Stable Diffusion ")   # the folder path
    cope = records["cope"]["results"]
    assert cope["hf"]["completion_tokens"] > 0
    assert cope["vllm"].startswith("skipped: ")                     # no GPU engine on CPU
    summary = (tmp_path / "summary.md").read_text()
    assert "tiny shapes" in summary
    for name in gpu_check.PARTS:
        assert f"| {name} | ok |" in summary


def test_a_failing_part_does_not_stop_the_others(tmp_path):
    # the cope part runs under its own interpreter setting: point it at one that fails
    bad = tmp_path / "bad-python"
    # (called as: <python> gpu_check.py --part cope --out DIR --tiny); it leaves a partial
    # result, as a part that measured something and then died would
    bad.write_text("#!/bin/sh\necho '{\"hf\": 1}' > \"$5/cope.partial.json\"\n"
                   "echo 'boom' >&2\nexit 3\n")
    bad.chmod(0o755)
    proc = _run(tmp_path / "out", "--parts", "cope,perln", env={"GPU_CHECK_COPE_PYTHON": str(bad)})
    assert proc.returncode == 1
    cope = json.loads((tmp_path / "out" / "cope.json").read_text())
    assert cope["status"] == "failed" and "exit code 3" in cope["error"]
    assert "boom" in cope["log_tail"] and cope["partial_results"] == {"hf": 1}
    assert not (tmp_path / "out" / "cope.partial.json").exists()
    perln = json.loads((tmp_path / "out" / "perln.json").read_text())
    assert perln["status"] == "ok"
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| cope | failed |" in summary and "| perln | ok |" in summary


def test_unknown_part_is_refused(tmp_path):
    proc = _run(tmp_path, "--parts", "perln,bogus")
    assert proc.returncode == 2 and "bogus" in proc.stderr


@pytest.mark.parametrize("status", ["skipped", "failed"])
def test_summary_reports_reasons(tmp_path, status):
    key = "reason" if status == "skipped" else "error"
    (tmp_path / "perln.json").write_text(json.dumps(
        {"part": "perln", "status": status, key: "no CUDA device", "elapsed_s": 0.1,
         "device": {"gpu": None, "torch": "x"}}))
    text = gpu_check.write_summary(tmp_path, ["perln", "gsg"]).read_text()
    assert f"| perln | {status} | 0.1 | no CUDA device |" in text
    assert "| gsg | failed |" in text and "no result file" in text
