"""`pipeline infer --engine ray`: the per-image function of `infer` (pipeline.infer.process_one) in a pool of Ray
actors, each loading the models once. Planning (what is done, resume) and the run's files (predictions.csv,
failures.json) are the single-process run's own code; only the loop in between differs.

Ray actors with our own submit loop (ray.wait), not Ray Data's map_batches: each image is one call whose result is
its predictions.csv row, so a bad file is a failed row like in the single-process run; the driver's tqdm bar moves
per image; an image whose actor died (SIGKILL, out of memory) is sent once more to a live actor and then recorded
as failed, instead of Ray retrying it forever (max_task_retries would repeat an image that kills every worker);
the loop can hold back the few images whose id depends on an earlier image (IdGroups), which keeps ids identical
to the single-process run; and resuming needs nothing from Ray: each image's JSON, written last and atomically by
the worker on the shared filesystem, marks it as done, so a rerun skips it whatever engine made it.
"""
from __future__ import annotations

import mammo.runtime  # noqa: F401  (first in the actors' processes too: import order, offline switches)

import dataclasses
import logging
import os
import socket
import time
from collections import defaultdict, deque
from pathlib import Path
from types import SimpleNamespace

from tqdm import tqdm

from mammo import dicom
from mammo.atomic import folder_lock
from mammo.errors import MammoError
from mammo.imaging import DICOM_SUFFIXES
from mammo.runs import peak_memory_mb
from pipeline.ids import IdAllocator, image_id_for, source_key, written_source
from pipeline.infer import StepTimer, finish_run, plan_run, process_one
from pipeline.models import bundle_fingerprint

# GiB Ray reserves per actor, by classifier.inference_backend. TensorFlow: measured peak 1.70-1.72 GiB, one actor
# with the shipped models on full-size DICOMs. torch (no TensorFlow in the process): single-process folder runs
# peaked at 1.29-1.38 GiB (`pipeline benchmark`), plus ~0.1 GiB for Ray's worker runtime.
# onnx: not measured under Ray; the torch figure, since keras-on-torch is its fallback (no classifier.onnx).
WORKER_MEMORY_GB = {"onnx": 1.5, "torch": 1.5, "tensorflow": 1.8}
IN_FLIGHT_PER_WORKER = 2  # one running, one queued: no idle gap between images, at most 2 lost if a worker dies
ATTEMPTS = 2  # an image whose worker died is sent once more, then recorded as failed
MAX_RESTARTS = 3  # a killed worker process is restarted (models reloaded) this many times
STARTUP_TIMEOUT_S = 900  # no worker up by then: the cluster cannot place one (resources), say so


def import_ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
    try:
        import ray
    except ImportError:
        raise MammoError("--engine ray needs Ray, an optional dependency: pip install -r requirements-ray.txt") \
            from None
    return ray


class InferWorker:
    """One Ray actor: the models loaded once, then `process_one` on each image it is sent."""

    def __init__(self, bundle_root: str, cfg, out_dir: str, driver_cwd: str):
        from pipeline.models import PipelineModels, read_bundle

        self.node = socket.gethostname()
        if os.path.isdir(driver_cwd):
            os.chdir(driver_cwd)  # relative INPUT paths mean on every node what they meant to the driver
        self.out_dir, self.cfg = Path(out_dir), cfg
        if not self.out_dir.is_dir():
            raise MammoError(f"output folder {out_dir} is not visible on Ray node {self.node}: --out must be on a "
                             f"filesystem every node mounts at the same path")
        self.models = PipelineModels.load(read_bundle(bundle_root), cfg)

    def info(self) -> dict:
        return {"node": self.node, "pid": os.getpid(), "peak_memory_mb": peak_memory_mb()}

    def process(self, path: str, threshold: float, taken: dict):
        """(row, step seconds, info). `taken`: the ids that images before this one hold (see IdGroups)."""
        timer = StepTimer()
        allocate = IdAllocator(self.cfg.pipeline.image_id, self.cfg.pipeline.id_salt)  # the driver's salt
        allocate.used.update(taken)
        row = process_one(Path(path), allocate, self.models, self.cfg, threshold, self.out_dir, timer)
        if row["status"] == "failed" and not os.path.exists(path):
            row["error"] += (f" on Ray node {self.node} (every node must see the inputs at the same path: a shared "
                             f"filesystem)")
        return row, (timer.per_image[0] if timer.per_image else {}), self.info()


