"""`pipeline listen`: a storage SCP that spools, analyses and forwards, driven by pynetdicom's own SCU.

The listener runs with stand-in models of known output (tests/standins.py), in a thread of the test, or (kill
and restart) in a child process. The destination is a second pynetdicom SCP in the test, which can refuse.
"""
import json
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from conftest import sample_dicom_paths
from dicom_fixtures import write_dicom
from mammo.config import load_config
from mammo.errors import MammoError
from mammo.synthetic import synthetic_mammogram
from pipeline.dicomnode import listener as listener_module
from pipeline.dicomnode.listener import JOURNAL, STATUS, Listener
from orthanc_server import orthanc  # noqa: F401  (a real Orthanc, skipped with the reason where it is missing)

REPO = Path(__file__).resolve().parent.parent
SENDER = "MODALITY"
STANDINS = """
import mammo.runtime, sys, time
sys.path.insert(0, 'tests')
from mammo.config import load_config
from pipeline.dicomnode.listener import listen
from standins import standin_pipeline_models
models = standin_pipeline_models()
if {slow}:  # an analysis that takes long enough to be killed in
    yolo = models.detector.yolo
    predict = yolo.predict
    yolo.predict = lambda *a, **k: (print('analysing', flush=True), time.sleep(600), predict(*a, **k))[-1]
listen(load_config(overrides={overrides!r}), models, {out!r}, on_ready=lambda port: print('port', port, flush=True))
"""


def mammogram_dicom(path, seed=1, **attributes):
    """A small synthetic MG For Presentation image with one bright disc (the stand-in detector boxes it)."""
    m, _ = synthetic_mammogram(seed, shape=(256, 192), n_lesions=1)
    study = dict(StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid(), StudyDate="20200101",
                 StudyTime="120000", SeriesNumber=1, InstanceNumber=1, Manufacturer="test")  # results go in its study
    return write_dicom(path, np.round(m.pixels * 4095).astype(np.uint16), bits_stored=12,
                       PatientName="DOE^JANE", PatientID="MRN12345", **{**study, **attributes})


def listen_config(*overrides):
    return load_config(overrides=["listen.port=0", f"listen.allowed_calling=[{SENDER}]", "listen.store_backoff=0.05",
                                  *overrides])


@contextmanager
def running(cfg, models, out):
    """A listener in a thread of this process; yields it once it listens (its port in `.port`)."""
    lines, ready, errors = [], threading.Event(), []
    listener = Listener(cfg, models, out, log=lines.append)
    listener.lines = lines

    def run():
        try:
            listener.run(on_ready=lambda port: ready.set())
        except Exception as exc:  # noqa: BLE001  (reported by the test)
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(60) and not errors, errors
    try:
        yield listener
    finally:
        listener.stop.set()
        thread.join(60)
    assert not errors, errors


