"""Read one 2-D DICOM mammogram into a `Mammogram`: float32 pixels in [0, 1] as displayed (tissue bright,
background dark) on the original pixel grid, plus `ImageMeta`.

The grayscale pipeline of DICOM PS3.3 C.11 / PS3.4 N.2.1 (stored values -> modality LUT -> VOI LUT -> presentation)
is split in two: `grayscale_params` reads every parameter from the dataset once into a frozen `GrayscaleParams`,
and pure numpy functions (`modality_lut`, `window`, `voi_lut`, `present`, `to_display`) apply it. Each step can
then be tested against the standard's formulas without writing a file.

Anything that is not a single-frame grayscale image raises `ImageReadError(path, reason)`, never another
exception type, so a batch can record the file and go on.
"""
from __future__ import annotations

import copy
import math
import re
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
)

from mammo.domain import DomainTags
from mammo.errors import ImageReadError
from mammo.records import ImageMeta, Mammogram

DICOM_SUFFIXES = {".dcm", ".dicom", ".dic", ".ima"}

# SOP classes that can carry no image at all. Prefixes of PS3.4 Annex B UIDs; Raw Data is one exact UID.
NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.": "structured report",
    "1.2.840.10008.5.1.4.1.1.11.": "presentation state",
    "1.2.840.10008.5.1.4.1.1.104.": "encapsulated document",
    "1.2.840.10008.5.1.4.1.1.9.": "waveform",
}
RAW_DATA_STORAGE = "1.2.840.10008.5.1.4.1.1.66"

# A deflated data set is inflated only up to what an image within run.max_pixels can need: 4 bytes a pixel (one
# sample of at most 32 bits; colour is refused anyway) plus room for the header, LUTs and private tags. More is
# a decompression bomb (or elements the pipeline never reads, such as an encapsulated document): refused.
INFLATED_BYTES_PER_PIXEL = 4
INFLATED_METADATA_BYTES = 64 * 2**20
INFLATE_CHUNK = 2**20

# Decoders allocate the frame a codestream claims, not the one the header says (a 232-byte JPEG-LS claiming
# 60000 x 60000 grew a process past 4.5 GB): JPEG and JPEG-LS frame headers (SOF markers, ISO 10918-1 B.2.2 and
# ISO 14495-1 C.2.2; not DHT C4, JPG C8, DAC CC) are read, and compared with the header, before any decoder runs.
JPEG_SOF_MARKERS = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}

# What to install when pydicom has no working decoder for a compressed transfer syntax.
DECODER_PACKAGES = {
    "JPEG 2000": "pylibjpeg and pylibjpeg-openjpeg",
    "JPEG-LS": "pylibjpeg and pylibjpeg-libjpeg (or pyjpegls)",
    "JPEG": "pylibjpeg and pylibjpeg-libjpeg",
}

# Mammography views (ACR MQCM abbreviations, as in ViewPosition) and the code meanings of ViewCodeSequence
# (CID 4014), compared with case, spaces and hyphens removed.
MAMMO_VIEWS = {"CC", "MLO", "ML", "LM", "LMO", "XCCL", "XCCM", "FB", "SIO", "AT", "CV", "RL", "RM", "TAN"}
VIEW_MEANINGS = {
    "craniocaudal": "CC", "mediolateraloblique": "MLO", "mediolateral": "ML", "lateromedial": "LM",
    "lateromedialoblique": "LMO", "caudocranialfrombelow": "FB", "craniocaudalexaggeratedlaterally": "XCCL",
    "craniocaudalexaggeratedmedially": "XCCM", "superolateraltoinferomedialoblique": "SIO",
}


