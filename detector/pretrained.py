"""Detector models with an ImageNet-pretrained torchvision backbone (detector/mobilenet_v2_yolo.yaml), offline.

    from detector.pretrained import build_yolo
    model = build_yolo(cfg.model)           # instead of YOLO(cfg.model) for a model YAML, then .train(...)
or, where the YOLO object is made elsewhere:
    check_model_yaml(cfg.model)             # (mammo.weights_store) BEFORE YOLO(cfg.model) builds it
    model = YOLO(cfg.model); prepare_pretrained(model)

Two things go wrong without it:
- a missing weights file: torchvision would try to download it and fail with a bare URL error; this checks the
  offline store first (verified SHA-256) and raises a WeightsError naming the install command.
- ultralytics sets every BatchNorm2d it builds to eps 1e-3 (`initialize_weights`), the pretrained backbone's
  too. torchvision's MobileNetV2 was trained with eps 1e-5 and has channels with running variances far below
  1e-3: measured on grace_hopper.jpg, eps 1e-3 turns its logits' correlation with the original to 0.17 (top-1
  lost). So the backbone's BatchNorm eps is put back, on the model and on the trainer's rebuilt model and EMA
  copy. (Momentum stays ultralytics' 0.03, a training choice, not part of the pretrained function.)
A trained .pt pickles the modules with their eps, so loading one (detector.checkpoint) needs none of this.
"""
from __future__ import annotations

from mammo.weights_store import check_model_yaml

TORCHVISION_BN_EPS = 1e-5


def restore_torchvision_batchnorm(model) -> int:
    """Set eps back to torchvision's on every BatchNorm2d inside ultralytics `TorchVision` layers of `model`
    (a YOLO, a DetectionModel or any nn.Module); returns how many were changed."""
    import torch
    from ultralytics.nn.modules.block import TorchVision

    module = getattr(model, "model", model)  # YOLO wraps the DetectionModel
    n = 0
    for tv in (m for m in module.modules() if isinstance(m, TorchVision)):
        for bn in (m for m in tv.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            n += bn.eps != TORCHVISION_BN_EPS
            bn.eps = TORCHVISION_BN_EPS
    return n


def _on_pretrain_routine_end(trainer) -> None:
    # The trainer builds its own model from the YAML (initialize_weights again) and an EMA copy of it.
    restore_torchvision_batchnorm(trainer.model)
    if getattr(trainer, "ema", None) is not None:
        restore_torchvision_batchnorm(trainer.ema.ema)


def prepare_pretrained(yolo) -> None:
    """Keep the pretrained backbone's BatchNorm as trained, now and in training (a callback on the YOLO object).
    Harmless for models without a TorchVision layer."""
    restore_torchvision_batchnorm(yolo)
    yolo.add_callback("on_pretrain_routine_end", _on_pretrain_routine_end)


def build_yolo(model_spec):
    """YOLO(model_spec) for a model YAML, with the offline weights checked first (building the TorchVision layer
    loads them, and would try a download without them) and the backbone's BatchNorm kept as pretrained."""
    check_model_yaml(model_spec)
    from ultralytics import YOLO

    from detector.checkpoint import install

    install()  # the model is built in ultralytics' restricted mode; what it trains is reloaded safely

    yolo = YOLO(str(model_spec))
    prepare_pretrained(yolo)
    return yolo
