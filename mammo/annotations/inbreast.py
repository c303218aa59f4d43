"""INbreast: the per-image table `INbreast.csv`, ROI outlines in `AllXML/<file-id>.xml` (Apple plist), DICOMs in
`AllDICOMs/<file-id>_<patient hash>_MG_<L|R>_<CC|ML>_ANON.dcm`.

- INbreast has no biopsy pathology. By convention here the image's Bi-Rads gives the pathology of all its
  findings: 1-3 -> benign, 4a/4b/4c/5/6 -> malignant (`birads_pathology` overrides the mapping).
- Box = bounding box of an ROI's outline points, taken as pixel indices (so x2 = max x + 1). Single-point ROIs
  (individual calcifications) get a box of at least 2 * `point_half_size` px around the point.
- The patient id is the hash in the DICOM file name: the table's 'Patient ID' reads 'removed'.
- An image without ROIs is a negative when its Bi-Rads is 1; otherwise its Bi-Rads is kept as an image-level
  finding (box None) and reported, since its findings were not outlined.
"""
from __future__ import annotations

import plistlib
import re
from pathlib import Path

from mammo.errors import AnnotationError
from mammo.records import ImageRecord, Lesion

from ._common import AnnotationSet, clip_box, dicom_shape, keep_existing, read_csv_rows, require_columns, safe_path

BIRADS_PATHOLOGY = {"1": "benign", "2": "benign", "3": "benign", "4": "malignant", "4a": "malignant",
                    "4b": "malignant", "4c": "malignant", "5": "malignant", "6": "malignant"}
NAMES = {"mass": "mass", "calcification": "calcification", "calcifications": "calcification",
         "cluster": "calcification", "distortion": "distortion", "architectural distortion": "distortion",
         "asymmetry": "asymmetry", "assymetry": "asymmetry"}  # others ('Spiculated Region', ...) -> 'other'
DICOM_NAME = re.compile(r"(\d+)_([0-9a-fA-F]+)_MG_([LR])_(CC|ML|MLO)_ANON\.dcm$")
POINT = re.compile(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?")


def parse_inbreast_xml(path) -> tuple[list[tuple[str, list[tuple[float, float]]]], tuple[int, int] | None]:
    """([(ROI name, [(x, y), ...]), ...], (height, width) or None) from one INbreast plist."""
    try:
        with open(path, "rb") as fh:
            doc = plistlib.load(fh)
        image = doc["Images"][0]
    except Exception as e:
        raise AnnotationError(path, f"not an INbreast ROI plist: {e}") from None
    rois = []
    for roi in image.get("ROIs", []):
        pts = []
        for s in roi.get("Point_px", []):
            v = [float(t) for t in POINT.findall(str(s))]
            if len(v) >= 2:
                pts.append((v[0], v[1]))
        rois.append((str(roi.get("Name", "")).strip(), pts))
    shape = (int(image["ImageHeight"]), int(image["ImageWidth"])) if "ImageHeight" in image else None
    return rois, shape


def points_box(pts, half: float) -> tuple[float, float, float, float]:
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x1, y1, x2, y2 = min(xs), min(ys), max(xs) + 1, max(ys) + 1
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    w, h = max(x2 - x1, 2 * half), max(y2 - y1, 2 * half)
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def read_inbreast(path, images_root=None, birads_pathology: dict | None = None,
                  point_half_size: float = 3.0) -> AnnotationSet:
    table = Path(path)
    if table.is_dir():
        table = table / "INbreast.csv"
    if not table.is_file():
        raise AnnotationError(table, "INbreast.csv not found")
    root = Path(images_root) if images_root else table.parent
    mapping = {str(k).lower(): v for k, v in (birads_pathology or BIRADS_PATHOLOGY).items()}
    report: list[str] = []
    header, rows = read_csv_rows(table)
    col = require_columns(header, ("File Name", "Bi-Rads", "Laterality", "View"), table,
                          aliases={"Bi-Rads": ("BiRads", "Bi Rads", "BIRADS")})

    dicoms = {}  # file id -> (path, patient hash)
    if (root / "AllDICOMs").is_dir():
        for p in sorted((root / "AllDICOMs").iterdir()):
            m = DICOM_NAME.match(p.name)
            if m:
                dicoms[m.group(1)] = (safe_path(root, f"AllDICOMs/{p.name}", table), m.group(2))
    if not dicoms:
        report.append("inbreast: no DICOM found under AllDICOMs/: patient ids fall back to 'inbreast_<file id>' "
                      "(one patient per image, so a patient-level split is NOT guaranteed)")

    records = []
    for rowno, r in rows:
        fid = r[col["File Name"]].split(".")[0]  # spreadsheet exports may write 22678622.0
        if not fid:
            raise AnnotationError(table, "empty 'File Name'", rowno)
        birads = r[col["Bi-Rads"]].lower().replace(" ", "")
        path_, pid = dicoms.get(fid, (safe_path(root, f"AllDICOMs/{fid}.dcm", table, rowno), f"inbreast_{fid}"))
        xml = safe_path(root, f"AllXML/{fid}.xml", table, rowno)
        rois, shape = parse_inbreast_xml(xml) if xml.is_file() else ([], None)
        shape = shape or (dicom_shape(path_) if path_.is_file() else None)
        sev = mapping.get(birads)
        if sev is None and (rois or birads != "1"):
            report.append(f"inbreast {fid}: Bi-Rads {birads!r} not in the pathology mapping (row {rowno}); "
                          "image not listed")
            continue
        lesions = []
        for name, pts in rois:
            if not pts:
                report.append(f"inbreast {fid}: ROI {name!r} without points; skipped")
                continue
            abn = NAMES.get(name.lower(), "other")
            box = clip_box(points_box(pts, point_half_size), shape)
            if box is None:
                report.append(f"inbreast {fid}: ROI {name!r} lies outside the image; kept as image-level label")
            lesions.append(Lesion(fid, pid, box, abn, sev, "inbreast", name))
        if not lesions and birads != "1":
            report.append(f"inbreast {fid}: Bi-Rads {birads} without outlined ROI; kept as image-level label")
            lesions.append(Lesion(fid, pid, None, "other", sev, "inbreast", f"Bi-Rads {birads}"))
        side = r[col["Laterality"]].upper() or None
        view = {"ML": "MLO"}.get(r[col["View"]].upper(), r[col["View"]].upper() or None)
        records.append(ImageRecord(fid, pid, path_, tuple(lesions), side, view, "inbreast"))
    records = keep_existing(records, report, "inbreast")
    return AnnotationSet(tuple(records), tuple(report), "inbreast")
