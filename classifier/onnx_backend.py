"""The classifier and its Grad-CAM as one exported ONNX graph (classifier.onnx beside model.keras, written by
classifier/export_onnx.py), run by onnxruntime: classifier.inference_backend=onnx.

    backend = open_onnx(model_dir, threads)           # None (said on stderr) when the file cannot stand in
    probs, maps = backend.predict_and_gradcam(x)      # what TorchBackend gives, within 1e-5 / 1e-4

No keras, no TensorFlow: onnxruntime imports in 0.03 s instead of keras' 5 s, and runs the batch 4-6x faster than
the torch path (README, benchmarks/onnx_classifier.py). Only onnxruntime's built-in CPU ops run: no custom-op
library is registered, so a graph naming any other op fails to load.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from mammo.errors import WeightsError
from mammo.weights_store import sha256_of

from classifier.batching import BatchedBackend

ONNX_FILE = "classifier.onnx"
# What the export writes into the graph's metadata and inference checks: the graph is exact only for the gap head
# with plain Grad-CAM (constant channel weights), and only for the model.keras it was exported from.
HEAD, METHOD = "gap", "gradcam"


def open_onnx(model_dir, threads: int | None = None) -> "OnnxBackend | None":
    """The exported graph of the model in `model_dir`, or None with the reason on stderr: no classifier.onnx, or
    one exported from another model.keras (retrained since). Those fall back to keras on torch, which gives the
    same numbers (tests/test_backends.py), only slower: refusing would stop every bundle and run folder made
    without tf2onnx. A file that is there but is not a readable graph is an error naming it, like a damaged
    model.keras (in a bundle with a manifest, read_bundle has already refused a modified one)."""
    model_dir = Path(model_dir)
    path = model_dir / ONNX_FILE
    if not path.is_file():
        return _fallback(f"no {path}")
    backend = OnnxBackend(path, threads)
    meta = backend.metadata
    model_hash = sha256_of(model_dir / "model.keras") if (model_dir / "model.keras").is_file() else None
    if meta.get("model_sha256") != model_hash:
        return _fallback(f"{path} was exported from another model.keras (re-export: python -m classifier "
                         f"export-onnx {model_dir})")
    if (meta.get("head"), meta.get("method")) != (HEAD, METHOD):
        return _fallback(f"{path} is not a {HEAD}-head graph with {METHOD}")
    return backend


def open_session(path: Path, threads: int | None = None):
    """An onnxruntime CPU session of `path` (the classifier's or the global branch's graph); a file that is not a
    readable graph is an error naming it."""
    import onnxruntime as ort

    import mammo.runtime as runtime

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or runtime.default_threads()
    options.inter_op_num_threads = 1  # one chain of ops: a second pool would only compete for the 2 cores
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own errors (protobuf, unknown op) have no common class
        raise WeightsError(path, f"not a readable ONNX graph ({type(exc).__name__}: {exc}); re-export it with "
                                 f"`python -m classifier export-onnx {Path(path).parent}`") from None


def _fallback(reason: str) -> None:
    print(f"note: classifier.inference_backend=onnx: {reason}; the classifier runs on keras instead (torch, "
          f"unless this process runs keras on TensorFlow already)", file=sys.stderr)
    return None


class OnnxBackend(BatchedBackend):
    """forward / predict_and_gradcam on prepared crops [N, S, S(, 1)], in batches of `batch_size`."""

    name = "onnx"
    trace_error = ""  # nothing is traced: the interface of classifier.backends.TorchBackend

    def __init__(self, path: Path, threads: int | None = None, batch_size: int = 32):
        self.session = open_session(path, threads)
        self.metadata = self.session.get_modelmeta().custom_metadata_map
        self.input_shape = tuple(int(d) for d in self.session.get_inputs()[0].shape[1:])
        self.batch_size = batch_size

    def _pass(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, maps = self.session.run(None, {"crops": x})
        return probs, maps

    def _forward(self, x: np.ndarray) -> np.ndarray:
        return self._pass(x)[0][:, None]  # one graph gives both outputs: the map costs a few ms per batch
