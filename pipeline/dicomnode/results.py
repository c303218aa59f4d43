"""One analysed DICOM image's results as DICOM objects a PACS stores and a viewer shows over the image.

- `sr.dcm`: a TID 1500 measurement report (Enhanced SR). One image-level group (the call at the threshold and
  the calibrated P(malignant) of the image) and one planar ROI per shown box (the JSON's `lesions`): a closed
  POLYLINE rectangle in the source image's pixels with its detector confidence (DCM 'Certainty of Finding') and
  malignancy (DCM 'Probability of cancer'), coded mass / calcification cluster / architectural distortion /
  asymmetry when the detector names the kind, else 'Lesion'.
- the Grad-CAM heatmap on the source image's grid, referencing it: `heatmap_pm.dcm`, a parametric map, when the
  source has a patient coordinate system; else `heatmap_seg.dcm`, a FRACTIONAL segmentation (see `write_map`).

Both go into the source's study (its patient and study attributes are copied, as DICOM requires: nothing else
identifying is added) as new series. Series and SOP instance UIDs are derived from the source's UIDs and the
outputs' fingerprint, so a resumed or repeated run writes the same UIDs and a PACS keeps one copy; results of
other models or settings get other UIDs. File names carry only the anonymised image id (the caller's folder).
"""
from __future__ import annotations

import functools
import logging
import tomllib
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import JPEGLSLossless, generate_uid

SR_FILE, PM_FILE, SEG_FILE = "sr.dcm", "heatmap_pm.dcm", "heatmap_seg.dcm"
SR_SERIES_NUMBER, MAP_SERIES_NUMBER = 7701, 7702  # fixed: a rerun's objects land in the same series
ALGORITHM_NAME = "mammo-cad"
MANUFACTURER = "mammo-cad (research software, not a medical device)"
HEATMAP_MAX = 65535  # the heatmap PNG's scale (pipeline.heatmap.HeatmapCanvas.as_uint16)
SEG_MAX = 255  # a FRACTIONAL segmentation stores 8 bits: the map there is quantised to 1/255

# The finding kinds the project's annotations and detectors name (mammo.records: 'mass', 'calcification',
# 'distortion', 'asymmetry'; detector class names), as SNOMED CT codes of the CID 6014 family.
FINDING_CODES = {
    "mass": codes.SCT.Mass,
    "calcification": codes.SCT.CalcificationCluster,
    "distortion": codes.SCT.ArchitecturalDistortionOfBreast,
    "architectural distortion": codes.SCT.ArchitecturalDistortionOfBreast,
    "asymmetry": codes.SCT.FocalAsymmetricBreastTissue,
}
GENERIC_FINDING = codes.SCT.Lesion  # the detector's single class 'lesion', or a kind it does not name
UNITLESS = pydicom.sr.coding.Code("1", "UCUM", "no units")  # probabilities in [0, 1]


@dataclass(frozen=True)
class Algorithm:
    """Who made the results: `version` is the project's; `fingerprint` a hash of the models and the settings that
    shaped the outputs (infer's output fingerprint): part of every UID, so other results never reuse one."""

    version: str
    fingerprint: str
    name: str = ALGORITHM_NAME

    @property
    def software_version(self) -> str:
        return f"{self.version} models {self.fingerprint[:16]}"


