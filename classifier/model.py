"""Backbone registry and heads: `build_model(cfg)` -> a Keras model from a grey crop to P(malignant).

Every model has the same outer shape, so that training, prediction and Grad-CAM treat all backbones alike:

    crop (S, S, 1) in [0, 1] -> [grey repeated to 3 channels] -> input scaling -> backbone (a nested Model,
    ending in a spatial feature map) -> head -> Dense(1, name='logit') -> sigmoid (name='malignancy')

The backbone stays a nested Model on purpose: it is how keras.applications models come, and Grad-CAM must (and
does, see gradcam.py) find the last convolutional layer inside it. The logit is a layer of its own so that
Grad-CAM can take gradients before the sigmoid, which saturates on confident crops.

Weights: 'none' trains from scratch; a local file path is loaded into the backbone; 'imagenet' works only where
keras can load it (a cached file or network) and otherwise fails with a WeightsError that says how to pass a
file. ImageNet weights need 3 channels, so the grey channel is repeated whenever weights are given.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
from keras import layers

from mammo import config
from mammo.config import ClassifierConfig
from mammo.errors import ConfigError, WeightsError

# Input scaling of the keras.applications families (their preprocess_input, as layers so the .keras file
# carries it): 'tf' = [-1, 1]; 'caffe' = 0-255 minus the ImageNet means (BGR); 'torch' = ImageNet mean/std;
# 'raw255' = 0-255 (EfficientNet rescales inside itself).
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN, _TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Backbone:
    build: Callable[[tuple, object], keras.Model]  # (input shape (S, S, C), weights None|'imagenet'|path)
    scaling: str  # 'tf' | 'caffe' | 'torch' | 'raw255'
    pretrainable: bool  # has ImageNet weights in keras.applications (then 3 channels when weights are given)


BACKBONES: dict[str, Backbone] = {}


def register(name: str, scaling: str = "tf", pretrainable: bool = True):
    if name not in config.BACKBONES:  # the config's Literal is checked at load: keep the two lists one
        raise ValueError(f"backbone {name!r}: add it to mammo.config.BACKBONES as well")

    def deco(fn):
        BACKBONES[name] = Backbone(fn, scaling, pretrainable)
        return fn
    return deco


def _application(fn, shape, weights) -> keras.Model:
    return fn(include_top=False, weights=weights, input_shape=shape)


@register("small_cnn", scaling="tf", pretrainable=False)
def small_cnn(shape, weights=None) -> keras.Model:
    """Conv / max-pool / dropout blocks, as in the INbreast study of the seeds, kept light for 2 CPU cores
    (one conv per block, 16-128 filters; about 60 MMAC per 128 px crop). BatchNorm because it trains far more
    reliably from scratch on a few hundred crops. The last block has no pooling so that Grad-CAM gets the finest map the
    network has (1/8 of the crop)."""
    inp = keras.Input(shape)
    x = inp
    for i, filters in enumerate((16, 32, 64, 128)):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{i + 1}_conv")(x)
        x = layers.BatchNormalization(name=f"block{i + 1}_bn")(x)
        x = layers.Activation("relu", name=f"block{i + 1}_relu")(x)
        if i < 3:
            x = layers.MaxPooling2D(2, name=f"block{i + 1}_pool")(x)
            x = layers.Dropout(0.1, name=f"block{i + 1}_drop")(x)
    model = keras.Model(inp, x, name="small_cnn")
    if weights is not None:
        model.load_weights(weights)
    return model


@register("mobilenet_v2", scaling="tf")
def mobilenet_v2(shape, weights=None):
    return _application(keras.applications.MobileNetV2, shape, weights)


@register("densenet121", scaling="torch")
def densenet121(shape, weights=None):
    return _application(keras.applications.DenseNet121, shape, weights)


@register("resnet50", scaling="caffe")
def resnet50(shape, weights=None):
    return _application(keras.applications.ResNet50, shape, weights)


@register("vgg16", scaling="caffe")
def vgg16(shape, weights=None):
    return _application(keras.applications.VGG16, shape, weights)


@register("efficientnet_b0", scaling="raw255")
def efficientnet_b0(shape, weights=None):
    return _application(keras.applications.EfficientNetB0, shape, weights)


# --- pieces around the backbone -----------------------------------------------------------------------------
def backbone_channels(cfg: ClassifierConfig) -> int:
    """Channels the backbone sees: 3 whenever pretrained weights are given to an ImageNet family."""
    spec = _backbone_spec(cfg.backbone)
    if cfg.weights.lower() != "none" and spec.pretrainable:
        return 3
    if cfg.channels not in (1, 3):
        raise ConfigError(f"classifier.channels: expected 1 or 3, got {cfg.channels}")
    return cfg.channels


def _backbone_spec(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ConfigError(f"classifier.backbone: unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name]


def _scaling_layers(x, scaling: str, channels: int):
    """Crop values in [0, 1] -> what the backbone family expects."""
    if scaling == "tf":
        return layers.Rescaling(2.0, offset=-1.0, name="scale_to_pm1")(x)
    if scaling == "raw255":
        return layers.Rescaling(255.0, name="scale_to_255")(x)
    if scaling == "caffe":
        mean = list(_CAFFE_MEAN_BGR) if channels == 3 else [sum(_CAFFE_MEAN_BGR) / 3]
        x = layers.Rescaling(255.0, name="scale_to_255")(x)
        return layers.Normalization(mean=mean, variance=[1.0] * channels, name="imagenet_mean")(x)
    if scaling == "torch":
        mean = list(_TORCH_MEAN) if channels == 3 else [sum(_TORCH_MEAN) / 3]
        var = [s * s for s in _TORCH_STD] if channels == 3 else [(sum(_TORCH_STD) / 3) ** 2]
        return layers.Normalization(mean=mean, variance=var, name="imagenet_norm")(x)
    raise ValueError(f"unknown scaling {scaling!r}")


def _load_backbone(cfg: ClassifierConfig, shape) -> keras.Model:
    spec = _backbone_spec(cfg.backbone)
    w = cfg.weights.strip()
    if w.lower() == "none":
        return spec.build(shape, None)
    if w.lower() == "imagenet-offline":  # torchvision's ImageNet tensors from the offline store (issue 8)
        from classifier.imagenet_mobilenet import offline_backbone

        return offline_backbone(cfg.backbone, shape)
    if w.lower() == "imagenet":
        if not spec.pretrainable:
            raise ConfigError(f"classifier.weights: '{cfg.backbone}' has no ImageNet weights; use 'none' or a file")
        try:
            return spec.build(shape, "imagenet")
        except Exception as exc:  # keras raises a bare Exception('URL fetch failure ...') offline
            raise WeightsError("imagenet", (
                f"could not load ImageNet weights for {cfg.backbone} ({exc}). This machine cannot download them. "
                f"On a machine with network, build keras.applications with include_top=False, weights='imagenet' "
                f"once, copy the '*_notop.h5' / '*_no_top.h5' file it saves under ~/.keras/models/, and pass it "
                f"here as classifier.weights=/path/to/that.h5 (or use classifier.weights=none to train from "
                f"scratch).")) from None
    path = Path(w)
    if not path.is_file():
        raise WeightsError(path, "weights file not found (classifier.weights takes 'none', 'imagenet' or a path)")
    try:
        return spec.build(shape, str(path))
    except Exception as exc:
        raise WeightsError(path, f"could not load into {cfg.backbone} with input {shape}: {exc}") from None


def _fast_batchnorm(backbone: keras.Model, momentum: float = 0.9) -> None:
    """From scratch, a run has a few hundred steps: BatchNorm moving statistics with keras.applications'
    momentum 0.999 would still be far from the data at the end, and validation would see a near-constant
    output (measured: auROC 0.5 after an epoch of MobileNetV2). 0.9 follows within about 20 steps."""
    for layer in backbone.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = momentum


def _freeze_early_layers(backbone: keras.Model, fraction: float) -> None:
    """Train only the last `fraction` of the backbone's layers (the ResNet50/VGG16 study's 50/60/70 %)."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"classifier.fine_tune_fraction: expected (0, 1], got {fraction}")
    n_frozen = int(round(len(backbone.layers) * (1.0 - fraction)))
    for layer in backbone.layers[:n_frozen]:
        layer.trainable = False


