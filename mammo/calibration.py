"""Calibration maps: a score in [0, 1] that ranks images (or boxes) -> a probability a reader can take at its word.

A map is a small dict of plain JSON numbers (it ships in pipeline.json; nothing is unpickled):

- {"method": "identity"}: the score already is a probability (e.g. the stacker's logistic output).
- {"method": "platt", "a": a, "b": b}: p = sigmoid(a * logit(s) + b). On logit(s), not s: rank scores such as
  d * m crowd near 0, where a logistic in s itself cannot bend. a > 0 keeps it strictly increasing, so ranks
  (auROC, auPR) and every decision by a threshold on the score are the same on the probability.
- {"method": "isotonic", "x": [...], "y": [...]}: pool-adjacent-violators, stored as one knot per block (its
  mean score, its observed rate), linear between knots, flat beyond the ends. Block rates are kept inside
  [1/(2n), 1 - 1/(2n)]: n labelled images cannot support a certainty.

`choose_calibration` picks the method by the Brier score of inner cross-fitted predictions (each group of rows,
e.g. a cross-validation fold, is predicted by a map fitted on the others), then fits it on all rows: the choice
is out of fold, like every other setting. `ece`, `brier` and `reliability` measure the result.
"""
from __future__ import annotations

import numpy as np

METHODS = ("identity", "platt", "isotonic")
_EPS = 1e-6  # scores are clipped to [EPS, 1 - EPS] before the logit: a rank score of exactly 0 or 1 is common
ECE_BINS = 10  # equal-width bins over [0, 1], as in Guo et al. 2017 ("On calibration of modern neural networks")


