"""OHIF Viewer (the built app of the npm package `@ohif/app`) served locally over a DICOMweb server, to look at our
DICOM results (TID 1500 SR boxes, Grad-CAM segmentation) over the mammogram as a radiologist's viewer shows them.

The app is static files; this serves them and proxies `/dicom-web/*` to the DICOMweb server, so the browser sees
one origin (Orthanc 1.10 sends no CORS headers) and nothing but this server is contacted. `app-config.js` is
ours: the app's own points at a public demo server.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

OHIF_VERSION = "3.13.2"  # the npm package scripts/system-deps.sh unpacks; the tests and docs were made with it
OHIF_DIST_ENV = "MAMMO_OHIF_DIST"
DEFAULT_DIST = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / f"mammo-cad/ohif-{OHIF_VERSION}/dist"
PROXY_TIMEOUT_S = 120
# the hop-by-hop and length headers requests recomputes (it hands us decoded, whole bodies)
DROPPED_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-encoding", "content-length"}


def ohif_dist() -> Path:
    """The unpacked app (`$MAMMO_OHIF_DIST`, else the cache folder scripts/system-deps.sh fills); a clear error
    naming the folder when it is not there."""
    dist = Path(os.environ.get(OHIF_DIST_ENV) or DEFAULT_DIST)
    if not (dist / "index.html").is_file():
        raise FileNotFoundError(f"no OHIF Viewer in {dist} (scripts/system-deps.sh unpacks the npm package "
                                f"@ohif/app@{OHIF_VERSION} into {DEFAULT_DIST}; {OHIF_DIST_ENV} points elsewhere)")
    return dist


# OHIF 3.13 reads `measurement.coords[0]` of every TID 1500 measurement group and throws on a group without an
# image region (TID 1501, our image-level call and probability), which leaves the SR viewport black. Giving such
# a group an empty coordinate makes OHIF skip it as "not on this image", so the boxes are drawn; our SR is unchanged.
SR_WORKAROUND = """window.config.customizationService = {onBeforeSRAddMeasurement: {$set: ({measurement}) =>
  measurement.coords && measurement.coords.length ? measurement : {...measurement, coords: [{}]}}};
"""


def app_config() -> str:
    """OHIF's configuration: one DICOMweb source at this server's /dicom-web, settings that suit Orthanc's plugin."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomweb",
        "configuration": {
            "friendlyName": "local PACS", "name": "orthanc",
            "wadoUriRoot": "/dicom-web", "qidoRoot": "/dicom-web", "wadoRoot": "/dicom-web",
            "qidoSupportsIncludeField": False, "imageRendering": "wadors", "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True, "supportsFuzzyMatching": False, "supportsWildcard": True,
            "staticWado": False, "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {"routerBasename": None, "extensions": [], "modes": [], "showStudyList": True,
              "maxNumberOfWebWorkers": 2, "showCPUFallbackMessage": False, "showLoadingIndicator": True,
              "investigationalUseDialog": {"option": "never"},  # a modal over the image otherwise
              "defaultDataSourceName": "dicomweb", "dataSources": [source]}
    return f"window.config = {json.dumps(config, indent=1)};\n{SR_WORKAROUND}"


def create_app(dicomweb_url: str, dist: Path | None = None):
    """The Starlette app: OHIF's files (any unknown path is its index.html: the app routes in the browser),
    our app-config.js, and /dicom-web/* forwarded to `dicomweb_url`."""
    import requests
    from starlette.applications import Starlette
    from starlette.responses import FileResponse, Response
    from starlette.routing import Route

    dist = (dist or ohif_dist()).resolve()
    upstream = dicomweb_url.rstrip("/")
    session = requests.Session()

    def proxy(request):  # sync: Starlette runs it in its thread pool
        url = f"{upstream}/{request.path_params['path']}"
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("accept", "content-type")}
        r = session.request(request.method, url, params=list(request.query_params.multi_items()),
                            headers=headers, timeout=PROXY_TIMEOUT_S)
        return Response(r.content, r.status_code,
                        {k: v for k, v in r.headers.items() if k.lower() not in DROPPED_HEADERS})

    def config(request):
        return Response(app_config(), media_type="application/javascript")

    def files(request):
        path = (dist / request.path_params["path"]).resolve()
        if not path.is_file() or not path.is_relative_to(dist):
            path = dist / "index.html"
        return FileResponse(path)

    return Starlette(routes=[Route("/dicom-web/{path:path}", proxy, methods=["GET"]),
                             Route("/app-config.js", config), Route("/{path:path}", files)])


# What the viewer shows of the patient: the samples' real values are replaced (they are identifiers), the UIDs
# too (derived from the old ones, so a rerun gives the same study and Orthanc keeps one copy), and the dates
# emptied (dates of care are identifiers too; the viewer prints the study date).
DEIDENTIFIED = {"PatientName": "Anonymous^Sample", "PatientID": "SAMPLE-1", "PatientBirthDate": "",
                "ReferringPhysicianName": "", "StudyID": "", "AccessionNumber": "", "StudyDate": "", "StudyTime": ""}
DATES = ("SeriesDate", "SeriesTime", "ContentDate", "ContentTime", "AcquisitionDate", "AcquisitionTime",
         "AcquisitionDateTime")


def deidentified_copy(src, dst) -> str:
    """Write `src` (a DICOM file) to `dst` with the identifiers and dates above replaced, private tags dropped and
    new UIDs; the pixels as they are. Returns the new Study Instance UID."""
    import pydicom

    from pipeline.dicomnode.results import derived_uid

    ds = pydicom.dcmread(src)
    ds.remove_private_tags()
    for keyword, value in DEIDENTIFIED.items():
        setattr(ds, keyword, value)
    for keyword in DATES:
        if keyword in ds:
            setattr(ds, keyword, "")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(ds, keyword, derived_uid("deidentified", ds.get(keyword)))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst, enforce_file_format=True)
    return str(ds.StudyInstanceUID)


def main(argv=None) -> None:
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m pipeline.dicomnode.viewer", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    de = sub.add_parser("deidentify", help="a sample DICOM without its identifiers; prints its study UID")
    de.add_argument("dst")
    de.add_argument("--src", help="default: the smallest of the embedded sample DICOMs")
    serve = sub.add_parser("serve", help="OHIF over a DICOMweb server, on 127.0.0.1")
    serve.add_argument("--dicomweb", required=True, help="e.g. http://127.0.0.1:8042/dicom-web")
    serve.add_argument("--port", type=int, default=3000)
    serve.add_argument("--study", help="a study UID: its viewer URL is printed")
    args = parser.parse_args(argv)
    if args.command == "deidentify":
        from pipeline.demo import sample_inputs

        print(deidentified_copy(args.src or min(sample_inputs(), key=lambda p: p.stat().st_size), args.dst))
        return
    try:
        app = create_app(args.dicomweb)
    except FileNotFoundError as e:
        raise SystemExit(str(e))
    base = f"http://127.0.0.1:{args.port}"
    print(f"OHIF Viewer: {base}/" + (f"  study: {base}/viewer?StudyInstanceUIDs={args.study}" if args.study else ""),
          flush=True)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
