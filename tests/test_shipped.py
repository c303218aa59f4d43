"""The models shipped in weights/: their manifest, that they load and predict on a real DICOM, the bundle writer
that made them, and the benchmark command in its quick mode."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mammo.errors import WeightsError
from pipeline.models import BUNDLE_FILE, MANIFEST, read_bundle, write_bundle
from conftest import sample_dicom_paths
from test_pipeline_parts import tiny_keras_model

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "weights"


def test_weights_are_shipped_small_and_listed_in_the_manifest():
    assert (SHIPPED / BUNDLE_FILE).is_file(), "weights/ must hold the shipped bundle"
    bundle = read_bundle(SHIPPED, require_manifest=True)
    listed = [line.split(maxsplit=1)[1] for line in (SHIPPED / MANIFEST).read_text().splitlines() if line.strip()]
    assert {"detector.pt", "classifier/model.keras", "pipeline.json"} <= set(listed)
    for name in listed:
        assert (SHIPPED / name).stat().st_size <= 20 * 2**20, f"{name} is over 20 MB"
    assert 0.0 < bundle.threshold < 1.0  # a real operating point, not 'call everything malignant'
    assert (SHIPPED / "MODEL_CARD.md").is_file()


@pytest.mark.parametrize("tamper", ["flip a byte", "truncate"])
def test_shipped_bundle_refuses_a_modified_weight_file(tmp_path, tamper):
    root = shutil.copytree(SHIPPED, tmp_path / "weights")
    target = root / "detector.pt"
    data = bytearray(target.read_bytes())
    if tamper == "flip a byte":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    target.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="SHA-256 differs"):
        read_bundle(root, require_manifest=True)


def test_bundle_writer_strips_the_optimizer_and_keeps_the_predictions(tmp_path):
    import keras

    source = tiny_keras_model(tmp_path / "run" / "model.keras", compile_and_fit=True)
    baseline = tiny_keras_model(tmp_path / "baseline" / "model.keras")
    (source.parent / "config.yaml").write_text("classifier:\n  backbone: tiny\n")  # the run's resolved config
    (tmp_path / "train" / "weights").mkdir(parents=True)
    (tmp_path / "train" / "config.yaml").write_text("detector:\n  imgsz: 64\n")
    (tmp_path / "train" / "weights" / "best.pt").write_bytes(b"detector weights")
    write_bundle(tmp_path / "bundle", tmp_path / "train" / "weights" / "best.pt", source.parent, 0.3,
                 baseline_dir=baseline.parent)
    bundle = read_bundle(tmp_path / "bundle", require_manifest=True)
    # the training runs' resolved configs travel with the models (and are covered by the manifest)
    assert (bundle.classifier / "config.yaml").read_text() == "classifier:\n  backbone: tiny\n"
    assert (bundle.root / "detector_config.yaml").read_text() == "detector:\n  imgsz: 64\n"
    assert "detector_config.yaml" in (bundle.root / MANIFEST).read_text()
    assert bundle.baseline == tmp_path / "bundle" / "baseline"
    shipped = bundle.classifier / "model.keras"
    assert shipped.stat().st_size < source.stat().st_size  # Adam's two slots per weight are gone
    x = np.random.default_rng(0).random((5, 8, 8, 1)).astype(np.float32)
    a = keras.models.load_model(source, compile=False)(x).numpy()
    b = keras.models.load_model(shipped, compile=False)(x).numpy()
    np.testing.assert_array_equal(a, b)


def test_shipped_models_infer_on_a_real_dicom(tmp_path):
    """The README's main command on one real full-size DICOM: the shipped models, not the demo ones."""
    dicom = sample_dicom_paths()[0]
    out = subprocess.run([sys.executable, "-m", "pipeline", "infer", str(dicom), "--out", str(tmp_path / "out")],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"models: {SHIPPED}" in out.stdout and "demo" not in out.stdout.lower()
    import csv

    (row,) = csv.DictReader(open(tmp_path / "out" / "predictions.csv"))
    assert row["status"] == "done"
    result = json.loads((tmp_path / "out" / f"{row['image_id']}.json").read_text())
    import pydicom

    ds = pydicom.dcmread(dicom, stop_before_pixels=True)
    assert (result["width"], result["height"]) == (ds.Columns, ds.Rows)
    assert result["threshold"] == read_bundle(SHIPPED).threshold
    assert result["decision"] == ("malignant" if result["score"] >= result["threshold"] else "not malignant")
    # its header (Secondary Capture, Conversion Type WSD) does not say: the shipped default treats it as film, and
    # says so in the JSON, the CSV and on stdout
    assert (result["domain"], result["domain_source"]) == ("film", "setting") and row["domain"] == "film"
    assert result["domain_reason"].startswith("pipeline.domain_fallback=film: ") and "WSD" in result["domain_reason"]
    assert "domain: 1 as film by the setting pipeline.domain_fallback" in out.stdout
    for lesion in result["lesions"]:
        x1, y1, x2, y2 = lesion["box"]
        assert 0 <= x1 < x2 <= ds.Columns and 0 <= y1 < y2 <= ds.Rows
        assert 0.0 <= lesion["malignancy"] <= 1.0
    # the image score is the bundle's rule over what the JSON says (lesions, or the candidate below conf); the
    # JSON rounds box values to 5 decimals, the score keeps full precision
    from pipeline.results import aggregate_scores, read_result

    back = read_result(tmp_path / "out" / f"{row['image_id']}.json")
    assert result["aggregate"] == next(o.split("=")[1] for o in read_bundle(SHIPPED).config_overrides
                                       if o.startswith("pipeline.aggregate="))
    stacker = read_bundle(SHIPPED).info.get("stacker")
    assert result["score"] == pytest.approx(aggregate_scores(back.lesions, back.aggregate, stacker, back.below_conf),
                                            abs=1e-4)
    import cv2

    heatmap = cv2.imread(str(tmp_path / "out" / result["heatmap"]), cv2.IMREAD_UNCHANGED)
    k = result["heatmap_downscale"]  # stated in the JSON: the heatmap covers the original grid at 1/k
    assert heatmap.shape == (-(-ds.Rows // k), -(-ds.Columns // k))
    assert str(ds.PatientID) not in " ".join(os.listdir(tmp_path / "out"))


def test_benchmark_quick_mode_measures_every_step(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pipeline", "benchmark", "--quick", "--backends", "torch", "--out",
                          str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert report["backend"] == report["machine"]["keras_backend"] == "torch"
    assert report["machine"]["tensorflow"] == "not imported"
    assert report["config"]["classifier"]["inference_backend"] == "torch"
    speed = report["speed"]
    assert speed["images"] == 1 and speed["repeats"] == 1
    row = speed["per_image"][0]
    steps = ("read", "preprocess", "detect", "crop", "classify", "map_back", "write")  # classify: with Grad-CAM
    assert all(row[s] >= 0 for s in steps) and row["read"] > 0 and row["detect"] > 0 and row["write"] > 0
    assert row["total"] == pytest.approx(sum(row[s] for s in steps))
    assert 0 < row["detector_forward"] < row["total"]
    assert speed["median_seconds"]["total_over_floor"] > 1.0  # the floor leaves out reading and writing
    # the loaded pass carries up to max_det boxes (nested near-duplicates merged) through the second stage
    loaded = report["speed_loaded"]["per_image"][0]
    assert report["speed_loaded"]["max_det"] == max(report["config"]["detector"]["max_det"], 10)
    assert 2 <= loaded["n_lesions"] <= report["speed_loaded"]["max_det"]
    assert loaded["crop"] > 0 and loaded["classify"] > 0 and loaded["map_back"] > 0
    assert 0 < loaded["classifier_forward"] < loaded["total"]
    folder = report["folders"][0]
    assert folder["images"] == folder["done"] == 2 and folder["failed"] == 0
    assert 100 < folder["peak_rss_mb"] < 24 * 1024
    assert 0 < folder["median_image_seconds"] <= folder["p95_image_seconds"]
    cold = report["cold_start"]  # a fresh `pipeline infer ONE.dcm`: first result, then exit
    assert 0 < cold["first_result_seconds"] <= cold["exit_seconds"] and cold["load_average_before"] >= 0
    assert report["machine"]["cores_available"] >= 1
    text = (tmp_path / "benchmark.md").read_text()
    assert "total / floor" in text and "peak memory" in text and "Cold start" in text and "p95" in text
    assert (tmp_path / "config.yaml").is_file()
    # both backends side by side (here one report twice): a column and a load average per backend on every row
    from pipeline.benchmark import side_by_side

    table = side_by_side({"torch": report, "tensorflow": report})
    rows = [line for line in table.splitlines() if line.startswith("| first result") or line.startswith("| folder")]
    assert rows and all(line.count(" -> ") == 2 for line in rows)
    assert "# Backend: torch" in table and "# Backend: tensorflow" in table


def test_shipped_models_run_a_digital_image_through_the_global_branch(tmp_path):
    """The shipped bundle has models for digital images: one real DICOM told to be digital runs the global branch
    with the digital operating point (and says so), not the film stages."""
    from classifier.global_branch import GlobalBranch
    from mammo.calibration import apply_calibration
    from mammo.imaging import read_mammogram

    bundle = read_bundle(SHIPPED, require_manifest=True)
    section = bundle.domains["digital"]
    dicom = sample_dicom_paths()[0]
    out = subprocess.run([sys.executable, "-m", "pipeline", "infer", str(dicom), "--out", str(tmp_path / "out"),
                          "pipeline.domain=digital", "--no-dicom-out"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    import csv

    (row,) = csv.DictReader(open(tmp_path / "out" / "predictions.csv"))
    result = json.loads((tmp_path / "out" / f"{row['image_id']}.json").read_text())
    assert (result["domain"], result["aggregate"], result["lesions"]) == ("digital", "global_branch", [])
    assert result["threshold"] == pytest.approx(section["threshold"])
    assert "digital" in result["threshold_source"]
    branch = GlobalBranch.load(SHIPPED / section["global_branch"])
    logit = branch.analyse(read_mammogram(dicom).pixels).logit
    score = 1 / (1 + np.exp(-logit))
    assert result["score"] == pytest.approx(score, abs=1e-4)  # the JSON's score is the branch's, recomputed here
    assert result["probability"] == pytest.approx(float(apply_calibration(section["calibration"], [score])[0]),
                                                  abs=1e-4)
    assert result["decision"] == ("malignant" if result["score"] >= result["threshold"] else "not malignant")
    trained = (SHIPPED / section["global_branch"] / "trained_on.txt").read_text().split()
    assert len(trained) == json.loads((SHIPPED / "trained_on.json").read_text())[
        f"{section['global_branch']}/ (digital)"]["n"]
