"""`pipeline infer --engine ray` on a real local Ray (2 worker actors): the same files as the single-process run,
and a killed worker or driver loses at most the images in flight; a rerun finishes the rest without redoing any."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import sample_dicom_paths
from mammo.synthetic import write_synthetic_dataset

REPO = Path(__file__).resolve().parent.parent


def test_without_ray_the_engine_says_how_to_install_it(monkeypatch):
    from mammo.errors import MammoError
    from pipeline.engine_ray import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: `import ray` raises ImportError
    with pytest.raises(MammoError, match="pip install -r requirements-ray.txt"):
        import_ray()


@pytest.fixture(scope="module")
def ray_installed():
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
            pytest.fail("ray is not installed (scripts/test.sh installs requirements-ray.txt in CI)")
        pytest.skip("ray is not installed (pip install -r requirements-ray.txt)")


def infer_cmd(folder, out, bundle, *extra):
    return [sys.executable, "-m", "pipeline", "infer", str(folder), "--out", str(out), "--models", str(bundle),
            *map(str, extra)]


def run(cmd, timeout=900):
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})


def good_images(root: Path, n: int, seed: int) -> Path:
    return write_synthetic_dataset(root / "data", n, seed=seed, n_lesions=1).parent / "images"


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> Path:
    """Synthetic PNGs, two files with one name in two subfolders (their ids depend on input order), a text file
    named .png, a truncated DICOM and one real full-size CBIS-DDSM DICOM."""
    from dicom_fixtures import write_dicom

    folder = good_images(tmp_path_factory.mktemp("mixed"), 5, seed=21)
    for sub in ("a", "b"):
        (folder / sub).mkdir()
        shutil.copy(next(folder.glob("*.png")), folder / sub / "scan.png")
    (folder / "notes.png").write_text("a text file named .png\n")
    cut = write_dicom(folder / "truncated.dcm", np.zeros((64, 64), np.uint16))
    cut.write_bytes(cut.read_bytes()[:-2000])
    real = sample_dicom_paths()[0]
    shutil.copy(real, folder / f"real_{real.name}")
    return folder


@pytest.mark.slow
def test_ray_with_two_workers_writes_what_the_single_process_run_writes(ray_installed, tiny_bundle, mixed_folder,
                                                                       tmp_path):
    listed = tmp_path / "list.csv"  # names an image no worker can see (as a path off the shared filesystem)
    listed.write_text(f"image\n{tmp_path / 'elsewhere' / 'scan.png'}\n")
    single, ray = tmp_path / "single", tmp_path / "ray"
    a = run(infer_cmd(mixed_folder, single, tiny_bundle, listed))
    b = run(infer_cmd(mixed_folder, ray, tiny_bundle, listed, "--engine", "ray", "--workers", 2))
    assert a.returncode == b.returncode == 1, (a.stderr[-2000:], b.stderr[-3000:])  # the bad files failed

    rows_a, rows_b = (list(csv.DictReader(open(d / "predictions.csv"))) for d in (single, ray))
    assert [r["source"] for r in rows_a] == [r["source"] for r in rows_b]  # same rows, same order
    unseen = rows_b.pop()
    assert unseen["status"] == "failed" and "not found on Ray node" in unseen["error"], unseen
    assert "file not found" in rows_a.pop()["error"]
    for ra, rb in zip(rows_a, rows_b):
        assert {k: v for k, v in ra.items() if k != "score"} == {k: v for k, v in rb.items() if k != "score"}
        assert (ra["score"] == rb["score"] == "") or abs(float(ra["score"]) - float(rb["score"])) <= 1e-6
    failed = {Path(r["source"]).name for r in rows_b if r["status"] == "failed"}
    assert failed == {"notes.png", "truncated.dcm"}
    ids = {Path(r["source"]).relative_to(mixed_folder).as_posix(): r["image_id"] for r in rows_b}
    assert ids["a/scan.png"] == "scan" and ids["b/scan.png"].startswith("scan_")  # first in input order keeps it
    fa, fb = (json.loads((d / "failures.json").read_text()) for d in (single, ray))
    assert fa[:-1] == fb[:-1] and fa[-1]["source"] == fb[-1]["source"] == unseen["source"]

    for r in rows_a:
        if r["status"] != "done":
            continue
        ja, jb = (json.loads((d / f"{r['image_id']}.json").read_text()) for d in (single, ray))
        assert ja.keys() == jb.keys()
        assert {k: v for k, v in ja.items() if k not in ("score", "lesions")} == \
               {k: v for k, v in jb.items() if k not in ("score", "lesions")}
        assert jb["score"] == pytest.approx(ja["score"], abs=1e-6)
        assert len(ja["lesions"]) == len(jb["lesions"])
        for la, lb in zip(ja["lesions"], jb["lesions"]):
            assert lb["box"] == pytest.approx(la["box"], abs=0.01)
            assert lb["malignancy"] == pytest.approx(la["malignancy"], abs=1e-5)  # rounded to 5 places in JSON
        for png in (ja["heatmap"], ja["overlay"]):
            pa, pb = (cv2.imread(str(d / png), cv2.IMREAD_UNCHANGED) for d in (single, ray))
            assert pa.shape == pb.shape and np.abs(pa.astype(int) - pb.astype(int)).max() <= 1, png

    sa, sb = (json.loads((d / "run_summary.json").read_text()) for d in (single, ray))
    for key in ("images", "done", "resumed", "failed", "skipped_not_images", "processed"):
        assert sa[key] == sb[key], key
    workers = sb["engine"]["per_worker"]
    assert len(workers) == 2 and all(w["pids"] and w["node"] for w in workers.values())
    assert sum(w["done"] + w["failed"] for w in workers.values()) == sb["images"]
    assert not [p for p in ray.iterdir() if "partial" in p.name]


def worker_pids(driver_pid: int) -> list[int]:
    """The InferWorker actor processes of the local Ray a driver started (Ray titles them 'ray::InferWorker')."""
    import psutil

    try:
        tree = psutil.Process(driver_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    pids = []
    for p in tree:
        try:
            if " ".join(p.cmdline()).startswith("ray::InferWorker"):
                pids.append(p.pid)
        except psutil.Error:
            pass
    return pids


def cpu_seconds(pid: int) -> float:
    import psutil

    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def wait_for(predicate, timeout=600, poll=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError("timed out")


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["worker", "driver"])
def test_killed_worker_or_driver_loses_only_images_in_flight(ray_installed, tiny_bundle, tmp_path, victim):
    folder = good_images(tmp_path, 24, seed=5)
    out = tmp_path / "out"
    cmd = infer_cmd(folder, out, tiny_bundle, "--engine", "ray", "--workers", 2)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    try:
        wait_for(lambda: len(list(out.glob("syn*.json"))) >= 3 or proc.poll() is not None)
        assert proc.poll() is None, "finished before the kill: give it more images"
        if victim == "worker":
            # the worker furthest along: both start together and load the same models, so the one that has used
            # more CPU is the one taking images (a worker still loading on a busy machine holds none, and killing
            # it once made this test fail with nothing lost)
            pid = max(wait_for(lambda: worker_pids(proc.pid)), key=cpu_seconds)
            os.kill(pid, signal.SIGKILL)
            _, err = proc.communicate(timeout=900)
            summary = json.loads((out / "run_summary.json").read_text())
            lost = sum(w["lost_in_flight"] for w in summary["engine"]["per_worker"].values())
            assert lost >= 1, "the killed worker had images in flight"
            rows = list(csv.DictReader(open(out / "predictions.csv")))
            assert len(rows) == 24  # nothing lost: every image is a row, retried ones done or failed
            died = [r for r in rows if r["status"] == "failed"]
            assert all("Ray worker died" in r["error"] for r in died), died
            assert proc.returncode == (1 if died else 0), err[-3000:]
        else:
            ray_children = worker_pids(proc.pid)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert not (out / "predictions.csv").exists()
            # the driver's actors die with it (Ray kills the actors of a dead driver): nothing keeps writing
            wait_for(lambda: not any(Path(f"/proc/{p}").exists() for p in ray_children), timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in out.glob("syn*.json")}
    rerun = run(cmd)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for name, mtime in done_before.items():
        assert (out / name).stat().st_mtime_ns == mtime, f"{name} was redone"
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 24 and all(r["status"] == "done" for r in rows)
    assert len({r["image_id"] for r in rows}) == 24 == len(list(out.glob("syn*.json")))
    assert json.loads((out / "run_summary.json").read_text())["resumed"] == len(done_before)
    assert not [p for p in out.iterdir() if "partial" in p.name]
