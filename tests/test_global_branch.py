"""The global branch's multiple-instance head: pooling, bag loss and its gradient by hand, fitting on a stand-in
whose answer is known, the recorded resize, and the head's bounds at load."""
import numpy as np
import pytest

from classifier.global_branch import (HeadSpec, MilHead, bag_loss_and_gradient, fit_mil_head, pool_grid, pool_top_k,
                                      to_square, top_k)


def test_top_k_pooling_by_hand():
    s = np.array([[1.0, 5.0, 3.0, -2.0], [0.0, 0.0, 0.0, 4.0]])
    assert pool_top_k(s, 1).tolist() == [5.0, 4.0]
    assert pool_top_k(s, 2).tolist() == [4.0, 2.0]
    assert pool_top_k(s, 4).tolist() == [1.75, 1.0]  # k = every position: the plain mean
    assert [top_k(f, 256) for f in (1.0, 0.1, 0.001)] == [256, 26, 1]


def test_bag_loss_and_gradient_by_hand():
    # One bag of two positions, one channel: scores 2*z + 0.5 = [2.5, -1.5]; top 1 -> logit 2.5.
    head = MilHead(np.zeros(1, np.float32), np.ones(1, np.float32), np.array([2.0]), 0.5, top_fraction=0.5)
    z = np.array([[[1.0], [-1.0]]])
    loss, g_w, g_b = bag_loss_and_gradient(head, z, np.array([1.0]), pos_weight=3.0)
    p = 1 / (1 + np.exp(-2.5))
    assert loss == pytest.approx(-3.0 * np.log(p), rel=1e-6)
    assert g_b == pytest.approx(3.0 * (p - 1.0))
    assert g_w[0] == pytest.approx(3.0 * (p - 1.0) * 1.0)  # only the selected position's feature counts
    _, g_w0, g_b0 = bag_loss_and_gradient(head, z, np.array([0.0]), pos_weight=3.0)
    assert g_b0 == pytest.approx(p) and g_w0[0] == pytest.approx(p)  # negatives weigh 1


@pytest.mark.parametrize("fraction", [1.0, 0.25, 1 / 16])
def test_gradient_matches_finite_differences(fraction):
    rng = np.random.default_rng(1)
    z, y = rng.normal(size=(6, 16, 5)), np.array([0, 1, 0, 1, 1, 0.0])
    head = MilHead(np.zeros(5, np.float32), np.ones(5, np.float32), rng.normal(size=5), 0.1, fraction)
    _, g_w, g_b = bag_loss_and_gradient(head, z, y, pos_weight=2.0)
    for i in range(5):
        e = np.zeros(5)
        e[i] = 1e-6
        up = MilHead(head.mean, head.scale, head.weight + e, head.bias, fraction)
        down = MilHead(head.mean, head.scale, head.weight - e, head.bias, fraction)
        numeric = (bag_loss_and_gradient(up, z, y, 2.0)[0] - bag_loss_and_gradient(down, z, y, 2.0)[0]) / 2e-6
        assert g_w[i] == pytest.approx(numeric, rel=1e-4, abs=1e-7)


def stand_in_features(n=40, seed=0):
    """Cancer images have one hot position on channel 0; everything else is noise: the answer is known."""
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, 2, 4, 4, 3)).astype(np.float32)
    y = np.arange(n) % 2
    for i in np.flatnonzero(y):
        r, c = rng.integers(0, 4, 2)
        feats[i, :, r, c, 0] += 6.0
    return feats, y


def test_fitted_head_finds_the_planted_position_and_is_reproducible():
    feats, y = stand_in_features()
    spec = HeadSpec(top_fraction=1 / 16, epochs=60, learning_rate=0.05, batch_size=8)
    head = fit_mil_head(feats, y, spec)
    assert np.argmax(np.abs(head.weight)) == 0 and head.weight[0] > 0
    logits = head.image_logit(feats[:, 0])
    assert logits[y == 1].min() > logits[y == 0].max()  # separable by construction: the planted position
    again = fit_mil_head(feats, y, spec)
    assert np.array_equal(again.weight, head.weight) and again.bias == head.bias
    maps = head.position_logits(feats[:, 0])
    assert maps.shape == (40, 4, 4)
    hot = np.unravel_index(np.argmax(maps[1]), (4, 4))
    assert feats[1, 0][hot][0] > 3  # the map's peak is where the lesion was planted


def test_head_round_trip_and_bounds():
    feats, y = stand_in_features()
    head = fit_mil_head(feats, y, HeadSpec(epochs=2))
    back = MilHead.from_dict(head.to_dict(), channels=3)
    assert np.allclose(back.image_logit(feats[:, 0]), head.image_logit(feats[:, 0]))
    bad = head.to_dict() | {"scale": [1.0, 0.0, 1.0]}
    with pytest.raises(ValueError, match="scale"):
        MilHead.from_dict(bad)
    with pytest.raises(ValueError, match="channels"):
        MilHead.from_dict(head.to_dict(), channels=1280)
    with pytest.raises(ValueError, match="top_fraction"):
        MilHead.from_dict(head.to_dict() | {"top_fraction": 0.0})
    with pytest.raises(ValueError, match="epochs"):
        HeadSpec(epochs=0)


@pytest.mark.parametrize("shape", [(640, 640), (4000, 3000), (100, 60)])
def test_square_input_records_its_resize(shape):
    pixels = np.random.default_rng(0).random(shape).astype(np.float32)
    square, t = to_square(pixels, 256)
    assert square.shape == (256, 256)
    h, w = shape
    corners = t.inverse().apply([[0, 0], [256, 256]])
    assert np.allclose(corners, [[0, 0], [w, h]])  # the square's corners are the original's
    with pytest.raises(ValueError, match="size"):
        to_square(pixels, 4096)


def test_pool_grid_by_hand():
    feats = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    pooled = pool_grid(feats, 2)
    assert pooled[0, :, :, 0].tolist() == [[2.5, 4.5], [10.5, 12.5]]
    assert np.array_equal(pool_grid(feats, 4), feats)
    with pytest.raises(ValueError, match="divide"):
        pool_grid(feats, 3)


