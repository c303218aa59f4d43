"""DICOMweb in and out: `pipeline infer --dicomweb URL --study UID` (or `--query KEY=VALUE`) pulls mammograms
from a PACS, and `--stow` stores the DICOM results infer wrote back into their studies.

Pull. QIDO-RS (dicomweb-client) lists each study's instances. What is not a mammogram (a Modality other than MG,
a non-image SOP class: an SR, a CT slice, our own results) is skipped with the reason. Each mammogram is fetched
with WADO-RS, one at a time, its bytes written as they arrive into <out>/dicomweb/spool/<key>.dcm (atomically:
complete or absent). The spool files are then ordinary inputs of `infer`: planning, resume, failure rows, the
output fingerprint and both engines (single process, Ray) are the file path's own code, handed a ready
`Discovery`. A rerun fetches only what the spool lacks and analyses only what has no result yet.
WADO-RS is read straight from the HTTP stream rather than through dicomweb-client's retrieve_instance, which
holds the whole response and a parsed data set in memory and writes the file again through pydicom: here the
PACS's bytes reach the disk unchanged, in constant memory.

Push. Every DICOM file under <out>/dicom/ whose SOP instance the ledger <out>/dicomweb/stowed.json does not
hold for this endpoint is sent with STOW-RS into its study, one file per request. Keyed by the instance, not the
file's bytes: the result writer derives its UIDs from the source and the models, so a rewritten file with the
same UID (a rerun's new content date) is the same object to the PACS and is not sent again. A refusal (an HTTP error, or
the instance under FailedSOPSequence or missing from ReferencedSOPSequence) is retried with a growing pause a
bounded number of times, then reported as failed (summary, exit code 1) and left out of the ledger, so the next
run sends it again; a stored file is written to the ledger at once, so a rerun sends no duplicate.

Privacy. <key> is a salted hash of the SOP Instance UID (pipeline.ids): no UID or patient value reaches a file
name, a log line or an output; the study UIDs and query values of the command line are hashed in run.json, and
the URL's user and password are never written. The PACS unreachable (refused, reset, timed out) stops the run
with an error naming the endpoint; what was spooled, analysed and stored stays, so rerunning resumes.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from mammo.atomic import atomic_path, atomic_write_text, remove_stale_partials
from mammo.dicom import INFLATED_BYTES_PER_PIXEL, INFLATED_METADATA_BYTES, NON_IMAGE_SOP_CLASSES
from mammo.errors import MammoError
from pipeline.ids import salted_hash
from pipeline.inputs import Discovery

SPOOL = "spool"
PULL_FILE = "pull.json"  # what the last pull found: counts and the skipped instances with their reasons
LEDGER_FILE = "stowed.json"  # what STOW-RS stored, per endpoint: salted hash of the SOP Instance UID -> file
RESULTS_DIR = "dicom"  # where infer writes the DICOM results (SR, parametric map) that --stow sends
MAX_STUDIES = 1000  # a query matching more is refused: narrow it
MAX_INSTANCES = 20_000  # per run
QIDO_PAGE = 500
CHUNK = 1 << 20
HEADER_LIMIT = 64 << 10  # a multipart part's headers larger than this are not a DICOM part
TIMEOUT = (10, 120)  # connect, read (seconds)
STOW_ATTEMPTS = 4  # a refused STOW is tried this many times in all ...
STOW_BACKOFF_S = 1.0  # ... pausing 1, 2, 4 s between tries
MAMMOGRAPHY = "MG"
# QIDO attributes asked for beside the instance's UIDs: Modality (a series attribute) and SOP Class UID
FIELDS = ("00080060", "00080016")

# dicomweb-client logs every instance's UIDs at INFO: keep them out of any log a caller's logging setup shows
logging.getLogger("dicomweb_client").setLevel(logging.WARNING)


class PacsUnreachable(MammoError):
    """The endpoint did not answer (connection refused or reset, timeout): the whole run stops, resumably."""


class InstanceRefused(MammoError):
    """The PACS answered one request with an error: that instance fails, the run goes on."""


def redact(url: str) -> str:
    """The endpoint as it may be printed and written: without user and password."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def check_url(url: str, option: str = "--dicomweb"):
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MammoError(f"{option} {redact(url)}: not an http(s) URL of a DICOMweb endpoint")
    return parts


def instance_key(sop_instance_uid: str, salt: str) -> str:
    """An instance's name in the spool and in reports: a salted hash, never the UID."""
    return "inst_" + salted_hash(f"sop:{sop_instance_uid}", salt, 16)


