"""Warm time of the global branch (digital mammograms) on the full-size sample DICOMs, with the shipped bundle:
square resize, both views through the network, the saliency pasted onto the heatmap canvas.

    python benchmarks/digital_branch_time.py [--repeats 2] [--backend onnx|torch|tensorflow]

The backend is classifier.inference_backend: onnx (the default) runs the exported global/model.onnx, the others
the keras model on that framework.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mammo.config import load_config  # noqa: E402
from mammo.imaging import read_mammogram  # noqa: E402
from pipeline.demo import sample_inputs  # noqa: E402
from pipeline.infer import StepTimer, analyse_globally  # noqa: E402
from pipeline.models import PipelineModels, read_bundle  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, choices=range(1, 11), metavar="1..10")
    parser.add_argument("--backend", default="onnx", choices=("onnx", "torch", "tensorflow"))
    args = parser.parse_args()
    cfg = load_config(overrides=["pipeline.domain=digital", f"classifier.inference_backend={args.backend}"])
    t0 = time.perf_counter()
    models = PipelineModels.load(read_bundle(Path(__file__).resolve().parent.parent / "weights",
                                             require_manifest=True), cfg)
    print(f"models loaded in {time.perf_counter() - t0:.1f} s")
    route = models.domains["digital"]
    images = [read_mammogram(p) for p in sample_inputs()[:4]]
    times = []
    for repeat in range(args.repeats):
        for m in images:
            t = time.perf_counter()
            analyse_globally(m, route, cfg, StepTimer())
            times.append(time.perf_counter() - t)
    warm = sorted(times[len(images):] or times[1:])
    model = type(route.branch.get().model).__name__
    print(f"backend {args.backend} ({model}); global branch per full-size image, warm: median "
          f"{1000 * warm[len(warm) // 2]:.0f} ms (min {1000 * warm[0]:.0f}, max {1000 * warm[-1]:.0f}; "
          f"{len(warm)} runs; first {1000 * times[0]:.0f} ms)")


if __name__ == "__main__":
    main()
