"""``report.md`` of a sweep, rebuilt from the run directory alone.

Reads ``config.yaml``, ``arms/*.json`` (one result per arm, with its history), the token file
and the best arm's final weights; computes every number and verdict; draws the figures.
The decision rule of each claim is written next to it, in code and in the table.

Statistics: every comparison is a t-test over seeds from ``reprokit.report`` (95% interval,
at least ``MIN_SEEDS`` seeds a side). Placements are *paired* by seed: for a given seed every
placement starts from the same initial weights and draws the same batches, so the tests run
on per-seed differences. A claim with several parts holds only if every part holds, with
Holm's correction across the parts. A diverged arm counts as data: in loss comparisons its
loss is that of a uniform guess (ln V), in the stability count it is one event, and its
activations before divergence enter claim 4.
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
from perln.model import FP16_MAX, GPT, embedding_norm_on
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
)
from reprokit.runs import iter_jsonl, read_json

COLORS = {"pre": "tab:red", "peri": "tab:blue", "post": "tab:green", "peri-frozen": "tab:purple"}
LOSS_TOLERANCE = 0.01  # nats: "equal" loss for claim 3
DECADE = 1.0           # "far beyond": a factor of 10
MIN_SEEDS = 3          # seeds a side before any comparison decides
HOLM = "holm"


def load_results(run_path: Path) -> list[dict]:
    # plain reads, no RunDir: a copied run folder (results/cpu) rebuilds anywhere, and
    # rebuilding never re-points runs/perln/latest
    return [read_json(p) for p in sorted((Path(run_path) / "arms").glob("*.json"))]


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9)


def variant_of(r: dict) -> str:
    return r.get("variant") or r["placement"]


class Results:
    """Per-arm results grouped by (variant, lr): a variant is a placement or the frozen-gain
    ablation ``peri-frozen``. ``seeds`` is the sorted union of seeds; values are per seed."""

    def __init__(self, results: list[dict], cfg: PerlnConfig):
        self.cfg = cfg
        self.by: dict[tuple[str, float], dict[int, dict]] = defaultdict(dict)
        grid = sorted({float(x) for p in cfg.sweep.placements for x in cfg.lrs_of(p)}
                      | {float(x) for x in cfg.sweep.frozen_gain_lrs})
        for r in results:
            lr = next((x for x in grid if _close(x, r["lr"])), float(r["lr"]))
            self.by[(variant_of(r), lr)][int(r["seed"])] = r
        order = list(cfg.sweep.placements) + ["peri-frozen"]
        self.placements = [p for p in order if any(k[0] == p for k in self.by)]
        self.seeds = sorted({int(r["seed"]) for r in results})
        self.log_vocab = math.log(cfg.model.vocab_size)

    def lrs(self, variant: str | None = None) -> list[float]:
        return sorted({lr for v, lr in self.by if variant is None or v == variant})

    def get(self, variant: str, lr: float) -> list[dict]:
        runs = self.by.get((variant, float(lr)), {})
        return [runs[s] for s in sorted(runs)]

    def per_seed(self, variant: str, lr: float | None, fn) -> list[float]:
        """`fn` of each seed's arm, aligned with ``self.seeds`` (NaN where missing), so two
        variants' lists pair up seed by seed."""
        runs = self.by.get((variant, float(lr)), {}) if lr is not None else {}
        return [fn(runs[s]) if s in runs else float("nan") for s in self.seeds]

    def values(self, variant: str, lr: float, fn) -> list[float]:
        return [fn(r) for r in self.get(variant, lr)]

    def loss(self, r: dict) -> float:
        """Final validation loss; a diverged arm counts as a uniform guess, ln V."""
        return self.log_vocab if r["diverged"] else r["final_val_loss"]

    def best_lr(self, variant: str) -> float | None:
        """The lr with the lowest mean final validation loss (a diverged seed counts as ln V,
        so an lr where some seeds diverge is rarely best)."""
        scores = {lr: float(np.nanmean(self.values(variant, lr, self.loss)))
                  for lr in self.lrs(variant) if self.get(variant, lr)}
        scores = {k: v for k, v in scores.items() if math.isfinite(v)}
        return min(scores, key=scores.get) if scores else None

    def diverged(self, variant: str, lr: float) -> tuple[int, int]:
        runs = self.get(variant, lr)
        return sum(r["diverged"] for r in runs), len(runs)

    def contrast_lr(self) -> float | None:
        """Where claims 1, 2 and 4 are judged: ``sweep.contrast_lr`` if set, else the highest
        lr shared by pre and peri at which no Pre-LN seed diverged."""
        shared = [lr for lr in self.lrs("pre") if lr in self.lrs("peri")]
        if self.cfg.sweep.contrast_lr is not None:
            return next((x for x in shared if _close(x, self.cfg.sweep.contrast_lr)), None)
        alive = [lr for lr in shared if self.diverged("pre", lr)[0] == 0]
        return max(alive) if alive else (min(shared) if shared else None)

    def lr_near(self, variant: str, target: float) -> float | None:
        """`target` if `variant` ran it, else its highest lr below (post has a shorter grid)."""
        lrs = self.lrs(variant)
        below = [x for x in lrs if x <= target * (1 + 1e-9)]
        return max(below) if below else (min(lrs) if lrs else None)


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


