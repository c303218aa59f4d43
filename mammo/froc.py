"""FROC: lesion sensitivity against false positives per image, as CAD detectors are compared.

Pure numpy (plus the box helpers of `mammo.geometry`): the detector's and the pipeline's evaluations both use it.

Conventions, each a choice the literature makes in different ways, fixed here once:
- A prediction HITS a true lesion when its centre lies inside the lesion's box (edges included) or, when
  `centre` is off or the centre is outside, when their IoU >= `iou_threshold`.
- A lesion counts as found at threshold t when ANY prediction with score >= t hits it; sensitivity is the
  fraction of lesions found (over all images).
- A prediction that hits no lesion is a false positive. A prediction that hits a lesion is never a false
  positive, also when another prediction found that lesion first (duplicates on a finding are not penalised,
  as in the CAD FROC convention; they are a display problem, not a missed cancer).
- The operating points are the distinct prediction scores (tied scores enter together). Sensitivity at a
  false-positive rate r is the best sensitivity among the points with FP/image <= r (no interpolation, so it
  never claims a point the detector does not reach).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from mammo.geometry import box_centers, box_iou

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)


def hit_matrix(pred_boxes, true_boxes, iou_threshold: float = 0.1, centre: bool = True) -> np.ndarray:
    """(P, T) bool: prediction p hits lesion t (see the module doc)."""
    pred = np.asarray(pred_boxes, dtype=np.float64).reshape(-1, 4)
    true = np.asarray(true_boxes, dtype=np.float64).reshape(-1, 4)
    hits = box_iou(pred, true) >= iou_threshold
    if centre:
        c = box_centers(pred)[:, None, :]  # (P, 1, 2)
        inside = ((c[..., 0] >= true[None, :, 0]) & (c[..., 0] <= true[None, :, 2])
                  & (c[..., 1] >= true[None, :, 1]) & (c[..., 1] <= true[None, :, 3]))
        hits |= inside
    return hits


@dataclass(frozen=True)
class FrocCurve:
    """Operating points from the strictest threshold (nothing kept) down to the lowest prediction score."""

    thresholds: np.ndarray  # descending; the first is +inf (no prediction kept)
    sensitivity: np.ndarray  # lesions found / n_lesions at each threshold (NaN when n_lesions == 0)
    fp_per_image: np.ndarray  # false positives / n_images at each threshold
    n_lesions: int
    n_images: int

    def sensitivity_at(self, fp_rate: float) -> float:
        """Best sensitivity with at most `fp_rate` false positives per image."""
        ok = self.fp_per_image <= fp_rate + 1e-12
        return float(np.max(self.sensitivity[ok]))  # the first point (0 FP) always qualifies

    def threshold_at(self, fp_rate: float) -> float:
        """The score threshold of that operating point: the strictest one that reaches its sensitivity
        (+inf when nothing can be kept)."""
        ok = np.flatnonzero(self.fp_per_image <= fp_rate + 1e-12)
        return float(self.thresholds[ok[np.argmax(self.sensitivity[ok])]])

    def table(self, rates: Sequence[float] = FP_RATES) -> dict[float, float]:
        return {float(r): self.sensitivity_at(r) for r in rates}

    def mean_sensitivity(self, rates: Sequence[float] = FP_RATES) -> float:
        """Average sensitivity over `rates` (the competition 'CPM' score)."""
        return float(np.mean([self.sensitivity_at(r) for r in rates]))


def _per_image(predictions, truths, iou_threshold: float, centre: bool):
    """Per lesion the best score of a prediction hitting it (-inf: none), the scores of predictions that hit
    nothing, and all scores."""
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} prediction sets for {len(truths)} images")
    lesion_best: list[float] = []
    fp_scores: list[float] = []
    all_scores: list[float] = []
    for (boxes, scores), true in zip(predictions, truths):
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        true = np.asarray(true, dtype=np.float64).reshape(-1, 4)
        if len(boxes) != len(scores):
            raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
        hits = hit_matrix(boxes, true, iou_threshold, centre)
        best = np.where(hits, scores[:, None], -np.inf).max(axis=0, initial=-np.inf)
        lesion_best.extend(best.tolist())
        fp_scores.extend(scores[~hits.any(axis=1)].tolist())
        all_scores.extend(scores.tolist())
    return np.asarray(lesion_best, dtype=np.float64), fp_scores, all_scores


def froc_curve(predictions: Sequence[tuple], truths: Sequence, iou_threshold: float = 0.1,
               centre: bool = True) -> FrocCurve:
    """FROC over a set of images.

    predictions: one (boxes (N, 4), scores (N,)) per image; truths: one (M, 4) array of lesion boxes per image
    (empty for a normal image), same order and length. Boxes in any one pixel grid per image, [x1, y1, x2, y2].
    """
    return _curve(*_per_image(predictions, truths, iou_threshold, centre), len(truths))


def _curve(found, fp_scores, all_scores, n_images: int) -> FrocCurve:
    n_lesions = len(found)
    thresholds = np.concatenate([[np.inf], np.unique(all_scores)[::-1]])
    fps = np.sort(np.asarray(fp_scores))
    # counts of scores >= t for every threshold at once
    n_found = (found[None, :] >= thresholds[:, None]).sum(axis=1) if n_lesions else np.zeros(len(thresholds))
    n_fp = len(fps) - np.searchsorted(fps, thresholds, side="left")
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = n_found / n_lesions if n_lesions else np.full(len(thresholds), np.nan)
    fp_rate = n_fp / max(n_images, 1)
    return FrocCurve(thresholds, np.asarray(sensitivity, dtype=np.float64), fp_rate.astype(np.float64),
                     n_lesions, n_images)


def froc_report(predictions: Sequence[tuple], truths: Sequence, kinds: Sequence[Sequence[str]],
                iou_threshold: float = 0.1, centre: bool = True,
                rates: Sequence[float] = FP_RATES) -> tuple[FrocCurve, dict]:
    """The FROC (arguments as `froc_curve`) and its JSON summary: sensitivity at `rates`, the counts, and per
    lesion kind (`kinds`: one name per true box, same nesting as `truths`) how many lesions there are, how many
    some kept prediction hits ('any box'), and the sensitivity at each overall operating point of the FROC (the
    score threshold giving <= r false positives per image over ALL images and kinds: a kind is judged at the
    operating point the whole system runs at, not at one tuned for it). Hits are computed once for both."""
    found, fp_scores, all_scores = _per_image(predictions, truths, iou_threshold, centre)
    curve = _curve(found, fp_scores, all_scores, len(truths))
    flat = [k for ks in kinds for k in ks]
    if len(flat) != len(found):
        raise ValueError(f"{len(flat)} kind names for {len(found)} true boxes")
    flat = np.asarray(flat, dtype=object)
    by_kind = {}
    for kind in sorted(set(flat.tolist())):
        best = found[flat == kind]
        by_kind[kind] = {"n": int(len(best)), "hit_any_box": int(np.isfinite(best).sum()),
                         "sensitivity": {str(float(r)): float(np.mean(best >= curve.threshold_at(r)))
                                         for r in rates}}
    return curve, {"sensitivity": {str(float(r)): v for r, v in curve.table(rates).items()},
                   "n_lesions": curve.n_lesions, "n_images": curve.n_images, "by_kind": by_kind}
