"""Judge every call a checkpoint's pickle would make, without running any of it (no torch needed).

Unpickling is a small stack machine, and what it builds is decided by its calls: REDUCE calls a callable with a
tuple from the file, NEWOBJ creates an object of a class, BUILD gives an object its saved attributes, BINPERSID
hands torch a storage record. `check` runs that machine symbolically over the opcodes (pickletools.genops) and
tracks what each stack slot holds (a named global, a literal, a tuple, a list, a dict, a tensor, a storage, a
restored layer), so that each call is judged with its real arguments, also when it is reached through a rebuild
helper such as torch._tensor._rebuild_from_type_v2(func, new_type, args, state):
- CALLS is the whole list of callables, each with the check of its arguments (kinds and bounds). Anything else
  named in the file is refused, and a global may only stand where its role allows (a layer class as the class
  of a NEWOBJ, a storage type in a storage record, a rebuild helper as the func of _rebuild_from_type_v2).
- LAYERS (the detectors' modules) are only ever restored the way torch pickles a module: NEWOBJ of the class with
  no arguments, then BUILD with its saved attributes; a layer *called* with values from the file (which is how
  a Conv2d sized to exhaust memory, or a TorchVision layer that downloads, would be built) is refused.
- Sizes are bounded: each storage's bytes (dtype x numel), their total, each tensor's dimensions and its view
  inside its storage, the storage records in the zip against the numel claimed, and the geometry of restored
  layers (what their forward would allocate).
Conservative on purpose: a file this cannot follow is refused, never waved through.
"""
from __future__ import annotations

import io
import math
import pickletools
import reprlib
from dataclasses import dataclass, field

# Module classes of the detectors this project trains (found by listing the globals of weights/detector.pt, of
# best.pt and the unstripped last.pt of tiny trainings of detector/mobilenet_v2_yolo.yaml and yolov8n.yaml, and
# of models built from yolo11n/yolo11s/yolo26n.yaml). Restored with __new__ and their saved attributes, none runs
# code; none is ever called.
LAYERS = (
    "ultralytics.nn.tasks.DetectionModel",
    "ultralytics.nn.modules.head.Detect",
    "ultralytics.nn.modules.conv.Conv",
    "ultralytics.nn.modules.conv.Concat",
    "ultralytics.nn.modules.conv.Index",
    "ultralytics.nn.modules.block.Bottleneck",
    "ultralytics.nn.modules.block.C2f",
    "ultralytics.nn.modules.block.DFL",
    "ultralytics.nn.modules.block.SPPF",
    "ultralytics.nn.modules.block.TorchVision",  # restored only: called, it builds (and downloads) a model
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
    # YOLO11 / YOLO26 layers (detector.model=yolo11n.yaml ...)
    "ultralytics.nn.modules.block.C3k2",
    "ultralytics.nn.modules.block.C3k",
    "ultralytics.nn.modules.block.C2PSA",
    "ultralytics.nn.modules.block.PSABlock",
    "ultralytics.nn.modules.block.Attention",
    "ultralytics.nn.modules.conv.DWConv",
    "torch.nn.modules.linear.Identity",
)
NAMESPACE = "ultralytics.utils.IterableSimpleNamespace"  # the training settings inside an unstripped last.pt

# Bytes per element of the storage types torch.save names in a storage record.
ELEMENT_BYTES = {"torch.HalfStorage": 2, "torch.BFloat16Storage": 2, "torch.FloatStorage": 4,
                 "torch.DoubleStorage": 8, "torch.LongStorage": 8, "torch.IntStorage": 4, "torch.ShortStorage": 2,
                 "torch.CharStorage": 1, "torch.ByteStorage": 1, "torch.BoolStorage": 1}
DTYPES = {f"torch.{t}" for t in ("float16", "bfloat16", "float32", "float64", "int64", "int32", "int16", "int8",
                                 "uint8", "bool")}  # a dtype is a plain value (an optimizer's or a tensor's)
TENSOR_TYPES = {"torch.Tensor", "torch.nn.parameter.Parameter"}  # new_type of _rebuild_from_type_v2

