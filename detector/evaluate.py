"""Evaluate a detector on an annotated split: FROC on full images (through the same `LesionDetector.predict` the
pipeline uses, boxes compared in ORIGINAL pixels) plus mAP50 from ultralytics' own validator.

Writes to the run folder: metrics.json (sensitivity at 0.125 ... 4 FP/image, mAP50, timings), froc.csv (the whole
curve), froc_table.csv (the standard points), froc.png, predictions.jsonl (detections per image).

Images with a lesion that has no box (MIAS '*NOTE 3*') are left out: a detection there can be neither a hit
nor a false positive. They are counted in metrics.json.
"""
from __future__ import annotations

import csv
import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mammo import runtime
from mammo.atomic import atomic_path, atomic_write_text
from mammo.config import Config
from mammo.datasets import load_split_dataset
from mammo.errors import AnnotationError, ConfigError
from mammo.froc import FP_RATES, FrocCurve, froc_curve, hit_matrix
from mammo.imaging import read_mammogram

from detector.dataset import export_dataset
from detector.model import LesionDetector


def evaluate(cfg: Config, weights, out_dir, split: str = "val", with_map: bool = True) -> dict:
    out_dir = Path(out_dir)
    _, splits = load_split_dataset(cfg.data, run_dir=out_dir)
    if split not in splits:
        raise ConfigError(f"no split named {split!r} in this data (have {list(splits)})")
    records = [r for r in splits[split] if all(l.box is not None for l in r.lesions)]
    unboxed = len(splits[split]) - len(records)
    if not records:
        raise AnnotationError(cfg.data.annotations, f"the '{split}' split has no usable image")
    if not any(r.boxed_lesions for r in records):
        raise AnnotationError(cfg.data.annotations, f"the '{split}' split has no image with a boxed lesion: "
                                                    f"FROC sensitivity is undefined without positives")

    det_cfg = cfg.detector
    predictions, truths, seconds = [], [], []
    with LesionDetector.load(weights, det_cfg, device=cfg.run.device, threads=cfg.run.threads) as det:
        lines = []
        for rec in tqdm(records, desc=f"predict {split} ({det_cfg.mode})", unit="img"):
            mammogram = read_mammogram(rec.path)
            start = time.perf_counter()
            detections = det.predict(mammogram, cfg.preprocess)
            seconds.append(time.perf_counter() - start)
            predictions.append((np.array([d.box for d in detections]).reshape(-1, 4),
                                np.array([d.score for d in detections])))
            truths.append(np.array([l.box for l in rec.boxed_lesions]).reshape(-1, 4))
            lines.append(json.dumps({"image_id": rec.image_id, "source": str(rec.path),
                                     "truth": [list(l.box) for l in rec.boxed_lesions],
                                     "detections": [d.to_dict() for d in detections]}))
        atomic_write_text(out_dir / "predictions.jsonl", "\n".join(lines) + "\n")
        curve = froc_curve(predictions, truths, det_cfg.hit_iou, det_cfg.hit_centre)
        map_metrics = _ultralytics_map(det, cfg, records, out_dir) if with_map else {}

    table = curve.table(FP_RATES)
    by_type = found_by_abnormality(records, predictions, curve.threshold_at(1.0), det_cfg)
    metrics = {"split": split, "mode": det_cfg.mode, "weights": str(weights), "n_images": curve.n_images,
               "n_lesions": curve.n_lesions, "n_images_left_out_unboxed": unboxed,
               "sensitivity_at_fp": {str(k): round(v, 4) for k, v in table.items()},
               "mean_sensitivity": round(curve.mean_sensitivity(FP_RATES), 4),
               "max_sensitivity": round(float(np.nanmax(curve.sensitivity)), 4),
               "found_at_1fp_by_abnormality": by_type,
               "hit": {"centre_inside": det_cfg.hit_centre, "iou": det_cfg.hit_iou}, **map_metrics,
               "seconds_per_image": {"median": round(float(np.median(seconds)), 4),
                                     "mean": round(float(np.mean(seconds)), 4),
                                     "note": "preprocess + model + mapping back; reading the file excluded"}}
    write_froc(curve, out_dir, title=f"{split}: {curve.n_lesions} lesions on {curve.n_images} images "
                                     f"({det_cfg.mode})")
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def found_by_abnormality(records, predictions, threshold: float, det_cfg) -> dict[str, str]:
    """'found/total' per abnormality at one score threshold: which kinds of lesion the detector misses."""
    found: dict[str, list[int]] = {}
    for rec, (boxes, scores) in zip(records, predictions):
        truth = np.array([l.box for l in rec.boxed_lesions]).reshape(-1, 4)
        hits = hit_matrix(boxes[scores >= threshold], truth, det_cfg.hit_iou, det_cfg.hit_centre).any(axis=0)
        for lesion, hit in zip(rec.boxed_lesions, hits):
            found.setdefault(lesion.abnormality, []).append(int(hit))
    return {k: f"{sum(v)}/{len(v)}" for k, v in sorted(found.items())}


