import numpy as np
import pytest

from mammo.geometry import Transform, box_iou

RNG = np.random.default_rng(0)


def random_points(n=50, w=300, h=200):
    return np.stack([RNG.uniform(0, w, n), RNG.uniform(0, h, n)], axis=1)


@pytest.mark.parametrize("t", [
    Transform.crop(13, 7, 100, 80),
    Transform.hflip((200, 300)),
    Transform.vflip((200, 300)),
    Transform.resize((200, 300), (50, 120)),
    Transform.scale_translate(0.37, 5, -3),
    Transform.crop(13, 7, 100, 80).then(Transform.hflip((80, 100))).then(Transform.resize((80, 100), (64, 64))),
])
def test_round_trip_points_and_boxes(t):
    p = random_points()
    np.testing.assert_allclose(t.inverse().apply(t.apply(p)), p, atol=1e-9)
    boxes = np.array([[10, 20, 50, 60], [0, 0, 300, 200], [100.5, 3.25, 101.5, 4.0]])
    np.testing.assert_allclose(t.inverse().apply_boxes(t.apply_boxes(boxes)), boxes, atol=1e-9)


def test_known_values_in_corner_convention():
    # A resize by 2 maps the corner of pixel 10 (x=10) to 20 and the image edge to the new edge.
    t = Transform.resize((100, 100), (200, 200))
    np.testing.assert_allclose(t.apply([[10, 0], [100, 100]]), [[20, 0], [200, 200]])
    # A flip maps column c (covering [c, c+1)) to W-1-c, i.e. the box [c, c+1] to [W-c-1, W-c].
    f = Transform.hflip((10, 10))
    np.testing.assert_allclose(f.apply_boxes([[2, 0, 3, 1]]), [[7, 0, 8, 1]])
    # A flip at the border: the first column becomes the last.
    np.testing.assert_allclose(f.apply_boxes([[0, 0, 1, 10]]), [[9, 0, 10, 10]])
    # Crop then move: the crop's origin is the old (x0, y0).
    np.testing.assert_allclose(Transform.crop(5, 6, 10, 10).apply([[5, 6]]), [[0, 0]])


def test_composition_order_matters():
    crop = Transform.crop(10, 0, 50, 50)
    flip = Transform.hflip((50, 50))
    p = np.array([[12.0, 5.0]])
    np.testing.assert_allclose(crop.then(flip).apply(p), flip.apply(crop.apply(p)))
    assert not np.allclose(crop.then(flip).apply(p), crop.apply(flip.apply(p)))
    assert crop.then(flip).dst_shape == (50, 50)


def test_flipped_boxes_stay_ordered():
    out = Transform.hflip((100, 100)).apply_boxes([[10, 10, 30, 40]])
    assert (out[:, 2] > out[:, 0]).all() and (out[:, 3] > out[:, 1]).all()


@pytest.mark.parametrize("t", [
    Transform.identity((40, 60)),
    Transform.hflip((40, 60)),
    Transform.resize((40, 60), (80, 120)),
    Transform.crop(10, 5, 30, 20, src_shape=(40, 60)),
])
def test_warp_moves_a_marked_pixel_where_apply_sends_its_centre(t):
    img = np.zeros((40, 60), np.float32)
    img[12, 33] = 1.0  # pixel centre (33.5, 12.5)
    out = t.warp(img, interpolation=0)  # nearest
    expected = t.apply([[33.5, 12.5]])[0]
    ys, xs = np.nonzero(out)
    assert len(xs) > 0
    centre = np.array([xs.mean() + 0.5, ys.mean() + 0.5])
    np.testing.assert_allclose(centre, expected, atol=0.51 * max(1, t.scale[0]))


def test_warp_back_restores_image_within_interpolation():
    img = RNG.random((64, 96)).astype(np.float32)
    t = Transform.crop(8, 4, 80, 56, src_shape=(64, 96)).then(Transform.hflip((56, 80)))
    there = t.warp(img)
    back = t.inverse().warp(there, (64, 96))
    np.testing.assert_allclose(back[4:60, 8:88], img[4:60, 8:88], atol=1e-5)


def test_serialization_round_trip():
    t = Transform.crop(3, 4, 10, 10, src_shape=(20, 20)).then(Transform.resize((10, 10), (5, 5)))
    u = Transform.from_dict(t.to_dict())
    np.testing.assert_allclose(u.matrix, t.matrix)
    assert u.src_shape == (20, 20) and u.dst_shape == (5, 5)


def test_box_iou_hand_cases():
    iou = box_iou([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(iou, [[1.0, 50 / 150, 0.0]])
