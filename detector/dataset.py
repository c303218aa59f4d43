"""Export annotated mammograms as an ultralytics detection dataset.

Layout (relocatable: data.yaml has no `path:` key, so ultralytics resolves the folders next to it):

    data.yaml                  train/val[/test] folders, names, `channels: 1`; no `download:` key
    images/<split>/00000.png   the preprocessed frame letterboxed to imgsz x imgsz, 8-bit, 1 channel
    labels/<split>/00000.txt   `class cx cy w h`, normalized; empty for a normal image
    manifest.json              per image: split, source file, image id, transform ORIGINAL -> written image,
                               lesions in both grids; plus the images not exported and why

Images are numbered, not named after the source: identifiers in file names (CBIS-DDSM's
'Mass-Test_P_00820_LEFT_CC') must not leak into exported files. The manifest maps the numbers back.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import yaml
from tqdm import tqdm

from mammo.atomic import atomic_write_text
from mammo.config import Config, PreprocessConfig, to_dict
from mammo.datasets import load_split_dataset
from mammo.errors import AnnotationError, ConfigError
from mammo.imaging import read_mammogram
from mammo.preprocess import preprocess
from mammo.records import ImageRecord, Lesion

from detector.frames import clip_to_shape, letterbox_input, normalizer

MIN_BOX_PIXELS = 1.0  # a lesion narrower than this after letterboxing cannot be learned: noted, not written


def class_index(lesion: Lesion, classes: Sequence[str]) -> int:
    """One class: everything is a 'lesion'. Several: the lesion's abnormality, or 'other' when listed."""
    if len(classes) == 1:
        return 0
    if lesion.abnormality in classes:
        return list(classes).index(lesion.abnormality)
    if "other" in classes:
        return list(classes).index("other")
    raise ConfigError(f"detector.classes: lesion {lesion.image_id} is a '{lesion.abnormality}', which is not in "
                      f"{list(classes)}; add it or an 'other' class")


@dataclass(frozen=True)
class ExportResult:
    root: Path
    data_yaml: Path
    manifest: Path
    counts: dict  # split -> {'images', 'positives', 'lesions'}


def export_dataset(splits: dict[str, Sequence[ImageRecord]], out_dir, *, imgsz: int, classes: Sequence[str],
                   preprocess_cfg: PreprocessConfig = PreprocessConfig(), train_negatives: float = 1.0,
                   seed: int = 0, require_positives: Sequence[str] = ("train", "val"),
                   source: str = "annotations") -> ExportResult:
    """Write `splits` (from any annotation reader, split by patient) as a dataset under `out_dir`.

    `train_negatives` keeps that fraction of the lesion-free training images (chosen with `seed`); other
    splits keep all of theirs, since false positives are counted on them. Images with a lesion that has no
    box are judged by their label (`_boxless_role`): a cancer-free image without any box (an image-level
    'benign' label: the folders format, a CSV row without coordinates) is a background negative like a normal
    one; a cancer image without a box for every lesion (MIAS '*NOTE 3*', image-labelled cancers) has a lesion
    somewhere unknown, so it is neither a clean negative nor a usable positive: left out of every split, listed
    in the manifest and counted (counts[split]['boxless_cancer_excluded']). `source` names the annotation file
    in errors.
    """
    out = Path(out_dir)
    if not any(splits.values()):
        raise AnnotationError(source, "no images to export (empty dataset)")
    if not splits.get("val"):
        raise AnnotationError(source, "the 'val' split is empty; ultralytics needs validation images "
                                      "(check data.split_fractions / data.split_file)")
    for name in require_positives:
        if not any(r.boxed_lesions and _all_boxed(r) for r in splits.get(name, ())):
            raise AnnotationError(source, f"the '{name}' split has no image with a boxed lesion: nothing to "
                                          f"train or validate a detector on")
    skipped, entries = [], []
    counts = {}
    rng = np.random.default_rng(seed)
    for split, records in splits.items():
        kept, n_excluded = [], 0
        for r in records:
            why = _boxless_role(r)
            if why == "excluded":
                n_excluded += 1
                skipped.append({"image_id": r.image_id, "source": str(r.path), "split": split,
                                "reason": "a lesion without coordinates (image-level label only) in a cancer image "
                                          "or beside boxed lesions: its location is unknown, so the image is "
                                          "neither a clean negative nor a usable positive"})
            else:
                kept.append(r)
        n_boxless_negatives = sum(_boxless_role(r) == "negative" for r in kept)
        if split == "train" and train_negatives < 1.0:
            negatives = [i for i, r in enumerate(kept) if not r.boxed_lesions]
            n_keep = round(len(negatives) * max(train_negatives, 0.0))
            drop = set(np.asarray(negatives)[rng.permutation(len(negatives))[n_keep:]].tolist())
            for i in sorted(drop):
                skipped.append({"image_id": kept[i].image_id, "source": str(kept[i].path), "split": split,
                                "reason": f"normal image left out (detector.train_negatives={train_negatives})"})
            n_boxless_negatives -= sum(_boxless_role(kept[i]) == "negative" for i in drop)
            kept = [r for i, r in enumerate(kept) if i not in drop]
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        n_pos = n_les = 0
        for k, rec in enumerate(tqdm(kept, desc=f"export {split}", unit="img", leave=False)):
            entry = _export_one(rec, out, split, f"{k:05d}", imgsz, classes, preprocess_cfg)
            entries.append(entry)
            labelled = sum("note" not in lesion for lesion in entry["lesions"])
            n_pos += bool(labelled)
            n_les += labelled
        counts[split] = {"images": len(kept), "positives": n_pos, "lesions": n_les,
                         "boxless_negatives": n_boxless_negatives, "boxless_cancer_excluded": n_excluded}
        if n_excluded or n_boxless_negatives:
            print(f"detector data, {split}: {n_excluded} image(s) with a lesion but no box left out (location "
                  f"unknown), {n_boxless_negatives} box-less cancer-free image(s) used as background negatives")

    names = list(classes)
    # An evaluation export has only 'val'; ultralytics insists on a 'train' key, so it points at the same images.
    data = {"train": "images/train" if "train" in splits else "images/val", "val": "images/val",
            **({"test": "images/test"} if "test" in splits else {}), "nc": len(names), "names": names, "channels": 1}
    data_yaml = atomic_write_text(out / "data.yaml", "# written by `python -m detector export-dataset`; folders "
                                  "are relative to this file\n" + yaml.safe_dump(data, sort_keys=False))
    manifest = {"imgsz": imgsz, "classes": names, "preprocess": to_dict(preprocess_cfg), "counts": counts,
                "images": entries, "skipped": skipped}
    manifest_path = atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1))
    return ExportResult(out, data_yaml, manifest_path, counts)


