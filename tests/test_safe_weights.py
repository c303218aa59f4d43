"""No code runs from a detector .pt: a planted pickle payload is refused before unpickling, wherever a .pt enters
(a --models bundle with or without its own manifest, --weights of the detector CLI), with an error that names the
file and the reason. Real checkpoints (the shipped one, a tiny trained one, a resumable last.pt) still load.

The payload is real: the control test shows that an ordinary unpickling of the same file creates the marker.
"""
import mammo.runtime  # noqa: F401  (first)

import contextlib
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detector.checkpoint import ALLOWED, load_checkpoint
from mammo.errors import WeightsError
from pipeline.models import MANIFEST, read_bundle, verify_manifest, write_manifest

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "weights"


class Payload:
    """Unpickling this runs `open(marker, 'w')`: what an attacker's detector.pt would do with os.system."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


class CalledConv:
    """An allow-listed class *called* with arguments from the file (its constructor would run): a Conv2d sized to
    exhaust memory needs no other global."""

    def __reduce__(self):
        return torch.nn.Conv2d, (1, 1, 1)


def plant(path: Path, marker: Path, kind: str) -> Path:
    if kind == "torch.save":  # the shape of an ultralytics checkpoint, with the payload as its model
        torch.save({"model": Payload(marker), "train_args": {}}, path)
    elif kind == "plain pickle":  # a pre-zip .pt: torch.load falls back to plain unpickling
        path.write_bytes(pickle.dumps(Payload(marker)))
    elif kind == "inside a real checkpoint":  # every class legitimate but one entry
        verify_manifest(SHIPPED)  # the shipped file is trusted: loaded the ordinary way to build the test file
        ckpt = torch.load(SHIPPED / "detector.pt", map_location="cpu", weights_only=False)
        ckpt["date"] = Payload(marker)
        torch.save(ckpt, path)
    return path


KINDS = ["torch.save", "plain pickle", "inside a real checkpoint"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_payload_is_real(tmp_path, kind):
    """Control: unpickled the ordinary way (as ultralytics did), the planted file does create the marker."""
    marker = tmp_path / "pwned"
    weights = plant(tmp_path / "detector.pt", marker, kind)
    with contextlib.suppress(Exception):  # the plain pickle fails afterwards ("invalid magic number"): too late
        torch.load(weights, map_location="cpu", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_payload_as_detector_weights_is_refused_and_never_runs(tmp_path, kind, capsys):
    from detector.__main__ import main

    marker = tmp_path / "pwned"
    weights = plant(tmp_path / "detector.pt", marker, kind)
    image = tmp_path / "scan.png"
    image.write_bytes(b"not read: the weights are refused first")
    assert main(["predict", "--weights", str(weights), "--out", str(tmp_path / "out"), str(image)]) == 2
    err = capsys.readouterr().err
    assert not marker.exists()
    assert str(weights) in err
    if kind == "plain pickle":
        assert "not a checkpoint written by torch.save" in err
    else:
        assert "refused before loading" in err and "builtins.exec" in err and "Nothing from it was run" in err


@pytest.mark.parametrize("own_manifest", [False, True])
def test_payload_in_a_models_bundle_is_refused_with_or_without_its_manifest(tmp_path, own_manifest, capsys):
    from pipeline.__main__ import main

    root = tmp_path / "bundle"
    shutil.copytree(SHIPPED, root)
    marker = tmp_path / "pwned"
    plant(root / "detector.pt", marker, "inside a real checkpoint")
    (root / MANIFEST).unlink()
    if own_manifest:  # an attacker ships a manifest that matches the payload: integrity, not trust
        write_manifest(root)
    scan = tmp_path / "scan.png"  # a real input: inputs are checked before any model loads
    cv2.imwrite(str(scan), np.full((64, 64), 100, np.uint8))
    rc = main(["infer", "--models", str(root), "--out", str(tmp_path / "out"), str(scan)])
    err = capsys.readouterr().err
    assert rc == 2 and not marker.exists()
    assert f"{root / 'detector.pt'}: refused before loading" in err and "builtins.exec" in err
    # the note about models from elsewhere is printed in both cases, and says what a manifest does and does not show
    assert "not the shipped ones" in err
    assert ("does not say by whom" in err) == own_manifest
    assert ("no MANIFEST.sha256" in err) == (not own_manifest)
    assert "can run code" not in err


def test_an_allow_listed_class_called_with_arguments_is_refused(tmp_path):
    weights = tmp_path / "conv.pt"
    torch.save({"model": CalledConv()}, weights)
    with pytest.raises(WeightsError, match=r"a call of torch\.nn\.modules\.conv\.Conv2d") as err:
        load_checkpoint(weights)
    assert str(weights) in str(err.value)


def test_shipped_detector_loads_with_the_same_weights_and_layers(capsys):
    """Loaded through the allow-list, the shipped checkpoint is what an unrestricted load gives: the same tensors
    and the same modules (BatchNorm eps, strides and all), so ultralytics predicts identically from it."""
    from detector.model import LesionDetector
    from mammo.config import load_config

    bundle = read_bundle(SHIPPED, require_manifest=True)
    assert capsys.readouterr().err == ""  # the shipped models: no note
    safe = load_checkpoint(bundle.detector)["model"]
    reference = torch.load(bundle.detector, map_location="cpu", weights_only=False)["model"]  # manifest-verified
    assert repr(safe) == repr(reference) and safe.yaml == reference.yaml and safe.names == reference.names
    ref_state, state = reference.state_dict(), safe.state_dict()
    assert ref_state.keys() == state.keys() and all(torch.equal(ref_state[k], state[k]) for k in state)
    assert set(torch.serialization.get_unsafe_globals_in_checkpoint(bundle.detector)) <= set(ALLOWED)
    cfg = load_config(None, bundle.config_overrides)
    with LesionDetector.load(bundle.detector, cfg.detector, threads=1) as det:  # loads, and predicts (warm-up)
        assert det.names == ["lesion"]


def test_ultralytics_loads_checkpoints_only_through_the_safe_loader():
    from detector.model import use_ultralytics

    use_ultralytics()
    from ultralytics.nn import tasks
    from ultralytics.utils import patches, torch_utils

    assert tasks.torch_safe_load.__module__ == "detector.checkpoint"
    assert {m.torch_load.__module__ for m in (tasks, patches, torch_utils)} == {"detector.checkpoint"}
    assert tasks._SafeLoad.restricted()  # model YAMLs (also a checkpoint's) are built without eval()


@pytest.mark.slow
def test_tiny_trained_bundle_detector_loads(tiny_bundle):
    from detector.model import LesionDetector
    from mammo.config import load_config
    from pipeline.demo import RECIPES

    bundle = read_bundle(tiny_bundle)
    ckpt = load_checkpoint(bundle.detector)
    assert ckpt["train_args"]["imgsz"] == RECIPES["tiny"]["imgsz"]  # the tiny recipe's model, not another
    cfg = load_config(None, bundle.config_overrides)
    with LesionDetector.load(bundle.detector, cfg.detector, threads=1) as det:
        assert det.names == ["lesion"]


@pytest.mark.slow
def test_training_writes_resumable_checkpoints_that_load_and_resume(tmp_path):
    """ultralytics writes last.pt after each epoch (optimizer, EMA, training settings inside); an interrupted run
    resumes from it, and a trained best.pt can be fine-tuned (its model YAML is rebuilt, without eval)."""
    from mammo.config import load_config
    from mammo.synthetic import write_synthetic_dataset

    import detector.train as train_module
    from detector.dataset import export_from_config

    csv_path = write_synthetic_dataset(tmp_path / "syn", 24, seed=1, shape=(128, 96))
    overrides = ["data.format=csv", f"data.annotations={csv_path}", "detector.imgsz=64", "detector.batch=4",
                 "run.threads=1", "detector.train_args={warmup_epochs: 0, workers: 0, cache: false}"]
    cfg = load_config(None, overrides + ["detector.epochs=2"])
    data_yaml = export_from_config(cfg, tmp_path / "ds").data_yaml
    epoch1 = tmp_path / "epoch1_last.pt"  # last.pt as an interruption after epoch 1 would leave it

    def build_and_keep_epoch1(model):
        yolo = build_model(model)
        yolo.add_callback("on_model_save", lambda t: epoch1.exists() or shutil.copyfile(t.last, epoch1))
        return yolo

    build_model = train_module.build_model
    train_module.build_model = build_and_keep_epoch1
    try:
        assert train_module.train(cfg, data_yaml, tmp_path / "run")["epochs_run"] == 2
    finally:
        train_module.build_model = build_model
    raw = load_checkpoint(epoch1)
    assert raw["epoch"] == 0 and raw["optimizer"] is not None and raw["ema"] is not None

    from ultralytics import YOLO

    resumed = YOLO(str(epoch1))
    resumed.train(resume=True, data=str(data_yaml))
    rows = (Path(resumed.trainer.save_dir) / "results.csv").read_text().splitlines()
    assert [r.split(",")[0].strip() for r in rows[1:]] == ["2"]  # only the missing epoch ran

    finetune = load_config(None, overrides + ["detector.epochs=1",
                                              f"detector.model={tmp_path / 'run' / 'weights' / 'best.pt'}"])
    assert train_module.train(finetune, data_yaml, tmp_path / "finetune")["epochs_run"] == 1
    load_checkpoint(tmp_path / "finetune" / "weights" / "best.pt")
