"""Grad-CAM and Grad-CAM++ for the classifier, on whichever framework keras runs on (torch or TensorFlow):

    cam = GradCAM(model)                      # target layer found automatically, also in a nested backbone
    maps = cam(crops)                         # [N, S, S] float32 in [0, 1], at crop resolution

Why the forward pass is re-run by hand: a keras.applications backbone is a nested Model, and Keras cannot make
a new Model from the outer input to a tensor inside the nested one (the classic "Graph disconnected" failure
of Grad-CAM recipes). So the outer graph is executed op by op (Keras' own graph runner) and the nested model on
the path to the target layer is executed the same way, capturing the target activation on the way and the
logit before the final sigmoid (a saturated sigmoid would give zero gradients on confident crops). That one
forward also gives the malignancy: classifier/backends.py takes the gradient with the framework's own tool
(torch.autograd.grad, tf.GradientTape) once per batch; everything else here is keras.ops, the same on both.
"""
from __future__ import annotations

from typing import Callable

import keras
import numpy as np
from keras import ops

_NOT_TARGETS = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D, keras.layers.Dropout,
                keras.layers.SpatialDropout2D, keras.layers.InputLayer)


def find_target_layer(model: keras.Model) -> tuple[str, ...]:
    """Name path to the last layer with a spatial (N, h, w, C) output, looking inside nested Models first
    from the end; trailing pooling / dropout layers are skipped (they only coarsen the same map)."""
    for layer in reversed(model.layers):
        if isinstance(layer, keras.Model):
            try:
                return (layer.name,) + find_target_layer(layer)
            except ValueError:
                continue
        if isinstance(layer, _NOT_TARGETS):
            continue
        try:
            rank = len(layer.output.shape)
        except (AttributeError, ValueError):
            continue
        if rank == 4:
            return (layer.name,)
    raise ValueError(f"no layer with a spatial output in model {model.name!r}")


def default_target(logits):
    """The malignant score (logit of the single output)."""
    return logits[:, 0]


def run_capturing(model: keras.Model, x, path: tuple[str, ...], captured: dict, on_target: Callable):
    """Run `model` on `x` op by op; the output of the layer at `path` goes through `on_target` (which makes it
    what the gradient is taken to) and is captured as 'activations', the output of a layer named 'logit' as
    'logits'. Returns the model's output."""

    def op_fn(op):
        def call(*args, **kwargs):
            if path and op.name == path[0] and len(path) > 1:
                out = run_capturing(op, args[0], path[1:], captured, on_target)  # descend into the nested Model
            else:
                out = op(*args, **kwargs)
            if path and op.name == path[0] and len(path) == 1:
                out = on_target(out)
                captured["activations"] = out
            if op.name == "logit":
                captured["logits"] = out
            return out
        return call

    outputs = model._run_through_graph([x], operation_fn=op_fn)  # Keras' graph runner (pinned keras 3)
    return outputs[0] if isinstance(outputs, (list, tuple)) else outputs


def gradcam_weights(activations, grads):
    """Selvaraju et al. 2017: channel weight = spatial mean of the gradient."""
    return ops.mean(grads, axis=(1, 2))


def gradcam_plus_plus_weights(activations, grads):
    """Chattopadhyay et al. 2018: positive gradients weighted per position (closed form with exp scores),
    which spreads the map over several instances instead of the strongest one."""
    g2 = ops.square(grads)
    g3 = g2 * grads
    sum_a = ops.sum(activations, axis=(1, 2), keepdims=True)
    denom = 2.0 * g2 + sum_a * g3
    alpha = ops.where(grads != 0.0, g2 / ops.where(denom != 0.0, denom, 1e-7), 0.0)
    return ops.sum(alpha * ops.relu(grads), axis=(1, 2))


METHODS = {"gradcam": gradcam_weights, "gradcam++": gradcam_plus_plus_weights}


def maps_from(activations, grads, channel_weights: Callable, size: tuple[int, int]):
    """(N, h, w, C) activations and gradients -> (N, S, S) maps in [0, 1]."""
    w = channel_weights(activations, grads)
    cam = ops.relu(ops.einsum("nhwc,nc->nhw", activations, w))[..., None]
    # half-pixel-centre bilinear resize: feature cell i covers crop pixels [i*S/h, (i+1)*S/h)
    cam = ops.image.resize(cam, size, interpolation="bilinear")[..., 0]
    lo = ops.min(cam, axis=(1, 2), keepdims=True)
    hi = ops.max(cam, axis=(1, 2), keepdims=True)
    return ops.where(hi - lo > 1e-12, (cam - lo) / ops.maximum(hi - lo, 1e-12), ops.zeros_like(cam))


class BaseCAM:
    """Class activation maps from gradients of `target(logits)` w.r.t. the target layer's activations.

    `target_layer`: a name path ('backbone', 'out_relu') or None to find it. `target`: a function of the
    model's logits (N, 1) -> (N,) scores; the default is the malignant score. Models without a layer named
    'logit' use the model output itself.
    """

    method = ""

    def __init__(self, model: keras.Model, target_layer=None, target: Callable | None = None,
                 batch_size: int = 32):
        from classifier.backends import backend_for

        self.backend = backend_for(model, self.method, target_layer, target, batch_size)
        self.target_layer = self.backend.target_layer

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """crops [N, S, S] or [N, S, S, 1] float32 in [0, 1] -> maps [N, S, S] float32 in [0, 1]."""
        return self.backend.predict_and_gradcam(crops)[1]


class GradCAM(BaseCAM):
    method = "gradcam"


class GradCAMPlusPlus(BaseCAM):
    method = "gradcam++"
