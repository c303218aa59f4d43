"""The detector the pipeline calls: `LesionDetector` finds lesions on a full mammogram, boxes in ORIGINAL pixels.

    with LesionDetector.load(weights, cfg.detector, device=cfg.run.device) as det:
        detections = det.predict(mammogram, cfg.preprocess)        # list[mammo.records.Detection]

Two modes (cfg.mode, or `mode=` per call):
- 'letterbox': the whole breast crop scaled into one imgsz x imgsz square (fast, what the model was trained on);
- 'tiled': overlapping tile_size windows of the crop resized by tile_scale, merged by NMS or weighted box fusion
  (small lesions on large images stay large enough to see).

Nothing here is ever downloaded. A model is built from an ultralytics YAML ('yolov8n.yaml': from scratch) or
loaded from a local .pt file; bare names such as 'yolov8n.pt' are refused because ultralytics would download them.
.pt files are pickles: every one is loaded through detector.checkpoint, which refuses anything but the allow-listed
model classes before unpickling, so nothing in a weights file is executed.
"""
from __future__ import annotations

import gc
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mammo import runtime
from mammo.config import DetectorConfig, PreprocessConfig
from mammo.errors import ConfigError, WeightsError
from mammo.geometry import Transform
from mammo.preprocess import Frame, preprocess
from mammo.records import Detection, Mammogram
from mammo.weights_store import check_model_spec

from detector.frames import clip_to_shape, letterbox_input, tile_inputs
from detector.merge import merge_boxes, suppress_nested

MODES = ("letterbox", "tiled")
CANDIDATES = 3  # boxes asked of the network per kept box: nested near-duplicates are merged before the cut
MAX_BATCH = 8  # tiles per forward pass
# The network is asked down to this score, so that an image with no box >= detector.conf still has its strongest
# candidate (`Detections.below_conf`) to be scored by. Greedy NMS never lets a weaker box suppress a stronger
# one, so the boxes kept at detector.conf are the same as if the network were asked at detector.conf itself.
BELOW_CONF_FLOOR = 0.001


class Detections(NamedTuple):
    kept: list[Detection]  # score >= detector.conf, at most detector.max_det, highest score first
    below_conf: Detection | None  # the strongest candidate under detector.conf, only when nothing was kept
    # score >= detector.findings_conf, at most detector.findings_max, highest first: what a reader is shown.
    # Without findings_conf, the kept boxes themselves.
    findings: list[Detection]


def use_ultralytics() -> None:
    """Before ultralytics builds or loads anything: no network, and checkpoints only through the safe loader."""
    runtime.configure_ultralytics()
    from detector import checkpoint

    checkpoint.install()


def check_model_source(model: str) -> str:
    """What `detector.model` may name: an ultralytics model YAML (a name such as 'yolo11n.yaml' that ultralytics
    ships, or a local file) or the path of a local .pt file. Anything else could trigger a download."""
    spec = str(model).strip()
    path = Path(spec)
    if path.suffix in (".yaml", ".yml"):
        return spec
    if path.suffix == ".pt":
        if path.is_file():
            return spec
        if len(path.parts) == 1:  # a bare name: ultralytics would fetch it from GitHub
            raise WeightsError(path, "not a local file, and nothing is downloaded here: use "
                               f"'{path.stem}.yaml' to train from scratch or give the path of a local .pt file")
        raise WeightsError(path, "weights file not found")
    raise ConfigError(f"detector.model: {spec!r} is neither a model YAML (e.g. yolov8n.yaml, yolo11s.yaml) nor a "
                      f"local .pt path; names without a suffix would make ultralytics download weights")


def load_yolo(weights):
    """A YOLO detection model from a local .pt file, or a WeightsError that says what went wrong."""
    path = Path(weights)
    if path.suffix != ".pt":
        raise WeightsError(path, "expected a .pt checkpoint (as written by `python -m detector train`)")
    check_model_source(str(path))  # refuses bare names and missing files
    use_ultralytics()
    from ultralytics import YOLO

    try:
        yolo = YOLO(str(path), task="detect")  # loads through detector.checkpoint.load_checkpoint (once)
    except WeightsError:
        raise  # refused or unreadable: the checkpoint loader's message names the file and the reason
    except Exception as exc:  # loaded, but ultralytics cannot use it: one clear message
        raise WeightsError(path, f"cannot be used as ultralytics weights ({type(exc).__name__}: "
                                 f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no detail'})"
                           ) from None
    task = getattr(yolo.model, "task", None) or yolo.task
    if task != "detect":
        raise WeightsError(path, f"a '{task}' model, not a detection model")
    return yolo


