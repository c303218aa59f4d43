"""What loading detector weights through detector/checkpoint.py costs, and that it changes nothing they predict.

    python benchmarks/safe_weights.py [--weights weights/detector.pt] [--repeats 5]

Loads the weights with ultralytics' own loader (torch.load with weights_only=False: only for the shipped file,
after checking it against weights/MANIFEST.sha256) and through the allow-list, and prints the median load time of
each, the time of the pickle check alone, and whether both models give the same boxes, scores and labels on the
8 sample DICOMs (at detector.conf=0.001 so that every image has boxes to compare).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the project root first

import mammo.runtime  # noqa: E402  (the first import of anything that may load a framework)

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402


def median_seconds(func, repeats: int) -> float:
    func()  # warm: imports and file cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=str(mammo.runtime.PROJECT_ROOT / "weights" / "detector.pt"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)

    from detector import checkpoint
    from detector.model import LesionDetector, use_ultralytics
    from mammo.config import load_config
    from mammo.imaging import read_mammogram
    from pipeline.demo import sample_inputs
    from pipeline.models import read_bundle

    weights = Path(args.weights)
    bundle = read_bundle(weights.parent, require_manifest=True)  # refuses anything but the verified shipped file
    cfg = load_config(None, bundle.config_overrides + ["detector.conf=0.001"])
    mammo.runtime.configure_ultralytics()
    from ultralytics import YOLO
    from ultralytics.nn import tasks

    tasks.SAFE_LOAD = False  # ultralytics' default loader, as before detector/checkpoint.py
    unsafe = median_seconds(lambda: YOLO(str(weights)), args.repeats)
    reference = LesionDetector(YOLO(str(weights)), cfg.detector)
    reference.warmup()
    check = median_seconds(lambda: checkpoint.check_file(weights), args.repeats)
    use_ultralytics()
    safe = median_seconds(lambda: YOLO(str(weights)), args.repeats)
    same, boxes = True, 0
    with LesionDetector.load(weights, cfg.detector) as det:
        for path in sample_inputs():
            image = read_mammogram(path)
            a, b = reference.predict(image), det.predict(image)
            same &= [(d.box, d.score, d.label) for d in a] == [(d.box, d.score, d.label) for d in b]
            boxes += len(a)
    result = {"weights": str(weights), "load_seconds_ultralytics_unsafe": round(unsafe, 3),
              "load_seconds_allow_list": round(safe, 3), "pickle_check_seconds": round(check, 3),
              "images": len(sample_inputs()), "boxes": boxes, "identical_predictions": same}
    print(json.dumps(result, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
