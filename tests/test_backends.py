"""The classifier on torch or TensorFlow (classifier.inference_backend): one backend per process, the same
numbers on both, and a torch-backend inference that never imports TensorFlow. Keras takes its backend at its
first import, so every torch run here is a child process (this test process runs keras on TensorFlow)."""
import mammo.runtime  # noqa: F401  (first: import order)

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mammo.config import load_config
from mammo.errors import ConfigError, MammoError

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "weights"


def run_child(code: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter at the project root (tests/ importable for the stand-ins)."""
    prelude = f"import sys; sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]\nimport mammo.runtime\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_inference_backend_is_a_checked_setting_defaulting_to_onnx():
    assert load_config(None, []).classifier.inference_backend == "onnx"
    assert load_config(None, ["classifier.inference_backend=tensorflow"]).classifier.inference_backend == "tensorflow"
    assert load_config(None, ["classifier.inference_backend=torch"]).classifier.inference_backend == "torch"
    with pytest.raises(ConfigError, match="classifier.inference_backend"):
        load_config(None, ["classifier.inference_backend=jax"])


def test_a_keras_already_on_another_backend_is_refused_by_name():
    import keras

    from mammo.runtime import use_keras_backend

    assert keras.backend.backend() == "tensorflow"
    assert use_keras_backend("tensorflow") == "tensorflow"  # the one it runs on: fine
    with pytest.raises(MammoError, match="already imported on the tensorflow backend.*inference_backend=tensorflow"):
        use_keras_backend("torch")
    with pytest.raises(ConfigError, match="inference_backend"):
        use_keras_backend("jax")


def test_inference_in_a_process_whose_keras_runs_elsewhere_says_so_and_runs_there(capsys):
    """A test session or notebook that trained first has keras on TensorFlow; inference there runs on it, and says so."""
    import keras

    from mammo.runtime import keras_backend_for_inference

    assert keras.backend.backend() == "tensorflow"
    assert keras_backend_for_inference("torch") == "tensorflow"
    assert "keras already runs on tensorflow" in capsys.readouterr().err
    assert keras_backend_for_inference("tensorflow") == "tensorflow" and capsys.readouterr().err == ""


def test_an_unknown_backend_for_inference_is_refused_before_anything_changes(capsys, monkeypatch):
    """Where keras runs on another backend anyway, an unknown name was silently replaced by it."""
    import keras  # noqa: F401  (imported: the case where the wanted name used to be replaced)

    from mammo.runtime import keras_backend_for_inference

    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    with pytest.raises(ConfigError, match="'jax' is not one of onnx, torch, tensorflow"):
        keras_backend_for_inference("jax")
    assert os.environ["KERAS_BACKEND"] == "tensorflow" and capsys.readouterr().err == ""


def test_bundle_settings_leave_the_backend_to_the_user(tmp_path):
    """A classifier's training config records the backend of its day; it must not override the user's choice."""
    from pipeline.models import Bundle

    (tmp_path / "classifier").mkdir()
    (tmp_path / "classifier" / "config.yaml").write_text(
        "classifier:\n  input_size: 64\n  inference_backend: tensorflow\n")
    settings = Bundle(tmp_path, tmp_path / "detector.pt", tmp_path / "classifier", 0.4).settings()
    assert "classifier.input_size=64" in settings
    assert not any("inference_backend" in s for s in settings)


def _crops(n: int, size: int, seed: int) -> np.ndarray:
    """Noisy crops with a bright disc: maps worth comparing (not all zero)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n):
        cx, cy, r = *rng.uniform(size * 0.3, size * 0.7, 2), rng.uniform(0.1, 0.2) * size
        img = 0.3 + rng.normal(0, 0.05, (size, size)) + 0.5 * (np.hypot(xx - cx, yy - cy) < r)
        out.append(np.clip(img, 0, 1))
    return np.stack(out).astype(np.float32)


