"""FROC against cases computed by hand (mammo.froc: pure numpy, no framework)."""
import mammo.runtime  # noqa: F401

import numpy as np
import pytest

from mammo.froc import FP_RATES, froc_curve, hit_matrix


def img(boxes, scores):
    return np.array(boxes, float).reshape(-1, 4), np.array(scores, float)


def test_two_images_one_lesion():
    # A: the lesion found at 0.9, a false positive at 0.8. B (normal): false positives at 0.7 and 0.3.
    preds = [img([[1, 1, 9, 9], [50, 50, 60, 60]], [0.9, 0.8]), img([[0, 0, 5, 5], [20, 20, 30, 30]], [0.7, 0.3])]
    truths = [np.array([[0, 0, 10, 10]]), np.zeros((0, 4))]
    c = froc_curve(preds, truths)
    np.testing.assert_allclose(c.thresholds, [np.inf, 0.9, 0.8, 0.7, 0.3])
    np.testing.assert_allclose(c.sensitivity, [0, 1, 1, 1, 1])
    np.testing.assert_allclose(c.fp_per_image, [0, 0, 0.5, 1.0, 1.5])
    assert (c.n_lesions, c.n_images) == (1, 2)
    assert c.table() == {r: 1.0 for r in FP_RATES}


def test_second_lesion_found_only_after_a_false_positive():
    truths = [np.array([[0, 0, 10, 10], [100, 100, 120, 120]])]
    preds = [img([[2, 2, 8, 8], [200, 200, 210, 210], [101, 101, 119, 119]], [0.6, 0.5, 0.2])]
    c = froc_curve(preds, truths)
    np.testing.assert_allclose(c.sensitivity, [0, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(c.fp_per_image, [0, 0, 1, 1])
    assert c.sensitivity_at(0.5) == 0.5  # the second lesion needs 1 FP/image
    assert c.sensitivity_at(1.0) == 1.0
    assert c.threshold_at(0.5) == 0.6 and c.threshold_at(1.0) == 0.2  # the strictest threshold of each point
    assert c.threshold_at(0.0) == 0.6
    assert c.mean_sensitivity() == pytest.approx((0.5 * 3 + 1.0 * 3) / 6)


@pytest.mark.parametrize("pred, centre, iou, hit", [
    ([45, 45, 55, 55], True, 0.1, True),     # centre inside, IoU 0.01
    ([45, 45, 55, 55], False, 0.1, False),   # same box, IoU only
    ([60, 0, 160, 100], True, 0.1, True),    # centre outside (110, 50), IoU 4000/16000 = 0.25
    ([60, 0, 160, 100], True, 0.3, False),   # ... below a stricter IoU
    ([100, 40, 140, 60], True, 0.1, False),  # touching the edge only: centre (120, 50) outside, IoU 0
])
def test_hit_rules(pred, centre, iou, hit):
    truth = [[0, 0, 100, 100]]
    assert bool(hit_matrix([pred], truth, iou, centre)[0, 0]) is hit


def test_centre_on_the_edge_counts():
    assert hit_matrix([[90, 40, 110, 60]], [[0, 0, 100, 100]], iou_threshold=0.5)[0, 0]  # centre x == 100


def test_duplicates_on_a_lesion_are_not_false_positives():
    c = froc_curve([img([[1, 1, 9, 9], [2, 2, 10, 10], [0, 0, 8, 8]], [0.9, 0.8, 0.7])], [np.array([[0, 0, 10, 10]])])
    assert c.fp_per_image.max() == 0
    assert c.sensitivity[-1] == 1.0


def test_tied_scores_enter_together():
    c = froc_curve([img([[1, 1, 9, 9], [50, 50, 60, 60]], [0.5, 0.5])], [np.array([[0, 0, 10, 10]])])
    np.testing.assert_allclose(c.sensitivity, [0, 1])
    np.testing.assert_allclose(c.fp_per_image, [0, 1])
    assert c.sensitivity_at(0.5) == 0.0  # the hit cannot be had without its tied false positive
    assert c.sensitivity_at(1.0) == 1.0


def test_lesion_never_found_and_rate_never_reached():
    # one lesion missed, one found; only 1 FP on 4 images: every rate >= 0.25 gets the final sensitivity
    truths = [np.array([[0, 0, 10, 10], [30, 30, 40, 40]]), np.zeros((0, 4)), np.zeros((0, 4)), np.zeros((0, 4))]
    preds = [img([[0, 0, 10, 10]], [0.4]), img([[5, 5, 6, 6]], [0.9]), img([], []), img([], [])]
    c = froc_curve(preds, truths)
    assert c.sensitivity_at(0.125) == 0.0  # the FP at 0.9 comes first: 0.25 FP/image before the hit
    assert c.table()[0.25] == 0.5 and c.table()[4.0] == 0.5


def test_no_predictions_and_no_lesions():
    c = froc_curve([img([], []), img([], [])], [np.array([[0, 0, 5, 5]]), np.zeros((0, 4))])
    assert c.table() == {r: 0.0 for r in FP_RATES}
    empty = froc_curve([img([[0, 0, 1, 1]], [0.5])], [np.zeros((0, 4))])
    assert empty.n_lesions == 0 and np.isnan(empty.sensitivity_at(1.0))


def test_input_errors():
    with pytest.raises(ValueError, match="prediction sets"):
        froc_curve([img([], [])], [])
    with pytest.raises(ValueError, match="scores"):
        froc_curve([(np.zeros((2, 4)), np.zeros(1))], [np.zeros((0, 4))])
