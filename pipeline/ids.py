"""Image ids for output files, and how sources are written. Patient identifiers never reach an output name.

`pipeline.image_id`:
- 'auto' (default): a DICOM gets a salted hash (its file name is often built from the patient's name or an
  accession number, and the file says who the patient is); any other file keeps its name unless the name looks
  like an identifier (digit runs, UIDs, dataset patient tokens) or contains one of the file's identifying values;
- 'hash': always a salted hash of the resolved path; 'name': always the file name (the user asks for it).

`pipeline.source_paths` says what the `source` fields and run.json's argv hold: 'full' (the path as given, for
work inside the hospital), 'hashed' (a salted hash of the resolved path) or 'none' (nothing), for outputs that
leave it. Resuming keys on `source_key`, a salted hash written in every mode.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import secrets
from pathlib import Path

from mammo.config import IMAGE_ID_MODES, SOURCE_PATH_MODES

# Long digit runs (MRNs, accession numbers, dates), DICOM UIDs, and dataset patient tokens such as P_00820.
_IDENTIFIER = re.compile(r"\d{5,}|\d+(\.\d+){3,}|(^|[^a-z])p_?\d{3,}|patient|anon", re.IGNORECASE)
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_WORD = re.compile(r"[^a-z0-9]+")


def resolve_salt(salt: str) -> str:
    """`pipeline.id_salt`, or when it is '' this installation's own secret salt (made once, kept 0600 in the run
    folder's cache and never written to outputs): with a public salt, a hashed id of a guessable path such as
    /scans/MRN12345.dcm could be found by trying candidates. Set the same salt on several machines (or the
    MAMMO_ID_SALT variable) to get the same ids there."""
    salt = salt or os.environ.get("MAMMO_ID_SALT", "")
    if salt:
        return salt
    from mammo import runtime

    return _installation_salt(runtime.CACHE_DIR / "id_salt")


@functools.lru_cache(maxsize=4)
def _installation_salt(path: Path) -> str:
    """Made once per installation, read once per process (infer asks for it on every image)."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".id_salt.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(16))
        try:
            os.link(tmp, path)  # complete or not there at all; the first process to link wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    salt = path.read_text().strip()
    if len(salt) < 16:
        raise OSError(f"{path}: damaged id salt file; delete it to make a new one (ids of earlier runs change)")
    return salt


def salted_hash(text: str, salt: str, n: int = 12) -> str:
    return hashlib.sha256(f"{salt}\0{text}".encode()).hexdigest()[:n]


def _normalise(text: str) -> str:
    return _WORD.sub("", str(text).lower())


def identifier_forms(values) -> tuple[set[str], set[str]]:
    """(whole values, parts) normalised: 'DOE^JANE M' gives whole 'doejanem' (and 'janedoe...' orders) and
    parts {'doe', 'jane'}; a part is a name component or word of at least 3 characters."""
    whole, parts = set(), set()
    for value in values:
        words = [w for w in _WORD.split(str(value).lower()) if w]
        if not words:
            continue
        whole.update({"".join(words), "".join(reversed(words))})
        parts.update(w for w in words if len(w) >= 3)
    return {w for w in whole if len(w) >= 3}, parts


def looks_like_identifier(name: str, identifiers=()) -> bool:
    """Does a file name carry an identifier: a pattern of one, or any identifying value of the file itself
    (compared case-, punctuation- and order-insensitively, also part by part: 'DOE_JANE_L_CC' with 'DOE^JANE')."""
    if _IDENTIFIER.search(name):
        return True
    flat = _normalise(name)
    tokens = {w for w in _WORD.split(name.lower()) if w}
    whole, parts = identifier_forms(identifiers)
    return any(w in flat for w in whole) or any(p in tokens or (len(p) >= 4 and p in flat) for p in parts)


def image_id_for(path, mode: str = "auto", salt: str = "mammo-cad", identifiers=(), is_dicom: bool = False) -> str:
    path = Path(path)
    if mode not in IMAGE_ID_MODES:
        raise ValueError(f"pipeline.image_id must be one of {IMAGE_ID_MODES}, got {mode!r}")
    stem = _SAFE.sub("_", path.stem).strip("._") or "image"
    if mode == "name":
        return stem
    if mode == "hash" or is_dicom or looks_like_identifier(path.stem, identifiers):
        return "img_" + salted_hash(str(path.resolve()), salt)
    return stem


def source_key(path, salt: str) -> str:
    """What a rerun recognises an input by, whatever `source_paths` wrote."""
    return salted_hash(str(Path(path).resolve()), salt, 16)


def written_source(path, mode: str, salt: str) -> str:
    if mode == "full":
        return str(path)
    if mode == "hashed":
        return "src_" + source_key(path, salt)
    if mode == "none":
        return ""
    raise ValueError(f"pipeline.source_paths must be one of {SOURCE_PATH_MODES}, got {mode!r}")


def scrub_argv(argv, paths, mode: str, salt: str) -> list[str]:
    """argv for run.json: with source_paths 'hashed' or 'none', the words that name `paths` (inputs, --out,
    --models, --config: the command knows which they are) are hashed or dropped, and the program is named by
    its file name alone; options and key=value overrides stay."""
    if mode == "full":
        return list(argv)
    sensitive = {str(p) for p in paths if p}
    out = [Path(argv[0]).name] if argv else []
    for word in list(argv)[1:]:
        if word in sensitive:
            word = written_source(word, mode, salt)  # '' in mode 'none': dropped
        if word:
            out.append(word)
    return out


class IdAllocator:
    """Hands out unique ids in a run: a second file with the same stem gets a path-hash suffix, so reruns on the
    same inputs (discovered in the same order) get the same ids. `used` maps each id to its image's source_key."""

    def __init__(self, mode: str, salt: str):
        self.mode, self.salt, self.used = mode, resolve_salt(salt), {}

    def reserve(self, results) -> None:
        """The ids that results already written hold (a resumed folder, a served run)."""
        for r in results:
            self.used[r.image_id] = r.source_key

    def __call__(self, path, identifiers=(), is_dicom: bool = False) -> str:
        iid = image_id_for(path, self.mode, self.salt, identifiers, is_dicom)
        key = source_key(path, self.salt)  # what `used` holds for results of earlier runs too
        if iid in self.used and self.used[iid] != key:
            iid = f"{iid}_{salted_hash(str(Path(path).resolve()), self.salt, 6)}"
        self.used[iid] = key
        return iid
