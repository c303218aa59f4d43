"""DICOMweb in and out (pipeline/dicomnode/dicomweb.py) against a real PACS: Orthanc with its DICOMweb plugin
(tests/orthanc_server.py). Images are analysed by the stand-in models (tests/standins.py, fixture
`standin_models` in conftest): these tests are about what reaches and leaves the PACS, resume and faults, not
about the models."""
import mammo.runtime  # noqa: F401  (must stay the first import)

import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from conftest import sample_dicom_paths
from dicom_fixtures import make_dataset
from mammo.config import load_config
from mammo.synthetic import synthetic_mammogram
from orthanc_server import orthanc, orthanc_factory  # noqa: F401  (fixtures)
from pipeline.dicomnode import dicomweb
from pipeline.dicomnode.dicomweb import PacsUnreachable, infer_from_dicomweb
from pipeline.infer import run_inference

PATIENT = {"PatientName": "Doe^Jane", "PatientID": "MRN-4711-0815"}  # must appear in no output


def engine_for(out, models, cfg):
    return lambda found: run_inference(found, out, models, cfg, progress=False)


def mg_study(n: int, seed: int = 0, study: str | None = None, **attributes) -> list:
    """`n` small synthetic mammograms (one bright disc each) as DICOM data sets of one study and series."""
    study, series = study or generate_uid(), generate_uid()
    out = []
    for i in range(n):
        m, _ = synthetic_mammogram(seed + i, shape=(256, 192), n_lesions=1)
        ds = make_dataset((m.pixels * 4095).astype(np.uint16), bits_stored=12, StudyInstanceUID=study,
                          SeriesInstanceUID=series, InstanceNumber=i + 1, **PATIENT, **attributes)
        out.append(ds)
    return out


def upload(server, datasets) -> None:
    for ds in datasets:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        server.upload(buf.getvalue())


def summary_of(out: Path) -> tuple[dict, list]:
    import csv

    rows = list(csv.DictReader(open(out / "predictions.csv")))
    return json.loads((out / "dicomweb" / dicomweb.PULL_FILE).read_text()), rows


# ------------------------------------------------------------------------------------------------ Orthanc itself
def test_orthanc_stores_a_sample_and_qido_finds_it(orthanc):  # noqa: F811
    from dicomweb_client import DICOMwebClient

    path = sample_dicom_paths()[0]
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    answer = orthanc.upload(path)
    assert answer["Status"] in ("Success", "AlreadyStored")
    client = DICOMwebClient(orthanc.dicomweb_url)
    found = client.search_for_instances(study_instance_uid=ds.StudyInstanceUID)
    assert [pydicom.Dataset.from_json(f).SOPInstanceUID for f in found] == [ds.SOPInstanceUID]
    assert orthanc.find(SOPInstanceUID=ds.SOPInstanceUID)[0]["ID"] == answer["ID"]


def test_orthanc_restarts_with_its_storage(orthanc_factory):  # noqa: F811
    """The fault tests kill the PACS mid-run and start it again: what it had stored is still there."""
    server = orthanc_factory()
    server.upload(sample_dicom_paths()[1])
    server.stop(kill=True)
    server.start()
    assert len(server.instances()) == 1


# ------------------------------------------------------------------------------------------------------- pull
def test_a_study_is_pulled_analysed_and_resumed_without_identifiers(orthanc, standin_models, tmp_path):  # noqa: F811
    """QIDO lists the study, WADO streams each instance byte for byte into the spool under a hashed name, infer
    analyses them as files; a rerun fetches and analyses nothing again; no UID or patient value in any name,
    predictions.csv, result JSON or pull.json."""
    study = mg_study(3, seed=11)
    upload(orthanc, study)
    other = mg_study(1, seed=50)  # another study in the same PACS: not pulled
    upload(orthanc, other)
    out, cfg = tmp_path / "out", load_config()
    uid = study[0].StudyInstanceUID
    summary = infer_from_dicomweb(orthanc.dicomweb_url, [uid], {}, out, cfg, engine_for(out, standin_models, cfg),
                                  progress=False)
    assert (summary["done"], summary["failed"], summary["dicomweb"]["fetched"]) == (3, 0, 3)
    spool = sorted((out / "dicomweb" / "spool").iterdir())
    assert len(spool) == 3 and all(p.name.startswith("inst_") for p in spool)
    fetched = {pydicom.dcmread(p).SOPInstanceUID: p.read_bytes() for p in spool}
    for ds in study:  # the PACS's bytes, unchanged
        assert pydicom.dcmread(io.BytesIO(fetched[ds.SOPInstanceUID])).PixelData == ds.PixelData
    again = infer_from_dicomweb(orthanc.dicomweb_url, [uid], {}, out, cfg, engine_for(out, standin_models, cfg),
                                progress=False)
    assert (again["done"], again["resumed"], again["dicomweb"]["fetched"], again["dicomweb"]["reused"]) == (3, 3, 0, 3)
    secrets = {uid, *(ds.SOPInstanceUID for ds in study), study[0].SeriesInstanceUID, "Doe", "Jane", "4711"}
    for path in out.rglob("*"):
        assert not any(s in path.name for s in secrets), path.name
        if path.is_file() and path.suffix in (".csv", ".json") and "spool" not in path.parts:
            text = path.read_text()
            assert not any(s in text for s in secrets), path