def peak_before_divergence(r: dict) -> float:
    """Largest |x| of the residual stream over all training steps before divergence (or
    over the whole run): a diverged arm's activations still count."""
    return float(r.get("peak_abs_before_divergence", float("nan")))


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


def _paired(a, b, label: str, margin: float = 0.0):
    return compare(a, b, paired=True, margin=margin, min_n=MIN_SEEDS, label=label)


def _fmt_lr(lr: float | None) -> str:
    return "—" if lr is None else f"{lr:g}"


def claim_variance(res: Results, lr: float) -> Claim:
    growth = {p: res.per_seed(p, lr, variance_growth_decades) for p in ("pre", "peri")}
    level = {p: res.per_seed(p, lr, lambda r: log10_safe(final_max_variance(r)))
             for p in ("pre", "peri")}
    best = {p: res.best_lr(p) for p in ("post", "peri")}
    loss = {p: res.per_seed(p, best[p], res.loss) for p in best}
    post_lr = res.lr_near("post", lr)
    post_level = res.values("post", post_lr, final_max_variance) if post_lr else []
    parts = [
        _paired(growth["pre"], growth["peri"], f"pre − peri − {DECADE:g}, growth of last-layer "
                "variance over training (decades)", DECADE),
        _paired(level["pre"], level["peri"], f"pre − peri − {DECADE:g}, log10 final "
                "max-layer variance", DECADE),
    ]
    if "post" in res.placements:
        parts.append(_paired(loss["post"], loss["peri"], "post − peri, val loss at each "
                             "one's best lr"))
    measured = (
        f"at lr {lr:g}: growth of last-layer variance over training, decades: pre "
        f"{summarize(growth['pre']).format(2)}, peri {summarize(growth['peri']).format(2)}; "
        f"log10 final max-layer variance: pre {summarize(level['pre']).format(2)}, peri "
        f"{summarize(level['peri']).format(2)}; best-lr val loss post "
        f"{summarize(loss['post']).format(3)} (lr {_fmt_lr(best['post'])}) vs peri "
        f"{summarize(loss['peri']).format(3)} (lr {_fmt_lr(best['peri'])}). Not judged: "
        f"post's max-layer variance {summarize(post_level).format(3)} at lr {_fmt_lr(post_lr)} "
        "(flat by construction: its stream is a norm's output).")
    return Claim(
        "Pre-LN's hidden-state variance grows quickly with depth and during training; "
        "Peri-LN's grows slowly and stays bounded; Post-LN stays flat but trains worse.",
        measured,
        f"At lr {lr:g} (the highest lr at which no Pre-LN seed diverged), paired by seed "
        "(every placement starts from the seed's weights and batches): pre's growth of "
        "last-layer variance from init to end exceeds peri's by > 1 decade; pre's final "
        "max-over-layers variance exceeds peri's by > 1 decade; post's val loss at its best "
        "lr is above peri's at its best lr (a diverged seed's loss counts as ln V). Post's "
        "flatness is shown, not judged. Holds if every part holds.",
        all_of(*parts, correction=HOLM),
        ["figures/variance_growth.png", "figures/variance_over_training.png"])


