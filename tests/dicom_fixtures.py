"""Write small synthetic DICOM files for the tests: any pixel array, transfer syntax, SOP class and extra tags.

Offline and deterministic; lossless codecs use pydicom 3's own encoders (RLE: pydicom; JPEG-LS: pyjpegls;
JPEG 2000: pylibjpeg-openjpeg), JPEG Baseline is encoded by OpenCV and encapsulated with pydicom.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DigitalMammographyXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

MG_FOR_PRESENTATION = DigitalMammographyXRayImageStorageForPresentation


def make_dataset(
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    sop_class: str = MG_FOR_PRESENTATION,
    bits_stored: int | None = None,
    **attributes,
) -> Dataset:
    """A dataset with file meta; `pixels` (2-D, or 3-D frames) as native little-endian Pixel Data, or none.

    `attributes` are set by keyword after the image attributes, so they can override them
    (e.g. SamplesPerPixel=3, NumberOfFrames=4, WindowCenter=[...], PresentationLUTShape='INVERSE').
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()  # Type 1 in every image IOD
    ds.Modality = "MG"
    if pixels is not None:
        pixels = np.ascontiguousarray(pixels)
        ds.Rows, ds.Columns = pixels.shape[-2:]
        if pixels.ndim == 3:
            ds.NumberOfFrames = pixels.shape[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = pixels.dtype.itemsize * 8
        ds.BitsStored = bits_stored or ds.BitsAllocated
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = int(pixels.dtype.kind == "i")
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def write_dicom(path, pixels: np.ndarray | None, *, transfer_syntax: str = ExplicitVRLittleEndian, **kwargs) -> Path:
    """Write `make_dataset(pixels, **kwargs)` to `path` as a Part 10 file in `transfer_syntax`."""
    path = Path(path)
    ds = make_dataset(pixels, **kwargs)
    if transfer_syntax == JPEGBaseline8Bit:
        import cv2

        ok, jpeg = cv2.imencode(".jpg", pixels.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok, "OpenCV could not encode the JPEG"
        ds.PixelData = encapsulate([jpeg.tobytes()])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.LossyImageCompression = "01"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    elif transfer_syntax != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax, pixels)  # pydicom 3 encoders; sets Pixel Data and the transfer syntax
    ds.save_as(path, enforce_file_format=True)
    return path
