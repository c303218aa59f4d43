"""Uploads: check the file, then run the pipeline on it in a background worker, with progress to poll.

The upload is written under `<run>/.serve/uploads/` with a content-hash name (the client's file name, which may
hold a patient's name, is never stored or logged), read once to refuse anything that is not an image (nothing else
changes then), and queued. One worker runs the models (they are not shared between threads); page and tile
requests are served meanwhile. The pipeline's own step timer reports the step the job is in.
"""
from __future__ import annotations

import csv
import hashlib
import os
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mammo.dicom import is_dicom
from mammo.errors import ImageReadError
from mammo.imaging import IMAGE_SUFFIXES, read_mammogram
from pipeline.ids import IdAllocator
from pipeline.infer import StepTimer, infer_image
from pipeline.results import CSV_COLUMNS, write_predictions_csv

MAX_UPLOAD_BYTES = 200 * 1024 * 1024  # a full-field DICOM is 20-60 MB uncompressed
MAX_PIXELS = 60_000_000  # 2x the largest digital mammography detector (about 4.7k x 5.9k)
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


def check_pixel_count(path: Path) -> None:
    """Refuse images over MAX_PIXELS from their header, before decoding them."""
    if is_dicom(path):
        import pydicom

        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            rows, cols, frames = int(ds.Rows), int(ds.Columns), int(getattr(ds, "NumberOfFrames", 1) or 1)
        except Exception:
            raise UploadError("not a DICOM image this tool can read (no image size in its header)") from None
    else:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None  # our own limit below, with our own message
        try:
            with Image.open(path) as im:
                cols, rows = im.size
            frames = 1
        except Exception:
            raise UploadError("not an image (expected DICOM, PNG, PGM, JPEG or TIFF)") from None
    if rows * cols * frames > MAX_PIXELS:
        raise UploadError(f"image too large: {cols} x {rows} pixels (limit {MAX_PIXELS // 1_000_000} Mpixel)")


class Uploads:
    def __init__(self, runs, models, cfg, threshold: float):
        self.runs, self.models, self.cfg, self.threshold = runs, models, cfg, threshold
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
            check_pixel_count(tmp)
            try:
                mammogram = read_mammogram(tmp)
            except ImageReadError as exc:
                raise UploadError(f"not an image this tool can read: {exc.reason}") from None
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
            with self._lock:  # one writer of the run's predictions.csv at a time
                allocate = IdAllocator(self.cfg.pipeline.image_id, self.cfg.pipeline.id_salt)
                for r in run.results.values():
                    allocate.used[r.image_id] = str(Path(r.source).resolve())
                image_id = allocate(path, [mammogram.meta.patient_id])
                result = infer_image(mammogram, image_id, path, self.models, self.cfg, self.threshold, run.root,
                                     ProgressTimer(job))
                append_prediction_row(run.root, result)
            self.runs.refresh(job.run)
            job.image_id, job.progress, job.status = image_id, 1.0, "done"
        except Exception as exc:  # reported to the page; the server goes on
            job.status, job.error = "failed", f"{type(exc).__name__}: {exc}".replace(str(path), path.name)
        job.seconds = time.time() - job.started

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def append_prediction_row(run_root: Path, result) -> None:
    """Add (or replace) the image's row in the run's predictions.csv, keeping every other row."""
    path = run_root / "predictions.csv"
    rows = list(csv.DictReader(open(path, newline=""))) if path.is_file() else []
    rows = [r for r in rows if r.get("image_id") != result.image_id]
    rows.append({"image_id": result.image_id, "source": result.source, "score": f"{result.score:.5f}",
                 "n_lesions": len(result.lesions), "status": "done", "error": ""})
    write_predictions_csv(run_root, [{k: r.get(k, "") for k in CSV_COLUMNS} for r in rows])
