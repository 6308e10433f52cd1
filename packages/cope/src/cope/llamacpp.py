"""The ``llamacpp`` backend: GGUF models through llama.cpp (llama-cpp-python), CPU or GPU.

Same interface as ``hf``: ``generate(prompts, n, temperature, max_tokens, stop, seed)``
returns one Generation per prompt with n samples. Why a second local runtime: transformers
de-quantises a GGUF to float32 and decodes 3-5x slower on CPU than llama.cpp on the same
file (``cope bench`` measures both side by side).

How a call is decoded. Its rows (prompt × sample; one row per prompt when greedy) are
decoded together in one llama.cpp context with one KV stream per row, as hf decodes them
in one padded batch (llama-cpp-python's ``Llama`` only decodes one sequence at a time, so
this uses its low-level API):
- the prompts' common opening (chat template, system prompt, shared instructions) is
  evaluated once and copied to every prompt's stream; its KV state is kept and loaded
  again when a later call opens with exactly the same tokens (``_shared_prefix``);
- the rest of every prompt is evaluated in one batch, and each prompt's KV and last
  logits are copied to the streams of its other samples;
- then every step is one ``llama_decode`` over the last token of every live row; a row
  ends at EOS, a stop string or ``max_tokens`` and leaves the batch.
The prompt is what ``Llama.create_chat_completion`` would feed the model: the chat goes
through the GGUF's own chat handler (``_prompt``). At most ``max_seqs`` rows share a
context (a longer call runs in waves); KV memory is ``max_seqs`` × (longest prompt +
max_tokens, rounded up to 256) tokens, and the context is kept between calls. ``n_ctx``
caps one sequence (prompt + completion), as before.

Rows can still go to ``workers`` processes, each holding the model (the file is mmap-ed:
the weights sit once in the page cache) with ``threads`` threads. One thread per process:
on a shared 2-core machine, two threads in one process collapsed to 0.5 tok/s as soon as
another process took a core, while single-threaded processes degrade gracefully. Whole
prompts (or, with fewer prompts than workers, a prompt's samples) are dealt to workers in
contiguous runs, so which rows share a context depends only on the call and the settings.

Seeds and what a text depends on. Each sampled row has its own sampler, seeded from (call
seed, prompt, sample index), so a call with the same prompts and the same ``workers`` /
``max_seqs`` gives the same texts, in any process, with or without a saved prefix. But a
row's numbers depend on the rows it shares a batch with: llama.cpp's CPU kernels round a
multi-row matrix product differently from a one-row one (Qwen2.5-1.5B Q4_K_M: up to 0.3 in
a logit). Greedy texts almost never change (16 of 16 prompts identical to the one-sequence
decode over 48 tokens); sampled ones do (8 of 16 rows identical to one-sequence sampling
with the same seeds). So changing ``workers``, ``max_seqs`` or the other prompts of a
call can change a sampled text — another draw from the same distribution.

``workers: 0`` runs in this process (tests, one-off use). ``n_gpu_layers: -1`` offloads
every layer to a GPU when llama-cpp-python was built with CUDA (the default build here
is CPU only; see the root pyproject.toml).
"""

from __future__ import annotations

import ctypes
import hashlib
import multiprocessing
import os
import threading
from collections import OrderedDict
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
_SETTINGS: dict = {}  # the worker process's max_seqs and n_ctx


def _load(path: str, n_ctx: int, threads: int, n_gpu_layers: int, n_batch: int) -> Any:
    try:
        from llama_cpp import Llama
    except ImportError as err:
        raise ConfigError(INSTALL_HINT) from err
    # The Llama holds the weights, the tokenizer and the chat handler; its own one-sequence
    # context is not used for decoding (each wave gets a multi-sequence one), so keep it small.
    return Llama(model_path=path, n_ctx=min(n_ctx, 512), n_threads=threads,
                 n_threads_batch=threads, n_gpu_layers=n_gpu_layers, n_batch=n_batch,
                 verbose=False)


