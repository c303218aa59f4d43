"""Uploads: check the file, then run the pipeline on it in a background worker, with progress to poll.

An upload is written, as it streams in, to a private folder of the server (`<run>/.serve/.queue.*`, mode 0700)
and checked from what is cheap to read (size, suffix, a picture's header and its pixel count): anything refused
there changes nothing. It then waits as that file, never as decoded pixels: at most
MAX_PENDING_UPLOADS wait or run, beyond which the server answers "busy, retry" (503). One worker takes the jobs
in turn (the models are not shared between threads); it decodes the image only then, moves the file to
`<run>/.serve/uploads/` under a content-hash name (the client's file name, which may hold a patient's name, is
never stored or logged; the viewer tiles that original) and runs the pipeline. A file that does not decode is a
failed job with the reason, and nothing else changes. Page and tile requests are served meanwhile. The
pipeline's own step timer reports the step the job is in. Finished jobs are forgotten after an hour or beyond
the newest MAX_FINISHED_JOBS (a page polls a job only while it runs).

A queue folder is named after its server process (host, pid, start time) and removed when the server stops. A
server killed outright (SIGKILL, power loss) cannot do that: the next server to start on the run folder removes
the queue folders of this host's servers that no longer run (a pid alone could be another process by now).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from mammo.atomic import atomic_write_text, folder_lock
from mammo.errors import ImageReadError, MammoError
from mammo.imaging import IMAGE_SUFFIXES, RASTER_SUFFIXES, check_size, raster_header_size, read_mammogram
from pipeline.ids import IdAllocator
from pipeline.infer import (FINGERPRINT_FILE, StepTimer, check_fingerprint, done_row, infer_image,
                            output_fingerprint, write_operating_curve)
from pipeline.results import write_predictions_csv

MAX_UPLOAD_BYTES = 200 * 1024 * 1024  # a full-field DICOM is 20-60 MB uncompressed
MAX_PENDING_UPLOADS = 8  # queued, running or being received: each waits as a file, up to MAX_UPLOAD_BYTES on disk
RETRY_AFTER_SECONDS = 30  # an upload takes 1-6 s to analyse: a full queue has room again well within this
MAX_FINISHED_JOBS = 100
FINISHED_JOB_SECONDS = 3600.0
STEPS = ["read", "preprocess", "detect", "crop", "classify", "map_back", "write"]  # classify: with Grad-CAM


class UploadError(ValueError):
    """An upload refused before anything changed; the message is for the user."""


class Busy(Exception):
    """MAX_PENDING_UPLOADS uploads wait already: the client should retry after RETRY_AFTER_SECONDS (503)."""

    def __init__(self):
        super().__init__(f"busy: {MAX_PENDING_UPLOADS} uploads are waiting or being analysed; retry in "
                         f"{RETRY_AFTER_SECONDS} s")


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
    finished: float = 0.0  # time.time() when done or failed
    file: Path | None = None  # the uploaded bytes while the job waits (in the private queue folder)
    digest: str = ""  # SHA-256 of the upload: its name in the run

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
        self._lock = threading.Lock()  # guards jobs, _receiving and _queues
        self._receiving = 0  # uploads streaming in: they hold a place in the queue already
        self._queues: dict[int, Path] = {}  # run index -> its private queue folder
        for run in runs.runs:
            remove_stale_queues(run.state)

    def check_room(self) -> None:
        """Busy when MAX_PENDING_UPLOADS uploads wait, run or stream in (the app asks before reading a body)."""
        with self._lock:
            self._check_room()

    def _check_room(self) -> None:
        pending = self._receiving + sum(j.status in ("queued", "running") for j in self.jobs.values())
        if pending >= MAX_PENDING_UPLOADS:
            raise Busy()

    def submit(self, run_index: int, filename: str, chunks) -> Job:
        """Store and check an upload (`chunks`: an iterable of bytes), then queue it as a file; UploadError when
        refused, Busy when the queue is full."""
        run = self.runs.run(run_index)
        suffix = Path(filename or "").suffix.lower()
        if suffix not in IMAGE_SUFFIXES and suffix != "":
            raise UploadError(f"'{suffix}' files are not images this tool reads (DICOM, PNG, PGM, JPEG, TIFF)")
        with self._lock:
            self._check_room()
            self._receiving += 1
            if run_index not in self._queues:
                run.state.mkdir(parents=True, exist_ok=True)
                self._queues[run_index] = Path(tempfile.mkdtemp(prefix=queue_prefix(), dir=run.state))  # mode 0700
            queue = self._queues[run_index]
        job = Job(uuid.uuid4().hex, run_index)
        try:
            job.file, job.digest = self._receive(queue / f"{job.id}{suffix or '.dcm'}", suffix, chunks)
        except BaseException:
            with self._lock:
                self._receiving -= 1
            raise
        with self._lock:  # from receiving to queued in one step: no other upload takes the place meanwhile
            self._receiving -= 1
            self.jobs[job.id] = job
            self._prune()
        self._pool.submit(self._run, job)
        return job

    def _receive(self, target: Path, suffix: str, chunks) -> tuple[Path, str]:
        """The upload written to `target` (whole, or not at all) and its SHA-256; UploadError when refused."""
        fd, tmp = tempfile.mkstemp(prefix=".upload.", suffix=f".partial{suffix}", dir=target.parent)
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
            if suffix in RASTER_SUFFIXES:
                self._check_raster_header(tmp)
            os.replace(tmp, target)  # the worker sees only whole files
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return target, digest.hexdigest()

    def _check_raster_header(self, path: Path) -> None:
        """Refuse a picture whose header is unreadable or names too many pixels, without decoding it. A DICOM is
        left to the worker: pydicom may have to inflate a whole dataset to read even its header."""
        try:
            check_size(path, *raster_header_size(path), self.max_pixels)
        except ImageReadError as exc:
            raise UploadError(f"refused: {exc.reason}") from None

    def _run(self, job: Job) -> None:
        run = self.runs.run(job.run)
        job.status = "running"
        target, placed = None, False  # placed: the file moved into the run, and no result names it yet
        try:
            try:  # decoded only now, one upload at a time; sizes are checked from the header first
                mammogram = read_mammogram(job.file, max_pixels=self.max_pixels)
            except ImageReadError as exc:
                raise UploadError(f"refused: {exc.reason}") from None
            target = run.state / "uploads" / f"upload_{job.digest[:12]}{job.file.suffix}"
            target.parent.mkdir(parents=True, exist_ok=True)
            placed = not target.exists()  # the same image uploaded before is another result's original
            os.replace(job.file, target)  # from here on the run owns it: the viewer tiles it
            # the folder's lock (an `infer` on it at the same time is refused, and refuses us) and its
            # fingerprint (an image analysed with other models or settings would mix two operating points)
            # (the single worker runs one job at a time: `_lock` guards only the queue, so uploads go on meanwhile)
            with folder_lock(run.root):
                fingerprint = output_fingerprint(self.models, self.cfg, self.threshold)
                check_fingerprint(run.root, fingerprint, bool(run.results))
                atomic_write_text(run.root / FINGERPRINT_FILE, json.dumps(fingerprint, indent=2))
                write_operating_curve(run.root, self.models)
                allocate = IdAllocator(self.cfg.pipeline.image_id, self.cfg.pipeline.id_salt)
                allocate.reserve(run.results.values())
                meta = mammogram.meta
                image_id = allocate(target, meta.identifiers, meta.is_dicom)
                result = infer_image(mammogram, image_id, target, self.models, self.cfg, self.threshold,
                                     run.root, ProgressTimer(job))
                placed = False
                append_prediction_row(run.root, result)
            self.runs.add(job.run, image_id)
            job.image_id, job.progress, status = image_id, 1.0, "done"
        except Exception as exc:  # reported to the page; the server goes on
            message = str(exc) if isinstance(exc, MammoError | UploadError) else f"{type(exc).__name__}: {exc}"
            job.error, status = message.replace(str(run.root), "<run>"), "failed"
            if placed:  # no result names it
                target.unlink(missing_ok=True)
        finally:
            job.file.unlink(missing_ok=True)  # still there when it did not decode
            job.file = None
        with self._lock:
            job.status, job.finished = status, time.time()
            job.seconds = job.finished - job.started
            self._prune()

    def _prune(self) -> None:
        """Forget finished jobs older than FINISHED_JOB_SECONDS or beyond the newest MAX_FINISHED_JOBS (under
        _lock); queued and running jobs are kept."""
        now = time.time()
        finished = sorted((j for j in self.jobs.values() if j.finished), key=lambda j: j.finished, reverse=True)
        for rank, job in enumerate(finished):
            if rank >= MAX_FINISHED_JOBS or now - job.finished > FINISHED_JOB_SECONDS:
                del self.jobs[job.id]

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def close(self) -> None:
        """Waits for the running job; queued ones are dropped with their files."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        for queue in self._queues.values():
            shutil.rmtree(queue, ignore_errors=True)


