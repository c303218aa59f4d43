"""Grad-CAM: equal to the textbook recipe on a flat copy of a nested model, peaks on the lesion for a stand-in
classifier of known evidence, works with frozen layers, batches consistently, pastes back into the image."""
import mammo.runtime  # noqa: F401  (first: import order)

import keras
import numpy as np
import pytest
import tensorflow as tf

from mammo.config import ClassifierConfig, Config, RunConfig
from mammo.synthetic import draw_lesion

from classifier.data import CropSet
from classifier.gradcam import GradCAM, GradCAMPlusPlus, find_target_layer
from classifier.model import build_model


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    """Many models are built in one process: free each test's graph."""
    yield
    keras.backend.clear_session()


def synthetic_crops(n: int, size: int, seed: int):
    """Malignant = filled bright disc, benign = ring of the same size (mammo.synthetic's lesions), anywhere in
    a noisy crop; returns crops, labels, disc centres (x, y) and radii."""
    rng = np.random.default_rng(seed)
    crops, labels, centres, radii = [], [], [], []
    for i in range(n):
        img = (0.3 + rng.normal(0, 0.04, (size, size))).astype(np.float32)
        r = rng.uniform(0.12, 0.18) * size
        cx, cy = rng.uniform(r + 2, size - r - 2, 2)
        label = i % 2
        draw_lesion(img, cx, cy, r, malignant=bool(label), value=0.9)
        crops.append(np.clip(img, 0, 1)), labels.append(label), centres.append((cx, cy)), radii.append(r)
    return np.stack(crops), np.array(labels), np.array(centres), np.array(radii)


def reference_cam(flat_model, act_tensor, logit_tensor, x, plus_plus=False):
    """The textbook Keras Grad-CAM(++) on a model without nesting."""
    grad_model = keras.Model(flat_model.inputs, [act_tensor, logit_tensor])
    with tf.GradientTape() as tape:
        a, z = grad_model(x, training=False)
        score = z[:, 0]
    g = tape.gradient(score, a).numpy()
    a = a.numpy()
    if plus_plus:  # pytorch-grad-cam's closed form
        g2, g3 = g ** 2, g ** 3
        denom = 2 * g2 + a.sum(axis=(1, 2), keepdims=True) * g3
        alpha = np.where(g != 0, g2 / np.where(denom != 0, denom, 1e-7), 0)
        w = (alpha * np.maximum(g, 0)).sum(axis=(1, 2))
    else:
        w = g.mean(axis=(1, 2))
    cam = np.maximum(np.einsum("nhwc,nc->nhw", a, w), 0)[..., None]
    cam = tf.image.resize(cam, x.shape[1:3], method="bilinear").numpy()[..., 0]
    lo, hi = cam.min(axis=(1, 2), keepdims=True), cam.max(axis=(1, 2), keepdims=True)
    return np.where(hi - lo > 1e-12, (cam - lo) / np.maximum(hi - lo, 1e-12), 0)


def flatten(model):
    """The same layers (shared weights) called in a flat graph; returns the model, the target tensor and the
    logit tensor (a shared layer's `.output` would name its first graph, the nested one)."""
    inp = keras.Input(model.inputs[0].shape[1:])
    x, act, logit = inp, None, None
    for layer in model.layers[1:]:
        inner = layer.layers[1:] if isinstance(layer, keras.Model) else [layer]
        for sub in inner:
            x = sub(x)
            if sub.name == "block4_relu":
                act = x
            if sub.name == "logit":
                logit = x
    return keras.Model(inp, x), act, logit


@pytest.mark.parametrize("method,plus_plus", [(GradCAM, False), (GradCAMPlusPlus, True)])
def test_nested_backbone_matches_textbook_recipe_on_flat_copy(method, plus_plus):
    keras.utils.set_random_seed(0)
    model = build_model(ClassifierConfig(backbone="small_cnn", input_size=32))
    assert isinstance(model.get_layer("backbone"), keras.Model)  # really nested
    x = np.random.default_rng(0).random((5, 32, 32, 1)).astype(np.float32)
    cam = method(model)
    assert cam.target_layer == ("backbone", "block4_relu")
    maps = cam(x)
    flat, act, logit = flatten(model)
    np.testing.assert_allclose(flat(x, training=False), model(x, training=False), atol=1e-6)
    ref = reference_cam(flat, act, logit, x, plus_plus)
    assert maps.shape == (5, 32, 32) and maps.dtype == np.float32
    assert ref.max() > 0.99  # a non-trivial map to compare with
    np.testing.assert_allclose(maps, ref, atol=1e-4)


