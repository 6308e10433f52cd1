"""``gsg reproduce`` and ``gsg bench``; run ``gsg <command> --help`` for the options."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from gsg.config import SCALES
from reprokit.config import parse_seeds
from reprokit.errors import ConfigError, ReprokitError

DESCRIPTION = """Reproduce "Implicit Contrastive Representation Learning with Guided
Stop-gradient" (Lee & Lee, NeurIPS 2023): GSG for SimSiam and BYOL.

  gsg reproduce --scale cpu     offline, ~15 CPU-minutes: noisy scikit-learn digits, MLP encoder
  gsg reproduce --scale smoke   a few seconds, checks the pipeline end to end
  gsg reproduce --scale paper   CIFAR-10, ResNet-18 (CIFAR stem), 200 epochs, batch 512 (GPU)
  gsg bench                     training-step throughput against a plain-PyTorch SimSiam step
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gsg", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="run the three experiments and write report.md",
                         description="Train every arm (method × seed × setting), evaluate, and "
                         "write runs/gsg/<run>/report.md with the claims table.")
    rep.add_argument("--scale", default="cpu", choices=SCALES,
                     help="smoke (seconds), cpu (default, ~15 CPU-min offline) or paper (GPU)")
    rep.add_argument("--run-name", default=None, help="run folder name (default: <scale>-<time>)")
    rep.add_argument("--resume", action="store_true",
                     help="continue a run: finished arms are read back, unfinished ones restart "
                     "from their last checkpoint; a finished run just rewrites its report")
    rep.add_argument("--out", default="runs", help="root folder of runs (default: runs)")
    rep.add_argument("--seeds", default=None, help="comma-separated seeds of the main runs, "
                     "e.g. 0,1,2 (overrides experiments.seeds)")
    rep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set train.epochs=50 "
                     "--set data.root=/data/cifar10 (repeatable)")
    rep.add_argument("--accelerator", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    rep.add_argument("--devices", type=int, default=1,
                     help="devices per arm (Lightning DDP when > 1; needs --run-name)")
    rep.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: train.threads of the config; 0 = all cores)")

    bench = sub.add_parser("bench", help="images/s of a training step vs plain PyTorch",
                           description="Time gsg's training loop (SSLTraining on Fabric, as "
                           "reproduce runs it) against a plain-PyTorch loop of the same SimSiam "
                           "step on the same backbone and batches, in alternating rounds on "
                           "one thread; prints one JSON line.")
    bench.add_argument("--scale", default="cpu", choices=SCALES,
                       help="take the model and data shapes from this config")
    bench.add_argument("--method", default="simsiam",
                       choices=("simsiam", "simsiam_gsg", "byol", "byol_gsg"))
    bench.add_argument("--batch-size", type=int, default=None)
    bench.add_argument("--steps", type=int, default=200, help="timed steps per side and round "
                       "(after a warm-up of steps/5)")
    bench.add_argument("--rounds", type=int, default=5,
                       help="rounds, alternating which side runs first (ratio: their median)")
    bench.add_argument("--accelerator", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    bench.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser


def reproduce(args: argparse.Namespace) -> None:
    from gsg import config
    from gsg.experiments import run_experiments
    from gsg.report import build_report
    from gsg.setting import describe_setting
    from reprokit.runs import RunDir, RunView, default_run_name
    from reprokit.runtime import setup

    overrides = list(args.overrides)
    if args.seeds is not None:
        overrides.append(f"experiments.seeds={parse_seeds(args.seeds)}")
    cfg = config.load(args.scale, overrides)
    if args.devices > 1 and args.run_name is None:
        raise ConfigError("--devices > 1 needs an explicit --run-name (every DDP rank opens it)")
    runtime = setup(args.accelerator, cfg.train.precision,
                    threads=args.threads or cfg.train.threads or None)
    # DDP (--devices > 1) relaunches this command once per extra rank: those ranks reopen the
    # run folder that rank 0 created and leave every write to rank 0.
    rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    if rank > 0 and args.run_name is None:
        raise ConfigError("--devices > 1 needs an explicit --run-name (every rank opens it)")
    if rank > 0:  # rank 0 owns the run folder; RunDir() would also re-point `latest`
        view = RunView(Path(args.out) / "gsg" / args.run_name)
        run_experiments(cfg, view, runtime, devices=args.devices, resume=True, write=False)
        return
    run = RunDir("gsg", args.run_name or default_run_name(args.scale), root=args.out,
                 resume=args.resume)
    if args.resume and (run.path / "config.yaml").is_file():
        saved = config.load_config(config.GSGConfig, run.path / "config.yaml")
        if config.to_dict(saved) != config.to_dict(cfg):
            raise ConfigError(f"--resume: {run.path / 'config.yaml'} differs from the config "
                              "asked for now; resume with the same --scale/--set/--seeds")
    run.save_config(cfg)
    run.save_environment(runtime)
    start = time.perf_counter()
    print(f"[gsg] run {run.path} ({runtime.accelerator}, {runtime.precision}, "
          f"{runtime.threads} threads)", flush=True)
    run.write_json("setting.json", describe_setting(cfg))  # deterministic and cheap
    run_experiments(cfg, run, runtime, devices=args.devices, resume=args.resume)
    path = build_report(run.path)
    print(f"[gsg] done in {time.perf_counter() - start:.0f}s; report: {path}", flush=True)


def bench(args: argparse.Namespace) -> None:
    from gsg import config
    from gsg.bench import run_bench

    overrides = list(args.overrides)
    if args.batch_size is not None:
        overrides.append(f"train.batch_size={args.batch_size}")
    cfg = config.load(args.scale, overrides)
    print(json.dumps(run_bench(cfg, args.method, args.steps, args.rounds, args.accelerator)), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        {"reproduce": reproduce, "bench": bench}[args.command](args)
    except ReprokitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
