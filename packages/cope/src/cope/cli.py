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

TASK_FILE_HELP = """task file (--tasks FILE, or --set data.source=jsonl --set data.path=FILE): one JSON
object per line (blank lines skipped), e.g.
  {"id": "p1", "question": "What is 6 - 9 + 2?", "answer": "-1"}
  {"id": "c1", "task_type": "code", "question": "Write add(a, b).", "tests": ["assert add(1, 2) == 3"]}
fields: id (string or integer, unique; default: the line number), question (non-empty,
required), answer (required for math: a number or expression), task_type (math | code,
default math), tests (code only, required there: a list of assert statements; the first
decides the vote's confidence, all decide correctness). No other fields. Every line is
checked before any model loads (errors name FILE:LINE); the whole file runs unless
--set data.limit=N asks for fewer (data.size is for generated problems). The report
names the file, its sha256 and the task types.

exit status: 0 ok; 2 bad input or config (the message names the option/file/line, also
an endpoint refusing the credentials: 401/403); 3 the run finished but a method failed
on every problem (see the top of the report: its claims are inconclusive).
"""

SERVE_HELP = """model names (GET /v1/models lists them): cope (the --method cascade),
cope-threshold-<t> (that cascade accepting at vote share t, 0 < t <= 1), every configured
method (small_only, large_only, cascade_no_plan, cope@t=0.5, ...), every roster model
(small, large: that model alone). Task type per request: a :math / :code suffix
(cope:code) or the body field task_type; code requests need the body field tests (a
list of assert statements). Honoured: the whole conversation (the last user message is
the problem, earlier turns and system messages are context), n, max_tokens, stop,
temperature (single-sample stages), seed, stream (SSE chunks ending with [DONE]),
stream_options.include_usage. Refused with a 400 naming the field: tools, logprobs,
top_p != 1, penalties, non-text response_format or content. Past --max-pending
requests: 429 with Retry-After. GET /health: queue, spend, models.

example (python, the openai client):
  client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
  stream = client.chat.completions.create(model="cope", stream=True,
      messages=[{"role": "user", "content": "What is 6 - 9 + 2?"}])
  for chunk in stream:
      if chunk.choices:
          print(chunk.choices[0].delta.content or "", end="", flush=True)
"""

EPILOG = """examples:
  cope reproduce --scale smoke --out /tmp/runs
  cope reproduce --scale cpu --set data.size=20 --set budget_usd=0.0002
  cope reproduce --scale cpu --run-name cpu-1 --resume        # continue a killed run
  cope reproduce --tasks my_tasks.jsonl --set data.limit=50   # your own problems
  cope reproduce --config my.yaml --set models.1.base_url=http://127.0.0.1:8001/v1
  cope report runs/cope/latest
  cope bench
  cope serve --scale cpu --port 8000                          # COPE as chat models

""" + TASK_FILE_HELP


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(
        prog="cope", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="COPE (arXiv 2506.11578): small and large LLMs collaborating through "
                    "plans in a cost-saving cascade, with baselines, cost ledger and report.")
    sub = parser.add_subparsers(dest="command", required=True)

    rep = sub.add_parser("reproduce", help="run every method on the benchmark and write the "
                                            "report", epilog=TASK_FILE_HELP,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
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

    ben = sub.add_parser("bench", help="generated tokens/s: hf (transformers) vs llamacpp on "
                                       "the same GGUF, greedy and batched sampling")
    ben.add_argument("--prompts", type=int, default=4, help="prompts per measurement")
    ben.add_argument("--samples", type=int, default=4, help="samples per prompt (sampled call)")
    ben.add_argument("--max-tokens", type=int, default=32, help="tokens generated per sample")
    ben.add_argument("--model", default="registry:qwen2.5-coder-1.5b-instruct-q4_k_m",
                     help="model spec (registry:<name>, gguf:<package>/<file>)")
    ben.add_argument("--accelerator", default="cpu", help="auto | cpu | cuda")
    ben.add_argument("--threads", type=int, default=1, help="threads per runtime (default 1)")

    srv = sub.add_parser("serve", help="serve COPE itself as an OpenAI-compatible chat "
                                       "endpoint (/v1/chat/completions)", epilog=SERVE_HELP,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(srv)
    srv.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--method", default="cope",
                     help="the configured method the model name `cope` runs (default: cope)")
    srv.add_argument("--task-type", default=None,
                     help="math | code: default task type of a request (per request: a "
                          ":math/:code model suffix or the body field task_type)")
    srv.add_argument("--max-pending", type=int, default=64,
                     help="admitted requests (queued + running) before 429 + Retry-After")
    srv.add_argument("--max-batch", type=int, default=32,
                     help="requests run through the cascade together (one batch)")
    srv.add_argument("--batch-wait-ms", type=float, default=50.0,
                     help="how long the first request of a batch waits for others")

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
                                   args.threads, samples=args.samples, model=args.model)))
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


def _check_port(host: str, port: int) -> None:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as err:
            raise ConfigError(f"--host {host} --port {port}: cannot listen there "
                              f"({err.strerror or err})") from err


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from cope.experiments import build_backends, resolve_device
    from cope.server import create_app
    from cope.service import CopeService

    cfg = _load_config(args)
    methods = {m.name for m in cfg.method_list()}
    if args.method not in methods:  # before any model loads
        raise ConfigError(f"--method must be one of {sorted(methods)}, got {args.method!r}")
    if args.task_type not in (None, "math", "code"):
        raise ConfigError(f"--task-type must be math or code, got {args.task_type!r}")
    if args.max_pending < 1:
        raise ConfigError(f"--max-pending must be >= 1, got {args.max_pending}")
    if args.max_batch < 1 or args.batch_wait_ms < 0:
        raise ConfigError(f"--max-batch must be >= 1 and --batch-wait-ms >= 0, got "
                          f"{args.max_batch} and {args.batch_wait_ms}")
    _check_port(args.host, args.port)  # a taken port fails now, not after the models load
    _threads(cfg.threads)
    backends = build_backends(cfg.roster(), resolve_device(args.accelerator))
    try:
        service = CopeService(cfg, backends.backends, method=args.method,
                              task_type=args.task_type, wait_s=args.batch_wait_ms / 1000,
                              max_problems=args.max_batch)
        app = create_app(service, max_pending=args.max_pending, title="cope serve")
        logging.getLogger("cope").info("cope serve on http://%s:%d/v1, models: %s",
                                       args.host, args.port, ", ".join(service.model_ids()))
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    finally:
        backends.close()


if __name__ == "__main__":
    sys.exit(main())