@pytest.mark.parametrize("backbone,size,layer", [("mobilenet_v2", 64, "out_relu"), ("vgg16", 64, "block5_conv3")])
def test_target_layer_is_found_inside_keras_applications(backbone, size, layer):
    model = build_model(ClassifierConfig(backbone=backbone, input_size=size, channels=3))
    assert find_target_layer(model) == ("backbone", layer)
    maps = GradCAM(model)(np.random.default_rng(1).random((3, size, size)).astype(np.float32))
    assert maps.shape == (3, size, size) and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1


def test_frozen_layers_batches_and_targets():
    keras.utils.set_random_seed(1)
    model = build_model(ClassifierConfig(backbone="small_cnn", input_size=32))
    x = np.random.default_rng(2).random((7, 32, 32)).astype(np.float32)
    maps = GradCAM(model, batch_size=32)(x)
    # batch size does not change the maps
    np.testing.assert_allclose(GradCAM(model, batch_size=3)(x), maps, atol=1e-5)
    # a frozen backbone (no trainable variable before the target) still gives the same maps
    model.get_layer("backbone").trainable = False
    np.testing.assert_allclose(GradCAM(model)(x), maps, atol=1e-5)
    # the target is a function of the logits: the benign direction gives other maps
    other = GradCAM(model, target=lambda z: -z[:, 0])(x)
    assert np.abs(other - maps).max() > 0.1


@pytest.fixture(scope="module")
def trained_synthetic(tmp_path_factory):
    """small_cnn trained through classifier.train.train on a pre-built crop set: disc (1) vs ring (0)."""
    from classifier.train import train

    size = 48
    x_tr, y_tr, _, _ = synthetic_crops(320, size, seed=0)
    x_va, y_va, c_va, r_va = synthetic_crops(64, size, seed=1)
    crops = CropSet.from_arrays(np.concatenate([x_tr, x_va]), np.concatenate([y_tr, y_va]),
                                ["train"] * len(x_tr) + ["val"] * len(x_va), input_size=size, context_margin=0.25)
    cfg = Config(run=RunConfig(seed=0), classifier=ClassifierConfig(
        backbone="small_cnn", input_size=size, epochs=6, patience=6, batch_size=32, augment_strength=0.0,
        learning_rate=3e-3))
    run_dir = tmp_path_factory.mktemp("synthetic_run")
    epochs_seen = []
    metrics = train(cfg, run_dir, crops=crops, on_epoch_end=lambda e, logs: epochs_seen.append((e, logs)),
                    verbose=0)
    return run_dir, metrics, epochs_seen, (x_va, y_va, c_va, r_va)


def test_training_run_reports_every_epoch_and_writes_its_files(trained_synthetic):
    """How well 6 epochs converge differs between machines and is not asserted; what training writes is."""
    run_dir, metrics, epochs_seen, (x_va, y_va, _, _) = trained_synthetic
    assert all(0 <= metrics["val"][k] <= 1 for k in ("auroc", "aupr")), metrics["val"]
    # the pruning hook saw every epoch with the validation metrics it needs
    assert len(epochs_seen) == metrics["epochs_run"] and "val_aupr" in epochs_seen[-1][1]
    for name in ("model.keras", "calibration.json", "metrics.json", "history.json", "learning_curves.png",
                 "val_predictions.csv"):
        assert (run_dir / name).is_file(), name
    from classifier.inference import MalignancyClassifier

    clf = MalignancyClassifier.load(run_dir)
    assert clf.input_size == 48 and clf.context_margin == 0.25 and clf.calibrated
    p = clf.predict(x_va)
    assert p.shape == y_va.shape and np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    assert 0 <= clf.threshold <= 1


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_gradcam_peaks_on_the_disc(method):
    """A stand-in classifier whose malignant logit is the mean bright-pixel map of its last convolution
    (tests/standins.py): Grad-CAM must return that map, so its peak lies on the bright disc of every crop."""
    from standins import bright_spot_classifier

    size = 48
    clf = bright_spot_classifier(size)
    x, y, centres, radii = synthetic_crops(16, size, seed=1)
    maps = clf.gradcam(x, method=method)
    assert maps.shape == (16, size, size) and np.isfinite(maps).all()
    for m, (cx, cy), r in zip(maps, centres, radii):
        py, px = np.unravel_index(np.argmax(m), m.shape)
        assert np.hypot(px + 0.5 - cx, py + 0.5 - cy) <= r + 1
        yy, xx = np.mgrid[:size, :size]
        assert m[np.hypot(xx + 0.5 - cx, yy + 0.5 - cy) > r + 2].max() < 1e-6  # nothing off the lesion