MAX_STORAGE_BYTES = 512 << 20  # one storage: the largest tensor of a YOLOv8x is ~10 MB
MAX_TOTAL_BYTES = 1 << 30  # all storages: an unstripped YOLOv8x last.pt is about 0.4 GB
MAX_DIM = 1 << 16  # any tensor dimension
MAX_LITERAL_ITEMS = 1 << 16  # set/frozenset/bytes built by a call
# Restored layers: the attributes that size what their forward allocates, and the largest value of any int in
# them (a YOLOv8x has 640 channels at most, kernels of 7 in MobileNetV2's relatives, pools of 5, upsampling x2).
GEOMETRY = {
    "torch.nn.modules.conv.Conv2d": {"in_channels": 4096, "out_channels": 4096, "kernel_size": 31, "stride": 32,
                                     "padding": 32, "dilation": 32, "groups": 4096},
    "torch.nn.modules.batchnorm.BatchNorm2d": {"num_features": 4096},
    "torch.nn.modules.pooling.MaxPool2d": {"kernel_size": 32, "stride": 32, "padding": 16, "dilation": 16},
    "torch.nn.modules.pooling.AdaptiveAvgPool3d": {"output_size": 64},
    "torch.nn.modules.upsampling.Upsample": {"scale_factor": 8, "size": 4096},
    "ultralytics.nn.modules.block.DFL": {"c1": 64},
    "ultralytics.nn.modules.head.Detect": {"nc": 1000, "nl": 8, "reg_max": 64},
}


@dataclass(frozen=True)
class Global:
    name: str


@dataclass(eq=False)
class Storage:
    dtype: str
    key: str
    numel: int


@dataclass(eq=False)
class Tensor:
    numel: int


@dataclass(eq=False, repr=False)
class Obj:  # a layer (NEWOBJ) or the settings namespace, given its attributes by BUILD
    cls: str
    state: dict | None = None

    def __repr__(self):
        return f"<a restored {self.cls}>"


class ODict(dict):  # collections.OrderedDict()
    def __repr__(self):
        return f"OrderedDict(<{len(self)} items>)"


class Refused(Exception):
    pass


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _ints(v, what: str, low=0, high=MAX_DIM) -> tuple:
    if not isinstance(v, tuple) or not all(_is_int(x) and low <= x <= high for x in v):
        raise Refused(f"{what} {_show(v)} (a tuple of ints in [{low}, {high}] expected)")
    return v


_REPR = reprlib.Repr()  # (keyword arguments only from Python 3.12)
_REPR.maxlevel, _REPR.maxtuple, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 3, 8, 8, 4, 60, 60


def _show(v) -> str:
    """A short text of a value for a refusal; bounded, since what the file nests may be exponentially large."""
    text = v.name if isinstance(v, Global) else _REPR.repr(v)
    return text if len(text) <= 100 else text[:97] + "..."


def _constructed(func) -> str:
    """Why calling this is refused, when it is a layer class."""
    if not (isinstance(func, Global) and func.name in LAYERS):
        return ""
    return (" (would run a layer's constructor with values from the file"
            + ("; a TorchVision layer builds a torchvision model and may download its weights"
               if func.name.endswith(".TorchVision") else "") + ")")


