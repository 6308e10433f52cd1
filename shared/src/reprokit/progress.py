"""Rich progress bars for long loops; Lightning's banners silenced."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress_enabled() -> bool:
    """Bars on a terminal; off in CI and when output goes to a file (logs stay readable)."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar (a plain loop when bars are off)."""
    if not progress_enabled():
        yield from items
        return
    from rich.progress import track as rich_track

    yield from rich_track(items, description=description, total=total, transient=True)


def quiet_lightning() -> None:
    """Silence Lightning's per-Trainer banners ("GPU available...", tips) and the data-loader
    hints that do not apply to in-memory data: a sweep builds one Trainer per arm, and the
    banners would bury the one line per finished arm that the packages print."""
    import logging
    import warnings

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for message in (".*does not have many workers.*", ".*_sampler.*", ".*LeafSpec.*",
                    ".*IterableDataset.* has `__len__` defined.*"):
        warnings.filterwarnings("ignore", message=message)