@pytest.mark.slow
def test_torch_backend_gives_tensorflows_numbers_and_infers_without_tensorflow(tmp_path):
    """A small_cnn (random weights, nested backbone) saved once: TensorFlow here, torch in a child. The child
    also runs `run_inference` with the stand-in detector (the real LesionDetector around BlobYOLO) and then
    checks that TensorFlow was never imported."""
    import keras

    from classifier.inference import MalignancyClassifier
    from classifier.model import build_model
    from mammo.config import ClassifierConfig

    keras.utils.set_random_seed(3)
    model_dir = tmp_path / "clf"
    model_dir.mkdir()
    build_model(ClassifierConfig(backbone="small_cnn", input_size=32)).save(model_dir / "model.keras")
    crops = _crops(5, 32, seed=4)
    np.save(tmp_path / "crops.npy", crops)
    clf = MalignancyClassifier.load(model_dir)
    expected = {m: clf.predict_and_gradcam(crops, m) for m in ("gradcam", "gradcam++")}
    assert expected["gradcam"][1].max() > 0.99  # a non-trivial map to compare with

    child = run_child(f"""
        mammo.runtime.use_keras_backend("torch")
        import json
        import cv2, numpy as np
        from classifier.inference import MalignancyClassifier
        from mammo.config import load_config
        from mammo.synthetic import draw_lesion
        from pipeline.infer import run_inference
        from pipeline.models import PipelineModels
        from standins import blob_detector

        root = {str(tmp_path)!r}
        clf = MalignancyClassifier.load(root + "/clf")
        crops = np.load(root + "/crops.npy")
        for method in ("gradcam", "gradcam++"):
            p, maps = clf.predict_and_gradcam(crops, method)
            np.save(root + f"/torch_{{method}}_p.npy", p)
            np.save(root + f"/torch_{{method}}_maps.npy", maps)
        np.save(root + "/torch_predict.npy", clf.predict(crops))
        image = np.full((256, 192), 0.3, np.float32)
        draw_lesion(image, 90, 120, 12, malignant=True, value=0.95)
        cv2.imwrite(root + "/scan.png", np.round(image * 255).astype(np.uint8))
        models = PipelineModels(blob_detector(), clf, 0.5)
        summary = run_inference([root + "/scan.png"], root + "/out", models, load_config(None, []), progress=False)
        print("RESULT=" + json.dumps({{"done": summary["done"], "backend": clf.backend_name,
                                       "tensorflow": "tensorflow" in sys.modules}}))
    """)
    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout.split("RESULT=")[-1])
    assert result == {"done": 1, "backend": "torch", "tensorflow": False}
    for method, (p, maps) in expected.items():
        np.testing.assert_allclose(np.load(tmp_path / f"torch_{method}_p.npy"), p, atol=1e-5, rtol=0)
        np.testing.assert_allclose(np.load(tmp_path / f"torch_{method}_maps.npy"), maps, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.load(tmp_path / "torch_predict.npy"), expected["gradcam"][0], atol=1e-5, rtol=0)
    written = json.loads(next(f for f in (tmp_path / "out").glob("*.json")
                              if "decision" in f.read_text()).read_text())
    assert written["lesions"], "the stand-in detector found the bright disc"
    assert len(list((tmp_path / "out").glob("*_heatmap.png"))) == len(list((tmp_path / "out").glob("*_overlay.png"))) == 1


SHIPPED_PASS = """
    if {backend!r} != "onnx":
        mammo.runtime.use_keras_backend({backend!r})
    import dataclasses, json
    import numpy as np
    from mammo.config import load_config
    from mammo.imaging import read_mammogram
    from mammo.preprocess import preprocess
    from pipeline.demo import sample_inputs
    from pipeline.models import PipelineModels, read_bundle

    bundle = read_bundle({weights!r}, require_manifest=True)
    cfg = load_config(None, bundle.settings() + ["classifier.inference_backend={backend}"])
    out = {out!r}
    with PipelineModels.load(bundle, cfg) as models:
        if {backend!r} == "torch":  # the crops: boxes of the real detector, up to 10 per image at a low conf
            det = models.detector
            det.cfg = dataclasses.replace(det.cfg, conf=1e-4, max_det=10)
            crops = []
            for path in sample_inputs():
                m = read_mammogram(path)
                kept, _, _ = det.detect(preprocess(m, cfg.preprocess))
                crops.append(models.classifier.crop_many(m.pixels, [d.box for d in kept])[0])
            np.save(out + "/crops.npy", np.concatenate(crops))
        p, maps = models.classifier.predict_and_gradcam(np.load(out + "/crops.npy"))
        np.save(out + "/{backend}_p.npy", p)
        np.save(out + "/{backend}_maps.npy", maps)
        print("RESULT=" + json.dumps({{"backend": models.classifier.backend_name,
                                       "tensorflow": "tensorflow" in sys.modules}}))
"""


