"""``perln bench``: training throughput of perln against a minimal plain-PyTorch GPT loop.

Both train the same Pre-LN architecture (LayerNorm, learned positions, GELU, tied
embeddings, SDPA, no biases) on the same random-token batches with AdamW and clipping at
1.0. perln runs through its Lightning module and Trainer; the reference is a bare loop.
Measured too: perln with its instrumentation on but not probing on the timed steps (the
per-step cost of recording loss and pre-clip gradient norm), with probes every K steps, and
with the fp16 residual-stream emulation (`train.stream_dtype=fp16`, each block's output
rounded to fp16) against the fp32 stream, both uninstrumented, so their ratio is the
emulation's cost alone (target: under 5% a step). That ratio is also measured in pairs of
back-to-back training steps of perln's model (fp32 then fp16 stream, same weights and batch,
order alternating), whose median ratio is robust to load from other processes.
Runs alternate and each variant keeps its best round, which damps noise from other load.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from perln.config import PerlnConfig
from perln.experiments import Arm, build_module, make_trainer, quiet_lightning
from perln.model import ModelConfig
from reprokit.runtime import setup

FP16_STREAM_TARGET = 0.05  # the emulation may cost at most 5% of a step (issue 11)
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12,
                   "A10G": 125e12, "L4": 121e12, "RTX 4090": 165e12, "RTX 3090": 71e12}


# ---------------------------------------------------------------- the reference GPT


class RefBlock(nn.Module):
    def __init__(self, d: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(d, bias=False), nn.LayerNorm(d, bias=False)
        self.qkv, self.proj = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.fc, self.out = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).contiguous().view(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class RefGPT(nn.Module):
    def __init__(self, vocab: int, block: int, n_layer: int, n_head: int, d: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.blocks = nn.ModuleList(RefBlock(d, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d, bias=False)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.wte.weight
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe.weight[: idx.size(1)]
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_reference(cfg: ModelConfig, batch: int, steps: int, warmup: int, runtime) -> float:
    """Seconds per step of the plain loop, after `warmup` steps."""
    device = runtime.device
    model = RefGPT(cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.d_model).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    data = [torch.randint(0, cfg.vocab_size, (batch, cfg.block_size + 1), generator=gen)
            for _ in range(8)]
    start = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        chunk = data[i % len(data)].to(device)
        with runtime.autocast():
            loss = model(chunk[:, :-1], chunk[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    _sync(device)
    return (time.perf_counter() - start) / steps


# ---------------------------------------------------------------- perln through Lightning


class _StepTimer:
    def __init__(self, warmup: int, device: torch.device):
        self.warmup, self.device, self.start, self.end, self.steps = warmup, device, 0.0, 0.0, 0

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.warmup:
            _sync(self.device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, *args):
        _sync(self.device)
        self.end = time.perf_counter()
        self.steps = trainer.global_step - self.warmup


def _callback(timer: _StepTimer):
    from lightning.pytorch.callbacks import Callback

    class TimerCallback(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            timer.on_train_batch_start(trainer)

        def on_train_end(self, trainer, pl_module):
            timer.on_train_end(trainer)

    return TimerCallback()


def time_perln(cfg: PerlnConfig, steps: int, warmup: int, runtime, instrument: bool,
               probe_every: int, stream_dtype: str = "fp32") -> float:
    cfg.probe.every = probe_every
    cfg.train.stream_dtype = stream_dtype
    cfg.train.steps = warmup + steps
    cfg.train.eval_every = 10**9  # evaluation is not part of the training step
    gen = torch.Generator().manual_seed(1)
    val = torch.randint(0, cfg.model.vocab_size, (cfg.model.block_size * 64,), generator=gen)
    module = build_module(cfg, Arm("pre", 1e-3, 0), val, instrument=instrument)
    data = [torch.randint(0, cfg.model.vocab_size, (cfg.train.batch_size, cfg.model.block_size + 1),
                          generator=gen) for _ in range(8)]
    batches = [(d[:, :-1], d[:, 1:]) for d in data] * ((warmup + steps) // 8 + 1)
    timer = _StepTimer(warmup, runtime.device)
    trainer = make_trainer(cfg, runtime.accelerator, runtime.precision, 1, [_callback(timer)],
                           progress=False)
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=None))
    return (timer.end - timer.start) / timer.steps


def time_stream_pairs(cfg: ModelConfig, batch: int, steps: int, warmup: int, runtime) -> dict:
    """Median over back-to-back pairs of (fp16-stream step / fp32-stream step) seconds: the
    emulation's cost with slow drifts of machine load cancelled within each pair."""
    from perln.model import GPT

    device = runtime.device
    models = {d: GPT(cfg, stream_dtype=d).to(device) for d in ("fp32", "fp16")}
    models["fp16"].load_state_dict(models["fp32"].state_dict())
    opts = {d: torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.1)
            for d, m in models.items()}
    gen = torch.Generator().manual_seed(2)
    data = [torch.randint(0, cfg.vocab_size, (batch, cfg.block_size + 1), generator=gen)
            for _ in range(8)]

    def step(d: str, chunk: torch.Tensor) -> float:
        _sync(device)
        start = time.perf_counter()
        with runtime.autocast():
            _, loss = models[d](chunk[:, :-1], chunk[:, 1:])
        opts[d].zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(models[d].parameters(), 1.0)
        opts[d].step()
        _sync(device)
        return time.perf_counter() - start

    ratios, times = [], {"fp32": [], "fp16": []}
    for i in range(warmup + steps):
        chunk = data[i % len(data)].to(device)
        order = ("fp32", "fp16") if i % 2 == 0 else ("fp16", "fp32")
        t = {d: step(d, chunk) for d in order}
        if i >= warmup:
            ratios.append(t["fp16"] / t["fp32"])
            for d in t:
                times[d].append(t[d])
    return {"median_ratio": float(np.median(ratios)),
            "median_step_s": {d: float(np.median(v)) for d, v in times.items()}}


