"""``cope bench``: generated tokens per second, hf (transformers) vs llamacpp, same GGUF.

Both runtimes load the same file (default: the cpu scale's large model,
Qwen2.5-Coder-1.5B-Instruct Q4_K_M from the registry) with one thread each, and answer
the same calls side by side in one process run, in alternating order:
- greedy: ``prompts`` prompts, one sample each;
- sampled: the same prompts × ``samples`` samples at T=0.7 (the cascade's voting call).
Both decode every (prompt, sample) row of a call together: hf in one padded batch,
llamacpp in one multi-sequence context (one ``llama_decode`` per step for all live rows,
each prompt evaluated once). The ratios (llamacpp / hf tokens per second) are the result;
load times are reported apart (hf de-quantises the GGUF to float32 on its first load).
The warm-up is a two-prompt call, so that first-call allocations are not timed and
llamacpp holds the KV of the prompts' common opening (chat template, "What is"), as it
does after the first call of a run.
"""

from __future__ import annotations

import time

LARGE = "registry:qwen2.5-coder-1.5b-instruct-q4_k_m"

QUESTIONS = [f"What is {a} + {b} - {c}? Explain briefly, then end with 'Answer: <number>'."
             for a, b, c in [(3, 4, 2), (7, 2, 5), (5, 9, 1), (8, 8, 3), (1, 6, 4), (9, 3, 7),
                             (2, 5, 6), (4, 7, 8)]]


def _rate(fn) -> tuple[float, int, float]:
    start = time.perf_counter()
    gens = fn()
    wall = time.perf_counter() - start
    tokens = sum(g.total_completion_tokens for g in gens)
    return tokens / max(wall, 1e-9), tokens, wall


def bench(prompts: int = 4, max_tokens: int = 32, accelerator: str = "cpu",
          threads: int = 1, samples: int = 4, model: str = LARGE) -> dict:
    import torch

    from cope.backends import HFBackend
    from cope.experiments import resolve_device
    from cope.llamacpp import LlamaCppBackend

    threads = max(threads, 1)
    torch.set_num_threads(threads)
    device = resolve_device(accelerator)
    qs = (QUESTIONS * (prompts // len(QUESTIONS) + 1))[:prompts]
    greedy = {"n": 1, "temperature": 0.0, "max_tokens": max_tokens}
    sampled = {"n": samples, "temperature": 0.7, "max_tokens": max_tokens, "seed": 1}

    start = time.perf_counter()
    rows = max(prompts * samples, 1)  # every row of a call in one context / one batch
    llama = LlamaCppBackend(model, name="llamacpp", workers=0, threads=threads, max_seqs=rows)
    load = {"llamacpp": time.perf_counter() - start}
    start = time.perf_counter()
    hf = HFBackend(model, device=device, max_batch=rows)
    load["hf"] = time.perf_counter() - start
    for backend in (hf, llama):  # warm-up: first-call allocations are not decode speed
        backend.generate(QUESTIONS[-2:], n=1, temperature=0.0, max_tokens=4)
    results = {}
    for label, kw in (("greedy", greedy), ("sampled", sampled)):
        # alternate the order so a load change on the machine hits both alike
        results[f"llamacpp_{label}"] = _rate(lambda kw=kw: llama.generate(qs, **kw))
        results[f"hf_{label}"] = _rate(lambda kw=kw: hf.generate(qs, **kw))
    out = {"model": model, "file": str(llama.path), "device": device, "threads": threads,
           "prompts": prompts, "samples": samples, "max_tokens": max_tokens,
           "load_s": {k: round(v, 1) for k, v in load.items()}}
    for name, (rate, tokens, wall) in results.items():
        out[f"{name}_tok_s"] = round(rate, 2)
        out[f"{name}_tokens"] = tokens
        out[f"{name}_wall_s"] = round(wall, 2)
    for label in ("greedy", "sampled"):
        out[f"llamacpp_vs_hf_{label}"] = round(
            results[f"llamacpp_{label}"][0] / max(results[f"hf_{label}"][0], 1e-9), 2)
    llama.close()
    return out
