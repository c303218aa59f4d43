"""Cross-validation of the global branch (pipeline/digital): folds by woman, every choice blind to the held-out
fold's labels, resume of killed runs, the feature cache's identity. A stand-in feature extractor of known output
(block means and maxima of the image) replaces the ImageNet network, so nothing here depends on how a network
converges."""
import json

import cv2
import numpy as np
import pytest

from mammo.config import Config, GlobalBranchConfig, replace
from mammo.errors import MammoError
from mammo.records import ImageRecord, Lesion
from pipeline.digital import cross_validate as dcv
from pipeline.digital.features import extract_features

SIZE = 32


class BlockFeatures:
    """(2n, S, S, 1) -> (2n, 4, 4, 2): each 8x8 block's mean and max. Counts its calls."""

    name = "blocks"

    def __init__(self):
        self.images = 0

    def predict_on_batch(self, x):
        n = x.shape[0]
        self.images += n // 2
        b = x[..., 0].reshape(n, 4, SIZE // 4, 4, SIZE // 4)
        return np.stack([b.mean(axis=(2, 4)), b.max(axis=(2, 4))], axis=-1)


def cancer(image_id, woman):
    """An image-level label: malignant, no box."""
    return (Lesion(image_id, woman, None, "other", "malignant", "test"),)


def make_records(tmp_path, n_women=12, per_woman=2, seed=0):
    rng = np.random.default_rng(seed)
    records = []
    for w in range(n_women):
        for i in range(per_woman):
            malignant = (w + i) % 3 == 0
            img = (rng.random((40, 36)) * 80).astype(np.uint8)
            if malignant:
                r, c = rng.integers(4, 30, 2)
                img[r:r + 5, c:c + 5] = 255
            path = tmp_path / f"{w}_{i}.png"
            cv2.imwrite(str(path), img)
            records.append(ImageRecord(f"{w}_{i}", str(w), path, cancer(f"{w}_{i}", str(w)) if malignant else ()))
    return records


def tiny_config(**g):
    gb = dict(size=SIZE, top_fractions=(1.0, 0.25), weight_decays=(0.01, 0.1), grid=2, epochs=5, batch_size=8, folds=3, inner_folds=2,
              batch_images=4) | g
    return replace(Config(), global_branch=GlobalBranchConfig(**gb))


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    (tmp_path / "images").mkdir()
    records = make_records(tmp_path / "images")
    monkeypatch.setattr(dcv, "dataset_records", lambda cfg: records)
    return records


def test_folds_resume_and_summary(dataset, tmp_path):
    cfg, extractor, out = tiny_config(), BlockFeatures(), tmp_path / "cv"
    assert dcv.run_digital_cv(cfg, out, only_fold=1, progress=False, extractor=extractor, n_boot=20) is None
    assert extractor.images == len(dataset)  # the whole cache, once
    assert [p.parent.name for p in (out / "folds").glob("*/DONE.json")] == ["fold1"]
    summary = dcv.run_digital_cv(cfg, out, progress=False, extractor=extractor, n_boot=20)
    assert extractor.images == len(dataset)  # resumed from the cache, not recomputed
    oof = summary["oof"]
    assert len(oof["logit"]) == len(dataset) and np.isfinite(oof["logit"]).all()
    folds = np.array(oof["fold"])
    women = np.array([r.patient_id for r in dataset])
    for w in set(women):
        assert len(set(folds[women == w])) == 1  # a woman is in one fold only
    p = np.array(oof["probability_cross_fitted"])
    assert ((p >= 0) & (p <= 1)).all()
    settings = summary["settings"]
    assert (settings["top_fraction"], settings["weight_decay"]) in {(1.0, 0.01), (1.0, 0.1), (0.25, 0.01), (0.25, 0.1)}
    assert settings["grid"] == 2
    cand = summary["figures"]["every_candidate (held-out folds, not used to choose)"]
    assert set(cand) == {"top1_wd0.01", "top1_wd0.1", "top0.25_wd0.01", "top0.25_wd0.1"}
    # the score threshold and the probability threshold make the same calls on the out-of-fold scores
    from pipeline.digital.cross_validate import sigmoid
    from mammo.calibration import apply_calibration
    s = sigmoid(np.array(oof["logit"]))
    assert np.array_equal(s >= settings["score_threshold"],
                          apply_calibration(settings["calibration"], s) >= settings["probability_threshold"])
    for name in ("metrics.md", "roc.png", "pr.png", "reliability.png", "contact_sheet.png"):
        assert (out / "evaluation" / name).stat().st_size > 0
    assert "auROC" in (out / "evaluation" / "metrics.md").read_text()
    before = (out / "folds" / "fold0" / "DONE.json").read_text()
    (out / "folds" / "fold2" / "DONE.json").unlink()  # a run killed in fold 2
    again = dcv.run_digital_cv(cfg, out, progress=False, extractor=extractor, n_boot=20)
    assert (out / "folds" / "fold0" / "DONE.json").read_text() == before  # not redone
    assert again["oof"]["logit"] == summary["oof"]["logit"]  # fixed seeds: the same fold 2 again


def test_a_folds_results_never_read_its_own_labels(dataset, tmp_path, monkeypatch):
    cfg = tiny_config()
    dcv.run_digital_cv(cfg, tmp_path / "a", only_fold=0, progress=False, extractor=BlockFeatures())
    folds = {}
    for line in (tmp_path / "a" / "folds.csv").read_text().splitlines()[1:]:
        image_id, _, k = line.split(",")
        folds[image_id] = int(k)
    monkeypatch.setattr(dcv, "outer_folds", lambda records, cfg: folds)  # the same folds, other labels
    flipped = [ImageRecord(r.image_id, r.patient_id, r.path, () if r.label else cancer(r.image_id, r.patient_id))
               if folds[r.image_id] == 0 else r for r in dataset]
    monkeypatch.setattr(dcv, "dataset_records", lambda cfg: flipped)
    dcv.run_digital_cv(cfg, tmp_path / "b", only_fold=0, progress=False, extractor=BlockFeatures())
    a = json.loads((tmp_path / "a" / "folds" / "fold0" / "DONE.json").read_text())
    b = json.loads((tmp_path / "b" / "folds" / "fold0" / "DONE.json").read_text())
    a.pop("seconds"), b.pop("seconds")
    assert a == b


def test_run_fold_fits_on_training_rows_only(dataset):
    """The held-out rows' labels are -1 (unknown) when run_fold is called: a fit that read them would fail on a
    label outside {0, 1}."""
    cfg = tiny_config()
    feats = np.random.default_rng(0).normal(size=(len(dataset), 2, 4, 4, 2)).astype(np.float16)
    y = np.array([r.label for r in dataset])
    women = np.array([r.patient_id for r in dataset])
    train = np.arange(len(y)) % 3 != 0
    out = dcv.run_fold(feats, np.where(train, y, -1), women, train, 0, cfg)
    assert len(out["logits"]) == (~train).sum()


def test_feature_cache_refuses_other_images_or_size(dataset, tmp_path):
    cfg = tiny_config()
    extract_features(dataset, cfg, tmp_path / "cache", progress=False, extractor=BlockFeatures())
    with pytest.raises(MammoError, match="other images"):
        extract_features(dataset[:-1], cfg, tmp_path / "cache", progress=False, extractor=BlockFeatures())
    with pytest.raises(MammoError, match="input size"):
        extract_features(dataset, tiny_config(size=64), tmp_path / "cache", progress=False,
                         extractor=BlockFeatures())
    with pytest.raises(MammoError, match="polarity"):
        extract_features(dataset, tiny_config(polarity="as_read"), tmp_path / "cache", progress=False,
                         extractor=BlockFeatures())
    with pytest.raises(MammoError, match="layer"):
        extract_features(dataset, tiny_config(layer="features_14_conv_0_2"), tmp_path / "cache", progress=False,
                         extractor=BlockFeatures())


def test_feature_cache_resumes_a_killed_extraction(tmp_path, monkeypatch):
    import pipeline.digital.features as features

    monkeypatch.setattr(features, "CHUNK", 4)
    records = make_records(tmp_path, n_women=5)
    cfg = tiny_config()

    class Dies(BlockFeatures):
        def predict_on_batch(self, x):
            if self.images >= 4:
                raise KeyboardInterrupt
            return super().predict_on_batch(x)

    with pytest.raises(KeyboardInterrupt):
        extract_features(records, cfg, tmp_path / "cache", progress=False, extractor=Dies())
    assert len(list((tmp_path / "cache" / "chunks").glob("*.npy"))) == 1
    second = BlockFeatures()
    feats = extract_features(records, cfg, tmp_path / "cache", progress=False, extractor=second)
    assert second.images == len(records) - 4  # the first chunk was kept
    fresh = extract_features(records, cfg, tmp_path / "fresh", progress=False, extractor=BlockFeatures())
    assert np.array_equal(np.asarray(feats), np.asarray(fresh))
    assert feats.shape == (len(records), 2, 4, 4, 2)
    # the mirror view is the mirrored image's features
    assert np.allclose(np.asarray(feats[:, 1, :, ::-1]), np.asarray(feats[:, 0]), atol=1e-2)


def test_sensitivity_at_specificity_by_hand():
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.9, 0.35, 0.5, 0.95, 0.05])
    # specificity 0.8 of 5 negatives: threshold at the 4th lowest negative (0.4); positives above: 0.5, 0.95
    assert dcv.sensitivity_at_specificity(y, s, 0.8) == 0.5


