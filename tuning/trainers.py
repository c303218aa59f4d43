"""What a trial trains. A trainer has two methods:

    prepare(cfg, run_dir)                      read and check the data once, before the study is created
    train(cfg, run_dir, on_epoch_end) -> dict  train one trial's config; return validation metrics with keys
                                               'aupr', 'auroc', 'fbeta' (and 'epochs_run'); call
                                               on_epoch_end(epoch, logs) after each epoch with 'val_aupr' and
                                               'val_auroc' in logs (a pruning callback may raise there)

`classifier` (the default) trains with the normal training code, `classifier.train.train`; `toy` is a fast
stand-in without TensorFlow for trying the tuning machinery (and for its tests). Any other trainer can be
named as 'package.module:attribute' (an object with those methods, or a class to instantiate).
"""
from __future__ import annotations

import importlib
import json
import math
import time
from collections import OrderedDict
from pathlib import Path

from mammo.atomic import atomic_write_text
from mammo.config import Config
from mammo.errors import ConfigError

# Per-epoch signal reported to the pruner for each metric: the classifier computes auPR and auROC after every
# epoch; F-beta needs a threshold chosen after calibration, so its trials are pruned on the epoch's auPR.
EPOCH_KEYS = {"aupr": "val_aupr", "auroc": "val_auroc", "fbeta": "val_aupr"}
METRICS = tuple(EPOCH_KEYS)


class ClassifierTrainer:
    """Trains with `classifier.train.train`. The data are split once per worker (patient level, the split file
    of the study folder) and the crops are made once per crop setting (input size, context margin) and kept in
    memory (the last few) and in the classifier's disk cache, so trials do not re-read images."""

    keep_in_memory = 4

    def __init__(self):
        self._splits = None
        self._crops: OrderedDict = OrderedDict()

    def prepare(self, cfg: Config, run_dir) -> None:
        from mammo.datasets import load_split_dataset

        _, splits = load_split_dataset(cfg.data, run_dir)
        sizes = {k: len(v) for k, v in splits.items()}
        if not sizes.get("train") or not sizes.get("val"):
            raise ConfigError(f"data: tuning needs a patient-level train and val split, got {sizes} images "
                              f"(check data.split_fractions / data.split_file)")
        self._splits = splits

    def crops_for(self, cfg: Config, crop_seed: int):
        from classifier.data import build_crops, crop_settings

        key = json.dumps(crop_settings(cfg.classifier, crop_seed), sort_keys=True)
        if key not in self._crops:
            images = [im for ims in self._splits.values() for im in ims]
            t0 = time.perf_counter()
            crops = build_crops(images, cfg.classifier, seed=crop_seed, progress=False).with_splits(self._splits)
            print(f"  crops for input_size={cfg.classifier.input_size} context_margin="
                  f"{cfg.classifier.context_margin:g}: {len(crops)} in {time.perf_counter() - t0:.1f} s", flush=True)
            self._crops[key] = crops
            while len(self._crops) > self.keep_in_memory:
                self._crops.popitem(last=False)
        self._crops.move_to_end(key)
        return self._crops[key]

    def train(self, cfg: Config, run_dir, on_epoch_end=None, crop_seed: int = 0) -> dict:
        from classifier.train import train

        if self._splits is None:
            self.prepare(cfg, None)
        crops = self.crops_for(cfg, crop_seed)
        try:
            m = train(cfg, run_dir, crops=crops, on_epoch_end=on_epoch_end, verbose=0)
        except BaseException:
            # a pruned or failed trial keeps its logs, not the half-trained checkpoint
            (Path(run_dir) / "checkpoint.keras").unlink(missing_ok=True)
            raise
        val = m["val"]
        return {"aupr": val["aupr"], "auroc": val["auroc"], "fbeta": val[f"f{cfg.classifier.fbeta:g}"],
                "epochs_run": m.get("epochs_run"), "best_epoch": m.get("best_epoch"),
                "train_seconds": m.get("train_seconds")}

    @staticmethod
    def clear() -> None:
        import sys

        if "keras" in sys.modules:
            sys.modules["keras"].backend.clear_session()


class ToyTrainer:
    """A deterministic stand-in for the classifier (no TensorFlow): validation auPR rises over the epochs
    towards a ceiling set by the learning rate, dropout, optimizer and batch size; the seed adds a little noise.
    MAMMO_TOY_EPOCH_SECONDS (default 0) makes each epoch sleep, to test what happens mid-trial."""

    def prepare(self, cfg: Config, run_dir) -> None:
        pass

    def train(self, cfg: Config, run_dir, on_epoch_end=None, crop_seed: int = 0) -> dict:
        import os

        import numpy as np

        c = cfg.classifier
        rng = np.random.default_rng(cfg.run.seed)
        ceiling = 0.35 + 0.6 * math.exp(-((math.log10(c.learning_rate) + 3.0) ** 2) / 0.8)
        ceiling *= 1.0 - 0.3 * abs(c.dropout - 0.3)
        ceiling *= 0.95 if c.optimizer == "sgd" else 1.0
        rate = 0.35 + 0.1 * (32 / max(c.batch_size, 1))
        pause = float(os.environ.get("MAMMO_TOY_EPOCH_SECONDS", "0") or 0)
        value = 0.0
        for epoch in range(c.epochs):
            if pause:
                time.sleep(pause)
            value = ceiling * (1 - (1 - rate) ** (epoch + 1)) + float(rng.normal(0, 0.005))
            value = min(max(value, 0.0), 1.0)
            if on_epoch_end is not None:
                on_epoch_end(epoch, {"val_aupr": value, "val_auroc": min(1.0, value + 0.1)})
        out = {"aupr": value, "auroc": min(1.0, value + 0.1), "fbeta": value * 0.9, "epochs_run": c.epochs}
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(run_dir) / "metrics.json", json.dumps(out, indent=2))
        return out

    @staticmethod
    def clear() -> None:
        pass


BUILTIN = {"classifier": ClassifierTrainer, "toy": ToyTrainer}


def load_trainer(spec: str = "classifier"):
    """'classifier', 'toy' or 'package.module:attribute' -> a trainer object."""
    spec = spec or "classifier"
    if spec in BUILTIN:
        return BUILTIN[spec]()
    if ":" not in spec:
        raise ConfigError(f"trainer {spec!r}: use one of {', '.join(BUILTIN)} or 'package.module:attribute'")
    module, attr = spec.split(":", 1)
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"trainer {spec!r}: cannot load it: {exc}") from None
    obj = obj() if isinstance(obj, type) else obj
    for method in ("prepare", "train"):
        if not callable(getattr(obj, method, None)):
            raise ConfigError(f"trainer {spec!r}: has no {method}() method")
    return obj
