"""Process set-up that must happen before any framework is imported. Import this module first.

Why each piece exists (measured, see the project notes):
- `import tensorflow` followed by `import torchvision` (or anything that loads triton, as ultralytics' predict
  does) kills the process with a segfault; importing torch and torchvision first is fine. An import hook makes
  the order automatic: the first import of tensorflow or keras imports torch and torchvision before it.
- ultralytics looks up hosts at import and downloads a font when it checks a dataset; keras and matplotlib write
  caches to the home folder. Offline switches and a project-owned run folder keep all of that local.
- On 2 cores, oversubscribed thread pools are slower than 2 threads; seeds make runs reproducible.
- Keras picks its backend once, at its first import (KERAS_BACKEND). Training runs on TensorFlow (the default
  here); inference-only processes (infer, serve, Ray actors) call `use_keras_backend('torch')` first, so the
  classifier runs on the torch the detector loads anyway and TensorFlow is never imported.

Importing this module is cheap: it sets environment variables and installs the hook, it imports no framework.
"""
from __future__ import annotations

import importlib.abc
import os
import random
import shutil
import sys
from pathlib import Path

from mammo import INSTALLED, PROJECT_ROOT

# Everything a run writes lives under here; MAMMO_RUN_DIR moves it (e.g. to a scratch disk).
RUN_ROOT = Path(os.environ.get("MAMMO_RUN_DIR", (Path.cwd() if INSTALLED else PROJECT_ROOT) / "runs")).resolve()
CACHE_DIR = RUN_ROOT / ".cache"


def default_threads() -> int:
    return int(os.environ.get("MAMMO_THREADS", min(os.cpu_count() or 1, 2)))


def _set_environment() -> None:
    threads = str(default_threads())
    env = {
        "YOLO_OFFLINE": "1",  # else ultralytics does DNS look-ups at import
        # ultralytics' own weights_only loading and eval-free model building, for any code path that reaches
        # ultralytics without detector.checkpoint.install() (which replaces its loader with a stricter one)
        "ULTRALYTICS_SAFE_LOAD": "1",
        "YOLO_CONFIG_DIR": str(CACHE_DIR / "ultralytics"),
        "YOLO_VERBOSE": os.environ.get("YOLO_VERBOSE", "False"),
        "MPLCONFIGDIR": str(CACHE_DIR / "matplotlib"),
        "KERAS_HOME": str(CACHE_DIR / "keras"),
        "TORCH_HOME": str(CACHE_DIR / "torch"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "0"),  # bitwise-reproducible CPU ops
        "KERAS_BACKEND": "tensorflow",
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        # OpenMP threads that spin while waiting collapse when another process shares the 2 cores: a YOLO predict
        # took 2.7 s with 2 spinning threads vs 0.21 s with 1 thread or 2 passive ones (load average ~2).
        "OMP_WAIT_POLICY": "PASSIVE",
        "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED", "0"),
        "MPLBACKEND": "Agg",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
    }
    for key, value in env.items():
        # An explicit setting by the user wins over ours, except the switches that keep runs local and safe.
        if key in ("YOLO_OFFLINE", "HF_HUB_OFFLINE", "ULTRALYTICS_SAFE_LOAD") or key not in os.environ:
            os.environ[key] = value
    for key in ("YOLO_CONFIG_DIR", "MPLCONFIGDIR", "KERAS_HOME", "TORCH_HOME"):
        Path(os.environ[key]).mkdir(parents=True, exist_ok=True)
    _install_font(Path(os.environ["YOLO_CONFIG_DIR"]))


def _install_font(config_dir: Path) -> None:
    """ultralytics always calls check_font('Arial.ttf') when it checks a dataset, which downloads the font
    unless it exists in its config folder. Any TTF will do: matplotlib ships DejaVuSans."""
    target = config_dir / "Ultralytics" / "Arial.ttf"
    if target.exists():
        return
    try:
        import matplotlib

        source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except Exception as exc:  # the detector stage reports its own clear error if the font is still missing
        print(f"warning: could not install a local font for ultralytics: {exc}", file=sys.stderr)


