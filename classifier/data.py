"""Crop datasets: extraction from annotated images (cached on disk with a manifest) and tf.data pipelines.

Kinds of crops (the `kind` column of the manifest), all made by `mammo.crops.crop_roi`:
- 'truth': the annotated box of a lesion, as is. Validation metrics use these (benign vs malignant).
- 'jitter': `crops_per_lesion` copies of each lesion box with random shift / scale (`jitter`), so the model
  sees boxes as loose as a detector's.
- 'background': `negatives_per_image` boxes of lesion-like sizes inside the breast of NORMAL images, label 0:
  the detector's false positives look like this, so the classifier should score them low.
- 'detection' / 'detection_background': detector boxes, labelled by overlap with the truth (IoU >= 0.3: the
  lesion's pathology; IoU < 0.1: background; in between: ambiguous, not used).
Label 1 = malignant, 0 = benign lesion or normal tissue. Lesions without a box (MIAS '*NOTE 3*', image-level
labels of the folders format or box-less CSV rows) give no crop. What else such an image gives depends on its
label: a cancer image without a box for every lesion gives nothing at all (its cancer is somewhere unknown: no
crop of it can be labelled); a cancer-free image without any box is a negative like a normal one (background
crops, and every detection on it is a 'detection_background', label 0). Both are counted in the report. The cache key covers the image files (path, size, mtime), the truth, the detections and every
crop setting, so a stale cache is never reused.
"""
from __future__ import annotations

import csv
import hashlib
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from mammo import runtime
from mammo.atomic import atomic_path, atomic_write_text
from mammo.config import ClassifierConfig
from mammo.crops import crop_roi, jitter_box
from mammo.geometry import box_iou
from mammo.imaging import read_mammogram
from mammo.preprocess import breast_mask
from mammo.records import Detection, ImageRecord

CACHE_VERSION = 2  # 2: box-less cancer-free images give negatives
POS_IOU, NEG_IOU = 0.3, 0.1  # detection labelling thresholds
TEXT_COLUMNS = ("image_id", "patient_id", "source", "kind", "pathology")
MANIFEST_COLUMNS = ["crop", "image_id", "patient_id", "source", "kind", "label", "pathology", "lesion",
                    "x1", "y1", "x2", "y2"]


@dataclass
class CropSet:
    """Crops [N, S, S] (float16 on disk and in memory; float32 when fed) and one manifest row per crop."""

    images: np.ndarray
    manifest: pd.DataFrame
    settings: dict
    report: list = field(default_factory=list)

    @classmethod
    def from_arrays(cls, images, labels, splits, *, input_size: int, context_margin: float,
                    groups=None, kinds=None) -> "CropSet":
        """A crop set from arrays already in memory (crops made elsewhere, synthetic tasks, tests).
        `splits`: one split name per crop; `groups`: patient ids (default: one patient per crop)."""
        n = len(images)
        ids = [f"crop{i:06d}" for i in range(n)]
        manifest = pd.DataFrame({"crop": np.arange(n), "image_id": ids,
                                 "patient_id": list(groups) if groups is not None else ids,
                                 "source": "", "kind": list(kinds) if kinds is not None else ["truth"] * n,
                                 "label": np.asarray(labels, dtype=np.int64), "pathology": "",
                                 "lesion": -1, "x1": np.nan, "y1": np.nan, "x2": np.nan, "y2": np.nan,
                                 "split": list(splits)})
        return cls(np.asarray(images, dtype=np.float16), manifest,
                   {"input_size": input_size, "context_margin": context_margin})

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labels(self) -> np.ndarray:
        return self.manifest["label"].to_numpy(dtype=np.int64)

    def subset(self, mask) -> "CropSet":
        mask = np.asarray(mask, dtype=bool)
        return CropSet(self.images[mask], self.manifest[mask].reset_index(drop=True), self.settings, self.report)

    def select(self, split: str | None = None, kinds=None) -> "CropSet":
        mask = np.ones(len(self), dtype=bool)
        if split is not None:
            if "split" not in self.manifest:
                raise ValueError("crops have no split yet: call with_splits first")
            mask &= (self.manifest["split"] == split).to_numpy()
        if kinds is not None:
            mask &= self.manifest["kind"].isin(list(kinds)).to_numpy()
        return self.subset(mask)

    def with_splits(self, splits: dict) -> "CropSet":
        """Assign each crop the split of its image (`splits`: name -> ImageRecords); crops of images in no
        split are dropped."""
        where = {im.image_id: name for name, ims in splits.items() for im in ims}
        m = self.manifest.copy()
        m["split"] = m["image_id"].map(where)
        keep = m["split"].notna().to_numpy()
        return CropSet(self.images[keep], m[keep].reset_index(drop=True), self.settings, self.report)

    def check_settings(self, cfg: ClassifierConfig) -> None:
        for key in ("input_size", "context_margin"):
            if self.settings.get(key) != getattr(cfg, key):
                raise ValueError(f"crops were made with {key}={self.settings.get(key)}, the config says "
                                 f"{getattr(cfg, key)}: build the crops again for this config")


