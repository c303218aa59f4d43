"""The single-stage whole-image baseline on the digital folds: the yardstick the issue sets for the global branch.

    python -m pipeline digital-baseline-cv --config configs/rsna_ffdm_baseline.yaml --against docs/cv/ffdm-k5 \
        --out runs/digital_baseline [--fold N]

One classifier (the `classifier` section: the seeds' recipe is an ImageNet MobileNetV2 fine-tuned at 320 px for
5 epochs) sees the whole image as the global branch does (same square, same polarity rule) and says cancer or not.
It is trained end to end, where the branch keeps its backbone frozen: the two differ in that alone.

1. The outer folds are the global branch's (`outer_folds`, same data section and seed; with --against they are
   checked against that run's folds.csv), so the two are compared image by image on the same held-out women.
2. Fold k: the other folds' women are split once more (one fifth by woman) into training and validation, which
   picks the best epoch (classifier.train). Only the other folds' labels are handed over. The held-out fold is
   scored on each image and its mirror (the mean logit, as the branch does) and written atomically with
   DONE.json: a killed run resumes at the fold it was in.
3. With every fold done: the same out-of-fold figures as `digital-cv` (cross-fitted calibration and threshold,
   CIs over women), and with --against, the paired auROC difference to the branch and a fusion of the two
   whose weight each fold takes from the other folds only.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mammo import metrics
from mammo.atomic import atomic_write_text
from mammo.config import Config
from mammo.errors import MammoError
from mammo.imaging import read_mammogram
from pipeline.cross_validate import assign_folds
from pipeline.digital.cross_validate import oof_figures, start_run_folder

VAL_FOLDS = 5  # one fifth of a fold's training women validate (the best epoch), as the film split's 0.2
FUSION_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # weight of the baseline's standardized logit; 0 = the branch alone


def whole_images(records, cfg: Config, progress: bool = True) -> np.ndarray:
    """(N, S, S) float16: each image as the global branch squares it (S = classifier.input_size), with the same
    polarity rule, so that the baseline and the branch see the same pixels."""
    from classifier.global_branch import branch_input

    size = cfg.classifier.input_size
    out = np.empty((len(records), size, size), np.float16)
    for i, r in enumerate(tqdm(records, desc="whole images", unit="img", disable=not progress)):
        pixels = read_mammogram(r.path, max_pixels=cfg.run.max_pixels).pixels
        out[i] = branch_input(pixels, size, cfg.global_branch.polarity)[0]
    return out


def validation_split(records, rows: np.ndarray, seed: int) -> np.ndarray:
    """True for the rows (of `records`) whose women validate: one of VAL_FOLDS woman-level, label-stratified parts."""
    part = assign_folds([records[i] for i in rows], VAL_FOLDS, seed)
    return np.array([part[records[i].image_id] == 0 for i in rows])


def mirrored_logits(model, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """The mean logit of each image and its mirror (the model's sigmoid output taken back to a logit)."""
    def logits(x):
        p = np.concatenate([np.asarray(model(x[i:i + batch, ..., None].astype(np.float32), training=False)).ravel()
                            for i in range(0, len(x), batch)])
        p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
        return np.log(p / (1 - p))
    return (logits(images) + logits(images[:, :, ::-1])) / 2


def run_fold(images, labels, records, train: np.ndarray, k: int, cfg: Config, out: Path) -> dict:
    """Fold k: train on the rows of `train` (their labels only: `labels` of the other rows is never read), then
    score the held-out rows."""
    import keras

    from classifier.data import CropSet
    from classifier.train import train as train_classifier
    from pipeline.baseline import baseline_config

    t0 = time.perf_counter()
    cfg = baseline_config(cfg)  # one whole-image 'crop' per image, no margin
    tr, te = np.flatnonzero(train), np.flatnonzero(~train)
    val = validation_split(records, tr, cfg.data.seed + 1)
    crops = CropSet.from_arrays(images[tr], labels[tr], np.where(val, "val", "train"),
                                input_size=cfg.classifier.input_size, context_margin=0.0,
                                groups=[records[i].patient_id for i in tr])
    model_dir = out / "folds" / f"fold{k}" / "model"
    trained = train_classifier(cfg, model_dir, crops=crops)
    model = keras.models.load_model(model_dir / "model.keras", compile=False, safe_mode=True)
    # the best epoch's own validation auROC: the calibrated one (trained["val"]) is 0.5 when the calibration
    # flattens a model with no signal on validation to one value
    history = json.loads((model_dir / "history.json").read_text())
    return {"fold": k, "held_out_rows": te.tolist(), "logits": mirrored_logits(model, images[te]).tolist(),
            "n_train": int((~val).sum()), "n_val": int(val.sum()), "best_epoch": trained["best_epoch"],
            "val_auroc": history["val_auroc"][trained["best_epoch"] - 1],
            "train_seconds": round(trained["train_seconds"], 1),
            "seconds": round(time.perf_counter() - t0, 1)}


def fold_file(out, k: int) -> Path:
    return Path(out) / "folds" / f"fold{k}" / "DONE.json"


def standardized(logits: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Logits on the scale of `reference` (its mean 0, sd 1): two models' logits can then be averaged."""
    return (logits - reference.mean()) / max(float(reference.std()), 1e-12)


def fused(baseline: np.ndarray, branch: np.ndarray, y, fold) -> tuple[np.ndarray, dict]:
    """w * baseline + (1 - w) * branch on standardized logits. Fold k's w and the standardization come from the
    other folds only (their pooled auROC; ties go to the smaller w, the branch). Returns (logits, {fold: w})."""
    out, weights = np.full(len(y), np.nan), {}
    for k in np.unique(fold):
        other, held = fold != k, fold == k
        a, b = standardized(baseline, baseline[other]), standardized(branch, branch[other])
        w = max(FUSION_WEIGHTS, key=lambda w: (metrics.auroc(y[other], w * a[other] + (1 - w) * b[other]), -w))
        out[held], weights[str(int(k))] = w * a[held] + (1 - w) * b[held], w
    return out, weights


def paired_auroc_difference(y, first, second, women, n_boot: int, seed: int) -> tuple[float, float, float]:
    """auROC of `second` minus that of `first` on the same images, with a 95 % CI from a bootstrap over women."""
    rows = np.arange(len(y))

    def diff(y_, r):
        r = r.astype(int)
        return metrics.auroc(y[r], second[r]) - metrics.auroc(y[r], first[r])
    return metrics.bootstrap_ci(diff, y, rows, women, n=n_boot, seed=seed)


def branch_oof(against, records) -> tuple[np.ndarray, np.ndarray]:
    """(logits, folds) of a `digital-cv` run, in the order of `records`; refused unless it holds the same images."""
    path = Path(against) / "summary.json"
    if not path.is_file():
        raise MammoError(f"{path}: missing; --against takes a finished `pipeline digital-cv` run")
    oof = json.loads(path.read_text())["oof"]
    if oof["image_id"] != [r.image_id for r in records]:
        raise MammoError(f"{path}: cross-validated other images than the config's data section")
    return np.array(oof["logit"], float), np.array(oof["fold"], int)


def run_baseline_cv(cfg: Config, out, *, against=None, only_fold: int | None = None, progress: bool = True,
                    n_boot: int = 1000) -> dict | None:
    """Run (or resume) the folds; with every fold done, write summary.json and return it (else None)."""
    out, records, folds = start_run_folder(cfg, out, only_fold)
    k = cfg.global_branch.folds
    fold = np.array([folds[r.image_id] for r in records])
    branch = None
    if against is not None:
        branch, branch_fold = branch_oof(against, records)
        if not np.array_equal(branch_fold, fold):
            raise MammoError(f"{against}: its folds are not these (another data seed or global_branch.folds?)")
    y = np.array([r.label for r in records])
    women = np.array([r.patient_id for r in records])
    todo = [j for j in (range(k) if only_fold is None else [only_fold]) if not fold_file(out, j).is_file()]
    if todo:
        images = whole_images(records, cfg, progress)
        for j in todo:
            labels = np.where(fold != j, y, -1)  # the held-out fold's labels are not handed over at all
            result = run_fold(images, labels, records, fold != j, j, cfg, out)
            atomic_write_text(fold_file(out, j), json.dumps(result))
            if progress:
                print(f"fold {j}: best epoch {result['best_epoch']}, held-out auROC "
                      f"{metrics.auroc(y[fold == j], np.array(result['logits'])):.3f}, {result['seconds']} s",
                      flush=True)
    done = [json.loads(fold_file(out, j).read_text()) for j in range(k) if fold_file(out, j).is_file()]
    if len(done) < k:
        return None
    summary = summarize(records, y, women, fold, done, branch, cfg, n_boot)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    from pipeline.digital.report import write_baseline_report

    branch_probability = None
    if against is not None:
        branch_probability = json.loads((Path(against) / "summary.json").read_text())["oof"]["probability_cross_fitted"]
    write_baseline_report(summary, out, branch_probability, n_boot=min(n_boot, 300), seed=cfg.run.seed)
    return summary


def summarize(records, y, women, fold, folds_done, branch, cfg: Config, n_boot: int) -> dict:
    from pipeline.digital.cross_validate import woman_index

    logits = np.full(len(y), np.nan)
    for d in folds_done:
        logits[d["held_out_rows"]] = d["logits"]
    seed = cfg.run.seed
    figures, prob, _ = oof_figures(y, logits, fold, women, n_boot, seed)
    c = cfg.classifier
    summary = {"source": f"{len(folds_done)}-fold woman-level cross-validation, out-of-fold predictions",
               "model": {"backbone": c.backbone, "weights": c.weights, "input_size": c.input_size,
                         "epochs": c.epochs, "frozen_epochs": c.frozen_epochs, "polarity": cfg.global_branch.polarity},
               "n_images": len(y), "n_positive": int(y.sum()), "n_women": len(set(women.tolist())),
               "folds": {str(d["fold"]): {k: d[k] for k in ("n_train", "n_val", "best_epoch", "val_auroc",
                                                           "train_seconds", "seconds")} for d in folds_done},
               "figures": figures}
    if branch is not None:
        fusion, weights = fused(logits, branch, y, fold)
        fusion_figures, fusion_prob, _ = oof_figures(y, fusion, fold, women, n_boot, seed)
        summary["against_branch"] = {
            "auroc_baseline_minus_branch": paired_auroc_difference(y, branch, logits, women, n_boot, seed),
            "fusion": {"weights_per_fold": weights, "figures": fusion_figures,
                       "auroc_fusion_minus_branch": paired_auroc_difference(y, branch, fusion, women, n_boot, seed),
                       "logit": fusion.tolist(), "probability_cross_fitted": fusion_prob.tolist()},
        }
    summary["oof"] = {"image_id": [r.image_id for r in records], "fold": fold.tolist(), "label": y.tolist(),
                      "woman": woman_index(women), "logit": logits.tolist(),
                      "probability_cross_fitted": prob.tolist()}
    return summary
