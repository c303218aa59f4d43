"""Synthetic mammograms with known lesions, for tests and for the out-of-the-box demo before weights ship.

A half-ellipse 'breast' against one side, textured noise, and lesions of two kinds that a small model can tell
apart: malignant = a filled bright disc, benign = a bright ring of the same size (both are 'blobs' to a
detector). Written in the plain-CSV annotation format so every reader and command works on it unchanged.
"""
from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from mammo.records import ImageMeta, Lesion, Mammogram


def draw_lesion(img: np.ndarray, cx: float, cy: float, r: float, malignant: bool, value: float = 0.95) -> None:
    yy, xx = np.ogrid[: img.shape[0], : img.shape[1]]
    d2 = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2
    if malignant:
        img[d2 <= r * r] = value
    else:
        img[(d2 <= r * r) & (d2 >= (0.6 * r) ** 2)] = value


def synthetic_mammogram(seed: int, shape=(512, 384), n_lesions: int | None = None, side: str | None = None,
                        radius=(10, 22), image_id: str | None = None) -> tuple[Mammogram, list[Lesion]]:
    rng = np.random.default_rng(seed)
    h, w = shape
    side = side or ("left" if rng.random() < 0.5 else "right")
    n_lesions = int(rng.integers(0, 3)) if n_lesions is None else n_lesions
    yy, xx = np.mgrid[0:h, 0:w]
    cx = 0 if side == "left" else w
    inside = ((xx - cx) / (0.85 * w)) ** 2 + ((yy - h / 2) / (0.46 * h)) ** 2 <= 1
    texture = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 6) * 0.25
    img = np.where(inside, 0.40 + texture, 0.02) + rng.normal(0, 0.015, (h, w))
    image_id = image_id or f"syn{seed:05d}"
    lesions = []
    for _ in range(n_lesions):
        for _attempt in range(50):  # place lesions inside the breast, apart from each other
            r = float(rng.uniform(*radius))
            x = float(rng.uniform(0.1 * w, 0.9 * w))
            y = float(rng.uniform(0.2 * h, 0.8 * h))
            ok = inside[int(y), int(x)] and abs(x - cx) < 0.7 * w
            ok = ok and all(np.hypot(x - (l.box[0] + l.box[2]) / 2, y - (l.box[1] + l.box[3]) / 2) > 3 * r
                            for l in lesions)
            if ok:
                break
        else:
            continue
        malignant = bool(rng.random() < 0.5)
        draw_lesion(img, x, y, r, malignant)
        lesions.append(Lesion(image_id, f"p_{image_id}", (x - r, y - r, x + r, y + r), "mass",
                              "malignant" if malignant else "benign", "synthetic"))
    img = np.clip(img, 0, 1).astype(np.float32)
    meta = ImageMeta(image_id, f"p_{image_id}", "L" if side == "left" else "R", "CC", None, (h, w),
                     "MONOCHROME2", "synthetic")
    return Mammogram(img, meta), lesions


def write_synthetic_dataset(root, n_images: int, seed: int = 0, shape=(512, 384), n_lesions=None) -> Path:
    """Write `n_images` 8-bit PNGs and `boxes.csv` (plain-CSV format: image,patient_id,x1,y1,x2,y2,label).

    Two images per synthetic patient, so patient-level splits have something to respect. Returns the CSV path.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_images):
        m, lesions = synthetic_mammogram(seed * 100003 + i, shape=shape, n_lesions=n_lesions,
                                         image_id=f"syn{seed:03d}_{i:04d}")
        rel = f"images/{m.meta.image_id}.png"
        cv2.imwrite(str(root / rel), np.round(m.pixels * 255).astype(np.uint8))
        patient = f"synp{seed:03d}_{i // 2:04d}"
        if not lesions:
            rows.append([rel, patient, "", "", "", "", ""])
        for l in lesions:
            rows.append([rel, patient, *(f"{v:.2f}" for v in l.box), l.pathology])
    csv_path = root / "boxes.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "patient_id", "x1", "y1", "x2", "y2", "label"])
        writer.writerows(rows)
    return csv_path
