"""Metrics against hand-computed cases and against scikit-learn on random data with ties."""
import numpy as np
import pytest
from sklearn import metrics as skm

from mammo import metrics as M


def test_hand_cases():
    y = [0, 0, 1, 1]
    p = [0.1, 0.4, 0.35, 0.8]
    # pairs (pos, neg): (0.35>0.1) (0.35<0.4) (0.8>0.1) (0.8>0.4) -> 3 of 4
    assert M.auroc(y, p) == pytest.approx(0.75)
    # ranked: 0.8(+) 0.4(-) 0.35(+) 0.1(-): precision at the two positives 1 and 2/3, recall steps 1/2 each
    assert M.aupr(y, p) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # threshold 0.35: calls 0.35, 0.4, 0.8 -> tp 2, fp 1, fn 0; F2 = 5*2 / (5*2 + 4*0 + 1) = 10/11
    assert M.fbeta(y, p, 0.35, beta=2) == pytest.approx(10 / 11)
    assert M.sensitivity_specificity(y, p, 0.35) == pytest.approx((1.0, 0.5))
    assert M.confusion(y, p, 0.5) == {"tp": 1, "fp": 0, "tn": 2, "fn": 1}


def test_ties_count_half():
    assert M.auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert M.auroc([0, 0, 1], [0.2, 0.5, 0.5]) == pytest.approx(0.75)


def test_undefined_cases_are_nan_or_zero():
    assert np.isnan(M.auroc([1, 1], [0.2, 0.3]))
    assert np.isnan(M.aupr([0, 0], [0.2, 0.3]))
    assert M.fbeta([1, 0], [0.1, 0.2], threshold=0.9) == 0.0  # nothing called positive
    with pytest.raises(ValueError, match="differ in length"):
        M.auroc([0, 1], [0.1])


@pytest.mark.parametrize("seed", range(5))
def test_agree_with_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = 200
    y = rng.integers(0, 2, n)
    p = np.round(rng.random(n) * 0.5 + 0.3 * y, 2)  # rounded: many ties
    assert M.auroc(y, p) == pytest.approx(skm.roc_auc_score(y, p))
    assert M.aupr(y, p) == pytest.approx(skm.average_precision_score(y, p))
    t = float(np.median(p))
    assert M.fbeta(y, p, t, 2.0) == pytest.approx(skm.fbeta_score(y, p >= t, beta=2.0))
    assert M.fbeta(y, p, t, 0.5) == pytest.approx(skm.fbeta_score(y, p >= t, beta=0.5))


def test_best_threshold_maximizes_fbeta_over_all_cut_points():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    p = rng.random(60) * 0.6 + 0.3 * y
    t, f = M.best_threshold(y, p, 2.0)
    assert f == pytest.approx(M.fbeta(y, p, t, 2.0))
    assert f >= max(M.fbeta(y, p, float(c), 2.0) for c in np.linspace(0, 1, 101)) - 1e-12
    # beta = 2 favours recall: its threshold is not above the F0.5 one
    assert t <= M.best_threshold(y, p, 0.5)[0]


def test_specificity_floor_rules_out_calling_everything_positive():
    # Few positives, many zero scores (images without detections): F2 peaks at 'all malignant' (threshold 0).
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    p = np.array([0.0, 0.0, 0.6, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.7, 0.5, 0.3, 0.2])
    t0, _ = M.best_threshold(y, p, 2.0)
    assert t0 == 0.0 and M.sensitivity_specificity(y, p, t0)[1] == 0.0  # the degenerate point
    t, f = M.best_threshold(y, p, 2.0, min_specificity=0.5)
    sens, spec = M.sensitivity_specificity(y, p, t)
    assert spec >= 0.5 and t == 0.6 and sens == pytest.approx(1 / 3)
    # the best F2 among every threshold that keeps the floor, found by brute force
    ok = [c for c in np.unique(p) if M.sensitivity_specificity(y, p, c)[1] >= 0.5]
    assert f == pytest.approx(max(M.fbeta(y, p, c, 2.0) for c in ok))
    # a floor nothing reaches but 'call nothing': the threshold goes above every score
    t1, f1 = M.best_threshold(np.array([1, 0]), np.array([0.5, 0.9]), 2.0, min_specificity=1.0)
    assert t1 > 0.9 and f1 == 0.0


