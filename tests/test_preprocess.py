import numpy as np
import pytest

from mammo.config import PreprocessConfig
from mammo.geometry import Transform
from mammo.preprocess import breast_mask, clahe, letterbox, orient, preprocess, resize, tile_windows
from mammo.records import ImageMeta, Mammogram


def synthetic_mammogram(h=400, w=300, side="right", marker=True, seed=0):
    """A half-ellipse 'breast' against the `side` edge, a lesion blob and a bright label in a far corner."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    cx = w if side == "right" else 0
    breast = ((xx - cx) / (0.8 * w)) ** 2 + ((yy - h / 2) / (0.45 * h)) ** 2 <= 1
    img = np.where(breast, 0.45, 0.0) + rng.normal(0, 0.01, (h, w))
    lesion_c = (int(0.6 * w) if side == "right" else int(0.4 * w), int(0.45 * h))
    img[(xx - lesion_c[0]) ** 2 + (yy - lesion_c[1]) ** 2 <= 12 ** 2] = 0.9
    if marker:
        lx = 5 if side == "right" else w - 25
        img[5:20, lx:lx + 20] = 1.0  # a film label: bright, small, apart from the breast
    meta = ImageMeta("syn", "p", None, None, None, (h, w), "MONOCHROME2", "synthetic")
    return Mammogram(np.clip(img, 0, 1).astype(np.float32), meta), lesion_c


def test_breast_mask_covers_breast_not_label():
    m, lesion = synthetic_mammogram(side="right")
    mask = breast_mask(m.pixels)
    assert mask[lesion[1], lesion[0]]
    assert not mask[10:15, 10:20].any(), "the label is not part of the breast"
    assert not mask[0:5, 0:5].any()


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("flip_to", ["left", "right", "none"])
@pytest.mark.parametrize("use_clahe", [False, True])
def test_preprocess_maps_lesion_back_to_original(side, flip_to, use_clahe):
    m, (lx, ly) = synthetic_mammogram(side=side)
    frame = preprocess(m, PreprocessConfig(flip_to=flip_to, clahe=use_clahe))
    assert frame.pixels.dtype == np.float32 and np.isfinite(frame.pixels).all()
    assert frame.pixels.shape[0] < m.shape[0] or frame.pixels.shape[1] < m.shape[1], "background was cropped"
    # The label was cropped away: the frame's top corner on the label's side has no bright block.
    assert frame.pixels.max() <= 1.0
    if flip_to != "none":
        from mammo.preprocess import chest_wall_side
        assert chest_wall_side(frame.pixels) == flip_to
    # The lesion is the brightest blob of the frame; its centre maps back to the true centre within a pixel.
    f = frame.pixels if not use_clahe else preprocess(m, PreprocessConfig(flip_to=flip_to)).pixels
    ys, xs = np.nonzero(f > 0.8)
    centre_frame = np.array([[xs.mean() + 0.5, ys.mean() + 0.5]])
    back = frame.to_original_points(centre_frame)[0]
    assert np.abs(back - [lx + 0.5, ly + 0.5]).max() < 1.0


@pytest.mark.parametrize("shape", [(400, 300), (300, 400), (640, 640), (37, 1000)])
def test_letterbox_round_trip_within_a_pixel(shape):
    img = np.random.default_rng(1).random(shape).astype(np.float32)
    out, t = letterbox(img, 256)
    assert out.shape == (256, 256)
    box = np.array([[3, 2, shape[1] - 5, shape[0] - 1]], float)
    back = t.inverse().apply_boxes(t.apply_boxes(box))
    np.testing.assert_allclose(back, box, atol=1e-6)
    # The whole image maps inside the square and touches two opposite sides.
    full = t.apply_boxes([[0, 0, shape[1], shape[0]]])[0]
    assert full.min() >= -1e-6 and full.max() <= 256 + 1e-6
    assert np.isclose(full[2] - full[0], 256) or np.isclose(full[3] - full[1], 256)


def test_crop_flip_resize_chain_round_trip():
    m, _ = synthetic_mammogram(h=500, w=350, side="left")
    frame = preprocess(m, PreprocessConfig(flip_to="right"))
    pixels, step = resize(frame.pixels, (128, 96))
    chained = frame.then(pixels, step)
    boxes = np.array([[40, 50, 90, 120], [0, 0, 350, 500]], float)
    frame_boxes = chained.transform.apply_boxes(boxes)
    np.testing.assert_allclose(chained.to_original_boxes(frame_boxes), boxes, atol=1e-6)


def test_orient_none_is_identity():
    m, _ = synthetic_mammogram(side="right")
    px, t, flipped = orient(m.pixels, "none")
    assert not flipped and np.array_equal(t.matrix, Transform.identity().matrix)


def test_clahe_keeps_range_and_shape():
    m, _ = synthetic_mammogram()
    out = clahe(m.pixels)
    assert out.shape == m.pixels.shape and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("shape,tile,overlap", [((1000, 700), 256, 0.2), ((256, 256), 256, 0.5), ((100, 900), 256, 0.0)])
def test_tiles_cover_the_grid(shape, tile, overlap):
    wins = tile_windows(shape, tile, overlap)
    covered = np.zeros(shape, bool)
    for t in wins:
        x0, y0 = -t.matrix[0, 2], -t.matrix[1, 2]
        covered[int(y0):int(y0) + tile, int(x0):int(x0) + tile] = True
        assert x0 >= 0 and y0 >= 0
    assert covered.all()


def test_breast_mask_on_real_dicoms(real_mammograms):
    from mammo.preprocess import chest_wall_side

    assert len(real_mammograms) == 8
    for m in real_mammograms:
        p, mask = m.pixels, breast_mask(m.pixels)
        w = p.shape[1]
        far = slice(int(0.75 * w), None) if m.meta.laterality == "L" else slice(0, int(0.25 * w))
        assert mask[p > 0.25].mean() > 0.85, f"{m.meta.image_id}: the mask must cover the bright tissue"
        assert mask[p < 0.05].mean() < 0.01, f"{m.meta.image_id}: the mask must leave the background out"
        assert mask[:, far].mean() < 0.01, f"{m.meta.image_id}: nothing on the side away from the chest wall"
        assert chest_wall_side(p) == {"L": "left", "R": "right"}[m.meta.laterality]
        frame = preprocess(m)
        assert frame.pixels.size < 0.6 * p.size, "background and labels are cropped away"


def test_crop_clahe_is_the_configured_one():
    """One CLAHE: the classifier's crops are equalised with preprocess.clahe_clip_limit / clahe_tile_grid (the
    configured values, recorded with the model), not with constants of its own."""
    from classifier.data import clahe_setting, prepare
    from classifier.inference import _clahe_of
    from mammo.config import load_config

    crops = np.random.default_rng(0).random((2, 32, 32)).astype(np.float32) * 0.5
    assert clahe_setting(load_config(None, [])) is None
    cfg = load_config(None, ["classifier.clahe=true", "preprocess.clahe_clip_limit=3.0",
                             "preprocess.clahe_tile_grid=2"])
    setting = clahe_setting(cfg)
    assert setting == (3.0, 2)
    out = prepare(crops, setting)
    np.testing.assert_array_equal(out[1, ..., 0], clahe(crops[1], 3.0, 2))
    assert not np.allclose(out, prepare(crops, (3.0, 8)))  # the grid is used, not ignored
    np.testing.assert_array_equal(prepare(crops)[..., 0], crops)
    assert _clahe_of([3.0, 2]) == (3.0, 2) and _clahe_of(False) is None
