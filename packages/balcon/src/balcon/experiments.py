"""The three experiments, as lists of training arms run (and resumed) one at a time.

An arm is one SimCLR training run: (training data, α, λ, N(i) with/without the positive,
augmentation strength, seed). Each finished arm writes ``results/<arm>.json`` atomically;
a resumed run reads those back and skips them. Arms shared by two experiments (InfoNCE at
the default strength is in the grid and in the bias sweep) are trained once.

1. grid:     α × λ on the grid's training set, ``seeds``.
2. longtail: the grid's best balanced setting (≠ InfoNCE, chosen by mean linear-probe
             accuracy over the grid seeds) vs InfoNCE, on balanced and long-tailed data,
             with fresh ``confirm_seeds`` so that the choice does not bias the comparison.
3. bias:     InfoNCE encoders trained at several augmentation strengths; for every arm the
             prototype representation bias is measured vs M views and measurement strength.
"""

from __future__ import annotations

import math
import resource
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context

import numpy as np
import torch
import torch.nn.functional as F

from balcon.bias import prototype_bias
from balcon.config import BalconConfig
from balcon.data import build_data
from balcon.losses import BalancedContrastiveLoss
from balcon.model import SimCLRNet
from balcon.module import SimCLRModule, fit
from reprokit.evaluation import effective_rank, knn_accuracy, linear_probe_accuracy, normalized_std
from reprokit.progress import quiet_lightning, track
from reprokit.runs import RunDir
from reprokit.runtime import Runtime, available_cpus, seed_everything

INFONCE = (1.0, 1.0)


@dataclass(frozen=True)
class Arm:
    data: str                 # long_tailed | balanced
    alpha: float
    lam: float
    include_positive: bool
    strength: float           # training augmentation strength
    seed: int

    @property
    def key(self) -> str:
        n_i = "incl" if self.include_positive else "decoupled"
        return (f"{self.data}_a{self.alpha:g}_l{self.lam:g}_{n_i}_s{self.strength:g}"
                f"_seed{self.seed}")

    @property
    def is_infonce(self) -> bool:
        return (self.alpha, self.lam) == INFONCE and self.include_positive


def grid_arms(cfg: BalconConfig) -> list[Arm]:
    return [Arm(cfg.grid.data, float(a), float(b), cfg.grid.include_positive,
                float(cfg.train.augment_strength), int(s))
            for a in cfg.grid.alphas for b in cfg.grid.lambdas for s in cfg.seeds]


def best_balanced_setting(grid_results: list[dict]) -> tuple[float, float]:
    """The grid cell ≠ (1, 1) with λ > 0 and the highest mean linear-probe accuracy
    (ties: the cell nearest (1, 1))."""
    cells: dict[tuple[float, float], list[float]] = {}
    for r in grid_results:
        if (r["alpha"], r["lam"]) != INFONCE and r["lam"] > 0:
            cells.setdefault((r["alpha"], r["lam"]), []).append(r["linear_acc"])
    scored = {cell: np.nanmean(v) if np.isfinite(v).any() else -1.0 for cell, v in cells.items()}
    if not scored:
        return INFONCE
    return max(scored, key=lambda cell: (scored[cell], -abs(cell[0] - 1) - abs(cell[1] - 1)))


def longtail_arms(cfg: BalconConfig, best: tuple[float, float]) -> list[Arm]:
    strength = float(cfg.train.augment_strength)
    return [arm for data in ("balanced", "long_tailed") for s in cfg.confirm_seeds
            for arm in (Arm(data, *INFONCE, True, strength, int(s)),
                        Arm(data, *best, cfg.grid.include_positive, strength, int(s)))]


def bias_arms(cfg: BalconConfig) -> list[Arm]:
    return [Arm(cfg.grid.data, 1.0, 1.0, True, float(st), int(s))
            for st in cfg.bias.train_strengths for s in (cfg.bias.seeds or cfg.seeds)]


