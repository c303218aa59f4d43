"""Display pixels: a tile pyramid of the original image (any window/level), thumbnails, the coloured heatmap.

The viewer asks for 256-pixel JPEG tiles of a Deep-Zoom pyramid (level L is the image at 2^(L - max level), the
numbering OpenSeadragon uses). The original is read once with `read_mammogram` (modality/VOI LUT already applied,
[0, 1]) and kept as a 16-bit pyramid in a small in-memory LRU (a full-size 12.6 Mpixel scan: 34 MB); a tile is a
slice of one level with the reader's window applied, so moving the window/level costs only the tiles on screen.
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np

from mammo.atomic import atomic_path
from mammo.imaging import MAX_PIXELS, read_mammogram
from pipeline.render import colorize

TILE = 256
THUMB = 160  # thumbnail height in pixels
JPEG_QUALITY = 88


def max_level(width: int, height: int) -> int:
    return max(0, math.ceil(math.log2(max(width, height, 1))))


class Pyramid:
    """Levels of one image as uint16, built lazily by halving (area interpolation) from the full grid."""

    def __init__(self, pixels: np.ndarray):
        self.height, self.width = pixels.shape
        self.top = max_level(self.width, self.height)
        self.levels = {self.top: np.round(np.clip(pixels, 0, 1) * 65535).astype(np.uint16)}
        self._lock = threading.Lock()

    def level(self, level: int) -> np.ndarray:
        with self._lock:
            for above in range(self.top, level, -1):
                if above - 1 not in self.levels:
                    src = self.levels[above]
                    size = (max(1, math.ceil(src.shape[1] / 2)), max(1, math.ceil(src.shape[0] / 2)))
                    self.levels[above - 1] = cv2.resize(src, size, interpolation=cv2.INTER_AREA)
            return self.levels[level]

    def tile(self, level: int, col: int, row: int, center: float, width: float) -> np.ndarray:
        """uint8 pixels of one tile with the window (center, width on the [0, 1] scale) applied; ValueError when
        the tile does not exist."""
        if not 0 <= level <= self.top:
            raise ValueError(f"level {level} outside 0..{self.top}")
        pixels = self.level(level)
        y0, x0 = row * TILE, col * TILE
        if col < 0 or row < 0 or y0 >= pixels.shape[0] or x0 >= pixels.shape[1]:
            raise ValueError(f"tile {col},{row} outside level {level}")
        return apply_window(pixels[y0:y0 + TILE, x0:x0 + TILE], center, width)


def apply_window(pixels16: np.ndarray, center: float, width: float) -> np.ndarray:
    lo = (center - width / 2) * 65535
    scale = 255.0 / max(width * 65535, 1.0)
    return np.clip((pixels16.astype(np.float32) - lo) * scale, 0, 255).astype(np.uint8)


def encode_jpeg(pixels: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return data.tobytes()


class PyramidCache:
    """At most `size` decoded images in memory; one reader per image at a time (concurrent tile requests for an
    image that is still being read wait for it instead of reading it again)."""

    def __init__(self, size: int = 3, max_pixels: int = MAX_PIXELS):
        self.size, self.max_pixels = size, max_pixels  # max_pixels: run.max_pixels, as for the analysis
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict = {}

    def get(self, key, source) -> Pyramid:
        """`source`: a function giving the original's path, called only when the image is not cached."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._items:
                    return self._items[key]
            pyramid = Pyramid(read_mammogram(source(), max_pixels=self.max_pixels).pixels)
            with self._lock:
                self._items[key] = pyramid
                self._loading.pop(key, None)
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
            return pyramid


def thumbnail(source, cache_file: Path, max_pixels: int = MAX_PIXELS) -> bytes:
    """A small JPEG of the whole image (`source`: a function giving the original's path; `max_pixels`:
    run.max_pixels), cached on disk in the run's state folder (written atomically)."""
    if cache_file.is_file():
        return cache_file.read_bytes()
    pixels = read_mammogram(source(), max_pixels=max_pixels).pixels
    h, w = pixels.shape
    small = cv2.resize(pixels, (max(1, round(w * THUMB / h)), THUMB), interpolation=cv2.INTER_AREA)
    data = encode_jpeg(np.round(np.clip(small, 0, 1) * 255).astype(np.uint8))
    with atomic_path(cache_file) as tmp:
        tmp.write_bytes(data)
    return data


def heatmap_rgba(path: Path) -> bytes:
    """The run's 16-bit Grad-CAM PNG as a colour PNG whose alpha is the heat (transparent where it is zero), so
    the viewer lays it over the image with an opacity of its own."""
    heat16 = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if heat16 is None:
        raise ValueError(f"{path.name}: not a readable heatmap")
    heat = heat16.astype(np.float32) / (65535.0 if heat16.dtype == np.uint16 else 255.0)
    bgra = np.dstack([colorize(heat), np.round(np.clip(heat * 1.5, 0, 1) * 255).astype(np.uint8)])
    ok, data = cv2.imencode(".png", bgra)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return data.tobytes()
