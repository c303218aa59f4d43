"""Evaluate `infer` outputs against annotations: image level, lesion level, FROC, each with patient-level CIs.

The operating threshold comes from the results (the one their models shipped, chosen out of fold or on a
validation split: each result's `threshold_source` says which) or from the command line; it is never tuned on
the set being evaluated, which would flatter every threshold-dependent figure.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mammo import metrics  # noqa: E402
from mammo.calibration import calibration_report  # noqa: E402
from mammo.atomic import atomic_path, atomic_write_text  # noqa: E402
from mammo.errors import MammoError  # noqa: E402
from mammo.metrics import format_ci  # noqa: E402
from mammo.froc import FP_RATES, FrocCurve, froc_report, hit_matrix  # noqa: E402
from pipeline.render import overlay_panel  # noqa: E402
from pipeline.results import ImageResult, read_results  # noqa: E402

BASELINE_THRESHOLD = "__threshold__"  # key of a baseline's own operating point in its scores


@dataclass
class Matched:
    """Predictions paired with the truth of the same image."""

    results: list[ImageResult]
    records: list  # ImageRecord, same order
    unmatched_predictions: list[str]
    unpredicted_images: list[str]


def match(results: list[ImageResult], records) -> Matched:
    """Pair by resolved source path, falling back to the file stem (e.g. mdb001 for .../mdb001.pgm) only when
    that stem names one annotated image: CBIS-DDSM calls every image 000000.dcm, and a stem shared by several
    images must not pair a prediction with the wrong one."""
    by_path = {str(Path(r.path).resolve()): r for r in records}
    by_stem: dict = {}
    for r in records:
        by_stem.setdefault(Path(r.path).stem, []).append(r)
    pairs, unmatched, used = [], [], set()
    for res in results:
        rec = by_path.get(str(Path(res.source).resolve()))
        if rec is None and len(by_stem.get(Path(res.source).stem, ())) == 1:
            rec = by_stem[Path(res.source).stem][0]
        if rec is None or rec.image_id in used:
            unmatched.append(res.image_id)
        else:
            pairs.append((res, rec))
            used.add(rec.image_id)
    unpredicted = [r.image_id for r in records if r.image_id not in used]
    return Matched([p[0] for p in pairs], [p[1] for p in pairs], unmatched, unpredicted)


def lesion_level(m: Matched, hit_iou: float):
    """One row per true boxed lesion (score: the highest malignancy among predictions that hit it, 0 when the
    detector missed it) plus one per prediction that hits no lesion (label 0). Returns y, p, patient groups and
    each row's image threshold."""
    y, p, groups, thresholds = [], [], [], []
    for res, rec in zip(m.results, m.records):
        true = np.array([l.box for l in rec.boxed_lesions], dtype=np.float64).reshape(-1, 4)
        pred = np.array([l.box for l in res.lesions], dtype=np.float64).reshape(-1, 4)
        mal = np.array([l.malignancy for l in res.lesions], dtype=np.float64)
        hits = hit_matrix(pred, true, hit_iou)
        for j, lesion in enumerate(rec.boxed_lesions):
            y.append(int(lesion.malignant))
            p.append(float(mal[hits[:, j]].max()) if hits[:, j].any() else 0.0)
            groups.append(rec.patient_id)
            thresholds.append(res.threshold)
        for i in np.flatnonzero(~hits.any(axis=1)):
            y.append(0)
            p.append(float(mal[i]))
            groups.append(rec.patient_id)
            thresholds.append(res.threshold)
    return np.array(y, int), np.array(p, float), np.array(groups), np.array(thresholds, float)


def metric_table(y, p, groups, threshold, beta: float, n_boot: int, seed: int) -> dict:
    """Each metric with its patient-bootstrap 95 % CI (`mammo.metrics.bootstrap_table`: `threshold` one number,
    or one per row), with the counts and the threshold."""
    return {**metrics.bootstrap_table(y, p, groups, threshold, beta, n_boot, seed), "n": int(len(y)),
            "n_positive": int(np.sum(y)), "threshold": "per image" if np.ndim(threshold) else float(threshold)}


