"""`pipeline listen`: a DICOM storage SCP (pynetdicom) that analyses the mammograms a modality or PACS sends it.

Why nothing received is lost:
1. An association is accepted only from an allowed calling AE title, addressed to our own AE title (anything
   else: A-ASSOCIATE-RJ), on the configured bind address (loopback by default: DICOM has no login).
2. pynetdicom writes each received data set to a temporary file as it arrives (never held whole in memory); one
   larger than `listen.max_object_mb` is refused with Out of Resources (0xA700), logged without identifiers.
   C-STORE of a mammogram (Modality MG in an image SOP class the reader takes): the data set, as sent, is copied
   to the spool as `<key>.dcm` (key: a salted hash of its SOP Instance UID, so no name or log line carries a
   patient identifier), fsynced, and journalled, and only then answered Success. If the write fails the answer
   is Out of Resources (0xA700): the sender still has the image and may send it again. Anything else (a CT, an SR,
   a presentation state) is journalled as skipped with the reason and answered Success: the PACS keeps its copy,
   and a failure status would only make it send the object again and again.
3. One analyser thread (the models are loaded once and used by no other thread) runs infer's per-image function
   (`pipeline.infer.process_one`) on each spooled image into the output folder, as `pipeline infer` would.
4. One forwarder thread stores the image's DICOM results at `listen.destination` (C-STORE or STOW-RS): a refusal
   or a network error is retried (`store_attempts`, doubling backoff) and each one is logged and counted in
   listen_status.json; results still not stored are stored again at the next start.
The spool is the queue; the journal (`listen_journal.jsonl`: append-only, fsynced, one JSON event a line) says what
is done. On start every spooled image not yet analysed is analysed, unless `analysis_attempts` analyses of it were
already started (an image that kills the process must not do so forever; it stays in the spool, reported), and
every analysed image whose results are not yet stored is stored. Received images stay in the spool (the outputs
and the review app refer to them) unless `keep_received` is false: then each is deleted once its results are stored
(also at the next start, after a kill between the two). Temporary files a kill left in the spool are removed at start.
"""
from __future__ import annotations

import heapq
import itertools
import json
import os
import queue
import shutil
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from mammo.atomic import atomic_path, atomic_write_text, folder_lock, remove_stale_partials
from mammo.config import Config
from mammo.errors import ConfigError, MammoError
from pipeline.ids import resolve_salt, salted_hash
from pipeline.infer import StepTimer, dicom_outputs, done_row, prepare_folder, process_one
from pipeline.results import read_result, write_predictions_csv

JOURNAL = "listen_journal.jsonl"
STATUS = "listen_status.json"
# Image SOP classes the reader takes; a mammogram is one of them with Modality MG (digitised film, as the embedded
# CBIS-DDSM sample, comes as Secondary Capture)
IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1.2": "Digital Mammography X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.2.1": "Digital Mammography X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
}
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # Storage Service failure statuses (PS3.4 Table B.2-1)
CANNOT_UNDERSTAND = 0xC000
STORED = {0x0000, 0xB000, 0xB006, 0xB007}  # success, and the warnings under which the object was still stored
MAX_BACKOFF = 300.0  # seconds: the doubling stops here


class StoreError(Exception):
    """The destination did not store the results (refused, unreachable, partial); the message says how."""


def not_a_mammogram(sop_class: str, modality: str) -> str:
    """Why an object is not analysed ('' when it is a mammogram)."""
    from pydicom.uid import UID

    name = UID(sop_class).name if sop_class else "no SOP class"
    if sop_class not in IMAGE_SOP_CLASSES:
        return f"{name} is not a mammogram image (modality {modality or 'not given'})"
    if modality != "MG":
        return f"modality {modality or 'not given'} is not MG ({name})"
    return ""


