"""The batching every classifier inference backend shares (classifier/backends.py on keras, classifier/
onnx_backend.py without): crops checked against the model's input, run `batch_size` at a time. No keras here, so
the onnx backend imports none."""
from __future__ import annotations

import numpy as np


class BatchedBackend:
    """forward / predict_and_gradcam on numpy crops [N, S, S(, 1)] in batches; subclasses set `input_shape` and
    `batch_size` and run one batch (`_forward`, `_pass`)."""

    name = ""
    input_shape: tuple = ()
    batch_size: int = 32

    def _batch(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 3:
            x = x[..., None]
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"crops of shape {x.shape[1:]} but the model takes {self.input_shape}")
        return x

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The network alone on prepared crops -> [N, 1] sigmoid outputs (no gradient kept)."""
        x = self._batch(x)
        out = [self._forward(x[i:i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 1), np.float32)

    def predict_and_gradcam(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Prepared crops -> (sigmoid outputs [N], Grad-CAM maps [N, S, S] float32 in [0, 1])."""
        x = self._batch(x)
        pairs = [self._pass(x[i:i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        if not pairs:
            return np.zeros(0, np.float32), np.zeros((0,) + self.input_shape[:2], np.float32)
        return np.concatenate([p for p, _ in pairs]), np.concatenate([m for _, m in pairs])

    def warmup(self) -> None:
        """Whatever the backend builds once (graphs, a trace), now, on blank crops rather than on an image."""
        blank = np.zeros((1,) + self.input_shape, np.float32)
        self.forward(blank)
        self.predict_and_gradcam(blank)

    def _forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _pass(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError
