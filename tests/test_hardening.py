"""Hardening (issue 12): no identifier in output names, bounded inputs, output folders that two runs cannot
corrupt, resumes that never mix operating points, files readable under the user's umask.

Inference here runs with stand-in models of known output (tests/standins.py), so these tests are fast and do
not depend on training.
"""
import mammo.runtime  # noqa: F401  (first)

import json
import os
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from dicom_fixtures import make_dataset, write_dicom
from mammo.atomic import atomic_write_text, folder_lock
from mammo.config import load_config
from mammo.errors import ImageReadError, MammoError
from mammo.imaging import read_mammogram
from mammo.synthetic import synthetic_mammogram
from pipeline import ids
from pipeline.infer import run_inference
from pipeline.models import PipelineModels
from pipeline.results import read_results

REPO = Path(__file__).resolve().parent.parent


# --- ids: every identifying value of the file, normalised -------------------------------------------------------
@pytest.mark.parametrize("name, identifiers, expected", [
    ("DOE_JANE_L_CC", ["DOE^JANE"], True),            # the case: PatientName in DICOM form
    ("jane-doe-mlo", ["DOE^JANE"], True),             # other order, other separators
    ("JaneDoe_R_CC", ["DOE^JANE^M"], True),           # run together, middle name in the file only
    ("LEFT_CC_0001", ["DOE^JANE"], False),            # nothing of hers
    ("scan_A77_L", ["X1", "A77X"], False),            # a short part alone is not a match
    ("scan_A77XQ_L", ["A77XQ"], True),                # accession number
    ("MRN12345_L_CC", [], True),                      # digit run: an identifier whatever the file says
    ("1.2.840.113619.2.55", [], True),                # a UID
    ("mdb001", [], False),                            # a dataset's image name stays readable
    ("Mass-Test_P_00820_LEFT_CC", [], True),          # CBIS-DDSM patient token
])
def test_identifier_detection(name, identifiers, expected):
    assert ids.looks_like_identifier(name, identifiers) == expected


def test_dicoms_get_hashed_ids_by_default_and_names_only_when_asked(tmp_path):
    pixels = np.full((64, 48), 900, np.uint16)
    dcm = write_dicom(tmp_path / "left_cc.dcm", pixels, PatientName="DOE^JANE", PatientID="X7",
                      OtherPatientIDs=["H-4411"], AccessionNumber="ACC9911")
    meta = read_mammogram(dcm).meta
    assert {"DOE^JANE", "X7", "H-4411", "ACC9911"} <= set(meta.identifiers) and meta.is_dicom
    assert "identifiers" not in meta.to_dict()  # never exported with the metadata
    assert ids.image_id_for(dcm, "auto", "s", meta.identifiers, meta.is_dicom).startswith("img_")
    assert ids.image_id_for(dcm, "name", "s", meta.identifiers, meta.is_dicom) == "left_cc"
    png = tmp_path / "left_cc.png"
    cv2.imwrite(str(png), np.zeros((64, 48), np.uint8))
    assert ids.image_id_for(png, "auto", "s") == "left_cc"  # no patient fields in a PNG: its name stays
    with pytest.raises(ValueError, match="image_id"):
        ids.image_id_for(png, "names", "s")