def is_dicom(path) -> bool:
    """True when the file has the Part 10 'DICM' marker at byte 128 (DICOM files often have no extension)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


# ------------------------------------------------------------------------------------------------ parameters


@dataclass(frozen=True, eq=False)
class Lut:
    """A LUT of PS3.3 C.11.1.1.1 / C.11.2.1.1: input `first_mapped` maps to data[0], the next input to data[1], ...;
    inputs below the first map to data[0], above the last to data[-1]. Entries are `bits` wide."""

    first_mapped: int
    bits: int
    data: np.ndarray


@dataclass(frozen=True, eq=False)
class GrayscaleParams:
    """Everything the grayscale pipeline needs, read once from a dataset by `grayscale_params`."""

    photometric: str = "MONOCHROME2"
    slope: float = 1.0
    intercept: float = 0.0
    modality_lut: Lut | None = None  # when present it replaces slope/intercept (PS3.3 C.11.1)
    voi_lut: Lut | None = None  # when present it is used instead of the window
    window: tuple[float, float] | None = None  # (center, width)
    voi_function: str = "LINEAR"  # LINEAR | LINEAR_EXACT | SIGMOID
    invert: bool = False
    note: str = ""  # why a window in the file was not used, if so

    @property
    def voi(self) -> str:
        return "lut" if self.voi_lut is not None else "window" if self.window is not None else "none"


def _values(value) -> list:
    """A DICOM value of VM 1-n as a list (pydicom gives a bare value for VM 1, a MultiValue otherwise)."""
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]


def _first(ds: pydicom.Dataset, keyword: str, default: float) -> float:
    values = _values(ds.get(keyword))
    return float(values[0]) if values else default


def _read_lut(item, signed: bool, little_endian: bool) -> Lut:
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    if entries <= 0:  # 0 means 2**16 entries; a US value read as SS wraps negative
        entries += 65536
    if signed and first > 32767:  # the first mapped value is SS when pixel values are signed (C.11.1.1.1)
        first -= 65536
    elem = item["LUTData"]
    if isinstance(elem.value, (bytes, bytearray)):  # VR OW: raw 16-bit words (or bytes for 8-bit entries)
        narrow = bits <= 8 and len(elem.value) == entries
        data = np.frombuffer(elem.value, dtype="u1" if narrow else ("<u2" if little_endian else ">u2"))
    else:  # VR US: pydicom already gives the numbers
        data = np.atleast_1d(np.asarray(elem.value, dtype=np.int64))
    if len(data) == 0:
        raise ValueError("empty LUT Data")
    return Lut(first, bits, data[:entries].astype(np.float32))


def grayscale_params(ds: pydicom.Dataset, window_index: int = 0) -> GrayscaleParams:
    """Read the Modality LUT, VOI LUT and presentation attributes of `ds` (one item/window: `window_index`)."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    little_endian = tsyntax != ExplicitVRBigEndian

    modality = None
    if ds.get("ModalityLUTSequence"):
        modality = _read_lut(ds.ModalityLUTSequence[0], signed, little_endian)
    slope, intercept = _first(ds, "RescaleSlope", 1.0), _first(ds, "RescaleIntercept", 0.0)
    if not (math.isfinite(slope) and math.isfinite(intercept)):
        raise ValueError(f"Rescale Slope/Intercept {slope}/{intercept} are not finite numbers")

    voi_lut, window, note = None, None, ""
    function = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):  # LINEAR is the default when absent; also here
        note, function = f"unknown VOI LUT Function {function!r}, used LINEAR", "LINEAR"
    if ds.get("VOILUTSequence"):
        items = ds.VOILUTSequence
        if not 0 <= window_index < len(items):
            raise ValueError(f"window_index {window_index} out of range: the VOI LUT Sequence has {len(items)} items")
        voi_lut = _read_lut(items[window_index], signed, little_endian)
    else:
        centers, widths = _values(ds.get("WindowCenter")), _values(ds.get("WindowWidth"))
        n = min(len(centers), len(widths))
        if n:
            if not 0 <= window_index < n:
                raise ValueError(f"window_index {window_index} out of range: the file has {n} windows")
            c, w = float(centers[window_index]), float(widths[window_index])
            # PS3.3 C.11.2.1.2: LINEAR needs w >= 1, LINEAR_EXACT and SIGMOID w > 0. A broken window is ignored.
            if math.isfinite(c) and (w >= 1 or (w > 0 and function != "LINEAR")) and math.isfinite(w):
                window = (c, w)
            else:
                note = f"invalid window (center {c}, width {w}) for {function}; used min-max"

    # Invert exactly once. The General Image Module (PS3.3 C.7.6.1, Presentation LUT Shape) and the DX Image
    # Module (PS3.3 C.8.11.3, Type 1 there; the MG IODs include it) say INVERSE "shall be used if Photometric
    # Interpretation is MONOCHROME1" and IDENTITY with MONOCHROME2: MONOCHROME1 and INVERSE state the SAME
    # inversion, not two. MONOCHROME2 + INVERSE (a presentation-state style inversion) inverts once as well.
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    invert = photometric == "MONOCHROME1" or shape == "INVERSE"
    return GrayscaleParams(photometric, slope, intercept, modality, voi_lut, window, function, invert, note)


