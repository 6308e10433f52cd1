"""Errors with messages a researcher can act on, and the offline switch."""

from __future__ import annotations

import os


class ReprokitError(Exception):
    """Base class: the message says what went wrong and what to do instead."""


class ConfigError(ReprokitError, ValueError):
    """A configuration value or command-line option is invalid."""


class DatasetError(ReprokitError, FileNotFoundError):
    """A dataset is missing or malformed; the message names the file or folder."""


class OfflineError(ReprokitError, RuntimeError):
    """An online-only resource was asked for while offline."""


def is_offline() -> bool:
    """True when the Hugging Face offline switches are set (tests and CI set them)."""
    return any(
        os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "REPROKIT_OFFLINE")
    )


def require_online(what: str, alternative: str) -> None:
    """Fail at once, rather than after the hub's retries, when `what` needs the network."""
    if is_offline():
        raise OfflineError(
            f"{what} needs the network, but this process is offline "
            f"(HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set). Offline alternative: {alternative}."
        )