def claim_gradients(res: Results, lr: float, warmup: int) -> Claim:
    post_lr = res.lr_near("post", lr)
    at = {"pre": lr, "peri": lr, "post": post_lr}
    cv = {p: res.per_seed(p, at[p], lambda r: grad_nonuniformity(r, warmup)) for p in at}
    spikes = {p: res.per_seed(p, at[p], lambda r: float(r["grad_spikes"])) for p in at}
    med = {p: res.per_seed(p, at[p], lambda r: median_grad_norm(r, warmup)) for p in at}
    peri_at_post = {
        "cv": res.per_seed("peri", post_lr, lambda r: grad_nonuniformity(r, warmup)),
        "med": res.per_seed("peri", post_lr, lambda r: median_grad_norm(r, warmup))}
    parts = [
        _paired(cv["pre"], cv["peri"], "pre − peri, per-layer grad-norm CV"),
        _paired(spikes["pre"], spikes["peri"], "pre − peri, grad-norm spikes per run"),
    ]
    if "post" in res.placements:
        parts += [
            _paired(cv["post"], peri_at_post["cv"], f"post − peri at lr {_fmt_lr(post_lr)}, "
                    "per-layer grad-norm CV"),
            _paired(med["post"], peri_at_post["med"], f"post − peri at lr {_fmt_lr(post_lr)}, "
                    "median global grad norm")]
    shown = [p for p in at if p in res.placements]
    measured = (
        f"at lr {lr:g} (post: {_fmt_lr(post_lr)}), after warmup: per-layer grad-norm CV "
        + ", ".join(f"{p} {summarize(cv[p]).format(2)}" for p in shown)
        + "; grad-norm spikes per run " + ", ".join(
            f"{p} {summarize(spikes[p]).format(2)}" for p in shown)
        + "; median global grad norm " + ", ".join(
            f"{p} {summarize(med[p]).format(2)}" for p in shown) + ".")
    p = res.cfg.probe
    return Claim(
        "Peri-LN gives steadier gradient flow: more uniform per-layer gradient norms and "
        "fewer gradient-norm spikes than Pre-LN; Post-LN has the largest, least uniform "
        "gradients.",
        measured,
        f"At lr {lr:g}, after warmup, paired by seed: non-uniformity = std/mean across layers "
        "of the per-layer gradient norms (before clipping), averaged over probes; a spike = a "
        f"step whose global gradient norm (before clipping) exceeds {p.grad_spike_factor:g} × "
        f"the median of the previous {p.spike_window} steps. Holds if peri's CV and spike "
        "count are below pre's, and post's CV and median norm are above peri's (at post's "
        "nearest lr), every part holding.",
        all_of(*parts, correction=HOLM),
        ["figures/layer_grad_norms.png", "figures/global_grad_norm.png"])


def claim_stability(res: Results) -> Claim:
    shared = [lr for lr in res.lrs("pre") if lr in res.lrs("peri")]
    events = {p: [sum(v for v in vals if math.isfinite(v)) if any(map(math.isfinite, vals))
                  else float("nan")
                  for vals in zip(*[res.per_seed(p, lr, instability_events) for lr in shared],
                                  strict=True)] if shared else []
              for p in ("pre", "peri")}
    best = {p: res.best_lr(p) for p in ("pre", "peri")}
    loss = {p: res.per_seed(p, best[p], res.loss) for p in best}
    parts = [
        _paired(events["pre"], events["peri"], "pre − peri, instability events per seed over "
                "the sweep"),
        _paired(loss["pre"], loss["peri"], f"pre − peri + {LOSS_TOLERANCE:g}, val loss at each "
                "one's best lr", -LOSS_TOLERANCE),
    ]
    div = "; ".join(f"{p}: " + ", ".join(
        f"{lr:g} {'{}/{}'.format(*res.diverged(p, lr))}" for lr in res.lrs(p))
        for p in res.placements)
    measured = (
        f"diverged seeds per lr — {div}. Instability events per seed over lrs "
        f"{', '.join(f'{x:g}' for x in shared)} (loss spikes + divergences): pre "
        f"{summarize(events['pre']).format(2)}, peri {summarize(events['peri']).format(2)}; "
        f"best lr pre {_fmt_lr(best['pre'])}, peri {_fmt_lr(best['peri'])}; val loss there: "
        f"pre {summarize(loss['pre']).format(3)}, peri {summarize(loss['peri']).format(3)}.")
    p = res.cfg.probe
    return Claim(
        "Peri-LN converges stably where Pre-LN spikes or diverges (high learning rates), "
        "and reaches equal or lower loss at the best learning rate.",
        measured,
        "Over the whole lr sweep, paired by seed: per seed, count the loss spikes (training "
        f"loss > {p.loss_spike_factor:g} × median of up to {p.spike_window} previous steps, "
        f"from step {LOSS_SPIKE_MIN_HISTORY}) plus divergences (NaN/Inf, or loss > "
        f"{p.divergence_factor:g}·ln V for {p.divergence_patience} steps in a row; a diverged "
        "arm stops early and counts as one event). Holds if pre's count exceeds peri's and "
        "peri's val loss at its own best lr is at most pre's at pre's best lr + "
        f"{LOSS_TOLERANCE:g} nats (best lr = lowest mean loss over seeds, picked on the same "
        "seeds, a diverged seed's loss counting as ln V), every part holding.",
        all_of(*parts, correction=HOLM),
        ["figures/loss_curves.png", "figures/global_grad_norm.png"])


