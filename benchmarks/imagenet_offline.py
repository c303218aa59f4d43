"""ImageNet weights offline: how exactly the Keras MobileNetV2 reproduces torchvision's, and what it costs.

    python benchmarks/imagenet_offline.py            # needs `python -m classifier weights install` once

Prints, on matplotlib's grace_hopper.jpg: top-1 class of torchvision and of the Keras port, their logits'
Pearson correlation and max abs difference; then the per-crop inference time (batch 32, 224x224, median of
several batches) of the pretrained Keras port and of keras.applications.MobileNetV2(weights=None), the scratch
model. Results also go to runs/benchmarks/imagenet_offline.json.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the project root first

import mammo.runtime  # noqa: E402  (the first import of anything that may load a framework)

import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from mammo.atomic import atomic_write_text  # noqa: E402


def grace_hopper_rgb(size=224) -> np.ndarray:
    import matplotlib.cbook as cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:  # ships with matplotlib
        return np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR), np.float32) / 255


def equivalence() -> dict:
    import torch
    import torchvision
    from classifier.imagenet_mobilenet import IMAGENET_MEAN, IMAGENET_STD, build_mobilenet_v2_torchvision_compatible
    from mammo.weights_store import imagenet_mobilenet_v2_path

    imagenet_mobilenet_v2_path()  # the clear error, before torchvision would try a download
    x = ((grace_hopper_rgb() - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD))[None]
    with torch.no_grad():
        ref = torchvision.models.mobilenet_v2(weights="IMAGENET1K_V1").eval()(
            torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()[0]
    out = np.asarray(build_mobilenet_v2_torchvision_compatible(include_top=True, weights_path="imagenet-offline")(
        x, training=False))[0]
    return {"top1_torchvision": int(ref.argmax()), "top1_keras": int(out.argmax()),
            "logits_correlation": float(np.corrcoef(ref, out)[0, 1]), "max_abs_diff": float(np.abs(ref - out).max())}


def per_crop_ms(model, size=224, batch=32, repeats=5) -> float:
    import tensorflow as tf

    x = np.random.default_rng(0).random((batch, size, size, 3)).astype(np.float32)
    f = tf.function(lambda t: model(t, training=False))
    f(x)  # trace and warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.asarray(f(x))
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times)) / batch


def main() -> int:
    import keras
    from classifier.imagenet_mobilenet import build_mobilenet_v2_torchvision_compatible

    mammo.runtime.configure_tensorflow()
    result = equivalence()
    print(f"grace_hopper.jpg: top-1 torchvision {result['top1_torchvision']} / keras {result['top1_keras']}, "
          f"logits correlation {result['logits_correlation']:.12f}, max abs diff {result['max_abs_diff']:.2e}")
    pretrained = build_mobilenet_v2_torchvision_compatible((224, 224, 3), weights_path="imagenet-offline")
    scratch = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(224, 224, 3))
    result["ms_per_crop_pretrained_port"] = per_crop_ms(pretrained)
    result["ms_per_crop_keras_scratch"] = per_crop_ms(scratch)
    print(f"inference per crop at 224 (batch 32): torchvision-compatible port "
          f"{result['ms_per_crop_pretrained_port']:.1f} ms, keras.applications scratch "
          f"{result['ms_per_crop_keras_scratch']:.1f} ms")
    out = mammo.runtime.RUN_ROOT / "benchmarks" / "imagenet_offline.json"
    atomic_write_text(out, json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
