"""Run folders that never hold half-written results.

A command writes into a hidden staging folder inside its run folder; only when it succeeds are the staged
files moved into place (replacing those of an earlier run of the same name). When it fails, the staging folder
is deleted, and so is the run folder if this run created it: a crash, a bad input or Ctrl-C leaves the run
folder as it was.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from mammo import runtime


def run_dir_for(command: str, name: str, out: str | None = None) -> Path:
    """`out` when given, else runs/detector/<command>/<name> (the layout of mammo.runs)."""
    return Path(out) if out else runtime.RUN_ROOT / "detector" / command / name


@contextlib.contextmanager
def staged_run(run_dir):
    """Yield a staging folder; on success its contents replace their namesakes in `run_dir`."""
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".partial-", dir=run_dir))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created and not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise
    for child in sorted(stage.iterdir()):
        target = run_dir / child.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(child, target)
    stage.rmdir()