def project_version() -> str:
    """The version in pyproject.toml (the project runs from its source tree, not as an installed package)."""
    path = Path(__file__).resolve().parents[2] / "pyproject.toml"
    try:
        return str(tomllib.loads(path.read_text())["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def derived_uid(*parts: str) -> str:
    """A UID that is a pure function of `parts` (pydicom hashes them under its root): stable across reruns."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


# Type 2 attributes of the patient and study the objects copy from their source (highdicom reads them): an image
# without one gets it empty, as its own IOD allows, instead of a failure.
COPIED_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "StudyID", "AccessionNumber")


def read_source(source) -> pydicom.Dataset:
    """The source's header (no pixels): a path, or a dataset already in memory (received from a PACS; not
    changed). Raises ValueError when it has no study or instance UID: its results could not join its study."""
    if isinstance(source, pydicom.Dataset):
        ds = pydicom.Dataset({e.tag: e for e in source if e.keyword != "PixelData"})
        ds.file_meta = getattr(source, "file_meta", pydicom.dataset.FileMetaDataset())
    else:
        ds = pydicom.dcmread(source, stop_before_pixels=True)
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID") if not ds.get(k)]
    if missing:
        raise ValueError(f"the DICOM source has no {', '.join(missing)}: its results cannot join its study "
                         f"(run with --no-dicom-out for such files)")
    for keyword in COPIED_TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def write_dicom_results(source, result, heatmap: np.ndarray | None, out_dir, algorithm: Algorithm) -> list[Path]:
    """Write the SR and the heatmap object of one image into `out_dir`; returns their paths (SR first).

    `source`: the DICOM input (path or dataset). `result`: the image's result, an ImageResult or the dict its
    JSON holds (`pipeline.results.result_dict`), in the source's pixel grid. `heatmap`: the
    heatmap as infer renders it, at 1/`result['heatmap_downscale']` of the grid: the PNG's uint16 values (value /
    65535) or floats in [0, 1]; None writes no map. Each file is written atomically. Raises ValueError when the
    result does not belong to this source's grid.
    """
    from mammo.atomic import atomic_path
    from pipeline.results import result_dict

    result = result if isinstance(result, dict) else result_dict(result)  # as the JSON says it
    src = read_source(source)
    if (int(src.Rows), int(src.Columns)) != (int(result["height"]), int(result["width"])):
        raise ValueError(f"the result is for a {result['width']}x{result['height']} image, the DICOM source is "
                         f"{src.Columns}x{src.Rows}")
    objects = [(SR_FILE, build_sr(src, result, algorithm))]
    if heatmap is not None:
        objects.append(build_map(src, heatmap_on_grid(heatmap, (int(src.Rows), int(src.Columns))), algorithm))
    out_dir = Path(out_dir)
    paths = []
    for name, ds in objects:
        with atomic_path(out_dir / name) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        paths.append(out_dir / name)
    return paths


def heatmap_on_grid(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The heatmap (uint16 PNG values or floats in [0, 1]) as uint16 on the source grid `shape`: each canvas
    pixel repeated over the source pixels it covers (nearest neighbour: no new values, so the object holds exactly
    the PNG's values)."""
    heatmap = np.asarray(heatmap)
    if heatmap.ndim != 2:
        raise ValueError(f"the heatmap must be one 2-D map, got shape {heatmap.shape}")
    if heatmap.dtype != np.uint16:
        heatmap = np.round(np.clip(heatmap.astype(np.float32), 0, 1) * HEATMAP_MAX).astype(np.uint16)
    if heatmap.shape == shape:
        return heatmap
    return cv2.resize(heatmap, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)


@contextmanager
def _silenced():
    """highdicom and pydicom warn about odd values by quoting them, the patient's name among them ('unlikely to
    represent the intended person name'): such a warning on stderr or in a log would carry an identifier."""
    logger = logging.getLogger("pydicom")  # pydicom's warn_and_log also logs the message
    disabled, logger.disabled = logger.disabled, True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.disabled = disabled


def _observer(algorithm: Algorithm):
    import highdicom as hd

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=derived_uid("device", algorithm.name), name=algorithm.name, manufacturer_name=MANUFACTURER,
        model_name=algorithm.name)
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))


def _finding_code(lesion: dict):
    label = str(lesion.get("label") or "").strip().lower()
    return FINDING_CODES.get(label, GENERIC_FINDING)


def _probability(name, value: float, algorithm_id):
    import highdicom as hd

    return hd.sr.Measurement(name=name, value=float(value), unit=UNITLESS, algorithm_id=algorithm_id)


