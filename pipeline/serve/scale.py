"""The threshold slider's scale: which number a slider position stands for, and the out-of-fold curve it reads.

A slider runs 0..1. The image score is a rank whose decisions all live near 0 (the shipped threshold was 0.02),
so a slider on the score itself leaves a reader nothing to move. Two scales:

- "probability": when every result carries the calibrated P(malignant), the position IS the probability
  threshold, and the bundle's out-of-fold operating curve (sensitivity, specificity per probability threshold)
  can be read at it;
- "score": otherwise, a piecewise-linear map that puts the shipped threshold at the middle: score 0 -> 0,
  threshold -> 0.5, 1 -> 1. It is strictly increasing, so the order of the images and every call are kept.

Both are sent to the page as knots (value, position) that the page interpolates linearly (common.js), so the
map is defined here once; `to_position` / `to_value` are the same interpolation, for tests and the server.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mammo.errors import MammoError
from pipeline.operating_point import check_curve
from pipeline.results import CURVE_FILE

MIDDLE = 0.5  # where the shipped threshold sits on the fallback scale
_EDGE = 1e-6  # a threshold at 0 or 1 would collapse half the fallback scale: kept this far inside
NO_CURVE = "no out-of-fold curve for these models"


def slider_scale(results, shipped_threshold: float, shipped_probability: float | None = None) -> dict:
    """The scale for these results: {"kind", "values", "positions", "shipped_value", "shipped_position"}.
    `shipped_threshold` is on the score; `shipped_probability` the same threshold on the probability (None
    without a calibration map). The probability scale needs it and a probability in every result."""
    results = list(results)
    if shipped_probability is not None and all(r.probability is not None for r in results):
        scale = {"kind": "probability", "values": [0.0, 1.0], "positions": [0.0, 1.0]}
        shipped = float(shipped_probability)
    else:
        t = min(max(float(shipped_threshold), _EDGE), 1.0 - _EDGE)
        scale = {"kind": "score", "values": [0.0, t, 1.0], "positions": [0.0, MIDDLE, 1.0]}
        shipped = float(shipped_threshold)
    return {**scale, "shipped_value": shipped, "shipped_position": to_position(scale, shipped)}


def to_position(scale: dict, value: float) -> float:
    """The slider position of a value (clipped to the scale's ends)."""
    return float(np.interp(value, scale["values"], scale["positions"]))


def to_value(scale: dict, position: float) -> float:
    """The value a slider position stands for (clipped to the scale's ends)."""
    return float(np.interp(position, scale["positions"], scale["values"]))


def result_value(scale: dict, result) -> float:
    """What the slider's value is compared with for one image: its probability or its score."""
    return float(result.probability if scale["kind"] == "probability" else result.score)


def read_curve(run_dir) -> dict | None:
    """The operating curve `infer` wrote beside a run's results (None without one); MammoError naming the file
    when it cannot be used."""
    path = Path(run_dir) / CURVE_FILE
    if not path.is_file():
        return None
    try:
        return check_curve(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MammoError(f"{path}: not an operating curve ({type(exc).__name__}: {exc})") from None


def app_curve(runs, models=None) -> dict | None:
    """The curve that belongs to the results shown: the one `infer` wrote beside them (one for all run
    folders; folders with different curves have none in common), else the loaded models' own when every
    folder with results was written by these models (fingerprint.json), else None."""
    from pipeline.infer import FINGERPRINT_FILE

    written = {json.dumps(c, sort_keys=True): c for c in (read_curve(run.root) for run in runs) if c}
    if written:
        return next(iter(written.values())) if len(written) == 1 else None
    own = check_curve(getattr(models, "operating_curve", None)) if models is not None else None
    for run in runs if own else ():
        path = run.root / FINGERPRINT_FILE
        made_by = json.loads(path.read_text()).get("models") if path.is_file() else None
        if run.results and made_by != models.fingerprint:
            return None
    return own
