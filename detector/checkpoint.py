"""Detector checkpoints (.pt) loaded without running anything from the file.

A .pt is a zip holding a pickle (data.pkl), and unpickling may call any function the file names: ultralytics'
own loader (torch.load with weights_only=False) runs whatever a planted `__reduce__` asks for. Every .pt the
project opens goes through `load_checkpoint`, which refuses before anything is unpickled unless:
1. every global the pickle names (read by disassembling it with pickletools; nothing executed) is on ALLOWED,
   the layer classes of the detectors this project trains and the one container ultralytics writes into a
   checkpoint, or one of torch's own tensor-rebuild functions (torch checks those);
2. no allow-listed class is *called* (pickle REDUCE runs its __init__ with arguments from the file); a module is
   created the way pickle creates any object (NEWOBJ: `cls.__new__`, then its saved attributes), so no
   constructor runs with values from the file (e.g. a Conv2d sized to exhaust memory);
then torch.load(weights_only=True), restricted to exactly that allow-list, loads it (enforcing 1 independently).

`install()` makes ultralytics use this loader for every checkpoint it opens (YOLO('x.pt'), the trainer's resume
from last.pt and final validation, strip_optimizer) and builds model YAMLs in ultralytics' restricted mode: a
checkpoint's model YAML is parsed again when one fine-tunes or resumes, and unrestricted parsing eval()s its
`activation` string. A SHA-256 manifest says nothing about any of this: it shows files are unchanged, not safe.
"""
from __future__ import annotations

import importlib
import io
import os
import pickletools
from pathlib import Path

from mammo.errors import WeightsError

# What the checkpoints need, found by listing the globals of weights/detector.pt (YOLOv8 head on torchvision's
# MobileNetV2 through ultralytics' TorchVision layer), of best.pt and the unstripped last.pt of tiny trainings of
# detector/mobilenet_v2_yolo.yaml and yolov8n.yaml, and of models built from yolo11n/yolo11s/yolo26n.yaml (the
# other YAMLs the docs name). Nothing here runs code when created with __new__ and given its saved attributes.
ALLOWED = (
    "ultralytics.nn.tasks.DetectionModel",
    "ultralytics.nn.modules.head.Detect",
    "ultralytics.nn.modules.conv.Conv",
    "ultralytics.nn.modules.conv.Concat",
    "ultralytics.nn.modules.conv.Index",
    "ultralytics.nn.modules.block.Bottleneck",
    "ultralytics.nn.modules.block.C2f",
    "ultralytics.nn.modules.block.DFL",
    "ultralytics.nn.modules.block.SPPF",
    "ultralytics.nn.modules.block.TorchVision",
    "torchvision.models.mobilenetv2.InvertedResidual",
    "torchvision.ops.misc.Conv2dNormActivation",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.activation.SiLU",
    "torch.nn.modules.activation.ReLU6",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.pooling.AdaptiveAvgPool3d",
    "torch.nn.modules.upsampling.Upsample",
    "ultralytics.utils.IterableSimpleNamespace",  # the training settings inside an unstripped last.pt
    # YOLO11 / YOLO26 layers (detector.model=yolo11n.yaml ...)
    "ultralytics.nn.modules.block.C3k2",
    "ultralytics.nn.modules.block.C3k",
    "ultralytics.nn.modules.block.C2PSA",
    "ultralytics.nn.modules.block.PSABlock",
    "ultralytics.nn.modules.block.Attention",
    "ultralytics.nn.modules.conv.DWConv",
    "torch.nn.modules.linear.Identity",
)
# The one allow-listed class pickle legitimately calls (SimpleNamespace pickles as `cls()` + state; called with
# any argument it raises TypeError, it has no other constructor).
CALLABLE = {"ultralytics.utils.IterableSimpleNamespace"}
MAX_BYTES = 1 << 30  # 1 GiB: the shipped detector is 7.8 MB, an unstripped YOLOv8x last.pt about 0.4 GB
MAX_PICKLE_BYTES = 64 << 20  # data.pkl (the tensors are separate records): ~0.2 MB for a YOLOv8n checkpoint
WHY = "a .pt is a pickle, and unpickling anything else could run code from the file"


