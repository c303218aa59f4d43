"""Detector checkpoints (.pt) loaded without running anything from the file.

A .pt is a zip holding a pickle (data.pkl) and one record per tensor storage, and unpickling may call any function
the file names: ultralytics' own loader (torch.load with weights_only=False) runs whatever a planted `__reduce__`
asks for, and even torch's weights_only loader calls what it allows with arguments from the file (a Conv2d of
2048 x 2048 x 11 x 11 through torch._tensor._rebuild_from_type_v2, bytearray(3_000_000_000)). Every .pt the
project opens goes through `load_checkpoint`, which refuses before anything is unpickled unless:
1. the zip is what torch.save writes: members stored, not compressed (a compressed member could inflate to any
   size), no name twice, the same members as torch's own zip reader sees;
2. detector/safe_pickle.py, walking the pickle symbolically (nothing executed), finds that every call it makes,
   direct or through a rebuild helper, is on its allow-list with arguments of the right kinds and bounds; layers
   are only restored (NEWOBJ with no arguments, then their saved attributes), never constructed from the file;
   storages, tensors and layer geometry are within bounds, and each storage record holds the bytes it claims;
then torch.load(weights_only=True), restricted to the same layer classes, loads it (an independent second check),
and a model whose YAML would make a TorchVision layer download weights is refused (mammo.weights_store).

`install()` makes ultralytics use this loader for every checkpoint it opens (YOLO('x.pt'), the trainer's resume
from last.pt and final validation, strip_optimizer) and builds model YAMLs in ultralytics' restricted mode: a
checkpoint's model YAML is parsed again when one fine-tunes or resumes, and unrestricted parsing eval()s its
`activation` string. A SHA-256 manifest says nothing about any of this: it shows files are unchanged, not safe.
"""
from __future__ import annotations

import importlib
import os
import zipfile
from pathlib import Path

from detector import safe_pickle
from mammo.errors import WeightsError
from mammo.weights_store import check_model_spec

ALLOWED = safe_pickle.LAYERS + (safe_pickle.NAMESPACE,)  # the classes torch.load may resolve
MAX_BYTES = 1 << 30  # 1 GiB: the shipped detector is 7.8 MB, an unstripped YOLOv8x last.pt about 0.4 GB
MAX_PICKLE_BYTES = 64 << 20  # data.pkl (the tensors are separate records): ~0.2 MB for a YOLOv8n checkpoint
WHY = "a .pt is a pickle, and unpickling anything else could run code from the file or build what it likes"
NOT_TORCH_SAVE = ("not a checkpoint written by torch.save (no readable zip archive; an older pickle-only .pt is "
                  "not loaded at all, since it cannot be checked first)")


def _resolve(name: str):
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def read_archive(path: Path) -> tuple[bytes, dict]:
    """data.pkl of a torch.save zip (read with torch's own zip reader, the one torch.load uses) and the byte size
    of each storage record {key: bytes}, after checking the zip's layout without inflating anything."""
    import torch

    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        raise WeightsError(path, NOT_TORCH_SAVE) from None
    names = [i.filename for i in infos]
    packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
    if packed:
        raise WeightsError(path, f"refused before loading: member {packed[0]} is compressed; torch.save stores "
                                 f"members as they are, and a compressed one could inflate to any size")
    if len(set(names)) != len(names) or len({n.split("/", 1)[0] for n in names}) != 1:
        raise WeightsError(path, "refused before loading: its zip repeats a member name or has more than one "
                                 "top folder, which torch.save never writes")
    try:
        reader = torch._C.PyTorchFileReader(str(path))
    except Exception:
        raise WeightsError(path, NOT_TORCH_SAVE) from None
    inner = [n.split("/", 1)[1] if "/" in n else n for n in names]
    if set(reader.get_all_records()) != set(inner):  # both readers must see one archive, not two
        raise WeightsError(path, "refused before loading: its zip reads differently with torch's reader")
    if reader.has_record("constants.pkl"):
        raise WeightsError(path, "a TorchScript archive, not an ultralytics checkpoint")
    if not reader.has_record("data.pkl"):
        raise WeightsError(path, "no data.pkl in the archive: not a torch.save checkpoint")
    size = dict(zip(inner, (i.file_size for i in infos)))
    if size["data.pkl"] > MAX_PICKLE_BYTES:
        raise WeightsError(path, f"its pickle is {size['data.pkl']} bytes, over the {MAX_PICKLE_BYTES} a "
                                 f"detector needs")
    records = {n[len("data/"):]: b for n, b in size.items() if n.startswith("data/")}
    return reader.get_record("data.pkl"), records


