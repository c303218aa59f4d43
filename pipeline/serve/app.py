"""The review workstation: a FastAPI app over run folders of `pipeline infer`.

Pages (Jinja2, a little vanilla JavaScript, OpenSeadragon for zoom/pan; every asset is served from here):
  /                         worklist of every run: thumbnail, score, decision, boxes, review status
  /view/{run}/{image_id}    full-resolution viewer with boxes, Grad-CAM, window/level, threshold, verdicts
JSON and pictures under /api, the verdict export at /runs/{run}/verdicts.csv. Runs are named by their index
and images by their id: no client-given path is ever opened (see files.py).
"""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from mammo.errors import ImageReadError
from mammo.imaging import MAX_PIXELS
from pipeline.serve.files import NotFound, RunSet, safe_file
from pipeline.serve.jobs import MAX_UPLOAD_BYTES, RETRY_AFTER_SECONDS, Busy, UploadError, Uploads
from pipeline.serve.scale import NO_CURVE, app_curve, result_value, slider_scale
from pipeline.serve.security import AccessMiddleware
from pipeline.serve.tiles import PyramidCache, encode_jpeg, heatmap_rgba, max_level, thumbnail, TILE
from pipeline.serve.verdicts import VerdictError, VerdictStore

HERE = Path(__file__).parent
CACHE_HEADERS = {"Cache-Control": "private, max-age=3600"}
MAX_VERDICT_BYTES = 256 * 1024  # a save is a few fields and comments of <= 4000 characters: far less