def claim_massive(res: Results, lr: float) -> Claim:
    top = max(x for x in res.lrs("pre") if x in res.lrs("peri"))
    final = {p: res.per_seed(p, lr, lambda r: log10_safe(final_max_abs(r)))
             for p in ("pre", "peri")}
    peak = {p: res.per_seed(p, top, lambda r: log10_safe(peak_before_divergence(r)))
            for p in ("pre", "peri")}
    parts = [
        _paired(final["pre"], final["peri"], f"pre − peri − {DECADE:g}, log10 final max |x| at "
                f"lr {lr:g}", DECADE),
        _paired(peak["pre"], peak["peri"], f"pre − peri − {DECADE:g}, log10 peak |x| before "
                f"divergence at lr {top:g}", DECADE),
    ]
    frac = "; ".join(
        f"{p} " + ", ".join(f"{x:g}: {summarize(res.values(p, x, lambda r: r.get('fp16_overflow_fraction', float('nan')))).format(2)}"
                            for x in res.lrs(p))
        for p in ("pre", "peri") if p in res.placements)
    div_top = "{}/{}".format(*res.diverged("pre", top))
    measured = (
        f"log10 max |x| over layers, final weights, lr {lr:g}: pre "
        f"{summarize(final['pre']).format(2)}, peri {summarize(final['peri']).format(2)}; "
        f"log10 peak |x| over training steps before divergence, lr {top:g} (pre diverged "
        f"{div_top}): pre {summarize(peak['pre']).format(2)}, peri "
        f"{summarize(peak['peri']).format(2)}. Fraction of training steps whose stream "
        f"passed the fp16 maximum {FP16_MAX:g} before divergence, by lr: {frac}.")
    return Claim(
        "Massive activations: Pre-LN's largest activation magnitudes grow far beyond "
        "Peri-LN's (in the paper, past the fp16 range).",
        measured,
        f"Paired by seed: at lr {lr:g}, log10 of the final max |x| (residual stream, any "
        f"layer, probe batch) of pre exceeds peri's by more than 1 (10×); and at the top lr "
        f"{top:g}, log10 of the peak |x| over the training batches of every step before "
        "divergence (diverged arms count) of pre exceeds peri's by more than 1. Holds if both "
        "hold. The fp16 fractions are reported, not judged.",
        all_of(*parts, correction=HOLM), ["figures/max_abs.png"])


def claim_frozen_gain(res: Results) -> Claim:
    lrs = [lr for lr in res.lrs("peri-frozen") if lr in res.lrs("peri")]
    parts = [_paired(res.per_seed("peri-frozen", lr, res.loss), res.per_seed("peri", lr, res.loss),
                     f"frozen − learned γ, val loss at lr {lr:g}") for lr in lrs]
    measured = "; ".join(
        f"lr {lr:g}: val loss with γ frozen {summarize(res.values('peri-frozen', lr, res.loss)).format(3)}"
        f" vs learned {summarize(res.values('peri', lr, res.loss)).format(3)}" for lr in lrs)
    return Claim(
        "Ablation: freezing Peri-LN's output-norm gain γ (at 1) hurts.",
        measured + ".",
        "Peri-LN with the output norms' γ frozen at 1 (β, if any, and every other weight "
        "learn), at each ablation lr, paired by seed with Peri-LN (same initial weights and "
        "batches): its val loss is above Peri-LN's (a diverged seed counts as ln V). Holds "
        "if it holds at every ablation lr.",
        all_of(*parts, correction=HOLM) if parts else Verdict.INCONCLUSIVE, [])
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
        if ax.get_lines():
            ax.legend(fontsize=7)
        else:  # a placement whose own lr grid does not contain this lr (post at a high lr)
            ax.text(0.5, 0.5, f"no {placement} runs at lr {lr:g}", transform=ax.transAxes,
                    ha="center", va="center", fontsize=8)
    axes[0][0].set_ylabel("hidden-state variance (geo. mean over seeds)")
    return save_figure(fig, path)


