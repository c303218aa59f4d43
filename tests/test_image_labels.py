"""Images labelled per image, without boxes: the `folders` format (<root>/<label>/<woman>_<image>.<ext>), the CSV's
box-less rows, woman-level splits of them, and what each stage may learn from them (a box-less cancer image is
never a negative; a box-less cancer-free one may be)."""
import mammo.runtime  # noqa: F401  (first)

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from mammo.annotations import read_annotations
from mammo.annotations import folders as F
from mammo.config import load_config
from mammo.datasets import load_split_dataset
from mammo.errors import AnnotationError
from mammo.synthetic import synthetic_mammogram

REPO = Path(__file__).resolve().parent.parent
RSNA_DIR = Path(os.environ.get("MAMMO_RSNA_DIR", REPO.parent / "shared" / "data" / "rsna-ffdm-640"))


def write_image(path: Path, seed: int = 0, shape=(96, 64)) -> Path:
    """A small synthetic breast without lesions (a breast mask for background crops), 8-bit."""
    m, _ = synthetic_mammogram(seed, shape=shape, n_lesions=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.round(m.pixels * 255).astype(np.uint8))
    return path


def write_folders(root: Path, files) -> Path:
    """`files`: relative paths such as 'malignant/7_123.png'."""
    for i, rel in enumerate(files):
        write_image(root / rel, seed=i)
    return root


SMALL = ["malignant/7_101.png", "malignant/07_102.jpg", "benign/7_103.png", "benign/12_201.png",
         "benign/12_202.jpeg", "malignant/30_301.png"]


# --- the reader ---------------------------------------------------------------------------------------------------
def test_folders_give_labels_women_image_ids_and_the_squashed_size(tmp_path):
    root = write_folders(tmp_path / "set", SMALL)
    (root / "LICENSE.txt").write_text("not an image of the set")  # files beside the label folders are no images
    (root / ".cache").mkdir()  # hidden entries neither
    write_image(root / "benign" / "9_999.png", shape=(80, 48))
    ds = read_annotations("folders", root, aspect_squashed=True)
    ims = {r.image_id: r for r in ds.images}
    assert sorted(ims) == ["07_102", "12_201", "12_202", "30_301", "7_101", "7_103", "9_999"]
    assert {i: r.label for i, r in ims.items()} == {"07_102": 1, "12_201": 0, "12_202": 0, "30_301": 1, "7_101": 1,
                                                    "7_103": 0, "9_999": 0}
    # the woman is the first number, leading zeros dropped: 07_102 and 7_103 are one woman
    assert {i: r.patient_id for i, r in ims.items()} == {"07_102": "7", "12_201": "12", "12_202": "12",
                                                         "30_301": "30", "7_101": "7", "7_103": "7", "9_999": "9"}
    for r in ds.images:
        (lesion,) = r.lesions
        assert lesion.box is None and lesion.pathology == ("malignant" if r.label else "benign")
        assert r.path == root / ("malignant" if r.label else "benign") / r.path.name and r.path.is_file()
        assert r.aspect_squashed is True and r.source == "folders"
    assert ims["9_999"].shape == (80, 48) and ims["7_101"].shape == (96, 64)  # (height, width) of the raster
    assert (ds.n_images, ds.n_malignant, ds.n_unboxed) == (7, 3, 7)
    assert any("squashed" in line for line in ds.report)
    assert all(r.aspect_squashed is False for r in read_annotations("folders", root).images)


def test_folder_labels_are_an_explicit_mapping():
    assert F.FOLDER_LABELS == {"malignant": "malignant", "benign": "benign"}


@pytest.mark.parametrize("folder", ["Malignant", "normal", "cancer", "benign "])
def test_unknown_label_folders_are_refused_by_name(tmp_path, folder):
    root = write_folders(tmp_path / "set", ["benign/1_1.png", f"{folder}/2_2.png"])
    with pytest.raises(AnnotationError, match="unknown label folder") as e:
        read_annotations("folders", root)
    assert repr(folder) in str(e.value) and "malignant/ -> malignant" in str(e.value)