# --- curves with bootstrap bands ------------------------------------------------------------------------
def _bands(y, p, groups, curve, grid, n_boot, seed):
    """2.5/97.5 percentiles of the curve's value on `grid` over patient-bootstrap resamples."""
    ids, inverse = np.unique(groups, return_inverse=True)
    rows_of = [np.flatnonzero(inverse == k) for k in range(len(ids))]
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_boot):
        rows = np.concatenate([rows_of[k] for k in rng.integers(0, len(ids), len(ids))])
        yy = y[rows]
        if yy.min() == yy.max():
            continue
        x, v = curve(yy, p[rows])
        samples.append(np.interp(grid, x, v))  # x (FPR, recall) never decreases along the curve
    if not samples:
        return None
    return np.percentile(samples, [2.5, 97.5], axis=0)


def plot_curves(sets: dict, out_dir: Path, n_boot: int, seed: int) -> list[str]:
    """ROC and PR curves for each named (y, p, groups) set, with 95 % bootstrap bands."""
    written = []
    grid = np.linspace(0, 1, 101)
    for kind, curve, xlabel, ylabel in (("roc", metrics.roc_points, "1 - specificity", "sensitivity"),
                                        ("pr", metrics.pr_points, "recall (sensitivity)", "precision")):
        fig, ax = plt.subplots(figsize=(5, 5))
        for name, (y, p, groups) in sets.items():
            if len(y) == 0 or y.min() == y.max():
                continue
            x, v = curve(y, p)
            label = f"{name} ({'auROC' if kind == 'roc' else 'auPR'} " \
                    f"{(metrics.auroc if kind == 'roc' else metrics.aupr)(y, p):.3f})"
            # ROC: straight segments (a tie is one diagonal step); PR: steps, as average precision sums them
            line, = ax.plot(x, v, label=label, drawstyle="default" if kind == "roc" else "steps-pre")
            band = _bands(y, p, groups, curve, grid, min(n_boot, 300), seed)
            if band is not None:
                ax.fill_between(grid, band[0], band[1], color=line.get_color(), alpha=0.15)
        if kind == "roc":
            ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02),
               title=f"{kind.upper()} with 95 % patient-bootstrap band")
        ax.legend(loc="lower right" if kind == "roc" else "lower left", fontsize=8)
        path = out_dir / f"{kind}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(path.name)
    return written


def _threshold_text(threshold) -> str:
    return f"{float(threshold):.3f}" if np.ndim(threshold) == 0 else "each image's own threshold"


def plot_confusion_and_distribution(y, p, threshold: float, out_dir: Path, title: str) -> list[str]:
    c = metrics.confusion(y, p, threshold)  # elementwise when each image has its own threshold
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    grid = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
    axes[0].imshow(grid, cmap="Blues")
    for (i, j), v in np.ndenumerate(grid):
        axes[0].text(j, i, str(v), ha="center", va="center", fontsize=14)
    axes[0].set(xticks=[0, 1], yticks=[0, 1], xticklabels=["not malignant", "malignant"],
                yticklabels=["not malignant", "malignant"], xlabel="predicted", ylabel="true",
                title=f"{title}: confusion at {_threshold_text(threshold)}")
    bins = np.linspace(0, 1, 21)
    axes[1].hist(p[y == 0], bins=bins, alpha=0.6, label=f"not malignant (n={int((y == 0).sum())})")
    axes[1].hist(p[y == 1], bins=bins, alpha=0.6, label=f"malignant (n={int((y == 1).sum())})")
    for i, t in enumerate(np.unique(threshold)):
        axes[1].axvline(t, color="k", ls="--", label="threshold" if i == 0 else None)
    axes[1].set(xlabel="predicted malignancy", ylabel="images", title="score distribution by class")
    axes[1].legend(fontsize=8)
    path = out_dir / "confusion_distribution.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [path.name]


