"""Calcification-cluster candidates (detector/calc_candidates.py) on small synthetic mammograms."""
import mammo.runtime  # noqa: F401  (first: import order)

import dataclasses

import numpy as np
import pytest

from mammo.config import ConfigError, DetectorConfig, PreprocessConfig, load_config
from mammo.geometry import Transform
from mammo.preprocess import Frame, preprocess
from mammo.synthetic import draw_lesion, synthetic_mammogram

from detector.calc_candidates import LABEL, calc_candidates, cluster_score

SHAPE = (480, 360)


def speck(img, x, y, radius_px, value=0.35):
    """A calcification: a tiny disc brighter than the tissue around it by `value`."""
    yy, xx = np.ogrid[: img.shape[0], : img.shape[1]]
    disc = (xx + 0.5 - x) ** 2 + (yy + 0.5 - y) ** 2 <= radius_px ** 2
    img[disc] = np.clip(img[disc] + value, 0, 1)


def breast(side, seed=0, shape=SHAPE):
    m, _ = synthetic_mammogram(seed, shape=shape, n_lesions=0, side=side)
    return m


def inside_x(side, fraction, w=SHAPE[1]):
    """An x `fraction` of the width away from the chest wall (inside the synthetic breast)."""
    return fraction * w if side == "left" else (1 - fraction) * w


def detect(m, spacing_mm=0.2, cfg=DetectorConfig()):
    return calc_candidates(preprocess(m, PreprocessConfig()), spacing_mm, cfg)


@pytest.mark.parametrize("side", ["left", "right"])  # right: the frame is cropped AND flipped
@pytest.mark.parametrize("spacing_mm", [0.2, 0.1, 0.05])  # 0.05: resampled to WORK_MM first
@pytest.mark.parametrize("n_specks", [4, 9])
def test_a_drawn_cluster_is_boxed_in_original_pixels(side, spacing_mm, n_specks):
    m = breast(side, seed=3)
    rng = np.random.default_rng(1)
    cx, cy = inside_x(side, 0.35), 0.5 * SHAPE[0]
    spread = 3.0 / spacing_mm  # specks within 3 mm of the centre: well inside 1 cm^2
    points = [(cx + dx, cy + dy) for dx, dy in rng.uniform(-spread, spread, (n_specks, 2))]
    for x, y in points:
        speck(m.pixels, x, y, radius_px=0.3 / spacing_mm)  # 0.6 mm calcifications
    found = detect(m, spacing_mm)
    assert found and found[0].label == LABEL and 0 < found[0].score < 1
    x1, y1, x2, y2 = found[0].box
    xs, ys = np.array(points).T
    assert x1 <= xs.min() and xs.max() <= x2 and y1 <= ys.min() and ys.max() <= y2, "every speck is in the box"
    pad = 1.0 / spacing_mm + 0.6 / spacing_mm + 2  # PAD_MM, a speck's half size and rounding
    assert x1 >= xs.min() - pad and x2 <= xs.max() + pad and y1 >= ys.min() - pad and y2 <= ys.max() + pad