def crop_settings(cfg: ClassifierConfig, seed: int) -> dict:
    return {"input_size": cfg.input_size, "context_margin": cfg.context_margin, "jitter": cfg.jitter,
            "crops_per_lesion": cfg.crops_per_lesion, "negatives_per_image": cfg.negatives_per_image,
            "seed": seed, "version": CACHE_VERSION}


def _cache_key(records, settings: dict, detections) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for r in sorted(records, key=lambda r: r.image_id):
        st = r.path.stat() if r.path.is_file() else None
        h.update(repr((r.image_id, r.patient_id, str(r.path), st and st.st_size, st and st.st_mtime_ns,
                       [(l.box, l.pathology) for l in r.lesions])).encode())
    for iid in sorted(detections or {}):
        h.update(repr((iid, [(d.box, d.score) for d in detections[iid]])).encode())
    return h.hexdigest()[:16]


def _rng(seed: int, image_id: str) -> np.random.Generator:
    """One generator per image: an image's crops do not depend on which other images are in the set."""
    return np.random.default_rng([seed, zlib.crc32(image_id.encode())])


def _background_boxes(pixels, n: int, sizes: np.ndarray, rng) -> list[tuple]:
    """`n` boxes centred inside the breast, with sides drawn from the lesion box sizes."""
    mask = breast_mask(pixels)
    ys, xs = np.nonzero(mask)
    if len(xs) == 0 or n <= 0:
        return []
    out = []
    for k in rng.integers(0, len(xs), n):
        side = float(rng.choice(sizes))
        cx, cy = xs[k] + 0.5, ys[k] + 0.5
        out.append((cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
    return out


def _crops_of_image(rec: ImageRecord, cfg: ClassifierConfig, seed: int, sizes, detections) -> list[dict]:
    """Manifest rows (with the crop pixels under 'pixels') for one image."""
    pixels = read_mammogram(rec.path).pixels
    rng = _rng(seed, rec.image_id)
    rows = []

    def add(box, kind, label, pathology, lesion=-1):
        crop, _ = crop_roi(pixels, box, cfg.context_margin, cfg.input_size)
        rows.append({"image_id": rec.image_id, "patient_id": rec.patient_id, "source": str(rec.path), "kind": kind,
                     "label": int(label), "pathology": pathology, "lesion": lesion,
                     "x1": box[0], "y1": box[1], "x2": box[2], "y2": box[3], "pixels": crop})

    for i, les in enumerate(rec.lesions):
        if les.box is None:
            continue
        add(les.box, "truth", les.malignant, les.pathology, i)
        for _ in range(cfg.crops_per_lesion):
            add(jitter_box(les.box, rng, cfg.jitter), "jitter", les.malignant, les.pathology, i)
    cancer_free_unboxed = not rec.label and not rec.boxed_lesions  # normal, or a box-less 'no cancer' label
    if cancer_free_unboxed:
        for box in _background_boxes(pixels, cfg.negatives_per_image, sizes, rng):
            add(box, "background", 0, "normal" if not rec.lesions else "benign")
    dets = detections.get(rec.image_id, []) if detections else []
    if dets and cancer_free_unboxed and rec.lesions:  # whatever a box there hits, it is no cancer
        for d in dets:
            add(d.box, "detection_background", 0, "benign")
    elif dets and len(rec.boxed_lesions) == len(rec.lesions):  # an unboxed lesion would make labels unreliable
        truth = [l for l in rec.lesions]
        iou = box_iou([d.box for d in dets], [l.box for l in truth]) if truth else np.zeros((len(dets), 0))
        for d, row in zip(dets, iou):
            best = int(np.argmax(row)) if row.size else -1
            if row.size and row[best] >= POS_IOU:
                add(d.box, "detection", truth[best].malignant, truth[best].pathology, best)
            elif not row.size or row.max() < NEG_IOU:
                add(d.box, "detection_background", 0, "normal")
    return rows


def build_crops(records, cfg: ClassifierConfig, *, seed: int = 0, detections: dict | None = None,
                cache_dir=None, progress: bool = True) -> CropSet:
    """Crops of `records` for `cfg`, from the disk cache when an identical set was made before."""
    records = list(records)
    settings = crop_settings(cfg, seed)
    key = _cache_key(records, settings, detections)
    folder = Path(cache_dir or runtime.CACHE_DIR / "classifier_crops") / key
    report = _report(records, detections)
    if (folder / "manifest.csv").is_file():
        # ids as text: INbreast / VinDr ids look like numbers and must still match the records' ids
        manifest = pd.read_csv(folder / "manifest.csv", dtype={c: str for c in TEXT_COLUMNS}, keep_default_na=False)
        return CropSet(np.load(folder / "crops.npy"), manifest, settings, report)

    sizes = np.array([max(l.box[2] - l.box[0], l.box[3] - l.box[1]) for r in records for l in r.boxed_lesions])
    if len(sizes) == 0:
        sizes = np.array([64.0])  # no lesion to copy sizes from: a plausible mass size at 200 micron
    rows = []
    for rec in tqdm(records, desc="crops", unit="image", disable=not progress):
        rows.extend(_crops_of_image(rec, cfg, seed, sizes, detections))
    s = cfg.input_size
    images = np.stack([r.pop("pixels") for r in rows]).astype(np.float16) if rows else np.zeros((0, s, s), np.float16)
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS[1:])
    manifest.insert(0, "crop", np.arange(len(manifest)))
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "crops.npy") as tmp:
        np.save(tmp, images)
    atomic_write_text(folder / "settings.json", json.dumps({**settings, "report": report}, indent=2))
    with atomic_path(folder / "manifest.csv") as tmp:  # written last: its presence marks a complete cache
        manifest.to_csv(tmp, index=False)
    return CropSet(images, manifest, settings, report)


