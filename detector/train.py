"""Train a YOLO lesion detector with ultralytics, offline, and leave a tidy run folder:

    weights/best.pt, weights/last.pt   ultralytics checkpoints (best = highest val fitness)
    config.yaml, run.json              the resolved config and how the run was started
    results.csv, curves.png            per-epoch losses and val metrics, and their plot
    metrics.json                       the final validation of best.pt (precision, recall, mAP50, mAP50-95)
    dataset/                           the exported dataset, when the run exported its own (no --data given)

Settings that keep it offline and fast on a CPU (measured, see the project notes): the model is built from a
YAML or a local .pt (never a name to download), amp off (its check downloads weights on CUDA), no ultralytics
plots (curves are drawn here), 2 torch threads re-set once training starts (ultralytics resets them to 1).
"""
from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

from tqdm import tqdm

from mammo import runtime
from mammo.atomic import atomic_path, atomic_write_text
from mammo.config import Config

from detector.model import build_model

# Defaults for mammograms on a CPU; detector.train_args overrides any of them (and adds any other ultralytics
# train argument). Up-down flips keep the chest wall on its side; hsv augmentation does nothing on 1 channel.
TRAIN_DEFAULTS = {"flipud": 0.5, "fliplr": 0.5, "degrees": 10.0, "cache": "ram", "workers": 2,
                  "close_mosaic": 10, "warmup_epochs": 3.0}
# ultralytics accumulates gradients up to a nominal batch of 64 images (`nbs`): on a dataset of ~100 images with
# batch 16 that is 2 optimizer steps per epoch, and a model trained from scratch barely moves (measured on the
# synthetic set: nothing learned in 2 epochs with nbs 64, FROC 0.6 at 1 FP/image with nbs = batch). Small
# datasets step on every batch unless train_args says otherwise.


def train(cfg: Config, data_yaml, out_dir) -> dict:
    """Train on the dataset of `data_yaml` (from export-dataset) into `out_dir`; returns the metrics written."""
    out_dir = Path(out_dir)
    det = cfg.detector
    yolo = build_model(det.model)
    if cfg.run.device == "cpu":
        # ultralytics sets torch to 1 thread when it selects the CPU; 2 were 1.6-2x faster here
        yolo.add_callback("on_train_start", lambda trainer: runtime.configure_torch(cfg.run.threads))
    _add_progress_bar(yolo, det.epochs)
    args = {**TRAIN_DEFAULTS, "nbs": det.batch, **det.train_args,
            "data": str(data_yaml), "epochs": det.epochs, "imgsz": det.imgsz, "batch": det.batch,
            "patience": det.patience, "device": cfg.run.device, "seed": cfg.run.seed, "deterministic": True,
            "amp": False, "plots": False, "project": str(out_dir), "name": "ultralytics", "exist_ok": True,
            "verbose": True}
    runtime.seed_everything(cfg.run.seed)
    started = time.time()
    result = yolo.train(**args)
    seconds = time.time() - started

    work = out_dir / "ultralytics"
    (out_dir / "weights").mkdir(exist_ok=True)
    for name in ("best.pt", "last.pt"):
        if (work / "weights" / name).exists():
            shutil.move(str(work / "weights" / name), out_dir / "weights" / name)
    for src, dst in (("results.csv", "results.csv"), ("args.yaml", "ultralytics_args.yaml")):
        if (work / src).exists():
            shutil.move(str(work / src), out_dir / dst)
    shutil.rmtree(work, ignore_errors=True)
    rows = read_results(out_dir / "results.csv")
    if rows:
        plot_curves(rows, out_dir / "curves.png")
    trainer = yolo.trainer
    data_ref = Path(data_yaml).resolve()
    if data_ref.is_relative_to(out_dir.resolve()):  # exported into this run: the staging folder gets renamed
        data_ref = data_ref.relative_to(out_dir.resolve())
    val = {k: round(float(v), 5) for k, v in (getattr(result, "results_dict", None) or {}).items()}
    metrics = {"val": val, "epochs_run": len(rows), "epochs_max": det.epochs,
               "best_epoch": trainer.stopper.best_epoch if getattr(trainer, "stopper", None) else None,
               "train_seconds": round(seconds, 1), "seconds_per_epoch": round(seconds / max(len(rows), 1), 2),
               "model": det.model, "imgsz": det.imgsz, "data": str(data_ref),
               "ultralytics_args": {k: v for k, v in args.items()
                                    if k not in ("project", "name", "exist_ok", "data")}}
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2, default=str))
    return metrics


def _add_progress_bar(yolo, epochs: int) -> None:
    """One bar over the epochs with the latest val mAP50: ultralytics shows its own only when YOLO_VERBOSE is on
    (mammo.runtime turns it off to keep library output quiet)."""
    state = {}

    def start(trainer):
        state["bar"] = tqdm(total=epochs, desc="train", unit="epoch")

    def epoch_end(trainer):
        bar = state.get("bar")
        if bar is None or bar.n >= bar.total:  # final_eval calls this once more, after the last epoch
            return
        bar.update(1)
        m = trainer.metrics or {}
        bar.set_postfix(mAP50=f"{m.get('metrics/mAP50(B)', 0):.3f}", best=f"{trainer.best_fitness or 0:.3f}")

    def end(trainer):
        if state.get("bar") is not None:
            state.pop("bar").close()

    yolo.add_callback("on_train_start", start)
    yolo.add_callback("on_fit_epoch_end", epoch_end)
    yolo.add_callback("on_train_end", end)


def read_results(path) -> list[dict]:
    """ultralytics' results.csv as a list of {column: float} (column names stripped of padding)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k.strip(): float(v) for k, v in row.items() if v not in (None, "")} for row in csv.DictReader(f)]


def plot_curves(rows: list[dict], path) -> Path:
    """Losses and validation metrics per epoch in one PNG (matplotlib's own font: nothing to download)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    panels = [("train loss", ["train/box_loss", "train/cls_loss", "train/dfl_loss"]),
              ("val loss", ["val/box_loss", "val/cls_loss", "val/dfl_loss"]),
              ("val mAP", ["metrics/mAP50(B)", "metrics/mAP50-95(B)"]),
              ("val precision / recall", ["metrics/precision(B)", "metrics/recall(B)"])]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (title, keys) in zip(axes.flat, panels):
        for key in keys:
            if key in rows[0]:
                ax.plot(epochs, [r.get(key, float("nan")) for r in rows], label=key.split("/")[-1])
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return Path(path)