def _init_worker(path: str, n_ctx: int, threads: int, n_gpu_layers: int, n_batch: int,
                 max_seqs: int) -> None:
    global _MODEL, _SETTINGS
    # A worker must not fan out further (numpy/OpenMP pools inside the bindings).
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    _MODEL = _load(path, n_ctx, threads, n_gpu_layers, n_batch)
    _SETTINGS = {"max_seqs": max_seqs, "n_ctx": n_ctx}


class _Prompt(Exception):
    """Raised by _Probe with what the chat handler would hand to create_completion."""

    def __init__(self, tokens: list[int], stop: list[str]):
        super().__init__("prompt captured")
        self.tokens, self.stop = tokens, stop


class _Probe:
    """Stands in for the Llama inside its chat handler: tokenisation and the handler's own
    stop strings come out exactly as ``create_chat_completion`` makes them, whatever chat
    format (GGUF Jinja template or a built-in one) the file selected."""

    def __init__(self, llm: Any):
        self._llm = llm

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)

    def create_completion(self, prompt: list[int], stop: Any = None, **_: Any) -> Any:
        stop = [stop] if isinstance(stop, str) else list(stop or [])
        raise _Prompt(list(prompt), stop)


def _prompt(llm: Any, messages: list[dict], stop: list[str]) -> tuple[list[int], list[str]]:
    """(prompt tokens, stop strings incl. the template's) for one chat."""
    from llama_cpp import llama_chat_format

    # the handler lookup of Llama.create_chat_completion
    handler = (llm.chat_handler or llm._chat_handlers.get(llm.chat_format)
               or llama_chat_format.get_chat_completion_handler(llm.chat_format))
    try:
        handler(llama=_Probe(llm), messages=messages, stop=list(stop))
    except _Prompt as got:
        return got.tokens, got.stop
    raise RuntimeError("llama-cpp-python's chat handler did not call create_completion")


class _Row:
    """One (prompt, sample) being decoded: its sequence, sampler and tokens so far."""

    def __init__(self, seq: int, sampler: Any, prompt: list[int], stop: list[str],
                 max_tokens: int):
        self.seq, self.sampler, self.prompt = seq, sampler, prompt
        self.stop = [s.encode() for s in stop if s]
        self.max_tokens = max_tokens
        self.tokens: list[int] = []
        self.done = False

    def push(self, llm: Any, token: int) -> None:
        """Take a sampled token; ends the row at EOS, a stop string or max_tokens."""
        import llama_cpp

        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
            self.done = True  # EOS is not part of the completion (nor of its count)
            return
        self.tokens.append(token)
        text = llm.detokenize(self.tokens, prev_tokens=self.prompt)
        if len(self.tokens) >= self.max_tokens or any(s in text for s in self.stop):
            self.done = True

    def text(self, llm: Any) -> str:
        return llm.detokenize(self.tokens, prev_tokens=self.prompt).decode("utf-8", "ignore")


def _sampler(temperature: float, seed: int) -> Any:
    """Plain sampling (as hf does: no top-k/top-p/min-p truncation), or greedy."""
    import llama_cpp as lc

    chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    if temperature <= 0:
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
    else:
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(temperature))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed))
    return chain


class _Batch:
    """A llama_batch the Python side fills token by token."""

    def __init__(self, capacity: int):
        import llama_cpp as lc

        self.raw = lc.llama_batch_init(capacity, 0, 1)
        self.capacity = capacity

    def fill(self, items: list[tuple[int, int, int, bool]]) -> None:
        """items: (token, position, sequence, wants logits)."""
        assert len(items) <= self.capacity
        for j, (token, pos, seq, logits) in enumerate(items):
            self.raw.token[j] = token
            self.raw.pos[j] = pos
            self.raw.n_seq_id[j] = 1
            self.raw.seq_id[j][0] = seq
            self.raw.logits[j] = logits
        self.raw.n_tokens = len(items)

    def free(self) -> None:
        import llama_cpp as lc

        lc.llama_batch_free(self.raw)


def _decode(ctx: Any, batch: _Batch) -> None:
    import llama_cpp as lc

    rc = lc.llama_decode(ctx, batch.raw)
    if rc != 0:  # 1: no KV slot (cannot happen: each stream is sized for its row)
        raise RuntimeError(f"llama_decode failed with code {rc}")