def check_pickle(data: bytes, path, records: dict | None = None) -> None:
    """Raise a WeightsError naming the file and what is not allowed in this pickle; executes nothing.
    `records`: the byte size of each storage record, checked against what the pickle claims."""
    try:
        safe_pickle.run(data, records)
    except safe_pickle.Refused as exc:
        raise WeightsError(path, f"refused before loading: it holds {exc}, which a detector checkpoint does not "
                                 f"({WHY}). Nothing from it was run. Only YOLO detection checkpoints of the "
                                 f"layers in detector/safe_pickle.py LAYERS are loaded.") from None
    except Exception as exc:  # truncated or malformed pickle: torch.load would fail on it too
        raise WeightsError(path, f"its pickle cannot be read ({type(exc).__name__}: {exc}); "
                                 f"a damaged or foreign file") from None


def check_file(path) -> None:
    """The checks of `load_checkpoint` before anything is unpickled (also what benchmarks/safe_weights.py times)."""
    data, records = read_archive(Path(path))
    check_pickle(data, path, records)


def load_checkpoint(path, map_location="cpu"):
    """The checkpoint dict of a local .pt, loaded with weights_only=True against ALLOWED (see the docstring)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(path, "weights file not found")
    size = path.stat().st_size
    if size == 0:
        raise WeightsError(path, "empty file (0 bytes)")
    if size > MAX_BYTES:
        raise WeightsError(path, f"{size} bytes, over the {MAX_BYTES} limit for detector weights")
    check_file(path)
    try:
        with torch.serialization.safe_globals([(_resolve(n), n) for n in ALLOWED]):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
        raise WeightsError(path, f"cannot be loaded as ultralytics weights ({type(exc).__name__}: {detail})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("ema") or ckpt.get("model"), torch.nn.Module):
        raise WeightsError(path, "not an ultralytics checkpoint (no model in it)")
    for model in (ckpt.get("model"), ckpt.get("ema")):  # the YAML ultralytics builds again to fine-tune or resume
        if model is not None:
            check_model_spec(getattr(model, "yaml", None), path, need_file=False)
    return ckpt


# --- ultralytics uses this loader ------------------------------------------------------------------------------
def _torch_safe_load(weight, safe_only=None):  # ultralytics.nn.tasks.torch_safe_load's interface
    return load_checkpoint(weight), str(weight)


def _torch_load(f, *args, map_location="cpu", **kwargs):  # ultralytics.utils.patches.torch_load's interface
    if not isinstance(f, (str, os.PathLike)):
        raise TypeError("checkpoints are loaded from a path only (see detector/checkpoint.py)")
    return load_checkpoint(f, map_location=map_location)


def install() -> None:
    """Route every checkpoint load of ultralytics through `load_checkpoint` (idempotent). Checked names, so an
    ultralytics upgrade that moves them fails here rather than silently loading unsafely again."""
    from ultralytics.nn import tasks
    from ultralytics.utils import patches, torch_utils

    for module, attr, safe in ((tasks, "torch_safe_load", _torch_safe_load), (tasks, "torch_load", _torch_load),
                               (torch_utils, "torch_load", _torch_load), (patches, "torch_load", _torch_load)):
        if not callable(getattr(module, attr, None)):
            raise RuntimeError(f"{module.__name__}.{attr} not found: this ultralytics version loads checkpoints "
                               f"differently; detector/checkpoint.py must be updated before any .pt is loaded")
        setattr(module, attr, safe)
    # parse_model without eval(): the activation of a (checkpoint's) model YAML and its layer names
    tasks.SAFE_LOAD = True
    if not tasks._SafeLoad.restricted():
        raise RuntimeError("ultralytics' restricted model building could not be switched on")
