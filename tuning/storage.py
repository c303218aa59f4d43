"""Where a study lives: an SQLite file in the run folder by default (no server), or any RDB URL optuna supports
(PostgreSQL for many machines: `postgresql://user:password@host:5432/dbname`, driver psycopg 3).

Every storage is an `optuna.storages.RDBStorage` with a heartbeat: a worker killed mid-trial stops beating, and
after `tuning.grace_period` seconds the next worker that looks marks its trial FAIL and queues a copy of it
(same parameters; `RetryHeartbeatStaleTrialCallback`), so the work is redone, not lost. Optuna's journal file
has no heartbeat, which is why the embedded default is SQLite rather than a journal.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

from mammo.config import TuningConfig
from mammo.errors import MammoError

STUDY_DB = "study.db"


class TuningError(MammoError):
    """A tuning command that cannot go on (bad storage, missing study, no finished trial...)."""


def default_storage_url(run_dir) -> str:
    return f"sqlite:///{(Path(run_dir) / STUDY_DB).resolve()}"


def safe_url(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    rest = url[len("sqlite:///"):].split("?")[0]
    return None if rest in ("", ":memory:") else Path(rest)


def _engine_kwargs(url: str) -> dict:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 120}}  # seconds a writer waits for another process's lock
    if url.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    if url.startswith("mysql"):
        return {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    return {}


def open_storage(url: str, tcfg: TuningConfig, *, must_exist: bool = False):
    """Connect to the storage at `url` (creating optuna's tables if needed) and return an RDBStorage with the
    heartbeat settings of `tcfg`. Raises TuningError with the reason when it cannot be reached; with
    `must_exist`, an SQLite file that is not there is an error instead of being created."""
    import optuna
    import sqlalchemy.exc

    shown = safe_url(url)
    path = sqlite_path(url)
    if path is not None:
        if must_exist and not path.is_file():
            raise TuningError(f"no study storage at {path} (run `python -m tuning run --study NAME` first, "
                              f"or pass --storage URL)")
        if not path.parent.is_dir():
            raise TuningError(f"storage {shown}: folder {path.parent} does not exist")
    try:
        for attempt in range(3):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # heartbeat arguments are flagged experimental
                    return optuna.storages.RDBStorage(
                        url, engine_kwargs=_engine_kwargs(url),
                        heartbeat_interval=int(tcfg.heartbeat_interval), grace_period=int(tcfg.grace_period),
                        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                            max_retry=tcfg.max_retry))
            except sqlalchemy.exc.SQLAlchemyError as exc:
                # Two processes creating optuna's tables in an empty database at the same moment: one wins, the
                # other fails ('already exists', or a unique violation) and sees the tables on a second try.
                racing = isinstance(exc, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError)) or \
                    "already exists" in str(exc)
                if not racing or attempt == 2:
                    raise
                time.sleep(0.5 + attempt)
    except ImportError as exc:
        hint = "pip install 'psycopg[binary]'" if url.startswith("postgresql") else "install its database driver"
        raise TuningError(f"storage {shown}: the database driver is not installed ({hint}): {exc}") from None
    except sqlalchemy.exc.ArgumentError as exc:
        raise TuningError(f"storage {shown}: not a valid database URL ({exc}); e.g. "
                          f"sqlite:///runs/study.db or postgresql://user:password@host:5432/dbname") from None
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, optuna.exceptions.StorageInternalError,
            OSError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise TuningError(f"storage {shown} cannot be reached: {' '.join(r.strip() for r in reason)}") from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise TuningError(f"storage {shown}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    except ValueError as exc:
        raise TuningError(f"storage {shown}: {exc}") from None


def study_names(storage) -> list[str]:
    import optuna

    return [s.study_name for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)]


def load_existing_study(name: str, storage, **kwargs):
    """optuna.load_study, with a clear error listing the studies there when `name` is not one of them."""
    import optuna

    if name not in study_names(storage):
        known = study_names(storage)
        listing = ", ".join(known) if known else "none"
        raise TuningError(f"study {name!r} does not exist in {safe_url(storage.url)} (studies there: {listing})")
    return optuna.load_study(study_name=name, storage=storage, **kwargs)
