"""Anomaly-detection datasets: MVTec-AD and VisA on disk, and an offline MVTec-layout generator.

MVTec-AD layout (one folder per category)::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/good/*.png
    <root>/<category>/test/<defect>/*.png
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png   (or <stem>.png, as VisA's
                                                              split script writes them)

VisA is read through its split CSV (columns ``object,split,label,image,mask``; ``label`` is
``normal`` or ``anomaly``; paths relative to the root), as its ``split_csv/1cls.csv``.

Every item is a dict that PyTorch's default collate batches::

    image    float tensor (3, H, W) in [0, 1]
    label    int, 0 = good, 1 = anomalous
    mask     float tensor (1, H, W) in {0, 1} (all zeros for a good image)
    category str;  defect  str ("good" for normal images);  path  str

Folders are checked when a dataset is built, so a malformed one fails at once with a message
naming the file: a missing root, an unknown category (the present ones are listed), a missing
``train/good``, an anomalous image without its mask, a mask whose size differs from its image's,
an image that cannot be decoded or is truncated (every PNG is verified to its end). Nothing is
skipped silently. Masks may hold 0/255 or 0/1: any non-zero pixel is anomalous.

``make_synthetic_mvtec()`` writes an MVTec-layout dataset from scikit-image's bundled
textures (brick, grass, gravel), with synthetic defects and exact masks; it is the offline
default, and the same ``MVTecDataset`` reads it.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from reprokit.errors import ConfigError, DatasetError

MVTEC_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)
VISA_CATEGORIES = (
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
    "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
)
SYNTHETIC_CATEGORIES = ("brick", "grass", "gravel")
SYNTHETIC_DEFECTS = ("blend", "scratch", "hole")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".JPG", ".PNG")


# ---------------------------------------------------------------- decoding


def _size_of(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, after checking the file is complete.

    The header alone passes a truncated file (its size is in the first bytes), which would
    then fail at decode time, after the models are built. So a PNG is verified chunk by
    chunk (CRCs up to IEND: PIL's ``verify``, which reads the file without decoding the
    pixels) and a JPEG must end with its end-of-image marker. An unreadable file is a
    DatasetError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            size, fmt = img.size, img.format
            if fmt == "PNG":
                img.verify()
        if fmt == "JPEG":
            with open(path, "rb") as fh:
                fh.seek(-2, os.SEEK_END)
                if fh.read(2) != b"\xff\xd9":
                    raise OSError("truncated JPEG (no end-of-image marker)")
        return size
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DatasetError(f"cannot decode image {path}: {err}") from err


def _decode(path: Path, mode: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            return img.convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DatasetError(f"cannot decode image {path}: {err}") from err


def _resolve_size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = image_size
    return (int(h), int(w))


def load_image(path: str | os.PathLike, size: tuple[int, int] | None = None) -> torch.Tensor:
    """RGB image as float (3, H, W) in [0, 1], optionally resized (bilinear) to (H, W)."""
    from PIL import Image

    img = _decode(Path(path), "RGB")
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def load_mask(path: str | os.PathLike, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Binary mask (1, H, W) in {0, 1} (any non-zero pixel is anomalous), nearest resize."""
    from PIL import Image

    img = _decode(Path(path), "L")
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.NEAREST)
    arr = (np.asarray(img) > 0).astype(np.float32)
    return torch.from_numpy(arr)[None]


# ---------------------------------------------------------------- datasets