async def bounded_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 when it is longer than `limit` bytes: refused from Content-Length before
    reading, or while reading a body sent without one (chunked)."""
    length = request.headers.get("content-length")
    too_long = HTTPException(413, f"request body larger than {limit // 1024} KB")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise too_long
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_long
    return bytes(body)


def create_app(run_dirs, models=None, cfg=None, threshold: float | None = None, token: str | None = None) -> FastAPI:
    """`run_dirs`: folders written by `pipeline infer` (created when missing; uploads go to the first);
    `models`/`cfg`: loaded PipelineModels and their config, for uploads (None: uploads are refused);
    `threshold`: the shipped operating point marked on the threshold control (on the image score)."""
    from pipeline.ids import resolve_salt

    runs = RunSet(run_dirs, resolve_salt(cfg.pipeline.id_salt) if cfg is not None else None)
    if not runs.runs:
        raise ValueError("give at least one run folder")
    stores = [VerdictStore(run.state) for run in runs.runs]
    max_pixels = cfg.run.max_pixels if cfg is not None else MAX_PIXELS  # tiles decode within the same limit
    pyramids = PyramidCache(max_pixels=max_pixels)
    uploads = Uploads(runs, models, cfg, threshold) if models is not None else None
    results = [r for run in runs.runs for r in run.results.values()]
    if threshold is None:
        threshold = next((r.threshold for r in results), 0.5)
    if hasattr(models, "probability"):  # loaded models (tests hand in stand-ins without one)
        shipped_probability = models.probability(threshold)
    else:  # the threshold on the probability, as the results state it
        shipped_probability = next((r.probability_threshold for r in results if r.threshold == threshold
                                    and r.probability_threshold is not None), None)
    # the slider's scale and the out-of-fold curve it reads, fixed for the server's life: uploads are analysed
    # by the same models (the folder's fingerprint refuses others), so they add images on the same scale
    scale = slider_scale(results, threshold, shipped_probability)
    curve = app_curve(runs.runs, models) if scale["kind"] == "probability" else None
    page = {"threshold": threshold, "scale": scale, "curve": curve, "no_curve": NO_CURVE}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        if uploads is not None:
            uploads.close()  # waits for a running analysis, drops queued ones

    app = FastAPI(title="mammo-cad review", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(AccessMiddleware, token=token)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")
    app.state.runs, app.state.uploads = runs, uploads

    @app.exception_handler(NotFound)
    async def not_found(request, exc):
        return JSONResponse({"detail": "not found"}, status_code=404)

    @app.exception_handler(Busy)
    async def busy(request, exc):
        return JSONResponse({"detail": str(exc)}, status_code=503,
                            headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    @app.exception_handler(ImageReadError)
    async def unreadable(request, exc):  # the original moved or changed since infer; its path is not shown
        return JSONResponse({"detail": f"the original image cannot be read: {exc.reason}"}, status_code=404)

    def rows() -> list[dict]:
        out = []
        for run, store in zip(runs.runs, stores):
            reviewed = store.reviewed_images()
            for r in sorted(run.results.values(), key=lambda r: -r.score):
                out.append({"run": run.index, "image_id": r.image_id, "score": r.score,
                            "probability": r.probability, "value": result_value(scale, r),
                            "threshold": r.threshold, "decision": r.decision, "n_boxes": len(r.lesions),
                            "reviewed": r.image_id in reviewed, "width": r.width, "height": r.height})
        return out

    @app.get("/favicon.ico")
    def favicon():
        return Response(status_code=204)

    @app.get("/", response_class=HTMLResponse)
    def worklist(request: Request):
        return templates.TemplateResponse(request, "worklist.html", {
            **page, "rows": rows(), "runs": runs.runs, "can_upload": uploads is not None})

    @app.get("/view/{run}/{image_id}", response_class=HTMLResponse)
    def viewer(request: Request, run: int, image_id: str):
        runs.result(run, image_id)
        return templates.TemplateResponse(request, "viewer.html", {**page, "run": run, "image_id": image_id})

    @app.get("/api/images")
    def list_images():
        return {"threshold": threshold, "scale": scale, "operating_curve": curve, "images": rows()}

    @app.get("/api/images/{run}/{image_id}")
    def image_info(run: int, image_id: str):
        r = runs.result(run, image_id)[1]
        return {"run": run, "image_id": r.image_id, "width": r.width, "height": r.height, "score": r.score,
                "probability": r.probability, "probability_threshold": r.probability_threshold,
                "threshold": r.threshold, "threshold_source": r.threshold_source, "value": result_value(scale, r),
                "shipped_threshold": threshold, "decision": r.decision,
                "aggregate": r.aggregate, "has_heatmap": bool(r.heatmap), "tile_size": TILE,
                "domain": r.domain, "domain_source": r.domain_source, "domain_reason": r.domain_reason,
                "max_level": max_level(r.width, r.height),
                "lesions": [{"box": l.box, "detector_score": l.detector_score, "malignancy": l.malignancy,
                             "finding": l.finding, "scores_image": l.scores_image, "p_lesion": l.p_lesion,
                             "p_malignant": l.p_malignant} for l in r.lesions],
                "verdicts": stores[run].current(image_id)}

    @app.get("/api/tiles/{run}/{image_id}/{level}/{col}_{row}.jpg")
    def tile(run: int, image_id: str, level: int, col: int, row: int, c: float = 0.5, w: float = 1.0):
        run_obj, r = runs.result(run, image_id)
        if not (math.isfinite(c) and math.isfinite(w) and 0.0 <= c <= 1.0 and 0.001 <= w <= 2.0):
            raise HTTPException(422, "window centre must be in [0, 1] and width in [0.001, 2]")
        pyramid = pyramids.get((run, image_id), lambda: runs.source_file(run_obj, r))
        if (pyramid.width, pyramid.height) != (r.width, r.height):
            raise HTTPException(409, f"image {image_id} changed since it was analysed (size differs)")
        try:
            pixels = pyramid.tile(level, col, row, c, w)
        except ValueError as exc:
            raise HTTPException(404, str(exc)) from None
        return Response(encode_jpeg(pixels), media_type="image/jpeg", headers=CACHE_HEADERS)

    @app.get("/api/thumb/{run}/{image_id}.jpg")
    def thumb(run: int, image_id: str):
        run_obj, r = runs.result(run, image_id)
        data = thumbnail(lambda: runs.source_file(run_obj, r), run_obj.state / "thumbs" / f"{image_id}.jpg",
                         max_pixels)
        return Response(data, media_type="image/jpeg", headers=CACHE_HEADERS)

    @app.get("/api/heatmap/{run}/{image_id}.png")
    def heatmap(run: int, image_id: str):
        run_obj, r = runs.result(run, image_id)
        return Response(heatmap_rgba(runs.run_file(run_obj, r.heatmap)), media_type="image/png",
                        headers=CACHE_HEADERS)

    @app.get("/runs/{run}/files/{name:path}")
    def run_file(run: int, name: str):
        path = safe_file(runs.run(run).root, name)
        return Response(path.read_bytes(), media_type="image/jpeg" if path.suffix != ".png" else "image/png")

    @app.get("/api/verdicts/{run}/{image_id}")
    def get_verdicts(run: int, image_id: str):
        runs.result(run, image_id)
        return {"verdicts": stores[run].current(image_id)}

    @app.post("/api/verdicts/{run}/{image_id}")
    async def save_verdicts(request: Request, run: int, image_id: str):
        r = runs.result(run, image_id)[1]
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise HTTPException(415, "send the verdict as application/json")
        raw = await bounded_body(request, MAX_VERDICT_BYTES)
        try:
            body = json.loads(raw)
            boxes, image = body.get("boxes") or {}, body.get("image") or {}
            if not isinstance(boxes, dict) or not isinstance(image, dict) or not all(
                    isinstance(v, dict) for v in boxes.values()):
                raise VerdictError("expected {reader, boxes: {index: {field: value}}, image: {field: value}}")
            n = await run_in_threadpool(stores[run].save, image_id, body.get("reader"), boxes, image, r.lesions)
        except (VerdictError, ValueError, AttributeError) as exc:
            raise HTTPException(422, str(exc)) from None
        return {"saved": n, "verdicts": stores[run].current(image_id)}

    @app.get("/runs/{run}/verdicts.csv")
    def export_verdicts(run: int):
        run_obj = runs.run(run)
        return Response(stores[run].export_csv(run_obj.results), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="verdicts_run{run}.csv"'})

    @app.post("/api/upload")
    async def upload(request: Request):
        if uploads is None:
            raise HTTPException(503, "no models loaded: start the server with models to analyse new images")
        length = request.headers.get("content-length")
        if length is None:
            raise HTTPException(411, "upload size unknown (no Content-Length)")
        if not length.isdigit() or int(length) > MAX_UPLOAD_BYTES + 64 * 1024:
            raise HTTPException(413, f"file larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB")
        uploads.check_room()  # Busy (503) before the body is read; submit holds the place it finds
        form = await request.form(max_files=1, max_fields=4)
        file = form.get("file")
        if file is None or isinstance(file, str):
            raise HTTPException(422, "no file in the upload (form field 'file')")
        try:
            run = int(form.get("run", 0))
            job = await run_in_threadpool(uploads.submit, run, file.filename,
                                          iter(lambda: file.file.read(1 << 20), b""))
        except UploadError as exc:
            raise HTTPException(422, str(exc)) from None
        except ValueError:
            raise HTTPException(422, "run must be a run number") from None
        return job.public()

    @app.get("/api/jobs/{job_id}")
    def job_status(job_id: str):
        job = uploads.get(job_id) if uploads is not None else None
        if job is None:
            raise NotFound(job_id)
        return job.public()

    return app