# --- destination ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Destination:
    """Where the DICOM results go: a storage SCP (`AE@host:port`) or a DICOMweb server (`http(s)://...`)."""

    ae_title: str = ""
    host: str = ""
    port: int = 0
    url: str = ""

    @classmethod
    def parse(cls, text: str) -> "Destination | None":
        """`listen.destination` (its form is checked by the config); None when it is ''."""
        if not text:
            return None
        if text.startswith(("http://", "https://")):
            return cls(url=text.rstrip("/"))
        ae_title, _, address = text.rpartition("@")
        host, _, port = address.rpartition(":")
        if not 1 <= int(port) <= 65535:
            raise ConfigError(f"listen.destination: port {port} is out of range; allowed 1 to 65535")
        return cls(ae_title, host.strip("[]"), int(port))

    def __str__(self) -> str:
        if self.url:  # without any user:password of the URL (it reaches logs and the status file)
            parts = urlsplit(self.url)
            return f"STOW-RS {parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"
        return f"C-STORE {self.ae_title}@{self.host}:{self.port}"

    def store(self, paths: list[Path], own_ae_title: str, timeout: float) -> None:
        """Store every file of `paths`, or raise StoreError."""
        import pydicom

        datasets = [pydicom.dcmread(p) for p in paths]
        if not datasets:
            return
        if self.url:
            self._stow(datasets, timeout)
        else:
            self._cstore(datasets, own_ae_title, timeout)

    def _cstore(self, datasets, own_ae_title: str, timeout: float) -> None:
        from pynetdicom import AE

        ae = AE(ae_title=own_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        # one context per syntax the files are in (an acceptor picks only one syntax of a context's list)
        for sop_class, syntax in sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}):
            ae.add_requested_context(sop_class, [syntax])
        assoc = ae.associate(self.host, self.port, ae_title=self.ae_title)
        if not assoc.is_established:
            how = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
            raise StoreError(f"{self}: association {how}")
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                code = getattr(status, "Status", None)
                if code not in STORED:
                    raise StoreError(f"{self}: C-STORE of a {ds.SOPClassUID.name} answered "
                                     + (f"{code:#06x}" if code is not None else "nothing (connection lost)"))
        finally:
            if assoc.is_established:
                assoc.release()

    def _stow(self, datasets, timeout: float) -> None:
        from dicomweb_client.api import DICOMwebClient

        try:
            answer = DICOMwebClient(self.url, timeout=timeout).store_instances(datasets)
        except Exception as exc:  # requests' HTTP and connection errors: the message names the status
            raise StoreError(f"{self}: {type(exc).__name__}: {exc}") from None
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            raise StoreError(f"{self}: {len(failed)} of {len(datasets)} objects refused")


# --- journal --------------------------------------------------------------------------------------------------
@dataclass
class Item:
    """What the journal says about one received object (by its key)."""

    key: str
    received: float = 0.0  # time of the latest receipt
    starts: int = 0  # analyses started since then
    image_id: str = ""
    analysed: bool = False
    stored: bool = False
    error: str = ""  # the latest analysis or store failure
    skipped: str = ""  # the reason it is not analysed
    store_failures: int = 0


class Journal:
    """Append-only JSON lines, fsynced per event (a received image is journalled before it is acknowledged).
    A line cut short by a kill is ignored when the journal is read back."""

    def __init__(self, path: Path):
        self.path, self._lock = path, threading.Lock()

    def append(self, event: str, key: str, **fields) -> dict:
        record = {"t": round(time.time(), 3), "event": event, "key": key, **fields}
        with self._lock, open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return record

    def replay(self) -> dict[str, Item]:
        items: dict[str, Item] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                apply_event(items, record)
        return items