def _eval(ctx: Any, batch: _Batch, tokens: list[int], pos: int, seq: int, n_batch: int
          ) -> None:
    """Evaluate tokens at positions pos.. of one sequence; logits of the last one only."""
    for at in range(0, len(tokens), n_batch):
        chunk = tokens[at:at + n_batch]
        final = at + len(chunk) == len(tokens)
        batch.fill([(t, pos + at + j, seq, final and j == len(chunk) - 1)
                    for j, t in enumerate(chunk)])
        _decode(ctx, batch)


PREFIX_SLOTS = 8  # saved prefix states per model (a few MB each)


def _shared_prefix(llm: Any, ctx: Any, batch: _Batch, tokens: list[int], streams: int,
                   n_batch: int) -> None:
    """Fill sequence 0 with the KV of ``tokens``, evaluated alone from position 0.

    Every call of a run opens its prompts with the same chat template and instructions, so
    the KV state of a wave's common prefix is kept (per model, the last PREFIX_SLOTS
    prefixes) and loaded again when a later wave has exactly that prefix. Only an exact
    match is reused: the numbers loaded are then bit for bit those an evaluation would
    give, so a hit changes the speed of a call, never its texts.
    """
    import llama_cpp as lc

    cache = llm.__dict__.setdefault("_cope_prefixes", OrderedDict())
    key = (streams, tuple(tokens))
    state = cache.get(key)
    if state is not None and lc.llama_state_seq_set_data(ctx, state, len(state), 0):
        cache.move_to_end(key)
        return
    lc.llama_memory_seq_rm(lc.llama_get_memory(ctx), 0, -1, -1)  # a failed load's remains
    _eval(ctx, batch, tokens, 0, 0, n_batch)
    size = lc.llama_state_seq_get_size(ctx, 0)
    state = (ctypes.c_uint8 * size)()
    if lc.llama_state_seq_get_data(ctx, state, size, 0) == size:
        cache[key] = state
        while len(cache) > PREFIX_SLOTS:
            cache.popitem(last=False)


def _context(llm: Any, streams: int, per_seq: int) -> Any:
    """An empty context of ``streams`` KV streams of >= per_seq cells, kept between calls
    (creating and freeing one costs ~50 ms per 256 cells a stream on one core).

    Always ``streams`` sequences, whatever a wave's size: a saved prefix state
    (_shared_prefix) loads only into a context with as many KV streams as it came from.
    """
    import llama_cpp as lc

    held = llm.__dict__.get("_cope_context")
    if held is not None and held[1] == streams and held[2] >= per_seq:
        lc.llama_memory_clear(lc.llama_get_memory(held[0]), True)
        return held[0]
    if held is not None:
        lc.llama_free(held[0])
        llm._cope_context = None
    ctx = _new_context(llm, streams, per_seq)
    llm._cope_context = (ctx, streams, per_seq)
    return ctx


def _release(llm: Any) -> None:
    import llama_cpp as lc

    held = llm.__dict__.pop("_cope_context", None)
    if held is not None:
        lc.llama_free(held[0])


def _new_context(llm: Any, n_seqs: int, per_seq: int) -> Any:
    import llama_cpp as lc

    # The Llama's own parameters (threads, batch sizes, attention kernel), so a prompt is
    # evaluated with the same kernels as in create_chat_completion; one KV stream per row.
    params = lc.llama_context_params.from_buffer_copy(llm.context_params)
    params.n_seq_max = n_seqs
    params.n_ctx = n_seqs * per_seq
    params.kv_unified = False
    ctx = lc.llama_init_from_model(llm.model, params)
    if ctx is None:
        raise RuntimeError(f"llama.cpp could not create a context for {n_seqs} sequences "
                           f"× {per_seq} tokens (lower max_seqs or max_tokens)")
    return ctx