# ---------------------------------------------------------------- one arm


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _nan_if_nonfinite(*tensors: torch.Tensor) -> bool:
    return not all(torch.isfinite(t).all() for t in tensors)


def _backbone_kwargs(cfg: BalconConfig, data) -> dict:
    kwargs = dict(cfg.model.backbone_kwargs)
    if cfg.model.backbone == "digits_mlp":
        if hasattr(data, "input_shape"):  # in-memory images: the MLP's input is their shape
            kwargs.setdefault("in_shape", data.input_shape)
    else:
        kwargs.setdefault("in_channels", data.in_channels)
    return kwargs


def train_arm(cfg: BalconConfig, arm: Arm, data, runtime: Runtime, devices: int = 1,
              checkpoint_dir=None, record_batches: bool = False,
              progress: bool = True) -> tuple[SimCLRModule, float]:
    """Train one SimCLR encoder; returns the module and the training wall time.
    `record_batches` keeps the dataset indices of every step's batch on the module (DDP
    tests: which rank drew what); `progress`: a step bar on a terminal."""
    seed_everything(arm.seed)
    kwargs = _backbone_kwargs(cfg, data)
    net = SimCLRNet(cfg.model.backbone, kwargs, cfg.model.proj_hidden, cfg.model.proj_dim)
    loss = BalancedContrastiveLoss(arm.alpha, arm.lam, cfg.train.temperature,
                                   arm.include_positive)
    if cfg.model.channels_last:
        net = net.to(memory_format=torch.channels_last)
    module = SimCLRModule(net, loss, data.augment(arm.strength), bn_views=cfg.model.bn_views,
                          channels_last=cfg.model.channels_last, seed=arm.seed)
    module.record_batches = record_batches
    quiet_lightning()
    checkpoint = checkpoint_dir / "last.ckpt" if checkpoint_dir is not None else None

    def make_loader(start_step: int):
        return data.train_loader(cfg.train.batch_size, arm.seed, cfg.data.num_workers,
                                 start_step=start_step)

    start = time.perf_counter()
    fabric = fit(module, cfg.train, make_loader, runtime, devices, checkpoint=checkpoint,
                 name=f"arm {arm.key}", progress=progress)
    module.rank_zero = fabric.is_global_zero
    return module, time.perf_counter() - start


@torch.no_grad()
def evaluate_arm(cfg: BalconConfig, module: SimCLRModule, data, device, seed: int) -> dict:
    """kNN and linear-probe accuracy of the encoder, collapse monitors, prototype bias."""
    encoder = module.net.encoder.to(device)
    train_x, train_y = data.features(encoder, "train", device, cfg.eval.max_images)
    test_x, test_y = data.features(encoder, "test", device, cfg.eval.max_images)
    nan = float("nan")
    out = {"knn_acc": nan, "linear_acc": nan, "feature_std": nan, "embedding_std": nan,
           "effective_rank": nan, "bias": {}}
    if _nan_if_nonfinite(train_x, test_x):
        return out  # a diverged encoder is recorded as NaN, not dropped
    out["knn_acc"] = knn_accuracy(train_x, train_y, test_x, test_y, k=cfg.eval.knn_k,
                                  temperature=cfg.eval.knn_temperature,
                                  num_classes=data.num_classes)
    out["linear_acc"] = linear_probe_accuracy(train_x, train_y, test_x, test_y,
                                              epochs=cfg.eval.probe_epochs, lr=cfg.eval.probe_lr,
                                              seed=seed, num_classes=data.num_classes)
    z = module.net.projector.to(device).eval()(test_x.to(device)).float().cpu()
    out["feature_std"] = normalized_std(test_x)
    out["embedding_std"] = normalized_std(z)
    out["embedding_dim"] = z.shape[1]
    out["effective_rank"] = effective_rank(F.normalize(test_x, dim=1))
    views = [int(m) for m in cfg.bias.views]
    for strength in cfg.bias.strengths:
        feats, labels = data.view_features(encoder, float(strength), max(views), device,
                                           seed=seed + 7919, max_images=cfg.bias.max_images)
        if _nan_if_nonfinite(feats):
            continue
        out["bias"][f"{float(strength):g}"] = prototype_bias(F.normalize(feats, dim=2), labels,
                                                             views)
    return out


