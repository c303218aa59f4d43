"""Recorded geometry: every crop, flip, resize, letterbox or tile offset is one affine `Transform`.

Coordinates are continuous pixel-corner coordinates: pixel (row r, col c) covers [c, c+1) x [r, r+1), so its
centre is (c + 0.5, r + 0.5) and an image of width W spans x in [0, W]. With that convention a resize by s is
exactly x' = s * x and a horizontal flip is exactly x' = W - x, which is why every other module may compose
steps without off-by-one fixes. Points are (x, y); boxes are [x1, y1, x2, y2] with a top-left origin.

Nothing outside this module does coordinate arithmetic: a stage gets a `Transform` from each geometric step,
composes them with `then`, and maps points, boxes and heatmaps with `apply`, `apply_boxes` and `warp`.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Transform:
    """A 2-D affine map from a source pixel grid to a destination pixel grid.

    `matrix` is 3x3 (last row 0 0 1). `src_shape` / `dst_shape` are (height, width) of the grids when known,
    so that `inverse().warp(...)` knows the size of the grid it pastes back into.
    """

    matrix: np.ndarray
    src_shape: tuple[int, int] | None = None
    dst_shape: tuple[int, int] | None = None

    def __post_init__(self):
        m = np.asarray(self.matrix, dtype=np.float64)
        if m.shape == (2, 3):
            m = np.vstack([m, [0.0, 0.0, 1.0]])
        if m.shape != (3, 3):
            raise ValueError(f"Transform matrix must be 2x3 or 3x3, got {m.shape}")
        m.setflags(write=False)
        object.__setattr__(self, "matrix", m)

    # --- constructors: one per geometric step -------------------------------------------------------------
    @classmethod
    def identity(cls, shape: tuple[int, int] | None = None) -> "Transform":
        return cls(np.eye(3), shape, shape)

    @classmethod
    def crop(cls, x0: float, y0: float, width: int, height: int,
             src_shape: tuple[int, int] | None = None) -> "Transform":
        """Cut the window whose top-left corner is (x0, y0); the window may reach outside the source (padding)."""
        m = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], dtype=np.float64)
        return cls(m, src_shape, (int(height), int(width)))

    @classmethod
    def hflip(cls, shape: tuple[int, int]) -> "Transform":
        """Mirror left-right within a grid of `shape` (height, width)."""
        w = shape[1]
        return cls(np.array([[-1, 0, w], [0, 1, 0], [0, 0, 1]], dtype=np.float64), shape, shape)

    @classmethod
    def vflip(cls, shape: tuple[int, int]) -> "Transform":
        h = shape[0]
        return cls(np.array([[1, 0, 0], [0, -1, h], [0, 0, 1]], dtype=np.float64), shape, shape)

    @classmethod
    def resize(cls, src_shape: tuple[int, int], dst_shape: tuple[int, int]) -> "Transform":
        """Stretch a grid of `src_shape` onto `dst_shape` (both (height, width)); aspect may change."""
        sy = dst_shape[0] / src_shape[0]
        sx = dst_shape[1] / src_shape[1]
        return cls(np.diag([sx, sy, 1.0]), tuple(src_shape), tuple(dst_shape))

    @classmethod
    def scale_translate(cls, scale: float, dx: float, dy: float, src_shape=None, dst_shape=None) -> "Transform":
        """x' = scale * x + dx (same for y): a letterbox is one of these."""
        m = np.array([[scale, 0, dx], [0, scale, dy], [0, 0, 1]], dtype=np.float64)
        return cls(m, src_shape, dst_shape)

    # --- algebra ---------------------------------------------------------------------------------------------
    def then(self, other: "Transform") -> "Transform":
        """The transform that applies `self` first and `other` second."""
        return Transform(other.matrix @ self.matrix, self.src_shape, other.dst_shape)

    def inverse(self) -> "Transform":
        return Transform(np.linalg.inv(self.matrix), self.dst_shape, self.src_shape)

    @property
    def scale(self) -> tuple[float, float]:
        """Length scale along x and y (absolute; flips do not change it)."""
        return float(np.hypot(*self.matrix[:2, 0])), float(np.hypot(*self.matrix[:2, 1]))

    # --- mapping ---------------------------------------------------------------------------------------------
    def apply(self, points) -> np.ndarray:
        """Map (N, 2) points (x, y); returns float64 (N, 2)."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return p @ self.matrix[:2, :2].T + self.matrix[:2, 2]

    def apply_boxes(self, boxes) -> np.ndarray:
        """Map (N, 4) boxes [x1, y1, x2, y2] to the axis-aligned boxes that enclose their mapped corners.

        Exact for the axis-aligned maps used here (crops, flips, scales): a flip swaps x1 and x2, and taking the
        min/max over the corners puts them back in order.
        """
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if len(b) == 0:
            return b.copy()
        corners = np.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [0, 3]], b[:, [2, 3]]], axis=1)  # (N, 4, 2)
        mapped = self.apply(corners.reshape(-1, 2)).reshape(-1, 4, 2)
        return np.concatenate([mapped.min(axis=1), mapped.max(axis=1)], axis=1)

    def warp(self, image: np.ndarray, dst_shape: tuple[int, int] | None = None, *,
             interpolation: int = cv2.INTER_LINEAR, border_value: float = 0.0) -> np.ndarray:
        """Resample `image` (on the source grid) onto the destination grid.

        OpenCV puts pixel centres at integer coordinates, ours at half-integers: conjugating by a half-pixel
        shift converts between the two.
        """
        dst_shape = dst_shape or self.dst_shape
        if dst_shape is None:
            raise ValueError("warp needs the destination shape (height, width)")
        shift = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
        unshift = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
        m_cv = (unshift @ self.matrix @ shift)[:2]
        return cv2.warpAffine(np.ascontiguousarray(image), m_cv, (int(dst_shape[1]), int(dst_shape[0])),
                              flags=interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=border_value)

    def to_dict(self) -> dict:
        return {"matrix": self.matrix[:2].tolist(), "src_shape": list(self.src_shape) if self.src_shape else None,
                "dst_shape": list(self.dst_shape) if self.dst_shape else None}

    @classmethod
    def from_dict(cls, d: dict) -> "Transform":
        return cls(np.asarray(d["matrix"]), tuple(d["src_shape"]) if d.get("src_shape") else None,
                   tuple(d["dst_shape"]) if d.get("dst_shape") else None)


def box_iou(a, b) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) boxes -> (N, M)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(br - tl, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def box_centers(boxes) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], axis=1)
