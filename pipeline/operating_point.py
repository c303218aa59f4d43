"""Operating settings chosen on out-of-fold (OOF) predictions: detector conf and boxes kept, the image-score rule
(with the stacker's coefficients), and the threshold (max F-beta under a specificity floor).

`choose_operating_point` does two things with the OOF predictions of a k-fold cross-validation:
- it chooses the settings on ALL of them: these ship with models trained on all development images;
- it measures what that choice is worth on new patients by cross-fitting: for each fold k, the same chooser sees
  only the other folds, and its settings score fold k. Those pooled figures are the honest OOF figures; the
  figures of the all-OOF choice on the same OOF are optimistic and labelled so.

A setting chosen for fold k must never read fold k's labels. The chooser gets a subset without fold k, and
labels are only handed out by `OofSet.labels()`, which refuses (LabelLeak) while that fold is sealed: a chooser
that kept a reference to the full set is caught, not trusted.
"""
from __future__ import annotations

import contextvars
import itertools
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from mammo import metrics
from mammo.calibration import apply_calibration, calibration_report, check_calibration, choose_calibration
from mammo.errors import ConfigError, MammoError
from mammo.config import AGGREGATES, MAX_PREDICT_BOXES
from pipeline.results import STACKER_FEATURES, aggregate_scores, check_aggregate, image_features

CONFS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5)  # candidate detector.conf (only those >= the predictions' own conf)
MAX_DETS = (1, 2, 3, 5, 10, 20)  # candidate detector.max_det (only those <= the predictions' own max_det)
CALIBRATION_GROUPS = 5  # inner patient groups on which the calibration method is chosen out of fold
CURVE_STEPS = 100  # the operating curve shipped for the review app's slider: probability thresholds 0, 0.01 .. 1

_SEALED: contextvars.ContextVar[frozenset] = contextvars.ContextVar("sealed_folds", default=frozenset())


class LabelLeak(MammoError):
    """A setting being chosen for a fold read that fold's labels."""


@contextmanager
def sealed(*folds: int):
    """While inside, labels of these folds cannot be read."""
    token = _SEALED.set(_SEALED.get() | frozenset(folds))
    try:
        yield
    finally:
        _SEALED.reset(token)


@dataclass(frozen=True)
class OofImage:
    image_id: str
    patient_id: str  # for patient-level bootstrap only; never exported
    fold: int
    label: int
    lesions: tuple  # LesionResult-like (detector_score, malignancy, box), as predicted (low conf, many boxes)


@dataclass
class OofSet:
    """OOF predictions of one cross-validation; `conf` and `max_det` are what the fold predictions were made
    with (boxes can be re-filtered to a higher conf and fewer boxes, never the other way)."""

    images: list[OofImage]
    k: int
    conf: float
    max_det: int

    @property
    def folds(self) -> list[int]:
        return sorted({im.fold for im in self.images})

    def subset(self, keep) -> "OofSet":
        return OofSet([im for im in self.images if keep(im.fold)], self.k, self.conf, self.max_det)

    def without(self, fold: int) -> "OofSet":
        return self.subset(lambda f: f != fold)

    def only(self, fold: int) -> "OofSet":
        return self.subset(lambda f: f == fold)

    def labels(self) -> np.ndarray:
        leaked = _SEALED.get() & {im.fold for im in self.images}
        if leaked:
            raise LabelLeak(f"labels of fold(s) {sorted(leaked)} read while settings for them are being chosen: "
                            f"a setting chosen for a fold must not see that fold's labels")
        return np.array([im.label for im in self.images], dtype=int)

    def refiltered(self, conf: float, max_det: int) -> list[tuple[list, object]]:
        """Each image's boxes as the detector hands them on at (conf, max_det): (kept, below_conf), the kept boxes
        highest score first and, when none reaches conf, the strongest box under it (else None)."""
        out = []
        for im in self.images:
            ranked = sorted(im.lesions, key=lambda l: -l.detector_score)
            kept = [l for l in ranked if l.detector_score >= conf][:max_det]
            out.append((kept, None if kept or not ranked else ranked[0]))
        return out

    def kept(self, conf: float, max_det: int) -> list[list]:
        return [kept for kept, _ in self.refiltered(conf, max_det)]

    def below(self, conf: float) -> list:
        return [below for _, below in self.refiltered(conf, 1)]

    def scores(self, conf: float, max_det: int, rule: str, stacker: dict | None = None) -> np.ndarray:
        """Image scores under these settings, as `infer` computes them (reads no label)."""
        return _scores(self.refiltered(conf, max_det), rule, stacker)