def apply_event(items: dict[str, Item], record: dict) -> Item:
    key, event = record["key"], record["event"]
    if event in ("received", "skipped"):  # a new receipt starts the object over
        items[key] = Item(key, received=record.get("t_received", record["t"]), skipped=record.get("reason", "") if event == "skipped" else "")
    item = items.setdefault(key, Item(key, received=record["t"]))
    if event == "started":
        item.starts += 1
    elif event == "failed":
        item.error = record.get("reason", "")
    elif event == "analysed":
        item.analysed, item.image_id, item.error = True, record.get("image_id", ""), ""
    elif event == "stored":
        item.stored, item.error = True, ""
    elif event == "store_failed":
        item.error, item.store_failures = record.get("reason", ""), item.store_failures + 1
    return item


def write_durably(path: Path, source: Path) -> None:
    """Copy `source` to `path` atomically, and on the disk (file and folder entry) before returning: a C-STORE is
    acknowledged after."""
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def result_files(out_dir: Path, image_id: str) -> list[Path]:
    """The DICOM results of one image, as its result JSON lists them (infer writes them beside it)."""
    data = json.loads((out_dir / f"{image_id}.json").read_text())
    return [out_dir / name for name in data.get("dicom") or []]


def check_listen_config(cfg: Config) -> None:
    """What the config's own checks cannot say: settings that make a listener useless (before models load)."""
    if not cfg.listen.allowed_calling:
        raise MammoError("listen.allowed_calling is empty: no sender could ever connect. Name the calling AE "
                         "titles allowed to send (--allow ORTHANC, or listen.allowed_calling=[ORTHANC])")
    if Destination.parse(cfg.listen.destination) and not dicom_outputs(cfg):
        raise MammoError(f"listen.destination is set but no DICOM results would be written "
                         f"(pipeline.dicom_out={cfg.pipeline.dicom_out} with pipeline.source_paths="
                         f"{cfg.pipeline.source_paths}): set pipeline.dicom_out=always, or no destination")