@pytest.mark.parametrize("layer", ["features_18_2", "features_17_conv_0_2", "features_14_conv_0_2"])
def test_feature_extractor_reads_the_named_map_of_the_backbone(layer):
    # random weights (no file needed): the tap must equal that layer's output inside the whole backbone
    import keras

    from classifier.global_branch import FEATURE_LAYERS, build_feature_extractor
    from classifier.imagenet_mobilenet import imagenet_input_layers

    keras.utils.set_random_seed(0)
    whole = build_feature_extractor(64, weights_path=None).layers[-1]  # the backbone to its last map
    keras.utils.set_random_seed(0)  # the same weights again
    tap = build_feature_extractor(64, weights_path=None, layer=layer)
    channels, stride = FEATURE_LAYERS[layer]
    assert tuple(tap.outputs[0].shape[1:]) == (64 // stride, 64 // stride, channels)
    assert tap.layers[-1].layers[-1].name == layer  # nothing after the tap is computed
    inp = keras.Input((64, 64, 1))
    probe = keras.Model(whole.inputs, whole.get_layer(layer).output)
    by_hand = keras.Model(inp, probe(imagenet_input_layers(inp)))
    x = np.random.default_rng(0).random((2, 64, 64, 1)).astype(np.float32)
    out = np.asarray(tap(x))
    scale = np.abs(out).max()  # random weights shrink the activations layer by layer: compare relative to it
    assert scale > 0 and (out > 0).mean() > 0.1  # a map that varies, so the comparison means something
    np.testing.assert_allclose(out / scale, np.asarray(by_hand(x)) / scale, atol=1e-4)
    with pytest.raises(ValueError, match="layer"):
        build_feature_extractor(64, weights_path=None, layer="features_3_conv_0_2")


def test_saved_global_branch_scores_as_its_head_and_maps_back_to_the_original(tmp_path):
    import json

    from classifier.global_branch import GlobalBranch, build_global_model
    from standins import block_mean_extractor

    head = MilHead(np.array([0.2, -0.2], np.float32), np.array([0.1, 0.1], np.float32),
                   np.array([2.0, -1.0], np.float32), 0.3, top_fraction=0.25)
    folder = tmp_path / "global"
    folder.mkdir()
    build_global_model(block_mean_extractor(), head, grid=4).save(folder / "model.keras")
    (folder / "head.json").write_text(json.dumps({"top_fraction": 0.25}))
    branch = GlobalBranch.load(folder)
    rng = np.random.default_rng(0)
    pixels = rng.random((50, 40)).astype(np.float32) * 0.3
    pixels[5:15, 25:35] = 1.0  # a bright lesion in the top right
    logit, grid, to_grid, inverted = branch.analyse(pixels)
    assert branch.polarity == "as_read" and not inverted  # a head.json without polarity: pixels as read
    # by hand: squash, 4x4 block means (8 x 8), average to 4 x 4, standardize, linear, top 4 of 16, both views
    square, _ = to_square(pixels, 32)
    expected = []
    for view in (square, square[:, ::-1]):
        blocks = view.reshape(8, 4, 8, 4).mean(axis=(1, 3))
        feats = pool_grid(np.stack([blocks, -blocks], axis=-1)[None], 4)[0]
        expected.append(head.image_logit(feats))
    assert logit == pytest.approx(float(np.mean(expected)), abs=1e-4)
    assert grid.shape == (4, 4)
    assert np.allclose(to_grid.inverse().apply([[0, 0], [4, 4]]), [[0, 0], [40, 50]])
    hot = np.unravel_index(np.argmax(grid), grid.shape)
    centre = to_grid.inverse().apply([[hot[1] + 0.5, hot[0] + 0.5]])[0]
    assert 20 <= centre[0] <= 40 and centre[1] <= 20  # the map's peak maps back onto the lesion's quarter


def mammogram_like(bright_frame: bool) -> np.ndarray:
    """A dark frame around a bright breast, or the same stored inverted."""
    rng = np.random.default_rng(1)
    img = rng.random((300, 200)).astype(np.float32) * 0.05
    img[40:260, :120] = 0.6 + rng.random((220, 120)).astype(np.float32) * 0.3  # the breast on the left
    img[5:15, 170:195] = 1.0  # a burnt-in label in a corner
    return 1.0 - img if bright_frame else img


@pytest.mark.parametrize("polarity, bright, inverted", [("dark_background", False, False),
                                                        ("dark_background", True, True),
                                                        ("as_read", True, False)])
def test_branch_input_inverts_only_a_bright_framed_image_and_keeps_the_geometry(polarity, bright, inverted):
    from classifier.global_branch import branch_input, bright_background

    pixels = mammogram_like(bright)
    assert bright_background(pixels) is bright
    square, t, was_inverted = branch_input(pixels, 64, polarity)
    plain, t_plain = to_square(pixels, 64)
    assert was_inverted is inverted
    np.testing.assert_allclose(square, 1.0 - plain if inverted else plain, atol=1e-6)
    assert np.allclose(t.matrix, t_plain.matrix)
    if polarity == "dark_background":  # both storages of one image give the branch the same input
        np.testing.assert_allclose(square, to_square(mammogram_like(False), 64)[0], atol=1e-5)
    with pytest.raises(ValueError, match="polarity"):
        branch_input(pixels, 64, "upside_down")


def test_a_branch_applies_the_polarity_its_head_json_names_and_refuses_others(tmp_path):
    import json

    from classifier.global_branch import GlobalBranch, build_global_model
    from mammo.errors import WeightsError
    from standins import block_mean_extractor

    head = MilHead(np.zeros(2, np.float32), np.ones(2, np.float32), np.array([1.0, 0.0], np.float32), 0.0,
                   top_fraction=1.0)
    folder = tmp_path / "global"
    folder.mkdir()
    build_global_model(block_mean_extractor(), head, grid=4).save(folder / "model.keras")
    (folder / "head.json").write_text(json.dumps({"top_fraction": 1.0, "polarity": "dark_background"}))
    branch = GlobalBranch.load(folder)
    dark, bright = branch.analyse(mammogram_like(False)), branch.analyse(mammogram_like(True))
    assert (dark.inverted, bright.inverted) == (False, True)
    assert bright.logit == pytest.approx(dark.logit, abs=1e-4)  # the mean grey: the same once inverted
    (folder / "head.json").write_text(json.dumps({"top_fraction": 1.0, "polarity": "sideways"}))
    with pytest.raises(WeightsError, match="polarity"):
        GlobalBranch.load(folder)


def test_a_lazy_branch_checks_its_folder_at_once_and_loads_keras_only_on_its_first_image(tmp_path, monkeypatch):
    import json
    import threading

    from classifier import global_branch
    from classifier.global_branch import GlobalBranch, LazyGlobalBranch, build_global_model
    from mammo.errors import WeightsError
    from standins import block_mean_extractor

    folder = tmp_path / "global"
    folder.mkdir()
    with pytest.raises(WeightsError, match="head.json"):
        LazyGlobalBranch(folder)  # a broken bundle fails at load, naming the file
    head = MilHead(np.zeros(2, np.float32), np.ones(2, np.float32), np.array([1.0, 0.0], np.float32), 0.0,
                   top_fraction=1.0)
    build_global_model(block_mean_extractor(), head, grid=4).save(folder / "model.keras")
    (folder / "head.json").write_text(json.dumps({"top_fraction": 1.0}))
    loads = []
    real_load = GlobalBranch.load.__func__
    monkeypatch.setattr(global_branch.GlobalBranch, "load",
                        classmethod(lambda cls, *a, **k: loads.append(1) or real_load(cls, *a, **k)))
    lazy = LazyGlobalBranch(folder)
    assert not lazy.loaded and loads == []
    pixels = mammogram_like(False)
    threads = [threading.Thread(target=lazy.analyse, args=(pixels,)) for _ in range(3)]
    [t.start() for t in threads], [t.join() for t in threads]
    assert lazy.loaded and loads == [1]  # once, whichever thread came first
    assert lazy.analyse(pixels).logit == pytest.approx(GlobalBranch.load(folder).analyse(pixels).logit, abs=1e-6)
