import statistics

from gsg import config
from gsg.bench import run_bench


def test_bench_times_the_same_step_on_both_sides():
    cfg = config.load("smoke", ["train.threads=1"])
    out = run_bench(cfg, "simsiam", steps=5, rounds=3, accelerator="cpu")
    assert out["threads"] == 1 and out["batch_size"] == cfg.train.batch_size
    # the same step: from the same weights and random stream, the package's loop (Fabric,
    # SSLModule) and the hand-written SimSiam loop compute the same losses, bit for bit
    assert out["ours_losses"] == out["plain_losses"]
    assert out["ours_losses"][1] != out["ours_losses"][0]   # it did take optimizer steps
    # rounds alternate who goes first; the ratio is the median of the per-round ratios
    assert out["first"] == ["ours", "plain", "ours"]
    assert len(out["images_per_second"]) == len(out["plain_pytorch_simsiam_images_per_second"]) == 3
    ratios = [o / p for o, p in zip(out["images_per_second"],
                                    out["plain_pytorch_simsiam_images_per_second"])]
    assert all(abs(a - b) < 2e-3 for a, b in zip(out["ratios"], ratios))
    assert abs(out["ratio"] - statistics.median(out["ratios"])) < 2e-3 and out["ratio"] > 0
