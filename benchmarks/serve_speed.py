"""Measure `python -m pipeline serve`: worklist load on a 200-image run, opening a full-size DICOM in the viewer,
upload to result, and the server's memory with the models loaded. Prints one table.

    python benchmarks/serve_speed.py [--run RUN_DIR] [--images 200] [--models DIR]

The run: `pipeline infer` on the embedded sample (8 real CBIS-DDSM DICOMs, the shipped models), written once to
runs/.cache/serve-bench/sample, then copied to 200 results (JSON rewritten with new ids, heatmaps hard-linked,
sources still the full-size DICOMs). The server is the real command in a child process; the browser is Debian's
chromium driven by Playwright (its rows are skipped when chromium is absent).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the project root first

import mammo.runtime  # noqa: E402  (the first import of anything that may load a framework)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import httpx  # noqa: E402

from mammo.runtime import CACHE_DIR, PROJECT_ROOT  # noqa: E402
from pipeline.demo import sample_inputs  # noqa: E402
from pipeline.results import read_results, write_result  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def sample_run(models) -> Path:
    out = CACHE_DIR / "serve-bench" / "sample"
    if not (out / "predictions.csv").is_file():
        cmd = [sys.executable, "-m", "pipeline", "infer", "--out", str(out)] + (["--models", models] if models else [])
        subprocess.run(cmd, cwd=PROJECT_ROOT, check=True)
    return out


def big_run(sample: Path, n: int, out: Path) -> Path:
    """`n` results made from the sample's: the sample's own, then copies with new ids (same sources, heatmaps
    hard-linked)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    results = read_results(sample)
    shutil.copyfile(sample / "fingerprint.json", out / "fingerprint.json")  # uploads analyse under the same models
    for i in range(n):
        r = results[i % len(results)]
        image_id, overlay = (r.image_id, r.overlay) if i < len(results) else (f"bench{i:04d}", "")
        copy = dataclasses.replace(r, image_id=image_id, overlay=overlay, heatmap=f"{image_id}_heatmap.png")
        os.link(sample / r.heatmap, out / copy.heatmap)
        write_result(out, copy)
    return out


THUMBS_IN_VIEW_LOADED = """() => Array.from(document.querySelectorAll('img.thumb'))
    .filter(i => i.getBoundingClientRect().top < innerHeight)
    .every(i => i.complete && i.naturalWidth > 0)"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="an infer run folder to replicate (default: the embedded sample's)")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--models", help="model bundle (default: the shipped one)")
    ap.add_argument("--screenshot", help="also save the viewer on the sample's image with the most boxes here "
                                         "(PNG, 256 colours: the README's docs/serve.png)")
    args = ap.parse_args(argv)
    sample = Path(args.run) if args.run else sample_run(args.models)
    run = big_run(sample, args.images, CACHE_DIR / "serve-bench" / f"run{args.images}")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "pipeline", "serve", str(run), "--port", str(port)]
    cmd += ["--models", args.models] if args.models else []
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    figures = {}
    try:
        while True:
            try:
                if httpx.get(base + "/api/images", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
            if proc.poll() is not None:
                raise SystemExit("the server exited; run the command by hand to see why: " + " ".join(cmd))
        figures["server start-up, models loaded (s)"] = time.perf_counter() - t0
        figures["server memory after start-up, VmRSS (MB)"] = rss_mb(proc.pid)
        with httpx.Client(base_url=base, timeout=120) as c:
            figures[f"worklist HTML, {args.images} images, server side (ms, median of 10)"] = median_ms(
                lambda: c.get("/").raise_for_status(), 10)
            figures.update(browser_figures(base, run, args.screenshot))
            # three sample DICOMs in turn: the first with boxes also traces the classifier's graphs (a one-off)
            for k, dicom in enumerate(sample_inputs()[-3:][::-1], start=1):
                t0 = time.perf_counter()
                job = c.post("/api/upload", files={"file": ("scan.dcm", dicom.read_bytes())}).json()
                while job["status"] not in ("done", "failed"):
                    time.sleep(0.05)
                    job = c.get(f"/api/jobs/{job['id']}").json()
                assert job["status"] == "done", job
                n = len(c.get(f"/api/images/0/{job['image_id']}").json()["lesions"])
                figures[f"upload {k} of a full-size DICOM to result ({n} boxes) (s)"] = time.perf_counter() - t0
        figures["server memory at the end, VmRSS (MB)"] = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\n| measure ({os.cpu_count()} cores, load average at the end {load}) | value |\n| --- | --- |")
    for name, value in figures.items():
        print(f"| {name} | {value:.2f} |" if value < 10 else f"| {name} | {value:.0f} |")
    return 0


def browser_figures(base: str, run: Path, screenshot: str | None = None) -> dict:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("no chromium: browser figures skipped")
        return {}
    from playwright.sync_api import sync_playwright

    figures = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        for label in ("cold: thumbnails made", "warm: thumbnails cached"):
            t0 = time.perf_counter()
            page.goto(base + "/", wait_until="domcontentloaded")
            page.wait_for_function(THUMBS_IN_VIEW_LOADED, timeout=300_000)
            figures[f"worklist page load in the browser, thumbnails in view drawn, {label} (ms)"] = (
                time.perf_counter() - t0) * 1000
        own = sample_results(run)
        most_boxes = max(own, key=lambda r: len(r.lesions)).image_id
        other = next(r.image_id for r in own if r.image_id != most_boxes)
        for label, image in (("cold: DICOM read", most_boxes), ("warm: pyramid cached", most_boxes),
                             ("another full-size DICOM, cold", other)):
            t0 = time.perf_counter()
            page.goto(f"{base}/view/0/{image}")
            page.wait_for_selector("body[data-tiles-loaded='1']", state="attached", timeout=120_000)
            figures[f"open a full-size DICOM in the viewer, all visible tiles drawn, {label} (ms)"] = (
                time.perf_counter() - t0) * 1000
        if screenshot:
            save_screenshot(page, base, most_boxes, Path(screenshot))
        browser.close()
    return figures


def sample_results(run: Path) -> list:
    """The results of the sample's own images in the big run (not the copies), by id."""
    return sorted((r for r in read_results(run) if not r.image_id.startswith("bench")), key=lambda r: r.image_id)


def save_screenshot(page, base: str, image_id: str, path: Path) -> None:
    import io

    from PIL import Image

    page.set_viewport_size({"width": 1200, "height": 700})
    page.goto(f"{base}/view/0/{image_id}")
    page.wait_for_selector("body[data-heatmap='1']", state="attached", timeout=120_000)
    page.wait_for_selector("body[data-tiles-loaded='1']", state="attached", timeout=120_000)
    page.eval_on_selector("#reader", "r => { r.value = 'Reader 1'; }")
    page.evaluate("zoomToBox(0, 6)")  # the first box and its surroundings at full resolution
    page.wait_for_timeout(300)
    page.wait_for_selector("body[data-tiles-loaded='1']", state="attached", timeout=120_000)
    png = Image.open(io.BytesIO(page.screenshot()))
    path.parent.mkdir(parents=True, exist_ok=True)
    png.convert("RGB").quantize(256).save(path, optimize=True)
    print(f"screenshot: {path} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    sys.exit(main())
