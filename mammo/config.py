"""Typed, frozen configs: YAML in configs/ -> dataclasses -> `key=value` overrides -> resolved copy saved.

A YAML file may name a parent with `inherit: other.yaml` (relative to itself); the child's keys win. Every
section checks its fields whenever it is built (from YAML, from overrides, from a tuning trial or by
`dataclasses.replace`): unknown keys, wrong types, choices outside a field's `Literal`, empty strings, NaN or
infinite numbers and values outside the range declared beside the field are one ConfigError naming the dotted
key and what is allowed. Every run saves the resolved config next to its outputs with `save_config`, so
`--config that/config.yaml` reproduces it. configs/default.yaml repeats every default (a test keeps them equal).
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from mammo.atomic import atomic_write_text
from mammo.errors import ConfigError
from mammo import PROJECT_ROOT

CONFIG_DIR = PROJECT_ROOT / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"

# Choices shared with the code that implements them (one tuple each, so adding a value is one edit here plus
# its implementation): pipeline/results.py aggregates, classifier/model.py registers backbones, ...
AGGREGATES = ("max", "max_product", "noisy_or", "noisy_or_product", "stacker")  # stacker: fitted by cross-validate
IMAGE_ID_MODES = ("auto", "name", "hash")  # pipeline/ids.py says what each means
SOURCE_PATH_MODES = ("full", "hashed", "none")
DICOM_OUT_MODES = ("auto", "always", "never")  # pipeline.dicom_out (not on/off: YAML reads those as booleans)
MAX_FOLDS = 20  # k of a cross-validation: each fold trains both stages, so more is days of CPU
MAX_PREDICT_BOXES = 100  # boxes per image in cross-validation's fold predictions: the most a chosen max_det can be
DATA_FORMATS = ("mias", "cbis-ddsm", "inbreast", "vindr", "csv", "folders")
BACKBONES = ("small_cnn", "mobilenet_v2", "densenet121", "resnet50", "vgg16", "efficientnet_b0")
CALIBRATIONS = ("temperature", "platt", "isotonic", "none")
KERAS_BACKENDS = ("torch", "tensorflow")  # mammo.runtime.use_keras_backend
INFERENCE_BACKENDS = ("onnx",) + KERAS_BACKENDS  # onnx: classifier/onnx_backend.py, no keras at all
MERGES = ("nms", "wbf")
DOMAINS = ("film", "digital")  # what an image is treated as (mammo/domain.py)
DOMAIN_SETTINGS = ("auto", *DOMAINS)
DOMAIN_FALLBACKS = (*DOMAINS, "refuse")
DEVICE = (r"cpu|mps|cuda(:\d+)?|\d+(,\d+)*", "cpu, mps, cuda, cuda:N or GPU indices such as 0 or 0,1")
# DICOM AE titles (PS3.5 AE VR): at most 16 characters, no backslash or control characters; leading and trailing
# spaces are not significant, so none are allowed here (a title differing only by them would look alike)
AE_TITLE = (r"[!-\[\]-~]([ -\[\]-~]{0,14}[!-\[\]-~])?", "1 to 16 printable characters, no backslash, no "
            "leading or trailing space")
HOST = (r"[A-Za-z0-9.:-]{1,253}", "an IPv4/IPv6 address or a host name")
# Where `pipeline listen` stores its DICOM results: nowhere ('': the output folder only), a storage SCP by C-STORE
# ('AE@host:port') or a DICOMweb server by STOW-RS (its http(s) base URL)
DESTINATION = (r"|[!-\[\]-~]([ -\[\]-~]{0,14}[!-\[\]-~])?@[A-Za-z0-9.:\[\]-]{1,253}:\d{1,5}|https?://\S{1,2000}",
               "'' (output folder only), AE@host:port (C-STORE) or an http(s):// DICOMweb URL (STOW-RS)")


def bounded(default, low, high, factory=None):
    """A numeric setting (or a dict of them) with its allowed range, inclusive; checked whenever a config is built."""
    meta = {"range": (low, high)}
    return field(default_factory=factory, metadata=meta) if factory else field(default=default, metadata=meta)


def text(default: str = "", *, empty: bool = True, pattern: tuple[str, str] | None = None):
    """A string setting; '' allowed only with `empty` (every other string field must be non-blank)."""
    return field(default=default, metadata={"empty_ok": empty, "pattern": pattern})


class _Checked:
    """Coerces and checks every field at construction (frozen dataclasses: through object.__setattr__)."""

    def __post_init__(self):
        section = _section_name(type(self))
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            key = f"{section}.{f.name}" if section else f.name
            value = _coerce(getattr(self, f.name), hints[f.name], key)
            _check(value, f.metadata, key)
            object.__setattr__(self, f.name, value)


@dataclass(frozen=True)
class RunConfig(_Checked):
    name: str = "default"  # run folder name under runs/<command>/
    seed: int = bounded(0, 0, 2**32 - 1)
    threads: int = bounded(2, 1, 256)  # torch / TF intra-op threads (2 cores here)
    device: str = text("cpu", empty=False, pattern=DEVICE)  # passed through to torch / ultralytics
    # larger images are refused before decoding (a 20000^2 PNG would need 5 GB)
    max_pixels: int = bounded(50_000_000, 1024, 500_000_000)


@dataclass(frozen=True)
class DataConfig(_Checked):
    format: Literal[DATA_FORMATS] = "mias"
    annotations: str = text("../shared/data/mias/Info.txt")  # annotation file or dataset folder, as the reader expects
    images_root: str = text()  # folder the image paths are relative to ('' = the reader's default)
    split_file: str = text()  # CSV image_id,patient_id,split; '' = make one from `seed` and `split_fractions`
    split_fractions: dict[str, float] = bounded(None, 0.0, 1.0, lambda: {"train": 0.8, "val": 0.2})
    seed: int = bounded(0, 0, 2**32 - 1)
    # DDSM scans and some PNG exports carry no pixel spacing; this fallback (mm) is used where one is needed.
    fallback_pixel_spacing_mm: float = bounded(0.2, 0.001, 10.0)
    # The images are raster exports resized to other proportions than the breast's (square 640 x 640 exports):
    # recorded on every image (ImageRecord.aspect_squashed); only the csv and folders formats may say so.
    aspect_squashed: bool = False


@dataclass(frozen=True)
class PreprocessConfig(_Checked):
    crop_breast: bool = True  # drop background, labels and markers outside the breast's bounding box
    crop_margin: int = bounded(8, 0, 1024)  # pixels kept around the breast mask
    flip_to: Literal["left", "right", "none"] = "left"  # the side every breast's chest wall is put on
    clahe: bool = False  # contrast-limited histogram equalisation (the seeds' INbreast recipe)
    clahe_clip_limit: float = bounded(2.0, 0.01, 100.0)
    clahe_tile_grid: int = bounded(8, 1, 64)


@dataclass(frozen=True)
class DetectorConfig(_Checked):
    model: str = text("yolov8n.yaml", empty=False)  # an ultralytics model YAML (built from scratch) or a local .pt
    classes: tuple[str, ...] = ("lesion",)  # or ('mass', 'calcification', 'other')
    imgsz: int = bounded(640, 32, 4096)
    epochs: int = bounded(50, 1, 10000)
    batch: int = bounded(16, 1, 1024)
    patience: int = bounded(20, 1, 10000)
    mode: Literal["letterbox", "tiled"] = "letterbox"
    tile_size: int = bounded(640, 32, 4096)  # tiled mode: tile edge in pixels of the working resolution
    tile_overlap: float = bounded(0.2, 0.0, 0.9)  # below 1, or tiles never advance
    tile_scale: float = bounded(1.0, 0.01, 4.0)  # tiled mode: working resolution relative to the breast crop
    merge: Literal[MERGES] = "wbf"  # how tile predictions are merged
    conf: float = bounded(0.01, 0.0, 1.0)
    iou: float = bounded(0.5, 0.01, 1.0)
    max_det: int = bounded(20, 1, 1000)
    hit_iou: float = bounded(0.1, 0.01, 1.0)  # FROC: a hit is a prediction with its centre inside or IoU >= this
    hit_centre: bool = True  # FROC: false = only IoU >= hit_iou counts as a hit
    train_negatives: float = bounded(1.0, 0.0, 1.0)  # fraction of lesion-free training images exported
    train_args: dict[str, object] = field(default_factory=dict)  # extra ultralytics train arguments (lr0, ...)
    # Calcification-cluster candidates (detector/calc_candidates.py): classical boxes beside the network's, off
    # unless cross-validation shows they pay. Physical sizes and the clinical cluster definition, not fitted.
    calc_candidates: bool = False
    calc_max_spot_mm: float = bounded(1.0, 0.1, 5.0)  # largest calcification; bigger bright spots are not one
    calc_spot_k: float = bounded(6.0, 1.0, 100.0)  # a spot: top-hat response >= k robust SDs above the breast's
    calc_cluster_mm: float = bounded(10.0, 1.0, 50.0)  # spots within half of this are linked into one cluster
    calc_min_spots: int = bounded(3, 2, 100)  # spots that make a cluster (clinically >= 3-5 within 1 cm^2)
    calc_max_boxes: int = bounded(5, 1, 100)  # cluster boxes kept per image, strongest first
    # The findings a reader is shown, apart from the boxes that score the image: every box with a detector score
    # >= findings_conf, at most findings_max, strongest first (`pipeline cross-validate` chooses findings_conf on
    # the out-of-fold FROC). None: the kept boxes (conf, max_det) are the findings, as before.
    findings_conf: float | None = bounded(None, 0.0, 1.0)
    findings_max: int = bounded(10, 1, 100)


@dataclass(frozen=True)
class ClassifierConfig(_Checked):
    backbone: Literal[BACKBONES] = "small_cnn"
    weights: str = text("none", empty=False)  # 'none' | 'imagenet-offline' (mobilenet_v2) | 'imagenet' | a file
    head: Literal["gap", "dense"] = "gap"  # GAP -> dropout -> sigmoid | GAP -> 512 -> BN -> ... -> sigmoid
    input_size: int = bounded(128, 16, 1024)
    context_margin: float = bounded(0.25, 0.0, 4.0)  # fraction of the box size added on each side of a crop
    channels: Literal[1, 3] = 1
    dropout: float = bounded(0.3, 0.0, 0.95)
    dense_units: int = bounded(512, 1, 8192)
    fine_tune_fraction: float = bounded(1.0, 0.0, 1.0)  # fraction of backbone layers trained (last layers first)
    frozen_epochs: int = bounded(0, 0, 10000)  # pretrained weights: train the head alone this long, then fine-tune
    fine_tune_lr_factor: float = bounded(0.1, 1e-6, 10.0)  # fine-tuning learning rate, relative to learning_rate
    optimizer: Literal["adam", "sgd"] = "adam"
    learning_rate: float = bounded(1e-3, 1e-8, 10.0)
    momentum: float = bounded(0.9, 0.0, 0.999)  # SGD only
    batch_size: int = bounded(32, 1, 4096)
    epochs: int = bounded(30, 1, 10000)
    patience: int = bounded(8, 1, 10000)
    class_weight: bool = True
    augment_strength: float = bounded(1.0, 0.0, 10.0)  # 0 = no augmentation
    clahe: bool = False  # CLAHE on every crop, in training and inference alike
    jitter: float = bounded(0.1, 0.0, 1.0)  # random shift/scale of training crops, fraction of the box size
    crops_per_lesion: int = bounded(8, 1, 256)
    negatives_per_image: int = bounded(4, 0, 256)  # background crops from normal tissue, as benign-looking negatives
    calibration: Literal[CALIBRATIONS] = "temperature"
    fbeta: float = bounded(2.0, 0.01, 100.0)
    # What the saved .keras model runs on at inference (infer, serve, export-rois, benchmark, Ray actors): torch,
    # already loaded for the detector, or TensorFlow (a second framework: seconds of import, ~0.5 GB). Training
    # always uses TensorFlow; the model files are the same either way. onnx (default): the graph exported beside
    # it (classifier.onnx, shipped in weights/) on onnxruntime, no keras imported, 4-6x faster per batch than
    # torch and equal to it within 1.5e-6 (tests/test_backends.py); without that file, keras (said on stderr).
    inference_backend: Literal[INFERENCE_BACKENDS] = "onnx"


@dataclass(frozen=True)
class PipelineConfig(_Checked):
    aggregate: Literal[AGGREGATES] = "max"  # image score from its boxes (pipeline/results.py)
    threshold: float | None = bounded(None, 0.0, 1.0)  # operating point on the image score; None = the shipped one
    heatmap_downscale: int = bounded(4, 1, 64)  # heatmap PNG at 1/n of the original size (1: full, ~0.3 s more)
    image_id: Literal[IMAGE_ID_MODES] = "auto"  # auto: DICOMs and identifier-like names hashed
    id_salt: str = text()  # '' = this installation's secret salt (runs/.cache/id_salt) or $MAMMO_ID_SALT
    # `source` fields and run.json argv: full | hashed | none (outputs that leave the hospital)
    source_paths: Literal[SOURCE_PATH_MODES] = "full"
    # DICOM results (SR + heatmap object, pipeline/dicomnode/results.py) beside each DICOM input's: auto = on while
    # source_paths is 'full' (they carry the patient's name, as DICOM requires: not for outputs that leave)
    dicom_out: Literal[DICOM_OUT_MODES] = "auto"
    fbeta: float = bounded(2.0, 0.01, 100.0)
    min_specificity: float = bounded(0.5, 0.0, 1.0)  # the shipped threshold maximizes F-beta among those keeping this
    bootstrap: int = bounded(1000, 1, 100000)
    # cross-validate's findings rule: the highest out-of-fold lesion sensitivity at <= this many false positives
    # per image (pipeline/findings.py)
    findings_max_fp: float = bounded(1.0, 0.01, 10.0)
    # Film or digital, recorded in every result (mammo/domain.py): auto = the DICOM header says (Conversion Type,
    # Detector Type, SOP class, Presentation Intent); film | digital = every input is treated as that.
    domain: Literal[DOMAIN_SETTINGS] = "auto"
    # What `auto` uses when the file does not say (PNG/JPEG/PGM, a silent header); refuse = a failed row naming the
    # file. film by default: the shipped models know film only, and the README's sample DICOMs (CBIS-DDSM film
    # scans) are Secondary Captures whose header does not say; each result records that the setting decided.
    domain_fallback: Literal[DOMAIN_FALLBACKS] = "film"


@dataclass(frozen=True)
class TuningConfig(_Checked):
    study: str = "classifier"
    storage: str = text()  # '' = an SQLite file in the run folder; any RDB URL optuna supports
    n_trials: int = bounded(20, 0, 100000)  # finished (complete + pruned) trials the study should have; 0 = no limit
    timeout: float | None = bounded(None, 1.0, 1e7)
    workers: int = bounded(1, 1, 64)
    metric: Literal["aupr", "auroc", "fbeta"] = "aupr"
    pruner: Literal["median", "hyperband", "none"] = "median"
    search_space: str = "configs/search_space.yaml"
    startup_trials: int = bounded(5, 0, 10000)  # trials finished before the median pruner prunes (and TPE's start)
    warmup_epochs: int = bounded(1, 0, 10000)  # epochs every trial runs before it may be pruned
    heartbeat_interval: int = bounded(20, 1, 3600)  # seconds between a running trial's heartbeats in the storage
    grace_period: int = bounded(60, 1, 86400)  # a trial silent this long (its worker died) is failed and retried
    max_retry: int = bounded(3, 0, 100)  # retries of such a trial


@dataclass(frozen=True)
class GlobalBranchConfig(_Checked):
    """The whole-image branch learned from image labels (classifier/global_branch.py, pipeline/digital/)."""

    size: int = bounded(512, 32, 1024)  # the whole image is squashed to size x size
    # candidate shares of grid positions pooled (1.0 = global average); each fold picks one by inner CV
    top_fractions: tuple[float, ...] = bounded((1.0, 0.1), 0.001, 1.0)
    # candidate L2 strengths on the standardized weights; each fold picks one (with top_fractions) by inner CV
    weight_decays: tuple[float, ...] = bounded((0.01, 0.03, 0.1, 0.3, 1.0), 0.0, 10.0)
    grid: int = bounded(8, 1, 64)  # the feature map averaged down to grid x grid positions (must divide it)
    # which of the frozen backbone's feature maps the head reads (classifier/global_branch.py FEATURE_LAYERS): the
    # last block's expansion (960 channels, stride 32), chosen over the last map and an earlier one out of fold
    # (benchmarks/ffdm_layers.py)
    layer: Literal["features_18_2", "features_17_conv_0_2", "features_14_conv_0_2"] = "features_17_conv_0_2"
    # the frozen backbone's weights: 'imagenet-offline' (torchvision's ImageNet tensors from the offline store) or a
    # local torchvision mobilenet_v2 state-dict file you trust, e.g. one pretrained on mammograms (read tensors-only)
    backbone_weights: str = text("imagenet-offline", empty=False)
    # dark_background: an image whose frame is bright (stored inverted, e.g. a MONOCHROME1 image saved as raw
    # greys) is inverted before the branch sees it; as_read: pixels as the reader gives them
    polarity: Literal["dark_background", "as_read"] = "dark_background"
    epochs: int = bounded(30, 1, 1000)
    learning_rate: float = bounded(1e-3, 1e-6, 1.0)
    batch_size: int = bounded(64, 1, 4096)
    folds: int = bounded(5, 2, 20)  # woman-level folds of `pipeline digital-cv`
    inner_folds: int = bounded(3, 2, 20)  # the folds inside each training part that choose top_fraction
    batch_images: int = bounded(16, 1, 1024)  # images per forward pass when extracting features
    max_images: int = bounded(20000, 1, 1_000_000)  # a dataset larger than this is refused (feature cache size)


@dataclass(frozen=True)
class ListenConfig(_Checked):
    """`pipeline listen` (pipeline/dicomnode/listener.py): a DICOM storage SCP that analyses what it receives."""
    ae_title: str = text("MAMMO_CAD", empty=False, pattern=AE_TITLE)  # this node's own (called) AE title
    host: str = text("127.0.0.1", empty=False, pattern=HOST)  # bind address; DICOM has no login, so loopback
    port: int = bounded(11112, 0, 65535)  # 0: any free port (printed when listening)
    # calling AE titles allowed to send; any other association is rejected (A-ASSOCIATE-RJ). Empty: refuses to start
    allowed_calling: tuple[str, ...] = field(default=(), metadata={"empty_ok": False, "pattern": AE_TITLE})
    destination: str = text("", pattern=DESTINATION)  # where the DICOM results go besides the output folder
    spool: str = text()  # folder of received images ('' = <out>/spool); kept: the review app opens them
    # an image whose results are stored stays in the spool (the review app opens it from there), or is deleted
    # (false: a node that only forwards; the PACS keeps the original)
    keep_received: bool = True
    max_associations: int = bounded(4, 1, 64)  # simultaneous senders
    analysis_attempts: int = bounded(3, 1, 20)  # analyses started for one image (over restarts) before giving up
    store_attempts: int = bounded(5, 1, 100)  # tries to store one image's results at the destination per start
    store_backoff: float = bounded(2.0, 0.0, 600.0)  # seconds before the second try, doubled for each next one
    timeout: float = bounded(30.0, 1.0, 3600.0)  # network timeout (seconds) of associations and HTTP requests
    # a received object larger than this is refused (Out of Resources): a 2D mammogram is tens of MB; the bound keeps
    # one sender from filling the disk
    max_object_mb: float = bounded(512.0, 1.0, 4096.0)


@dataclass(frozen=True)
class Config(_Checked):
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    global_branch: GlobalBranchConfig = field(default_factory=GlobalBranchConfig)
    listen: ListenConfig = field(default_factory=ListenConfig)


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _section_name(cls) -> str:
    return {hint: name for name, hint in _hints(Config).items()}.get(cls, "")


def choices(key: str) -> tuple:
    """The allowed values of an enum-like setting, e.g. choices('detector.mode'), for command-line options."""
    section, name = key.split(".")
    return typing.get_args(_hints(_hints(Config)[section])[name])


def check_setting(key: str, value):
    """`value` coerced and checked as setting `key` ('section.field') is when a config loads; ConfigError if not.
    Tuning checks its search space with this, so a trial can never be given a value a config file could not."""
    section, name = key.split(".")
    cls = _hints(Config)[section]
    value = _coerce(value, _hints(cls)[name], key)
    _check(value, {f.name: f for f in dataclasses.fields(cls)}[name].metadata, key)
    return value


# --- checks ---------------------------------------------------------------------------------------------------
def _check(value, meta, key: str) -> None:
    """The field's declared constraints (range, non-blank, pattern), on the value or on each of its items."""
    if isinstance(value, tuple):
        for i, v in enumerate(value):
            _check(v, meta, f"{key}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            _check(v, meta, f"{key}.{k}")
        return
    if isinstance(value, str):
        if not value.strip() and not meta.get("empty_ok", False):
            raise ConfigError(f"{key}: must not be empty")
        pattern = meta.get("pattern")
        if pattern and not re.fullmatch(pattern[0], value):
            raise ConfigError(f"{key}: {value!r} is not allowed; expected {pattern[1]}")
        return
    low_high = meta.get("range")
    if low_high and isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = low_high
        if not low <= value <= high:
            raise ConfigError(f"{key}: {value!r} is out of range; allowed {low} to {high}")


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
    if origin is Literal:
        allowed = typing.get_args(tp)
        if not any(value == a and type(value) is type(a) for a in allowed):
            raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")
        return value
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
    if tp is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)  # YAML 1.1 reads '1e-4' (no dot) as a string
        except ValueError:
            number = None
        if number is not None:
            if not math.isfinite(number):  # NaN and inf would reach JSON outputs, which strict parsers reject
                raise ConfigError(f"{key}: must be a finite number, got {value!r}")
            return number
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
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            dotted = f"{prefix}.{key}" if prefix else str(key)
            close = difflib.get_close_matches(str(key), names, n=1)
            if not close and not prefix:  # a field name without its section: 'imgsz' -> 'detector.imgsz'
                dotted_of = {f.name: f"{s}.{f.name}" for s, c in _hints(Config).items() for f in dataclasses.fields(c)}
                close = [dotted_of[k] for k in difflib.get_close_matches(str(key), list(dotted_of), n=1)]
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(names)})"
            raise ConfigError(f"{dotted}: unknown key{hint}")
    return cls(**data)  # each section coerces and checks its own fields


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