def test_trained_on_lists_every_parts_image_ids_with_their_digests(tmp_path):
    """The film split comes from the config (seed-fixed, by woman), the operating point's images from the CV's
    folds.csv, the global branch's from its trained_on.txt; each list's SHA-256 is of its sorted ids."""
    import hashlib
    from pathlib import Path

    from mammo.config import load_config
    from mammo.datasets import load_split_dataset
    from pipeline.models import write_trained_on

    fixture = Path(__file__).parent / "fixtures" / "annotations" / "mias" / "Info.txt"
    cfg = load_config(overrides=[f"data.annotations={fixture}", "data.format=mias"])
    _, splits = load_split_dataset(cfg.data)
    cv = tmp_path / "cv"
    cv.mkdir()
    (cv / "folds.csv").write_text("image_id,patient_id,fold\nmdb001,p1,0\nmdb002,p1,0\nmdb003,p2,1\n")
    bundle = tmp_path / "bundle"
    (bundle / "global").mkdir(parents=True)
    (bundle / "global" / "trained_on.txt").write_text("9_2\n10_1\n9_1\n")
    (bundle / "pipeline.json").write_text(json.dumps({"domains": {"digital": {"global_branch": "global"}}}))
    data = json.loads(write_trained_on(bundle, cfg, cv).read_text())
    train = sorted(r.image_id for r in splits["train"])
    assert data["detector.pt"]["image_ids"] == train and data["classifier"]["n"] == len(train)
    assert data["detector.pt epochs"]["image_ids"] == sorted(r.image_id for r in splits["val"])
    assert not set(train) & set(data["detector.pt epochs"]["image_ids"])
    op = data["pipeline.json operating point, calibration and findings maps"]
    assert op["image_ids"] == ["mdb001", "mdb002", "mdb003"]
    digital = data["global/ (digital)"]
    assert digital["image_ids"] == ["10_1", "9_1", "9_2"]
    assert digital["sha256"] == hashlib.sha256("10_1\n9_1\n9_2".encode()).hexdigest()