class IdGroups:
    """Keeps image ids identical to the single-process run. There an id is allocated after the image is read (its
    patient fields choose between the file name and a hash) and the second file to want a name gets a path-hash
    suffix, so the first image in input order to take a name decides the ids of the later ones with that name.
    Images that cannot take their name (a hash id already without patient fields) or whose name is unique in the
    run (nearly all) run at once; for a shared name (CBIS-DDSM's 1-1.dcm in every folder) the later images wait
    until one takes the name, or until all earlier ones finished without it."""

    def __init__(self, plan, todo: dict):
        mode, salt = plan.allocate.mode, plan.allocate.salt
        self.name = {}
        for i, p in todo.items():  # read_mammogram's own test for a DICOM (which 'auto' always hashes)
            is_dicom = Path(p).suffix.lower() in DICOM_SUFFIXES or dicom.is_dicom(p)
            if image_id_for(p, mode, salt, (), is_dicom) == image_id_for(p, "name"):
                self.name[i] = image_id_for(p, "name")
        self.claimed = {}  # name -> source_key of the image that holds it (IdAllocator.used's values)
        self.held = {}  # name -> the later images that want it, in input order
        self.ready = deque()
        for i in todo:
            n = self.name.get(i)
            if n is None:
                self.ready.append(i)
            elif n in plan.allocate.used:  # an image done by an earlier run holds it
                self.claimed[n] = plan.allocate.used[n]
                self.ready.append(i)
            elif n in self.held:
                self.held[n].append(i)
            else:
                self.held[n] = deque()
                self.ready.append(i)

    def taken(self, i: int) -> dict:
        n = self.name.get(i)
        return {n: self.claimed[n]} if n in self.claimed else {}

    def finished(self, i: int, row: dict, key: str) -> None:
        n = self.name.get(i)
        if n is None or n in self.claimed:
            return
        waiting = self.held.pop(n)
        if row["image_id"] == n:
            self.claimed[n] = key
            self.ready.extend(waiting)
        elif waiting:
            self.ready.append(waiting.popleft())
            self.held[n] = waiting


def start_ray(ray, address: str | None, n_cpus: int) -> None:
    """Join the cluster at `address`, or start a local Ray of `n_cpus` logical CPUs (no dashboard, nothing fetched)."""
    quiet = dict(log_to_driver=False, logging_level=logging.WARNING)  # worker logs stay in Ray's session folder
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(num_cpus=n_cpus, include_dashboard=False, object_store_memory=256 << 20, **quiet)


