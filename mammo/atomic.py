"""Atomic writes: a reader (or a resumed run) sees either the old file or the complete new one, never half."""
from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path

from mammo.errors import MammoError


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; set straight back
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    The temporary name keeps the suffix so that writers that pick a format by extension (cv2.imwrite,
    matplotlib, keras) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent)
    # mkstemp makes 0600 files; the result gets what any new file would (0644 under umask 022), so a reviewer on
    # another account can open the report
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write_text(path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


LOCK_FILE = ".lock"


@contextlib.contextmanager
def folder_lock(folder):
    """Own an output folder for the time of a run: a second run on the same folder is refused at once with a
    clear message (not left to delete the first one's temporary files). The kernel drops the lock when the
    process dies, so a killed run never leaves the folder locked."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MammoError(f"{folder}: another run is writing to this folder; wait for it to finish or choose "
                             f"another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield folder
    finally:
        os.close(fd)  # releases the lock


def remove_stale_partials(folder) -> int:
    """Delete temporary files that a killed writer left in `folder` (SIGKILL skips the cleanup above).
    Call only while holding `folder_lock(folder)`: then no live writer owns them. Returns how many were removed."""
    removed = 0
    for path in Path(folder).glob(".*.partial*"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed
