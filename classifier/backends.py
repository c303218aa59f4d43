"""The classifier's forward pass and Grad-CAM on the framework keras runs on in this process.

    backend = backend_for(model, "gradcam")          # TorchBackend or TensorFlowBackend, by keras' backend
    probs = backend.forward(x)                        # [N] P(malignant) before calibration
    probs, maps = backend.predict_and_gradcam(x)      # one forward per batch: the same probs, maps [N, S, S]

Inference runs on torch by default (classifier.inference_backend): the detector has torch loaded already, so
TensorFlow's import (seconds) and memory (~0.5 GB) are spared; the saved .keras files load unchanged on either.
`predict_and_gradcam` is one forward with the target feature map kept and one gradient per batch: the sum of the
batch's class scores, whose gradient w.r.t. each crop's feature map is that crop's own (the crops of a batch do
not interact at inference). Only the gradient differs between the two subclasses.
"""
from __future__ import annotations

from typing import Callable

import keras
import numpy as np

from classifier.batching import BatchedBackend
from classifier.gradcam import METHODS, default_target, find_target_layer, maps_from, run_capturing


class InferenceBackend(BatchedBackend):
    """forward / predict_and_gradcam on numpy crops [N, S, S(, 1)] in batches; subclasses run one batch."""

    def __init__(self, model: keras.Model, method: str = "gradcam", target_layer=None,
                 target: Callable | None = None, batch_size: int = 32):
        if method not in METHODS:
            raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
        self.model = model
        self.input_shape = tuple(model.inputs[0].shape[1:])
        if isinstance(target_layer, str):
            target_layer = (target_layer,)
        self.target_layer = tuple(target_layer) if target_layer else find_target_layer(model)
        self.channel_weights = METHODS[method]
        self.target = target or default_target
        self.batch_size = batch_size

    def _maps(self, acts, grads):
        return maps_from(acts, grads, self.channel_weights, self.input_shape[:2])