@pytest.mark.slow
def test_shipped_models_give_the_same_malignancy_and_gradcam_on_torch_tensorflow_and_onnx(tmp_path):
    """The sample DICOMs' detector boxes through the shipped classifier on each backend, each in its own
    process: malignancy within 1e-5, Grad-CAM within 1e-4; the torch and onnx processes never import TensorFlow
    (keras there is the digital global branch's, which has no ONNX graph: see the test below)."""
    if not (SHIPPED / "pipeline.json").is_file() or not (SHIPPED / "classifier" / "classifier.onnx").is_file():
        pytest.skip(f"the shipped models are not in {SHIPPED} (weights/pipeline.json, weights/classifier/)")
    seen = {}
    for backend in ("torch", "tensorflow", "onnx"):  # torch first: it writes the crops all use
        child = run_child(SHIPPED_PASS.format(backend=backend, weights=str(SHIPPED), out=str(tmp_path)))
        assert child.returncode == 0, child.stderr[-3000:]
        seen[backend] = json.loads(child.stdout.split("RESULT=")[-1])
    assert seen == {"torch": {"backend": "torch", "tensorflow": False},
                    "tensorflow": {"backend": "tensorflow", "tensorflow": True},
                    "onnx": {"backend": "onnx", "tensorflow": False}}
    crops = np.load(tmp_path / "crops.npy")
    assert len(crops) >= 16, "enough boxes to compare"
    p_torch, p_tf = np.load(tmp_path / "torch_p.npy"), np.load(tmp_path / "tensorflow_p.npy")
    maps_torch, maps_tf = np.load(tmp_path / "torch_maps.npy"), np.load(tmp_path / "tensorflow_maps.npy")
    assert p_torch.shape == p_tf.shape == (len(crops),) and maps_torch.shape == crops.shape
    assert (maps_tf.max(axis=(1, 2)) > 0.99).sum() >= len(crops) // 2  # maps worth comparing
    np.testing.assert_allclose(p_torch, p_tf, atol=1e-5, rtol=0)
    np.testing.assert_allclose(maps_torch, maps_tf, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.load(tmp_path / "onnx_p.npy"), p_torch, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.load(tmp_path / "onnx_maps.npy"), maps_torch, atol=1e-4, rtol=0)


NO_KERAS = """
    from pipeline.__main__ import main
    code = main(["infer", {source!r}, "--out", {out!r}, "--models", {models!r}, "classifier.inference_backend=onnx",
                 *{extra!r}])
    print("RESULT=" + json.dumps({{"code": code, "keras": "keras" in sys.modules,
                                   "tensorflow": "tensorflow" in sys.modules}}))
"""


def _shipped_copy(tmp_path) -> Path:
    """The shipped bundle, copied (tests change its files)."""
    if not (SHIPPED / "classifier" / "classifier.onnx").is_file():
        pytest.skip(f"no shipped {SHIPPED / 'classifier' / 'classifier.onnx'}")
    import shutil

    root = Path(shutil.copytree(SHIPPED, tmp_path / "models"))
    return root


@pytest.mark.slow
def test_infer_on_onnx_imports_neither_keras_nor_tensorflow(tmp_path):
    """`pipeline infer` on a sample DICOM with the shipped models and inference_backend=onnx, in a child: neither
    keras nor TensorFlow imported after, whether it is run as film (detector + classifier) or as digital (the
    global branch's exported graph). (Not an import hook that raises: ultralytics probes for TensorFlow with
    find_spec without importing it.)"""
    from pipeline.demo import sample_inputs

    models = _shipped_copy(tmp_path)
    for domain in ("film", "digital"):
        child = run_child("import json\n" + textwrap.dedent(NO_KERAS).format(
            source=str(sample_inputs()[0]), out=str(tmp_path / domain), models=str(models),
            extra=[f"pipeline.domain={domain}"]))
        assert child.returncode == 0, child.stderr[-3000:]
        assert json.loads(child.stdout.split("RESULT=")[-1]) == {"code": 0, "keras": False, "tensorflow": False}, \
            (domain, child.stderr[-3000:])
        assert "runs on keras" not in child.stderr
        (row,) = csv.DictReader(open(tmp_path / domain / "predictions.csv"))
        assert json.loads((tmp_path / domain / f"{row['image_id']}.json").read_text())["domain"] == domain