def test_nested_choice_of_a_folds_operating_point_never_meets_its_labels_where_cross_fitting_does(tmp_path,
                                                                                                  monkeypatch):
    """Flip the labels of fold 0 only. Cross-fitting's operating point for fold 0 moves (the other folds' models
    were trained on fold 0: the second-order leak benchmarks/second_order_leak.py measures); the nested one does
    not move at all. Resumed from its cache, nested_fitted fits nothing and gives the same."""
    (tmp_path / "images").mkdir()
    records = make_records(tmp_path / "images", n_women=24)
    cfg = tiny_config()
    feats = dcv.pool_grid(extract_features(records, cfg, tmp_path / "cache", progress=False,
                                           extractor=BlockFeatures()), cfg.global_branch.grid)
    women = np.array([r.patient_id for r in records])
    folds = dcv.outer_folds(records, cfg)
    fold = np.array([folds[r.image_id] for r in records])
    y = np.array([r.label for r in records])
    flipped = np.where(fold == 0, 1 - y, y)

    def operating_points(labels, cache):
        logits = np.full(len(labels), np.nan)
        for k in range(cfg.global_branch.folds):
            out = dcv.run_fold(feats, np.where(fold != k, labels, -1), women, fold != k, k, cfg)
            logits[out["held_out_rows"]] = out["logits"]
        crossed = dcv.cross_fitted(labels, dcv.sigmoid(logits), fold, women)
        return crossed, dcv.nested_fitted(feats, labels, women, fold, logits, cfg, cache_dir=cache)

    (cross_a, nested_a), (cross_b, nested_b) = operating_points(y, tmp_path / "a"), operating_points(flipped, None)
    held = fold == 0
    assert nested_a[3]["0"] == nested_b[3]["0"]
    np.testing.assert_array_equal(nested_a[0][held], nested_b[0][held])
    assert cross_a[3]["0"] != cross_b[3]["0"] or not np.array_equal(cross_a[0][held], cross_b[0][held])
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(
        f"k{k}_j{j}.json" for k in range(3) for j in range(3) if j != k)

    monkeypatch.setattr(dcv, "fit_mil_head", lambda *a, **k: pytest.fail("refitted a cached pair"))
    logits = np.zeros(len(y))  # only the outer logits of each fold are re-read; the cache gives the inner ones
    again = dcv.nested_fitted(feats, y, women, fold, logits, cfg, cache_dir=tmp_path / "a")
    assert again[3] == nested_a[3]  # the choices read only the cached inner scores


