"""A Keras MobileNetV2 that is torchvision's, tensor for tensor, so it can use ImageNet weights that work offline.

The only ImageNet weights available here are torchvision's MobileNetV2 file (see mammo/weights_store.py). Copied
into stock `keras.applications.MobileNetV2` they gave logits correlated only 0.92 with torchvision's, because
the two differ in details that matter once weights are shared:
- padding: Keras 'same' at stride 2 pads (0, 1) (bottom/right only), PyTorch pads 1 on every side. Here every
  stride-2 3x3 conv is ZeroPadding2D(1) + 'valid', which is PyTorch's padding=1; stride 1 'same' is symmetric.
- BatchNorm epsilon 1e-5 (Keras' MobileNetV2 uses 1e-3) and momentum 0.9 (= PyTorch's momentum 0.1).
- ReLU6 everywhere; no activation after the projection conv; residual add when stride 1 and channels agree.
Layer names are torchvision's state-dict prefixes with '.' -> '_' (features_3_conv_1_0 = features.3.conv.1.0),
so loading is a name lookup and every tensor is accounted for.

Input: ImageNet-normalized RGB, (x - mean) / std with x in [0, 1]. Grey mammogram crops are repeated to three
equal channels first (`imagenet_preprocess`, or `imagenet_input_layers` inside a model so a saved .keras file
carries the preprocessing). With input_shape (..., 1) the first conv's kernel is summed over its RGB axis: on an
input z that is exactly the 3-channel model fed (z, z, z). It is not exactly per-channel ImageNet normalization
(one grey channel can only take one mean and std: `GREY_MEAN`, `GREY_STD` below), so prefer the 3-channel model;
the first conv is a negligible share of the compute anyway.
"""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from keras import layers

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GREY_MEAN, GREY_STD = float(np.mean(IMAGENET_MEAN)), float(np.mean(IMAGENET_STD))  # for 1-channel backbones
BN_EPSILON = 1e-5  # torch.nn.BatchNorm2d default
BN_MOMENTUM = 0.9  # Keras keeps `momentum` of the old value; torch's momentum=0.1 weighs the new batch 0.1
# torchvision's inverted residual settings: expansion t, output channels c, repeats n, first stride s.
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
            (6, 320, 1, 1))
WEIGHTED = (layers.Conv2D, layers.DepthwiseConv2D, layers.BatchNormalization, layers.Dense)


def _conv_bn(x, filters, kernel, stride, name, depthwise=False, relu=True):
    """Conv (no bias) -> BN -> ReLU6, torchvision's Conv2dNormActivation; names `<name>_0/_1/_2` like its
    children."""
    padding = "same"
    if kernel == 3 and stride == 2:
        x = layers.ZeroPadding2D(1, name=f"{name}_pad")(x)  # PyTorch padding=1: symmetric
        padding = "valid"
    if depthwise:
        x = layers.DepthwiseConv2D(kernel, stride, padding, use_bias=False, name=f"{name}_0")(x)
    else:
        x = layers.Conv2D(filters, kernel, stride, padding, use_bias=False, name=f"{name}_0")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_1")(x)
    return layers.ReLU(6.0, name=f"{name}_2")(x) if relu else x


def _inverted_residual(x, index, expand, out_ch, stride):
    name, in_ch = f"features_{index}", x.shape[-1]
    y, j = x, 0
    if expand != 1:
        y = _conv_bn(y, in_ch * expand, 1, 1, f"{name}_conv_0")
        j = 1
    y = _conv_bn(y, None, 3, stride, f"{name}_conv_{j}", depthwise=True)
    y = layers.Conv2D(out_ch, 1, use_bias=False, name=f"{name}_conv_{j + 1}")(y)  # linear bottleneck
    y = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_conv_{j + 2}")(y)
    return layers.Add(name=f"{name}_add")([x, y]) if stride == 1 and in_ch == out_ch else y


def build_mobilenet_v2_torchvision_compatible(input_shape=(224, 224, 3), include_top=False, weights_path=None,
                                              name="mobilenet_v2_tv") -> keras.Model:
    """torchvision's mobilenet_v2 (width 1.0) in Keras. include_top=False ends at the 1280-channel feature map
    (features.18, for Grad-CAM and a new head); True adds average pooling, dropout 0.2 and the 1000-class Linear
    (logits, as torchvision). weights_path: None (random), 'imagenet-offline' (the verified file of the offline
    store; WeightsError with the install command when it is missing) or a torchvision state-dict file."""
    inp = keras.Input(input_shape, name="image")
    x = _conv_bn(inp, 32, 3, 2, "features_0")
    index = 1
    for t, c, n, s in SETTINGS:
        for i in range(n):
            x = _inverted_residual(x, index, t, c, s if i == 0 else 1)
            index += 1
    x = _conv_bn(x, 1280, 1, 1, f"features_{index}")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="pool")(x)
        x = layers.Dropout(0.2, name="classifier_0")(x)
        x = layers.Dense(1000, name="classifier_1")(x)
    model = keras.Model(inp, x, name=name)
    if weights_path is not None:
        load_torchvision_weights(model, weights_path)
    return model


def read_state_dict(weights_path) -> dict[str, np.ndarray]:
    """torchvision's state dict as numpy arrays. weights_only=True: the unpickler accepts tensors only, so a
    .pth cannot run code."""
    import torch

    if str(weights_path) == "imagenet-offline":
        from mammo.weights_store import imagenet_mobilenet_v2_path

        weights_path = imagenet_mobilenet_v2_path()
    state = torch.load(Path(weights_path), map_location="cpu", weights_only=True)
    return {k: v.numpy() for k, v in state.items() if not k.endswith("num_batches_tracked")}


