from balcon.bench import bench


def test_bench_times_the_configured_step_on_both_sides():
    out = bench("smoke", steps=2, warmup=1, rounds=1, accelerator="cpu",
                overrides=["model.backbone=digits_cnn", "model.backbone_kwargs={width: 4}",
                           "train.batch_size=16"])
    assert out["input"] == [1, 8, 8] and out["backbone_kwargs"]["in_channels"] == 1
    assert out["batch_size"] == 16 and out["threads"] == 1
    assert len(out["ours_images_per_s"]) == len(out["plain_images_per_s"]) == 1
    # the per-side rates are rounded to 0.1 image/s, the ratio is taken before rounding
    ratio = out["ours_images_per_s"][0] / out["plain_images_per_s"][0]
    assert abs(out["ratio"] - ratio) < 2e-3 and out["ratio"] > 0