def run_arm(cfg: BalconConfig, arm: Arm, data, runtime: Runtime, run: RunDir,
            devices: int = 1, threads: int | None = None) -> dict:
    """Train and evaluate one arm; rank 0 writes ``results/<arm>.json`` (other DDP ranks
    wait for it and return it, so every rank goes on with the same results). Runs in the
    main process or in a worker process (then `data` is None and built here)."""
    if threads:
        torch.set_num_threads(threads)
    in_worker = data is None  # parallel workers show no step bar: the parent shows the arms'
    if in_worker:  # a worker process builds its own copy (cheap, deterministic)
        data = build_data(cfg.data, long_tailed=arm.data == "long_tailed")
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    ckpt_dir = run.checkpoints / arm.key
    module, train_wall = train_arm(cfg, arm, data, runtime, devices, ckpt_dir,
                                   progress=not in_worker)
    result_file = run.path / "results" / f"{arm.key}.json"
    if not getattr(module, "rank_zero", True):
        while not result_file.exists():  # rank 0 evaluates; its file is the arm's result
            time.sleep(0.1)
        return run.read_json(f"results/{arm.key}.json")
    metrics = evaluate_arm(cfg, module, data, runtime.device, arm.seed)
    curve = module.loss_curve
    final_loss = curve[-1][1] if curve else float("nan")
    result = {**asdict(arm), "key": arm.key, **metrics, "final_loss": final_loss,
              "diverged": module.nonfinite_steps > 0 or not math.isfinite(final_loss),
              "loss_curve": curve, "train_wall_s": train_wall,
              "wall_s": time.perf_counter() - wall0, "cpu_s": _cpu_seconds() - cpu0}
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # the result file will stand for the arm
    run.write_json(f"results/{arm.key}.json", result)
    return result


# ---------------------------------------------------------------- floors and driver


def floor_baseline(cfg: BalconConfig, data, seeds) -> dict:
    """The signal floors of a training set: kNN and linear probe on raw pixels (in-memory
    data), and on the randomly initialised encoder of every seed — exactly the weights that
    seed's arms start from, so an arm can be compared with its own starting point."""
    out: dict = {"train_counts": data.train_counts(), "test_size": data.test_size(),
                 "random": {}}
    ev = cfg.eval
    if hasattr(data, "bank"):
        train_x, test_x = data.bank.images.flatten(1), data.test.images.flatten(1)
        ty, sy = data.bank.labels, data.test.labels
        out["raw"] = {
            "knn_acc": knn_accuracy(train_x, ty, test_x, sy, k=ev.knn_k,
                                    temperature=ev.knn_temperature,
                                    num_classes=data.num_classes),
            "linear_acc": linear_probe_accuracy(train_x, ty, test_x, sy, epochs=ev.probe_epochs,
                                                lr=ev.probe_lr, num_classes=data.num_classes)}
    for seed in seeds:
        seed_everything(seed)
        encoder = SimCLRNet(cfg.model.backbone, _backbone_kwargs(cfg, data),
                            cfg.model.proj_hidden, cfg.model.proj_dim).encoder
        train_x, train_y = data.features(encoder, "train", "cpu", ev.max_images)
        test_x, test_y = data.features(encoder, "test", "cpu", ev.max_images)
        out["random"][str(seed)] = {
            "knn_acc": knn_accuracy(train_x, train_y, test_x, test_y, k=ev.knn_k,
                                    temperature=ev.knn_temperature,
                                    num_classes=data.num_classes),
            "linear_acc": linear_probe_accuracy(train_x, train_y, test_x, test_y,
                                                epochs=ev.probe_epochs, lr=ev.probe_lr,
                                                seed=seed, num_classes=data.num_classes)}
    return out