def load_torchvision_weights(model: keras.Model, weights_path) -> None:
    """Copy every tensor of a torchvision mobilenet_v2 state dict into `model`, by layer name; any tensor left
    over or any layer left without one is an error (a silent partial load would look like a bad experiment)."""
    from mammo.errors import WeightsError

    state, used = read_state_dict(weights_path), set()
    for layer in model.layers:
        if not isinstance(layer, WEIGHTED):
            continue
        key = layer.name.replace("_", ".")
        if isinstance(layer, layers.BatchNormalization):
            names = ("weight", "bias", "running_mean", "running_var")  # = gamma, beta, moving mean, variance
            values = [state[f"{key}.{n}"] for n in names]
        elif isinstance(layer, layers.Dense):
            names = ("weight", "bias")
            values = [state[f"{key}.weight"].T, state[f"{key}.bias"]]
        elif isinstance(layer, layers.DepthwiseConv2D):
            names = ("weight",)
            values = [state[f"{key}.weight"].transpose(2, 3, 0, 1)]  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        else:
            names = ("weight",)
            kernel = state[f"{key}.weight"].transpose(2, 3, 1, 0)  # (O, I, kh, kw) -> (kh, kw, I, O)
            if kernel.shape[2] != layer.kernel.shape[2] and layer.kernel.shape[2] == 1:
                kernel = kernel.sum(axis=2, keepdims=True)  # 1-channel input: same as 3 equal channels
            values = [kernel]
        try:
            layer.set_weights(values)
        except ValueError as exc:
            raise WeightsError(weights_path, f"tensor {key} does not fit layer {layer.name}: {exc}") from None
        used.update(f"{key}.{n}" for n in names)
    left = sorted(set(state) - used)
    if left and not all(k.startswith("classifier.") for k in left):  # include_top=False drops the classifier
        raise WeightsError(weights_path, f"not a torchvision mobilenet_v2 state dict: {len(left)} tensors unused, "
                                         f"e.g. {left[:3]}")


# --- input ------------------------------------------------------------------------------------------------
def imagenet_preprocess(x: np.ndarray, channels: int = 3) -> np.ndarray:
    """Grey crops in [0, 1], shape (N, H, W) or (N, H, W, 1) -> float32 (N, H, W, 3) ImageNet-normalized (three
    equal channels before normalization), or (N, H, W, 1) normalized with GREY_MEAN / GREY_STD."""
    x = np.asarray(x, np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if channels == 1:
        return (x - GREY_MEAN) / GREY_STD
    x = np.repeat(x, 3, axis=-1)
    return (x - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)


def imagenet_input_layers(x, channels: int = 3):
    """The same as `imagenet_preprocess`, as built-in Keras layers (they serialize with the model)."""
    if channels == 3:
        x = layers.Concatenate(name="grey_to_rgb")([x, x, x])
        return layers.Normalization(mean=list(IMAGENET_MEAN), variance=[s * s for s in IMAGENET_STD],
                                    name="imagenet_norm")(x)
    return layers.Normalization(mean=[GREY_MEAN], variance=[GREY_STD ** 2], name="imagenet_norm")(x)


# --- fine-tuning ------------------------------------------------------------------------------------------
def freeze_backbone(backbone: keras.Model) -> None:
    """Stage 1: train the new head only. In Keras 3 a BatchNormalization layer with trainable=False also runs in
    inference mode (uses the ImageNet moving statistics and does not update them). That is what we want: small
    batches of mammogram crops would otherwise replace the ImageNet statistics with noisy ones, shifting every
    feature under the head being trained. Recompile after changing `trainable`."""
    backbone.trainable = False


def unfreeze_last_fraction(backbone: keras.Model, fraction: float, train_batchnorm: bool = False) -> int:
    """Stage 2: make the last `fraction` of the backbone's weighted layers trainable (the rest stay frozen) and
    return how many were unfrozen. BatchNorm layers stay frozen, hence in inference mode, unless
    `train_batchnorm`: with the few hundred crops here their batch statistics are too noisy to replace
    ImageNet's, and Keras' transfer-learning guide advises the same. Recompile (with a lower learning rate)
    after calling this."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    backbone.trainable = True  # Keras propagates to sublayers; then freeze what should stay frozen
    weighted = [layer for layer in backbone.layers if isinstance(layer, WEIGHTED)]
    n_train = int(round(len(weighted) * fraction))
    for i, layer in enumerate(weighted):
        trainable = i >= len(weighted) - n_train
        if isinstance(layer, layers.BatchNormalization) and not train_batchnorm:
            trainable = False
        layer.trainable = trainable
    return n_train


# --- hook for classifier/model.py's backbone registry ------------------------------------------------------
OFFLINE_BACKBONES = {"mobilenet_v2": build_mobilenet_v2_torchvision_compatible}


def offline_backbone(name: str, shape) -> keras.Model:
    """The backbone for `classifier.weights: imagenet-offline`: ImageNet weights from the offline store, no top.
    Its input is ImageNet-normalized ('torch' scaling in classifier/model.py)."""
    from mammo.errors import ConfigError

    if name not in OFFLINE_BACKBONES:
        raise ConfigError(f"classifier.weights: 'imagenet-offline' exists only for {sorted(OFFLINE_BACKBONES)}, "
                          f"not {name!r}; use weights none or a local file")
    return OFFLINE_BACKBONES[name](tuple(shape), include_top=False, weights_path="imagenet-offline")
