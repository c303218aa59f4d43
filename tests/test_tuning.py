"""Tuning stage: search space checks, failed starts that leave no study, pruning, resuming in a second process,
recovery of a worker killed with SIGKILL, exact counts with several workers, `best` and `report`.

Most studies here use the `toy` trainer (no TensorFlow, deterministic, optional sleep per epoch) so that crash
timing can be controlled; one study trains the real classifier on synthetic crops and its best trial is trained
again with `python -m classifier train --config best.yaml`. The PostgreSQL multi-worker test is in
test_tuning_postgres.py.
"""
import mammo.runtime  # noqa: F401  (must stay the first import)

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mammo.config import load_config
from mammo.errors import ConfigError
from tuning.space import DEFAULT_SPACE, apply_overrides, load_space, parse_space, suggest

REPO = Path(__file__).resolve().parent.parent
CSV_CONFIG = REPO / "configs" / "csv.yaml"

TOY_SPACE = {"parameters": {
    "classifier.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    "classifier.optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
    "classifier.momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"classifier.optimizer": "sgd"}},
    "classifier.dropout": {"type": "float", "low": 0.0, "high": 0.6},
    "classifier.batch_size": {"type": "categorical", "choices": [16, 32, 64]},
}}


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _write_space(path: Path, space=None) -> Path:
    path.write_text(yaml.safe_dump(space or TOY_SPACE, sort_keys=False))
    return path


def _env(tmp_path, **extra) -> dict:
    env = dict(os.environ)
    env.update({"MAMMO_RUN_DIR": str(tmp_path / "runs"), "PYTHONUNBUFFERED": "1"})
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _toy_run_args(study_dir: Path, space: Path, n_trials: int, *extra) -> list[str]:
    return [sys.executable, "-m", "tuning", "run", "--study", "toy", "--out", str(study_dir), "--trainer", "toy",
            "--space", str(space), "--n-trials", str(n_trials), "classifier.epochs=4", "tuning.startup_trials=2",
            "tuning.warmup_epochs=1", "tuning.heartbeat_interval=1", "tuning.grace_period=2", *extra]


def _run(cmd, tmp_path, timeout=240, **env) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=REPO, env=_env(tmp_path, **env), capture_output=True, text=True, timeout=timeout)
    return res


def _load(study_dir: Path, name: str = "toy"):
    optuna = _optuna()
    return optuna.load_study(study_name=name, storage=f"sqlite:///{study_dir / 'study.db'}")


def _states(study) -> dict:
    out = {}
    for t in study.get_trials(deepcopy=False):
        key = "SURPLUS" if t.user_attrs.get("surplus") else t.state.name
        out[key] = out.get(key, 0) + 1
    return out


