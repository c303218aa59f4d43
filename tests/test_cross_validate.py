"""Cross-validation: patient-level folds, image-score rules, settings chosen on OOF predictions without leaks,
per-kind sensitivity, and (slow) a real 2-fold run that resumes after a kill."""
import mammo.runtime  # noqa: F401  (must stay the first import)

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mammo.errors import MammoError
from mammo.froc import froc_report
from mammo.records import ImageRecord, Lesion
from pipeline.operating_point import (LabelLeak, OofImage, OofSet, Settings, choose_operating_point,
                                      choose_settings, fit_stacker)
from mammo.config import AGGREGATES
from pipeline.results import LesionResult, aggregate_scores, stacker_score

REPO = Path(__file__).resolve().parent.parent


def L(d, m, box=(0, 0, 10, 10)):
    return LesionResult(list(box), d, m)


# --- image-score rules, by hand ---------------------------------------------------------------------------
BOXES = [L(0.9, 0.2), L(0.3, 0.8)]  # a sure box the classifier finds benign, a weak one it finds malignant


@pytest.mark.parametrize("rule, expected", [
    ("max", 0.8),                                   # the weak box's malignancy wins
    ("max_product", max(0.9 * 0.2, 0.3 * 0.8)),     # 0.24: the weak box is discounted by P(lesion)
    ("noisy_or", 1 - 0.8 * 0.2),                    # 0.84
    ("noisy_or_product", 1 - (1 - 0.18) * (1 - 0.24)),  # 0.3768
])
def test_each_rule_against_a_hand_computed_case(rule, expected):
    assert aggregate_scores(BOXES, rule) == pytest.approx(expected)
    # a candidate below conf only scores an image without a kept box
    assert aggregate_scores(BOXES, rule, below_conf=L(0.04, 0.99)) == pytest.approx(expected)
    # no kept box: the chain probability d * m of the strongest candidate below conf, so such images are ranked
    # (a stronger or more suspicious candidate scores higher) instead of tied
    assert aggregate_scores([], rule, below_conf=L(0.04, 0.5)) == pytest.approx(0.02)
    assert aggregate_scores([], rule, below_conf=L(0.02, 0.5)) < aggregate_scores([], rule, below_conf=L(0.04, 0.5))
    assert aggregate_scores([], rule) == 0.0  # the detector saw nothing at all: the lowest score there is


def test_stacker_by_hand_and_no_box_images_get_its_learned_base_rate():
    stacker = {"features": ["top_detector", "top_malignancy", "top_product", "n_boxes"], "mean": [0.5, 0.5, 0.2, 1],
               "scale": [0.5, 0.5, 0.2, 1], "coef": [1.0, 2.0, 0.0, -0.5], "intercept": -1.0}
    # features of BOXES: top d 0.9, top m 0.8, top product 0.24, 2 boxes
    z = -1.0 + 1.0 * (0.9 - 0.5) / 0.5 + 2.0 * (0.8 - 0.5) / 0.5 + 0.0 - 0.5 * (2 - 1) / 1
    assert aggregate_scores(BOXES, "stacker", stacker) == pytest.approx(1 / (1 + math.exp(-z)))
    z0 = -1.0 + 1.0 * (-1) + 2.0 * (-1) + 0.0 - 0.5 * (-1)  # every feature 0
    assert aggregate_scores([], "stacker", stacker) == pytest.approx(1 / (1 + math.exp(-z0)))
    assert aggregate_scores([], "stacker", stacker) > 0.0
    # no kept box but a candidate below conf: its d, m and d * m, with n_boxes 0
    zb = -1.0 + 1.0 * (0.04 - 0.5) / 0.5 + 2.0 * (0.5 - 0.5) / 0.5 + 0.0 - 0.5 * (0 - 1) / 1
    assert aggregate_scores([], "stacker", stacker, L(0.04, 0.5)) == pytest.approx(1 / (1 + math.exp(-zb)))
    with pytest.raises(ValueError, match="coefficients"):
        aggregate_scores(BOXES, "stacker", None)
    with pytest.raises(ValueError, match="features"):
        stacker_score([0, 0, 0, 0], {**stacker, "features": ["other"]})
    with pytest.raises(ValueError, match="one of"):
        aggregate_scores(BOXES, "mean")
    assert set(AGGREGATES) == {"max", "max_product", "noisy_or", "noisy_or_product", "stacker"}


