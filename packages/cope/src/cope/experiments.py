"""``cope reproduce``: every method on every problem, one JSONL record per finished problem.

Problems go through in chunks of ``chunk_size``: each method runs its stages over the
chunk (batched calls), then each problem's record (all methods: answers, votes, plans,
outputs, tokens, ledger, cost) is appended to ``problems.jsonl`` at once. ``--resume``
reads that file back and skips the problems already there, and restores each method's
spend for the budget cap; the report is rebuilt from the file alone.

Resuming loses nothing and mixes nothing: a last line cut mid-write by a kill is moved to
``problems.jsonl.partial`` before anything is appended, and a resume whose config (or
task file) differs from the run's refuses, naming the differing keys.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cope.backends import Backend, HFBackend, OpenAIBackend, VLLMBackend
from cope.cascade import Budget, Engine, ModelConfig, run_method
from cope.config import CopeConfig
from cope.server import ServerThread, serve_backend
from cope.tasks import Problem, load_problems
from reprokit.config import to_dict
from reprokit.errors import ConfigError
from reprokit.progress import track
from reprokit.runs import RunDir

log = logging.getLogger("cope")
PROBLEMS_FILE = "problems.jsonl"
DATA_FILE = "data.json"  # what the problems were: source, task file path and sha256, types
# Keys that may differ between a run and its resume: they change speed, not results.
RESUME_FREE_KEYS = ("threads",)


def resolve_device(accelerator: str = "auto") -> str:
    import torch

    if accelerator not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--accelerator must be auto, cpu or cuda, got {accelerator!r}")
    if accelerator == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--accelerator cuda: no CUDA device is available")
    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return accelerator


@dataclass
class Backends:
    """The roster's live backends and the loopback servers started for them."""

    backends: dict[str, Backend]
    servers: list[ServerThread] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # model -> what actually played it
    closers: list = field(default_factory=list)  # worker pools to shut down

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        for close in self.closers:
            close()


def build_backends(roster: dict[str, ModelConfig], device: str = "cpu") -> Backends:
    out = Backends({})
    for name, m in roster.items():
        if m.backend == "hf":
            out.backends[name] = HFBackend(m.model, device=device, max_batch=m.max_batch,
                                           name=name)
            out.notes[name] = f"{m.model} via transformers on {device}"
        elif m.backend == "vllm":
            out.backends[name] = VLLMBackend(m.model, name=name, **m.engine_kwargs)
            out.notes[name] = f"{m.model} via vLLM"
        elif m.backend == "llamacpp":  # GGUF through llama.cpp worker processes
            from cope.llamacpp import LlamaCppBackend

            backend = LlamaCppBackend(m.model, name=name, **m.engine_kwargs)
            out.backends[name] = backend
            out.closers.append(backend.close)
            out.notes[name] = (f"{m.model} ({backend.path.name}) via llama.cpp, "
                               f"{max(backend.workers, 1)} process(es) x "
                               f"{m.engine_kwargs.get('threads', 1)} thread")
        elif m.backend == "openai":
            base_url, api_key = m.base_url, os.environ.get(m.api_key_env, "EMPTY")
            if base_url == "loopback":
                if not m.serve_model:
                    raise ConfigError(f"models.{name}: base_url=loopback needs serve_model")
                local = HFBackend(m.serve_model, device=device, max_batch=m.max_batch,
                                  name=f"{name}-server")
                server = serve_backend(local, m.model or name)
                # uvicorn's logging setup re-enables request logs: keep one line per problem
                for noisy in ("httpx", "httpx2", "openai", "uvicorn.access"):
                    logging.getLogger(noisy).setLevel(logging.WARNING)
                out.servers.append(server)
                base_url, api_key = server.base_url, "EMPTY"
                out.notes[name] = (f"{m.serve_model} served on {server.base_url} "
                                   "(OpenAI-compatible, this process)")
            else:
                out.notes[name] = f"{m.model} at {base_url}"
            if not base_url:
                raise ConfigError(f"models.{name}: backend openai needs base_url")
            out.backends[name] = OpenAIBackend(
                base_url, m.model or name, api_key=api_key, concurrency=m.concurrency,
                timeout_s=m.timeout_s, max_retries=m.max_retries, supports_n=m.supports_n,
                name=name)
        else:
            raise ConfigError(f"models.{name}.backend: unknown backend {m.backend!r}")
    return out


def finished_problems(run: RunDir) -> dict[tuple[int, str], dict]:
    return {(r["seed"], r["id"]): r for r in run.read_log(PROBLEMS_FILE)}


