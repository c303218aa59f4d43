"""The one crop function: geometry round trips at the border, pixel content where the Transform says, padding."""
import numpy as np
import pytest

from mammo.crops import crop_roi, jitter_box, roi_transform, roi_window

H, W = 120, 160


def marker_image(cx: int, cy: int, r: int = 1) -> np.ndarray:
    """A black image (like the padding, so that the border does not bias centroids) with a bright
    (2r+1)^2 square centred on pixel (cx, cy)."""
    img = np.zeros((H, W), np.float32)
    img[max(cy - r, 0):cy + r + 1, max(cx - r, 0):cx + r + 1] = 1.0
    return img


def centroid(img: np.ndarray) -> np.ndarray:
    """(x, y) in corner coordinates of the brightness of a crop."""
    w = img
    ys, xs = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    return np.array([(w * (xs + 0.5)).sum(), (w * (ys + 0.5)).sum()]) / w.sum()


# Boxes at every border and corner, crops larger (upscale), similar and much smaller (area-downscale) than them.
BORDER_CASES = [
    ((1, 1), (-4, -4, 8, 8), 64),        # top-left corner, window reaches outside
    ((1, 1), (0, 0, 40, 40), 16),        # top-left, shrunk 3x (area path)
    ((W - 2, H - 2), (W - 10, H - 10, W + 2, H + 2), 48),  # bottom-right corner
    ((W - 2, 5), (W - 30, 0, W, 30), 32),  # right border
    ((3, H - 2), (0, H - 100, 100, H), 24),  # bottom-left, shrunk about 6x
]


@pytest.mark.parametrize("marker,box,size", BORDER_CASES)
def test_marker_at_border_maps_back_within_a_pixel(marker, box, size):
    cx, cy = marker
    img = marker_image(cx, cy)
    crop, t = crop_roi(img, box, margin=0.25, size=size)
    assert crop.shape == (size, size) and crop.dtype == np.float32
    assert t.src_shape == (H, W) and t.dst_shape == (size, size)
    # the marker appears in the crop where the Transform sends it ...
    expected_in_crop = t.apply([[cx + 0.5, cy + 0.5]])[0]
    found = centroid(crop)
    assert np.linalg.norm(found - expected_in_crop) <= max(1.0, t.scale[0]), (found, expected_in_crop)
    # ... and maps back onto the marker in the original within a pixel (of the coarser of the two grids: a
    # crop shrunk 6x cannot place anything finer than its own 6-original-pixel cells)
    back = t.inverse().apply([found])[0]
    assert np.linalg.norm(back - [cx + 0.5, cy + 0.5]) <= max(1.0, 1.0 / t.scale[0]), back


@pytest.mark.parametrize("box", [(-4, -4, 8, 8), (W - 10, H - 10, W + 2, H + 2), (-50, 10, 10, 70)])
def test_points_round_trip_and_padding_is_zero(box):
    img = np.random.default_rng(1).uniform(0.3, 1.0, (H, W)).astype(np.float32)
    crop, t = crop_roi(img, box, margin=0.5, size=40)
    pts = np.random.default_rng(2).uniform(-20, 200, (50, 2))
    np.testing.assert_allclose(t.inverse().apply(t.apply(pts)), pts, atol=1e-9)
    # crop pixels whose centre maps more than a pixel outside the image are padding: exactly 0
    ys, xs = np.mgrid[0:40, 0:40]
    src = t.inverse().apply(np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], 1))
    scale = 1 / t.scale[0]  # original pixels per crop pixel
    outside = ((src[:, 0] < -scale - 1) | (src[:, 0] > W + scale + 1) | (src[:, 1] < -scale - 1)
               | (src[:, 1] > H + scale + 1))
    inside = ((src[:, 0] > scale + 1) & (src[:, 0] < W - scale - 1) & (src[:, 1] > scale + 1)
              & (src[:, 1] < H - scale - 1))
    assert outside.any() and inside.any()
    assert np.all(crop.ravel()[outside] == 0.0)
    assert np.all(crop.ravel()[inside] >= 0.3 - 1e-6)


def test_window_is_square_centred_with_margin():
    x0, y0, side = roi_window((10, 20, 50, 40), margin=0.25)  # 40 x 20 box
    assert side == pytest.approx(60.0)  # longer side x (1 + 2 x 0.25)
    assert (x0 + side / 2, y0 + side / 2) == pytest.approx((30.0, 30.0))
    t = roi_transform((10, 20, 50, 40), 0.25, 120)
    np.testing.assert_allclose(t.apply_boxes([[10, 20, 50, 40]]), [[20, 40, 100, 80]])


def test_crop_values_match_the_transform_inside_the_image():
    """Upscaling crop: every crop pixel equals bilinear sampling of the original at the mapped centre."""
    ramp = np.add.outer(np.arange(H) * 0.002, np.arange(W) * 0.004).astype(np.float32)  # linear: exact
    crop, t = crop_roi(ramp, (60, 40, 80, 60), margin=0.25, size=50)
    ys, xs = np.mgrid[0:50, 0:50]
    src = t.inverse().apply(np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], 1)) - 0.5  # pixel-centre coords
    expected = src[:, 1] * 0.002 + src[:, 0] * 0.004
    np.testing.assert_allclose(crop.ravel(), expected, atol=1e-4)


def test_shrinking_keeps_mean_intensity_without_aliasing():
    """A fine checkerboard shrunk 8x must come out flat grey (area averaging), not a moire of 0s and 1s."""
    board = (np.indices((H, W)).sum(0) % 2).astype(np.float32)
    crop, _ = crop_roi(board, (20, 20, 100, 100), margin=0.0, size=10)
    assert abs(crop.mean() - 0.5) < 0.05 and crop.std() < 0.1


def test_empty_box_is_refused():
    with pytest.raises(ValueError, match="empty or inverted"):
        crop_roi(np.zeros((10, 10), np.float32), (5, 5, 5, 9), 0.2, 8)


def test_jitter_stays_near_the_box_and_varies():
    rng = np.random.default_rng(0)
    box = (100.0, 100.0, 140.0, 120.0)
    boxes = np.array([jitter_box(box, rng, 0.1) for _ in range(200)])
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert np.abs(centres - [120, 110]).max(axis=0) == pytest.approx([4, 2], abs=0.3)  # 10 % of 40 and 20
    widths = boxes[:, 2] - boxes[:, 0]
    assert widths.min() >= 40 / 1.1 - 1e-9 and widths.max() <= 40 * 1.1 + 1e-9 and widths.std() > 1
