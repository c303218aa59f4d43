"""The global branch: one look at the whole breast, learned from image labels only (digital mammograms).

The film-trained detector is blind on digital mammograms and the 2,518 digital training images carry no boxes, so
this branch needs none. A frozen ImageNet MobileNetV2 (the project's torchvision twin) turns the whole image,
squashed to a square as the training images were, into a grid of feature vectors (global_branch.layer: by default
the last block's 960-channel expansion, chosen out of fold over the last 1280-channel map; benchmarks/ffdm_layers.py).
A linear scorer gives every grid position a malignancy logit; the image logit is the mean of the k highest
positions. That is multiple-instance learning with the image as the bag and the positions as instances: a cancer
image needs a few positions that look malignant, a cancer-free image has none anywhere, so every position of a
negative image is a hard negative for free. k = every position is plain global average pooling (a linear model on
the image's mean feature); small k looks for a local lesion.

The position logits are the branch's saliency map (a class activation map: exact for a linear scorer, no gradient
needed), mapped back to the original pixel grid by the recorded resize.

The head is trained here in numpy on cached features: full-batch-free minibatch Adam on a weighted binary
cross-entropy, a few seconds per fold, deterministic for a seed. Frozen features make a 5-fold cross-validation of
2,518 images cost one feature extraction instead of five trainings of a network (2 CPU cores here).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import cv2
import numpy as np

from mammo.geometry import Transform

MAX_SIZE = 1024  # input side; the feature map grows with its square
# The exported graph beside model.keras (classifier/export_onnx.py) that the onnx inference backend runs: no keras
# imported, and MobileNetV2's depthwise convolutions at 512 px run several times faster than on keras' torch.
GLOBAL_ONNX_FILE = "model.onnx"
GLOBAL_ONNX_KIND = "global_branch_position_logits"


@dataclass(frozen=True)
class HeadSpec:
    """How a head is fitted. top_fraction: share of grid positions pooled (1.0 = global average)."""

    top_fraction: float = 0.1
    weight_decay: float = 1e-3
    epochs: int = 40
    learning_rate: float = 1e-3
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self):
        checks = {"top_fraction": 0 < self.top_fraction <= 1, "weight_decay": 0 <= self.weight_decay <= 10,
                  "epochs": 1 <= self.epochs <= 1000, "learning_rate": 0 < self.learning_rate <= 1,
                  "batch_size": 1 <= self.batch_size <= 4096}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"global branch head: out of range: {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")


@dataclass
class MilHead:
    """Standardize each feature channel, score every position linearly, pool the top k."""

    mean: np.ndarray  # (C,)
    scale: np.ndarray  # (C,)
    weight: np.ndarray  # (C,)
    bias: float
    top_fraction: float

    def k(self, positions: int) -> int:
        return top_k(self.top_fraction, positions)

    def position_logits(self, feats: np.ndarray) -> np.ndarray:
        """(..., h, w, C) feature maps -> (..., h, w) logits."""
        z = (np.asarray(feats, np.float32) - self.mean) / self.scale
        return z @ self.weight.astype(np.float32) + np.float32(self.bias)

    def image_logit(self, feats: np.ndarray) -> np.ndarray:
        """(..., h, w, C) -> (...) image logits: mean of the top-k position logits."""
        s = self.position_logits(feats)
        return pool_top_k(s.reshape(s.shape[:-2] + (-1,)), self.k(s.shape[-2] * s.shape[-1]))

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist(), "weight": self.weight.tolist(),
                "bias": float(self.bias), "top_fraction": float(self.top_fraction)}

    @classmethod
    def from_dict(cls, d: dict, channels: int | None = None) -> "MilHead":
        arrays = [np.asarray(d[key], np.float32) for key in ("mean", "scale", "weight")]
        n = arrays[0].shape
        if len(n) != 1 or any(a.shape != n for a in arrays) or (channels is not None and n[0] != channels):
            raise ValueError(f"global branch head: mean/scale/weight must be vectors of the feature channels "
                             f"({channels}), got {[a.shape for a in arrays]}")
        if not all(np.isfinite(a).all() for a in arrays) or not (arrays[1] > 0).all():
            raise ValueError("global branch head: non-finite numbers or a non-positive scale")
        frac, bias = float(d["top_fraction"]), float(d["bias"])
        if not (0 < frac <= 1) or not np.isfinite(bias):
            raise ValueError(f"global branch head: top_fraction {frac} must be in (0, 1], bias finite")
        return cls(*arrays, bias, frac)


def top_k(fraction: float, positions: int) -> int:
    return max(1, min(positions, int(round(fraction * positions))))


def sigmoid(z) -> np.ndarray:
    """The image score of a logit (and the heatmap value of a position's logit): what results carry and what the
    digital calibration and threshold are fitted on."""
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def pool_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Mean of the k largest values along the last axis."""
    return np.mean(np.sort(scores, axis=-1)[..., -k:], axis=-1)


def bag_loss_and_gradient(head: MilHead, x: np.ndarray, y: np.ndarray, pos_weight: float):
    """Weighted binary cross-entropy of the top-k pooled bags and its gradient in (weight, bias).

    x: raw features (B, P, C) of B bags of P positions; y: (B,) labels. Positives weigh pos_weight.
    The pooled logit is linear in the k selected positions, so d logit / d weight is their mean standardized
    feature. Standardizing only the pooled (B, C) vectors, not the (B, P, C) block, is the same arithmetic at a
    fraction of the cost: s = ((x - mean) / scale) @ w + b = x @ (w / scale) + (b - mean @ (w / scale))."""
    k = head.k(x.shape[1])
    w_eff = (head.weight / head.scale).astype(x.dtype)
    s = x @ w_eff + np.float32(head.bias - float(head.mean @ (head.weight / head.scale)))  # (B, P)
    top = np.argpartition(s, s.shape[1] - k, axis=1)[:, -k:]
    logit = np.take_along_axis(s, top, axis=1).astype(np.float64).mean(axis=1)
    p = sigmoid(logit)
    w = np.where(y > 0, pos_weight, 1.0)
    loss = float(np.mean(w * np.logaddexp(0.0, np.where(y > 0, -logit, logit))))  # stable -log p / -log(1-p)
    g = w * (p - y) / len(y)  # d loss / d logit
    pooled = (np.take_along_axis(x, top[..., None], axis=1).mean(axis=1) - head.mean) / head.scale  # (B, C)
    return loss, g @ pooled, float(g.sum())


def fit_mil_head(feats: np.ndarray, y, spec: HeadSpec = HeadSpec(), progress=None) -> MilHead:
    """Fit a head on feature maps (N, V, h, w, C): N images, V views of each (e.g. the image and its mirror;
    each view is a bag with the image's label). Deterministic for spec.seed."""
    feats = np.asarray(feats)
    if feats.ndim != 5:
        raise ValueError(f"features must be (images, views, h, w, channels), got shape {feats.shape}")
    y = np.asarray(y, np.float64)
    n, v, h, w, c = feats.shape
    if len(y) != n or not set(np.unique(y)) <= {0.0, 1.0} or y.min() == y.max():
        raise ValueError("labels: one 0/1 label per image, both classes present")
    labels = np.repeat(y, v)
    if spec.top_fraction >= 1.0:  # global average: pool once, the bags become single vectors
        h, w = 1, 1
        flat = np.asarray(feats, np.float32).mean(axis=(2, 3)).reshape(n * v, 1, c)
    else:
        flat = np.asarray(feats, np.float32).reshape(n * v, h * w, c)  # in memory once: minibatches gather fast
    mean = flat.mean(axis=(0, 1), dtype=np.float64)
    var = np.zeros(c, np.float64)
    for i in range(0, len(flat), 256):  # in chunks: a float64 copy of every position would double the memory
        var += ((flat[i:i + 256] - mean) ** 2).sum(axis=(0, 1))
    scale = np.sqrt(var / (len(flat) * h * w)) + 1e-3
    head = MilHead(mean.astype(np.float32), scale.astype(np.float32), np.zeros(c, np.float32), 0.0,
                   spec.top_fraction)
    pos_weight = float((labels == 0).sum() / max((labels == 1).sum(), 1))
    rng = np.random.default_rng(spec.seed)
    head.weight = rng.normal(0, 0.01, c).astype(np.float32)
    m_w, v_w, m_b, v_b, step = np.zeros(c), np.zeros(c), 0.0, 0.0, 0
    b1, b2, eps = 0.9, 0.999, 1e-8
    for epoch in range(spec.epochs):
        order = rng.permutation(len(flat))
        for i in range(0, len(order), spec.batch_size):
            idx = np.sort(order[i:i + spec.batch_size])
            _, g_w, g_b = bag_loss_and_gradient(head, flat[idx], labels[idx], pos_weight)
            g_w = g_w + spec.weight_decay * head.weight  # L2 on the standardized weights
            step += 1
            m_w = b1 * m_w + (1 - b1) * g_w
            v_w = b2 * v_w + (1 - b2) * g_w ** 2
            m_b = b1 * m_b + (1 - b1) * g_b
            v_b = b2 * v_b + (1 - b2) * g_b ** 2
            corr = np.sqrt(1 - b2 ** step) / (1 - b1 ** step)
            head.weight = (head.weight - spec.learning_rate * corr * m_w / (np.sqrt(v_w) + eps)).astype(np.float32)
            head.bias = float(head.bias - spec.learning_rate * corr * m_b / (np.sqrt(v_b) + eps))
        if progress is not None:
            progress(epoch)
    return head


def pool_grid(feats: np.ndarray, grid: int) -> np.ndarray:
    """Feature maps (..., h, w, C) averaged over blocks down to (..., grid, grid, C), as float32."""
    feats = np.asarray(feats)
    h, w = feats.shape[-3:-1]
    if grid >= h and grid >= w:
        return feats.astype(np.float32)
    if h % grid or w % grid:
        raise ValueError(f"global_branch.grid {grid} must divide the feature map ({h} x {w})")
    lead = feats.shape[:-3]
    out = np.empty(lead + (grid, grid, feats.shape[-1]), np.float32)
    flat_in, flat_out = feats.reshape((-1,) + feats.shape[-3:]), out.reshape((-1, grid, grid, feats.shape[-1]))
    for i in range(0, len(flat_in), 256):  # in chunks: the input may be a memory map of several GB
        chunk = np.asarray(flat_in[i:i + 256], np.float32)
        flat_out[i:i + 256] = chunk.reshape(len(chunk), grid, h // grid, grid, w // grid, -1).mean(axis=(2, 4))
    return out


def to_square(pixels: np.ndarray, size: int) -> tuple[np.ndarray, Transform]:
    """The whole image squashed to size x size, as the training images were (area averaging when shrinking);
    returns it and the recorded transform original -> square."""
    if not 32 <= int(size) <= MAX_SIZE:
        raise ValueError(f"global branch input size {size} must be in [32, {MAX_SIZE}]")
    h, w = pixels.shape[:2]
    shrink = size < h or size < w
    square = cv2.resize(np.asarray(pixels, np.float32), (int(size), int(size)),
                        interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return square, Transform.resize((h, w), (int(size), int(size)))


POLARITIES = ("dark_background", "as_read")


def bright_background(pixels: np.ndarray) -> bool:
    """Whether the frame around the breast is bright. Air is dark when brighter means denser, so a bright frame
    means the image was stored inverted (a raster of a MONOCHROME1 image, greys as stored). The median of a
    4-pixel frame of a 64 x 64 thumbnail: robust to labels and markers burnt into the corners."""
    thumb = cv2.resize(np.asarray(pixels, np.float32), (64, 64), interpolation=cv2.INTER_AREA)
    frame = np.concatenate([thumb[:4].ravel(), thumb[-4:].ravel(), thumb[:, :4].ravel(), thumb[:, -4:].ravel()])
    return bool(np.median(frame) > 0.5)


def branch_input(pixels: np.ndarray, size: int, polarity: str) -> tuple[np.ndarray, Transform, bool]:
    """What the branch sees of an image ([0, 1] greys): the square of `to_square`, inverted when `polarity` is
    dark_background and its frame is bright (the geometry is unchanged). Returns (square, transform, inverted)."""
    if polarity not in POLARITIES:
        raise ValueError(f"global branch polarity {polarity!r}: expected one of {', '.join(POLARITIES)}")
    square, transform = to_square(pixels, size)
    inverted = polarity == "dark_background" and bright_background(square)
    return (1.0 - square if inverted else square), transform, inverted


def spec_dict(spec: HeadSpec) -> dict:
    return asdict(spec)


# --- the network: frozen backbone + the head as layers, saved as one .keras file -------------------------------
# The backbone's feature maps a head may read (ReLU outputs, so every channel is >= 0 like the last one): the last
# map, the expansion of the last block (stride 32) and the expansion before the last stride-2 block (stride 16).
# Why not only the last: it is the map trained to feed ImageNet's classifier, and on the digital set the last block's
# expansion ranked better out of fold (benchmarks/ffdm_layers.py, the model card).
FEATURE_LAYERS = {"features_18_2": (1280, 32), "features_17_conv_0_2": (960, 32), "features_14_conv_0_2": (576, 16)}


def backbone_weights_file(weights: str):
    """The weights file a global_branch.backbone_weights setting names: the offline store's ImageNet file, or a
    local state-dict file (WeightsError naming it when it is not there)."""
    from pathlib import Path

    from mammo.errors import WeightsError
    from mammo.weights_store import imagenet_mobilenet_v2_path

    if weights == "imagenet-offline":
        return imagenet_mobilenet_v2_path()
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(path, "global_branch.backbone_weights: no such file (a torchvision mobilenet_v2 state "
                                 "dict, or imagenet-offline)")
    return path


def build_feature_extractor(size: int, weights_path="imagenet-offline", layer: str = "features_18_2"):
    """Grey (size, size, 1) in [0, 1] -> a feature map of the ImageNet MobileNetV2 twin (`layer`, one of
    FEATURE_LAYERS; the last by default), with the ImageNet normalization as layers (so a saved model carries it).
    The layers after the tap are not part of the model."""
    import keras

    from classifier.imagenet_mobilenet import build_mobilenet_v2_torchvision_compatible, imagenet_input_layers

    if layer not in FEATURE_LAYERS:
        raise ValueError(f"global branch layer {layer!r}: expected one of {', '.join(FEATURE_LAYERS)}")
    backbone = build_mobilenet_v2_torchvision_compatible((size, size, 3), weights_path=weights_path)
    if layer != backbone.layers[-1].name:
        backbone = keras.Model(backbone.inputs, backbone.get_layer(layer).output, name=f"{backbone.name}_{layer}")
    inp = keras.Input((size, size, 1), name="grey")
    return keras.Model(inp, backbone(imagenet_input_layers(inp)), name="global_features")


def build_global_model(extractor, head: MilHead, grid: int):
    """The extractor followed by the head as built-in layers: block averaging down to grid x grid (as the head
    was fitted), feature standardization, then a 1x1 convolution whose output is the map of position logits.
    The top-k pooling stays outside (numpy: `pool_top_k`)."""
    import keras
    from keras import layers

    x = extractor.outputs[0]
    side, channels = int(x.shape[1]), int(x.shape[-1])
    if grid < side:
        if side % grid:
            raise ValueError(f"global_branch.grid {grid} must divide the feature map side {side}")
        x = layers.AveragePooling2D(side // grid, name="grid_average")(x)
    x = layers.Normalization(mean=head.mean.tolist(), variance=(head.scale ** 2).tolist(),
                             name="feature_standardize")(x)
    scorer = layers.Conv2D(1, 1, name="position_logits")
    out = scorer(x)
    scorer.set_weights([head.weight.reshape(1, 1, channels, 1), np.array([head.bias], np.float32)])
    return keras.Model(extractor.inputs[0], out, name="global_branch")


class GlobalBranch:
    """The trained branch for inference: a whole image in, its logit and its saliency map on the original grid out.

        branch = GlobalBranch.load("weights/global")
        logit, saliency = branch.analyse(mammogram.pixels)   # saliency: position logits, original (H, W)
    """

    def __init__(self, model, top_fraction: float, source: str = "", polarity: str = "as_read",
                 size: int | None = None):
        self.model = model  # a keras model, or anything called the same way (OnnxPositionLogits)
        self.size = int(size or model.inputs[0].shape[1])
        self.top_fraction = float(top_fraction)
        self.source = source
        self.polarity = polarity

    @classmethod
    def check(cls, folder) -> tuple:
        """(model file, top fraction, polarity) of a branch folder, checked without loading keras."""
        import json
        from pathlib import Path

        from mammo.errors import WeightsError

        folder = Path(folder)
        model_path, info_path = folder / "model.keras", folder / "head.json"
        for path in (model_path, info_path):
            if not path.is_file():
                raise WeightsError(path, "the global branch needs model.keras and head.json here")
        info = json.loads(info_path.read_text())
        frac = float(info.get("top_fraction", 0))
        if not 0 < frac <= 1:
            raise WeightsError(info_path, f"top_fraction {frac!r} must be in (0, 1]")
        polarity = info.get("polarity", "as_read")  # branches shipped before the setting saw pixels as read
        if polarity not in POLARITIES:
            raise WeightsError(info_path, f"polarity {polarity!r}: expected one of {', '.join(POLARITIES)}")
        return model_path, frac, polarity

    @classmethod
    def load(cls, folder, threads: int | None = None, backend: str = "keras") -> "GlobalBranch":
        """backend 'onnx': the exported graph (model.onnx) when it was exported from this model.keras, else keras
        (said on stderr, as for the classifier); any other value: keras."""
        import mammo.runtime as runtime
        from mammo.errors import WeightsError

        model_path, frac, polarity = cls.check(folder)
        if backend == "onnx":
            graph = OnnxPositionLogits.open(model_path, threads)
            if graph is not None:
                return cls(graph, frac, str(graph.path), polarity, size=graph.size)
        import keras

        runtime.configure_keras(threads)
        model = keras.models.load_model(model_path, compile=False)  # safe_mode: built-in layers only
        shape = tuple(model.inputs[0].shape[1:])
        if len(shape) != 3 or shape[0] != shape[1] or shape[2] != 1 or not 32 <= shape[0] <= MAX_SIZE:
            raise WeightsError(model_path, f"input shape {shape}: expected a grey square of 32..{MAX_SIZE}")
        return cls(model, frac, str(model_path), polarity)

    def position_logits(self, squares: np.ndarray) -> np.ndarray:
        """(N, size, size) grey squares -> (N, h, w) position logits."""
        x = np.asarray(squares, np.float32)[..., None]
        out = self.model(x, training=False)
        return np.asarray(out.detach().cpu().numpy() if hasattr(out, "detach") else out)[..., 0]

    def analyse(self, pixels: np.ndarray, mirror: bool = True) -> "GlobalAnalysis":
        """The image logit (mean over the image and its mirror, as in training and cross-validation), the
        saliency grid (position logits, averaged likewise), the recorded transform original -> grid (its
        inverse warps the grid onto the original pixels) and whether the image was inverted first (polarity)."""
        square, to_square_t, inverted = branch_input(pixels, self.size, self.polarity)
        batch = np.stack([square, square[:, ::-1]]) if mirror else square[None]
        maps = self.position_logits(batch)
        k = top_k(self.top_fraction, maps.shape[1] * maps.shape[2])
        logit = float(np.mean(pool_top_k(maps.reshape(len(maps), -1), k)))
        grid = maps[0] if not mirror else (maps[0] + maps[1][:, ::-1]) / 2
        h, w = grid.shape
        return GlobalAnalysis(logit, grid.astype(np.float32),
                              to_square_t.then(Transform.resize((self.size, self.size), (h, w))), inverted)


class OnnxPositionLogits:
    """The exported branch (model.onnx) on onnxruntime, called as the keras model is: squares in, position logits
    out. Only onnxruntime's built-in CPU ops run (no custom-op library is registered)."""

    def __init__(self, session, path):
        self.session, self.path = session, path
        shape = session.get_inputs()[0].shape
        self.size = int(shape[1])
        self.input_name = session.get_inputs()[0].name

    @classmethod
    def open(cls, model_path, threads: int | None = None) -> "OnnxPositionLogits | None":
        """The graph beside `model_path` (model.keras), or None with the reason on stderr: missing, or exported
        from another model.keras. A graph that is there and unreadable, or of another input shape, is an error
        naming it."""
        import sys
        from pathlib import Path

        from classifier.onnx_backend import open_session
        from mammo.errors import WeightsError
        from mammo.weights_store import sha256_of

        path = Path(model_path).with_name(GLOBAL_ONNX_FILE)
        if not path.is_file():
            print(f"note: inference_backend=onnx: no {path}; the global branch runs on keras", file=sys.stderr)
            return None
        session = open_session(path, threads)
        meta = session.get_modelmeta().custom_metadata_map
        if meta.get("kind") != GLOBAL_ONNX_KIND or meta.get("model_sha256") != sha256_of(model_path):
            print(f"note: inference_backend=onnx: {path} was not exported from {model_path} (re-export: python -m "
                  f"classifier export-onnx {path.parent}); the global branch runs on keras", file=sys.stderr)
            return None
        shape = session.get_inputs()[0].shape
        if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 1 or not 32 <= int(shape[1]) <= MAX_SIZE:
            raise WeightsError(path, f"input shape {shape}: expected a grey square of 32..{MAX_SIZE}")
        return cls(session, path)

    def __call__(self, x, training: bool = False) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.asarray(x, np.float32)})[0]


class LazyGlobalBranch:
    """A branch loaded on its first image, not at start-up: keras and a 512 px network cost seconds and hundreds
    of MB, and a run of film images never needs them (on the onnx backend it then never imports keras). The
    folder is checked when this is made, so a broken bundle still fails at load, naming the file."""

    def __init__(self, folder, threads: int | None = None, backend: str = "keras"):
        import threading

        GlobalBranch.check(folder)
        self.folder, self.threads, self.backend = folder, threads, backend
        self._branch, self._lock = None, threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._branch is not None

    def get(self) -> GlobalBranch:
        with self._lock:  # serve's and the folder loop's threads may ask at once
            if self._branch is None:
                self._branch = GlobalBranch.load(self.folder, self.threads, self.backend)
        return self._branch

    def analyse(self, pixels: np.ndarray, mirror: bool = True) -> "GlobalAnalysis":
        return self.get().analyse(pixels, mirror)


class GlobalAnalysis(NamedTuple):
    logit: float
    grid: np.ndarray  # position logits
    to_grid: Transform  # original pixels -> grid
    inverted: bool  # the branch saw the image inverted (its frame was bright)