class _TorchBeforeTensorFlow(importlib.abc.MetaPathFinder):
    """On the first import of tensorflow/keras, import torch and torchvision first, then step aside."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] not in ("tensorflow", "keras", "tf_keras"):
            return None
        sys.meta_path.remove(self)
        try:
            import torch  # noqa: F401
            import torchvision  # noqa: F401
        except ImportError:
            pass  # no torch installed: nothing to protect
        return None  # let the normal finders load tensorflow


def _install_import_order_hook() -> None:
    if "tensorflow" in sys.modules and "torchvision" not in sys.modules:
        print("warning: tensorflow was imported before mammo.runtime; importing torchvision later may crash "
              "the process. Import mammo.runtime first.", file=sys.stderr)
        return
    if not any(isinstance(f, _TorchBeforeTensorFlow) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchBeforeTensorFlow())


def keras_backend() -> str | None:
    """The backend of the keras already imported in this process, or None when keras is not imported yet."""
    keras = sys.modules.get("keras")
    return keras.backend.backend() if keras is not None else None


def use_keras_backend(name: str) -> str:
    """Make keras run on `name` ('torch' or 'tensorflow') in this process. Must come before keras is first
    imported: keras reads KERAS_BACKEND once and cannot switch later, so a conflicting keras already imported is
    an error naming both (rather than silently running on the other one)."""
    from mammo.errors import MammoError

    _check_backend_name(name)
    current = keras_backend()
    if current is not None and current != name:
        raise MammoError(f"keras is already imported on the {current} backend in this process, so the classifier "
                         f"cannot run on {name} here: set classifier.inference_backend={current}, or run inference "
                         f"in a fresh process")
    os.environ["KERAS_BACKEND"] = name
    return name


def _check_backend_name(name: str, known=None) -> None:
    from mammo.config import KERAS_BACKENDS
    from mammo.errors import ConfigError

    known = known or KERAS_BACKENDS
    if name not in known:
        raise ConfigError(f"classifier.inference_backend: {name!r} is not one of {', '.join(known)}")


def keras_backend_for_inference(wanted: str) -> str:
    """The backend inference runs on: `wanted`, unless keras already runs on the other one in this process (a
    notebook or a test session that trained first), where switching is impossible and running there costs nothing
    more (both give the same numbers within 1e-5: tests/test_backends.py). Said on stderr, not silently.
    onnx needs no keras; keras is set for its fallback (classifier/onnx_backend.py): torch, or the one running."""
    from mammo.config import INFERENCE_BACKENDS

    _check_backend_name(wanted, INFERENCE_BACKENDS)  # an unknown name is an error even where keras runs elsewhere
    if wanted == "onnx":
        return use_keras_backend(keras_backend() or "torch")
    current = keras_backend()
    if current is not None and current != wanted:
        print(f"note: keras already runs on {current} in this process; the classifier runs there instead of "
              f"classifier.inference_backend={wanted} (a fresh process uses {wanted})", file=sys.stderr)
        wanted = current
    return use_keras_backend(wanted)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and whichever of torch / tensorflow is already loaded (importing neither)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)
    if "tensorflow" in sys.modules:
        sys.modules["tensorflow"].random.set_seed(seed)
    if "keras" in sys.modules:
        sys.modules["keras"].utils.set_random_seed(seed)


def configure_torch(threads: int | None = None) -> None:
    """Call after importing torch: ultralytics resets torch to 1 thread on CPU; 2 were 1.6-2x faster here."""
    import torch

    torch.set_num_threads(threads or default_threads())


def configure_tensorflow(threads: int | None = None) -> None:
    """Call after importing tensorflow, before it builds anything (thread pools are fixed at first use)."""
    import tensorflow as tf

    n = threads or default_threads()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
    except RuntimeError:
        pass  # already initialised: the pools keep their size


def configure_keras(threads: int | None = None) -> None:
    """Thread pools of the framework keras runs on (call after importing keras); never imports the other one."""
    if keras_backend() == "torch":
        configure_torch(threads)
    else:
        configure_tensorflow(threads)


_set_environment()
_install_import_order_hook()


def configure_ultralytics() -> None:
    """Turn off every ultralytics integration that talks to the network, and keep its folders in the run root
    (its default 'weights' and 'runs' folders are relative to the working directory)."""
    from ultralytics import settings

    wanted = {"sync": False, "hub": False, "clearml": False, "comet": False, "dvc": False, "mlflow": False,
              "neptune": False, "raytune": False, "tensorboard": False, "wandb": False, "vscode_msg": False,
              "openvino_msg": False, "datasets_dir": str(RUN_ROOT / "datasets"),
              "weights_dir": str(CACHE_DIR / "ultralytics" / "weights"), "runs_dir": str(RUN_ROOT / "ultralytics")}
    settings.update({k: v for k, v in wanted.items() if k in settings})  # keys vary across versions
