"""``report.md`` from a run folder alone: results/*.json, plan.json, setting.json, config.yaml.

Every number is read from the run's data and every verdict is the output of a rule written
here, next to its claim.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from gsg.config import GSGConfig
from gsg.experiments import load_results
from reprokit.config import load_config
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
    signal_gate,
    summarize,
    threshold,
)

LABELS = {"simsiam": "SimSiam", "simsiam_gsg": "SimSiam+GSG", "byol": "BYOL",
          "byol_gsg": "BYOL+GSG"}
COLORS = {"simsiam": "tab:blue", "simsiam_gsg": "tab:orange", "byol": "tab:green",
          "byol_gsg": "tab:red"}
# "collapsed": the effective rank of the projections is at most this fraction of their width
COLLAPSE_RANK_FRACTION = 0.1
# "collapsed" (SimSiam's monitor): normalised std below this fraction of the healthy 1/√d
COLLAPSE_STD_FRACTION = 0.5


def _final(results: list[dict], metric: str) -> list[float]:
    return [r["final"][metric] if not r["diverged"] else float("nan") for r in results]


def _group(results: dict[str, dict], keys: list[str], method: str, **match) -> list[dict]:
    out = [results[k] for k in keys if k in results and results[k]["method"] == method]
    return [r for r in out if all(r[f] == v for f, v in match.items())]


def _floor(setting: dict, metric: str) -> float | None:
    """The best floor a learned representation has to beat: random encoder or raw pixels."""
    values = [setting.get(f"random_init_{metric}"), setting.get(f"raw_pixel_{metric}")]
    values = [float(v) for v in values if v is not None]
    return max(values) if values else None


def _s(values) -> str:
    return summarize(values).format()


def _curves(ax, runs: list[dict], metric: str, label: str, color: str, first_epoch: int = 0):
    if not runs:
        return
    keep = [i for i, h in enumerate(runs[0]["history"]) if h["epoch"] >= first_epoch]
    epochs = [runs[0]["history"][i]["epoch"] for i in keep]
    plot_band(ax, epochs, [[r["history"][i][metric] for i in keep if i < len(r["history"])]
                           for r in runs], label, color)


def build_report(run_path: str | Path) -> Path:
    run_path = Path(run_path)
    cfg = load_config(GSGConfig, run_path / "config.yaml")
    results = load_results(run_path)
    plan = json.loads((run_path / "plan.json").read_text())
    setting = json.loads((run_path / "setting.json").read_text())
    rep = Report(f"GSG reproduction — {cfg.scale} scale", run_path / "report.md")
    fig_dir = run_path / "figures"
    methods = cfg.experiments.methods
    families = [f for f in ("simsiam", "byol") if f in methods and f"{f}_gsg" in methods]
    main, compute = plan["main"], plan["compute"]
    collapse, sweep = plan["collapse"], plan["sweep"]
    missing = [k for g in plan.values() for k in g if k not in results]
    d = cfg.model.proj_dim

    # ------------------------------------------------------------ setting
    geometric = (f"shifts ±{cfg.data.max_shift:.3g} of the size, rotations ±15° and random "
                 f"erasing (strength {cfg.data.augment_strength:g}), then " if
                 cfg.data.augment_strength > 0 else "")
    data_text = ("scikit-learn digits (1,257 train / 540 test 8×8 images); kNN bank, probe and "
                 f"test images carry one fixed draw of Gaussian noise of std {cfg.data.noise}; "
                 f"each training view is the clean digit with {geometric}fresh Gaussian noise of "
                 f"std {cfg.data.augment_noise} (no noise pattern is shared by two views)"
                 if cfg.data.name == "digits" else f"{cfg.data.name} from {cfg.data.root}")
    floor = ""
    if setting.get("raw_pixel_knn") is not None:
        lin, raw_lin = setting.get("random_init_linear"), setting.get("raw_pixel_linear")
        floor = (f" kNN on raw pixels: {fmt(setting['raw_pixel_knn'])}"
                 + (f" (linear probe {fmt(raw_lin)})" if raw_lin is not None else "")
                 + f"; on the features of a randomly initialised encoder: "
                 f"{fmt(setting['random_init_knn'])}"
                 + (f" (linear probe {fmt(lin)})" if lin is not None else "")
                 + " — the floors the learned representations have to beat.")
    rep.section("Setting", (
        f"Scale **{cfg.scale}**. Data: {data_text}.{floor}\n\n"
        f"Encoder `{cfg.model.backbone}` {cfg.model.backbone_kwargs}; projector width "
        f"{cfg.model.proj_hidden} → d = {d} ({cfg.model.proj_layers} layers ending in BN), "
        f"predictor bottleneck {cfg.model.pred_hidden}; BYOL heads: {cfg.model.byol_heads} "
        f"({'the SimSiam heads, as in the GSG reference code' if cfg.model.byol_heads == 'simsiam' else 'BYOL MLP heads'}). "
        f"{cfg.train.optimizer.upper()}, lr = {cfg.train.base_lr} × "
        f"batch/256, momentum {cfg.train.momentum}, weight decay {cfg.train.weight_decay}, cosine "
        f"schedule{', predictor at a fixed lr' if cfg.train.fixed_predictor_lr else ''}; BYOL "
        f"target EMA τ = {cfg.train.ema_momentum}{' (cosine to 1)' if cfg.train.ema_cosine else ''}."
        f" Main runs: {cfg.train.epochs} epochs at batch {cfg.train.batch_size}, seeds "
        f"{cfg.experiments.seeds}. Evaluation: weighted kNN (k = {cfg.eval.knn_k}, T = "
        f"{cfg.eval.knn_temperature}) and a linear probe ({cfg.eval.linear_epochs} epochs) on "
        "frozen backbone features of the un-augmented (noisy) train/test images; collapse "
        "monitors on the "
        f"projector outputs of the test set: normalised std (healthy ≈ 1/√d = {fmt(d ** -0.5)}) "
        f"and effective rank (at most d = {d}).\n\n"
        f"{len(results)} arms finished"
        + (f", **{len(missing)} missing** ({', '.join(missing[:6])}…)" if missing else "")
        + f"; training CPU time {fmt(sum(r['train_cpu_seconds'] for r in results.values()) / 60)} "
        f"min, wall {fmt(sum(r['train_seconds'] for r in results.values()) / 60)} min. "
        "GSG makes 4 views per image and step (2 for the baselines): *equal epochs* gives GSG "
        "twice the forward passes; *equal compute* trains the baselines for twice the epochs."))

    # ------------------------------------------------------------ claim 1
    for label, base_keys, gsg_keys in (("equal epochs", main, main),
                                       ("equal compute (baseline 2× epochs)", compute, main)):
        parts, text = [], []
        for fam in families:
            base = _group(results, base_keys, fam)
            gsg = _group(results, gsg_keys, f"{fam}_gsg")
            for metric in ("knn", "linear"):
                a, b = _final(gsg, metric), _final(base, metric)
                # arms of one seed share its data order: pair them when every seed is there
                same_seeds = [r["seed"] for r in gsg] == [r["seed"] for r in base]
                test = compare(a, b, paired=same_seeds, label=f"{LABELS[fam]} {metric}, GSG − base")
                floor = _floor(setting, metric)
                if floor is not None:
                    test = signal_gate(b, floor, label=f"{LABELS[fam]} {metric}, base − floor "
                                       f"{fmt(floor)}").guard(test)
                parts.append(test)
                text.append(f"{LABELS[fam]} {metric}: {_s(b)} → +GSG {_s(a)}")
        if not parts:
            continue
        rep.add_claim(Claim(
            f"GSG improves SimSiam and BYOL (kNN and linear accuracy) — {label}",
            "<br>".join(text),
            "for each family and metric, compare(GSG, baseline), paired by seed, decided only "
            "when the baseline beats the best floor (random encoder, raw pixels: 'no signal' "
            "otherwise); the claim holds only if all parts hold",
            all_of(*parts), ["figures/learning_curves.png"]))

    # ------------------------------------------------------------ claim 2
    sizes = sorted({results[k]["batch_size"] for k in sweep if k in results})
    sweep_fams = [f for f in ("simsiam", "byol") if f in cfg.experiments.sweep_methods
                  and f"{f}_gsg" in cfg.experiments.sweep_methods]
    if len(sizes) >= 2 and sweep_fams:
        small, large = sizes[0], sizes[-1]
        parts, text = [], []
        for fam in sweep_fams:
            def knn_at(method, b):
                return {r["seed"]: r["final"]["knn"] if not r["diverged"] else float("nan")
                        for r in _group(results, sweep, method, batch_size=b)}
            base_s, gsg_s = knn_at(fam, small), knn_at(f"{fam}_gsg", small)
            base_l, gsg_l = knn_at(fam, large), knn_at(f"{fam}_gsg", large)
            base_drop = [base_l[s] - base_s[s] for s in base_s if s in base_l]
            gsg_drop = [gsg_l[s] - gsg_s[s] for s in gsg_s if s in gsg_l]
            small_parts = [compare(list(gsg_s.values()), list(base_s.values()),
                                   label=f"{LABELS[fam]} kNN at batch {small}, GSG − base"),
                           compare(base_drop, gsg_drop, margin=0.0,
                                   label=f"{LABELS[fam]} drop, base − GSG")]
            floor = _floor(setting, "knn")
            if floor is not None:   # a baseline at the floor learned nothing to compare with
                gate = signal_gate(list(base_s.values()), floor,
                                   label=f"{LABELS[fam]} kNN at batch {small}, base − floor "
                                   f"{fmt(floor)}")
                small_parts = [gate.guard(p) for p in small_parts]
            parts += small_parts
            n_div = sum(results[k]["diverged"] for k in sweep if k in results
                        and results[k]["method"].startswith(fam))
            text.append(f"{LABELS[fam]} kNN at batch {small}: {_s(base_s.values())} → +GSG "
                        f"{_s(gsg_s.values())}; drop from batch {large} to {small}: "
                        f"{_s(base_drop)} vs +GSG {_s(gsg_drop)}; diverged runs: {n_div}")
        rep.add_claim(Claim(
            "GSG stabilises training and works with small batch sizes",
            "<br>".join(text),
            f"at the smallest batch ({small}) compare(GSG kNN, baseline kNN), and "
            f"compare(baseline drop, GSG drop) with drop = kNN(batch {large}) − kNN(batch {small}) "
            "per seed; holds only if both hold",
            all_of(*parts), ["figures/batch_sweep.png"]))

    # ------------------------------------------------------------ claim 3
    nopred = {m: _group(results, collapse, m) for m in methods}

    def rank_frac(runs):
        return [r / d for r in _final(runs, "z_erank")]

    def std_scaled(runs):  # normalised std × √d: ≈ 1 healthy, → 0 collapsed
        return [v * math.sqrt(d) for v in _final(runs, "z_std")]

    if collapse and nopred.get("simsiam"):
        runs = nopred["simsiam"]
        rep.add_claim(Claim(
            "Plain SimSiam without a predictor collapses",
            f"after {cfg.experiments.collapse_epochs} epochs: normalised std × √d "
            f"{_s(std_scaled(runs))}; effective rank / d {_s(rank_frac(runs))}; kNN "
            f"{_s(_final(runs, 'knn'))}",
            f"collapsed = normalised std × √d below {COLLAPSE_STD_FRACTION:g} and effective rank "
            f"below {COLLAPSE_RANK_FRACTION:g}·d; holds if both threshold rules hold",
            all_of(threshold(std_scaled(runs), COLLAPSE_STD_FRACTION, above=False,
                             label="std × √d below the collapse line"),
                   threshold(rank_frac(runs), COLLAPSE_RANK_FRACTION, above=False,
                             label="effective rank / d below the collapse line")),
            ["figures/collapse_curves.png"]))
        std_parts, std_text, rank_parts, rank_text = [], [], [], []
        for fam in families:
            base, gsg = nopred.get(fam, []), nopred.get(f"{fam}_gsg", [])
            if not base or not gsg:
                continue
            with_pred = _group(results, main, f"{fam}_gsg")
            std_parts += [compare(std_scaled(gsg), std_scaled(base)),
                          compare(_final(gsg, "knn"), _final(base, "knn")),
                          threshold(std_scaled(gsg), COLLAPSE_STD_FRACTION)]
            std_text += [f"{LABELS[fam]} std × √d: {_s(std_scaled(base))} → +GSG "
                         f"{_s(std_scaled(gsg))}",
                         f"{LABELS[fam]} kNN: {_s(_final(base, 'knn'))} → +GSG "
                         f"{_s(_final(gsg, 'knn'))}"]
            rank_parts += [compare(_final(gsg, "z_erank"), _final(base, "z_erank")),
                           threshold(rank_frac(gsg), COLLAPSE_RANK_FRACTION)]
            rank_text.append(f"{LABELS[fam]} effective rank: {_s(_final(base, 'z_erank'))} → "
                             f"+GSG {_s(_final(gsg, 'z_erank'))} (GSG with predictor: "
                             f"{_s(_final(with_pred, 'z_erank'))}; d = {d})")
        if std_parts:
            rep.add_claim(Claim(
                "With GSG, SimSiam and BYOL do not collapse without a predictor "
                "(output spread and accuracy)",
                "<br>".join(std_text),
                "no-predictor runs, for each family: compare(GSG, baseline) on normalised std "
                "and on kNN, and GSG's std × √d above the collapse line "
                f"{COLLAPSE_STD_FRACTION:g} (threshold); holds only if all parts hold",
                all_of(*std_parts), ["figures/collapse_curves.png"]))
            rep.add_claim(Claim(
                "... nor collapse dimensionally (a stricter reading, not in the paper)",
                "<br>".join(rank_text),
                "for each family: compare(GSG, baseline) on effective rank, and GSG's rank / d "
                f"above {COLLAPSE_RANK_FRACTION:g} (threshold); holds only if all parts hold",
                all_of(*rank_parts), ["figures/collapse_curves.png"]))

    # ------------------------------------------------------------ tables
    rows = []
    for keys, tag in ((main, "equal epochs"), (compute, "baseline 2× epochs")):
        for m in methods:
            runs = _group(results, keys, m)
            if not runs or (tag != "equal epochs" and m.endswith("gsg")):
                continue
            passes = np.mean([r["view_passes"] for r in runs])
            base_passes = np.mean([r["view_passes"] for r in _group(results, main, m.split("_")[0])]
                                  or [passes])
            rows.append((LABELS[m], tag, runs[0]["epochs"], fmt(passes / base_passes, 2),
                         _s(_final(runs, "knn")), _s(_final(runs, "linear")),
                         _s(_final(runs, "z_erank")), sum(r["diverged"] for r in runs)))
    rep.section("Results", "Like the paper's Tables 1–2: accuracy of frozen-backbone "
                "classifiers on the test split (mean ± std over seeds).")
    rep.table(("method", "setting", "epochs", "compute (× baseline)", "kNN acc", "linear acc",
               "eff. rank of z", "diverged"), rows)
    if rows:
        rep.figure(_learning_figure(results, main, compute, methods, fig_dir),
                   "Learning curves of the main runs: kNN accuracy and loss over epochs "
                   "(mean over seeds, band = min–max). Dashed: baselines at 2× epochs.")
    if collapse:
        rows = [(LABELS[m], _s(_final(nopred[m], "knn")), _s(_final(nopred[m], "linear")),
                 _s(_final(nopred[m], "z_std")), _s(_final(nopred[m], "z_erank")))
                for m in methods if nopred.get(m)]
        rep.section("Without a predictor (collapse)",
                    f"{cfg.experiments.collapse_epochs} epochs, h = identity. Healthy normalised "
                    f"std ≈ {fmt(d ** -0.5)}; full rank = {d}.")
        rep.table(("method", "kNN acc", "linear acc", "normalised std of z", "eff. rank of z"), rows)
        rep.figure(_collapse_figure(results, collapse, methods, fig_dir, d),
                   "No-predictor runs over training: kNN accuracy, normalised std of the "
                   "projections, effective rank of the projections (mean over seeds, band = "
                   "min–max; the std and rank panels start after epoch 1, whose eval-mode BN "
                   "statistics are not settled yet).")
    if sizes:
        rows = []
        for b in sizes:
            for m in cfg.experiments.sweep_methods:
                runs = _group(results, sweep, m, batch_size=b)
                if runs:
                    rows.append((b, LABELS[m], runs[0]["epochs"], _s(_final(runs, "knn")),
                                 _s(_final(runs, "linear")), sum(r["diverged"] for r in runs)))
        rep.section("Batch-size sweep", f"{cfg.experiments.sweep_epochs} epochs per run, "
                    "lr = base × batch/256 (the linear scaling rule).")
        rep.table(("batch", "method", "epochs", "kNN acc", "linear acc", "diverged"), rows)
        rep.figure(_sweep_figure(results, sweep, cfg.experiments.sweep_methods, sizes, fig_dir),
                   "kNN accuracy against batch size (mean ± std over seeds).")
    main_steps = [results[k]["steps"] for k in main if k in results]
    rep.section("Limits", _limits(cfg, int(np.mean(main_steps)) if main_steps else 0)
                + _floor_note(results, main, setting, families))
    return rep.write()


def _learning_figure(results, main, compute, methods, fig_dir) -> Path:
    fig, axes = new_figure(1, 2)
    for m in methods:
        runs = _group(results, main, m)
        _curves(axes[0, 0], runs, "knn", LABELS[m], COLORS[m])
        _curves(axes[0, 1], runs, "loss", LABELS[m], COLORS[m])
        long = _group(results, compute, m)
        if long:
            ep = [h["epoch"] for h in long[0]["history"]]
            axes[0, 0].plot(ep, np.mean([[h["knn"] for h in r["history"]] for r in long], 0),
                            "--", color=COLORS[m], label=f"{LABELS[m]} 2× epochs")
    axes[0, 0].set(xlabel="epoch", ylabel="kNN accuracy")
    axes[0, 1].set(xlabel="epoch", ylabel="training loss")
    axes[0, 0].legend(fontsize=7)
    return save_figure(fig, fig_dir / "learning_curves.png")


def _collapse_figure(results, collapse, methods, fig_dir, d) -> Path:
    fig, axes = new_figure(1, 3)
    for m in methods:
        runs = _group(results, collapse, m)
        _curves(axes[0, 0], runs, "knn", LABELS[m], COLORS[m])
        # after one epoch the BN running statistics (eval mode) are not settled yet
        _curves(axes[0, 1], runs, "z_std", LABELS[m], COLORS[m], first_epoch=2)
        _curves(axes[0, 2], runs, "z_erank", LABELS[m], COLORS[m], first_epoch=2)
    axes[0, 1].axhline(d ** -0.5, color="gray", ls=":", label="1/√d")
    axes[0, 2].axhline(COLLAPSE_RANK_FRACTION * d, color="gray", ls=":",
                       label=f"collapse line {COLLAPSE_RANK_FRACTION:g}·d")
    axes[0, 2].legend(fontsize=7)
    axes[0, 0].set(xlabel="epoch", ylabel="kNN accuracy", title="no predictor")
    axes[0, 1].set(xlabel="epoch", ylabel="normalised std of z")
    axes[0, 2].set(xlabel="epoch", ylabel="effective rank of z", ylim=(0, None))
    axes[0, 1].legend(fontsize=7)
    return save_figure(fig, fig_dir / "collapse_curves.png")


def _sweep_figure(results, sweep, methods, sizes, fig_dir) -> Path:
    fig, axes = new_figure(1, 1)
    ax = axes[0, 0]
    for m in methods:
        stats = [summarize(_final(_group(results, sweep, m, batch_size=b), "knn")) for b in sizes]
        ax.errorbar(sizes, [s.mean for s in stats], [s.std for s in stats], label=LABELS[m],
                    color=COLORS[m], marker="o", capsize=3)
    ax.set(xscale="log", xlabel="batch size", ylabel="kNN accuracy")
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.minorticks_off()
    ax.legend(fontsize=7)
    return save_figure(fig, fig_dir / "batch_sweep.png")


def _floor_note(results, main, setting, families) -> str:
    """Say, with the numbers, whether the baselines learned anything beyond a random encoder."""
    floor = setting.get("random_init_knn")
    if floor is None:
        return ""
    lines = []
    for fam in families:
        for metric, ref in (("knn", floor), ("linear", setting.get("random_init_linear"))):
            vals = _final(_group(results, main, fam), metric)
            if ref is None or not vals:
                continue
            gain = summarize(vals).mean - ref
            lines.append(f"{LABELS[fam]} {metric} {fmt(summarize(vals).mean)} vs a random "
                         f"encoder's {fmt(ref)} ({'+' if gain >= 0 else ''}{fmt(gain)})")
    if not lines:
        return ""
    text = ("\n\nHow much the baselines learned at all (main runs, mean over seeds): "
            + "; ".join(lines) + ". Where the gain over a random encoder is small, this scale "
            "has little signal to tell the methods apart.")
    raw = setting.get("raw_pixel_knn")
    best = max((summarize(_final(_group(results, main, m), "knn")).mean
                for m in LABELS if _group(results, main, m)), default=None)
    if raw is not None and best is not None and best < raw:
        text += (f" kNN on the raw (noisy) pixels, {fmt(raw)}, is above every learned "
                 f"representation's (best mean {fmt(best)}): on this data the encoders learn "
                 "linearly decodable features more than a better neighbourhood structure.")
    return text


def _limits(cfg: GSGConfig, main_steps: int) -> str:
    if cfg.scale == "paper":
        return ("Paper scale follows the paper's CIFAR-10 recipe (ResNet-18 with a CIFAR stem, "
                "200 epochs, batch 512); one run per seed and method. Compare with the paper's "
                "Table 1 and lightly's CIFAR-10 benchmarks (SimSiam kNN ≈ 0.76–0.82, BYOL ≈ 0.87 "
                "at 200 epochs).")
    return (
        "This scale is a small, fast stand-in for the paper's CIFAR-10/ImageNet experiments. "
        "It tests the *direction* of each claim on a 1.3k-image, 10-class data set with an MLP "
        f"encoder and {main_steps} optimiser steps per main run; absolute accuracies are not "
        "comparable with the paper's, the training is far shorter than the paper's 200–800 "
        f"epochs (differences that appear only late in training cannot show), and "
        f"{len(cfg.experiments.seeds)} seeds only resolve differences of a point or two. The data are made harder on purpose (heavy "
        "pixel noise) so that accuracy is not saturated, which changes the task: the learned "
        "invariance is to noise (denoising), not to the crops and colour changes of natural "
        "images. "
        "A negative or inconclusive verdict here is evidence about this setting only; the "
        "`paper` config runs the same code on CIFAR-10.")


__all__ = ["build_report", "Verdict"]
