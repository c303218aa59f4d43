"""Errors a user sees: each names the file (or key) and the problem, so a batch can record it and go on."""
from __future__ import annotations

from pathlib import Path


class MammoError(Exception):
    """Base class for errors we raise on purpose (bad input, bad config), as opposed to bugs."""


class ImageReadError(MammoError):
    """An image file that cannot be read as a mammogram. `str(err)` is '<path>: <reason>'."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class AnnotationError(MammoError):
    """An annotation file (or one of its rows) that cannot be used. Names the file and, where known, the row."""

    def __init__(self, path, reason: str, row: int | None = None):
        self.path = str(path)
        self.row = row
        where = f"{self.path} (row {row})" if row is not None else self.path
        super().__init__(f"{where}: {reason}")


class ConfigError(MammoError):
    """A config file or override that does not fit the schema. Names the key."""


class WeightsError(MammoError):
    """Model weights that cannot be loaded; says what was tried and what to do instead."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        super().__init__(f"{Path(path)}: {reason}")