def _resolve(name: str):
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _pickle_bytes(path: Path) -> bytes:
    """data.pkl of a torch.save zip, read with torch's own zip reader (the one torch.load uses)."""
    import torch

    try:
        reader = torch._C.PyTorchFileReader(str(path))
    except Exception:
        raise WeightsError(path, "not a checkpoint written by torch.save (no readable zip archive; an older "
                                 "pickle-only .pt is not loaded at all, since it cannot be checked first)") from None
    if reader.has_record("constants.pkl"):
        raise WeightsError(path, "a TorchScript archive, not an ultralytics checkpoint")
    if not reader.has_record("data.pkl"):
        raise WeightsError(path, "no data.pkl in the archive: not a torch.save checkpoint")
    data = reader.get_record("data.pkl")
    if len(data) > MAX_PICKLE_BYTES:
        raise WeightsError(path, f"its pickle is {len(data)} bytes, over the {MAX_PICKLE_BYTES} a detector needs")
    return data


def check_pickle(data: bytes, path) -> None:
    """Raise a WeightsError naming what is not allowed in this pickle; executes nothing.

    A small symbolic run of the pickle machine: only where each GLOBAL ends up is tracked (through the memo), so
    that the callable of every REDUCE and the class of every NEWOBJ is known by name."""
    from torch._utils import IMPORT_MAPPING, NAME_MAPPING
    from torch._weights_only_unpickler import _get_allowed_globals

    torch_own = set(_get_allowed_globals())  # tensor rebuild functions, OrderedDict, dtypes ...
    stack, metastack, memo, refused = [], [], {}, []
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            name = op.name
            if name in ("INST", "OBJ", "STACK_GLOBAL", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4"):
                refused.append(f"pickle opcode {name}")  # torch's restricted unpickler has none of them either
                break
            if name == "GLOBAL":
                module, attr = arg.split(" ", 1)
                # protocol-2 names of Python 2 (__builtin__.set), mapped as torch's unpickler maps them
                module, attr = NAME_MAPPING.get((module, attr), (IMPORT_MAPPING.get(module, module), attr))
                full = f"{module}.{attr}"
                if full not in ALLOWED and full not in torch_own:
                    refused.append(f"global {full}")
                stack.append(("global", full))
                continue
            if name in ("REDUCE", "NEWOBJ"):
                target = stack[-2] if len(stack) >= 2 else None
                called = target[1] if isinstance(target, tuple) else None
                if called is None:
                    refused.append(f"{name} of something that is not a named global")
                elif name == "REDUCE" and called in ALLOWED and called not in CALLABLE:
                    refused.append(f"a call of {called}(...) (would run its constructor with values from the file)")
            if name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1] if stack else None
                continue
            if name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(arg))
                continue
            if name == "MARK":  # as pickle and torch's unpickler do: a new stack, the old one kept aside
                metastack.append(stack)
                stack = []
                continue
            before = op.stack_before
            if pickletools.markobject in before:  # e.g. APPENDS: list, MARK, items... -> list
                stack = metastack.pop()
                before = before[:before.index(pickletools.markobject)]
            if len(before) > len(stack):
                raise ValueError(f"{name} on a stack of {len(stack)}")
            del stack[len(stack) - len(before):]
            stack.extend([None] * len(op.stack_after))
    except Exception as exc:  # truncated or malformed pickle: torch.load would fail on it too
        raise WeightsError(path, f"its pickle cannot be read ({type(exc).__name__}: {exc}); "
                                 f"a damaged or foreign file") from None
    if refused:
        shown = ", ".join(dict.fromkeys(refused))  # in order, without repeats
        raise WeightsError(path, f"refused before loading: it contains {shown}, which a detector checkpoint "
                                 f"does not need ({WHY}). Nothing from it was run. Only YOLO detection "
                                 f"checkpoints of the layers in detector/checkpoint.py ALLOWED are loaded.")


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
    check_pickle(_pickle_bytes(path), path)
    try:
        with torch.serialization.safe_globals([(_resolve(n), n) for n in ALLOWED]):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
        raise WeightsError(path, f"cannot be loaded as ultralytics weights ({type(exc).__name__}: {detail})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("ema") or ckpt.get("model"), torch.nn.Module):
        raise WeightsError(path, "not an ultralytics checkpoint (no model in it)")
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