def test_an_onnx_graph_that_cannot_stand_in_falls_back_by_name_and_a_damaged_one_is_refused(tmp_path, capsys):
    """Absent, or exported from another model.keras: keras (torch), said on stderr naming the file. Present but
    not a graph: an error naming it. In the shipped bundle, a modified file is refused by its manifest first."""
    from classifier.onnx_backend import ONNX_FILE, open_onnx
    from mammo.errors import WeightsError
    from pipeline.models import read_bundle

    models = _shipped_copy(tmp_path)
    clf_dir = models / "classifier"
    assert open_onnx(clf_dir) is not None and capsys.readouterr().err == ""
    graph, keras_file = (clf_dir / ONNX_FILE).read_bytes(), (clf_dir / "model.keras").read_bytes()
    (clf_dir / "model.keras").write_bytes(keras_file + b"\0")  # "retrained" since the export
    assert open_onnx(clf_dir) is None
    assert f"{clf_dir / ONNX_FILE} was exported from another model.keras" in capsys.readouterr().err
    (clf_dir / "model.keras").write_bytes(keras_file)
    (clf_dir / ONNX_FILE).unlink()
    assert open_onnx(clf_dir) is None
    assert f"no {clf_dir / ONNX_FILE}; the classifier runs on keras instead" in capsys.readouterr().err
    (clf_dir / ONNX_FILE).write_bytes(graph[:1000])  # damaged
    with pytest.raises(WeightsError, match=f"{clf_dir / ONNX_FILE}.*not a readable ONNX graph"):
        open_onnx(clf_dir)
    with pytest.raises(WeightsError, match=f"{clf_dir / ONNX_FILE}.*SHA-256 differs"):
        read_bundle(models)