@pytest.mark.parametrize("name", ["12.png", "a_1.png", "1_b.png", "1_2_3.png", "1-2.png", "1_2.txt", "1_2"])
def test_badly_named_files_are_refused_naming_the_file(tmp_path, name):
    root = write_folders(tmp_path / "set", ["benign/1_1.png"])
    (root / "malignant").mkdir()
    (root / "malignant" / name).write_bytes(b"x")
    with pytest.raises(AnnotationError, match="<woman>_<image>") as e:
        read_annotations("folders", root)
    assert str(root / "malignant" / name) in str(e.value)


def test_one_image_number_in_two_files_is_refused_naming_both(tmp_path):
    root = write_folders(tmp_path / "set", ["benign/1_55.png", "malignant/2_55.png"])
    with pytest.raises(AnnotationError, match="two labels or two women") as e:
        read_annotations("folders", root)
    assert "benign/1_55.png" in str(e.value) and "malignant/2_55.png" in str(e.value)


def test_absurd_counts_and_sizes_are_refused(tmp_path, monkeypatch):
    root = write_folders(tmp_path / "set", ["benign/1_1.png", "benign/1_2.png", "malignant/2_3.png"])
    monkeypatch.setattr(F, "MAX_IMAGES", 2)
    with pytest.raises(AnnotationError, match="more than 2 files"):
        read_annotations("folders", root)
    monkeypatch.undo()
    cv2.imwrite(str(root / "benign" / "3_4.png"), np.zeros((8, 8), np.uint8))  # a thumbnail, no mammogram
    with pytest.raises(AnnotationError, match=r"8 x 8 pixels is no mammogram") as e:
        read_annotations("folders", root)
    assert "3_4.png" in str(e.value)


def test_a_missing_root_a_root_without_labels_and_a_symlink_out_are_refused(tmp_path):
    with pytest.raises(AnnotationError, match="folder not found"):
        read_annotations("folders", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnnotationError, match="no label folder"):
        read_annotations("folders", tmp_path / "empty")
    root = write_folders(tmp_path / "set", ["benign/1_1.png"])
    outside = write_image(tmp_path / "outside" / "2_2.png")
    (root / "malignant").mkdir()
    os.symlink(outside, root / "malignant" / "2_2.png")
    with pytest.raises(AnnotationError, match="outside the dataset root"):
        read_annotations("folders", root)


def test_the_squashed_flag_is_a_data_setting_refused_for_formats_that_read_originals(tmp_path):
    root = write_folders(tmp_path / "set", SMALL)
    cfg = load_config(None, ["data.format=folders", f"data.annotations={root}", "data.aspect_squashed=true"])
    ann, _ = load_split_dataset(cfg.data)
    assert all(r.aspect_squashed for r in ann.images)
    cfg = load_config(None, ["data.aspect_squashed=true"])  # mias reads the original films
    with pytest.raises(AnnotationError, match="aspect_squashed.*original"):
        load_split_dataset(cfg.data)


def test_the_rsna_config_reads_folders_squashed():
    cfg = load_config(REPO / "configs" / "rsna_ffdm.yaml")
    assert cfg.data.format == "folders" and cfg.data.aspect_squashed is True
    assert cfg.data.annotations == cfg.data.images_root == "../shared/data/rsna-ffdm-640"
    assert load_config(REPO / "configs" / "mias.yaml").data.aspect_squashed is False


