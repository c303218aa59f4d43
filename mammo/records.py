"""The few record types that every stage speaks. Plain data, no framework imports.

Boxes are always in ORIGINAL pixels of the image they belong to, top-left origin, [x1, y1, x2, y2] in the
continuous corner convention of `mammo.geometry` (a box covering pixel columns 10..19 is x1=10, x2=20).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mammo.domain import DomainTags

LATERALITIES = ("L", "R")
PATHOLOGIES = ("benign", "malignant")


@dataclass(frozen=True)
class ImageMeta:
    """What we know about one image besides its pixels.

    `patient_id` is the file's own patient field ('' when it has none, as in PGM/PNG files): an identifier, never
    written to exported files. Patient-level splits take the patient from the annotations.
    `pixel_spacing` is (row, col) in millimetres, or None when the source does not say.
    """

    image_id: str
    patient_id: str
    laterality: str | None  # 'L', 'R' or None
    view: str | None  # 'CC', 'MLO', ... or None
    pixel_spacing: tuple[float, float] | None
    original_shape: tuple[int, int]  # (height, width)
    photometric: str  # 'MONOCHROME1', 'MONOCHROME2' (DICOM) or 'MONOCHROME2' for plain greyscale files
    source: str  # path of the file read
    bits_stored: int | None = None
    extra: dict = field(default_factory=dict)
    # Every identifying value the file carries (patient name in its forms, IDs, accession number, birth date...):
    # compared with file names so that none reaches an output name; never exported itself.
    identifiers: tuple[str, ...] = ()
    # The header attributes that say film or digital (mammo.domain); None for a file without a DICOM header.
    domain_tags: DomainTags | None = None

    @property
    def is_dicom(self) -> bool:
        return "transfer_syntax" in self.extra

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("identifiers")
        d["original_shape"] = list(self.original_shape)
        d["pixel_spacing"] = list(self.pixel_spacing) if self.pixel_spacing else None
        return d


@dataclass
class Mammogram:
    """Pixels on the original grid, float32 in [0, 1], brighter = denser, plus metadata. Made only by a reader."""

    pixels: np.ndarray
    meta: ImageMeta

    @property
    def shape(self) -> tuple[int, int]:
        return self.pixels.shape[:2]


@dataclass(frozen=True)
class Lesion:
    """One annotated finding (truth).

    `box` is None for an image-level label without coordinates (e.g. MIAS '*NOTE 3*' calcifications); such
    records still carry the image's pathology. `abnormality` is a normalized class: 'mass', 'calcification',
    'distortion', 'asymmetry' or 'other'; `detail` keeps the source's own class name (e.g. 'SPIC').
    """

    image_id: str
    patient_id: str
    box: tuple[float, float, float, float] | None
    abnormality: str
    pathology: str  # 'benign' | 'malignant'
    source: str  # dataset name, e.g. 'mias'
    detail: str = ""

    def __post_init__(self):
        if self.pathology not in PATHOLOGIES:
            raise ValueError(f"pathology must be one of {PATHOLOGIES}, got {self.pathology!r} for {self.image_id}")
        if self.box is not None:
            x1, y1, x2, y2 = (float(v) for v in self.box)
            if not (x2 > x1 and y2 > y1):
                raise ValueError(f"empty or inverted box {self.box} for {self.image_id}")
            object.__setattr__(self, "box", (x1, y1, x2, y2))

    @property
    def malignant(self) -> bool:
        return self.pathology == "malignant"

    @property
    def kind(self) -> str:
        """The finding's class for per-kind figures: MIAS's own classes (CIRC, SPIC, CALC, ARCH, ASYM, MISC),
        whose mass subtypes behave very differently, else the normalized abnormality."""
        return self.detail.upper() if self.source == "mias" and self.detail else self.abnormality


@dataclass(frozen=True)
class ImageRecord:
    """One image of an annotated dataset: where it is, whose it is, and its findings (empty = negative).

    `shape` is the file's (height, width) where the reader reads it (None: not read). `aspect_squashed` says the
    raster was resized to proportions other than the breast's (data.aspect_squashed), as in square exports.
    """

    image_id: str
    patient_id: str
    path: Path
    lesions: tuple[Lesion, ...] = ()
    laterality: str | None = None
    view: str | None = None
    source: str = ""
    shape: tuple[int, int] | None = None
    aspect_squashed: bool = False

    @property
    def label(self) -> int:
        """Image-level label: 1 when any finding is malignant."""
        return int(any(l.malignant for l in self.lesions))

    @property
    def boxed_lesions(self) -> tuple[Lesion, ...]:
        return tuple(l for l in self.lesions if l.box is not None)


@dataclass(frozen=True)
class Detection:
    """One candidate region found by the detector, in ORIGINAL pixels (same convention as `Lesion.box`)."""

    box: tuple[float, float, float, float]
    score: float
    label: str = "lesion"

    def to_dict(self) -> dict:
        return {"box": [round(float(v), 2) for v in self.box], "score": round(float(self.score), 5),
                "label": self.label}
