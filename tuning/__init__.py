"""Tuning stage: Optuna studies of the classifier that prune, resume after a crash and scale out.

    python -m tuning run --study NAME [--storage URL] [--n-trials N | --timeout S] [--workers K]
    python -m tuning best --study NAME      # the best trial as a plain classifier config
    python -m tuning report --study NAME    # figures, trials.csv, index.html

Modules: `space` (the YAML search space and `suggest(trial, space, base)`), `storage` (SQLite by default, any
RDB URL, heartbeats), `trainers` (what a trial trains), `study` (objective, workers, exact trial counts),
`report` (best config, figures, statistics). Importing this package imports neither optuna nor TensorFlow.
"""
import mammo.runtime  # noqa: F401  (must stay the first import)
