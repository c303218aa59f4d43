"""Predict on image files: one JSON per image with the detections in ORIGINAL pixels.

A file the imaging layer refuses is reported (stderr and errors.json, naming the file) and skipped: one bad
file in a folder of hundreds should not cost the others. Only the source path and the geometry are written,
no patient fields from the file.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from mammo.atomic import atomic_write_text
from mammo.config import PreprocessConfig
from mammo.errors import ImageReadError, MammoError
from mammo.imaging import is_image_file, read_mammogram

from detector.model import LesionDetector


def expand_inputs(items) -> list[Path]:
    """Files as given, and the image files of folders (sorted, not recursive)."""
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            paths.extend(sorted(f for f in p.iterdir() if f.is_file() and is_image_file(f)))
        else:
            paths.append(p)  # a missing or unreadable file is reported by the reader, naming it
    if not paths:
        raise MammoError(f"no image files in {', '.join(map(str, items)) or 'the arguments'}")
    return paths


def predict_files(det: LesionDetector, paths, out_dir, preprocess_cfg: PreprocessConfig = PreprocessConfig()):
    """Write <stem>.json per image into `out_dir`; returns (number written, [errors])."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    errors, written = [], 0
    lines = ["image_id,x1,y1,x2,y2,score"]
    for path in tqdm(paths, desc=f"predict ({det.cfg.mode})", unit="img"):
        try:
            mammogram = read_mammogram(path)
        except ImageReadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            errors.append({"file": exc.path, "error": exc.reason})
            continue
        start = time.perf_counter()
        detections = det.predict(mammogram, preprocess_cfg)
        seconds = time.perf_counter() - start
        stem, k = Path(path).stem, 1
        while stem in used:  # same file name in two folders
            k += 1
            stem = f"{Path(path).stem}_{k}"
        used.add(stem)
        record = {"source": str(path), "original_shape": list(mammogram.shape), "mode": det.cfg.mode,
                  "weights": str(det.weights), "seconds": round(seconds, 4),
                  "detections": [d.to_dict() for d in detections]}
        atomic_write_text(out_dir / f"{stem}.json", json.dumps(record, indent=1))
        lines += [",".join([stem, *(f"{v:.2f}" for v in d.box), f"{d.score:.5f}"]) for d in detections]
        written += 1
    if errors:
        atomic_write_text(out_dir / "errors.json", json.dumps(errors, indent=1))
    # every box in one table too: `python -m classifier train --detections` takes it (hard negatives)
    atomic_write_text(out_dir / "detections.csv", "\n".join(lines) + "\n")
    return written, errors