def build_model(model: str):
    """For training: a fresh model from a YAML, or the weights of a local .pt to fine-tune.

    YAMLs go through detector.pretrained.build_yolo: a torchvision backbone with ImageNet weights (e.g.
    detector/mobilenet_v2_yolo.yaml) is checked against the offline store first and keeps its BatchNorm as
    pretrained; plain YAMLs (yolov8n.yaml) are built from scratch as ultralytics would.
    """
    spec = check_model_source(model)
    if not spec.endswith((".yaml", ".yml")):
        yolo = load_yolo(spec)
        check_model_spec(yolo.model.yaml, Path(spec))  # fine-tuning builds its YAML again: the store must serve it
        return yolo
    use_ultralytics()
    from detector.pretrained import build_yolo

    try:
        return build_yolo(spec)
    except FileNotFoundError:
        raise ConfigError(f"detector.model: model YAML {spec!r} not found (ultralytics ships e.g. yolov8n.yaml, "
                          f"yolo11n.yaml, yolo11s.yaml; or give the path of your own)") from None


def cut_by_edge(xyxy: np.ndarray, model_input: Frame, frame: Frame, tol: float = 1.0) -> np.ndarray:
    """(N,) bool: boxes (in input pixels) touching an input edge beyond which `frame` continues."""
    h, w = frame.pixels.shape[:2]
    # where the whole frame lies in this input's pixels: past an edge means the image goes on beyond it
    extent = frame.transform.inverse().then(model_input.transform).apply_boxes([[0, 0, w, h]])[0]
    size_h, size_w = model_input.pixels.shape[:2]
    b = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    return (((b[:, 0] <= tol) & (extent[0] < -tol)) | ((b[:, 1] <= tol) & (extent[1] < -tol))
            | ((b[:, 2] >= size_w - tol) & (extent[2] > size_w + tol))
            | ((b[:, 3] >= size_h - tol) & (extent[3] > size_h + tol)))


