"""Calcification-cluster candidates by classical image processing: boxes for the classifier beside the detector's.

Calcifications are 0.1-1 mm bright specks; at 200 micron (mini-MIAS) that is 1-5 pixels, and the detector's
letterbox shrinks them further, so the network rarely sees them. This finds them at the frame's own resolution:

1. bright spots: white top-hat (image minus its opening by a square wider than the largest calcification) of the
   lightly smoothed frame; a spot is a connected region whose response stands `calc_spot_k` robust standard
   deviations above the breast's median response, the SD measured around it (`local_noise`: textured film and
   dense tissue differ several-fold);
2. spots larger than a calcification (masses, vessels, ducts: any side > 1.5 x `calc_max_spot_mm`) are dropped;
3. spots are linked when their centres are at most `calc_cluster_mm` / 2 apart (single linkage), and a group
   of >= `calc_min_spots` is a cluster (clinically: >= 3-5 calcifications within 1 cm^2);
4. each cluster is boxed (padded by `PAD_MM`) and scored in (0, 1) by a fixed monotone map of its number of
   spots and their contrast: `cluster_score`.

Every parameter is physical (millimetres, via the pixel spacing) or a clinical definition; none is fitted to
labels. Pure numpy / OpenCV: no training, nothing downloaded. Boxes are mapped back through the frame's recorded
transform (`Frame.to_original_boxes`), so they are in ORIGINAL pixels like the detector's.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from mammo.config import DetectorConfig
from mammo.preprocess import Frame, breast_mask, resize
from mammo.records import Detection

from detector.frames import clip_to_shape

LABEL = "calcification"
MIN_SPOT_MM = 0.1  # smallest calcification: the smoothing scale (never below half a pixel)
WORK_MM = 0.1  # finer frames are resampled to this spacing: a 0.1 mm speck still covers a pixel
PAD_MM = 1.0  # margin around a cluster's spots, so that its box holds them and a little context
MAX_SPOTS = 4000  # strongest spots kept per image: bounds the clustering on noisy images
NOISE_WINDOW_MM = 5.0  # the local background a speck is compared with (half a cluster's extent)
MIN_NOISE = 1.0 / 1024  # floor of the robust noise level: a flat image gives no spots, not a division by ~0


@dataclass(frozen=True)
class Spot:
    x: float  # centroid in frame pixels
    y: float
    half: float  # half of the spot's larger side, frame pixels
    z: float  # peak response in robust standard deviations above the breast's median


def spacing_in_frame(frame: Frame, spacing_mm: float) -> float:
    """Millimetres per frame pixel: the original spacing divided by the frame's scale (crops and flips keep it)."""
    sx, sy = frame.transform.scale
    return float(spacing_mm) / float(np.sqrt(sx * sy))


def local_noise(response: np.ndarray, mask: np.ndarray, mm: float) -> tuple[float, np.ndarray]:
    """The breast's median top-hat response, and the robust noise level of the response around each pixel (a
    window of +-NOISE_WINDOW_MM): textured film, the skin line and dense tissue differ several-fold, and a speck
    must stand out from its own surroundings. Mean absolute deviation x sqrt(pi / 2) (= the SD for Gaussian
    noise) of the response clipped at 3 global robust SDs (so calcifications do not raise their own noise),
    averaged inside the breast only; never below half the breast's global level (quantised smooth film would
    otherwise make 1-grey-level bumps significant)."""
    inside = response[mask]
    median = float(np.median(inside))
    glob = max(1.4826 * float(np.median(np.abs(inside - median))), MIN_NOISE)
    dev = np.minimum(np.abs(response - median), 3 * glob) * mask
    window = (2 * int(round(NOISE_WINDOW_MM / mm)) + 1,) * 2  # a box filter: its cost does not grow with the window
    weight = cv2.boxFilter(mask.astype(np.float32), -1, window)
    local = np.sqrt(np.pi / 2) * cv2.boxFilter(dev.astype(np.float32), -1, window) / np.maximum(weight, 1e-3)
    return median, np.maximum(local, 0.5 * glob)


def find_spots(pixels: np.ndarray, mask: np.ndarray, mm: float, cfg: DetectorConfig) -> list[Spot]:
    """Bright specks of calcification size inside `mask`, strongest first (at most MAX_SPOTS)."""
    sigma = max(0.5, MIN_SPOT_MM / mm)
    smooth = cv2.GaussianBlur(pixels.astype(np.float32, copy=False), (0, 0), sigma)
    # a square wider than the largest calcification (a rectangle is separable: 10x faster than a disc)
    side = 2 * max(1, int(np.ceil(cfg.calc_max_spot_mm / mm))) + 1
    response = cv2.morphologyEx(smooth, cv2.MORPH_TOPHAT, np.ones((side, side), np.uint8))
    if not mask.any():
        return []
    median, noise = local_noise(response, mask, mm)
    z = (response - median) / noise
    spots = ((z >= cfg.calc_spot_k) & mask).astype(np.uint8)
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(spots, connectivity=8)
    if n <= 1:
        return []
    peak = np.zeros(n)
    np.maximum.at(peak, labels.ravel(), z.ravel())
    largest = 1.5 * cfg.calc_max_spot_mm / mm  # a spot's side in pixels; longer ones are vessels or masses
    sides = np.maximum(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT])
    keep = [i for i in range(1, n) if sides[i] <= largest]
    keep = sorted(keep, key=lambda i: -peak[i])[:MAX_SPOTS]
    return [Spot(float(centroids[i][0]), float(centroids[i][1]), float(sides[i]) / 2, float(peak[i])) for i in keep]