def plot_reliability(report: dict, y, p, out_dir: Path) -> str:
    """Observed malignancy rate against the mean probability per bin (Wilson 95 % intervals), the diagonal a
    calibrated model lies on, and how many images each bin holds."""
    table = report["reliability"]
    n, mean_p, rate = (np.array(table[k], float) for k in ("n", "mean_probability", "observed_rate"))
    z = 1.96  # Wilson score interval: stays inside [0, 1] for small bins, unlike the normal approximation
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="0.6", ls="--", label="calibrated")
    # at a rate of 0 or 1 the interval's end equals the rate up to rounding, which can make an error bar -1e-17
    yerr = np.maximum([rate - (centre - half), centre + half - rate], 0.0)
    top.errorbar(mean_p, rate, yerr=yerr, fmt="o-", capsize=3,
                 label="observed (95 % Wilson)")
    top.set(ylabel="observed malignant rate", xlim=(0, 1), ylim=(0, 1),
            title=f"reliability: ECE {format_ci(report['ece'])}\nBrier {format_ci(report['brier'])}, base rate "
                  f"{format_ci(report['brier_base_rate'])}")
    top.title.set_fontsize(9)
    top.legend(fontsize=8, loc="upper left")
    bottom.hist([p[y == 0], p[y == 1]], bins=np.linspace(0, 1, 21), stacked=True,
                label=["not malignant", "malignant"])
    bottom.set(xlabel="P(malignant)", ylabel="images")
    bottom.legend(fontsize=7)
    path = out_dir / "reliability.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path.name


def gradcam_grid(m: Matched, predictions_dir: Path, threshold: float, out_dir: Path, per_group: int = 4) -> str:
    """Overlay panels of a few true/false positives/negatives (most confident first), one row per group."""
    groups = {"true positive": [], "false positive": [], "false negative": [], "true negative": []}
    for i, (res, rec) in enumerate(zip(m.results, m.records)):
        t = threshold if np.ndim(threshold) == 0 else threshold[i]
        call, truth = res.score >= t, rec.label == 1
        key = {(True, True): "true positive", (True, False): "false positive",
               (False, True): "false negative", (False, False): "true negative"}[(call, truth)]
        groups[key].append((abs(res.score - t), i))
    fig, axes = plt.subplots(4, per_group, figsize=(4 * per_group, 13), squeeze=False)
    for row, (name, items) in enumerate(groups.items()):
        items = [m.results[i] for _, i in sorted(items, key=lambda x: -x[0])[:per_group]]
        for col in range(per_group):
            ax = axes[row, col]
            ax.axis("off")
            if col == 0 and not items:  # say so, rather than leave a blank row that reads like a rendering bug
                ax.text(0.0, 0.5, f"no {name} at {_threshold_text(threshold)}", fontsize=11,
                        transform=ax.transAxes)
            if col < len(items):
                img = cv2.imread(str(predictions_dir / items[col].overlay)) if items[col].overlay else None
                if img is not None:
                    ax.imshow(cv2.cvtColor(overlay_panel(img), cv2.COLOR_BGR2RGB))
                ax.set_title(f"{name}\n{items[col].image_id}: {items[col].score:.2f}", fontsize=9)
    path = out_dir / "gradcam_examples.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path.name


def metrics_table(report: dict) -> list[str]:
    """Markdown rows: one per level and system, each metric with its CI."""
    names = ["auroc", "aupr", f"f{report['beta']:g}", "sensitivity", "specificity"]
    lines = ["| level | system | n (pos) | " + " | ".join(names) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in names) + " |"]
    for level in ("image", "lesion"):
        for system, table in report[level].items():
            lines.append(f"| {level} | {system} | {table['n']} ({table['n_positive']}) | "
                         + " | ".join(format_ci(table[n]) for n in names) + " |")
    return lines


def kind_table(by_kind: dict) -> list[str]:
    """Markdown rows: per lesion kind, lesions hit by any kept box and sensitivity at the overall FROC points."""
    if not by_kind:
        return []
    lines = ["Per lesion kind (sensitivity at the operating point of the whole FROC with that many FP per image):",
             "", "| kind | lesions | hit by a kept box | " + " | ".join(f"{r:g} FP" for r in FP_RATES) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in FP_RATES) + " |"]
    for kind, k in by_kind.items():
        lines.append(f"| {kind} | {k['n']} | {k['hit_any_box']} | "
                     + " | ".join(f"{k['sensitivity'][str(float(r))]:.2f}" for r in FP_RATES) + " |")
    return lines


