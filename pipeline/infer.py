"""Full-image inference: read -> detect -> crop -> classify -> Grad-CAM -> map back -> write.

Images are streamed one at a time (memory stays bounded on a folder of any size). Each image's JSON is written
last and atomically, so it marks the image as done: a rerun on the same folder skips done images, and a killed
run loses at most the image it was working on (and the one whose files were still being written). A bad input
becomes a `failed` row and the run goes on. A folder run writes an image's PNGs in a thread while it reads the
next image (OutputWriter): encoding was a fifth of the time per image.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from classifier.global_branch import sigmoid
from mammo.atomic import atomic_path, atomic_write_text, folder_lock, remove_stale_partials
from mammo.config import Config
from mammo.domain import DomainDecision, decide_domain
from mammo.errors import MammoError
from mammo.imaging import read_mammogram
from mammo.preprocess import preprocess
from pipeline.findings import annotate_findings
from pipeline.heatmap import HeatmapCanvas
from pipeline.ids import IdAllocator, resolve_salt, source_key, written_source
from pipeline.inputs import Discovery, discover
from pipeline.render import three_panels
from pipeline.operating_point import check_curve
from pipeline.results import (CURVE_FILE, NO_BOX_SCORE, ImageResult, LesionResult, aggregate_scores, check_aggregate,
                              decide, read_results, result_dict, write_predictions_csv, write_result)

FAILURES_FILE = "failures.json"  # inputs that failed, retried on the next run
FINGERPRINT_FILE = "fingerprint.json"  # the models and settings that shaped this folder's outputs
DICOM_DIR = "dicom"  # DICOM results of DICOM inputs: <out>/dicom/<image_id>/sr.dcm and the heatmap object


@dataclass
class StepTimer:
    """Seconds per pipeline step, summed over images (the benchmark reports medians per image from `per_image`)."""

    totals: dict = field(default_factory=lambda: defaultdict(float))
    per_image: list = field(default_factory=list)
    _current: dict = field(default_factory=dict)

    @contextmanager
    def step(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            self.totals[name] += dt
            self._current[name] = self._current.get(name, 0.0) + dt

    def end_image(self):
        self.per_image.append(self._current)
        self._current = {}


def image_domain(mammogram, cfg: Config) -> DomainDecision:
    """Film or digital for this image, from its header or the settings (DomainError when neither says)."""
    return decide_domain(mammogram.meta, cfg.pipeline.domain, cfg.pipeline.domain_fallback)


def analyse_image(mammogram, models, cfg: Config, timer: StepTimer, tiles: list | None = None,
                  domain: DomainDecision | None = None):
    """The two stages and Grad-CAM on one image; returns (lesions, heatmap canvas, below_conf). `lesions` are
    the boxes a reader is shown, classified and under Grad-CAM: the findings and the kept boxes that score the
    image, each marked (`finding`, `scores_image`). When no box was kept, `below_conf` is the strongest candidate
    under detector.conf, classified: what scores the image, not shown, so no Grad-CAM (else None).
    `tiles`: a list that receives each lesion's (crop, Grad-CAM at crop size), in `lesions` order (export-rois).
    `domain`: what the caller decided the image is (`image_domain`; infer, serve and export-rois pass it, None
    where a dataset is scored for training): `domain.domain` is what per-domain models and thresholds will be
    chosen by. Today one set of models runs for film and digital alike."""
    with timer.step("preprocess"):
        frame = preprocess(mammogram, cfg.preprocess)
    with timer.step("detect"):
        kept, below, findings = models.detector.detect(frame)
    canvas = HeatmapCanvas(mammogram.shape, cfg.pipeline.heatmap_downscale)
    shown = list({d.box: d for d in kept + findings}.values())  # a box both kept and a finding, once
    scorer = [below] if not kept and below is not None else []
    if not shown and not scorer:
        return [], canvas, None
    clf = models.classifier
    with timer.step("crop"):
        batch, transforms = clf.crop_many(mammogram.pixels, [d.box for d in shown + scorer])
    batch = batch.astype(np.float32, copy=False)
    with timer.step("classify"):  # with Grad-CAM when a box is shown: one forward pass gives both
        if shown:
            probs, cams = clf.predict_and_gradcam(batch)
        else:
            probs, cams = clf.predict(batch), []
        probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    below_conf = (LesionResult(list(map(float, below.box)), float(below.score), float(probs[-1]), finding=False)
                  if scorer else None)
    if not shown:
        return [], canvas, below_conf
    if tiles is not None:
        tiles.extend(zip(batch[: len(shown)], cams[: len(shown)]))
    with timer.step("map_back"):
        for cam, to_crop in zip(cams[: len(shown)], transforms):
            canvas.paste_max(cam, to_crop)
    kept_boxes, finding_boxes = {d.box for d in kept}, {d.box for d in findings}
    lesions = [LesionResult(list(map(float, d.box)), float(d.score), float(p), finding=d.box in finding_boxes,
                            scores_image=d.box in kept_boxes, label=str(d.label)) for d, p in zip(shown, probs)]
    return annotate_findings(lesions, models.findings), canvas, below_conf


def write_outputs(out_dir: Path, image_id: str, mammogram, lesions, canvas, result: ImageResult,
                  dicom=None) -> None:
    """An image's files, its JSON last. `dicom`: (source path, Algorithm) when its DICOM results are wanted."""
    heatmap = canvas.as_uint16()
    with atomic_path(out_dir / result.heatmap) as tmp:
        cv2.imwrite(str(tmp), heatmap)
    if dicom is not None:
        from pipeline.dicomnode.results import write_dicom_results

        source, algorithm = dicom
        folder = out_dir / DICOM_DIR / image_id  # the anonymised id: nothing identifying in the path
        written = write_dicom_results(source, result_dict(result), heatmap, folder, algorithm)
        result.dicom = [p.relative_to(out_dir).as_posix() for p in written]
    ordered = sorted(lesions, key=lambda l: -l.malignancy)
    figure = three_panels(mammogram.pixels, canvas.pixels, [l.box for l in ordered],
                          [box_label(l) for l in ordered], title_numbers(result),
                          dashed=[not l.scores_image for l in ordered])
    with atomic_path(out_dir / result.overlay) as tmp:
        cv2.imwrite(str(tmp), figure)
    write_result(out_dir, result)  # last: its presence marks the image as done