def workers_that_fit(ray, workers: int, memory: int, local: bool) -> int:
    """On a local Ray, as many workers as this node's memory holds (with a warning); a cluster may scale up."""
    node_memory = ray.cluster_resources().get("memory", 0)
    fit = int(node_memory // memory)
    if local and fit < workers:
        if fit == 0:
            raise MammoError(f"one Ray worker needs {memory / 2**30:.1f} GB (--worker-memory) and this node offers "
                             f"{node_memory / 2**30:.1f} GB to Ray")
        print(f"warning: this node's memory holds {fit} workers of {memory / 2**30:.1f} GB, not {workers}: "
              f"running {fit}")
        return fit
    return workers


def run_inference_ray(inputs, out_dir, bundle, cfg, *, overwrite: bool = False, address: str | None = None,
                      workers: int = 2, worker_memory_gb: float | None = None, worker_cpus: int | None = None,
                      progress: bool = True) -> dict:
    """`run_inference` on Ray: same planning and files, images run by `workers` actors; returns the summary with
    an `engine` section (per-worker counts, nodes, peak memory of each worker)."""
    out_dir = Path(out_dir)
    worker_cpus = worker_cpus or cfg.run.threads
    worker_memory_gb = worker_memory_gb or WORKER_MEMORY_GB[cfg.classifier.inference_backend]
    engine = {"name": "ray", "address": address or "local", "workers": workers, "worker_cpus": worker_cpus,
              "worker_memory_gb": worker_memory_gb, "per_worker": {}}
    models = SimpleNamespace(threshold=bundle.threshold, fingerprint=bundle_fingerprint(bundle),
                             stacker=bundle.info.get("stacker"),  # what plan_run reads; no model loaded here
                             calibration=bundle.calibration, findings=bundle.findings,
                             operating_curve=bundle.operating_curve)
    timer = StepTimer()
    with folder_lock(out_dir):  # held by the driver for the whole run; the actors only write inside
        plan = plan_run(inputs, out_dir, models, cfg, overwrite)
        todo = dict(plan.todo())
        started = time.perf_counter()
        if todo:  # all done already: nothing to start
            ray = import_ray()
            start_ray(ray, address, workers * worker_cpus)
            try:
                memory = int(worker_memory_gb * 2**30)
                engine["workers"] = workers_that_fit(ray, workers, memory, local=not address)
                # The driver's resolved id salt: another node's installation salt would give other ids and keys.
                worker_cfg = dataclasses.replace(
                    cfg, run=dataclasses.replace(cfg.run, threads=worker_cpus),
                    pipeline=dataclasses.replace(cfg.pipeline, id_salt=plan.allocate.salt))
                actor = ray.remote(InferWorker).options(num_cpus=worker_cpus, memory=memory,
                                                        max_restarts=MAX_RESTARTS, max_task_retries=0)
                actors = [actor.remote(str(Path(bundle.root).resolve()), worker_cfg, str(out_dir.resolve()),
                                       os.getcwd()) for _ in range(engine["workers"])]
                first_up = run_pool(ray, actors, plan, todo, timer, engine["per_worker"], progress,
                                    cfg.pipeline.source_paths)
                engine["startup_seconds"] = first_up - started  # Ray started, the first actor's models loaded
                started = first_up  # loop_seconds counts from there, as the single-process run's loop does
            finally:
                ray.shutdown()
        summary = finish_run(plan, timer, started)
    summary["engine"] = engine
    return summary


def died_row(path, source_paths: str, salt: str) -> dict:
    source = written_source(path, source_paths, salt)
    name = path if source_paths == "full" else (source or "<input>")  # as process_one keeps paths out of reasons
    return {"image_id": "", "source": source, "status": "failed",
            "error": f"{name}: the Ray worker died twice while processing it (out of memory, or killed)"}


def run_pool(ray, actors, plan, todo: dict, timer: StepTimer, per_worker: dict, progress: bool,
             source_paths: str) -> float:
    """Feed images to the actors that are up, collect rows into `plan.rows`, resend what a dead actor held;
    returns when (perf_counter) the first actor was up."""
    from ray.exceptions import RayActorError, RayError

    groups = IdGroups(plan, todo)
    pings = {a.info.remote(): k for k, a in enumerate(actors)}  # an actor takes images once its ping returns
    up, in_flight, load, attempts = set(), {}, defaultdict(int), defaultdict(int)
    stats = {k: {"node": "", "pids": [], "done": 0, "failed": 0, "lost_in_flight": 0, "peak_memory_mb": 0.0}
             for k in range(len(actors))}
    remaining, waited_since, first_up, last_error = len(todo), time.perf_counter(), None, None
    bar = tqdm(total=len(plan.rows), initial=len(plan.rows) - len(todo), desc="infer (ray)", unit="img",
               disable=not progress)

    def note(k, info):
        s = stats[k]
        s["node"] = info["node"]
        if info["pid"] not in s["pids"]:
            s["pids"].append(info["pid"])
        s["peak_memory_mb"] = max(s["peak_memory_mb"], info["peak_memory_mb"])

    def complete(i, row):
        nonlocal remaining
        plan.rows[i] = row
        groups.finished(i, row, source_key(todo[i], plan.allocate.salt))
        remaining -= 1
        bar.update(1)
        if row["status"] == "failed":
            bar.write(f"failed: {row['error']}")

    try:
        while remaining:
            for k in sorted(up):
                while load[k] < IN_FLIGHT_PER_WORKER and groups.ready:
                    i = groups.ready.popleft()
                    ref = actors[k].process.remote(str(todo[i]), plan.threshold, groups.taken(i))
                    in_flight[ref], load[k] = (k, i), load[k] + 1
            if not in_flight and not pings:
                raise MammoError(f"every Ray worker died ({last_error}); {remaining} images not done: rerun the "
                                 f"command to finish them (done images are kept)")
            finished, _ = ray.wait(list(in_flight) + list(pings), num_returns=1, timeout=5.0)
            if not up and not finished and time.perf_counter() - waited_since > STARTUP_TIMEOUT_S:
                raise MammoError(f"no Ray worker started in {STARTUP_TIMEOUT_S} s: no node has the CPUs and memory "
                                 f"one worker asks for (see `ray status`; --worker-memory, --worker-cpus)")
            for ref in finished:
                if ref in pings:
                    k = pings.pop(ref)
                    try:
                        note(k, ray.get(ref))
                        up.add(k)
                        first_up = first_up or time.perf_counter()
                    except RayActorError as exc:  # out of restarts, or cannot start (e.g. --out not visible)
                        last_error = exc
                    continue
                k, i = in_flight.pop(ref)
                load[k] -= 1
                try:
                    row, seconds, info = ray.get(ref)
                except RayError as exc:  # the actor's process died (killed, out of memory) with this image in flight
                    last_error = exc
                    stats[k]["lost_in_flight"] += 1
                    if k in up:  # wait for its restart before sending it more
                        up.discard(k)
                        pings[actors[k].info.remote()] = k
                    attempts[i] += 1
                    if attempts[i] < ATTEMPTS:
                        groups.ready.appendleft(i)
                        continue
                    row, seconds, info = died_row(todo[i], source_paths, plan.allocate.salt), {}, None
                if info:
                    note(k, info)
                    stats[k]["done" if row["status"] == "done" else "failed"] += 1
                if seconds:
                    timer.per_image.append(seconds)
                    for step, dt in seconds.items():
                        timer.totals[step] += dt
                complete(i, row)
    finally:
        bar.close()
        per_worker.update({f"worker-{k}": s for k, s in stats.items()})
    return first_up
