"""The output contract of `pipeline infer`: one function writes an image's JSON, one reads it back.

Other tools (and `pipeline evaluate`) read these files, so the field names and meanings are fixed here:
boxes in ORIGINAL pixels, top-left origin, [x1, y1, x2, y2]; `score` is the image score of the rule
`aggregate` (a rank: higher is more suspicious, not a probability); `decision` is `score >= threshold`;
`probability` is the score through the bundle's calibration map, P(malignant) of the image, and
`probability_threshold` the same threshold on that scale (both None for models shipped without a map);
`domain` is what the image was treated as, film or digital, `domain_source` who said so ('dicom-header' or
'setting') and `domain_reason` the tag and value, or the setting, that did (mammo.domain).
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mammo.atomic import atomic_write_text
from mammo.config import AGGREGATES

CSV_COLUMNS = ["image_id", "source", "probability", "score", "n_lesions", "domain", "status", "error"]
# Beside the results when the models ship an out-of-fold operating curve (sensitivity and specificity per
# probability threshold, pipeline.operating_point.operating_curve): what the review app's slider reads.
CURVE_FILE = "operating_curve.json"


@dataclass
class LesionResult:
    box: list[float]
    detector_score: float
    malignancy: float  # the crop classifier's P(malignant | this is a lesion)
    # What a reader is shown, and why: `finding` passed the findings rule (detector.findings_conf); `scores_image`
    # marks the box(es) the image score is computed from. Both true for every box of models without that rule.
    finding: bool = True
    scores_image: bool = True
    p_lesion: float | None = None  # calibrated P(this box hits a true lesion), with the models' findings maps
    p_malignant: float | None = None  # calibrated P(this box hits a malignant lesion)
    label: str = ""  # the detector's class of the box ('lesion', or a kind: 'mass', 'calcification', ...)


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
    calibrated: bool = False  # of the crop classifier: each box's malignancy (the image's is `probability`)
    heatmap_downscale: int = 1
    source_key: str = ""  # salted hash of the resolved input path: how a rerun recognises a done image
    # The strongest candidate the detector saw below detector.conf, classified, when NO box was kept: not a
    # finding (not drawn, no heatmap), only what scores such an image (see aggregate_scores). None otherwise.
    below_conf: LesionResult | None = None
    probability: float | None = None  # calibrated P(malignant) of the image; None without a calibration map
    probability_threshold: float | None = None
    threshold_source: str = ""  # how the threshold was chosen (the bundle's operating point, or given)
    domain: str = ""  # 'film' | 'digital' (mammo.domain.DomainDecision); '' in results written before domains
    domain_source: str = ""  # 'dicom-header' | 'setting'
    domain_reason: str = ""  # the tag and value, or the setting, that decided it
    dicom: list[str] = field(default_factory=list)  # DICOM results written (SR first), relative to the JSON's folder
    # digital: the global branch saw the image inverted, its frame being bright (global_branch.polarity); None
    # when no branch ran (film)
    inverted_for_analysis: bool | None = None


# The image-score rules `pipeline.aggregate` may name are mammo.config.AGGREGATES (the config's Literal reads
# them there). d = a box's detector_score (P(lesion)), m = its malignancy (P(malignant | lesion)); the chain is
# P(malignant lesion) = d * m.
# How an image with no kept box is scored; in every output folder's fingerprint, so a folder scored the old way
# (0 for every such image) is never resumed and mixed with this one.
NO_BOX_SCORE = "strongest candidate below detector.conf, d * m"
STACKER_FEATURES = ("top_detector", "top_malignancy", "top_product", "n_boxes")


def image_features(lesions, below_conf=None) -> list[float]:
    """The stacker's inputs, in STACKER_FEATURES order. No kept box: the below-conf candidate's d, m and d * m
    with n_boxes 0 (all zero when the detector saw nothing at all)."""
    if not lesions:
        if below_conf is None:
            return [0.0, 0.0, 0.0, 0.0]
        d, m = float(below_conf.detector_score), float(below_conf.malignancy)
        return [d, m, d * m, 0.0]
    d = [float(l.detector_score) for l in lesions]
    m = [float(l.malignancy) for l in lesions]
    return [max(d), max(m), max(a * b for a, b in zip(d, m)), float(len(lesions))]


def stacker_score(features, stacker: dict) -> float:
    """A logistic regression over standardised features, stored as plain JSON numbers (never a pickle):
    {"features": [...], "mean": [...], "scale": [...], "coef": [...], "intercept": b}."""
    if list(stacker.get("features", ())) != list(STACKER_FEATURES):
        raise ValueError(f"stacker features {stacker.get('features')} differ from {list(STACKER_FEATURES)}")
    z = float(stacker["intercept"]) + sum(float(c) * (float(x) - float(mu)) / float(sd) for x, mu, sd, c in
                                          zip(features, stacker["mean"], stacker["scale"], stacker["coef"]))
    return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))


def aggregate_scores(lesions, how: str = "max", stacker: dict | None = None, below_conf=None) -> float:
    """Image malignancy from its kept boxes (objects with `detector_score` and `malignancy`):

    - 'max': the most suspicious box's malignancy (ignores how sure the detector was);
    - 'max_product': max of d * m, the most probable malignant lesion;
    - 'noisy_or': 1 - prod(1 - m), several moderately suspicious boxes add up;
    - 'noisy_or_product': 1 - prod(1 - d * m), the same with each box weighed by P(lesion);
    - 'stacker': a logistic regression over `image_features`, fitted on out-of-fold predictions
      (pipeline.operating_point); its coefficients come with the models.

    No kept box: the image is scored by `below_conf`, the strongest candidate the detector saw under
    detector.conf (classified like a kept box): d * m, the chain's P(malignant lesion) of that candidate, for
    the four fixed rules, and the stacker over its features (n_boxes 0). So images without a finding are ranked
    by the detector's weaker evidence and its malignancy, a low score (d < conf) instead of a tie at 0. Only
    when the detector saw nothing at all (no candidate down to its floor) is the score 0, or for the stacker
    the malignancy rate it learned for such images."""
    if how not in AGGREGATES:
        raise ValueError(f"pipeline.aggregate must be one of {AGGREGATES}, got {how!r}")
    if how == "stacker":
        if not stacker:
            raise ValueError("pipeline.aggregate=stacker needs the stacker's coefficients (the bundle's "
                             "pipeline.json 'stacker', written by `pipeline bundle --operating-point`)")
        return stacker_score(image_features(lesions, below_conf), stacker)
    if not lesions:
        return 0.0 if below_conf is None else float(below_conf.detector_score) * float(below_conf.malignancy)
    values = [float(l.malignancy) for l in lesions]
    if how.endswith("_product"):
        values = [float(l.detector_score) * v for l, v in zip(lesions, values)]
    if how.startswith("max"):
        return max(values)
    prod = 1.0
    for p in values:
        prod *= 1.0 - p
    return 1.0 - prod


def check_aggregate(how: str, stacker: dict | None) -> None:
    """Before a batch: an unknown rule, or the stacker without coefficients, is one clear error, not a failure
    on every image."""
    from mammo.errors import ConfigError

    try:
        aggregate_scores([], how, stacker)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"pipeline.aggregate={how}: {exc}") from None


def decide(score: float, threshold: float) -> str:
    return "malignant" if score >= threshold else "not malignant"


def result_path(out_dir, image_id: str) -> Path:
    return Path(out_dir) / f"{image_id}.json"


def write_result(out_dir, result: ImageResult) -> Path:
    data = result_dict(result)
    # NaN is refused (a failed row) rather than written: strict JSON parsers reject it.
    return atomic_write_text(result_path(out_dir, result.image_id), json.dumps(data, indent=2, allow_nan=False))


def result_dict(result: ImageResult) -> dict:
    """The JSON's content: lesions most malignant first (also in `result`), boxes and box numbers rounded; what
    every other writer of the image's results (the DICOM SR) takes, so they all say the same."""
    result.lesions = sorted(result.lesions, key=lambda l: -l.malignancy)
    data = asdict(result)
    for lesion in data["lesions"] + ([data["below_conf"]] if data["below_conf"] else []):
        lesion["box"] = [round(float(v), 2) for v in lesion["box"]]
        for key in ("detector_score", "malignancy", "p_lesion", "p_malignant"):
            if lesion[key] is not None:
                lesion[key] = round(float(lesion[key]), 5)
    # score, threshold and probabilities keep full precision: rounding could flip a call at the boundary
    return data


def read_result(path) -> ImageResult:
    data = json.loads(Path(path).read_text())
    data["lesions"] = [LesionResult(**l) for l in data.get("lesions", [])]
    if data.get("below_conf") is not None:
        data["below_conf"] = LesionResult(**data["below_conf"])
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
