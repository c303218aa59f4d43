"""What a digital cross-validation says, to read and to look at: metrics.md, ROC/PR with bootstrap bands, the
reliability plot, and a contact sheet of out-of-fold true and false positives and negatives with the fold
model's saliency map over each image (where does it look? masses, or clips, skin markers, the pectoral muscle?).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from mammo.atomic import atomic_path, atomic_write_text
from mammo.imaging import read_mammogram
from mammo.metrics import format_ci

SHEET_PER_GROUP = 6
SHEET_TILE = 220


def metrics_markdown(summary: dict) -> str:
    f = summary["figures"]
    lines = [f"# Global branch, {summary['source']}", intro(summary), "",
             "| figure | value |", "| --- | --- |", *figure_rows(f),
             f"| per-fold auROC (mean {f['per_fold']['mean_auroc']:.3f}) | "
             + ", ".join(f"{v['auroc']:.3f} ({v['chosen']})" for k, v in f["per_fold"].items()
                         if k != "mean_auroc") + " |", "",
             "Every pooling tried, scored on the held-out folds (reported, not used to choose):", "",
             "| pooling, weight decay | auROC | auPR | sensitivity at specificity 0.8 |", "| --- | --- | --- | --- |"]
    for frac, v in f["every_candidate (held-out folds, not used to choose)"].items():
        lines.append(f"| {frac} | {v['auroc']:.3f} | {v['aupr']:.3f} | {v['sensitivity_at_specificity_0.8']:.3f} |")
    s = summary["settings"]
    lines += ["", f"Shipped: top fraction {s['top_fraction']} of a {s['grid']} x {s['grid']} grid, weight decay "
                  f"{s['weight_decay']}, calibration {s['calibration']['method']}, "
                  f"probability threshold {s['probability_threshold']:.4f} (F{summary['beta']:g} at specificity >= "
                  f"{summary['min_specificity']})."]
    return "\n".join(lines) + "\n"


def intro(summary: dict) -> str:
    return (f"{summary['n_images']} images of {summary['n_women']} women, {summary['n_positive']} with cancer. "
            "95 % CIs from a bootstrap over women. Cross-fitted: each fold calibrated and thresholded by what the "
            "other folds chose.")


def figure_rows(f: dict) -> list[str]:
    """The table rows every out-of-fold model is judged by (pipeline.digital.cross_validate.oof_figures)."""
    cf, prob = f["cross_fitted"], f["cross_fitted_probability"]
    return [f"| auROC (image logit, pooled out of fold) | {format_ci(f['logit_auroc'])} |",
            f"| auROC / auPR (cross-fitted probability) | {format_ci(cf['auroc'])} / {format_ci(cf['aupr'])} |",
            f"| sensitivity / specificity at each fold's threshold | {format_ci(cf['sensitivity'])} / "
            f"{format_ci(cf['specificity'])} |",
            f"| sensitivity at specificity 0.8 (pooled logits) | {f['sensitivity_at_specificity_0.8']:.3f} |",
            f"| ECE / Brier / Brier of the base rate | {format_ci(prob['ece'])} / {format_ci(prob['brier'])} / "
            f"{format_ci(prob['brier_base_rate'])} |"]


def baseline_markdown(summary: dict) -> str:
    """The whole-image baseline's figures, and beside the branch (and their fusion) when it was compared."""
    m, f = summary["model"], summary["figures"]
    lines = [f"# Whole-image baseline, {summary['source']}",
             f"{m['backbone']} ({m['weights']}) fine-tuned on the whole image at {m['input_size']} px for "
             f"{m['epochs']} epochs ({m['frozen_epochs']} with the backbone frozen), polarity {m['polarity']}. "
             + intro(summary), "", "| figure | baseline |", "| --- | --- |", *figure_rows(f),
             "| per-fold auROC (mean {:.3f}) | {} |".format(
                 f["per_fold"]["mean_auroc"],
                 ", ".join(f"{v['auroc']:.3f}" for k, v in f["per_fold"].items() if k != "mean_auroc")), "",
             "| fold | training / validation images | best epoch | validation auROC | training time |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {k} | {d['n_train']} / {d['n_val']} | {d['best_epoch']} | {d['val_auroc']:.3f} | "
              f"{d['train_seconds'] / 60:.1f} min |" for k, d in summary["folds"].items()]
    if "against_branch" in summary:
        a = summary["against_branch"]
        fusion = a["fusion"]
        lines += ["", "Against the global branch on the same images (paired, 95 % CI over women):", "",
                  f"- auROC, baseline minus branch: {format_ci(a['auroc_baseline_minus_branch'], signed=True)}",
                  f"- fusion (weight of the baseline per fold, chosen on the other folds: "
                  f"{', '.join(f'{w:g}' for w in fusion['weights_per_fold'].values())}), auROC minus the branch: "
                  f"{format_ci(fusion['auroc_fusion_minus_branch'], signed=True)}", "",
                  "| figure | fusion |", "| --- | --- |", *figure_rows(fusion["figures"])]
    return "\n".join(lines) + "\n"


def print_baseline_summary(summary: dict, out: Path) -> None:
    print(baseline_markdown(summary))
    print(f"written: {out}/summary.json, {out}/evaluation/, {out}/folds/, {out}/folds.csv")


