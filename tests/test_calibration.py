"""Calibration maps against hand-computed cases: monotone, bounded, the identity on calibrated input."""
import numpy as np
import pytest

from mammo.calibration import (apply_calibration, brier, check_calibration, choose_calibration, cross_fitted, ece,
                               fit_isotonic, fit_platt, reliability)


def test_isotonic_pools_adjacent_violators_by_hand():
    # scores 0.1..0.5 with labels 0 1 0 1 1: (0.2, 1) and (0.3, 0) violate order and pool to 0.5 at x 0.25
    cal = fit_isotonic([0.1, 0.2, 0.3, 0.4, 0.5], [0, 1, 0, 1, 1])
    floor = 1 / 10
    assert cal["x"] == pytest.approx([0.1, 0.25, 0.45])
    assert cal["y"] == pytest.approx([floor, 0.5, 1 - floor])  # kept off 0 and 1: 5 rows prove no certainty
    assert apply_calibration(cal, [0.0, 0.175, 0.25, 0.35, 0.9]) == pytest.approx(
        [floor, (floor + 0.5) / 2, 0.5, 0.5 + (1 - floor - 0.5) / 2, 1 - floor])


def test_isotonic_pools_tied_scores_before_anything_else():
    cal = fit_isotonic([0.3, 0.3, 0.3, 0.7], [0, 1, 1, 1])
    assert cal["x"] == pytest.approx([0.3, 0.7])
    assert cal["y"][0] == pytest.approx(2 / 3)


def test_platt_is_the_identity_on_calibrated_input():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.99, 20000)
    y = rng.uniform(size=p.size) < p  # labels drawn with exactly these probabilities
    cal = fit_platt(p, y)
    assert cal["a"] == pytest.approx(1.0, abs=0.06) and cal["b"] == pytest.approx(0.0, abs=0.06)
    assert np.abs(apply_calibration(cal, p) - p).max() < 0.02


def test_platt_recovers_a_known_logistic_map():
    rng = np.random.default_rng(1)
    s = rng.uniform(0.001, 0.5, 20000)
    logit = np.log(s / (1 - s))
    y = rng.uniform(size=s.size) < 1 / (1 + np.exp(-(0.5 * logit + 1.0)))
    cal = fit_platt(s, y)
    assert cal["a"] == pytest.approx(0.5, abs=0.05) and cal["b"] == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_maps_are_monotone_and_bounded(method):
    rng = np.random.default_rng(2)
    s = rng.uniform(size=300) ** 3
    y = rng.uniform(size=300) < 0.2 + 0.6 * s
    cal = fit_platt(s, y) if method == "platt" else fit_isotonic(s, y)
    check_calibration(cal)
    grid = np.linspace(0, 1, 1001)
    p = apply_calibration(cal, grid)
    assert np.all(np.diff(p) >= 0) and p.min() > 0 and p.max() < 1
    if method == "platt":  # strictly increasing: a threshold on the score is one on the probability
        assert np.all(np.diff(p) > 0)


def test_platt_refuses_scores_that_rank_backwards():
    with pytest.raises(ValueError, match="slope"):
        fit_platt([0.1, 0.2, 0.8, 0.9] * 10, [1, 1, 0, 0] * 10)


@pytest.mark.parametrize("bad", [{"method": "magic"}, {"method": "platt", "a": -1, "b": 0},
                                 {"method": "platt", "a": float("nan"), "b": 0},
                                 {"method": "isotonic", "x": [0.2, 0.1], "y": [0.1, 0.2]},
                                 {"method": "isotonic", "x": [0.1, 0.2], "y": [0.5, 0.1]},
                                 {"method": "isotonic", "x": [0.1], "y": [1.5]}, "platt"])
def test_check_refuses_malformed_maps(bad):
    with pytest.raises((ValueError, KeyError, TypeError)):
        check_calibration(bad)


def test_cross_fitting_never_reads_the_predicted_groups_labels():
    rng = np.random.default_rng(3)
    s = rng.uniform(size=120)
    y = (rng.uniform(size=120) < s).astype(int)
    groups = np.repeat([0, 1, 2], 40)
    before = cross_fitted("platt", s, y, groups)
    flipped = y.copy()
    flipped[groups == 0] = 1 - flipped[groups == 0]
    after = cross_fitted("platt", s, flipped, groups)
    assert np.array_equal(before[groups == 0], after[groups == 0])  # group 0's own labels play no part
    assert not np.allclose(before[groups == 1], after[groups == 1])  # but they shape the others' maps


def test_choose_calibration_prefers_identity_for_calibrated_and_a_fit_for_miscalibrated_scores():
    rng = np.random.default_rng(4)
    p = rng.uniform(0.01, 0.99, 3000)
    y = rng.uniform(size=p.size) < p
    groups = np.arange(p.size) % 5
    assert choose_calibration(p, y, groups, ("identity", "platt"))["method"] in ("identity", "platt")
    squashed = p ** 4  # a rank score: same order, far too low
    chosen = choose_calibration(squashed, y, groups)
    assert chosen["method"] in ("platt", "isotonic")
    assert chosen["chosen_by"]["inner_brier"]["identity"] > chosen["chosen_by"]["inner_brier"][chosen["method"]]


def test_ece_brier_and_reliability_by_hand():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.05, 0.15, 0.85, 0.95])
    assert brier(y, p) == pytest.approx(np.mean([0.05 ** 2, 0.15 ** 2, 0.15 ** 2, 0.05 ** 2]))
    table = reliability(y, p)
    assert table["bin"] == [0, 1, 8, 9] and table["n"] == [1, 1, 1, 1]
    assert ece(y, p) == pytest.approx((0.05 + 0.15 + 0.15 + 0.05) / 4)
    assert ece([0, 1], [1.0, 1.0]) == pytest.approx(0.5)  # p == 1 falls in the last bin
