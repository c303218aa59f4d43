"""Train both stages on one patient-level split and package them as a model bundle, in one command.

detector (export-dataset + train) -> classifier (train, calibrated on validation) -> the image-level operating
threshold chosen on the validation images (max F-beta of the image score), or the settings `cross-validate` chose
out of fold (--operating-point) -> bundle folder with pipeline.json.
The demo bundle (synthetic data) and the shipped MIAS bundle are both made here.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mammo import metrics
from mammo.atomic import atomic_write_text
from mammo.config import Config, to_dict
from mammo.datasets import load_split_dataset
from mammo.errors import MammoError
from mammo.imaging import read_mammogram
from mammo.runs import start_run
from pipeline.infer import StepTimer, analyse_image, image_score
from pipeline.models import PipelineModels, write_bundle

# Settings the models are trained with and inference must reuse: shipped inside the bundle.
BUNDLED_SECTIONS = ("preprocess", "detector")


def bundled_overrides(cfg: Config) -> list[str]:
    sections = to_dict(cfg)
    return [f"{section}.{key}={json.dumps(value)}" for section in BUNDLED_SECTIONS
            for key, value in sections[section].items()] + [f"pipeline.aggregate={cfg.pipeline.aggregate}"]


def image_scores(models: PipelineModels, records, cfg: Config, progress: bool = True) -> np.ndarray:
    """The pipeline's image score for each record (the same code path as `infer`)."""
    timer, scores = StepTimer(), []
    for rec in tqdm(records, desc="score images", unit="img", disable=not progress):
        lesions, _, below_conf = analyse_image(read_mammogram(rec.path), models, cfg, timer)
        scores.append(image_score(lesions, below_conf, models, cfg))
    return np.asarray(scores, dtype=np.float64)


def train_all(cfg: Config, out_dir, work_dir, *, description: str, progress: bool = True,
              baseline: bool = True, operating_point: dict | None = None) -> dict:
    from classifier.train import train as train_classifier
    from detector.dataset import export_from_config
    from detector.train import train as train_detector

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    start_run(cfg, work_dir)
    started = time.time()
    load_split_dataset(cfg.data, work_dir)  # split.csv: the one split both stages use
    cfg_split = cfg if cfg.data.split_file else _with_split_file(cfg, work_dir / "split.csv")

    steps = 4 if baseline else 3
    print(f"== 1/{steps} detector")
    export = export_from_config(cfg_split, work_dir / "detector-data")
    det_metrics = train_detector(cfg_split, export.data_yaml, work_dir / "detector")
    print(f"== 2/{steps} classifier")
    clf_metrics = train_classifier(cfg_split, work_dir / "classifier")
    extra = {"detector": det_metrics, "classifier": clf_metrics}
    if baseline:  # the reference the two-stage design is measured against, on the same split
        from pipeline.baseline import train_baseline

        print(f"== 3/{steps} single-stage baseline (whole breast)")
        extra["baseline"] = train_baseline(cfg_split, work_dir / "baseline", progress=progress)
    print(f"== {steps}/{steps} operating threshold " + ("on the validation images" if operating_point is None else
                                                         f"chosen on {operating_point['source']}"))
    summary = make_bundle(cfg_split, work_dir / "detector" / "weights" / "best.pt", work_dir / "classifier",
                          out_dir, description=description, progress=progress, extra=extra,
                          baseline_dir=work_dir / "baseline" if baseline else None,
                          operating_point=operating_point)
    summary["train_seconds"] = round(time.time() - started, 1)
    return summary


def make_bundle(cfg: Config, detector_weights, classifier_dir, out_dir, *, description: str, progress: bool = True,
                extra: dict | None = None, baseline_dir=None, operating_point: dict | None = None) -> dict:
    """Package trained models: choose the image-level threshold on the validation split (max F-beta of the
    pipeline's own image scores among thresholds keeping validation specificity >= pipeline.min_specificity),
    then write the bundle with its manifest. With `operating_point` (from `pipeline cross-validate`), conf,
    boxes kept, image-score rule (and stacker) and threshold come from the k-fold OOF predictions instead, and
    pipeline.json records so, with k and the OOF figures. training_summary.json names the figures it holds:
    `image_level_val` (the validation split) or `image_level_oof_cross_fitted`."""
    if operating_point is None:
        threshold, val_metrics, split_sizes = _threshold_on_validation(cfg, detector_weights, classifier_dir,
                                                                       progress)
        figures = {"image_level_val": val_metrics, "split_sizes": split_sizes}
        info = {"val_metrics": val_metrics,
                "split": {"fractions": dict(cfg.data.split_fractions), "seed": cfg.data.seed,
                          "min_specificity": cfg.pipeline.min_specificity}}
    else:
        from pipeline.operating_point import bundle_info, with_operating_point

        cfg = with_operating_point(cfg, operating_point)
        chosen = bundle_info(operating_point)
        threshold = chosen["threshold"]
        figures = {"image_level_oof_cross_fitted": chosen["operating_point"]["figures"]["cross_fitted"],
                   "operating_point": chosen["operating_point"]}
        info = {key: chosen[key] for key in ("stacker", "calibration", "operating_curve", "findings", "operating_point")}
    summary = {**(extra or {}), "threshold": threshold, **figures}
    atomic_write_text(Path(out_dir) / "training_summary.json", json.dumps(summary, indent=2, default=float))
    write_bundle(out_dir, detector_weights, classifier_dir, threshold, bundled_overrides(cfg), description,
                 baseline_dir=baseline_dir, trained_on=cfg.data.format, **info)
    return summary


def _threshold_on_validation(cfg: Config, detector_weights, classifier_dir, progress: bool):
    from classifier.inference import MalignancyClassifier
    from detector.model import LesionDetector

    _, splits = load_split_dataset(cfg.data)
    if "val" not in splits or not splits["val"]:
        raise MammoError("the config's dataset has no validation split to choose the operating threshold on")
    val = splits["val"]
    detector = LesionDetector.load(detector_weights, cfg.detector, device=cfg.run.device, threads=cfg.run.threads)
    classifier = MalignancyClassifier.load(classifier_dir, threads=cfg.run.threads)
    with PipelineModels(detector, classifier, 0.5) as models:
        scores = image_scores(models, val, cfg, progress)
    labels = np.array([r.label for r in val])
    threshold, _ = metrics.best_threshold(labels, scores, cfg.pipeline.fbeta, cfg.pipeline.min_specificity)
    return threshold, metrics.summary(labels, scores, threshold, cfg.pipeline.fbeta), \
        {k: len(v) for k, v in splits.items()}


def _with_split_file(cfg: Config, split_file: Path) -> Config:
    import dataclasses

    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, split_file=str(split_file)))