def build_sr(src: pydicom.Dataset, result: dict, algorithm: Algorithm):
    """The TID 1500 measurement report of one image (an Enhanced SR: image coordinates only, no 3-D ones)."""
    import highdicom as hd

    sop = str(src.SOPInstanceUID)
    parameters = [f"threshold={result['threshold']}", f"aggregate={result.get('aggregate', '')}"]
    if result.get("probability_threshold") is not None:
        parameters.append(f"probability_threshold={result['probability_threshold']}")
    algorithm_id = hd.sr.AlgorithmIdentification(name=algorithm.name, version=algorithm.software_version,
                                                 parameters=parameters)
    malignant = result["decision"] == "malignant"
    image_measurements = []
    if result.get("probability") is not None:  # models without a calibration map give a rank, no probability
        image_measurements.append(_probability(codes.DCM.ProbabilityOfCancer, result["probability"], algorithm_id))
    groups = [hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=derived_uid(sop, "image", algorithm.fingerprint),
                                                     identifier="image"),
        finding_type=codes.SCT.ImagingFinding, algorithm_id=algorithm_id,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(src)],
        measurements=image_measurements or None,
        # the call at the operating threshold, as the algorithm's 'Impression': 'Malignant' or 'Negative' (not
        # flagged at this threshold). Not named 'Finding': TID 1501 uses that concept for the group's finding type.
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            name=codes.DCM.Impression, value=codes.SCT.Malignant if malignant else codes.SCT.Negative)])]
    for i, lesion in enumerate(result.get("lesions", []), 1):
        x1, y1, x2, y2 = (float(v) for v in lesion["box"])
        # The project's boxes and DICOM's image coordinates agree: origin at the top-left corner of the top-left
        # pixel, x along columns (PS3.3 C.18.6.1.2: the centre of that pixel is 0.5\0.5). No conversion needed.
        corners = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], dtype=np.float32)
        region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=corners,
                                   source_image=hd.sr.SourceImageForRegion.from_source_image(src))
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=derived_uid(sop, "box", i, algorithm.fingerprint),
                                                         identifier=f"box {i}"),
            referenced_region=region, finding_type=_finding_code(lesion), algorithm_id=algorithm_id,
            measurements=[_probability(codes.DCM.CertaintyOfFinding, lesion["detector_score"], algorithm_id),
                          _probability(codes.DCM.ProbabilityOfCancer, lesion["malignancy"], algorithm_id)]))
    # The boxes first, the image-level group last: TID 1500 gives the order no meaning, but OHIF (3.13) opens an
    # SR at its first group and shows nothing when that group has no region to draw.
    report = hd.sr.MeasurementReport(observation_context=_observer(algorithm),
                                     procedure_reported=codes.SCT.Mammography,
                                     imaging_measurements=groups[1:] + groups[:1])
    with _silenced():
        return hd.sr.EnhancedSR(
            evidence=[src], content=report[0],
            series_instance_uid=derived_uid(src.StudyInstanceUID, "sr-series", algorithm.fingerprint),
            series_number=SR_SERIES_NUMBER, sop_instance_uid=derived_uid(sop, "sr", algorithm.fingerprint),
            instance_number=int(src.get("InstanceNumber") or 1), manufacturer=MANUFACTURER, is_complete=True,
            series_description=f"{algorithm.name} results (research)")


def _map_algorithm(algorithm: Algorithm):
    import highdicom as hd

    return hd.AlgorithmIdentificationSequence(name=algorithm.name, version=algorithm.software_version,
                                              family=codes.DCM.ArtificialIntelligence)


def _patient_orientation(src: pydicom.Dataset):
    """Patient Orientation (type 2C in the map's General Image module) copied when the source's is valid (two
    values of L/R/A/P/H/F); empty otherwise: some Secondary Captures carry a view name there ('CC')."""
    values = list(pydicom.multival.MultiValue(str, src.get("PatientOrientation") or []))
    ok = len(values) == 2 and all(v and set(v) <= set("LRAPHF") for v in values)
    return values if ok else ""


def _copy_laterality(src: pydicom.Dataset, ds: pydicom.Dataset) -> None:
    """The parametric map's General Series Laterality (type 2C: a breast is a paired organ) from the source's
    Laterality or Image Laterality, empty when neither says. Not in the segmentation: there dciodvfy counts it
    as present against its condition (the segmentation carries no Body Part Examined)."""
    side = str(src.get("Laterality") or src.get("ImageLaterality") or "").strip().upper()
    ds.Laterality = side if side in ("L", "R") else ""


