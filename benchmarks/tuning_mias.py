"""Benchmark of the tuning stage: a real Optuna study of the classifier on the mini-MIAS development data.

    python benchmarks/tuning_mias.py                      # ~30 min on 2 cores: 14 trials x 10 epochs, 64-px crops
    python benchmarks/tuning_mias.py --trials 6 --epochs 4 --recheck-seeds 0 --skip-two-workers   # quick look

Everything runs through the command lines users run (printed before each step), so the figures are those of
`python -m tuning run/best/report` and `python -m classifier train`:
1. the untuned default config (configs/mias.yaml with the same budget: input size, epochs) -> val auPR;
2. a study with 1 worker (median pruner), then `report` -> trials per hour, fraction pruned, epochs saved;
3. the same study size with `--workers 2` (1 thread each) -> wall time against 1 worker;
4. `best`, then the best config and the default config trained again with fresh seeds (`--recheck-seeds`): the
   best trial's value is the maximum of many noisy validation scores, so it is optimistic by construction.
The search space is the issue's, narrowed to what 2 shared CPU cores can afford (small CNN, 64-pixel crops,
three context margins); it is written to the output folder as search_space.yaml.
Results: <out>/results.json and a markdown table on stdout.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the project root first

import mammo.runtime  # noqa: E402  (the first import of anything that may load a framework)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import yaml  # noqa: E402

from mammo.atomic import atomic_write_text  # noqa: E402
from mammo.config import CONFIG_DIR  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

SPACE = {"parameters": {
    "classifier.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "classifier.optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
    "classifier.momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"classifier.optimizer": "sgd"}},
    "classifier.dropout": {"type": "float", "low": 0.0, "high": 0.6},
    "classifier.head": {"type": "categorical", "choices": ["gap", "dense"]},
    "classifier.dense_units": {"type": "categorical", "choices": [64, 128, 256], "when": {"classifier.head": "dense"}},
    "classifier.batch_size": {"type": "categorical", "choices": [16, 32, 64]},
    "classifier.augment_strength": {"type": "float", "low": 0.0, "high": 1.5},
    "classifier.context_margin": {"type": "categorical", "choices": [0.15, 0.25, 0.5]},
    "classifier.class_weight": {"type": "categorical", "choices": [True, False]},
}}


def sh(cmd: list[str], log_path: Path) -> tuple[float, str]:
    """Run a command (printed first), tee its output to a log; returns (wall seconds, output)."""
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out = []
        for line in proc.stdout:
            out.append(line)
            log.write(line)
            if not line.startswith(("crops:", "Epoch ")) and "ms/step" not in line:
                print("    " + line.rstrip(), flush=True)
        proc.wait()
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}), see {log_path}")
    return seconds, "".join(out)


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(CONFIG_DIR / "mias.yaml"))
    ap.add_argument("--trials", type=int, default=14)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--startup-trials", type=int, default=3)
    ap.add_argument("--warmup-epochs", type=int, default=2)
    ap.add_argument("--recheck-seeds", type=int, default=2, help="retrain best and default with this many new seeds")
    ap.add_argument("--skip-two-workers", action="store_true")
    ap.add_argument("--resume-to", type=int, default=0, help="afterwards, run the one-worker study again with "
                    "this trial target (a resume: only the missing trials run) and report it again")
    ap.add_argument("--out", default=str(mammo.runtime.RUN_ROOT / "benchmarks" / "tuning_mias"))
    args = ap.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    space = out / "search_space.yaml"
    space.write_text("# Benchmark search space (benchmarks/tuning_mias.py)\n" + yaml.safe_dump(SPACE, sort_keys=False))
    py = sys.executable
    budget = [f"classifier.input_size={args.input_size}", f"classifier.epochs={args.epochs}"]
    tuning = [f"tuning.startup_trials={args.startup_trials}", f"tuning.warmup_epochs={args.warmup_epochs}"]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    res = {"conditions": {"cpu_count": os.cpu_count(), "trials": args.trials, "epochs": args.epochs,
                          "input_size": args.input_size, "startup_trials": args.startup_trials,
                          "warmup_epochs": args.warmup_epochs, "pruner": "median", "config": args.config,
                          "note": "CPU shared with other jobs; load averages recorded per step"}}

    def train(name: str, config: str, extra=()) -> dict:
        d = out / "train" / name
        cmd = [py, "-m", "classifier", "train", "--config", config, "--out", str(d), *extra]
        la = load_avg()
        secs, _ = sh(cmd, out / f"train_{name}.log")
        m = json.loads((d / "metrics.json").read_text())
        return {"command": cmd, "seconds": round(secs, 1), "load_before": la, "val_aupr": m["val"]["aupr"],
                "val_auroc": m["val"]["auroc"], "epochs_run": m["epochs_run"], "best_epoch": m["best_epoch"]}

    def study(name: str, workers: int, n_trials: int = args.trials, tag: str = "", already=(0, 0)) -> dict:
        d = out / name
        cmd = [py, "-m", "tuning", "run", "--study", f"{name}-{stamp}", "--config", args.config, "--space",
               str(space), "--n-trials", str(n_trials), "--workers", str(workers), "--out", str(d),
               *budget, *tuning]
        la = load_avg()
        secs, _ = sh(cmd, out / f"{name}{tag}.log")
        rep = out / f"{name}{tag}_report"
        sh([py, "-m", "tuning", "report", "--study", f"{name}-{stamp}", "--study-dir", str(d), "--out", str(rep)],
           out / f"{name}{tag}_report.log")
        stats = json.loads((rep / "summary.json").read_text())
        return {"command": cmd, "wall_seconds": round(secs, 1), "load_before": la, "load_after": load_avg(),
                "trials_per_hour_wall": round((stats["finished"] - already[0]) / (secs / 3600), 2),
                "epochs_per_hour_wall": round((stats["epochs_run"] - already[1]) / (secs / 3600), 1),
                "study_dir": str(d), "report": str(rep), **stats}

    # 0. the crops of every context margin of the space, so that no arm pays for image reading in its timing
    for margin in SPACE["parameters"]["classifier.context_margin"]["choices"]:
        sh([py, "-m", "classifier", "crops", "--config", args.config, "--out", str(out / "crops"), *budget,
            f"classifier.context_margin={margin}"], out / "crops.log")

    # 1. the untuned default config, same budget
    res["default"] = train("default", args.config, budget)
    # 2. one worker
    res["one_worker"] = study("one_worker", 1)
    # 3. two workers
    if not args.skip_two_workers:
        res["two_workers"] = study("two_workers", 2)
        res["two_vs_one_wall"] = round(res["two_workers"]["wall_seconds"] / res["one_worker"]["wall_seconds"], 3)
        res["two_vs_one_epochs_per_hour"] = round(res["two_workers"]["epochs_per_hour_wall"]
                                                  / res["one_worker"]["epochs_per_hour_wall"], 3)
    # 3b. resume the one-worker study to a larger target: pruning saves more once the median is established
    if args.resume_to > args.trials:
        one = res["one_worker"]
        res["one_worker_resumed"] = study("one_worker", 1, args.resume_to, tag="_resumed",
                                          already=(one["finished"], one["epochs_run"]))
    # 4. the best config of the one-worker study, and a re-check with fresh seeds
    best_yaml = out / "best" / "best.yaml"
    sh([py, "-m", "tuning", "best", "--study", f"one_worker-{stamp}", "--study-dir", res["one_worker"]["study_dir"],
        "--out", str(out / "best")], out / "best.log")
    res["best_config"] = str(best_yaml)
    res["recheck"] = []
    for i in range(args.recheck_seeds):
        seed = 1000 + i
        d = train(f"default_seed{seed}", args.config, [*budget, f"run.seed={seed}"])
        b = train(f"best_seed{seed}", str(best_yaml), [f"run.seed={seed}"])
        res["recheck"].append({"seed": seed, "default_val_aupr": d["val_aupr"], "best_val_aupr": b["val_aupr"],
                               "default_val_auroc": d["val_auroc"], "best_val_auroc": b["val_auroc"]})
    atomic_write_text(out / "results.json", json.dumps(res, indent=2, default=str))
    print_table(res)
    if "one_worker_resumed" in res:
        r = res["one_worker_resumed"]
        print(f"\nresumed to {r['finished']} trials ({r['wall_seconds'] / 60:.1f} min more): {r['pruned']} pruned "
              f"({r['pruned_fraction']:.0%}), epochs saved by pruning {r['epochs_saved_by_pruning']} of "
              f"{r['epochs_planned']} ({r['epochs_saved_by_pruning_fraction']:.0%}), best {r.get('best_value'):.3f}")
    print(f"\nwrote {out / 'results.json'}")
    return 0


def print_table(res: dict) -> None:
    one = res["one_worker"]
    rows = [("trials finished (1 worker)", f"{one['finished']} ({one['complete']} complete, {one['pruned']} pruned)"),
            ("wall time, 1 worker", f"{one['wall_seconds'] / 60:.1f} min (load avg before {one['load_before']})"),
            ("trials per hour, 1 worker", f"{one['trials_per_hour_wall']:.1f}"),
            ("fraction of trials pruned", f"{one['pruned_fraction']:.0%}"),
            ("training epochs saved by pruning",
             f"{one['epochs_saved_by_pruning']} of {one['epochs_planned']} planned "
             f"({one['epochs_saved_by_pruning_fraction']:.0%})"),
            ("best trial val auPR (1 worker)",
             f"{one.get('best_value', float('nan')):.3f} (trial {one.get('best_trial')})"),
            ("untuned default val auPR", f"{res['default']['val_aupr']:.3f}")]
    if "two_workers" in res:
        two = res["two_workers"]
        rows += [("wall time, 2 workers", f"{two['wall_seconds'] / 60:.1f} min ({two['finished']} trials, "
                                           f"{two['pruned']} pruned; load avg before {two['load_before']})"),
                 ("2 workers / 1 worker wall time", f"{res['two_vs_one_wall']:.2f}"),
                 ("trained epochs per hour, 1 vs 2 workers",
                  f"{one['epochs_per_hour_wall']:.0f} vs {two['epochs_per_hour_wall']:.0f}"),
                 ("best trial val auPR (2 workers)", f"{two.get('best_value', float('nan')):.3f}")]
    for r in res["recheck"]:
        rows.append((f"re-check seed {r['seed']}: val auPR default / best config",
                     f"{r['default_val_aupr']:.3f} / {r['best_val_aupr']:.3f}"))
    print("\n| measure | value |\n| --- | --- |")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    sys.exit(main())