def not_a_mammogram(modality: str | None, sop_class: str | None) -> str | None:
    """Why an instance is skipped, or None to fetch it. Modality None: unknown here, judged from the file."""
    kind = next((k for prefix, k in NON_IMAGE_SOP_CLASSES.items() if (sop_class or "").startswith(prefix)), None)
    if kind:
        return f"a {kind} (SOP class {sop_class}), not a mammogram"
    if modality is not None and modality != MAMMOGRAPHY:
        return f"modality {modality or '(empty)'}, not a mammogram ({MAMMOGRAPHY})"
    return None


def _value(item: dict, tag: str):
    values = item.get(tag, {}).get("Value") or []
    return str(values[0]) if values else None


@dataclass(frozen=True)
class Instance:
    study: str
    series: str
    sop: str
    modality: str | None  # None when the PACS did not say
    sop_class: str | None


class DicomWeb:
    """One DICOMweb endpoint: QIDO-RS and STOW-RS through dicomweb-client, WADO-RS streamed to a file."""

    def __init__(self, url: str):
        import requests
        from dicomweb_client import DICOMwebClient

        parts = check_url(url)
        self.endpoint = redact(url)
        self.session = requests.Session()
        if parts.username:  # http://user:password@host/...: basic authentication, never printed
            self.session.auth = (parts.username, parts.password or "")
        self.client = DICOMwebClient(self.endpoint, session=self.session, timeout=TIMEOUT)
        # dicomweb-client's own retries (on 429/503/504) stay short: our callers decide what to retry
        self.client.set_http_retry_params(max_attempts=2, wait_exponential_multiplier=200)

    def _call(self, what: str, func, *args, **kwargs):
        """Run one request; the endpoint not answering -> PacsUnreachable, an HTTP error -> InstanceRefused.
        The messages name the endpoint, never the request's URL (it holds UIDs)."""
        import requests

        try:
            return func(*args, **kwargs)
        except requests.HTTPError as exc:
            response = exc.response
            raise InstanceRefused(f"{what}: {self.endpoint} answered HTTP {response.status_code} "
                                  f"{response.reason}{_detail(response)}") from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            why = "timed out" if isinstance(exc, requests.Timeout) else "refused or dropped the connection"
            raise PacsUnreachable(f"the PACS at {self.endpoint} {why} ({what})") from None

    # ---------------------------------------------------------------------------------------------- QIDO-RS
    def studies(self, query: dict) -> list[str]:
        found = self._call("QIDO-RS search for studies", self.client.search_for_studies, search_filters=query,
                           limit=MAX_STUDIES + 1, fields=["0020000D"])
        uids = [u for u in (_value(s, "0020000D") for s in found) if u]
        if len(uids) > MAX_STUDIES:
            raise MammoError(f"the query matches more than {MAX_STUDIES} studies at {self.endpoint}; narrow it")
        return uids

    def instances(self, study: str, budget: int) -> list[Instance]:
        """A study's instances, page by page, at most `budget` (more is refused)."""
        out = []
        while True:
            page = self._call("QIDO-RS search for a study's instances", self.client.search_for_instances,
                              study_instance_uid=study, fields=list(FIELDS), limit=QIDO_PAGE, offset=len(out))
            out += [Instance(study, _value(i, "0020000E"), _value(i, "00080018"), _value(i, "00080060"),
                             _value(i, "00080016")) for i in page]
            if len(out) > budget:
                raise MammoError(f"more than {MAX_INSTANCES} instances to pull from {self.endpoint} in one run; "
                                 f"give fewer studies or a narrower query")
            if len(page) < QIDO_PAGE:  # (a server that ignores `limit` sends all at once: also the end)
                return [i for i in out if i.series and i.sop]

    # ---------------------------------------------------------------------------------------------- WADO-RS
    def fetch(self, inst: Instance, dest: Path, max_bytes: int) -> None:
        """One instance as stored (any transfer syntax), streamed into `dest` atomically."""
        url = f"{self.endpoint}/studies/{inst.study}/series/{inst.series}/instances/{inst.sop}"
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'

        def get():
            with self.session.get(url, headers={"Accept": accept}, stream=True, timeout=TIMEOUT) as response:
                response.raise_for_status()
                with atomic_path(dest) as tmp, open(tmp, "wb") as f:
                    _write_single_part(response, f, max_bytes)

        import requests

        try:
            self._call("WADO-RS retrieve instance", get)
        except requests.exceptions.ChunkedEncodingError:  # the connection broke mid-body: the PACS went away
            raise PacsUnreachable(f"the PACS at {self.endpoint} dropped the connection while sending an "
                                  f"instance (WADO-RS)") from None

    # ---------------------------------------------------------------------------------------------- STOW-RS
    def store(self, path: Path) -> None:
        """STOW-RS one file into its study; InstanceRefused unless the answer lists it as stored."""
        import pydicom

        ds = pydicom.dcmread(path)
        answer = self._call("STOW-RS", self.client.store_instances, datasets=[ds],
                            study_instance_uid=str(ds.StudyInstanceUID))
        failed = [item for item in answer.get("FailedSOPSequence", []) if item.get("ReferencedSOPInstanceUID")
                  == ds.SOPInstanceUID]
        stored = [item for item in answer.get("ReferencedSOPSequence", []) if item.get("ReferencedSOPInstanceUID")
                  == ds.SOPInstanceUID]
        if failed or not stored:
            reason = f" (failure reason {int(failed[0].FailureReason):#06x})" if failed and "FailureReason" in \
                failed[0] else ""
            raise InstanceRefused(f"STOW-RS: {self.endpoint} did not store it{reason}")


