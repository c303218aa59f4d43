"""CBIS-DDSM description CSVs (mass/calc x train/test): one row per abnormality, its box from the ROI mask DICOM.

- Image id = first folder of 'image file path' (e.g. 'Mass-Training_P_00001_LEFT_CC'); patient id = 'P_00001'.
  Note that the mass and calc CSVs describe the same breast under two image ids; the patient id ties them.
- Box = bounding box of the mask's nonzero pixels, corner convention (pixels 10..19 -> x1=10, x2=20).
- Known quirk: in some rows 'cropped image file path' and 'ROI mask file path' are swapped. The mask is the file
  whose shape equals the full image's (or, if the full image is absent, the binary one); a swap is reported.
- Pathology: MALIGNANT -> malignant; BENIGN and BENIGN_WITHOUT_CALLBACK -> benign.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mammo.errors import AnnotationError
from mammo.records import ImageRecord, Lesion

from ._common import AnnotationSet, clip_box, dicom_shape, keep_existing, read_csv_rows, require_columns, safe_path

CSV_FILES = ("mass_case_description_train_set.csv", "mass_case_description_test_set.csv",
             "calc_case_description_train_set.csv", "calc_case_description_test_set.csv")
PATHOLOGY = {"MALIGNANT": "malignant", "BENIGN": "benign", "BENIGN_WITHOUT_CALLBACK": "benign"}
TYPES = {"mass": "mass", "calcification": "calcification"}
COLUMNS = ("patient_id", "left or right breast", "image view", "abnormality type", "pathology",
           "image file path", "cropped image file path", "ROI mask file path")


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Bounding box of the nonzero pixels, corner convention; None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def _pixels(path: Path) -> np.ndarray | None:
    import pydicom  # masks are plain binary images: no LUT / photometric handling needed
    try:
        return pydicom.dcmread(str(path)).pixel_array
    except Exception:
        return None


def _find_mask(cands, full_shape):
    """Pick the mask among [(column, path)]: the one shaped like the full image, else the binary one."""
    arrays = [(col, p, _pixels(p)) for col, p in cands if p.is_file()]
    arrays = [(col, p, a) for col, p, a in arrays if a is not None and a.ndim == 2]
    if full_shape is not None:
        for col, p, a in arrays:
            if a.shape == full_shape:
                return col, a
    for col, p, a in arrays:
        if len(np.unique(a)) <= 2:
            return col, a
    return None, None


def _csv_files(path) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    files = [path / f for f in CSV_FILES if (path / f).is_file()]
    if not files:
        raise AnnotationError(path, f"no CBIS-DDSM description CSV found (expected one of {CSV_FILES})")
    return files


def read_cbis_ddsm(path, images_root=None) -> AnnotationSet:
    files = _csv_files(path)
    root = Path(images_root) if images_root else files[0].parent
    report: list[str] = []
    rows_by_image: dict[str, list] = {}
    split: dict[str, str] = {}
    for f in files:
        header, rows = read_csv_rows(f)
        col = require_columns(header, COLUMNS, f)
        opt = {c: next((h for h in header if h.lower().replace("_", " ") == c), None)
               for c in ("mass shape", "mass margins", "calc type", "calc distribution")}
        for rowno, r in rows:
            image_id = r[col["image file path"]].replace("\\", "/").strip("/").split("/")[0]
            rows_by_image.setdefault(image_id, []).append((f, rowno, r, col, opt))
            split[image_id] = "test" if "test" in f.name.lower() else "train"

    records, bad = [], set()
    for image_id, rows in rows_by_image.items():
        f, rowno, r, col, _ = rows[0]
        pid = r[col["patient_id"]]
        full = safe_path(root, r[col["image file path"]], f, rowno)
        full_shape = dicom_shape(full) if full.is_file() else None
        lesions = []
        for f, rowno, r, col, opt in rows:
            where = f"{f.name} row {rowno}"
            path_ = PATHOLOGY.get(r[col["pathology"]].upper())
            if path_ is None:
                report.append(f"cbis {image_id}: unknown pathology {r[col['pathology']]!r} ({where}); image not listed")
                bad.add(image_id)
                continue
            kind = r[col["abnormality type"]].lower()
            abn = TYPES.get(kind, "other")
            if kind not in TYPES:
                report.append(f"cbis {image_id}: unknown abnormality type {kind!r} ({where}) -> 'other'")
            extras = " ".join(f"{k.split()[1]}={r[h]}" for k, h in opt.items() if h and r.get(h))
            detail = f"{kind} {extras}".strip()
            cands = [(c, safe_path(root, r[col[c]], f, rowno))
                     for c in ("ROI mask file path", "cropped image file path") if r[col[c]]]
            used, mask = _find_mask(cands, full_shape)
            box = None
            if mask is None:
                report.append(f"cbis {image_id}: no usable ROI mask ({where}: {cands[0][1] if cands else 'none'}); "
                              "kept as image-level label")
            else:
                if used != "ROI mask file path":
                    report.append(f"cbis {image_id}: ROI mask and cropped image columns swapped ({where})")
                box = mask_box(mask)
                if box is not None and full_shape is not None and mask.shape != full_shape:
                    # a few masks differ from their image by some pixels: rescale rather than misplace the box
                    sy, sx = full_shape[0] / mask.shape[0], full_shape[1] / mask.shape[1]
                    box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
                    report.append(f"cbis {image_id}: mask shape {mask.shape} != image {full_shape} ({where}); rescaled")
                box = clip_box(box, full_shape) if box else None
                if box is None:
                    report.append(f"cbis {image_id}: empty ROI mask ({where}); kept as image-level label")
            lesions.append(Lesion(image_id, pid, box, abn, path_, "cbis-ddsm", detail))
        side = r[col["left or right breast"]].upper()[:1] or None
        records.append(ImageRecord(image_id, pid, full, tuple(lesions), side if side in ("L", "R") else None,
                                   r[col["image view"]].upper() or None, "cbis-ddsm"))
    records = keep_existing([r for r in records if r.image_id not in bad], report, "cbis-ddsm")
    return AnnotationSet(tuple(records), tuple(report), "cbis-ddsm",
                         {r.image_id: split[r.image_id] for r in records})
