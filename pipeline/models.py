"""The models the pipeline runs, as one bundle folder:

    pipeline.json        {"detector": "detector.pt", "classifier": "classifier", "threshold": 0.31,
                          "config_overrides": ["detector.imgsz=640", ...], "description": "..."}
    detector.pt          ultralytics weights
    classifier/          model.keras + calibration.json

`config_overrides` are the settings the models were trained with (input size, preprocessing); they sit under
the user's own command-line overrides. `threshold` is the image-level operating point chosen on validation.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from mammo.atomic import atomic_write_text
from mammo.config import Config
from mammo.errors import WeightsError

BUNDLE_FILE = "pipeline.json"


@dataclass
class Bundle:
    root: Path
    detector: Path
    classifier: Path
    threshold: float
    config_overrides: list[str] = field(default_factory=list)
    description: str = ""
    info: dict = field(default_factory=dict)


def read_bundle(root) -> Bundle:
    root = Path(root)
    path = root / BUNDLE_FILE
    if not path.is_file():
        raise WeightsError(path, "not a model bundle (no pipeline.json); make one with `python -m pipeline "
                                 "bundle` or pass --models with a folder that has one")
    try:
        data = json.loads(path.read_text())
        bundle = Bundle(root, root / data["detector"], root / data["classifier"], float(data["threshold"]),
                        list(data.get("config_overrides", [])), data.get("description", ""), data)
    except (KeyError, ValueError, TypeError) as exc:
        raise WeightsError(path, f"malformed bundle file ({type(exc).__name__}: {exc})") from None
    for part in (bundle.detector, bundle.classifier):
        if not part.exists():
            raise WeightsError(part, "named in pipeline.json but missing")
    return bundle


def write_bundle(root, detector_weights, classifier_dir, threshold: float, config_overrides=(),
                 description: str = "", **info) -> Path:
    """Copy the trained models into `root` and describe them (pipeline.json is written last)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(detector_weights, root / "detector.pt.partial")
    (root / "detector.pt.partial").replace(root / "detector.pt")
    target = root / "classifier"
    target.mkdir(exist_ok=True)
    for name in ("model.keras", "calibration.json"):
        if (Path(classifier_dir) / name).is_file():
            shutil.copyfile(Path(classifier_dir) / name, target / f"{name}.partial")
            (target / f"{name}.partial").replace(target / name)
    data = {"detector": "detector.pt", "classifier": "classifier", "threshold": float(threshold),
            "config_overrides": list(config_overrides), "description": description, **info}
    return atomic_write_text(root / BUNDLE_FILE, json.dumps(data, indent=2))


class PipelineModels:
    """Detector + classifier + operating threshold, loaded once; a context manager frees them."""

    def __init__(self, detector, classifier, threshold: float, description: str = ""):
        self.detector, self.classifier = detector, classifier
        self.threshold, self.description = float(threshold), description

    @classmethod
    def load(cls, bundle: Bundle, cfg: Config) -> "PipelineModels":
        from classifier.inference import MalignancyClassifier
        from detector.model import LesionDetector

        detector = LesionDetector.load(bundle.detector, cfg.detector, device=cfg.run.device, threads=cfg.run.threads)
        classifier = MalignancyClassifier.load(bundle.classifier, threads=cfg.run.threads)
        return cls(detector, classifier, bundle.threshold, bundle.description)

    def close(self) -> None:
        self.detector.close()
        self.classifier = None

    def __enter__(self) -> "PipelineModels":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
