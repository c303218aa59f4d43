"""Patient-level train/val/test splits, stratified by the patient's label, and the split file every stage reads.

A woman's images (both breasts, both views, mass and calc entries of CBIS-DDSM) must all fall into one split:
otherwise a model is validated on the other view of a breast it was trained on. The patient's label is 1 when
any of her images is malignant.

Method (systematic stratified sampling, deterministic for a seed): within each label stratum the patients are
shuffled and spread evenly over [0, 1) with a random offset; all patients are then ordered by that position and
cut into consecutive chunks of the wanted sizes. Each chunk thus holds about its share of every stratum, also
for tiny sets where sklearn's stratified splitters refuse classes with fewer members than splits.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from mammo.atomic import atomic_write_text
from mammo.errors import AnnotationError
from mammo.records import ImageRecord

DEFAULT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def _counts(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Patients per split: largest remainder, then every split with a positive fraction gets >= 1 if possible."""
    names, f = list(fractions), np.array([fractions[k] for k in fractions], dtype=float)
    if (f < 0).any() or f.sum() <= 0:
        raise ValueError(f"split fractions must be >= 0 with a positive sum, got {fractions}")
    raw = f / f.sum() * n
    c = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - c), kind="stable")[: n - c.sum()]:
        c[i] += 1
    for i in np.flatnonzero((f > 0) & (c == 0)):
        j = int(np.argmax(c))
        if c[j] > 1:  # take from the largest split, never empty another one
            c[j] -= 1
            c[i] += 1
    return dict(zip(names, c.tolist()))


def split_by_patient(images, fractions: dict[str, float] | None = None,
                     seed: int = 0) -> dict[str, tuple[ImageRecord, ...]]:
    """{split name: images}, in the order of `fractions`; a fraction of 0 gives an empty split."""
    fractions = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    by_patient: dict[str, list[ImageRecord]] = {}
    for im in images:
        by_patient.setdefault(im.patient_id, []).append(im)
    label = {p: max(im.label for im in ims) for p, ims in by_patient.items()}
    rng = np.random.default_rng(seed)
    pos = {}
    for lab in (0, 1):
        ids = sorted(p for p in by_patient if label[p] == lab)  # sorted: result independent of input order
        offset = rng.random()
        for rank, i in enumerate(rng.permutation(len(ids))):
            pos[ids[i]] = (rank + offset) / len(ids)
    order = sorted(pos, key=lambda p: (pos[p], label[p], p))
    out, start = {}, 0
    for name, k in _counts(len(order), fractions).items():
        out[name] = tuple(im for p in order[start:start + k] for im in by_patient[p])
        start += k
    return out


def write_split_file(path, splits: dict[str, tuple[ImageRecord, ...]]) -> Path:
    """CSV image_id,patient_id,split. Internal to a run (holds patient ids): never part of exported results."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image_id", "patient_id", "split"])
    for name, ims in splits.items():
        for im in ims:
            w.writerow([im.image_id, im.patient_id, name])
    return atomic_write_text(path, buf.getvalue())


def read_split_file(path) -> dict[str, tuple[str, str]]:
    """{image_id: (patient_id, split)}; refuses a file in which a patient appears in two splits."""
    path = Path(path)
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"), newline="")))
    except OSError as e:
        raise AnnotationError(path, f"cannot read split file: {e}") from None
    out, patient_split = {}, {}
    for rowno, r in enumerate(rows, start=2):
        try:
            iid, pid, split = r["image_id"].strip(), r["patient_id"].strip(), r["split"].strip()
        except (KeyError, AttributeError):
            raise AnnotationError(path, "need columns image_id, patient_id, split", rowno) from None
        if patient_split.setdefault(pid, split) != split:
            raise AnnotationError(path, f"patient {pid!r} in splits {patient_split[pid]!r} and {split!r}", rowno)
        out[iid] = (pid, split)
    return out


def apply_split_file(images, path) -> dict[str, tuple[ImageRecord, ...]]:
    """Group `images` by the split file at `path`; every image must be listed there with the same patient."""
    table = read_split_file(path)
    out: dict[str, list[ImageRecord]] = {}
    for s in dict.fromkeys(s for _, s in table.values()):
        out[s] = []
    missing = [im.image_id for im in images if im.image_id not in table]
    if missing:
        raise AnnotationError(path, f"{len(missing)} image(s) not in the split file, e.g. {missing[:3]}")
    for im in images:
        pid, split = table[im.image_id]
        if pid != im.patient_id:
            raise AnnotationError(path, f"image {im.image_id!r} has patient {im.patient_id!r} here, {pid!r} in file")
        out[split].append(im)
    return {s: tuple(v) for s, v in out.items()}