def test_non_mammograms_in_the_study_are_skipped_with_the_reason(orthanc, standin_models, tmp_path):  # noqa: F811
    """An SR and a CT slice in the study: never fetched, each listed with why; the mammograms are analysed."""
    from pydicom.uid import BasicTextSRStorage, CTImageStorage

    study = mg_study(2, seed=21)
    uid = study[0].StudyInstanceUID
    sr = make_dataset(None, sop_class=BasicTextSRStorage, Modality="SR", StudyInstanceUID=uid,
                      SeriesInstanceUID=generate_uid(), **PATIENT)
    ct = make_dataset(np.zeros((64, 64), np.int16), sop_class=CTImageStorage, Modality="CT", StudyInstanceUID=uid,
                      SeriesInstanceUID=generate_uid(), **PATIENT)
    upload(orthanc, [*study, sr, ct])
    out, cfg = tmp_path / "out", load_config()
    summary = infer_from_dicomweb(orthanc.dicomweb_url, [uid], {}, out, cfg, engine_for(out, standin_models, cfg),
                                  progress=False)
    pulled, rows = summary_of(out)
    assert (summary["done"], summary["failed"], len(rows)) == (2, 0, 2)
    reasons = sorted(s["reason"] for s in pulled["skipped"])
    assert len(reasons) == 2 and "modality CT, not a mammogram" in reasons[1]
    assert "structured report" in reasons[0] and BasicTextSRStorage in reasons[0]
    assert pulled["skipped"] == summary["dicomweb"]["skipped"]
    assert len(list((out / "dicomweb" / "spool").iterdir())) == 2  # neither was fetched


