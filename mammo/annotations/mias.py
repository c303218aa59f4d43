"""mini-MIAS `Info.txt`: one row per finding, `ref tissue class [severity x y radius]`.

- The coordinate origin is the BOTTOM-LEFT corner (Info.txt note 3) and every image is 1024 x 1024, so a
  circle (x, y, r) is the top-left-origin box (x - r, 1024 - y - r, x + r, 1024 - y + r), clipped to the image.
- Abnormal rows without coordinates ('*NOTE 3*': calcifications spread over the breast; one CIRC in the full
  set) are kept as image-level lesions with box None and noted in the report.
- Films come in pairs of one woman (note 1): mdb001 + mdb002 -> patient 'mias_p001'; even numbers are left
  breasts, odd numbers right. All films are mediolateral oblique views.
"""
from __future__ import annotations

import re
from pathlib import Path

from mammo.errors import AnnotationError
from mammo.records import ImageRecord, Lesion

from ._common import AnnotationSet, clip_box, keep_existing, safe_path

SIZE = 1024
CLASSES = {"CALC": "calcification", "CIRC": "mass", "SPIC": "mass", "MISC": "mass",
           "ARCH": "distortion", "ASYM": "asymmetry"}
SEVERITY = {"B": "benign", "M": "malignant"}
ROW = re.compile(r"mdb(\d{3})$")


def mias_box(x: float, y: float, r: float) -> tuple[float, float, float, float] | None:
    """Circle (bottom-left origin) -> clipped box (top-left origin)."""
    row = SIZE - y
    return clip_box((x - r, row - r, x + r, row + r), (SIZE, SIZE))


def read_mias(path, images_root=None) -> AnnotationSet:
    info = Path(path)
    if info.is_dir():
        info = info / "Info.txt"
    if not info.is_file():
        raise AnnotationError(info, "MIAS Info.txt not found")
    root = Path(images_root) if images_root else info.parent
    report: list[str] = []
    findings: dict[str, list[Lesion]] = {}  # ref -> lesions, in file order; [] = normal
    bad: set[str] = set()
    for lineno, line in enumerate(info.read_text(encoding="latin-1").splitlines(), start=1):
        tok = line.split()
        m = ROW.match(tok[0]) if tok else None
        if not m:
            continue  # header / notes text: data rows are the only lines starting with 'mdbNNN'
        ref, n = tok[0], int(m.group(1))
        if len(tok) < 3:
            raise AnnotationError(info, f"row {line.strip()!r} has fewer than 3 fields", lineno)
        cls = tok[2].upper()
        lesions = findings.setdefault(ref, [])
        if cls == "NORM":
            if lesions:
                report.append(f"mias {ref}: NORM row after abnormal rows (line {lineno}); findings kept")
            continue
        sev = SEVERITY.get(tok[3].upper()) if len(tok) > 3 else None
        if sev is None:
            # no pathology means no usable truth for this image: drop it, never call it a negative
            report.append(f"mias {ref}: {cls} row without a B/M severity (line {lineno}); image not listed")
            bad.add(ref)
            continue
        abn = CLASSES.get(cls)
        if abn is None:
            report.append(f"mias {ref}: unknown class {cls!r} (line {lineno}) -> 'other'")
            abn = "other"
        try:
            x, y, r = (float(v) for v in tok[4:7])  # ValueError when absent or '*NOTE 3*'
            box = mias_box(x, y, r)
        except ValueError:
            box = None
        if box is None:
            report.append(f"mias {ref}: {cls} {sev} without usable coordinates ({' '.join(tok[4:]) or 'none'}, "
                          f"line {lineno}); kept as image-level label")
        pid = f"mias_p{(n + 1) // 2:03d}"
        lesions.append(Lesion(ref, pid, box, abn, sev, "mias", cls))

    records = []
    for ref, lesions in findings.items():
        if ref in bad:
            continue
        n = int(ref[3:])
        records.append(ImageRecord(ref, f"mias_p{(n + 1) // 2:03d}", safe_path(root, f"{ref}.pgm", info),
                                   tuple(lesions), "L" if n % 2 == 0 else "R", "MLO", "mias"))
    records = keep_existing(records, report, "mias")
    return AnnotationSet(tuple(records), tuple(report), "mias")