def markdown_report(report: dict) -> str:
    lines = ["# Evaluation", "", f"Predictions: {report['n_images']} images matched to annotations "
             f"({len(report['unmatched_predictions'])} predictions without annotation, "
             f"{len(report['unpredicted_images'])} annotated images without prediction). "
             f"Threshold {_threshold_text(report['threshold']) if report['threshold'] != 'per image' else 'per image'}"
             f" ({report['threshold_source']}). 95 % CIs from "
             f"{report['bootstrap']} patient-level bootstrap resamples.", "", *metrics_table(report)]
    froc = report.get("froc")
    if froc:
        lines += ["", "## FROC (detection)", "", "| FP / image | " + " | ".join(f"{r:g}" for r in FP_RATES) + " |",
                  "| --- | " + " | ".join("---" for _ in FP_RATES) + " |",
                  "| sensitivity | " + " | ".join(f"{froc['sensitivity'][str(float(r))]:.3f}" for r in FP_RATES)
                  + " |", "", f"{froc['n_lesions']} lesions with boxes on {froc['n_images']} images.", "",
                  *kind_table(froc.get("by_kind", {}))]
    cal = report.get("calibration")
    if cal:
        lines += ["", "## Calibration of the image probability", "",
                  "| ECE (10 bins) | Brier | Brier of the base rate | auROC | auPR |", "| --- | --- | --- | --- | --- |",
                  "| " + " | ".join(format_ci(cal[k]) for k in ("ece", "brier", "brier_base_rate", "auroc", "aupr"))
                  + " |"]
    lines += ["", "Figures: " + ", ".join(f"[{f}]({f})" for f in report["figures"])]
    return "\n".join(lines) + "\n"


def truth_boxes(records) -> tuple[list[np.ndarray], list[list[str]]]:
    """Each record's boxed lesions as an (n, 4) array, and their kinds: the truths and kinds of mammo.froc."""
    return ([np.array([l.box for l in r.boxed_lesions], float).reshape(-1, 4) for r in records],
            [[l.kind for l in r.boxed_lesions] for r in records])


def predicted_boxes(lesions) -> tuple[np.ndarray, np.ndarray]:
    """One image's predicted lesions (`box`, `detector_score`) as mammo.froc's (boxes, scores)."""
    return (np.array([l.box for l in lesions], float).reshape(-1, 4),
            np.array([l.detector_score for l in lesions], float))


def froc_of(records, predicted, hit_iou: float) -> tuple[FrocCurve, dict]:
    """FROC of predicted boxes (one list of lesions per record: `box`, `detector_score`) against each record's
    boxed lesions, with its summary and sensitivity per lesion kind (`mammo.froc.froc_report`)."""
    truths, kinds = truth_boxes(records)
    return froc_report([predicted_boxes(lesions) for lesions in predicted], truths, kinds, hit_iou)


def results_threshold_source(results) -> str:
    """How the results' own thresholds were chosen, as they record it (infer writes `threshold_source`)."""
    sources = sorted({r.threshold_source for r in results if r.threshold_source})
    if not sources:
        return "shipped with the models (the results do not record how it was chosen)"
    if len(sources) == 1 and all(r.threshold_source for r in results):
        return sources[0]
    return "the results' own, chosen in more than one way: " + "; ".join(sources)