def all_seeds(cfg: BalconConfig) -> list[int]:
    return sorted({int(s) for s in [*cfg.seeds, *cfg.confirm_seeds, *cfg.bias.seeds]})


def load_results(run: RunDir) -> dict[str, dict]:
    folder = run.path / "results"
    if not folder.is_dir():
        return {}
    return {p.stem: run.read_json(f"results/{p.name}") for p in sorted(folder.glob("*.json"))}


def default_workers(cfg: BalconConfig, runtime: Runtime, devices: int) -> int:
    if devices > 1 or runtime.accelerator != "cpu":
        return 1
    return cfg.train.workers or available_cpus()


def run_experiments(cfg: BalconConfig, runtime: Runtime, run: RunDir, devices: int = 1,
                    log=print, rank_zero: bool = True) -> dict[str, dict]:
    if rank_zero:
        (run.path / "results").mkdir(exist_ok=True)
    done = load_results(run)
    if done and rank_zero:
        log(f"resuming: {len(done)} finished arm(s) read back from {run.path / 'results'}")
    workers = default_workers(cfg, runtime, devices)
    cache: dict[str, object] = {}

    def data_for(variant: str):
        if variant not in cache:
            cache[variant] = build_data(cfg.data, long_tailed=variant == "long_tailed")
            name = f"baseline_{variant}.json"
            if rank_zero and not (run.path / name).exists():
                run.write_json(name, floor_baseline(cfg, cache[variant], all_seeds(cfg)))
        return cache[variant]

    def finished(arm: Arm, result: dict, experiment: str) -> None:
        done[arm.key] = result
        if not rank_zero:
            return
        run.log({k: v for k, v in result.items() if k not in ("loss_curve", "bias")})
        log(f"[{experiment}] {arm.key}: linear {result['linear_acc']:.3f} "
            f"knn {result['knn_acc']:.3f} loss {result['final_loss']:.3f} "
            f"({result['wall_s']:.1f}s wall, {result['cpu_s']:.1f}s cpu)")

    def run_all(arms: list[Arm], experiment: str) -> None:
        todo = [a for a in dict.fromkeys(arms) if a.key not in done]
        n = min(workers, len(todo))
        if n <= 1:
            for arm in track(todo, f"{experiment}: {len(todo)} arm(s)"):
                finished(arm, run_arm(cfg, arm, data_for(arm.data), runtime, run, devices),
                         experiment)
            return
        # Arms in parallel processes, one torch thread each: these small models use cores
        # far better that way than with intra-op threads. Each worker builds its own data.
        context = get_context("spawn")  # fork is unsafe with torch's thread pools
        with ProcessPoolExecutor(n, mp_context=context) as pool:
            futures = {pool.submit(run_arm, cfg, arm, None, runtime, run, 1, 1): arm
                       for arm in todo}
            for future in track(as_completed(futures), f"{experiment}: {len(todo)} arm(s)",
                                total=len(futures)):
                finished(futures[future], future.result(), experiment)

    for variant in {cfg.grid.data} | ({"balanced", "long_tailed"}
                                      if "longtail" in cfg.experiments else set()):
        data_for(variant)
    plan: dict = {}
    if "grid" in cfg.experiments:
        arms = grid_arms(cfg)
        run_all(arms, "grid")
        plan["best_balanced"] = list(best_balanced_setting([done[a.key] for a in arms]))
        if "longtail" in cfg.experiments:
            run_all(longtail_arms(cfg, tuple(plan["best_balanced"])), "longtail")
    if "bias" in cfg.experiments:
        run_all(bias_arms(cfg), "bias")
    if rank_zero:
        run.write_json("plan.json", plan)
    return done
