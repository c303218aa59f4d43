"""Paste per-crop Grad-CAM maps back into one heatmap over the ORIGINAL image grid (per-pixel maximum).

Each crop carries its Transform (original -> crop); the map is warped through the inverse, and only over the
crop's footprint, so the cost grows with the lesion's size, not with the mammogram's.
"""
from __future__ import annotations

import math

import numpy as np

from mammo.geometry import Transform


class HeatmapCanvas:
    """A float32 canvas over the original grid, optionally at 1/`downscale` of its size."""

    def __init__(self, original_shape: tuple[int, int], downscale: int = 1):
        h, w = original_shape
        self.shape = (max(1, math.ceil(h / downscale)), max(1, math.ceil(w / downscale)))
        self.original_to_canvas = Transform.resize((h, w), self.shape)
        self.pixels = np.zeros(self.shape, dtype=np.float32)
        self.painted = None  # (x0, y0, x1, y1): the bounding box of everything pasted; zero outside it

    def paste_max(self, cam: np.ndarray, original_to_crop: Transform) -> None:
        crop_to_canvas = original_to_crop.inverse().then(self.original_to_canvas)
        ch, cw = cam.shape[:2]
        x1, y1, x2, y2 = crop_to_canvas.apply_boxes([[0, 0, cw, ch]])[0]
        x0, y0 = max(0, math.floor(x1)), max(0, math.floor(y1))
        xe, ye = min(self.shape[1], math.ceil(x2)), min(self.shape[0], math.ceil(y2))
        if xe <= x0 or ye <= y0:
            return  # the crop lies entirely outside the image (only padding)
        to_window = crop_to_canvas.then(Transform.crop(x0, y0, xe - x0, ye - y0))
        patch = to_window.warp(cam.astype(np.float32), (ye - y0, xe - x0))
        region = self.pixels[y0:ye, x0:xe]
        np.maximum(region, patch, out=region)
        p = self.painted or (x0, y0, xe, ye)
        self.painted = (min(p[0], x0), min(p[1], y0), max(p[2], xe), max(p[3], ye))

    def as_uint16(self) -> np.ndarray:
        # only the painted box is converted: on a full-size scan the rest is millions of zeros (~0.3 s saved)
        out = np.zeros(self.shape, dtype=np.uint16)
        if self.painted is not None:
            x0, y0, x1, y1 = self.painted
            out[y0:y1, x0:x1] = np.round(np.clip(self.pixels[y0:y1, x0:x1], 0, 1) * 65535)
        return out
