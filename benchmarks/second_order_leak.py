"""How much the cross-fitted figures of a digital-cv run flatter themselves: cross-fitted vs fully nested choice of
calibration and threshold, on the same out-of-fold scores.

    python benchmarks/second_order_leak.py --run runs/ffdm-cv [--out docs/cv/ffdm-k5-as-read/second_order_leak.json]

Cross-fitting chooses fold k's calibration and threshold on the other folds' out-of-fold scores, but those were
made by models trained on fold k: fold k's labels reach its own operating point at second order. Nesting removes
that (pipeline.digital.cross_validate.nested_fitted: k(k-1) extra heads, each chosen by its own inner CV, cached
in <run>/nested so an interrupted run resumes). Both are judged on the same held-out scores; the paired
differences carry 95 % CIs from a bootstrap over women. A leak would show as cross-fitted figures better than
nested ones.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from classifier.global_branch import pool_grid  # noqa: E402
from mammo import metrics  # noqa: E402
from mammo.atomic import atomic_write_text  # noqa: E402
from mammo.calibration import brier, ece  # noqa: E402
from mammo.config import load_config  # noqa: E402
from pipeline.digital import cross_validate as dcv  # noqa: E402
from pipeline.digital.features import extract_features  # noqa: E402


def operating_figures(y, prob, thr) -> dict:
    calls = prob >= thr
    return {"sensitivity": float(calls[y == 1].mean()), "specificity": float(1 - calls[y == 0].mean()),
            f"f{dcv.BETA:g}": metrics.fbeta(y, calls.astype(float), 0.5, dcv.BETA),
            "ece": float(ece(y, prob)), "brier": float(brier(y, prob))}


def paired_differences(y, women, a, b, n_boot: int, seed: int) -> dict:
    """Each figure of `a` minus `b` ((prob, thr) pairs), with a CI from resampling women (both sides together)."""
    out = {}
    for name in operating_figures(y, *a):
        def diff(y_, rows, name=name):
            rows = rows.astype(int)
            return operating_figures(y_, a[0][rows], a[1][rows])[name] - operating_figures(y_, b[0][rows],
                                                                                           b[1][rows])[name]
        value, low, high = metrics.bootstrap_ci(diff, y, np.arange(len(y)), women, n=n_boot, seed=seed)
        out[name] = {"value": value, "low": low, "high": high}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished `pipeline digital-cv` run folder")
    parser.add_argument("--out", help="write the figures here as JSON too")
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args()
    run = Path(args.run)
    cfg = load_config(run / "config.yaml")
    summary = json.loads((run / "summary.json").read_text())
    records = dcv.dataset_records(cfg)
    oof = summary["oof"]
    if [r.image_id for r in records] != oof["image_id"]:
        raise SystemExit(f"{run}: its summary.json holds other images than the config's data section")
    y, fold = np.array(oof["label"]), np.array(oof["fold"])
    women = np.array([r.patient_id for r in records])  # as digital-cv had them: its calibration groups hash them
    logits = np.array(oof["logit"])
    feats = pool_grid(extract_features(records, cfg, run / "features"), cfg.global_branch.grid)
    t0 = time.perf_counter()
    crossed = dcv.cross_fitted(y, dcv.sigmoid(logits), fold, women)
    nested = dcv.nested_fitted(feats, y, women, fold, logits, cfg, cache_dir=run / "nested", progress=True)
    seconds = time.perf_counter() - t0
    result = {"run": str(run), "n_images": int(len(y)), "n_women": int(len(set(women.tolist()))),
              "folds": int(len(np.unique(fold))), "seconds": round(seconds, 1),
              "per_fold_choices": {"cross_fitted": crossed[3], "nested": nested[3]},
              "cross_fitted": operating_figures(y, crossed[0], crossed[1]),
              "nested": operating_figures(y, nested[0], nested[1]),
              "cross_fitted_minus_nested": paired_differences(y, women, crossed[:2], nested[:2], args.n_boot,
                                                               cfg.run.seed)}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        atomic_write_text(Path(args.out), text + "\n")


if __name__ == "__main__":
    main()
