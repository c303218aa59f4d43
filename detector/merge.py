"""Merging the boxes of overlapping tiles: a lesion near a tile border is seen by two or four tiles.

First, cut-off views go: a box that touches a tile edge inside the image (the lesion runs on past it) is dropped
when a box that is not cut off covers most of it (intersection over the cut box's area >= 0.5); with an
overlap wider than a lesion, some tile sees it whole. Then overlapping boxes are merged, in ORIGINAL pixels,
class by class:
- 'nms': keep the highest-scoring box of each overlapping group (torchvision's batched NMS).
- 'wbf': weighted box fusion (ensemble-boxes): average the group's coordinates weighted by score. All tiles
  are one 'model' for it and the fused score is the group's maximum: a lesion cut by a tile border scores
  lower in that tile, which must not pull down the score of the tile that saw it whole.
"""
from __future__ import annotations

import warnings

import numpy as np

from detector.frames import normalizer
from mammo.config import MERGES as METHODS

NESTED_COVER = 0.7  # two boxes whose intersection is >= this share of the smaller one show one finding


def merge_boxes(boxes, scores, labels, shape: tuple[int, int], method: str = "wbf", iou: float = 0.5,
                cut=None):
    """(boxes (N, 4), scores (N,), labels (N,) int) -> merged, sorted by score; `shape` (h, w) of the grid;
    `cut` (N,) bool marks boxes cut off by a tile edge (None: none is)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if cut is not None and len(boxes):
        keep = ~covered_cut_views(boxes, labels, np.asarray(cut, dtype=bool))
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    if len(boxes) == 0:
        return boxes, scores, labels
    if method == "nms":
        import torch
        from torchvision.ops import batched_nms

        keep = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), iou).numpy()
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    elif method == "wbf":
        from ensemble_boxes import weighted_boxes_fusion

        to_unit = normalizer(shape)
        unit = np.clip(to_unit.apply_boxes(boxes), 0.0, 1.0)
        with warnings.catch_warnings():  # it warns about zero-area boxes, which it drops: fine here
            warnings.simplefilter("ignore")
            fused, scores, fused_labels = weighted_boxes_fusion([unit.tolist()], [scores.tolist()],
                                                                [labels.tolist()], iou_thr=iou,
                                                                skip_box_thr=0.0, conf_type="max")
        boxes = to_unit.inverse().apply_boxes(np.asarray(fused, dtype=np.float64).reshape(-1, 4))
        scores = np.asarray(scores, dtype=np.float64)
        labels = np.asarray(fused_labels).astype(np.int64)
    else:
        raise ValueError(f"detector.merge must be one of {METHODS}, got {method!r}")
    order = np.argsort(-scores, kind="stable")
    return boxes[order], scores[order], labels[order]


def cover_matrix(boxes: np.ndarray) -> np.ndarray:
    """(N, N): the share of box i's area inside box j."""
    tl = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
    br = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = np.clip(br - tl, 0, None).prod(axis=2)  # (N, N)
    area = (boxes[:, 2:] - boxes[:, :2]).clip(0).prod(axis=1)
    return inter / np.maximum(area[:, None], 1e-12)


def suppress_nested(boxes, scores, min_cover: float = NESTED_COVER) -> np.ndarray:
    """Indices to keep, highest score first: NMS over the kept set, class-agnostic, with intersection over the
    SMALLER box instead of IoU. Per-class NMS at IoU 0.5 keeps a box nested in another (IoU of a box inside
    one twice its size is 0.5 at most), and the two then get contradictory malignancy on one finding."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float64).reshape(-1), kind="stable")
    cover = cover_matrix(boxes)
    near = np.maximum(cover, cover.T) >= min_cover  # either box mostly inside the other
    keep: list[int] = []
    for i in order:
        if not any(near[i, k] for k in keep):
            keep.append(int(i))
    return np.array(keep, dtype=np.int64)


def covered_cut_views(boxes: np.ndarray, labels: np.ndarray, cut: np.ndarray, min_cover: float = 0.5) -> np.ndarray:
    """(N,) bool: cut-off boxes mostly covered by a whole box of the same class."""
    cover = cover_matrix(boxes)  # share of box i inside box j
    whole_same_class = (~cut)[None, :] & (labels[:, None] == labels[None, :])
    return cut & ((cover >= min_cover) & whole_same_class).any(axis=1)