QUEUE_NAME = re.compile(r"\.queue\.(?P<host>[\w-]*)\.(?P<pid>\d+)\.(?P<started>\d+)\.")


def _host() -> str:
    return re.sub(r"[^\w-]", "-", socket.gethostname())  # no dots: they separate the name's parts


def queue_prefix() -> str:
    """'.queue.<host>.<pid>.<start time, ms>.': the queue folders of this server process start so."""
    process = psutil.Process()
    return f".queue.{_host()}.{process.pid}.{round(process.create_time() * 1000)}."


def _running(pid: int, started_ms: int) -> bool:
    try:
        return abs(psutil.Process(pid).create_time() * 1000 - started_ms) < 1000  # else a reused pid
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # cannot tell: keep its folder


def remove_stale_queues(state: Path) -> list[Path]:
    """Remove the queue folders in `state` of this host's servers that no longer run; a live server's folder
    and a folder of another host (the run folder may be shared) or of unknown form stay. Returns those removed."""
    removed = []
    for folder in state.glob(".queue.*") if state.is_dir() else []:
        name = QUEUE_NAME.match(folder.name)
        if name and name["host"] == _host() and not _running(int(name["pid"]), int(name["started"])):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def append_prediction_row(run_root: Path, result) -> None:
    """Add (or replace) the image's row in the run's predictions.csv, keeping every other row."""
    path = run_root / "predictions.csv"
    rows = []
    if path.is_file():
        with path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("image_id") != result.image_id]
    write_predictions_csv(run_root, rows + [done_row(result)])  # it keeps the contract's columns only
