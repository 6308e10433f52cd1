"""Accelerator, precision, threads, seeding and environment capture.

The precision policy, mapped to Lightning precision strings:

- CUDA with bf16 support (Ampere and newer): ``bf16-mixed``, TF32 matmuls on;
- older CUDA GPUs: ``16-mixed``;
- MPS and CPU: ``32-true`` (CPU autocast is slower than fp32 for small models).
"""

from __future__ import annotations

import os
import platform
import random
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib import metadata

import numpy as np
import torch

from reprokit.errors import ConfigError

ACCELERATORS = ("auto", "cuda", "mps", "cpu")
PRECISIONS = ("auto", "bf16-mixed", "16-mixed", "32-true", "bf16-true", "64-true")


def select_accelerator(requested: str = "auto") -> str:
    """Return ``cuda``, ``mps`` or ``cpu``: the requested one, or the best available for ``auto``."""
    if requested not in ACCELERATORS:
        raise ConfigError(f"accelerator must be one of {ACCELERATORS}, got {requested!r}")
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("accelerator 'cuda' was requested but no CUDA device is visible")
    return requested


def select_precision(accelerator: str, requested: str = "auto") -> str:
    """Lightning precision string for `accelerator` (see the module docstring)."""
    if requested not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested != "auto":
        return requested
    if accelerator == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype a Lightning precision string implies (None for full precision)."""
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)


def available_cpus() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS has no sched_getaffinity
        return max(1, os.cpu_count() or 1)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so that runs repeat."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)


@dataclass(frozen=True)
class Runtime:
    accelerator: str
    precision: str
    threads: int
    device_name: str

    @property
    def device(self) -> torch.device:
        return torch.device(self.accelerator)

    def autocast(self):
        """Context manager for autocast in hand-written loops (a no-op at full precision)."""
        dtype = autocast_dtype(self.precision)
        if dtype is None:
            return torch.autocast(self.accelerator, enabled=False)
        return torch.autocast(self.accelerator, dtype=dtype)


def device_name(accelerator: str) -> str:
    if accelerator == "cuda":
        return torch.cuda.get_device_name(0)
    if accelerator == "mps":
        return "Apple MPS"
    return platform.processor() or platform.machine()


def setup(
    accelerator: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
    seed: int | None = None,
    deterministic: bool = False,
) -> Runtime:
    """Configure torch for this process and return what was chosen.

    Threads default to the cores this process may use; TF32 is enabled on CUDA (a free
    speed-up on Ampere+ with no effect on bf16 autocast); `deterministic` asks torch for
    deterministic kernels (slower, and some ops then raise).
    """
    acc = select_accelerator(accelerator)
    prec = select_precision(acc, precision)
    n_threads = threads or available_cpus()
    torch.set_num_threads(n_threads)
    if acc == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if seed is not None:
        seed_everything(seed)
    return Runtime(acc, prec, n_threads, device_name(acc))


DEFAULT_PACKAGES = (
    "torch", "lightning", "numpy", "transformers", "datasets", "diffusers",
    "open_clip_torch", "torchvision", "torchmetrics", "vllm", "reprokit",
)


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """The commit of the checkout at `path` (None outside git), with ``-dirty`` if modified."""
    try:
        cwd = path or os.getcwd()
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def capture_environment(runtime: Runtime | None = None, packages=DEFAULT_PACKAGES) -> dict:
    """Versions, commit and hardware, saved with every run so results can be traced."""
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpus_available": available_cpus(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "git_commit": git_commit(),
        "packages": versions,
        "offline": {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")},
    }
    if runtime is not None:
        env["runtime"] = asdict(runtime)
    return env
