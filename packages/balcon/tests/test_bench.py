import statistics

from balcon.bench import bench


def test_bench_times_the_same_step_on_both_sides():
    out = bench("smoke", steps=2, warmup=1, rounds=3, accelerator="cpu",
                overrides=["model.backbone=digits_cnn", "model.backbone_kwargs={width: 4}",
                           "train.batch_size=16"])
    assert out["input"] == [1, 8, 8] and out["backbone_kwargs"]["in_channels"] == 1
    assert out["batch_size"] == 16 and out["threads"] == 1
    # the same step: from the same weights, the package's loop (fit, fused balanced loss)
    # and the hand-written one (NT-Xent as cross-entropy) compute the same first and last
    # loss, bit for bit (same batches, views, lr schedule, optimizer groups)
    assert len(out["ours_losses"]) == 2 and out["ours_losses"] == out["plain_losses"]
    assert out["ours_losses"][1] != out["ours_losses"][0]  # it did take optimizer steps
    # rounds alternate who goes first; the ratio is the median of the per-round ratios
    assert out["first"] == ["plain", "ours", "plain"]
    assert len(out["ours_images_per_s"]) == len(out["plain_images_per_s"]) == 3
    ratios = [o / p for o, p in zip(out["ours_images_per_s"], out["plain_images_per_s"])]
    assert all(abs(a - b) < 2e-3 for a, b in zip(out["ratios"], ratios))
    assert abs(out["ratio"] - statistics.median(out["ratios"])) < 2e-3 and out["ratio"] > 0
