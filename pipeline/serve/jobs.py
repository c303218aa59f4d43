"""Uploads: check the file, then run the pipeline on it in a background worker, with progress to poll.

The upload is written under `<run>/.serve/uploads/` with a content-hash name (the client's file name, which may
hold a patient's name, is never stored or logged), read once to refuse anything that is not an image (nothing else
changes then), and queued. One worker runs the models (they are not shared between threads); page and tile
requests are served meanwhile. The pipeline's own step timer reports the step the job is in.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mammo.atomic import atomic_write_text, folder_lock
from mammo.errors import ImageReadError, MammoError
from mammo.imaging import IMAGE_SUFFIXES, read_mammogram
from pipeline.ids import IdAllocator
from pipeline.infer import (FINGERPRINT_FILE, StepTimer, check_fingerprint, done_row, infer_image,
                            output_fingerprint, write_operating_curve)
from pipeline.results import write_predictions_csv

MAX_UPLOAD_BYTES = 200 * 1024 * 1024  # a full-field DICOM is 20-60 MB uncompressed
STEPS = ["read", "preprocess", "detect", "crop", "classify", "gradcam", "map_back", "write"]


class UploadError(ValueError):
    """An upload refused before anything changed; the message is for the user."""


@dataclass
class Job:
    id: str
    run: int
    status: str = "queued"  # queued | running | done | failed
    step: str = ""
    progress: float = 0.0
    image_id: str = ""
    error: str = ""
    started: float = field(default_factory=time.time)
    seconds: float = 0.0

    def public(self) -> dict:
        return {k: getattr(self, k) for k in ("id", "run", "status", "step", "progress", "image_id", "error",
                                              "seconds")}


class ProgressTimer(StepTimer):
    """The pipeline's step timer, also telling the job which step runs (steps arrive in STEPS order)."""

    def __init__(self, job: Job):
        super().__init__()
        self.job = job

    def step(self, name: str):
        self.job.step = name
        if name in STEPS:
            self.job.progress = max(self.job.progress, STEPS.index(name) / len(STEPS))
        return super().step(name)


class Uploads:
    def __init__(self, runs, models, cfg, threshold: float):
        self.runs, self.models, self.cfg, self.threshold = runs, models, cfg, threshold
        self.max_pixels = cfg.run.max_pixels
        self.jobs: dict[str, Job] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer")
        self._lock = threading.Lock()

    def submit(self, run_index: int, filename: str, chunks) -> Job:
        """Store and check an upload (`chunks`: an iterable of bytes), then queue it; UploadError when refused."""
        run = self.runs.run(run_index)
        suffix = Path(filename or "").suffix.lower()
        if suffix not in IMAGE_SUFFIXES and suffix != "":
            raise UploadError(f"'{suffix}' files are not images this tool reads (DICOM, PNG, PGM, JPEG, TIFF)")
        folder = run.state / "uploads"
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".upload.", suffix=f".partial{suffix}", dir=folder)
        tmp = Path(tmp)
        try:
            digest, size = hashlib.sha256(), 0
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    size += len(chunk)
                    if size > MAX_UPLOAD_BYTES:
                        raise UploadError(f"file larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB")
                    digest.update(chunk)
                    f.write(chunk)
            if size == 0:
                raise UploadError("empty file")
            try:  # sizes are checked from the header before decoding (run.max_pixels)
                mammogram = read_mammogram(tmp, max_pixels=self.max_pixels)
            except ImageReadError as exc:
                raise UploadError(f"refused: {exc.reason}") from None
            target = folder / f"upload_{digest.hexdigest()[:12]}{suffix or '.dcm'}"
            os.replace(tmp, target)  # from here on the run owns it
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        job = Job(uuid.uuid4().hex, run_index)
        with self._lock:
            self.jobs[job.id] = job
        self._pool.submit(self._run, job, target, mammogram)
        return job

    def _run(self, job: Job, path: Path, mammogram) -> None:
        run = self.runs.run(job.run)
        job.status = "running"
        try:
            # the folder's lock (an `infer` on it at the same time is refused, and refuses us) and its
            # fingerprint (an image analysed with other models or settings would mix two operating points)
            # (the single worker runs one job at a time: `_lock` guards only `jobs`, so uploads go on meanwhile)
            with folder_lock(run.root):
                fingerprint = output_fingerprint(self.models, self.cfg, self.threshold)
                check_fingerprint(run.root, fingerprint, bool(run.results))
                atomic_write_text(run.root / FINGERPRINT_FILE, json.dumps(fingerprint, indent=2))
                write_operating_curve(run.root, self.models)
                allocate = IdAllocator(self.cfg.pipeline.image_id, self.cfg.pipeline.id_salt)
                allocate.reserve(run.results.values())
                meta = mammogram.meta
                image_id = allocate(path, meta.identifiers, meta.is_dicom)
                result = infer_image(mammogram, image_id, path, self.models, self.cfg, self.threshold, run.root,
                                     ProgressTimer(job))
                append_prediction_row(run.root, result)
            self.runs.add(job.run, image_id)
            job.image_id, job.progress, job.status = image_id, 1.0, "done"
        except Exception as exc:  # reported to the page; the server goes on
            message = str(exc) if isinstance(exc, MammoError) else f"{type(exc).__name__}: {exc}"
            job.status, job.error = "failed", message.replace(str(run.root), "<run>")
        job.seconds = time.time() - job.started

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def append_prediction_row(run_root: Path, result) -> None:
    """Add (or replace) the image's row in the run's predictions.csv, keeping every other row."""
    path = run_root / "predictions.csv"
    rows = []
    if path.is_file():
        with path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("image_id") != result.image_id]
    write_predictions_csv(run_root, rows + [done_row(result)])  # it keeps the contract's columns only
