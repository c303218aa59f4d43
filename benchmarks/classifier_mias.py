"""Benchmark of the classifier stage on mini-MIAS ground-truth crops, through the project's own library.

    python benchmarks/classifier_mias.py                           # small_cnn and mobilenet_v2, default config
    python benchmarks/classifier_mias.py --backbones small_cnn classifier.epochs=5   # quick look

For each backbone: train on the patient-level train split (runs/classifier/train/mias_<backbone>/), report val
auROC / auPR / F2 on the benign-vs-malignant truth crops of the validation women (with a patient-bootstrap 95 %
CI: the validation set is small), the training wall time, and the Grad-CAM time per crop in a batch of 32.
`--keep-best DIR` copies the run with the best val auROC there (the pipeline loads runs/classifier/train/mias).
Results also go to runs/benchmarks/classifier_mias.json.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the project root first

import mammo.runtime  # noqa: E402  (the first import of anything that may load a framework)

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from mammo import metrics as M  # noqa: E402
from mammo.atomic import atomic_write_text  # noqa: E402
from mammo.config import CONFIG_DIR, load_config  # noqa: E402
from mammo.runs import make_run_dir, start_run  # noqa: E402


def gradcam_ms_per_crop(clf, crops: np.ndarray, batch: int = 32, repeats: int = 5) -> dict:
    x = np.resize(crops, (batch,) + crops.shape[1:]).astype(np.float32)  # repeat val crops up to one batch
    clf.gradcam(x)  # trace and warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        clf.gradcam(x)
        times.append(time.perf_counter() - t)
    pred = []
    for _ in range(repeats):
        t = time.perf_counter()
        clf.predict(x)
        pred.append(time.perf_counter() - t)
    return {"gradcam_ms_per_crop": 1000 * float(np.median(times)) / batch,
            "predict_ms_per_crop": 1000 * float(np.median(pred)) / batch}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(CONFIG_DIR / "mias.yaml"))
    ap.add_argument("--backbones", nargs="+", default=["small_cnn", "mobilenet_v2"])
    ap.add_argument("--keep-best", default=None, help="copy the best run (val auROC) to this folder")
    ap.add_argument("--measure-only", action="store_true",
                    help="no training: re-measure the existing runs (metrics from their metrics.json, timings anew)")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    args = ap.parse_args(argv)

    from classifier.inference import MalignancyClassifier
    from classifier.train import build_crops_for_config, train

    base = load_config(args.config, args.overrides)
    out_path = mammo.runtime.RUN_ROOT / "benchmarks" / "classifier_mias.json"
    t0 = time.perf_counter()
    crops = build_crops_for_config(base, make_run_dir("benchmarks", "classifier_mias", "crops"))
    crop_seconds = time.perf_counter() - t0
    for line in crops.report:
        print(f"note: {line}")
    val = crops.select("val", ("truth",))
    # earlier runs stay in the JSON so scratch and pretrained can be compared across invocations
    previous = json.loads(out_path.read_text()) if out_path.is_file() else {"runs": {}}
    results = {"crops": {"seconds": crop_seconds, "counts": {f"{s}/{k}/{l}": int(n) for (s, k, l), n in
                         crops.manifest.groupby(["split", "kind", "label"]).size().items()}},
               "runs": dict(previous.get("runs", {}))}
    for backbone in args.backbones:
        cfg = load_config(args.config, [*args.overrides, f"classifier.backbone={backbone}"])
        # a pretrained run gets its own folder and key, so it sits beside the scratch run instead of replacing it
        key = backbone if cfg.classifier.weights == "none" else f"{backbone}_{cfg.classifier.weights}"
        cfg = load_config(args.config, [*args.overrides, f"classifier.backbone={backbone}", f"run.name=mias_{key}"])
        run_dir = make_run_dir("classifier", "train", cfg.run.name)
        if args.measure_only:
            m = json.loads((run_dir / "metrics.json").read_text())
            wall = previous["runs"].get(key, {}).get("wall_seconds")
        else:
            start_run(cfg, run_dir, [sys.argv[0], *(argv or sys.argv[1:])])
            t = time.perf_counter()
            m = train(cfg, run_dir, crops=crops)
            wall = time.perf_counter() - t
        clf = MalignancyClassifier.load(run_dir)
        p = clf.predict(val.images)
        groups = val.manifest["patient_id"].to_numpy()
        _, lo, hi = M.bootstrap_ci(M.auroc, val.labels, p, groups, n=2000, seed=0)
        r = {**m, "wall_seconds": wall, "auroc_ci95": [lo, hi], "run_dir": str(run_dir),
             **gradcam_ms_per_crop(clf, val.images)}
        results["runs"][key] = r
        v = r["val"]
        print(f"== {key}: val auROC {v['auroc']:.3f} (95% CI {lo:.2f}-{hi:.2f})  auPR {v['aupr']:.3f}  "
              f"F2 {v['f2']:.3f}  [n={v['n']}, {v['n_positive']} malignant]  train {(wall or 0):.0f} s "
              f"({r['epochs_run']} epochs, best {r['best_epoch']})  Grad-CAM {r['gradcam_ms_per_crop']:.1f} ms/crop",
              flush=True)

    print("\n| backbone | val auROC (95% CI) | val auPR | val F2 | train wall time | epochs (best) "
          "| Grad-CAM ms/crop |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for b, r in results["runs"].items():
        v = r["val"]
        print(f"| {b} | {v['auroc']:.3f} ({r['auroc_ci95'][0]:.2f}-{r['auroc_ci95'][1]:.2f}) | {v['aupr']:.3f} | "
              f"{v['f2']:.3f} | {(r['wall_seconds'] or 0) / 60:.1f} min | {r['epochs_run']} ({r['best_epoch']}) | "
              f"{r['gradcam_ms_per_crop']:.1f} |")
    out = out_path
    atomic_write_text(out, json.dumps(results, indent=2))
    if args.keep_best and results["runs"]:
        best = max(results["runs"], key=lambda b: results["runs"][b]["val"]["auroc"] or 0)
        shutil.copytree(results["runs"][best]["run_dir"], args.keep_best, dirs_exist_ok=True)
        print(f"best ({best}) copied to {args.keep_best}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
