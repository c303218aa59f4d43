"""Annotation readers against small synthetic fixtures in the real file formats (tests/fixtures/annotations)."""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from mammo.annotations import AnnotationSet, read_annotations, safe_path
from mammo.annotations.cbis_ddsm import _find_mask, mask_box
from mammo.annotations.inbreast import parse_inbreast_xml
from mammo.annotations.mias import mias_box
from mammo.errors import AnnotationError

FIX = Path(__file__).parent / "fixtures" / "annotations"


def write_dicom(path, arr):
    """A minimal valid DICOM holding `arr` (uint8 or uint16), like the CBIS-DDSM masks and crops."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    bits = arr.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    ds.save_as(path, enforce_file_format=True)


def by_id(ds: AnnotationSet):
    return {im.image_id: im for im in ds.images}


# --- MIAS ------------------------------------------------------------------------------------------------------
def test_mias_y_flip_known_case():
    # circle centre (525, 425) r=33 with a bottom-left origin -> row 1024-425 = 599 in a top-left grid
    assert mias_box(525, 425, 33) == (492, 566, 558, 632)


def test_mias_fixture_rows():
    ds = read_annotations("mias", FIX / "mias")  # header text with 'mdb' in prose is skipped
    ims = by_id(ds)
    assert list(ims) == ["mdb001", "mdb002", "mdb003", "mdb004", "mdb010", "mdb011", "mdb012", "mdb013", "mdb014"]
    assert (ds.n_negative, ds.n_benign_only, ds.n_malignant) == (3, 3, 3)
    assert ims["mdb010"].lesions[0].box == (492, 566, 558, 632)
    assert ims["mdb001"].lesions[0].box == (0, 0, 60, 64)  # clipped at the top-left corner
    m11 = ims["mdb011"]
    assert [(l.abnormality, l.pathology, l.detail) for l in m11.lesions] == [
        ("mass", "malignant", "SPIC"), ("calcification", "benign", "CALC")]
    assert m11.label == 1 and m11.laterality == "R" and ims["mdb010"].laterality == "L"
    assert ims["mdb001"].patient_id == ims["mdb002"].patient_id == "mias_p001"
    assert ims["mdb011"].patient_id == ims["mdb012"].patient_id == "mias_p006"
    # rows without coordinates are kept as image-level labels and reported, never dropped
    for ref in ("mdb012", "mdb013"):
        (l,) = ims[ref].lesions
        assert l.box is None
        assert any(ref in line and "image-level" in line for line in ds.report)
    assert ds.n_unboxed == 2
    assert any("none of the 9 image files exists" in line for line in ds.report)
    assert ims["mdb010"].path == FIX / "mias" / "mdb010.pgm"


def test_mias_lists_only_existing_images(tmp_path):
    shutil.copy(FIX / "mias" / "Info.txt", tmp_path)
    for ref in ("mdb001", "mdb010"):
        (tmp_path / f"{ref}.pgm").write_bytes(b"P5\n1 1\n255\n\x00")
    ds = read_annotations("mias", tmp_path / "Info.txt")
    assert [im.image_id for im in ds.images] == ["mdb001", "mdb010"]
    assert sum("file missing" in line for line in ds.report) == 7


def test_mias_real_dev_set(mias_dir):
    ds = read_annotations("mias", mias_dir)
    print(ds.summary())
    assert (ds.n_images, ds.n_negative, ds.n_benign_only, ds.n_malignant) == (224, 143, 45, 36)
    unboxed = [l for l in ds.lesions if l.box is None]
    print(f"{len(unboxed)} abnormal rows without coordinates: {[l.image_id for l in unboxed]}")
    assert len([line for line in ds.report if "image-level" in line]) == len(unboxed)
    assert all(0 <= v <= 1024 for l in ds.lesions if l.box for v in l.box)


# --- CBIS-DDSM -------------------------------------------------------------------------------------------------
def cbis_root(tmp_path):
    root = tmp_path / "cbis"
    shutil.copytree(FIX / "cbis", root)
    rng = np.random.default_rng(0)
    full = lambda: rng.integers(0, 4096, (60, 40), dtype=np.uint16)  # noqa: E731
    crop = lambda: rng.integers(0, 255, (12, 10), dtype=np.uint8)  # noqa: E731
    mask = np.zeros((60, 40), np.uint8)
    mask[10:20, 5:15] = 255  # rows 10..19, cols 5..14 -> box (5, 10, 15, 20)
    uid = "1.3.6.1.4.1.9590.100.1.2"
    # CC: columns as documented (cropped = 000000, ROI mask = 000001)
    write_dicom(root / f"Mass-Training_P_00001_LEFT_CC/{uid}.1/{uid}.2/000000.dcm", full())
    write_dicom(root / f"Mass-Training_P_00001_LEFT_CC_1/{uid}.3/{uid}.4/000000.dcm", crop())
    write_dicom(root / f"Mass-Training_P_00001_LEFT_CC_1/{uid}.3/{uid}.4/000001.dcm", mask)
    # MLO: the CSV swaps the two columns (the ROI column names the crop)
    write_dicom(root / f"Mass-Training_P_00001_LEFT_MLO/{uid}.5/{uid}.6/000000.dcm", full())
    write_dicom(root / f"Mass-Training_P_00001_LEFT_MLO_1/{uid}.7/{uid}.8/000000.dcm", crop())
    write_dicom(root / f"Mass-Training_P_00001_LEFT_MLO_1/{uid}.7/{uid}.8/000001.dcm", np.roll(mask, 30, axis=0))
    # P_00004: abnormality 1 has its mask, abnormality 2's files are missing; the Calc-Test image is missing
    write_dicom(root / f"Mass-Training_P_00004_RIGHT_CC/{uid}.9/{uid}.10/000000.dcm", full())
    write_dicom(root / f"Mass-Training_P_00004_RIGHT_CC_1/{uid}.11/{uid}.12/000001.dcm", mask)
    return root


def test_cbis_masks_to_boxes(tmp_path):
    ds = read_annotations("cbis-ddsm", cbis_root(tmp_path))
    ims = by_id(ds)
    assert sorted(ims) == ["Mass-Training_P_00001_LEFT_CC", "Mass-Training_P_00001_LEFT_MLO",
                           "Mass-Training_P_00004_RIGHT_CC"]
    cc = ims["Mass-Training_P_00001_LEFT_CC"]
    assert (cc.patient_id, cc.laterality, cc.view, cc.label) == ("P_00001", "L", "CC", 1)
    assert cc.lesions[0].box == (5, 10, 15, 20)
    assert cc.lesions[0].detail == "mass shape=IRREGULAR margins=SPICULATED"
    mlo = ims["Mass-Training_P_00001_LEFT_MLO"]
    assert mlo.lesions[0].box == (5, 40, 15, 50)  # found through the swapped column
    assert any("Mass-Training_P_00001_LEFT_MLO" in line and "swapped" in line for line in ds.report)
    p4 = ims["Mass-Training_P_00004_RIGHT_CC"]
    assert [l.pathology for l in p4.lesions] == ["benign", "benign"]  # BENIGN_WITHOUT_CALLBACK is benign
    assert p4.lesions[0].box == (5, 10, 15, 20) and p4.lesions[1].box is None
    assert any("no usable ROI mask" in line and "row 5" in line for line in ds.report)
    assert any("Calc-Test_P_00038_LEFT_MLO" in line and "missing" in line for line in ds.report)
    assert ds.official_split == {k: "train" for k in ims}


def test_cbis_mask_choice_without_full_image():
    m = np.zeros((8, 9), np.uint8)
    m[2:4, 3:7] = 1
    assert mask_box(m) == (3, 2, 7, 4) and mask_box(np.zeros((3, 3))) is None
    assert _find_mask([], None) == (None, None)


def test_cbis_binary_mask_chosen_when_image_absent(tmp_path):
    rng = np.random.default_rng(1)
    crop, mask = tmp_path / "crop.dcm", tmp_path / "mask.dcm"
    write_dicom(crop, rng.integers(0, 255, (6, 6), dtype=np.uint8))
    m = np.zeros((20, 20), np.uint8)
    m[1:3, 2:5] = 255
    write_dicom(mask, m)
    col, arr = _find_mask([("ROI mask file path", crop), ("cropped image file path", mask)], None)
    assert col == "cropped image file path" and mask_box(arr) == (2, 1, 5, 3)


def test_cbis_path_escape_refused(tmp_path):
    root = tmp_path / "cbis"
    root.mkdir()
    text = (FIX / "cbis" / "calc_case_description_test_set.csv").read_text()
    (root / "calc_case_description_test_set.csv").write_text(text.replace('"Calc-Test_P', '"../../Calc-Test_P'))
    with pytest.raises(AnnotationError, match=r"calc_case_description_test_set.csv \(row 2\).*outside"):
        read_annotations("cbis-ddsm", root)


# --- INbreast --------------------------------------------------------------------------------------------------
def inbreast_root(tmp_path):
    root = tmp_path / "INbreast"
    shutil.copytree(FIX / "inbreast", root)
    img = lambda h, w: np.zeros((h, w), np.uint16)  # noqa: E731
    for name, shape in [("20000001_aaaa1111_MG_R_CC_ANON.dcm", (300, 200)),
                        ("20000002_aaaa1111_MG_L_ML_ANON.dcm", (30, 20)),
                        ("20000003_bbbb2222_MG_R_ML_ANON.dcm", (30, 20)),
                        ("20000004_bbbb2222_MG_L_CC_ANON.dcm", (35, 25))]:
        write_dicom(root / "AllDICOMs" / name, img(*shape))
    return root


def test_inbreast_plist_parsing():
    rois, shape = parse_inbreast_xml(FIX / "inbreast" / "AllXML" / "20000001.xml")
    assert shape == (300, 200)
    assert [n for n, _ in rois] == ["Mass", "Calcification", "Spiculated Region"]
    assert rois[0][1][1] == (80.5, 110.0) and len(rois[1][1]) == 1


def test_inbreast_reader(tmp_path):
    ds = read_annotations("inbreast", inbreast_root(tmp_path))
    ims = by_id(ds)
    assert sorted(ims) == ["20000001", "20000002", "20000003", "20000004"]  # blank trailing row ignored
    a = ims["20000001"]
    assert (a.patient_id, a.laterality, a.view, a.label) == ("aaaa1111", "R", "CC", 1)  # Bi-Rads 4c
    mass, calc, spic = a.lesions
    assert (mass.abnormality, mass.box) == ("mass", (40, 100, 81.5, 151))
    assert (calc.abnormality, calc.box) == ("calcification", (117.5, 27.5, 123.5, 33.5))  # point -> 6 px box
    assert (spic.abnormality, spic.detail, spic.box) == ("other", "Spiculated Region", (190, 280, 200, 300))
    assert ims["20000002"].lesions == () and ims["20000002"].view == "MLO"  # Bi-Rads 1, no XML: negative
    (b,) = ims["20000003"].lesions  # Bi-Rads 2 without outlines: image-level benign label, reported
    assert b.box is None and b.pathology == "benign"
    assert any("20000003" in line and "image-level" in line for line in ds.report)
    (c,) = ims["20000004"].lesions
    assert (c.abnormality, c.pathology, c.box) == ("calcification", "benign", (10, 12, 25, 35))  # clipped to DICOM
    assert ims["20000004"].patient_id == "bbbb2222"
    assert (ds.n_negative, ds.n_benign_only, ds.n_malignant) == (1, 2, 1)


def test_inbreast_birads_mapping_is_a_parameter(tmp_path):
    mapping = {"1": "benign", "2": "benign", "3": "malignant", "4c": "malignant"}
    ds = read_annotations("inbreast", inbreast_root(tmp_path), birads_pathology=mapping)
    assert by_id(ds)["20000004"].label == 1
    ds = read_annotations("inbreast", inbreast_root(tmp_path / "x"), birads_pathology={"1": "benign"})
    assert sorted(by_id(ds)) == ["20000002"]  # unmapped Bi-Rads: image not listed, and said so
    assert sum("not in the pathology mapping" in line for line in ds.report) == 3


# --- VinDr-Mammo -----------------------------------------------------------------------------------------------
def test_vindr_reader():
    ds = read_annotations("vindr", FIX / "vindr")
    ims = by_id(ds)
    assert sorted(ims) == ["i0000001", "i0000002", "i0000003", "i0000004"]
    one = ims["i0000001"]
    assert (one.patient_id, one.laterality, one.view) == ("s0000aaaa", "L", "CC")
    assert [(l.abnormality, l.pathology, l.box) for l in one.lesions] == [
        ("mass", "malignant", (10.5, 20.25, 60, 80)), ("mass", "benign", (150, 250, 200, 300))]  # clipped
    assert one.lesions[1].detail == "Mass, Suspicious Calcification"
    assert ims["i0000002"].lesions[0].abnormality == "calcification"
    assert ims["i0000003"].lesions == ()  # No Finding
    (asym,) = ims["i0000004"].lesions
    assert (asym.abnormality, asym.pathology, asym.box) == ("asymmetry", "benign", None)
    assert any("i0000004" in line and "image-level" in line for line in ds.report)
    assert ds.official_split["i0000004"] == "test" and ds.official_split["i0000001"] == "training"
    assert ims["i0000001"].path == FIX / "vindr" / "images" / "s0000aaaa" / "i0000001.dicom"


# --- plain CSV -------------------------------------------------------------------------------------------------
def csv_root(tmp_path, text=None):
    shutil.copy(FIX / "csv" / "boxes.csv", tmp_path)
    if text is not None:
        (tmp_path / "boxes.csv").write_text(text)
    (tmp_path / "imgs").mkdir(exist_ok=True)
    for n in "abcd":
        (tmp_path / "imgs" / f"{n}.png").write_bytes(b"")
    return tmp_path / "boxes.csv"


def test_csv_reader(tmp_path):
    ds = read_annotations("csv", csv_root(tmp_path))
    ims = by_id(ds)
    a = ims["imgs/a"]
    assert [(l.box, l.pathology, l.abnormality) for l in a.lesions] == [
        ((10, 20, 30, 40), "malignant", "mass"), ((50, 60, 70, 80), "benign", "calcification")]
    assert ims["imgs/b"].lesions == () and ims["imgs/b"].patient_id == "p1"
    assert ims["imgs/c"].lesions[0].box == (0, 5, 15, 25)  # clipped at 0
    assert ims["imgs/d"].lesions[0].box is None and any("imgs/d" in line for line in ds.report)
    assert (ds.n_images, ds.n_negative, ds.n_malignant) == (4, 1, 3)
    assert ims["imgs/a"].path == tmp_path / "imgs" / "a.png"


HEAD = "image,patient_id,x1,y1,x2,y2,label\n"


@pytest.mark.parametrize("text, match", [
    ("image,patient_id,x1,y1,x2,label\nimgs/a.png,p1,1,2,3,1\n", r"missing column.*'y2'"),
    (HEAD + "imgs/a.png,p1,1,2,3,4,1\nimgs/b.png,p1,1,two,3,4,1\n", r"\(row 3\).*non-numeric"),
    (HEAD + "imgs/a.png,p1,10,2,10,4,1\n", r"\(row 2\).*inverted"),
    (HEAD + "imgs/a.png,p1,1,2,3,4,suspicious\n", r"\(row 2\).*unknown label"),
    (HEAD + "../outside.png,p1,1,2,3,4,1\n", r"\(row 2\).*outside"),
    (HEAD + "/etc/hostname,p1,1,2,3,4,1\n", r"\(row 2\).*outside"),
])
def test_csv_errors_name_file_and_row(tmp_path, text, match):
    with pytest.raises(AnnotationError, match=match) as e:
        read_annotations("csv", csv_root(tmp_path, text))
    assert "boxes.csv" in str(e.value)


def test_symlink_out_of_root_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    (outside / "x.png").write_bytes(b"")
    os.symlink(outside, root / "link")
    with pytest.raises(AnnotationError, match="ann.csv.*row 7.*outside"):
        safe_path(root, "link/x.png", "ann.csv", 7)
    assert safe_path(root, "sub/../y.png", "ann.csv") == root / "sub/../y.png"  # '..' that stays inside is fine


def test_registry():
    assert read_annotations("MIAS", FIX / "mias" / "Info.txt").n_images == 9
    with pytest.raises(AnnotationError, match="unknown annotation format"):
        read_annotations("ddsm-lji", FIX)
