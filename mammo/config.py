"""Typed, frozen configs: YAML in configs/ -> dataclasses -> `key=value` overrides -> resolved copy saved.

A YAML file may name a parent with `inherit: other.yaml` (relative to itself); the child's keys win. Unknown keys
and wrong types are errors that name the dotted key. Every run saves the resolved config next to its outputs
with `save_config`, so `--config that/config.yaml` reproduces it.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mammo.atomic import atomic_write_text
from mammo.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"


@dataclass(frozen=True)
class RunConfig:
    name: str = "default"  # run folder name under runs/<command>/
    seed: int = 0
    threads: int = 2  # torch / TF intra-op threads (2 cores here)
    device: str = "cpu"  # 'cpu', 'cuda', 'cuda:0', '0,1', 'mps': passed through to torch / ultralytics
    max_pixels: int = 50_000_000  # larger images are refused before decoding (a 20000^2 PNG would need 5 GB)


@dataclass(frozen=True)
class DataConfig:
    format: str = "mias"  # mias | cbis-ddsm | inbreast | vindr | csv
    annotations: str = ""  # annotation file or dataset folder, as the format's reader expects
    images_root: str = ""  # folder the image paths are relative to ('' = the reader's default)
    split_file: str = ""  # CSV image_id,patient_id,split; '' = make one from `seed` and `split_fractions`
    split_fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.8, "val": 0.2})
    seed: int = 0
    # DDSM scans and some PNG exports carry no pixel spacing; this fallback (mm) is used where one is needed.
    fallback_pixel_spacing_mm: float = 0.2


@dataclass(frozen=True)
class PreprocessConfig:
    crop_breast: bool = True  # drop background, labels and markers outside the breast's bounding box
    crop_margin: int = 8  # pixels kept around the breast mask
    flip_to: str = "left"  # 'left' | 'right' | 'none': the side every breast's chest wall is put on
    clahe: bool = False  # contrast-limited histogram equalisation (the seeds' INbreast recipe)
    clahe_clip_limit: float = 2.0
    clahe_tile_grid: int = 8


@dataclass(frozen=True)
class DetectorConfig:
    model: str = "yolov8n.yaml"  # an ultralytics model YAML (built from scratch) or a local .pt path
    classes: tuple[str, ...] = ("lesion",)  # or ('mass', 'calcification', 'other')
    imgsz: int = 640
    epochs: int = 50
    batch: int = 16
    patience: int = 20
    mode: str = "letterbox"  # 'letterbox' | 'tiled'
    tile_size: int = 640  # tiled mode: tile edge in pixels of the working resolution
    tile_overlap: float = 0.2
    tile_scale: float = 1.0  # tiled mode: working resolution relative to the breast crop
    merge: str = "wbf"  # 'nms' | 'wbf': how tile predictions are merged
    conf: float = 0.01
    iou: float = 0.5
    max_det: int = 20
    hit_iou: float = 0.1  # FROC: a prediction hits a lesion when its centre is inside it or IoU >= this
    hit_centre: bool = True  # FROC: false = only IoU >= hit_iou counts as a hit
    train_negatives: float = 1.0  # fraction of lesion-free training images exported (val/test keep all)
    train_args: dict[str, object] = field(default_factory=dict)  # extra ultralytics train arguments (lr0, ...)


@dataclass(frozen=True)
class ClassifierConfig:
    backbone: str = "small_cnn"  # small_cnn | mobilenet_v2 | densenet121 | resnet50 | vgg16 | efficientnet_b0
    weights: str = "none"  # 'none' | 'imagenet-offline' (mobilenet_v2) | 'imagenet' | a local weights file
    head: str = "gap"  # 'gap' (GAP -> dropout -> sigmoid) | 'dense' (GAP -> 512 -> BN -> ... -> sigmoid)
    input_size: int = 128
    context_margin: float = 0.25  # fraction of the box size added on each side of a crop
    channels: int = 1
    dropout: float = 0.3
    dense_units: int = 512
    fine_tune_fraction: float = 1.0  # fraction of backbone layers trained (last layers first)
    frozen_epochs: int = 0  # pretrained weights: first train the head alone for this many epochs, then fine-tune
    fine_tune_lr_factor: float = 0.1  # learning rate of the fine-tuning stage, relative to learning_rate
    optimizer: str = "adam"  # 'adam' | 'sgd'
    learning_rate: float = 1e-3
    momentum: float = 0.9  # SGD only
    batch_size: int = 32
    epochs: int = 30
    patience: int = 8
    class_weight: bool = True
    augment_strength: float = 1.0  # 0 = no augmentation
    clahe: bool = False  # CLAHE on every crop, in training and inference alike
    jitter: float = 0.1  # random shift/scale of training crops, fraction of the box size
    crops_per_lesion: int = 8
    negatives_per_image: int = 4  # background crops from normal tissue, as benign-looking negatives
    calibration: str = "temperature"  # 'temperature' | 'platt' | 'isotonic' | 'none'
    fbeta: float = 2.0


@dataclass(frozen=True)
class PipelineConfig:
    aggregate: str = "max"  # image score from lesion scores: 'max' | 'noisy_or'
    threshold: float | None = None  # operating point on the image score; None = the one shipped with the models
    heatmap_downscale: int = 4  # heatmap PNG at 1/n of the original size (1: full size, ~0.3 s more per scan)
    image_id: str = "auto"  # 'auto' (DICOMs and identifier-like names hashed) | 'name' | 'hash'
    id_salt: str = ""  # '' = this installation's secret salt (runs/.cache/id_salt) or $MAMMO_ID_SALT
    source_paths: str = "full"  # `source` fields and run.json argv: 'full' | 'hashed' | 'none' (outputs that leave)
    fbeta: float = 2.0
    min_specificity: float = 0.5  # the shipped threshold maximizes F-beta on validation among those keeping this
    bootstrap: int = 1000


@dataclass(frozen=True)
class TuningConfig:
    study: str = "classifier"
    storage: str = ""  # '' = an SQLite file in the run folder; any RDB URL optuna supports
    n_trials: int = 20  # finished (complete + pruned) trials the study should have; 0 = no limit (use timeout)
    timeout: float | None = None
    workers: int = 1
    metric: str = "aupr"  # 'aupr' | 'auroc' | 'fbeta'
    pruner: str = "median"  # 'median' | 'hyperband' | 'none'
    search_space: str = "configs/search_space.yaml"
    startup_trials: int = 5  # trials finished before the median pruner prunes (and TPE's random start)
    warmup_epochs: int = 1  # epochs every trial runs before it may be pruned
    heartbeat_interval: int = 20  # seconds between a running trial's heartbeats in the storage
    grace_period: int = 60  # a trial silent this long (its worker died) is marked failed and retried
    max_retry: int = 3  # retries of such a trial


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)


# --- loading ------------------------------------------------------------------------------------------------
def _read_yaml(path: Path, seen: tuple = ()) -> dict:
    path = Path(path).resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'inherit' loops back to itself")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of sections, got {type(data).__name__}")
    parent = data.pop("inherit", None)
    if parent:
        return _deep_merge(_read_yaml(path.parent / parent, seen + (path,)), data)
    return data


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not _is_free_dict(key):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _is_free_dict(key: str) -> bool:
    return key in ("split_fractions",)  # dict-valued fields are replaced whole, not merged


def _coerce(value, tp, key: str):
    """Check (and gently convert: int -> float, list -> tuple) `value` against type hint `tp`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]  # a single class name is a one-element tuple
        item_type = typing.get_args(tp)[0]
        return tuple(_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        _, value_type = typing.get_args(tp)
        return {str(k): _coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads '1e-4' (no dot) as a string
        except ValueError:
            pass
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. device=0 on the command line
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _build(cls, data, prefix: str = ""):
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(names)})"
            raise ConfigError(f"{dotted}: unknown key{hint}")
        kwargs[key] = _coerce(value, hints[key], dotted)
    return cls(**kwargs)


def parse_overrides(overrides) -> dict:
    """['detector.imgsz=320', 'classifier.backbone=mobilenet_v2'] -> nested dict (values parsed as YAML)."""
    tree: dict = {}
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. detector.imgsz=320")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: '{part}' is not a section")
        node[parts[-1]] = value
    return tree


def load_config(path=None, overrides=()) -> Config:
    """Defaults <- configs/default.yaml (or `path`, with its `inherit` chain) <- `key=value` overrides."""
    data = _read_yaml(Path(path) if path else DEFAULT_CONFIG)
    data = _deep_merge(data, parse_overrides(overrides))
    return _build(Config, data)


def to_dict(cfg) -> dict:
    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}


def save_config(cfg: Config, out_dir) -> Path:
    """Write the resolved config as `config.yaml` in `out_dir` (atomically); returns its path."""
    path = Path(out_dir) / "config.yaml"
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


def replace(cfg, **sections):
    """A copy of `cfg` with some fields replaced (frozen dataclasses are never mutated)."""
    return dataclasses.replace(cfg, **sections)