def figure_variance_over_training(res: Results, path: Path) -> Path:
    fig, axes = new_figure(1, len(res.lrs()), sharey=True)
    for ax, lr in zip(axes[0], res.lrs(), strict=True):
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
    fig, axes = new_figure(1, len(res.lrs()), sharey=True)
    for ax, lr in zip(axes[0], res.lrs(), strict=True):
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
    fig, axes = new_figure(1, len(res.lrs()), sharey=True)
    for ax, lr in zip(axes[0], res.lrs(), strict=True):
        for placement in res.placements:
            runs = [r for r in res.get(placement, lr) if r["history"]["step"]]
            if not runs:
                continue
            steps = max((r["history"]["step"] for r in runs), key=len)
            # plot_band cuts every seed to the shortest run; one shorter than the window
            # (an early divergence, a smoke run) is drawn unsmoothed
            k = smooth if min(len(r["history"]["step"]) for r in runs) >= smooth else 1
            values = [_smooth(r["history"][key], k) for r in runs]
            plot_band(ax, steps[k - 1:], values, placement, COLORS.get(placement), log=log)
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
    contrast = res.contrast_lr()
    warmup = int(cfg.train.warmup_fraction * cfg.train.steps)

    # claims first (Report puts them at the top)
    if {"pre", "peri"} <= set(res.placements) and contrast is not None:
        report.add_claim(claim_variance(res, contrast))
        report.add_claim(claim_gradients(res, contrast, warmup))
        report.add_claim(claim_stability(res))
        report.add_claim(claim_massive(res, contrast))
        if "peri-frozen" in res.placements:
            report.add_claim(claim_frozen_gain(res))
    else:
        contrast = res.lrs()[-1]

    _setting(report, run_path, cfg, res, results)
    _sweep_table(report, res, warmup)
    report.section("Figures")
    report.figure(figure_variance_growth(res, contrast, figs / "variance_growth.png"),
                  f"Hidden-state variance after each block at five points of training, one "
                  f"panel per placement (lr {contrast:g}, geometric mean over seeds).")
    low = res.lrs()[0]
    if not _close(contrast, low):
        report.figure(figure_variance_growth(res, low, figs / "variance_growth_low_lr.png"),
                      f"The same at the lowest lr, {low:g}.")
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
    sessions = [r for r in iter_jsonl(run_path / "metrics.jsonl")
                if r.get("event") == "session_finished"]
    timing = ""
    if sessions:
        last = sessions[-1]
        timing = (f"; last session (sweep only, all processes): {last['wall_seconds'] / 60:.1f} "
                  f"min wall, {last['cpu_seconds'] / 60:.1f} min CPU")
    expected = (sum(len(cfg.lrs_of(p)) for p in s.placements)
                + len(s.frozen_gain_lrs)) * len(s.seeds)
    report.section("Setting", (
        f"- Scale `{cfg.scale}`; {len(results)}/{expected} arms finished "
        f"(placements × lrs: {'; '.join(p + ' ' + ', '.join(f'{x:g}' for x in res.lrs(p)) for p in res.placements)} "
        f"× seeds {sorted({r['seed'] for r in results})}).\n"
        f"- Data: `{cfg.data.source}`, tokenizer `{cfg.data.tokenizer}`{tokens_note}.\n"
        f"- Model: decoder-only GPT, {m.n_layer} layers, width {m.d_model}, {m.n_head} heads, "
        f"context {m.block_size}, {m.norm}, {m.position} positions, {m.mlp} MLP, tied "
        f"embeddings, {n_params:,} parameters. Embedding norm Norm(x_embed) "
        f"(`model.embedding_norm={m.embedding_norm}`): "
        + ", ".join(f"{p} {'on' if embedding_norm_on(m.embedding_norm, p) else 'off'}"
                    for p in cfg.sweep.placements)
        + f". Output-norm gains γ frozen: {m.freeze_output_gain}"
        + (f" (and in the ablation arms `peri-frozen` at lr "
           f"{', '.join(f'{x:g}' for x in cfg.sweep.frozen_gain_lrs)})"
           if cfg.sweep.frozen_gain_lrs else "")
        + ". Each seed gives every placement the same initial weights and batches.\n"
        f"- Training: {t.steps} AdamW steps (β=({t.beta1}, {t.beta2}), weight decay "
        f"{t.weight_decay}), batch {t.batch_size}×{t.accumulate}×{m.block_size} tokens, "
        f"linear warmup {t.warmup_fraction:.0%} then cosine to {t.min_lr_ratio:g}× peak, "
        f"clipping at {t.grad_clip:g} (norms recorded before clipping), precision "
        f"`{t.precision}` ({env.get('runtime', {}).get('precision', '?')} here), residual "
        f"stream stored in `{t.stream_dtype}`"
        + (" (each block's output rounded to that dtype, compute in fp32: fp16 overflows past "
           f"{FP16_MAX:g})" if t.stream_dtype != "fp32" else "") + ".\n"
        f"- Probes: residual-stream variance and max |x| after every block on a fixed batch "
        f"of {cfg.probe.batch_size} validation windows, and per-layer gradient norms, every "
        f"{cfg.probe.every} steps; loss and global gradient norm every step.\n"
        f"- Device: {results[0].get('device', '?')}; training CPU time summed over arms "
        f"{total_cpu / 60:.1f} min{timing}."))