def _report(records, detections) -> list[str]:
    unboxed = [r for r in records if len(r.boxed_lesions) < len(r.lesions)]
    unknown = [r.image_id for r in unboxed if r.label or r.boxed_lesions]
    out = []
    if unknown:
        out.append(f"{len(unknown)} image(s) with a lesion without a box give no crop of it and no negative "
                   f"(its location is unknown): {', '.join(sorted(unknown)[:20])}{' ...' if len(unknown) > 20 else ''}")
        if detections:
            out.append("detections on those images are not used: they cannot be labelled against the truth")
    if len(unknown) < len(unboxed):
        out.append(f"{len(unboxed) - len(unknown)} cancer-free image(s) labelled without a box give negatives "
                   "only (background crops, detections as background)")
    return out


def read_detections_csv(path) -> dict[str, list[Detection]]:
    """Detector boxes in ORIGINAL pixels: CSV with columns image_id, x1, y1, x2, y2[, score]."""
    out: dict[str, list[Detection]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            box = tuple(float(row[k]) for k in ("x1", "y1", "x2", "y2"))
            out.setdefault(row["image_id"], []).append(Detection(box, float(row.get("score") or 1.0)))
    return out


# --- feeding the model --------------------------------------------------------------------------------------
def clahe_setting(cfg) -> tuple[float, int] | None:
    """(clip limit, tile grid) of the crops' CLAHE: the configured preprocess.clahe_* values when
    classifier.clahe is on, else None. Saved with the model, so inference equalises exactly as training did."""
    if not cfg.classifier.clahe:
        return None
    return float(cfg.preprocess.clahe_clip_limit), int(cfg.preprocess.clahe_tile_grid)


def prepare(crops: np.ndarray, clahe: tuple[float, int] | None = None) -> np.ndarray:
    """Crops [N, S, S] in [0, 1] -> float32 [N, S, S, 1], CLAHE-equalised with (clip limit, tile grid) when
    given. Training and inference both go through here, so a model always sees what it was trained on."""
    x = np.asarray(crops, dtype=np.float32)
    if x.ndim == 4:
        x = x[..., 0]
    if clahe:
        from mammo.preprocess import clahe as equalise

        x = np.stack([equalise(c, *clahe) for c in x]) if len(x) else x
    return np.clip(x, 0.0, 1.0).astype(np.float32)[..., None]


def augmenter(strength: float, seed: int):
    """Flips, rotation, zoom, shift, brightness and contrast, scaled by `strength` (lesions have no
    orientation, so any rotation and both flips are fair)."""
    import keras
    from keras import layers

    s = float(strength)
    return keras.Sequential([
        layers.RandomFlip("horizontal_and_vertical", seed=seed),
        layers.RandomRotation(min(0.5, 0.5 * s), fill_mode="reflect", seed=seed + 1),
        layers.RandomZoom(0.15 * s, fill_mode="reflect", seed=seed + 2),
        layers.RandomTranslation(0.1 * s, 0.1 * s, fill_mode="reflect", seed=seed + 3),
        layers.RandomBrightness(0.1 * s, value_range=(0.0, 1.0), seed=seed + 4),
        layers.RandomContrast(0.2 * s, value_range=(0.0, 1.0), seed=seed + 5),
    ], name="augment")


def make_dataset(x: np.ndarray, y: np.ndarray, *, batch_size: int, training: bool, augment_strength: float = 0.0,
                 seed: int = 0):
    """tf.data pipeline of (crop [S, S, 1], label) batches; shuffled and augmented when training."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x.astype(np.float32), y.astype(np.float32)))
    if training:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if training and augment_strength > 0:
        aug = augmenter(augment_strength, seed)
        ds = ds.map(lambda a, b: (tf.clip_by_value(aug(a, training=True), 0.0, 1.0), b),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