# ------------------------------------------------------------------------------------------------ pure functions


def apply_lut(values: np.ndarray, lut: Lut) -> np.ndarray:
    """Look `values` up in `lut`; out-of-range inputs clamp to the first/last entry (PS3.3 C.11.1.1.1)."""
    index = np.rint(values).astype(np.int64) - lut.first_mapped
    np.clip(index, 0, len(lut.data) - 1, out=index)
    return lut.data[index]


def modality_lut(stored: np.ndarray, p: GrayscaleParams) -> np.ndarray:
    """Stored values -> modality values (float32): the Modality LUT, else slope * x + intercept."""
    if p.modality_lut is not None:
        return apply_lut(stored, p.modality_lut)
    out = stored.astype(np.float32)
    if p.slope != 1.0 or p.intercept != 0.0:
        out = out * np.float32(p.slope) + np.float32(p.intercept)
    return out


def window(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """The VOI window of PS3.3 C.11.2.1.2 with ymin = 0, ymax = 1.

    LINEAR: 0 for x <= c - 0.5 - (w-1)/2, 1 for x > c - 0.5 + (w-1)/2, else ((x - (c - 0.5)) / (w-1) + 0.5).
    LINEAR_EXACT: the same with c and w exactly (C.11.2.1.3.2). SIGMOID: 1 / (1 + exp(-4 (x - c) / w)) (C.11.2.1.3.1).
    The clipped straight line equals the piecewise definition because it is 0 and 1 exactly at the two bounds.
    """
    x = np.asarray(x, dtype=np.float32)
    if function == "SIGMOID":
        if width <= 0:
            raise ValueError(f"SIGMOID needs window width > 0, got {width}")
        with np.errstate(over="ignore"):  # exp overflows to inf far below the centre: y = 0 there, as it should
            return (1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))).astype(np.float32)
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError(f"LINEAR_EXACT needs window width > 0, got {width}")
        c, w = center, width
    elif function == "LINEAR":
        if width < 1:
            raise ValueError(f"LINEAR needs window width >= 1, got {width}")
        c, w = center - 0.5, width - 1.0
        if w == 0:  # width 1: a threshold at c - 0.5
            return (x > c).astype(np.float32)
    else:
        raise ValueError(f"unknown VOI LUT Function {function!r}")
    return np.clip((x - c) / w + 0.5, 0.0, 1.0).astype(np.float32, copy=False)


def minmax(x: np.ndarray) -> np.ndarray:
    """Fallback VOI when the file has neither a VOI LUT nor a window: the image's own range mapped to [0, 1]."""
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros(x.shape, np.float32)
    out = np.subtract(x, np.float32(lo), dtype=np.float32)  # one new array, scaled in place (full-size images)
    out *= np.float32(1.0 / (hi - lo))
    return out


def voi_lut(values: np.ndarray, p: GrayscaleParams) -> np.ndarray:
    """Modality values -> [0, 1]: the VOI LUT (output range 0 .. 2**bits - 1, C.11.2.1.1), else the window,
    else min-max (documented fallback, recorded as extra['voi'] = 'none')."""
    if p.voi_lut is not None:
        return np.clip(apply_lut(values, p.voi_lut) / np.float32(2**p.voi_lut.bits - 1), 0.0, 1.0)
    if p.window is not None:
        return window(values, *p.window, function=p.voi_function)
    return minmax(values)


def present(y: np.ndarray, p: GrayscaleParams) -> np.ndarray:
    """[0, 1] VOI output -> displayed brightness: invert once for MONOCHROME1 / INVERSE."""
    return (1.0 - y).astype(np.float32, copy=False) if p.invert else y.astype(np.float32, copy=False)