# --- woman-level splits ---------------------------------------------------------------------------------------
def test_a_woman_never_sits_on_two_sides_of_a_split(tmp_path):
    files = [f"{'malignant' if (w + i) % 3 == 0 else 'benign'}/{w}_{100 * w + i}.png" for w in range(1, 21)
             for i in range(1 + w % 4)]
    root = write_folders(tmp_path / "set", files)
    for seed in range(3):
        cfg = load_config(None, ["data.format=folders", f"data.annotations={root}", f"data.seed={seed}",
                                 "data.split_fractions={train: 0.6, val: 0.2, test: 0.2}"])
        ann, splits = load_split_dataset(cfg.data, run_dir=tmp_path / f"run{seed}")
        side = {}
        for name, ims in splits.items():
            assert ims, name
            for im in ims:
                assert side.setdefault(im.patient_id, name) == name, f"woman {im.patient_id} in two splits"
        assert sum(len(v) for v in splits.values()) == ann.n_images == len(files)


def test_cross_validation_folds_keep_a_woman_in_one_fold(tmp_path):
    from pipeline.cross_validate import assign_folds

    files = [f"{'malignant' if w % 3 == 0 else 'benign'}/{w}_{100 * w + i}.png" for w in range(1, 13)
             for i in range(1 + w % 3)]
    records = read_annotations("folders", write_folders(tmp_path / "set", files)).images
    folds = assign_folds(records, 3, seed=0)
    fold_of = {}
    for r in records:
        assert fold_of.setdefault(r.patient_id, folds[r.image_id]) == folds[r.image_id]
    assert set(folds.values()) == {0, 1, 2}


# --- the real folder ------------------------------------------------------------------------------------------
def test_the_real_rsna_ffdm_folder():
    if not (RSNA_DIR / "malignant").is_dir():  # data, never in git: a visible skip, as the mini-MIAS tests
        pytest.skip(f"rsna-ffdm-640 not found at {RSNA_DIR} (set MAMMO_RSNA_DIR to run this test)")
    ds = read_annotations("folders", RSNA_DIR, aspect_squashed=True)
    assert (ds.n_images, ds.n_malignant, len({r.patient_id for r in ds.images})) == (2518, 872, 723)
    assert all(r.shape == (640, 640) and r.aspect_squashed and r.lesions[0].box is None for r in ds.images)
    from mammo.splits import split_by_patient

    side = {}
    for name, ims in split_by_patient(ds.images, {"train": 0.8, "val": 0.2}, seed=0).items():
        for im in ims:
            assert side.setdefault(im.patient_id, name) == name


# --- the CSV's box-less rows --------------------------------------------------------------------------------------
def boxless_csv(tmp_path, n=16):
    """A synthetic boxed set plus two women with image labels only: 'bad' (cancer, box-less) and 'ok' (no cancer,
    box-less benign label), two images each."""
    from mammo.synthetic import write_synthetic_dataset

    csv_path = write_synthetic_dataset(tmp_path / "syn", n, seed=2, shape=(128, 96), n_lesions=1)
    rows = []
    for woman, label in (("bad", "malignant"), ("ok", "benign")):
        for i in range(2):
            rel = f"images/{woman}{i}.png"
            write_image(csv_path.parent / rel, seed=50 + i, shape=(128, 96))
            rows.append(f"{rel},{woman},,,,,{label}")
    csv_path.write_text(csv_path.read_text() + "\n".join(rows) + "\n")
    return csv_path


def test_csv_rows_without_a_box_are_image_labels(tmp_path):
    ds = read_annotations("csv", boxless_csv(tmp_path), aspect_squashed=True)
    ims = {r.image_id: r for r in ds.images}
    for woman, label in (("bad", 1), ("ok", 0)):
        for i in range(2):
            r = ims[f"images/{woman}{i}"]
            assert r.patient_id == woman and r.label == label and r.aspect_squashed
            assert [l.box for l in r.lesions] == [None]
            assert any(r.image_id in line and "without a box" in line for line in ds.report)


