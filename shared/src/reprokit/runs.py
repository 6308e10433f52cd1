"""The run directory every reproduction writes: ``runs/<package>/<run>/``.

    runs/<package>/<run>/
        config.yaml        resolved config
        environment.json   versions, commit, hardware
        metrics.jsonl      one JSON object per line (append-only: partial runs keep their data)
        figures/*.png
        checkpoints/
        report.md
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from reprokit.config import save_config, to_dict
from reprokit.errors import ConfigError
from reprokit.runtime import Runtime, capture_environment


def default_run_name(scale: str) -> str:
    return f"{scale}-{time.strftime('%Y%m%d-%H%M%S')}"


def _json_default(value: Any):
    if hasattr(value, "item"):  # numpy and torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite(value: Any) -> Any:
    """JSON has no NaN/Inf: store them as strings so a diverged run stays readable."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _restore(value: Any) -> Any:
    if value in ("nan", "inf", "-inf"):
        return float(value)
    if isinstance(value, dict):
        return {k: _restore(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v) for v in value]
    return value


class RunView:
    """An existing run folder, read-only: what a DDP rank > 0 holds of rank 0's run, or a
    finished run (anywhere, e.g. a package's committed ``results/``) whose report is rebuilt.

    Unlike ``RunDir`` it creates nothing and leaves ``latest`` alone; it has no write
    methods, so a stray write from a non-zero rank fails loudly instead of racing rank 0.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def report_path(self) -> Path:
        return self.path / "report.md"

    def figure_path(self, name: str) -> Path:
        return self.figures / (name if name.endswith(".png") else f"{name}.png")

    def read_json(self, filename: str) -> Any:
        return read_json(self.path / filename)


class RunDir(RunView):
    """A run's folder. ``resume=True`` reopens an existing run; otherwise the folder must be new.

    Creating a run also points ``runs/<package>/latest`` at it. The paths and readers are
    `RunView`'s; this class adds the writers.
    """

    def __init__(self, package: str, name: str, root: str | os.PathLike = "runs",
                 resume: bool = False):
        self.package = package
        self.name = name
        super().__init__(Path(root) / package / name)
        if resume:
            if not self.path.is_dir():
                raise ConfigError(f"--resume: run directory {self.path} does not exist")
        elif self.path.exists() and any(self.path.iterdir()):
            raise ConfigError(
                f"run directory {self.path} already exists; pass --resume to continue it "
                "or choose another --run-name"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        self.figures.mkdir(exist_ok=True)
        self.checkpoints.mkdir(exist_ok=True)
        latest = self.path.parent / "latest"
        try:
            if latest.is_symlink() or latest.exists():
                latest.unlink()
            latest.symlink_to(self.path.name)
        except OSError:
            pass  # symlinks are a convenience (not available on some filesystems)

    def save_config(self, cfg: Any) -> Path:
        path = self.path / "config.yaml"
        save_config(cfg, path)
        return path

    def save_environment(self, runtime: Runtime | None = None) -> Path:
        return self.write_json("environment.json", capture_environment(runtime))

    def write_json(self, filename: str, data: Any) -> Path:
        path = self.path / filename
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(_finite(data), indent=2, default=_json_default))
        tmp.replace(path)  # atomic: a killed run never leaves half a file
        return path

    def log(self, record: dict, filename: str = "metrics.jsonl") -> None:
        """Append one record (flushed at once, so a killed run keeps what it measured)."""
        with open(self.path / filename, "a") as fh:
            fh.write(json.dumps(_finite(record), default=_json_default) + "\n")

    def read_log(self, filename: str = "metrics.jsonl") -> list[dict]:
        return list(iter_jsonl(self.path / filename))

    def csv_logger(self, name: str = "lightning"):
        """A Lightning CSVLogger writing into this run (``<run>/<name>/metrics.csv``)."""
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(self.path), name=name, version="")


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file written by `RunDir.write_json`, NaN/Inf restored (no RunDir needed)."""
    return _restore(json.loads(Path(path).read_text()))


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Records of a JSONL file; a truncated last line (a killed writer) is skipped."""
    path = Path(path)
    if not path.exists():
        return
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                yield _restore(json.loads(line))
            except json.JSONDecodeError:
                continue


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    with open(path, "w") as fh:
        for record in records:
            fh.write(json.dumps(_finite(record), default=_json_default) + "\n")


__all__ = ["RunDir", "default_run_name", "iter_jsonl", "read_json", "write_jsonl", "to_dict"]