# --- the stacker: a small logistic regression, plain numbers in and out -----------------------------------
def fit_stacker(features, y, l2: float = 1.0, iterations: int = 50) -> dict:
    """L2-penalised logistic regression by Newton steps on standardised features (intercept not penalised).
    Returns the JSON-able coefficients `pipeline.results.stacker_score` reads."""
    x = np.asarray(features, dtype=np.float64).reshape(-1, len(STACKER_FEATURES))
    y = np.asarray(y, dtype=np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0  # a constant feature: coefficient stays ~0 under the penalty
    z = np.c_[np.ones(len(x)), (x - mean) / scale]
    w = np.zeros(z.shape[1])
    penalty = np.diag([0.0] + [l2] * (z.shape[1] - 1))
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -50, 50)))
        grad = z.T @ (p - y) + penalty @ w
        hess = z.T @ (z * (p * (1 - p))[:, None]) + penalty + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return {"features": list(STACKER_FEATURES), "mean": mean.tolist(), "scale": scale.tolist(),
            "coef": w[1:].tolist(), "intercept": float(w[0]), "l2": l2}


def _scores(refiltered, rule: str, stacker: dict | None) -> np.ndarray:
    return np.array([aggregate_scores(kept, rule, stacker, below) for kept, below in refiltered], dtype=np.float64)


# Where settings are written, their figures on the very images they were chosen on carry this label: they are
# optimistic, never a measure of how the settings do on new images (the cross-fitted figures are).
IN_SAMPLE = "figures_where_chosen (in-sample, optimistic)"


@dataclass
class Settings:
    conf: float
    max_det: int
    aggregate: str
    threshold: float
    stacker: dict | None = None
    selection: dict = field(default_factory=dict)  # the chosen candidate's figures on the data it was chosen on
    # image score -> P(malignant) (mammo.calibration), fitted on the same labels the settings were chosen on;
    # None when it could not be fitted (one class only)
    calibration: dict | None = None
    rules_considered: tuple = AGGREGATES  # the stacker drops out where it cannot be judged fairly

    def scores(self, oof: OofSet) -> np.ndarray:
        """Image scores of `oof` under these settings (reads no label)."""
        return oof.scores(self.conf, self.max_det, self.aggregate, self.stacker)

    def probabilities(self, oof: OofSet) -> np.ndarray:
        """The calibrated P(malignant) of each image of `oof` (NaN without a calibration; reads no label)."""
        scores = self.scores(oof)
        return apply_calibration(self.calibration, scores) if self.calibration else np.full(len(scores), np.nan)

    @property
    def probability_threshold(self) -> float | None:
        """The threshold stated on the probability. The call itself stays `score >= threshold`: under a
        strictly increasing map (Platt) it is the same call as probability >= this."""
        return float(apply_calibration(self.calibration, [self.threshold])[0]) if self.calibration else None

    def to_dict(self) -> dict:
        return {"detector.conf": self.conf, "detector.max_det": self.max_det, "pipeline.aggregate": self.aggregate,
                "threshold": self.threshold, "calibration": self.calibration,
                "probability_threshold": self.probability_threshold, "stacker": self.stacker,
                IN_SAMPLE: self.selection}

    @classmethod
    def from_dict(cls, d: dict) -> "Settings":
        """The settings `to_dict` wrote (the probability threshold is derived, not read)."""
        calibration = d.get("calibration") if isinstance(d.get("calibration"), dict) else None
        return cls(d["detector.conf"], d["detector.max_det"], d["pipeline.aggregate"], d["threshold"],
                   d.get("stacker"), d.get(IN_SAMPLE, {}), calibration)


def patient_groups(oof: OofSet, n: int = CALIBRATION_GROUPS) -> np.ndarray:
    """Each image's inner group for choosing the calibration method: patients dealt round-robin in sorted
    order, so a woman's images stay together (patients, not folds: a 2-fold run's training set is one fold)."""
    patients = sorted({im.patient_id for im in oof.images})
    group = {p: i % n for i, p in enumerate(patients)}
    return np.array([group[im.patient_id] for im in oof.images], dtype=int)


def candidate_grid(oof: OofSet, confs=CONFS, max_dets=MAX_DETS, rules=AGGREGATES):
    confs = sorted({c for c in confs if c >= oof.conf - 1e-12} | {oof.conf})
    max_dets = sorted({m for m in max_dets if m <= oof.max_det} | {oof.max_det})
    return list(itertools.product(confs, max_dets, rules))


