"""Film or digital: what an image is treated as, and why (issue 24). Plain data and pure functions.

A DICOM header can say it through standard attributes (`header_domain`, each rule citing its tag). A raster file
(PNG, JPEG, PGM) has no header, and many DICOM headers are silent (a Secondary Capture converted on a workstation,
as the CBIS-DDSM samples are): then a setting decides (`pipeline.domain_fallback`, or `pipeline.domain` for every
input) and the decision says so. With nothing to go on and no setting, the image is refused (DomainError naming
the file and what to set): a domain is never guessed silently. Every decision carries its source and a sentence
naming the tag and value, or the setting, that made it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.uid import UID

from mammo.config import DOMAINS
from mammo.errors import MammoError

if TYPE_CHECKING:
    from mammo.records import ImageMeta

# SOP classes (PS3.4 Annex B) whose IODs hold an image read off a digital detector: the DX family (DX, MG and
# intra-oral, all with the DX Detector Module, PS3.3 C.8.11.4) and the breast tomosynthesis / projection IODs.
DIGITAL_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
    "1.2.840.10008.5.1.4.1.1.1.2",  # Digital Mammography X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.2.1",  # Digital Mammography X-Ray Image Storage - For Processing
    "1.2.840.10008.5.1.4.1.1.1.3",  # Digital Intra-Oral X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.3.1",  # Digital Intra-Oral X-Ray Image Storage - For Processing
    "1.2.840.10008.5.1.4.1.1.13.1.3",  # Breast Tomosynthesis Image Storage
    "1.2.840.10008.5.1.4.1.1.13.1.4",  # Breast Projection X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.13.1.5",  # Breast Projection X-Ray Image Storage - For Processing
}
COMPUTED_RADIOGRAPHY = "1.2.840.10008.5.1.4.1.1.1"  # CR Image Storage: a storage-phosphor plate read by a laser
# Secondary Capture Image Storage and its multi-frame variants (PS3.4 B.5): images made from something else
SECONDARY_CAPTURE = {"1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",
                     "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4"}
# Detector Type (0018,7004), DX Detector Module (PS3.3 C.8.11.4), its defined terms
DETECTOR_TYPES = {"DIRECT": ("digital", "an X-ray photoconductor"),
                  "SCINTILLATOR": ("digital", "a phosphor (scintillator) detector"),
                  "STORAGE": ("digital", "a storage phosphor (computed radiography)"),
                  "FILM": ("film", "scanned film/screen")}
# Presentation Intent Type (0008,0068), DX Series Module (PS3.3 C.8.11.1): only DX-family images carry it
PRESENTATION_INTENTS = ("FOR PRESENTATION", "FOR PROCESSING")
# Conversion Type (0008,0064), SC Equipment Module (PS3.3 C.8.6.1): DF is the one defined term that names film
CONVERSION_TYPES = {"DV": "digitized video", "DI": "digital interface", "DF": "digitized film",
                    "WSD": "workstation", "SD": "scanned document", "SI": "scanned image", "DRW": "drawing",
                    "SYN": "synthetic image"}

DETECTOR_TAG = "Detector Type (0018,7004)"
INTENT_TAG = "Presentation Intent Type (0008,0068)"
CONVERSION_TAG = "Conversion Type (0008,0064)"
SOP_TAG = "SOP Class UID (0008,0016)"


class DomainError(MammoError):
    """An image whose domain neither its file nor a setting gives. `str(err)` names the file and what to set."""

    def __init__(self, path, why: str):
        self.path = str(path)
        super().__init__(f"{self.path}: film or digital cannot be told ({why}) and pipeline.domain_fallback=refuse; "
                         f"set pipeline.domain_fallback=film or =digital for inputs whose files do not say, or "
                         f"pipeline.domain=film or =digital for every input")


@dataclass(frozen=True)
class DomainTags:
    """The header attributes the rules read ('' when absent), upper case. Read from the header alone."""

    sop_class: str = ""
    conversion_type: str = ""
    presentation_intent: str = ""
    detector_type: str = ""

    @classmethod
    def from_dataset(cls, ds) -> "DomainTags":
        """From a pydicom dataset (pixel data not needed: `dcmread(..., stop_before_pixels=True)` will do)."""
        def text(keyword: str) -> str:
            try:  # a damaged optional attribute leaves the rule silent; it must not make the image unreadable
                return str(ds.get(keyword, "") or "").strip().upper()[:64]  # it is quoted in reasons
            except Exception:
                return ""

        meta = getattr(ds, "file_meta", None)
        sop = text("SOPClassUID") or str((meta or {}).get("MediaStorageSOPClassUID", "") or "").strip()
        return cls(sop, text("ConversionType"), text("PresentationIntentType"), text("DetectorType"))


@dataclass(frozen=True)
class DomainDecision:
    """What an image was treated as ('film' | 'digital'), where that came from ('dicom-header' | 'setting') and
    a short sentence naming the tag and value, or the setting, that decided it."""

    domain: str
    source: str
    reason: str

    def __post_init__(self):
        if self.domain not in DOMAINS:
            raise ValueError(f"domain must be one of {DOMAINS}, got {self.domain!r}")


def _sop_name(uid: str) -> str:
    name = UID(uid).name if uid else ""
    return name if name and name != uid else f"SOP class {uid}"


def _signals(tags: DomainTags) -> list[tuple[str, str]]:
    """Every (domain, reason) a single attribute states on its own, strongest first (see `header_domain`)."""
    out = []
    sop = tags.sop_class
    if sop in SECONDARY_CAPTURE and tags.conversion_type == "DF":
        out.append(("film", f"{CONVERSION_TAG} is DF (digitized film) in a {_sop_name(sop)}"))
    if tags.detector_type in DETECTOR_TYPES:
        domain, what = DETECTOR_TYPES[tags.detector_type]
        out.append((domain, f"{DETECTOR_TAG} is {tags.detector_type} ({what})"))
    if sop == COMPUTED_RADIOGRAPHY:
        out.append(("digital", f"{SOP_TAG} is {_sop_name(sop)} (a storage-phosphor plate read out digitally)"))
    if sop in DIGITAL_SOP_CLASSES:
        out.append(("digital", f"{SOP_TAG} is {_sop_name(sop)} (an image of a digital detector)"))
    if tags.presentation_intent in PRESENTATION_INTENTS:
        out.append(("digital", f"{INTENT_TAG} is {tags.presentation_intent} (only DX-family images carry it)"))
    return out


def header_domain(tags: DomainTags) -> DomainDecision | None:
    """The domain the header states, or None when no standard attribute says. Precedence (first that speaks):

    1. a Secondary Capture with Conversion Type DF: the SC Equipment Module (PS3.3 C.8.6.1) says how THESE
       pixels were made, a digitized film. It outranks a Detector Type or Presentation Intent in the same object:
       those are no attributes of the SC IOD, only copied from the image it was made from (a film print of a
       digital image, digitized, is still a film scan);
    2. Detector Type (0018,7004): the detector that acquired the pixels. FILM wins over a DX / MG SOP class: the
       DX Detector Module (PS3.3 C.8.11.4) is how those IODs hold a scanned film/screen, so the class alone says
       "digital" too soon; DIRECT / SCINTILLATOR / STORAGE are digital;
    3. the SOP class: Computed Radiography (a digital read-out, its own reason), the DX / MG / intra-oral /
       breast tomosynthesis and projection classes;
    4. Presentation Intent Type (0008,0068): FOR PRESENTATION / FOR PROCESSING exist only in DX-family images
       (PS3.3 C.8.11.1), so an object that kept one (e.g. a Secondary Capture of a DX image) came from a
       digital detector.

    Any other Conversion Type (WSD, SI, ...) names the conversion, not the original: silent. Manufacturer names
    are not read ('FUJI PHOTO FILM' makes CR plates). Attributes that disagree with the decision are named in its
    reason as ignored."""
    signals = _signals(tags)
    if not signals:
        return None
    domain, reason = signals[0]
    ignored = [r for d, r in signals[1:] if d != domain]
    if ignored:
        reason += "; ignored: " + "; ".join(ignored)
    return DomainDecision(domain, "dicom-header", reason)


def silence(meta: "ImageMeta") -> str:
    """Why the file itself does not say: no header (a raster), or what its header holds."""
    tags = meta.domain_tags
    if tags is None:
        kind = Path(meta.source).suffix.lstrip(".").upper()
        return f"{'a ' + kind if kind else 'an'} image file without a DICOM header"
    said = [_sop_name(tags.sop_class) if tags.sop_class else "no SOP class"]
    if tags.conversion_type:
        meaning = CONVERSION_TYPES.get(tags.conversion_type, "not a defined term")
        said.append(f"{CONVERSION_TAG} {tags.conversion_type} ({meaning})")
    if tags.detector_type:
        said.append(f"{DETECTOR_TAG} {tags.detector_type} (not a defined term)")
    return "its header says neither: " + ", ".join(said)


def decide_domain(meta: "ImageMeta", setting: str = "auto", fallback: str = "refuse") -> DomainDecision:
    """The domain of one image. `setting` (pipeline.domain): 'auto' = the header decides, else every image is
    treated as that (a header that disagrees is named in the reason). `fallback` (pipeline.domain_fallback):
    what 'auto' uses when the file does not say, or 'refuse' (DomainError naming the file and what to set)."""
    header = header_domain(meta.domain_tags) if meta.domain_tags is not None else None
    if setting != "auto":
        if setting not in DOMAINS:
            raise ValueError(f"pipeline.domain must be auto or one of {DOMAINS}, got {setting!r}")
        against = f" (its header says {header.domain}: {header.reason})" if header and header.domain != setting else ""
        return DomainDecision(setting, "setting", f"pipeline.domain={setting} for every input{against}")
    if header is not None:
        return header
    why = silence(meta)
    if fallback == "refuse":
        raise DomainError(meta.source, why)
    if fallback not in DOMAINS:
        raise ValueError(f"pipeline.domain_fallback must be refuse or one of {DOMAINS}, got {fallback!r}")
    return DomainDecision(fallback, "setting", f"pipeline.domain_fallback={fallback}: {why}")
