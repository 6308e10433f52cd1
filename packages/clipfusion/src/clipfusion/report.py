"""report.md from the run directory alone (results/*.json, maps/*.npz, config, pipeline info).

Every number is read from the run's files; every verdict comes from a rule in this file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from clipfusion.metrics import METRICS
from clipfusion.prompts import (
    ANOMALOUS_STATES,
    EXTENDED_ANOMALOUS_STATES,
    NORMAL_STATES,
    TEMPLATES,
)
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

ARM_NAMES = {"clip": "PatchCLIP (CLIP branch alone)", "diff": "MapDiff (diffusion branch alone)",
             "fused": "CLIPFusion (fused)", "clip_L": "CLIP L map", "clip_V": "CLIP V map",
             "diff_L": "Diff L map", "diff_V": "Diff V map",
             "fused_V": "fused V maps only",
             "fused_transductive": "ablation: fused, transductive z-score (test-set moments)"}
METRIC_NAMES = {"image_auroc": "I-AUROC", "image_ap": "I-AP", "image_f1max": "I-F1max",
                "pixel_auroc": "P-AUROC", "pixel_ap": "P-AP", "pixel_f1max": "P-F1max",
                "pixel_aupro": "AUPRO"}


class Results:
    """The records of a run, with per-seed category means."""

    def __init__(self, run_path: Path):
        self.path = Path(run_path)
        self.by_category = {}
        for file in sorted((self.path / "results").glob("*.json")):
            data = json.loads(file.read_text())
            self.by_category[data["category"]] = data
        self.categories = list(self.by_category)
        self.records = [r for d in self.by_category.values() for r in d["records"]]
        self.shots = sorted({r["shots"] for r in self.records})

    def arms(self, k: int) -> list[str]:
        present = {r["arm"] for r in self.records if r["shots"] == k}
        return [a for a in ARM_NAMES if a in present]

    def seeds(self, k: int) -> list:
        return sorted({r["seed"] for r in self.records if r["shots"] == k},
                      key=lambda s: -1 if s is None else s)

    def values(self, arm: str, k: int, metric: str, category: str | None = None) -> list[float]:
        """Per seed: the metric (a category's, or the mean over categories)."""
        out = []
        for seed in self.seeds(k):
            vals = [float(r[metric]) for r in self.records
                    if r["shots"] == k and r["seed"] == seed and r["arm"] == arm
                    and (category is None or r["category"] == category)]
            if vals:
                out.append(float(np.mean(vals)))
        return out

    def mean(self, arm: str, k: int, metric: str) -> float:
        return summarize(self.values(arm, k, metric)).mean


# ---------------------------------------------------------------- claims


def _measured(res: Results, pairs: list[tuple[str, str, int]], metric: str) -> str:
    return "; ".join(f"{label} {summarize(res.values(arm, k, metric)).format()}"
                     for label, arm, k in pairs)


def _category_wins(res: Results, k: int, metric: str) -> str:
    """How many categories have the fused mean above both single branches' means."""
    def m(arm, cat):
        return summarize(res.values(arm, k, metric, cat)).mean

    wins = [c for c in res.categories if m("fused", c) > max(m("clip", c), m("diff", c))]
    return (f"fused above both branches in {len(wins)}/{len(res.categories)} categories"
            + (f" ({', '.join(wins)})" if wins else ""))


def build_claims(res: Results, random_weights: bool) -> list[Claim]:
    claims = []
    k_max = max(res.shots)
    have_zero = 0 in res.shots
    margin_note = ("compare(a, b) over reference draws: holds if the interval of "
                   "mean(a) − mean(b) is above 0, does not hold if below, else inconclusive")

    def best_single(k: int, metric: str) -> str:
        return max(("clip", "diff"), key=lambda a: res.mean(a, k, metric))

    if have_zero:
        metric = "pixel_auroc"
        best = best_single(0, metric)
        measured = _measured(res, [("fused", "fused", 0), (best, best, 0)], metric)
        if random_weights:
            verdict = Verdict.INCONCLUSIVE
            rule = ("with random weights the language maps carry no meaning, so the zero-shot "
                    "claim cannot be tested: inconclusive by rule (real weights: " + margin_note
                    + ")")
            measured += " (random weights)"
        else:
            verdict = signal_gate(res.values(best, 0, metric), 0.5,
                                  label=f"{best} − chance (0.5)").guard(
                compare(res.values("fused", 0, metric), res.values(best, 0, metric),
                        label=f"fused − {best}"))
            rule = (f"a = fused, b = best single branch ({best}), decided only when that "
                    "branch beats 0.5 AUROC; " + margin_note)
        claims.append(Claim("Zero-shot: the fused map segments better than the best single "
                            "branch (pixel AUROC, mean over categories)", measured, rule,
                            verdict, ["figures/curves.png"]))
    if k_max > 0:
        for metric, what in (("pixel_auroc", "segments"), ("image_auroc", "classifies")):
            best = best_single(k_max, metric)
            claims.append(Claim(
                f"{k_max}-shot: the fused method {what} better than the best single branch "
                f"({METRIC_NAMES[metric]}, mean over categories)",
                _measured(res, [("fused", "fused", k_max), (best, best, k_max)], metric)
                + "; " + _category_wins(res, k_max, metric)
                + (" (random weights: the L maps inside each branch are untrained)"
                   if random_weights else ""),
                f"a = fused, b = best single branch ({best}), paired by reference draw, "
                "decided only when that branch beats 0.5 AUROC (else 'no signal'); "
                + margin_note,
                signal_gate(res.values(best, k_max, metric), 0.5,
                            label=f"{best} − chance (0.5)").guard(
                    compare(res.values("fused", k_max, metric), res.values(best, k_max, metric),
                            paired=len(res.values("fused", k_max, metric))
                            == len(res.values(best, k_max, metric)),
                            label=f"fused − {best}")),
                ["figures/curves.png", "figures/shots.png"]))
        if have_zero:
            parts = [compare(res.values("fused", k_max, m), res.values("fused", 0, m))
                     for m in ("pixel_auroc", "image_auroc")]
            claims.append(Claim(
                f"Few-shot ({k_max} references) improves on zero-shot (fused; P-AUROC and "
                "I-AUROC)",
                _measured(res, [(f"P-AUROC {k_max}-shot", "fused", k_max),
                                ("0-shot", "fused", 0)], "pixel_auroc") + " | "
                + _measured(res, [(f"I-AUROC {k_max}-shot", "fused", k_max),
                                  ("0-shot", "fused", 0)], "image_auroc")
                + (" (random weights: zero-shot has only untrained L maps)"
                   if random_weights else ""),
                "all_of(compare(k-shot, 0-shot) for P-AUROC and I-AUROC); " + margin_note,
                all_of(*parts), ["figures/shots.png"]))
        best_v = max(("clip_V", "diff_V"), key=lambda a: res.mean(a, k_max, "pixel_auroc"))
        claims.append(Claim(
            f"Fusing the two branches' visual maps beats the better one alone ({k_max}-shot, "
            "P-AUROC) — the fusion principle on the maps that carry signal at this scale",
            _measured(res, [("fused_V", "fused_V", k_max), (best_v, best_v, k_max)],
                      "pixel_auroc"),
            f"a = fused_V, b = {best_v}; " + margin_note,
            compare(res.values("fused_V", k_max, "pixel_auroc"),
                    res.values(best_v, k_max, "pixel_auroc")), ["figures/shots.png"]))
        parts = [threshold(res.values(a, k_max, "pixel_auroc"), 0.5) for a in ("clip_V", "diff_V")]
        claims.append(Claim(
            f"Scale check (not a paper claim): the {k_max}-shot memory-bank maps of both "
            "branches localise defects (P-AUROC > 0.5)",
            _measured(res, [("CLIP V", "clip_V", k_max), ("Diff V", "diff_V", k_max)],
                      "pixel_auroc"),
            "all_of(threshold(P-AUROC, 0.5) for each V map): the interval of the mean over "
            "seeds above 0.5", all_of(*parts), ["figures/shots.png"]))
    return claims


# ---------------------------------------------------------------- figures


def figure_shots(res: Results, path: Path) -> Path:
    fig, axes = new_figure(1, 2, size=(5.0, 3.6))
    for ax, metric in zip(axes[0], ("pixel_auroc", "image_auroc"), strict=True):
        for arm in ("clip", "diff", "fused", "clip_V", "diff_V", "fused_V"):
            ks = [k for k in res.shots if arm in res.arms(k)]
            if not ks:
                continue
            per_k = [res.values(arm, k, metric) for k in ks]
            n_seeds = max(len(v) for v in per_k)
            # zero-shot has one value: it stands for every seed's curve
            runs = [[v[min(s, len(v) - 1)] for v in per_k] for s in range(n_seeds)]
            line = plot_band(ax, ks, runs, label=arm)
            if arm.endswith("_V"):
                line.set_linestyle("--")
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("shots (k reference images)")
        ax.set_ylabel(METRIC_NAMES[metric] + " (mean over categories)")
        ax.set_xticks(res.shots)
    axes[0][0].legend(fontsize=7)
    return save_figure(fig, path)


def figure_curves(res: Results, path: Path) -> Path:
    """Per category (rows): image ROC, pixel ROC and the PRO curve (to FPR 0.3, whose
    normalised area is AUPRO), zero-shot dotted, largest k solid."""
    cats = res.categories
    fig, axes = new_figure(len(cats), 3, size=(3.2, 2.9))
    panels = (("image", "image ROC", "TPR"), ("pixel", "pixel ROC", "TPR"),
              ("pro", "PRO curve", "per-region overlap"))
    for i, cat in enumerate(cats):
        curves = res.by_category[cat]["curves"]
        for j, (level, title, ylabel) in enumerate(panels):
            ax = axes[i][j]
            for k, arms in sorted(curves.items(), key=lambda kv: int(kv[0])):
                for arm, color in (("clip", "C0"), ("diff", "C1"), ("fused", "C2")):
                    c = arms[arm].get(level)
                    if c and c["fpr"]:
                        ax.plot(c["fpr"], c["tpr" if level != "pro" else "pro"], color=color,
                                ls="-" if int(k) > 0 else ":", label=f"{arm} k={k}")
            if level != "pro":
                ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
            ax.set_title(f"{cat}: {title}", fontsize=9)
            ax.set_xlabel("FPR (normal pixels)" if level == "pro" else "FPR")
            ax.set_ylabel(ylabel)
    axes[0][0].legend(fontsize=6)
    return save_figure(fig, path)


MAP_COLUMNS = (("clip_L", "CLIP L"), ("clip_V", "CLIP V"), ("diff_L", "Diff L"),
               ("diff_V", "Diff V"), ("clip", "CLIP branch"), ("diff", "Diff branch"),
               ("fused", "fused"))


def figure_maps(run_path: Path, category: str, path: Path) -> Path | None:
    """One row per example (a defect type, then a good image): the image with its
    ground-truth contour, then each map overlaid on the image (jet, alpha 0.5) with the
    contour; one colour scale per column (so good and defective rows compare) and its bar."""
    file = run_path / "maps" / f"{category}.npz"
    if not file.is_file():
        return None
    data = np.load(file)
    ks = sorted({int(name.split("_")[0][1:]) for name in data.files if name.startswith("k")})
    k_max = max(ks)
    cols = [(f"{title} k={k_max}", f"k{k_max}_{arm}") for arm, title in MAP_COLUMNS
            if f"k{k_max}_{arm}" in data.files]
    if 0 in ks and k_max > 0:
        cols.append(("fused k=0", "k0_fused"))
    n = data["images"].shape[0]
    fig, axes = new_figure(n, 1 + len(cols), size=(1.75, 1.85))
    for i in range(n):
        image = np.transpose(data["images"][i], (1, 2, 0))
        mask = data["masks"][i]
        for j in range(1 + len(cols)):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.imshow(image)
            if j == 0:
                ax.set_ylabel(str(data["defects"][i]), fontsize=8)
                if i == 0:
                    ax.set_title("image + ground truth", fontsize=7)
            else:
                title, key = cols[j - 1]
                col = data[key].astype(np.float32)
                im = ax.imshow(col[i], cmap="jet", alpha=0.5, vmin=float(col.min()),
                               vmax=float(col.max()))
                if i == 0:
                    ax.set_title(title, fontsize=7)
                if i == n - 1:
                    bar = fig.colorbar(im, ax=axes[:, j].tolist(), orientation="horizontal",
                                       fraction=0.04, pad=0.02)
                    bar.ax.tick_params(labelsize=5)
            if mask.any():
                ax.contour(mask, levels=[0.5], colors="white", linewidths=0.8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


# ---------------------------------------------------------------- report


def _summary_row(res: Results, arm: str, k: int, category: str | None = None) -> list[str]:
    return [summarize(res.values(arm, k, m, category)).format() if k > 0
            else fmt(summarize(res.values(arm, k, m, category)).mean) for m in METRICS]


def write_report(run_path: str | Path) -> Path:
    run_path = Path(run_path)
    res = Results(run_path)
    cfg = yaml.safe_load((run_path / "config.yaml").read_text())
    info = json.loads((run_path / "pipeline.json").read_text())
    weights = info["weights"]
    random_weights = any("random" in w.lower() for w in weights.values())
    figures = run_path / "figures"
    rep = Report(f"CLIPFusion (arXiv 2506.11772) — {cfg['scale']} scale", run_path / "report.md")
    for claim in build_claims(res, random_weights):
        rep.add_claim(claim)

    d = cfg["data"]
    counts = ", ".join(f"{c}: {v['n_test']} test ({v['n_anomalous']} anomalous), "
                       f"{v['n_train']} train" for c, v in res.by_category.items())
    data_text = (f"synthetic MVTec-layout textures from scikit-image (reprokit.data.anomaly."
                 f"make_synthetic_mvtec, seed {d['seed']}; defects: Perlin blends, scratches, "
                 f"holes)" if d["kind"] == "synthetic" else f"{d['kind']} at {d['root']}")
    weight_lines = "\n".join(f"- **{b} weights:** {w}" for b, w in weights.items())
    warning = ("\n\n**These are RANDOMLY INITIALISED models (no pretrained weights are available "
               "offline). Numbers here are not comparable with the paper's**: the language "
               "maps (CLIP prompts, diffusion cross-attention) cannot carry meaning, and only "
               "the visual memory-bank maps can detect anything." if random_weights else "")
    f = cfg["fusion"]
    c = cfg["clip"]
    sizes = info.get("input_sizes", {})
    n_anomalous = len(EXTENDED_ANOMALOUS_STATES if c["prompt_states"] == "extended"
                      else ANOMALOUS_STATES)
    size_text = ", ".join(f"{b} {v[0]}×{v[1]}" for b, v in sizes.items())
    norm_text = {
        "reference": "per image (non-transductive): each map type and the global score "
                     "z-scored with the mean/std of normal images only: the k references' L "
                     "maps and global score, their V maps leave-one-out (each against the "
                     "other k − 1); what k cannot give (zero-shot; V and the global score at "
                     f"k = 1) from {f['calibration_images']} calibration images (train/good, "
                     "never a reference nor a test image)",
        "calibration": f"per image: z-scores from {f['calibration_images']} calibration "
                       "images (train/good, never a reference nor a test image)",
        "test_zscore": "TRANSDUCTIVE: z-scores over the category's test pixels (an image's "
                       "score depends on the other test images)",
        "none": "none (raw maps summed)"}[f["normalization"]]
    rep.section("Setting", f"""
- **scale:** {cfg['scale']}; **data:** {data_text}; {counts}; masks and maps at
  {d['image_size']}×{d['image_size']} px (metrics computed at this size); each branch reads
  the image file at its own input size ({size_text})
{weight_lines}
- **shots:** {res.shots}; **seeds** (draws of the k reference images from train/good):
  {cfg['seeds']}; zero-shot is deterministic (one evaluation)
- **CLIP branch (WinCLIP choices):** softmax over {{normal, anomalous}} of cos / T with
  T = {c['temperature']} (anomalib's WinCLIP: 0.07); prompt states "{c['prompt_states']}"
  ({len(NORMAL_STATES)} normal and {n_anomalous} anomalous states × {len(TEMPLATES)} templates;
  WinCLIP: 7 and 4 states, 21 templates); L map from blocks
  {c['language_layers']} (projected into the joint space); memory bank from blocks
  {c['bank_layers']}, {c['bank_tokens']} tokens (anomalib's WinCLIP: the last block's output
  tokens after ln_post, before the projection); the WinCLIP window/multi-scale maps are not
  part of PatchCLIP (they are `clipfusion bench`'s cost reference)
- **diffusion:** timestep {cfg['diffusion']['timestep']}/1000, prompt
  "{cfg['diffusion']['prompt']}", attention words {cfg['diffusion']['attention_words']},
  feature up-blocks {cfg['diffusion']['feature_blocks']}
- **fusion:** α = {f['alpha']}; normalisation: {norm_text}; Gaussian σ =
  {f['smoothing_sigma']} px; image score = mean of top {f['topk_fraction']:.0%} pixels
  + {f['global_weight']} × standardised CLIP global score (arms with the CLIP L map)
- **ablation:** the `fused_transductive` rows z-score every map with the test set's own
  moments (the earlier default); they are not a deployable detector
""" + warning)

    rep.section("Results: mean over categories")
    rep.text("Zero-shot rows are single deterministic values; k-shot rows are mean ± std over "
             "reference-draw seeds (n) of the category mean.")
    for k in res.shots:
        rows = [[ARM_NAMES[a], *_summary_row(res, a, k)] for a in res.arms(k)]
        rep.table(["arm", *[METRIC_NAMES[m] for m in METRICS]], rows, caption=f"**{k}-shot**")
    rep.figure(figure_shots(res, figures / "shots.png"),
               "Mean P-AUROC and I-AUROC vs shots (band: min–max over seeds; dashed: single "
               "visual maps and their fusion).")

    rep.section("Results per category (fused vs each branch alone)")
    headers = ["category", "shots", *[f"{a} {METRIC_NAMES[m]}" for m in
                                      ("pixel_auroc", "pixel_aupro", "image_auroc")
                                      for a in ("clip", "diff", "fused")]]
    rows = []
    for cat in res.categories:
        for k in res.shots:
            rows.append([cat, k, *[fmt(summarize(res.values(a, k, m, cat)).mean)
                                   for m in ("pixel_auroc", "pixel_aupro", "image_auroc")
                                   for a in ("clip", "diff", "fused")]])
    rep.table(headers, rows, caption="Means over seeds for k > 0.")
    rep.figure(figure_curves(res, figures / "curves.png"),
               f"Per category: image ROC, pixel ROC and PRO curve (to FPR 0.3; its area / 0.3 "
               f"is AUPRO), seed {cfg['seeds'][0]}; dotted: zero-shot, solid: "
               f"{max(res.shots)}-shot.")
    for cat in res.categories:
        p = figure_maps(run_path, cat, figures / f"maps_{cat}.png")
        if p:
            rep.figure(p, f"{cat}: one row per defect type (and a good image); each map "
                          "(standardised with normal-image statistics, smoothed) overlaid on the "
                          "image, white: ground-truth contour; the L and V maps of each branch, "
                          "each branch, the fused map at the largest k, and fused zero-shot.")

    timing = [r["timing"] for r in res.by_category.values()]
    n_img = sum(t["images"] for t in timing)
    if n_img:
        rep.section("Cost in this run", (
            f"{n_img} images went through both branches (test + the reference and calibration "
            f"images used): PatchCLIP "
            f"{fmt(1000 * sum(t['clip_seconds'] for t in timing) / n_img)} ms/image, MapDiff "
            f"{fmt(1000 * sum(t['diff_seconds'] for t in timing) / n_img)} ms/image "
            f"(batch {cfg['batch_size']}); memory-bank search and maps "
            f"{fmt(sum(t.get('search_seconds', 0.0) for t in timing))} s, scoring "
            f"{fmt(sum(t.get('score_seconds', 0.0) for t in timing))} s in all (wall-clock on a "
            "shared machine; the metrics' time is not included). `clipfusion bench` gives the "
            "per-stage latencies and the WinCLIP-style reference."))

    rep.section("Metric definitions", """
I-AUROC/I-AP/I-F1max: from image scores; P-AUROC/P-AP/P-F1max: over all test pixels
(torchmetrics; F1max = max over thresholds of 2PR/(P+R)). AUPRO as in anomalib and the MVTec
evaluation: per-region overlap averaged over the connected components of the ground truth,
against the FPR over all normal pixels, integrated up to FPR 0.3 and divided by 0.3 (1 =
perfect; some papers report the un-normalised area or integrate to FPR 1 — not comparable).
""")
    limits = [
        "Random-weight models: nothing about the paper's pretrained CLIP/Stable Diffusion "
        "behaviour can be concluded; the zero-shot claim is inconclusive by rule."
        if random_weights else
        "Weights as listed above; check that they match the paper's before comparing numbers.",
        "The synthetic defects are colour/intensity changes on grey textures; a memory bank of "
        "even random features separates them easily, so few-shot numbers here say more about "
        "the defects than about the method." if d["kind"] == "synthetic" else "",
        f"Few categories ({len(res.categories)}), few images and {len(cfg['seeds'])} "
        "reference draws: the intervals in the claims table are wide.",
        "With random weights each branch's L map is untrained noise added to its V map, so the "
        "k-shot fused-vs-branch rows measure whether the visual signal survives that noise, "
        "not the paper's effect; the fused_V row isolates the fusion of the two visual maps."
        if random_weights else "",
        "The ± in the tables and the intervals in the rules cover the draws of the reference images "
        "only; the test set is fixed, so its sampling error (a few dozen images per category) "
        "is not included.",
        "Per-image scoring takes its z-score statistics from the k reference images (the "
        "global score's from only k of them, or from the calibration images at k ≤ 1): with "
        "k ≤ 4 they are noisy, and part of the spread over reference draws comes from them."
        if f["normalization"] == "reference" else "",
        "α, the timestep, the layers and the prompts are documented defaults, not tuned and "
        "not necessarily the paper's values.",
    ]
    rep.section("Limits", "\n".join(f"- {x}" for x in limits if x))
    return rep.write()
