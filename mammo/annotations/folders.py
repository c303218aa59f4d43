"""Image-labelled folders: `<root>/<label>/<woman>_<image>.<ext>`, one label per image and no boxes.

- The folder names are the labels, mapped explicitly by FOLDER_LABELS: `malignant/` = cancer in that breast,
  `benign/` = no cancer (a benign finding or, as in the RSNA screening exports, a normal view). Any other folder
  under the root is refused, naming it: a typo ('Malignant', 'cancer') must never drop or relabel images
  silently. Files directly under the root (a licence, a README) and hidden entries are not images of the set.
- Every image gets one Lesion with box None and its folder's pathology: where the lesion is, is not known.
  Each stage decides what such an image can teach it (detector/dataset.py, classifier/data.py).
- File name `<woman>_<image>.<ext>`, both decimal numbers: the woman is the patient id (leading zeros dropped,
  so '0105' and '105' are one woman) that splits are made by; the image id is the file's stem. One image number
  in two files (two labels, two women) is refused, naming both files.
- Each image's raster size (height, width) is read from its header (no pixels decoded) and recorded, with
  `aspect_squashed` (data.aspect_squashed) saying that the raster was resized to other proportions than the
  breast's, so later stages and the JSON can say so.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from mammo.errors import AnnotationError
from mammo.imaging import MIN_SIDE, RASTER_SUFFIXES, raster_header_size
from mammo.records import ImageRecord, Lesion

from ._common import AnnotationSet, safe_path

FOLDER_LABELS = {"malignant": "malignant", "benign": "benign"}  # folder name -> pathology, nothing else
NAME = re.compile(r"(\d+)_(\d+)$")  # the stem: <woman>_<image>
# Bounds that no real set reaches (the full RSNA set has 54,706 images; an FFDM is ~30 Mpixel), so a wrong root
# (the file system's) or a hostile header fails fast instead of listing for hours.
MAX_IMAGES = 500_000
MAX_PIXELS = 500_000_000  # run.max_pixels' own ceiling; decoding applies the run's (lower) limit again


def read_folders(path, images_root=None, aspect_squashed: bool = False) -> AnnotationSet:
    root = Path(path)
    if not root.is_dir():
        raise AnnotationError(root, "folder not found (expected <root>/<label>/<woman>_<image>.<ext> with labels "
                                    f"{sorted(FOLDER_LABELS)})")
    if images_root and os.path.realpath(images_root) != os.path.realpath(root):
        raise AnnotationError(root, f"the folders format reads labels and images from one folder; images_root "
                                    f"{images_root} is another one (leave it empty or give the same folder)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [p.name for p in folders if p.name not in FOLDER_LABELS]
    if unknown:
        raise AnnotationError(root, f"unknown label folder(s) {unknown}: only {sorted(FOLDER_LABELS)} are labels "
                                    f"({', '.join(f'{k}/ -> {v}' for k, v in FOLDER_LABELS.items())})")
    if not folders:
        raise AnnotationError(root, f"no label folder: expected {sorted(FOLDER_LABELS)}")
    records, owner = [], {}  # owner: image number -> file that has it
    for folder in folders:
        pathology = FOLDER_LABELS[folder.name]
        with os.scandir(folder) as entries:
            names = []
            for e in entries:
                if not e.name.startswith("."):
                    names.append(e.name)
                    if len(records) + len(names) > MAX_IMAGES:
                        raise AnnotationError(root, f"more than {MAX_IMAGES:,} files under the label folders: "
                                                    "not an image set (wrong folder?)")
        for name in sorted(names):
            file = safe_path(root, f"{folder.name}/{name}", root)  # a symlink out of the root is refused
            stem, suffix = Path(name).stem, Path(name).suffix.lower()
            m = NAME.fullmatch(stem)
            if not file.is_file() or suffix not in RASTER_SUFFIXES or not m:
                raise AnnotationError(file, f"not an image named <woman>_<image>.<ext> (two numbers, extension one "
                                            f"of {sorted(RASTER_SUFFIXES)})")
            number = int(m.group(2))
            if number in owner:
                raise AnnotationError(file, f"image number {number} is also {owner[number]}: one image cannot "
                                            "have two labels or two women")
            owner[number] = file
            rows, cols = raster_header_size(file)  # ImageReadError names the file
            if rows * cols > MAX_PIXELS or min(rows, cols) < MIN_SIDE:
                raise AnnotationError(file, f"{cols} x {rows} pixels is no mammogram (need {MIN_SIDE} to "
                                            f"{MAX_PIXELS:,} pixels)")
            woman = str(int(m.group(1)))
            lesion = Lesion(stem, woman, None, "other", pathology, "folders", f"folder {folder.name}/")
            records.append(ImageRecord(stem, woman, file, (lesion,), source="folders", shape=(rows, cols),
                                       aspect_squashed=aspect_squashed))
    report = [f"folders: {len(records)} images with an image-level label only (no box), "
              + ", ".join(f"{sum(r.lesions[0].pathology == p for r in records)} {p}" for p in FOLDER_LABELS)]
    if aspect_squashed:
        report.append(f"folders: aspect ratio squashed in all {len(records)} images (data.aspect_squashed): "
                      "anatomy is not in its true proportions")
    return AnnotationSet(tuple(records), tuple(report), "folders")