def _all_boxed(rec: ImageRecord) -> bool:
    return all(lesion.box is not None for lesion in rec.lesions)


def _boxless_role(rec: ImageRecord) -> str:
    """'boxed' (every lesion has a box, or it has none), 'negative' (cancer-free and no box at all: mostly a
    normal screening view; a benign finding it may hold is taught as background, the price of learning from
    such images) or 'excluded' (a cancer without a box, or an unboxed lesion beside boxed ones: a detector
    taught that its unknown location is background would learn to miss it)."""
    if _all_boxed(rec):
        return "boxed"
    return "negative" if not rec.label and not rec.boxed_lesions else "excluded"


def _export_one(rec: ImageRecord, out: Path, split: str, stem: str, imgsz: int, classes, pp_cfg) -> dict:
    mammogram = read_mammogram(rec.path)  # ImageReadError names the file
    model_input = letterbox_input(preprocess(mammogram, pp_cfg), imgsz)
    to_input = model_input.transform
    lesions, lines = [], []
    for lesion in rec.boxed_lesions:  # a box-less cancer-free image is written as a negative (no label lines)
        box = clip_to_shape(to_input.apply_boxes([lesion.box]), (imgsz, imgsz))[0]
        entry = {"box_original": [round(v, 2) for v in lesion.box], "box_image": np.round(box, 2).tolist(),
                 "class": classes[class_index(lesion, classes)], "abnormality": lesion.abnormality,
                 "pathology": lesion.pathology}
        if min(box[2] - box[0], box[3] - box[1]) < MIN_BOX_PIXELS:
            entry["note"] = "smaller than a pixel after preprocessing (or outside the breast crop); not labelled"
        else:
            x1, y1, x2, y2 = normalizer((imgsz, imgsz)).apply_boxes([box])[0]
            lines.append(f"{class_index(lesion, classes)} {(x1 + x2) / 2:.6f} {(y1 + y2) / 2:.6f} "
                         f"{x2 - x1:.6f} {y2 - y1:.6f}")
        lesions.append(entry)
    image_rel = f"images/{split}/{stem}.png"
    if not cv2.imwrite(str(out / image_rel), model_input.pixels):
        raise OSError(f"{out / image_rel}: could not write the image")
    (out / "labels" / split / f"{stem}.txt").write_text("".join(line + "\n" for line in lines))
    return {"file": image_rel, "split": split, "image_id": rec.image_id, "source": str(rec.path),
            "original_shape": list(mammogram.shape), "transform": to_input.to_dict(),
            "flipped": model_input.flipped, "lesions": lesions}


def export_from_config(cfg: Config, out_dir, require_positives: Sequence[str] = ("train", "val"),
                       only: str | None = None) -> ExportResult:
    """Read the config's annotations, split them by patient (split.csv saved in `out_dir`), export.

    `only` names one split to export alone, as 'val' (to evaluate it with ultralytics' validator).
    """
    _, splits = load_split_dataset(cfg.data, run_dir=out_dir)
    if only:
        if only not in splits:
            raise ConfigError(f"data.split_fractions: no split named {only!r} (have {list(splits)})")
        splits = {"val": splits[only]}
    return export_dataset(splits, out_dir, imgsz=cfg.detector.imgsz, classes=cfg.detector.classes,
                          preprocess_cfg=cfg.preprocess, train_negatives=cfg.detector.train_negatives,
                          seed=cfg.run.seed, require_positives=require_positives, source=cfg.data.annotations)
