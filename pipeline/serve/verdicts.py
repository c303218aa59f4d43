"""Reader verdicts in SQLite, one database per run folder (`<run>/.serve/verdicts.sqlite`).

Every save is appended as a new row (never updated in place), in one transaction, in WAL mode with
synchronous=FULL: a commit that returned is on disk, a server killed mid-write loses only the uncommitted save,
and two browser tabs saving at once both land (each save names only the fields its reader changed; the current
verdict is the latest row per image, box and reader). The export reads the current verdicts.

The CSV export is opened in spreadsheets: a text cell starting with = + - @, a tab or a carriage return would be
read as a formula there (a reader named `=HYPERLINK(...)` becomes a link that sends other cells away), so such
cells get a leading single quote (OWASP, "CSV injection"). Only text is neutralised (reader, comment, verdicts,
image id: an id can start with '-'); the numbers we write ourselves (box, coordinates, scores) are left as
numbers, a negative coordinate too. The database and the JSON API keep the text as it was typed.
"""
from __future__ import annotations

import csv
import io
import sqlite3
import time
from pathlib import Path

from mammo.errors import MammoError
from mammo.froc import hit_matrix

DB_NAME = "verdicts.sqlite"
LESION = ("true lesion", "false positive", "unsure")
PATHOLOGY = ("benign", "malignant")
AGREEMENT = ("agree", "disagree")
MAX_COMMENT = 4000
MAX_READER = 80
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what spreadsheets read as the start of a formula (OWASP)
IMAGE_BOX = -1  # box index of an image-level verdict

SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id TEXT NOT NULL,
    box INTEGER NOT NULL,            -- index into the result's lesions, -1 for the image
    x1 REAL, y1 REAL, x2 REAL, y2 REAL,
    reader TEXT NOT NULL,
    field TEXT NOT NULL,             -- lesion | pathology | agreement | comment
    value TEXT NOT NULL,
    saved REAL NOT NULL              -- unix time
);
CREATE INDEX IF NOT EXISTS verdicts_key ON verdicts (image_id, box, reader, field, seq);
"""
FIELDS = {"lesion": LESION, "pathology": PATHOLOGY + ("",), "agreement": AGREEMENT + ("",), "comment": None}
EXPORT_COLUMNS = ["image_id", "box", "x1", "y1", "x2", "y2", "malignancy", "detector_score", "reader", "lesion",
                  "pathology", "agreement", "comment", "saved"]


class VerdictError(ValueError):
    """A save the store refuses (unknown field or value, missing reader); the message says which."""


class VerdictStore:
    def __init__(self, folder):
        self.path = Path(folder) / DB_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        # one connection per call: FastAPI runs handlers on a thread pool; SQLite serializes the writers
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=30000")
        return db

    def save(self, image_id: str, reader: str, boxes: dict, image: dict, lesions) -> int:
        """Append one save: `boxes` {box index: {field: value}}, `image` {field: value}; `lesions` are the result's
        (for the box coordinates kept beside each verdict). Returns the number of rows written."""
        reader = (reader or "").strip()
        if not reader or len(reader) > MAX_READER:
            raise VerdictError(f"reader name required (1-{MAX_READER} characters)")
        rows, now = [], time.time()
        for box, fields in boxes.items():
            box = int(box)
            if not 0 <= box < len(lesions):
                raise VerdictError(f"image {image_id} has no box {box}")
            coords = [float(v) for v in lesions[box].box]
            rows += [(image_id, box, *coords, reader, *self._check(f, v, ("lesion", "pathology")), now)
                     for f, v in fields.items()]
        rows += [(image_id, IMAGE_BOX, None, None, None, None, reader, *self._check(f, v, ("agreement", "comment")),
                  now) for f, v in image.items()]
        if not rows:
            raise VerdictError("nothing to save")
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO verdicts (image_id, box, x1, y1, x2, y2, reader, field, value, saved) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            db.execute("COMMIT")
        return len(rows)

    @staticmethod
    def _check(field: str, value, allowed_fields) -> tuple[str, str]:
        if field not in allowed_fields:
            raise VerdictError(f"unknown verdict field {field!r} (expected one of {list(allowed_fields)})")
        value = "" if value is None else str(value)
        choices = FIELDS[field]
        if choices is not None and value not in choices:
            raise VerdictError(f"{field} must be one of {[c for c in choices if c]}, got {value!r}")
        if len(value) > MAX_COMMENT:
            raise VerdictError(f"{field} longer than {MAX_COMMENT} characters")
        return field, value

    def current(self, image_id: str | None = None) -> list[dict]:
        """The latest value of every field, one dict per (image, box, reader), sorted."""
        where, args = ("WHERE image_id = ?", (image_id,)) if image_id else ("", ())
        with self._connect() as db:
            rows = db.execute(
                "SELECT image_id, box, x1, y1, x2, y2, reader, field, value, saved FROM verdicts v "
                f"{where} {'AND' if where else 'WHERE'} seq = (SELECT MAX(seq) FROM verdicts w WHERE "
                "w.image_id = v.image_id AND w.box = v.box AND w.reader = v.reader AND w.field = v.field)",
                args).fetchall()
        merged = {}
        for image, box, x1, y1, x2, y2, reader, field, value, saved in rows:
            entry = merged.setdefault((image, box, reader), {
                "image_id": image, "box": box, "box_xyxy": None if box < 0 else [x1, y1, x2, y2], "reader": reader,
                "lesion": "", "pathology": "", "agreement": "", "comment": "", "saved": 0.0})
            entry[field] = value
            entry["saved"] = max(entry["saved"], saved)
        return [merged[k] for k in sorted(merged)]

    def reviewed_images(self) -> set[str]:
        with self._connect() as db:
            return {r[0] for r in db.execute("SELECT DISTINCT image_id FROM verdicts")}

    def export_csv(self, results: dict) -> str:
        """The current verdicts, one row per (image, box, reader); image ids only, no paths or names of files."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=EXPORT_COLUMNS)  # rows end in CRLF, as Excel writes them
        writer.writeheader()
        for v in self.current():
            lesion = None
            result = results.get(v["image_id"])
            if v["box"] >= 0 and result is not None and v["box"] < len(result.lesions):
                lesion = result.lesions[v["box"]]
            writer.writerow({k: spreadsheet_safe(v) for k, v in {
                "image_id": v["image_id"], "box": "" if v["box"] < 0 else v["box"] + 1,
                **dict(zip(("x1", "y1", "x2", "y2"), v["box_xyxy"] or ["", "", "", ""])),
                "malignancy": "" if lesion is None else lesion.malignancy,
                "detector_score": "" if lesion is None else lesion.detector_score,
                "reader": v["reader"], "lesion": v["lesion"], "pathology": v["pathology"],
                "agreement": v["agreement"], "comment": v["comment"],
                "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(v["saved"]))}.items()})
        return buf.getvalue()


def spreadsheet_safe(value):
    """A text cell a spreadsheet would run as a formula, with a leading ' (shown as text); other values as given."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def review_labels(run_dirs, iou: float = 0.5):
    """A function (image_id, box) -> review label for export-rois' `review_label` column, from the verdicts
    recorded in the given run folders: every box verdict on that image whose box overlaps it (IoU >= `iou`; the
    same detector finds the same boxes), as 'lesion/pathology' (e.g. 'true lesion/malignant'), joined with '; '
    and named by reader when there are several."""
    from pipeline.serve.files import STATE_DIR

    by_image = {}
    for run_dir in run_dirs:
        db = Path(run_dir) / STATE_DIR / DB_NAME
        if not db.is_file():
            raise MammoError(f"{run_dir}: no verdicts recorded here (no {STATE_DIR}/{DB_NAME})")
        for v in VerdictStore(db.parent).current():
            if v["box"] >= 0 and (v["lesion"] or v["pathology"]):
                by_image.setdefault(v["image_id"], []).append(v)

    def label(image_id: str, box) -> str:
        verdicts = by_image.get(image_id, [])
        if not verdicts:
            return ""
        hits = hit_matrix([box], [v["box_xyxy"] for v in verdicts], iou, centre=False)[0]
        matched = [v for v, hit in zip(verdicts, hits) if hit]
        return "; ".join(f"{v['lesion'] or 'unsure'}/{v['pathology'] or '?'}" + (f" ({v['reader']})" if len(
            matched) > 1 else "") for v in matched)

    return label
