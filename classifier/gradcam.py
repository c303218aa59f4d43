"""Grad-CAM and Grad-CAM++ for the classifier, in the style of pytorch-grad-cam: one base class does the
work, each method overrides one hook (`channel_weights`).

    cam = GradCAM(model)                      # target layer found automatically, also in a nested backbone
    maps = cam(crops)                         # [N, S, S] float32 in [0, 1], at crop resolution

Why the forward pass is re-run by hand: a keras.applications backbone is a nested Model, and Keras cannot make
a new Model from the outer input to a tensor inside the nested one (the classic "Graph disconnected" failure
of Grad-CAM recipes). So the outer graph is executed op by op (Keras' own graph runner) and the nested model on
the path to the target layer is executed the same way, capturing the target activation on the way and the
logit before the final sigmoid (a saturated sigmoid would give zero gradients on confident crops). The whole
thing is one compiled tf.function over a batch.
"""
from __future__ import annotations

from typing import Callable

import keras
import numpy as np
import tensorflow as tf


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


def default_target(logits: tf.Tensor) -> tf.Tensor:
    """The malignant score (logit of the single output)."""
    return logits[:, 0]


def _run(model: keras.Model, x, path: tuple[str, ...], tape: tf.GradientTape, captured: dict):
    """Run `model` on `x` op by op; capture the output of the layer at `path` (watched by `tape`) and of a
    layer named 'logit'."""

    def op_fn(op):
        def call(*args, **kwargs):
            if path and op.name == path[0] and len(path) > 1:
                out = _run(op, args[0], path[1:], tape, captured)  # descend into the nested Model
            else:
                out = op(*args, **kwargs)
            if path and op.name == path[0] and len(path) == 1:
                tape.watch(out)  # also when every layer before it is frozen
                captured["activations"] = out
            if op.name == "logit":
                captured["logits"] = out
            return out
        return call

    outputs = model._run_through_graph([x], operation_fn=op_fn)  # Keras' graph runner (pinned keras 3)
    return outputs[0] if isinstance(outputs, (list, tuple)) else outputs


class BaseCAM:
    """Class activation maps from gradients of `target(logits)` w.r.t. the target layer's activations.

    `target_layer`: a name path ('backbone', 'out_relu') or None to find it. `target`: a function of the
    model's logits (N, 1) -> (N,) scores; the default is the malignant score. Models without a layer named
    'logit' use the model output itself.
    """

    def __init__(self, model: keras.Model, target_layer=None, target: Callable | None = None,
                 batch_size: int = 32):
        self.model = model
        if isinstance(target_layer, str):
            target_layer = (target_layer,)
        self.target_layer = tuple(target_layer) if target_layer else find_target_layer(model)
        self.target = target or default_target
        self.batch_size = batch_size
        shape = tuple(model.inputs[0].shape[1:])
        self.input_shape = shape
        self._maps = tf.function(self._batch_maps, input_signature=[tf.TensorSpec((None,) + shape, tf.float32)],
                                 reduce_retracing=True)

    def channel_weights(self, activations: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
        """(N, h, w, C) activations and gradients -> (N, C) weights. The one hook a method overrides."""
        raise NotImplementedError

    def _batch_maps(self, x):
        with tf.GradientTape() as tape:
            captured: dict = {}
            out = _run(self.model, x, self.target_layer, tape, captured)
            if "activations" not in captured:
                raise ValueError(f"target layer {'/'.join(self.target_layer)} was not reached")
            score = self.target(captured.get("logits", out))
        acts = captured["activations"]
        grads = tape.gradient(score, acts)
        w = self.channel_weights(acts, grads)
        cam = tf.nn.relu(tf.einsum("nhwc,nc->nhw", acts, w))[..., None]
        # half-pixel-centre bilinear resize: feature cell i covers crop pixels [i*S/h, (i+1)*S/h)
        cam = tf.image.resize(cam, self.input_shape[:2], method="bilinear")[..., 0]
        lo = tf.reduce_min(cam, axis=(1, 2), keepdims=True)
        hi = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        return tf.where(hi - lo > 1e-12, (cam - lo) / tf.maximum(hi - lo, 1e-12), tf.zeros_like(cam))

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """crops [N, S, S] or [N, S, S, 1] float32 in [0, 1] -> maps [N, S, S] float32 in [0, 1]."""
        x = np.asarray(crops, dtype=np.float32)
        if x.ndim == 3:
            x = x[..., None]
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"crops of shape {x.shape[1:]} but the model takes {self.input_shape}")
        out = [self._maps(tf.constant(x[i:i + self.batch_size])).numpy()
               for i in range(0, len(x), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0,) + self.input_shape[:2], np.float32)


class GradCAM(BaseCAM):
    """Selvaraju et al. 2017: channel weight = spatial mean of the gradient."""

    def channel_weights(self, activations, grads):
        return tf.reduce_mean(grads, axis=(1, 2))


class GradCAMPlusPlus(BaseCAM):
    """Chattopadhyay et al. 2018: positive gradients weighted per position (closed form with exp scores),
    which spreads the map over several instances instead of the strongest one."""

    def channel_weights(self, activations, grads):
        g2 = tf.square(grads)
        g3 = g2 * grads
        sum_a = tf.reduce_sum(activations, axis=(1, 2), keepdims=True)
        denom = 2.0 * g2 + sum_a * g3
        alpha = tf.where(grads != 0.0, g2 / tf.where(denom != 0.0, denom, 1e-7), 0.0)
        return tf.reduce_sum(alpha * tf.nn.relu(grads), axis=(1, 2))


METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}