def test_a_truncated_instance_is_a_failed_row_and_the_rest_completes(orthanc, standin_models, tmp_path):  # noqa: F811
    """An instance whose Pixel Data holds half of Rows x Columns (the PACS stores it: it never decodes pixels)
    fails with the reader's reason, under its hashed name; the others are done; a rerun retries only it."""
    study = mg_study(3, seed=31)
    study[1].PixelData = study[1].PixelData[: len(study[1].PixelData) // 2]
    upload(orthanc, study)
    out, cfg = tmp_path / "out", load_config()
    uid = study[0].StudyInstanceUID
    summary = infer_from_dicomweb(orthanc.dicomweb_url, [uid], {}, out, cfg, engine_for(out, standin_models, cfg),
                                  progress=False)
    assert (summary["done"], summary["failed"]) == (2, 1)
    error = summary["failures"][0]["error"]
    assert "inst_" in error and study[1].SOPInstanceUID not in error
    again = infer_from_dicomweb(orthanc.dicomweb_url, [uid], {}, out, cfg, engine_for(out, standin_models, cfg),
                                progress=False)
    assert (again["resumed"], again["failed"], again["processed"]) == (2, 1, 0)


def test_pacs_down_mid_pull_is_a_clear_error_and_the_rerun_resumes(orthanc_factory, standin_models,  # noqa: F811
                                                                   tmp_path, monkeypatch):
    """Orthanc killed after two of four instances: the error names the endpoint (no UID), nothing is analysed
    half; Orthanc back, the same call fetches only the two missing and analyses all four."""
    server = orthanc_factory()
    study = mg_study(4, seed=41)
    upload(server, study)
    out, cfg = tmp_path / "out", load_config()
    uid = study[0].StudyInstanceUID
    fetch, calls = dicomweb.DicomWeb.fetch, []

    def fetch_then_die(self, inst, dest, max_bytes):
        if len(calls) == 2:
            server.stop(kill=True)
        calls.append(inst.sop)
        return fetch(self, inst, dest, max_bytes)

    monkeypatch.setattr(dicomweb.DicomWeb, "fetch", fetch_then_die)
    with pytest.raises(PacsUnreachable) as err:
        infer_from_dicomweb(server.dicomweb_url, [uid], {}, out, cfg, engine_for(out, standin_models, cfg),
                            progress=False)
    message = str(err.value)
    assert server.dicomweb_url in message and "rerun" in message and "2 instances are in the spool" in message
    assert uid not in message and not any(ds.SOPInstanceUID in message for ds in study)
    assert not (out / "predictions.csv").exists()
    server.start()
    monkeypatch.setattr(dicomweb.DicomWeb, "fetch", fetch)
    summary = infer_from_dicomweb(server.dicomweb_url, [uid], {}, out, cfg, engine_for(out, standin_models, cfg),
                                  progress=False)
    assert (summary["done"], summary["dicomweb"]["fetched"], summary["dicomweb"]["reused"]) == (4, 2, 2)


def test_an_unreachable_endpoint_fails_at_once_naming_it(tmp_path):
    from orthanc_server import _free_port

    url = f"http://user:secret@127.0.0.1:{_free_port()}/dicom-web"
    cfg = load_config()
    with pytest.raises(PacsUnreachable, match=r"the PACS at http://127\.0\.0\.1:\d+/dicom-web refused") as err:
        infer_from_dicomweb(url, ["1.2.3"], {}, tmp_path / "out", cfg, lambda found: pytest.fail("analysed"),
                            progress=False)
    assert "secret" not in str(err.value)


# ------------------------------------------------------------------------------------------------------- push
def result_file(out: Path, name: str, study: str, **attributes) -> Path:
    """A DICOM file where infer writes its results (<out>/dicom/), standing in for the SR and map writers."""
    path = out / "dicom" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = make_dataset(np.zeros((8, 8), np.uint16), StudyInstanceUID=study, SeriesInstanceUID=generate_uid(),
                      Modality="OT", **attributes)
    ds.save_as(path, enforce_file_format=True)
    return path


REFUSING = """
posts = 0
-- refuse every STOW-RS into one study; refuse the first two STOW-RS of all others (then accept)
function IncomingHttpRequestFilter(method, uri, ip, username, headers)
  if method ~= 'POST' or not string.find(uri, '/dicom-web/studies', 1, true) then return true end
  if string.find(uri, '%s', 1, true) then return false end
  posts = posts + 1
  return posts > 2
end
"""


def test_refused_stow_is_retried_reported_and_never_duplicated(orthanc_factory, tmp_path):  # noqa: F811
    """Orthanc refuses (HTTP 403) the first two STOW-RS requests and every one into one study: the first file is
    stored on its third try, the refused one is reported after its tries and kept out of the ledger; a rerun
    sends only that one, and the stored file is not sent again."""
    blocked = generate_uid()
    server = orthanc_factory(lua=REFUSING % blocked)
    out, folder = tmp_path / "out", tmp_path / "out" / "dicomweb"
    folder.mkdir(parents=True)
    good = result_file(out, "a_sr.dcm", generate_uid())
    refused = result_file(out, "b_sr.dcm", blocked)
    pacs = dicomweb.DicomWeb(server.dicomweb_url)
    report = dicomweb.stow_results(pacs, out, folder, "salt", attempts=4, backoff_s=0.01)
    assert (report["stored"], report["retried"]) == (1, 2 + 3)
    assert [f["file"] for f in report["failed"]] == ["dicom/b_sr.dcm"]
    assert "HTTP 403" in report["failed"][0]["error"] and "4 tries" in report["failed"][0]["error"]
    assert server.find(SOPInstanceUID=pydicom.dcmread(good).SOPInstanceUID)
    ledger = json.loads((folder / dicomweb.LEDGER_FILE).read_text())
    assert list(ledger[server.dicomweb_url].values()) == ["dicom/a_sr.dcm"]
    assert pydicom.dcmread(good).SOPInstanceUID not in json.dumps(ledger)  # hashed
    again = dicomweb.stow_results(pacs, out, folder, "salt", attempts=1, backoff_s=0.01)
    assert (again["stored"], again["already_stored"], len(again["failed"])) == (0, 1, 1)
    assert not server.find(SOPInstanceUID=pydicom.dcmread(refused).SOPInstanceUID)


def test_pacs_down_during_stow_is_a_clear_error_and_the_rerun_sends_the_rest(orthanc_factory, tmp_path):  # noqa: F811
    server = orthanc_factory()
    out, folder = tmp_path / "out", tmp_path / "out" / "dicomweb"
    folder.mkdir(parents=True)
    files = [result_file(out, f"{i}.dcm", generate_uid()) for i in range(3)]
    pacs = dicomweb.DicomWeb(server.dicomweb_url)
    store, calls = pacs.store, []

    def store_then_die(path):
        if len(calls) == 1:
            server.stop(kill=True)
        calls.append(path)
        return store(path)

    pacs.store = store_then_die
    with pytest.raises(PacsUnreachable, match="refused or dropped"):
        dicomweb.stow_results(pacs, out, folder, "salt", attempts=2, backoff_s=0.01)
    server.start()
    report = dicomweb.stow_results(dicomweb.DicomWeb(server.dicomweb_url), out, folder, "salt")
    assert (report["stored"], report["already_stored"]) == (2, 1)
    assert len(server.instances()) == 3


# -------------------------------------------------------------------------------------------- command line
@pytest.mark.parametrize("argv, message", [
    (["--study", "1.2.3"], "--study need"),
    (["--dicomweb", "http://127.0.0.1:1/dicom-web"], "needs the studies"),
    (["--dicomweb", "http://127.0.0.1:1/dicom-web", "--study", "1.2", "scan.dcm"], "give no INPUT"),
    (["--dicomweb", "ftp://pacs/dicom-web", "--study", "1.2"], "not an http(s) URL"),
    (["--dicomweb", "http://127.0.0.1:1/dicom-web", "--query", "ModalitiesInStudy"], "give KEY=VALUE"),
])
def test_dicomweb_usage_errors_before_any_model_loads(argv, message, capsys, tmp_path):
    from pipeline.__main__ import main

    assert main(["infer", "--out", str(tmp_path / "out"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_run_json_holds_no_study_uid_query_value_or_password():
    argv = ["pipeline", "infer", "--dicomweb", "http://me:pw@pacs:8042/dicom-web", "--study", "1.2.840.99",
            "--study=1.2.840.98", "--query", "PatientID=MRN4711", "--stow-url=https://u:p@other/dw", "--stow"]
    text = " ".join(dicomweb.scrub_argv(argv, "salt"))
    assert not any(s in text for s in ("1.2.840.99", "1.2.840.98", "MRN4711", "pw@", ":p@", "me:"))
    assert "http://pacs:8042/dicom-web" in text and "PatientID=h_" in text and "https://other/dw" in text


# ------------------------------------------------------------------------------------------------ end to end
def referenced_sops(ds) -> set:
    return {str(e.value) for e in ds.iterall() if e.keyword == "ReferencedSOPInstanceUID"}


def test_the_samples_pulled_from_orthanc_get_their_report_and_map_back_in_their_study(orthanc_factory,  # noqa: F811
                                                                                       standin_models, tmp_path):
    """The 8 sample DICOMs (one study each) in a fresh Orthanc; two studies pulled, analysed and the results
    stored back with STOW-RS: Orthanc then holds, in each of those studies only, one SR and one map referencing
    that study's image. A rerun fetches nothing, analyses nothing, skips our own SR and map as not mammograms,
    and stores no duplicate."""
    server = orthanc_factory()
    samples = sample_dicom_paths()
    for path in samples:
        server.upload(path)
    chosen = [pydicom.dcmread(samples[i], stop_before_pixels=True) for i in (0, 3)]
    out, cfg = tmp_path / "out", load_config()
    engine = engine_for(out, standin_models, cfg)  # infer writes each DICOM input's SR and map (--dicom-out)
    studies = [str(ds.StudyInstanceUID) for ds in chosen]
    summary = infer_from_dicomweb(server.dicomweb_url, studies, {}, out, cfg, engine, stow_url=server.dicomweb_url,
                                  progress=False)
    assert (summary["done"], summary["failed"], summary["stow"]["stored"], summary["stow"]["failed"]) == (2, 0, 4, [])
    for ds in chosen:
        objects = server.find(StudyInstanceUID=str(ds.StudyInstanceUID))
        assert len(objects) == 3  # the image, its SR, its map
        results = {}
        for o in objects:
            obj = pydicom.dcmread(io.BytesIO(server.file(o["ID"])))
            results[str(obj.Modality)] = obj
        assert set(results) == {"MG", "SR", "SEG"}
        assert results["MG"].SOPInstanceUID == ds.SOPInstanceUID
        for kind in ("SR", "SEG"):
            assert referenced_sops(results[kind]) == {ds.SOPInstanceUID}, kind
            assert results[kind].SeriesInstanceUID != ds.SeriesInstanceUID  # a new series
    assert len(server.instances()) == 8 + 4  # nothing landed in the other six studies
    again = infer_from_dicomweb(server.dicomweb_url, studies, {}, out, cfg, engine, stow_url=server.dicomweb_url,
                                progress=False)
    assert (again["resumed"], again["dicomweb"]["fetched"], again["stow"]["stored"]) == (2, 0, 0)
    assert again["stow"]["already_stored"] == 4
    assert sorted(s["reason"].split(",")[0] for s in again["dicomweb"]["skipped"]) == [
        "a structured report (SOP class 1.2.840.10008.5.1.4.1.1.88.22)"] * 2 + ["modality SEG"] * 2
    assert len(server.instances()) == 12


def test_cli_pulls_a_study_and_writes_no_uid_or_password(orthanc, standin_models, tmp_path, monkeypatch,  # noqa: F811
                                                          capsys):
    """`pipeline infer --dicomweb URL --study UID --stow` through main(), the stand-in models in place of the
    bundle's: exit 0, the pull and STOW lines printed, run_summary.json's dicomweb section, and run.json without
    the study UID or the URL's password."""
    import contextlib

    from pipeline.__main__ import main
    from pipeline.models import PipelineModels

    monkeypatch.setattr(PipelineModels, "load", classmethod(lambda cls, bundle, cfg: contextlib.nullcontext(
        standin_models)))
    study = mg_study(2, seed=61)
    upload(orthanc, study)
    uid, out = study[0].StudyInstanceUID, tmp_path / "out"
    url = orthanc.dicomweb_url.replace("http://", "http://reader:s3cret@")
    argv = ["infer", "--dicomweb", url, "--study", uid, "--stow", "--out", str(out)]
    monkeypatch.setattr("sys.argv", ["pipeline", *argv])  # what run.json records
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"DICOMweb {orthanc.dicomweb_url}: 2 fetched" in printed and "STOW-RS" in printed
    summary = json.loads((out / "run_summary.json").read_text())
    assert (summary["done"], summary["dicomweb"]["fetched"], summary["stow"]["failed"]) == (2, 2, [])
    run = (out / "run.json").read_text()
    assert uid not in run and "s3cret" not in run and orthanc.dicomweb_url in run


def test_the_review_app_lists_and_opens_images_pulled_from_the_pacs(orthanc, standin_models, tmp_path):  # noqa: F811
    """Issue 21 item 4: an infer folder fed over DICOMweb is an ordinary run for `pipeline serve`: its worklist
    lists every pulled image, and the viewer's thumbnail and tiles decode the spooled instance."""
    fastapi = pytest.importorskip("fastapi")  # noqa: F841
    from fastapi.testclient import TestClient

    from pipeline.serve.app import create_app

    study = mg_study(2, seed=21)
    upload(orthanc, study)
    out, cfg = tmp_path / "out", load_config()
    summary = infer_from_dicomweb(orthanc.dicomweb_url, [study[0].StudyInstanceUID], {}, out, cfg,
                                  engine_for(out, standin_models, cfg), progress=False)
    assert summary["done"] == 2
    with TestClient(create_app([out]), base_url="http://localhost") as client:
        images = client.get("/api/images").json()["images"]
        assert len(images) == 2
        for image in images:
            info = client.get(f"/api/images/0/{image['image_id']}").json()
            assert (info["width"], info["height"]) == (study[0].Columns, study[0].Rows)
            thumb = client.get(f"/api/thumb/0/{image['image_id']}.jpg")
            assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
            tile = client.get(f"/api/tiles/0/{image['image_id']}/{info['max_level']}/0_0.jpg")
            assert tile.status_code == 200
