"""The three experiments as a list of *arms* (one training run each), run and read back.

An arm is (method, predictor, epochs, batch size, seed); arms shared by two experiments
(e.g. the sweep's default batch size) run once. Each finished arm writes
``results/<arm>.json`` atomically, so ``--resume`` skips it; an unfinished arm resumes from
``checkpoints/<arm>/last.ckpt`` when one was written.

1. main: every method with its predictor for ``train.epochs`` (equal epochs), plus the
   baselines for 2 × ``train.epochs`` (equal compute: GSG makes 4 views per image, not 2);
2. collapse: every method without predictor for ``experiments.collapse_epochs``;
3. sweep: ``sweep_methods`` at each of ``batch_sizes`` for ``sweep_epochs``.
"""

from __future__ import annotations

import copy
import logging
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from gsg.config import GSGConfig
from gsg.data import Monitor, build_training_data
from gsg.module import SSLModule, SSLTraining, parse_method
from reprokit.fabric import make_fabric
from reprokit.progress import quiet_lightning, track
from reprokit.runs import RunDir, read_json
from reprokit.runtime import Runtime, available_cpus, seed_everything

log = logging.getLogger("gsg")


@dataclass(frozen=True)
class Arm:
    method: str
    predictor: bool
    epochs: int
    batch_size: int
    seed: int

    @property
    def key(self) -> str:
        pred = "" if self.predictor else "-nopred"
        return f"{self.method}{pred}-e{self.epochs}-b{self.batch_size}-s{self.seed}"

    @property
    def n_views(self) -> int:
        return 4 if parse_method(self.method)[1] else 2


def plan(cfg: GSGConfig) -> dict[str, list[Arm]]:
    """Arms of each experiment (an arm may appear in several)."""
    e, x = cfg.train, cfg.experiments
    main = [Arm(m, True, e.epochs, e.batch_size, s) for s in x.seeds for m in x.methods]
    compute = ([Arm(m, True, 2 * e.epochs, e.batch_size, s) for s in x.seeds for m in x.methods
                if not parse_method(m)[1]] if x.equal_compute else [])
    collapse = ([Arm(m, False, x.collapse_epochs, e.batch_size, s) for s in x.collapse_seeds
                 for m in x.methods] if x.collapse else [])
    sweep = [Arm(m, True, x.sweep_epochs, b, s) for b in x.batch_sizes for s in x.sweep_seeds
             for m in x.sweep_methods]
    return {"main": main, "compute": compute, "collapse": collapse, "sweep": sweep}


def unique_arms(groups: dict[str, list[Arm]]) -> list[Arm]:
    seen: dict[str, Arm] = {}
    for arms in groups.values():
        for arm in arms:
            seen.setdefault(arm.key, arm)
    return list(seen.values())


def train_arm(cfg: GSGConfig, arm: Arm, runtime: Runtime, devices: int = 1,
              ckpt_path: Path | None = None, resume: bool = False) -> tuple[SSLTraining, dict]:
    """Train one arm; returns its `SSLTraining` and its result record (history + final
    metrics). `devices` > 1: DDP, every process trains (and returns) alike."""
    quiet_lightning()
    fabric = make_fabric(runtime, devices)
    cfg = copy.deepcopy(cfg)
    cfg.train.batch_size = arm.batch_size
    seed_everything(arm.seed)
    data = build_training_data(cfg.data, arm.batch_size, arm.n_views, arm.seed,
                               runtime.accelerator, fabric.world_size, fabric.global_rank)
    monitor = Monitor(data, cfg.eval, workers=min(cfg.data.workers, 4) if data.augment is None else 0)
    module = SSLModule(cfg, arm.method, arm.predictor, data.in_shape, data.augment)
    training = SSLTraining(fabric, module, arm.epochs, len(data.loader), monitor, arm.seed,
                           ckpt_path, cfg.train.checkpoint_every)
    start = time.perf_counter()
    cpu_start = time.process_time()
    resume_from = ckpt_path if resume and ckpt_path is not None and ckpt_path.is_file() else None
    training.fit(data.loader, resume_from)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    final = monitor(module.net, fabric.device, linear=True, seed=arm.seed)
    steps = training.step
    result = {
        "key": arm.key, "method": arm.method, "predictor": arm.predictor,
        "epochs": arm.epochs, "batch_size": arm.batch_size, "seed": arm.seed,
        "n_views": arm.n_views, "steps": steps,
        # forward passes of one image view through the online network: the compute unit
        "view_passes": steps * arm.batch_size * arm.n_views,
        "train_seconds": seconds, "train_cpu_seconds": cpu_seconds,
        "images_per_second": steps * arm.batch_size / max(seconds, 1e-9),
        "resumed_from_checkpoint": resume_from is not None,
        "nonfinite_step": training.nonfinite_step,
        "diverged": training.nonfinite_step is not None,
        "history": training.history, "final": final,
    }
    return training, result