class OutputWriter:
    """An image's files written in one background thread while the caller goes on with the next image. At most
    one image waits to be written (memory stays bounded): `submit` first waits for the one before, and the time
    it waits is the caller's `write` step. Writes that failed are in `failed` (image id -> reason)."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="write-outputs")
        self._pending = None  # (image id, future)
        self.failed: dict[str, str] = {}

    def submit(self, image_id: str, job) -> None:
        self.wait()
        self._pending = (image_id, self._pool.submit(job))

    def wait(self) -> None:
        if self._pending is not None:
            image_id, future = self._pending
            self._pending = None
            exc = future.exception()
            if exc is not None:
                self.failed[image_id] = f"could not write its outputs: {type(exc).__name__}: {exc}"

    def close(self) -> None:
        self.wait()
        self._pool.shutdown()


def box_label(lesion: LesionResult) -> str:
    """A box's number on the overlay: its calibrated P(malignant lesion) with the models' findings maps (a
    number a reader can take at its word), else the crop classifier's malignancy (given it is a lesion)."""
    return f"P {lesion.p_malignant:.2f}" if lesion.p_malignant is not None else f"{lesion.malignancy:.2f}"


def image_score(lesions, below_conf, models, cfg: Config) -> float:
    """The image score from the boxes that score it (the other findings are shown, never scored)."""
    return aggregate_scores([l for l in lesions if l.scores_image], cfg.pipeline.aggregate, models.stacker,
                            below_conf)


def title_numbers(result: ImageResult) -> str:
    """The overlay's title: the calibrated probability against its threshold when the models have a map
    (the rank score beside it), else the score against the threshold."""
    if result.probability is None:
        return f"(score {result.score:.2f}, threshold {result.threshold:.2f})"
    return (f"(P(malignant) {result.probability:.2f}, threshold {result.probability_threshold:.2f}; "
            f"score {result.score:.3f})")