class LesionDetector:
    """A loaded detection model plus the settings that turn its outputs into `Detection`s in original pixels."""

    def __init__(self, yolo, cfg: DetectorConfig, device: str = "cpu", weights: Path | None = None,
                 threads: int | None = None):
        self.yolo = yolo
        self.cfg = cfg
        self.device = device
        self.weights = weights
        self.threads = threads
        names = yolo.names
        self.names = [names[i] for i in sorted(names)] if isinstance(names, dict) else list(names)
        self._ready = False

    @classmethod
    def load(cls, weights_path, cfg: DetectorConfig = DetectorConfig(), device: str = "cpu",
             threads: int | None = None) -> "LesionDetector":
        """Load local weights (WeightsError when they do not load) for prediction on `device`."""
        if cfg.mode not in MODES:
            raise ConfigError(f"detector.mode: expected one of {MODES}, got {cfg.mode!r}")
        yolo = load_yolo(weights_path)
        trained = ((getattr(yolo, "ckpt", None) or {}).get("train_args") or {}).get("imgsz")
        if trained and trained != cfg.imgsz:  # allowed (the model is fully convolutional) but rarely meant
            warnings.warn(f"{weights_path}: trained at imgsz {trained}, predicting at detector.imgsz={cfg.imgsz} "
                          f"(use the training run's config.yaml, or set detector.imgsz)", stacklevel=2)
        detector = cls(yolo, cfg, device, Path(weights_path), threads)
        detector.warmup()
        return detector

    def warmup(self) -> None:
        """One prediction on a blank square: ultralytics sets its predictor up on the first call (seconds), and
        resets torch to 1 CPU thread while doing so; after this, per-image timings are the real ones."""
        blank = Frame(np.zeros((self.cfg.imgsz, self.cfg.imgsz), np.uint8), Transform.identity((self.cfg.imgsz,) * 2))
        self._infer([blank])

    # --- the interface the pipeline calls --------------------------------------------------------------------
    def predict(self, mammogram: Mammogram, preprocess_cfg: PreprocessConfig = PreprocessConfig(),
                mode: str | None = None) -> list[Detection]:
        """Candidate lesions on a full mammogram, boxes in its ORIGINAL pixels, highest score first."""
        return self.predict_frame(preprocess(mammogram, preprocess_cfg), mode)

    def predict_frame(self, frame: Frame, mode: str | None = None) -> list[Detection]:
        """Same, for an already preprocessed frame (its transform leads back to the original pixels)."""
        return self.detect(frame, mode).kept

    def detect(self, frame: Frame, mode: str | None = None) -> Detections:
        """The kept boxes of `predict_frame`, and when there are none, the strongest candidate below conf."""
        inputs = self.model_inputs(frame, mode)
        boxes, scores, labels, cut = self._infer(inputs, frame)
        strong = scores >= self.cfg.conf
        kept = self._select(boxes[strong], scores[strong], labels[strong], cut[strong], frame, len(inputs))
        weak = [] if kept else self._select(boxes[~strong], scores[~strong], labels[~strong], cut[~strong], frame,
                                            len(inputs))
        kept = kept[: self.cfg.max_det]
        findings = kept
        if self.cfg.findings_conf is not None:  # selected on their own set, as the kept boxes on theirs
            shown = scores >= self.cfg.findings_conf
            findings = self._select(boxes[shown], scores[shown], labels[shown], cut[shown], frame,
                                    len(inputs))[: self.cfg.findings_max]
        return Detections(kept, weak[0] if weak else None, findings)

    def _select(self, boxes, scores, labels, cut, frame: Frame, n_inputs: int) -> list[Detection]:
        """Raw boxes in original pixels to detections: tiles merged, clipped, nested near-duplicates suppressed."""
        original_shape = frame.transform.src_shape or frame.pixels.shape[:2]
        if n_inputs > 1:
            boxes, scores, labels = merge_boxes(boxes, scores, labels, original_shape, self.cfg.merge, self.cfg.iou,
                                                cut=cut)
        boxes = clip_to_shape(boxes, original_shape)
        valid = ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).nonzero()[0]
        # one box per finding before anything is classified: nested near-duplicates merged over the kept set
        keep = valid[suppress_nested(boxes[valid], scores[valid])]
        return [Detection(tuple(float(v) for v in boxes[i]), float(scores[i]), self.names[int(labels[i])])
                for i in keep]

    def model_inputs(self, frame: Frame, mode: str | None = None) -> list[Frame]:
        """The square uint8 inputs the network sees for this frame (one letterbox, or the tiles)."""
        mode = mode or self.cfg.mode
        if mode == "letterbox":
            return [letterbox_input(frame, self.cfg.imgsz)]
        if mode == "tiled":
            return tile_inputs(frame, self.cfg.tile_size, self.cfg.tile_overlap, self.cfg.tile_scale)
        raise ConfigError(f"detector.mode: expected one of {MODES}, got {mode!r}")

    def forward_only(self, inputs: list[Frame]) -> None:
        """The network alone on these inputs, batched as `_infer` batches them: no letterboxing by ultralytics,
        no NMS, no box mapping. The floor the pipeline benchmark compares the whole detect step with."""
        import torch

        if not self._ready:
            self.warmup()
        network = self.yolo.predictor.model  # ultralytics' AutoBackend: the fused model predict() runs
        x = torch.from_numpy(np.stack([f.pixels for f in inputs])[:, None]).to(network.device)
        x = x.half() if network.fp16 else x.float()
        with torch.inference_mode():
            for start in range(0, len(x), MAX_BATCH):
                network(x[start:start + MAX_BATCH] / 255.0)

    def _infer(self, inputs: list[Frame], frame: Frame | None = None):
        """Run the model on equally sized square uint8 inputs in one batch (boxes down to BELOW_CONF_FLOOR, or
        detector.conf when lower); boxes mapped to original pixels, highest score first, and whether each box is
        cut off by an edge of its input that lies inside `frame` (a tile border)."""
        if self.yolo is None:
            raise RuntimeError("this LesionDetector was closed")
        size = inputs[0].pixels.shape[0]
        images = [f.pixels[..., None] for f in inputs]  # H x W x 1: ultralytics keeps it 1-channel
        results = []
        for start in range(0, len(images), MAX_BATCH):  # bounded memory for many tiles
            results += self.yolo.predict(images[start:start + MAX_BATCH], imgsz=size,
                                         conf=min(self.cfg.conf, BELOW_CONF_FLOOR),
                                         iou=self.cfg.iou, max_det=CANDIDATES * self.boxes_wanted,
                                         device=self.device,
                                         verbose=False, save=False)
        if not self._ready:  # ultralytics' device set-up resets torch to 1 CPU thread on the first call
            runtime.configure_torch(self.threads)
            self._ready = True
        all_boxes, all_scores, all_labels, all_cut = [], [], [], []
        for model_input, result in zip(inputs, results):
            if tuple(result.orig_shape) != model_input.pixels.shape[:2]:  # our transform assumes it unchanged
                raise RuntimeError(f"ultralytics returned boxes for a {result.orig_shape} image, "
                                   f"fed {model_input.pixels.shape}")
            xyxy = result.boxes.xyxy.cpu().numpy().reshape(-1, 4)
            all_boxes.append(model_input.to_original_boxes(xyxy))
            all_scores.append(result.boxes.conf.cpu().numpy())
            all_labels.append(result.boxes.cls.cpu().numpy().astype(np.int64))
            all_cut.append(cut_by_edge(xyxy, model_input, frame) if frame is not None else np.zeros(len(xyxy), bool))
        order = np.argsort(-np.concatenate(all_scores), kind="stable")
        return (np.concatenate(all_boxes)[order], np.concatenate(all_scores)[order].astype(np.float64),
                np.concatenate(all_labels)[order], np.concatenate(all_cut)[order])

    @property
    def boxes_wanted(self) -> int:
        """The most boxes `detect` hands on: the kept ones, or the findings when they are set apart."""
        return max(self.cfg.max_det, self.cfg.findings_max if self.cfg.findings_conf is not None else 0)

    # --- lifetime --------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Free the model (and GPU memory); the object cannot predict afterwards."""
        if self.yolo is None:
            return
        self.yolo = None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __enter__(self) -> "LesionDetector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