@dataclass
class Machine:
    records: dict | None = None  # storage key -> bytes of its zip record (None: not checked)
    storages: dict = field(default_factory=dict)  # key -> Storage
    total_bytes: int = 0  # of the storages
    tensor_bytes: int = 0  # of the tensors viewing them
    layers: list = field(default_factory=list)  # (Obj, its state as BUILD gave it)
    hooks: list = field(default_factory=list)  # the backward-hook dicts handed to tensors

    # --- calls ------------------------------------------------------------------------------------------------
    def call(self, func, args):
        if not isinstance(func, Global):
            raise Refused(f"a call of something that is not a named global ({_show(func)})")
        if not isinstance(args, tuple):
            raise Refused(f"a call of {func.name} with arguments {_show(args)} that are not a tuple")
        check = CALLS.get(func.name)
        if check is None:
            raise Refused(f"a call of {func.name}(...){_constructed(func) or ', which a checkpoint never makes'}")
        return check(self, args)

    def rebuild_tensor_v2(self, args):
        if len(args) not in (6, 7):
            raise Refused(f"_rebuild_tensor_v2 with {len(args)} arguments")
        storage, offset, size, stride, requires_grad, hooks = args[:6]
        if not isinstance(storage, Storage):
            raise Refused("_rebuild_tensor_v2 of something that is not a storage record")
        size = _ints(size, "a tensor size")
        stride = _ints(stride, "a tensor stride", high=1 << 40)
        if len(size) != len(stride) or len(size) > 8 or not _is_int(offset) or offset < 0:
            raise Refused(f"a tensor view {size} / {stride} / offset {_show(offset)} that does not fit a tensor")
        numel = math.prod(size)
        end = offset + sum((s - 1) * st for s, st in zip(size, stride)) + 1 if numel else 0
        if end > storage.numel:
            raise Refused(f"a tensor view reaching element {end} of a storage of {storage.numel}")
        # a view with zero strides is as large as it likes on a small storage, until anything copies it
        nbytes = numel * ELEMENT_BYTES[storage.dtype]
        self.tensor_bytes += nbytes
        if nbytes > MAX_STORAGE_BYTES or self.tensor_bytes > MAX_TOTAL_BYTES:
            raise Refused(f"a tensor of {size} (over {MAX_STORAGE_BYTES} bytes, or tensors of over "
                          f"{MAX_TOTAL_BYTES} in all)")
        self.bool_and_hooks(requires_grad, hooks)
        if len(args) == 7 and args[6] is not None and not (isinstance(args[6], dict) and not args[6]):
            raise Refused(f"tensor metadata {_show(args[6])}")
        return Tensor(numel)

    def rebuild_parameter(self, args):
        if len(args) != 3 or not isinstance(args[0], Tensor):
            raise Refused(f"_rebuild_parameter{_show(args)}")
        self.bool_and_hooks(*args[1:])
        return args[0]

    def bool_and_hooks(self, requires_grad, hooks):
        if not isinstance(requires_grad, bool) or type(hooks) is not ODict:
            raise Refused(f"requires_grad {_show(requires_grad)} / backward hooks {_show(hooks)}")
        self.hooks.append(hooks)  # must still be empty at the end (checked then: SETITEM may come later)

    def rebuild_from_type_v2(self, args):
        """func(*args), then as_subclass(new_type) and setattr of state: func must itself be a tensor rebuild
        helper whose arguments pass its own check, new_type a tensor type (never a layer class)."""
        if len(args) != 4:
            raise Refused(f"_rebuild_from_type_v2 with {len(args)} arguments")
        func, new_type, inner, state = args
        if not (isinstance(func, Global) and func.name in TENSOR_REBUILDERS):
            raise Refused(f"_rebuild_from_type_v2 calling {_show(func)}, which is not a tensor rebuild "
                          f"helper{_constructed(func)}")
        if not (isinstance(new_type, Global) and new_type.name in TENSOR_TYPES):
            raise Refused(f"_rebuild_from_type_v2 to type {_show(new_type)}, which is not a tensor type")
        if state is not None and not (isinstance(state, dict) and not state):
            raise Refused(f"_rebuild_from_type_v2 setting attributes {_show(state)} on a tensor")
        result = self.call(func, inner)
        if not isinstance(result, Tensor):
            raise Refused("_rebuild_from_type_v2 of something that is not a tensor")
        return result

    def ordered_dict(self, args):
        if args:
            raise Refused(f"collections.OrderedDict called with arguments {_show(args)}")
        return ODict()

    def torch_size(self, args):
        if len(args) != 1:
            raise Refused(f"torch.Size{_show(args)}")
        return _ints(args[0], "a torch.Size")

    def literal_set(self, args):
        if not args:
            return frozenset()
        if len(args) != 1 or not isinstance(args[0], (list, tuple)) or len(args[0]) > MAX_LITERAL_ITEMS \
                or not all(v is None or isinstance(v, (bool, int, float, str)) for v in args[0]):
            raise Refused(f"a set of {_show(args)} (a bounded list of literals expected)")
        return frozenset(args[0])

    def literal_slice(self, args):
        if not 1 <= len(args) <= 3 or not all(v is None or _is_int(v) for v in args):
            raise Refused(f"slice{_show(args)}")
        return slice(*args)

    def literal_bytes(self, args):
        """bytes/bytearray only from data in the file (protocol 2 pickles them as (str, 'latin1')): given an
        int they allocate that many zero bytes (bytearray(3_000_000_000) is 3 GB from 20 bytes of pickle)."""
        if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1") \
                and len(args[0]) <= MAX_LITERAL_ITEMS:
            return args[0].encode("latin1")
        if args == () or (len(args) == 1 and isinstance(args[0], bytes)):
            return args[0] if args else b""
        raise Refused(f"bytes/bytearray built from {_show(args)} (an int size allocates that many bytes; only "
                      f"bytes written in the file are allowed)")

    def namespace(self, args):
        if args:
            raise Refused(f"{NAMESPACE} called with arguments {_show(args)}")
        return Obj(NAMESPACE)

    # --- storages and layers ----------------------------------------------------------------------------------
    def storage(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], Global) and pid[1].name in ELEMENT_BYTES
                and isinstance(pid[2], str) and isinstance(pid[3], str) and _is_int(pid[4]) and pid[4] >= 0):
            raise Refused(f"a persistent id {_show(pid)} that is not a torch storage record")
        _, dtype, key, _, numel = pid
        nbytes = numel * ELEMENT_BYTES[dtype.name]
        if nbytes > MAX_STORAGE_BYTES:
            raise Refused(f"storage {key} of {nbytes} bytes (limit {MAX_STORAGE_BYTES})")
        seen = self.storages.get(key)
        if seen is not None:
            if (seen.dtype, seen.numel) != (dtype.name, numel):
                raise Refused(f"storage {key} claimed twice with different types or sizes")
            return seen
        if self.records is not None and self.records.get(key) != nbytes:
            raise Refused(f"storage {key} claims {numel} x {dtype.name} = {nbytes} bytes, but its record "
                          f"data/{key} holds {self.records.get(key, 'nothing')}")
        self.total_bytes += nbytes
        if self.total_bytes > MAX_TOTAL_BYTES:
            raise Refused(f"storages of more than {MAX_TOTAL_BYTES} bytes in all")
        self.storages[key] = Storage(dtype.name, key, numel)
        return self.storages[key]

    def newobj(self, cls, args):
        if not (isinstance(cls, Global) and cls.name in LAYERS):
            raise Refused(f"an object of {_show(cls)} created (NEWOBJ), which is not a detector layer")
        if args != ():
            raise Refused(f"{cls.name}.__new__ given arguments {_show(args)}")
        return Obj(cls.name)

    def build(self, obj, state):
        if not isinstance(obj, Obj) or obj.state is not None:
            raise Refused(f"attributes set (BUILD) on {_show(obj)}, which is not a freshly restored layer")
        if not (isinstance(state, dict) and all(isinstance(k, str) for k in state)):
            raise Refused(f"the attributes of a {obj.cls} given as {_show(state)}, not as a dict")
        obj.state = dict(state)  # BUILD copies the entries now; values (lists) may still change: judged at the end
        self.layers.append(obj)

    def finish(self):
        for hooks in self.hooks:
            if hooks:
                raise Refused("a tensor with backward hooks")
        for obj in self.layers:
            for attr, limit in GEOMETRY.get(obj.cls, {}).items():
                value = obj.state.get(attr)
                items = value if isinstance(value, (tuple, list)) else (value,)
                if not all(v is None or v in ("same", "valid") or (isinstance(v, (int, float)) and 0 <= v <= limit)
                           for v in items):
                    raise Refused(f"a {obj.cls.rsplit('.', 1)[1]} with {attr}={_show(value)} (at most {limit})")


