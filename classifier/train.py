"""Training: `train(cfg, run_dir)` -> dict of validation metrics, with the model and its report in run_dir.

Made to be called many times in one process (the Optuna stage calls it once per trial): it clears the Keras
session, seeds everything from cfg.run.seed, accepts a pre-built `CropSet` (so images are read once per study,
not per trial) and calls `on_epoch_end(epoch, logs)` after each epoch, where a pruning callback may raise.

Validation is patient-level (the split of mammo.datasets) and on the 'truth' crops of the validation images:
benign vs malignant lesions, the issue's metric. Its exact auPR (mammo.metrics, not Keras' approximate AUC)
drives early stopping, learning-rate reduction and the best checkpoint. Writes to run_dir:
  model.keras (best epoch), calibration.json (calibrator + F-beta threshold), metrics.json, history.json,
  learning_curves.png, val_predictions.csv.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

import mammo.runtime as runtime
from mammo import metrics as M
from mammo.atomic import atomic_path, atomic_write_text
from mammo.config import Config, replace, save_config
from mammo.datasets import load_split_dataset

from classifier.calibration import Calibrator, negative_log_likelihood
from classifier.data import CropSet, build_crops, clahe_setting, make_dataset, prepare

VAL_KINDS = ("truth",)


def build_crops_for_config(cfg: Config, run_dir=None, detections=None, progress: bool = True) -> CropSet:
    """Read the data of cfg.data, split it by patient (split.csv in run_dir) and make (or load) the crops."""
    annotations, splits = load_split_dataset(cfg.data, run_dir)
    images = [im for ims in splits.values() for im in ims]
    crops = build_crops(images, cfg.classifier, seed=cfg.run.seed, detections=detections, progress=progress)
    return crops.with_splits(splits)


def _predict(model, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    out = [model(x[i:i + batch_size], training=False).numpy().ravel() for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros(0)


def _class_weight(y: np.ndarray) -> dict | None:
    """Balanced weights n / (2 n_c): the minority class counts as much as the majority in the loss."""
    counts = np.bincount(y.astype(int), minlength=2)
    if counts.min() == 0:
        return None
    return {c: float(len(y) / (2.0 * counts[c])) for c in (0, 1)}


def _callbacks(model, x_val, y_val, cfg, run_dir: Path, on_epoch_end):
    import keras

    class ValidationMetrics(keras.callbacks.Callback):
        """Exact val auROC / auPR into the logs; keeps the best weights (and writes a checkpoint).
        Keras' EarlyStopping cannot break ties by a second metric, hence this callback owns the best model."""

        def __init__(self):
            super().__init__()
            self.best, self.best_epoch, self.best_weights = (-np.inf, -np.inf), -1, None

        def on_epoch_end(self, epoch, logs=None):
            logs = logs if logs is not None else {}
            p = _predict(self.model, x_val)
            logs["val_auroc"] = M.auroc(y_val, p)
            logs["val_aupr"] = M.aupr(y_val, p)
            # ties in auPR (common when it saturates at 1.0) go to the lower validation loss
            score = (float(np.nan_to_num(logs["val_aupr"], nan=-1.0)),
                     -float(np.nan_to_num(logs.get("val_loss", 0.0), nan=np.inf)))
            if score > self.best:
                self.best, self.best_epoch = score, epoch
                self.best_weights = self.model.get_weights()
                with atomic_path(run_dir / "checkpoint.keras") as tmp:
                    self.model.save(tmp)

    val = ValidationMetrics()
    cbs = [val,  # first: the callbacks below read the metrics it adds to the logs
           keras.callbacks.EarlyStopping(monitor="val_aupr", mode="max", patience=cfg.patience, verbose=1),
           keras.callbacks.ReduceLROnPlateau(monitor="val_aupr", mode="max", factor=0.5,
                                             patience=max(3, cfg.patience // 2), min_lr=1e-6, verbose=1)]
    if on_epoch_end is not None:
        cbs.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: on_epoch_end(e, dict(logs or {}))))
    return val, cbs


def _plot_curves(history: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for key in ("loss", "val_loss"):
        if key in history:
            axes[0].plot(history[key], label=key)
    for key in ("val_auroc", "val_aupr"):
        if key in history:
            axes[1].plot(history[key], label=key)
    axes[0].set_title("loss"), axes[1].set_title("validation (truth crops)")
    for ax in axes:
        ax.set_xlabel("epoch"), ax.legend(), ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def _jsonable(d):
    if isinstance(d, dict):
        return {k: _jsonable(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_jsonable(v) for v in d]
    if isinstance(d, (np.floating, float)):
        return None if not np.isfinite(d) else float(d)
    if isinstance(d, np.integer):
        return int(d)
    return d


def train(cfg: Config, run_dir, *, crops: CropSet | None = None, on_epoch_end=None, verbose: int = 2) -> dict:
    """Train the classifier of cfg.classifier; returns the validation metrics (also in run_dir/metrics.json)."""
    import keras

    from classifier.model import build_model, make_optimizer, set_trainable_fraction

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir)  # also when called as a library (tuning trials): the run folder says what ran
    c = cfg.classifier
    keras.backend.clear_session()  # one process, many trials: no growth of the graph or layer-name counters
    runtime.configure_tensorflow(cfg.run.threads)
    runtime.seed_everything(cfg.run.seed)

    crops = build_crops_for_config(cfg, run_dir) if crops is None else crops
    crops.check_settings(c)
    tr, va = crops.select("train"), crops.select("val", VAL_KINDS)
    if len(tr) == 0 or len(va) == 0:
        raise ValueError(f"need train and val crops, got {len(tr)} train and {len(va)} val")
    equalise = clahe_setting(cfg)
    x_tr, y_tr = prepare(tr.images, equalise), tr.labels
    x_va, y_va = prepare(va.images, equalise), va.labels

    model = build_model(c)
    model.compile(optimizer=make_optimizer(c), loss="binary_crossentropy",
                  metrics=[keras.metrics.BinaryAccuracy(name="acc")])
    ds_tr = make_dataset(x_tr, y_tr, batch_size=c.batch_size, training=True, augment_strength=c.augment_strength,
                         seed=cfg.run.seed)
    ds_va = make_dataset(x_va, y_va, batch_size=c.batch_size, training=False)
    best, callbacks = _callbacks(model, x_va, y_va, c, run_dir, on_epoch_end)

    t0 = time.perf_counter()
    fit = dict(validation_data=ds_va, callbacks=callbacks, verbose=verbose,
               shuffle=False,  # the dataset shuffles itself, seeded
               class_weight=_class_weight(y_tr) if c.class_weight else None)
    frozen = min(c.frozen_epochs, c.epochs) if c.weights.lower() != "none" else 0
    if frozen:
        # Stage 1: the head alone on frozen pretrained features, so that its random start does not send large
        # gradients into the ImageNet weights; stage 2 fine-tunes the last layers at a lower learning rate.
        backbone = model.get_layer("backbone")
        backbone.trainable = False
        model.compile(optimizer=make_optimizer(c), loss="binary_crossentropy",
                      metrics=[keras.metrics.BinaryAccuracy(name="acc")])
        first = model.fit(ds_tr, epochs=frozen, **fit)
        set_trainable_fraction(backbone, c)
        model.compile(optimizer=make_optimizer(replace(c, learning_rate=c.learning_rate * c.fine_tune_lr_factor)),
                      loss="binary_crossentropy", metrics=[keras.metrics.BinaryAccuracy(name="acc")])
    hist = model.fit(ds_tr, epochs=c.epochs, initial_epoch=frozen, **fit)
    if frozen:
        hist.history = {k: first.history.get(k, []) + v for k, v in hist.history.items()}
    train_seconds = time.perf_counter() - t0
    if best.best_weights is not None:
        model.set_weights(best.best_weights)

    # Calibrate on validation and choose the F-beta operating point on the calibrated scores.
    p_raw = _predict(model, x_va)
    calib = Calibrator(c.calibration).fit(p_raw, y_va, fitted_on=f"val truth crops, n={len(y_va)}, "
                                                                 f"{int(y_va.sum())} malignant")
    p = calib(p_raw)
    threshold, _ = M.best_threshold(y_va, p, c.fbeta)
    val = M.summary(y_va, p, threshold, c.fbeta)
    val["fbeta"] = val[f"f{c.fbeta:g}"]  # under a fixed name too, for the tuning stage

    metrics = {
        "backbone": c.backbone, "weights": c.weights, "input_size": c.input_size,
        "val": val,  # benign vs malignant lesion crops (truth boxes), patient-level validation
        "val_nll_raw": negative_log_likelihood(p_raw, y_va), "val_nll_calibrated": negative_log_likelihood(p, y_va),
        "calibration": calib.to_dict(),
        "calibration_note": ("probabilities calibrated on the validation crops (in-sample: the NLL after "
                             "calibration is optimistic)") if calib.calibrated else "probabilities NOT calibrated",
        "best_epoch": int(best.best_epoch) + 1, "epochs_run": len(hist.history.get("loss", [])),
        "train_seconds": train_seconds,
        "n_train": int(len(y_tr)), "n_train_malignant": int(y_tr.sum()),
        "train_kinds": tr.manifest["kind"].value_counts().to_dict(),
        "crops_report": list(crops.report),
    }
    # Optional, labelled: validation truth crops plus normal-tissue and detector crops (what the pipeline meets).
    va_all = crops.select("val", ("truth", "background", "detection", "detection_background"))
    if len(va_all) > len(va) and len(set(va_all.labels)) == 2:
        p_all = calib(_predict(model, prepare(va_all.images, equalise)))
        metrics["val_all_crops"] = M.summary(va_all.labels, p_all, threshold, c.fbeta)

    with atomic_path(run_dir / "model.keras") as tmp:
        model.save(tmp)
    calib.save(run_dir / "calibration.json", threshold=threshold, fbeta=c.fbeta,
               input_size=c.input_size, context_margin=c.context_margin,
               clahe=list(equalise) if equalise else False)
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    atomic_write_text(run_dir / "history.json", json.dumps(_jsonable(history), indent=1))
    _plot_curves(history, run_dir / "learning_curves.png")
    preds = va.manifest[["image_id", "kind", "label", "pathology", "x1", "y1", "x2", "y2"]].copy()
    preds["p_raw"], preds["p"] = p_raw, p
    with atomic_path(run_dir / "val_predictions.csv") as tmp:
        preds.to_csv(tmp, index=False)
    atomic_write_text(run_dir / "metrics.json", json.dumps(_jsonable(metrics), indent=2))
    (run_dir / "checkpoint.keras").unlink(missing_ok=True)  # model.keras is the best checkpoint now
    return _jsonable(metrics)