# The image score of a digital image: the global branch's (classifier/global_branch.py), as `aggregate` says.
GLOBAL_BRANCH_RULE = "global_branch"


def analyse_globally(mammogram, route, cfg: Config, timer: StepTimer):
    """A digital image through its global branch: no boxes (the film-trained detector was never validated on
    digital images, and the digital training set has no boxes to validate it with), the image score
    sigmoid(logit) and the branch's saliency (sigmoid of each position's logit) on the heatmap. Returns
    (lesions = [], canvas, score, inverted: whether the branch saw it inverted, global_branch.polarity)."""
    with timer.step("global_branch"):
        seen = route.branch.analyse(mammogram.pixels)
    canvas = HeatmapCanvas(mammogram.shape, cfg.pipeline.heatmap_downscale)
    with timer.step("map_back"):
        canvas.paste_max(sigmoid(seen.grid).astype(np.float32), seen.to_grid)
    return [], canvas, float(sigmoid(seen.logit)), seen.inverted


def infer_image(mammogram, image_id: str, source, models, cfg: Config, threshold: float, out_dir: Path,
                timer: StepTimer, writer: OutputWriter | None = None) -> ImageResult:
    """One read image through both stages, its score and decision, and its files written (by `writer` in its
    thread when given, else here). Its domain is decided first: an image no setting or header places is refused
    (DomainError) before any model runs. A domain with models of its own (digital) runs those, with its own
    threshold (`threshold`, the run's, and pipeline.threshold are film's)."""
    domain = image_domain(mammogram, cfg)
    route = getattr(models, "domains", {}).get(domain.domain)
    if route is None:  # film, or a domain the models have nothing of their own for: both stages
        lesions, canvas, below_conf = analyse_image(mammogram, models, cfg, timer, domain=domain)
        inverted = None
        score = image_score(lesions, below_conf, models, cfg)
        image_threshold, rule, source_text = threshold, cfg.pipeline.aggregate, threshold_source(cfg, models)
        probability, probability_threshold = models.probability(score), models.probability(threshold)
    else:  # digital: the global branch and the operating point chosen on digital images
        lesions, canvas, score, inverted = analyse_globally(mammogram, route, cfg, timer)
        below_conf, image_threshold, rule = None, route.threshold, GLOBAL_BRANCH_RULE
        source_text = route.threshold_source
        probability, probability_threshold = route.probability(score), route.probability(route.threshold)
    h, w = mammogram.shape
    salt = resolve_salt(cfg.pipeline.id_salt)
    result = ImageResult(image_id=image_id, source=written_source(source, cfg.pipeline.source_paths, salt),
                         source_key=source_key(source, salt), width=int(w), height=int(h), score=score,
                         threshold=float(image_threshold), decision=decide(score, image_threshold), lesions=lesions,
                         heatmap=f"{image_id}_heatmap.png", overlay=f"{image_id}_overlay.png",
                         aggregate=rule, calibrated=models.calibrated,
                         heatmap_downscale=cfg.pipeline.heatmap_downscale, below_conf=below_conf,
                         probability=probability, probability_threshold=probability_threshold,
                         threshold_source=source_text, domain=domain.domain,
                         domain_source=domain.source, domain_reason=domain.reason, inverted_for_analysis=inverted)
    dicom = (source, dicom_algorithm(models, cfg, threshold)) if mammogram.meta.is_dicom and dicom_outputs(cfg) \
        else None
    job = partial(write_outputs, out_dir, image_id, mammogram, lesions, canvas, result, dicom)
    with timer.step("write"):
        if writer is None:
            job()
        else:
            writer.submit(image_id, job)
    return result


def operating_threshold(cfg: Config, models) -> float:
    """The image-level operating point in force: `pipeline.threshold` when set, else the one shipped with the
    models. Every writer of a folder (infer, the Ray driver, serve's uploads) must use the same one."""
    return cfg.pipeline.threshold if cfg.pipeline.threshold is not None else models.threshold