def test_installation_salt_is_secret_stable_and_overridable(tmp_path, monkeypatch):
    from mammo import runtime

    monkeypatch.setattr(runtime, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.delenv("MAMMO_ID_SALT", raising=False)
    salt = ids.resolve_salt("")
    path = tmp_path / "cache" / "id_salt"
    assert len(salt) >= 32 and path.stat().st_mode & 0o077 == 0  # readable by its owner only
    assert ids.resolve_salt("") == salt and ids.resolve_salt("site-A") == "site-A"
    monkeypatch.setenv("MAMMO_ID_SALT", "site-B")
    assert ids.resolve_salt("") == "site-B"


def test_source_modes_and_argv_scrubbing(tmp_path):
    scan = tmp_path / "MRN12345_L_CC.dcm"
    scan.write_bytes(b"x")
    assert ids.written_source(scan, "full", "s") == str(scan)
    hashed = ids.written_source(scan, "hashed", "s")
    assert hashed.startswith("src_") and "12345" not in hashed and ids.written_source(scan, "none", "s") == ""
    argv = ["/home/u/mammo/pipeline/__main__.py", "infer", str(scan), "--out", str(tmp_path),
            "pipeline.source_paths=hashed", "--overwrite"]
    scrubbed = ids.scrub_argv(argv, [scan, tmp_path], "hashed", "s")
    assert str(tmp_path) not in " ".join(scrubbed) and "pipeline.source_paths=hashed" in scrubbed
    assert ids.scrub_argv(argv, [scan, tmp_path], "none", "s") == [
        "__main__.py", "infer", "--out", "pipeline.source_paths=hashed", "--overwrite"]
    assert ids.scrub_argv(argv, [scan, tmp_path], "full", "s") == argv


# --- bounded inputs ---------------------------------------------------------------------------------------------
def png_header_claiming(path: Path, width: int, height: int) -> Path:
    """A valid tiny PNG whose IHDR claims width x height: a decompression bomb's header, a few bytes on disk."""
    ok, buf = cv2.imencode(".png", np.zeros((4, 4), np.uint8))
    data = bytearray(buf.tobytes())
    ihdr = 8 + 8  # signature, then length + 'IHDR'
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[12:ihdr + 13])))
    path.write_bytes(bytes(data))
    return path


def test_huge_and_tiny_images_are_refused_before_decoding(tmp_path):
    bomb = png_header_claiming(tmp_path / "bomb.png", 20000, 20000)
    with pytest.raises(ImageReadError, match="max_pixels") as err:
        read_mammogram(bomb)
    assert str(bomb) in str(err.value)
    tiny = tmp_path / "tiny.png"
    cv2.imwrite(str(tiny), np.zeros((1, 1), np.uint8))
    with pytest.raises(ImageReadError, match="too small"):
        read_mammogram(tiny)
    ok = tmp_path / "ok.png"
    cv2.imwrite(str(ok), np.zeros((100, 80), np.uint8))
    assert read_mammogram(ok).shape == (100, 80)
    with pytest.raises(ImageReadError, match="max_pixels=5,000"):
        read_mammogram(ok, max_pixels=5000)  # the limit is a setting
    huge_dicom = write_dicom(tmp_path / "huge.dcm", np.zeros((64, 48), np.uint16))
    ds = pydicom.dcmread(huge_dicom)
    ds.Rows, ds.Columns = 30000, 30000  # refused from the header: pixel data is never touched
    ds.save_as(huge_dicom)
    with pytest.raises(ImageReadError, match="max_pixels"):
        read_mammogram(huge_dicom)


@pytest.mark.parametrize("syntax", ["native", "rle"])
def test_dicom_whose_rows_disagree_with_its_pixel_data_is_refused(tmp_path, syntax):
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless

    pixels = (np.arange(128 * 96) % 4000).reshape(128, 96).astype(np.uint16)
    path = write_dicom(tmp_path / f"{syntax}.dcm", pixels, bits_stored=12,
                       transfer_syntax=RLELossless if syntax == "rle" else ExplicitVRLittleEndian)
    intact = read_mammogram(path).pixels
    assert intact.shape == (128, 96) and np.corrcoef(intact.ravel(), pixels.ravel())[0, 1] > 0.999
    ds = pydicom.dcmread(path)
    ds.Rows = 64  # half the real pixel data
    ds.save_as(path)
    with pytest.raises(ImageReadError) as err:
        read_mammogram(path)
    assert str(path) in str(err.value) and ("header" in str(err.value))


def test_checked_rle_decoding_equals_pydicom_on_the_real_sample():
    from conftest import sample_dicom_paths
    from mammo.dicom import _rle_frame

    for path in sample_dicom_paths()[:3]:
        ds = pydicom.dcmread(path)
        np.testing.assert_array_equal(_rle_frame(ds, path, int(ds.Rows), int(ds.Columns)), ds.pixel_array)