def test_stacker_fit_matches_an_unpenalised_logistic_regression_and_is_plain_json():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.random((300, 4)) * [1, 1, 1, 5]
    y = (rng.random(300) < 1 / (1 + np.exp(-(3 * x[:, 1] - 1.5)))).astype(int)
    fit = fit_stacker(x, y, l2=1e-6)
    json.dumps(fit)  # plain numbers only
    ref = LogisticRegression(C=1e8, max_iter=5000).fit((x - x.mean(0)) / x.std(0), y)
    assert np.allclose(fit["coef"], ref.coef_[0], atol=1e-3)
    assert fit["intercept"] == pytest.approx(ref.intercept_[0], abs=1e-3)


# --- folds by patient -------------------------------------------------------------------------------------
def _records(n_patients=30, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for p in range(n_patients):
        malignant = rng.random() < 0.3
        for side in range(2):
            iid = f"im{p:03d}_{side}"
            lesions = (Lesion(iid, f"pat{p}", (10, 10, 50, 50), "mass", "malignant", "csv"),) if malignant and side \
                else ()
            out.append(ImageRecord(iid, f"pat{p}", Path(f"/nowhere/{iid}.png"), lesions))
    return out


def test_no_woman_in_two_folds_and_folds_stratified():
    from pipeline.cross_validate import assign_folds, fold_splits
    from mammo.config import load_config

    records = _records()
    folds = assign_folds(records, 5, seed=0)
    assert set(folds) == {r.image_id for r in records}
    by_patient = {}
    for r in records:
        by_patient.setdefault(r.patient_id, set()).add(folds[r.image_id])
    assert all(len(f) == 1 for f in by_patient.values())
    positives = [sum(r.label for r in records if folds[r.image_id] == k) for k in range(5)]
    assert max(positives) - min(positives) <= 1
    cfg = load_config(overrides=["data.split_fractions={train: 0.75, val: 0.25}"])
    for k in range(5):
        s = fold_splits(records, folds, k, cfg)
        assert {r.image_id for r in s["test"]} == {i for i, f in folds.items() if f == k}
        inner = {r.patient_id for r in s["train"]} | {r.patient_id for r in s["val"]}
        assert not inner & {r.patient_id for r in s["test"]}
        assert not {r.patient_id for r in s["train"]} & {r.patient_id for r in s["val"]}
    with pytest.raises(Exception, match="folds"):
        assign_folds(records, 1, 0)


# --- settings chosen on OOF predictions -------------------------------------------------------------------
def _oof(k=4, n=80, seed=0):
    """Synthetic OOF: malignant images have a strong box; every image has weak noise boxes."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        label = int(rng.random() < 0.3)
        lesions = [L(float(rng.uniform(0.001, 0.2)), float(rng.random())) for _ in range(rng.integers(0, 6))]
        if label and rng.random() < 0.8:
            lesions.append(L(float(rng.uniform(0.3, 0.9)), float(rng.uniform(0.4, 1))))
        images.append(OofImage(f"im{i}", f"p{i // 2}", (i // 2) % k, label, tuple(lesions)))
    return OofSet(images, k, conf=0.001, max_det=20)


def test_operating_point_is_chosen_on_oof_and_records_where_it_came_from():
    oof = _oof()
    op = choose_operating_point(oof, n_boot=20)
    s = op["settings"]
    assert s["pipeline.aggregate"] in AGGREGATES and s["detector.conf"] >= oof.conf
    assert 1 <= s["detector.max_det"] <= oof.max_det
    assert op["k"] == 4 and "out-of-fold" in op["source"] and set(op["per_fold_settings"]) == {"0", "1", "2", "3"}
    assert 0 <= op["figures"]["cross_fitted"]["auroc"]["value"] <= 1
    json.dumps(op, default=float)
    for written in (op["settings"], *op["per_fold_settings"].values()):  # read back as written
        assert Settings.from_dict(written).to_dict() == written


def test_among_equal_scores_the_setting_that_shows_the_scoring_box_wins():
    """No box reaches conf 0.5 here, so conf 0.5 (every image scored by its candidate below conf) and conf 0.01
    (the same candidate kept) give identical image scores: the lower conf wins, so the box is shown."""
    images = [OofImage(f"i{n}", f"p{n}", n % 2, n % 2, (L(0.2 + 0.01 * n, 0.1 + 0.8 * (n % 2) + 0.005 * n),))
              for n in range(12)]
    oof = OofSet(images, 2, 0.01, 5)
    assert list(oof.scores(0.5, 1, "max_product")) == list(oof.scores(0.01, 1, "max_product"))
    chosen = choose_settings(oof, grid=[(0.5, 1, "max_product"), (0.01, 1, "max_product")])
    assert chosen.conf == 0.01
    chosen = choose_settings(oof, grid=[(0.01, 1, "max_product"), (0.5, 1, "max_product")])  # order-free
    assert chosen.conf == 0.01


def test_a_setting_chosen_for_a_fold_never_reads_that_folds_labels():
    oof = _oof()
    # a planted leak: a chooser that ignores the folds it was given and looks at every label
    with pytest.raises(LabelLeak, match="fold"):
        choose_operating_point(oof, n_boot=5, chooser=lambda train: choose_settings(oof))
    # and the fair chooser's setting for fold 0 does not move when fold 0's labels are flipped
    flipped = OofSet([OofImage(im.image_id, im.patient_id, im.fold, 1 - im.label if im.fold == 0 else im.label,
                               im.lesions) for im in oof.images], oof.k, oof.conf, oof.max_det)
    a = choose_operating_point(oof, n_boot=5)["per_fold_settings"]["0"]
    b = choose_operating_point(flipped, n_boot=5)["per_fold_settings"]["0"]
    assert a == b


def test_refiltering_keeps_the_strongest_boxes_like_the_detector():
    oof = OofSet([OofImage("a", "p", 0, 1, (L(0.05, 0.9), L(0.5, 0.1), L(0.2, 0.3)))], 2, 0.001, 20)
    assert [l.detector_score for l in oof.kept(0.1, 1)[0]] == [0.5]
    assert [l.detector_score for l in oof.kept(0.01, 2)[0]] == [0.5, 0.2]
    # nothing kept at 0.6: the strongest box under it scores the image, as the detector's below_conf does
    assert oof.below(0.6)[0].detector_score == 0.5 and oof.below(0.1) == [None]
    assert oof.scores(0.6, 1, "max_product") == pytest.approx([0.5 * 0.1])


# --- per lesion kind --------------------------------------------------------------------------------------
def test_sensitivity_by_kind_at_the_overall_operating_point():
    truths = [np.array([[0, 0, 10, 10], [50, 50, 60, 60]]), np.array([[0, 0, 10, 10]]), np.zeros((0, 4))]
    kinds = [["CALC", "SPIC"], ["CALC"], []]
    preds = [(np.array([[1, 1, 9, 9]]), np.array([0.9])),            # finds image 0's CALC
             (np.array([[2, 2, 8, 8]]), np.array([0.3])),            # finds image 1's CALC, weakly
             (np.array([[100, 100, 110, 110]]), np.array([0.5]))]    # a false positive
    curve, report = froc_report(preds, truths, kinds, rates=(0.0, 0.25, 0.5))
    out = report["by_kind"]
    assert report["sensitivity"] == {str(r): curve.sensitivity_at(r) for r in (0.0, 0.25, 0.5)}
    assert report["n_lesions"] == 3 and report["n_images"] == 3
    assert out["CALC"]["n"] == 2 and out["CALC"]["hit_any_box"] == 2 and out["SPIC"]["hit_any_box"] == 0
    assert out["CALC"]["sensitivity"]["0.0"] == 0.5  # only the 0.9 box is kept without a false positive
    assert out["CALC"]["sensitivity"]["0.25"] == 0.5  # the 0.5 FP would make 1/3 FP per image
    assert out["CALC"]["sensitivity"]["0.5"] == 1.0  # 1/3 FP per image allowed: down to the 0.3 box
    assert out["SPIC"]["sensitivity"]["0.5"] == 0.0
    mias = Lesion("x", "p", (0, 0, 1, 1), "mass", "malignant", "mias", "SPIC")
    assert mias.kind == "SPIC" and Lesion("x", "p", None, "calcification", "benign", "csv").kind == "calcification"


# --- the command, end to end ------------------------------------------------------------------------------
def _oof_files(out: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted((out / "oof").glob("*.json"))}


@pytest.mark.slow
def test_cross_validate_two_folds_resumes_after_a_kill_with_the_same_oof(tmp_path):
    from mammo.synthetic import write_synthetic_dataset
    from pipeline.demo import demo_overrides

    csv_path = write_synthetic_dataset(tmp_path / "data", 40, seed=0, shape=(256, 192))
    out = tmp_path / "cv"
    cmd = [sys.executable, "-m", "pipeline", "cross-validate", "--folds", "2", "--out", str(out),
           "--predict-max-det", "20", "--baseline", *demo_overrides(csv_path, "tiny"), "detector.epochs=1", "classifier.epochs=2",
           "pipeline.bootstrap=20", "run.name=cv-test"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # 1. killed between folds: fold 0 finished, fold 1 under way
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 1200
    while not (out / "folds" / "fold0" / "DONE.json").is_file():
        assert proc.poll() is None, "the run ended before finishing fold 0"
        assert time.time() < deadline, "fold 0 took too long"
        time.sleep(1)
    time.sleep(3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "folds" / "fold1" / "DONE.json").exists()
    fold0 = {p.name: p.read_bytes() for p in (out / "folds" / "fold0" / "predictions").glob("*.json")}
    done0 = (out / "folds" / "fold0" / "DONE.json").read_bytes()
    # 2. the rerun resumes: fold 0 is not redone, fold 1 is, then the OOF predictions and their evaluation
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fold 0: finished earlier" in result.stdout
    assert {p.name: p.read_bytes() for p in (out / "folds" / "fold0" / "predictions").glob("*.json")} == fold0
    assert (out / "folds" / "fold0" / "DONE.json").read_bytes() == done0
    # every image exactly one OOF prediction, no woman in two folds
    with open(csv_path) as f:
        images = {Path(r["image"]).stem: r["patient_id"] for r in csv.DictReader(f)}
    oof = _oof_files(out)
    assert sorted(Path(n).stem for n in oof) == sorted(images)
    with open(out / "folds.csv") as f:
        rows = list(csv.DictReader(f))
    assert len({(r["patient_id"], r["fold"]) for r in rows}) == len({r["patient_id"] for r in rows})
    op = json.loads((out / "operating_point.json").read_text())
    assert op["k"] == 2 and op["n_images"] == 40
    # the findings rule and the probability ride along; every OOF JSON carries them as infer would
    assert 0 <= op["findings"]["detector.findings_conf"] <= 1 and "cross_fitted" in op["findings"]
    some = json.loads(next(iter(oof.values())))
    assert "probability" in some and all({"finding", "scores_image"} <= set(l) for l in some["lesions"])
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert metrics["n_images"] == 40 and "by_kind" in metrics["froc"]
    assert metrics["image"]["single-stage baseline"]["n"] == 40  # its OOF scores too, side by side
    assert (out / "config.yaml").is_file()
    # 3. once more: nothing retrained, the same OOF predictions
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "fold 1: finished earlier" in again.stdout
    assert _oof_files(out) == oof


@pytest.mark.slow  # keras re-saves the classifier: ~35 s on a loaded machine
def test_bundle_records_settings_from_kfold_oof_and_infer_uses_the_stacker(tmp_path):
    from mammo.config import load_config
    from pipeline.models import PipelineModels, read_bundle
    from pipeline.operating_point import read_operating_point
    from pipeline.train_all import make_bundle
    from test_pipeline_parts import tiny_keras_model

    op = choose_operating_point(_oof(), n_boot=5)
    op["settings"].update({"pipeline.aggregate": "stacker", "detector.conf": 0.05, "detector.max_det": 5,
                           "stacker": fit_stacker(np.random.default_rng(0).random((20, 4)), [0, 1] * 10)})
    op["findings"] = {"detector.findings_conf": 0.02, "detector.findings_max": 4, "max_fp_per_image": 1.0,
                      "rule": "r", "p_lesion": {"method": "platt", "a": 1.0, "b": 0.5},
                      "p_malignant": {"method": "identity"}, "cross_fitted": {"figures": {"sensitivity": 0.5}}}
    (tmp_path / "op.json").write_text(json.dumps(op, default=float))
    op = read_operating_point(tmp_path / "op.json")
    (tmp_path / "det.pt").write_bytes(b"detector weights")
    tiny_keras_model(tmp_path / "clf" / "model.keras")
    make_bundle(load_config(), tmp_path / "det.pt", tmp_path / "clf", tmp_path / "bundle", description="t",
                operating_point=op)
    bundle = read_bundle(tmp_path / "bundle")
    recorded = bundle.info["operating_point"]
    assert recorded["k"] == 4 and "out-of-fold" in recorded["source"] and "cross_fitted" in recorded["figures"]
    assert bundle.threshold == op["settings"]["threshold"]
    assert {"detector.conf=0.05", "detector.max_det=5", "pipeline.aggregate=stacker"} <= set(bundle.config_overrides)
    # the findings rule travels too: its thresholds as overrides, its box maps in pipeline.json
    assert {"detector.findings_conf=0.02", "detector.findings_max=4"} <= set(bundle.config_overrides)
    assert bundle.findings["p_lesion"] == {"method": "platt", "a": 1.0, "b": 0.5}
    models = PipelineModels(None, None, bundle.threshold, stacker=bundle.info["stacker"])
    assert 0 < aggregate_scores([], "stacker", models.stacker) < 1
    bad = dict(op, settings={**op["settings"], "detector.max_det": 10_000})
    (tmp_path / "bad.json").write_text(json.dumps(bad, default=float))
    with pytest.raises(Exception, match="max_det"):
        read_operating_point(tmp_path / "bad.json")


@pytest.mark.parametrize("change, problem", [
    ({"detector.max_det": 101}, "detector.max_det 101"),  # more boxes than the fold predictions keep
    ({"pipeline.aggregate": "mean"}, "must be one of"),
    ({"pipeline.aggregate": "stacker", "stacker": None}, "coefficients"),
    ({"pipeline.aggregate": "stacker", "stacker": {"features": ["other"]}}, "features"),
])
def test_read_operating_point_refuses_what_infer_would_refuse(tmp_path, change, problem):
    from mammo.config import MAX_PREDICT_BOXES
    from pipeline.operating_point import read_operating_point

    op = {"k": 4, "settings": {"detector.conf": 0.05, "detector.max_det": MAX_PREDICT_BOXES,
                               "pipeline.aggregate": "max", "threshold": 0.4}}
    path = tmp_path / "op.json"
    path.write_text(json.dumps(op))
    assert read_operating_point(path) == op
    path.write_text(json.dumps({**op, "settings": {**op["settings"], **change}}))
    with pytest.raises(MammoError, match=problem) as refused:
        read_operating_point(path)
    assert str(path) in str(refused.value)


def test_infer_refuses_the_stacker_without_coefficients_before_any_image(tmp_path):
    from mammo.config import load_config
    from mammo.errors import ConfigError
    from pipeline.infer import run_inference
    from pipeline.models import PipelineModels

    cfg = load_config(overrides=["pipeline.aggregate=stacker"])
    with pytest.raises(ConfigError, match="coefficients"):
        run_inference([str(tmp_path)], tmp_path / "out", PipelineModels(None, None, 0.5), cfg, progress=False)
    with pytest.raises(ConfigError, match="aggregate"):  # an unknown rule: refused when the config is read
        load_config(overrides=["pipeline.aggregate=mean"])


# --- calibrated probabilities (cross-fitted) --------------------------------------------------------------
def test_cross_fitted_probabilities_are_reported_with_the_base_rate_beside_them():
    from mammo.calibration import apply_calibration

    oof = _oof(n=160)
    op = choose_operating_point(oof, n_boot=20)
    s = op["settings"]
    assert s["calibration"]["method"] in ("identity", "platt", "isotonic")
    assert s["probability_threshold"] == pytest.approx(apply_calibration(s["calibration"], [s["threshold"]])[0])
    prob = op["figures"]["cross_fitted_probability"]
    for key in ("ece", "brier", "brier_base_rate", "auroc", "aupr"):
        assert 0 <= prob[key]["value"] <= 1 and prob[key]["low"] <= prob[key]["high"]
    assert sum(prob["reliability"]["n"]) == len(oof.images)
    curve = op["figures"]["operating_curve"]
    assert curve["probability"][0] == 0 and curve["probability"][-1] == 1 and len(curve["probability"]) == 101
    assert curve["sensitivity"][0] == 1 and curve["specificity"][0] == 0  # threshold 0 calls every image
    assert np.all(np.diff(curve["sensitivity"]) <= 0) and np.all(np.diff(curve["specificity"]) >= 0)
    assert set(op["figures"]["per_fold"]) == {"0", "1", "2", "3", "mean"}
    for k, fold in op["per_fold_settings"].items():  # each fold's own map, fitted on the other folds only
        assert fold["calibration"]["chosen_by"]["n"] == sum(im.fold != int(k) for im in oof.images)


def test_a_folds_calibration_never_reads_that_folds_labels():
    oof = _oof(n=160)
    flipped = OofSet([OofImage(im.image_id, im.patient_id, im.fold, 1 - im.label if im.fold == 0 else im.label,
                               im.lesions) for im in oof.images], oof.k, oof.conf, oof.max_det)
    a = choose_operating_point(oof, n_boot=5)
    b = choose_operating_point(flipped, n_boot=5)
    assert a["per_fold_settings"]["0"]["calibration"] == b["per_fold_settings"]["0"]["calibration"]
    assert a["per_fold_settings"]["1"]["calibration"] != b["per_fold_settings"]["1"]["calibration"]


def test_a_rule_no_cross_fitted_fold_could_judge_is_not_shipped():
    """Two folds: each cross-fitted chooser sees ONE training fold, too few to cross-fit the stacker, so the
    stacker is never judged there. On all OOF it could be fitted, and here it would win (positives have one box,
    negatives three; every fixed rule ties or ranks them the wrong way): it must not ship unmeasured."""
    images = [OofImage(f"i{n}", f"p{n}", n % 2, int(n % 3 == 0),
                       tuple(L(0.5, 0.5, (10 * j, 0, 10 * j + 5, 5)) for j in range(1 if n % 3 == 0 else 3)))
              for n in range(60)]
    oof = OofSet(images, 2, 0.001, 5)
    assert choose_settings(oof).aggregate == "stacker"  # what the all-OOF choice alone would ship
    op = choose_operating_point(oof, n_boot=5)
    assert all(f["pipeline.aggregate"] != "stacker" for f in op["per_fold_settings"].values())
    assert op["settings"]["pipeline.aggregate"] != "stacker"


def test_the_baseline_is_judged_at_each_folds_own_threshold(tmp_path):
    from pipeline.cross_validate import baseline_oof, fold_dir
    from pipeline.evaluate import BASELINE_THRESHOLD

    def write(thresholds):
        for k, t in enumerate(thresholds):
            fold_dir(tmp_path, k).mkdir(parents=True, exist_ok=True)
            scores = {f"im{k}_{i}": 0.1 * i for i in range(3)}
            (fold_dir(tmp_path, k) / "baseline_scores.json").write_text(json.dumps({**scores,
                                                                                   BASELINE_THRESHOLD: t}))
        return baseline_oof(tmp_path, len(thresholds))

    merged = write([0.25, 0.1, 0.4])
    assert merged["im1_2"] == pytest.approx(0.2)
    assert merged[BASELINE_THRESHOLD] == {f"im{k}_{i}": t for k, t in enumerate([0.25, 0.1, 0.4]) for i in range(3)}
    # fold 0 is judged by its own threshold alone: another fold's (chosen on fold 0's images) does not move it
    other = write([0.25, 0.9, 0.4])
    assert all(other[BASELINE_THRESHOLD][f"im0_{i}"] == 0.25 for i in range(3))