def _sweep_table(report: Report, res: Results, warmup: int) -> None:
    rows = []
    emb = res.cfg.model.embedding_norm
    for variant in res.placements:
        placement = variant.split("-")[0]
        for lr in res.lrs(variant):
            runs = res.get(variant, lr)
            if not runs:
                continue
            steps = [r["divergence"]["step"] for r in runs if r["diverged"]]
            rows.append((
                variant, "on" if embedding_norm_on(emb, placement) else "off", f"{lr:g}",
                summarize([r["final_val_loss"] for r in runs]).format(3),
                f"{len(steps)}/{len(runs)}" + (f" (step {', '.join(map(str, steps))})"
                                               if steps else ""),
                summarize([r["loss_spikes"] for r in runs]).format(2),
                summarize([r["grad_spikes"] for r in runs]).format(2),
                summarize([final_max_variance(r) for r in runs]).format(3),
                summarize([final_max_abs(r) for r in runs]).format(3),
                summarize([peak_before_divergence(r) for r in runs]).format(3),
                summarize([r.get("fp16_overflow_fraction", float("nan")) for r in runs]).format(2),
                summarize([depth_growth_decades(r) for r in runs]).format(2),
                summarize([grad_nonuniformity(r, warmup) for r in runs]).format(2),
            ))
    report.section("Learning-rate sweep")
    best = ", ".join(f"{p} {_fmt_lr(res.best_lr(p))}" for p in res.placements)
    report.table(("arm", "emb. norm", "lr", "final val loss", "diverged", "loss spikes",
                  "grad-norm spikes", "max-layer variance (end)", "max abs x (end)",
                  "peak abs x before divergence (train)", "steps past fp16 max",
                  "depth growth, decades (end)", "per-layer grad CV"), rows,
                 caption="Mean ± std over seeds (n seeds; a diverged seed has no final value). "
                         "Diverged: seeds that diverged, and at which step. Peak |x|: the "
                         "largest |x| of the residual stream over the training batches of "
                         "every step before divergence; steps past fp16 max: the fraction of "
                         f"those steps whose peak exceeded {FP16_MAX:g}. Depth growth: log10 of "
                         "the variance after the last block over that after the first. Best "
                         f"lr per arm (diverged seeds count as ln V): {best}.")


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
    survived = [r for r in results if not r["diverged"]]
    peak = max((peak_before_divergence(r) for r in survived
                if math.isfinite(peak_before_divergence(r))), default=float("nan"))
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
            "their size at scale: the largest activation of any arm that did not diverge is "
            f"{fmt(peak)}, {side} the fp16 range ({FP16_MAX:g}); divergence here comes from "
            f"the `{cfg.train.stream_dtype}` residual stream, emulated by rounding (compute in "
            "fp32, gradients passed straight through the rounding, as under a perfect loss "
            "scale), not from real fp16 kernels; and small loss differences "
            "this early in training say little about final quality. The paper's downstream "
            "benchmarks (ARC-Easy, HellaSwag, PIQA, SIQA, Winogrande) are out of reach for "
            "models this small and are not run. Verdicts use "
            f"{len(cfg.sweep.seeds)} seeds (at least {MIN_SEEDS} a side to decide); "
            "'inconclusive' means the interval includes zero: the seed spread is too large "
            "for the rule to decide.")
    report.section("Limits", text)


__all__ = ["build_report", "load_results", "Results"]