# --- decompression bombs (issue 23) -----------------------------------------------------------------------------
def traced_peak_mb(fn) -> float:
    """Peak Python/numpy memory (tracemalloc) while `fn` runs, in MB: what a decoder's output would take."""
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak / 2**20


def deflated_repeats(deflater, block: bytes, times: int) -> bytes:
    """`block` deflated `times` over in the time of once: after a full flush a deflater forgets what came before,
    so every repeat deflates to the same bytes (`deflater` must have been flushed so before, or be new)."""
    return (deflater.compress(block) + deflater.flush(zlib.Z_FULL_FLUSH)) * times


def deflated_dicom(path: Path, zeros: int) -> Path:
    """A Deflated Explicit VR Little Endian file: a 64 x 64 image plus an Encapsulated Document (0042,0011) of
    `zeros` zero bytes, deflated (the file is about zeros / 1000 bytes)."""
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = make_dataset((np.arange(64 * 64) % 4000).reshape(64, 64).astype(np.uint16), bits_stored=12)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds["PixelData"].VR = "OW"  # written alone below, without Bits Allocated to tell OB from OW

    def encoded(elements) -> bytes:
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, False
        write_dataset(fp, elements)
        return fp.getvalue()

    before, after = Dataset(), Dataset()  # the document goes between them, in tag order
    for elem in ds:
        (before if elem.tag < 0x00420011 else after).add(elem)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflater.compress(encoded(before) + struct.pack("<HH2sHI", 0x0042, 0x0011, b"OB", 0, zeros))
    body += deflater.flush(zlib.Z_FULL_FLUSH) + deflated_repeats(deflater, bytes(2**20), zeros // 2**20)
    body += deflater.compress(bytes(zeros % 2**20) + encoded(after)) + deflater.flush()
    meta = DicomBytesIO()
    write_file_meta_info(meta, ds.file_meta)
    path.write_bytes(bytes(128) + b"DICM" + meta.getvalue() + body)
    return path


def test_deflated_dicom_bomb_is_refused_in_bounded_memory(tmp_path):
    # max_pixels=1,024 allows 4 KB of pixels + 64 MB of other elements; pydicom inflated everything (3 GB in the
    # issue) before any check
    bomb = deflated_dicom(tmp_path / "bomb.dcm", 320 * 2**20)
    assert bomb.stat().st_size < 2 * 2**20

    def read():
        with pytest.raises(ImageReadError, match="max_pixels=1,024") as err:
            read_mammogram(bomb, max_pixels=1024)
        assert str(bomb) in str(err.value) and "deflated" in str(err.value)

    assert traced_peak_mb(read) < 120  # the 64 MB allowance and a chunk, not the 320 MB document


def test_deflated_dicom_within_the_limit_reads_as_before(tmp_path):
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    pixels = (np.arange(64 * 64) % 4000).reshape(64, 64).astype(np.uint16)
    plain = read_mammogram(write_dicom(tmp_path / "plain.dcm", pixels, bits_stored=12))
    ds = make_dataset(pixels, bits_stored=12)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)  # pydicom's own deflated writer
    with_document = deflated_dicom(tmp_path / "document.dcm", 2 * 2**20)  # a small document beside it is fine
    for path in (tmp_path / "deflated.dcm", with_document):
        m = read_mammogram(path, max_pixels=1024 * 4)
        np.testing.assert_array_equal(m.pixels, plain.pixels)
        assert m.meta.extra["transfer_syntax"] == DeflatedExplicitVRLittleEndian
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(with_document.read_bytes()[:-100])
    with pytest.raises(ImageReadError, match="truncated"):
        read_mammogram(cut)