def test_export_of_a_gap_model_gives_kerass_numbers_without_keras_and_a_dense_head_is_refused(tmp_path, capsys):
    """A small_cnn (random weights) exported: onnxruntime gives the TensorFlow pass's malignancy within 1e-5 and
    Grad-CAM within 1e-4, and gradcam++ (not in the graph) still runs, on keras, saying so. The dense head's map
    is not the constant-weight one: refused by name."""
    try:
        import tf2onnx  # noqa: F401
    except ImportError:
        from ci import unavailable

        unavailable("tf2onnx is not installed (requirements-export.txt)")
    import keras

    from classifier.export_onnx import export_onnx
    from classifier.inference import MalignancyClassifier
    from classifier.model import build_model
    from classifier.onnx_backend import ONNX_FILE
    from mammo.config import ClassifierConfig
    from mammo.errors import WeightsError

    keras.utils.set_random_seed(5)
    for head in ("gap", "dense"):
        (tmp_path / head).mkdir()
        build_model(ClassifierConfig(backbone="small_cnn", input_size=32, head=head)).save(
            tmp_path / head / "model.keras")
    with pytest.raises(WeightsError, match=f"{tmp_path / 'dense' / 'model.keras'}.*not the gap head"):
        export_onnx(tmp_path / "dense")
    assert not (tmp_path / "dense" / ONNX_FILE).exists()
    export_onnx(tmp_path / "gap")
    crops = _crops(5, 32, seed=6)
    expected = MalignancyClassifier.load(tmp_path / "gap").predict_and_gradcam(crops)
    assert expected[1].max() > 0.99  # a non-trivial map to compare with
    clf = MalignancyClassifier.load(tmp_path / "gap", onnx=True)
    assert clf.model is None and clf.backend_name == "onnx"
    p, maps = clf.predict_and_gradcam(crops)
    np.testing.assert_allclose(p, expected[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(maps, expected[1], atol=1e-4, rtol=0)
    capsys.readouterr()
    assert clf.gradcam(crops, "gradcam++").shape == crops.shape
    assert "gradcam++ is not in classifier.onnx" in capsys.readouterr().err


def _standin_branch_folder(folder: Path, weight=(2.0, -1.0)):
    from classifier.global_branch import MilHead, build_global_model
    from standins import block_mean_extractor

    head = MilHead(np.array([0.2, -0.2], np.float32), np.array([0.1, 0.1], np.float32),
                   np.array(weight, np.float32), 0.3, top_fraction=0.25)
    folder.mkdir(parents=True, exist_ok=True)
    build_global_model(block_mean_extractor(), head, grid=4).save(folder / "model.keras")
    (folder / "head.json").write_text(json.dumps({"top_fraction": 0.25, "polarity": "dark_background"}))
    return folder


def test_global_branch_export_gives_kerass_map_and_a_stale_or_broken_graph_is_not_used(tmp_path, capsys):
    """A stand-in branch (block means, a linear head, two Normalization layers) exported: onnxruntime gives keras'
    logit and saliency grid. A graph exported from another model.keras falls back to keras, saying so; a file that
    is not a graph is refused by name."""
    try:
        import tf2onnx  # noqa: F401
    except ImportError:
        from ci import unavailable

        unavailable("tf2onnx is not installed (requirements-export.txt)")
    from classifier.export_onnx import export_global_onnx
    from classifier.global_branch import GLOBAL_ONNX_FILE, GlobalBranch, OnnxPositionLogits
    from mammo.errors import WeightsError

    folder = _standin_branch_folder(tmp_path / "global")
    assert export_global_onnx(folder) == folder / GLOBAL_ONNX_FILE
    pixels = np.random.default_rng(3).random((50, 40)).astype(np.float32) * 0.3
    pixels[5:15, 25:35] = 1.0
    keras_branch, onnx_branch = GlobalBranch.load(folder), GlobalBranch.load(folder, backend="onnx")
    assert isinstance(onnx_branch.model, OnnxPositionLogits) and onnx_branch.size == keras_branch.size == 32
    expected, got = keras_branch.analyse(pixels), onnx_branch.analyse(pixels)
    assert abs(expected.logit) > 0.1  # not a trivial score to agree on
    assert got.logit == pytest.approx(expected.logit, abs=1e-5)
    np.testing.assert_allclose(got.grid, expected.grid, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(got.to_grid.matrix, expected.to_grid.matrix)
    assert got.to_grid.dst_shape == expected.to_grid.dst_shape and got.inverted == expected.inverted
    # retrained since the export: the old graph would give the old model's numbers
    _standin_branch_folder(folder, weight=(-1.0, 2.0))
    capsys.readouterr()
    stale = GlobalBranch.load(folder, backend="onnx")
    assert not isinstance(stale.model, OnnxPositionLogits)
    assert "was not exported from" in capsys.readouterr().err
    (folder / GLOBAL_ONNX_FILE).write_bytes(b"not a graph")
    with pytest.raises(WeightsError, match=f"{folder / GLOBAL_ONNX_FILE}.*not a readable ONNX graph"):
        GlobalBranch.load(folder, backend="onnx")


def test_shipped_global_branch_on_onnx_gives_kerass_numbers_on_the_sample_dicoms():
    """The shipped bundle's model.onnx is the shipped model.keras: the same logit and saliency on real DICOMs."""
    from classifier.global_branch import GlobalBranch, OnnxPositionLogits
    from mammo.imaging import read_mammogram
    from pipeline.demo import sample_inputs

    folder = SHIPPED / "global"
    keras_branch, onnx_branch = GlobalBranch.load(folder), GlobalBranch.load(folder, backend="onnx")
    assert isinstance(onnx_branch.model, OnnxPositionLogits)
    for path in sample_inputs()[:2]:
        pixels = read_mammogram(path).pixels
        expected, got = keras_branch.analyse(pixels), onnx_branch.analyse(pixels)
        assert got.logit == pytest.approx(expected.logit, abs=1e-4), path.name
        np.testing.assert_allclose(got.grid, expected.grid, atol=1e-3, rtol=0)
