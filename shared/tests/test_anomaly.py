"""reprokit.data.anomaly: synthetic generator -> MVTec loader round trip, VisA CSV, errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from reprokit.data.anomaly import (
    SYNTHETIC_DEFECTS,
    MVTecDataset,
    VisADataset,
    make_synthetic_mvtec,
    perlin_noise,
    synthetic_sample,
)
from reprokit.errors import DatasetError

SIZE = 32


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "mvtec"
    make_synthetic_mvtec(root, categories=("brick", "grass"), n_train=2, n_test_good=2,
                         n_test_defect=2, image_size=SIZE, seed=3)
    return root


def test_round_trip_masks_align_with_changed_pixels(synth):
    train = MVTecDataset(synth, "brick", "train")
    assert len(train) == 2 and all(label == 0 for label in train.labels)
    test = MVTecDataset(synth, "brick", "test")
    assert len(test) == 2 + 2 * len(SYNTHETIC_DEFECTS)
    n_anomalous = 0
    for item in test:
        assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
        assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
        assert item["mask"].shape == (1, SIZE, SIZE)
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
        if item["label"] == 0:
            assert item["defect"] == "good" and item["mask"].sum() == 0
            continue
        n_anomalous += 1
        mask = item["mask"][0].numpy().astype(bool)
        assert mask.any(), item["path"]
        # regenerate the clean crop the defect was painted on: changed pixels = the mask
        index = int(item["path"].rsplit("/", 1)[1].split(".")[0])
        clean, image, _ = synthetic_sample("brick", "test", item["defect"], index, SIZE, seed=3)
        loaded = np.round(item["image"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        np.testing.assert_array_equal(loaded, image)  # PNG is lossless
        changed = np.any(loaded != clean, axis=-1)
        assert not (changed & ~mask).any(), "a pixel outside the mask changed"
        assert changed[mask].mean() > 0.9, "most mask pixels must have changed"
    assert n_anomalous == 2 * len(SYNTHETIC_DEFECTS)


def test_generator_is_deterministic_and_reuses_folder(tmp_path, synth):
    again = make_synthetic_mvtec(tmp_path / "m", categories=("brick", "grass"), n_train=2,
                                 n_test_good=2, n_test_defect=2, image_size=SIZE, seed=3)
    for path in sorted(synth.rglob("*.png")):
        other = again / path.relative_to(synth)
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(other)))
    # the same arguments reuse the folder; other arguments are refused
    assert make_synthetic_mvtec(again, categories=("brick", "grass"), n_train=2, n_test_good=2,
                                n_test_defect=2, image_size=SIZE, seed=3) == again
    with pytest.raises(DatasetError, match="other arguments"):
        make_synthetic_mvtec(again, categories=("brick",), n_train=2, image_size=SIZE, seed=4)
    # a different seed gives different images
    _, a, _ = synthetic_sample("grass", "test", "hole", 0, SIZE, seed=0)
    _, b, _ = synthetic_sample("grass", "test", "hole", 0, SIZE, seed=1)
    assert not np.array_equal(a, b)


def test_perlin_noise_is_smooth_and_bounded():
    noise = perlin_noise((32, 32), (4, 4), np.random.default_rng(0))
    assert noise.shape == (32, 32) and np.abs(noise).max() <= 1.5
    assert np.abs(noise[0::8, 0::8]).max() < 1e-9  # zero at the lattice points
    assert np.abs(np.diff(noise, axis=1)).max() < 0.5


def test_image_size_resizes_image_and_mask(synth):
    item = MVTecDataset(synth, "grass", "test", image_size=16)[len(SYNTHETIC_DEFECTS)]
    assert item["image"].shape == (3, 16, 16) and item["mask"].shape == (1, 16, 16)


def _copy(synth, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(synth, dst)
    return dst


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        MVTecDataset(tmp_path / "nope", "brick")


def test_unknown_category_lists_present(synth):
    with pytest.raises(DatasetError, match=r"unknown category 'bottle'.*brick.*grass"):
        MVTecDataset(synth, "bottle")


def test_missing_train_good(synth, tmp_path):
    root = _copy(synth, tmp_path)
    shutil.rmtree(root / "brick" / "train" / "good")
    (root / "brick" / "train").mkdir(exist_ok=True)
    with pytest.raises(DatasetError, match="train/good is missing"):
        MVTecDataset(root, "brick", "test")


def test_missing_mask_names_the_file(synth, tmp_path):
    root = _copy(synth, tmp_path)
    (root / "brick" / "ground_truth" / "hole" / "001_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"test/hole/001.png has no mask.*001_mask.png"):
        MVTecDataset(root, "brick", "test")


def test_mask_size_mismatch(synth, tmp_path):
    root = _copy(synth, tmp_path)
    mask = root / "brick" / "ground_truth" / "scratch" / "000_mask.png"
    Image.new("L", (SIZE + 4, SIZE)).save(mask)
    with pytest.raises(DatasetError, match=r"000_mask.png is 36x32 but its image .*000.png"):
        MVTecDataset(root, "brick", "test")


def test_undecodable_image_is_reported(synth, tmp_path):
    root = _copy(synth, tmp_path)
    bad = root / "grass" / "train" / "good" / "001.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match=r"cannot decode image .*grass/train/good/001.png"):
        MVTecDataset(root, "grass", "train")


def test_visa_split_csv(synth, tmp_path):
    rel = lambda p: str(p.relative_to(synth))  # noqa: E731
    rows = ["object,split,label,image,mask"]
    for p in sorted((synth / "brick" / "train" / "good").glob("*.png")):
        rows.append(f"brick,train,normal,{rel(p)},")
    good = synth / "brick" / "test" / "good" / "000.png"
    hole = synth / "brick" / "test" / "hole" / "000.png"
    rows.append(f"brick,test,normal,{rel(good)},")
    rows.append(f"brick,test,anomaly,{rel(hole)},"
                f"{rel(synth / 'brick' / 'ground_truth' / 'hole' / '000_mask.png')}")
    csv_path = tmp_path / "split.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    train = VisADataset(synth, "brick", "train", split_csv=csv_path)
    assert len(train) == 2
    test = VisADataset(synth, "brick", "test", split_csv=csv_path)
    assert test.labels == [0, 1]
    assert test[1]["mask"].sum() > 0 and test[0]["mask"].sum() == 0
    with pytest.raises(DatasetError, match=r"unknown category 'pcb1'.*brick"):
        VisADataset(synth, "pcb1", "test", split_csv=csv_path)
    csv_path.write_text("\n".join(rows[:-1] + [rows[-1].rsplit(",", 1)[0] + ","]) + "\n")
    with pytest.raises(DatasetError, match="has no mask"):
        VisADataset(synth, "brick", "test", split_csv=csv_path)


def test_visa_split_script_masks_named_like_the_image(synth, tmp_path):
    """MVTec layout as VisA's split script writes it: ground_truth/bad/<stem>.png, 0/1."""
    root = _copy(synth, tmp_path)
    gt = root / "brick" / "ground_truth" / "hole"
    mask = np.asarray(Image.open(gt / "001_mask.png")) > 0
    (gt / "001_mask.png").unlink()
    Image.fromarray(mask.astype(np.uint8)).save(gt / "001.png")  # values 0/1, not 0/255
    test = MVTecDataset(root, "brick", "test")
    rec = next(r for r in test.records if r["path"].name == "001.png"
               and r["defect"] == "hole")
    assert rec["mask"] == gt / "001.png"
    item = test[test.records.index(rec)]
    np.testing.assert_array_equal(item["mask"][0].numpy().astype(bool), mask)


