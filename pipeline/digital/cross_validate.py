"""Cross-validation of the global branch on image-labelled digital mammograms, by woman, every choice out of fold.

    python -m pipeline digital-cv --config configs/rsna_ffdm.yaml --out runs/digital_cv/ffdm [--fold N]

1. Women are spread over k folds, stratified by label (pipeline.cross_validate.assign_folds, as for film).
2. Features of every image and its mirror are extracted once (pipeline.digital.features; resumable).
3. For each fold: its training part chooses the pooling and the L2 strength (global_branch.top_fractions x
   weight_decays) by an inner woman-level
   cross-validation, then fits the head on the whole training part and scores the held-out fold. Only the
   training part's labels are handed to the choice and the fit. Each candidate is also fitted and scored on the
   held-out fold, so every method tried is reported, but the held-out scores do not choose anything.
   A fold's result is written atomically with DONE.json: a killed run resumes at the fold it was in.
4. With every fold done, the image logits of all folds are the out-of-fold set. The calibration map and the
   operating threshold are chosen on it (shipped), and judged honestly by cross-fitting: each fold's images are
   calibrated and thresholded by what the other folds chose. Figures carry 95 % CIs from a bootstrap over women.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from classifier.global_branch import HeadSpec, fit_mil_head, pool_grid, sigmoid
from mammo import metrics
from mammo.annotations import read_annotations
from mammo.atomic import atomic_write_text
from mammo.calibration import apply_calibration, calibration_report, choose_calibration
from mammo.config import Config, save_config
from mammo.errors import MammoError
from pipeline.cross_validate import assign_folds, write_folds_file
from pipeline.digital.features import extract_features
from pipeline.operating_point import operating_curve

BETA = 2.0  # F2: a missed cancer costs more than a recall, as for film
MIN_SPECIFICITY = 0.8  # the screening operating region the issue sets (sensitivity at specificity >= 0.8)
CALIBRATION_GROUPS = 5


def dataset_records(cfg: Config) -> list:
    """Every image of the data section, in image id order, each with a label (box-less rows included)."""
    annotations = read_annotations(cfg.data.format, cfg.data.annotations, cfg.data.images_root or None)
    return sorted(annotations.images, key=lambda r: r.image_id)


def outer_folds(records, cfg: Config) -> dict[str, int]:
    """{image_id: fold}: women over global_branch.folds folds, stratified by label (as film's cross-validation)."""
    return assign_folds(records, cfg.global_branch.folds, cfg.data.seed)


def head_spec(cfg: Config, candidate: tuple[float, float]) -> HeadSpec:
    g = cfg.global_branch
    return HeadSpec(top_fraction=candidate[0], weight_decay=candidate[1], epochs=g.epochs,
                    learning_rate=g.learning_rate, batch_size=g.batch_size, seed=cfg.run.seed)


def candidates(cfg: Config) -> list[tuple[float, float]]:
    """(top fraction, weight decay) pairs, in config order."""
    return [(f, wd) for f in cfg.global_branch.top_fractions for wd in cfg.global_branch.weight_decays]


def name_of(candidate) -> str:
    return f"top{candidate[0]:g}_wd{candidate[1]:g}"


def image_logits(head, feats) -> np.ndarray:
    """The mean logit over an image's views (image and mirror), as inference does."""
    return np.mean([head.image_logit(np.asarray(feats[:, v], np.float32)) for v in range(feats.shape[1])], axis=0)


def choose_candidate(feats, y, women, cfg: Config) -> tuple[tuple[float, float], dict]:
    """The (pooling, weight decay) whose inner woman-level cross-validation (on these images only) gives the
    highest pooled auROC; ties go to the earlier candidate."""
    inner_records = [_Rec(str(i), str(w), int(t)) for i, (w, t) in enumerate(zip(women, y))]
    inner = assign_folds(inner_records, cfg.global_branch.inner_folds, cfg.data.seed + 1)
    inner_fold = np.array([inner[r.image_id] for r in inner_records])
    scores = {}
    for cand in candidates(cfg):
        oof = np.zeros(len(y))
        for j in range(cfg.global_branch.inner_folds):
            tr, te = inner_fold != j, inner_fold == j
            head = fit_mil_head(feats[tr], y[tr], head_spec(cfg, cand))
            oof[te] = image_logits(head, feats[te])
        scores[name_of(cand)] = metrics.auroc(y, oof)
    order = candidates(cfg)
    best = max(order, key=lambda c: (scores[name_of(c)], -order.index(c)))
    return best, scores


class _Rec:  # what assign_folds reads of a record
    def __init__(self, image_id, patient_id, label):
        self.image_id, self.patient_id, self.label = image_id, patient_id, label


def run_fold(feats, y, women, train: np.ndarray, k: int, cfg: Config) -> dict:
    """Fold k: choose on the training rows, fit on them, score the held-out rows (every candidate too).
    `y` must hold labels for the training rows only; what it holds for the held-out rows is never read."""
    t0 = time.perf_counter()
    tr = np.flatnonzero(train)
    te = np.flatnonzero(~train)
    chosen, inner = choose_candidate(feats[tr], y[tr], women[tr], cfg)
    held_feats = feats[te]
    scored, heads = {}, {}
    for cand in candidates(cfg):
        heads[name_of(cand)] = fit_mil_head(feats[tr], y[tr], head_spec(cfg, cand))
        scored[name_of(cand)] = image_logits(heads[name_of(cand)], held_feats).tolist()
    return {"fold": k, "chosen": {"top_fraction": chosen[0], "weight_decay": chosen[1]}, "inner_auroc": inner,
            "held_out_rows": te.tolist(), "logits": scored[name_of(chosen)], "candidates": scored,
            "head": heads[name_of(chosen)].to_dict(),  # the fold's model: its out-of-fold saliency maps
            "seconds": round(time.perf_counter() - t0, 1)}


def fold_file(out, k: int) -> Path:
    return Path(out) / "folds" / f"fold{k}" / "DONE.json"


def cross_fitted(y, scores, fold, women) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Each fold's probabilities, threshold and base rate from a calibration and a threshold chosen on the
    other folds' out-of-fold scores only."""
    return fitted_per_fold(y, scores, fold, women, {int(k): scores for k in np.unique(fold)})


def fitted_per_fold(y, scores, fold, women, choice_scores: dict) -> tuple:
    """Fold k's calibration and threshold chosen on choice_scores[k] of the other folds' rows, applied to its own
    `scores`: (probabilities, thresholds, base rates, the choices)."""
    n = len(y)
    prob, thr, base = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    chosen = {}
    for k in np.unique(fold):
        other, held = fold != k, fold == k
        s_other = choice_scores[int(k)][other]
        cal = choose_calibration(s_other, y[other], _groups(women[other]))
        t, _ = metrics.best_threshold(y[other], apply_calibration(cal, s_other), beta=BETA,
                                      min_specificity=MIN_SPECIFICITY)
        prob[held], thr[held], base[held] = apply_calibration(cal, scores[held]), t, y[other].mean()
        chosen[str(int(k))] = {"calibration": cal["method"], "probability_threshold": float(t)}
    return prob, thr, base, chosen


def nested_fitted(feats, y, women, fold, logits, cfg: Config, cache_dir=None, progress: bool = False):
    """As cross_fitted, fully nested: fold k's calibration and threshold are chosen on scores of the other folds
    made by heads that never saw fold k. For each pair (k, j != k) a head is chosen (inner CV) and fitted on the
    folds other than k and j and scores fold j. cross_fitted instead reads fold j's out-of-fold scores, made by
    fold j's model, which was trained on fold k: a second-order leak of fold k's labels into its own threshold.
    Costs k(k-1) extra choices and fits; each pair is cached in `cache_dir` (resumable)."""
    inner = {}
    ks = [int(k) for k in np.unique(fold)]
    for k in ks:
        scores = np.full(len(y), np.nan)
        for j in (j for j in ks if j != k):
            path = Path(cache_dir) / f"k{k}_j{j}.json" if cache_dir else None
            if path is not None and path.is_file():
                scores[fold == j] = json.loads(path.read_text())["logits"]
                continue
            train = (fold != k) & (fold != j)
            cand, _ = choose_candidate(feats[train], y[train], women[train], cfg)
            head = fit_mil_head(feats[train], y[train], head_spec(cfg, cand))
            scores[fold == j] = image_logits(head, feats[fold == j])
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(path, json.dumps({"chosen": list(cand), "logits": scores[fold == j].tolist()}))
            if progress:
                print(f"nested: fold {k}, scores of fold {j} by a head chose {name_of(cand)}", flush=True)
        inner[k] = sigmoid(scores)
    return fitted_per_fold(y, sigmoid(np.asarray(logits, float)), fold, women, inner)


def _groups(women, n: int = CALIBRATION_GROUPS) -> np.ndarray:
    """Women hashed into n groups for the inner cross-fitting of calibration choices (stable across runs)."""
    import zlib

    return np.array([zlib.crc32(str(w).encode()) % n for w in women])


def oof_figures(y, logits, fold, women, n_boot: int, seed: int) -> tuple[dict, np.ndarray, dict]:
    """The out-of-fold figures of one set of image logits (any model scored on these folds): cross-fitted
    calibration and threshold, their figures with CIs over women, auROC per fold and pooled, sensitivity at
    specificity 0.8. Returns (figures, the cross-fitted probabilities, each fold's calibration and threshold)."""
    logits = np.asarray(logits, float)
    prob, thr, base, per_fold_choice = cross_fitted(y, sigmoid(logits), fold, women)
    per_fold = {str(int(k)): {"n": int((fold == k).sum()), "auroc": metrics.auroc(y[fold == k], logits[fold == k])}
                for k in np.unique(fold)}
    per_fold["mean_auroc"] = float(np.mean([v["auroc"] for v in per_fold.values()]))
    figures = {
        "cross_fitted": metrics.bootstrap_table(y, prob, women, thr, BETA, n_boot, seed),
        "cross_fitted_probability": calibration_report(y, prob, base, women, n_boot, seed),
        "logit_auroc": metrics.bootstrap_ci(metrics.auroc, y, logits, women, n=n_boot, seed=seed),
        "sensitivity_at_specificity_0.8": sensitivity_at_specificity(y, logits, MIN_SPECIFICITY),
        "per_fold": per_fold,
        "operating_curve": operating_curve(y, prob),
    }
    return figures, prob, per_fold_choice


def summarize(records, y, women, fold, folds_done: list[dict], cfg: Config, n_boot: int = 1000) -> dict:
    n = len(y)
    logits = np.full(n, np.nan)
    per_candidate = {name_of(c): np.full(n, np.nan) for c in candidates(cfg)}
    for d in folds_done:
        rows = np.array(d["held_out_rows"])
        logits[rows] = d["logits"]
        for f, v in d["candidates"].items():
            per_candidate[f][rows] = v
    seed = cfg.run.seed
    scores = sigmoid(logits)  # the calibration maps take scores in [0, 1] (Platt works on their logit)
    figures, prob, per_fold_choice = oof_figures(y, logits, fold, women, n_boot, seed)
    for d in folds_done:
        figures["per_fold"][str(d["fold"])]["chosen"] = name_of(tuple(d["chosen"].values()))
    figures["every_candidate (held-out folds, not used to choose)"] = {
        f: {"auroc": metrics.auroc(y, v), "aupr": metrics.aupr(y, v),
            "sensitivity_at_specificity_0.8": sensitivity_at_specificity(y, v, MIN_SPECIFICITY)}
        for f, v in per_candidate.items()}
    # What ships: calibration and threshold chosen on every out-of-fold logit.
    calibration = choose_calibration(scores, y, _groups(women))
    p_all = apply_calibration(calibration, scores)
    threshold, _ = metrics.best_threshold(y, p_all, beta=BETA, min_specificity=MIN_SPECIFICITY)
    # the final fit's setting: the one the folds chose most often (ties: the earlier candidate)
    chosen = [tuple(d["chosen"].values()) for d in folds_done]
    final = max(candidates(cfg), key=lambda c: (chosen.count(c), -candidates(cfg).index(c)))
    return {"source": f"{len(folds_done)}-fold woman-level cross-validation, out-of-fold predictions",
            "n_images": int(n), "n_positive": int(y.sum()), "n_women": int(len(set(women.tolist()))),
            "beta": BETA, "min_specificity": MIN_SPECIFICITY,
            "settings": {"top_fraction": final[0], "weight_decay": final[1], "grid": cfg.global_branch.grid,
                         "size": cfg.global_branch.size, "polarity": cfg.global_branch.polarity,
                         "layer": cfg.global_branch.layer, "backbone_weights": cfg.global_branch.backbone_weights,
                         "calibration": calibration,
                         "probability_threshold": float(threshold),
                         # the same operating point on the score (sigmoid of the logit) the results carry
                         "score_threshold": score_threshold(scores, p_all, threshold)},
            "per_fold_choices": per_fold_choice, "figures": figures,
            "oof": {"image_id": [r.image_id for r in records], "fold": fold.tolist(), "label": y.tolist(),
                    "woman": woman_index(women),  # for bootstraps over women; an index, not the dataset's id
                    "logit": logits.tolist(), "probability_cross_fitted": prob.tolist()}}


def score_threshold(scores, probabilities, probability_threshold: float) -> float:
    """The lowest score whose calibrated probability reaches the threshold: score >= it <=> called malignant
    (the calibration maps are non-decreasing)."""
    above = np.asarray(scores)[np.asarray(probabilities) >= probability_threshold]
    return float(above.min()) if len(above) else float(np.nextafter(np.max(scores), np.inf))


def woman_index(women) -> list[int]:
    """Each woman as 0, 1, 2, .. in order of first appearance."""
    seen: dict = {}
    return [seen.setdefault(w, len(seen)) for w in women]


def sensitivity_at_specificity(y, scores, specificity: float) -> float:
    """Sensitivity at the strictest threshold that still keeps this specificity (ties counted as positives)."""
    y, s = np.asarray(y), np.asarray(scores, float)
    negatives = np.sort(s[y == 0])
    t = negatives[int(np.ceil(specificity * len(negatives))) - 1] if len(negatives) else -np.inf
    return float(np.mean(s[y == 1] > t))


def start_run_folder(cfg: Config, out, only_fold: int | None) -> tuple[Path, list, dict[str, int]]:
    """The run folder made, with its resolved config and folds.csv: (folder, records, {image_id: fold})."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    records = dataset_records(cfg)
    k = cfg.global_branch.folds
    if only_fold is not None and not 0 <= only_fold < k:
        raise MammoError(f"--fold {only_fold}: expected 0 to {k - 1}")
    folds = outer_folds(records, cfg)
    write_folds_file(out / "folds.csv", records, folds)
    return out, records, folds


def run_digital_cv(cfg: Config, out, *, only_fold: int | None = None, progress: bool = True,
                   extractor=None, feature_cache=None, n_boot: int = 1000) -> dict | None:
    """Run (or resume) the folds; with every fold done, write summary.json and return it (else None)."""
    out, records, folds = start_run_folder(cfg, out, only_fold)
    k = cfg.global_branch.folds
    feats = pool_grid(extract_features(records, cfg, feature_cache or out / "features", progress=progress,
                                       extractor=extractor), cfg.global_branch.grid)
    y = np.array([r.label for r in records])
    women = np.array([r.patient_id for r in records])
    fold = np.array([folds[r.image_id] for r in records])
    for j in range(k) if only_fold is None else [only_fold]:
        path = fold_file(out, j)
        if path.is_file():
            continue
        labels = np.where(fold != j, y, -1)  # the held-out fold's labels are not handed over at all
        result = run_fold(feats, labels, women, fold != j, j, cfg)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(result))
        if progress:
            print(f"fold {j}: chose {result['chosen']} (inner auROC {result['inner_auroc']}), "
                  f"held-out auROC {metrics.auroc(y[fold == j], np.array(result['logits'])):.3f}, "
                  f"{result['seconds']} s", flush=True)
    done = [json.loads(fold_file(out, j).read_text()) for j in range(k) if fold_file(out, j).is_file()]
    if len(done) < k:
        return None
    summary = summarize(records, y, women, fold, done, cfg, n_boot)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    from pipeline.digital.report import contact_sheet, write_report

    write_report(summary, out, n_boot=min(n_boot, 300), seed=cfg.run.seed)
    contact_sheet(records, feats, done, summary, out / "evaluation" / "contact_sheet.png")
    return summary