def is_offline_imagenet(cfg: ClassifierConfig) -> bool:
    return cfg.weights.strip().lower() == "imagenet-offline"


def set_trainable_fraction(backbone: keras.Model, cfg: ClassifierConfig) -> None:
    """Fine-tune the last `fine_tune_fraction` of the backbone. With offline ImageNet weights BatchNorm stays
    frozen (in inference mode): a few hundred crops give batch statistics too noisy to replace ImageNet's."""
    if is_offline_imagenet(cfg):
        from classifier.imagenet_mobilenet import unfreeze_last_fraction

        unfreeze_last_fraction(backbone, cfg.fine_tune_fraction)
    else:
        _freeze_early_layers(backbone, cfg.fine_tune_fraction)


def _head(x, cfg: ClassifierConfig):
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    if cfg.head == "gap":
        x = layers.Dropout(cfg.dropout, name="head_dropout")(x)
    elif cfg.head == "dense":  # the VGG16 study's head
        x = layers.Dense(cfg.dense_units, activation="relu", name="head_dense1")(x)
        x = layers.BatchNormalization(name="head_bn1")(x)
        x = layers.Dropout(0.5, name="head_dropout1")(x)
        x = layers.Dense(max(1, cfg.dense_units // 2), activation="relu", name="head_dense2")(x)
        x = layers.BatchNormalization(name="head_bn2")(x)
        x = layers.Dropout(0.3, name="head_dropout2")(x)
    else:
        raise ConfigError(f"classifier.head: expected 'gap' or 'dense', got {cfg.head!r}")
    x = layers.Dense(1, name="logit")(x)
    return layers.Activation("sigmoid", name="malignancy", dtype="float32")(x)


def build_model(cfg: ClassifierConfig) -> keras.Model:
    """The full classifier for `cfg`: input (S, S, 1) crops in [0, 1], output (N, 1) P(malignant)."""
    spec = _backbone_spec(cfg.backbone)
    channels = backbone_channels(cfg)
    size = int(cfg.input_size)
    backbone = _load_backbone(cfg, (size, size, channels))
    backbone.name = "backbone"  # one fixed name: Grad-CAM and fine-tuning look it up
    if cfg.weights.lower() == "none":
        _fast_batchnorm(backbone)
    set_trainable_fraction(backbone, cfg)

    inp = keras.Input((size, size, 1), name="crop")
    x = inp
    if channels == 3:
        x = layers.Concatenate(name="grey_to_rgb")([inp, inp, inp])
    # torchvision's weights expect ImageNet mean/std, whatever the keras family of the same name uses
    x = _scaling_layers(x, "torch" if is_offline_imagenet(cfg) else spec.scaling, channels)
    x = backbone(x)
    return keras.Model(inp, _head(x, cfg), name=f"classifier_{cfg.backbone}")


def make_optimizer(cfg: ClassifierConfig):
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(cfg.learning_rate)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(cfg.learning_rate, momentum=cfg.momentum, nesterov=True)
    raise ConfigError(f"classifier.optimizer: expected 'adam' or 'sgd', got {cfg.optimizer!r}")
