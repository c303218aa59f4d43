"""The single-stage baseline: one classifier on the whole breast (the seeds' recipe), no detector.

It answers the question the two-stage design must: does finding lesions first help? Same split, same classifier
code (backbone, augmentation, calibration), the whole preprocessed breast as the one 'crop' of each image,
labelled by the image's pathology.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from tqdm import tqdm

from mammo.config import Config
from mammo.crops import crop_roi
from mammo.datasets import load_split_dataset
from mammo.imaging import read_mammogram
from mammo.preprocess import preprocess


def whole_breast(mammogram, cfg: Config, size: int) -> np.ndarray:
    """The breast region (as preprocessing finds it) as one square crop of `size` pixels."""
    frame = preprocess(mammogram, cfg.preprocess)
    h, w = frame.pixels.shape[:2]
    box = frame.to_original_boxes([[0, 0, w, h]])[0]
    crop, _ = crop_roi(mammogram.pixels, box, 0.0, size)
    return crop


def baseline_config(cfg: Config) -> Config:
    """The classifier settings of `cfg`, without lesion-specific crops (one crop per image, no margin)."""
    c = dataclasses.replace(cfg.classifier, context_margin=0.0, crops_per_lesion=1, negatives_per_image=0,
                            jitter=0.0)
    return dataclasses.replace(cfg, classifier=c)


def train_baseline(cfg: Config, run_dir, progress: bool = True) -> dict:
    from classifier.data import CropSet
    from classifier.train import train

    cfg = baseline_config(cfg)
    _, splits = load_split_dataset(cfg.data, run_dir)
    images, labels, names, groups = [], [], [], []
    size = cfg.classifier.input_size
    for split in ("train", "val"):
        for rec in tqdm(splits.get(split, ()), desc=f"baseline {split} images", disable=not progress):
            images.append(whole_breast(read_mammogram(rec.path), cfg, size))
            labels.append(rec.label)
            names.append(split)
            groups.append(rec.patient_id)
    crops = CropSet.from_arrays(np.stack(images), np.array(labels), names, input_size=size,
                                context_margin=0.0, groups=groups)
    return train(cfg, run_dir, crops=crops)


def score_images(model_dir, records, cfg: Config, progress: bool = True) -> dict:
    """{record image_id: calibrated P(malignant)} for each record (ids are unique where file names are not:
    every CBIS-DDSM image is 000000.dcm), plus the threshold chosen on validation."""
    from classifier.inference import MalignancyClassifier
    from pipeline.evaluate import BASELINE_THRESHOLD

    clf = MalignancyClassifier.load(model_dir, threads=cfg.run.threads)
    scores = {}
    for rec in tqdm(records, desc="baseline scores", disable=not progress):
        crop = whole_breast(read_mammogram(rec.path), cfg, clf.input_size)
        scores[rec.image_id] = float(clf.predict(crop[None])[0])
    scores[BASELINE_THRESHOLD] = clf.threshold
    return scores
