"""The output contract of `pipeline infer`: one function writes an image's JSON, one reads it back.

Other tools (and `pipeline evaluate`) read these files, so the field names and meanings are fixed here:
boxes in ORIGINAL pixels, top-left origin, [x1, y1, x2, y2]; `score` is the image's malignancy probability;
`decision` compares it with `threshold`.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mammo.atomic import atomic_write_text
from mammo.config import AGGREGATES

CSV_COLUMNS = ["image_id", "source", "score", "n_lesions", "status", "error"]


@dataclass
class LesionResult:
    box: list[float]
    detector_score: float
    malignancy: float


@dataclass
class ImageResult:
    image_id: str
    source: str  # the input as given, a salted hash or '' (pipeline.source_paths)
    width: int
    height: int
    score: float
    threshold: float
    decision: str
    lesions: list[LesionResult] = field(default_factory=list)
    heatmap: str = ""  # file name of the heatmap PNG, relative to the JSON's folder
    overlay: str = ""
    aggregate: str = "max"
    calibrated: bool = False
    heatmap_downscale: int = 1
    source_key: str = ""  # salted hash of the resolved input path: how a rerun recognises a done image


def aggregate_scores(malignancies, how: str = "max") -> float:
    """Image malignancy from its lesions: 'max' (the most suspicious lesion) or 'noisy_or'
    (1 - prod(1 - p): several moderately suspicious lesions add up). No lesion -> 0."""
    values = [float(p) for p in malignancies]
    if not values:
        return 0.0
    if how == "max":
        return max(values)
    if how == "noisy_or":
        prod = 1.0
        for p in values:
            prod *= 1.0 - p
        return 1.0 - prod
    raise ValueError(f"pipeline.aggregate must be one of {AGGREGATES}, got {how!r}")


def decide(score: float, threshold: float) -> str:
    return "malignant" if score >= threshold else "not malignant"


def result_path(out_dir, image_id: str) -> Path:
    return Path(out_dir) / f"{image_id}.json"


def write_result(out_dir, result: ImageResult) -> Path:
    result.lesions = sorted(result.lesions, key=lambda l: -l.malignancy)
    data = asdict(result)
    for lesion in data["lesions"]:
        lesion["box"] = [round(float(v), 2) for v in lesion["box"]]
        lesion["detector_score"] = round(float(lesion["detector_score"]), 5)
        lesion["malignancy"] = round(float(lesion["malignancy"]), 5)
    # score and threshold keep full precision: rounding either could flip `decision` at the boundary. NaN is
    # refused (a failed row) rather than written: strict JSON parsers reject it.
    return atomic_write_text(result_path(out_dir, result.image_id), json.dumps(data, indent=2, allow_nan=False))


def read_result(path) -> ImageResult:
    data = json.loads(Path(path).read_text())
    data["lesions"] = [LesionResult(**l) for l in data.get("lesions", [])]
    known = ImageResult.__dataclass_fields__
    return ImageResult(**{k: v for k, v in data.items() if k in known})


def read_results(out_dir) -> list[ImageResult]:
    """Every image result in a predictions folder (files that are not results are ignored)."""
    results = []
    for path in sorted(Path(out_dir).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and {"image_id", "score", "lesions"} <= data.keys():
            results.append(read_result(path))
    return results


def write_predictions_csv(out_dir, rows: list[dict]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in CSV_COLUMNS})
    return atomic_write_text(Path(out_dir) / "predictions.csv", buf.getvalue())
