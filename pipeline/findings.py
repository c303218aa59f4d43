"""The findings a reader is shown: every candidate box above a lesion-level operating point chosen on the
out-of-fold FROC, each with its own calibrated P(true lesion) and P(malignant lesion).

This is a second operating point beside the image-level one. Which boxes score the image (detector.conf,
max_det, pipeline.aggregate) is chosen for the image score's auPR, and one box often wins there; a reader also
needs to see a second lesion, or the true one when the top box is a false positive. The rule:

    detector.findings_conf = the score threshold with the highest lesion sensitivity at <= `max_fp` false
    positives per image (mammo.froc: centre-inside or IoU hits, duplicates on a lesion not penalised), over at
    most `findings_max` boxes per image.

Boxes are ranked by the detector's score. P(true lesion) maps the detector score, P(malignant) maps d x m (the
chain's P(malignant lesion)), each by mammo.calibration against the box's hit labels. Everything a fold is
judged by is chosen without that fold (`cross_fitted_findings`), like the image-level settings.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mammo import froc
from mammo.calibration import apply_calibration, brier, check_calibration, choose_calibration, ece
from mammo.errors import MammoError
from pipeline.operating_point import OofSet, patient_groups

DEFAULT_MAX_FP = 1.0  # false positives per image a reader is asked to look at (the target reads at 1)
FINDINGS_MAX = 10  # boxes shown per image at most


@dataclass(frozen=True)
class LesionTruth:
    """An image's boxed lesions in its original pixels, and which are malignant."""

    boxes: np.ndarray  # (n, 4)
    malignant: np.ndarray  # (n,) bool


def truths_of(records) -> dict[str, LesionTruth]:
    return {r.image_id: LesionTruth(np.array([l.box for l in r.boxed_lesions], float).reshape(-1, 4),
                                    np.array([l.pathology == "malignant" for l in r.boxed_lesions], bool))
            for r in records}


def _candidates(oof: OofSet, findings_max: int) -> list[list]:
    """Each image's strongest `findings_max` boxes, by detector score."""
    return [sorted(im.lesions, key=lambda l: -l.detector_score)[:findings_max] for im in oof.images]


def _box_labels(boxes, truth: LesionTruth, hit_iou: float, centre: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per box: hits any true lesion, hits a malignant one."""
    hits = froc.hit_matrix(np.array([l.box for l in boxes], float).reshape(-1, 4), truth.boxes, hit_iou, centre)
    return hits.any(axis=1), (hits & truth.malignant[None, :]).any(axis=1)


def _box_table(oof: OofSet, truths, findings_max: int, hit_iou: float, centre: bool):
    """Flat per-box arrays over `oof`: d, d x m, hit, hit malignant, image index."""
    rows = []
    for i, (im, boxes) in enumerate(zip(oof.images, _candidates(oof, findings_max))):
        hit, hit_m = _box_labels(boxes, truths[im.image_id], hit_iou, centre)
        rows += [(l.detector_score, l.detector_score * l.malignancy, h, hm, i)
                 for l, h, hm in zip(boxes, hit, hit_m)]
    d, dm, hit, hit_m, image = (np.array(c) for c in zip(*rows)) if rows else [np.zeros(0)] * 5
    return d.astype(float), dm.astype(float), hit.astype(int), hit_m.astype(int), image.astype(int)


def _curve(oof: OofSet, truths, findings_max: int, hit_iou: float, centre: bool) -> froc.FrocCurve:
    candidates = _candidates(oof, findings_max)
    return froc.froc_curve([(np.array([l.box for l in c], float).reshape(-1, 4),
                             np.array([l.detector_score for l in c], float)) for c in candidates],
                           [truths[im.image_id].boxes for im in oof.images], hit_iou, centre)


def choose_findings(train: OofSet, truths, *, max_fp: float = DEFAULT_MAX_FP, findings_max: int = FINDINGS_MAX,
                    hit_iou: float = 0.1, centre: bool = True) -> dict:
    """The findings rule on `train`: detector.findings_conf, and the two box-level calibration maps. Reads only
    the truths of `train`'s images (a KeyError otherwise: a fold's own boxes are never handed in)."""
    truths = {im.image_id: truths[im.image_id] for im in train.images}
    curve = _curve(train, truths, findings_max, hit_iou, centre)
    threshold = curve.threshold_at(max_fp)
    # nothing reaches a lesion within the budget: a threshold no box reaches, so nothing is shown
    conf = float(min(max(threshold, train.conf), 1.0)) if np.isfinite(threshold) else 1.0
    d, dm, hit, hit_m, image = _box_table(train, truths, findings_max, hit_iou, centre)
    groups = patient_groups(train)[image] if len(image) else image
    maps = {}
    for name, scores, labels in (("p_lesion", d, hit), ("p_malignant", dm, hit_m)):
        try:
            maps[name] = choose_calibration(scores, labels, groups, ("platt", "isotonic"))
        except ValueError:  # one class only among the boxes (no box hits a lesion): no probability to state
            maps[name] = None
    return {"detector.findings_conf": conf, "detector.findings_max": int(findings_max), "max_fp_per_image": max_fp,
            "rule": f"the highest lesion sensitivity at <= {max_fp:g} false positives per image on out-of-fold "
                    f"predictions, at most {findings_max} boxes per image, ranked by detector score",
            **maps, "in_sample": {"sensitivity": curve.sensitivity_at(max_fp), "n_lesions": curve.n_lesions}}


def shown_boxes(oof: OofSet, rule: dict) -> list[list]:
    """Each image's findings under a rule, as `detect` sets them apart."""
    conf, most = rule["detector.findings_conf"], rule["detector.findings_max"]
    return [[l for l in boxes if l.detector_score >= conf] for boxes in _candidates(oof, most)]


