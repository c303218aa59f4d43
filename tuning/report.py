"""After (or during) a study: the best trial as a plain config, figures, and the numbers the README quotes.

- `write_best_config`: the study's base config with the best trial's parameters and seed filled in, written as a
  complete YAML config that `python -m classifier train --config FILE` accepts unchanged.
- `write_report`: optimization history, intermediate values (per-epoch curves, pruned trials included),
  parameter importances (fANOVA on scikit-learn trees, fully offline) and a timeline as PNG, every trial in
  trials.csv, the statistics in summary.json, and one static index.html that shows them all (no plotly needed).
- `study_stats`: counts, trials per hour, the fraction pruned and the training epochs pruning saved.
"""
from __future__ import annotations

import copy
import html
import json
import math
import time
from pathlib import Path

import yaml

from mammo.atomic import atomic_path, atomic_write_text
from mammo.config import load_config
from mammo.errors import ConfigError

from tuning.storage import TuningError, safe_url


def _state(t) -> str:
    return "SURPLUS" if t.state.name == "FAIL" and t.user_attrs.get("surplus") else t.state.name


def study_stats(study) -> dict:
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    pruned = [t for t in finished if t.state.name == "PRUNED"]
    complete = [t for t in finished if t.state.name == "COMPLETE"]

    def ep(t, key):
        v = t.user_attrs.get(key)
        if v is None and key == "epochs_run":
            v = max(t.intermediate_values, default=0)
        return int(v or 0)

    planned = sum(ep(t, "epochs_planned") for t in finished)
    run = sum(ep(t, "epochs_run") for t in finished)
    saved_pruning = sum(max(0, ep(t, "epochs_planned") - ep(t, "epochs_run")) for t in pruned)
    saved_early = sum(max(0, ep(t, "epochs_planned") - ep(t, "epochs_run")) for t in complete)
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials
                   if t.datetime_start and t.datetime_complete)
    hours = (max(e for _, e in spans) - spans[0][0]).total_seconds() / 3600 if spans else 0.0
    busy, cur = 0.0, None  # time during which at least one trial ran: resumes and idle gaps do not count
    for a, b in spans:
        if cur is None or a > cur[1]:
            busy += (cur[1] - cur[0]).total_seconds() if cur else 0.0
            cur = [a, b]
        else:
            cur[1] = max(cur[1], b)
    busy = (busy + ((cur[1] - cur[0]).total_seconds() if cur else 0.0)) / 3600
    states: dict[str, int] = {}
    for t in trials:
        states[_state(t)] = states.get(_state(t), 0) + 1
    out = {
        "study": study.study_name, "metric": study.user_attrs.get("metric"), "trials": len(trials),
        "states": states, "finished": len(finished), "complete": len(complete), "pruned": len(pruned),
        "pruned_fraction": len(pruned) / len(finished) if finished else None,
        "epochs_planned": planned, "epochs_run": run,
        "epochs_saved_by_pruning": saved_pruning,
        "epochs_saved_by_pruning_fraction": saved_pruning / planned if planned else None,
        "epochs_saved_by_early_stopping": saved_early,
        "wall_hours": hours, "busy_hours": busy,
        "trials_per_hour": len(finished) / busy if busy > 0 else None,  # per hour while trials were running
        "retried": sum(1 for t in trials if "failed_trial" in t.system_attrs),
    }
    if complete:
        best = study.best_trial
        out.update({"best_value": best.value, "best_trial": best.number, "best_params": best.params,
                    "best_metrics": best.user_attrs.get("metrics")})
    return out


def trials_table(study):
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        metrics = t.user_attrs.get("metrics") or {}
        rows.append({
            "number": t.number, "state": _state(t), "value": t.value,
            **{f"param:{k}": v for k, v in t.params.items()},
            **{f"val_{k}": v for k, v in metrics.items()},
            "epochs_run": t.user_attrs.get("epochs_run"), "epochs_planned": t.user_attrs.get("epochs_planned"),
            "last_epoch_reported": max(t.intermediate_values, default=None),
            "seed": t.user_attrs.get("seed"), "seconds": t.user_attrs.get("seconds"),
            "retry_of": t.system_attrs.get("failed_trial"), "worker": t.user_attrs.get("worker"),
            "start": t.datetime_start, "complete": t.datetime_complete, "error": t.user_attrs.get("error"),
        })
    return pd.DataFrame(rows)


# --- best ---------------------------------------------------------------------------------------------------------
def best_trial(study):
    import optuna

    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        c = len(study.get_trials(deepcopy=False))
        raise TuningError(f"study {study.study_name!r} has no completed trial yet ({c} trial(s) in it): run "
                          f"`python -m tuning run --study {study.study_name}` first")
    return study.best_trial