def test_the_nested_choice_of_a_layer_takes_each_folds_best_inner_auroc_and_its_held_out_logits():
    def fold(j, rows, inner, logits):
        return {"fold": j, "held_out_rows": rows, "inner_auroc": inner, "candidates": logits}

    a = [fold(0, [0, 1], {"x": 0.60, "y": 0.70}, {"x": [1.0, 2.0], "y": [3.0, 4.0]}),
         fold(1, [2, 3], {"x": 0.65, "y": 0.50}, {"x": [5.0, 6.0], "y": [7.0, 8.0]})]
    b = [fold(0, [0, 1], {"z": 0.70}, {"z": [-1.0, -2.0]}),  # ties with a's y: the earlier run wins
         fold(1, [2, 3], {"z": 0.90}, {"z": [-3.0, -4.0]})]
    from conftest import load_benchmark

    bench = load_benchmark("ffdm_layers")
    logits, chosen = bench.nested_choice({"a": a, "b": b}, 4)
    assert logits.tolist() == [3.0, 4.0, -3.0, -4.0]
    assert [(c["run"], c["candidate"]) for c in chosen] == [("a", "y"), ("b", "z")]
    b[1]["held_out_rows"] = [3, 2]  # other folds: refused
    with pytest.raises(SystemExit, match="different rows"):
        bench.nested_choice({"a": a, "b": b}, 4)


def test_a_local_backbone_state_dict_is_what_the_features_come_from_and_names_the_cache(dataset, tmp_path):
    """global_branch.backbone_weights = a local torchvision mobilenet_v2 state dict (say one pretrained on
    mammograms): the extractor carries its tensors, the cache is keyed by its SHA-256, a missing file is named."""
    import torch
    import torchvision

    from classifier.global_branch import backbone_weights_file, build_feature_extractor
    from mammo.errors import WeightsError
    from mammo.weights_store import sha256_of

    files = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        files.append(tmp_path / f"mobilenet_v2_{seed}.pth")
        torch.save(torchvision.models.mobilenet_v2(weights=None).state_dict(), files[-1])
    cfg = tiny_config(size=64, grid=2, layer="features_17_conv_0_2", backbone_weights=str(files[0]))
    feats = extract_features(dataset, cfg, tmp_path / "cache", progress=False)
    assert feats.shape == (len(dataset), 2, 2, 2, 960)
    manifest = json.loads((tmp_path / "cache" / "features.json").read_text())
    assert manifest["backbone_sha256"] == sha256_of(files[0]) and manifest["layer"] == "features_17_conv_0_2"
    extractor = build_feature_extractor(64, files[0], layer="features_17_conv_0_2")
    kernel = extractor.layers[-1].get_layer("features_0_0").get_weights()[0]
    expected = torch.load(files[0], weights_only=True)["features.0.0.weight"].numpy().transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(kernel, expected)  # the file's tensors, not ImageNet's
    from classifier.global_branch import branch_input
    from mammo.imaging import read_mammogram
    from pipeline.digital.features import view_batch

    square = branch_input(read_mammogram(dataset[0].path).pixels, 64, cfg.global_branch.polarity)[0]
    by_hand = np.asarray(extractor.predict_on_batch(view_batch([square])))
    # random weights shrink the activations to ~1e-7, where the float16 cache keeps steps of its smallest subnormal
    assert np.abs(by_hand).max() > 0
    np.testing.assert_allclose(np.asarray(feats[0], np.float32), by_hand, rtol=1e-3,
                               atol=float(np.finfo(np.float16).smallest_subnormal))
    with pytest.raises(MammoError, match="backbone weights"):  # features of other weights are other features
        extract_features(dataset, replace(cfg, global_branch=replace(cfg.global_branch,
                                                                     backbone_weights=str(files[1]))),
                         tmp_path / "cache", progress=False)
    with pytest.raises(WeightsError, match="no such file") as err:
        backbone_weights_file(str(tmp_path / "absent.pth"))
    assert "absent.pth" in str(err.value)