def to_display(stored: np.ndarray, p: GrayscaleParams) -> np.ndarray:
    """The whole pipeline: stored pixel values -> float32 in [0, 1], brighter = denser."""
    identity = p.modality_lut is None and p.slope == 1.0 and p.intercept == 0.0
    if identity and stored.dtype.kind in "iu" and stored.dtype.itemsize <= 2:
        # Every VOI step casts to float32 itself, and 16-bit integers are exact in float32: the same numbers
        # without a float32 copy of the full-size image first (about 10 ms per 12.6 Mpixel).
        return present(voi_lut(stored, p), p)
    return present(voi_lut(modality_lut(stored, p), p), p)


# ------------------------------------------------------------------------------------------------ reading


def _inflated(path: Path, max_pixels: int) -> tuple[pydicom.filebase.DicomBytesIO, pydicom.FileMetaDataset] | None:
    """A Deflated Explicit VR Little Endian file as the same file in Explicit VR Little Endian, in memory, with
    its own file meta; None for any other file. pydicom would inflate the whole data set before anything can be
    checked; here inflating stops, and the file is refused, at the size an image within `max_pixels` can need."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.filewriter import write_file_meta_info

    with open(path, "rb") as f:
        try:
            preamble = read_preamble(f, False)
            meta = _read_file_meta_info(f)
        except Exception:
            return None  # dcmread reads the file again and says what is wrong with it
        if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            return None
        limit = max_pixels * INFLATED_BYTES_PER_PIXEL + INFLATED_METADATA_BYTES
        out = DicomBytesIO()
        out.write(preamble + b"DICM")
        plain = copy.deepcopy(meta)
        plain.TransferSyntaxUID = ExplicitVRLittleEndian
        write_file_meta_info(out, plain, enforce_standard=False)
        inflater, size = zlib.decompressobj(-zlib.MAX_WBITS), 0
        try:
            while not inflater.eof:
                data = inflater.unconsumed_tail or f.read(INFLATE_CHUNK)
                chunk = inflater.decompress(data, INFLATE_CHUNK)  # never more than a chunk at a time
                if not data and not chunk:
                    raise ImageReadError(path, "truncated file (the deflated data set ends early)")
                size += len(chunk)
                if size > limit:
                    raise ImageReadError(path, f"the deflated data set inflates to more than {limit:,} bytes, more "
                                               f"than an image within run.max_pixels={max_pixels:,} needs (a "
                                               f"decompression bomb, or large elements beside the image); refused")
                out.write(chunk)
        except zlib.error as e:
            raise ImageReadError(path, f"damaged deflated data set (zlib: {e})") from e
    out.seek(0)
    return out, meta


def _read_dataset(path: Path, max_pixels: int) -> pydicom.Dataset:
    try:
        if path.stat().st_size == 0:
            raise ImageReadError(path, "empty file (0 bytes)")
        inflated = _inflated(path, max_pixels)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(inflated[0] if inflated else path, force=False)
        if inflated:
            ds.file_meta = inflated[1]  # the file's own transfer syntax, recorded in the metadata
        for w in caught:  # pydicom only warns when a file ends early, and keeps what it read: refuse it
            if "End of file" in str(w.message):
                raise ImageReadError(path, f"truncated file ({w.message})")
            warnings.warn(w.message, w.category, stacklevel=2)
        return ds
    except ImageReadError:
        raise
    except InvalidDicomError:
        pass  # no 'DICM' marker: maybe a raw dataset without preamble and file meta; tried below
    except OSError as e:
        raise ImageReadError(path, f"cannot open: {e.strerror or e}") from e
    except Exception as e:  # pydicom raises many types for a damaged header
        raise ImageReadError(path, f"unreadable DICOM header ({type(e).__name__}: {e})") from e

    # A file without preamble is accepted only when a forced read gives an image dataset in a transfer syntax
    # we can name (native pixels); a text file renamed .dcm parses into junk elements and is refused here.
    not_dicom = "not a DICOM file (no 'DICM' marker at byte 128 and no raw DICOM image dataset)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # junk parsed by force warns about every unknown tag
            ds = pydicom.dcmread(path, force=True)
        if not all(k in ds for k in ("Rows", "Columns", "PixelData")):
            raise ValueError("no image elements")
        if "TransferSyntaxUID" not in ds.file_meta:
            if ds["PixelData"].is_undefined_length:  # encapsulated (compressed) pixels in an unknown syntax
                raise ValueError("compressed pixels without a transfer syntax")
            implicit, little = ds.original_encoding
            ds.file_meta.TransferSyntaxUID = (
                ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
            )
        return ds
    except Exception as e:
        raise ImageReadError(path, not_dicom) from e


def _check_image(ds: pydicom.Dataset, path: Path) -> None:
    """Refuse, with a clear reason, everything that is not one 2-D grayscale image."""
    if len(ds) == 0:
        raise ImageReadError(path, "no data set after the file meta information (a truncated file?)")
    sop = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
    name = UID(sop).name if sop else "no SOP class"
    what = f"{name} ({sop})" if sop else "an object without SOP Class UID"
    kind = next((k for prefix, k in NON_IMAGE_SOP_CLASSES.items() if sop.startswith(prefix)), None)
    kind = "raw data object" if sop == RAW_DATA_STORAGE else kind
    if kind:
        raise ImageReadError(path, f"not an image: {what} is a {kind}")
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageReadError(path, f"not an image: {what} has no Rows/Columns")
    if "PixelData" not in ds:
        other = [k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds]
        why = f" (only {other[0]}, which is not supported)" if other else " (a header-only object, or a truncated file)"
        raise ImageReadError(path, f"no Pixel Data (7FE0,0010){why}")
    frames = int(_first(ds, "NumberOfFrames", 1))
    if frames > 1:
        raise ImageReadError(
            path,
            f"{name}: multi-frame ({frames} frames) tomosynthesis/volume objects are not supported; "
            "pass a 2-D mammogram or a synthesized 2-D view",
        )
    tsyntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "") or ""))
    if not tsyntax.is_transfer_syntax:
        raise ImageReadError(path, f"no valid Transfer Syntax UID in the file meta ({tsyntax or 'missing'!r})")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if samples != 1:
        raise ImageReadError(path, f"colour image ({samples} samples per pixel, {photometric}); need grayscale")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageReadError(path, f"Photometric Interpretation {photometric!r} is not grayscale (MONOCHROME1/2)")


def _decode_failure(ds: pydicom.Dataset, err: Exception) -> str:
    """Say why pixels did not decode: a missing decoder plugin (and what to install) or damaged data."""
    tsyntax = UID(ds.file_meta.get("TransferSyntaxUID", ""))
    if tsyntax.is_compressed:
        from pydicom.pixels.decoders.base import get_decoder

        try:
            decoder = get_decoder(tsyntax)
        except NotImplementedError:
            return f"transfer syntax {tsyntax.name} ({tsyntax}) is not supported by pydicom"
        if not decoder.is_available:
            family = next((k for k in DECODER_PACKAGES if k in tsyntax.name), None)
            need = DECODER_PACKAGES.get(family, "a pydicom decoder plugin")
            return f"no decoder for {tsyntax.name} pixel data: install {need} (pydicom: {err})"
    why = f"{type(err).__name__}: {err}"
    return f"cannot decode {tsyntax.name} pixel data, the file may be truncated or damaged ({why})"


def _tokens(ds: pydicom.Dataset) -> list[set[str]]:
    """Upper-case word tokens of the free-text fields that often carry side and view (e.g. 'P_00820_LEFT_CC')."""
    fields = (str(ds.get(k, "") or "") for k in ("PatientName", "PatientID", "SeriesDescription"))
    return [set(re.split(r"[^A-Z0-9]+", f.upper())) for f in fields]


def _from_tokens(ds: pydicom.Dataset, words: dict[str, str]) -> str | None:
    for tokens in _tokens(ds):  # first field that names exactly one
        found = {words[t] for t in tokens if t in words}
        if len(found) == 1:
            return found.pop()
    return None


def _laterality(ds: pydicom.Dataset) -> str | None:
    for key in ("ImageLaterality", "Laterality"):  # (0020,0062) then the series-level (0020,0060)
        value = str(ds.get(key, "") or "").strip().upper()
        if value in ("L", "R"):
            return value
    return _from_tokens(ds, {"LEFT": "L", "RIGHT": "R"})


def _view(ds: pydicom.Dataset) -> str | None:
    value = str(ds.get("ViewPosition", "") or "").strip().upper()
    if value:
        return value
    for item in ds.get("ViewCodeSequence", None) or []:
        meaning = re.sub(r"[^a-z]", "", str(item.get("CodeMeaning", "")).lower())
        if meaning in VIEW_MEANINGS:
            return VIEW_MEANINGS[meaning]
    orientation = "".join(str(v) for v in _values(ds.get("PatientOrientation"))).strip().upper()
    if orientation in MAMMO_VIEWS:  # a misuse seen in converted data (CBIS-DDSM): the view instead of 'A\R'
        return orientation
    return _from_tokens(ds, {"CC": "CC", "MLO": "MLO"})


def _spacing(ds: pydicom.Dataset) -> tuple[float, float] | None:
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        values = _values(ds.get(key))
        if len(values) == 2 and all(float(v) > 0 for v in values):
            return float(values[0]), float(values[1])
    return None


# Attributes that identify a patient or a study (PS3.15 Annex E's basic profile, the ones found in mammograms).
IDENTIFYING = ("PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthName",
               "PatientMotherBirthName", "PatientBirthDate", "AccessionNumber", "StudyID", "MedicalRecordLocator",
               "IssuerOfPatientID", "PatientAddress", "PatientTelephoneNumbers", "ReferringPhysicianName",
               "InstitutionName", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def identifying_values(ds: pydicom.Dataset) -> tuple[str, ...]:
    """Every non-empty identifying value of the file, multi-valued ones and Other Patient IDs Sequence items
    included, as text ('DOE^JANE' stays whole: pipeline.ids splits names into their parts)."""
    values = []
    for key in IDENTIFYING:
        try:
            values += [str(v).strip() for v in _values(ds.get(key))]
        except Exception:  # a damaged optional attribute must not make the image unreadable
            continue
    for item in ds.get("OtherPatientIDsSequence", None) or []:
        values.append(str(item.get("PatientID", "") or "").strip())
    return tuple(dict.fromkeys(v for v in values if v))


def _image_id(path: Path) -> str:
    # Only a DICOM extension is cut: UID-named files like '1.2.840.113.5' have no suffix to lose.
    return path.stem if path.suffix.lower() in DICOM_SUFFIXES else path.name


class RleLengthError(ValueError):
    """An RLE segment that does not decode to the expected number of bytes: `more` (then decoding stopped at the
    bound) or fewer, or damaged."""

    def __init__(self, more: bool):
        super().__init__("decodes to more bytes than expected" if more else "decodes to fewer bytes or is damaged")
        self.more = more


def _rle_frame(ds: pydicom.Dataset, path: Path, rows: int, cols: int) -> np.ndarray | None:
    """The one RLE frame, decoded segment by segment in bounded memory and checked against the header: every
    segment must hold Rows x Columns bytes (one byte of padding allowed). pydicom would silently return the first
    half of an image whose Rows tag was halved, and would inflate a segment of replicate runs (2 bytes -> 128
    bytes) to any size before comparing. None for other transfer syntaxes (pydicom decodes those)."""
    if ds.file_meta.TransferSyntaxUID != pydicom.uid.RLELossless:
        return None
    from pydicom.encaps import get_frame

    bits = int(ds.BitsAllocated)
    if bits not in (8, 16):
        raise ImageReadError(path, f"RLE pixel data with {bits} bits allocated are not supported (8 or 16)")
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    n_segments = int.from_bytes(frame[:4], "little")
    if n_segments != bits // 8:
        raise ImageReadError(path, f"RLE data has {n_segments} segments, {bits}-bit pixels need {bits // 8}")
    # The header's offsets must lie inside this fragment, in order, before anything is decoded (PS3.5 G.5).
    offsets = list(struct.unpack_from("<15I", frame, 4)) if len(frame) >= 64 else []
    bounds = offsets[:n_segments] + [len(frame)]
    if not offsets or bounds[0] != 64 or any(offsets[n_segments:]) or any(a >= b for a, b in zip(bounds, bounds[1:])):
        raise ImageReadError(path, f"the RLE header's segment offsets {offsets[:n_segments]} do not fit the "
                                   f"{len(frame):,} bytes of pixel data")
    n, data = rows * cols, memoryview(frame)
    planes = []
    for i in range(n_segments):  # most significant byte first (PS3.5 Annex G)
        try:
            planes.append(_rle_decode(data[bounds[i]:bounds[i + 1]], n))
        except RleLengthError as e:
            more = "more than" if e.more else "fewer than"
            why = "refused before decoding further" if e.more else "or the data are damaged"
            raise ImageReadError(path, f"RLE segment {i + 1} decodes to {more} the header's Rows x Columns ({rows} "
                                       f"x {cols} = {n:,} bytes): header and pixel data disagree, {why}") from None
    if n_segments == 1:
        stored = planes[0]
    else:  # the two byte planes interleaved into little-endian words: one pass, no 16-bit temporaries
        stored = np.empty(n, "<u2")
        pairs = stored.view(np.uint8).reshape(n, 2)
        pairs[:, 1], pairs[:, 0] = planes
    if int(ds.get("PixelRepresentation", 0)) == 1:
        stored = stored.view(np.int8 if n_segments == 1 else "<i2")
    return stored.reshape(rows, cols)


def _rle_decode(segment, size: int) -> np.ndarray:
    """The `size` bytes the RLE (PackBits) segment decodes to, decoded into a buffer of size + 1 bytes (one byte
    of padding allowed) and never more. imagecodecs' decoder (C) stops with OUTPUT_TOO_SMALL where the output is
    full and the data go on, and with INPUT_CORRUPT where a run is cut short; it skips the zero byte that pads a
    segment to an even length (PS3.5 G.5). Raises RleLengthError otherwise."""
    from imagecodecs import PackbitsError, packbits_decode  # a requirement: one bounded pass in C

    out = np.empty(size + 1, np.uint8)
    try:
        decoded = len(packbits_decode(segment, out=out))
    except PackbitsError as e:
        raise RleLengthError(more="OUTPUT_TOO_SMALL" in str(e)) from e
    if decoded < size:
        raise RleLengthError(more=False)
    return out[:size]


def _check_codestream(ds: pydicom.Dataset, path: Path, rows: int, cols: int, max_pixels: int) -> None:
    """Refuse JPEG 2000, JPEG-LS and JPEG pixel data whose codestream claims another frame than the header's
    Rows x Columns, Samples per Pixel and Bits Allocated, which it must match (PS3.5 8.2), before any decoder
    allocates what the codestream claims. Other transfer syntaxes pass."""
    tsyntax = ds.file_meta.TransferSyntaxUID
    if tsyntax in JPEG2000TransferSyntaxes:
        family, parse = "JPEG 2000", _j2k_frame
    elif tsyntax in JPEGLSTransferSyntaxes or tsyntax in JPEGTransferSyntaxes:
        family, parse = ("JPEG-LS" if tsyntax in JPEGLSTransferSyntaxes else "JPEG"), _jpeg_frame
    else:
        return
    from pydicom.encaps import get_frame

    claimed = parse(get_frame(ds.PixelData, 0, number_of_frames=1))
    if claimed is None:
        raise ImageReadError(path, f"the {family} pixel data do not start with a frame header (SIZ or SOF marker "
                                   f"segment): damaged or not {family}; refused before decoding")
    c_rows, c_cols, components, bits = claimed
    samples, allocated = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.BitsAllocated)
    if (c_rows, c_cols, components) != (rows, cols, samples) or bits > allocated:
        raise ImageReadError(path, f"the {family} codestream claims {c_rows} x {c_cols} pixels ({c_rows * c_cols:,}) "
                                   f"of {components} component(s), {bits} bits; the header says {rows} x {cols} "
                                   f"of {samples}, at most {allocated} bits (run.max_pixels={max_pixels:,}): "
                                   f"header and pixel data disagree; refused before decoding")


def _j2k_frame(data: bytes) -> tuple[int, int, int, int] | None:
    """(rows, columns, components, most bits of a component) from a JPEG 2000 codestream's SIZ marker segment,
    which follows the SOC marker (ISO 15444-1 A.5.1); a JP2 file's codestream is its 'jp2c' box (I.5.4)."""
    if data[4:8] == b"jP  ":  # the JP2 signature box: a wrapper some encoders write around the codestream
        data = _jp2_codestream(data)
    if data[:4] != b"\xff\x4f\xff\x51" or len(data) < 42:
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">4I", data, 8)
    csiz = struct.unpack_from(">H", data, 40)[0]
    ssiz = data[42:42 + 3 * csiz:3]  # each component: Ssiz (bit depth - 1, sign bit), XRsiz, YRsiz
    if csiz == 0 or len(ssiz) < csiz:
        return None
    return ysiz - yosiz, xsiz - xosiz, csiz, max(s & 0x7F for s in ssiz) + 1


