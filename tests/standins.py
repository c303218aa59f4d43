"""Stand-in models whose outputs are known exactly, for tests of geometry (crop, flip, letterbox, tiles, crops,
Grad-CAM paste-back). A trained model's boxes and maps depend on how well a short training run converged, which
differs between machines; these do not, so a test that fails with them has found a mapping bug.

- `BlobYOLO` quacks like ultralytics' YOLO for `detector.model.LesionDetector`: its "detections" are the
  bright connected blobs of the very input it is given, in that input's pixels.
- `bright_spot_classifier` is a Keras model whose malignant logit is the mean of a bright-pixel map computed by
  its last convolution, so its Grad-CAM is that map: it peaks on the bright disc of a crop.
"""
from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np


class BlobYOLO:
    """Boxes around connected pixels >= `level` (uint8 input), score growing with the blob's area."""

    task = "detect"

    def __init__(self, level: int = 200, min_area: int = 4):
        self.level, self.min_area = level, min_area
        self.names = {0: "lesion"}
        self.calls = []  # the input shapes it was fed, for tests that check batching

    def predict(self, images, imgsz=None, conf=0.25, iou=0.7, max_det=300, **_):
        import torch

        results = []
        for image in images:
            a = image[..., 0] if image.ndim == 3 else image
            self.calls.append(a.shape)
            n, _, stats, _ = cv2.connectedComponentsWithStats((a >= self.level).astype(np.uint8), connectivity=8)
            rows = [(x, y, x + w, y + h, area / (area + 50.0)) for x, y, w, h, area in stats[1:n]
                    if area >= self.min_area]
            rows = sorted((r for r in rows if r[4] >= conf), key=lambda r: -r[4])[:max_det]
            b = np.array(rows, dtype=np.float32).reshape(-1, 5)
            results.append(SimpleNamespace(orig_shape=a.shape, boxes=SimpleNamespace(
                xyxy=torch.from_numpy(b[:, :4].copy()), conf=torch.from_numpy(b[:, 4].copy()),
                cls=torch.zeros(len(b)))))
        return results


def blob_detector(cfg=None):
    """A `LesionDetector` around `BlobYOLO`, with the given (or default) detector settings."""
    from detector.model import LesionDetector
    from mammo.config import DetectorConfig

    return LesionDetector(BlobYOLO(), cfg or DetectorConfig(conf=0.01))


def bright_spot_classifier(input_size: int = 64, level: float = 0.8):
    """(MalignancyClassifier) logit = 20 * mean(relu(x - level)) - 1 via a named last convolution: Grad-CAM of
    the malignant logit is relu(x - level) itself, brightest on a bright disc, zero on dull tissue."""
    import keras

    from classifier.calibration import Calibrator
    from classifier.inference import MalignancyClassifier

    x = keras.Input((input_size, input_size, 1))
    spots = keras.layers.Conv2D(1, 1, activation="relu", name="spots")(x)
    pooled = keras.layers.GlobalAveragePooling2D()(spots)
    logit = keras.layers.Dense(1, name="logit")(pooled)
    prob = keras.layers.Activation("sigmoid", name="malignancy")(logit)
    model = keras.Model(x, prob)
    model.get_layer("spots").set_weights([np.ones((1, 1, 1, 1), np.float32), np.array([-level], np.float32)])
    model.get_layer("logit").set_weights([np.full((1, 1), 20.0, np.float32), np.array([-1.0], np.float32)])
    return MalignancyClassifier(model, Calibrator.from_dict({}), context_margin=0.25)


def standin_pipeline_models(threshold: float = 0.5, fingerprint: str = "stand-in"):
    """`PipelineModels` of both stand-ins (blob detector at imgsz 256, conf 0.01; 64 px bright-spot classifier)."""
    from mammo.config import DetectorConfig
    from pipeline.models import PipelineModels

    return PipelineModels(blob_detector(DetectorConfig(imgsz=256, conf=0.01)), bright_spot_classifier(64), threshold,
                          fingerprint=fingerprint)
