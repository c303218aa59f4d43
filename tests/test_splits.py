"""Patient-level splits: no woman in two splits, label ratio kept, deterministic, usable on tiny sets."""
from pathlib import Path

import numpy as np
import pytest

from mammo.errors import AnnotationError
from mammo.records import ImageRecord, Lesion
from mammo.splits import apply_split_file, read_split_file, split_by_patient, write_split_file


def make_images(n_patients, p_malignant=0.3, seed=0):
    """1 to 4 images per patient; a malignant patient has one malignant image, the others negative."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_patients):
        pid, bad = f"p{i:04d}", rng.random() < p_malignant
        for j in range(int(rng.integers(1, 5))):
            iid = f"{pid}_{j}"
            les = (Lesion(iid, pid, (1, 1, 5, 5), "mass", "malignant", "t"),) if bad and j == 0 else ()
            out.append(ImageRecord(iid, pid, Path(f"{iid}.png"), les))
    return out


def patient_labels(ims):
    lab = {}
    for im in ims:
        lab[im.patient_id] = max(lab.get(im.patient_id, 0), im.label)
    return lab


@pytest.mark.parametrize("n", [3, 7, 20, 101, 500])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_no_patient_crosses_splits(n, seed):
    images = make_images(n, seed=seed)
    splits = split_by_patient(images, seed=seed)
    assert list(splits) == ["train", "val", "test"]
    owner = {}
    for name, ims in splits.items():
        assert ims, f"split {name} empty with {n} patients"
        for im in ims:
            assert owner.setdefault(im.patient_id, name) == name
    assert sorted(im.image_id for ims in splits.values() for im in ims) == sorted(im.image_id for im in images)
    if n >= 100:  # label ratio (per patient) roughly kept in every split
        overall = np.mean(list(patient_labels(images).values()))
        for name, ims in splits.items():
            assert abs(np.mean(list(patient_labels(ims).values())) - overall) < 0.08, name
        n_pat = {k: len(patient_labels(v)) for k, v in splits.items()}
        assert abs(n_pat["train"] / n - 0.7) < 0.02


def test_deterministic_and_order_independent():
    images = make_images(60)
    a = split_by_patient(images, seed=5)
    b = split_by_patient(list(reversed(images)), seed=5)
    ids = lambda s: {k: sorted(im.image_id for im in v) for k, v in s.items()}  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(split_by_patient(images, seed=6)) != ids(a)


def test_zero_fraction_and_tiny_sets():
    images = make_images(10)
    s = split_by_patient(images, {"train": 0.8, "val": 0.2, "test": 0.0})
    assert s["test"] == () and s["train"] and s["val"]
    one_each = split_by_patient(make_images(3), seed=0)
    assert [len(patient_labels(v)) for v in one_each.values()] == [1, 1, 1]
    assert split_by_patient([], seed=0) == {"train": (), "val": (), "test": ()}
    with pytest.raises(ValueError):
        split_by_patient(images, {"train": -1, "val": 0.5})


def test_small_set_keeps_positives_in_each_split():
    # 4 malignant women out of 20: stratification gives val and test a share, train the rest
    images = [ImageRecord(f"i{i}", f"p{i}", Path("x"), (Lesion(f"i{i}", f"p{i}", None, "mass", "malignant", "t"),)
                          if i < 4 else ()) for i in range(20)]
    for seed in range(10):
        s = split_by_patient(images, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=seed)
        assert [sum(im.label for im in v) for v in s.values()] in ([2, 1, 1],)


def test_split_file_round_trip(tmp_path):
    images = make_images(30)
    splits = split_by_patient(images, seed=1)
    f = write_split_file(tmp_path / "split.csv", splits)
    assert f.read_text().splitlines()[0] == "image_id,patient_id,split"
    table = read_split_file(f)
    assert len(table) == len(images)
    again = apply_split_file(list(reversed(images)), f)
    assert {k: {im.image_id for im in v} for k, v in again.items()} == \
           {k: {im.image_id for im in v} for k, v in splits.items()}


def test_split_file_errors(tmp_path):
    f = tmp_path / "split.csv"
    f.write_text("image_id,patient_id,split\na,p1,train\nb,p1,val\n")
    with pytest.raises(AnnotationError, match=r"split.csv \(row 3\).*p1"):
        read_split_file(f)
    f.write_text("image_id,patient_id,split\na,p1,train\n")
    with pytest.raises(AnnotationError, match="not in the split file"):
        apply_split_file([ImageRecord("a", "p1", Path("a")), ImageRecord("b", "p2", Path("b"))], f)
    with pytest.raises(AnnotationError, match="patient"):
        apply_split_file([ImageRecord("a", "p9", Path("a"))], f)