TENSOR_REBUILDERS = {"torch._utils._rebuild_tensor_v2": Machine.rebuild_tensor_v2,
                     "torch._utils._rebuild_parameter": Machine.rebuild_parameter}
CALLS = {**TENSOR_REBUILDERS,
         "torch._tensor._rebuild_from_type_v2": Machine.rebuild_from_type_v2,
         "collections.OrderedDict": Machine.ordered_dict,
         "torch.Size": Machine.torch_size,
         "builtins.set": Machine.literal_set,
         "builtins.frozenset": Machine.literal_set,
         "builtins.slice": Machine.literal_slice,
         "builtins.bytes": Machine.literal_bytes,
         "builtins.bytearray": Machine.literal_bytes,
         "_codecs.encode": Machine.literal_bytes,
         NAMESPACE: Machine.namespace}
# Globals that may stand where their role allows: called (CALLS), a layer class (NEWOBJ), a storage type (a
# storage record), a tensor type (_rebuild_from_type_v2), a dtype (a value anywhere).
GLOBALS = set(CALLS) | set(LAYERS) | set(ELEMENT_BYTES) | TENSOR_TYPES | DTYPES
PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}  # torch.save writes protocol 2 names

CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}  # genops gives these no argument
LITERALS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
            "FLOAT", "BINFLOAT", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES",
            "SHORT_BINBYTES", "BINBYTES8"}


