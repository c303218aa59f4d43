"""What every annotation reader shares: the result type, safe path resolution, small parsing helpers."""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from mammo.errors import AnnotationError
from mammo.records import ImageRecord, Lesion

ABNORMALITIES = ("mass", "calcification", "distortion", "asymmetry", "other")


@dataclass(frozen=True)
class AnnotationSet:
    """The images of one annotated dataset, plus a note for everything that is not a plain boxed lesion.

    `report` lists, one line each, rows kept as image-level labels (box None), unknown values, missing files,
    swapped columns... so that nothing is dropped or changed silently. `official_split` maps image_id to the
    dataset's own split name where it has one (VinDr 'training'/'test', CBIS-DDSM 'train'/'test').
    """

    images: tuple[ImageRecord, ...]
    report: tuple[str, ...] = ()
    source: str = ""
    official_split: dict = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        return len(self.images)

    @property
    def n_negative(self) -> int:
        return sum(1 for im in self.images if not im.lesions)

    @property
    def n_benign_only(self) -> int:
        return sum(1 for im in self.images if im.lesions and not im.label)

    @property
    def n_malignant(self) -> int:
        return sum(im.label for im in self.images)

    @property
    def lesions(self) -> Iterator[Lesion]:
        return (l for im in self.images for l in im.lesions)

    @property
    def n_unboxed(self) -> int:
        """Lesions kept as image-level labels (no coordinates)."""
        return sum(1 for l in self.lesions if l.box is None)

    def summary(self) -> str:
        return (f"{self.source}: {self.n_images} images ({self.n_negative} negative, {self.n_benign_only} "
                f"benign only, {self.n_malignant} malignant), {sum(1 for _ in self.lesions)} lesions "
                f"({self.n_unboxed} without box), {len(self.report)} notes")


def safe_path(root, rel, ann_file, row: int | None = None) -> Path:
    """Resolve `rel` (a path written in an annotation file) against the dataset `root`, refusing escapes.

    Annotation files come from outside: a path that is absolute elsewhere, climbs out with '..', or goes
    through a symlink that points outside the root could make us read (or later write next to) any file.
    """
    root_real = Path(os.path.realpath(root))
    rel = str(rel).strip()
    if not rel:
        raise AnnotationError(ann_file, "empty path", row)
    p = Path(rel)
    cand = p if p.is_absolute() else Path(root) / p
    real = Path(os.path.realpath(cand))  # follows symlinks, also for files that do not exist yet
    if not real.is_relative_to(root_real):
        raise AnnotationError(ann_file, f"path {rel!r} leads outside the dataset root {root}", row)
    return cand


def keep_existing(records: list[ImageRecord], report: list[str], source: str) -> list[ImageRecord]:
    """Keep the records whose image file exists, reporting the others.

    When none exists at all, the annotations are being read without the images (counting, converting): keep
    them all and say so once instead of listing every file.
    """
    present = [r for r in records if r.path.is_file()]
    if not present and records:
        report.append(f"{source}: none of the {len(records)} image files exists (annotations only); kept all")
        return records
    for r in records:
        if not r.path.is_file():
            report.append(f"{source}: image {r.image_id} listed but file missing: {r.path}; not listed")
    return present


def read_csv_rows(path) -> tuple[list[str], list[tuple[int, dict]]]:
    """(header, [(row number, row dict)]) of a CSV file; row numbers count records (a quoted
    value may span lines), the header being row 1.

    The delimiter is sniffed among ',' ';' and tab because spreadsheet exports (INbreast.csv) often use ';'.
    Header names and values are stripped: real files carry stray spaces and newlines.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise AnnotationError(path, f"cannot read: {e}") from None
    first = text.split("\n", 1)[0]
    delim = max(",;\t", key=first.count)
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delim))
    if not rows:
        raise AnnotationError(path, "empty file")
    header = [h.strip() for h in rows[0]]
    out = []
    for i, values in enumerate(rows[1:], start=2):
        if not any(v.strip() for v in values):
            continue  # blank line (trailing rows of spreadsheet exports)
        out.append((i, {h: (values[k].strip() if k < len(values) else "") for k, h in enumerate(header)}))
    return header, out


def require_columns(header, needed, path, aliases: dict | None = None) -> dict:
    """Map each needed column to the header's spelling (case- and '_'/' '-insensitive); error naming the missing."""
    key = lambda s: s.lower().replace("_", " ").strip()  # noqa: E731
    norm = {key(h): h for h in header}
    found = {}
    for col in needed:
        hits = [norm[key(n)] for n in (col, *(aliases or {}).get(col, ())) if key(n) in norm]
        if hits:
            found[col] = hits[0]
    missing = [c for c in needed if c not in found]
    if missing:
        raise AnnotationError(path, f"missing column(s) {missing}; found {list(header)}")
    return found


def clip_box(box, shape) -> tuple[float, float, float, float] | None:
    """Clip [x1, y1, x2, y2] to an image of shape (height, width); None if nothing is left."""
    x1, y1, x2, y2 = box
    if shape is not None:
        h, w = shape
        x1, x2 = min(max(x1, 0.0), w), min(max(x2, 0.0), w)
        y1, y2 = min(max(y1, 0.0), h), min(max(y2, 0.0), h)
    else:
        x1, y1 = max(x1, 0.0), max(y1, 0.0)
    return (float(x1), float(y1), float(x2), float(y2)) if x2 > x1 and y2 > y1 else None


def dicom_shape(path) -> tuple[int, int] | None:
    """(rows, cols) from a DICOM header without decoding pixels; None if unreadable."""
    try:
        import pydicom
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        return int(ds.Rows), int(ds.Columns)
    except Exception:  # a missing or broken file only means the size is unknown here
        return None
