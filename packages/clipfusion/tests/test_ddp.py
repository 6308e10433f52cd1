"""--devices 2: test images sharded over two CPU processes (gloo); rank 0 gathers and scores."""

import json

import numpy as np
import pytest

from clipfusion.cli import main
from reprokit.runs import iter_jsonl

ARGS = ["reproduce", "--scale", "smoke", "--shots", "0,2", "--seeds", "0,1",
        "--set", "data.categories=[brick]", "--set", "data.n_test_good=3"]


@pytest.mark.ddp
def test_two_processes_give_the_one_process_metrics_and_only_rank0_writes(tmp_path):
    assert main([*ARGS, "--out", str(tmp_path), "--run-name", "one"]) == 0
    assert main([*ARGS, "--out", str(tmp_path), "--run-name", "two", "--devices", "2"]) == 0
    one, two = (tmp_path / "clipfusion" / n for n in ("one", "two"))
    a, b = list(iter_jsonl(one / "metrics.jsonl")), list(iter_jsonl(two / "metrics.jsonl"))
    # one line per (setting, arm), no duplicate written by a second rank
    keys = [(r["shots"], r["seed"], r["arm"]) for r in b]
    assert len(keys) == len(set(keys)) == len(a)
    for ra, rb in zip(a, b, strict=True):
        assert (ra["shots"], ra["seed"], ra["arm"]) == (rb["shots"], rb["seed"], rb["arm"])
        for key, value in ra.items():
            if isinstance(value, float):
                assert rb[key] == pytest.approx(value, abs=2e-3), (key, ra["arm"])
    res = json.loads((two / "results" / "brick.json").read_text())
    assert res["timing"]["world"] == 2 and res["n_test"] == 6
    # the example maps (gathered back into the original order) match too
    ma, mb = np.load(one / "maps" / "brick.npz"), np.load(two / "maps" / "brick.npz")
    assert sorted(ma.files) == sorted(mb.files)
    np.testing.assert_array_equal(ma["defects"], mb["defects"])
    np.testing.assert_allclose(ma["k2_fused"].astype(np.float32),
                               mb["k2_fused"].astype(np.float32), atol=2e-3)
    # only rank 0 wrote: the same set of files as the one-process run
    files = lambda p: sorted(str(f.relative_to(p)) for f in p.rglob("*")  # noqa: E731
                             if f.is_file() and "data" not in f.relative_to(p).parts)
    assert files(one) == files(two)