def _ultralytics_map(det: LesionDetector, cfg: Config, records, out_dir: Path) -> dict:
    """mAP50 / mAP50-95 by ultralytics' validator, on the split exported as letterboxed frames (the input the
    model was trained on); removed afterwards, since it only duplicates the images."""
    work = out_dir / "ultralytics_val"
    try:
        export = export_dataset({"val": records}, work / "dataset", imgsz=cfg.detector.imgsz,
                                classes=det.names, preprocess_cfg=cfg.preprocess, require_positives=("val",),
                                source=cfg.data.annotations)
        result = det.yolo.val(data=str(export.data_yaml), split="val", imgsz=cfg.detector.imgsz,
                              batch=cfg.detector.batch, device=cfg.run.device, plots=False, verbose=False,
                              project=str(work), name="val", exist_ok=True)
        runtime.configure_torch(cfg.run.threads)  # the validator's device set-up reset the threads
        return {"map50": round(float(result.box.map50), 4), "map50_95": round(float(result.box.map), 4),
                "precision": round(float(result.box.mp), 4), "recall": round(float(result.box.mr), 4)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_froc(curve: FrocCurve, out_dir, title: str = "") -> None:
    out_dir = Path(out_dir)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["threshold", "fp_per_image", "sensitivity"])
    for t, f, s in zip(curve.thresholds, curve.fp_per_image, curve.sensitivity):
        w.writerow([f"{t:.6f}" if np.isfinite(t) else "inf", f"{f:.6f}", f"{s:.6f}"])
    atomic_write_text(out_dir / "froc.csv", buf.getvalue())
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["fp_per_image", "sensitivity"])
    for rate, sens in curve.table(FP_RATES).items():
        w.writerow([rate, f"{sens:.4f}"])
    atomic_write_text(out_dir / "froc_table.csv", buf.getvalue())
    plot_froc(curve, out_dir / "froc.png", title)


def plot_froc(curve: FrocCurve, path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    # a step curve: sensitivity holds until the next threshold adds a false positive
    fp = np.maximum(curve.fp_per_image, FP_RATES[0] / 2)  # log axis: show 0 FP at the left edge
    ax.step(fp, curve.sensitivity, where="post", label="FROC")
    table = curve.table(FP_RATES)
    ax.plot(list(table), list(table.values()), "o", label=f"mean over {len(FP_RATES)} points: "
                                                       f"{curve.mean_sensitivity(FP_RATES):.3f}")
    ax.set_xscale("log", base=2)
    ax.set_xlim(FP_RATES[0] / 2, max(FP_RATES[-1] * 2, float(curve.fp_per_image.max()) * 1.1))
    ax.set_ylim(0, 1.02)
    ax.set_xticks(FP_RATES, [str(r) for r in FP_RATES])
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("lesion sensitivity")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return Path(path)