def threshold_source(cfg: Config, models) -> str:
    if cfg.pipeline.threshold is not None:
        return "given (pipeline.threshold)"
    return getattr(models, "threshold_source", "") or "shipped with the models"


def dicom_outputs(cfg: Config) -> bool:
    """Are DICOM results written for DICOM inputs? `pipeline.dicom_out` 'auto' is on while `source_paths` is
    'full' (work inside the hospital): the objects carry the patient's name and ids, as DICOM requires of a report
    in the patient's study, so a folder meant to leave ('hashed', 'none') gets none unless asked ('always')."""
    mode = cfg.pipeline.dicom_out
    return mode == "always" or (mode == "auto" and cfg.pipeline.source_paths == "full")


def dicom_algorithm(models, cfg: Config, threshold: float):
    """Who made the DICOM results: the project's version and a hash of the output fingerprint (models and
    settings), which every UID derives from: a rerun writes the same UIDs, other models or settings others.
    Made once per run and kept on `models` (a run's images share them; it reads pyproject.toml and hashes the
    whole fingerprint), again when another config or threshold asks."""
    import hashlib

    from pipeline.dicomnode.results import Algorithm, project_version

    cached = getattr(models, "_dicom_algorithm", None)
    if cached and cached[0] is cfg and cached[1] == threshold:
        return cached[2]
    fingerprint = json.dumps(output_fingerprint(models, cfg, threshold), sort_keys=True, default=str)
    algorithm = Algorithm(project_version(), hashlib.sha256(fingerprint.encode()).hexdigest())
    models._dicom_algorithm = (cfg, threshold, algorithm)
    return algorithm


def output_fingerprint(models, cfg: Config, threshold: float) -> dict:
    """What shapes every output file: the model files (by content) and the settings read at inference. A folder
    resumes only under the same fingerprint, so one folder never mixes two operating points."""
    d, pre, pipe = cfg.detector, cfg.preprocess, cfg.pipeline
    settings = {"preprocess": dataclasses.asdict(pre),
                "detector": {k: getattr(d, k) for k in ("imgsz", "mode", "tile_size", "tile_overlap", "tile_scale",
                                                        "merge", "conf", "iou", "max_det", "findings_conf",
                                                        "findings_max")},
                "pipeline": {"aggregate": pipe.aggregate, "threshold": float(threshold),
                             "heatmap_downscale": pipe.heatmap_downscale, "image_id": pipe.image_id,
                             "source_paths": pipe.source_paths, "max_pixels": cfg.run.max_pixels,
                             "no_box_score": NO_BOX_SCORE, "dicom_out": dicom_outputs(cfg),
                             # per-domain models and thresholds read it: a folder scored with another domain
                             # setting is never resumed into
                             "domain": pipe.domain, "domain_fallback": pipe.domain_fallback,
                             "calibration": getattr(models, "calibration", None),
                             "findings": getattr(models, "findings", None),
                             "domains": {name: {"threshold": route.threshold, "calibration": route.calibration}
                                         for name, route in getattr(models, "domains", {}).items()}}}
    return {"models": getattr(models, "fingerprint", ""), "settings": settings}


def check_fingerprint(out_dir: Path, fingerprint: dict, has_results: bool) -> None:
    path = out_dir / FINGERPRINT_FILE
    if path.is_file():
        before, now = json.loads(path.read_text()), json.loads(json.dumps(fingerprint))  # as written to the file
        if before == now:
            return
        changed = ["models"] if before.get("models") != now["models"] else []
        old, new = before.get("settings", {}), now["settings"]
        changed += [f"{section}.{key}" for section in new for key in new[section]
                    if old.get(section, {}).get(key) != new[section][key]]
        raise MammoError(f"{out_dir}: its outputs were made with other {', '.join(changed) or 'settings'}; "
                         f"resuming would mix two operating points. Use --overwrite to redo every image with "
                         f"these, or another --out")
    if has_results:
        raise MammoError(f"{out_dir}: holds results without {FINGERPRINT_FILE} (an older version or another "
                         f"tool wrote them); use --overwrite to redo them, or another --out")


