"""Pipeline pieces that need no model: inputs, ids, the output contract, heatmap mapping, evaluation."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from mammo.crops import crop_roi
from mammo.geometry import Transform
from mammo.records import ImageRecord, Lesion, Mammogram
from pipeline.evaluate import BASELINE_THRESHOLD, evaluate, lesion_level, match
from pipeline.heatmap import HeatmapCanvas
from pipeline.ids import IdAllocator, image_id_for, looks_like_identifier
from pipeline.inputs import discover
from pipeline.results import (ImageResult, LesionResult, aggregate_scores, decide, read_result, read_results,
                              write_result)


def test_discover_mixes_files_folders_csv_and_counts_skips(tmp_path):
    (tmp_path / "a").mkdir()
    cv2.imwrite(str(tmp_path / "a" / "one.png"), np.zeros((8, 8), np.uint8))
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    dicm = tmp_path / "a" / "sub" / "IM0001"
    dicm.parent.mkdir()
    dicm.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)  # recognized by its preamble, no extension
    (tmp_path / "list.csv").write_text("image\nb.png\n")
    cv2.imwrite(str(tmp_path / "b.png"), np.zeros((8, 8), np.uint8))
    found = discover([tmp_path / "a", tmp_path / "list.csv", tmp_path / "a" / "one.png", tmp_path / "nope.png",
                      tmp_path / "missing_dir"])
    names = [p.name for p in found.images]
    assert names == ["one.png", "IM0001", "b.png"]  # no duplicate
    assert [p.name for p in found.skipped] == ["notes.txt"]
    assert [p.name for p in found.missing] == ["nope.png", "missing_dir"]


@pytest.mark.parametrize("name,expected", [
    ("mdb001", False), ("1-282", False), ("left_cc", False),
    ("Mass-Test_P_00820_LEFT_CC", True), ("20586908_6c613a14b80a8591_MG_R_CC_ANON", True),
    ("1.3.6.1.4.1.9590.100.1.2", True), ("patient_smith", True),
])
def test_identifier_detection(name, expected):
    assert looks_like_identifier(name) is expected


def test_image_ids_hide_identifiers_and_stay_unique(tmp_path):
    assert image_id_for(tmp_path / "mdb001.pgm") == "mdb001"
    hashed = image_id_for(tmp_path / "Mass-Test_P_00820_LEFT_CC.dcm")
    assert hashed.startswith("img_") and "00820" not in hashed
    assert image_id_for(tmp_path / "scan.png", identifiers=["SCAN"]).startswith("img_")
    allocate = IdAllocator("auto", "salt")
    a, b = allocate(tmp_path / "x" / "img.png"), allocate(tmp_path / "y" / "img.png")
    assert a == "img" and b.startswith("img_") and a != b
    assert allocate(tmp_path / "x" / "img.png") == "img"  # same file, same id


def test_aggregate_and_decision():
    boxes = [LesionResult([0, 0, 1, 1], 1.0, 0.2), LesionResult([0, 0, 1, 1], 1.0, 0.5)]
    assert aggregate_scores([], "max") == 0.0
    assert aggregate_scores(boxes, "max") == 0.5
    assert aggregate_scores(boxes, "noisy_or") == pytest.approx(1 - 0.8 * 0.5)
    assert decide(0.5, 0.5) == "malignant" and decide(0.49, 0.5) == "not malignant"


def test_result_json_round_trip_and_contract(tmp_path):
    r = ImageResult("im1", "/data/im1.png", 300, 200, 0.7, 0.5, "malignant",
                    [LesionResult([1, 2, 30, 40], 0.9, 0.3), LesionResult([50, 60, 70, 80], 0.4, 0.7)],
                    "im1_heatmap.png", "im1_overlay.png")
    write_result(tmp_path, r)
    data = json.loads((tmp_path / "im1.json").read_text())
    assert {"image_id", "source", "width", "height", "score", "lesions", "threshold", "decision",
            "heatmap", "domain", "domain_source", "domain_reason"} <= data.keys()
    assert [l["malignancy"] for l in data["lesions"]] == [0.7, 0.3]  # sorted by malignancy
    assert set(data["lesions"][0]) == {"box", "detector_score", "malignancy", "finding", "scores_image",
                                       "p_lesion", "p_malignant", "label"}
    assert data["dicom"] == []  # DICOM results are written for DICOM inputs only
    assert data["lesions"][0]["finding"] is True and data["lesions"][0]["scores_image"] is True  # the defaults
    back = read_result(tmp_path / "im1.json")
    assert back.lesions[0].box == [50, 60, 70, 80]
    (tmp_path / "other.json").write_text('{"not": "a result"}')
    assert [x.image_id for x in read_results(tmp_path)] == ["im1"]


@pytest.mark.parametrize("downscale", [1, 2, 4])
@pytest.mark.parametrize("box", [(300, 200, 360, 250), (0, 0, 40, 30), (560, 370, 600, 400)])
def test_heatmap_lands_where_the_crop_came_from(downscale, box):
    """A crop-space map with a peak at the crop's centre is pasted back onto the box's centre."""
    shape = (400, 600)
    image = np.zeros(shape, np.float32)
    crop, to_crop = crop_roi(image, box, 0.25, 64)
    yy, xx = np.mgrid[0:64, 0:64]
    cam = np.exp(-((xx + 0.5 - 32) ** 2 + (yy + 0.5 - 32) ** 2) / (2 * 4.0 ** 2)).astype(np.float32)
    canvas = HeatmapCanvas(shape, downscale)
    canvas.paste_max(cam, to_crop)
    peak = np.unravel_index(np.argmax(canvas.pixels), canvas.shape)
    peak_original = (np.array([peak[1], peak[0]]) + 0.5) * downscale
    centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    assert np.abs(peak_original - centre).max() <= downscale + 1.0
    # point sampling on a coarser canvas may fall beside the narrow peak, never far from it
    assert canvas.pixels.max() >= (0.95 if downscale == 1 else 0.5)


def test_heatmap_fuses_by_maximum():
    canvas = HeatmapCanvas((100, 100))
    t = Transform.identity((100, 100))
    a = np.zeros((100, 100), np.float32)
    a[10:20, 10:20] = 0.3
    b = np.zeros((100, 100), np.float32)
    b[15:25, 15:25] = 0.8
    canvas.paste_max(a, t)
    canvas.paste_max(b, t)
    assert canvas.pixels[12, 12] == pytest.approx(0.3) and canvas.pixels[17, 17] == pytest.approx(0.8)


@pytest.mark.parametrize("downscale", [1, 3])
def test_heatmap_uint16_equals_the_whole_canvas_conversion(downscale):
    # as_uint16 converts only the painted box; the result must equal converting every pixel
    canvas = HeatmapCanvas((300, 200), downscale)
    rng = np.random.default_rng(1)
    assert not canvas.as_uint16().any()
    for x, y in ((20, 30), (120, 200)):
        canvas.paste_max(rng.random((32, 32)).astype(np.float32) * 1.2, Transform.crop(x, y, 50, 60).then(
            Transform.resize((60, 50), (32, 32))))
    expected = np.round(np.clip(canvas.pixels, 0, 1) * 65535).astype(np.uint16)
    np.testing.assert_array_equal(canvas.as_uint16(), expected)
    assert expected.any()


def _records_and_results(tmp_path, rng, n=30):
    records, results = [], []
    for i in range(n):
        path = tmp_path / f"im{i:03d}.png"
        lesions, preds = (), []
        malignant = i % 3 == 0
        if i % 2 == 0:
            box = (100.0, 100.0, 140.0, 150.0)
            lesions = (Lesion(f"im{i:03d}", f"p{i // 2}", box, "mass", "malignant" if malignant else "benign", "t"),)
            if i % 4 != 0:  # the detector finds three in four... of the even ones, half
                preds.append(LesionResult([105, 110, 135, 145], 0.8, float(rng.uniform(0.4, 1) if malignant
                                                                              else rng.uniform(0, 0.6))))
        if i % 5 == 0:
            preds.append(LesionResult([300, 300, 320, 320], 0.3, float(rng.uniform(0, 0.5))))  # a false positive
        records.append(ImageRecord(f"im{i:03d}", f"p{i // 2}", path, lesions))
        score = max([l.malignancy for l in preds], default=0.0)
        results.append(ImageResult(f"im{i:03d}", str(path), 500, 500, score, 0.5, decide(score, 0.5), preds))
    return records, results


def test_evaluate_reports_the_calibration_of_the_image_probability(tmp_path):
    """Results with a probability (models shipped with a map): ECE, Brier and the base rate's Brier, as the
    functions of mammo.calibration compute them, a reliability plot, and the markdown section; without a
    probability, no calibration section."""
    import dataclasses

    from mammo.calibration import brier, ece

    records, results = _records_and_results(tmp_path, np.random.default_rng(2))
    with_p = [dataclasses.replace(r, probability=0.1 + 0.8 * r.score, probability_threshold=0.5) for r in results]
    for name, rows in (("with", with_p), ("without", results)):
        for r in rows:
            write_result(tmp_path / name, r)
    report = evaluate(tmp_path / "with", records, tmp_path / "eval", n_boot=20)
    y = np.array([r.label for r in records])
    p = np.array([r.probability for r in with_p])
    cal = report["calibration"]
    assert cal["ece"]["value"] == pytest.approx(ece(y, p)) and cal["brier"]["value"] == pytest.approx(brier(y, p))
    assert cal["brier_base_rate"]["value"] == pytest.approx(brier(y, np.full(len(y), y.mean())))
    assert sum(cal["reliability"]["n"]) == len(y)
    assert (tmp_path / "eval" / "reliability.png").is_file() and "reliability.png" in report["figures"]
    assert "Calibration of the image probability" in (tmp_path / "eval" / "metrics.md").read_text()
    assert "calibration" not in evaluate(tmp_path / "without", records, tmp_path / "eval2", n_boot=5)


def test_lesion_level_rows_hand_case(tmp_path):
    records, results = _records_and_results(tmp_path, np.random.default_rng(0), n=6)
    m = match(results, records)
    y, p, groups, _ = lesion_level(m, 0.1)
    # images 0, 2, 4 have a lesion; 2 is found (i % 4 != 0), 0 and 4 missed -> score 0;
    # images 0 and 5 have a false positive (i % 5 == 0); only image 0's lesion is malignant (i % 3 == 0).
    # rows: lesion of im000, FP of im000, lesion of im002, lesion of im004, FP of im005
    assert list(y) == [1, 0, 0, 0, 0]
    assert p[0] == 0.0 and p[2] == results[2].lesions[0].malignancy and p[3] == 0.0
    assert p[1] == results[0].lesions[0].malignancy and p[4] == results[5].lesions[0].malignancy
    assert list(groups) == ["p0", "p0", "p1", "p2", "p2"]


def test_evaluate_matches_sklearn_and_writes_reports(tmp_path):
    records, results = _records_and_results(tmp_path, np.random.default_rng(1))
    preds = tmp_path / "preds"
    for r in results:
        write_result(preds, r)
    report = evaluate(preds, records, tmp_path / "eval", n_boot=50)
    y = [r.label for r in records]
    s = [r.score for r in results]
    table = report["image"]["two-stage"]
    assert table["auroc"]["value"] == pytest.approx(roc_auc_score(y, s))
    assert table["aupr"]["value"] == pytest.approx(average_precision_score(y, s))
    assert table["auroc"]["low"] <= table["auroc"]["value"] <= table["auroc"]["high"]
    assert report["threshold"] == 0.5 and "shipped" in report["threshold_source"]
    for name in ("metrics.json", "metrics.md", "roc.png", "pr.png", "froc.png", "confusion_distribution.png",
                 "gradcam_examples.png"):
        assert (tmp_path / "eval" / name).is_file(), name
    assert "| image | two-stage |" in (tmp_path / "eval" / "metrics.md").read_text()


def test_evaluate_states_how_the_results_own_threshold_was_chosen(tmp_path):
    """The threshold source is the one infer recorded in the results, never a guess ('chosen on validation'
    was printed for a threshold chosen out of fold)."""
    import dataclasses

    records, results = _records_and_results(tmp_path, np.random.default_rng(1))
    oof = "chosen on 5-fold patient-level cross-validation, out-of-fold predictions"
    for i, r in enumerate(results):
        write_result(tmp_path / "oof", dataclasses.replace(r, threshold_source=oof))
        write_result(tmp_path / "mixed", dataclasses.replace(r, threshold_source=oof if i else "given"))
    report = evaluate(tmp_path / "oof", records, tmp_path / "eval", n_boot=5)
    assert report["threshold_source"] == oof
    text = (tmp_path / "eval" / "metrics.md").read_text()
    assert oof in text and "on validation" not in text and "validation split" not in text
    mixed = evaluate(tmp_path / "mixed", records, tmp_path / "eval2", n_boot=5)["threshold_source"]
    assert oof in mixed and "given" in mixed and "more than one way" in mixed
    assert evaluate(tmp_path / "oof", records, tmp_path / "eval3", threshold=0.3, n_boot=5)["threshold_source"] == "given"


def tiny_keras_model(path, compile_and_fit: bool = False):
    """A real (tiny) Keras model file: the bundle writer loads and re-saves classifiers."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(1, activation="sigmoid")])
    if compile_and_fit:  # an optimizer with state, as a training run leaves it
        model.compile(optimizer="adam", loss="binary_crossentropy")
        model.fit(np.zeros((4, 8, 8, 1)), np.array([0, 1, 0, 1]), epochs=1, verbose=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def _fake_bundle(tmp_path):
    from pipeline.models import write_bundle

    (tmp_path / "det.pt").write_bytes(b"detector weights")
    tiny_keras_model(tmp_path / "clf" / "model.keras")
    (tmp_path / "clf" / "calibration.json").write_text("{}")
    write_bundle(tmp_path / "bundle", tmp_path / "det.pt", tmp_path / "clf", 0.4, ["detector.imgsz=320"], "fake")
    return tmp_path / "bundle"


def test_bundle_manifest_accepts_the_written_files(tmp_path):
    from pipeline.models import read_bundle

    bundle = read_bundle(_fake_bundle(tmp_path), require_manifest=True)
    assert bundle.threshold == 0.4 and bundle.config_overrides == ["detector.imgsz=320"]
    (bundle.root / "MODEL_CARD.md").write_text("documents are not model files")
    read_bundle(bundle.root, require_manifest=True)


@pytest.mark.parametrize("tamper", ["modify", "delete", "add"])
def test_bundle_manifest_refuses_a_modified_weight_file(tmp_path, tamper):
    from mammo.errors import WeightsError
    from pipeline.models import read_bundle

    root = _fake_bundle(tmp_path)
    if tamper == "modify":
        (root / "detector.pt").write_bytes(b"detector weights, with a payload")
    elif tamper == "delete":
        (root / "classifier" / "calibration.json").unlink()
    else:
        (root / "classifier" / "evil.pt").write_bytes(b"not shipped")
    with pytest.raises(WeightsError, match="MANIFEST|refus"):
        read_bundle(root)


def test_bundle_without_manifest_warns_and_shipped_requires_it(tmp_path, capsys):
    from mammo.errors import WeightsError
    from pipeline.models import read_bundle

    root = _fake_bundle(tmp_path)
    (root / "MANIFEST.sha256").unlink()
    read_bundle(root)
    assert "has no MANIFEST.sha256" in capsys.readouterr().err
    with pytest.raises(WeightsError, match="manifest"):
        read_bundle(root, require_manifest=True)


def test_infer_writes_the_models_operating_curve_beside_its_results(tmp_path):
    """The slider's curve travels with the results it describes: infer's run plan writes the models' curve as
    operating_curve.json (checked), and removes a stale one when the folder is redone with models without one;
    a bundle with a malformed curve is refused."""
    from types import SimpleNamespace

    from mammo.config import load_config
    from mammo.errors import WeightsError
    from pipeline.infer import plan_run
    from pipeline.models import read_bundle
    from pipeline.operating_point import operating_curve
    from pipeline.results import CURVE_FILE

    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    cv2.imwrite(str(image), np.zeros((40, 30), np.uint8))
    curve = operating_curve(np.array([0, 1, 1, 0]), np.array([0.1, 0.7, 0.4, 0.3]))
    models = SimpleNamespace(threshold=0.02, fingerprint="m", stacker=None, calibration=None, findings=None,
                             operating_curve=curve)
    plan_run([image], tmp_path / "out", models, load_config())
    written = json.loads((tmp_path / "out" / CURVE_FILE).read_text())
    assert written["sensitivity"] == curve["sensitivity"] and written["probability"] == curve["probability"]
    plan_run([image], tmp_path / "out", SimpleNamespace(**{**vars(models), "operating_curve": None}), load_config(),
             overwrite=True)
    assert not (tmp_path / "out" / CURVE_FILE).exists()

    root = _fake_bundle(tmp_path)
    info = json.loads((root / "pipeline.json").read_text())
    (root / "pipeline.json").write_text(json.dumps({**info, "operating_curve": {**curve, "sensitivity": [2.0] * 101}}))
    (root / "MANIFEST.sha256").unlink()
    with pytest.raises(WeightsError, match="sensitivity outside"):
        read_bundle(root)
    (root / "pipeline.json").write_text(json.dumps({**info, "operating_curve": curve}))
    assert read_bundle(root).operating_curve == curve


@pytest.mark.parametrize("package,commands", [
    ("pipeline", ["infer", "evaluate", "export-rois", "benchmark", "train-baseline", "train-all", "bundle"]),
    ("detector", ["export-dataset", "train", "predict", "evaluate"]),
    ("classifier", ["train", "predict", "crops", "weights"]),
    ("tuning", ["run", "best", "report"]),
])
def test_every_entry_point_explains_its_commands(package, commands):
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run([sys.executable, "-m", package, "--help"], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    for command in commands:
        assert command in out.stdout
    assert "examples" in out.stdout


def test_overlay_draws_the_scoring_box_solid_and_other_findings_dashed():
    from pipeline.render import PANEL_HEIGHT, overlay_panel, three_panels

    image, heat = np.zeros((PANEL_HEIGHT, 600), np.float32), np.zeros((64, 38), np.float32)
    figure = three_panels(image, heat, [[100, 100, 300, 300], [100, 500, 300, 700]], ["0.9", "0.4"],
                          dashed=[False, True])
    panel = overlay_panel(figure)
    solid, dashed = panel[100, 120:280].min(axis=1), panel[500, 120:280].min(axis=1)  # each box's top edge
    assert (solid > 200).all()  # an unbroken white line
    assert 0.4 < (dashed > 200).mean() < 0.8 and (dashed < 50).mean() > 0.2  # dashes (line caps widen them), gaps
    plain = overlay_panel(three_panels(image, heat, [[100, 500, 300, 700]], ["0.4"]))
    assert (plain[500, 120:280].min(axis=1) > 200).all()  # without `dashed`, every box solid as before


def test_overlay_blend_only_around_the_map_equals_the_whole_panel_blend():
    """The overlay panel is blended only in the box around the map's nonzero pixels: bit for bit the blend of the
    whole panel (where the map is 0 the blend is the image itself), with a blob, with nothing, with a map at the
    panel's edge."""
    import cv2

    from pipeline.render import PANEL_HEIGHT, _to_bgr, colorize, overlay_panel, three_panels

    rng = np.random.default_rng(22)
    image = rng.random((PANEL_HEIGHT * 2, 1200)).astype(np.float32)
    yy, xx = np.mgrid[0:512, 0:300]
    blob = np.exp(-(((yy - 200) / 30.0) ** 2 + ((xx - 150) / 30.0) ** 2)).astype(np.float32)
    edge = np.zeros((512, 300), np.float32)
    edge[-40:, -20:] = 0.7
    for heat in (blob * (blob > 1e-3), np.zeros((512, 300), np.float32), edge):
        size = (600, PANEL_HEIGHT)
        base = _to_bgr(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
        heat_small = np.clip(cv2.resize(heat, size, interpolation=cv2.INTER_LINEAR), 0, 1)
        alpha = (0.55 * heat_small)[..., None]
        whole = (base * (1 - alpha) + colorize(heat_small) * alpha).astype(np.uint8)
        np.testing.assert_array_equal(overlay_panel(three_panels(image, heat, [], [])), whole)


def test_json_decision_stays_consistent_at_the_threshold(tmp_path):
    """A score a hair above the threshold must still read back as above it (no rounding of either)."""
    score, threshold = 0.99999403, 0.99999355
    write_result(tmp_path, ImageResult("b", "/b.png", 10, 10, score, threshold, decide(score, threshold)))
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["decision"] == "malignant" == decide(data["score"], data["threshold"])


def test_export_labels_detected_rois_by_the_evaluation_hit_rule():
    from mammo.config import load_config
    from pipeline.export import _true_label

    cfg = load_config(overrides=["detector.hit_iou=0.1"])
    truth = ImageRecord("im", "p", Path("im.png"), (Lesion("im", "p", (100.0, 100.0, 200.0, 200.0), "mass",
                                                          "malignant", "t"),))
    assert _true_label((140, 140, 160, 160), truth, cfg) == "malignant"  # centre inside
    # centre (205, 190) outside the true box, IoU 0.15: a hit by IoU, as in evaluate
    assert _true_label((150, 150, 260, 230), truth, cfg) == "malignant"
    strict = load_config(overrides=["detector.hit_iou=0.2"])
    assert _true_label((150, 150, 260, 230), truth, strict) == "none"
    assert _true_label((190, 190, 260, 260), truth, cfg) == "none"  # IoU 0.007, centre outside
    assert _true_label((140, 140, 160, 160), None, cfg) == ""  # no annotation for this image


def test_evaluation_keys_images_that_share_a_file_stem_by_id(tmp_path):
    """CBIS-DDSM names every image 000000.dcm: two images with one stem keep their own scores and baselines."""
    records, results = [], []
    for i, (label, score, base) in enumerate([("malignant", 0.9, 0.2), ("benign", 0.1, 0.7)]):
        path = tmp_path / f"Mass-Training_P_{i:05d}_LEFT_CC" / "1.3.6" / "000000.dcm"
        lesion = Lesion(f"case{i}", f"p{i}", (10.0, 10.0, 50.0, 50.0), "mass", label, "t")
        records.append(ImageRecord(f"case{i}", f"p{i}", path, (lesion,)))
        results.append(ImageResult(f"img{i}", str(path), 100, 100, score, 0.5, decide(score, 0.5),
                                   [LesionResult([12, 12, 48, 48], 0.9, score)]))
    m = match(results, records)
    assert [r.image_id for r in m.records] == ["case0", "case1"]
    # a prediction whose path is elsewhere is not paired by an ambiguous stem
    elsewhere = ImageResult("x", str(tmp_path / "copy" / "000000.dcm"), 100, 100, 0.5, 0.5, "negative")
    assert match([elsewhere], records).unmatched_predictions == ["x"]

    preds = tmp_path / "preds"
    for r in results:
        write_result(preds, r)
    baseline = {"case0": 0.2, "case1": 0.7, BASELINE_THRESHOLD: 0.5}
    report = evaluate(preds, records, tmp_path / "eval", n_boot=10, baselines={"base": baseline})
    assert report["image"]["two-stage"]["auroc"]["value"] == 1.0
    assert report["image"]["base"]["auroc"]["value"] == 0.0  # its own scores, not one image's twice
    assert report["image"]["base"]["n"] == 2


@pytest.mark.parametrize("shape", [(4000, 600), (3000, 1100), (1024, 1024), (2000, 3000), (300, 3000)])
def test_figure_titles_are_legible_at_any_width(shape):
    """Titles are in a band of their own, each line inside its panel and clear of every other line, whatever
    the scan's aspect (narrow figures used to print the overlay title over the next panel)."""
    from pipeline.render import PANEL_HEIGHT, TITLE_SCALE, overlay_panel, three_panels, title_layout

    h, w = shape
    image = np.linspace(0, 1, h * w, dtype=np.float32).reshape(h, w)
    heat = np.zeros((h // 4, w // 4), np.float32)
    text = "(score 0.97, threshold 0.98)"
    figure = three_panels(image, heat, [[w * 0.4, h * 0.4, w * 0.6, h * 0.6]], ["0.97"], text)
    panel_w = round(w * PANEL_HEIGHT / h)
    widths = [panel_w, panel_w + 56, panel_w]
    band, boxes = title_layout(["image", "Grad-CAM (malignant evidence, 0-1)", f"overlay {text}"], widths)
    assert figure.shape[0] == PANEL_HEIGHT + band and figure.shape[1] == sum(widths) + 16
    starts = np.cumsum([0] + [wd + 8 for wd in widths])
    for b in boxes:
        panel = int(np.searchsorted(starts, b["x"], side="right") - 1)
        assert b["x"] >= starts[panel] and b["x"] + b["w"] <= starts[panel] + widths[panel], b
        assert 0 <= b["top"] and b["bottom"] <= band
        assert b["scale"] >= TITLE_SCALE[1]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            apart = (a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"] or
                     a["bottom"] <= b["top"] or b["bottom"] <= a["top"])
            assert apart, (a, b)
    words = f"image Grad-CAM (malignant evidence, 0-1) overlay {text}".split()
    assert " ".join(b["text"] for b in boxes).split() == words
    assert overlay_panel(figure).shape[:2] == (PANEL_HEIGHT, panel_w)


def test_gradcam_panel_shows_the_anatomy_under_the_map_with_a_colour_bar():
    from pipeline.render import PANEL_HEIGHT, three_panels

    image = np.tile(np.linspace(0, 1, 512, dtype=np.float32), (1024, 1))  # a left-to-right ramp
    heat = np.zeros((256, 128), np.float32)
    figure = three_panels(image, heat, [], [])
    body = figure[-PANEL_HEIGHT:]
    cam = body[:, 512 + 8:512 + 8 + 512].astype(float)
    # where the map is 0 the anatomy still shows: the ramp's brightness goes on rising under the colour
    assert cam[500, 480:500].mean() - cam[500, 20:40].mean() > 60
    bar = body[:, 512 + 8 + 512:512 + 8 + 512 + 56]
    top, bottom = bar[40, 10], bar[-40, 10]  # JET: red at 1 (top), blue at 0 (bottom); BGR
    assert top[2] > 100 > top[0] and bottom[0] > 100 > bottom[2]


def test_run_config_says_what_the_bundle_ran_with(tmp_path):
    """config.yaml of an infer run: the classifier section of the classifier's training run and the shipped
    threshold, not the defaults (small_cnn, threshold null); the user's overrides still win."""
    import argparse

    import yaml

    from pipeline.__main__ import resolve_config

    (tmp_path / "det.pt").write_bytes(b"detector weights")
    tiny_keras_model(tmp_path / "clf" / "model.keras")
    (tmp_path / "clf" / "calibration.json").write_text("{}")
    (tmp_path / "clf" / "config.yaml").write_text(yaml.safe_dump(
        {"classifier": {"backbone": "mobilenet_v2", "weights": "imagenet-offline", "input_size": 96,
                        "retired_key": 1}}))
    from pipeline.models import write_bundle

    write_bundle(tmp_path / "b", tmp_path / "det.pt", tmp_path / "clf", 0.37, ["detector.imgsz=320"], "fake")
    args = argparse.Namespace(models=str(tmp_path / "b"), config=None)
    cfg, _ = resolve_config(args, ["classifier.dropout=0.1"])
    assert (cfg.classifier.backbone, cfg.classifier.weights, cfg.classifier.input_size) == \
        ("mobilenet_v2", "imagenet-offline", 96)
    assert cfg.pipeline.threshold == 0.37 and cfg.detector.imgsz == 320 and cfg.classifier.dropout == 0.1
    assert resolve_config(args, ["pipeline.threshold=0.5"])[0].pipeline.threshold == 0.5


def test_mistyped_input_is_a_usage_error_before_any_model_loads(tmp_path):
    """exit 2 at once, naming the path, no output folder left behind (the models are never loaded: --models
    points at a folder that is not even a bundle)."""
    import subprocess
    import sys

    out = tmp_path / "out"
    for command in ("infer", "export-rois"):
        proc = subprocess.run([sys.executable, "-m", "pipeline", command, str(tmp_path / "scna.dcm"), "--out",
                               str(out), "--models", str(tmp_path)], cwd=Path(__file__).resolve().parent.parent,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "scna.dcm" in proc.stderr and "not found" in proc.stderr
        assert not out.exists()


def test_tensorflow_backend_compiles_once_at_load_and_images_without_boxes_skip_the_classifier(tmp_path):
    """On TensorFlow, warmup traces the one-pass forward + Grad-CAM and the forward alone on a blank crop (no
    retrace later, whatever the batch size); an image without boxes never touches the classifier."""
    from classifier.inference import MalignancyClassifier
    from mammo.config import load_config
    from pipeline.infer import StepTimer, analyse_image
    from pipeline.models import PipelineModels

    import keras

    assert keras.backend.backend() == "tensorflow"  # the test process trains, so it runs keras on TensorFlow
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 1))
    logit = keras.layers.Dense(1, name="logit")(keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(x)))
    (tmp_path / "clf").mkdir()
    keras.Model(x, keras.layers.Activation("sigmoid")(logit)).save(tmp_path / "clf" / "model.keras")
    clf = MalignancyClassifier.load(tmp_path / "clf" / "model.keras")
    clf.warmup()
    backend = clf.backend()
    counts = (backend.tf_forward.experimental_get_tracing_count(), backend.tf_pass.experimental_get_tracing_count())
    assert counts == (1, 1)
    for n in (1, 3, 7):
        crops = np.random.default_rng(n).random((n, 8, 8)).astype(np.float32)
        p, maps = clf.predict_and_gradcam(crops)
        np.testing.assert_allclose(p, clf.predict(crops), atol=1e-6)  # the one pass gives predict's numbers
        assert maps.shape == (n, 8, 8)
    assert (backend.tf_forward.experimental_get_tracing_count(),
            backend.tf_pass.experimental_get_tracing_count()) == counts

    class NoClassifier:
        def __getattr__(self, name):
            raise AssertionError("the classifier was used")

    detector = type("NoBoxes", (), {"detect": lambda self, frame: ([], None, []), "close": lambda self: None})()
    models = PipelineModels(detector, NoClassifier(), 0.5, calibrated=True)
    m = Mammogram(np.zeros((64, 48), np.float32), None)
    lesions, _, below_conf = analyse_image(m, models, load_config(None, []), StepTimer())
    assert lesions == [] and below_conf is None and models.calibrated


def test_output_writer_keeps_one_image_in_flight_and_reports_a_failed_write():
    """infer writes an image's files in a thread while it reads the next: at most one waits (bounded memory),
    and a write that fails is reported by image id (run_inference turns it into a failed row)."""
    import threading

    from pipeline.infer import OutputWriter

    release, order = threading.Event(), []

    def slow():
        release.wait(5)
        order.append("first")

    def broken():
        raise OSError("disk full")

    writer = OutputWriter()
    writer.submit("a", slow)
    threading.Timer(0.2, release.set).start()
    writer.submit("b", broken)  # returns only once "a" is written
    assert order == ["first"]
    writer.close()
    assert writer.failed == {"b": "could not write its outputs: OSError: disk full"}


@pytest.mark.parametrize("failing", ["backend choice", "classifier"])
def test_models_that_fail_to_load_close_the_detector_they_opened(tmp_path, monkeypatch, failing):
    from detector.model import LesionDetector
    from mammo import runtime
    from mammo.config import load_config
    from mammo.errors import MammoError
    from pipeline import models
    from pipeline.models import Bundle, PipelineModels

    closed = []

    class StandInDetector:
        def close(self):
            closed.append(True)

    def fail(*_):
        raise MammoError(f"the {failing} failed")

    monkeypatch.setattr(LesionDetector, "load", classmethod(lambda cls, *a, **k: StandInDetector()))
    # no keras is imported or chosen here: the backend choice is a stand-in that passes or fails
    monkeypatch.setattr(runtime, "keras_backend_for_inference", fail if failing == "backend choice" else str)
    monkeypatch.setattr(models, "_load_classifier", fail)
    bundle = Bundle(tmp_path, tmp_path / "detector.pt", tmp_path / "classifier", 0.5)
    with pytest.raises(MammoError, match=f"the {failing} failed"):
        PipelineModels.load(bundle, load_config(None, []))
    assert closed == [True]
