"""The whole-image baseline on the digital folds (pipeline/digital/baseline.py): the same folds as the global
branch, a fold trained on its training women's labels only, resume of a killed run, the mirror-averaged logit and
the fusion rule by hand. Stand-in models of known output replace training wherever a figure is asserted."""
import json

import numpy as np
import pytest

from mammo.config import ClassifierConfig, Config, GlobalBranchConfig, replace
from mammo.errors import MammoError
from pipeline.digital import baseline as dbl
from pipeline.digital import cross_validate as dcv
from test_digital_cv import SIZE, BlockFeatures, dataset, tiny_config  # noqa: F401  (dataset: a fixture)


def baseline_config() -> Config:
    cfg = tiny_config()
    return replace(cfg, classifier=ClassifierConfig(backbone="small_cnn", weights="none", input_size=SIZE,
                                                    epochs=1, batch_size=8, patience=1, augment_strength=0.0))


class MeanModel:
    """A stand-in classifier of known output: P(malignant) = sigmoid(4 (mean of the left half - mean of the right))."""

    def __call__(self, x, training=False):
        half = x.shape[2] // 2
        z = 4 * (x[:, :, :half].mean(axis=(1, 2, 3)) - x[:, :, half:].mean(axis=(1, 2, 3)))
        return (1 / (1 + np.exp(-z)))[:, None]


def test_mirror_averaged_logit_by_hand():
    """An image and its mirror give opposite logits under MeanModel, so their mean is 0 for every image."""
    x = np.random.default_rng(0).random((5, 8, 8)).astype(np.float16)
    p = np.asarray(MeanModel()(x[..., None].astype(np.float32))).ravel()
    single = np.log(p / (1 - p))
    assert np.abs(single).max() > 0.01  # not symmetric images
    assert np.allclose(dbl.mirrored_logits(MeanModel(), x, batch=2), 0, atol=1e-6)


def test_fusion_weight_comes_from_the_other_folds():
    rng = np.random.default_rng(1)
    y = np.tile([0, 1], 30)
    fold = np.repeat([0, 1, 2], 20)
    good = y + rng.normal(0, 0.3, 60)  # separates the classes
    noise = rng.normal(0, 1, 60)
    _, weights = dbl.fused(good, noise, y, fold)
    assert weights == {"0": 1.0, "1": 1.0, "2": 1.0}  # the baseline alone wins on every fold's other folds
    _, weights = dbl.fused(noise, good, y, fold)
    assert weights == {"0": 0.0, "1": 0.0, "2": 0.0}
    # fold 0's weight and scale come from folds 1 and 2 only: its own values change nothing else
    changed = good.copy()
    changed[fold == 0] = rng.normal(0, 5, 20)
    again, w2 = dbl.fused(changed, noise, y, fold)
    assert w2["0"] == 1.0
    ref = good[fold != 0]
    assert np.allclose(again[fold == 0], (changed[fold == 0] - ref.mean()) / ref.std())


def test_paired_difference_of_a_model_with_itself_is_zero():
    rng = np.random.default_rng(2)
    y = np.tile([0, 1], 20)
    s = rng.normal(size=40)
    women = np.repeat(np.arange(10), 4)
    assert dbl.paired_auroc_difference(y, s, s, women, 50, 0) == (0.0, 0.0, 0.0)


def test_a_fold_is_trained_on_its_training_womens_labels_only(dataset, tmp_path, monkeypatch):
    """The held-out rows carry label -1 when run_fold is called; the training stand-in sees every crop it is
    given: none is held out, all labels are 0 or 1, and the validation women are not training women."""
    import classifier.train
    import keras

    seen = {}

    def fake_train(cfg, run_dir, crops):
        seen["crops"] = crops
        run_dir.mkdir(parents=True, exist_ok=True)
        inp = keras.Input((SIZE, SIZE, 1))
        pooled = keras.layers.GlobalAveragePooling2D()(inp)
        keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(pooled)).save(run_dir / "model.keras")
        (run_dir / "history.json").write_text(json.dumps({"val_auroc": [0.5]}))
        return {"best_epoch": 1, "val": {"auroc": 0.5}, "train_seconds": 0.0}

    monkeypatch.setattr(classifier.train, "train", fake_train)
    cfg = baseline_config()
    y = np.array([r.label for r in dataset])
    train = np.arange(len(y)) % 3 != 0
    images = dbl.whole_images(dataset, cfg, progress=False)
    out = dbl.run_fold(images, np.where(train, y, -1), dataset, train, 0, cfg, tmp_path)
    crops = seen["crops"]
    assert len(crops) == train.sum() and set(crops.labels) <= {0, 1}
    man = crops.manifest
    assert not set(man[man.split == "val"].patient_id) & set(man[man.split == "train"].patient_id)
    assert out["held_out_rows"] == np.flatnonzero(~train).tolist() and len(out["logits"]) == (~train).sum()


