"""VinDr-Mammo: `finding_annotations.csv` (one row per finding, 'No Finding' rows for clean images) and
`breast-level_annotations.csv` (one row per image). Images at `<root>/images/<study_id>/<image_id>.dicom`.

- Patient id = study_id (one exam of four views per woman).
- Pathology from the finding's BI-RADS (no biopsy in VinDr): 2/3 -> benign, 4/5 -> malignant by default
  (`birads_pathology` overrides). A finding whose BI-RADS is not mapped drops its image, with a note.
- The official split column ('training'/'test') is returned as `AnnotationSet.official_split`.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

from mammo.errors import AnnotationError
from mammo.records import ImageRecord, Lesion

from ._common import AnnotationSet, clip_box, keep_existing, read_csv_rows, require_columns, safe_path

BIRADS_PATHOLOGY = {"2": "benign", "3": "benign", "4": "malignant", "5": "malignant"}
# normalized class by priority: a finding listed as ['Mass', 'Suspicious Calcification'] counts as a mass
CATEGORIES = (("mass", "mass"), ("calcification", "calcification"), ("distortion", "distortion"),
              ("asymmetry", "asymmetry"))
IMAGE_COLS = ("study_id", "image_id", "laterality", "view_position", "height", "width")


def _categories(s: str) -> list[str]:
    try:
        v = ast.literal_eval(s)
        return [str(c).strip() for c in (v if isinstance(v, (list, tuple)) else [v])]
    except (ValueError, SyntaxError):
        return [c.strip(" '\"") for c in s.strip("[]").split(",") if c.strip(" '\"")]


def _birads(s: str) -> str:
    m = re.search(r"(\d[a-cA-C]?)\s*$", s)
    return m.group(1).lower() if m else s.strip().lower()


def read_vindr(path, images_root=None, birads_pathology: dict | None = None) -> AnnotationSet:
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    findings = path / "finding_annotations.csv" if path.is_dir() else path
    if not findings.is_file():
        raise AnnotationError(findings, "VinDr finding_annotations.csv not found")
    root = Path(images_root) if images_root else folder
    mapping = {str(k).lower(): v for k, v in (birads_pathology or BIRADS_PATHOLOGY).items()}
    report: list[str] = []

    images: dict[str, dict] = {}  # image_id -> row with the image-level columns (first seen)
    breast = folder / "breast-level_annotations.csv"
    if breast.is_file():
        header, rows = read_csv_rows(breast)
        col = require_columns(header, IMAGE_COLS, breast)
        for rowno, r in rows:
            images.setdefault(r[col["image_id"]], {c: r[col[c]] for c in col} | {"split": r.get("split", "")})

    header, rows = read_csv_rows(findings)
    col = require_columns(header, IMAGE_COLS + ("finding_categories", "finding_birads",
                                                "xmin", "ymin", "xmax", "ymax"), findings)
    lesions: dict[str, list[Lesion]] = {}
    bad = set()
    for rowno, r in rows:
        iid = r[col["image_id"]]
        meta = images.setdefault(iid, {c: r[col[c]] for c in IMAGE_COLS} | {"split": r.get("split", "")})
        lesions.setdefault(iid, [])
        cats = _categories(r[col["finding_categories"]])
        if not cats or any(c.lower() == "no finding" for c in cats):
            continue
        sev = mapping.get(_birads(r[col["finding_birads"]]))
        if sev is None:
            report.append(f"vindr {iid}: finding {cats} with BI-RADS {r[col['finding_birads']]!r} not in the "
                          f"pathology mapping ({findings.name} row {rowno}); image not listed")
            bad.add(iid)
            continue
        abn = next((n for key, n in CATEGORIES if any(key in c.lower() for c in cats)), "other")
        coords = [r[col[c]] for c in ("xmin", "ymin", "xmax", "ymax")]
        box = None
        if all(coords):
            try:
                x1, y1, x2, y2 = (float(v) for v in coords)
                shape = (int(float(meta["height"])), int(float(meta["width"])))
            except ValueError:
                raise AnnotationError(findings, f"non-numeric box or size {coords}", rowno) from None
            box = clip_box((x1, y1, x2, y2), shape) if x2 > x1 and y2 > y1 else None
        if box is None:
            report.append(f"vindr {iid}: finding {cats} without a usable box {coords} ({findings.name} row {rowno}); "
                          "kept as image-level label")
        lesions[iid].append(Lesion(iid, meta["study_id"], box, abn, sev, "vindr", ", ".join(cats)))

    records = []
    for iid, m in images.items():
        if iid in bad:
            continue
        p = safe_path(root, f"images/{m['study_id']}/{iid}.dicom", findings)
        side = m["laterality"].upper() or None
        records.append(ImageRecord(iid, m["study_id"], p, tuple(lesions.get(iid, ())), side,
                                   m["view_position"].upper() or None, "vindr"))
    records = keep_existing(records, report, "vindr")
    return AnnotationSet(tuple(records), tuple(report), "vindr",
                         {r.image_id: images[r.image_id]["split"] for r in records})