def _detail(response) -> str:
    """A short reason from an error answer (Orthanc sends JSON with Message/Details); no URL in it."""
    try:
        body = response.json()
        text = (body.get("Details") or body.get("Message") or "") if isinstance(body, dict) else ""
    except ValueError:
        text = ""
    return f": {str(text)[:200]}" if text else ""


def _write_single_part(response, f, max_bytes: int) -> None:
    """Write the one DICOM part of a WADO-RS answer to `f` as it streams in; no more than `max_bytes`."""
    chunks = response.iter_content(CHUNK)
    written = 0

    def write(data: bytes):
        nonlocal written
        written += len(data)
        if written > max_bytes:
            raise InstanceRefused(f"WADO-RS: the instance is larger than {max_bytes:,} bytes (run.max_pixels)")
        f.write(data)

    media, _, params = response.headers.get("Content-Type", "").partition(";")
    if media.strip().lower() == "application/dicom":  # a non-compliant server sends the file bare
        for chunk in chunks:
            write(chunk)
        return
    boundary = next((v.strip().strip('"') for k, _, v in (p.strip().partition("=") for p in params.split(";"))
                     if k.lower() == "boundary"), None)
    if media.strip().lower() != "multipart/related" or not boundary:
        raise InstanceRefused(f"WADO-RS: unexpected answer of type {media.strip() or 'none'!r}")
    opening, delimiter = b"--" + boundary.encode(), b"\r\n--" + boundary.encode()
    buf = b""
    for chunk in chunks:  # up to the end of the first part's headers
        buf += chunk
        start = buf.find(opening)
        end = buf.find(b"\r\n\r\n", start) if start >= 0 else -1
        if end >= 0:
            buf = buf[end + 4:]
            break
        if len(buf) > HEADER_LIMIT:
            raise InstanceRefused("WADO-RS: no DICOM part in the answer")
    else:
        raise InstanceRefused("WADO-RS: the answer ended before its first part")
    keep = len(delimiter) - 1  # a delimiter may straddle two chunks
    while True:
        at = buf.find(delimiter)
        if at >= 0:
            write(buf[:at])
            return
        if len(buf) > keep:
            write(buf[:-keep])
            buf = buf[-keep:]
        chunk = next(chunks, None)
        if chunk is None:
            raise InstanceRefused("WADO-RS: the answer ended inside the instance (no closing boundary)")
        buf += chunk


# -------------------------------------------------------------------------------------------------------- pull
@dataclass
class Pulled:
    discovery: Discovery  # the spool files to analyse; instances that could not be fetched as `missing`
    skipped: list = field(default_factory=list)  # {"instance": key, "reason": ...}
    fetched: int = 0  # in this run
    reused: int = 0  # already in the spool from an earlier run


def max_instance_bytes(max_pixels: int) -> int:
    """The largest file an image within run.max_pixels can need (mammo.dicom's bound for inflated data sets)."""
    return max_pixels * INFLATED_BYTES_PER_PIXEL + INFLATED_METADATA_BYTES