def test_digital_train_fits_the_cross_validated_setting_and_its_model_scores_as_its_head(dataset, tmp_path):
    """`pipeline digital-train`: the head fitted on every image with the setting the folds chose, joined to the
    extractor; the saved branch scores an image as that head does on the cached features, it lists every image it
    was fitted on, and a config of another layer or other backbone weights is refused."""
    from classifier.global_branch import GlobalBranch, MilHead, pool_grid
    from mammo.imaging import read_mammogram
    from pipeline.digital.train import train_global_branch
    from standins import block_mean_extractor

    cfg, extractor = tiny_config(), block_mean_extractor()
    summary = dcv.run_digital_cv(cfg, tmp_path / "cv", progress=False, extractor=extractor, n_boot=20)
    folder = train_global_branch(cfg, tmp_path / "cv", tmp_path / "train", extractor=extractor)
    info = json.loads((folder / "head.json").read_text())
    assert (info["top_fraction"], info["spec"]["weight_decay"]) == (summary["settings"]["top_fraction"],
                                                                   summary["settings"]["weight_decay"])
    assert info["layer"] == cfg.global_branch.layer and info["trained_on"]["n_images"] == len(dataset)
    assert (folder / "trained_on.txt").read_text().split() == sorted(r.image_id for r in dataset)
    head = MilHead.from_dict(info["head"])
    feats = pool_grid(extract_features(dataset, cfg, tmp_path / "cv" / "features", progress=False,
                                       extractor=extractor), cfg.global_branch.grid)
    branch = GlobalBranch.load(folder)
    for i in (0, 5):
        logit = branch.analyse(read_mammogram(dataset[i].path).pixels).logit
        assert logit == pytest.approx(float(dcv.image_logits(head, feats[i:i + 1])[0]), abs=1e-3)
    for other in ({"layer": "features_14_conv_0_2"}, {"backbone_weights": "/elsewhere/mammo_mobilenet_v2.pth"}):
        with pytest.raises(MammoError, match="cross-validated at"):
            train_global_branch(tiny_config(**other), tmp_path / "cv", tmp_path / "again", extractor=extractor)


def test_bundle_digital_adds_the_branch_with_its_folds_operating_point_and_drops_a_stale_graph(dataset, tmp_path):
    """`pipeline bundle-digital`: the branch's files copied, pipeline.json's domains.digital carrying the
    threshold and calibration the cross-validation chose, the manifest rewritten; a model.onnx exported from the
    replaced model is removed (the manifest would otherwise vouch for a graph of another model)."""
    import shutil

    from pipeline.digital.train import train_global_branch
    from pipeline.models import MANIFEST, add_domain, verify_manifest
    from standins import block_mean_extractor

    cfg, extractor = tiny_config(), block_mean_extractor()
    summary = dcv.run_digital_cv(cfg, tmp_path / "cv", progress=False, extractor=extractor, n_boot=20)
    folder = train_global_branch(cfg, tmp_path / "cv", tmp_path / "train", extractor=extractor)
    root = tmp_path / "bundle"
    (root / "global").mkdir(parents=True)
    from conftest import REPO

    shutil.copy(REPO / "weights" / "pipeline.json", root / "pipeline.json")
    (root / "global" / "model.onnx").write_bytes(b"a graph of the previous model")
    add_domain(root, "digital", folder, summary)
    section = json.loads((root / "pipeline.json").read_text())["domains"]["digital"]
    assert section["threshold"] == summary["settings"]["score_threshold"]
    assert section["calibration"] == summary["settings"]["calibration"]
    assert section["probability_threshold"] == summary["settings"]["probability_threshold"]
    for name in ("model.keras", "head.json", "trained_on.txt"):
        assert (root / "global" / name).read_bytes() == (folder / name).read_bytes()
    assert not (root / "global" / "model.onnx").exists()
    assert "model.onnx" not in (root / MANIFEST).read_text()
    verify_manifest(root)