def _decode_wave(llm: Any, wave: list[tuple[int, list[int], list[str], float, int, int]],
                 streams: int) -> list[tuple[str, int]]:
    """Decode rows (job, prompt tokens, stops, temperature, seed, max_tokens) in one context
    of ``streams`` >= len(wave) sequences, one llama_decode per step for all live rows;
    returns (text, completion tokens) per row. A job's rows are adjacent in ``wave`` and
    share one evaluation of the prompt."""
    import llama_cpp as lc

    pad = 256  # llama.cpp sizes KV streams in whole blocks
    per_seq = -(-max(len(p) + m for _, p, _, _, _, m in wave) // pad) * pad
    ctx = _context(llm, streams, per_seq)
    n_batch = llm.context_params.n_batch
    batch = _Batch(max(n_batch, len(wave)))
    rows = [_Row(seq, _sampler(t, s), p, stop, m)
            for seq, (_, p, stop, t, s, m) in enumerate(wave)]
    try:
        mem = lc.llama_get_memory(ctx)
        groups = []  # (first, end) row ranges of one job each
        for seq, (job, *_) in enumerate(wave):
            if seq and wave[seq - 1][0] == job:
                groups[-1] = (groups[-1][0], seq + 1)
            else:
                groups.append((seq, seq + 1))
        # The chat template's opening (system prompt, role markers) is the same for every
        # prompt: evaluate the common prefix once and copy it to each prompt's stream.
        # (Each prompt keeps >= 1 token of its own, whose logits start its rows.)
        shared = 0
        if len(groups) > 1:
            heads = [rows[first].prompt for first, _ in groups]
            shared = min(len(os.path.commonprefix(heads)), min(map(len, heads)) - 1)
        if shared:
            _shared_prefix(llm, ctx, batch, rows[0].prompt[:shared], streams, n_batch)
            for first, _ in groups[1:]:
                lc.llama_memory_seq_cp(mem, 0, first, -1, -1)
        # The rest of every prompt in one batch (in n_batch chunks), each in its first row's
        # stream with logits for its last token only; then its KV and those logits go to
        # every sample of it (another stream's copy is made before the next decode,
        # sampling reads the logits right after this one).
        items, ends = [], {}
        for first, end in groups:
            rest = rows[first].prompt[shared:]
            items += [(t, shared + k, first, k == len(rest) - 1) for k, t in enumerate(rest)]
            ends[len(items) - 1] = (first, end)
        for at in range(0, len(items), n_batch):
            chunk = items[at:at + n_batch]
            batch.fill(chunk)
            _decode(ctx, batch)
            for k in range(at, at + len(chunk)):
                if k in ends:
                    first, end = ends[k]
                    for r in rows[first:end]:
                        if r.seq != first:
                            lc.llama_memory_seq_cp(mem, first, r.seq, -1, -1)
                        r.push(llm, lc.llama_sampler_sample(r.sampler, ctx, k - at))
        live = [r for r in rows if not r.done]
        while live:
            batch.fill([(r.tokens[-1], len(r.prompt) + len(r.tokens) - 1, r.seq, True)
                        for r in live])
            _decode(ctx, batch)
            for j, r in enumerate(live):
                r.push(llm, lc.llama_sampler_sample(r.sampler, ctx, j))
            live = [r for r in live if not r.done]
        return [(r.text(llm), len(r.tokens)) for r in rows]
    finally:
        for r in rows:
            lc.llama_sampler_free(r.sampler)
        batch.free()


def _run_jobs(llm: Any, jobs: list[dict], max_seqs: int, n_ctx: int
              ) -> list[tuple[int, list[tuple[str, int]]]]:
    """Decode the rows of several jobs (one prompt, some of its sample seeds each) in waves
    of at most ``max_seqs`` rows; returns (prompt tokens, [(text, tokens)]) per job."""
    rows, prompt_tokens, stops = [], [], []
    for j, job in enumerate(jobs):
        tokens, stop = _prompt(llm, job["messages"], job["stop"])
        stops.append(stop)
        if len(tokens) >= n_ctx:
            raise ValueError(f"a prompt of {len(tokens)} tokens does not fit n_ctx={n_ctx} "
                             "(engine_kwargs.n_ctx of the llamacpp model)")
        # as create_completion: the completion is cut to what fits in n_ctx
        max_tokens = min(job["max_tokens"], n_ctx - len(tokens))
        prompt_tokens.append(len(tokens))
        # greedy samples are identical: decode one row, copy it
        seeds = job["seeds"][:1] if job["temperature"] <= 0 else job["seeds"]
        rows += [(j, tokens, stop, job["temperature"], s, max_tokens) for s in seeds]
    done: list[tuple[str, int]] = []
    for at in range(0, len(rows), max_seqs):
        done += _decode_wave(llm, rows[at:at + max_seqs], max_seqs)
    out: list[tuple[int, list[tuple[str, int]]]] = [(p, []) for p in prompt_tokens]
    for (j, *_), (text, count) in zip(rows, done):
        out[j][1].append((cut_at_stop(text, stops[j]), count))
    for j, job in enumerate(jobs):
        if len(out[j][1]) < len(job["seeds"]):  # greedy
            out[j][1].extend(out[j][1][:1] * (len(job["seeds"]) - len(out[j][1])))
    return out


def _worker_jobs(jobs: list[dict]) -> list[tuple[int, list[tuple[str, int]]]]:
    return _run_jobs(_MODEL, jobs, _SETTINGS["max_seqs"], _SETTINGS["n_ctx"])


# ---------------------------------------------------------------- the backend


class LlamaCppBackend:
    def __init__(self, model: str, name: str = "llamacpp", workers: int = 1, threads: int = 1,
                 n_ctx: int = 2048, n_gpu_layers: int = 0, n_batch: int = 512,
                 max_seqs: int = 16):
        if not llama_cpp_available():
            raise ConfigError(INSTALL_HINT)
        if workers < 0 or threads < 1 or max_seqs < 1 or n_ctx < 2:
            raise ConfigError(f"models.{name}: llamacpp needs workers >= 0, threads >= 1, "
                              f"max_seqs >= 1 and n_ctx >= 2, got workers={workers}, "
                              f"threads={threads}, max_seqs={max_seqs}, n_ctx={n_ctx}")
        self.name = name
        self.spec = model
        self.path = gguf_path(model)
        self.workers = workers
        self.max_seqs = max_seqs
        self.n_ctx = n_ctx  # per sequence: prompt + completion
        args = (str(self.path), n_ctx, threads, n_gpu_layers, n_batch)
        self._local = None
        self._pool = None
        self._lock = threading.Lock()  # one call at a time on the in-process model
        if workers == 0:
            self._local = _load(*args)
        else:
            # spawn, not fork: the parent may hold torch/OpenMP threads that a fork breaks
            self._pool = ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker, initargs=(*args, max_seqs))

    def generate(self, prompts: Sequence[Prompt], n: int = 1, temperature: float = 0.0,
                 max_tokens: int = 64, stop: Sequence[str] | None = None,
                 seed: int | None = None) -> list[Generation]:
        if not prompts:
            return []
        workers = max(self.workers, 1)
        # Split a prompt's samples over workers only when there are fewer prompts than
        # workers: otherwise whole prompts keep their single prompt evaluation.
        groups = 1 if len(prompts) >= workers or temperature <= 0 else \
            min(n, -(-workers // len(prompts)))
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
        # Deal jobs to workers in contiguous, row-balanced shares: which rows share a
        # context is then fixed by the call and the settings alone.
        shares = _deal([len(j["seeds"]) if temperature > 0 else 1 for j in jobs], workers)
        tasks = [[jobs[k] for k in share] for share in shares]
        if self._pool is not None:
            done = list(self._pool.map(_worker_jobs, tasks))
        else:
            with self._lock:
                done = [_run_jobs(self._local, t, self.max_seqs, self.n_ctx) for t in tasks]
        results = [None] * len(jobs)
        for share, out in zip(shares, done):
            for k, res in zip(share, out):
                results[k] = res
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
        if self._local is not None:
            _release(self._local)  # before the Llama frees the model it was made from
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _deal(sizes: list[int], parts: int) -> list[list[int]]:
    """Indices 0..len(sizes)-1 in at most ``parts`` contiguous runs of similar total size."""
    total, out, acc = sum(sizes), [[]], 0
    for k, size in enumerate(sizes):
        # start a new run once this one holds its share of the rows
        if out[-1] and len(out) < parts and acc >= total * len(out) / parts:
            out.append([])
        out[-1].append(k)
        acc += size
    return out