def best_config_dict(study, fallback_base: dict) -> tuple[dict, object]:
    trial = best_trial(study)
    data = copy.deepcopy(study.user_attrs.get("base_config") or fallback_base)
    for key, value in trial.params.items():
        section, name = key.split(".")
        data.setdefault(section, {})[name] = value
    if "seed" in trial.user_attrs:
        data["run"]["seed"] = trial.user_attrs["seed"]
    data["run"]["name"] = f"{study.study_name}-best"
    return data, trial


def write_best_config(study, out_path, fallback_base: dict, storage_shown: str = "") -> Path:
    data, trial = best_config_dict(study, fallback_base)
    out_path = Path(out_path)
    metric = study.user_attrs.get("metric", "value")
    m = trial.user_attrs.get("metrics") or {}
    others = ", ".join(f"{k} {v:.4f}" for k, v in m.items() if v is not None and k != metric)
    header = [
        f"# Best trial of study '{study.study_name}'{' in ' + storage_shown if storage_shown else ''}, "
        f"written {time.strftime('%Y-%m-%d %H:%M')}",
        f"# trial {trial.number}: validation {metric} {trial.value:.4f}" + (f" ({others})" if others else "")
        + f"; {trial.user_attrs.get('epochs_run', '?')} epochs",
        "# tuned: " + ", ".join(f"{k}={v}" for k, v in trial.params.items()),
        f"# run.seed {data['run']['seed']} is the trial's training seed; its crops were made with the study's seed "
        f"{(study.user_attrs.get('base_config') or fallback_base)['run']['seed']} (classifier train uses run.seed "
        f"for both, so a retrained model may differ a little)",
        f"# A plain config: python -m classifier train --config {out_path}",
    ]
    text = "\n".join(header) + "\n" + yaml.safe_dump(data, sort_keys=False)
    with atomic_path(out_path) as tmp:
        tmp.write_text(text)
        try:
            load_config(tmp)  # the file must load as a config before it replaces anything
        except ConfigError as exc:
            raise TuningError(f"the best trial does not make a valid config: {exc}") from None
    return out_path


# --- figures and tables -------------------------------------------------------------------------------------------
def _save(axes, path: Path) -> None:
    """Save the figure of what an optuna.visualization.matplotlib function returned (Axes or an array of them)."""
    import matplotlib.pyplot as plt
    import numpy as np

    if isinstance(axes, np.ndarray):
        axes = axes.ravel()[0]
    fig = axes.figure
    fig.set_size_inches(9, 5)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def write_report(study, out_dir, storage_url: str) -> dict:
    import warnings

    import optuna
    import optuna.visualization.matplotlib as ovm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shown = safe_url(storage_url)
    stats = study_stats(study)
    table = trials_table(study)
    with atomic_path(out_dir / "trials.csv") as tmp:
        table.to_csv(tmp, index=False)
    atomic_write_text(out_dir / "summary.json", json.dumps(stats, indent=2, default=str))

    plots = {
        "optimization_history.png": ("Optimization history", lambda: ovm.plot_optimization_history(study)),
        "intermediate_values.png": ("Validation metric per epoch (pruned trials stop early)",
                                    lambda: ovm.plot_intermediate_values(study)),
        "param_importances.png": ("Parameter importances (fANOVA)", lambda: ovm.plot_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))),
        "timeline.png": ("Timeline of the trials (one row per trial, colour = state)",
                         lambda: ovm.plot_timeline(study)),
    }
    made, notes = {}, {}
    for name, (title, fn) in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = fn()
            _save(ax, out_dir / name)
            made[name] = title
        except Exception as exc:  # e.g. importances need 2+ completed trials with varying parameters
            notes[name] = f"{title}: not available ({type(exc).__name__}: {exc})"
    _write_html(out_dir / "index.html", study, stats, table, made, notes, shown)
    return {"out_dir": out_dir, "stats": stats, "plots": list(made), "notes": list(notes.values())}


def _write_html(path: Path, study, stats: dict, table, made: dict, notes: dict, shown: str) -> None:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}" if math.isfinite(v) else "-"
        return html.escape(json.dumps(v) if isinstance(v, (dict, list)) else str(v))

    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{fmt(v)}</td></tr>" for k, v in stats.items())
    figs = "".join(f"<h2>{html.escape(t)}</h2><img src='{n}' alt='{html.escape(t)}'>" for n, t in made.items())
    missing = "".join(f"<li>{html.escape(n)}</li>" for n in notes.values())
    trials_html = table.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Study {html.escape(study.study_name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:left}}img{{max-width:100%;border:1px solid #eee}}</style>
</head><body><h1>Study {html.escape(study.study_name)}</h1><p>Storage: <code>{html.escape(shown)}</code>.
Interactive view: <code>optuna-dashboard {html.escape(shown)}</code>.</p>
<h2>Summary</h2><table>{rows}</table>{figs}{'<h2>Not drawn</h2><ul>' + missing + '</ul>' if missing else ''}
<h2>Trials (<a href="trials.csv">trials.csv</a>)</h2>{trials_html}
</body></html>"""
    atomic_write_text(path, page)