def test_bootstrap_resamples_patients():
    # Two rows per patient with identical scores: a row-level bootstrap would treat them as independent.
    y = np.array([0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1])
    p = np.array([.1, .1, .9, .9, .6, .6, .4, .4, .2, .2, .8, .8])
    groups = np.repeat(np.arange(6), 2)
    point, lo, hi = M.bootstrap_ci(M.auroc, y, p, groups, n=500, seed=0)
    assert point == pytest.approx(M.auroc(y, p))
    assert lo <= point <= hi and hi - lo > 0.05
    assert M.bootstrap_ci(M.auroc, y, p, groups, n=500, seed=0) == (point, lo, hi)  # seeded
    # One patient with 4 rows, 8 with one: a resample has 9 patients, i.e. 9 + 3a rows when patient 0 is
    # drawn a times (a row-level bootstrap would always have 12 rows).
    groups = np.array([0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8])
    seen = []
    M.bootstrap_ci(lambda yy, pp: seen.append(len(yy)) or 0.0, y, p, groups, n=50, seed=1)
    assert all((k - 9) % 3 == 0 for k in seen) and len(set(seen)) > 1
    with pytest.raises(ValueError, match="one entry per row"):
        M.bootstrap_ci(M.auroc, y, p, groups[:-1])
    # nothing to judge (no true box and no prediction at lesion level): undefined, not a crash
    assert all(np.isnan(M.bootstrap_ci(M.auroc, [], [], [])))
    assert all(np.isnan(v["value"]) for k, v in M.bootstrap_table([], [], [], 0.5).items() if k != "confusion")


def test_summary_has_the_usual_set():
    s = M.summary([0, 1, 1, 0], [0.2, 0.9, 0.6, 0.7], threshold=0.6, beta=2.0)
    assert set(s) >= {"auroc", "aupr", "f2", "sensitivity", "specificity", "threshold", "n", "n_positive"}
    assert s["n"] == 4 and s["n_positive"] == 2 and s["sensitivity"] == 1.0 and s["specificity"] == 0.5


def test_curve_points_tie_to_one_step_and_agree_with_the_areas():
    """Tied scores are one threshold: one diagonal ROC segment, one PR step, so the plotted curve has the
    area its legend prints (a sorted-row staircase would depend on the order of the tied rows)."""
    y = np.array([0, 1, 0, 1, 1, 0, 0])
    p = np.array([0.5, 0.5, 0.5, 0.5, 0.9, 0.1, 0.1])
    fpr, tpr = M.roc_points(y, p)
    assert len(fpr) == len(np.unique(p)) + 1  # (0, 0) plus one point per distinct score
    assert np.trapezoid(tpr, fpr) == pytest.approx(M.auroc(y, p))
    recall, precision = M.pr_points(y, p)
    assert recall[0] == 0 and np.all(np.diff(recall) >= 0)
    assert np.sum(np.diff(recall) * precision[1:]) == pytest.approx(M.aupr(y, p))  # 'steps-pre' drawing
    rng = np.random.default_rng(3)
    y, p = rng.integers(0, 2, 200), np.round(rng.random(200), 1)  # many ties
    fpr, tpr = M.roc_points(y, p)
    assert np.trapezoid(tpr, fpr) == pytest.approx(skm.roc_auc_score(y, p))
    recall, precision = M.pr_points(y, p)
    assert np.sum(np.diff(recall) * precision[1:]) == pytest.approx(skm.average_precision_score(y, p))


def test_bootstrap_table_judges_each_row_at_its_own_threshold():
    """One threshold per row (each fold's own): the calls are p >= that row's threshold, the ranking metrics
    use the scores themselves; one shared threshold gives the same table as the scalar."""
    y = np.array([1, 1, 0, 0, 1, 0])
    p = np.array([0.9, 0.4, 0.5, 0.1, 0.6, 0.3])
    groups = np.array(["a", "a", "b", "c", "d", "e"])
    own = np.array([0.5, 0.3, 0.6, 0.5, 0.7, 0.2])  # calls: 1, 1, 0, 0, 0, 1
    t = M.bootstrap_table(y, p, groups, own, n=50)
    assert t["confusion"] == {"tp": 2, "fp": 1, "tn": 2, "fn": 1}
    assert t["sensitivity"]["value"] == pytest.approx(2 / 3) and t["specificity"]["value"] == pytest.approx(2 / 3)
    assert t["auroc"]["value"] == pytest.approx(M.auroc(y, p))
    assert M.bootstrap_table(y, p, groups, np.full(6, 0.45), n=50) == M.bootstrap_table(y, p, groups, 0.45, n=50)


def test_one_ci_format_for_evaluate_and_the_digital_report():
    """Both reports print a CI through M.format_ci (the digital one had its own twin, which printed an undefined
    auROC as 'nan [nan, nan]'); bootstrap_table's dict and bootstrap_ci's tuple read the same."""
    from pipeline import evaluate
    from pipeline.digital import report

    nan = float("nan")
    assert evaluate.format_ci is report.format_ci is M.format_ci
    assert M.format_ci({"value": 0.81234, "low": 0.7, "high": 0.9}) == M.format_ci((0.81234, 0.7, 0.9)) \
        == "0.812 [0.700, 0.900]"
    assert M.format_ci((nan, nan, nan)) == M.format_ci(None) == "n/a"
    assert M.format_ci({"value": 0.5, "low": nan, "high": nan}) == "0.500"