def test_truncated_png_is_caught_when_the_dataset_is_built(synth, tmp_path):
    root = _copy(synth, tmp_path)
    bad = root / "grass" / "test" / "blend" / "000.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # the header (and size) is intact
    with Image.open(bad) as img:
        assert img.size == (SIZE, SIZE)
    with pytest.raises(DatasetError, match=r"cannot decode image .*grass/test/blend/000.png"):
        MVTecDataset(root, "grass", "test")
    mask = root / "brick" / "ground_truth" / "scratch" / "001_mask.png"
    mask.write_bytes(mask.read_bytes()[:-20])
    with pytest.raises(DatasetError, match=r"cannot decode image .*001_mask.png"):
        MVTecDataset(root, "brick", "test")


def test_truncated_jpeg_is_caught(synth, tmp_path):
    root = _copy(synth, tmp_path)
    folder = root / "brick" / "train" / "good"
    Image.open(folder / "000.png").convert("RGB").save(folder / "000.jpg", quality=90)
    assert len(MVTecDataset(root, "brick", "train")) == 3  # a complete JPEG is read
    jpg = folder / "000.jpg"
    jpg.write_bytes(jpg.read_bytes()[:-10])
    with pytest.raises(DatasetError, match=r"000.jpg.*truncated JPEG"):
        MVTecDataset(root, "brick", "train")


def test_load_reads_the_file_at_each_requested_size(synth):
    test = MVTecDataset(synth, "grass", "test", image_size=16)
    index = test.labels.index(1)  # an anomalous image
    item = test.load(index, [(16, 16), (64, 64), (SIZE, SIZE), (16, 16)])
    assert set(item["images"]) == {(16, 16), (64, 64), (SIZE, SIZE)}
    with Image.open(test.records[index]["path"]) as img:
        original = np.asarray(img.convert("RGB"), dtype=np.float32) / 255
        big = np.asarray(img.convert("RGB").resize((64, 64), Image.BILINEAR),
                         dtype=np.float32) / 255
    # the stored size is the file itself; 64 px is resized from the file, not from 16 px
    np.testing.assert_array_equal(item["images"][(SIZE, SIZE)].permute(1, 2, 0).numpy(),
                                  original)
    np.testing.assert_array_equal(item["images"][(64, 64)].permute(1, 2, 0).numpy(), big)
    torch.testing.assert_close(item["images"][(16, 16)], test[index]["image"])
    assert item["mask"].shape == (1, 16, 16) and item["label"] == 1
    torch.testing.assert_close(item["mask"], test[index]["mask"])
