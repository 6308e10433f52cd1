"""``report.md`` of a sweep, rebuilt from the run directory alone.

Reads ``config.yaml``, ``arms/*.json`` (one result per arm, with its history), the token file
and the best arm's final weights; computes every number and verdict; draws the figures.
The decision rule of each claim is written next to it, in code and in the table.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from perln.config import PerlnConfig
from perln.data import read_tokens
from perln.experiments import LOSS_SPIKE_MIN_HISTORY
from perln.model import GPT
from reprokit.config import load_config
from reprokit.data.text import get_tokenizer
from reprokit.report import (
    Claim,
    Report,
    Verdict,
    all_of,
    compare,
    fmt,
    new_figure,
    plot_band,
    save_figure,
    summarize,
    threshold,
)
from reprokit.runs import RunDir

COLORS = {"pre": "tab:red", "peri": "tab:blue", "post": "tab:green"}
FP16_MAX = 65504.0
LOSS_TOLERANCE = 0.01  # nats: "equal" loss for claim 3


def load_results(run_path: Path) -> list[dict]:
    run = RunDir("perln", run_path.name, root=run_path.parent.parent, resume=True)
    return [run.read_json(f"arms/{p.name}") for p in sorted((run_path / "arms").glob("*.json"))]


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9)


class Results:
    """Per-arm results grouped by (placement, lr), seeds in order."""

    def __init__(self, results: list[dict], cfg: PerlnConfig):
        self.cfg = cfg
        self.by: dict[tuple[str, float], list[dict]] = defaultdict(list)
        for r in sorted(results, key=lambda r: r["seed"]):
            lr = next((x for x in cfg.sweep.lrs if _close(x, r["lr"])), r["lr"])
            self.by[(r["placement"], float(lr))].append(r)
        self.placements = [p for p in cfg.sweep.placements if any(k[0] == p for k in self.by)]
        self.lrs = sorted({k[1] for k in self.by})

    def get(self, placement: str, lr: float) -> list[dict]:
        return self.by.get((placement, float(lr)), [])

    def values(self, placement: str, lr: float, fn) -> list[float]:
        return [fn(r) for r in self.get(placement, lr)]

    def best_lr(self, placement: str) -> float | None:
        """The lr with the lowest mean final validation loss (diverged seeds count as +inf)."""
        scores = {}
        for lr in self.lrs:
            vals = [r["final_val_loss"] for r in self.get(placement, lr)]
            if vals:
                scores[lr] = float(np.mean([v if math.isfinite(v) else math.inf for v in vals]))
        return min(scores, key=scores.get) if scores else None


# ---------------------------------------------------------------- per-arm measurements


def final_probe(r: dict) -> dict | None:
    probes = r["history"]["probes"]
    return probes[-1] if probes and not r["diverged"] else None


def log10_safe(x: float) -> float:
    return math.log10(x) if x > 0 and math.isfinite(x) else float("nan")


def final_max_variance(r: dict) -> float:
    p = final_probe(r)
    return max(p["variance"]) if p else float("nan")


def final_max_abs(r: dict) -> float:
    p = final_probe(r)
    return max(p["max_abs"]) if p else float("nan")


def variance_growth_decades(r: dict) -> float:
    """log10(final / initial) variance after the last block: growth over training."""
    probes = r["history"]["probes"]
    if r["diverged"] or len(probes) < 2:
        return float("nan")
    return log10_safe(probes[-1]["variance"][-1]) - log10_safe(probes[0]["variance"][-1])


def depth_growth_decades(r: dict) -> float:
    """log10(variance after the last block / after the first block), final weights."""
    p = final_probe(r)
    return log10_safe(p["variance"][-1]) - log10_safe(p["variance"][0]) if p else float("nan")


def grad_nonuniformity(r: dict, after_step: int) -> float:
    """Coefficient of variation of the per-layer gradient norms (std / mean across layers),
    averaged over the gradient probes after warmup: 0 means every layer gets the same norm."""
    cvs = []
    for g in r["history"]["grad_probes"]:
        norms = np.asarray(g["layer_grad_norm"], dtype=float)
        if g["step"] >= after_step and np.all(np.isfinite(norms)) and norms.mean() > 0:
            cvs.append(norms.std() / norms.mean())
    return float(np.mean(cvs)) if cvs else float("nan")


def median_grad_norm(r: dict, after_step: int) -> float:
    h = r["history"]
    vals = [g for s, g in zip(h["step"], h["grad_norm"], strict=True)
            if s >= after_step and math.isfinite(g)]
    return float(np.median(vals)) if vals else float("nan")


def instability_events(r: dict) -> float:
    return float(r["loss_spikes"] + (1 if r["diverged"] else 0))


# ---------------------------------------------------------------- claims


def claim_variance(res: Results, lr: float) -> Claim:
    pre_growth = res.values("pre", lr, variance_growth_decades)
    peri_growth = res.values("peri", lr, variance_growth_decades)
    pre_level = res.values("pre", lr, lambda r: log10_safe(final_max_variance(r)))
    peri_level = res.values("peri", lr, lambda r: log10_safe(final_max_variance(r)))
    post_level = res.values("post", lr, final_max_variance)
    best_post, best_peri = res.best_lr("post"), res.best_lr("peri")
    post_loss = res.values("post", best_post, lambda r: r["final_val_loss"]) if best_post else []
    peri_loss = res.values("peri", best_peri, lambda r: r["final_val_loss"]) if best_peri else []
    parts = {
        "growth over training (pre > peri + 1 decade)": compare(pre_growth, peri_growth, 1.0),
        "final level (pre > peri + 1 decade)": compare(pre_level, peri_level, 1.0),
        "post flat (max variance < 4)": compare([4.0], post_level, 0.0) if post_level
        else Verdict.INCONCLUSIVE,
        "post trains worse (best-lr val loss post > peri)": compare(post_loss, peri_loss, 0.0),
    }
    measured = (
        f"at lr {lr:g}: growth of last-layer variance over training, decades: pre "
        f"{summarize(pre_growth).format(2)}, peri {summarize(peri_growth).format(2)}; "
        f"log10 final max-layer variance: pre {summarize(pre_level).format(2)}, peri "
        f"{summarize(peri_level).format(2)}; post max-layer variance "
        f"{summarize(post_level).format(2)}; best-lr val loss post "
        f"{summarize(post_loss).format(3)} vs peri {summarize(peri_loss).format(3)}. Parts: "
        + "; ".join(f"{k}: {v}" for k, v in parts.items()))
    return Claim(
        "Pre-LN's hidden-state variance grows quickly with depth and during training; "
        "Peri-LN's grows slowly and stays bounded; Post-LN stays flat but trains worse.",
        measured,
        f"At the aggressive lr {lr:g}, over seeds (reprokit compare, 2 s.e.): pre's growth "
        "of last-layer variance from init to end exceeds peri's by > 1 decade; pre's final "
        "max-over-layers variance exceeds peri's by > 1 decade; post's stays < 4; post's "
        "val loss at its best lr is above peri's at its best lr. Holds if all parts hold.",
        all_of(*parts.values()),
        ["figures/variance_growth.png", "figures/variance_over_training.png"])


def claim_gradients(res: Results, lr: float, warmup: int) -> Claim:
    cv = {p: res.values(p, lr, lambda r: grad_nonuniformity(r, warmup)) for p in res.placements}
    spikes = {p: res.values(p, lr, lambda r: float(r["grad_spikes"])) for p in res.placements}
    med = {p: res.values(p, lr, lambda r: median_grad_norm(r, warmup)) for p in res.placements}
    parts = {
        "peri more uniform than pre (CV)": compare(cv.get("pre", []), cv.get("peri", [])),
        "peri has fewer grad-norm spikes than pre": compare(spikes.get("pre", []),
                                                            spikes.get("peri", [])),
        "post least uniform (CV post > peri)": compare(cv.get("post", []), cv.get("peri", [])),
        "post largest (median norm post > peri)": compare(med.get("post", []),
                                                          med.get("peri", [])),
    }
    measured = (
        f"at lr {lr:g}, after warmup: per-layer grad-norm CV " + ", ".join(
            f"{p} {summarize(cv[p]).format(2)}" for p in res.placements)
        + "; grad-norm spikes per run " + ", ".join(
            f"{p} {summarize(spikes[p]).format(2)}" for p in res.placements)
        + "; median global grad norm " + ", ".join(
            f"{p} {summarize(med[p]).format(2)}" for p in res.placements)
        + ". Parts: " + "; ".join(f"{k}: {v}" for k, v in parts.items()))
    p = res.cfg.probe
    return Claim(
        "Peri-LN gives steadier gradient flow: more uniform per-layer gradient norms and "
        "fewer gradient-norm spikes than Pre-LN; Post-LN has the largest, least uniform "
        "gradients.",
        measured,
        f"At lr {lr:g}, after warmup: non-uniformity = std/mean across layers of the "
        "per-layer gradient norms, averaged over probes; a spike = a step whose global "
        f"gradient norm (before clipping) exceeds {p.grad_spike_factor:g} × the median of "
        f"the previous {p.spike_window} steps. Holds if peri's CV and spike count are below "
        "pre's and post's CV and median norm are above peri's, each beyond 2 s.e.",
        all_of(*parts.values()),
        ["figures/layer_grad_norms.png", "figures/global_grad_norm.png"])


def claim_stability(res: Results) -> Claim:
    events = {p: [] for p in ("pre", "peri")}
    for p in events:
        per_seed = defaultdict(float)
        for lr in res.lrs:
            for r in res.get(p, lr):
                per_seed[r["seed"]] += instability_events(r)
        events[p] = [per_seed[s] for s in sorted(per_seed)]
    best = {p: res.best_lr(p) for p in ("pre", "peri")}
    best_loss = {p: res.values(p, best[p], lambda r: r["final_val_loss"]) if best[p] else []
                 for p in best}
    parts = {
        "pre has more instability events than peri": compare(events["pre"], events["peri"]),
        f"peri's best-lr loss ≤ pre's + {LOSS_TOLERANCE}": compare(
            best_loss["pre"], best_loss["peri"], -LOSS_TOLERANCE),
    }
    div = {p: sum(r["diverged"] for lr in res.lrs for r in res.get(p, lr)) for p in events}
    n = {p: sum(len(res.get(p, lr)) for lr in res.lrs) for p in events}
    measured = (
        "instability events per seed over all lrs (loss spikes + divergences): pre "
        f"{summarize(events['pre']).format(2)}, peri {summarize(events['peri']).format(2)}; "
        f"diverged runs: pre {div['pre']}/{n['pre']}, peri {div['peri']}/{n['peri']}; "
        f"best lr pre {best['pre']}, peri {best['peri']}; val loss there: pre "
        f"{summarize(best_loss['pre']).format(3)}, peri {summarize(best_loss['peri']).format(3)}"
        ". Parts: " + "; ".join(f"{k}: {v}" for k, v in parts.items()))
    p = res.cfg.probe
    return Claim(
        "Peri-LN converges stably where Pre-LN spikes or diverges (high learning rates), "
        "and reaches equal or lower loss at the best learning rate.",
        measured,
        "Per seed, count over the lr sweep the loss spikes (training loss > "
        f"{p.loss_spike_factor:g} × median of up to {p.spike_window} previous steps, from "
        f"step {LOSS_SPIKE_MIN_HISTORY}) plus divergences (NaN/Inf, or loss > "
        f"{p.divergence_factor:g}·ln V for {p.divergence_patience} steps in a row). Holds if "
        "pre's count exceeds peri's beyond 2 s.e. and peri's val loss at its best lr is at "
        f"most pre's (at its best lr) + {LOSS_TOLERANCE} beyond 2 s.e.",
        all_of(*parts.values()),
        ["figures/loss_curves.png", "figures/global_grad_norm.png"])


def claim_massive(res: Results, lr: float) -> Claim:
    pre = res.values("pre", lr, lambda r: log10_safe(final_max_abs(r)))
    peri = res.values("peri", lr, lambda r: log10_safe(final_max_abs(r)))
    pre_raw = [x for lr_ in res.lrs for x in res.values("pre", lr_, final_max_abs)]
    over_fp16 = sum(x > FP16_MAX for x in pre_raw if math.isfinite(x))
    verdict = compare(pre, peri, 1.0)
    other = []
    for lr_ in res.lrs:
        if not _close(lr_, lr):
            a = res.values("pre", lr_, lambda r: log10_safe(final_max_abs(r)))
            b = res.values("peri", lr_, lambda r: log10_safe(final_max_abs(r)))
            other.append(f"lr {lr_:g}: pre {summarize(a).format(2)}, peri "
                         f"{summarize(b).format(2)}")
    measured = (
        f"log10 of the final max |x| over layers at lr {lr:g}: pre "
        f"{summarize(pre).format(2)}, peri {summarize(peri).format(2)}"
        + (f" (other lrs: {'; '.join(other)})" if other else "")
        + f". Pre-LN runs past the fp16 range (> {FP16_MAX:g}): {over_fp16}/{len(pre_raw)}.")
    return Claim(
        "Massive activations: Pre-LN's largest activation magnitudes grow far beyond "
        "Peri-LN's (in the paper, past the fp16 range).",
        measured,
        f"At lr {lr:g}: mean over seeds of log10 max |x| (residual stream, any layer, final "
        "weights) of pre exceeds peri's by more than 1 (10×) beyond 2 s.e. The fp16 part is "
        "reported, not judged: it needs the paper's scale.",
        verdict, ["figures/max_abs.png"])


# ---------------------------------------------------------------- figures


def _layer_axis(ax, label: str = "layer") -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(label)


def _mean_log_curve(arrays: list[list[float]]) -> np.ndarray:
    arr = np.log10(np.clip(np.asarray(arrays, dtype=float), 1e-30, None))
    with np.errstate(all="ignore"):
        return 10 ** np.nanmean(arr, axis=0)


def _probe_at(r: dict, step: int) -> dict | None:
    return next((p for p in r["history"]["probes"] if p["step"] == step), None)


def figure_variance_growth(res: Results, lr: float, path: Path) -> Path:
    fig, axes = new_figure(1, len(res.placements), sharey=True)
    steps = sorted({p["step"] for r in res.get(res.placements[0], lr)
                    for p in r["history"]["probes"]})
    chosen = sorted({steps[round(i * (len(steps) - 1) / 4)] for i in range(5)}) if steps else []
    cmap = __import__("matplotlib").colormaps["viridis"]
    for ax, placement in zip(axes[0], res.placements, strict=True):
        for i, step in enumerate(chosen):
            probes = [p for r in res.get(placement, lr) if (p := _probe_at(r, step))]
            if not probes:
                continue
            curve = _mean_log_curve([p["variance"] for p in probes])
            ax.plot(range(1, len(curve) + 1), curve, marker="o", ms=3,
                    color=cmap(i / max(1, len(chosen) - 1)), label=f"step {step}")
        ax.set_yscale("log")
        ax.set_title(f"{placement}-LN, lr {lr:g}")
        _layer_axis(ax, "layer (residual stream after block)")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("hidden-state variance (geo. mean over seeds)")
    return save_figure(fig, path)


def figure_variance_over_training(res: Results, path: Path) -> Path:
    fig, axes = new_figure(1, len(res.lrs), sharey=True)
    for ax, lr in zip(axes[0], res.lrs, strict=True):
        for placement in res.placements:
            runs = [r for r in res.get(placement, lr) if r["history"]["probes"]]
            if not runs:
                continue
            x = [p["step"] for p in runs[0]["history"]["probes"]]
            plot_band(ax, x, [[p["variance"][-1] for p in r["history"]["probes"]] for r in runs],
                      placement, COLORS.get(placement), log=True)
        ax.set_title(f"last-layer variance, lr {lr:g}")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def figure_max_abs(res: Results, path: Path) -> Path:
    fig, axes = new_figure(1, len(res.lrs), sharey=True)
    for ax, lr in zip(axes[0], res.lrs, strict=True):
        for placement in res.placements:
            finals = [p["max_abs"] for r in res.get(placement, lr) if (p := final_probe(r))]
            if finals:
                curve = _mean_log_curve(finals)
                ax.plot(range(1, len(curve) + 1), curve, marker="o", ms=3,
                        color=COLORS.get(placement), label=placement)
        ax.set_yscale("log")
        ax.set_title(f"final max |x| by layer, lr {lr:g}")
        _layer_axis(ax)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("max |x| (geo. mean over seeds)")
    return save_figure(fig, path)


def figure_layer_grads(res: Results, lr: float, path: Path) -> Path:
    fig, axes = new_figure(1, 2, sharey=True)
    for ax, which in zip(axes[0], ("init", "end"), strict=True):
        for placement in res.placements:
            curves = []
            for r in res.get(placement, lr):
                probes = r["history"]["grad_probes"]
                if probes and not (which == "end" and r["diverged"]):
                    curves.append((probes[0] if which == "init" else probes[-1])["layer_grad_norm"])
            if curves:
                curve = _mean_log_curve(curves)
                ax.plot(range(1, len(curve) + 1), curve, marker="o", ms=3,
                        color=COLORS.get(placement), label=placement)
        ax.set_yscale("log")
        ax.set_title(f"per-layer grad norm at {which} (lr {lr:g})")
        _layer_axis(ax)
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def _series(r: dict, key: str) -> tuple[list[int], list[float]]:
    return r["history"]["step"], r["history"][key]


def _smooth(values: list[float], k: int) -> list[float]:
    if k <= 1 or len(values) < k:
        return values
    arr = np.asarray(values, dtype=float)
    kernel = np.ones(k) / k
    return list(np.convolve(arr, kernel, mode="valid"))


def figure_curves(res: Results, key: str, path: Path, title: str, log: bool,
                  smooth: int = 1) -> Path:
    fig, axes = new_figure(1, len(res.lrs), sharey=True)
    for ax, lr in zip(axes[0], res.lrs, strict=True):
        for placement in res.placements:
            runs = [r for r in res.get(placement, lr) if r["history"]["step"]]
            if not runs:
                continue
            steps = runs[0]["history"]["step"]
            values = [_smooth(r["history"][key], smooth) for r in runs]
            plot_band(ax, steps[smooth - 1:] if smooth > 1 else steps, values, placement,
                      COLORS.get(placement), log=log)
            for r in runs:
                if r["diverged"]:
                    ax.axvline(r["divergence"]["step"], color=COLORS.get(placement), ls=":")
        ax.set_title(f"{title}, lr {lr:g}")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    return save_figure(fig, path)


# ---------------------------------------------------------------- text sample


def generate_sample(run_path: Path, cfg: PerlnConfig, best: dict) -> str:
    weights = run_path / "checkpoints" / best["arm"] / "final.pt"
    tokens = run_path / "tokens.pt"
    if not weights.exists() or not tokens.exists() or cfg.sweep.sample_tokens <= 0:
        return ""
    model = GPT(replace(cfg.model, norm_placement=best["placement"]))
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    _, val = read_tokens(tokens)
    prompt = val[: min(64, cfg.model.block_size // 2)].long()[None]
    out = model.generate(prompt, cfg.sweep.sample_tokens,
                         generator=torch.Generator().manual_seed(0))
    tokenizer = get_tokenizer(cfg.data.tokenizer)
    return tokenizer.decode(prompt[0].tolist()) + "⟦generated:⟧" + tokenizer.decode(
        out[0, prompt.size(1):].tolist())


# ---------------------------------------------------------------- the report


def build_report(run_path: str | Path) -> Path:
    run_path = Path(run_path)
    cfg = load_config(PerlnConfig, run_path / "config.yaml")
    results = load_results(run_path)
    report = Report("Peri-LN reproduction: normalization placement (pre / post / peri)",
                    run_path / "report.md")
    if not results:
        report.section("Status", "No arm has finished yet; rerun with `--resume`.")
        return report.write()
    res = Results(results, cfg)
    figs = run_path / "figures"
    contrast = next((x for x in res.lrs if _close(x, cfg.sweep.contrast_lr)), res.lrs[-1])
    warmup = int(cfg.train.warmup_fraction * cfg.train.steps)

    # claims first (Report puts them at the top)
    if {"pre", "peri"} <= set(res.placements):
        report.add_claim(claim_variance(res, contrast))
        report.add_claim(claim_gradients(res, contrast, warmup))
        report.add_claim(claim_stability(res))
        report.add_claim(claim_massive(res, contrast))

    _setting(report, run_path, cfg, res, results)
    _sweep_table(report, res, warmup)
    report.section("Figures")
    report.figure(figure_variance_growth(res, contrast, figs / "variance_growth.png"),
                  f"Hidden-state variance after each block at five points of training, one "
                  f"panel per placement (lr {contrast:g}, geometric mean over seeds).")
    if len(res.lrs) > 1 and contrast != res.lrs[0]:
        report.figure(figure_variance_growth(res, res.lrs[0], figs / "variance_growth_low_lr.png"),
                      f"The same at the lowest lr, {res.lrs[0]:g}.")
    report.figure(figure_variance_over_training(res, figs / "variance_over_training.png"),
                  "Variance after the last block over training (mean and min–max over seeds).")
    report.figure(figure_max_abs(res, figs / "max_abs.png"),
                  "Largest activation magnitude in the residual stream by layer, final weights.")
    report.figure(figure_layer_grads(res, contrast, figs / "layer_grad_norms.png"),
                  "Per-layer gradient norms (before clipping) at the first and last step.")
    report.figure(figure_curves(res, "grad_norm", figs / "global_grad_norm.png",
                                "global grad norm", log=True),
                  "Global gradient norm before clipping, every step (dotted: divergence).")
    report.figure(figure_curves(res, "loss", figs / "loss_curves.png", "training loss",
                                log=False, smooth=5),
                  "Training loss (5-step moving average; band: min–max over seeds).")
    _sample(report, run_path, cfg, results)
    _limits(report, cfg, results)
    return report.write()


def _setting(report: Report, run_path: Path, cfg: PerlnConfig, res: Results,
             results: list[dict]) -> None:
    m, t, s = cfg.model, cfg.train, cfg.sweep
    n_params = results[0].get("n_params", 0)
    tokens_note = ""
    if (run_path / "tokens.pt").exists():
        train, val = read_tokens(run_path / "tokens.pt")
        tokens_note = f" ({train.numel():,} training / {val.numel():,} validation tokens)"
    env = {}
    if (run_path / "environment.json").exists():
        env = json.loads((run_path / "environment.json").read_text())
    total_cpu = sum(r.get("cpu_seconds", 0.0) for r in results)
    sessions = [r for r in RunDir("perln", run_path.name, root=run_path.parent.parent,
                                  resume=True).read_log() if r.get("event") == "session_finished"]
    timing = ""
    if sessions:
        last = sessions[-1]
        timing = (f"; last session (sweep only, all processes): {last['wall_seconds'] / 60:.1f} "
                  f"min wall, {last['cpu_seconds'] / 60:.1f} min CPU")
    expected = len(s.placements) * len(s.lrs) * len(s.seeds)
    report.section("Setting", (
        f"- Scale `{cfg.scale}`; {len(results)}/{expected} arms finished "
        f"(placements {', '.join(res.placements)} × lrs {', '.join(f'{x:g}' for x in res.lrs)} "
        f"× seeds {sorted({r['seed'] for r in results})}).\n"
        f"- Data: `{cfg.data.source}`, tokenizer `{cfg.data.tokenizer}`{tokens_note}.\n"
        f"- Model: decoder-only GPT, {m.n_layer} layers, width {m.d_model}, {m.n_head} heads, "
        f"context {m.block_size}, {m.norm}, {m.position} positions, {m.mlp} MLP, tied "
        f"embeddings, {n_params:,} parameters; embedding norm {m.embedding_norm}, frozen "
        f"output-norm gain {m.freeze_output_gain}. Each seed gives every placement the same "
        "initial weights.\n"
        f"- Training: {t.steps} AdamW steps (β=({t.beta1}, {t.beta2}), weight decay "
        f"{t.weight_decay}), batch {t.batch_size}×{t.accumulate}×{m.block_size} tokens, "
        f"linear warmup {t.warmup_fraction:.0%} then cosine to {t.min_lr_ratio:g}× peak, "
        f"clipping at {t.grad_clip:g} (norms recorded before clipping), precision "
        f"`{t.precision}` ({env.get('runtime', {}).get('precision', '?')} here).\n"
        f"- Probes: residual-stream variance and max |x| after every block on a fixed batch "
        f"of {cfg.probe.batch_size} validation windows, and per-layer gradient norms, every "
        f"{cfg.probe.every} steps; loss and global gradient norm every step.\n"
        f"- Device: {results[0].get('device', '?')}; training CPU time summed over arms "
        f"{total_cpu / 60:.1f} min{timing}."))


def _sweep_table(report: Report, res: Results, warmup: int) -> None:
    rows = []
    for placement in res.placements:
        for lr in res.lrs:
            runs = res.get(placement, lr)
            if not runs:
                continue
            rows.append((
                placement, f"{lr:g}",
                summarize([r["final_val_loss"] for r in runs]).format(3),
                f"{sum(r['diverged'] for r in runs)}/{len(runs)}",
                summarize([r["loss_spikes"] for r in runs]).format(2),
                summarize([r["grad_spikes"] for r in runs]).format(2),
                summarize([final_max_variance(r) for r in runs]).format(3),
                summarize([final_max_abs(r) for r in runs]).format(3),
                summarize([depth_growth_decades(r) for r in runs]).format(2),
                summarize([grad_nonuniformity(r, warmup) for r in runs]).format(2),
            ))
    report.section("Learning-rate sweep")
    report.table(("placement", "lr", "final val loss", "diverged", "loss spikes",
                  "grad-norm spikes", "max-layer variance (end)", "max abs x (end)",
                  "depth growth, decades (end)", "per-layer grad CV"), rows,
                 caption="Mean ± std over seeds (n seeds). Depth growth: log10 of the variance "
                         "after the last block over that after the first. Best lr per "
                         "placement: " + ", ".join(f"{p} {res.best_lr(p):g}"
                                                   for p in res.placements) + ".")


def _sample(report: Report, run_path: Path, cfg: PerlnConfig, results: list[dict]) -> None:
    finite = [r for r in results if math.isfinite(r["final_val_loss"])]
    if not finite:
        return
    best = min(finite, key=lambda r: r["final_val_loss"])
    text = generate_sample(run_path, cfg, best)
    if text:
        fence = "~~~~"
        report.section("Sample from the best model", (
            f"Arm `{best['arm']}` (val loss {fmt(best['final_val_loss'])}); prompt from the "
            f"validation split, then {cfg.sweep.sample_tokens} sampled tokens (temperature 0.8, "
            f"top-k 40):\n\n{fence}\n{text}\n{fence}"))


def _limits(report: Report, cfg: PerlnConfig, results: list[dict]) -> None:
    peak = max((final_max_abs(r) for r in results if math.isfinite(final_max_abs(r))),
               default=float("nan"))
    side = "below" if peak <= FP16_MAX else "beyond"
    if cfg.scale == "paper":
        text = ("Paper-scale settings; compare with the paper's figures. The downstream "
                "5-task average is not computed by this package (use lm-evaluation-harness on "
                "the final weights).")
    else:
        text = (
            f"This is a {cfg.model.n_layer}-layer, width-{cfg.model.d_model} model "
            f"({cfg.data.tokenizer} tokens) trained for {cfg.train.steps} steps of "
            f"{cfg.train.batch_size}×"
            f"{cfg.model.block_size} tokens from `{cfg.data.source}`, not a 400M-3.2B "
            "model on 30B DCLM tokens. It can show the mechanisms the paper describes (how the "
            "stream's variance and extremes grow with depth and training under each placement, "
            "how gradients distribute over layers, behaviour across learning rates) but not "
            f"their size at scale: the largest final activation of any arm here is "
            f"{fmt(peak)}, {side} the fp16 range ({FP16_MAX:g}), and small loss differences "
            "this early in training say little about final quality. The paper's downstream "
            "benchmarks (ARC-Easy, HellaSwag, PIQA, SIQA, Winogrande) are out of reach for "
            "models this small and are not run. Verdicts use "
            f"{len(cfg.sweep.seeds)} seeds; 'inconclusive' means the seed spread is too large "
            "for the rule to decide.")
    report.section("Limits", text)


__all__ = ["build_report", "load_results", "Results", "threshold"]