def cross_fitted_findings(oof: OofSet, truths, *, max_fp: float = DEFAULT_MAX_FP, findings_max: int = FINDINGS_MAX,
                          hit_iou: float = 0.1, centre: bool = True) -> dict:
    """Each fold's findings under the rule chosen on the other folds: pooled lesion sensitivity, false positives
    per image, and the box-level probabilities' ECE and Brier score; plus the rules themselves."""
    found = n_lesions = n_fp = 0
    probs, labels, per_fold = {"p_lesion": [], "p_malignant": []}, {"p_lesion": [], "p_malignant": []}, {}
    for k in oof.folds:
        held = oof.only(k)
        rule = choose_findings(oof.without(k), {im.image_id: truths[im.image_id] for im in oof.without(k).images},
                               max_fp=max_fp, findings_max=findings_max, hit_iou=hit_iou, centre=centre)
        per_fold[str(k)] = rule
        for im, boxes in zip(held.images, shown_boxes(held, rule)):
            truth = truths[im.image_id]
            hits = froc.hit_matrix(np.array([l.box for l in boxes], float).reshape(-1, 4), truth.boxes, hit_iou,
                                   centre)
            found += int(hits.any(axis=0).sum())
            n_lesions += len(truth.boxes)
            n_fp += int((~hits.any(axis=1)).sum())
            hit, hit_m = hits.any(axis=1), (hits & truth.malignant[None, :]).any(axis=1)
            for name, scores, y in (("p_lesion", [l.detector_score for l in boxes], hit),
                                    ("p_malignant", [l.detector_score * l.malignancy for l in boxes], hit_m)):
                if rule[name] is not None and len(boxes):
                    probs[name] += apply_calibration(rule[name], scores).tolist()
                    labels[name] += np.asarray(y, int).tolist()
    figures = {"sensitivity": found / n_lesions if n_lesions else float("nan"), "lesions_found": found,
               "n_lesions": n_lesions, "false_positives_per_image": n_fp / max(len(oof.images), 1),
               "n_images": len(oof.images)}
    for name in probs:
        if probs[name]:
            figures[name] = {"n_boxes": len(probs[name]), "ece": ece(labels[name], probs[name]),
                             "brier": brier(labels[name], probs[name]),
                             "brier_base_rate": brier(labels[name], np.full(len(labels[name]),
                                                                            np.mean(labels[name])))}
    return {"figures": figures, "per_fold": per_fold}


def choose_findings_operating_point(oof: OofSet, records, **kwargs) -> dict:
    """The rule chosen on all OOF predictions (it ships) and its cross-fitted figures (what it is worth)."""
    truths = truths_of(records)
    missing = [im.image_id for im in oof.images if im.image_id not in truths]
    if missing:
        raise MammoError(f"{len(missing)} OOF image(s) without annotations, e.g. {missing[:3]}")
    return {**choose_findings(oof, truths, **kwargs), "cross_fitted": cross_fitted_findings(oof, truths, **kwargs)}


def check_findings(info: dict) -> None:
    """A findings section read from pipeline.json: plain numbers in range, maps well formed."""
    for name in ("p_lesion", "p_malignant"):
        if info.get(name) is not None:
            check_calibration(info[name])


def annotate_findings(lesions, info: dict | None):
    """Each box's P(true lesion) and P(malignant lesion) under the models' findings maps (unchanged without)."""
    if not info or not lesions:
        return lesions
    for name, values in (("p_lesion", [l.detector_score for l in lesions]),
                         ("p_malignant", [l.detector_score * l.malignancy for l in lesions])):
        if info.get(name):
            for lesion, p in zip(lesions, apply_calibration(info[name], values)):
                setattr(lesion, name, float(p))
    return lesions