class _AnomalyDataset(Dataset):
    """Shared item loading: subclasses fill ``self.records`` (dicts with image/mask paths)."""

    records: list[dict]
    category: str

    def __init__(self, root: str | os.PathLike, category: str, split: str,
                 image_size: int | Sequence[int] | None):
        if split not in ("train", "test"):
            raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
        self.root = Path(root)
        self.category = category
        self.split = split
        self.size = _resolve_size(image_size)
        if not self.root.is_dir():
            raise DatasetError(f"dataset root {self.root} does not exist")

    def _check_record(self, rec: dict) -> None:
        image_wh = _size_of(rec["path"])
        if rec["mask"] is not None:
            mask_wh = _size_of(rec["mask"])
            if mask_wh != image_wh:
                raise DatasetError(
                    f"mask {rec['mask']} is {mask_wh[0]}x{mask_wh[1]} but its image "
                    f"{rec['path']} is {image_wh[0]}x{image_wh[1]}")
        rec["size"] = (image_wh[1], image_wh[0])

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[int]:
        return [r["label"] for r in self.records]

    def load(self, index: int, sizes: Sequence[tuple[int, int]]) -> dict:
        """The item with the image decoded once and resized (bilinear) to each of `sizes`:
        ``images`` {(H, W): (3, H, W)}; ``mask`` at the dataset's size. Each model branch
        reads the file at its own input resolution, not an upsampled copy."""
        from PIL import Image

        rec = self.records[index]
        img = _decode(rec["path"], "RGB")
        images = {}
        for h, w in {tuple(int(v) for v in s) for s in sizes}:
            resized = img if img.size == (w, h) else img.resize((w, h), Image.BILINEAR)
            arr = np.asarray(resized, dtype=np.float32) / 255.0
            images[(h, w)] = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
        size = self.size or rec["size"]
        if rec["mask"] is not None:
            mask = load_mask(rec["mask"], size)
        else:
            mask = torch.zeros(1, *size)
        return {"images": images, "label": rec["label"], "mask": mask,
                "category": self.category, "defect": rec["defect"], "path": str(rec["path"])}

    def __getitem__(self, index: int) -> dict:
        rec = self.records[index]
        image = load_image(rec["path"], self.size)
        if rec["mask"] is not None:
            mask = load_mask(rec["mask"], self.size)
        else:
            mask = torch.zeros(1, image.shape[1], image.shape[2])
        return {"image": image, "label": rec["label"], "mask": mask,
                "category": self.category, "defect": rec["defect"], "path": str(rec["path"])}


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in IMAGE_SUFFIXES)


class MVTecDataset(_AnomalyDataset):
    """One category of an MVTec-AD-layout folder (see the module docstring).

    `image_size` (int or (H, W)) resizes images (bilinear) and masks (nearest); None keeps
    the stored size.
    """

    def __init__(self, root: str | os.PathLike, category: str, split: str = "train",
                 image_size: int | Sequence[int] | None = None):
        super().__init__(root, category, split, image_size)
        present = sorted(p.name for p in self.root.iterdir()
                         if p.is_dir() and (p / "train").is_dir())
        cat_dir = self.root / category
        if not cat_dir.is_dir():
            raise DatasetError(
                f"unknown category {category!r}: no folder {cat_dir}; categories present "
                f"under {self.root}: {present or 'none'}")
        train_good = cat_dir / "train" / "good"
        if not train_good.is_dir():
            raise DatasetError(f"malformed MVTec folder: {train_good} is missing")
        self.records = []
        if split == "train":
            for path in _images_in(train_good):
                self.records.append(dict(path=path, label=0, mask=None, defect="good"))
        else:
            test_dir = cat_dir / "test"
            if not test_dir.is_dir():
                raise DatasetError(f"malformed MVTec folder: {test_dir} is missing")
            for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
                defect = defect_dir.name
                for path in _images_in(defect_dir):
                    mask = None
                    if defect != "good":
                        # MVTec names masks <stem>_mask.png; VisA's official split script
                        # (MVTec layout, defect folder "bad") names them <stem>.png
                        folder = cat_dir / "ground_truth" / defect
                        names = [folder / f"{path.stem}_mask.png", folder / f"{path.stem}.png"]
                        mask = next((m for m in names if m.is_file()), None)
                        if mask is None:
                            raise DatasetError(
                                f"anomalous image {path} has no mask: expected {names[0]} "
                                f"or {names[1]}")
                    self.records.append(dict(path=path, label=int(defect != "good"),
                                             mask=mask, defect=defect))
        if not self.records:
            raise DatasetError(f"no images found for {category!r} split {split!r} "
                               f"under {cat_dir}")
        for rec in self.records:
            self._check_record(rec)


