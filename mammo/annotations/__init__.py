"""Annotation readers: each turns a dataset's own files into an `AnnotationSet` of `ImageRecord`s.

    from mammo.annotations import read_annotations
    ds = read_annotations("mias", "/data/mias")          # Info.txt or its folder
    print(ds.summary()); print("\\n".join(ds.report))

Every box is in ORIGINAL pixels, top-left origin, [x1, y1, x2, y2], corner convention (see mammo.geometry),
clipped to the image when its size is known. Paths written in annotation files are resolved against the
dataset root and refused when they lead outside it. Anything that is not a plain boxed lesion (a finding
without coordinates, an unknown value, a missing file) is kept as far as possible and noted in `report`.
"""
from __future__ import annotations

from mammo.errors import AnnotationError

from ._common import ABNORMALITIES, AnnotationSet, safe_path
from .cbis_ddsm import read_cbis_ddsm
from .csv_boxes import read_csv_boxes
from .folders import FOLDER_LABELS, read_folders
from .inbreast import read_inbreast
from .mias import read_mias
from .vindr import read_vindr

READERS = {"mias": read_mias, "cbis-ddsm": read_cbis_ddsm, "inbreast": read_inbreast, "vindr": read_vindr,
           "csv": read_csv_boxes, "folders": read_folders}
# The readers of raster exports, which may have been resized to other proportions (data.aspect_squashed): the
# others read originals, whose aspect ratio is the breast's.
SQUASHABLE = ("csv", "folders")


def read_annotations(format: str, path, images_root=None, **options) -> AnnotationSet:
    """Read the annotations of `path` in `format` (one of READERS); `options` go to the reader (e.g.
    `birads_pathology` for 'inbreast' and 'vindr', `aspect_squashed` for the SQUASHABLE ones)."""
    key = format.strip().lower().replace("_", "-")
    key = {"cbis": "cbis-ddsm", "cbisddsm": "cbis-ddsm", "vindr-mammo": "vindr", "mini-mias": "mias"}.get(key, key)
    if key not in READERS:
        raise AnnotationError(path, f"unknown annotation format {format!r}; choose one of {sorted(READERS)}")
    if options.get("aspect_squashed") and key not in SQUASHABLE:
        raise AnnotationError(path, f"data.aspect_squashed: the {key} reader reads original images, whose aspect "
                                    f"ratio is the breast's; only {list(SQUASHABLE)} read resized raster exports")
    return READERS[key](path, images_root, **options)


__all__ = ["ABNORMALITIES", "AnnotationSet", "FOLDER_LABELS", "READERS", "SQUASHABLE", "read_annotations",
           "read_cbis_ddsm", "read_csv_boxes", "read_folders", "read_inbreast", "read_mias", "read_vindr", "safe_path"]
