"""``perln``: reproduce Peri-LN (normalization placement) and benchmark the training step."""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from perln import config as config_mod
from perln.config import PerlnConfig
from reprokit.config import load_config, parse_seeds
from reprokit.errors import ConfigError, ReprokitError
from reprokit.runs import RunDir, default_run_name
from reprokit.runtime import select_accelerator, setup

log = logging.getLogger("perln")


def _devices(text: str):
    return int(text) if str(text).isdigit() else text


def _load_corpus(cfg: PerlnConfig):
    """(train, val) tokens; sets the model's vocabulary from the tokenizer."""
    from perln.data import load_tokens

    log.info("loading corpus %s with tokenizer %s", cfg.data.source, cfg.data.tokenizer)
    train, val, tokenizer = load_tokens(cfg.data)
    cfg.model = replace(cfg.model, vocab_size=int(tokenizer.vocab_size))
    if train.numel() <= cfg.model.block_size + 1 or val.numel() <= cfg.model.block_size + 1:
        raise ConfigError(f"data.source={cfg.data.source!r} has fewer tokens than one "
                          f"training window of {cfg.model.block_size + 1}")
    return train, val


def reproduce(args: argparse.Namespace) -> None:
    from perln.data import save_tokens
    from perln.experiments import check_strategy, run_sweep, training_precision
    from perln.report import build_report

    overrides = list(args.set or [])
    if args.seeds:
        overrides.append(f"sweep.seeds={parse_seeds(args.seeds)}")
    # Lightning's DDP launcher re-runs this command for ranks 1..N-1: they must join the run
    # that rank 0 created, not start their own.
    child = os.environ.get("PERLN_RUN_NAME") and int(os.environ.get("LOCAL_RANK", "0")) > 0
    name = os.environ.get("PERLN_RUN_NAME") if child else None
    name = name or args.run_name or default_run_name(args.scale)
    os.environ["PERLN_RUN_NAME"] = name
    if child:  # reads the run folder, writes nothing (rank 0 writes every file)
        run = SimpleNamespace(path=Path(args.out) / "perln" / name, log=lambda record: None)
        cfg = load_config(PerlnConfig, run.path / "config.yaml")
        run_sweep(cfg, run, run.path / "tokens.pt", args.accelerator, _devices(args.devices))
        return
    if args.resume:
        if not args.run_name:
            raise ConfigError("--resume needs --run-name NAME (the run to continue)")
        run = RunDir("perln", name, root=args.out, resume=True)
        if overrides:
            raise ConfigError("--set/--seeds cannot change a run being resumed; "
                              "start a new --run-name instead")
        cfg = load_config(PerlnConfig, run.path / "config.yaml")
        cfg.validate()
        check_strategy(cfg, select_accelerator(args.accelerator))
        tokens = None
    else:
        # Everything that can fail on bad input (config, strategy, corpus) happens before the
        # run folder exists, so a failed start leaves no empty folder and `latest` unmoved.
        cfg = config_mod.load(args.scale, overrides)
        check_strategy(cfg, select_accelerator(args.accelerator))
        tokens = _load_corpus(cfg)
        run = RunDir("perln", name, root=args.out)
    runtime = setup(args.accelerator, training_precision(cfg, select_accelerator(args.accelerator)))
    tokens_path = run.path / "tokens.pt"
    if not tokens_path.exists():
        train, val = tokens if tokens is not None else _load_corpus(cfg)
        save_tokens(tokens_path, train, val)
    run.save_config(cfg)
    run.save_environment(runtime)
    log.info("run directory %s", run.path)
    started = time.perf_counter()
    run_sweep(cfg, run, tokens_path, args.accelerator, _devices(args.devices))
    own, workers = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                         resource.RUSAGE_CHILDREN))
    run.log({"event": "session_finished", "wall_seconds": time.perf_counter() - started,
             "cpu_seconds": own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime})
    path = build_report(run.path)
    print(path)


