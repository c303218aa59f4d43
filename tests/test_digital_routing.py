"""Film and digital images in one run: a digital image goes through the bundle's global branch with the digital
operating point, a film image through both stages with film's; what each JSON says follows from the stand-ins'
known outputs."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from mammo.calibration import apply_calibration, fit_calibration
from mammo.config import load_config
from mammo.imaging import read_mammogram
from test_domain import inputs  # noqa: F401  (fixture: a PNG a.png and a digital-mammography DICOM b.dcm)


@pytest.fixture
def models():
    from pipeline.models import DomainModels
    from standins import brightness_global_branch, standin_pipeline_models

    m = standin_pipeline_models()
    cal = fit_calibration("platt", [0.1, 0.3, 0.6, 0.9, 0.2, 0.8], [0, 0, 1, 1, 0, 1])
    m.domains["digital"] = DomainModels("digital", brightness_global_branch(), 0.6, cal, None, "chosen on test")
    return m


def test_digital_images_run_the_global_branch_with_the_digital_operating_point(models, inputs, tmp_path):
    from pipeline.infer import GLOBAL_BRANCH_RULE, run_inference

    out = tmp_path / "out"
    summary = run_inference([inputs], out, models, load_config(overrides=["pipeline.dicom_out=never"]), progress=False)
    assert summary["done"] == 2
    results = {}
    for path in out.glob("*.json"):
        data = json.loads(path.read_text())
        if "domain" in data:
            results[Path(data["source"]).name] = data
    film, digital = results["a.png"], results["b.dcm"]
    assert film["domain"] == "film" and film["aggregate"] == "max" and film["threshold"] == 0.5
    assert film["lesions"]  # both stages ran: the bright lesion is a box
    assert digital["domain"] == "digital" and digital["aggregate"] == GLOBAL_BRANCH_RULE
    assert digital["lesions"] == [] and digital["threshold"] == 0.6
    seen = models.domains["digital"].branch.analyse(read_mammogram(inputs / "b.dcm").pixels)
    logit = seen.logit
    assert digital["inverted_for_analysis"] is seen.inverted and film["inverted_for_analysis"] is None
    score = 1 / (1 + np.exp(-logit))
    assert digital["score"] == pytest.approx(score, abs=1e-5)
    assert digital["decision"] == ("malignant" if score >= 0.6 else "not malignant")
    cal = models.domains["digital"].calibration
    assert digital["probability"] == pytest.approx(float(apply_calibration(cal, [score])[0]), abs=1e-5)
    assert digital["probability_threshold"] == pytest.approx(float(apply_calibration(cal, [0.6])[0]), abs=1e-6)
    assert digital["threshold_source"] == "chosen on test"
    heat = cv2.imread(str(out / digital["heatmap"]), cv2.IMREAD_UNCHANGED)
    assert heat is not None and heat.max() > 0  # the branch's saliency is the heatmap


def test_the_digital_operating_point_is_in_the_folders_fingerprint(models, inputs, tmp_path):
    from mammo.errors import MammoError
    from pipeline.infer import run_inference
    from pipeline.models import DomainModels

    out = tmp_path / "out"
    run_inference([inputs], out, models, load_config(overrides=["pipeline.dicom_out=never"]), progress=False)
    d = models.domains["digital"]
    models.domains["digital"] = DomainModels("digital", d.branch, 0.7, d.calibration, None, "other")
    with pytest.raises(MammoError, match="domains"):
        run_inference([inputs], out, models, load_config(overrides=["pipeline.dicom_out=never"]), progress=False)


GOOD = {"global_branch": "global", "threshold": 0.4,
        "calibration": {"method": "platt", "a": 1.0, "b": 0.0}, "operating_curve": None}


@pytest.mark.parametrize("name, change, message", [
    ("film", {}, "unknown domain"),
    ("digital", {"global_branch": ""}, "global_branch"),
    ("digital", {"threshold": 1.5}, "threshold"),
    ("digital", {"threshold": float("nan")}, "threshold"),
    ("digital", {"calibration": {"method": "magic"}}, "magic"),
])
def test_a_malformed_domain_section_is_refused(name, change, message):
    from pipeline.models import check_domain_section

    with pytest.raises(Exception, match=message):
        check_domain_section(name, GOOD | change)


def test_a_wellformed_domain_section_passes():
    from pipeline.models import check_domain_section

    check_domain_section("digital", dict(GOOD))


def test_a_digital_images_dicom_results_name_the_runs_fingerprint_as_film_ones_do(models, inputs, tmp_path):
    """The DICOM results' algorithm fingerprint (and so their UIDs) is the run's output fingerprint for a digital
    image too, not one made with the digital threshold in film's place."""
    import pydicom

    from pipeline.infer import dicom_algorithm, run_inference

    cfg = load_config(overrides=["pipeline.dicom_out=always"])
    out = tmp_path / "out"
    run_inference([inputs], out, models, cfg, progress=False)
    (heatmap,) = out.glob("dicom/*/heatmap_*.dcm")  # the DICOM input is the digital one
    expected = dicom_algorithm(models, cfg, 0.5).software_version  # 0.5: the stand-ins' (film) run threshold
    assert pydicom.dcmread(heatmap).SoftwareVersions == expected
