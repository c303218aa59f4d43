"""Which backbone map should the global branch read? Several `pipeline digital-cv` runs on the same folds, each
with another `global_branch.layer`, joined into one nested choice: each outer fold takes the (layer, pooling,
weight decay) whose inner cross-validation auROC was best, an inner CV run on that fold's training women only.
So the out-of-fold figure of the choice never saw the held-out fold's labels, unlike the best run's own figure
picked after the fact. The shipped layer is the one most folds chose.

    python benchmarks/ffdm_layers.py --runs docs/cv/ffdm-k5 docs/cv/ffdm-k5-l14 docs/cv/ffdm-k5-l17 \
        [--out docs/cv/ffdm-layers.json]

Reads only the runs' committed files (DONE.json, summary.json): no images, no network.
"""
import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mammo.atomic import atomic_write_text  # noqa: E402
from mammo.metrics import auroc, bootstrap_ci  # noqa: E402
from pipeline.digital.baseline import paired_auroc_difference  # noqa: E402
from pipeline.digital.cross_validate import oof_figures  # noqa: E402


def load_run(run: Path) -> tuple[dict, list[dict]]:
    summary = json.loads((run / "summary.json").read_text())
    folds = sorted((run / "folds").glob("fold*/DONE.json"), key=lambda p: int(p.parent.name[4:]))
    return summary, [json.loads(p.read_text()) for p in folds]


def nested_choice(runs: dict[str, list[dict]], n_rows: int) -> tuple[np.ndarray, list[dict]]:
    """Each fold's best (run, candidate) by its inner auROC; returns the held-out logits of the choices (rows in
    the runs' order) and what each fold chose. Ties go to the earlier run, then the earlier candidate."""
    names = list(runs)
    k = {len(folds) for folds in runs.values()}
    if len(k) != 1:
        raise SystemExit(f"the runs have different numbers of folds: {k}")
    logits, chosen = np.full(n_rows, np.nan), []
    for j in range(k.pop()):
        rows = {tuple(runs[n][j]["held_out_rows"]) for n in names}
        if len(rows) != 1:
            raise SystemExit(f"fold {j}: the runs hold out different rows (not the same folds)")
        best = max(((auc, -i, -c, name, cand) for i, name in enumerate(names)
                    for c, (cand, auc) in enumerate(runs[name][j]["inner_auroc"].items())))
        auc, _, _, name, cand = best
        held = np.array(runs[name][j]["held_out_rows"])
        logits[held] = runs[name][j]["candidates"][cand]
        chosen.append({"fold": j, "run": name, "candidate": cand, "inner_auroc": round(float(auc), 4)})
    if np.isnan(logits).any():
        raise SystemExit("some rows were held out by no fold")
    return logits, chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="digital-cv run folders on the same folds")
    parser.add_argument("--out", help="write the figures here as JSON")
    parser.add_argument("--boot", type=int, default=1000)
    args = parser.parse_args()
    loaded = {str(r): load_run(Path(r)) for r in args.runs}
    first = next(iter(loaded.values()))[0]["oof"]
    for name, (summary, _) in loaded.items():
        if summary["oof"]["image_id"] != first["image_id"] or summary["oof"]["fold"] != first["fold"]:
            raise SystemExit(f"{name}: other images or other folds than {args.runs[0]}")
    y, fold, women = (np.array(first[key]) for key in ("label", "fold", "woman"))
    layer = {name: s["settings"].get("layer", "features_18_2") for name, (s, _) in loaded.items()}
    logits, chosen = nested_choice({name: folds for name, (_, folds) in loaded.items()}, len(y))
    for c in chosen:
        c["layer"] = layer[c["run"]]
    figures, _, _ = oof_figures(y, logits, fold, women, args.boot, seed=0)
    result = {"runs": {}, "nested_choice": chosen,
              "shipped_layer": Counter(c["layer"] for c in chosen).most_common(1)[0][0],
              "nested": {key: figures[key] for key in ("logit_auroc", "sensitivity_at_specificity_0.8", "per_fold",
                                                       "cross_fitted")}}
    for name, (s, _) in loaded.items():
        own = np.array(s["oof"]["logit"])
        auc = bootstrap_ci(auroc, y, own, women, n=args.boot)
        diff = paired_auroc_difference(y, own, logits, women, args.boot, seed=0)
        result["runs"][name] = {"layer": layer[name], "logit_auroc": auc, "nested_minus_this": diff}
        print(f"{name} ({layer[name]}): pooled auROC {auc[0]:.3f} [{auc[1]:.3f}, {auc[2]:.3f}]; nested choice "
              f"minus this {diff[0]:+.3f} [{diff[1]:+.3f}, {diff[2]:+.3f}]")
    for c in chosen:
        print(f"fold {c['fold']}: chose {c['layer']} {c['candidate']} (inner auROC {c['inner_auroc']})")
    a = figures["logit_auroc"]
    print(f"nested choice, out of fold: pooled auROC {a[0]:.3f} [{a[1]:.3f}, {a[2]:.3f}], per-fold mean "
          f"{figures['per_fold']['mean_auroc']:.3f}, sensitivity at specificity 0.8 "
          f"{figures['sensitivity_at_specificity_0.8']:.3f}; the layer most folds chose: {result['shipped_layer']}")
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(result, indent=1, default=float))
        print(f"written: {args.out}")


if __name__ == "__main__":
    main()
