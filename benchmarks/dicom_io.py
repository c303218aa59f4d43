"""Where reading a DICOM and writing an image's PNGs spend their time, in this checkout or another one.

    python benchmarks/dicom_io.py [--tree DIR] [--repeats 5] [--images 8] [--levels 1 3 6]

Per sample DICOM (the embedded CBIS-DDSM sample, full-size RLE): `read_dicom` in all, its RLE decoding and its
grayscale conversion alone; then the writing of one image's outputs with one lesion-sized heat blob and one box:
the three-panel figure's rendering, and the PNG encoding of the heatmap and of the figure with OpenCV's default
settings and at each `--levels` (cv2.IMWRITE_PNG_COMPRESSION), with the file sizes. Medians over images x
repeats of the wall time and of the process CPU time (all threads): on the shared 2-core machine the wall time
follows the load, printed beside the figures. The SHA-256 of the read pixels and of the figure are printed so
that two checkouts can be compared bit for bit (`git archive COMMIT | tar -x -C /tmp/old`, then `--tree /tmp/old`).
"""
import argparse
import hashlib
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(fn, repeats: int) -> tuple[list[float], list[float], object]:
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return walls, cpus, out


def row(name: str, walls, cpus, extra: str = "") -> str:
    return (f"{name:34s} wall {statistics.median(walls) * 1e3:7.1f} ms   cpu {statistics.median(cpus) * 1e3:7.1f} ms"
            f"{extra}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", type=Path, default=ROOT, help="checkout whose mammo/ and pipeline/ are measured")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--levels", type=int, nargs="*", default=[1, 3, 6])
    args = p.parse_args()
    sys.path.insert(0, str(args.tree.resolve()))  # that checkout's packages, not this one's
    import mammo.runtime  # noqa: F401  (first, as in every entry point)

    import cv2
    import numpy as np

    from mammo import dicom
    from pipeline import render
    from pipeline.demo import sample_inputs
    from pipeline.heatmap import HeatmapCanvas

    repeats = max(1, min(args.repeats, 50))
    print(f"tree {args.tree.resolve()}; load average before {os.getloadavg()[0]:.1f}", flush=True)
    stages: dict[str, tuple[list, list]] = {}

    def add(name, walls, cpus):
        w, c = stages.setdefault(name, ([], []))
        w += walls
        c += cpus

    last = None
    for path in sample_inputs()[: max(1, args.images)]:
        dicom.read_dicom(path)  # warm the file cache and the imports
        walls, cpus, m = timed(lambda: dicom.read_dicom(path), repeats)
        add("read_dicom", walls, cpus)
        ds = dicom._read_dataset(Path(path), 10**9)
        rows, cols = int(ds.Rows), int(ds.Columns)
        walls, cpus, stored = timed(lambda: dicom._rle_frame(ds, Path(path), rows, cols), repeats)
        add("  RLE decoding", walls, cpus)
        params = dicom.grayscale_params(ds)
        walls, cpus, _ = timed(lambda: dicom.to_display(stored, params), repeats)
        add("  grayscale conversion", walls, cpus)
        digest = hashlib.sha256(m.pixels.tobytes()).hexdigest()[:16]
        print(f"{Path(path).name}: {rows} x {cols}, pixels sha256 {digest}", flush=True)
        last = m
    print(f"read, median over {len(stages['read_dicom'][0])} reads (load average now {os.getloadavg()[0]:.1f}):")
    for name, (walls, cpus) in stages.items():
        print(row(name, walls, cpus))

    # One image's outputs as infer writes them: the heatmap canvas at 1/4 with one lesion-sized blob, one box.
    canvas = HeatmapCanvas(last.shape, 4)
    h, w = canvas.shape
    yy, xx = np.mgrid[0:h, 0:w]
    blob = np.exp(-(((yy - 0.4 * h) / 40) ** 2 + ((xx - 0.5 * w) / 40) ** 2)).astype(np.float32)
    blob[blob < 1e-3] = 0
    canvas.pixels[:] = blob
    ys, xs = np.nonzero(blob)
    canvas.painted = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    box = [4.0 * xs.min(), 4.0 * ys.min(), 4.0 * xs.max(), 4.0 * ys.max()]

    def figure():
        return render.three_panels(last.pixels, canvas.pixels, [box], ["P 0.42"], "(score 0.42, threshold 0.30)")

    reps = repeats * 3
    print(f"write, median over {reps} (load average now {os.getloadavg()[0]:.1f}):")
    walls, cpus, fig = timed(figure, reps)
    print(row("render three-panel figure", walls, cpus, f"   {fig.shape[1]} x {fig.shape[0]}, sha256 "
                                                        f"{hashlib.sha256(fig.tobytes()).hexdigest()[:16]}"))
    heat16 = canvas.as_uint16()
    for name, image in (("heatmap", heat16), ("figure", fig)):
        for level in [None] + list(args.levels):
            params = [] if level is None else [cv2.IMWRITE_PNG_COMPRESSION, level]
            walls, cpus, (ok, buf) = timed(lambda: cv2.imencode(".png", image, params), reps)
            label = "default" if level is None else f"level {level}"
            print(row(f"encode {name} PNG, {label}", walls, cpus, f"   {len(buf) / 1e3:6.0f} kB"))
    print(f"load average after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