def repair_jsonl(path: str | Path) -> int:
    """Cut a truncated last line (a writer killed mid-line) off `path`, keeping it aside.

    Appending onto the fragment would glue the next record to it and lose both. Returns
    the number of bytes moved to ``<path>.partial``.
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    with open(path, "rb+") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return 0
        # find the start of the last line without reading the whole file
        pos, block = size, 1 << 16
        while pos > 0:
            start = max(0, pos - block)
            fh.seek(start)
            chunk = fh.read(pos - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                pos = start + cut + 1
                break
            pos = start
        fh.seek(pos)
        fragment = fh.read()
        with open(path.with_name(path.name + ".partial"), "ab") as aside:
            aside.write(fragment + b"\n")
        fh.truncate(pos)
    log.warning("%s: the last line was cut mid-write (%d bytes); moved to %s.partial",
                path, len(fragment), path.name)
    return len(fragment)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {f"{prefix}.#": len(value)}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}.{i}"))
        return out
    return {prefix: value}


def config_differences(saved: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ (``models.1.base_url``), resume-free keys left out."""
    a, b = _flatten(saved), _flatten(current)
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>"))
    return [k for k in keys if k.split(".")[0] not in RESUME_FREE_KEYS]


def check_resume(run: RunDir, cfg: CopeConfig, data_info: dict | None = None) -> None:
    """Refuse to continue a run with another config or task file: rows would be mixed."""
    saved_path = run.path / "config.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    diff = config_differences(saved, yaml.safe_load(yaml.safe_dump(to_dict(cfg))))
    if data_info is not None and (run.path / DATA_FILE).is_file():
        old = run.read_json(DATA_FILE)
        if old.get("sha256") != data_info.get("sha256"):
            diff.append(f"task file content (sha256 {str(old.get('sha256'))[:12]}… → "
                        f"{str(data_info.get('sha256'))[:12]}…)")
    if diff:
        shown = ", ".join(diff[:12]) + (f" and {len(diff) - 12} more" if len(diff) > 12 else "")
        raise ConfigError(f"--resume: the config differs from the one {run.path} was run with "
                          f"({shown}); resuming would mix results. Start a new run "
                          "(--run-name) or resume with the same settings.")


def run_experiment(cfg: CopeConfig, run: RunDir, backends: dict[str, Backend]) -> dict:
    """Run every method on every problem not yet in the run; returns counts for the log."""
    roster = cfg.roster()
    methods = cfg.method_list()
    check_resume(run, cfg)
    repair_jsonl(run.path / PROBLEMS_FILE)
    repair_jsonl(run.path / "metrics.jsonl")
    done = finished_problems(run)
    spent = {m.name: sum(r["methods"].get(m.name, {}).get("cost_usd", 0.0)
                         for r in done.values()) for m in methods}
    budgets = {m.name: Budget(cfg.budget_usd, spent[m.name]) for m in methods}
    new = 0
    for seed in cfg.seeds:
        data = cfg.data
        problems = load_problems(type(data)(**{**data.__dict__, "seed": data.seed + seed}))
        todo = [p for p in problems if (seed, p.id) not in done]
        if len(todo) < len(problems):
            log.info("seed %d: %d of %d problems already done, skipped",
                     seed, len(problems) - len(todo), len(problems))
        engine = Engine(roster, backends, seed=seed)
        chunks = [todo[i:i + cfg.chunk_size] for i in range(0, len(todo), cfg.chunk_size)]
        for chunk_index, chunk in enumerate(track(chunks, f"seed {seed}: problems")):
            started = time.perf_counter()
            calls_before = engine.backend_calls
            per_method = {m.name: run_method(m, chunk, engine, cfg.prompts, cfg.limits,
                                             budgets[m.name]) for m in methods}
            engine.clear()
            wall = time.perf_counter() - started
            for p in chunk:
                run.log(_problem_record(seed, p, per_method, wall / len(chunk)), PROBLEMS_FILE)
            new += len(chunk)
            run.log({"seed": seed, "chunk": chunk_index, "problems": len(chunk),
                     "wall_s": wall, "backend_calls": engine.backend_calls - calls_before})
            accs = {name: sum(r[p.id]["correct"] for p in chunk) for name, r in per_method.items()}
            log.info("seed %d chunk %d/%d: %d problems in %.1fs, correct per method %s",
                     seed, chunk_index + 1, len(chunks), len(chunk), wall, accs)
    return {"new_problems": new, "skipped": len(done)}


def _problem_record(seed: int, problem: Problem, per_method: dict[str, dict],
                    wall_s: float) -> dict:
    return {"seed": seed, "id": problem.id, "question": problem.question,
            "gold": problem.answer, "task_type": problem.task_type,
            "methods": {name: results[problem.id] for name, results in per_method.items()},
            "wall_s_share": wall_s}
