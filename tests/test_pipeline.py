"""End to end: `pipeline infer` and `export-rois` with real (tiny, synthetic-trained) models on real files."""
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from ci import unavailable

from mammo.config import load_config
from mammo.synthetic import synthetic_mammogram, write_synthetic_dataset
from pipeline.models import PipelineModels, read_bundle

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def image_folder(tmp_path):
    csv_path = write_synthetic_dataset(tmp_path / "data", 4, seed=7, n_lesions=1)
    return csv_path.parent / "images"


def run_cli(*args, timeout=900, env=None):
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def test_folder_with_bad_files_fails_those_and_does_the_rest(tiny_bundle, image_folder, tmp_path):
    from dicom_fixtures import write_dicom

    good = sorted(image_folder.glob("*.png"))
    corrupt = write_dicom(image_folder / "corrupt.dcm", np.zeros((64, 64), np.uint16))
    corrupt.write_bytes(corrupt.read_bytes()[:-2000])  # pixel data cut short
    (image_folder / "empty.dcm").write_bytes(b"")
    (image_folder / "notes.dcm").write_text("this is a text file renamed .dcm\n")
    (image_folder / "readme.txt").write_text("not an image: skipped and counted, not failed")
    out = tmp_path / "out"
    result = run_cli("infer", image_folder, "--out", out, "--models", tiny_bundle)
    assert result.returncode == 1, result.stderr[-3000:]  # something failed: the exit code says so
    rows = {Path(r["source"]).name: r for r in csv.DictReader(open(out / "predictions.csv"))}
    assert list(csv.DictReader(open(out / "predictions.csv")))[0].keys() == {
        "image_id", "source", "probability", "score", "n_lesions", "domain", "status", "error"}
    for bad in ("corrupt.dcm", "empty.dcm", "notes.dcm"):
        assert rows[bad]["status"] == "failed" and bad in rows[bad]["error"], rows[bad]
    assert "empty" in rows["empty.dcm"]["error"]
    for g in good:
        assert rows[g.name]["status"] == "done"
        check_contract(out, rows[g.name]["image_id"], g)
    assert "readme.txt" not in rows
    assert (out / "config.yaml").is_file()
    assert not list(out.glob("*.partial*")) and not list(out.glob(".*partial*"))


