"""Command line: ``clipfusion reproduce`` and ``clipfusion bench``."""

from __future__ import annotations

import argparse
import json
import sys

from reprokit.errors import ConfigError, ReprokitError

DESCRIPTION = """\
CLIPFusion (Lee et al., "CLIP Meets Diffusion: A Synergistic Approach to Anomaly Detection",
arXiv 2506.11772): zero/few-shot anomaly classification and segmentation by fusing a CLIP
branch (PatchCLIP) and a Stable Diffusion branch (MapDiff).

Scales: smoke (seconds, tests), cpu (minutes on 2 cores: synthetic textures, tiny RANDOM
models; default), paper (MVTec-AD/VisA with pretrained OpenCLIP and Stable Diffusion weights;
needs --set data.root=... and the hub or local weight paths).
"""


def _ints(text: str, option: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise ConfigError(f"{option} must be comma-separated integers, got {text!r}") from err
    if not values:
        raise ConfigError(f"{option} must not be empty")
    return values


def _config(args):
    from clipfusion.config import load

    overrides = list(args.set or [])
    cfg = load(args.scale, overrides)
    if getattr(args, "shots", None):
        cfg.shots = _ints(args.shots, "--shots")
    if getattr(args, "seeds", None):
        cfg.seeds = _ints(args.seeds, "--seeds")
    cfg.accelerator = args.accelerator
    if getattr(args, "devices", 1) < 1:
        raise ConfigError(f"--devices must be >= 1, got {args.devices}")
    return cfg.validate()


def cmd_reproduce(args) -> int:
    from clipfusion.experiments import run_all
    from clipfusion.report import write_report
    from reprokit.runs import RunDir, default_run_name
    from reprokit.runtime import setup

    cfg = _config(args)
    run = RunDir("clipfusion", args.run_name or default_run_name(cfg.scale), root=args.out,
                 resume=args.resume)
    if args.resume and (run.path / "config.yaml").is_file():
        from clipfusion.config import Config
        from reprokit.config import load_config

        saved = load_config(Config, run.path / "config.yaml")
        if saved != cfg:
            raise ConfigError(f"--resume: the options differ from the run's saved config "
                              f"{run.path / 'config.yaml'}; resume with the same options")
    runtime = setup(cfg.accelerator, cfg.precision, seed=0)
    run.save_config(cfg)
    run.save_environment(runtime)
    if args.devices > 1:
        from clipfusion.parallel import run_sharded

        (run.path / "results").mkdir(exist_ok=True)
        (run.path / "maps").mkdir(exist_ok=True)
        run_sharded(cfg, run, args.devices, runtime.accelerator)
    else:
        run_all(cfg, run, runtime)
    path = write_report(run.path)
    print(path)
    return 0


def cmd_bench(args) -> int:
    from clipfusion.bench import run_bench
    from reprokit.runtime import setup

    cfg = _config(args)
    if args.devices != 1:
        raise ConfigError("bench: --devices must be 1 (it times one process)")
    runtime = setup(cfg.accelerator, cfg.precision, threads=args.threads, seed=0)
    print(json.dumps(run_bench(cfg, runtime, batch=args.batch, repeats=args.repeats)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipfusion", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--scale", default="cpu", choices=("smoke", "cpu", "paper"),
                       help="configuration scale (default: cpu)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config value, e.g. --set fusion.alpha=0.3 "
                            "--set data.root=/data/mvtec (repeatable)")
        p.add_argument("--accelerator", default="auto", choices=("auto", "cpu", "cuda", "mps"))
        p.add_argument("--devices", type=int, default=1,
                       help="processes (one GPU each on CUDA) over which the test images are "
                            "sharded (reproduce); rank 0 gathers the maps and scores them")

    rep = sub.add_parser("reproduce", help="run the experiments and write report.md",
                         description="Per category: fused vs each branch alone for each shot "
                                     "count; tables, figures, claims with computed verdicts.")
    common(rep)
    rep.add_argument("--shots", help="comma-separated shot counts, e.g. 0,1,2,4")
    rep.add_argument("--seeds", help="comma-separated seeds of the reference-image draws")
    rep.add_argument("--run-name", help="run folder name (default: <scale>-<timestamp>)")
    rep.add_argument("--out", default="runs", help="root of run folders (default: runs)")
    rep.add_argument("--resume", action="store_true",
                     help="continue a run: finished categories are read back, not recomputed")
    rep.set_defaults(func=cmd_reproduce)

    ben = sub.add_parser("bench", help="per-image latency of each stage, the fused pipeline "
                                       "before/after the speed-ups and the WinCLIP-style "
                                       "reference; prints one JSON line")
    common(ben)
    ben.add_argument("--batch", type=int, default=4)
    ben.add_argument("--repeats", type=int, default=3)
    ben.add_argument("--threads", type=int, default=1,
                     help="torch threads (default 1: comparable side-by-side timings)")
    ben.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ReprokitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
