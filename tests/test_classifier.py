"""Classifier models, weights, calibration and crop datasets, on tiny inputs."""
import mammo.runtime  # noqa: F401  (first: import order)

import os
from pathlib import Path

import keras
import numpy as np
import pytest

from mammo import metrics as M
from mammo.config import ClassifierConfig
from mammo.errors import ConfigError, WeightsError
from mammo.synthetic import write_synthetic_dataset

from classifier.calibration import Calibrator
from classifier.model import BACKBONES, build_model, make_optimizer

BACKBONE_NAMES = sorted(BACKBONES)


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    """Many models are built in one process: free each test's graph."""
    yield
    keras.backend.clear_session()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
def test_every_backbone_builds_and_trains_a_step(backbone, channels):
    keras.utils.set_random_seed(0)
    cfg = ClassifierConfig(backbone=backbone, input_size=32, channels=channels,
                           head="dense" if channels == 3 else "gap", dense_units=16)
    model = build_model(cfg)
    assert tuple(model.inputs[0].shape[1:]) == (32, 32, 1)  # grey crops in, whatever the backbone needs
    assert model.get_layer("backbone").inputs[0].shape[-1] == channels
    # eager: tracing the train step of DenseNet121 or ResNet50 takes 10x longer than running it
    model.compile(make_optimizer(cfg), "binary_crossentropy", run_eagerly=True)
    rng = np.random.default_rng(0)
    x = rng.random((2, 32, 32, 1)).astype(np.float32)
    y = np.array([0, 1], np.float32)
    before = [w.copy() for w in model.get_weights()]
    losses = [float(model.train_on_batch(x, y))]
    assert np.isfinite(losses).all(), losses
    p = model(x, training=False).numpy()
    assert p.shape == (2, 1) and np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # it did learn


def test_heads_follow_the_studies():
    dense = build_model(ClassifierConfig(input_size=32, head="dense", dense_units=64))
    names = [l.name for l in dense.layers]
    assert names[names.index("backbone") + 1:] == ["gap", "head_dense1", "head_bn1", "head_dropout1", "head_dense2",
                                                   "head_bn2", "head_dropout2", "logit", "malignancy"]
    assert dense.get_layer("head_dense1").units == 64 and dense.get_layer("head_dense2").units == 32
    assert dense.get_layer("head_dropout1").rate == 0.5 and dense.get_layer("head_dropout2").rate == 0.3
    gap = build_model(ClassifierConfig(input_size=32, head="gap", dropout=0.2))
    names = [l.name for l in gap.layers]
    assert names[names.index("backbone") + 1:] == ["gap", "head_dropout", "logit", "malignancy"]
    with pytest.raises(ConfigError, match="classifier.head"):
        build_model(ClassifierConfig(input_size=32, head="nope"))
    with pytest.raises(ConfigError, match="classifier.backbone.*alexnet"):
        build_model(ClassifierConfig(input_size=32, backbone="alexnet"))


def test_fine_tune_fraction_freezes_the_early_layers():
    model = build_model(ClassifierConfig(backbone="vgg16", input_size=32, fine_tune_fraction=0.6))
    flags = [l.trainable for l in model.get_layer("backbone").layers]
    n_frozen = round(len(flags) * 0.4)
    assert not any(flags[:n_frozen]) and all(flags[n_frozen:])


def test_imagenet_offline_gives_a_clear_error():
    cache = Path(os.environ["KERAS_HOME"]) / "models"
    if cache.is_dir() and any("mobilenet_v2" in p.name for p in cache.iterdir()):
        pytest.skip(f"ImageNet weights are cached in {cache}: nothing to fail on")
    with pytest.raises(WeightsError) as err:
        build_model(ClassifierConfig(backbone="mobilenet_v2", weights="imagenet", input_size=96))
    msg = str(err.value)
    assert "could not load ImageNet weights for mobilenet_v2" in msg
    assert "classifier.weights=/path/to/" in msg and "classifier.weights=none" in msg
    with pytest.raises(ConfigError, match="no ImageNet weights"):
        build_model(ClassifierConfig(backbone="small_cnn", weights="imagenet", input_size=32))


