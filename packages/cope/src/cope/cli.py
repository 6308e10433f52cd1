"""Command line: ``cope reproduce | report | bench | serve``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from reprokit.config import parse_seeds
from reprokit.errors import ConfigError, ReprokitError
from reprokit.runs import RunDir, default_run_name

EPILOG = """examples:
  cope reproduce --scale smoke --out /tmp/runs
  cope reproduce --scale cpu --set data.size=20 --set budget_usd=0.0002
  cope reproduce --scale cpu --run-name cpu-1 --resume        # continue a killed run
  cope reproduce --tasks my_tasks.jsonl --set data.limit=50   # your own problems
  cope reproduce --config my.yaml --set models.1.base_url=http://127.0.0.1:8001/v1
  cope report runs/cope/latest
  cope bench
  cope serve --scale cpu --port 8000                          # COPE as one chat model

task file (--tasks FILE, or --set data.source=jsonl --set data.path=FILE): one JSON
object per line, e.g.
  {"id": "p1", "question": "What is 6 - 9 + 2?", "answer": "-1"}
  {"id": "c1", "task_type": "code", "question": "Write add(a, b).",
   "tests": ["assert add(1, 2) == 3"]}
fields: id (unique; default: line number), question (required), answer (required for
math), task_type (math | code, default math), tests (code: a list of assert statements).
The whole file runs unless --set data.limit=N asks for fewer; every line is checked
before any model loads.

exit status: 0 ok; 2 bad input or config (the message names the option/file/line);
3 the run finished but a method failed on every problem (see the report's top).
"""


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(
        prog="cope", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="COPE (arXiv 2506.11578): small and large LLMs collaborating through "
                    "plans in a cost-saving cascade, with baselines, cost ledger and report.")
    sub = parser.add_subparsers(dest="command", required=True)

    rep = sub.add_parser("reproduce", help="run every method on the benchmark and write the "
                                            "report", formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(rep)
    rep.add_argument("--run-name", default=None, help="run folder name (default: scale-time)")
    rep.add_argument("--resume", action="store_true",
                     help="continue a run: problems already in problems.jsonl are skipped")
    rep.add_argument("--out", default="runs", help="runs root (default: runs)")
    rep.add_argument("--seeds", default=None,
                     help="comma-separated seed offsets, e.g. 0,1,2 (default: from config)")
    rep.add_argument("--devices", type=int, default=1,
                     help="accepted for CLI uniformity; one device is used (vLLM takes "
                          "tensor_parallel_size from models[].engine_kwargs)")

    rpt = sub.add_parser("report", help="rebuild report.md from a run directory")
    rpt.add_argument("run_dir", help="runs/cope/<run>")

    ben = sub.add_parser("bench", help="generated tokens/s per backend: hf direct vs "
                                       "OpenAI client -> loopback server, batched vs one at a time")
    ben.add_argument("--prompts", type=int, default=8, help="prompts per measurement")
    ben.add_argument("--max-tokens", type=int, default=16, help="tokens generated per prompt")
    ben.add_argument("--accelerator", default="auto", help="auto | cpu | cuda")
    ben.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")

    srv = sub.add_parser("serve", help="serve COPE itself as an OpenAI-compatible chat "
                                       "endpoint (/v1/chat/completions)")
    _common(srv)
    srv.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--method", default="cope", help="which configured method answers")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("httpx", "httpx2", "transformers", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if args.command == "reproduce":
            path, failed = reproduce(args)
            print(path)
            if failed:
                print(f"error: method(s) {', '.join(failed)} failed on every problem (see "
                      f"the top of {path}); their claims are inconclusive", file=sys.stderr)
                return 3
        elif args.command == "report":
            from cope.report import build_report

            path = Path(args.run_dir)
            if not (path / "config.yaml").is_file():
                raise ConfigError(f"report: {path} is not a cope run directory (no config.yaml)")
            print(build_report(path.resolve()))
        elif args.command == "bench":
            from cope.bench import bench

            print(json.dumps(bench(args.prompts, args.max_tokens, args.accelerator,
                                   args.threads)))
        elif args.command == "serve":
            serve(args)
        return 0
    except ReprokitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", default="cpu", help="smoke | cpu | paper (default: cpu)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. data.size=10 (repeatable)")
    p.add_argument("--accelerator", default="auto", help="auto | cpu | cuda")
    p.add_argument("--config", dest="config_file", default=None, metavar="FILE",
                   help="a YAML file merged over the scale's config (lists such as models "
                        "are replaced whole; use --set models.1.base_url=... to change one "
                        "entry)")
    p.add_argument("--tasks", default=None, metavar="FILE",
                   help="a JSONL task file (format below); = --set data.source=jsonl "
                        "--set data.path=FILE")


def _load_config(args: argparse.Namespace, extra: list[str] = ()):
    from cope.config import load

    overrides = list(args.overrides) + list(extra)
    if args.tasks:
        overrides = ["data.source=jsonl", f"data.path={json.dumps(str(args.tasks))}",
                     *overrides]
    return load(args.scale, overrides, args.config_file)


def _threads(n: int) -> None:
    import torch

    if n > 0:
        torch.set_num_threads(n)


def reproduce(args: argparse.Namespace) -> tuple[Path, list[str]]:
    """Run and report; returns the report and the methods that failed on every problem."""
    from cope.experiments import (
        DATA_FILE,
        build_backends,
        check_resume,
        resolve_device,
        run_experiment,
    )
    from cope.report import build_report, failed_methods
    from cope.sandbox import isolation
    from cope.tasks import describe_data, load_problems

    extra = [f"seeds={parse_seeds(args.seeds)}"] if args.seeds else []
    cfg = _load_config(args, extra)
    device = resolve_device(args.accelerator)
    # a bad data option or task file fails here, before any model loads
    problems = load_problems(cfg.data)
    data_info = describe_data(cfg.data, problems)
    run = RunDir("cope", args.run_name or default_run_name(args.scale), root=args.out,
                 resume=args.resume)
    if args.resume and (run.path / "config.yaml").exists():
        check_resume(run, cfg, data_info)
        logging.getLogger("cope").info("resuming %s", run.path)
    run.save_config(cfg)
    run.write_json(DATA_FILE, data_info)
    if "code" in data_info["task_types"]:
        run.write_json("sandbox.json", isolation())
    run.save_environment()
    _threads(cfg.threads)
    backends = build_backends(cfg.roster(), device)
    try:
        run.write_json("roles.json", backends.notes)
        summary = run_experiment(cfg, run, backends.backends)
    finally:
        backends.close()
    logging.getLogger("cope").info("%d new problems, %d resumed", summary["new_problems"],
                                   summary["skipped"])
    return build_report(run.path.resolve()), failed_methods(run.path.resolve())


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from cope.config import load
    from cope.experiments import build_backends, resolve_device
    from cope.server import create_app
    from cope.service import cope_responder

    cfg = load(args.scale, args.overrides)
    methods = {m.name: m for m in cfg.method_list()}
    if args.method not in methods:
        raise ConfigError(f"--method must be one of {sorted(methods)}, got {args.method!r}")
    _threads(cfg.threads)
    backends = build_backends(cfg.roster(), resolve_device(args.accelerator))
    app = create_app(cope_responder(cfg, methods[args.method], backends.backends),
                     f"cope-{args.method}")
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    finally:
        backends.close()


if __name__ == "__main__":
    sys.exit(main())
