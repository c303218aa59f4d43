"""Small pieces every command line shares."""
from __future__ import annotations

from pathlib import Path


def split_args(items) -> tuple[list[str], list[str]]:
    """Trailing words of a command: 'key=value' config overrides (unless the word is an existing path, which
    may contain '=') and everything else (inputs)."""
    overrides, inputs = [], []
    for item in items:
        (overrides if "=" in item and not Path(item).exists() else inputs).append(item)
    return overrides, inputs
