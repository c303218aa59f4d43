"""The shipped classifier exported to ONNX and run with onnxruntime (classifier.inference_backend=onnx), against
the torch-backend path (classifier/backends.py): import time, per-batch times, and the largest differences of
predictions and Grad-CAM.

    pip install -r requirements-export.txt     # tf2onnx, for the export step
    python benchmarks/onnx_classifier.py [--model weights/classifier/model.keras] [--batches 1 10 32] [--repeats 5]

Each part runs in a fresh child process, so the import times are cold-process figures (torch is imported before
the clock starts in both, as in `infer`, where the detector has loaded it already):
1. export: classifier/export_onnx.py on a copy of the model (one graph, both outputs; why Grad-CAM needs no
   gradient there is said in that module).
2. torch: `MalignancyClassifier.load` and its backend's warm-up (the torch.jit trace), then `forward` and
   `predict_and_gradcam` per batch size, on crops of the sample DICOMs.
3. onnx: `import classifier.onnx_backend` (onnxruntime), one session, the same batches.
The load average is printed beside every timing (a shared 2-core machine: compare figures of one run).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the project root first


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def timed_batches(run, crops, batches, repeats) -> dict:
    out = {}
    for n in batches:
        x = crops[:n]
        run(x)  # first call of this shape
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            run(x)
            times.append(time.perf_counter() - t)
        out[n] = (statistics.median(times), os.getloadavg()[0])
    return out


def child_export(model_path: Path, out: Path) -> dict:
    """classifier/export_onnx.py on a copy of the model (it writes classifier.onnx beside model.keras)."""
    import shutil

    from classifier.export_onnx import export_onnx

    shutil.copyfile(model_path, out / "model.keras")
    t = time.perf_counter()
    export_onnx(out)
    return {"export_seconds": time.perf_counter() - t, "load": os.getloadavg()[0]}


def sample_crops(n: int):
    """n crops of the sample DICOMs at fixed boxes around each image's centre of mass (a real crop's content)."""
    import numpy as np

    from mammo.dicom import read_dicom
    from pipeline.demo import sample_inputs

    rng = np.random.default_rng(22)
    boxes, images = [], []
    for path in sample_inputs()[:2]:
        m = read_dicom(path)
        h, w = m.pixels.shape
        for _ in range(n // 2 + 1):
            cx, cy, side = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h, rng.uniform(100, 400)
            boxes.append((len(images), [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]))
        images.append(m.pixels)
    return images, boxes[:n]


def child_torch(model_path: Path, out: Path, batches, repeats) -> dict:
    import mammo.runtime as runtime

    runtime.use_keras_backend("torch")
    import numpy as np
    import torch  # noqa: F401  (the detector has it loaded already in `infer`: not counted)

    t = time.perf_counter()
    import keras  # noqa: F401  (on torch)
    from classifier.data import prepare
    from classifier.inference import MalignancyClassifier
    imported = time.perf_counter() - t
    t = time.perf_counter()
    clf = MalignancyClassifier.load(model_path)
    loaded = time.perf_counter() - t
    t = time.perf_counter()
    clf.warmup()
    warm = time.perf_counter() - t
    images, boxes = sample_crops(max(batches))
    crops = np.stack([clf.crop(images[i], b)[0] for i, b in boxes])
    x = prepare(crops, clf.clahe)
    np.save(out / "crops.npy", x)
    backend = clf.backend()
    probs, maps = backend.predict_and_gradcam(x)
    np.save(out / "torch_probs.npy", probs)
    np.save(out / "torch_maps.npy", maps)
    return {"import": imported, "load": loaded, "warmup": warm, "trace_error": backend.trace_error,
            "forward": timed_batches(backend.forward, x, batches, repeats),
            "gradcam": timed_batches(backend.predict_and_gradcam, x, batches, repeats)}


def child_onnx(out: Path, batches, repeats) -> dict:
    import numpy as np

    t = time.perf_counter()
    from classifier.onnx_backend import OnnxBackend
    imported = time.perf_counter() - t
    t = time.perf_counter()
    backend = OnnxBackend(out / "classifier.onnx")
    loaded = time.perf_counter() - t
    x = np.load(out / "crops.npy")
    probs, maps = backend.predict_and_gradcam(x)
    np.save(out / "onnx_probs.npy", probs)
    np.save(out / "onnx_maps.npy", maps)
    # one graph gives both outputs: the forward pass costs what the pass with Grad-CAM does
    return {"import": imported, "load": loaded,
            "gradcam": timed_batches(backend.predict_and_gradcam, x, batches, repeats)}


def run_child(part: str, args, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", part, "--dir", str(out), "--model", str(args.model), "--repeats",
           str(args.repeats), "--batches", *map(str, args.batches)]
    before = os.getloadavg()[0]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{part} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{part}: child process {time.perf_counter() - t:.1f} s (load {before:.1f} -> {os.getloadavg()[0]:.1f})",
          flush=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "weights" / "classifier" / "model.keras")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 10, 32])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--child", choices=["export", "torch", "onnx"], help=argparse.SUPPRESS)
    p.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.repeats = max(1, min(args.repeats, 100))
    args.batches = [max(1, min(b, 256)) for b in args.batches]
    if args.child:
        parts = {"export": lambda: child_export(args.model, args.dir),
                 "torch": lambda: child_torch(args.model, args.dir, args.batches, args.repeats),
                 "onnx": lambda: child_onnx(args.dir, args.batches, args.repeats)}
        print(json.dumps(parts[args.child]()))
        return

    import numpy as np

    with tempfile.TemporaryDirectory(prefix="onnx-classifier-") as tmp:
        out = Path(tmp)
        export = run_child("export", args, out)
        torch_r = run_child("torch", args, out)
        onnx_r = run_child("onnx", args, out)
        diffs = {name: float(np.abs(np.load(out / f"onnx_{name}.npy") - np.load(out / f"torch_{name}.npy")).max())
                 for name in ("probs", "maps")}
    print(f"\nexport (classifier/export_onnx.py, once): {export['export_seconds']:.0f} s ({load()})")
    failed = f"; trace failed: {torch_r['trace_error']}" if torch_r["trace_error"] else ""
    print(f"torch path: import keras + classifier {torch_r['import']:.2f} s, load {torch_r['load']:.2f} s, "
          f"warm-up (trace) {torch_r['warmup']:.2f} s{failed}")
    print(f"onnx path:  import onnxruntime {onnx_r['import']:.2f} s, session {onnx_r['load']:.2f} s")
    print("per batch, median (load average at the batch):")
    print(f"{'batch':>6} {'torch forward':>16} {'torch + Grad-CAM':>18} {'onnx, both outputs':>20}")
    for n in args.batches:
        cells = [torch_r["forward"][str(n)], torch_r["gradcam"][str(n)], onnx_r["gradcam"][str(n)]]
        print(f"{n:>6} " + " ".join(f"{s * 1e3:9.1f} ms ({l:.1f})".rjust(w) for (s, l), w in zip(cells, (16, 18, 20))))
    print(f"max |difference| onnx - torch on {max(args.batches)} sample crops: predictions {diffs['probs']:.2e}, "
          f"Grad-CAM maps {diffs['maps']:.2e}")
    print(load())


if __name__ == "__main__":
    main()