def check_contract(out: Path, image_id: str, source: Path):
    data = json.loads((out / f"{image_id}.json").read_text())
    h, w = cv2.imread(str(source), cv2.IMREAD_UNCHANGED).shape[:2]
    assert (data["width"], data["height"]) == (w, h)
    assert data["source"] == str(source)
    assert 0 <= data["score"] <= 1 and 0 <= data["threshold"] <= 1
    # which domain the image was treated as, and why (mammo.domain); a raster has no header: a setting decided
    assert data["domain"] in ("film", "digital") and data["domain_source"] in ("dicom-header", "setting")
    assert data["domain_reason"] and (source.suffix == ".dcm" or data["domain_source"] == "setting")
    assert data["decision"] == ("malignant" if data["score"] >= data["threshold"] else "not malignant")
    if data.get("probability") is not None:  # a monotone map: a malignant call is at or above the threshold's probability
        assert 0 <= data["probability"] <= 1
        if data["decision"] == "malignant":
            assert data["probability"] >= data["probability_threshold"]
    mal = [l["malignancy"] for l in data["lesions"]]
    assert mal == sorted(mal, reverse=True)
    if mal:
        assert data["score"] == pytest.approx(max(mal), abs=1e-4)  # aggregate: max (the bundle's default)
    for l in data["lesions"]:
        x1, y1, x2, y2 = l["box"]
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        assert 0 <= l["detector_score"] <= 1 and 0 <= l["malignancy"] <= 1
    heat = cv2.imread(str(out / data["heatmap"]), cv2.IMREAD_UNCHANGED)
    k = data["heatmap_downscale"]  # the heatmap covers the original grid at the stated 1/k
    assert k >= 1 and heat.shape == (-(-h // k), -(-w // k)) and heat.dtype == np.uint16
    assert (out / f"{image_id}_overlay.png").is_file()


@pytest.mark.parametrize("downscale", [1, 4])
def test_heatmap_lands_on_the_lesion_after_crop_flip_resize(downscale):
    """A disc on a breast facing right (so preprocessing crops AND flips before the detector's letterbox
    resize), through stand-in models of known output (tests/standins.py: a detector boxing bright blobs, a
    classifier whose Grad-CAM is the bright-pixel map): the box lands on the disc and the fused heatmap peaks on
    it in original pixels. How well a tiny trained model finds discs differs between machines; this does not."""
    import dataclasses

    from mammo.config import DetectorConfig
    from pipeline.infer import StepTimer, analyse_image
    from standins import blob_detector, bright_spot_classifier

    cfg = load_config()
    cfg = dataclasses.replace(cfg, pipeline=dataclasses.replace(cfg.pipeline, heatmap_downscale=downscale))
    models = PipelineModels(blob_detector(DetectorConfig(imgsz=256, conf=0.01)), bright_spot_classifier(64), 0.5)
    for seed in range(4):
        mammogram, lesions = synthetic_mammogram(1000 + seed, n_lesions=1, side="right", radius=(18, 22))
        lesion = lesions[0].box
        results, canvas, _ = analyse_image(mammogram, models, cfg, StepTimer())
        cx, cy = (lesion[0] + lesion[2]) / 2, (lesion[1] + lesion[3]) / 2
        assert len(results) == 1 and results[0].box[0] <= cx <= results[0].box[2] \
            and results[0].box[1] <= cy <= results[0].box[3], (seed, results, lesion)
        heat = canvas.pixels
        h, w = mammogram.shape
        assert heat.shape == (-(-h // downscale), -(-w // downscale))
        peak_y, peak_x = np.unravel_index(np.argmax(heat), heat.shape)
        # the peak pixel's centre, back on the original grid through the canvas' own transform
        (px, py), = canvas.original_to_canvas.inverse().apply([[peak_x + 0.5, peak_y + 0.5]])
        radius = (lesion[2] - lesion[0]) / 2
        # on the lesion (a ring's bright band or a disc): within its radius plus a crop pixel (~1.5 px here)
        # and one canvas pixel
        assert np.hypot(px - cx, py - cy) <= radius + 2 + downscale, (seed, px, py, cx, cy)
        ys, xs = np.nonzero(heat > 0)  # and nothing painted away from it
        far = np.hypot((xs + 0.5) * downscale - cx, (ys + 0.5) * downscale - cy) > radius + 4 + 2 * downscale
        assert not far.any(), (seed, int(far.sum()))


def test_an_image_without_a_kept_box_is_scored_by_its_strongest_candidate_below_conf(tmp_path):
    """With conf above every candidate nothing is kept: the strongest candidate is still classified and scores
    the image (d * m) instead of a tie at 0, is written as `below_conf` (not a lesion, no heatmap), and is the
    very box that a low conf keeps."""
    from mammo.config import DetectorConfig
    from pipeline.infer import StepTimer, analyse_image, infer_image
    from pipeline.results import read_result
    from standins import blob_detector, bright_spot_classifier

    cfg = load_config()
    mammogram, _ = synthetic_mammogram(1001, n_lesions=1, side="right", radius=(18, 22))
    classifier = bright_spot_classifier(64)
    low = PipelineModels(blob_detector(DetectorConfig(imgsz=256, conf=0.01)), classifier, 0.5)
    found, _, below = analyse_image(mammogram, low, cfg, StepTimer())
    assert len(found) == 1 and below is None
    high = PipelineModels(blob_detector(DetectorConfig(imgsz=256, conf=0.999)), classifier, 0.5)
    none, canvas, below = analyse_image(mammogram, high, cfg, StepTimer())
    assert none == [] and canvas.pixels.max() == 0
    assert below.box == found[0].box and below.detector_score == found[0].detector_score
    assert below.malignancy == pytest.approx(found[0].malignancy, abs=1e-6)
    result = infer_image(mammogram, "img", tmp_path / "img.png", high, cfg, 0.5, tmp_path, StepTimer())
    assert result.score == pytest.approx(below.detector_score * below.malignancy, abs=1e-6) and result.score > 0
    back = read_result(tmp_path / "img.json")
    assert back.lesions == [] and back.below_conf.box == [round(v, 2) for v in below.box]


def test_findings_beside_the_scoring_box_are_marked_under_gradcam_with_both_numbers(tmp_path):
    """Two lesions, one kept box scoring the image (max_det 1) and a findings rule showing every box: the JSON
    holds both boxes, marks the one that scores the image, gives each its P(lesion) and P(malignant), Grad-CAM
    covers both, and the image's probability is the score through the models' map (rank score beside it)."""
    import csv as csv_module

    from mammo.calibration import apply_calibration
    from mammo.config import DetectorConfig
    from pipeline.infer import StepTimer, done_row, infer_image
    from pipeline.results import aggregate_scores, read_result, write_predictions_csv
    from standins import blob_detector, bright_spot_classifier

    cfg = load_config()
    cal = {"method": "platt", "a": 0.5, "b": 1.0}
    findings = {"p_lesion": {"method": "platt", "a": 2.0, "b": -1.0}, "p_malignant": {"method": "identity"}}
    mammogram, truth = synthetic_mammogram(1003, n_lesions=2, side="left", radius=(16, 20))
    detector = blob_detector(DetectorConfig(imgsz=256, conf=0.01, max_det=1, findings_conf=0.01))
    models = PipelineModels(detector, bright_spot_classifier(64), 0.3, calibration=cal, findings=findings,
                            threshold_source="chosen on a test")
    result = infer_image(mammogram, "img", tmp_path / "img.png", models, cfg, 0.3, tmp_path, StepTimer())
    back = read_result(tmp_path / "img.json")
    assert len(back.lesions) == 2 and sorted(l.finding for l in back.lesions) == [True, True]
    scoring = [l for l in back.lesions if l.scores_image]
    assert len(scoring) == 1 and scoring[0].detector_score == max(l.detector_score for l in back.lesions)
    assert result.score == pytest.approx(aggregate_scores(scoring, cfg.pipeline.aggregate), abs=1e-4)
    for l in back.lesions:
        assert l.p_lesion == pytest.approx(apply_calibration(findings["p_lesion"], [l.detector_score])[0], abs=1e-4)
        assert l.p_malignant == pytest.approx(l.detector_score * l.malignancy, abs=1e-4)
    assert back.probability == pytest.approx(apply_calibration(cal, [result.score])[0])
    assert back.probability_threshold == pytest.approx(apply_calibration(cal, [0.3])[0])
    assert back.threshold_source == "chosen on a test"
    heat = cv2.imread(str(tmp_path / back.heatmap), cv2.IMREAD_UNCHANGED)
    scale = heat.shape[0] / mammogram.shape[0]
    for l in back.lesions:  # Grad-CAM painted on every shown finding, not only the scoring box
        x1, y1, x2, y2 = (int(v * scale) for v in l.box)
        assert heat[y1:y2 + 1, x1:x2 + 1].max() > 0
    write_predictions_csv(tmp_path, [done_row(back)])
    row = next(csv_module.DictReader(open(tmp_path / "predictions.csv")))
    assert float(row["probability"]) == pytest.approx(back.probability, abs=1e-5)
    assert float(row["score"]) == pytest.approx(back.score, abs=1e-5)


def test_killed_run_resumes_without_redoing_or_losing_images(tiny_bundle, tmp_path):
    csv_path = write_synthetic_dataset(tmp_path / "data", 8, seed=3)
    images = csv_path.parent / "images"
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipeline", "infer", str(images), "--out", str(out), "--models", str(tiny_bundle)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and len(list(out.glob("syn*.json"))) < 2 and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in out.glob("syn*.json")}
    assert 2 <= len(done_before) < 8, "killed mid-run"
    (out / ".syn003_0009_overlay.x1y2z3.partial.png").write_bytes(b"half a file")  # as a kill mid-write leaves
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    for name, mtime in done_before.items():
        assert (out / name).stat().st_mtime_ns == mtime, f"{name} was redone"
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 8 and all(r["status"] == "done" for r in rows)
    assert len({r["image_id"] for r in rows}) == 8
    assert len(list(out.glob("syn*.json"))) == 8
    assert not [p for p in out.iterdir() if "partial" in p.name]


@pytest.mark.slow
def test_no_patient_identifier_reaches_output_names(tiny_bundle, tmp_path):
    """DICOMs named after the patient (the name in another form than the file's PatientName, an MRN, the
    dataset's patient token): no output name, CSV row, JSON or run.json carries it with source_paths=none."""
    from dicom_fixtures import write_dicom

    mammogram, _ = synthetic_mammogram(5, n_lesions=1)
    pixels = np.round(mammogram.pixels * 4095).astype(np.uint16)
    src = tmp_path / "in"
    src.mkdir()
    write_dicom(src / "Mass-Test_P_00820_LEFT_CC.dcm", pixels, bits_stored=12, PatientID="P_00820",
                PatientName="Mass-Test_P_00820_LEFT_CC")
    write_dicom(src / "DOE_JANE_L_CC.dcm", pixels, bits_stored=12, PatientID="X7", PatientName="DOE^JANE")
    write_dicom(src / "MRN12345_L_CC.dcm", pixels, bits_stored=12, PatientID="MRN12345", AccessionNumber="A77")
    out = tmp_path / "out"
    result = run_cli("infer", src, "--out", out, "--models", tiny_bundle, "pipeline.source_paths=none")
    assert result.returncode == 0, result.stderr[-3000:]
    written = " ".join([p.name for p in out.iterdir()] + [p.read_text() for p in out.glob("*.json")]
                       + [(out / "predictions.csv").read_text(), result.stdout, result.stderr]).lower()
    words = set(re.split(r"[^a-z0-9]+", written))  # 'doe' as a name part, not inside 'does'
    assert not {"doe", "jane"} & words
    # decimal numbers (timings such as "read": 0.00820860800013179) may hold the digits of an id by chance: the
    # ids are searched in all the rest of the text
    no_decimals = re.sub(r"\d+\.\d+(?:e[-+]?\d+)?", " ", written)
    for secret in ("00820", "12345", str(src).lower()):
        assert secret not in no_decimals, secret
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 3 and all(r["image_id"].startswith("img_") and r["source"] == "" for r in rows)
    # a rerun recognises the done images by their salted source key, although no path was written
    again = run_cli("infer", src, "--out", out, "--models", tiny_bundle, "pipeline.source_paths=none")
    assert again.returncode == 0 and "3 done (3 from an earlier run)" in again.stdout, again.stdout[-2000:]


def test_export_rois_contact_sheet_opens_in_a_browser(tiny_bundle, tmp_path):
    from mammo.annotations import read_annotations
    from pipeline.export import ROI_COLUMNS, export_rois

    csv_path = write_synthetic_dataset(tmp_path / "data", 4, seed=11, n_lesions=1)
    annotations = read_annotations("csv", csv_path)
    bundle = read_bundle(tiny_bundle)
    cfg = load_config(overrides=bundle.config_overrides)
    out = tmp_path / "review"
    with PipelineModels.load(bundle, cfg) as m:
        summary = export_rois([], out, m, cfg, annotations, progress=False)
    rows = list(csv.DictReader(open(out / "rois.csv")))
    assert rows and list(rows[0].keys()) == ROI_COLUMNS
    assert sum(r["kind"] == "true" for r in rows) == 4  # every annotated lesion is exported
    assert all(r["review_label"] == "" for r in rows)
    assert [float(r["malignancy"]) for r in rows] == sorted((float(r["malignancy"]) for r in rows), reverse=True)
    for r in rows:
        assert (out / "crops" / f"{r['roi_id']}.png").is_file()
        assert (out / "overlays" / f"{r['image_id']}.png").is_file()
    assert summary["rois"] == len(rows)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        unavailable("no headless browser installed (apt-get install chromium) to open index.html",
                    "scripts/system-deps.sh")
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=5000", "--dump-dom",
                          (out / "index.html").as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert f'data-images-ok="{len(rows)}"' in dom, dom[-2000:]
    assert 'data-images-broken="0"' in dom
    assert f"{len(rows)} shown" in dom


def test_export_rois_decides_at_the_operating_threshold_in_force(tmp_path):
    """`pipeline.threshold=...` overrides the models' threshold in export-rois' sheet as it does in infer
    (stand-in models: every crop's malignancy is at least sigmoid(-1) = 0.27, below the shipped 0.99)."""
    from mammo.annotations import read_annotations
    from mammo.config import DetectorConfig
    from pipeline.export import export_rois
    from standins import blob_detector, bright_spot_classifier

    annotations = read_annotations("csv", write_synthetic_dataset(tmp_path / "data", 2, seed=5, n_lesions=1))
    models = PipelineModels(blob_detector(DetectorConfig(imgsz=256, conf=0.01)), bright_spot_classifier(64), 0.99)
    export_rois([], tmp_path / "review", models, load_config(overrides=["pipeline.threshold=0.2"]), annotations,
                progress=False)
    rows = list(csv.DictReader(open(tmp_path / "review" / "rois.csv")))
    page = (tmp_path / "review" / "index.html").read_text()
    assert rows and all(float(r["malignancy"]) >= 0.2 for r in rows)
    assert "operating threshold on the image score 0.2000" in page
    assert all(r["image_decision"] == "malignant" for r in rows)  # every image's score (max malignancy) >= 0.2
    assert page.count('data-pred="malignant"') == len(rows) and 'data-pred="not-malignant"' not in page


def test_export_rois_shows_what_infer_shows_with_both_probabilities(tmp_path):
    """export-rois goes through infer's analyse_image: the same boxes, each marked (scores the image, finding)
    with its P(lesion) and P(malignant), beside its image's score, probability and call; the true lesions are
    rows of their own; no path in the CSV; the threshold on the sheet to 4 decimals, on both scales."""
    from mammo.annotations import read_annotations
    from mammo.calibration import apply_calibration
    from mammo.config import DetectorConfig
    from pipeline.export import ROI_COLUMNS, export_rois
    from pipeline.infer import run_inference
    from pipeline.results import read_results
    from standins import blob_detector, bright_spot_classifier

    data = write_synthetic_dataset(tmp_path / "data", 3, seed=9, n_lesions=2)
    images = sorted((data.parent / "images").iterdir())
    cal = {"method": "platt", "a": 0.5, "b": 1.0}
    findings = {"p_lesion": {"method": "platt", "a": 2.0, "b": -1.0}, "p_malignant": {"method": "identity"}}
    detector = blob_detector(DetectorConfig(imgsz=256, conf=0.01, max_det=1, findings_conf=0.01))
    models = PipelineModels(detector, bright_spot_classifier(64), 0.0229, calibration=cal, findings=findings)
    cfg = load_config()
    export_rois(images, tmp_path / "review", models, cfg, progress=False)
    run_inference(images, tmp_path / "infer", models, cfg, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "review" / "rois.csv")))
    assert list(rows[0].keys()) == ROI_COLUMNS
    inferred = {r.image_id: r for r in read_results(tmp_path / "infer")}
    assert {r["image_id"] for r in rows} == set(inferred)
    for image_id, result in inferred.items():
        mine = [r for r in rows if r["image_id"] == image_id]
        assert np.allclose(sorted((float(r["x1"]), float(r["y1"])) for r in mine),
                           sorted((l.box[0], l.box[1]) for l in result.lesions), atol=0.1)
        assert sum(r["scores_image"] == "yes" for r in mine) == 1  # max_det 1: one box scores the image
        assert all(r["finding"] == "yes" for r in mine)
        for r in mine:
            assert float(r["image_score"]) == pytest.approx(result.score, abs=1e-5)
            assert float(r["image_probability"]) == pytest.approx(result.probability, abs=1e-4)
            assert r["image_decision"] == result.decision
            d = float(r["detector_score"])
            assert float(r["p_lesion"]) == pytest.approx(apply_calibration(findings["p_lesion"], [d])[0], abs=2e-4)
            assert float(r["p_malignant"]) == pytest.approx(d * float(r["malignancy"]), abs=2e-4)
    page = (tmp_path / "review" / "index.html").read_text()
    assert "operating threshold on the image score 0.0229 (P(malignant) " in page
    assert f"{apply_calibration(cal, [0.0229])[0]:.4f})" in page
    assert str(tmp_path) not in (tmp_path / "review" / "rois.csv").read_text()
    # with the truth: the annotated lesions as rows of kind 'true', numbers that do not apply left empty
    truth = read_annotations("csv", data)
    export_rois([], tmp_path / "truth", models, cfg, truth, progress=False)
    true = [r for r in csv.DictReader(open(tmp_path / "truth" / "rois.csv")) if r["kind"] == "true"]
    assert len(true) == sum(len(r.boxed_lesions) for r in truth.images)
    assert all(r["detector_score"] == r["p_lesion"] == r["scores_image"] == r["finding"] == "" for r in true)
    assert all(r["image_score"] != "" for r in true)


def test_evaluate_with_a_trained_single_stage_baseline_side_by_side(tiny_bundle, tmp_path):
    """`evaluate --train-baseline`: infer on the validation split, train the whole-breast baseline on the same
    split, and report both (image level) from one command."""
    csv_path = write_synthetic_dataset(tmp_path / "data", 24, seed=21, shape=(256, 192))
    data = ["data.format=csv", f"data.annotations={csv_path}", "data.split_fractions={train: 0.5, val: 0.5}",
            "classifier.input_size=32", "classifier.epochs=2", "classifier.batch_size=8", "pipeline.bootstrap=50",
            "run.name=t"]
    preds = tmp_path / "preds"
    result = run_cli("infer", "--split", "val", "--out", preds, "--models", tiny_bundle, *data)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli("evaluate", "--predictions", preds, "--split", "val", "--train-baseline", *data,
                     "--out", tmp_path / "eval", env={"MAMMO_RUN_DIR": str(tmp_path / "runs")})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(report["image"]) == {"two-stage", "single-stage baseline"}
    assert report["image"]["single-stage baseline"]["n"] == report["image"]["two-stage"]["n"] == 12
    assert "| image | single-stage baseline |" in (tmp_path / "eval" / "metrics.md").read_text()


def test_bundle_with_a_baseline_and_the_benchmark_measures_both(tiny_bundle, tmp_path):
    """train-baseline -> bundle --baseline -> benchmark --data: the quality table has the two-stage pipeline and
    the shipped baseline side by side, on the same validation images."""
    csv_path = write_synthetic_dataset(tmp_path / "data", 24, seed=21, shape=(256, 192))
    data = ["data.format=csv", "data.split_fractions={train: 0.5, val: 0.5}", "classifier.input_size=32",
            "classifier.epochs=2", "classifier.batch_size=8", "pipeline.bootstrap=50", "run.name=t"]
    env = {"MAMMO_RUN_DIR": str(tmp_path / "runs")}
    result = run_cli("train-baseline", "--out", tmp_path / "baseline", f"data.annotations={csv_path}", *data, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "baseline" / "model.keras").is_file() and (tmp_path / "baseline" / "config.yaml").is_file()
    tiny = read_bundle(tiny_bundle)
    result = run_cli("bundle", "--detector", tiny.detector, "--classifier", tiny.classifier, "--baseline",
                     tmp_path / "baseline", "--out", tmp_path / "bundle", f"data.annotations={csv_path}",
                     *tiny.config_overrides, *data, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    bundle = read_bundle(tmp_path / "bundle", require_manifest=True)
    assert bundle.baseline is not None and (bundle.baseline / "config.yaml").is_file()
    result = run_cli("benchmark", "--quick", "--models", tmp_path / "bundle", "--data", csv_path, "--format", "csv",
                     "--folder-sizes", "--backends", "torch", "--out", tmp_path / "bench", *data, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "bench" / "benchmark.json").read_text())
    quality = report["quality"]
    assert set(quality["image"]) == {"two-stage", "single-stage baseline"} and quality["baseline_shipped"]
    assert quality["image"]["two-stage"]["n"] == quality["image"]["single-stage baseline"]["n"] == 12
    assert report["folders"] == []  # --folder-sizes with no value: no folder runs
    assert "| image | single-stage baseline |" in (tmp_path / "bench" / "benchmark.md").read_text()
    assert "by_kind" in quality["froc"] and "| kind | lesions |" in (tmp_path / "bench" / "benchmark.md").read_text()