def rle_dicom(path: Path, rows: int, cols: int, fragment: bytes) -> Path:
    """An 8-bit RLE Lossless file whose one frame is `fragment` as it is (header included)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    ds = make_dataset(np.zeros((rows, cols), np.uint8))
    ds.PixelData = encapsulate([fragment])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.save_as(path, enforce_file_format=True)
    return path


def test_rle_bomb_is_refused_in_bounded_memory(tmp_path):
    # one segment of replicate runs (0x81 0x00: 128 zeros from 2 bytes) for a 1000 x 1000 image: 4 MB that
    # decoded to 256 MB before its length was compared with Rows x Columns
    header = struct.pack("<16I", 1, 64, *[0] * 14)
    bomb = rle_dicom(tmp_path / "bomb.dcm", 1000, 1000, header + b"\x81\x00" * (2 * 2**20))

    def read():
        with pytest.raises(ImageReadError, match=r"1000 x 1000 = 1,000,000 bytes") as err:
            read_mammogram(bomb)
        assert str(bomb) in str(err.value) and "segment 1" in str(err.value)

    assert traced_peak_mb(read) < 40  # the 4 MB file read and copied, at most Rows x Columns decoded
    exact = rle_dicom(tmp_path / "exact.dcm", 1000, 1000, header + b"\x81\x00" * 7812 + b"\xc1\xff")
    pixels = read_mammogram(exact).pixels.ravel()  # 7812 x 128 + 64 = 1,000,000 bytes: accepted
    assert (pixels[-64:] == 1).all() and (pixels[:-64] == 0).all()


@pytest.mark.parametrize("fragment", [
    struct.pack("<16I", 1, 10**6, *[0] * 14) + b"\x81\x00",  # the segment starts past the fragment
    struct.pack("<16I", 1, 32, *[0] * 14) + b"\x81\x00",  # ... inside the header
    struct.pack("<16I", 1, 64, 66, *[0] * 13) + b"\x81\x00\x81\x00",  # a second segment the count denies
    struct.pack("<5I", 1, 64, 0, 0, 0),  # a header cut short
])
def test_rle_header_whose_offsets_do_not_fit_the_fragment_is_refused(tmp_path, fragment):
    bad = rle_dicom(tmp_path / "offsets.dcm", 100, 100, fragment)
    with pytest.raises(ImageReadError, match="segment offsets") as err:
        read_mammogram(bad)
    assert str(bad) in str(err.value)


def box(kind: bytes, body: bytes) -> bytes:
    """A JP2 box (ISO 15444-1 I.4): length, type, contents."""
    return struct.pack(">I4s", 8 + len(body), kind) + body


def jp2_file(codestream: bytes, rows: int, cols: int) -> bytes:
    """A JPEG 2000 codestream in a minimal JP2 wrapper (signature, file type, header, codestream boxes)."""
    ihdr = box(b"ihdr", struct.pack(">IIHBBBB", rows, cols, 1, 7, 7, 0, 0))
    colr = box(b"colr", struct.pack(">BBBI", 1, 0, 0, 17))  # enumerated colour space: greyscale
    return (box(b"jP  ", b"\r\n\x87\n") + box(b"ftyp", b"jp2 \0\0\0\0jp2 ") + box(b"jp2h", ihdr + colr)
            + box(b"jp2c", codestream))


def encoded_frame(path: Path, codec: str) -> tuple[Path, bytearray]:
    """A real 64 x 48 8-bit image encoded by `codec` ('jpeg2000', 'jp2', 'jpeg-ls', 'jpeg'), and its frame."""
    from pydicom.encaps import encapsulate, get_frame
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless

    pixels = (np.arange(64 * 48) % 251).reshape(64, 48).astype(np.uint8)
    syntax = {"jpeg2000": JPEG2000Lossless, "jp2": JPEG2000Lossless, "jpeg-ls": JPEGLSLossless,
              "jpeg": JPEGBaseline8Bit}[codec]
    write_dicom(path, pixels, transfer_syntax=syntax, bits_stored=8)
    ds = pydicom.dcmread(path)
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    if codec == "jp2":
        ds.PixelData = encapsulate([jp2_file(frame, 64, 48)])
        ds.save_as(path)
    return path, bytearray(frame)


def with_frame(path: Path, frame: bytes, codec: str) -> Path:
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([jp2_file(frame, 64, 48) if codec == "jp2" else bytes(frame)])
    ds.save_as(path)
    return path


def claim(frame: bytearray, codec: str, *, rows=None, cols=None, components=None, bits=None) -> bytearray:
    """The frame with its SIZ (JPEG 2000) or SOF (JPEG, JPEG-LS) fields changed as given."""
    if codec in ("jpeg2000", "jp2"):  # SOC, SIZ, Lsiz, Rsiz, then Xsiz Ysiz XOsiz YOsiz (4 bytes), ..., Csiz, Ssiz
        assert frame[:4] == b"\xff\x4f\xff\x51" and struct.unpack_from(">II", frame, 8) == (48, 64)
        for at, fmt, value in ((8, ">I", cols), (12, ">I", rows), (40, ">H", components), (42, ">B", bits)):
            if value is not None:
                struct.pack_into(fmt, frame, at, value - 1 if at == 42 else value)
    else:  # SOF: marker, Lf, P (bits), Y (lines), X (samples per line), Nf (components)
        at = frame.find(b"\xff\xf7" if codec == "jpeg-ls" else b"\xff\xc0")
        assert struct.unpack_from(">BHHB", frame, at + 4) == (8, 64, 48, 1)
        for offset, fmt, value in ((4, ">B", bits), (5, ">H", rows), (7, ">H", cols), (9, ">B", components)):
            if value is not None:
                struct.pack_into(fmt, frame, at + offset, value)
    return frame


CODECS = ["jpeg2000", "jp2", "jpeg-ls", "jpeg"]


@pytest.mark.parametrize("codec", CODECS)
def test_jpeg_family_codestream_claiming_a_huge_frame_is_refused_in_bounded_memory(tmp_path, codec):
    # the header says 64 x 48, the codestream 60000 x 60000: the JPEG-LS decoder grew past 4.5 GB before the check
    path, frame = encoded_frame(tmp_path / f"{codec}.dcm", codec)
    assert read_mammogram(path).shape == (64, 48)  # the real encoding reads
    bomb = with_frame(path, claim(frame, codec, rows=60000, cols=60000), codec)

    def read():
        with pytest.raises(ImageReadError, match=r"claims 60000 x 60000 pixels \(3,600,000,000\)") as err:
            read_mammogram(bomb, max_pixels=10**6)
        assert str(bomb) in str(err.value) and "64 x 48" in str(err.value) and "max_pixels=1,000,000" in str(err.value)

    assert traced_peak_mb(read) < 20  # the header and the 1 KB frame, nothing decoded


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("change", ["header rows", "components", "bits", "no frame header"])
def test_jpeg_family_codestream_that_disagrees_with_the_header_is_refused(tmp_path, codec, change):
    path, frame = encoded_frame(tmp_path / f"{codec}.dcm", codec)
    if change == "header rows":  # the codestream is larger than the header says
        ds = pydicom.dcmread(path)
        ds.Rows = 32
        ds.save_as(path)
    elif change == "no frame header":
        with_frame(path, frame[4:], codec)  # SOC/SIZ or SOI and the start of the first segment cut off
    else:
        with_frame(path, claim(frame, codec, **{change: 3 if change == "components" else 16}), codec)
    with pytest.raises(ImageReadError, match="frame header" if change == "no frame header" else "disagree") as err:
        read_mammogram(path)
    assert str(path) in str(err.value) and "before decoding" in str(err.value)


@pytest.mark.parametrize("segment, size", [
    (b"\x03\x01\x02\x03\x04", 4),  # one literal run
    (b"\xfd\x07", 4),  # one replicate run: 257 - 0xfd = 4 bytes
    (b"\x01\x05\x06\xfe\x07\x80\x00\x09", 6),  # literal, replicate, no-op (0x80), literal of one byte
    (b"\x02\x01\x02\x03\x00", 3),  # odd length: the zero byte that pads a segment to an even length
    (b"\xfc\x07", 4),  # a replicate run one byte past the end (a padded row): allowed
    (b"\x04\x01\x02\x03\x04\x05", 4),  # a literal run one byte past the end: allowed
])
def test_rle_segment_decodes_as_pydicoms_reference_decoder(segment, size):
    from pydicom.pixels.decoders.rle import _rle_decode_segment  # pure Python: the reference, unbounded

    from mammo.dicom import _rle_decode

    expected = np.frombuffer(bytes(_rle_decode_segment(segment))[:size], np.uint8)
    np.testing.assert_array_equal(_rle_decode(segment, size), expected)


@pytest.mark.parametrize("segment, size, more", [
    (b"\xfb\x07", 4, True),  # a replicate run two bytes past the end
    (b"\x03\x01\x02\x03\x04\x81\x00", 4, True),  # 128 more bytes after a complete segment
    (b"\x03\x01\x02\x03\x04", 6, False),  # ends two bytes early
    (b"\x05\x01\x02", 2, False),  # a literal run cut short (after enough bytes: still damaged data)
    (b"\x01\x01\x02\xfe", 2, False),  # a replicate run without its byte
])
def test_rle_segment_of_another_length_or_damaged_is_refused(segment, size, more):
    from mammo.dicom import RleLengthError, _rle_decode

    with pytest.raises(RleLengthError) as err:
        _rle_decode(segment, size)
    assert err.value.more is more


def test_rle_decoding_equals_pydicoms_reference_on_random_segments():
    """Well-formed random segments (literal, replicate and no-op runs, zero pad) against pydicom's unbounded
    decoder: the same bytes when the segment holds `size` bytes (or one more), refused otherwise."""
    import random

    from pydicom.pixels.decoders.rle import _rle_decode_segment

    from mammo.dicom import RleLengthError, _rle_decode

    rng = random.Random(22)
    for _ in range(3000):
        segment = bytearray()
        for _ in range(rng.randint(1, 8)):
            kind, n = rng.random(), rng.randint(1, 128)
            if kind < 0.45:
                segment += bytes([n - 1]) + rng.randbytes(n)
            elif kind < 0.9 and n > 1:
                segment += bytes([257 - n, rng.randrange(256)])
            else:
                segment += b"\x80"
        if len(segment) % 2:
            segment += b"\x00"
        full = bytes(_rle_decode_segment(bytes(segment)))
        size = max(1, len(full) + rng.randint(-3, 2))
        if size <= len(full) <= size + 1:
            np.testing.assert_array_equal(_rle_decode(bytes(segment), size), np.frombuffer(full[:size], np.uint8))
        else:
            with pytest.raises(RleLengthError) as err:
                _rle_decode(bytes(segment), size)
            assert err.value.more is (len(full) > size + 1)


def black_rgb_png_with_a_bad_crc(path: Path, side: int) -> Path:
    """A side x side black RGB PNG (8000: about 200 KB) whose tEXt chunk has a wrong CRC: Pillow cannot read its
    header, OpenCV decodes it anyway."""
    def chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
        crc = zlib.crc32(kind + data) if crc is None else crc
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = bytes(1 + side * 3) * 100  # 100 rows: filter byte 0, then black pixels
    adler = 1
    for _ in range(side // 100):
        adler = zlib.adler32(rows, adler)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)  # raw: zlib header and checksum by hand
    idat = b"\x78\x01" + deflated_repeats(deflater, rows, side // 100) + deflater.flush() + struct.pack(">I", adler)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                     + chunk(b"tEXt", b"Comment\x00hello", crc=0) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_png_whose_header_pillow_refuses_is_refused_before_decoding(tmp_path, monkeypatch):
    # OpenCV decoded it (192 MB) and averaged the colours in float64 (512 MB) before the size check
    from mammo import imaging

    png = black_rgb_png_with_a_bad_crc(tmp_path / "bomb.png", 8000)
    assert png.stat().st_size < 400_000
    decoded = []
    monkeypatch.setattr(imaging.cv2, "imread", lambda *a: decoded.append(a))

    def read():
        with pytest.raises(ImageReadError, match="max_pixels=50,000,000") as err:
            read_mammogram(png)
        assert str(png) in str(err.value) and "8000 x 8000" in str(err.value)

    assert traced_peak_mb(read) < 20 and not decoded  # refused from the header, nothing decoded
    monkeypatch.undo()
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dJUNK")
    with pytest.raises(ImageReadError, match="no IHDR"):
        read_mammogram(png)
    rgb = tmp_path / "rgb.png"
    colours = np.zeros((60, 50, 3), np.uint8)
    colours[..., 0], colours[..., 1], colours[..., 2] = 30, 60, 91  # averages to 60.33: 60 as before
    cv2.imwrite(str(rgb), colours)
    assert np.allclose(read_mammogram(rgb).pixels, 60 / 255)


# --- output folders ---------------------------------------------------------------------------------------------
@pytest.fixture
def scans(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for seed in (1, 2):
        m, _ = synthetic_mammogram(seed, shape=(256, 192), n_lesions=1)
        cv2.imwrite(str(folder / f"case{seed}.png"), np.round(m.pixels * 255).astype(np.uint8))
    return folder


def test_resume_refuses_other_settings_and_overwrite_redoes(standin_models, scans, tmp_path):
    out = tmp_path / "out"
    cfg = load_config()
    assert run_inference([scans], out, standin_models, cfg, progress=False)["processed"] == 2
    again = run_inference([scans], out, standin_models, cfg, progress=False)
    assert again["resumed"] == 2 and again["processed"] == 0
    other = load_config(overrides=["pipeline.threshold=0.1"])
    with pytest.raises(MammoError, match=r"pipeline\.threshold.*--overwrite"):
        run_inference([scans], out, standin_models, other, progress=False)
    assert {r.threshold for r in read_results(out)} == {0.5}  # nothing was mixed in
    redone = run_inference([scans], out, standin_models, other, overwrite=True, progress=False)
    assert redone["processed"] == 2 and {r.threshold for r in read_results(out)} == {0.1}
    other_models = PipelineModels(standin_models.detector, standin_models.classifier, 0.5, fingerprint="other")
    with pytest.raises(MammoError, match="models"):
        run_inference([scans], out, other_models, other, progress=False)


def test_output_folder_inside_the_input_folder_is_not_read_back(standin_models, scans):
    out = scans / "results"
    cfg = load_config()
    first = run_inference([scans], out, standin_models, cfg, progress=False)
    assert first["images"] == 2 and list(out.glob("*_overlay.png"))
    second = run_inference([scans], out, standin_models, cfg, progress=False)
    assert second["images"] == 2 and second["failed"] == 0  # its own PNGs are no mammograms to process


def test_a_second_run_on_a_locked_folder_is_refused_and_keeps_the_first_runs_files(standin_models, scans,
                                                                                   tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    live = out / ".case1.abc.partial.png"  # a live writer's temporary file
    live.write_bytes(b"half")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, '.'); from mammo.atomic import folder_lock\n"
        f"with folder_lock({str(out)!r}):\n    print('locked', flush=True); time.sleep(60)")],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(MammoError, match="another run is writing"):
            run_inference([scans], out, standin_models, load_config(), progress=False)
        assert live.exists()  # not deleted under the live run
    finally:
        holder.kill()
        holder.wait()
    # the holder died (SIGKILL): the kernel released its lock, and its temporary file is now stale
    assert run_inference([scans], out, standin_models, load_config(), progress=False)["processed"] == 2
    assert not live.exists()


def test_outputs_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "index.html", "<html></html>")
        assert path.stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        assert atomic_write_text(tmp_path / "private.json", "{}").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_lock_is_released_on_exit_and_exclusive_while_held(tmp_path):
    with folder_lock(tmp_path / "a"):
        with pytest.raises(MammoError, match="another run"):
            with folder_lock(tmp_path / "a"):
                pass
    with folder_lock(tmp_path / "a"):  # released on exit
        pass
