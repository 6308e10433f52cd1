"""``cope bench``: generated tokens per second on the offline model, per backend.

Four measurements on the same prompts and token budget (greedy, so every row decodes
the same number of steps unless it stops early):
- hf, batched: all prompts in one padded batch;
- hf, one at a time: the same prompts in a loop (the reference the cascade must beat);
- openai -> loopback server, batched: concurrent requests, micro-batched by the server;
- openai -> loopback server, one at a time: sequential requests.
"""

from __future__ import annotations

import time

from cope.backends import SMOLLM2_GGUF, HFBackend, OpenAIBackend
from cope.experiments import resolve_device
from cope.server import serve_backend

QUESTIONS = [f"What is {a} + {b}? End with 'Answer: <number>'." for a, b in
             [(3, 4), (7, 2), (5, 9), (8, 8), (1, 6), (9, 3), (2, 5), (4, 7), (6, 1), (0, 9),
              (3, 3), (8, 2), (7, 7), (5, 4), (2, 9), (6, 6)]]


def _rate(fn) -> tuple[float, int, float]:
    start = time.perf_counter()
    gens = fn()
    wall = time.perf_counter() - start
    tokens = sum(g.total_completion_tokens for g in gens)
    return tokens / wall, tokens, wall


def bench(prompts: int = 8, max_tokens: int = 16, accelerator: str = "auto",
          threads: int = 0) -> dict:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    device = resolve_device(accelerator)
    qs = (QUESTIONS * (prompts // len(QUESTIONS) + 1))[:prompts]
    kw = {"n": 1, "temperature": 0.0, "max_tokens": max_tokens}
    load_start = time.perf_counter()
    hf = HFBackend(SMOLLM2_GGUF, device=device, max_batch=max(prompts, 1))
    load_s = time.perf_counter() - load_start
    hf.generate(qs[:1], **kw)  # warm-up
    results = {}
    results["hf_batched"] = _rate(lambda: hf.generate(qs, **kw))
    results["hf_one_at_a_time"] = _rate(lambda: [g for q in qs for g in hf.generate([q], **kw)])
    server = serve_backend(hf, "smollm2-loopback")
    try:
        client = OpenAIBackend(server.base_url, "smollm2-loopback", concurrency=prompts)
        client.generate(qs[:1], **kw)
        results["openai_loopback_batched"] = _rate(lambda: client.generate(qs, **kw))
        one = OpenAIBackend(server.base_url, "smollm2-loopback", concurrency=1)
        results["openai_loopback_one_at_a_time"] = _rate(lambda: one.generate(qs, **kw))
    finally:
        server.stop()
    out = {"model": SMOLLM2_GGUF, "device": device, "threads": torch.get_num_threads(),
           "prompts": prompts, "max_tokens": max_tokens, "load_s": round(load_s, 2)}
    for name, (rate, tokens, wall) in results.items():
        out[f"{name}_tok_s"] = round(rate, 2)
        out[f"{name}_tokens"] = tokens
        out[f"{name}_wall_s"] = round(wall, 2)
    out["batched_vs_one_at_a_time_hf"] = round(
        results["hf_batched"][0] / max(results["hf_one_at_a_time"][0], 1e-9), 2)
    out["batched_vs_one_at_a_time_openai"] = round(
        results["openai_loopback_batched"][0]
        / max(results["openai_loopback_one_at_a_time"][0], 1e-9), 2)
    out["openai_vs_hf_batched"] = round(
        results["openai_loopback_batched"][0] / max(results["hf_batched"][0], 1e-9), 2)
    return out