def group_spots(spots: list[Spot], shape: tuple[int, int], link_px: float) -> list[list[Spot]]:
    """Single-linkage groups: spots whose centres lie within `link_px` of each other (transitively). Discs of
    radius link_px / 2 around the centres touch exactly then; their connected components are the groups."""
    if not spots:
        return []
    canvas = np.zeros(shape, np.uint8)
    r = max(1, int(round(link_px / 2)))
    for s in spots:
        cv2.circle(canvas, (int(round(s.x)), int(round(s.y))), r, 1, thickness=-1)
    _, labels = cv2.connectedComponents(canvas, connectivity=8)
    groups: dict[int, list[Spot]] = {}
    h, w = shape
    for s in spots:
        groups.setdefault(int(labels[min(h - 1, int(round(s.y))), min(w - 1, int(round(s.x)))]), []).append(s)
    return list(groups.values())


def cluster_score(n_spots: int, mean_z: float, min_spots: int, spot_k: float) -> float:
    """Strength of a cluster in (0, 1), increasing in both its number of spots and their mean contrast: a
    cluster just at the definition (min_spots spots at the detection threshold) scores 0.25; twice as many
    spots or twice the contrast move it towards 1. Fixed, never fitted: it only has to rank clusters."""
    count = 1.0 - 0.5 ** (n_spots / min_spots)  # 0.5 at min_spots, 0.75 at twice that
    contrast = mean_z / (mean_z + spot_k)  # 0.5 at the threshold, -> 1 for strong specks
    return float(np.clip(count * contrast, 1e-6, 1 - 1e-6))


def calc_candidates(frame: Frame, spacing_mm: float, cfg: DetectorConfig = DetectorConfig(),
                    mask: np.ndarray | None = None) -> list[Detection]:
    """Calcification clusters on a preprocessed frame, as Detections in ORIGINAL pixels, highest score first, at
    most `cfg.calc_max_boxes`. `spacing_mm`: the original image's pixel spacing (or the configured fallback);
    `mask`: the breast in frame pixels (found with mammo.preprocess.breast_mask when not given)."""
    if not np.isfinite(spacing_mm) or spacing_mm <= 0:
        raise ValueError(f"pixel spacing must be a positive number of millimetres, got {spacing_mm!r}")
    pixels = frame.pixels
    if pixels.ndim != 2 or min(pixels.shape) < 8:
        return []
    mask = breast_mask(pixels) if mask is None else mask.astype(bool)
    mm = spacing_in_frame(frame, spacing_mm)
    if mm < WORK_MM:  # finer than needed (full-field scans): work at WORK_MM, 4-16x fewer pixels
        shape = (max(8, round(pixels.shape[0] * mm / WORK_MM)), max(8, round(pixels.shape[1] * mm / WORK_MM)))
        pixels, step = resize(pixels, shape)
        frame = frame.then(pixels, step)  # boxes still map back to original pixels through the frame
        mask = cv2.resize(mask.astype(np.uint8), shape[::-1], interpolation=cv2.INTER_NEAREST).astype(bool)
        mm = spacing_in_frame(frame, spacing_mm)
    # the skin line and the crop border are bright edges to a top-hat: stay a spot's width inside the breast
    erode = max(1, int(np.ceil(2 * cfg.calc_max_spot_mm / mm)))
    mask = cv2.erode(mask.astype(np.uint8), np.ones((2 * erode + 1,) * 2, np.uint8), borderValue=0).astype(bool)
    spots = find_spots(pixels, mask, mm, cfg)
    pad = PAD_MM / mm
    boxes, scores = [], []
    for group in group_spots(spots, pixels.shape[:2], cfg.calc_cluster_mm / 2 / mm):
        if len(group) < cfg.calc_min_spots:
            continue
        xs, ys = np.array([s.x for s in group]), np.array([s.y for s in group])
        half = np.array([s.half for s in group])
        boxes.append([(xs - half).min() - pad, (ys - half).min() - pad, (xs + half).max() + pad,
                      (ys + half).max() + pad])
        scores.append(cluster_score(len(group), float(np.mean([s.z for s in group])), cfg.calc_min_spots,
                                    cfg.calc_spot_k))
    if not boxes:
        return []
    order = np.argsort(-np.asarray(scores), kind="stable")[: cfg.calc_max_boxes]
    original = clip_to_shape(frame.to_original_boxes(np.asarray(boxes)[order]),
                             frame.transform.src_shape or pixels.shape[:2])
    return [Detection(tuple(float(v) for v in b), float(scores[i]), LABEL) for b, i in zip(original, order)]
