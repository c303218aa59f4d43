"""`python -m detector <command>`: export-dataset, train, predict, evaluate. A thin layer over the library."""
import mammo.runtime  # noqa: F401  (must stay the first import: import order, offline switches)

import argparse
import json
import sys
from pathlib import Path

from mammo.cli import add_command, command_parser, run_command
from mammo.config import choices, load_config
from mammo.errors import MammoError
from mammo.runs import start_run

EXAMPLES = """\
examples:
  # an ultralytics dataset from the MIAS annotations, split by patient (runs/detector/export-dataset/mias/)
  python -m detector export-dataset --config configs/mias.yaml run.name=mias

  # train on MIAS: the shipped recipe (ImageNet MobileNetV2 backbone from the offline store, frozen), and one
  # from scratch on an exported dataset (a model YAML or a local .pt; never a weights name to download)
  python -m detector train --config configs/mias.yaml run.name=mias detector.imgsz=512 \\
      detector.model=detector/mobilenet_v2_yolo.yaml detector.epochs=25 detector.batch=8 \\
      detector.train_negatives=0.3 'detector.train_args={freeze: 2}'
  python -m detector train --data runs/detector/export-dataset/mias/data.yaml detector.model=yolo11n.yaml

  # one JSON per image, boxes in original pixels; tiled for small lesions on large images
  python -m detector predict --weights runs/detector/train/mias/weights/best.pt scans/ a.dcm b.pgm
  python -m detector predict --weights best.pt --mode tiled detector.tile_size=640 detector.tile_scale=0.5 x.dcm

  # FROC (sensitivity at 0.125 ... 4 FP/image) and mAP50 on the validation split
  python -m detector evaluate --config configs/mias.yaml --weights runs/detector/train/mias/weights/best.pt

Any config key can be overridden as section.key=value anywhere on the line (e.g. run.device=cuda:0 detector.batch=32).
Every run writes its resolved config (config.yaml) next to its outputs under runs/detector/<command>/<run.name>/
(or --out); a failed run leaves nothing half-written there.
"""


def cmd_export(args, cfg, inputs) -> int:
    from detector.dataset import export_from_config
    from detector.runfolder import run_dir_for, staged_run

    run_dir = run_dir_for("export-dataset", cfg.run.name, args.out)
    with staged_run(run_dir) as stage:
        start_run(cfg, stage)
        result = export_from_config(cfg, stage)
    for split, c in result.counts.items():
        print(f"{split}: {c['images']} images, {c['positives']} with lesions, {c['lesions']} boxes")
    print(f"dataset: {run_dir / 'data.yaml'}")
    return 0


def cmd_train(args, cfg, inputs) -> int:
    from detector.dataset import export_from_config
    from detector.model import check_model_source
    from detector.runfolder import run_dir_for, staged_run
    from detector.train import train

    check_model_source(cfg.detector.model)  # refuse download names before anything is written
    if args.data and not Path(args.data).is_file():
        raise MammoError(f"{args.data}: dataset YAML not found (make one with `python -m detector export-dataset`)")
    run_dir = run_dir_for("train", cfg.run.name, args.out)
    with staged_run(run_dir) as stage:
        start_run(cfg, stage)
        data_yaml = Path(args.data).resolve() if args.data else export_from_config(cfg, stage / "dataset").data_yaml
        metrics = train(cfg, data_yaml, stage)
    print(json.dumps(metrics["val"], indent=1))
    print(f"weights: {run_dir / 'weights' / 'best.pt'}  ({metrics['epochs_run']} epochs, "
          f"{metrics['train_seconds']:.0f} s)")
    return 0


def cmd_predict(args, cfg, inputs) -> int:
    from detector.model import LesionDetector
    from detector.predict import expand_inputs, predict_files
    from detector.runfolder import run_dir_for, staged_run

    paths = expand_inputs(inputs)
    run_dir = run_dir_for("predict", cfg.run.name, args.out)
    with LesionDetector.load(args.weights, cfg.detector, device=cfg.run.device, threads=cfg.run.threads) as det:
        with staged_run(run_dir) as stage:
            start_run(cfg, stage)
            written, errors = predict_files(det, paths, stage, cfg.preprocess)
    print(f"{written} prediction file(s) in {run_dir}" + (f"; {len(errors)} file(s) failed, see errors.json"
                                                           if errors else ""))
    return 1 if errors else 0


def cmd_evaluate(args, cfg, inputs) -> int:
    from detector.evaluate import evaluate
    from detector.runfolder import run_dir_for, staged_run

    run_dir = run_dir_for("evaluate", cfg.run.name, args.out)
    with staged_run(run_dir) as stage:
        start_run(cfg, stage)
        metrics = evaluate(cfg, args.weights, stage, split=args.split, with_map=not args.no_map)
    print(json.dumps({k: metrics[k] for k in ("split", "mode", "n_images", "n_lesions", "sensitivity_at_fp",
                                              "mean_sensitivity", "map50", "seconds_per_image") if k in metrics},
                     indent=1))
    print(f"results: {run_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser, sub = command_parser("python -m detector", __doc__, EXAMPLES)

    def add(name, func, help_text, rest_help="key=value config overrides"):
        p = add_command(sub, name, func, help_text, EXAMPLES, rest_help,
                        "image|key=value" if name == "predict" else "key=value")
        p.add_argument("--out", default=None, help="run folder (default: runs/detector/<command>/<run.name>)")
        return p

    add("export-dataset", cmd_export, "write an ultralytics detection dataset, split by patient")
    p = add("train", cmd_train, "train a YOLO detector (from a model YAML or a local .pt)")
    p.add_argument("--data", help="data.yaml from export-dataset (default: export one from the config's data)")
    for name, func, text, rest in (
            ("predict", cmd_predict, "detect lesions on images; one JSON per image",
             "image files or folders, and key=value config overrides"),
            ("evaluate", cmd_evaluate, "FROC and mAP50 on an annotated split", "key=value config overrides")):
        p = add(name, func, text, rest)
        p.add_argument("--weights", required=True, help="local .pt weights (from `train`)")
        p.add_argument("--mode", choices=choices("detector.mode"), help="shortcut for detector.mode=...")
    sub.choices["evaluate"].add_argument("--split", default="val", help="split to evaluate (default: val)")
    sub.choices["evaluate"].add_argument("--no-map", action="store_true", help="skip ultralytics' mAP50")
    return parser


def main(argv=None) -> int:
    def call(args, overrides, inputs):
        if getattr(args, "mode", None):
            overrides.append(f"detector.mode={args.mode}")
        return args.func(args, load_config(args.config, overrides), inputs)

    return run_command(build_parser(), argv, call, input_commands=("predict",))


if __name__ == "__main__":
    sys.exit(main())