def bench(args: argparse.Namespace) -> None:
    from perln.bench import BenchArgs, main

    main(BenchArgs(n_layer=args.layers, n_head=args.heads, d_model=args.width,
                   block_size=args.context, batch_size=args.batch, vocab_size=args.vocab,
                   steps=args.steps, warmup=args.warmup, rounds=args.rounds,
                   probe_every=args.probe_every, accelerator=args.accelerator,
                   threads=args.threads, compile=args.compile))


def report(args: argparse.Namespace) -> None:
    from pathlib import Path

    from perln.report import build_report

    if bool(args.path) == bool(args.run_name):
        raise ConfigError("perln report needs exactly one of --run-name NAME or --path FOLDER")
    path = Path(args.path) if args.path else Path(args.out) / "perln" / args.run_name
    if not (path / "config.yaml").exists():
        raise ConfigError(f"no perln run at {path} (missing config.yaml)")
    print(build_report(path))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="perln",
        description="Reproduce 'Peri-LN: Revisiting Normalization Layer in the Transformer "
                    "Architecture' (arXiv 2502.02732): train GPTs with pre / post / peri "
                    "normalization over a learning-rate sweep and several seeds, probe the "
                    "residual stream and the gradients, and write a report with computed "
                    "verdicts.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("reproduce", help="run the placement × lr × seed sweep and write report.md",
                       description="Writes runs/perln/<run>/ (config.yaml, environment.json, "
                                   "metrics.jsonl, arms/*.json, figures/, checkpoints/, "
                                   "report.md) and prints the report path.")
    r.add_argument("--scale", default="cpu", choices=config_mod.SCALES,
                   help="smoke: seconds, checks the pipeline; cpu: the 2-core reproduction "
                        "(about 10 min); paper: the 400M setting, for GPUs (default: cpu)")
    r.add_argument("--run-name", help="run folder name (default: <scale>-<date>-<time>)")
    r.add_argument("--resume", action="store_true",
                   help="continue the run --run-name: finished arms are kept, unfinished ones "
                        "restart from their last checkpoint; a finished run just gets its "
                        "report rewritten")
    r.add_argument("--out", default="runs", help="root folder of run directories (default: runs)")
    r.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2 (overrides the config)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.n_layer=16 "
                        "--set 'sweep.lrs=[1e-3,1e-2]' (repeatable)")
    r.add_argument("--accelerator", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    r.add_argument("--devices", default="auto",
                   help="devices per node for Lightning (e.g. 8 with --set train.strategy=ddp)")
    r.set_defaults(func=reproduce)

    b = sub.add_parser("bench", help="tokens/s of perln's Pre-LN step vs a plain PyTorch loop",
                       description="Prints one JSON line: tokens/s of perln (Lightning), of a "
                                   "minimal plain-PyTorch GPT loop with the same architecture "
                                   "and batch, their ratio, the instrumentation overhead, and "
                                   "MFU on GPU.")
    b.add_argument("--layers", type=int, default=6)
    b.add_argument("--heads", type=int, default=4)
    b.add_argument("--width", type=int, default=128)
    b.add_argument("--context", type=int, default=128)
    b.add_argument("--batch", type=int, default=16)
    b.add_argument("--vocab", type=int, default=256, help="vocabulary (256: bytes)")
    b.add_argument("--steps", type=int, default=30, help="timed steps per round")
    b.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    b.add_argument("--rounds", type=int, default=2, help="alternating rounds; best is kept")
    b.add_argument("--probe-every", type=int, default=25)
    b.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    b.add_argument("--accelerator", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    b.add_argument("--compile", action="store_true", help="torch.compile perln's model")
    b.set_defaults(func=bench)

    rep = sub.add_parser("report", help="rebuild report.md of an existing run from its files")
    rep.add_argument("--run-name", help="a run under --out/perln/")
    rep.add_argument("--out", default="runs")
    rep.add_argument("--path", help="any run folder instead, e.g. packages/perln/results/cpu")
    rep.set_defaults(func=report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        args.func(args)
    except ReprokitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