def _logit(s) -> np.ndarray:
    s = np.clip(np.asarray(s, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(s) - np.log1p(-s)


def _sigmoid(z) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


def _labels(scores, y) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if s.shape != y.shape:
        raise ValueError(f"{len(s)} scores for {len(y)} labels")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return s, y


def fit_platt(scores, y, l2: float = 1e-3, iterations: int = 100) -> dict:
    """Logistic regression of y on logit(score) by Newton steps (a tiny ridge keeps separable data finite).
    A fit whose slope is not positive (scores that do not rank at all) is refused: ValueError."""
    s, y = _labels(scores, y)
    if len(np.unique(y)) < 2:
        raise ValueError("Platt scaling needs both classes")
    x = np.c_[_logit(s), np.ones(len(s))]
    prior = np.array([1.0, 0.0])  # the ridge shrinks towards the identity map, not towards a constant

    def loss(w):
        z = x @ w
        return float(np.sum(np.logaddexp(0, z) - y * z) + 0.5 * l2 * np.sum((w - prior) ** 2))

    w = np.array([0.0, float(_logit(y.mean()))])  # the base rate: plain Newton from the identity can overshoot
    for _ in range(iterations):
        p = _sigmoid(x @ w)
        grad = x.T @ (p - y) + l2 * (w - prior)
        hess = x.T @ (x * (p * (1 - p))[:, None]) + l2 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        t, before = 1.0, loss(w)
        while loss(w - t * step) > before and t > 1e-8:  # damped: the loss never goes up
            t /= 2
        w = w - t * step
        if np.abs(t * step).max() < 1e-10:
            break
    if not w[0] > 0:
        raise ValueError(f"Platt slope {w[0]:.3g} <= 0: the scores do not rank the labels")
    return {"method": "platt", "a": float(w[0]), "b": float(w[1])}


def fit_isotonic(scores, y) -> dict:
    """Pool-adjacent-violators on the scores sorted ascending (ties pooled first); one knot per block."""
    s, y = _labels(scores, y)
    if len(s) == 0:
        raise ValueError("isotonic calibration needs data")
    order = np.argsort(s, kind="stable")
    s, y = s[order], y[order]
    values, first = np.unique(s, return_index=True)
    sums = np.add.reduceat(y, first)
    counts = np.diff(np.r_[first, len(s)]).astype(np.float64)
    blocks = [[v, t, c] for v, t, c in zip(values * counts, sums, counts)]  # [score sum, label sum, count]
    merged: list[list[float]] = []
    for block in blocks:
        merged.append(block)
        while len(merged) > 1 and merged[-2][1] / merged[-2][2] >= merged[-1][1] / merged[-1][2]:
            last = merged.pop()
            merged[-1] = [a + b for a, b in zip(merged[-1], last)]
    floor = 1.0 / (2 * len(s))
    return {"method": "isotonic", "x": [float(b[0] / b[2]) for b in merged],
            "y": [float(np.clip(b[1] / b[2], floor, 1 - floor)) for b in merged]}


def apply_calibration(cal: dict, scores) -> np.ndarray:
    """Probabilities of `scores` under a map (any of METHODS); a malformed map is a ValueError."""
    s = np.asarray(scores, dtype=np.float64)
    method = cal.get("method")
    if method == "identity":
        return np.clip(s, 0.0, 1.0)
    if method == "platt":
        return _sigmoid(float(cal["a"]) * _logit(s) + float(cal["b"]))
    if method == "isotonic":
        return np.interp(s, np.asarray(cal["x"], float), np.asarray(cal["y"], float))
    raise ValueError(f"calibration method {method!r}: expected one of {METHODS}")


def check_calibration(cal: dict) -> None:
    """A map read from a file: its method known, its numbers finite, increasing where they must be."""
    method = cal.get("method") if isinstance(cal, dict) else None
    if method not in METHODS:
        raise ValueError(f"calibration method {method!r}: expected one of {METHODS}")
    if method == "platt":
        a, b = float(cal["a"]), float(cal["b"])
        if not (np.isfinite(a) and np.isfinite(b) and a > 0):
            raise ValueError(f"Platt map a={a}, b={b}: expected finite numbers, a > 0")
    if method == "isotonic":
        x, y = np.asarray(cal["x"], float), np.asarray(cal["y"], float)
        if not (1 <= len(x) == len(y) <= 100_000 and np.isfinite(x).all() and np.isfinite(y).all()
                and np.all(np.diff(x) > 0) and np.all(np.diff(y) >= 0) and y.min() >= 0 and y.max() <= 1):
            raise ValueError("isotonic map: expected 1 to 100000 knots, x strictly increasing, y non-decreasing "
                             "in [0, 1]")


def fit_calibration(method: str, scores, y) -> dict:
    if method == "identity":
        return {"method": "identity"}
    if method == "platt":
        return fit_platt(scores, y)
    if method == "isotonic":
        return fit_isotonic(scores, y)
    raise ValueError(f"calibration method {method!r}: expected one of {METHODS}")


def cross_fitted(method: str, scores, y, groups) -> np.ndarray:
    """Each group's probabilities from a map fitted on the other groups (NaN where that fit is impossible)."""
    s, y = _labels(scores, y)
    groups = np.asarray(groups).ravel()
    out = np.full(len(s), np.nan)
    for g in np.unique(groups):
        rest = groups != g
        try:
            out[~rest] = apply_calibration(fit_calibration(method, s[rest], y[rest]), s[~rest])
        except ValueError:
            pass
    return out


def choose_calibration(scores, y, groups, methods=METHODS) -> dict:
    """The method with the lowest Brier score on inner cross-fitted predictions over `groups` (ties: the
    earlier, simpler method), fitted on all rows; the map records how it was chosen."""
    s, y = _labels(scores, y)
    briers = {}
    for method in methods:
        p = cross_fitted(method, s, y, groups)
        if not np.isnan(p).any():
            briers[method] = brier(y, p)
    if not briers:
        raise ValueError("no calibration method could be fitted on every inner fold (one class only?)")
    best = min(briers, key=lambda m: (briers[m], methods.index(m)))
    cal = fit_calibration(best, s, y)
    return {**cal, "chosen_by": {"inner_brier": briers, "n": int(len(s)), "n_groups": int(len(np.unique(groups)))}}


# --- how good a probability is ----------------------------------------------------------------------------
def brier(y, p) -> float:
    y, p = np.asarray(y, float).ravel(), np.asarray(p, float).ravel()
    return float(np.mean((p - y) ** 2)) if len(y) else float("nan")


def reliability(y, p, bins: int = ECE_BINS) -> dict:
    """Per equal-width bin of the probability: count, mean probability, observed rate (empty bins left out)."""
    y, p = np.asarray(y, float).ravel(), np.asarray(p, float).ravel()
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)  # p == 1 joins the last bin
    rows = [(int(b), int((index == b).sum()), float(p[index == b].mean()), float(y[index == b].mean()))
            for b in range(bins) if (index == b).any()]
    return {"edges": edges.tolist(), "bin": [r[0] for r in rows], "n": [r[1] for r in rows],
            "mean_probability": [r[2] for r in rows], "observed_rate": [r[3] for r in rows]}


def ece(y, p, bins: int = ECE_BINS) -> float:
    """Expected calibration error: sum over bins of (share of rows) x |mean probability - observed rate|."""
    table = reliability(y, p, bins)
    n = sum(table["n"])
    if not n:
        return float("nan")
    return float(sum(k / n * abs(m - o) for k, m, o in
                     zip(table["n"], table["mean_probability"], table["observed_rate"])))


def calibration_report(y, p, base_rate, groups, n_boot: int = 1000, seed: int = 0) -> dict:
    """How good probabilities are: expected calibration error and Brier score (the base-rate predictor's Brier
    beside it: `base_rate` per row), auROC and auPR of the probability, each with its patient-bootstrap 95 % CI
    (`groups`: patient ids), and the reliability table a plot draws."""
    from mammo import metrics

    def ci(fn, values):
        value, low, high = metrics.bootstrap_ci(fn, y, values, groups, n=n_boot, seed=seed)
        return {"value": value, "low": low, "high": high}

    return {"ece": ci(ece, p), "brier": ci(brier, p), "brier_base_rate": ci(brier, base_rate),
            "auroc": ci(metrics.auroc, p), "aupr": ci(metrics.aupr, p), "reliability": reliability(y, p)}