def write_operating_curve(out_dir: Path, models) -> None:
    """The models' out-of-fold operating curve beside their results, where the review app finds it for these
    results whichever models it runs with; removed when the models ship none (a folder redone with others)."""
    curve = check_curve(getattr(models, "operating_curve", None))
    if curve is None:
        (out_dir / CURVE_FILE).unlink(missing_ok=True)
    else:
        atomic_write_text(out_dir / CURVE_FILE, json.dumps(curve, indent=1))


def done_row(result: ImageResult) -> dict:
    probability = "" if result.probability is None else f"{result.probability:.5f}"
    return {"image_id": result.image_id, "source": result.source, "score": f"{result.score:.5f}",
            "probability": probability,
            "n_lesions": len(result.lesions), "domain": result.domain, "domain_source": result.domain_source,
            "status": "done", "error": ""}


def process_one(path, allocate, models, cfg: Config, threshold: float, out_dir: Path, timer: StepTimer,
                writer: OutputWriter | None = None) -> dict:
    """Read, infer and write one image; returns its predictions.csv row ('done', or 'failed' with the reason;
    with a `writer`, 'done' until its files fail to write). The one per-image function of both engines
    (pipeline.engine_ray runs it in Ray actors)."""
    image_id = ""
    source = written_source(path, cfg.pipeline.source_paths, allocate.salt)
    try:
        with timer.step("read"):
            mammogram = read_mammogram(path, max_pixels=cfg.run.max_pixels)
        meta = mammogram.meta
        image_id = allocate(path, meta.identifiers, meta.is_dicom)
        result = infer_image(mammogram, image_id, path, models, cfg, threshold, out_dir, timer, writer)
        timer.end_image()
        return done_row(result)
    except Exception as exc:  # one bad file must not stop the batch; KeyboardInterrupt still does
        timer._current = {}
        reason = str(exc) if isinstance(exc, MammoError) else f"{path}: {type(exc).__name__}: {exc}"
        if cfg.pipeline.source_paths != "full":  # the reason names the file: keep only what was written
            reason = reason.replace(str(path), source or "<input>")
        return {"image_id": image_id, "source": source, "status": "failed", "error": reason}


@dataclass
class RunPlan:
    """What a run has to do: every discovered image in order, with its row when already done (resume)."""

    out_dir: Path
    found: object  # pipeline.inputs.Discovery
    threshold: float
    allocate: IdAllocator  # knows the ids of the images already done, so reruns keep ids stable
    rows: list  # per found image: its row, None while still to do
    resumed: int = 0  # images done by an earlier run
    missing: list = field(default_factory=list)  # failure rows of inputs that do not exist

    def todo(self) -> list:
        return [(i, path) for i, (path, row) in enumerate(zip(self.found.images, self.rows)) if row is None]


def prepare_folder(out_dir: Path, models, cfg: Config, overwrite: bool = False):
    """Call with the folder locked, before writing any image to it (infer, the Ray driver, `pipeline listen`):
    an image-score rule that cannot work is one error here; the folder must hold outputs of these models and
    settings (or `overwrite`). Returns (threshold, results already there, an id allocator knowing their ids)."""
    check_aggregate(cfg.pipeline.aggregate, models.stacker)
    remove_stale_partials(out_dir)  # left by a run that was killed mid-write: the lock says none is alive
    threshold = operating_threshold(cfg, models)
    fingerprint = output_fingerprint(models, cfg, threshold)
    previous = [] if overwrite else read_results(out_dir)
    if not overwrite:
        check_fingerprint(out_dir, fingerprint, bool(previous))
    atomic_write_text(out_dir / FINGERPRINT_FILE, json.dumps(fingerprint, indent=2))
    write_operating_curve(out_dir, models)
    allocate = IdAllocator(cfg.pipeline.image_id, resolve_salt(cfg.pipeline.id_salt))
    allocate.reserve(r for r in previous if r.source_key)  # ids stay stable over reruns
    return threshold, previous, allocate


