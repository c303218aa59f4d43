"""Export a trained classifier to classifier.onnx beside its model.keras: one graph, two outputs (the sigmoid
output and the Grad-CAM map), for classifier.inference_backend=onnx (classifier/onnx_backend.py).

    python -m classifier export-onnx weights/classifier     # a bundle's classifier: its MANIFEST is rewritten

tf2onnx and onnx are export-time dependencies (requirements-export.txt), on TensorFlow: imported here only.

Grad-CAM without gradients: ONNX Runtime computes none at inference and tf2onnx cannot convert the gradient tape's
ops (StridedSliceGrad, DynamicStitch). The gap head after the feature map is global average pooling, dropout
(identity at inference) and one dense unit, so d logit / d map is that unit's kernel / (h * w), the same for every
crop: the graph computes the map from the kept feature map with those constant weights. Exact for that head only;
any other head is refused here (and runs on the torch path).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mammo.atomic import atomic_path
from mammo.errors import WeightsError
from mammo.weights_store import sha256_of

from classifier.onnx_backend import HEAD, METHOD, ONNX_FILE

GAP_HEAD = ["gap", "head_dropout", "logit", "malignancy"]  # the layers after the feature map (classifier/model.py)


def export_onnx(model_dir) -> Path:
    """Write model_dir/classifier.onnx from model_dir/model.keras (atomically); refuses a head other than gap."""
    import mammo.runtime as runtime

    runtime.use_keras_backend("tensorflow")  # tf2onnx converts TensorFlow graphs
    import keras
    import onnx
    import tensorflow as tf
    import tf2onnx

    from classifier.backends import backend_for
    from classifier.gradcam import run_capturing

    model_path = Path(model_dir) / "model.keras"
    if not model_path.is_file():
        raise WeightsError(model_path, "no trained classifier here: nothing to export")
    model = keras.models.load_model(model_path, compile=False)
    backend = backend_for(model, METHOD)
    names = [layer.name for layer in model.layers]
    head = names[names.index(backend.target_layer[0]) + 1:]
    if head != GAP_HEAD or model.get_layer("logit").kernel.shape[1] != 1:
        raise WeightsError(model_path, f"the layers after the Grad-CAM feature map are {head}, not the {HEAD} head "
                                       f"{GAP_HEAD}: the exported Grad-CAM would not be exact; this model runs on "
                                       f"the torch path")

    kernel = model.get_layer("logit").kernel

    def with_gradcam(x):
        captured: dict = {}
        probs = run_capturing(model, x, backend.target_layer, captured, lambda acts: acts)
        acts = captured["activations"]
        h, w = acts.shape[1], acts.shape[2]
        grads = tf.broadcast_to(tf.reshape(kernel[:, 0] / (h * w), (1, 1, 1, -1)), tf.shape(acts))
        return probs[:, 0], backend._maps(acts, grads)

    spec = [tf.TensorSpec((None,) + backend.input_shape, tf.float32, name="crops")]
    proto, _ = tf2onnx.convert.from_function(tf.function(with_gradcam, input_signature=spec), input_signature=spec,
                                             opset=17)
    # Traced layer by layer (run_capturing), the Normalization layer's mean and variance come out of tf2onnx as
    # graph inputs instead of constants: they become initializers again, with the layer's own values.
    bake_normalization(proto, model, "crops", model_path)
    # checked at inference (onnx_backend.open_onnx): a graph of another (older) model.keras is not used
    onnx.helper.set_model_props(proto, {"head": HEAD, "method": METHOD, "model_sha256": sha256_of(model_path)})
    return checked_save(proto, Path(model_dir) / ONNX_FILE)


def checked_save(proto, path: Path) -> Path:
    """The graph checked by onnx, then written atomically to `path`."""
    import onnx

    onnx.checker.check_model(proto)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    return path


def bake_normalization(proto, model, keep: str, model_path) -> None:
    """Every graph input but `keep` made a constant again: tf2onnx turns the mean and variance of keras'
    Normalization layers into graph inputs (named <layer>[_n]/Sub/y and .../Sqrt/x); inputs the graph does not use
    are dropped (onnxruntime warns about them at every load). Anything else is refused, naming the model."""
    import re

    import keras
    import numpy as np
    from onnx import numpy_helper

    norms = {layer.name: layer for layer in model.layers if isinstance(layer, keras.layers.Normalization)}
    used = {name for node in proto.graph.node for name in node.input}
    for graph_input in [i for i in proto.graph.input if i.name != keep]:
        if graph_input.name not in used:
            proto.graph.input.remove(graph_input)
            continue
        found = re.search(r"([A-Za-z0-9_]+)/(Sub/y|Sqrt/x)", graph_input.name)
        layer = None
        if found:
            name = found.group(1)
            layer = norms.get(name) or norms.get(re.sub(r"_\d+$", "", name))
        if layer is None:
            raise WeightsError(model_path, f"unexpected graph input {graph_input.name} in the exported graph")
        value = np.asarray(layer.mean if found.group(2) == "Sub/y" else layer.variance, np.float32)
        dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
        value = value.reshape(dims) if dims and all(dims) else value
        proto.graph.initializer.append(numpy_helper.from_array(value, graph_input.name))
        proto.graph.input.remove(graph_input)


def export_global_onnx(folder) -> Path:
    """Write folder/model.onnx from a global branch's folder/model.keras (atomically): the whole image in, the map
    of position logits out, for the onnx inference backend (classifier/global_branch.py)."""
    import mammo.runtime as runtime

    runtime.use_keras_backend("tensorflow")
    import keras
    import onnx
    import tensorflow as tf
    import tf2onnx

    from classifier.global_branch import GLOBAL_ONNX_FILE, GLOBAL_ONNX_KIND

    model_path = Path(folder) / "model.keras"
    if not model_path.is_file():
        raise WeightsError(model_path, "no global branch here: nothing to export")
    model = keras.models.load_model(model_path, compile=False)
    size = int(model.inputs[0].shape[1])
    spec = [tf.TensorSpec((None, size, size, 1), tf.float32, name="squares")]
    proto, _ = tf2onnx.convert.from_function(tf.function(lambda x: model(x, training=False), input_signature=spec),
                                             input_signature=spec, opset=17)
    bake_normalization(proto, model, "squares", model_path)
    onnx.helper.set_model_props(proto, {"kind": GLOBAL_ONNX_KIND, "model_sha256": sha256_of(model_path)})
    return checked_save(proto, Path(folder) / GLOBAL_ONNX_FILE)


def export_into_bundle(model_dir) -> Path:
    """export_onnx, and when model_dir is a bundle's classifier (pipeline.json and MANIFEST.sha256 one folder up),
    its manifest rewritten to list the new file: verified first, so a modified file is never blessed."""
    from pipeline.models import BUNDLE_FILE, MANIFEST, verify_manifest, write_manifest

    root = Path(model_dir).resolve().parent
    bundled = (root / BUNDLE_FILE).is_file() and (root / MANIFEST).is_file()
    if bundled:
        verify_manifest(root)  # the whole bundle as shipped, the old classifier.onnx too when there is one
    # a global branch's folder holds head.json beside its model.keras; a classifier's, calibration.json
    out = export_global_onnx(model_dir) if (Path(model_dir) / "head.json").is_file() else export_onnx(model_dir)
    if bundled:
        write_manifest(root)
    return out


def cli(argv=None) -> int:
    """`python -m classifier export-onnx MODEL_DIR`: no run folder, no config, one file beside model.keras."""
    from mammo.errors import MammoError

    p = argparse.ArgumentParser(prog="python -m classifier export-onnx",
                                description="write classifier.onnx beside MODEL_DIR/model.keras (gap head only), "
                                            "or model.onnx when MODEL_DIR is a global branch (head.json); a "
                                            "bundle's MANIFEST.sha256 is verified, then rewritten; needs "
                                            "requirements-export.txt")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    model_dir = p.parse_args(argv).model_dir
    try:
        print(f"wrote {export_into_bundle(model_dir)}")
    except MammoError as exc:  # as mammo.cli.run_command: one line naming the file
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
