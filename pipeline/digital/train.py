"""The shipped global branch: the head fitted on every image of the set with the pooling cross-validation chose,
joined to the frozen backbone as one Keras model (built-in layers only: it loads in safe mode).

The folder records what it was fitted on (every image id, and their SHA-256 as one digest) so anyone holding
other images can show they are disjoint from the training data.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mammo.atomic import atomic_path, atomic_write_text
from mammo.config import Config
from mammo.errors import MammoError
from pipeline.digital.cross_validate import dataset_records, head_spec
from pipeline.digital.features import backbone_identity, extract_features
from pipeline.models import ids_digest


def train_global_branch(cfg: Config, cv_dir, out, feature_cache=None, extractor=None) -> Path:
    from classifier.global_branch import (backbone_weights_file, build_feature_extractor, build_global_model,
                                          fit_mil_head, pool_grid, spec_dict)

    cv_dir, out = Path(cv_dir), Path(out)
    summary_path = cv_dir / "summary.json"
    if not summary_path.is_file():
        raise MammoError(f"{summary_path}: missing; finish `python -m pipeline digital-cv` first")
    summary = json.loads(summary_path.read_text())
    settings = summary["settings"]
    candidate = (float(settings["top_fraction"]), float(settings["weight_decay"]))
    grid = int(settings["grid"])
    polarity = settings.get("polarity", "as_read")  # runs before the setting saw pixels as read
    layer = settings.get("layer", "features_18_2")  # runs before the setting read the last map
    weights = settings.get("backbone_weights", "imagenet-offline")  # runs before the setting: ImageNet
    g = cfg.global_branch
    if (grid, int(settings["size"]), polarity, layer, weights) != (g.grid, g.size, g.polarity, g.layer,
                                                                   g.backbone_weights):
        raise MammoError(f"{summary_path}: cross-validated at size {settings['size']}, grid {grid}, polarity "
                         f"{polarity}, layer {layer}, backbone weights {weights}; this config says {g.size}, "
                         f"{g.grid}, {g.polarity}, {g.layer}, {g.backbone_weights}")
    records = dataset_records(cfg)
    cv_ids = summary["oof"]["image_id"]
    if [r.image_id for r in records] != cv_ids:
        raise MammoError(f"{summary_path}: cross-validated other images than the config's data section")
    feats = pool_grid(extract_features(records, cfg, feature_cache or cv_dir / "features", extractor=extractor), grid)
    y = np.array([r.label for r in records])
    spec = head_spec(cfg, candidate)
    head = fit_mil_head(feats, y, spec)
    folder = out / "global"
    folder.mkdir(parents=True, exist_ok=True)
    weights_file = backbone_weights_file(g.backbone_weights) if extractor is None else None
    model = build_global_model(extractor or build_feature_extractor(g.size, weights_file, layer=g.layer), head, grid)
    with atomic_path(folder / "model.keras") as tmp:
        model.save(tmp)
    info = {"top_fraction": candidate[0], "size": cfg.global_branch.size, "grid": grid,
            "polarity": cfg.global_branch.polarity, "layer": g.layer, "head": head.to_dict(),
            "spec": spec_dict(spec),
            "backbone": (f"MobileNetV2, frozen, read at {g.layer}; weights: "
                         + ("ImageNet (torchvision IMAGENET1K_V1)" if g.backbone_weights == "imagenet-offline"
                            else f"a local state dict ({Path(g.backbone_weights).name})")),
            "backbone_sha256": (backbone_identity(g.backbone_weights) if extractor is None
                                else f"stand-in:{extractor.name}"),
            "trained_on": {"dataset": cfg.data.format, "n_images": len(records), "n_positive": int(y.sum()),
                           "n_women": len({r.patient_id for r in records}),
                           "image_ids_sha256": ids_digest(cv_ids)}}
    atomic_write_text(folder / "head.json", json.dumps(info, indent=1))
    atomic_write_text(folder / "trained_on.txt", "\n".join(sorted(cv_ids)) + "\n")
    return folder
