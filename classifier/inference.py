"""The trained classifier as one object for the pipeline: crops exactly as training did, calibrated
probabilities, Grad-CAM maps at crop resolution.

    clf = MalignancyClassifier.load("runs/classifier/train/mias")   # a run folder or a .keras file
    crops, transforms = clf.crop_many(mammogram.pixels, boxes)      # transforms: original -> crop
    p = clf.predict(crops)                                          # calibrated P(malignant), [N]
    maps = clf.gradcam(crops)                                       # [N, S, S] in [0, 1]
    p, maps = clf.predict_and_gradcam(crops)                        # both from one forward pass
"""
from __future__ import annotations

import json
import sys
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
                 clahe: tuple[float, int] | None = None, source: str = "", onnx=None):
        self.model = model  # None with `onnx` until a method the graph lacks asks for it (keras loaded then)
        self.onnx = onnx  # classifier/onnx_backend.OnnxBackend: plain Grad-CAM and the forward pass, no keras
        self.calibrator = calibrator
        self.input_size = int(onnx.input_shape[0] if onnx is not None else model.inputs[0].shape[1])
        self.context_margin = float(context_margin)
        self.threshold = float(threshold)  # F-beta operating point chosen on validation
        self.clahe = tuple(clahe) if clahe else None  # (clip limit, tile grid) of training, or None
        self.source = source
        self._backends: dict = {}

    @classmethod
    def load(cls, path, threads: int | None = None, onnx: bool = False) -> "MalignancyClassifier":
        """From a training run folder (model.keras + calibration.json) or a .keras file (with a
        calibration.json beside it, else uncalibrated with the default context margin). onnx: the exported
        graph beside it when it can stand in (classifier/onnx_backend.open_onnx), else keras as below."""
        path = Path(path)
        model_path = path / "model.keras" if path.is_dir() else path
        if not model_path.is_file():
            raise WeightsError(model_path, "no trained classifier here (train one with `python -m classifier "
                                           "train`, or pass a run folder that has model.keras)")
        graph = None
        if onnx:
            from classifier.onnx_backend import open_onnx

            graph = open_onnx(model_path.parent, threads)
        model = None if graph is not None else _load_keras(model_path, threads)
        info_path = model_path.parent / "calibration.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        from mammo.config import ClassifierConfig

        return cls(model, Calibrator.from_dict(info), context_margin=info.get("context_margin",
                   ClassifierConfig.context_margin), threshold=info.get("threshold", 0.5),
                   clahe=_clahe_of(info.get("clahe")), source=str(model_path), onnx=graph)

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
        """Build what the backend builds once, now rather than on the first image with boxes: on TensorFlow the
        graphs of the forward pass and of the one pass with Grad-CAM (seconds), on torch a trace of that pass
        (about a second). Real batches of any size reuse them."""
        for method in methods:
            self.backend(method).warmup()

    # --- scores and maps ------------------------------------------------------------------------------------
    def backend(self, method: str = "gradcam"):
        """The forward pass and Grad-CAM on the framework keras runs on (classifier/backends.py), per method."""
        if self.onnx is not None and method == "gradcam":
            return self.onnx
        if self.model is None:  # e.g. gradcam++ under onnx: the graph holds plain Grad-CAM only
            print(f"note: {method} is not in classifier.onnx; it runs on keras ({self.source})", file=sys.stderr)
            self.model = _load_keras(Path(self.source), None)
        if method not in self._backends:
            from classifier.backends import backend_for

            self._backends[method] = backend_for(self.model, method)
        return self._backends[method]

    @property
    def backend_name(self) -> str:
        return self.backend().name

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The network alone on prepared crops [N, S, S, 1] -> [N, 1] (the benchmark's floor)."""
        return self.backend().forward(x)

    def predict_raw(self, crops: np.ndarray) -> np.ndarray:
        return self.forward(prepare(crops, self.clahe)).ravel().astype(np.float64)

    def predict(self, crops: np.ndarray) -> np.ndarray:
        """crops [N, S, S] float32 in [0, 1] -> calibrated P(malignant) [N]."""
        return self.calibrator(self.predict_raw(crops))

    def predict_and_gradcam(self, crops: np.ndarray, method: str = "gradcam") -> tuple[np.ndarray, np.ndarray]:
        """crops [N, S, S] -> (calibrated P(malignant) [N], maps [N, S, S] in [0, 1]) from one forward pass per
        batch: what `predict` and `gradcam` give, for the cost of one."""
        raw, maps = self.backend(method).predict_and_gradcam(prepare(crops, self.clahe))
        return self.calibrator(raw.astype(np.float64)), maps

    def gradcam(self, crops: np.ndarray, method: str = "gradcam") -> np.ndarray:
        """crops [N, S, S] -> maps [N, S, S] in [0, 1] (the malignant score's evidence); method 'gradcam' or
        'gradcam++'."""
        return self.predict_and_gradcam(crops, method)[1]


def _load_keras(model_path: Path, threads: int | None):
    import keras  # on the backend mammo.runtime.use_keras_backend chose (TensorFlow unless told otherwise)

    runtime.configure_keras(threads)
    return keras.models.load_model(model_path, compile=False)


def _clahe_of(saved) -> tuple[float, int] | None:
    """calibration.json's 'clahe': false, or [clip limit, tile grid]. A bare `true` comes from models saved before
    the setting was recorded, whose crops were equalised with clip 2.0 on a 4 x 4 grid."""
    if saved is True:
        return 2.0, 4
    return (float(saved[0]), int(saved[1])) if saved else None
