"""The ONE crop function: a box in original pixels -> a square crop around it, plus the Transform back.

Training, inference and export all call `crop_roi`, so a model always sees crops made the same way, and any
point of a crop (a Grad-CAM peak, a whole heatmap) maps back to the original image with `transform.inverse()`.

The window is a square centred on the box, of side `max(box w, box h) * (1 + 2 * margin)` (the margin is a
fraction of the box size added on each side); parts of it outside the image are padded with 0 (background is
dark on a mammogram). The returned Transform is exactly that window stretched onto `size x size`: the pixels
are produced in three steps (integer window copy, area-resize, sub-pixel residual warp) only because a single
bilinear warp aliases when a large lesion is shrunk; the steps compose back to the same exact map.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from mammo.geometry import Transform


def roi_window(box, margin: float) -> tuple[float, float, float]:
    """(x0, y0, side): the square window of a box with a context margin, in the box's pixel grid."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"empty or inverted box {box}")
    side = max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin)
    return (x1 + x2) / 2 - side / 2, (y1 + y2) / 2 - side / 2, side


def roi_transform(box, margin: float, size: int, image_shape=None) -> Transform:
    """The exact map original -> crop for `box` (what `crop_roi` returns, without touching pixels)."""
    x0, y0, side = roi_window(box, margin)
    s = size / side
    return Transform.scale_translate(s, -x0 * s, -y0 * s, tuple(image_shape) if image_shape else None,
                                     (int(size), int(size)))


def crop_roi(pixels: np.ndarray, box, margin: float, size: int) -> tuple[np.ndarray, Transform]:
    """A float32 [size, size] crop around `box` ([x1, y1, x2, y2], original pixels) and the Transform
    original -> crop. Areas outside the image are 0."""
    h, w = pixels.shape[:2]
    target = roi_transform(box, margin, size, (h, w))
    x0, y0, side = roi_window(box, margin)
    # 1. integer window around the square, a few pixels wider so that interpolation at the crop's edge reads
    #    image, not padding (padded with 0 only where it leaves the image): an exact copy
    scale = size / side
    extra = 2 + math.ceil(1.0 / scale)
    ix0, iy0 = math.floor(x0) - extra, math.floor(y0) - extra
    iw, ih = math.ceil(x0 + side) + extra - ix0, math.ceil(y0 + side) + extra - iy0
    step = Transform.crop(ix0, iy0, iw, ih, src_shape=(h, w))
    patch = _copy_window(pixels, ix0, iy0, iw, ih)
    # 2. shrink with area averaging when the window is larger than the crop (keeps calcifications visible)
    if scale < 0.9:
        rw, rh = max(1, round(iw * scale)), max(1, round(ih * scale))
        patch = cv2.resize(patch, (rw, rh), interpolation=cv2.INTER_AREA)
        step = step.then(Transform.resize((ih, iw), (rh, rw)))
    # 3. the remaining sub-pixel shift and near-unit scale, as one bilinear warp
    residual = step.inverse().then(target)
    crop = residual.warp(patch, (int(size), int(size)), interpolation=cv2.INTER_LINEAR, border_value=0.0)
    return crop.astype(np.float32, copy=False), target


def _copy_window(pixels: np.ndarray, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """pixels[y0:y0+h, x0:x0+w] with zero padding where the window leaves the image."""
    H, W = pixels.shape[:2]
    out = np.zeros((h, w), dtype=np.float32)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = pixels[sy0:sy1, sx0:sx1]
    return out


def jitter_box(box, rng: np.random.Generator, amount: float) -> tuple[float, float, float, float]:
    """A box shifted by up to `amount` of its size and rescaled by up to a factor (1 + amount), uniformly:
    training crops then vary as much as detector boxes do around a lesion."""
    x1, y1, x2, y2 = (float(v) for v in box)
    bw, bh = x2 - x1, y2 - y1
    cx = (x1 + x2) / 2 + rng.uniform(-amount, amount) * bw
    cy = (y1 + y2) / 2 + rng.uniform(-amount, amount) * bh
    k = math.exp(rng.uniform(-1, 1) * math.log1p(amount))
    return cx - k * bw / 2, cy - k * bh / 2, cx + k * bw / 2, cy + k * bh / 2