class TorchBackend(InferenceBackend):
    """Eager torch, or the same pass recorded once at load (`warmup`) with torch.jit.trace and replayed: Keras'
    own layer calls cost more than the arithmetic of a small network (one 128 px MobileNetV2 crop: 129 ms eager,
    32 ms traced, under load 6 on 2 cores). The recording is checked against the eager pass on another batch
    size; if tracing fails or disagrees, the eager pass is used and `trace_error` says why."""

    name = "torch"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._traced = None
        self.feature_shape = None  # (h, w, C) of the target feature map
        self.trace_error = ""

    def warmup(self) -> None:
        import warnings

        import torch

        rng = np.random.default_rng(0)
        check = rng.random((3,) + self.input_shape).astype(np.float32)
        expected = self._eager_pass(check)
        try:
            # Inference only: no weight needs a gradient (it is taken w.r.t. the feature map), and a trace cannot
            # hold weights that do.
            for v in self.model.weights:
                v.value.requires_grad_(False)
            example = torch.from_numpy(rng.random((2,) + self.input_shape).astype(np.float32))
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # its deprecation notice, and Keras' shape checks it records
                self._traced = torch.jit.trace(self._graph, (example, torch.zeros((2,) + self.feature_shape)),
                                               check_trace=False)
            got = self._pass(check)
            if not (np.allclose(got[0], expected[0], atol=1e-6, rtol=0)
                    and np.allclose(got[1], expected[1], atol=1e-5, rtol=0)):
                raise ValueError("the traced pass disagrees with the eager one")
        except Exception as exc:  # any failure of the recording: the eager pass is as right, only slower
            self._traced, self.trace_error = None, f"{type(exc).__name__}: {exc}"

    def _graph(self, x, delta):
        """The model with `delta` (zeros) added to the target feature map: the gradient w.r.t. `delta` is the
        gradient w.r.t. the map, and nothing before the map records a graph. (sigmoid output, score, map)."""
        captured: dict = {}
        out = run_capturing(self.model, x, self.target_layer, captured, lambda acts: acts + delta)
        return out, self.target(captured.get("logits", out)), captured["activations"]

    def _forward(self, x):
        import torch

        with torch.no_grad():
            if self._traced is not None:
                out = self._traced(torch.from_numpy(x), torch.zeros((len(x),) + self.feature_shape))[0]
            else:
                out = self.model(x, training=False)
            return keras.ops.convert_to_numpy(out)

    def _pass(self, x):
        import torch

        if self._traced is None:
            return self._eager_pass(x)
        delta = torch.zeros((len(x),) + self.feature_shape, requires_grad=True)
        with torch.enable_grad():
            out, score, acts = self._traced(torch.from_numpy(x), delta)
            (grads,) = torch.autograd.grad(score.sum(), delta)
        with torch.no_grad():
            maps = self._maps(acts.detach(), grads)
        return keras.ops.convert_to_numpy(out.detach())[:, 0], keras.ops.convert_to_numpy(maps)

    def _eager_pass(self, x):
        import torch

        captured: dict = {}

        def keep(acts):
            # From here on the graph is recorded, and only from here: the layers before the feature map need
            # no gradient (it is taken w.r.t. the map itself), so they ran without autograd's bookkeeping.
            torch.set_grad_enabled(True)
            return acts.detach().requires_grad_(True)

        before = torch.is_grad_enabled()
        torch.set_grad_enabled(False)
        try:
            out = run_capturing(self.model, keras.ops.convert_to_tensor(x), self.target_layer, captured, keep)
            if "activations" not in captured:
                raise ValueError(f"target layer {'/'.join(self.target_layer)} was not reached")
            score = self.target(captured.get("logits", out))
            (grads,) = torch.autograd.grad(score.sum(), captured["activations"])
        finally:
            torch.set_grad_enabled(before)
        self.feature_shape = tuple(captured["activations"].shape[1:])
        with torch.no_grad():
            maps = self._maps(captured["activations"].detach(), grads)
        return keras.ops.convert_to_numpy(out.detach())[:, 0], keras.ops.convert_to_numpy(maps)


class TensorFlowBackend(InferenceBackend):
    """Both passes as compiled graphs with a symbolic batch dimension (an eager Keras call costs ~3x more per
    small batch; new batch sizes do not retrace). Traced on their first call: `warmup` does that at load."""

    name = "tensorflow"

    def __init__(self, *args, **kwargs):
        import tensorflow as tf

        super().__init__(*args, **kwargs)
        spec = [tf.TensorSpec((None,) + self.input_shape, tf.float32)]
        self.tf_forward = tf.function(lambda t: self.model(t, training=False), input_signature=spec)
        self.tf_pass = tf.function(self._graph_pass, input_signature=spec)

    def _graph_pass(self, x):
        import tensorflow as tf

        captured: dict = {}
        with tf.GradientTape() as tape:
            def keep(acts):
                tape.watch(acts)  # also when every layer before it is frozen
                return acts

            out = run_capturing(self.model, x, self.target_layer, captured, keep)
            if "activations" not in captured:
                raise ValueError(f"target layer {'/'.join(self.target_layer)} was not reached")
            score = self.target(captured.get("logits", out))
        grads = tape.gradient(score, captured["activations"])
        return out[:, 0], self._maps(captured["activations"], grads)

    def _forward(self, x):
        return self.tf_forward(x).numpy()

    def _pass(self, x):
        probs, maps = self.tf_pass(x)
        return probs.numpy(), maps.numpy()


BACKENDS = {b.name: b for b in (TorchBackend, TensorFlowBackend)}


def backend_for(model: keras.Model, method: str = "gradcam", target_layer=None, target: Callable | None = None,
                batch_size: int = 32) -> InferenceBackend:
    """The backend of the keras this process imported (mammo.runtime.use_keras_backend chose it)."""
    return BACKENDS[keras.backend.backend()](model, method, target_layer, target, batch_size)
