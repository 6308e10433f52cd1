"""``--devices N``: the evaluation images of each category sharded over N processes.

Each process (rank) encodes every N-th test image; the reference and calibration images are
encoded on every rank (each needs the memory banks; they are few). Rank 0 gathers the raw
maps of each k-shot setting (torch.distributed ``gather_object`` over gloo, which runs on CPU
and carries CPU tensors on a GPU run too), scores them and computes the metrics exactly as
one process does; only rank 0 holds the run folder. On CUDA rank r uses GPU r.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clipfusion.config import Config
from reprokit.runs import RunDir
from reprokit.runtime import available_cpus, setup


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg: Config, run: RunDir, accelerator: str,
            threads: int) -> None:
    from clipfusion.experiments import run_all

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        if accelerator == "cuda":
            torch.cuda.set_device(rank % torch.cuda.device_count())
        runtime = setup(accelerator, cfg.precision, threads=threads, seed=0)
        run_all(cfg, run if rank == 0 else None, runtime, rank, world, run_path=run.path)
    finally:
        dist.destroy_process_group()


def run_sharded(cfg: Config, run: RunDir, world: int, accelerator: str) -> None:
    """run_all over `world` processes; the data is generated and checked here first, so bad
    input fails in the parent with its usual message, before any process starts."""
    from clipfusion.experiments import open_datasets, prepare_data

    root = prepare_data(cfg, run)
    for category in cfg.data.categories:
        if not (run.path / "results" / f"{category}.json").is_file():
            open_datasets(cfg, root, category)
    threads = max(1, available_cpus() // world)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    mp.spawn(_worker, args=(world, _free_port(), cfg, run, accelerator, threads),
             nprocs=world, join=True)
