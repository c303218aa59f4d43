"""Command line of the tuning stage: `python -m tuning {run,best,report} --help`."""
import mammo.runtime  # noqa: F401  (must stay the first import)

import argparse
import sys
from pathlib import Path

from mammo.cli import add_command, command_parser, run_command
from mammo.config import choices, load_config, to_dict
from mammo.runs import make_run_dir, start_run

EXAMPLES = """\
examples:
  # a study of 30 finished trials on MIAS, SQLite storage in runs/tuning/run/mias/study.db
  python -m tuning run --study mias --config configs/mias.yaml --n-trials 30 classifier.epochs=15
  # kill it (Ctrl-C or SIGKILL) and run the same command again: it continues where it stopped
  # one hour instead of a trial count; two worker processes on this machine (1 thread each on 2 cores)
  python -m tuning run --study mias --config configs/mias.yaml --timeout 3600 --workers 2
  # many machines: the same command on each, pointing at one PostgreSQL database
  python -m tuning run --study mias --config configs/mias.yaml --n-trials 200 \\
      --storage postgresql://optuna@dbhost:5432/optuna          # password: PGPASSWORD or ~/.pgpass
  # Hyperband instead of the median pruner, auROC instead of auPR, another search space
  python -m tuning run --study mias-hb --pruner hyperband --metric auroc --space my_space.yaml
  # the best trial as a plain classifier config, then train it
  python -m tuning best --study mias          # -> runs/tuning/best/mias/best.yaml
  python -m classifier train --config runs/tuning/best/mias/best.yaml
  # figures (history, per-epoch values, importances, timeline), trials.csv and index.html
  python -m tuning report --study mias        # -> runs/tuning/report/mias/
"""


def build_parser() -> argparse.ArgumentParser:
    parser, sub = command_parser("python -m tuning", "Optuna studies of the classifier: prune, resume after a "
                                 "crash, many workers on one storage.", EXAMPLES)

    def add(name, func, help_text, study_required=True):
        sp = add_command(sub, name, func, help_text, EXAMPLES, "config overrides, e.g. classifier.epochs=10 "
                         "tuning.grace_period=120")
        sp.add_argument("--study", required=study_required, help="study name (tuning.study)")
        sp.add_argument("--storage", default=None, help="optuna RDB URL (tuning.storage); default: an SQLite "
                        "file in the study folder")
        return sp

    r = add("run", cmd_run, "create or resume a study and run trials")
    r.add_argument("--n-trials", type=int, default=None, help="finished (complete + pruned) trials the study "
                   "should hold in total, over all runs and workers (tuning.n_trials)")
    r.add_argument("--timeout", type=float, default=None, help="seconds after which no new trial starts here "
                   "(tuning.timeout); alone, it lifts the trial limit")
    r.add_argument("--workers", type=int, default=None, help="worker processes on this machine, each with "
                   "run.threads // K threads (tuning.workers)")
    r.add_argument("--space", default=None, help="search space YAML (tuning.search_space)")
    r.add_argument("--metric", default=None, choices=choices("tuning.metric"), help="validation metric")
    r.add_argument("--pruner", default=None, choices=choices("tuning.pruner"), help="pruner")
    r.add_argument("--out", default=None, help="study folder: resolved config, split, trials, default SQLite "
                   "storage (default: runs/tuning/run/<study>)")
    r.add_argument("--trainer", default="classifier", help="what a trial trains: classifier (default), toy "
                   "(no TensorFlow, to try the machinery) or package.module:attribute")

    w = add("worker", cmd_worker, "(internal) one worker process of `run --workers K`", study_required=False)
    w.add_argument("--out", required=True)
    w.add_argument("--trainer", default="classifier")
    w.add_argument("--worker-index", type=int, default=0)

    for name, func, text in (("best", cmd_best, "write the best trial as a plain classifier config"),
                             ("report", cmd_report, "figures, trials.csv and index.html of a study")):
        sp = add(name, func, text)
        sp.add_argument("--study-dir", default=None, help="the study folder of `run` (where its default SQLite "
                        "storage is; default: runs/tuning/run/<study>)")
        sp.add_argument("--out", default=None, help=f"output folder (default: runs/tuning/{name}/<study>)")
        if name == "best":
            sp.add_argument("--output", default=None, help="config file to write (default: <out>/best.yaml)")
    return parser


