"""Binary classification metrics (areas and curve points from scikit-learn), shared by the classifier, the pipeline and the tuning stage.

`y` are 0/1 labels, `p` scores (higher = more likely positive). Metrics that are undefined for the data (auROC
with one class only, precision without any positive call) return nan rather than a made-up number, so that a
report shows the gap. `bootstrap_ci` resamples PATIENTS, not rows: a woman's images are correlated.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np


def _check(y, p) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(int).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {p.shape[0]}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return y, p


def auroc(y, p) -> float:
    """Area under the ROC curve (scikit-learn; ties count 1/2). nan with one class only."""
    y, p = _check(y, p)
    if len(y) == 0 or y.min() == y.max():
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p))


def aupr(y, p) -> float:
    """Average precision (scikit-learn): sum over distinct thresholds of (recall step) x precision, no
    interpolation, which would be optimistic. nan without a positive."""
    y, p = _check(y, p)
    if y.sum() == 0:
        return float("nan")
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, p))


def roc_points(y, p) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) with one point per distinct score: tied scores are one step
    (a diagonal segment), so the area under these points (trapezoids) is `auroc` exactly."""
    from sklearn.metrics import roc_curve

    y, p = _check(y, p)
    fpr, tpr, _ = roc_curve(y, p, drop_intermediate=False)
    return fpr, tpr


def pr_points(y, p) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) by increasing recall, one point per distinct score, starting at (0, 1). Drawn as
    steps (`drawstyle='steps-pre'`: each precision holds over the recall gained at its threshold), the area is
    `aupr` exactly."""
    from sklearn.metrics import precision_recall_curve

    y, p = _check(y, p)
    precision, recall, _ = precision_recall_curve(y, p, drop_intermediate=False)
    return recall[::-1], precision[::-1]


def confusion(y, p, threshold: float) -> dict:
    """Counts at `threshold` (score >= threshold is a positive call)."""
    y, p = _check(y, p)
    call = p >= threshold
    return {"tp": int((call & (y == 1)).sum()), "fp": int((call & (y == 0)).sum()),
            "tn": int((~call & (y == 0)).sum()), "fn": int((~call & (y == 1)).sum())}


def sensitivity_specificity(y, p, threshold: float) -> tuple[float, float]:
    c = confusion(y, p, threshold)
    sens = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else float("nan")
    spec = c["tn"] / (c["tn"] + c["fp"]) if c["tn"] + c["fp"] else float("nan")
    return float(sens), float(spec)


def fbeta(y, p, threshold: float, beta: float = 2.0) -> float:
    """F-beta at a threshold; beta = 2 weighs recall (missed cancers) four times as much as precision.
    0 when nothing is called positive or no positive is found (sklearn's zero_division=0)."""
    c = confusion(y, p, threshold)
    b2 = beta * beta
    denom = (1 + b2) * c["tp"] + b2 * c["fn"] + c["fp"]
    return float((1 + b2) * c["tp"] / denom) if denom and c["tp"] else 0.0


def best_threshold(y, p, beta: float = 2.0, min_specificity: float = 0.0) -> tuple[float, float]:
    """(threshold, F-beta) maximizing F-beta over the observed scores (fit on validation, apply elsewhere),
    among the thresholds whose specificity is at least `min_specificity`. Ties go to the highest threshold,
    i.e. the fewest positive calls.

    Why the floor: with few positives, F2 can peak at 'call everything malignant' (recall 1, precision = the
    prevalence), a useless operating point; a specificity floor rules it out. When even the highest score misses
    the floor (negatives tied at the top), the threshold goes just above it: nothing is called positive."""
    y, p = _check(y, p)
    if len(p) == 0:
        return 0.5, float("nan")
    best_t, best_f = float(p.max()), -1.0
    for t in np.unique(p)[::-1]:
        _, spec = sensitivity_specificity(y, p, float(t))
        if spec < min_specificity:  # candidates go down in threshold, so specificity only falls from here
            break
        f = fbeta(y, p, float(t), beta)
        if f > best_f:
            best_t, best_f = float(t), f
    if best_f < 0:  # even the highest threshold misses the floor: the strictest operating point there is
        best_t = float(np.nextafter(p.max(), np.inf))
        best_f = fbeta(y, p, best_t, beta)
    return best_t, best_f


def summary(y, p, threshold: float, beta: float = 2.0) -> dict:
    """The usual set at once: auroc, aupr, fbeta, sensitivity, specificity, counts."""
    y_, _ = _check(y, p)
    sens, spec = sensitivity_specificity(y, p, threshold)
    return {"auroc": auroc(y, p), "aupr": aupr(y, p), f"f{beta:g}": fbeta(y, p, threshold, beta),
            "sensitivity": sens, "specificity": spec, "threshold": float(threshold),
            "n": int(len(y_)), "n_positive": int(y_.sum())}


def bootstrap_ci(metric: Callable, y, p, groups, n: int = 1000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float, float]:
    """(point estimate, low, high) of `metric(y, p)` with a percentile CI from resampling `groups` (patient
    ids) with replacement; every row of a drawn patient comes along. Resamples where the metric is undefined
    (e.g. one class only) are skipped."""
    y, p = _check(y, p)
    groups = np.asarray(groups).ravel()
    if groups.shape != y.shape:
        raise ValueError("groups must have one entry per row")
    if len(y) == 0:  # nothing to judge (say, lesion level with no true box and no prediction): undefined
        return float("nan"), float("nan"), float("nan")
    ids, inverse = np.unique(groups, return_inverse=True)
    rows_of = [np.flatnonzero(inverse == k) for k in range(len(ids))]
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n):
        draw = rng.integers(0, len(ids), len(ids))
        rows = np.concatenate([rows_of[k] for k in draw])
        v = metric(y[rows], p[rows])
        if np.isfinite(v):
            stats.append(v)
    point = float(metric(y, p))
    if not stats:
        return point, float("nan"), float("nan")
    lo, hi = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return point, float(lo), float(hi)