def _finished(study):
    return [t for t in study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")]


def _main(argv) -> int:
    from tuning.__main__ import main

    return main(argv)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _keep_sigterm_handler():
    """`python -m tuning run` turns SIGTERM into an interrupt; in-process calls must not leave that behind."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


# --- search space ----------------------------------------------------------------------------------------------------
def test_default_search_space_is_valid_and_conditional():
    optuna = _optuna()
    space = load_space(DEFAULT_SPACE)
    assert {"classifier.backbone", "classifier.learning_rate", "classifier.optimizer", "classifier.momentum",
            "classifier.dropout", "classifier.dense_units", "classifier.fine_tune_fraction", "classifier.batch_size",
            "classifier.augment_strength", "classifier.context_margin", "classifier.input_size",
            "classifier.class_weight"} <= set(space.keys)
    base = load_config()
    pretrained = load_config(overrides=["classifier.weights=imagenet"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {"sgd": 0, "adam": 0, "finetune": 0}
    for i in range(40):
        cfg = base if i % 2 else pretrained
        trial = study.ask()
        chosen = suggest(trial, space, cfg)
        assert ("classifier.momentum" in chosen) == (chosen["classifier.optimizer"] == "sgd")
        assert ("classifier.dense_units" in chosen) == (chosen["classifier.head"] == "dense")
        # weights (scratch / imagenet-offline) are tuned for MobileNetV2 only; fine-tuning depth and the freeze
        # schedule only for a pretrained backbone (weights given, and a backbone that has them)
        assert ("classifier.weights" in chosen) == (chosen["classifier.backbone"] == "mobilenet_v2")
        weights = chosen.get("classifier.weights", cfg.classifier.weights)
        tunes_depth = weights != "none" and chosen["classifier.backbone"] != "small_cnn"
        assert ("classifier.fine_tune_fraction" in chosen) == tunes_depth
        assert ("classifier.frozen_epochs" in chosen) == (weights != "none")
        assert set(chosen) == set(trial.params)  # optuna sees exactly the active parameters
        seen[chosen["classifier.optimizer"]] += 1
        seen["finetune"] += tunes_depth
        tuned = apply_overrides(cfg, chosen)
        assert tuned.classifier.learning_rate == chosen["classifier.learning_rate"]
        assert isinstance(tuned.classifier.input_size, int) and isinstance(tuned.classifier.class_weight, bool)
        assert 1e-4 <= tuned.classifier.learning_rate <= 1e-2
        study.tell(trial, 0.5)
    assert min(seen.values()) > 0


@pytest.mark.parametrize("param,spec,needle", [
    ("classifier.learnin_rate", {"type": "float", "low": 0.1, "high": 0.2}, "did you mean 'classifier.learning_rate'"),
    ("clasifier.dropout", {"type": "float", "low": 0.1, "high": 0.2}, "unknown config section 'clasifier'"),
    ("detector.imgsz", {"type": "int", "low": 320, "high": 640}, "only keys of the classifier"),
    ("classifier.dropout", {"type": "float", "low": 0.5, "high": 0.1}, "empty range"),
    ("classifier.dropout", {"type": "float", "low": 0.3, "high": 0.3}, "empty range"),
    ("classifier.batch_size", {"type": "categorical", "choices": []}, "non-empty list"),
    ("classifier.batch_size", {"type": "float", "low": 8, "high": 64}, "type float does not fit"),
    ("classifier.input_size", {"type": "categorical", "choices": [64, "big"]}, "choice 'big' does not fit"),
    ("classifier.class_weight", {"type": "categorical", "choices": [0, 1]}, "does not fit"),
    ("classifier.learning_rate", {"type": "float", "low": 0, "high": 0.1, "log": True}, "needs low > 0"),
    ("classifier.learning_rate", {"type": "float", "lo": 0.001, "high": 0.1}, "unknown setting 'lo'"),
    ("classifier.learning_rate", {"type": "uniform", "low": 0.001, "high": 0.1}, "'type' must be one of"),
    ("classifier.momentum", {"type": "float", "low": 0.8, "high": 0.9, "when": {"classifier.optimizr": "sgd"}},
     "did you mean 'classifier.optimizer'"),
])
def test_bad_search_space_is_a_clear_error_naming_the_key(param, spec, needle):
    with pytest.raises(ConfigError, match=needle) as err:
        parse_space({"parameters": {param: spec}}, "space.yaml")
    assert param in str(err.value) and "space.yaml" in str(err.value)


def test_condition_must_refer_to_an_earlier_parameter():
    bad = {"parameters": {
        "classifier.momentum": {"type": "float", "low": 0.8, "high": 0.9, "when": {"classifier.optimizer": "sgd"}},
        "classifier.optimizer": {"type": "categorical", "choices": ["adam", "sgd"]}}}
    with pytest.raises(ConfigError, match="defined after it"):
        parse_space(bad)


# --- failed starts: a clear error and no study -------------------------------------------------------------------
def test_failed_starts_create_no_study(tmp_path, capsys):
    optuna = _optuna()
    good = _write_space(tmp_path / "space.yaml")
    bad = _write_space(tmp_path / "bad.yaml", {"parameters": {"classifier.dropout": {"type": "float", "low": 0.6,
                                                                                      "high": 0.1}}})
    unknown = _write_space(tmp_path / "unknown.yaml", {"parameters": {"classifier.lr": {"type": "float", "low": 0.1,
                                                                                        "high": 0.2}}})
    d = tmp_path / "study"
    base = ["run", "--study", "s", "--out", str(d), "--n-trials", "2", "--trainer", "toy"]

    assert _main([*base, "--space", str(bad)]) == 2
    assert "classifier.dropout: empty range" in capsys.readouterr().err
    assert _main([*base, "--space", str(unknown)]) == 2
    assert "classifier.lr: unknown parameter" in capsys.readouterr().err
    assert not (d / "study.db").exists()

    port = _free_port()  # nothing listens there
    url = f"postgresql://optuna:secret@127.0.0.1:{port}/optuna"
    assert _main([*base, "--space", str(good), "--storage", url]) == 2
    err = capsys.readouterr().err
    assert "cannot be reached" in err and f"127.0.0.1:{port}" in err and "secret" not in err
    assert _main([*base, "--space", str(good), "--storage", "nosuchdb://x/y"]) == 2
    assert "not a valid database URL" in capsys.readouterr().err

    # data that cannot be read: checked before the study exists (the real trainer reads the annotations)
    assert _main([*base[:-2], "--space", str(good), "--config", str(CSV_CONFIG),
                  f"data.annotations={tmp_path / 'missing.csv'}"]) == 2
    assert "missing.csv" in capsys.readouterr().err
    assert _main([*base, "--space", str(good), "tuning.metric=accuracy"]) == 2
    assert "tuning.metric" in capsys.readouterr().err

    db = d / "study.db"
    if db.exists():  # the storage may exist (the data check runs first); a study must not
        assert optuna.get_all_study_names(f"sqlite:///{db}") == []


def test_best_and_report_need_an_existing_study(tmp_path, capsys):
    d = tmp_path / "study"
    assert _main(["best", "--study", "nope", "--study-dir", str(d), "--out", str(tmp_path / "b")]) == 2
    assert "no study storage" in capsys.readouterr().err
    assert not (d / "study.db").exists()  # reading never creates a storage

    optuna = _optuna()
    d.mkdir()
    optuna.create_study(study_name="other", storage=f"sqlite:///{d / 'study.db'}")
    for cmd in ("best", "report"):
        assert _main([cmd, "--study", "nope", "--study-dir", str(d), "--out", str(tmp_path / cmd)]) == 2
        err = capsys.readouterr().err
        assert "study 'nope' does not exist" in err and "other" in err
    # a study without any completed trial has no best
    assert _main(["best", "--study", "other", "--study-dir", str(d), "--out", str(tmp_path / "b")]) == 2
    assert "no completed trial" in capsys.readouterr().err


# --- toy studies: pruning, resuming, crashes, several workers ------------------------------------------------------
def test_toy_study_prunes_resumes_in_a_second_process_and_reports(tmp_path):
    space = _write_space(tmp_path / "space.yaml")
    d = tmp_path / "study"
    first = _run(_toy_run_args(d, space, 5), tmp_path)
    assert first.returncode == 0, first.stderr
    study = _load(d)
    before = {t.number: (t.state, t.datetime_complete, t.params) for t in study.get_trials(deepcopy=False)}
    assert len(_finished(study)) == 5

    second = _run(_toy_run_args(d, space, 9), tmp_path)
    assert second.returncode == 0, second.stderr
    assert "resumed; 5 finished" in second.stdout
    study = _load(d)
    trials = study.get_trials(deepcopy=False)
    assert len(_finished(study)) == 9 and _states(study).get("FAIL", 0) == 0
    for t in trials:  # nothing already finished was recomputed
        if t.number in before:
            assert (t.state, t.datetime_complete, t.params) == before[t.number]
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    # pruning happened and saved epochs; every trial's seed derives from its number
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert pruned and all(t.user_attrs["epochs_run"] < 4 for t in pruned)
    assert all(t.user_attrs["seed"] == t.number for t in trials)
    assert all(max(t.intermediate_values) == t.user_attrs["epochs_run"] for t in _finished(study))

    # report: figures, table, page, and the dashboard hint
    rep = _run([sys.executable, "-m", "tuning", "report", "--study", "toy", "--study-dir", str(d),
                "--out", str(tmp_path / "report")], tmp_path)
    assert rep.returncode == 0, rep.stderr
    out = tmp_path / "report"
    for f in ("optimization_history.png", "intermediate_values.png", "param_importances.png", "trials.csv",
              "index.html", "summary.json", "config.yaml"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert f"optuna-dashboard sqlite:///{d / 'study.db'}" in rep.stdout
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] == 9 and summary["pruned"] == len(pruned)
    assert summary["epochs_saved_by_pruning"] == sum(4 - t.user_attrs["epochs_run"] for t in pruned) > 0
    assert len((out / "trials.csv").read_text().strip().splitlines()) == len(trials) + 1

    # best: a plain config with the best trial's parameters and seed
    assert _main(["best", "--study", "toy", "--study-dir", str(d), "--out", str(tmp_path / "best")]) == 0
    cfg = load_config(tmp_path / "best" / "best.yaml")
    best = study.best_trial
    for key, value in best.params.items():
        assert getattr(cfg.classifier, key.split(".")[1]) == pytest.approx(value)
    assert cfg.run.seed == best.number and cfg.classifier.epochs == 4


def test_hyperband_and_fbeta_in_process(tmp_path, capsys):
    """Hyperband as the pruner, F-beta as the metric (trials are pruned on the epoch's auPR, ranked on F-beta)."""
    space = _write_space(tmp_path / "space.yaml")
    d = tmp_path / "study"
    assert _main(["run", "--study", "hb", "--out", str(d), "--trainer", "toy", "--space", str(space),
                  "--n-trials", "10", "--pruner", "hyperband", "--metric", "fbeta", "classifier.epochs=9",
                  "tuning.startup_trials=2"]) == 0
    study = _load(d, "hb")
    finished = _finished(study)
    assert len(finished) == 10 and study.user_attrs["metric"] == "fbeta"
    assert any(t.state.name == "PRUNED" for t in finished)
    best = study.best_trial
    assert best.value == pytest.approx(best.user_attrs["metrics"]["fbeta"])
    assert best.intermediate_values[9] == pytest.approx(best.user_attrs["metrics"]["aupr"])
    # a second run with another metric on the same study is refused before any trial
    assert _main(["run", "--study", "hb", "--out", str(d), "--trainer", "toy", "--space", str(space),
                  "--n-trials", "12", "--metric", "aupr"]) == 2
    assert "optimizes fbeta, not aupr" in capsys.readouterr().err
    assert len(_load(d, "hb").get_trials(deepcopy=False)) == len(study.get_trials(deepcopy=False))


def _wait_for(predicate, timeout: float, what: str, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the worker exited ({proc.returncode}) before {what}:\n{proc.communicate()}")
        time.sleep(0.1)
    if proc is not None:
        proc.kill()
        raise AssertionError(f"timed out waiting for {what}; the worker said:\n{proc.communicate()}")
    raise AssertionError(f"timed out waiting for {what}")


def _study_exists(d: Path, name: str = "toy") -> bool:
    """Looked up with sqlite3 directly: opening the storage with optuna would race the worker creating it."""
    import sqlite3

    if not (d / "study.db").exists():
        return False
    try:
        with sqlite3.connect(f"file:{d / 'study.db'}?mode=ro", uri=True, timeout=30) as con:
            return bool(con.execute("SELECT 1 FROM studies WHERE study_name = ?", (name,)).fetchall())
    except sqlite3.OperationalError:  # no tables yet
        return False


def _running_with_report(d: Path):
    if not _study_exists(d):
        return None
    study = _load(d)
    for t in study.get_trials(deepcopy=False):
        if t.state.name == "RUNNING" and t.intermediate_values and not t.user_attrs.get("surplus"):
            return t
    return None


def test_worker_killed_mid_trial_is_recovered(tmp_path):
    space = _write_space(tmp_path / "space.yaml")
    d = tmp_path / "study"
    args = _toy_run_args(d, space, 3, "tuning.startup_trials=10")  # no pruning: every trial runs 4 epochs
    proc = subprocess.Popen(args, cwd=REPO, env=_env(tmp_path, MAMMO_TOY_EPOCH_SECONDS=3),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        victim = _wait_for(lambda: _running_with_report(d), 120, "a trial to report its first epoch", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    study = _load(d)
    killed = next(t for t in study.get_trials(deepcopy=False) if t.number == victim.number)
    assert killed.state.name == "RUNNING"  # nobody marked it: the worker died
    done_before = {t.number for t in _finished(study)}

    again = _run(args, tmp_path, MAMMO_TOY_EPOCH_SECONDS=0.05)
    assert again.returncode == 0, again.stdout + again.stderr
    study = _load(d)
    trials = study.get_trials(deepcopy=False)
    killed = next(t for t in trials if t.number == victim.number)
    assert killed.state.name == "FAIL"  # marked by the heartbeat check of the next run
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1, "retried exactly once"
    retry = retries[0]
    assert retry.state.name == "COMPLETE" and retry.params == killed.params
    assert retry.user_attrs["seed"] == killed.user_attrs["seed"] == victim.number  # the same computation
    assert f"retry of trial {victim.number}" in again.stdout
    assert len(_finished(study)) == 3  # the right count: the failed trial is replaced, not added
    assert _states(study) == {"COMPLETE": 3, "FAIL": 1}
    assert done_before <= {t.number for t in _finished(study)}


def test_ctrl_c_queues_the_interrupted_trial_for_the_next_run(tmp_path):
    space = _write_space(tmp_path / "space.yaml")
    d = tmp_path / "study"
    args = _toy_run_args(d, space, 2, "tuning.startup_trials=10")
    proc = subprocess.Popen(args, cwd=REPO, env=_env(tmp_path, MAMMO_TOY_EPOCH_SECONDS=3),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # 3 s per epoch: the trial is still running when the signal lands, even on a heavily loaded machine
    victim = _wait_for(lambda: _running_with_report(d), 120, "a trial to report its first epoch", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "run the same command again" in err and f"trial {victim.number} queued again" in out
    study = _load(d)
    waiting = [t for t in study.get_trials(deepcopy=False) if t.state.name == "WAITING"]
    assert len(waiting) == 1 and waiting[0].system_attrs["failed_trial"] == victim.number
    assert waiting[0].params == victim.params  # the same trial, queued with its parameters

    again = _run(args, tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    study = _load(d)
    retry = [t for t in study.get_trials(deepcopy=False) if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE"
    assert _states(study) == {"COMPLETE": 2, "FAIL": 1}


def test_two_local_workers_share_one_study_exactly(tmp_path):
    space = _write_space(tmp_path / "space.yaml")
    d = tmp_path / "study"
    res = _run(_toy_run_args(d, space, 8, "--workers", "2", "run.threads=2"), tmp_path, MAMMO_TOY_EPOCH_SECONDS=0.05)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "started 2 workers" in res.stdout and "1 thread(s) each" in res.stdout
    study = _load(d)
    finished = _finished(study)
    assert len(finished) == 8
    workers = {t.user_attrs["worker"] for t in finished}
    assert len(workers) == 2  # both processes ran trials
    assert set(_states(study)) <= {"COMPLETE", "PRUNED", "SURPLUS"}


# --- the real classifier on synthetic crops -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic_csv(tmp_path_factory) -> Path:
    from mammo.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("syn"), 32, seed=3, shape=(192, 160), n_lesions=2)


def test_real_classifier_study_prunes_resumes_and_best_trains(tmp_path, synthetic_csv):
    """Trials train the classifier (small CNN, 32-pixel crops, 2 epochs). Two trials are queued: a sound one and
    one with a learning rate that learns nothing (validation auPR about 0.27 against 1.0 after one epoch), which
    the median pruner stops after its first epoch. A second process adds a third trial. The best trial's config
    then trains unchanged with `python -m classifier train --config`."""
    optuna = _optuna()
    space = _write_space(tmp_path / "space.yaml")
    d = tmp_path / "study"
    d.mkdir()
    common = [sys.executable, "-m", "tuning", "run", "--study", "real", "--out", str(d), "--space", str(space),
              "--config", str(CSV_CONFIG), f"data.annotations={synthetic_csv}", "classifier.input_size=32",
              "classifier.epochs=2", "classifier.crops_per_lesion=2", "classifier.negatives_per_image=1",
              "classifier.calibration=none", "classifier.augment_strength=0",
              "data.split_fractions={train: 0.5, val: 0.5}",
              "tuning.startup_trials=1", "tuning.warmup_epochs=1"]
    storage = f"sqlite:///{d / 'study.db'}"
    queued = optuna.create_study(study_name="real", storage=storage, direction="maximize")
    queued.enqueue_trial({"classifier.learning_rate": 3e-3, "classifier.optimizer": "adam",
                          "classifier.dropout": 0.3, "classifier.batch_size": 16})
    queued.enqueue_trial({"classifier.learning_rate": 1e-5, "classifier.optimizer": "sgd",
                          "classifier.momentum": 0.8, "classifier.dropout": 0.3, "classifier.batch_size": 16})
    first = _run([*common, "--n-trials", "2"], tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    second = _run([*common, "--n-trials", "3"], tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resumed; 2 finished (1 pruned)" in second.stdout

    study = optuna.load_study(study_name="real", storage=storage)
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials[:2]] == ["COMPLETE", "PRUNED"]
    assert len(_finished(study)) == 3
    assert trials[0].intermediate_values == {1: pytest.approx(trials[0].intermediate_values[1]),
                                             2: pytest.approx(trials[0].intermediate_values[2])}
    assert trials[1].user_attrs["epochs_run"] == 1 and list(trials[1].intermediate_values) == [1]
    assert not (d / "trials" / "00001" / "model.keras").exists()  # pruned: training stopped, nothing saved
    assert (d / "trials" / "00000" / "model.keras").is_file()
    assert trials[0].user_attrs["metrics"]["aupr"] == pytest.approx(trials[0].value)

    assert _main(["best", "--study", "real", "--study-dir", str(d), "--out", str(tmp_path / "best")]) == 0
    best_yaml = tmp_path / "best" / "best.yaml"
    train = _run([sys.executable, "-m", "classifier", "train", "--config", str(best_yaml),
                  "--out", str(tmp_path / "retrain")], tmp_path)
    assert train.returncode == 0, train.stdout + train.stderr
    assert (tmp_path / "retrain" / "model.keras").is_file()
    retrained = load_config(tmp_path / "retrain" / "config.yaml")
    assert retrained.classifier == load_config(best_yaml).classifier
    assert retrained.classifier.learning_rate == pytest.approx(study.best_params["classifier.learning_rate"])


# --- failed trials: one line each, the tracebacks in a log, and a non-zero exit --------------------------------------
HALF_FAILING = '''
from tuning.trainers import ToyTrainer


class HalfFailing(ToyTrainer):
    """Every other trial fails (odd seeds), as trials asking for weights that are not installed did."""

    def train(self, cfg, run_dir, on_epoch_end=None, crop_seed=0):
        if cfg.run.seed % 2:
            raise FileNotFoundError("weights not installed\\nsecond line of the message")
        return super().train(cfg, run_dir, on_epoch_end, crop_seed)
'''


def test_study_whose_trials_fail_says_so_and_exits_non_zero(tmp_path):
    (tmp_path / "halffail.py").write_text(HALF_FAILING)
    space, d = _write_space(tmp_path / "space.yaml"), tmp_path / "study"
    args = _toy_run_args(d, space, 4)
    args[args.index("toy", args.index("--trainer"))] = "halffail:HalfFailing"
    res = _run(args, tmp_path, PYTHONPATH=tmp_path)
    assert res.returncode == 1, res.stderr[-2000:]
    out = res.stdout + res.stderr
    assert "Traceback" not in out
    failed_lines = [line for line in out.splitlines() if " FAIL " in line]
    assert len(failed_lines) == _states(_load(d))["FAIL"] >= 3
    assert all("weights not installed second line" in line and "failed_trials.log" in line for line in failed_lines)
    assert "trial(s) of this run failed" in out and "error: " in res.stderr
    log = (d / "failed_trials.log").read_text()
    assert log.count("Traceback") == len(failed_lines) and "FileNotFoundError" in log
    assert len(_finished(_load(d))) == 4  # the study still reached its target


def test_imagenet_weights_missing_stop_the_study_before_it_starts(tmp_path, monkeypatch):
    from mammo import weights_store
    from tuning.study import check_pretrained_weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(weights_store, "package_file", lambda: None)
    cfg = load_config(None, [])
    with pytest.raises(ConfigError, match="imagenet-offline.*not installed.*weights install"):
        check_pretrained_weights(load_space(DEFAULT_SPACE), cfg)
    no_pretrained = parse_space({"parameters": {"classifier.weights": {"type": "categorical", "choices": ["none"]}}})
    check_pretrained_weights(no_pretrained, cfg)  # nothing to install