def _stacker_scores(train: OofSet, refiltered, y) -> tuple[np.ndarray, dict]:
    """The stacker judged fairly beside the fixed rules: its scores on each fold come from a fit on the
    other folds of `train` (inner cross-fitting); returns those scores and the fit on all of `train`.
    `refiltered` is `train.refiltered(conf, max_det)` of the candidate."""
    x = np.array([image_features(kept, below) for kept, below in refiltered])
    folds = np.array([im.fold for im in train.images])
    inner = np.full(len(y), np.nan)
    for f in np.unique(folds):
        rest = folds != f
        if len(np.unique(y[rest])) < 2:
            continue
        inner[~rest] = _scores([refiltered[i] for i in np.flatnonzero(~rest)], "stacker",
                               fit_stacker(x[rest], y[rest]))
    if np.isnan(inner).any() or len(np.unique(y)) < 2:  # one fold only, or one class: no fair estimate
        return np.full(len(y), np.nan), None
    return inner, fit_stacker(x, y)


def choose_settings(train: OofSet, *, beta: float = 2.0, min_specificity: float = 0.5, grid=None,
                    rules=AGGREGATES) -> Settings:
    """The candidate (conf, max_det, rule) with the best image auPR on `train` (ties: auROC, then fewer boxes,
    then LOWER conf), and its threshold: max F-beta among those keeping specificity >= min_specificity; then the
    calibration of its scores to P(malignant), its method chosen on inner patient groups (mammo.calibration).
    `rules` limits the image-score rules; the settings record which rules could be judged (`rules_considered`).

    Why lower conf on a tie: an image without a kept box is scored by its strongest candidate below conf, so a
    conf above every box a set of images has gives the same scores as keeping those boxes. Of such equals, the
    one that shows the box scoring the image as a finding is the one a reader can check."""
    y = train.labels()
    best, best_key, unjudged = None, None, set()
    refiltered = {}  # (conf, max_det) -> boxes as handed on: re-filtered once, shared by the rules
    for conf, max_det, rule in grid or candidate_grid(train, rules=rules):
        if rule not in rules:
            continue
        if (conf, max_det) not in refiltered:
            refiltered[conf, max_det] = train.refiltered(conf, max_det)
        boxes = refiltered[conf, max_det]
        if rule == "stacker":
            scores, stacker = _stacker_scores(train, boxes, y)
            if stacker is None:
                unjudged.add(rule)
                continue
        else:
            scores, stacker = _scores(boxes, rule, None), None
        key = (np.nan_to_num(metrics.aupr(y, scores), nan=-1), np.nan_to_num(metrics.auroc(y, scores), nan=-1),
               -max_det, -conf)
        if best_key is None or key > best_key:
            best_key, best = key, (conf, max_det, rule, stacker, scores)
    if best is None:
        raise MammoError(f"no image-score rule of {sorted(rules)} could be judged on these OOF predictions")
    conf, max_det, rule, stacker, scores = best
    threshold, _ = metrics.best_threshold(y, scores, beta, min_specificity)
    try:  # the stacker's scores here are its inner cross-fitted ones: as it will score new images
        calibration = choose_calibration(scores, y, patient_groups(train))
    except ValueError:  # one class only: nothing to calibrate against
        calibration = None
    return Settings(conf, max_det, rule, threshold, stacker, metrics.summary(y, scores, threshold, beta),
                    calibration, tuple(r for r in rules if r not in unjudged))


