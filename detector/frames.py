"""How a preprocessed frame becomes the detector's input: one place, so that the images a model is trained on
and the images it predicts on are made by the same code (same letterbox, same padding, same 8-bit rounding).

Every input is a `Frame`, whose transform maps ORIGINAL pixels to the input's pixels: boxes found in an input
go back with `frame.to_original_boxes` and nothing else.
"""
from __future__ import annotations

import cv2
import numpy as np

from mammo.geometry import Transform
from mammo.preprocess import Frame, letterbox, resize, tile_windows


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8, rounded: what a PNG of the training set holds and what prediction is fed."""
    return np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)


def letterbox_input(frame: Frame, imgsz: int) -> Frame:
    """The whole frame scaled into an imgsz x imgsz square (black padding, like the film background).

    ultralytics' own letterbox then meets a square of exactly its size, so it is the identity: our transform
    is the whole story (checked by the round-trip tests).
    """
    pixels, step = letterbox(frame.pixels, imgsz, fill=0.0)
    return frame.then(to_uint8(pixels), step)


def tile_inputs(frame: Frame, tile: int, overlap: float, scale: float) -> list[Frame]:
    """Overlapping tile x tile windows over the frame resized by `scale`; windows past the border are padded
    black. Small lesions stay larger than in a letterbox of a big image."""
    h, w = frame.pixels.shape[:2]
    shape = (max(1, round(h * scale)), max(1, round(w * scale)))
    pixels, step = resize(frame.pixels, shape)
    work = frame.then(to_uint8(pixels), step)
    tiles = []
    for window in tile_windows(shape, tile, overlap):
        # a pure integer translation: nearest-neighbour warping copies pixels exactly and pads outside
        tile_pixels = window.warp(work.pixels, interpolation=cv2.INTER_NEAREST, border_value=0)
        tiles.append(work.then(tile_pixels, window))
    return tiles


def clip_to_shape(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Clip [x1, y1, x2, y2] boxes to a (height, width) grid (letterbox padding maps outside the image)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, shape[1])
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, shape[0])
    return b


def normalizer(shape: tuple[int, int]) -> Transform:
    """Pixels of a (height, width) grid -> [0, 1] x [0, 1] (YOLO labels, weighted box fusion)."""
    return Transform.resize(tuple(shape), (1, 1))