# --- the listener ---------------------------------------------------------------------------------------------
class Listener:
    """Receive, spool, analyse, store. `run` blocks until `stop` is set; call it once."""

    def __init__(self, cfg: Config, models, out_dir, log=print):
        check_listen_config(cfg)
        lc = cfg.listen
        self.cfg, self.lc, self.models = cfg, lc, models
        self.out = Path(out_dir)
        self.spool = Path(lc.spool) if lc.spool else self.out / "spool"
        self.destination = Destination.parse(lc.destination)
        self.journal = Journal(self.out / JOURNAL)
        self.salt = resolve_salt(cfg.pipeline.id_salt)
        self._log = log
        self._lock = threading.Lock()  # items, rows, counters and the status file
        self.items: dict[str, Item] = {}
        self.rows: dict[str, dict] = {}  # predictions.csv, by key
        self.counts = {"received": 0, "skipped": 0, "too_large": 0, "rejected_associations": 0, "analysed": 0,
                       "failed": 0, "stored": 0, "store_failures": 0}
        self.latencies: list[float] = []  # received -> results stored (at the destination, else in the folder)
        self.analyse_queue: queue.Queue = queue.Queue()
        self.store_queue: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.port = None

    def log(self, message: str) -> None:
        self._log(f"{time.strftime('%H:%M:%S')} listen: {message}")

    # --- start and stop ---
    def run(self, on_ready=None) -> dict:
        """Listen until `self.stop` is set; returns the status written to listen_status.json."""
        with folder_lock(self.out):
            self.spool.mkdir(parents=True, exist_ok=True)
            if removed := remove_stale_partials(self.spool):  # a kill mid-copy: never acknowledged, the sender has it
                self.log(f"removed {removed} temporary files a stopped listener left in the spool")
            self.threshold, _, self.allocate = prepare_folder(self.out, self.models, self.cfg)
            self._recover()
            workers = [threading.Thread(target=self._analyse_loop, name="listen-analyse", daemon=True),
                       threading.Thread(target=self._store_loop, name="listen-store", daemon=True)]
            for w in workers:
                w.start()
            server = self._start_server()
            try:
                self.log(f"listening as {self.lc.ae_title} on {self.lc.host}:{self.port} for "
                         f"{', '.join(self.lc.allowed_calling)}; results to {self.destination or 'the output folder only'}")
                if on_ready:
                    on_ready(self.port)
                while not self.stop.wait(0.5):
                    pass
            finally:
                server.shutdown()  # no new image; the one being analysed is finished, the rest wait in the spool
                self.stop.set()
                for w in workers:
                    w.join()
                status = self._write_status()
        self.log("stopped")
        return status

    def _start_server(self):
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
        from pynetdicom.sop_class import Verification

        # a received data set goes to a temporary file as it arrives (event.dataset_path), not into memory: its
        # size is checked there before anything reads it (a process-wide setting; event.dataset still works)
        _config.STORE_RECV_CHUNKED_DATASET = True

        ae = AE(ae_title=self.lc.ae_title)
        ae.require_calling_aet = list(self.lc.allowed_calling)
        ae.require_called_aet = True
        ae.maximum_associations = self.lc.max_associations
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.lc.timeout
        for context in AllStoragePresentationContexts:  # every storage class: a non-mammogram is skipped, not refused
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)  # C-ECHO, for the sender's connection test
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_REJECTED, self._on_rejected)]
        try:
            server = ae.start_server((self.lc.host, self.lc.port), block=False, evt_handlers=handlers)
        except OSError as exc:
            raise MammoError(f"cannot listen on {self.lc.host}:{self.lc.port}: {exc}") from None
        self.port = server.server_address[1]
        return server

    def _recover(self) -> None:
        """Rebuild the state from the journal and the spool, and queue what is not done."""
        self.items = self.journal.replay()
        for path in sorted(self.spool.glob("*.dcm")):  # written, then killed before it was journalled
            if path.stem not in self.items:
                apply_event(self.items, self.journal.append("received", path.stem, note="found in the spool"))
        todo = stores = given_up = 0
        for item in sorted(self.items.values(), key=lambda i: i.received):
            if item.skipped:
                continue
            if item.analysed:
                result = self.out / f"{item.image_id}.json"
                if result.is_file():
                    self.rows[item.key] = done_row(read_result(result))
                if self.destination and not item.stored:
                    self.store_queue.put(item.key)
                    stores += 1
                elif item.stored and not self.lc.keep_received:  # killed before it was deleted
                    self._spooled(item.key).unlink(missing_ok=True)
            elif not self._spooled(item.key).is_file():
                self.log(f"{item.key}: journalled but not in the spool {self.spool}; not analysed")
            elif item.starts < self.lc.analysis_attempts:
                self.analyse_queue.put(item.key)
                todo += 1
            else:
                given_up += 1
                self.rows[item.key] = self._failed_row(item)
        if self.rows:
            self._write_predictions()
        if todo or stores or given_up:
            self.log(f"resuming: {todo} to analyse, {stores} to store, {given_up} given up after "
                     f"{self.lc.analysis_attempts} analyses (listed in {STATUS})")

    def _spooled(self, key: str) -> Path:
        return self.spool / f"{key}.dcm"

    # --- receiving (pynetdicom's association threads) ---
    def _on_rejected(self, event) -> None:
        with self._lock:
            self.counts["rejected_associations"] += 1
        self.log(f"rejected an association from {event.assoc.requestor.ae_title!r} at "
                 f"{event.assoc.requestor.address} (calling AE title not allowed, or called AE title not ours)")

    def _on_store(self, event) -> int:
        import pydicom

        received = time.time()
        sender = event.assoc.requestor.ae_title
        uid = str(event.request.AffectedSOPInstanceUID)
        key = salted_hash(uid, self.salt, 16)
        received_file = event.dataset_path  # deleted by pynetdicom once this handler returns
        size = received_file.stat().st_size
        if size > self.lc.max_object_mb * 2**20:  # refused before anything reads it
            with self._lock:
                self.counts["too_large"] += 1
            self.log(f"{key}: refused an object of {size / 2**20:.1f} MB from {sender}, larger than "
                     f"listen.max_object_mb={self.lc.max_object_mb:g}; answered Out of Resources")
            return OUT_OF_RESOURCES
        try:
            sop_class = str(event.request.AffectedSOPClassUID)
            header = pydicom.dcmread(received_file, stop_before_pixels=True)
            modality = str(header.get("Modality", "") or "").strip().upper()
        except Exception as exc:  # a data set that does not decode: the sender is told, nothing is kept
            self.log(f"refused an object from {sender}: its data set does not decode ({type(exc).__name__})")
            return CANNOT_UNDERSTAND
        reason = not_a_mammogram(sop_class, modality)
        if reason:
            record = self.journal.append("skipped", key, reason=reason, sender=sender)
            with self._lock:
                apply_event(self.items, record)
                self.counts["skipped"] += 1
            self.log(f"{key}: skipped, {reason}")
            self._write_status()
            return SUCCESS
        try:
            write_durably(self._spooled(key), received_file)
            record = self.journal.append("received", key, sender=sender, t_received=round(received, 3))
        except OSError as exc:
            self.log(f"{key}: could not be spooled ({type(exc).__name__}: {exc}); answered Out of Resources")
            return OUT_OF_RESOURCES
        with self._lock:
            apply_event(self.items, record)
            self.counts["received"] += 1
        self.log(f"{key}: received from {sender}")
        self.analyse_queue.put(key)
        return SUCCESS

    # --- analysing (one thread: the models are not shared) ---
    def _analyse_loop(self) -> None:
        timer = StepTimer()
        while not self.stop.is_set():
            try:
                key = self.analyse_queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._analyse(key, timer)
            except Exception as exc:  # the journal or the folder failed: say so, keep listening
                self.log(f"{key}: analysis could not be recorded ({type(exc).__name__}: {exc}); retried at the "
                         f"next start")

    def _analyse(self, key: str, timer: StepTimer) -> None:
        path = self._spooled(key)
        with self._lock:
            item = apply_event(self.items, self.journal.append("started", key))
        started = time.perf_counter()
        row = process_one(path, self.allocate, self.models, self.cfg, self.threshold, self.out, timer)
        if row["status"] == "failed":
            with self._lock:
                item = apply_event(self.items, self.journal.append("failed", key, reason=row["error"]))
                self.counts["failed"] += 1
                self.rows[key] = row
                self._write_predictions()
            left = self.lc.analysis_attempts - item.starts
            self.log(f"{key}: analysis failed ({row['error']}); "
                     + (f"retried at the next start ({left} more)" if left > 0 else
                        f"given up after {item.starts} analyses; the image stays in {self.spool}"))
            self._write_status()
            return
        with self._lock:
            item = apply_event(self.items, self.journal.append("analysed", key, image_id=row["image_id"]))
            self.counts["analysed"] += 1
            self.rows[key] = row
            self._write_predictions()
        self.log(f"{key}: analysed as {row['image_id']} in {time.perf_counter() - started:.1f} s "
                 f"(score {row['score']}, {row['n_lesions']} boxes)")
        if self.destination:
            self.store_queue.put(key)
        else:
            self._stored(key)

    # --- storing (one thread, so a destination that is down does not hold up the analyses) ---
    def _store_loop(self) -> None:
        due: list = []  # (time, order, key, attempt)
        order = itertools.count()
        while not self.stop.is_set():
            wait = min(0.2, max(0.0, due[0][0] - time.time())) if due else 0.2
            try:
                key = self.store_queue.get(timeout=wait)
                heapq.heappush(due, (time.time(), next(order), key, 1))
            except queue.Empty:
                pass
            if not due or due[0][0] > time.time():
                continue
            _, _, key, attempt = heapq.heappop(due)
            try:
                self.destination.store(result_files(self.out, self.items[key].image_id), self.lc.ae_title,
                                       self.lc.timeout)
            except Exception as exc:  # StoreError, or a result file that does not read: retried, then reported
                reason = str(exc) if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"
                final = attempt >= self.lc.store_attempts
                with self._lock:
                    apply_event(self.items, self.journal.append("store_failed", key, reason=reason, attempt=attempt))
                    self.counts["store_failures"] += 1
                if final:
                    self.log(f"{key}: results NOT stored after {attempt} tries ({reason}); stored again at the "
                             f"next start, listed in {STATUS}")
                else:
                    delay = min(MAX_BACKOFF, self.lc.store_backoff * 2 ** (attempt - 1))
                    self.log(f"{key}: store try {attempt} of {self.lc.store_attempts} failed ({reason}); again "
                             f"in {delay:.1f} s")
                    heapq.heappush(due, (time.time() + delay, next(order), key, attempt + 1))
                self._write_status()
                continue
            self._stored(key)

    def _stored(self, key: str) -> None:
        with self._lock:
            item = apply_event(self.items, self.journal.append("stored", key))
            self.counts["stored"] += 1
            latency = time.time() - item.received
            self.latencies.append(latency)
        if not self.lc.keep_received:  # its results are in the folder (and at the destination): done with it
            self._spooled(key).unlink(missing_ok=True)
        where = self.destination or "the output folder"
        self.log(f"{key}: results stored ({where}), {latency:.1f} s after it was received")
        self._write_status()

    # --- reports ---
    def _failed_row(self, item: Item) -> dict:
        return {"image_id": item.image_id, "source": "", "status": "failed",
                "error": item.error or f"{item.starts} analyses started, none finished"}

    def _write_predictions(self) -> None:
        """(under _lock) predictions.csv as infer writes it: done rows, then failures."""
        rows = sorted(self.rows.values(), key=lambda r: r["status"] != "done")
        write_predictions_csv(self.out, [r if r["status"] == "done" else dict(r, score="", n_lesions="")
                                         for r in rows])

    def _write_status(self) -> dict:
        with self._lock:
            items = list(self.items.values())
            lat = sorted(self.latencies)
            status = {
                "listening": None if self.stop.is_set() else f"{self.lc.ae_title}@{self.lc.host}:{self.port}",
                "destination": str(self.destination or ""),
                "this_start": dict(self.counts),
                "waiting": {"analysis": sum(1 for i in items if not i.skipped and not i.analysed
                                            and i.starts < self.lc.analysis_attempts),
                            "store": sum(1 for i in items if i.analysed and not i.stored)},
                "latency_seconds": {"what": "received -> results stored at the destination (else written)",
                                    "images": len(lat), **({"median": round(statistics.median(lat), 3),
                                                            "max": round(lat[-1], 3)} if lat else {})},
                "given_up": [{"key": i.key, "analyses": i.starts, "reason": i.error} for i in items
                             if not i.skipped and not i.analysed and i.starts >= self.lc.analysis_attempts],
                "not_stored": [{"key": i.key, "image_id": i.image_id, "tries": i.store_failures, "reason": i.error}
                               for i in items if i.analysed and not i.stored and i.store_failures],
                "skipped": [{"key": i.key, "reason": i.skipped} for i in items if i.skipped],
            }
            atomic_write_text(self.out / STATUS, json.dumps(status, indent=2))
        return status


def listen(cfg: Config, models, out_dir, on_ready=None, log=print) -> dict:
    """Run a listener until SIGTERM or Ctrl-C; returns its final status."""
    import signal

    listener = Listener(cfg, models, out_dir, log=log)
    previous = signal.signal(signal.SIGTERM, lambda *_: listener.stop.set())
    try:
        return listener.run(on_ready)
    except KeyboardInterrupt:  # `run` has stopped everything on its way out
        return json.loads((listener.out / STATUS).read_text())
    finally:
        signal.signal(signal.SIGTERM, previous)
