"""The findings rule: a lesion-level operating point chosen on a hand-made FROC, cross-fitted without reading a
fold's own boxes, and the boxes infer writes (findings and the scoring box, marked, with both numbers)."""
import mammo.runtime  # noqa: F401  (must stay the first import)

import numpy as np
import pytest

from pipeline.findings import (LesionTruth, annotate_findings, choose_findings, cross_fitted_findings, shown_boxes)
from pipeline.operating_point import OofImage, OofSet
from pipeline.results import LesionResult

LESION = (100, 100, 140, 140)


def L(d, m=0.5, box=LESION):
    return LesionResult(list(box), d, m)


def far(i):  # a box that hits nothing
    return (300 + 40 * i, 300, 330 + 40 * i, 330)


def _set(fold_of=lambda i: i % 2):
    """Four images, one lesion each. The true boxes score 0.9, 0.6, 0.3, 0.05; false positives 0.8 and 0.5 on
    image 0, 0.4 on image 1."""
    boxes = [[L(0.9), L(0.8, box=far(0)), L(0.5, box=far(1))], [L(0.6), L(0.4, box=far(2))], [L(0.3)], [L(0.05)]]
    images = [OofImage(f"i{i}", f"p{i}", fold_of(i), 1, tuple(b)) for i, b in enumerate(boxes)]
    truths = {f"i{i}": LesionTruth(np.array([LESION], float), np.array([i % 2 == 0])) for i in range(4)}
    return OofSet(images, 2, 0.001, 20), truths


@pytest.mark.parametrize("max_fp, conf, sensitivity", [
    (0.0, 0.9, 0.25),   # no false positive allowed: only the 0.9 box
    (0.25, 0.6, 0.5),   # 1 FP over 4 images: down to 0.6 (0.8 is that FP), finds 2 of 4
    (0.5, 0.6, 0.5),    # 2 FPs allowed: 0.5 is the second FP, and it finds nothing more: the stricter 0.6
    (0.75, 0.05, 1.0),  # 3 FPs: every box (the last lesion scores 0.05)
])
def test_findings_threshold_on_a_hand_made_froc(max_fp, conf, sensitivity):
    oof, truths = _set()
    rule = choose_findings(oof, truths, max_fp=max_fp)
    assert rule["detector.findings_conf"] == pytest.approx(conf)
    assert rule["in_sample"]["sensitivity"] == pytest.approx(sensitivity)
    shown = shown_boxes(oof, rule)
    assert [len(s) for s in shown] == [sum(l.detector_score >= conf for l in im.lesions) for im in oof.images]


def test_findings_max_caps_the_boxes_per_image_before_the_froc():
    oof, truths = _set()
    rule = choose_findings(oof, truths, max_fp=1.0, findings_max=1)  # only each image's strongest box counts
    assert [len(s) for s in shown_boxes(oof, rule)] == [1, 1, 1, 1]
    assert rule["in_sample"]["sensitivity"] == pytest.approx(1.0)  # every image's top box is its lesion


def test_nothing_found_within_the_budget_shows_nothing():
    images = [OofImage("a", "p", 0, 1, (L(0.9, box=far(0)),)), OofImage("b", "q", 1, 1, (L(0.8, box=far(1)),))]
    truths = {i: LesionTruth(np.array([LESION], float), np.array([True])) for i in "ab"}
    rule = choose_findings(OofSet(images, 2, 0.001, 20), truths, max_fp=0.0)
    assert rule["detector.findings_conf"] == 1.0 and shown_boxes(OofSet(images, 2, 0.001, 20), rule) == [[], []]


def test_a_folds_findings_rule_never_reads_that_folds_boxes():
    oof, truths = _set()
    a = cross_fitted_findings(oof, truths, max_fp=0.5)
    moved = dict(truths, i0=LesionTruth(np.array([far(0)], float), np.array([True])))  # fold 0's truth moved
    b = cross_fitted_findings(oof, moved, max_fp=0.5)
    assert a["per_fold"]["0"] == b["per_fold"]["0"]  # fold 0's rule comes from fold 1 alone
    assert a["per_fold"]["1"] != b["per_fold"]["1"]  # fold 1's rule reads fold 0's boxes
    with pytest.raises(KeyError):  # and a chooser never gets more than its own images' truths
        choose_findings(oof, {k: v for k, v in truths.items() if k != "i0"})


def test_cross_fitted_findings_count_hits_and_false_positives_by_hand():
    oof, truths = _set()
    out = cross_fitted_findings(oof, truths, max_fp=1.0)
    # fold 1 (images 1, 3) is judged by fold 0's rule and vice versa; recompute from the rules themselves
    found = fps = 0
    for k in (0, 1):
        held = oof.only(k)
        for im, boxes in zip(held.images, shown_boxes(held, out["per_fold"][str(k)])):
            hit = [l.box == list(LESION) for l in boxes]
            found += any(hit)
            fps += hit.count(False)
    fig = out["figures"]
    assert (fig["lesions_found"], fig["n_lesions"]) == (found, 4)
    assert fig["false_positives_per_image"] == pytest.approx(fps / 4)


def test_annotate_gives_each_box_its_own_calibrated_probabilities():
    info = {"p_lesion": {"method": "platt", "a": 1.0, "b": 0.0}, "p_malignant": {"method": "identity"}}
    boxes = annotate_findings([L(0.7, 0.5), L(0.2, 0.9)], info)
    assert [b.p_lesion for b in boxes] == pytest.approx([0.7, 0.2])  # Platt (1, 0) is the identity
    assert [b.p_malignant for b in boxes] == pytest.approx([0.35, 0.18])  # d x m
    assert annotate_findings([L(0.7)], None)[0].p_lesion is None