@dataclass
class BenchArgs:
    n_layer: int = 6
    n_head: int = 4
    d_model: int = 128
    block_size: int = 128
    batch_size: int = 16
    vocab_size: int = 256
    steps: int = 30
    warmup: int = 5
    rounds: int = 2
    probe_every: int = 25
    accelerator: str = "auto"
    threads: int = 0
    compile: bool = False


def run_bench(a: BenchArgs) -> dict:
    quiet_lightning()
    runtime = setup(a.accelerator, "auto", a.threads or None, seed=0)
    model_cfg = ModelConfig(vocab_size=a.vocab_size, block_size=a.block_size, n_layer=a.n_layer,
                            n_head=a.n_head, d_model=a.d_model, norm_placement="pre",
                            norm="layernorm", position="learned", mlp="gelu")
    model_cfg.validate()

    def perln_cfg() -> PerlnConfig:
        cfg = PerlnConfig(scale="bench", model=model_cfg)
        cfg.train.batch_size, cfg.train.compile = a.batch_size, a.compile
        cfg.train.checkpoint_every, cfg.probe.sync_every = 0, 10
        return cfg

    variants = {
        "reference": lambda: time_reference(model_cfg, a.batch_size, a.steps, a.warmup, runtime),
        "perln": lambda: time_perln(perln_cfg(), a.steps, a.warmup, runtime, False, 10**9),
        "perln_instrumented": lambda: time_perln(perln_cfg(), a.steps, a.warmup, runtime, True,
                                                 10**9),
        "perln_probing": lambda: time_perln(perln_cfg(), a.steps, a.warmup, runtime, True,
                                            a.probe_every),
        "perln_fp16_stream": lambda: time_perln(perln_cfg(), a.steps, a.warmup, runtime, False,
                                                10**9, "fp16"),
    }
    best = {k: math.inf for k in variants}
    for _ in range(a.rounds):
        for name, fn in variants.items():
            best[name] = min(best[name], fn())
    pairs = time_stream_pairs(model_cfg, a.batch_size, a.steps * a.rounds, a.warmup, runtime)
    tokens = a.batch_size * a.block_size
    tps = {k: tokens / v for k, v in best.items()}
    out = {
        "device": runtime.device_name, "accelerator": runtime.accelerator,
        "precision": runtime.precision, "threads": runtime.threads,
        "arch": {"n_layer": a.n_layer, "n_head": a.n_head, "d_model": a.d_model,
                 "block_size": a.block_size, "batch_size": a.batch_size,
                 "vocab_size": a.vocab_size, "placement": "pre"},
        "steps_timed": a.steps, "rounds": a.rounds,
        "tokens_per_s": {k: round(v, 1) for k, v in tps.items()},
        "ratio_perln_vs_reference": round(tps["perln"] / tps["reference"], 3),
        "instrumentation_overhead_not_probing": round(
            best["perln_instrumented"] / best["perln"] - 1, 4),
        f"probing_overhead_every_{a.probe_every}": round(
            best["perln_probing"] / best["perln"] - 1, 4),
        # the same uninstrumented step with the stream rounded to fp16 after every block
        "fp16_stream_overhead": round(best["perln_fp16_stream"] / best["perln"] - 1, 4),
        # the same cost from paired back-to-back model steps (median over pairs)
        "fp16_stream_overhead_paired": round(pairs["median_ratio"] - 1, 4),
        "fp16_stream_pairs": a.steps * a.rounds,
        "fp16_stream_overhead_target": FP16_STREAM_TARGET,
        "mfu": None,
    }
    if runtime.accelerator == "cuda":
        from perln.model import GPT

        flops = GPT(model_cfg).flops_per_token()
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in runtime.device_name), None)
        if peak:
            out["mfu"] = round(flops * tps["perln"] / peak, 4)
    return out


def main(a: BenchArgs) -> None:
    print(json.dumps(run_bench(a)))
