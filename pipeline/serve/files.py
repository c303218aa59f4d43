"""What the server may read: the run folders it was given, and nothing else.

Clients never send paths. They name a run by its index and an image by its id; both are looked up here. The one
route that serves run files by name (`safe_file`) refuses absolute names, '..', hidden files, suffixes other than
pictures, and anything whose resolved path (symlinks followed) leaves the run folder.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mammo.errors import ImageReadError
from pipeline.ids import source_key
from pipeline.results import ImageResult, read_result, read_results, result_path

# Results listed by the server: a run folder is any folder the user points at, and may hold JSON files that
# `infer` did not write (copied, edited by hand, another tool's) whose image_id would end up in URLs and in file
# names under .serve/ (thumbnails). Only ids of this form are listed; every later lookup is by a listed id. It
# admits every id pipeline.ids gives (characters [A-Za-z0-9._-], no leading dot or underscore, as long as a file
# name `{id}.json` can be): a result infer wrote is never hidden.
ID_PATTERN = re.compile(r"^[A-Za-z0-9-][A-Za-z0-9._-]{0,249}$")
SERVED_SUFFIXES = {".png", ".jpg", ".jpeg"}  # pictures only: the JSONs hold source paths, the database verdicts
STATE_DIR = ".serve"  # per run: verdicts.sqlite, thumbnail cache, uploaded images


class NotFound(Exception):
    """An unknown run, image or file, or a name that tries to leave its run folder (the client sees 404)."""


def safe_file(root: Path, name: str) -> Path:
    """`name` (relative, '/'-separated) inside `root`, or NotFound. Symlinks are resolved before the check."""
    if not name or "\\" in name or "\0" in name:
        raise NotFound(name)
    parts = PurePosixPath(name).parts
    if PurePosixPath(name).is_absolute() or any(p in ("..", ".") or p.startswith(".") for p in parts):
        raise NotFound(name)
    if PurePosixPath(name).suffix.lower() not in SERVED_SUFFIXES:
        raise NotFound(name)
    root = root.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise NotFound(name)
    return path


@dataclass
class Run:
    index: int
    root: Path
    results: dict  # image_id -> ImageResult

    @property
    def state(self) -> Path:
        return self.root / STATE_DIR

    @property
    def label(self) -> str:
        """Shown in pages: the folder's own name (the user chose it; its parents are not shown)."""
        return self.root.name


class RunSet:
    """The run folders and their image results, read once; `add` reads the one result an upload wrote.
    `salt`: the id salt of the server's config, to find uploads by source key when results hold no paths."""

    def __init__(self, roots, salt: str | None = None):
        self.salt = salt
        self._lock = threading.Lock()
        self.runs = []
        for i, root in enumerate(roots):
            root = Path(root).resolve()
            root.mkdir(parents=True, exist_ok=True)
            self.runs.append(Run(i, root, {r.image_id: r for r in read_results(root) if ID_PATTERN.match(r.image_id)}))

    def add(self, index: int, image_id: str) -> None:
        """Read the result `image_id` just written to run `index` (nothing else in the folder changed)."""
        run = self.runs[index]
        result = read_result(result_path(run.root, image_id))
        with self._lock:  # a new dict: a page listing the old one meanwhile is not disturbed
            run.results = {**run.results, image_id: result}

    def run(self, index: int) -> Run:
        if not 0 <= index < len(self.runs):
            raise NotFound(f"run {index}")
        return self.runs[index]

    def result(self, index: int, image_id: str) -> tuple[Run, ImageResult]:
        run = self.run(index)
        if image_id not in run.results:  # listed ids only (ID_PATTERN), so a client's id needs no other check
            raise NotFound(image_id)
        return run, run.results[image_id]

    def source_file(self, run: Run, result: ImageResult) -> Path:
        """The original image of a result: the path it records (pipeline.source_paths=full, the default), or an
        image uploaded to this run found by its source key. The server only decodes it into pixels (read_mammogram
        reads images only); it never sends the file itself."""
        if result.source and not (result.source.startswith("src_") and not Path(result.source).exists()):
            return Path(result.source)
        uploads = run.state / "uploads"
        if result.source_key and self.salt and uploads.is_dir():
            for path in uploads.iterdir():
                if not path.name.startswith(".") and source_key(path, self.salt) == result.source_key:
                    return path
        raise ImageReadError(result.image_id, "its result does not record where the image is "
                                              "(made with pipeline.source_paths=hashed or none)")

    def run_file(self, run: Run, name: str) -> Path:
        """A file a result names (heatmap, overlay), checked like any client-given name."""
        return safe_file(run.root, name)
