"""The frozen backbone's feature maps of every image of a dataset, computed once and cached on disk.

Each image gives two views, itself and its mirror, because the branch is trained and applied on both (a breast
is a breast whichever side it hangs on). Chunks of images are written atomically as they are done, so a killed
extraction resumes at the chunk it was in; `features.json` says what the cache holds (backbone file by hash,
input size, image ids in order) and a cache made for anything else is refused rather than mixed in.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mammo.atomic import atomic_path, atomic_write_text
from mammo.config import Config
from mammo.errors import MammoError
from mammo.imaging import read_mammogram

CHUNK = 64  # images per chunk file
VIEWS = ("image", "mirror")


def backbone_identity(weights: str = "imagenet-offline") -> str:
    """The backbone's weights file (global_branch.backbone_weights) by content: features from other weights are
    other features."""
    from classifier.global_branch import backbone_weights_file
    from mammo.weights_store import sha256_of

    return sha256_of(backbone_weights_file(weights))


def cache_manifest(records, size: int, backbone: str, polarity: str, layer: str) -> dict:
    return {"size": int(size), "backbone_sha256": backbone, "layer": layer, "views": list(VIEWS), "chunk": CHUNK,
            "polarity": polarity, "image_ids": [r.image_id for r in records]}


def view_batch(squares: list[np.ndarray]) -> np.ndarray:
    """(n, S, S) squares -> (2n, S, S, 1): the images, then their mirrors."""
    x = np.stack(squares).astype(np.float32)
    return np.concatenate([x, x[:, :, ::-1]])[..., None]


def extract_features(records, cfg: Config, cache_dir, progress: bool = True, extractor=None) -> np.ndarray:
    """(N, 2, h, w, C) float16 features of `records` (in order), read from / written to `cache_dir`.
    `extractor`: a Keras model grey (S, S, 1) -> (h, w, C); the ImageNet one by default (tests hand in a
    small stand-in)."""
    from classifier.global_branch import branch_input

    g = cfg.global_branch
    records = list(records)
    if len(records) > g.max_images:
        raise MammoError(f"{len(records)} images: above global_branch.max_images ({g.max_images}); the feature "
                         f"cache would not fit")
    cache_dir = Path(cache_dir)
    (cache_dir / "chunks").mkdir(parents=True, exist_ok=True)
    backbone = backbone_identity(g.backbone_weights) if extractor is None else f"stand-in:{extractor.name}"
    manifest = cache_manifest(records, g.size, backbone, g.polarity, g.layer)
    manifest_path = cache_dir / "features.json"
    if manifest_path.is_file() and json.loads(manifest_path.read_text()) != manifest:
        raise MammoError(f"{cache_dir}: holds features of other images, another input size, polarity, backbone "
                         f"layer or other backbone weights; use another cache folder or delete it")
    atomic_write_text(manifest_path, json.dumps(manifest))
    final = cache_dir / "features.npy"
    if final.is_file():
        return np.load(final, mmap_mode="r")
    if extractor is None:
        from classifier.global_branch import backbone_weights_file, build_feature_extractor

        extractor = build_feature_extractor(g.size, weights_path=backbone_weights_file(g.backbone_weights),
                                            layer=g.layer)
    chunks = [records[i:i + CHUNK] for i in range(0, len(records), CHUNK)]
    bar = tqdm(total=len(records), desc="global branch features", unit="img", disable=not progress)
    for c, chunk in enumerate(chunks):
        path = cache_dir / "chunks" / f"{c:05d}.npy"
        if path.is_file():
            bar.update(len(chunk))
            continue
        out = []
        for i in range(0, len(chunk), g.batch_images):
            part = chunk[i:i + g.batch_images]
            squares = [branch_input(read_mammogram(r.path, max_pixels=cfg.run.max_pixels).pixels, g.size,
                                    g.polarity)[0] for r in part]
            y = np.asarray(extractor.predict_on_batch(view_batch(squares)))
            out.append(np.stack([y[:len(part)], y[len(part):]], axis=1).astype(np.float16))
            bar.update(len(part))
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.concatenate(out))
    bar.close()
    # One file the folds can memory-map (a few GB), then the chunks go.
    first = np.load(cache_dir / "chunks" / "00000.npy", mmap_mode="r")
    with atomic_path(final) as tmp:
        whole = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(records),) + first.shape[1:])
        for c in range(len(chunks)):
            whole[c * CHUNK:(c + 1) * CHUNK] = np.load(cache_dir / "chunks" / f"{c:05d}.npy")
        whole.flush()
        del whole
    for c in range(len(chunks)):
        (cache_dir / "chunks" / f"{c:05d}.npy").unlink()
    return np.load(final, mmap_mode="r")
