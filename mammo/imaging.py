"""One entry point for reading a mammogram from any supported file: DICOM, PGM, PNG, JPEG, TIFF.

Returns a `Mammogram`: float32 pixels in [0, 1], brighter = denser, on the original grid, plus `ImageMeta`.
Every failure is an `ImageReadError` naming the file, so a batch can record it and go on.
"""
from __future__ import annotations

import re
import struct
from pathlib import Path

import cv2
import numpy as np

from mammo import dicom
from mammo.errors import ImageReadError
from mammo.records import ImageMeta, Mammogram

MAX_PIXELS = 50_000_000  # default cap on decoded pixels (run.max_pixels); the largest FFDM is ~5000 x 6000
MIN_SIDE = 32  # smaller is no mammogram (a 1 x 1 PNG, a thumbnail icon)
RASTER_SUFFIXES = {".pgm", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
IMAGE_SUFFIXES = RASTER_SUFFIXES | DICOM_SUFFIXES


def is_image_file(path) -> bool:
    """Recognized by extension or, for DICOM files that often have none, by the 'DICM' preamble."""
    path = Path(path)
    return path.suffix.lower() in IMAGE_SUFFIXES or (path.is_file() and dicom.is_dicom(path))


def read_mammogram(path, *, window_index: int = 0, max_pixels: int = MAX_PIXELS) -> Mammogram:
    """Any supported file; sizes are checked from the header before anything is decoded (`max_pixels`)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found" if not path.exists() else "not a regular file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    if dicom.is_dicom(path) or path.suffix.lower() in DICOM_SUFFIXES:
        mammogram = dicom.read_dicom(path, window_index=window_index, max_pixels=max_pixels)
    elif path.suffix.lower() in RASTER_SUFFIXES:
        mammogram = read_raster(path, max_pixels=max_pixels)
    else:
        raise ImageReadError(path, f"unsupported file type '{path.suffix}': expected DICOM, PGM, PNG, JPEG or TIFF")
    rows, cols = mammogram.shape
    if min(rows, cols) < MIN_SIDE:  # a tiny image decodes in no time: checked after (the readers serve tests too)
        raise ImageReadError(path, f"{cols} x {rows} pixels is too small for a mammogram (less than {MIN_SIDE} "
                                   f"pixels on a side)")
    return mammogram


def check_size(path, rows: int, cols: int, max_pixels: int = MAX_PIXELS) -> None:
    """Refuse, before decoding, an image too large to process in bounded memory."""
    if rows * cols > max_pixels:
        raise ImageReadError(path, f"{cols} x {rows} pixels is more than run.max_pixels={max_pixels:,} (decoding it "
                                   f"would take about {rows * cols * 12 / 1e9:.1f} GB); raise the limit if it is real")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def raster_header_size(path) -> tuple[int, int]:
    """(rows, cols) from the file header alone, before anything is decoded. A PNG's are read from its first chunk
    (IHDR) directly: Pillow refuses a PNG with a bad CRC in a later chunk, which OpenCV decodes anyway. Other
    formats through Pillow, which reads no pixel data to tell. A header neither can read is refused: decoding it
    would mean decoding without the size check."""
    import warnings

    from PIL import Image

    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] == PNG_SIGNATURE:
        # signature, then the IHDR chunk: length (4 bytes), type, width and height (4 bytes each, big-endian)
        if len(head) < 24 or head[12:16] != b"IHDR":
            raise ImageReadError(path, "not a readable image: a damaged PNG (its first chunk is no IHDR)")
        cols, rows = struct.unpack(">II", head[16:24])
        return int(rows), int(cols)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we judge the size ourselves
            with Image.open(path) as im:
                cols, rows = im.size
        return int(rows), int(cols)
    except Image.DecompressionBombError:  # Pillow's own limit (2 x 89 Mpixel) is far above ours by default
        raise ImageReadError(path, f"more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels: over run.max_pixels "
                                   f"(and Pillow's decompression-bomb limit)") from None
    except Exception as e:  # its message would repeat the path
        raise ImageReadError(path, f"not a readable image: its size cannot be read from the header "
                                   f"({type(e).__name__}), so it cannot be checked against run.max_pixels") from e


def read_raster(path, max_pixels: int = MAX_PIXELS) -> Mammogram:
    path = Path(path)
    check_size(path, *raster_header_size(path), max_pixels)
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    if raw is None:
        raise ImageReadError(path, "not a readable image (corrupt or not the format its extension says)")
    check_size(path, *raw.shape[:2], max_pixels)  # what was decoded, in case it differs from the header
    if raw.ndim == 3:
        # Exports of greyscale mammograms are often saved as RGB(A); drop alpha and average the colours
        # (in float32: float64 would double the memory of a full-size image).
        raw = raw[..., :3].mean(axis=2, dtype=np.float32).astype(raw.dtype)
    pixels = normalize_to_unit(raw)
    h, w = pixels.shape
    meta = ImageMeta(
        image_id=path.stem,
        patient_id="",  # no patient field in a raster file; annotation readers supply the real one
        laterality=laterality_from_text(path.stem),
        view=view_from_text(path.stem),
        pixel_spacing=None,
        original_shape=(h, w),
        photometric="MONOCHROME2",
        source=str(path),
        bits_stored=_bits_used(raw),
    )
    return Mammogram(pixels, meta)


def _bits_used(raw: np.ndarray) -> int | None:
    if raw.dtype == np.uint8:
        return 8
    if raw.dtype == np.uint16:
        # 16-bit containers often hold 10-14 bit data: scale by what is used, not by the container
        return max(8, int(np.ceil(np.log2(int(raw.max()) + 1))))
    return None


def normalize_to_unit(raw: np.ndarray) -> np.ndarray:
    """Integer images scale by their bit depth (so one image's intensities mean the same as another's);
    float images, which carry no depth, are min-max normalized."""
    bits = _bits_used(raw)
    if bits is not None:
        return (raw.astype(np.float32) / float(2**bits - 1)).clip(0, 1)
    raw = raw.astype(np.float32)
    lo, hi = float(raw.min()), float(raw.max())
    return np.zeros_like(raw) if hi <= lo else (raw - lo) / (hi - lo)


_LATERALITY = re.compile(r"(?:^|[_\-. ])(L|R|LEFT|RIGHT)(?:CC|MLO)?(?=$|[_\-. ])", re.IGNORECASE)
_VIEW = re.compile(r"(?:^|[_\-. ])[LR]?(CC|MLO|ML|LM|XCCL)(?=$|[_\-. ])", re.IGNORECASE)


def laterality_from_text(text: str) -> str | None:
    m = _LATERALITY.search(text or "")
    return m.group(1)[0].upper() if m else None


def view_from_text(text: str) -> str | None:
    m = _VIEW.search(text or "")
    return m.group(1).upper() if m else None