def format_ci(entry, signed: bool = False) -> str:
    """'value [low, high]' of a bootstrap CI, given as bootstrap_table's dict or bootstrap_ci's (value, low, high);
    'n/a' when the value is missing or undefined, the value alone when its CI is (too few patients of one class).
    `signed`: every number with its sign (differences)."""
    if isinstance(entry, dict):
        entry = entry["value"], entry["low"], entry["high"]
    if not isinstance(entry, (list, tuple)) or not math.isfinite(entry[0]):
        return "n/a"
    value, low, high = entry
    fmt = "+.3f" if signed else ".3f"
    if not math.isfinite(low):
        return f"{value:{fmt}}"
    return f"{value:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def bootstrap_table(y, p, groups, threshold, beta: float = 2.0, n: int = 1000, seed: int = 0) -> dict:
    """auroc, aupr, F-beta, sensitivity and specificity, each {value, low, high} with its patient-bootstrap 95 %
    CI, and the confusion counts. `threshold` is one number, or one per row (cross-validation: each fold's own,
    chosen on the other folds): then the calls p >= threshold are fixed first and the threshold metrics
    resample those calls, while the ranking metrics use the pooled scores."""
    p = np.asarray(p, dtype=np.float64)
    per_row = np.ndim(threshold) > 0
    calls, t = ((p >= np.asarray(threshold, float)).astype(float), 0.5) if per_row else (p, threshold)
    fns = {
        "auroc": (auroc, p),
        "aupr": (aupr, p),
        f"f{beta:g}": (lambda y_, p_: fbeta(y_, p_, t, beta), calls),
        "sensitivity": (lambda y_, p_: sensitivity_specificity(y_, p_, t)[0], calls),
        "specificity": (lambda y_, p_: sensitivity_specificity(y_, p_, t)[1], calls),
    }
    out = {}
    for name, (fn, values) in fns.items():
        value, low, high = bootstrap_ci(fn, y, values, groups, n=n, seed=seed)
        out[name] = {"value": value, "low": low, "high": high}
    out["confusion"] = confusion(y, calls, t) if len(p) else {}
    return out