def evaluate(predictions_dir, records, out_dir, *, threshold: float | None = None, beta: float = 2.0,
             hit_iou: float = 0.1, n_boot: int = 1000, seed: int = 0, baselines: dict | None = None,
             threshold_source: str | None = None) -> dict:
    """`records`: the annotated images to evaluate on (e.g. the validation split). `baselines`: optional
    {name: {record image_id: score, BASELINE_THRESHOLD: its threshold, or {image_id: threshold}}} of other systems scored on the same
    images (image level only).
    Without `threshold`, each image is judged at its own JSON's threshold (one shipped threshold for `infer`
    outputs; each fold's own for cross-validation's OOF predictions)."""
    predictions_dir, out_dir = Path(predictions_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = read_results(predictions_dir)
    if not results:
        raise MammoError(f"{predictions_dir}: no prediction JSON files (run `python -m pipeline infer` first)")
    m = match(results, records)
    if not m.results:
        raise MammoError(f"{predictions_dir}: none of the {len(results)} predictions matches an annotated image")
    source = threshold_source or ("given" if threshold is not None else results_threshold_source(m.results))
    own = np.array([r.threshold for r in m.results], float)
    if threshold is not None:
        threshold = float(threshold)
    elif np.all(own == own[0]):
        threshold = float(own[0])
    else:  # per image: the calls are fixed by each image's own threshold
        threshold = own

    y_img = np.array([r.label for r in m.records], int)
    p_img = np.array([r.score for r in m.results], float)
    g_img = np.array([r.patient_id for r in m.records])
    y_les, p_les, g_les, t_les = lesion_level(m, hit_iou)
    report = {"n_images": len(m.results), "threshold": threshold if np.ndim(threshold) == 0 else "per image",
              "threshold_source": source, "beta": beta,
              "bootstrap": n_boot, "unmatched_predictions": m.unmatched_predictions,
              "unpredicted_images": m.unpredicted_images,
              "image": {"two-stage": metric_table(y_img, p_img, g_img, threshold, beta, n_boot, seed)},
              "lesion": {"two-stage": metric_table(y_les, p_les, g_les, threshold if np.ndim(threshold) == 0
                                                   else t_les, beta, n_boot, seed)}}
    curve_sets = {"two-stage (image)": (y_img, p_img, g_img), "two-stage (lesion)": (y_les, p_les, g_les)}
    for name, scores in (baselines or {}).items():
        b = np.array([scores.get(r.image_id, np.nan) for r in m.records], float)
        keep = np.isfinite(b)
        b_threshold = scores.get(BASELINE_THRESHOLD, threshold)
        if isinstance(b_threshold, dict):  # each image its own (cross-validation: its fold's threshold)
            b_threshold = np.array([b_threshold.get(r.image_id, np.nan) for r in m.records], float)
        b_threshold = b_threshold[keep] if np.ndim(b_threshold) else b_threshold
        report["image"][name] = metric_table(y_img[keep], b[keep], g_img[keep], b_threshold, beta, n_boot, seed)
        curve_sets[f"{name} (image)"] = (y_img[keep], b[keep], g_img[keep])

    curve, report["froc"] = froc_of(m.records, [r.lesions for r in m.results], hit_iou)
    figures = plot_curves(curve_sets, out_dir, n_boot, seed)
    if all(r.probability is not None for r in m.results):  # models with a calibration map
        p_cal = np.array([r.probability for r in m.results], float)
        # the base-rate reference predicts this set's own prevalence for every image (it knows more than any
        # model could: a probability must beat even that)
        report["calibration"] = calibration_report(y_img, p_cal, np.full(len(y_img), y_img.mean()), g_img,
                                                   n_boot, seed)
        figures.append(plot_reliability(report["calibration"], y_img, p_cal, out_dir))
    figures += plot_confusion_and_distribution(y_img, p_img, threshold, out_dir, "image level")
    figures.append(_plot_froc(curve, out_dir))
    figures.append(gradcam_grid(m, predictions_dir, threshold, out_dir))
    report["figures"] = figures
    atomic_write_text(out_dir / "metrics.json", json.dumps(report, indent=2, default=float))
    atomic_write_text(out_dir / "metrics.md", markdown_report(report))
    return report


def _plot_froc(curve, out_dir: Path) -> str:
    fig, ax = plt.subplots(figsize=(5, 4))
    ok = np.isfinite(curve.sensitivity)
    ax.step(curve.fp_per_image[ok], curve.sensitivity[ok], where="post")
    for r in FP_RATES:
        ax.axvline(r, color="grey", lw=0.5, ls=":")
    ax.set(xscale="symlog", xlim=(0, max(8, float(curve.fp_per_image.max()) if len(curve.fp_per_image) else 8)),
           ylim=(0, 1.02), xlabel="false positives per image", ylabel="lesion sensitivity", title="FROC")
    path = out_dir / "froc.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path.name
