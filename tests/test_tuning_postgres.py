"""Many workers on one study in a real PostgreSQL server: no trial lost or duplicated, all counted.

The test starts its own server (initdb + pg_ctl from Debian's `postgresql` package, which scripts/system-deps.sh
installs) in a temporary folder on a free port of 127.0.0.1, and removes it afterwards. initdb refuses to run
as root, so as root the server runs as the `postgres` system user (or `nobody`). Where the server binaries or
the driver are missing the test is skipped with the reason, except in CI (CI=true), where it fails.
"""
import mammo.runtime  # noqa: F401  (must stay the first import)

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ci import unavailable
import yaml

REPO = Path(__file__).resolve().parent.parent

SPACE = {"parameters": {
    "classifier.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    "classifier.optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
    "classifier.momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"classifier.optimizer": "sgd"}},
    "classifier.dropout": {"type": "float", "low": 0.0, "high": 0.6},
}}


def _unavailable(reason: str):
    unavailable(reason, "scripts/system-deps.sh")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(re.sub(r"\D", "", p) or 0))
    if not bins:
        _unavailable("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin "
                     "(apt-get install postgresql, or run scripts/system-deps.sh as root)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("the PostgreSQL driver psycopg is not installed (pip install -r requirements.txt)")
    bindir = Path(bins[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="mammo-pg-"))  # not pytest's tmp_path: that one is private to root
    prefix = []
    if os.geteuid() == 0:
        user = next((u for u in ("postgres", "nobody") if _user_exists(u)), None)
        if user is None or not shutil.which("runuser"):
            _unavailable("running as root without a 'postgres' or 'nobody' user (or runuser) to run initdb as")
        pw = pwd.getpwnam(user)
        os.chown(root, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", user, "--"]
    port = _free_port()
    data = root / "data"

    def pg(*cmd, check=True):
        return subprocess.run([*prefix, *cmd], capture_output=True, text=True, check=check, timeout=120)

    try:
        pg(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60", "-o",
           f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60", "start")
        pg(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "optuna")
    except subprocess.CalledProcessError as exc:
        log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {exc.cmd}: {exc.stderr}\n{log[-2000:]}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/optuna"
    finally:
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _run_cmd(study: str, url: str, out: Path, space: Path, n_trials: int, workers: int) -> list[str]:
    return [sys.executable, "-m", "tuning", "run", "--study", study, "--storage", url, "--out", str(out),
            "--trainer", "toy", "--space", str(space), "--n-trials", str(n_trials), "--workers", str(workers),
            "classifier.epochs=3", "tuning.startup_trials=3", "tuning.warmup_epochs=2",
            "tuning.heartbeat_interval=1", "tuning.grace_period=3", "run.threads=2"]


def _finished_lines(text: str) -> set[int]:
    """Trial numbers that the workers' logs say they finished (complete or pruned)."""
    return {int(m) for m in re.findall(r"trial (\d+) (?:COMPLETE|PRUNED)", text)}


def test_many_workers_on_one_postgres_study(postgres_url, tmp_path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
    env = dict(os.environ, MAMMO_RUN_DIR=str(tmp_path / "runs"), MAMMO_TOY_EPOCH_SECONDS="0.4",
               PYTHONUNBUFFERED="1")
    n = 20
    # "machine A": 2 worker processes; once the study exists, "machine B" joins with 1 more worker
    a = subprocess.Popen(_run_cmd("pg", postgres_url, tmp_path / "a", space, n, 2), cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    head = []
    for line in a.stdout:  # A has created the study (and optuna's tables) when it starts its workers
        head.append(line)
        if "started 2 workers" in line:
            break
    else:
        pytest.fail(f"machine A did not start its workers:\n{''.join(head)}")
    b = subprocess.Popen(_run_cmd("pg", postgres_url, tmp_path / "b", space, n, 1), cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out_a = "".join(head) + a.communicate(timeout=300)[0]
    out_b, _ = b.communicate(timeout=300)
    assert a.returncode == 0, out_a
    assert b.returncode == 0, out_b
    assert "started 2 workers" in out_a and "resumed" in out_b

    study = optuna.load_study(study_name="pg", storage=postgres_url)
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    others = [t for t in trials if t.state.name not in ("COMPLETE", "PRUNED")]
    # all counted: exactly n finished trials; anything else is a surplus trial that never trained
    assert len(finished) == n
    assert all(t.state.name == "FAIL" and t.user_attrs.get("surplus") and not t.params for t in others)
    # not duplicated: unique numbers 0..N-1, one worker per trial
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert all(t.user_attrs.get("worker") for t in finished)
    # not lost: what the workers logged as finished is exactly what the storage holds
    logged = _finished_lines(out_a) | _finished_lines(out_b)
    assert logged == {t.number for t in finished}
    assert len(re.findall(r"trial \d+ (?:COMPLETE|PRUNED)", out_a + out_b)) == n  # each logged once
    workers = {t.user_attrs["worker"] for t in finished}
    assert len(workers) == 3, f"expected 3 worker processes to share the work, got {workers}"
    assert all(sorted(t.intermediate_values) == list(range(1, t.user_attrs["epochs_run"] + 1)) for t in finished)

    # a later run with a higher target adds only the missing trials
    more = subprocess.run(_run_cmd("pg", postgres_url, tmp_path / "a", space, n + 3, 2), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert more.returncode == 0, more.stdout + more.stderr
    study = optuna.load_study(study_name="pg", storage=postgres_url)
    after = study.get_trials(deepcopy=False)
    assert len([t for t in after if t.state.name in ("COMPLETE", "PRUNED")]) == n + 3
    old = {t.number: t.datetime_complete for t in finished}
    assert all(old[t.number] == t.datetime_complete for t in after if t.number in old)

    # best and report read the same storage
    best = subprocess.run([sys.executable, "-m", "tuning", "best", "--study", "pg", "--storage", postgres_url,
                           "--out", str(tmp_path / "best")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert best.returncode == 0, best.stdout + best.stderr
    assert (tmp_path / "best" / "best.yaml").is_file()
