"""The trained classifier as one object for the pipeline: crops exactly as training did, calibrated
probabilities, Grad-CAM maps at crop resolution.

    clf = MalignancyClassifier.load("runs/classifier/train/mias")   # a run folder or a .keras file
    crops, transforms = clf.crop_many(mammogram.pixels, boxes)      # transforms: original -> crop
    p = clf.predict(crops)                                          # calibrated P(malignant), [N]
    maps = clf.gradcam(crops)                                       # [N, S, S] in [0, 1]
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import mammo.runtime as runtime
from mammo.crops import crop_roi
from mammo.errors import WeightsError
from mammo.geometry import Transform

from classifier.calibration import Calibrator
from classifier.data import prepare


class MalignancyClassifier:
    def __init__(self, model, calibrator: Calibrator, *, context_margin: float, threshold: float = 0.5,
                 clahe: tuple[float, int] | None = None, source: str = ""):
        self.model = model
        self.calibrator = calibrator
        self.input_size = int(model.inputs[0].shape[1])
        self.context_margin = float(context_margin)
        self.threshold = float(threshold)  # F-beta operating point chosen on validation
        self.clahe = tuple(clahe) if clahe else None  # (clip limit, tile grid) of training, or None
        self.source = source
        self._cams: dict = {}
        self._forward = None

    @classmethod
    def load(cls, path, threads: int | None = None) -> "MalignancyClassifier":
        """From a training run folder (model.keras + calibration.json) or a .keras file (with a
        calibration.json beside it, else uncalibrated with the default context margin)."""
        path = Path(path)
        model_path = path / "model.keras" if path.is_dir() else path
        if not model_path.is_file():
            raise WeightsError(model_path, "no trained classifier here (train one with `python -m classifier "
                                           "train`, or pass a run folder that has model.keras)")
        import keras

        runtime.configure_tensorflow(threads)
        model = keras.models.load_model(model_path, compile=False)
        info_path = model_path.parent / "calibration.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        from mammo.config import ClassifierConfig

        return cls(model, Calibrator.from_dict(info), context_margin=info.get("context_margin",
                   ClassifierConfig.context_margin), threshold=info.get("threshold", 0.5),
                   clahe=_clahe_of(info.get("clahe")), source=str(model_path))

    @property
    def calibrated(self) -> bool:
        return self.calibrator.calibrated

    # --- cropping: the training crop, by construction -------------------------------------------------------
    def crop(self, pixels: np.ndarray, box) -> tuple[np.ndarray, Transform]:
        return crop_roi(pixels, box, self.context_margin, self.input_size)

    def crop_many(self, pixels: np.ndarray, boxes) -> tuple[np.ndarray, list[Transform]]:
        pairs = [self.crop(pixels, b) for b in np.asarray(boxes, dtype=np.float64).reshape(-1, 4)]
        s = self.input_size
        crops = np.stack([c for c, _ in pairs]) if pairs else np.zeros((0, s, s), np.float32)
        return crops, [t for _, t in pairs]

    def warmup(self, methods=("gradcam",)) -> None:
        """Build the compiled forward pass and Grad-CAM now, on one blank crop (the batch dimension is symbolic:
        real batches of any size reuse them)."""
        blank = np.zeros((1, self.input_size, self.input_size), np.float32)
        self.predict(blank)
        for method in methods:
            self.gradcam(blank, method)

    # --- scores and maps ------------------------------------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        """The network on prepared crops [N, S, S, 1], as one compiled graph: an eager Keras call costs ~3x
        more per small batch. The batch dimension stays symbolic, so new batch sizes do not retrace."""
        if self._forward is None:
            import tensorflow as tf

            spec = tf.TensorSpec((None,) + tuple(self.model.inputs[0].shape[1:]), tf.float32)
            self._forward = tf.function(lambda t: self.model(t, training=False), input_signature=[spec])
        return self._forward(x).numpy()

    def predict_raw(self, crops: np.ndarray, batch_size: int = 64) -> np.ndarray:
        x = prepare(crops, self.clahe)
        out = [self.forward(x[i:i + batch_size]).ravel() for i in range(0, len(x), batch_size)]
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)

    def predict(self, crops: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """crops [N, S, S] float32 in [0, 1] -> calibrated P(malignant) [N]."""
        return self.calibrator(self.predict_raw(crops, batch_size))

    def gradcam(self, crops: np.ndarray, method: str = "gradcam", batch_size: int = 32) -> np.ndarray:
        """crops [N, S, S] -> maps [N, S, S] in [0, 1] (the malignant score's evidence); method 'gradcam' or
        'gradcam++'."""
        from classifier.gradcam import METHODS

        if method not in self._cams:
            if method not in METHODS:
                raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
            self._cams[method] = METHODS[method](self.model, batch_size=batch_size)
        return self._cams[method](prepare(crops, self.clahe))


def _clahe_of(saved) -> tuple[float, int] | None:
    """calibration.json's 'clahe': false, or [clip limit, tile grid]. A bare `true` comes from models saved before
    the setting was recorded, whose crops were equalised with clip 2.0 on a 4 x 4 grid."""
    if saved is True:
        return 2.0, 4
    return (float(saved[0]), int(saved[1])) if saved else None