def choose_operating_point(oof: OofSet, *, beta: float = 2.0, min_specificity: float = 0.5, n_boot: int = 1000,
                           seed: int = 0, chooser=None) -> dict:
    """Settings chosen on all OOF predictions, plus their honest (cross-fitted) OOF figures; see the module doc.
    `chooser(train: OofSet) -> Settings` defaults to `choose_settings` with beta and min_specificity."""
    chooser = chooser or (lambda train, rules=AGGREGATES: choose_settings(train, beta=beta,
                                                                           min_specificity=min_specificity,
                                                                           rules=rules))
    if len(oof.folds) < 2:
        raise MammoError(f"choosing settings needs OOF predictions of at least 2 folds, got folds {oof.folds}")
    n = len(oof.images)
    scores, probabilities, base_rate = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    thresholds = np.full(n, np.nan)  # each image judged by its own fold's threshold
    per_fold, judged = {}, set(AGGREGATES)
    index = {id(im): i for i, im in enumerate(oof.images)}
    for k in oof.folds:
        held, train = oof.only(k), oof.without(k)
        with sealed(k):
            chosen = chooser(train)
            rows = [index[id(im)] for im in held.images]
            scores[rows] = chosen.scores(held)
            probabilities[rows] = chosen.probabilities(held)
            base_rate[rows] = train.labels().mean()  # the reference a probability must beat: the prevalence
        thresholds[rows] = chosen.threshold
        per_fold[str(k)] = chosen.to_dict()
        judged &= set(chosen.rules_considered)
    # The shipped rule must be one whose cross-fitted figures are reported: a rule some fold could not judge
    # (the stacker, when a training fold is too small to cross-fit it) is not chosen on all OOF either.
    final = chooser(oof)
    if final.aggregate not in judged:
        final = chooser(oof, rules=tuple(r for r in AGGREGATES if r in judged))
    y = oof.labels()
    groups = np.array([im.patient_id for im in oof.images])
    # pooled cross-fitted figures: ranking metrics on the pooled scores, threshold metrics on each fold's own
    # decisions (its threshold came from the other folds); 95 % CIs from patient bootstrap
    figures = {"cross_fitted": metrics.bootstrap_table(y, scores, groups, thresholds, beta, n_boot, seed),
               "chosen_on_all_oof (optimistic)": final.selection,
               "per_fold": per_fold_figures(oof, y, scores)}
    if not np.isnan(probabilities).any():
        figures["cross_fitted_probability"] = calibration_report(y, probabilities, base_rate, groups, n_boot, seed)
        figures["operating_curve"] = operating_curve(y, probabilities)
    return {"source": f"{oof.k}-fold patient-level cross-validation, out-of-fold predictions", "k": oof.k,
            "n_images": len(oof.images), "n_positive": int(y.sum()), "beta": beta,
            "min_specificity": min_specificity,
            "predicted_with": {"detector.conf": oof.conf, "detector.max_det": oof.max_det},
            "settings": final.to_dict(), "figures": figures, "per_fold_settings": per_fold}


def per_fold_figures(oof: OofSet, y, scores) -> dict:
    """auROC and auPR within each fold, and their mean: the folds' chosen rules may score on different scales,
    which the pooled figures mix (the pooled calibrated probabilities put them on one scale)."""
    folds = np.array([im.fold for im in oof.images])
    rows = {str(k): {"n": int((folds == k).sum()), "auroc": metrics.auroc(y[folds == k], scores[folds == k]),
                     "aupr": metrics.aupr(y[folds == k], scores[folds == k])} for k in oof.folds}
    return {**rows, "mean": {m: float(np.nanmean([r[m] for r in rows.values()])) for m in ("auroc", "aupr")}}


def operating_curve(y, p, steps: int = CURVE_STEPS) -> dict:
    """Out-of-fold sensitivity and specificity at probability thresholds 0, 1/steps, .., 1: what the review app's
    slider shows at each position (plain numbers, shipped in pipeline.json)."""
    grid = np.round(np.linspace(0.0, 1.0, steps + 1), 6)
    pairs = [metrics.sensitivity_specificity(y, p, float(t)) for t in grid]
    return {"probability": grid.tolist(), "sensitivity": [a for a, _ in pairs], "specificity": [b for _, b in pairs],
            "n": int(len(y)), "n_positive": int(np.sum(y))}


def check_curve(curve) -> dict | None:
    """An operating curve as `operating_curve` writes it, checked, with None for an undefined figure (NaN is not
    JSON a browser parses); None when absent. ValueError for one that is malformed (the slider would show
    wrong numbers)."""
    if not curve:
        return None
    p, sens, spec = (np.asarray(curve[k], dtype=float) for k in ("probability", "sensitivity", "specificity"))
    if not (p.ndim == 1 and len(p) >= 2 and p.shape == sens.shape == spec.shape):
        raise ValueError("operating curve: probability, sensitivity and specificity must be lists of one length")
    if not (np.all(np.diff(p) > 0) and p[0] >= 0 and p[-1] <= 1):
        raise ValueError("operating curve: probability thresholds must increase within [0, 1]")
    for name, v in (("sensitivity", sens), ("specificity", spec)):
        if not np.all((np.isnan(v)) | ((v >= 0) & (v <= 1))):
            raise ValueError(f"operating curve: {name} outside [0, 1]")
    return {"probability": p.tolist(), "sensitivity": [None if np.isnan(v) else v for v in sens.tolist()],
            "specificity": [None if np.isnan(v) else v for v in spec.tolist()],
            "n": int(curve.get("n", 0)), "n_positive": int(curve.get("n_positive", 0))}