def write_baseline_report(summary: dict, out: Path, branch_probability=None, n_boot: int = 300,
                          seed: int = 0) -> list[str]:
    """metrics.md, and the ROC / PR curves of the baseline (with the branch and the fusion when compared)."""
    from pipeline.evaluate import plot_curves, plot_reliability

    ev = Path(out) / "evaluation"
    ev.mkdir(parents=True, exist_ok=True)
    oof = summary["oof"]
    y, groups = np.array(oof["label"]), np.array(oof["woman"])
    atomic_write_text(ev / "metrics.md", baseline_markdown(summary))
    curves = {"whole-image baseline": (y, np.array(oof["probability_cross_fitted"]), groups)}
    if branch_probability is not None:
        curves["global branch"] = (y, np.asarray(branch_probability), groups)
        curves["fusion"] = (y, np.array(summary["against_branch"]["fusion"]["probability_cross_fitted"]), groups)
    written = ["metrics.md"] + plot_curves(curves, ev, n_boot, seed)
    written.append(plot_reliability(summary["figures"]["cross_fitted_probability"], y,
                                    np.array(oof["probability_cross_fitted"]), ev))
    return written


def print_summary(summary: dict, out: Path) -> None:
    text = metrics_markdown(summary)
    print(text)
    print(f"written: {out}/summary.json, {out}/folds/, {out}/folds.csv")


def write_report(summary: dict, out: Path, n_boot: int = 300, seed: int = 0) -> list[str]:
    """metrics.md, roc.png / pr.png, reliability.png into out/evaluation."""
    from pipeline.evaluate import plot_curves, plot_reliability

    ev = Path(out) / "evaluation"
    ev.mkdir(parents=True, exist_ok=True)
    oof = summary["oof"]
    y = np.array(oof["label"])
    groups = np.array(oof["woman"])
    atomic_write_text(ev / "metrics.md", metrics_markdown(summary))
    written = ["metrics.md"]
    written += plot_curves({"global branch, out of fold": (y, np.array(oof["probability_cross_fitted"]), groups)},
                           ev, n_boot, seed)
    written.append(plot_reliability(summary["figures"]["cross_fitted_probability"], y,
                                    np.array(oof["probability_cross_fitted"]), ev))
    return written


def contact_sheet(records, feats, folds_done: list[dict], summary: dict, path: Path,
                  per_group: int = SHEET_PER_GROUP) -> Path:
    """The most confident out-of-fold true positives, false positives, false negatives and true negatives, each
    image with its own fold model's saliency (position logits, red = malignant-looking) laid over it."""
    from classifier.global_branch import MilHead

    oof = summary["oof"]
    y = np.array(oof["label"])
    p = np.array(oof["probability_cross_fitted"])
    thr = summary["settings"]["probability_threshold"]
    head_of_row = {}
    for d in folds_done:
        head = MilHead.from_dict(d["head"])
        for row in d["held_out_rows"]:
            head_of_row[row] = head
    order = np.argsort(-p)
    groups = {"true positives": [i for i in order if y[i] == 1 and p[i] >= thr][:per_group],
              "false positives": [i for i in order if y[i] == 0 and p[i] >= thr][:per_group],
              "false negatives": [i for i in order[::-1] if y[i] == 1 and p[i] < thr][:per_group],
              "true negatives": [i for i in order[::-1] if y[i] == 0 and p[i] < thr][:per_group]}
    rows = []
    for name, idx in groups.items():
        tiles = [_tile(records[i], head_of_row[i], feats[i, 0], p[i]) for i in idx]
        tiles += [np.full((SHEET_TILE, SHEET_TILE, 3), 255, np.uint8)] * (per_group - len(tiles))
        label = np.full((28, SHEET_TILE * per_group, 3), 255, np.uint8)
        cv2.putText(label, f"{name} (out of fold, threshold P {thr:.2f})", (6, 20), cv2.FONT_HERSHEY_SIMPLEX,
                    0.6, (0, 0, 0), 1, cv2.LINE_AA)
        rows += [label, np.concatenate(tiles, axis=1)]
    sheet = np.concatenate(rows, axis=0)
    with atomic_path(path) as tmp:
        cv2.imwrite(str(tmp), sheet)
    return path


def _tile(record, head, feats, probability: float) -> np.ndarray:
    """The image squashed to a tile, its saliency as a translucent colour map (upsampled from the grid)."""
    from classifier.global_branch import sigmoid

    pixels = read_mammogram(record.path).pixels
    grey = cv2.resize((pixels * 255).astype(np.uint8), (SHEET_TILE, SHEET_TILE), interpolation=cv2.INTER_AREA)
    logits = head.position_logits(np.asarray(feats, np.float32))
    heat = sigmoid(logits)
    heat = cv2.resize(heat.astype(np.float32), (SHEET_TILE, SHEET_TILE), interpolation=cv2.INTER_CUBIC)
    colour = cv2.applyColorMap((np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    tile = cv2.addWeighted(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), 0.6, colour, 0.4, 0)
    cv2.putText(tile, f"P {probability:.2f}", (6, SHEET_TILE - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                cv2.LINE_AA)
    return tile
