"""Turn the command line's INPUTs (files, folders, CSV lists) into a stream of image paths.

Folders are searched recursively; an image is recognized by its extension or, for DICOM files that often have
none, by the 'DICM' preamble. Other files are skipped and counted. A CSV list names one image per row (column
`image`, `path` or the first column), relative to the CSV's folder.
"""
from __future__ import annotations

import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mammo.dicom import is_dicom
from mammo.errors import MammoError
from mammo.imaging import IMAGE_SUFFIXES


@dataclass
class Discovery:
    images: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # files that are not images (counted, not failed)
    missing: list[Path] = field(default_factory=list)  # inputs named on the command line that do not exist
    reasons: dict = field(default_factory=dict)  # why a `missing` input failed, when not 'input not found'


def _from_csv(path: Path) -> list[Path]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows:
        return []
    header = [h.strip().lower() for h in rows[0]]
    col = next((header.index(c) for c in ("image", "path", "file") if c in header), None)
    body = rows[1:] if col is not None else rows
    col = col or 0
    return [(path.parent / r[col].strip()) for r in body if len(r) > col and r[col].strip()]


def discover(inputs, exclude=()) -> Discovery:
    """Expand INPUTs in order (folders sorted), without duplicates, never reading pixel data. Folders in
    `exclude` (a run's own output folder inside an input folder) are not searched."""
    out, seen = Discovery(), set()
    excluded = [Path(e).resolve() for e in exclude]

    def is_excluded(p: Path) -> bool:
        r = p.resolve()
        return any(r == e or e in r.parents for e in excluded)

    def add(p: Path):
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.images.append(p)

    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            for child in sorted(q for q in p.rglob("*") if q.is_file()):
                if child.name.startswith(".") or is_excluded(child):
                    continue
                (add(child) if (child.suffix.lower() in IMAGE_SUFFIXES or is_dicom(child))
                 else out.skipped.append(child))
        elif p.suffix.lower() == ".csv" and p.is_file():
            for q in _from_csv(p):
                add(q)  # a listed path that does not exist becomes a failed row with the reason
        elif p.exists():
            add(p)  # named explicitly: try it, a bad one fails with its reason
        else:
            out.missing.append(p)
    return out


def require_images(inputs) -> Discovery:
    """`discover`, checked before any model is loaded: a mistyped path should cost a second, not a model load.
    No image at all is a usage error (MammoError, exit 2); some missing ones are reported and the rest run."""
    found = discover(inputs)
    names = ", ".join(str(p) for p in found.missing[:5]) + (" ..." if len(found.missing) > 5 else "")
    if not any(p.exists() for p in found.images):  # (a CSV may list files that do not exist)
        listed = [str(p) for p in found.images[:5]]
        why = f"not found: {names or ', '.join(listed)}" if found.missing or listed else "no image files in them"
        raise MammoError(f"no input image to process ({why}); give image files, folders or CSV lists")
    if found.missing:
        print(f"warning: {len(found.missing)} input(s) not found, recorded as failed: {names}", file=sys.stderr)
    return found