# --- shipping the choice ----------------------------------------------------------------------------------
def read_operating_point(path) -> dict:
    """operating_point.json of a `pipeline cross-validate` run, checked (a clear error naming the file)."""
    import json
    from pathlib import Path

    path = Path(path)
    try:
        op = json.loads(path.read_text())
        s = op["settings"]
        conf, max_det, rule = float(s["detector.conf"]), int(s["detector.max_det"]), s["pipeline.aggregate"]
        threshold, k = float(s["threshold"]), int(op["k"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MammoError(f"{path}: not an operating point of `pipeline cross-validate` ({type(exc).__name__}: "
                         f"{exc})") from None
    findings = op.get("findings") or {}
    try:
        shown = (float(findings["detector.findings_conf"]), int(findings["detector.findings_max"])) if findings else None
    except (KeyError, ValueError, TypeError) as exc:
        raise MammoError(f"{path}: malformed findings rule ({type(exc).__name__}: {exc})") from None
    problems = [msg for bad, msg in ((not 0 < conf < 1, f"detector.conf {conf}"),
                                     (shown is not None and not (0 <= shown[0] <= 1 and
                                                                 1 <= shown[1] <= MAX_PREDICT_BOXES),
                                      f"findings {shown}"),
                                     (not 1 <= max_det <= MAX_PREDICT_BOXES, f"detector.max_det {max_det}"),
                                     (not np.isfinite(threshold), f"threshold {threshold}"), (k < 2, f"k {k}")) if bad]
    if problems:
        raise MammoError(f"{path}: out of range: {', '.join(problems)}")
    try:  # the rule and its stacker, checked as infer checks them before a batch; the calibration map too
        check_aggregate(rule, s.get("stacker"))
        if isinstance(s.get("calibration"), dict):
            check_calibration(s["calibration"])
        for name in ("p_lesion", "p_malignant"):
            if findings.get(name) is not None:
                check_calibration(findings[name])
    except (ConfigError, ValueError, KeyError, TypeError) as exc:
        raise MammoError(f"{path}: {exc}") from None
    return op


def findings_info(findings: dict | None) -> dict | None:
    if not findings:
        return None
    return {key: findings[key] for key in ("rule", "max_fp_per_image", "p_lesion", "p_malignant")} | {
        "figures": findings.get("cross_fitted", {}).get("figures", {})}


def with_operating_point(cfg, op: dict):
    """`cfg` with the chosen detector conf, boxes kept and image-score rule."""
    import dataclasses

    s = op["settings"]
    findings = op.get("findings") or {}
    shown = ({"findings_conf": float(findings["detector.findings_conf"]),
              "findings_max": int(findings["detector.findings_max"])} if findings else {})
    return dataclasses.replace(
        cfg, detector=dataclasses.replace(cfg.detector, conf=float(s["detector.conf"]),
                                          max_det=int(s["detector.max_det"]), **shown),
        pipeline=dataclasses.replace(cfg.pipeline, aggregate=s["pipeline.aggregate"]))


def bundle_info(op: dict) -> dict:
    """What pipeline.json records: the threshold, the stacker (when it is the rule), and where it all came from."""
    s = op["settings"]
    calibration = s.get("calibration") if isinstance(s.get("calibration"), dict) else None
    return {"threshold": float(s["threshold"]),
            "stacker": s.get("stacker") if s["pipeline.aggregate"] == "stacker" else None,
            # image score -> P(malignant), and the slider's out-of-fold sensitivity / specificity per probability
            "calibration": calibration,
            "operating_curve": op["figures"].get("operating_curve") if calibration else None,
            # the findings rule's box maps (its thresholds travel as detector.findings_* config overrides)
            "findings": findings_info(op.get("findings")),
            "operating_point": {"source": op["source"], "k": op["k"], "n_images": op["n_images"],
                                "n_positive": op["n_positive"], "beta": op["beta"],
                                "min_specificity": op["min_specificity"],
                                "settings": {key: v for key, v in s.items() if key not in ("stacker", IN_SAMPLE)},
                                "figures": op["figures"]}}