def test_local_weights_file_is_loaded(tmp_path):
    """A local file goes into the backbone; ImageNet families then get the grey channel repeated to 3."""
    src = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "mnv2_notop.weights.h5"
    src.save_weights(path)
    model = build_model(ClassifierConfig(backbone="mobilenet_v2", weights=str(path), input_size=32, channels=1))
    backbone = model.get_layer("backbone")
    assert backbone.inputs[0].shape[-1] == 3
    for a, b in zip(src.get_weights(), backbone.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(WeightsError, match="not found"):
        build_model(ClassifierConfig(backbone="small_cnn", weights=str(tmp_path / "missing.h5"), input_size=32))


# --- calibration -----------------------------------------------------------------------------------------
def overconfident_scores(seed=0, n=300):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    z = 6.0 * (rng.normal(0, 1, n) + (2 * y - 1))  # logits 3x too large (see below)
    return 1 / (1 + np.exp(-z)), y


@pytest.mark.parametrize("method", ["temperature", "platt"])
def test_calibration_keeps_the_ranking_and_improves_likelihood(method):
    p, y = overconfident_scores()
    cal = Calibrator(method).fit(p, y, "test")
    q = cal(p)
    assert cal.calibrated
    assert M.auroc(y, q) == M.auroc(y, p) and M.aupr(y, q) == pytest.approx(M.aupr(y, p))
    assert np.all(np.diff(q[np.argsort(p)]) >= 0)
    from classifier.calibration import negative_log_likelihood as nll

    assert nll(q, y) < nll(p, y) - 0.1
    if method == "temperature":
        # x ~ N(+-1, 1) has true log-odds 2x, and the scores' logits are 6x: the right temperature is 3
        assert 2.5 < cal.params["temperature"] < 3.5
    again = Calibrator.from_dict(cal.to_dict())
    np.testing.assert_allclose(again(p), q)


def test_temperature_stays_bounded_and_keeps_the_ranking_of_scores_without_signal():
    # Scores unrelated to the labels: the likelihood is best at T -> infinity (all 0.5). An unbounded fit once ran
    # to T = 2e21, where every probability rounds to exactly 0.5 and auROC becomes 0.5.
    from classifier.calibration import MAX_TEMPERATURE

    rng = np.random.default_rng(4)
    p = np.repeat(1 / (1 + np.exp(-rng.normal(0, 3, 200))), 2)
    y = np.tile([0, 1], 200)  # every score once with each label: no signal at all
    cal = Calibrator("temperature").fit(p, y, "val")
    assert cal.params["temperature"] == pytest.approx(MAX_TEMPERATURE, rel=0.01)
    assert "at its bound" in cal.fitted_on
    q = cal(p)
    assert len(np.unique(q)) == len(np.unique(p)) and M.auroc(y, q) == M.auroc(y, p)


def test_isotonic_is_monotone_and_one_class_stays_uncalibrated():
    p, y = overconfident_scores(1)
    q = Calibrator("isotonic").fit(p, y)(p)
    # never reverses an order (it may pool neighbours into ties, which is why it is not the default)
    assert np.all(np.diff(q[np.argsort(p, kind="stable")]) >= -1e-12) and q.min() >= 0 and q.max() <= 1
    assert len(np.unique(q)) < len(np.unique(p))
    one = Calibrator("temperature").fit(p, np.ones_like(y))
    assert not one.calibrated and "one class" in one.fitted_on
    np.testing.assert_array_equal(one(p), p)


# --- crop datasets ----------------------------------------------------------------------------------------
def test_crop_dataset_kinds_cache_and_splits(tmp_path, monkeypatch):
    from classifier import data as D
    from mammo.annotations import read_annotations
    from mammo.splits import split_by_patient

    csv_path = write_synthetic_dataset(tmp_path / "syn", 8, seed=3, shape=(160, 128))
    ann = read_annotations("csv", csv_path)
    cfg = ClassifierConfig(input_size=24, crops_per_lesion=2, negatives_per_image=3)
    # a detection on the first lesion (labelled like it) and one far from everything (background)
    les_img = next(r for r in ann.images if r.lesions)
    l0 = les_img.lesions[0]
    far = (0.0, 0.0, 6.0, 6.0)
    dets = {les_img.image_id: [D.Detection(tuple(v + 1 for v in l0.box), 0.9), D.Detection(far, 0.2)]}
    crops = D.build_crops(ann.images, cfg, seed=0, detections=dets, cache_dir=tmp_path / "cache", progress=False)
    n_lesions = sum(len(r.boxed_lesions) for r in ann.images)
    n_normal = sum(1 for r in ann.images if not r.lesions)
    kinds = crops.manifest["kind"].value_counts().to_dict()
    assert kinds["truth"] == n_lesions and kinds["jitter"] == 2 * n_lesions
    assert kinds.get("background", 0) == 3 * n_normal
    assert kinds["detection"] == 1 and kinds["detection_background"] == 1
    det = crops.manifest[crops.manifest["kind"] == "detection"].iloc[0]
    assert det["label"] == int(l0.malignant)
    assert crops.images.shape == (len(crops.manifest), 24, 24)
    # the truth crop is exactly the crop function's output
    truth = crops.manifest[(crops.manifest["kind"] == "truth") & (crops.manifest["image_id"] == les_img.image_id)]
    from mammo.crops import crop_roi
    from mammo.imaging import read_mammogram

    ref, _ = crop_roi(read_mammogram(les_img.path).pixels, l0.box, cfg.context_margin, 24)
    np.testing.assert_allclose(crops.images[truth.index[0]].astype(np.float32), ref, atol=1e-3)

    # a second build comes from the cache without reading any image, with the same manifest (ids as text)
    monkeypatch.setattr(D, "read_mammogram", lambda *a, **k: pytest.fail("image read despite the cache"))
    again = D.build_crops(ann.images, cfg, seed=0, detections=dets, cache_dir=tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(again.images, crops.images)
    assert list(again.manifest["image_id"]) == list(crops.manifest["image_id"])
    assert list(again.manifest["kind"]) == list(crops.manifest["kind"])
    # ... but other settings are another cache entry
    with pytest.raises(pytest.fail.Exception):
        D.build_crops(ann.images, ClassifierConfig(input_size=24, crops_per_lesion=1), seed=0,
                      cache_dir=tmp_path / "cache", progress=False)

    splits = split_by_patient(ann.images, {"train": 0.5, "val": 0.5}, seed=0)
    with_split = crops.with_splits(splits)
    for name, ims in splits.items():
        ids = {im.image_id for im in ims}
        assert set(with_split.select(name).manifest["image_id"]) <= ids
    with pytest.raises(ValueError, match="input_size"):
        with_split.check_settings(ClassifierConfig(input_size=32))