def build_map(src: pydicom.Dataset, grid: np.ndarray, algorithm: Algorithm) -> tuple[str, pydicom.Dataset]:
    """(file name, dataset) of the heatmap `grid` (uint16, value / 65535, on the source's grid).

    A parametric map needs a patient coordinate system in its source (the Parametric Map IOD requires the Frame
    of Reference and plane position/orientation; highdicom 0.28 also fails to build one without them, on its
    dimension index). Projection mammograms have none: Secondary Captures (the CBIS-DDSM samples) and Digital
    Mammography images alike. Those get a FRACTIONAL segmentation instead, which the Segmentation IOD allows on
    any image grid and which viewers overlay like a map; its 8 bits quantise the map to 1/255.
    JPEG-LS lossless (pyjpegls, in requirements.txt) keeps the mostly-zero full-size map small (20-200 kB on
    the sample DICOMs instead of 13-25 MB): 16 ms on a 4600 x 2740 map, where JPEG 2000 lossless takes 104 ms
    for the same size and RLE 118 ms for 9x the size."""
    import highdicom as hd

    sop, fp = str(src.SOPInstanceUID), algorithm.fingerprint
    common = dict(series_instance_uid=derived_uid(src.StudyInstanceUID, "map-series", fp),
                  series_number=MAP_SERIES_NUMBER, instance_number=int(src.get("InstanceNumber") or 1),
                  manufacturer=MANUFACTURER, manufacturer_model_name=algorithm.name,
                  software_versions=algorithm.software_version, device_serial_number=fp[:16] or "none",
                  transfer_syntax_uid=JPEGLSLossless, content_label="GRADCAM",
                  content_description="Grad-CAM, per-pixel maximum over the shown boxes")
    with _silenced():
        if hd.spatial.get_image_coordinate_system(src) is not None:
            mapping = hd.pm.RealWorldValueMapping(
                lut_label="GRADCAM", lut_explanation="Grad-CAM activation, 0 to 1", unit=UNITLESS,
                value_range=(0, HEATMAP_MAX), slope=1 / HEATMAP_MAX, intercept=0)
            ds = hd.pm.ParametricMap(
                [src], grid, sop_instance_uid=derived_uid(sop, "pm", fp), contains_recognizable_visual_features=False,
                real_world_value_mappings=[mapping],
                voi_lut_transformations=[hd.VOILUTTransformation(window_center=HEATMAP_MAX / 2,
                                                                 window_width=HEATMAP_MAX + 1)], **common)
            _copy_laterality(src, ds)
            return PM_FILE, ds
        segment = hd.seg.SegmentDescription(
            segment_number=1, segment_label="Grad-CAM",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=GENERIC_FINDING, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=_map_algorithm(algorithm))
        fractions = grid.astype(np.float32) / HEATMAP_MAX
        ds = fractional_map_class()(
            [src], fractions, hd.seg.SegmentationTypeValues.FRACTIONAL, [segment],
            sop_instance_uid=derived_uid(sop, "seg", fp), max_fractional_value=SEG_MAX, **common)
        ds.PatientOrientation = _patient_orientation(src)
    return SEG_FILE, ds


@functools.cache
def fractional_map_class():
    """FractionalMap, made on first use: highdicom is imported only where DICOM results are written."""
    import highdicom as hd

    class FractionalMap(hd.seg.Segmentation):
        """highdicom's Segmentation, with a cheaper check of a FRACTIONAL map's one 2-D float32 segment.

        highdicom checks a float array's range with np.unique: a sort of the whole map (12.6 M values on a full-size
        mammogram, ~200 ms and two 50 MB copies) for what its minimum and maximum tell; one segment cannot overlap
        another. Every other input goes to highdicom's own check. The objects are the same byte for byte
        (tests/test_dicom_results.py builds both)."""

        @classmethod
        def _check_and_cast_pixel_array(cls, pixel_array, segment_numbers, segmentation_type, dtype):
            if (isinstance(pixel_array, np.ndarray) and pixel_array.ndim == 2 and pixel_array.dtype == np.float32
                    and len(segment_numbers) == 1
                    and hd.seg.SegmentationTypeValues(segmentation_type) == hd.seg.SegmentationTypeValues.FRACTIONAL):
                if not (pixel_array.min() >= 0.0 and pixel_array.max() <= 1.0):  # NaN fails too
                    raise ValueError("Floating point pixel array values must be in the range [0, 1].")
                return pixel_array, hd.seg.SegmentsOverlapValues.NO
            return super()._check_and_cast_pixel_array(pixel_array, segment_numbers, segmentation_type, dtype)

    return FractionalMap