def test_same_folds_as_the_branch_resume_and_summary(dataset, tmp_path):
    """A real (tiny) run: the branch's folds, a killed fold resumed without redoing the others, the figures
    and the comparison with the branch present."""
    branch_run = tmp_path / "branch"
    dcv.run_digital_cv(tiny_config(), branch_run, progress=False, extractor=BlockFeatures(), n_boot=20)
    cfg, out = baseline_config(), tmp_path / "baseline"
    assert dbl.run_baseline_cv(cfg, out, against=branch_run, only_fold=1, progress=False, n_boot=20) is None
    summary = dbl.run_baseline_cv(cfg, out, against=branch_run, progress=False, n_boot=20)
    assert (out / "folds.csv").read_text() == (branch_run / "folds.csv").read_text()
    oof = summary["oof"]
    assert len(oof["logit"]) == len(dataset) and np.isfinite(oof["logit"]).all()
    fusion = summary["against_branch"]["fusion"]
    assert set(fusion["weights_per_fold"].values()) <= set(dbl.FUSION_WEIGHTS)
    assert len(summary["against_branch"]["auroc_baseline_minus_branch"]) == 3
    before = (out / "folds" / "fold0" / "DONE.json").read_text()
    (out / "folds" / "fold2" / "DONE.json").unlink()  # killed in fold 2
    again = dbl.run_baseline_cv(cfg, out, against=branch_run, progress=False, n_boot=20)
    assert (out / "folds" / "fold0" / "DONE.json").read_text() == before
    assert again["oof"]["fold"] == oof["fold"]


def test_a_branch_run_on_other_folds_is_refused(dataset, tmp_path):
    branch_run = tmp_path / "branch"
    dcv.run_digital_cv(tiny_config(), branch_run, progress=False, extractor=BlockFeatures(), n_boot=20)
    summary = json.loads((branch_run / "summary.json").read_text())
    summary["oof"]["fold"] = [(k + 1) % 3 for k in summary["oof"]["fold"]]
    (branch_run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(MammoError, match="folds are not these"):
        dbl.run_baseline_cv(baseline_config(), tmp_path / "b", against=branch_run, progress=False)
    summary["oof"]["image_id"] = summary["oof"]["image_id"][::-1]
    (branch_run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(MammoError, match="other images"):
        dbl.run_baseline_cv(baseline_config(), tmp_path / "b", against=branch_run, progress=False)


def test_the_report_is_written_with_the_comparison(dataset, tmp_path):
    branch_run = tmp_path / "branch"
    dcv.run_digital_cv(tiny_config(), branch_run, progress=False, extractor=BlockFeatures(), n_boot=20)
    out = tmp_path / "baseline"
    dbl.run_baseline_cv(baseline_config(), out, against=branch_run, progress=False, n_boot=20)
    text = (out / "evaluation" / "metrics.md").read_text()
    assert "baseline minus branch" in text and "| fusion |" in text
    for name in ("roc.png", "pr.png", "reliability.png"):
        assert (out / "evaluation" / name).stat().st_size > 0


def test_both_digital_cross_validations_on_a_real_subset(tmp_path, monkeypatch):
    """The real digital images (a subset of 16 women: 2 cancer images in 3) through the reader, the polarity rule,
    the woman-level folds, the branch (stand-in features) and the whole-image baseline (a tiny CNN, one epoch):
    every image scored once, out of fold, by woman. Contracts only: nothing here depends on what is learned."""
    from test_image_labels import RSNA_DIR
    from mammo.annotations import read_annotations

    if not (RSNA_DIR / "malignant").is_dir():  # data, never in git: a visible skip, as the other real-data tests
        pytest.skip(f"rsna-ffdm-640 not found at {RSNA_DIR} (set MAMMO_RSNA_DIR to run this test)")
    images = read_annotations("folders", RSNA_DIR, aspect_squashed=True).images
    by_woman = {}
    for r in sorted(images, key=lambda r: r.image_id):
        by_woman.setdefault((r.label, r.patient_id), []).append(r)
    women = sorted(w for w in by_woman if w[0] == 1)[:6] + sorted(w for w in by_woman if w[0] == 0)[:10]
    subset = sorted((r for w in women for r in by_woman[w]), key=lambda r: r.image_id)
    monkeypatch.setattr(dcv, "dataset_records", lambda cfg: subset)
    branch_run = tmp_path / "branch"
    dcv.run_digital_cv(tiny_config(), branch_run, progress=False, extractor=BlockFeatures(), n_boot=20)
    summary = dbl.run_baseline_cv(baseline_config(), tmp_path / "baseline", against=branch_run, progress=False,
                                  n_boot=20)
    oof = summary["oof"]
    assert oof["image_id"] == [r.image_id for r in subset] and np.isfinite(oof["logit"]).all()
    fold = np.array(oof["fold"])
    for w in {r.patient_id for r in subset}:
        assert len(set(fold[[r.patient_id == w for r in subset]])) == 1
    assert sum(d["n"] for k, d in summary["figures"]["per_fold"].items() if k != "mean_auroc") == len(subset)