def send(port, paths, calling=SENDER, called="MAMMO_CAD", check=None):
    """C-STORE each file with pynetdicom's SCU; the statuses (None: association not established). `check(i)` runs
    right after the i-th answer, before the next send."""
    from pynetdicom import AE

    datasets = [pydicom.dcmread(p) for p in paths]
    ae = AE(ae_title=calling)
    for sop_class, syntax in {(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in datasets}:
        ae.add_requested_context(sop_class, [syntax])  # one context each: the acceptor picks one syntax of a list
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return None, assoc
    statuses = []
    try:
        for i, ds in enumerate(datasets):
            statuses.append(assoc.send_c_store(ds).Status)
            if check:
                check(i)
    finally:
        assoc.release()
    return statuses, assoc


def wait_for(condition, timeout=120, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def events(out, event=None):
    lines = (out / JOURNAL).read_text().splitlines() if (out / JOURNAL).is_file() else []
    records = [json.loads(line) for line in lines]
    return [r for r in records if event is None or r["event"] == event]


def test_a_real_sample_is_spooled_before_success_then_analysed(standin_models, tmp_path):
    """The CBIS-DDSM sample (RLE, 10 MB) over pynetdicom: when Success comes back, the image is already in the
    spool (byte for byte as sent) and journalled; then its result JSON appears, named by an anonymous id, and no
    name, log line or journal entry carries the patient's identifiers."""
    sample = sample_dicom_paths()[0]
    out = tmp_path / "out"
    seen = []
    with running(listen_config(), standin_models, out) as listener:
        def spooled_at_answer(i):  # the answer is in: the spool and the journal must already hold the image
            seen.append((sorted(p.name for p in (out / "spool").glob("*.dcm")), len(events(out, "received"))))

        statuses, _ = send(listener.port, [sample], check=spooled_at_answer)
        assert statuses == [0x0000]
        assert seen and len(seen[0][0]) == 1 and seen[0][1] == 1, seen
        spooled = out / "spool" / seen[0][0][0]
        kept, sent = pydicom.dcmread(spooled), pydicom.dcmread(sample)
        assert kept.SOPInstanceUID == sent.SOPInstanceUID and kept.PixelData == sent.PixelData  # RLE, as sent
        results = wait_for(lambda: list(out.glob("img_*.json")), what="the result JSON")
        wait_for(lambda: events(out, "stored"), what="the stored event")
    result = json.loads(results[0].read_text())
    assert (result["width"], result["height"]) == (2864, 4432) and result["source"] == str(spooled)
    assert pydicom.dcmread(spooled, stop_before_pixels=True).Modality == "MG"
    status = json.loads((out / STATUS).read_text())
    assert status["this_start"]["received"] == 1 and status["this_start"]["analysed"] == 1
    assert status["latency_seconds"]["images"] == 1 and status["latency_seconds"]["median"] > 0
    ds = pydicom.dcmread(sample, stop_before_pixels=True)
    secrets = {str(ds.PatientName), str(ds.PatientID), str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)} - {""}
    written = " ".join([*(p.name for p in out.rglob("*")), *listener.lines, (out / JOURNAL).read_text(),
                        (out / STATUS).read_text(), (out / "predictions.csv").read_text()])
    assert not [s for s in secrets if s in written]


def test_a_failed_spool_write_is_answered_with_a_failure_status(standin_models, tmp_path, monkeypatch):
    out = tmp_path / "out"
    image = mammogram_dicom(tmp_path / "a.dcm")

    def disk_full(path, data):
        raise OSError(28, "No space left on device")

    with running(listen_config(), standin_models, out) as listener:
        monkeypatch.setattr(listener_module, "write_durably", disk_full)
        statuses, _ = send(listener.port, [image])
        assert statuses == [0xA700]  # Out of Resources: the sender keeps the image
        monkeypatch.undo()
        assert send(listener.port, [image])[0] == [0x0000]  # space again: the same image is taken
        wait_for(lambda: events(out, "stored"), what="the analysis")
    assert len(events(out, "received")) == 1


def test_an_object_over_the_size_limit_is_refused_and_the_next_one_taken(standin_models, tmp_path):
    """listen.max_object_mb bounds what one C-STORE may leave on the disk: a 2.2 MB image against a 1 MB limit is
    answered Out of Resources, kept nowhere, and logged without identifiers; a small one on the same association is
    taken. The limit is checked when the config loads."""
    rng = np.random.default_rng(0)
    big = write_dicom(tmp_path / "big.dcm", rng.integers(0, 4096, (1100, 1000), dtype=np.uint16), bits_stored=12,
                      PatientName="DOE^JANE", PatientID="MRN12345", StudyInstanceUID=generate_uid())
    assert big.stat().st_size > 2 * 2**20
    out = tmp_path / "out"
    with running(listen_config("listen.max_object_mb=1"), standin_models, out) as listener:
        statuses, _ = send(listener.port, [big, mammogram_dicom(tmp_path / "small.dcm")])
        assert statuses == [0xA700, 0x0000]
        wait_for(lambda: events(out, "stored"), what="the small image's analysis")
    assert len(events(out, "received")) == 1 and len(list((out / "spool").glob("*.dcm"))) == 1
    (line,) = [line for line in listener.lines if "refused an object of" in line]
    assert "larger than listen.max_object_mb=1" in line and "MRN12345" not in line and "DOE" not in line
    assert json.loads((out / STATUS).read_text())["this_start"]["too_large"] == 1
    for bad in ("0", "5000"):
        with pytest.raises(Exception, match="listen.max_object_mb"):
            load_config(overrides=[f"listen.max_object_mb={bad}"])


def test_an_unknown_calling_ae_title_is_rejected(standin_models, tmp_path):
    out = tmp_path / "out"
    with running(listen_config(), standin_models, out) as listener:
        statuses, assoc = send(listener.port, [mammogram_dicom(tmp_path / "a.dcm")], calling="INTRUDER")
        assert statuses is None and assoc.is_rejected
        statuses, assoc = send(listener.port, [mammogram_dicom(tmp_path / "b.dcm")], called="SOMEONE_ELSE")
        assert statuses is None and assoc.is_rejected
        assert send(listener.port, [tmp_path / "a.dcm"])[0] == [0x0000]  # the allowed sender gets in
        wait_for(lambda: events(out, "stored"), what="the analysis")
    assert listener.counts["rejected_associations"] == 2 and not list(out.glob("spool/*.partial*"))
    assert len(list((out / "spool").glob("*.dcm"))) == 1
    assert any("INTRUDER" in line and "rejected" in line for line in listener.lines)


def test_non_mammograms_are_skipped_with_a_reason(standin_models, tmp_path):
    from pydicom.data import get_testdata_file

    ct, sr = get_testdata_file("CT_small.dcm"), get_testdata_file("test-SR.dcm")
    mg_as_ct = mammogram_dicom(tmp_path / "ct_modality.dcm", Modality="CT")  # a mammogram SOP class, modality CT
    out = tmp_path / "out"
    with running(listen_config(), standin_models, out) as listener:
        statuses, _ = send(listener.port, [ct, sr, mg_as_ct, mammogram_dicom(tmp_path / "mg.dcm")])
        assert statuses == [0x0000] * 4
        wait_for(lambda: events(out, "stored"), what="the mammogram's analysis")
    skipped = events(out, "skipped")
    assert [r["reason"] for r in skipped] == [
        "CT Image Storage is not a mammogram image (modality CT)",
        "Comprehensive SR Storage is not a mammogram image (modality SR)",
        "modality CT is not MG (Digital Mammography X-Ray Image Storage - For Presentation)"]
    assert len(list((out / "spool").glob("*.dcm"))) == 1 and len(list(out.glob("img_*.json"))) == 1
    status = json.loads((out / STATUS).read_text())
    assert [s["reason"] for s in status["skipped"]] == [r["reason"] for r in skipped]


def test_bad_listen_settings_are_refused_before_anything_listens(standin_models, tmp_path):
    with pytest.raises(MammoError, match="allowed_calling is empty"):
        Listener(load_config(), standin_models, tmp_path)
    with pytest.raises(Exception, match="listen.destination"):
        load_config(overrides=["listen.destination=somewhere"])
    with pytest.raises(MammoError, match="no DICOM results would be written"):  # nothing to store there
        Listener(listen_config("listen.destination=PACS@127.0.0.1:104", "pipeline.source_paths=hashed"),
                 standin_models, tmp_path)
    with pytest.raises(Exception, match=r"listen.allowed_calling\[0\]"):
        load_config(overrides=["listen.allowed_calling=['BACK\\\\SLASH']"])
    result = subprocess.run([sys.executable, "-m", "pipeline", "listen", "--out", str(tmp_path / "o"), "--allow",
                             "A", "--destination", "PACS@127.0.0.1:70000"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and "port 70000 is out of range" in result.stderr


@contextmanager
def destination_scp(refuse=0):
    """A second storage SCP (AE title DEST) that keeps what it receives; it answers the first `refuse` C-STOREs
    with Out of Resources (refuse=-1: all of them)."""
    from types import SimpleNamespace

    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

    peer = SimpleNamespace(got=[], calls=0)

    def on_store(event):
        peer.calls += 1
        if refuse < 0 or peer.calls <= refuse:
            return 0xA700
        peer.got.append(event.dataset)
        return 0x0000

    ae = AE(ae_title="DEST")
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    peer.port = server.server_address[1]
    try:
        yield peer
    finally:
        server.shutdown()


def check_forwarded(got, image):
    """The SR and the heatmap object of `image` arrived: its study, referencing its SOP instance."""
    sent = pydicom.dcmread(image, stop_before_pixels=True)
    assert sorted(ds.SOPClassUID.name for ds in got) == ["Enhanced SR Storage", "Segmentation Storage"], got
    for ds in got:
        assert ds.StudyInstanceUID == sent.StudyInstanceUID and ds.SeriesInstanceUID != sent.SeriesInstanceUID
        assert sent.SOPInstanceUID in str(ds)  # referenced (SR content, segmentation's source image)


def test_results_are_stored_at_the_destination_after_refusals(standin_models, tmp_path):
    image = mammogram_dicom(tmp_path / "a.dcm")
    out = tmp_path / "out"
    with destination_scp(refuse=2) as dest:
        cfg = listen_config(f"listen.destination=DEST@127.0.0.1:{dest.port}")
        with running(cfg, standin_models, out) as listener:
            assert send(listener.port, [image])[0] == [0x0000]
            wait_for(lambda: events(out, "stored"), what="the results at the destination")
    failures = events(out, "store_failed")
    assert [f["attempt"] for f in failures] == [1, 2] and all("0xa700" in f["reason"] for f in failures)
    check_forwarded(dest.got, image)
    assert sum("store try" in line and "failed" in line for line in listener.lines) == 2
    status = json.loads((out / STATUS).read_text())
    assert status["this_start"]["store_failures"] == 2 and status["not_stored"] == []


def test_a_destination_that_keeps_refusing_is_reported_and_retried_at_the_next_start(standin_models, tmp_path):
    image = mammogram_dicom(tmp_path / "a.dcm")
    out = tmp_path / "out"
    with destination_scp(refuse=-1) as dest:
        cfg = listen_config(f"listen.destination=DEST@127.0.0.1:{dest.port}", "listen.store_attempts=3")
        with running(cfg, standin_models, out) as listener:
            assert send(listener.port, [image])[0] == [0x0000]
            wait_for(lambda: len(events(out, "store_failed")) == 3, what="three refused tries")
            time.sleep(0.5)  # no fourth try
        assert dest.calls == 3 and not dest.got
    status = json.loads((out / STATUS).read_text())
    assert len(status["not_stored"]) == 1 and "0xa700" in status["not_stored"][0]["reason"]
    assert any("NOT stored after 3 tries" in line for line in listener.lines)
    with destination_scp() as dest:  # the destination works again: the next start stores them
        cfg = listen_config(f"listen.destination=DEST@127.0.0.1:{dest.port}")
        with running(cfg, standin_models, out):
            wait_for(lambda: events(out, "stored"), what="the results stored at the next start")
    check_forwarded(dest.got, image)
    assert len(events(out, "started")) == 1  # not analysed again
    assert json.loads((out / STATUS).read_text())["not_stored"] == []


def start_child(out, overrides, slow):
    code = STANDINS.format(slow=slow, overrides=overrides, out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("port "):
            return proc, int(line.split()[1])
    raise AssertionError(f"the listener did not start (exit code {proc.wait()})")


@pytest.mark.slow  # two child processes importing torch and keras
def test_a_listener_killed_mid_analysis_resumes_it_at_restart(tmp_path):
    image = mammogram_dicom(tmp_path / "a.dcm")
    out = tmp_path / "out"
    with destination_scp() as dest:
        overrides = ["listen.port=0", f"listen.allowed_calling=[{SENDER}]",
                     f"listen.destination=DEST@127.0.0.1:{dest.port}"]
        proc, port = start_child(out, overrides, slow=True)
        try:
            assert send(port, [image])[0] == [0x0000]
            for line in proc.stdout:  # the analysis is under way (the stand-in detector sleeps in it)
                if line.strip() == "analysing":
                    break
        finally:
            proc.kill()
            proc.wait()
        assert len(events(out, "started")) == 1 and not events(out, "analysed") and not list(out.glob("img_*.json"))
        proc, port = start_child(out, overrides, slow=False)
        try:
            wait_for(lambda: events(out, "stored"), what="the resumed analysis stored", timeout=600)
            proc.terminate()  # SIGTERM: a clean stop
            assert proc.wait(60) == 0
        finally:
            proc.kill()
    assert len(events(out, "received")) == 1 and len(events(out, "started")) == 2
    assert len(list(out.glob("img_*.json"))) == 1
    check_forwarded(dest.got, image)


@pytest.mark.slow  # two child processes importing torch and keras
def test_a_listener_that_keeps_nothing_cleans_its_spool_and_a_restart_resumes_what_it_left(tmp_path):
    """listen.keep_received=false, in a real listener process: an image is deleted from the spool once its results
    are stored. Killed, it left an image spooled but never journalled and a half-written temporary copy: the next
    start analyses the image (then deletes it) and removes the temporary file."""
    out = tmp_path / "out"
    overrides = ["listen.port=0", f"listen.allowed_calling=[{SENDER}]", "listen.keep_received=false"]
    proc, port = start_child(out, overrides, slow=False)
    try:
        assert send(port, [mammogram_dicom(tmp_path / "a.dcm")])[0] == [0x0000]
        wait_for(lambda: events(out, "stored"), what="the first image's results", timeout=600)
        wait_for(lambda: not list((out / "spool").glob("*.dcm")), what="the first image deleted from the spool")
    finally:
        proc.kill()
        proc.wait()
    spool = out / "spool"
    mammogram_dicom(spool / "0123456789abcdef.dcm", seed=2)  # copied, then killed before the journal said so
    (spool / ".fedcba9876543210.x1y2.partial.dcm").write_bytes(b"\0" * 100)  # killed mid-copy
    proc, port = start_child(out, overrides, slow=False)
    try:
        wait_for(lambda: len(events(out, "stored")) == 2, what="the resumed image's results", timeout=600)
        wait_for(lambda: not any(spool.iterdir()), what="an empty spool")
        proc.terminate()
        assert proc.wait(60) == 0
    finally:
        proc.kill()
    assert len(list(out.glob("img_*.json"))) == 2 and len(events(out, "started")) == 2


def test_orthanc_sends_a_study_by_c_store_and_gets_the_results_back(orthanc, standin_models, tmp_path):
    """A real PACS: the sample stored into Orthanc is sent to the listener by Orthanc's own C-STORE (REST
    /modalities/<name>/store), and the listener's SR and heatmap object arrive back in Orthanc, in the study,
    referencing the image (found through Orthanc's REST API)."""
    sample = sample_dicom_paths()[0]
    sent = pydicom.dcmread(sample, stop_before_pixels=True)
    stored = orthanc.upload(sample)
    out = tmp_path / "out"
    cfg = listen_config(f"listen.allowed_calling=[{orthanc.aet}]",
                        f"listen.destination={orthanc.aet}@127.0.0.1:{orthanc.dicom_port}")
    with running(cfg, standin_models, out) as listener:
        orthanc.add_modality("CAD", "MAMMO_CAD", "127.0.0.1", listener.port)
        answer = orthanc.session.post(f"{orthanc.url}/modalities/CAD/store", timeout=300,
                                      json={"Resources": [stored["ParentStudy"]], "Synchronous": True})
        answer.raise_for_status()
        wait_for(lambda: events(out, "stored"), what="the results stored back into Orthanc", timeout=600)
    found = orthanc.find("Instance", StudyInstanceUID=sent.StudyInstanceUID)
    kinds = sorted(orthanc.tags(i["ID"])["SOPClassUID"] for i in found)
    assert kinds == sorted([sent.SOPClassUID, "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.66.4"])
    for instance in found:
        if orthanc.tags(instance["ID"])["SOPClassUID"] != sent.SOPClassUID:
            back = pydicom.dcmread(__import__("io").BytesIO(orthanc.file(instance["ID"])))
            assert sent.SOPInstanceUID in str(back)  # the report and the map reference the image
    assert json.loads((out / STATUS).read_text())["latency_seconds"]["images"] == 1


def test_a_failed_analysis_is_retried_at_each_start_then_given_up_and_reported(standin_models, tmp_path):
    """A mammogram the reader refuses (two frames: tomosynthesis is not supported) is a failed analysis, kept in
    the spool and retried at the next start, until listen.analysis_attempts analyses were started."""
    frames = np.zeros((2, 64, 64), np.uint16)
    image = write_dicom(tmp_path / "tomo.dcm", frames, PatientID="MRN12345")
    out = tmp_path / "out"
    cfg = listen_config("listen.analysis_attempts=2")
    with running(cfg, standin_models, out) as listener:
        assert send(listener.port, [image])[0] == [0x0000]
        wait_for(lambda: events(out, "failed"), what="the failed analysis")
    assert "multi-frame" in events(out, "failed")[0]["reason"]
    with running(cfg, standin_models, out):
        wait_for(lambda: len(events(out, "failed")) == 2, what="the retry at the next start")
    with running(cfg, standin_models, out) as third:
        time.sleep(1)
    assert len(events(out, "started")) == 2  # given up: not started a third time
    status = json.loads((out / STATUS).read_text())
    assert len(status["given_up"]) == 1 and "multi-frame" in status["given_up"][0]["reason"]
    assert any("given up after 2 analyses" in line for line in third.lines)
    assert len(list((out / "spool").glob("*.dcm"))) == 1  # never deleted
    rows = (out / "predictions.csv").read_text().splitlines()
    assert len(rows) == 2 and ",failed," in rows[1]


def test_results_reach_orthanc_by_stow_rs(orthanc, standin_models, tmp_path):
    """The other kind of destination: the results stored into Orthanc's DICOMweb plugin by STOW-RS."""
    image = mammogram_dicom(tmp_path / "a.dcm", seed=5)
    sent = pydicom.dcmread(image, stop_before_pixels=True)
    out = tmp_path / "out"
    with running(listen_config(f"listen.destination={orthanc.dicomweb_url}"), standin_models, out) as listener:
        assert send(listener.port, [image])[0] == [0x0000]
        wait_for(lambda: events(out, "stored"), what="the results stored by STOW-RS")
    found = orthanc.find("Instance", StudyInstanceUID=sent.StudyInstanceUID)
    assert sorted(orthanc.tags(i["ID"])["SOPClassUID"] for i in found) == [
        "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.22"]  # segmentation, Enhanced SR


def test_images_the_listener_received_open_in_the_review_app(standin_models, tmp_path):
    """The listener's folder is a run folder: the review app, under a real server, lists the received images and
    shows their pixels (tiles and thumbnail decoded from the spooled DICOMs, equal to what was sent) and
    heatmaps, naming no spool path or patient."""
    import cv2
    import requests

    pytest.importorskip("fastapi")
    from live_server import serving
    from pipeline.serve.app import create_app

    images = [mammogram_dicom(tmp_path / f"{i}.dcm", seed=i) for i in (1, 2)]
    out = tmp_path / "out"
    with running(listen_config(), standin_models, out) as listener:
        assert send(listener.port, images)[0] == [0x0000] * 2
        wait_for(lambda: len(events(out, "stored")) == 2, what="both analyses")
    sent = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p).pixel_array for p in images}
    by_id = {json.loads(p.read_text())["image_id"]: pydicom.dcmread(json.loads(p.read_text())["source"])
             for p in out.glob("img_*.json")}
    with serving(create_app([out])) as base:
        listed = requests.get(f"{base}/api/images", timeout=30).json()["images"]
        assert sorted(r["image_id"] for r in listed) == sorted(by_id)
        page = requests.get(base, timeout=30).text
        for image_id, spooled in by_id.items():
            assert f'data-href="/view/0/{image_id}"' in page
            assert requests.get(f"{base}/view/0/{image_id}", timeout=30).status_code == 200
            info = requests.get(f"{base}/api/images/0/{image_id}", timeout=30).json()
            assert (info["width"], info["height"]) == (192, 256)
            tile = requests.get(f"{base}/api/tiles/0/{image_id}/{info['max_level']}/0_0.jpg", timeout=30)
            assert tile.status_code == 200
            shown = cv2.imdecode(np.frombuffer(tile.content, np.uint8), cv2.IMREAD_GRAYSCALE).astype(float)
            original = sent[spooled.SOPInstanceUID].astype(float)
            assert shown.shape == original.shape and np.corrcoef(shown.ravel(), original.ravel())[0, 1] > 0.99
            for url in (f"/api/thumb/0/{image_id}.jpg", f"/api/heatmap/0/{image_id}.png"):
                assert requests.get(base + url, timeout=30).status_code == 200, url
        said = page + json.dumps(listed)
        assert str(out / "spool") not in said and "MRN12345" not in said and "DOE" not in said
