"""Detector stage: find every candidate lesion on a full mammogram (ultralytics YOLO, 1-channel, offline).

    from detector import LesionDetector
    with LesionDetector.load("runs/detector/train/mias/weights/best.pt", cfg.detector) as det:
        detections = det.predict(read_mammogram(path), cfg.preprocess)   # boxes in ORIGINAL pixels

Commands: `python -m detector --help`. Importing this package loads no framework; torch and ultralytics are
imported when a model is built or loaded.
"""
import mammo.runtime  # noqa: F401  (first: import order and offline switches before any framework)

from detector.model import LesionDetector  # noqa: E402

__all__ = ["LesionDetector"]
