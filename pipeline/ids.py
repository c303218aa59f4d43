"""Image ids for output files: derived from the file name, or a salted hash of it when the name (or the image's
own patient fields) looks like an identifier. Patient identifiers never reach an output name."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

# Long digit runs (MRNs, accession numbers, dates), DICOM UIDs, and dataset patient tokens such as P_00820.
_IDENTIFIER = re.compile(r"\d{5,}|\d+(\.\d+){3,}|(^|[^a-z])p_?\d{3,}|patient|anon", re.IGNORECASE)
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def salted_hash(text: str, salt: str, n: int = 12) -> str:
    return hashlib.sha256(f"{salt}\0{text}".encode()).hexdigest()[:n]


def looks_like_identifier(name: str, patient_fields=()) -> bool:
    if _IDENTIFIER.search(name):
        return True
    low = name.lower()
    return any(f and len(f) >= 3 and (f.lower() in low or low in f.lower()) for f in patient_fields)


def image_id_for(path, mode: str = "auto", salt: str = "mammo-cad", patient_fields=()) -> str:
    """'name': the file stem (made filesystem-safe); 'hash': always a salted hash of the path;
    'auto': the stem unless it looks like an identifier (or contains the image's patient id/name)."""
    path = Path(path)
    stem = _SAFE.sub("_", path.stem).strip("._") or "image"
    if mode == "name":
        return stem
    if mode == "hash" or (mode == "auto" and looks_like_identifier(path.stem, patient_fields)):
        return "img_" + salted_hash(str(path.resolve()), salt)
    if mode != "auto":
        raise ValueError(f"pipeline.image_id must be 'auto', 'name' or 'hash', got {mode!r}")
    return stem


class IdAllocator:
    """Hands out unique ids in a run: a second file with the same stem gets a path-hash suffix, so reruns on the
    same inputs (discovered in the same order) get the same ids."""

    def __init__(self, mode: str, salt: str):
        self.mode, self.salt, self.used = mode, salt, {}

    def __call__(self, path, patient_fields=()) -> str:
        iid = image_id_for(path, self.mode, self.salt, patient_fields)
        key = str(Path(path).resolve())
        if iid in self.used and self.used[iid] != key:
            iid = f"{iid}_{salted_hash(key, self.salt, 6)}"
        self.used[iid] = key
        return iid
