"""A plain CSV of boxes, for data sets of one's own: `image, patient_id, x1, y1, x2, y2, label[, abnormality]`.

- `image` is a path relative to `images_root` (default: the CSV's folder); one row per box, several rows per
  image give several lesions.
- Boxes are in original pixels, top-left origin, corner convention (x2 is one past the last column).
- `label`: benign / malignant or 0 / 1. A row with blank coordinates marks an image with no box: it is a negative
  when its label is blank, 0, 'normal' or 'negative'; with 'benign' / 'malignant' / 1 it is kept as an
  image-level finding (box None) and reported. Each stage decides what such an image can teach it: a box-less
  malignant image is never a detector negative (detector/dataset.py, classifier/data.py).
- `aspect_squashed` (data.aspect_squashed) is recorded on every image: the rasters were resized to other
  proportions than the breast's.
"""
from __future__ import annotations

from pathlib import Path

from mammo.errors import AnnotationError
from mammo.records import ImageRecord, Lesion

from ._common import ABNORMALITIES, AnnotationSet, clip_box, keep_existing, read_csv_rows, require_columns, safe_path

LABELS = {"benign": "benign", "0": "benign", "malignant": "malignant", "1": "malignant"}
NEGATIVE = {"", "0", "normal", "negative"}  # only for rows without a box


def read_csv_boxes(path, images_root=None, aspect_squashed: bool = False) -> AnnotationSet:
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(path, "CSV file not found")
    root = Path(images_root) if images_root else path.parent
    header, rows = read_csv_rows(path)
    col = require_columns(header, ("image", "patient_id", "x1", "y1", "x2", "y2", "label"), path)
    abn_col = next((h for h in header if h.lower() == "abnormality"), None)
    report: list[str] = []
    images: dict[str, ImageRecord] = {}
    lesions: dict[str, list[Lesion]] = {}
    for rowno, r in rows:
        rel, pid = r[col["image"]], r[col["patient_id"]]
        if not pid:
            raise AnnotationError(path, "empty patient_id (needed for patient-level splits)", rowno)
        img_path = safe_path(root, rel, path, rowno)
        iid = Path(rel).with_suffix("").as_posix()  # unique within the data set, unlike the bare stem
        prev = images.setdefault(iid, ImageRecord(iid, pid, img_path, source="csv"))
        if prev.patient_id != pid:
            raise AnnotationError(path, f"image {rel!r} given patient {pid!r}, earlier {prev.patient_id!r}", rowno)
        lesions.setdefault(iid, [])
        label = r[col["label"]].lower()
        coords = [r[col[c]] for c in ("x1", "y1", "x2", "y2")]
        if not any(coords) and label in NEGATIVE:
            continue  # an image without findings
        if label not in LABELS:
            raise AnnotationError(path, f"unknown label {r[col['label']]!r} (use benign/malignant or 0/1)", rowno)
        abn = (r.get(abn_col) or "other").lower() if abn_col else "other"
        if abn not in ABNORMALITIES:
            report.append(f"csv {iid}: abnormality {abn!r} (row {rowno}) -> 'other'")
        detail, abn = abn, abn if abn in ABNORMALITIES else "other"
        box = None
        if any(coords):
            try:
                x1, y1, x2, y2 = (float(v) for v in coords)
            except ValueError:
                raise AnnotationError(path, f"non-numeric or incomplete box {coords}", rowno) from None
            if x2 <= x1 or y2 <= y1:
                raise AnnotationError(path, f"empty or inverted box {coords} (need x2 > x1 and y2 > y1)", rowno)
            box = clip_box((x1, y1, x2, y2), None)  # image size unknown here: only clip at 0
            if box is None:
                raise AnnotationError(path, f"box {coords} lies outside the image", rowno)
        else:
            report.append(f"csv {iid}: {LABELS[label]} finding without a box (row {rowno}); kept as image-level label")
        lesions[iid].append(Lesion(iid, pid, box, abn, LABELS[label], "csv", detail))
    records = [ImageRecord(i, r.patient_id, r.path, tuple(lesions[i]), source="csv", aspect_squashed=aspect_squashed)
               for i, r in images.items()]
    records = keep_existing(records, report, "csv")
    return AnnotationSet(tuple(records), tuple(report), "csv")