# --- what each stage may learn from box-less images ---------------------------------------------------------------
@pytest.mark.parametrize("fraction", [1.0, 0.0])
def test_detector_data_leaves_out_boxless_cancers_and_keeps_boxless_cancer_free_as_negatives(tmp_path, capsys,
                                                                                            fraction):
    import json

    from detector.dataset import export_from_config

    csv_path = boxless_csv(tmp_path)
    cfg = load_config(None, ["data.format=csv", f"data.annotations={csv_path}", "detector.imgsz=64",
                             "data.split_fractions={train: 0.5, val: 0.5}", f"detector.train_negatives={fraction}"])
    result = export_from_config(cfg, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    skipped = {e["image_id"]: e["reason"] for e in manifest["skipped"]}
    written = {e["image_id"]: e for e in manifest["images"]}
    for i in range(2):
        assert "location is unknown" in skipped[f"images/bad{i}"] and f"images/bad{i}" not in written
    split = {row.split(",")[0]: row.split(",")[2] for row in (tmp_path / "out" / "split.csv").read_text().split()[1:]}
    for i in range(2):  # cancer-free: written as a negative (an empty label file), or left out like any normal one
        iid = f"images/ok{i}"
        if fraction == 0.0 and split[iid] == "train":
            assert "train_negatives" in skipped[iid]
        else:
            entry = written[iid]
            assert entry["lesions"] == []
            assert (tmp_path / "out" / entry["file"].replace("images/", "labels/", 1)).with_suffix(".txt") \
                .read_text() == ""
    assert sum(c["boxless_cancer_excluded"] for c in result.counts.values()) == 2
    assert sum(c["boxless_negatives"] for c in result.counts.values()) == sum(i.startswith("images/ok")
                                                                              for i in written)
    assert manifest["counts"] == result.counts
    assert "left out (location unknown)" in capsys.readouterr().out


def test_crops_take_nothing_from_boxless_cancers_and_negatives_from_boxless_cancer_free(tmp_path):
    from classifier import data as D
    from mammo.config import ClassifierConfig
    from mammo.records import Detection

    ann = read_annotations("csv", boxless_csv(tmp_path, n=4))
    cfg = ClassifierConfig(input_size=16, crops_per_lesion=1, negatives_per_image=3)
    anywhere = [Detection((10.0, 30.0, 40.0, 60.0), 0.9), Detection((5.0, 5.0, 20.0, 20.0), 0.3)]
    dets = {f"images/{w}{i}": anywhere for w in ("bad", "ok") for i in range(2)}
    crops = D.build_crops(ann.images, cfg, seed=0, detections=dets, cache_dir=tmp_path / "cache", progress=False)
    m = crops.manifest
    for i in range(2):
        assert not (m["image_id"] == f"images/bad{i}").any()  # no lesion crop, no background, no detection
        ok = m[m["image_id"] == f"images/ok{i}"]
        assert sorted(ok["kind"]) == ["background"] * 3 + ["detection_background"] * 2
        assert (ok["label"] == 0).all()
    assert any("location is unknown" in line and "images/bad0" in line for line in crops.report)
    assert any("2 cancer-free image(s)" in line for line in crops.report)


def test_the_whole_image_baseline_takes_every_labelled_image(tmp_path, monkeypatch):
    import classifier.train
    from pipeline import baseline

    root = write_folders(tmp_path / "set", SMALL)
    seen = {}

    def fake_train(cfg, run_dir, crops):  # the data handed to training, without training
        seen["crops"] = crops
        return {}

    monkeypatch.setattr(classifier.train, "train", fake_train)
    cfg = load_config(None, ["data.format=folders", f"data.annotations={root}", "classifier.input_size=32",
                             "data.split_fractions={train: 0.5, val: 0.5}"])
    baseline.train_baseline(cfg, tmp_path / "run", progress=False)
    crops = seen["crops"]
    assert len(crops) == len(SMALL) and sorted(crops.labels) == [0, 0, 0, 1, 1, 1]
    assert set(crops.manifest["split"]) == {"train", "val"}