def _no_stray_global(value, where: str):
    """A global may sit in a list, a dict or a layer's attributes only if it is a dtype: a callable or a class
    stored as a value could be called later by code that trusts the attribute. Tuples are looked into once each
    (through the memo a few bytes nest a tuple in itself exponentially often)."""
    todo, seen = [value], set()
    while todo:
        v = todo.pop()
        if isinstance(v, Global) and v.name not in DTYPES:
            raise Refused(f"global {v.name} stored as a value ({where})")
        if isinstance(v, tuple) and id(v) not in seen:
            seen.add(id(v))
            todo.extend(v)


def _key(key):
    """Dict keys are scalars in a checkpoint (attribute names, parameter indices, class ids); a tuple key could
    be hashed exponentially long (see _no_stray_global)."""
    if key is not None and not isinstance(key, (bool, int, float, str, bytes)):
        raise Refused(f"a dict key {_show(key)} that is not a plain value")
    return key


def run(data: bytes, records: dict | None = None) -> None:
    """Walk the pickle; raise Refused with the first thing it would do that is not allowed."""
    m = Machine(records)
    stack, marks, memo = [], [], {}

    def pop_mark():
        nonlocal stack
        items, stack = stack, marks.pop()
        return items

    for op, arg, _ in pickletools.genops(io.BytesIO(data)):
        name = op.name
        if name in LITERALS:
            stack.append(arg)
        elif name in CONSTANTS:
            stack.append(CONSTANTS[name])
        elif name in ("PROTO", "FRAME"):
            continue
        elif name == "STOP":
            _no_stray_global(stack.pop(), "the checkpoint itself")
        elif name == "GLOBAL":
            module, attr = arg.split(" ", 1)
            full = f"{PY2_MODULES.get(module, module)}.{attr}"
            if full not in GLOBALS:
                raise Refused(f"global {full}")
            stack.append(Global(full))
        elif name == "MARK":  # as pickle and torch's unpickler do: a new stack, the old one kept aside
            marks.append(stack)
            stack = []
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo[arg])
        elif name == "POP":
            stack.pop()
        elif name == "POP_MARK":
            pop_mark()
        elif name == "DUP":
            stack.append(stack[-1])
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            if len(stack) < n:
                raise IndexError(f"{name} on a stack of {len(stack)}")
            items = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items)
        elif name == "TUPLE":
            items = tuple(pop_mark())  # first: pop_mark rebinds `stack`
            stack.append(items)
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "LIST":
            items = pop_mark()
            _no_stray_global(tuple(items), "a list")
            stack.append(items)
        elif name in ("APPEND", "APPENDS"):
            items = pop_mark() if name == "APPENDS" else [stack.pop()]
            if not isinstance(stack[-1], list):
                raise Refused(f"{name} to {_show(stack[-1])}, which is not a list")
            _no_stray_global(tuple(items), "a list")
            stack[-1].extend(items)
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name in ("DICT", "SETITEM", "SETITEMS"):
            items = pop_mark() if name != "SETITEM" else [stack.pop(-2), stack.pop()]
            if len(items) % 2:
                raise IndexError(f"{name} of an odd number of items")
            if name == "DICT":
                stack.append({})
            if not isinstance(stack[-1], dict):
                raise Refused(f"{name} into {_show(stack[-1])}, which is not a dict")
            _no_stray_global(tuple(items), "a dict")
            for k, v in zip(items[::2], items[1::2]):
                stack[-1][_key(k)] = v
        elif name == "REDUCE":
            args = stack.pop()
            stack.append(m.call(stack.pop(), args))
        elif name == "NEWOBJ":
            args = stack.pop()
            stack.append(m.newobj(stack.pop(), args))
        elif name == "BUILD":
            state = stack.pop()
            _no_stray_global(tuple(state.values()) if isinstance(state, dict) else state, "a layer's attributes")
            m.build(stack[-1], state)
        elif name == "BINPERSID":
            stack.append(m.storage(stack.pop()))
        else:  # INST, OBJ, STACK_GLOBAL, NEWOBJ_EX, EXT*, PERSID, sets, buffers...: torch.save writes none of them
            raise Refused(f"pickle opcode {name}")
    if stack or marks:
        raise IndexError("items left on the stack after STOP")
    m.finish()