def _jp2_codestream(data: bytes) -> bytes:
    """The content of a JP2 file's contiguous codestream box ('jp2c'); b'' when there is none."""
    at = 0
    while at + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, at)
        head = 8
        if size == 1 and at + 16 <= len(data):  # the box length follows as 64 bits
            size, head = struct.unpack_from(">Q", data, at + 8)[0], 16
        elif size == 0:  # the box runs to the end
            size = len(data) - at
        if kind == b"jp2c":
            return data[at + head:at + size]
        if size < head:
            break
        at += size
    return b""


def _jpeg_frame(data: bytes) -> tuple[int, int, int, int] | None:
    """(lines, samples per line, components, precision) from the SOF marker segment of a JPEG or JPEG-LS stream:
    the marker segments after SOI are skipped by their lengths up to the first SOF; None when a scan comes first
    or the data end."""
    if data[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xFF:  # a fill byte before a marker
            at += 1
        elif marker in JPEG_SOF_MARKERS:
            if at + 10 > len(data):
                return None
            bits, lines, samples, components = struct.unpack_from(">BHHB", data, at + 4)
            return lines, samples, components, bits
        elif marker in (0xDA, 0xD9):  # start of scan or end of image before any frame header
            return None
        else:
            at += 2 + struct.unpack_from(">H", data, at + 2)[0]
    return None


def read_dicom(path, *, window_index: int = 0, max_pixels: int | None = None) -> Mammogram:
    """Read a single-frame grayscale DICOM image; pixels float32 in [0, 1], brighter = denser, original grid.

    `window_index` picks the VOI LUT Sequence item or the window (of a multi-valued Window Center/Width).
    Raises ImageReadError for anything that is not such an image, with the reason.
    """
    from mammo.imaging import MAX_PIXELS, check_size

    path = Path(path)
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    ds = _read_dataset(path, max_pixels)
    try:  # every header value is read here: pydicom parses values lazily, so damage shows up on access
        _check_image(ds, path)
        params = grayscale_params(ds, window_index)
        rows, cols = int(ds.Rows), int(ds.Columns)
        check_size(path, rows, cols, max_pixels)  # before any decoding
        image_id = _image_id(path)
        patient_id = str(ds.get("PatientID", "") or "").strip() or str(ds.get("PatientName", "") or "").strip()
        extra = {
            "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
            "sop_class": str(ds.get("SOPClassUID", "") or ""),
            "modality": str(ds.get("Modality", "") or ""),
            "voi": params.voi,
            "inverted": params.invert,
        }
        if params.window is not None:
            extra["window"] = [params.window[0], params.window[1], params.voi_function]
        if params.note:
            extra["voi_note"] = params.note
        meta = ImageMeta(
            image_id=image_id,
            patient_id=patient_id,  # '' when the file names no patient (the file name is no patient id)
            laterality=_laterality(ds),
            view=_view(ds),
            pixel_spacing=_spacing(ds),
            original_shape=(rows, cols),
            photometric=params.photometric,
            source=str(path),
            bits_stored=int(ds.BitsStored) if "BitsStored" in ds else None,
            extra=extra,
            identifiers=identifying_values(ds),
            domain_tags=DomainTags.from_dataset(ds),
        )
    except ImageReadError:
        raise
    except Exception as e:  # malformed header values or a window_index the file does not have
        raise ImageReadError(path, f"unusable header ({type(e).__name__}: {e})") from e

    try:
        stored = _rle_frame(ds, path, rows, cols)
        if stored is None:
            _check_codestream(ds, path, rows, cols, max_pixels)
            stored = ds.pixel_array
    except (KeyboardInterrupt, SystemExit, GeneratorExit, ImageReadError):
        raise
    except BaseException as e:  # also pyo3's PanicException: pydicom's Rust decoder plugins panic on damage
        raise ImageReadError(path, _decode_failure(ds, e)) from e
    if stored.shape != (rows, cols):
        raise ImageReadError(path, f"decoded pixels have shape {stored.shape}, header says {(rows, cols)}")
    return Mammogram(pixels=to_display(stored, params), meta=meta)
