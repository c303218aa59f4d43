"""Patient-level k-fold cross-validation of the whole pipeline, resumable fold by fold.

    out/folds.csv                  image_id, patient_id, fold (internal to the run: holds patient ids)
    out/folds/fold<k>/split.csv    the fold's train / val (inner patient split of the other folds) / test (fold k)
    out/folds/fold<k>/train/       `train_all` on train + val: detector, classifier (+ baseline), a bundle
    out/folds/fold<k>/predictions/ `infer` on fold k (low conf, many boxes: settings are chosen later)
    out/folds/fold<k>/DONE.json    written last and atomically: the fold is finished and is never redone
    out/oof/                       one infer-contract JSON per development image, scored with the settings chosen
                                   WITHOUT its fold (cross-fitted), plus predictions.csv
    out/operating_point.json       settings chosen on all OOF predictions + their cross-fitted OOF figures
    out/evaluation/                `pipeline evaluate` of out/oof (image, lesion, FROC, per lesion kind)
    out/config.yaml                the resolved config

A killed run resumes at the first unfinished fold (its partial training is redone; its prediction resumes per
image); `--fold N` runs one fold only, so folds can run one at a time or on several machines sharing `out`.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
import time
from pathlib import Path

import numpy as np

from mammo.atomic import atomic_write_text, folder_lock
from mammo.config import MAX_FOLDS, MAX_PREDICT_BOXES, Config, replace
from mammo.errors import MammoError
from mammo.splits import split_by_patient, write_split_file
from pipeline.evaluate import BASELINE_THRESHOLD, evaluate, froc_of, match
from pipeline.findings import FINDINGS_MAX, annotate_findings, choose_findings_operating_point, shown_boxes
from pipeline.models import BUNDLE_FILE, PipelineModels, read_bundle
from pipeline.operating_point import OofImage, OofSet, Settings, choose_operating_point
from pipeline.results import decide, read_results, write_predictions_csv, write_result

FOLD_DONE = "DONE.json"


def assign_folds(records, k: int, seed: int) -> dict[str, int]:
    """{image_id: fold}: patients (all of a woman's images together) spread over k folds, stratified by the
    patient's label (mammo.splits' systematic stratified sampling)."""
    if not 2 <= k <= MAX_FOLDS:
        raise MammoError(f"--folds {k}: expected 2 to {MAX_FOLDS}")
    patients = {r.patient_id for r in records}
    if len(patients) < k:
        raise MammoError(f"--folds {k}: only {len(patients)} patients in the dataset")
    parts = split_by_patient(records, {f"fold{i}": 1.0 for i in range(k)}, seed)
    return {r.image_id: i for i, (_, part) in enumerate(parts.items()) for r in part}


def fold_splits(records, folds: dict[str, int], k: int, cfg: Config) -> dict:
    """Fold k is the test split; the other folds are split by patient into train and val (the config's
    train/val fractions) for the detector's best epoch, the classifier's early stopping and calibration."""
    pool = [r for r in records if folds[r.image_id] != k]
    fractions = {s: cfg.data.split_fractions.get(s, 0.0) for s in ("train", "val")}
    if fractions["val"] <= 0 or fractions["train"] <= 0:
        raise MammoError(f"data.split_fractions {dict(cfg.data.split_fractions)}: cross-validation splits the "
                         "training folds into train and val, both fractions must be > 0")
    inner = split_by_patient(pool, fractions, cfg.data.seed)
    return {"train": inner["train"], "val": inner["val"],
            "test": tuple(r for r in records if folds[r.image_id] == k)}


def write_folds_file(path, records, folds) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image_id", "patient_id", "fold"])
    for r in records:
        w.writerow([r.image_id, r.patient_id, folds[r.image_id]])
    return atomic_write_text(path, buf.getvalue())


def fold_dir(out, k: int) -> Path:
    return Path(out) / "folds" / f"fold{k}"


def prediction_config(cfg: Config, conf: float, max_det: int) -> Config:
    """Fold predictions keep weak boxes and many of them, so that conf and max_det can be chosen afterwards by
    re-filtering."""
    if not 0 < conf < 1 or not 1 <= max_det <= MAX_PREDICT_BOXES:
        raise MammoError(f"prediction conf {conf} / max_det {max_det}: expected 0 < conf < 1 and "
                         f"1 <= max_det <= {MAX_PREDICT_BOXES}")
    # no findings rule: every candidate is one (they are chosen afterwards, like conf and max_det)
    return replace(cfg, detector=dataclasses.replace(cfg.detector, conf=conf, max_det=max_det, findings_conf=None))


def run_fold(cfg: Config, records, folds, k: int, out, *, conf: float, max_det: int, baseline: bool = False,
             progress: bool = True) -> dict:
    """Train on the other folds, predict fold k; returns the fold's DONE record (read back when finished)."""
    d = fold_dir(out, k)
    if (d / FOLD_DONE).is_file():
        print(f"fold {k}: finished earlier ({d / FOLD_DONE}), not redone")
        return json.loads((d / FOLD_DONE).read_text())
    with folder_lock(d):  # `--fold N` runs may share `out`; two runs of the same fold may not
        if (d / FOLD_DONE).is_file():  # finished by another run while this one waited
            return json.loads((d / FOLD_DONE).read_text())
        return _run_fold(cfg, records, folds, k, d, conf, max_det, baseline, progress)