def pull(pacs: DicomWeb, studies, query: dict, folder: Path, salt: str, max_pixels: int,
         progress: bool = True) -> Pulled:
    """List the studies' (or the query's) instances and spool every mammogram not yet in `folder`/spool.
    Call with `folder` locked."""
    import pydicom
    from tqdm import tqdm

    spool = folder / SPOOL
    spool.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(spool)  # a killed fetch's temporary file
    uids = list(dict.fromkeys([*studies, *(pacs.studies(query) if query else [])]))
    listing = []
    for study in uids:
        listing += pacs.instances(study, MAX_INSTANCES - len(listing))
    if not listing:
        studies_given = f"{len(uids)} stud{'y' if len(uids) == 1 else 'ies'}"
        raise MammoError(f"no instance found at {pacs.endpoint} for the {studies_given}"
                         f"{' the query matched' if query else ' given'}")
    out = Pulled(Discovery())
    for inst in tqdm(listing, desc="pull (WADO-RS)", unit="inst", disable=not progress):
        key = instance_key(inst.sop, salt)
        reason = not_a_mammogram(inst.modality, inst.sop_class)
        path = spool / f"{key}.dcm"
        if reason is None and path.is_file():
            out.reused += 1
        elif reason is None:
            try:
                pacs.fetch(inst, path, max_instance_bytes(max_pixels))
                out.fetched += 1
            except InstanceRefused as exc:  # this instance fails, with its reason; the others go on
                out.discovery.missing.append(path)
                out.discovery.reasons[path] = f"{key}: {exc}"
                continue
        if reason is None and inst.modality is None:  # the PACS did not say: the file does
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality", "SOPClassUID"])
                reason = not_a_mammogram(str(header.get("Modality", "")), str(header.get("SOPClassUID", "")))
            except Exception:  # unreadable: the reader says why, as a failed row
                reason = None
            if reason:
                path.unlink()
        if reason:
            out.skipped.append({"instance": key, "reason": reason})
        else:
            out.discovery.images.append(path)
    atomic_write_text(folder / PULL_FILE, json.dumps(
        {"endpoint": pacs.endpoint, "studies": len(uids), "instances": len(listing),
         "mammograms": len(out.discovery.images) + len(out.discovery.missing), "fetched": out.fetched,
         "reused": out.reused, "fetch_failed": len(out.discovery.missing), "skipped": out.skipped}, indent=2))
    return out


# -------------------------------------------------------------------------------------------------------- push
def _store_with_retries(pacs: DicomWeb, path: Path, attempts: int, backoff_s: float, report: dict) -> str | None:
    """None once stored, else the last refusal; the PACS still unreachable at the last try raises."""
    for attempt in range(1, attempts + 1):
        try:
            pacs.store(path)
            return None
        except InstanceRefused as exc:
            refusal = str(exc)
        except PacsUnreachable:
            if attempt == attempts:
                raise
        if attempt < attempts:
            report["retried"] += 1
            time.sleep(backoff_s * 2 ** (attempt - 1))
    return refusal


def stow_results(pacs: DicomWeb, out_dir: Path, folder: Path, salt: str, attempts: int = STOW_ATTEMPTS,
                 backoff_s: float = STOW_BACKOFF_S) -> dict:
    """STOW-RS every result file under <out>/dicom/ not yet in the ledger; returns counts and the failures.
    Call with `folder` locked. The PACS unreachable through every try stops with PacsUnreachable."""
    import pydicom

    results = out_dir / RESULTS_DIR
    files = sorted(p for p in results.rglob("*.dcm") if not p.name.startswith(".")) if results.is_dir() else []
    ledger_path = folder / LEDGER_FILE
    ledger = json.loads(ledger_path.read_text()) if ledger_path.is_file() else {}
    stored = ledger.setdefault(pacs.endpoint, {})
    report = {"endpoint": pacs.endpoint, "files": len(files), "stored": 0, "already_stored": 0, "retried": 0,
              "failed": []}
    for path in files:
        name = str(path.relative_to(out_dir))
        try:
            key = instance_key(str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID), salt)
        except Exception as exc:  # a damaged result file is reported like a refused one
            report["failed"].append({"file": name, "error": f"unreadable: {type(exc).__name__}: {exc}"})
            continue
        if key in stored:
            report["already_stored"] += 1
            continue
        refusal = _store_with_retries(pacs, path, attempts, backoff_s, report)
        if refusal:  # reported, kept out of the ledger: the next run tries it again
            report["failed"].append({"file": name, "error": f"{refusal} ({attempts} tries)"})
            print(f"failed: {name}: {refusal} ({attempts} tries)", file=sys.stderr)
            continue
        stored[key] = name
        report["stored"] += 1
        atomic_write_text(ledger_path, json.dumps(ledger, indent=2))  # at once: a crash sends no duplicate
    return report


# -------------------------------------------------------------------------------------------------------- argv
def check_args(args, inputs) -> dict:
    """The DICOMweb options of `infer`, checked before any model loads; returns the QIDO query as a dict."""
    if not args.dicomweb:
        given = [o for o, v in (("--study", args.study), ("--query", args.query), ("--stow", args.stow),
                                ("--stow-url", args.stow_url)) if v]
        if given:
            raise MammoError(f"{', '.join(given)} need{'s' if len(given) == 1 else ''} --dicomweb URL")
        return {}
    if inputs or args.split:
        raise MammoError("--dicomweb takes its images from the PACS: give no INPUT and no --split with it")
    check_url(args.dicomweb)
    if args.stow_url:
        check_url(args.stow_url, "--stow-url")
    if not args.study and not args.query:
        raise MammoError("--dicomweb needs the studies to analyse: --study UID (repeatable) and/or --query "
                         "KEY=VALUE (a QIDO-RS study search, e.g. --query ModalitiesInStudy=MG)")
    query = {}
    for item in args.query or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise MammoError(f"--query {key.strip() or '?'}=...: give KEY=VALUE (a DICOM keyword or tag)")
        query[key.strip()] = value.strip()
    return query


DICOMWEB_VALUE_OPTIONS = ("--study", "--query")


def scrub_argv(argv, salt: str) -> list[str]:
    """argv for run.json: study UIDs and query values hashed (they lead to a patient), the URL's user and
    password removed; whatever pipeline.source_paths says, since these are no paths."""
    out, hide_next = [], False
    for word in argv:
        option, eq, value = word.partition("=")
        if hide_next:
            word = _hide(word, salt)
        elif eq and option in DICOMWEB_VALUE_OPTIONS:
            word = f"{option}={_hide(value, salt)}"
        elif eq and option in ("--dicomweb", "--stow-url"):
            word = f"{option}={redact(value)}"
        elif out and out[-1] in ("--dicomweb", "--stow-url") and "://" in word:
            word = redact(word)
        hide_next = word in DICOMWEB_VALUE_OPTIONS
        out.append(word)
    return out


def _hide(value: str, salt: str) -> str:
    key, eq, rest = value.partition("=")  # a query keeps its attribute name: ModalitiesInStudy=<hash>
    return f"{key}=h_{salted_hash(rest, salt, 12)}" if eq else f"h_{salted_hash(value, salt, 12)}"


# --------------------------------------------------------------------------------------------------------- run
def infer_from_dicomweb(url: str, studies, query: dict, out_dir: Path, cfg, engine, *, stow_url: str | None = None,
                        progress: bool = True, stow_backoff_s: float = STOW_BACKOFF_S) -> dict:
    """Pull, analyse with `engine(discovery) -> summary` (run_inference or run_inference_ray, bound to their
    models and options), then STOW-RS the results to `stow_url` when given. The run's summary gets a `dicomweb`
    section (and `stow`). <out>/dicomweb is locked for the whole run; `engine` locks <out> itself."""
    from mammo.atomic import folder_lock
    from pipeline.ids import resolve_salt

    out_dir = Path(out_dir)
    pacs = DicomWeb(url)
    folder = out_dir / "dicomweb"
    salt = resolve_salt(cfg.pipeline.id_salt)
    with folder_lock(folder):
        started = time.perf_counter()
        try:
            pulled = pull(pacs, studies, query, folder, salt, cfg.run.max_pixels, progress)
        except PacsUnreachable as exc:
            spooled = sum(1 for _ in (folder / SPOOL).glob("inst_*.dcm"))
            raise PacsUnreachable(f"{exc}; {spooled} instances are in the spool ({folder / SPOOL}): rerun the same "
                                  f"command to resume") from None
        pull_seconds = time.perf_counter() - started
        summary = engine(pulled.discovery)
        summary["dicomweb"] = {"endpoint": pacs.endpoint, "fetched": pulled.fetched, "reused": pulled.reused,
                               "skipped": pulled.skipped, "pull_seconds": pull_seconds}
        if stow_url:
            target = pacs if redact(stow_url) == pacs.endpoint else DicomWeb(stow_url)
            started = time.perf_counter()
            try:
                summary["stow"] = stow_results(target, out_dir, folder, salt, backoff_s=stow_backoff_s)
                summary["stow"]["seconds"] = time.perf_counter() - started
            except PacsUnreachable as exc:
                raise PacsUnreachable(f"{exc}; the analysis is done and what was stored is in {folder / LEDGER_FILE}"
                                      f": rerun the same command to send the rest") from None
    return summary