def plan_run(inputs, out_dir: Path, models, cfg: Config, overwrite: bool = False) -> RunPlan:
    """Call with the folder locked. `models` needs only `threshold`, `fingerprint` and `stacker` (the Ray driver
    loads none). An image-score rule that cannot work is one error here, before any image, for both engines."""
    threshold, previous, allocate = prepare_folder(out_dir, models, cfg, overwrite)
    # `inputs`: the command line's words (an --out inside an input folder is not searched: never read our own
    # outputs), or a ready Discovery (instances spooled from a PACS by pipeline.dicomnode.dicomweb)
    found = inputs if isinstance(inputs, Discovery) else discover(inputs, exclude=[out_dir])
    # What is already done (by source key), so a rerun skips it.
    salt = allocate.salt
    done = {r.source_key: r for r in previous if r.source_key}
    rows = [done_row(done[key]) if (key := source_key(path, salt)) in done else None for path in found.images]
    missing = [{"image_id": "", "source": written_source(path, cfg.pipeline.source_paths, salt),
                "status": "failed", "error": found.reasons.get(path, "input not found")} for path in found.missing]
    return RunPlan(out_dir, found, threshold, allocate, rows, sum(r is not None for r in rows), missing)


def finish_run(plan: RunPlan, timer: StepTimer, started: float) -> dict:
    """Write predictions.csv and failures.json (found order, failures last); returns the run's summary."""
    rows = [r for r in plan.rows if r is not None and r["status"] == "done"]
    failures = plan.missing + [r for r in plan.rows if r is not None and r["status"] == "failed"]
    by_setting = defaultdict(int)  # images whose domain a setting gave (their files do not say): reported
    for r in rows:
        if r.get("domain_source") == "setting":
            by_setting[r["domain"]] += 1
    write_predictions_csv(plan.out_dir, rows + [dict(f, score="", n_lesions="") for f in failures])
    atomic_write_text(plan.out_dir / FAILURES_FILE, json.dumps(failures, indent=2))
    return {"images": len(plan.found.images), "done": len(rows), "resumed": plan.resumed, "failed": len(failures),
            "skipped_not_images": len(plan.found.skipped), "failures": failures, "timings": dict(timer.totals),
            "domain_by_setting": dict(by_setting),
            "processed": len(timer.per_image), "loop_seconds": time.perf_counter() - started,
            "per_image_seconds": [round(sum(steps.values()), 4) for steps in timer.per_image]}


def run_inference(inputs, out_dir, models, cfg: Config, *, overwrite: bool = False, progress: bool = True,
                  timer: StepTimer | None = None) -> dict:
    """Process every image of `inputs`; returns a summary dict (counts, failures, timings). The folder is locked
    for the run: a second run on it is refused (MammoError) instead of corrupting this one."""
    out_dir = Path(out_dir)
    timer = timer or StepTimer()
    with folder_lock(out_dir):
        plan = plan_run(inputs, out_dir, models, cfg, overwrite)
        started = time.perf_counter()
        todo = plan.todo()
        bar = tqdm(todo, desc="infer", unit="img", total=len(plan.rows), initial=len(plan.rows) - len(todo),
                   disable=not progress)
        writer, index = OutputWriter(), {}
        try:
            for i, path in bar:
                plan.rows[i] = row = process_one(path, plan.allocate, models, cfg, plan.threshold, out_dir, timer,
                                                 writer)
                index[row["image_id"]] = i
                if row["status"] == "failed":
                    bar.write(f"failed: {row['error']}")
        finally:
            writer.close()  # the last image's files, before the run's own files (or before Ctrl-C ends the run)
        for image_id, reason in writer.failed.items():
            row = plan.rows[index[image_id]]
            plan.rows[index[image_id]] = {"image_id": image_id, "source": row["source"], "status": "failed",
                                          "error": f"{row['source'] or '<input>'}: {reason}"}
            bar.write(f"failed: {plan.rows[index[image_id]]['error']}")
        return finish_run(plan, timer, started)