def _run_fold(cfg, records, folds, k, d, conf, max_det, baseline, progress) -> dict:
    from pipeline.train_all import train_all

    started = time.time()
    splits = fold_splits(records, folds, k, cfg)
    write_split_file(d / "split.csv", splits)
    cfg_fold = replace(cfg, data=dataclasses.replace(cfg.data, split_file=str(d / "split.csv")),
                       run=dataclasses.replace(cfg.run, name=f"{cfg.run.name}-fold{k}"),
                       # the fold's own bundle scores with a fixed rule: the stacker is fitted on OOF afterwards
                       pipeline=dataclasses.replace(cfg.pipeline, aggregate="max" if cfg.pipeline.aggregate ==
                                                    "stacker" else cfg.pipeline.aggregate))
    bundle_dir = d / "train" / "bundle"
    if not (bundle_dir / BUNDLE_FILE).is_file():  # training is all-or-nothing: a killed training starts over
        shutil.rmtree(d / "train", ignore_errors=True)
        shutil.rmtree(d / "predictions", ignore_errors=True)  # made by models that no longer exist
        print(f"== fold {k}: training on {len(splits['train'])} + {len(splits['val'])} images (train + val), "
              f"fold {k} ({len(splits['test'])} images) held out")
        train_all(cfg_fold, bundle_dir, d / "train", description=f"cross-validation fold {k}",
                  progress=progress, baseline=baseline)
    print(f"== fold {k}: predicting its {len(splits['test'])} held-out images")
    cfg_pred = prediction_config(cfg_fold, conf, max_det)
    # this process trains the other folds on TensorFlow: its keras stays there (one backend per process)
    cfg_pred = replace(cfg_pred, classifier=dataclasses.replace(cfg_pred.classifier, inference_backend="tensorflow"))
    with PipelineModels.load(read_bundle(bundle_dir), cfg_pred) as models:
        from pipeline.infer import run_inference

        summary = run_inference([str(r.path) for r in splits["test"]], d / "predictions", models, cfg_pred,
                                progress=progress)
    if summary["failed"]:  # an image without OOF prediction would silently drop out of every figure
        raise MammoError(f"fold {k}: {summary['failed']} held-out image(s) failed: "
                         f"{[f['error'] for f in summary['failures']][:3]}; fix them and rerun")
    if baseline:
        from pipeline.baseline import score_images

        atomic_write_text(d / "baseline_scores.json",
                          json.dumps(score_images(d / "train" / "baseline", splits["test"], cfg_fold, progress)))
    done = {"fold": k, "n_train": len(splits["train"]), "n_val": len(splits["val"]), "n_test": len(splits["test"]),
            "predicted_with": {"detector.conf": conf, "detector.max_det": max_det},
            "seconds": round(time.time() - started, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_text(d / FOLD_DONE, json.dumps(done, indent=2))  # last: marks the fold finished
    return done


def load_oof(out, records, folds, k: int, conf: float, max_det: int) -> tuple[OofSet, dict]:
    """The OOF set (exactly one prediction per development image, refused otherwise) and the results by id."""
    images, results = [], {}
    by_id = {r.image_id: r for r in records}
    for fold in range(k):
        held = [r for r in records if folds[r.image_id] == fold]
        m = match(read_results(fold_dir(out, fold) / "predictions"), held)
        if m.unpredicted_images or m.unmatched_predictions:
            raise MammoError(f"fold {fold}: {len(m.unpredicted_images)} held-out image(s) without a prediction, "
                             f"{len(m.unmatched_predictions)} prediction(s) of images not in the fold")
        for res, rec in zip(m.results, m.records):
            if rec.image_id in results:
                raise MammoError(f"image {rec.image_id}: predicted in two folds")
            results[rec.image_id] = (res, fold)
            below = (res.below_conf,) if res.below_conf is not None else ()  # predicted above the floor
            images.append(OofImage(rec.image_id, rec.patient_id, fold, rec.label, tuple(res.lesions) + below))
    missing = set(by_id) - set(results)
    if missing:
        raise MammoError(f"{len(missing)} development image(s) without an OOF prediction, e.g. {sorted(missing)[:3]}")
    return OofSet(images, k, conf, max_det), results


def write_oof(out, oof: OofSet, results: dict, op: dict) -> Path:
    """Each image in the infer contract, as its own fold's cross-fitted settings see it: its score, calibrated
    probability and decision, and the boxes a reader would be shown (kept + findings, each marked)."""
    target = Path(out) / "oof"
    target.mkdir(parents=True, exist_ok=True)
    folds_findings = (op.get("findings") or {}).get("cross_fitted", {}).get("per_fold", {})
    chosen = {}  # image_id -> (its fold's settings, score, probability, lesions, below_conf): each fold at once
    for fold in oof.folds:
        settings = Settings.from_dict(op["per_fold_settings"][str(fold)])
        held = oof.only(fold)
        rule = folds_findings.get(str(fold))
        shown = shown_boxes(held, rule) if rule else [[] for _ in held.images]
        for im, score, prob, (kept, below), findings in zip(held.images, settings.scores(held),
                                                            settings.probabilities(held),
                                                            held.refiltered(settings.conf, settings.max_det), shown):
            chosen[im.image_id] = (settings, float(score), None if np.isnan(prob) else float(prob),
                                   marked_boxes(kept, findings if rule else kept, rule), below)
    rows = []
    for im in oof.images:
        res, fold = results[im.image_id]
        settings, score, prob, lesions, below = chosen[im.image_id]
        pred_dir = Path("..") / "folds" / f"fold{fold}" / "predictions"
        out_res = dataclasses.replace(res, score=score, threshold=settings.threshold,
                                      decision=decide(score, settings.threshold),
                                      lesions=lesions, below_conf=below, probability=prob,
                                      probability_threshold=settings.probability_threshold,
                                      threshold_source="its fold's own, chosen on the other folds' OOF predictions",
                                      heatmap=str(pred_dir / res.heatmap) if res.heatmap else "",
                                      overlay=str(pred_dir / res.overlay) if res.overlay else "",
                                      aggregate=settings.aggregate)
        write_result(target, out_res)
        rows.append({"image_id": res.image_id, "source": res.source, "score": f"{score:.5f}",
                     "probability": "" if prob is None else f"{prob:.5f}",
                     "n_lesions": len(out_res.lesions), "domain": res.domain, "status": "done", "error": ""})
    write_predictions_csv(target, rows)
    return target


def marked_boxes(kept, findings, rule: dict | None) -> list:
    """The boxes a reader sees, as infer writes them: each once, marked `scores_image` and `finding`, with the
    rule's box probabilities."""
    kept_ids, finding_ids = {id(l) for l in kept}, {id(l) for l in findings}
    boxes = list({id(l): l for l in list(kept) + list(findings)}.values())
    marked = [dataclasses.replace(l, scores_image=id(l) in kept_ids, finding=id(l) in finding_ids) for l in boxes]
    return annotate_findings(marked, rule)


def baseline_oof(out, k: int) -> dict:
    """The baseline's OOF scores with each image's own fold's threshold ({image_id: threshold} under
    BASELINE_THRESHOLD). A fold's threshold was chosen on its inner validation images, drawn from the OTHER
    folds: one threshold shared by all folds (their mean, as before) would judge fold k with labels of fold k."""
    merged, thresholds = {}, {}
    for f in range(k):
        scores = json.loads((fold_dir(out, f) / "baseline_scores.json").read_text())
        threshold = float(scores.pop(BASELINE_THRESHOLD))
        merged.update(scores)
        thresholds.update({image_id: threshold for image_id in scores})
    return {**merged, BASELINE_THRESHOLD: thresholds}


def detector_froc(oof: OofSet, records, hit_iou: float) -> dict:
    """FROC of every OOF box as predicted (before conf and boxes kept are chosen), overall and per lesion kind:
    what the detectors find at all, which the kept settings then trade against false positives."""
    by_id = {r.image_id: r for r in records}
    _, froc = froc_of([by_id[im.image_id] for im in oof.images], [im.lesions for im in oof.images], hit_iou)
    return {"predicted_with": {"detector.conf": oof.conf, "detector.max_det": oof.max_det}, **froc}


def cross_validate(cfg: Config, records, out, *, k: int, only_fold: int | None = None, conf: float = 0.001,
                   max_det: int = 50, baseline: bool = False, progress: bool = True) -> dict | None:
    """Run (or resume) the folds; once all are finished, choose the operating point and evaluate.
    Returns the summary, or None when folds remain (after `only_fold`)."""
    out = Path(out)
    folds = assign_folds(records, k, cfg.data.seed)
    write_folds_file(out / "folds.csv", records, folds)
    if only_fold is not None and not 0 <= only_fold < k:
        raise MammoError(f"--fold {only_fold}: expected 0 to {k - 1}")
    for fold in ([only_fold] if only_fold is not None else range(k)):
        run_fold(cfg, records, folds, fold, out, conf=conf, max_det=max_det, baseline=baseline, progress=progress)
    unfinished = [f for f in range(k) if not (fold_dir(out, f) / FOLD_DONE).is_file()]
    if unfinished:
        print(f"folds still to run: {unfinished} (run them with --fold N, or all without --fold)")
        return None
    done = [json.loads((fold_dir(out, f) / FOLD_DONE).read_text()) for f in range(k)]
    used = {(d["predicted_with"]["detector.conf"], d["predicted_with"]["detector.max_det"]) for d in done}
    if len(used) > 1:
        raise MammoError(f"the folds were predicted with different detector settings {sorted(used)}")
    conf, max_det = used.pop()
    oof, results = load_oof(out, records, folds, k, conf, max_det)
    op = choose_operating_point(oof, beta=cfg.pipeline.fbeta, min_specificity=cfg.pipeline.min_specificity,
                                n_boot=cfg.pipeline.bootstrap, seed=cfg.run.seed)
    op["findings"] = choose_findings_operating_point(oof, records, max_fp=cfg.pipeline.findings_max_fp,
                                                     findings_max=min(FINDINGS_MAX, max_det),
                                                     hit_iou=cfg.detector.hit_iou, centre=cfg.detector.hit_centre)
    atomic_write_text(out / "operating_point.json", json.dumps(op, indent=2, default=float))
    oof_dir = write_oof(out, oof, results, op)
    baselines = {}
    if all((fold_dir(out, f) / "baseline_scores.json").is_file() for f in range(k)):
        baselines["single-stage baseline"] = baseline_oof(out, k)
    report = evaluate(oof_dir, records, out / "evaluation", beta=cfg.pipeline.fbeta, hit_iou=cfg.detector.hit_iou,
                      n_boot=cfg.pipeline.bootstrap, seed=cfg.run.seed, baselines=baselines,
                      threshold_source="each fold's own, chosen on the other folds' OOF predictions")
    summary = {"k": k, "folds": done, "fold_seconds_total": round(sum(d["seconds"] for d in done), 1),
               "operating_point": op["settings"], "oof_figures": op["figures"],
               "findings": {"rule": op["findings"]["rule"],
                            "detector.findings_conf": op["findings"]["detector.findings_conf"],
                            "cross_fitted": op["findings"]["cross_fitted"]["figures"]},
               "detector_froc_all_oof_boxes": detector_froc(oof, records, cfg.detector.hit_iou),
               "evaluation": str(out / "evaluation" / "metrics.md")}
    atomic_write_text(out / "cv_summary.json", json.dumps(summary, indent=2, default=float))
    return summary