def config_for(args, overrides):
    """The config of a tuning command: --config, the overrides, then the options that set tuning.* keys."""
    extra = []
    if getattr(args, "study", None):
        extra.append(f"tuning.study={args.study}")
    if getattr(args, "n_trials", None) is not None:
        extra.append(f"tuning.n_trials={args.n_trials}")
    elif getattr(args, "timeout", None) is not None:
        extra.append("tuning.n_trials=0")  # a timeout alone: run until the time is up
    for flag, key in (("timeout", "timeout"), ("workers", "workers"), ("space", "search_space"),
                      ("metric", "metric"), ("pruner", "pruner")):
        if getattr(args, flag, None) is not None:
            extra.append(f"tuning.{key}={getattr(args, flag)}")
    cfg = load_config(args.config, [*overrides, *extra])
    if args.storage is not None:  # set directly: a URL is not parsed as YAML
        from mammo.config import replace

        cfg = replace(cfg, tuning=replace(cfg.tuning, storage=args.storage))
    return cfg


def _study_dir(cfg, args) -> Path:
    return Path(args.study_dir) if args.study_dir else mammo.runtime.RUN_ROOT / "tuning" / "run" / cfg.tuning.study


def _existing_study(cfg, args, argv, command: str):
    """(storage url, the study, this command's run folder, started) for the commands that read a study."""
    from tuning.storage import default_storage_url, load_existing_study, open_storage

    url = cfg.tuning.storage or default_storage_url(_study_dir(cfg, args))
    study = load_existing_study(cfg.tuning.study, open_storage(url, cfg.tuning, must_exist=True))
    out_dir = make_run_dir("tuning", command, cfg.tuning.study, args.out)
    start_run(cfg, out_dir, _safe_argv(argv))
    return url, study, out_dir


def _safe_argv(argv):
    from tuning.storage import safe_url

    return [safe_url(a) if "://" in a else a for a in (sys.argv if argv is None else argv)]


def cmd_run(cfg, args, argv) -> int:
    from tuning.study import run_study, sigterm_as_interrupt

    sigterm_as_interrupt()
    run_dir = make_run_dir("tuning", "run", cfg.tuning.study, args.out)
    result = run_study(cfg, run_dir, trainer_spec=args.trainer, argv=_safe_argv(argv))
    where = " --storage URL" if cfg.tuning.storage else (f" --study-dir {run_dir}" if args.out else "")
    print(f"next: python -m tuning best --study {cfg.tuning.study}{where}   |   "
          f"python -m tuning report --study {cfg.tuning.study}{where}")
    if result["failed_here"]:  # like `pipeline infer`: 1 when some of the work failed
        print(f"error: {result['failed_here']} trial(s) failed (see above)", file=sys.stderr)
        return 1
    return 0


def cmd_worker(cfg, args, argv) -> int:
    from tuning.study import run_worker, sigterm_as_interrupt

    sigterm_as_interrupt()
    run_worker(cfg, Path(args.out), trainer_spec=args.trainer, worker_index=args.worker_index)
    return 0


def cmd_best(cfg, args, argv) -> int:
    from tuning.report import write_best_config
    from tuning.storage import safe_url

    url, study, out_dir = _existing_study(cfg, args, argv, "best")
    path = write_best_config(study, Path(args.output) if args.output else out_dir / "best.yaml", to_dict(cfg),
                             safe_url(url))
    t = study.best_trial
    print(f"best trial {t.number}: {study.user_attrs.get('metric', 'value')} {t.value:.4f}")
    for k, v in t.params.items():
        print(f"  {k} = {v}")
    print(f"wrote {path}\ntrain it: python -m classifier train --config {path}")
    return 0


def cmd_report(cfg, args, argv) -> int:
    from tuning.report import write_report
    from tuning.storage import safe_url

    url, study, out_dir = _existing_study(cfg, args, argv, "report")
    res = write_report(study, out_dir, url)
    s = res["stats"]
    print(f"study {study.study_name!r}: {s['trials']} trials {s['states']}")
    if s.get("best_value") is not None:
        print(f"best {s['metric']} {s['best_value']:.4f} (trial {s['best_trial']})")
    if s["finished"]:
        print(f"pruned {s['pruned']}/{s['finished']} finished trials; epochs run {s['epochs_run']} of "
              f"{s['epochs_planned']} planned, {s['epochs_saved_by_pruning']} saved by pruning")
    for note in res["notes"]:
        print(f"note: {note}")
    print(f"wrote {out_dir}/index.html (+ {', '.join(res['plots'])}, trials.csv, summary.json)")
    print(f"interactive: pip install optuna-dashboard && optuna-dashboard {safe_url(url)}")
    return 0


def main(argv=None) -> int:
    def call(args, overrides, inputs):
        try:
            return args.func(config_for(args, overrides), args, argv)
        except KeyboardInterrupt:
            print("interrupted: run the same command again to resume the study", file=sys.stderr)
            return 130

    return run_command(build_parser(), argv, call)


if __name__ == "__main__":
    sys.exit(main())