class VisADataset(_AnomalyDataset):
    """One category of VisA through its split CSV (``object,split,label,image,mask``)."""

    COLUMNS = ("object", "split", "label", "image", "mask")

    def __init__(self, root: str | os.PathLike, category: str, split: str = "train",
                 split_csv: str | os.PathLike | None = None,
                 image_size: int | Sequence[int] | None = None):
        super().__init__(root, category, split, image_size)
        csv_path = Path(split_csv) if split_csv is not None else (
            self.root / "split_csv" / "1cls.csv")
        if not csv_path.is_file():
            raise DatasetError(f"VisA split CSV {csv_path} does not exist")
        with open(csv_path, newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in self.COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(f"VisA split CSV {csv_path} lacks column(s) {missing}")
            rows = list(reader)
        present = sorted({r["object"] for r in rows})
        if category not in present:
            raise DatasetError(f"unknown category {category!r} in {csv_path}; present: "
                               f"{present or 'none'}")
        self.records = []
        for line, row in enumerate(rows, start=2):
            if row["object"] != category or row["split"] != split:
                continue
            label = row["label"].strip().lower()
            if label not in ("normal", "anomaly"):
                raise DatasetError(f"{csv_path} line {line}: label must be normal or anomaly, "
                                   f"got {row['label']!r}")
            path = self.root / row["image"]
            if not path.is_file():
                raise DatasetError(f"{csv_path} line {line}: image {path} does not exist")
            mask = None
            if label == "anomaly":
                if not row["mask"]:
                    raise DatasetError(f"anomalous image {path} has no mask ({csv_path} "
                                       f"line {line})")
                mask = self.root / row["mask"]
                if not mask.is_file():
                    raise DatasetError(f"anomalous image {path} has no mask: expected {mask}")
            self.records.append(dict(path=path, label=int(label == "anomaly"), mask=mask,
                                     defect="good" if label == "normal" else "anomaly"))
        if not self.records:
            raise DatasetError(f"no {split!r} rows for {category!r} in {csv_path}")
        for rec in self.records:
            self._check_record(rec)


def anomaly_dataset(kind: str, root: str | os.PathLike, category: str, split: str,
                    image_size: int | Sequence[int] | None = None,
                    split_csv: str | os.PathLike | None = None) -> _AnomalyDataset:
    """``kind`` is ``mvtec`` (also for the synthetic textures) or ``visa``."""
    if kind == "mvtec":
        return MVTecDataset(root, category, split, image_size)
    if kind == "visa":
        return VisADataset(root, category, split, split_csv, image_size)
    raise ConfigError(f"dataset kind must be 'mvtec' or 'visa', got {kind!r}")


# ---------------------------------------------------------------- synthetic textures


def perlin_noise(shape: tuple[int, int], res: tuple[int, int],
                 rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise in about [-1, 1]: random unit gradients on a ``res`` grid,
    blended with the quintic fade 6t⁵ − 15t⁴ + 10t³. ``shape`` must be a multiple of ``res``."""
    h, w = shape
    ry, rx = res
    angles = rng.uniform(0, 2 * np.pi, size=(ry + 1, rx + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    ys = np.arange(h) * ry / h
    xs = np.arange(w) * rx / w
    yi, xi = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = ys - yi, xs - xi
    Fy, Fx = np.meshgrid(fy, fx, indexing="ij")
    Yi, Xi = np.meshgrid(yi, xi, indexing="ij")

    def corner(dy: int, dx: int) -> np.ndarray:
        g = grads[Yi + dy, Xi + dx]
        return g[..., 0] * (Fy - dy) + g[..., 1] * (Fx - dx)

    def fade(t):
        return 6 * t**5 - 15 * t**4 + 10 * t**3

    uy, ux = fade(Fy), fade(Fx)
    top = corner(0, 0) * (1 - ux) + corner(0, 1) * ux
    bottom = corner(1, 0) * (1 - ux) + corner(1, 1) * ux
    return np.sqrt(2) * (top * (1 - uy) + bottom * uy)


def _texture(name: str) -> np.ndarray:
    import skimage.data

    if name not in SYNTHETIC_CATEGORIES:
        raise ConfigError(f"synthetic category must be one of {SYNTHETIC_CATEGORIES}, "
                          f"got {name!r}")
    return getattr(skimage.data, name)()


def _crop(texture: np.ndarray, image_size: int, rng: np.random.Generator,
          crop_fraction: float = 0.5) -> np.ndarray:
    """A random square crop (a fraction of the texture), random flips, resized; RGB uint8."""
    from PIL import Image

    side = int(round(min(texture.shape) * crop_fraction))
    y = int(rng.integers(0, texture.shape[0] - side + 1))
    x = int(rng.integers(0, texture.shape[1] - side + 1))
    patch = texture[y:y + side, x:x + side]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    if rng.random() < 0.5:
        patch = patch[::-1, :]
    img = Image.fromarray(np.ascontiguousarray(patch)).resize((image_size, image_size),
                                                              Image.BILINEAR)
    gray = np.asarray(img, dtype=np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def _perlin_region(size: int, rng: np.random.Generator) -> np.ndarray:
    """A blob-shaped boolean region from thresholded Perlin noise covering ~2–15% of the image."""
    for _ in range(50):
        res = int(rng.choice([r for r in (2, 4, 8) if size % r == 0] or [1]))
        noise = perlin_noise((size, size), (res, res), rng)
        region = noise > np.quantile(noise, 1 - rng.uniform(0.03, 0.12))
        # keep only the largest blob so the defect is one localised region
        from scipy import ndimage

        labels, n = ndimage.label(region)
        if n:
            sizes = ndimage.sum(region, labels, index=range(1, n + 1))
            region = labels == (1 + int(np.argmax(sizes)))
            if region.sum() >= max(4, 0.01 * size * size):
                return region
    raise RuntimeError("could not draw a Perlin region")  # not reached in practice


def _defect_blend(img: np.ndarray, category: str,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Perlin-shaped region blended with a foreign texture (tinted) or a flat colour."""
    size = img.shape[0]
    region = _perlin_region(size, rng)
    if rng.random() < 0.5:
        others = [c for c in SYNTHETIC_CATEGORIES if c != category]
        foreign = _crop(_texture(others[int(rng.integers(len(others)))]), size, rng)
        tint = rng.uniform(0.3, 1.0, size=3)
        source = foreign.astype(np.float32) * tint
    else:
        source = np.broadcast_to(rng.uniform(0, 255, size=3), img.shape).astype(np.float32)
    opacity = rng.uniform(0.6, 1.0)
    out = img.astype(np.float32)
    out[region] = (1 - opacity) * out[region] + opacity * source[region]
    return np.clip(np.round(out), 0, 255).astype(np.uint8), region


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated colour (channels differ), so it never equals a grey texture pixel."""
    colour = rng.uniform(0, 255, size=3)
    colour[int(rng.integers(3))] = rng.choice([20.0, 235.0])
    return colour


def _defect_scratch(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One or two thin curved strokes of a saturated colour."""
    from scipy import ndimage
    from skimage.draw import line

    size = img.shape[0]
    region = np.zeros((size, size), dtype=bool)
    for _ in range(int(rng.integers(1, 3))):
        points = rng.uniform(0.1 * size, 0.9 * size, size=(3, 2))
        for (y0, x0), (y1, x1) in zip(points[:-1], points[1:], strict=True):
            rr, cc = line(int(y0), int(x0), int(y1), int(x1))
            region[rr, cc] = True
    width = max(1, size // 64)
    if width > 1:
        region = ndimage.binary_dilation(region, iterations=width - 1)
    out = img.copy()
    out[region] = np.round(_random_colour(rng)).astype(np.uint8)
    return out, region


def _defect_hole(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A dark elliptical hole with a shaded rim of a saturated tint."""
    from skimage.draw import ellipse

    size = img.shape[0]
    cy, cx = rng.uniform(0.2 * size, 0.8 * size, size=2)
    ry, rx = rng.uniform(0.05 * size, 0.15 * size, size=2)
    rr, cc = ellipse(cy, cx, ry, rx, shape=(size, size), rotation=rng.uniform(0, np.pi))
    region = np.zeros((size, size), dtype=bool)
    region[rr, cc] = True
    yy, xx = np.nonzero(region)
    depth = 1 - np.clip(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2, 0, 1)  # 1 at the centre
    dark = np.array([30.0, 20.0, 10.0]) * rng.uniform(0.5, 1.5)
    rim = _random_colour(rng)
    out = img.astype(np.float32)
    out[yy, xx] = (1 - depth)[:, None] * rim + depth[:, None] * dark
    return np.clip(np.round(out), 0, 255).astype(np.uint8), region


def _sample_rng(seed: int, category: str, split: str, defect: str, index: int):
    keys = [seed, SYNTHETIC_CATEGORIES.index(category), ("train", "test").index(split),
            ("good", *SYNTHETIC_DEFECTS).index(defect), index]
    return np.random.default_rng(keys)


def synthetic_sample(category: str, split: str, defect: str, index: int, image_size: int = 128,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic image as ``(clean, image, mask)``: uint8 RGB (H, W, 3) before and after
    the defect, and the boolean defect mask (H, W). Deterministic in all arguments.

    The mask is exact: it is the set of pixels the defect painted (the few painted pixels
    whose value happens to round to the original are still inside it)."""
    if defect not in ("good",) + SYNTHETIC_DEFECTS:
        raise ConfigError(f"defect must be 'good' or one of {SYNTHETIC_DEFECTS}, got {defect!r}")
    rng = _sample_rng(seed, category, split, defect, index)
    clean = _crop(_texture(category), image_size, rng)
    if defect == "good":
        return clean, clean.copy(), np.zeros(clean.shape[:2], dtype=bool)
    if defect == "blend":
        image, mask = _defect_blend(clean, category, rng)
    elif defect == "scratch":
        image, mask = _defect_scratch(clean, rng)
    else:
        image, mask = _defect_hole(clean, rng)
    return clean, image, mask


def make_synthetic_mvtec(root: str | os.PathLike,
                         categories: Sequence[str] = SYNTHETIC_CATEGORIES,
                         n_train: int = 16, n_test_good: int = 8, n_test_defect: int = 4,
                         image_size: int = 128, seed: int = 0) -> Path:
    """Write an MVTec-layout dataset of texture crops with synthetic defects; return `root`.

    Per category: ``n_train`` good training crops, ``n_test_good`` good test crops and
    ``n_test_defect`` test images per defect type (``blend``: a Perlin-noise region blended
    with a foreign texture or a colour; ``scratch``: thin coloured strokes; ``hole``: a dark
    ellipse), each with its exact mask in ``ground_truth``. Deterministic in `seed`. A folder
    already generated with the same arguments is reused (``synthetic.json`` records them).
    """
    from PIL import Image

    root = Path(root)
    for c in categories:
        _texture(c)  # validates the name
    if image_size < 16 or image_size % 8:
        raise ConfigError(f"image_size must be a multiple of 8 and >= 16, got {image_size}")
    params = dict(categories=list(categories), n_train=n_train, n_test_good=n_test_good,
                  n_test_defect=n_test_defect, image_size=image_size, seed=seed, version=1)
    stamp = root / "synthetic.json"
    if stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == params:
                return root
        except json.JSONDecodeError:
            pass
        raise DatasetError(f"{root} holds a synthetic dataset made with other arguments "
                           f"({stamp}); choose another folder")
    if root.exists() and any(root.iterdir()):
        raise DatasetError(f"{root} is not empty and is not a synthetic dataset; "
                           "choose another folder")

    def save(arr: np.ndarray, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path)

    for category in categories:
        base = root / category
        for i in range(n_train):
            _, img, _ = synthetic_sample(category, "train", "good", i, image_size, seed)
            save(img, base / "train" / "good" / f"{i:03d}.png")
        for i in range(n_test_good):
            _, img, _ = synthetic_sample(category, "test", "good", i, image_size, seed)
            save(img, base / "test" / "good" / f"{i:03d}.png")
        for defect in SYNTHETIC_DEFECTS:
            for i in range(n_test_defect):
                _, img, mask = synthetic_sample(category, "test", defect, i, image_size, seed)
                save(img, base / "test" / defect / f"{i:03d}.png")
                save(mask.astype(np.uint8) * 255,
                     base / "ground_truth" / defect / f"{i:03d}_mask.png")
    stamp.write_text(json.dumps(params, indent=2))
    return root


__all__ = [
    "MVTEC_CATEGORIES", "VISA_CATEGORIES", "SYNTHETIC_CATEGORIES", "SYNTHETIC_DEFECTS",
    "MVTecDataset", "VisADataset", "anomaly_dataset", "load_image", "load_mask",
    "make_synthetic_mvtec", "synthetic_sample", "perlin_noise",
]
