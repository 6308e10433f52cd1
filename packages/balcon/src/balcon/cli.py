"""``balcon reproduce`` and ``balcon bench``."""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

from reprokit.config import parse_seeds
from reprokit.errors import ConfigError, ReprokitError

RUN_PATH_ENV = "BALCON_RUN_PATH"  # rank 0's run folder, inherited by the DDP ranks it launches

EXAMPLES = """examples:
  balcon reproduce --scale smoke --out /tmp/runs       # seconds: every code path, tiny
  balcon reproduce                                     # cpu scale, offline noisy digits (≈ 8.5 CPU-min)
  balcon reproduce --run-name cpu-x --resume           # continue a killed run / rewrite report
  balcon reproduce --scale cpu --set train.steps=600 --seeds 0,1,2,3
  balcon reproduce --scale paper --set data.root=/data/cifar --accelerator cuda
  balcon bench                                         # the cpu config's step vs plain PyTorch
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="balcon", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Reproduce 'Understanding Self-supervised Contrastive Learning through "
                    "Supervised Objectives' (Lee, TMLR 2025): the balanced contrastive loss "
                    "L(α, λ) = −α·s(z_i, z_i⁺)/τ + λ·log Σ_{k∈N(i)} exp(s(z_i, z_k)/τ) and "
                    "the prototype representation bias.", epilog=EXAMPLES)
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="run the three experiments and write report.md",
                         formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    rep.add_argument("--scale", default="cpu", choices=("smoke", "cpu", "paper"),
                     help="smoke: seconds; cpu: offline noisy digits, ≈ 8.5 CPU-min (one thread a process); paper: "
                          "CIFAR-10(-LT) ResNet-18 on GPUs (default: cpu)")
    rep.add_argument("--run-name", help="run folder name (default: <scale>-<timestamp>)")
    rep.add_argument("--resume", action="store_true",
                     help="continue an existing run: finished arms are read back and skipped")
    rep.add_argument("--out", default="runs", help="root of run folders (default: runs)")
    rep.add_argument("--seeds", help="comma-separated grid seeds, e.g. 0,1,2 (overrides config)")
    rep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set train.steps=600 (repeatable)")
    rep.add_argument("--accelerator", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    rep.add_argument("--devices", type=int, default=1, help="GPUs per arm (DDP when > 1)")
    rep.add_argument("--threads", type=int, default=None,
                     help="torch CPU threads (default: 1 for digits, whose tiny models run "
                          "fastest on one thread; all cores otherwise)")
    bench = sub.add_parser("bench", help="training-step throughput vs a plain PyTorch SimCLR step")
    bench.add_argument("--scale", default="cpu", choices=("smoke", "cpu", "paper"),
                       help="whose training step to time: that scale's backbone, input shape, "
                            "batch and augmentation (default: cpu)")
    bench.add_argument("--backbone", help="override the config's reprokit backbone")
    bench.add_argument("--batch-size", type=int, help="override train.batch_size")
    bench.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="override a config value (repeatable)")
    bench.add_argument("--steps", type=int, default=200,
                       help="timed steps per side and round (default: 200)")
    bench.add_argument("--warmup", type=int, default=10,
                       help="untimed steps before them (default: 10)")
    bench.add_argument("--rounds", type=int, default=5,
                       help="rounds, alternating which side goes first; the ratio is the median "
                            "of the per-round ratios (default: 5)")
    bench.add_argument("--accelerator", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    bench.add_argument("--threads", type=int, default=None, help="torch threads (default 1)")
    return parser


def reproduce(args) -> int:
    from balcon.config import load
    from balcon.experiments import run_experiments
    from balcon.report import write_report
    from reprokit.runs import RunDir, RunView, default_run_name
    from reprokit.runtime import setup

    overrides = list(args.overrides)
    if args.seeds:
        overrides.append(f"seeds={parse_seeds(args.seeds)}")
    if args.devices < 1:
        raise ConfigError(f"--devices must be at least 1, got {args.devices}")
    cfg = load(args.scale, overrides)
    # Tiny models run fastest on one thread; several threads only add contention.
    threads = args.threads or (1 if cfg.data.name == "digits" else None)
    runtime = setup(args.accelerator, cfg.train.precision, threads=threads)
    # Under DDP, Lightning Fabric re-runs this command once per extra rank (LOCAL_RANK set): those
    # processes join the training of each arm and write nothing; rank 0 owns the run folder,
    # whose path they get through the environment (a default run name is a timestamp).
    rank = int(os.environ.get("LOCAL_RANK", 0)) + int(os.environ.get("NODE_RANK", 0))
    if rank > 0:
        run = RunView(os.environ[RUN_PATH_ENV])
        run_experiments(cfg, runtime, run, args.devices, log=lambda m: None, rank_zero=False)
        return 0
    run = RunDir("balcon", args.run_name or default_run_name(args.scale), args.out,
                 resume=args.resume)
    os.environ[RUN_PATH_ENV] = str(run.path)
    if args.resume and (run.path / "config.yaml").exists():
        from balcon.config import BalconConfig
        from reprokit.config import load_config
        saved = load_config(BalconConfig, run.path / "config.yaml")
        if saved != cfg:
            raise ConfigError(f"--resume: the config differs from {run.path / 'config.yaml'}; "
                              "resume with the same --scale/--set/--seeds")
    run.save_config(cfg)
    run.save_environment(runtime)
    start = time.perf_counter()
    print(f"balcon: {args.scale} scale → {run.path} ({runtime.accelerator}, "
          f"{runtime.threads} thread(s))", file=sys.stderr)
    run_experiments(cfg, runtime, run, args.devices, log=lambda m: print(m, file=sys.stderr))
    run.log({"event": "finished", "wall_s": time.perf_counter() - start,
             "cpu_s": _cpu_seconds_with_children()}, "timing.jsonl")
    path = write_report(run)
    print(path)
    return 0


def _cpu_seconds_with_children() -> float:
    """CPU seconds of this process and of its finished worker processes (parallel arms)."""
    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "reproduce":
            return reproduce(args)
        from balcon.bench import bench

        print(json.dumps(bench(args.scale, args.backbone, args.batch_size, args.steps,
                               args.warmup, args.accelerator, args.threads, args.rounds,
                               args.overrides)))
        return 0
    except ReprokitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