@pytest.mark.parametrize("case", ["scattered specks", "two specks", "a big bright disc", "clean tissue"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_what_is_not_a_cluster_gives_no_box(case, side):
    m = breast(side, seed=5)
    h = SHAPE[0]
    if case == "scattered specks":  # 4 specks, each > 2 cm from the others (at 0.2 mm per pixel)
        for fx, fy in [(0.15, 0.3), (0.45, 0.3), (0.15, 0.7), (0.45, 0.7)]:
            speck(m.pixels, inside_x(side, fx), fy * h, 1.5)
    elif case == "two specks":  # a pair is not a cluster (>= 3 within 1 cm)
        for dy in (0, 10):
            speck(m.pixels, inside_x(side, 0.3), 0.5 * h + dy, 1.5)
    elif case == "a big bright disc":  # a mass: 6 mm across, far larger than any calcification
        draw_lesion(m.pixels, inside_x(side, 0.3), 0.5 * h, 15, malignant=True)
    assert detect(m) == []


@pytest.mark.parametrize("pixels", [np.zeros((200, 150), np.float32), np.full((200, 150), 0.5, np.float32),
                                    np.zeros((4, 4), np.float32)], ids=["black", "flat", "tiny"])
def test_empty_or_flat_images_give_nothing(pixels):
    assert calc_candidates(Frame(pixels, Transform.identity(pixels.shape)), 0.2) == []


@pytest.mark.parametrize("max_boxes", [1, 4, 12])
@pytest.mark.parametrize("image", ["8 clusters", "noise at a low threshold"])
def test_count_is_bounded_highest_score_first(max_boxes, image):
    rng = np.random.default_rng(0)
    if image == "8 clusters":  # 8 clusters of 3-10 specks, 6 cm apart, on mildly noisy flat tissue
        pixels = np.clip(0.5 + rng.normal(0, 0.01, (400, 800)), 0, 1).astype(np.float32)
        for i in range(8):
            cx, cy = 100 + 200 * (i % 4), 100 + 200 * (i // 4)
            for dx, dy in rng.uniform(-12, 12, (3 + i, 2)):
                speck(pixels, cx + dx, cy + dy, 1.5)
        cfg = DetectorConfig(calc_max_boxes=max_boxes)
    else:  # at 2 SDs pure noise is full of specks
        pixels = np.clip(0.5 + rng.normal(0, 0.1, (300, 300)), 0, 1).astype(np.float32)
        cfg = DetectorConfig(calc_spot_k=2.0, calc_max_boxes=max_boxes)
    found = calc_candidates(Frame(pixels, Transform.identity(pixels.shape)), 0.2, cfg, mask=np.ones_like(pixels, bool))
    assert 1 <= len(found) <= max_boxes
    if image == "8 clusters":
        assert len(found) == min(8, max_boxes)
        x1, y1, x2, y2 = found[0].box  # the strongest is the cluster with the most specks (10, at 700, 300)
        assert x1 < 700 < x2 and y1 < 300 < y2
    scores = [d.score for d in found]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)


@pytest.mark.parametrize("spacing_mm", [0.0, -0.2, float("nan")])
def test_a_bad_pixel_spacing_is_refused(spacing_mm):
    frame = Frame(np.zeros((50, 50), np.float32), Transform.identity((50, 50)))
    with pytest.raises(ValueError, match="pixel spacing"):
        calc_candidates(frame, spacing_mm)


@pytest.mark.parametrize("more", [dict(n_spots=6), dict(mean_z=12.0)])
def test_cluster_score_grows_with_spots_and_contrast(more):
    base = dict(n_spots=3, mean_z=6.0, min_spots=3, spot_k=5.0)
    assert 0 < cluster_score(**base) < cluster_score(**{**base, **more}) < 1


@pytest.mark.parametrize("key,value", [("calc_min_spots", 1), ("calc_max_boxes", 0), ("calc_max_boxes", 101),
                                       ("calc_spot_k", 0.5), ("calc_cluster_mm", 0.0), ("calc_max_spot_mm", 9.0)])
def test_calc_settings_are_bounded(key, value):
    with pytest.raises(ConfigError, match=f"detector.{key}"):
        load_config(overrides=[f"detector.{key}={value}"])
    assert dataclasses.replace(DetectorConfig(), calc_candidates=True).calc_candidates is True


def _benchmark():
    from conftest import load_benchmark

    return load_benchmark("calc_candidates")


@pytest.mark.parametrize("planted_fold", [0, 2])
def test_the_benchmarks_score_alignment_never_reads_the_scored_folds_hits(planted_fold):
    """Each fold's scores are mapped by a fit on the other folds only: flipping that fold's hits changes nothing
    for it, and the map keeps the source's own ranking."""
    platt = _benchmark().platt_cross_fit
    rng = np.random.default_rng(0)
    folds = np.repeat([0, 1, 2], 10)
    scores = [rng.uniform(0, 1, 4) for _ in folds]
    hits = [rng.uniform(0, 1, 4) < s for s in scores]  # a higher score hits more often
    flipped = [~h if f == planted_fold else h for h, f in zip(hits, folds)]
    a = platt({"gen": scores}, {"gen": hits}, folds)["gen"]
    b = platt({"gen": scores}, {"gen": flipped}, folds)["gen"]
    for i in np.flatnonzero(folds == planted_fold):
        assert np.allclose(a[i], b[i])
        order = np.argsort(scores[i])
        assert (np.diff(a[i][order]) > 0).all(), "strictly increasing in the source's own score"
    assert not all(np.allclose(x, y) for x, y in zip(a, b)), "the other folds' maps did change"