def _train_arm_in_worker(cfg: GSGConfig, arm: Arm, accelerator: str, precision: str,
                         threads: int, ckpt: Path) -> dict:
    """One arm in a worker process (spawned: torch state is set up afresh, `threads` each)."""
    from reprokit.runtime import setup

    runtime = setup(accelerator, precision, threads=threads)
    return train_arm(cfg, arm, runtime, 1, ckpt, resume=True)[1]


def arm_workers(cfg: GSGConfig, runtime: Runtime, devices: int, n_arms: int) -> int:
    """Parallel arm processes: ``experiments.workers``, or one per CPU core on CPU (the arms'
    matrices are too small to use a second thread well); 1 on accelerators and under DDP."""
    if devices > 1 or runtime.accelerator != "cpu":
        return 1
    workers = cfg.experiments.workers or max(1, available_cpus() // max(1, runtime.threads))
    return max(1, min(workers, n_arms))


def run_experiments(cfg: GSGConfig, run: RunDir, runtime: Runtime, devices: int = 1,
                    resume: bool = False, write: bool = True) -> dict[str, dict]:
    """Run every arm not already finished in `run`; returns {key: result}.

    Arms run in `arm_workers` parallel processes (one thread each on the cpu scale).
    ``write=False`` (DDP ranks > 0) trains along but leaves the run folder to rank 0.
    """
    groups = plan(cfg)
    if write:
        (run.path / "results").mkdir(exist_ok=True)
        run.write_json("plan.json", {g: [a.key for a in arms] for g, arms in groups.items()})
    arms = unique_arms(groups)
    results: dict[str, dict] = {}
    todo = []
    for arm in arms:
        if (run.path / "results" / f"{arm.key}.json").is_file():
            results[arm.key] = run.read_json(f"results/{arm.key}.json")
            print(f"[gsg] {arm.key}: done earlier, read back", flush=True)
        else:
            todo.append(arm)

    def finished(arm: Arm, result: dict) -> None:
        if not write:
            return
        run.write_json(f"results/{arm.key}.json", result)
        run.log({"arm": arm.key, **{k: result[k] for k in ("train_seconds", "diverged")},
                 **result["final"]})
        if cfg.scale != "paper":
            shutil.rmtree(run.checkpoints / arm.key, ignore_errors=True)
        results[arm.key] = result
        f = result["final"]
        print(f"[gsg] {arm.key}: knn {f['knn']:.3f} linear {f['linear']:.3f} "
              f"z_std {f['z_std']:.3f} z_erank {f['z_erank']:.1f} "
              f"({result['train_seconds']:.0f}s{', DIVERGED' if result['diverged'] else ''})",
              flush=True)

    workers = arm_workers(cfg, runtime, devices, len(todo))
    if workers == 1:
        for arm in track(todo, "gsg arms", total=len(todo)):
            ckpt = run.checkpoints / arm.key / "last.ckpt"
            finished(arm, train_arm(cfg, arm, runtime, devices, ckpt, resume=True)[1])
        return results
    context = get_context("spawn")  # fork is unsafe with torch's thread pools
    threads = max(1, runtime.threads)
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {pool.submit(_train_arm_in_worker, cfg, arm, runtime.accelerator,
                               runtime.precision, threads,
                               run.checkpoints / arm.key / "last.ckpt"): arm for arm in todo}
        for future in track(as_completed(futures), f"gsg arms ({workers} processes)",
                            total=len(futures)):
            finished(futures[future], future.result())
    return results


def load_results(run_path: Path) -> dict[str, dict]:
    """Every finished arm's result in a run folder, by key."""
    return {path.stem: read_json(path)
            for path in sorted((run_path / "results").glob("*.json"))}
