"""Preprocessing as pure functions. Each geometric step returns (pixels, Transform from its input to its output).

`preprocess` chains the configured steps into a `Frame` whose `transform` maps ORIGINAL pixels to the frame, so
`frame.to_original_boxes(boxes)` is the single way back for anything found in the frame.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from mammo.config import PreprocessConfig
from mammo.geometry import Transform
from mammo.records import Mammogram

MASK_WORKING_SIZE = 512  # the mask is found on a downscaled copy: 20x faster and smoother on full-size scans


@dataclass
class Frame:
    """Processed pixels plus the recorded geometry from the original grid to them."""

    pixels: np.ndarray  # float32 [0, 1]
    transform: Transform  # original -> frame
    flipped: bool = False

    def to_original_boxes(self, boxes) -> np.ndarray:
        return self.transform.inverse().apply_boxes(boxes)

    def to_original_points(self, points) -> np.ndarray:
        return self.transform.inverse().apply(points)

    def then(self, pixels: np.ndarray, step: Transform) -> "Frame":
        """A new frame after one more geometric step."""
        return Frame(pixels, self.transform.then(step), self.flipped)


def breast_mask(pixels: np.ndarray) -> np.ndarray:
    """Boolean mask of the breast: the largest bright connected region, holes filled.

    Background is dark (film base or air) and the breast is the largest object; labels and markers are small
    separate bright blobs. A morphological opening cuts thin bridges between them and the breast.
    """
    h, w = pixels.shape
    scale = MASK_WORKING_SIZE / max(h, w)
    small = cv2.resize(pixels.astype(np.float32, copy=False), (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_AREA)
    small8 = np.clip(small * 255, 0, 255).astype(np.uint8)
    small8 = cv2.GaussianBlur(small8, (5, 5), 0)
    otsu, _ = cv2.threshold(small8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # Otsu splits background from dense tissue and cuts into fatty tissue at the skin line; half of it keeps
    # the fat while staying above the noise of the background.
    raw = (small8 > max(otsu * 0.5, 4)).astype(np.uint8)
    binary = cv2.morphologyEx(raw, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))
    # Scanners leave bright frame lines along the image border that would join breast and labels into one
    # region: find the breast without a thin border band, then give it back the band where it touches it.
    band = max(2, round(0.01 * max(small8.shape)))
    inner = binary.copy()
    inner[:band], inner[-band:], inner[:, :band], inner[:, -band:] = 0, 0, 0, 0
    n, labels, stats, _ = cv2.connectedComponentsWithStats(inner, connectivity=8)
    if n <= 1:
        return np.ones((h, w), dtype=bool)  # nothing stands out from the background: keep the whole image
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    component = (labels == largest).astype(np.uint8)
    near = cv2.dilate(component, np.ones((2 * band + 1, 2 * band + 1), np.uint8))
    in_band = np.ones_like(component)
    in_band[band:-band, band:-band] = 0
    component |= near & raw & in_band
    # Fill holes: flood the background from the border; whatever the flood cannot reach is inside the breast.
    padded = np.pad(component, 1)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 1)
    filled = component | (1 - flood[1:-1, 1:-1])
    return cv2.resize(filled, (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)


def crop_to_mask(pixels: np.ndarray, mask: np.ndarray, margin: int = 0) -> tuple[np.ndarray, Transform]:
    """Crop to the bounding box of `mask` plus `margin` pixels, clipped to the image."""
    # any() per row and column, not nonzero(): 2 ms instead of 200 ms on a 4500 x 2800 scan
    ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    h, w = pixels.shape[:2]
    if len(xs) == 0:
        return pixels, Transform.identity((h, w))
    x0, x1 = max(0, xs[0] - margin), min(w, xs[-1] + 1 + margin)
    y0, y1 = max(0, ys[0] - margin), min(h, ys[-1] + 1 + margin)
    return pixels[y0:y1, x0:x1], Transform.crop(x0, y0, x1 - x0, y1 - y0, src_shape=(h, w))


def chest_wall_side(pixels: np.ndarray) -> str:
    """'left' or 'right': the side where the breast meets the chest wall (more tissue along that edge)."""
    w = pixels.shape[1]
    band = max(1, w // 8)
    return "left" if pixels[:, :band].mean() >= pixels[:, w - band:].mean() else "right"


def orient(pixels: np.ndarray, flip_to: str = "left") -> tuple[np.ndarray, Transform, bool]:
    """Mirror the image when needed so that the chest wall is on the `flip_to` side ('none' keeps it)."""
    shape = pixels.shape[:2]
    if flip_to == "none" or chest_wall_side(pixels) == flip_to:
        return pixels, Transform.identity(shape), False
    if flip_to not in ("left", "right"):
        raise ValueError(f"flip_to must be 'left', 'right' or 'none', got {flip_to!r}")
    return np.ascontiguousarray(pixels[:, ::-1]), Transform.hflip(shape), True


def clahe(pixels: np.ndarray, clip_limit: float = 2.0, tile_grid: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation on a 16-bit copy (finer than 8 bits for 12-bit data)."""
    op = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tile_grid, tile_grid))
    as16 = np.clip(pixels * 65535.0, 0, 65535).astype(np.uint16)
    return op.apply(as16).astype(np.float32) / 65535.0


