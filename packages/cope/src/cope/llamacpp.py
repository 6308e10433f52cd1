"""The ``llamacpp`` backend: GGUF models through llama.cpp (llama-cpp-python), CPU or GPU.

Same interface as ``hf``: ``generate(prompts, n, temperature, max_tokens, stop, seed)``
returns one Generation per prompt with n samples. Why a second local runtime: transformers
de-quantises a GGUF to float32 and decodes 3-5x slower on CPU than llama.cpp on the same
file (``cope bench`` measures both side by side).

How a call is spread out. llama-cpp-python's ``Llama`` decodes one sequence at a time, so
the rows (prompt × sample) go to ``workers`` processes, each holding the model (the file
is mmap-ed: the weights sit once in the page cache) with ``threads`` threads. One thread
per process: on a shared 2-core machine, two threads in one process collapsed to 0.5 tok/s
as soon as another process took a core, while single-threaded processes degrade gracefully.
All samples of a prompt go to the same worker, which evaluates the prompt once and reuses
its KV cache for every sample (llama.cpp keeps the longest common prefix). Each sample has
its own seed derived from (call seed, prompt, sample index), so the texts do not depend on
which worker ran them or in what order.

``workers: 0`` runs in this process (tests, one-off use). ``n_gpu_layers: -1`` offloads
every layer to a GPU when llama-cpp-python was built with CUDA (the default build here
is CPU only; see the root pyproject.toml).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from cope.backends import Generation, Prompt, as_messages, cut_at_stop
from reprokit.errors import ConfigError

INSTALL_HINT = ("backend 'llamacpp' needs llama-cpp-python: uv sync --package cope --extra "
                "llamacpp (builds it from the sdist once, ~9 min on 2 cores)")


def llama_cpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def gguf_path(spec: str) -> Path:
    """A model spec (``registry:<name>``, ``gguf:<package>/<file>`` or a file path) -> file."""
    if spec.startswith("registry:"):
        from cope.models import resolve

        return resolve(spec)
    if spec.startswith("gguf:"):
        from cope.backends import resolve_model_path

        folder, filename = resolve_model_path(spec)
        return Path(folder) / filename
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"model {spec!r}: the llamacpp backend needs a GGUF file "
                          "(registry:<name>, gguf:<package>/<file> or a path)")
    return path


def sample_seed(seed: int | None, prompt_key: str, k: int) -> int:
    """A 31-bit seed per (call seed, prompt, sample): stable across processes and runs."""
    text = f"{seed}\x00{prompt_key}\x00{k}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "little") & 0x7FFFFFFF


# ---------------------------------------------------------------- one model, one process

_MODEL: Any = None  # the worker process's Llama


def _load(path: str, n_ctx: int, threads: int, n_gpu_layers: int, n_batch: int) -> Any:
    try:
        from llama_cpp import Llama
    except ImportError as err:
        raise ConfigError(INSTALL_HINT) from err
    return Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                 n_gpu_layers=n_gpu_layers, n_batch=n_batch, verbose=False)


def _init_worker(path: str, n_ctx: int, threads: int, n_gpu_layers: int, n_batch: int) -> None:
    global _MODEL
    # A worker must not fan out further (numpy/OpenMP pools inside the bindings).
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    _MODEL = _load(path, n_ctx, threads, n_gpu_layers, n_batch)


def _run_rows(llm: Any, job: dict) -> tuple[int, list[tuple[str, int]]]:
    """Decode the samples ``job["seeds"]`` of one prompt; returns (prompt tokens, samples)."""
    messages, stop = job["messages"], job["stop"]
    greedy = job["temperature"] <= 0
    out: list[tuple[str, int]] = []
    prompt_tokens = 0
    for seed in job["seeds"]:
        resp = llm.create_chat_completion(
            messages=messages, max_tokens=job["max_tokens"], stop=stop or [], seed=seed,
            # plain sampling, as the hf backend does: no top-k/top-p/min-p truncation
            temperature=max(job["temperature"], 0.0), top_k=0, top_p=1.0, min_p=0.0,
            repeat_penalty=1.0)
        choice = resp["choices"][0]
        usage = resp.get("usage") or {}
        prompt_tokens = usage.get("prompt_tokens", 0)
        out.append((cut_at_stop(choice["message"]["content"] or "", stop),
                    usage.get("completion_tokens", 0)))
        if greedy:  # greedy samples are identical: decode once
            out = out * len(job["seeds"])
            break
    return prompt_tokens, out


def _worker_job(job: dict) -> tuple[int, list[tuple[str, int]]]:
    return _run_rows(_MODEL, job)


# ---------------------------------------------------------------- the backend


class LlamaCppBackend:
    def __init__(self, model: str, name: str = "llamacpp", workers: int = 1, threads: int = 1,
                 n_ctx: int = 2048, n_gpu_layers: int = 0, n_batch: int = 512):
        if not llama_cpp_available():
            raise ConfigError(INSTALL_HINT)
        if workers < 0 or threads < 1:
            raise ConfigError(f"models.{name}: llamacpp needs workers >= 0 and threads >= 1, "
                              f"got workers={workers}, threads={threads}")
        self.name = name
        self.spec = model
        self.path = gguf_path(model)
        self.workers = workers
        args = (str(self.path), n_ctx, threads, n_gpu_layers, n_batch)
        self._local = None
        self._pool = None
        if workers == 0:
            self._local = _load(*args)
        else:
            # spawn, not fork: the parent may hold torch/OpenMP threads that a fork breaks
            self._pool = ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker, initargs=args)

    def generate(self, prompts: Sequence[Prompt], n: int = 1, temperature: float = 0.0,
                 max_tokens: int = 64, stop: Sequence[str] | None = None,
                 seed: int | None = None) -> list[Generation]:
        if not prompts:
            return []
        # Split a prompt's samples over workers only when there are fewer prompts than
        # workers: otherwise whole prompts keep their KV-cache reuse.
        groups = 1 if len(prompts) >= max(self.workers, 1) or temperature <= 0 else \
            min(n, -(-self.workers // len(prompts)))
        jobs, owners = [], []
        for i, prompt in enumerate(prompts):
            messages = as_messages(prompt)
            key = repr(messages)
            seeds = [sample_seed(seed, key, k) for k in range(n)]
            for g in range(groups):
                part = seeds[g::groups]
                if part:
                    jobs.append({"messages": messages, "seeds": part, "stop": list(stop or []),
                                 "temperature": temperature, "max_tokens": max_tokens})
                    owners.append((i, list(range(g, n, groups))))
        if self._pool is not None:
            results = list(self._pool.map(_worker_job, jobs))
        else:
            results = [_run_rows(self._local, job) for job in jobs]
        texts: list[list[str]] = [[""] * n for _ in prompts]
        counts: list[list[int]] = [[0] * n for _ in prompts]
        prompt_tokens = [0] * len(prompts)
        for (i, slots), (ptoks, samples) in zip(owners, results):
            prompt_tokens[i] = ptoks
            for slot, (text, count) in zip(slots, samples):
                texts[i][slot], counts[i][slot] = text, count
        return [Generation(texts=texts[i], prompt_tokens=prompt_tokens[i],
                           completion_tokens=counts[i]) for i in range(len(prompts))]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
