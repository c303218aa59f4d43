"""Images labelled per image, without boxes: the `folders` format (<root>/<label>/<woman>_<image>.<ext>), the CSV's
box-less rows, woman-level splits of them, and what each stage may learn from them (a box-less cancer image is
never a negative; a box-less cancer-free one may be)."""
import mammo.runtime  # noqa: F401  (first)

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from ci import unavailable
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


# --- the real folder ------------------------------------------------------------------------------------------
def test_the_real_rsna_ffdm_folder():
    if not (RSNA_DIR / "malignant").is_dir():
        unavailable(f"rsna-ffdm-640 not found at {RSNA_DIR} (set MAMMO_RSNA_DIR)",
                    "../shared/data/rsna-ffdm-640 (data, never in git)")
    ds = read_annotations("folders", RSNA_DIR, aspect_squashed=True)
    assert (ds.n_images, ds.n_malignant, len({r.patient_id for r in ds.images})) == (2518, 872, 723)
    assert all(r.shape == (640, 640) and r.aspect_squashed and r.lesions[0].box is None for r in ds.images)
    from mammo.splits import split_by_patient

    side = {}
    for name, ims in split_by_patient(ds.images, {"train": 0.8, "val": 0.2}, seed=0).items():
        for im in ims:
            assert side.setdefault(im.patient_id, name) == name