def resize(pixels: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, Transform]:
    """Resize to (height, width); area interpolation when shrinking keeps small calcifications visible."""
    h, w = pixels.shape[:2]
    interp = cv2.INTER_AREA if shape[0] * shape[1] < h * w else cv2.INTER_LINEAR
    out = cv2.resize(pixels, (int(shape[1]), int(shape[0])), interpolation=interp)
    return out, Transform.resize((h, w), tuple(shape))


def letterbox(pixels: np.ndarray, size: int, fill: float = 0.0) -> tuple[np.ndarray, Transform]:
    """Scale the longer side to `size`, keep the aspect, pad the rest to a size x size square (centred)."""
    h, w = pixels.shape[:2]
    s = size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    scaled, _ = resize(pixels, (nh, nw))
    top, left = (size - nh) // 2, (size - nw) // 2
    out = np.full((size, size) + pixels.shape[2:], fill, dtype=pixels.dtype)
    out[top:top + nh, left:left + nw] = scaled
    # The exact map uses the per-axis scale of the rounded size, so boxes land within a pixel after round trips.
    step = Transform.resize((h, w), (nh, nw)).then(
        Transform.crop(-left, -top, size, size, src_shape=(nh, nw)))
    return out, step


def tile_windows(shape: tuple[int, int], tile: int, overlap: float) -> list[Transform]:
    """Crop transforms of overlapping tile x tile windows covering a (height, width) grid.

    Windows are spread evenly so that the last one ends at the border (no thin sliver tiles); a side smaller
    than `tile` gets one window that runs past the border (the caller pads).
    """
    h, w = shape

    def starts(length: int) -> list[int]:
        if length <= tile:
            return [0]
        stride = max(1, int(tile * (1 - overlap)))
        n = int(np.ceil((length - tile) / stride)) + 1
        return [round(i * (length - tile) / (n - 1)) for i in range(n)]

    return [Transform.crop(x, y, tile, tile, src_shape=(h, w)) for y in starts(h) for x in starts(w)]


def preprocess(mammogram: Mammogram, cfg: PreprocessConfig = PreprocessConfig()) -> Frame:
    """Crop to the breast, orient it, optionally equalise: the frame every stage starts from."""
    pixels = mammogram.pixels
    frame = Frame(pixels, Transform.identity(pixels.shape[:2]))
    if cfg.crop_breast:
        pixels, step = crop_to_mask(pixels, breast_mask(pixels), cfg.crop_margin)
        frame = frame.then(pixels, step)
    pixels, step, flipped = orient(frame.pixels, cfg.flip_to)
    frame = frame.then(pixels, step)
    frame.flipped = flipped
    if cfg.clahe:
        frame.pixels = clahe(frame.pixels, cfg.clahe_clip_limit, cfg.clahe_tile_grid)
    return frame
