"""`python -m pipeline <command>`: infer, evaluate, export-rois, serve, listen, benchmark, train-baseline, train-all,
bundle, cross-validate."""
import mammo.runtime  # noqa: F401  (must stay the first import: import order, offline switches)

import argparse
import json
import sys
from pathlib import Path

from mammo.atomic import atomic_write_text
from mammo.cli import ListOption, add_command, command_parser, in_range, run_command
from mammo.config import MAX_FOLDS, MAX_PREDICT_BOXES, choices, load_config
from mammo.errors import MammoError
from mammo.runs import make_run_dir, peak_memory_mb, start_run

EXAMPLES = """\
examples:
  # the main job: the embedded sample (8 real DICOMs) with the shipped models
  python -m pipeline infer --out runs/demo

  # the same on Ray: a local Ray with 2 workers, or the cluster this node joined (`ray start`, see README)
  python -m pipeline infer scans/ --out results/ --engine ray --workers 2
  python -m pipeline infer /shared/scans/ --out /shared/results/ --engine ray --address auto --workers 16

  # a folder (searched recursively; DICOMs without extension found by their preamble), files and CSV lists
  python -m pipeline infer scans/ extra.dcm list.csv --out results/ pipeline.aggregate=noisy_or
  # the validation split of a dataset, then its evaluation with patient-bootstrap CIs
  python -m pipeline infer --config configs/mias.yaml --split val --out runs/mias-val
  python -m pipeline evaluate --predictions runs/mias-val --config configs/mias.yaml --split val
  # ... side by side with a single-stage baseline (one classifier on the whole breast) trained on the same split
  python -m pipeline evaluate --predictions runs/mias-val --config configs/mias.yaml --split val --train-baseline

  # a study from a PACS over DICOMweb (QIDO-RS, WADO-RS), the DICOM results stored back with STOW-RS
  python -m pipeline infer --dicomweb http://localhost:8042/dicom-web --study 1.2.3.4 --stow --out results/
  python -m pipeline infer --dicomweb http://localhost:8042/dicom-web --query ModalitiesInStudy=MG --out results/

  # crops with Grad-CAM, rois.csv and index.html for a radiologist's review
  python -m pipeline export-rois scans/ --out review/
  python -m pipeline export-rois --config configs/mias.yaml --split val --with-truth --out review/
  # ... with the verdicts readers recorded in `serve` on an infer run of the same images (review_label column)
  python -m pipeline export-rois scans/ --out review/ --verdicts runs/demo

  # the review workstation in the browser (worklist, viewer, verdicts) over one or more infer runs
  python -m pipeline serve runs/demo                      # then open http://127.0.0.1:8000/
  python -m pipeline serve runs/demo --host 0.0.0.0 --token "$(python -c 'import secrets; print(secrets.token_urlsafe())')"

  # a DICOM node: receive mammograms by C-STORE from the PACS (AE title ORTHANC), analyse them, and store the
  # DICOM results back into it by C-STORE (or STOW-RS: --destination http://pacs:8042/dicom-web); Ctrl-C stops
  python -m pipeline listen --out runs/listen --allow ORTHANC --port 11112 --destination ORTHANC@127.0.0.1:4242

  # speed against the models' floor, throughput and peak memory on folders; quality beside the baseline
  python -m pipeline benchmark
  python -m pipeline benchmark --data configs/mias.yaml --folder-sizes 200

  # train detector + classifier on one patient split and package them (threshold chosen on the validation split;
  # with --operating-point, the settings cross-validate chose out of fold)
  python -m pipeline train-all --config configs/mias.yaml --out weights/
  # patient-level 5-fold cross-validation: out-of-fold predictions, settings chosen on them, their evaluation
  python -m pipeline cross-validate --config configs/mias_shipped.yaml --folds 5 --out runs/cv
  python -m pipeline cross-validate --config configs/mias_shipped.yaml --folds 5 --fold 2 --out runs/cv  # one fold
  # ship models with the settings cross-validation chose (conf, boxes, image-score rule, threshold)
  python -m pipeline train-all --config configs/mias_shipped.yaml --operating-point runs/cv/operating_point.json
  # or package models trained separately
  python -m pipeline bundle --config configs/mias.yaml --detector runs/detector/train/mias/weights/best.pt \\
      --classifier runs/classifier/train/mias --out weights/

Words shaped section.key=value, anywhere on the line, override the config (e.g. run.device=cuda:0
detector.mode=tiled); other words are inputs. A bad setting is refused before anything runs, naming the key
and what is allowed. Every command writes its resolved config.yaml beside its outputs.
Exit codes: 0 all done, 1 some inputs failed (listed in predictions.csv), 2 bad usage, config or models.
"""


def resolve_config(args, overrides):
    """The settings the bundle's models ran with (training settings, classifier section, threshold) sit under the
    user's overrides, so the config.yaml a run writes is what produced its outputs; returns (cfg, bundle)."""
    from pipeline.demo import default_bundle
    from pipeline.models import read_bundle

    bundle = read_bundle(args.models) if args.models else default_bundle()
    cfg = load_config(args.config, bundle.settings() + overrides)
    return cfg, bundle


def split_records(cfg, split: str):
    from mammo.datasets import load_split_dataset

    annotations, splits = load_split_dataset(cfg.data)
    if split not in splits:
        raise MammoError(f"--split {split}: the dataset has splits {sorted(splits)}")
    return annotations, splits[split]


def cmd_infer(args, overrides, inputs) -> int:
    from pipeline.demo import sample_inputs
    from pipeline.dicomnode import dicomweb
    from pipeline.ids import resolve_salt, scrub_argv
    from pipeline.infer import run_inference
    from pipeline.inputs import require_images
    from pipeline.models import PipelineModels

    query = dicomweb.check_args(args, inputs)  # before the models load, as the checks below
    if args.address and args.engine != "ray":
        raise MammoError("--address joins a Ray cluster: it needs --engine ray")
    if args.dicom_out is not None:
        overrides = [*overrides, f"pipeline.dicom_out={'always' if args.dicom_out else 'never'}"]
    if inputs and not args.split:  # before the models load: a bad setting or a mistyped path fails at once
        load_config(args.config, overrides)
        require_images(inputs)
    cfg, bundle = resolve_config(args, overrides)
    if args.split:
        inputs = [str(r.path) for r in split_records(cfg, args.split)[1]]
    elif not inputs and not args.dicomweb:
        inputs = [str(p) for p in sample_inputs()]
        print(f"no INPUT given: running on the embedded sample ({len(inputs)} real CBIS-DDSM DICOMs)")
    out = make_run_dir("pipeline", "infer", cfg.run.name, args.out)
    salt = resolve_salt(cfg.pipeline.id_salt)
    start_run(cfg, out, scrub_argv(dicomweb.scrub_argv(sys.argv, salt), [*inputs, args.out, args.models,
                                                                         args.config], cfg.pipeline.source_paths, salt))
    print(f"models: {bundle.root} ({bundle.description or 'no description'})")

    def engine(found):
        """Analyse `found` (INPUT words, or the instances a PACS gave) with the chosen engine."""
        if args.engine == "ray":  # the same per-image function in Ray actors (Ray imported only here)
            from pipeline.engine_ray import run_inference_ray

            return run_inference_ray(found, out, bundle, cfg, overwrite=args.overwrite, address=args.address,
                                     workers=args.workers, worker_memory_gb=args.worker_memory,
                                     worker_cpus=args.worker_cpus)
        with PipelineModels.load(bundle, cfg) as models:
            return run_inference(found, out, models, cfg, overwrite=args.overwrite)

    if args.dicomweb:
        summary = dicomweb.infer_from_dicomweb(args.dicomweb, args.study or [], query, out, cfg, engine,
                                               stow_url=args.stow_url or (args.dicomweb if args.stow else None))
    else:
        summary = engine(inputs)
    # counts, seconds per step and peak memory of this run (the benchmark reads throughput and memory here)
    summary["peak_memory_mb"] = peak_memory_mb()
    atomic_write_text(out / "run_summary.json", json.dumps(summary, indent=2, default=float))
    print(f"{summary['done']} done ({summary['resumed']} from an earlier run), {summary['failed']} failed, "
          f"{summary['skipped_not_images']} non-image files skipped -> {out}/predictions.csv")
    if summary.get("domain_by_setting"):  # not the files but a setting said film or digital: say so
        counts = ", ".join(f"{n} as {d}" for d, n in sorted(summary["domain_by_setting"].items()))
        key = "pipeline.domain" if cfg.pipeline.domain != "auto" else "pipeline.domain_fallback"
        print(f"domain: {counts} by the setting {key}, not by the files (domain_reason in each JSON says why)")
    stow_failed = len(summary.get("stow", {}).get("failed", []))
    if "dicomweb" in summary:
        pulled = summary["dicomweb"]
        print(f"DICOMweb {pulled['endpoint']}: {pulled['fetched']} fetched, {pulled['reused']} already spooled, "
              f"{len(pulled['skipped'])} not mammograms skipped (reasons in {out}/dicomweb/{dicomweb.PULL_FILE})")
    if "stow" in summary:
        stow = summary["stow"]
        print(f"STOW-RS {stow['endpoint']}: {stow['stored']} result files stored, {stow['already_stored']} stored "
              f"before, {stow_failed} refused ({stow['retried']} retries)")
    return 1 if summary["failed"] or stow_failed else 0


def cmd_evaluate(args, overrides, inputs) -> int:
    from mammo.annotations import read_annotations
    from pipeline.evaluate import evaluate

    cfg = load_config(args.config, overrides)
    if args.annotations:
        records = read_annotations(args.format or cfg.data.format, args.annotations, args.images_root).images
        if args.split:
            raise MammoError("--split takes the dataset from --config; with --annotations, give the split's files")
    elif args.split:
        records = split_records(cfg, args.split)[1]
    else:
        records = split_records(cfg, "val")[1]
        print("evaluating on the validation split of the config's dataset")
    out = Path(args.out) if args.out else Path(args.predictions) / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    start_run(cfg, out)
    baselines = {}
    if args.train_baseline or args.baseline:
        from pipeline.baseline import score_images, train_baseline

        model_dir = args.baseline
        if args.train_baseline:  # on the train/val split of the config's dataset: the same split as the models
            model_dir = make_run_dir("pipeline", "baseline", cfg.run.name)
            train_baseline(cfg, model_dir)
        baselines["single-stage baseline"] = score_images(model_dir, records, cfg)
    report = evaluate(args.predictions, records, out, threshold=args.threshold, beta=cfg.pipeline.fbeta,
                      hit_iou=cfg.detector.hit_iou, n_boot=cfg.pipeline.bootstrap, seed=cfg.run.seed,
                      baselines=baselines)
    print((out / "metrics.md").read_text())
    print(f"written: {out}")
    return 0 if report else 1


def cmd_export_rois(args, overrides, inputs) -> int:
    from pipeline.export import export_rois
    from pipeline.inputs import require_images
    from pipeline.models import PipelineModels

    if inputs and not args.split:  # before the models load
        load_config(args.config, overrides)
        require_images(inputs)
    cfg, bundle = resolve_config(args, overrides)
    annotations = None
    if args.split:
        annotations, records = split_records(cfg, args.split)
        inputs = [str(r.path) for r in records]
        if not args.with_truth:
            annotations = None
    elif args.with_truth:
        annotations, _ = split_records(cfg, "train")  # any split: the reader's records cover all images
    if not inputs:
        from pipeline.demo import sample_inputs

        inputs = [str(p) for p in sample_inputs()]
        print(f"no INPUT given: exporting the embedded sample ({len(inputs)} real CBIS-DDSM DICOMs)")
    out = make_run_dir("pipeline", "export-rois", cfg.run.name, args.out)
    from pipeline.ids import resolve_salt, scrub_argv

    start_run(cfg, out, scrub_argv(sys.argv, [*inputs, args.out, args.models, args.config, *(args.verdicts or [])],
                                   cfg.pipeline.source_paths, resolve_salt(cfg.pipeline.id_salt)))
    review = None
    if args.verdicts:  # readers' verdicts recorded with `pipeline serve` fill the review_label column
        from pipeline.serve.verdicts import review_labels

        review = review_labels(args.verdicts)
    with PipelineModels.load(bundle, cfg) as models:
        summary = export_rois(inputs, out, models, cfg, annotations, overwrite=args.overwrite, review=review)
    print(f"{summary['rois']} ROIs from {summary['images']} images ({summary['failed']} failed) -> "
          f"{out}/index.html")
    return 1 if summary["failed"] else 0


def cmd_serve(args, overrides, inputs) -> int:
    from pipeline.ids import resolve_salt, scrub_argv
    from pipeline.infer import operating_threshold
    from pipeline.models import PipelineModels
    from pipeline.serve import check_address, serve

    address = check_address(args.host, args.port, args.token)  # before the models load: a refusal is immediate
    cfg, bundle = resolve_config(args, overrides)
    run_dirs = inputs or [str(make_run_dir("pipeline", "infer", cfg.run.name))]
    words = [w for w in sys.argv if not (args.token and args.token in w)]  # the token is never written
    argv = scrub_argv(words, [*run_dirs, args.models, args.config], cfg.pipeline.source_paths,
                      resolve_salt(cfg.pipeline.id_salt))
    print(f"models: {bundle.root} ({bundle.description or 'no description'})")
    with PipelineModels.load(bundle, cfg) as models:  # uploads use infer's operating point: one fingerprint
        return serve(run_dirs, models, cfg, operating_threshold(cfg, models), address, argv=argv)


def cmd_listen(args, overrides, inputs) -> int:
    from pipeline.dicomnode.listener import STATUS, check_listen_config, listen
    from pipeline.ids import resolve_salt, scrub_argv
    from pipeline.models import PipelineModels

    given = {"host": args.host, "port": args.port, "ae_title": args.ae_title, "destination": args.destination,
             "allowed_calling": json.dumps(args.allow) if args.allow else None}
    overrides = overrides + [f"listen.{k}={v}" for k, v in given.items() if v is not None]
    check_listen_config(load_config(args.config, overrides))  # before the models load: refusals are immediate
    cfg, bundle = resolve_config(args, overrides)
    out = make_run_dir("pipeline", "listen", cfg.run.name, args.out)
    start_run(cfg, out, scrub_argv(sys.argv, [args.out, args.models, args.config], cfg.pipeline.source_paths,
                                   resolve_salt(cfg.pipeline.id_salt)))
    print(f"models: {bundle.root} ({bundle.description or 'no description'})")
    with PipelineModels.load(bundle, cfg) as models:
        status = listen(cfg, models, out)
    counts = status["this_start"]
    print(f"{counts['received']} received, {counts['analysed']} analysed, {counts['failed']} failed, "
          f"{counts['stored']} stored, {counts['skipped']} skipped; {len(status['given_up'])} given up and "
          f"{len(status['not_stored'])} not stored in all -> {out}/{STATUS}")
    return 1 if status["given_up"] or status["not_stored"] else 0


def _operating_point(args):
    from pipeline.operating_point import read_operating_point

    return read_operating_point(args.operating_point) if args.operating_point else None


def cmd_train_all(args, overrides, inputs) -> int:
    from pipeline.train_all import train_all

    cfg = load_config(args.config, overrides)
    work = make_run_dir("pipeline", "train-all", cfg.run.name)
    out = Path(args.out) if args.out else work / "bundle"
    summary = train_all(cfg, out, work, description=args.description or f"trained on {cfg.data.format}",
                        operating_point=_operating_point(args))
    print(json.dumps(summary.get("image_level_val", summary.get("image_level_oof_cross_fitted")), indent=1,
                     default=float))
    print(f"bundle: {out} (use it with --models {out})")
    return 0


def cmd_bundle(args, overrides, inputs) -> int:
    from pipeline.train_all import make_bundle

    cfg = load_config(args.config, overrides)
    out = Path(args.out)
    start_run(cfg, make_run_dir("pipeline", "bundle", cfg.run.name))
    summary = make_bundle(cfg, args.detector, args.classifier, out, baseline_dir=args.baseline,
                          description=args.description or f"trained on {cfg.data.format}",
                          operating_point=_operating_point(args))
    print(json.dumps(summary.get("image_level_val", summary.get("image_level_oof_cross_fitted")), indent=1,
                     default=float))
    print(f"bundle: {out} (use it with --models {out})")
    return 0


def cmd_benchmark(args, overrides, inputs) -> int:
    from pipeline.benchmark import run_backends, run_benchmark

    backends = list(dict.fromkeys(args.backends or []))
    if len(backends) > 1:  # keras takes one backend per process: each runs in a child, then side by side
        load_config(args.config, overrides)  # a bad setting fails here, not in each child
        out = make_run_dir("pipeline", "benchmark", "backends", args.out)
        argv = ["--config", args.config, *(["--models", args.models] if args.models else []),
                *(["--data", args.data] if args.data else []), *(["--format", args.format] if args.format else []),
                *(["--quick"] if args.quick else []), "--repeats", str(args.repeats),
                *(["--folder-sizes", *map(str, args.folder_sizes)] if args.folder_sizes is not None else []),
                *overrides]
        run_backends(backends, out, argv)
        print((out / "benchmark.md").read_text())
        print(f"written: {out}/benchmark.json, {out}/benchmark.md")
        return 0
    if backends:
        overrides = [*overrides, f"classifier.inference_backend={backends[0]}"]
    cfg, bundle = resolve_config(args, overrides)
    if args.data:  # a config YAML whose data section names the dataset, or the annotations themselves
        data_overrides = [] if args.data.endswith((".yaml", ".yml")) else [
            f"data.annotations={args.data}", f"data.format={args.format or cfg.data.format}"]
        cfg = load_config(args.data if not data_overrides else args.config,
                          bundle.settings() + data_overrides + overrides)
    out = make_run_dir("pipeline", "benchmark", cfg.run.name, args.out)
    start_run(cfg, out)
    sizes = args.folder_sizes if args.folder_sizes is not None else ([2] if args.quick else [10, 100])
    report = run_benchmark(bundle, cfg, out, config_path=args.config, overrides=overrides, quick=args.quick,
                           repeats=1 if args.quick else args.repeats, folder_sizes=sizes, data=args.data)
    print((out / "benchmark.md").read_text())
    print(f"written: {out}/benchmark.json, {out}/benchmark.md")
    return 0 if report else 1


def cmd_train_baseline(args, overrides, inputs) -> int:
    from pipeline.baseline import train_baseline

    cfg = load_config(args.config, overrides)
    out = make_run_dir("pipeline", "baseline", cfg.run.name, args.out)
    start_run(cfg, out)
    metrics = train_baseline(cfg, out)
    print(json.dumps(metrics.get("val", metrics), indent=1, default=float))
    print(f"baseline: {out} (ship it with `python -m pipeline bundle ... --baseline {out}`)")
    return 0


def cmd_cross_validate(args, overrides, inputs) -> int:
    from pipeline.cross_validate import cross_validate

    from mammo.datasets import load_split_dataset

    cfg = load_config(args.config, overrides)
    _, splits = load_split_dataset(cfg.data)
    records = [r for name, part in splits.items() if name != "test" for r in part]  # a test split stays unseen
    out = make_run_dir("pipeline", "cross-validate", cfg.run.name, args.out)
    start_run(cfg, out)
    summary = cross_validate(cfg, records, out, k=args.folds, only_fold=args.fold, conf=args.predict_conf,
                             max_det=args.predict_max_det, baseline=args.baseline)
    if summary is None:
        return 0
    from pipeline.evaluate import kind_table
    from pipeline.operating_point import IN_SAMPLE

    print((out / "evaluation" / "metrics.md").read_text())
    froc = summary["detector_froc_all_oof_boxes"]
    print(f"Every OOF box as predicted (conf >= {froc['predicted_with']['detector.conf']}, before the choice):")
    print("\n".join(kind_table(froc["by_kind"])))
    print(json.dumps({"operating_point": {k: v for k, v in summary["operating_point"].items()
                                          if k not in ("stacker", IN_SAMPLE)},
                      "oof_cross_fitted": summary["oof_figures"]["cross_fitted"]}, indent=1, default=float))
    print(f"written: {out}/oof, {out}/operating_point.json, {out}/evaluation")
    return 0


def _fold_command(args, overrides, command: str, run, show) -> int:
    """A resumable cross-validation command: run(cfg, out) gives the summary once every fold is done, else None."""
    cfg = load_config(args.config, overrides)
    out = make_run_dir("pipeline", command, cfg.run.name, args.out)
    start_run(cfg, out)
    summary = run(cfg, out)
    if summary is None:
        print(f"fold {args.fold} done; run without --fold (or the other folds) for the out-of-fold figures")
        return 0
    show(summary, out)
    return 0


def cmd_digital_cv(args, overrides, inputs) -> int:
    from pipeline.digital.cross_validate import run_digital_cv
    from pipeline.digital.report import print_summary

    return _fold_command(args, overrides, "digital-cv", lambda cfg, out: run_digital_cv(
        cfg, out, only_fold=args.fold, feature_cache=args.features), print_summary)


def cmd_digital_baseline_cv(args, overrides, inputs) -> int:
    from pipeline.digital.baseline import run_baseline_cv
    from pipeline.digital.report import print_baseline_summary

    return _fold_command(args, overrides, "digital-baseline-cv", lambda cfg, out: run_baseline_cv(
        cfg, out, against=args.against, only_fold=args.fold), print_baseline_summary)


def cmd_digital_train(args, overrides, inputs) -> int:
    from pipeline.digital.train import train_global_branch

    cfg = load_config(args.config, overrides)
    out = make_run_dir("pipeline", "digital-train", cfg.run.name, args.out)
    start_run(cfg, out)
    folder = train_global_branch(cfg, args.cv, out, feature_cache=args.features)
    print(f"global branch: {folder} (ship it with `python -m pipeline bundle-digital --global-branch {folder} "
          f"--cv {args.cv} --out weights/`)")
    return 0


def cmd_bundle_digital(args, overrides, inputs) -> int:
    from pipeline.models import add_domain

    summary = json.loads((Path(args.cv) / "summary.json").read_text())
    path = add_domain(args.out, "digital", args.global_branch, summary, args.description or "")
    print(f"{path}: domains.digital added (global branch, threshold and calibration chosen out of fold)")
    from classifier.global_branch import GLOBAL_ONNX_FILE

    if not (Path(args.out) / "global" / GLOBAL_ONNX_FILE).is_file():
        print(f"note: no global/{GLOBAL_ONNX_FILE}: until `python -m classifier export-onnx "
              f"{Path(args.out) / 'global'}` writes it, the onnx backend runs this branch on keras")
    return 0


def cmd_trained_on(args, overrides, inputs) -> int:
    from pipeline.models import write_manifest, write_trained_on

    cfg = load_config(args.config, overrides)
    path = write_trained_on(args.out, cfg, args.film_cv)
    write_manifest(args.out)
    print(f"written: {path} (and the manifest)")
    return 0


def _backend(text: str) -> str:
    allowed = choices("classifier.inference_backend")
    if text not in allowed:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(allowed)}")
    return text


OP_HELP = ("operating_point.json of `pipeline cross-validate`: detector conf, boxes kept, image-score rule and "
           "threshold chosen on k-fold OOF predictions (default: threshold chosen on the validation split)")


def build_parser() -> argparse.ArgumentParser:
    parser, sub = command_parser("python -m pipeline", __doc__, EXAMPLES)

    def add(name, func, help_text, rest="key=value config overrides"):
        return add_command(sub, name, func, help_text, EXAMPLES, rest, "INPUT|key=value")

    inputs_help = "image files, folders, CSV lists (none: the embedded sample), and key=value overrides"
    for name, func, text in (("infer", cmd_infer, "full-image inference: boxes, malignancy, Grad-CAM heatmaps"),
                             ("export-rois", cmd_export_rois, "ROI crops with Grad-CAM, rois.csv, index.html")):
        p = add(name, func, text, inputs_help)
        p.add_argument("--out", help="output folder (default: runs/pipeline/<command>/<run.name>)")
        p.add_argument("--models", help="model bundle folder (default: weights/, else demo models)")
        p.add_argument("--split", help="run on this split (train/val/test) of the config's dataset instead")
        p.add_argument("--overwrite", action="store_true", help="redo images already done in --out")
    p = sub.choices["infer"]
    p.add_argument("--engine", choices=("single", "ray"), default="single",
                   help="single: this process (default); ray: a pool of Ray actors "
                        "(pip install -r requirements-ray.txt)")
    p.add_argument("--address", help="with --engine ray: join this Ray cluster (auto, ray://host:10001); "
                                     "default: start a local Ray")
    p.add_argument("--workers", type=in_range(1, 4096), default=2,
                   help="with --engine ray: Ray actors, each holding both models (default: %(default)s)")
    p.add_argument("--worker-memory", type=in_range(0.25, 256, float), metavar="GB",
                   help="with --engine ray: memory each actor asks Ray for, so no node gets more actors than it "
                        "holds (default: 1.5 with the classifier on torch, 1.8 on TensorFlow; "
                        "measured peaks 1.38 and 1.72 with the shipped models)")
    p.add_argument("--dicom-out", action=argparse.BooleanOptionalAction, default=None,
                   help="DICOM results (TID 1500 SR + Grad-CAM map) for each DICOM input, under OUT/dicom/<image_id>/ "
                        "(default: pipeline.dicom_out=auto, on unless pipeline.source_paths is hashed or none)")
    p.add_argument("--worker-cpus", type=in_range(1, 256),
                   help="with --engine ray: CPUs (and threads) per actor (default: run.threads)")
    p.add_argument("--dicomweb", metavar="URL", help="take the mammograms from this DICOMweb endpoint (e.g. "
                   "http://pacs:8042/dicom-web): QIDO-RS lists, WADO-RS fetches into OUT/dicomweb/spool; "
                   "no INPUT with it")
    p.add_argument("--study", action="append", metavar="UID", help="with --dicomweb: a study to analyse "
                   "(repeatable); its non-mammogram instances (SR, CT...) are skipped with the reason")
    p.add_argument("--query", action="append", metavar="KEY=VALUE", help="with --dicomweb: a QIDO-RS study "
                   "search filter (repeatable), e.g. ModalitiesInStudy=MG StudyDate=20250101-20250131")
    p.add_argument("--stow", action="store_true", help="with --dicomweb: store the DICOM results (OUT/dicom) back "
                   "to that endpoint with STOW-RS; a ledger keeps reruns from sending duplicates")
    p.add_argument("--stow-url", metavar="URL", help="with --dicomweb: store the DICOM results to this DICOMweb "
                   "endpoint instead")
    sub.choices["export-rois"].add_argument("--with-truth", action="store_true",
                                            help="also export the annotated lesions of the config's dataset")
    sub.choices["export-rois"].add_argument("--verdicts", action="append", metavar="RUN_DIR",
                                            help="fill review_label from the verdicts recorded with `serve` on "
                                                 "this infer folder (matched by image id and box overlap); "
                                                 "repeat for several")
    p = add("serve", cmd_serve, "review workstation in the browser: worklist, full-resolution viewer with boxes "
            "and Grad-CAM, reader verdicts, new images", "RUN_DIR folders of `infer` (none: the default infer "
            "folder; uploads go to the first) and key=value overrides")
    p.add_argument("--port", type=in_range(1, 65535), default=8000, help="TCP port (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine "
                   "only); any other address requires a token")
    p.add_argument("--token", help="access token required on every request (default: $MAMMO_SERVE_TOKEN); "
                   "required when --host is not a loopback address")
    p.add_argument("--models", help="model bundle folder for new images (default: weights/, else demo models)")
    p = add("listen", cmd_listen, "a DICOM storage SCP: analyse the mammograms a modality or PACS sends by "
            "C-STORE, store the DICOM results at a destination (C-STORE or STOW-RS); until Ctrl-C or SIGTERM")
    p.add_argument("--out", help="output folder, spool and journal (default: runs/pipeline/listen/<run.name>)")
    p.add_argument("--models", help="model bundle folder (default: weights/, else demo models)")
    p.add_argument("--host", help="address to bind (listen.host; default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=in_range(0, 65535), help="TCP port (listen.port; default 11112, 0: any free one)")
    p.add_argument("--ae-title", help="this node's AE title (listen.ae_title; default MAMMO_CAD)")
    p.add_argument("--allow", action="append", metavar="AE_TITLE",
                   help="a calling AE title allowed to send (listen.allowed_calling); repeat for several")
    p.add_argument("--destination", help="where the DICOM results go (listen.destination): AE@host:port "
                   "(C-STORE) or an http(s):// DICOMweb URL (STOW-RS); default: the output folder only")
    p = add("evaluate", cmd_evaluate, "metrics of infer outputs against annotations, with 95 %% CIs")
    p.add_argument("--predictions", required=True, help="the --out folder of `infer`")
    p.add_argument("--annotations", help="annotation file/folder (default: the config's data section)")
    p.add_argument("--format", choices=choices("data.format"), help="its format")
    p.add_argument("--images-root", help="folder the annotation's image paths are relative to")
    p.add_argument("--split", help="evaluate on this split of the config's dataset (default: val)")
    p.add_argument("--threshold", type=in_range(0.0, 1.0, float),
                   help="operating point (default: the one shipped with the models)")
    p.add_argument("--out", help="report folder (default: PREDICTIONS/evaluation)")
    p.add_argument("--baseline", help="a trained single-stage baseline (classifier run folder) to compare with")
    p.add_argument("--train-baseline", action="store_true",
                   help="train the single-stage baseline (whole breast, same split and classifier settings) first")
    p = add("benchmark", cmd_benchmark, "speed against the models' floor, folder throughput and peak memory, "
            "and (--data) quality beside the single-stage baseline")
    p.add_argument("--models", help="model bundle folder (default: weights/, else demo models)")
    p.add_argument("--data", help="an annotated dataset: a config YAML with its data section (configs/mias.yaml) "
                                  "or the annotation file/folder (with --format)")
    p.add_argument("--format", choices=choices("data.format"),
                   help="format of --data when it is not a YAML")
    p.add_argument("--quick", action="store_true", help="one image, one repeat, a folder of 2 (a smoke test)")
    p.add_argument("--repeats", type=in_range(1, 100), default=3,
                   help="passes over the sample DICOMs (default: %(default)s)")
    p.add_argument("--folder-sizes", nargs="*", action=ListOption, convert=in_range(1, 1000),
                   help="folder runs for throughput and peak memory (default: 10 100; quick: 2; none: skip)")
    p.add_argument("--backends", nargs="+", action=ListOption, convert=_backend,
                   default=["onnx", "torch", "tensorflow"],
                   help="the classifier's backends to measure, each in a child process, side by side (default: "
                        "%(default)s; one: only that one, in this process)")
    p.add_argument("--out", help="report folder (default: runs/pipeline/benchmark/<run.name>)")
    p = add("cross-validate", cmd_cross_validate, "patient-level k-fold cross-validation: out-of-fold predictions, "
            "operating settings chosen on them, their evaluation (resumable fold by fold)")
    p.add_argument("--folds", type=in_range(2, MAX_FOLDS), default=5, help="k (default: %(default)s)")
    p.add_argument("--fold", type=in_range(0, MAX_FOLDS - 1),
                   help="run only this fold (0 .. k-1); the evaluation follows once all are done")
    p.add_argument("--out", help="run folder (default: runs/pipeline/cross-validate/<run.name>)")
    p.add_argument("--predict-conf", type=in_range(1e-6, 0.99, float), default=0.001,
                   help="detector conf of the fold predictions (low: conf is chosen afterwards; default %(default)s)")
    p.add_argument("--predict-max-det", type=in_range(1, MAX_PREDICT_BOXES), default=50,
                   help=f"boxes per image in the fold predictions (default %(default)s, at most {MAX_PREDICT_BOXES})")
    p.add_argument("--baseline", action="store_true", help="also train and score the single-stage baseline per fold")
    p = add("digital-cv", cmd_digital_cv, "woman-level k-fold cross-validation of the global branch on an "
            "image-labelled digital set (configs/rsna_ffdm.yaml): pooling, calibration and threshold chosen out of "
            "fold, figures with CIs (resumable fold by fold)")
    p.add_argument("--fold", type=in_range(0, MAX_FOLDS - 1), help="run only this fold (0 .. global_branch.folds-1)")
    p.add_argument("--features", help="feature cache folder (default: RUN/features; a few GB)")
    p.add_argument("--out", help="run folder (default: runs/pipeline/digital-cv/<run.name>)")
    p = add("digital-baseline-cv", cmd_digital_baseline_cv, "the single-stage whole-image baseline (the classifier "
            "section fine-tuned on whole images, configs/rsna_ffdm_baseline.yaml) on the folds of `digital-cv`, "
            "compared image by image with the global branch (resumable fold by fold)")
    p.add_argument("--against", help="a finished `digital-cv` run on the same folds: paired comparison and fusion")
    p.add_argument("--fold", type=in_range(0, MAX_FOLDS - 1), help="run only this fold (0 .. global_branch.folds-1)")
    p.add_argument("--out", help="run folder (default: runs/pipeline/digital-baseline-cv/<run.name>)")
    p = add("digital-train", cmd_digital_train, "fit the global branch on every image with the settings "
            "`digital-cv` chose, as a model folder for the bundle")
    p.add_argument("--cv", required=True, help="the run folder of `pipeline digital-cv` (its summary.json)")
    p.add_argument("--features", help="feature cache folder (default: the --cv run's features/)")
    p.add_argument("--out", help="run folder (default: runs/pipeline/digital-train/<run.name>)")
    p = add("bundle-digital", cmd_bundle_digital, "add the global branch (digital mammograms) to a bundle, with "
            "the operating point its cross-validation chose")
    p.add_argument("--global-branch", required=True, help="the global/ folder `pipeline digital-train` wrote")
    p.add_argument("--cv", required=True, help="the run folder of `pipeline digital-cv` (its summary.json)")
    p.add_argument("--out", required=True, help="the bundle folder to add it to (e.g. weights/)")
    p.add_argument("--description", help="what this branch is, stored in the bundle")
    p = add("trained-on", cmd_trained_on, "write the bundle's trained_on.json: the image ids each model was fitted "
            "and calibrated on (--config: the film models' training config)")
    p.add_argument("--film-cv", required=True, help="the film cross-validation whose OOF predictions chose the "
                                                    "operating point (its folds.csv), e.g. docs/cv/mias-k3")
    p.add_argument("--out", required=True, help="the bundle folder (e.g. weights/)")
    p = add("train-baseline", cmd_train_baseline, "train the single-stage baseline (one classifier on the whole "
            "breast) on the config's train/val split")
    p.add_argument("--out", help="run folder (default: runs/pipeline/baseline/<run.name>)")
    p = add("train-all", cmd_train_all, "train detector and classifier on one split and bundle them")
    p.add_argument("--out", help="bundle folder (default: runs/pipeline/train-all/<run.name>/bundle)")
    p.add_argument("--description", help="what these models are, stored in the bundle")
    p.add_argument("--operating-point", help=OP_HELP)
    p = add("bundle", cmd_bundle, "package a trained detector and classifier (threshold chosen on the validation "
            "split, or out of fold with --operating-point)")
    p.add_argument("--detector", required=True, help="detector weights (.pt) from `python -m detector train`")
    p.add_argument("--classifier", required=True, help="classifier run folder from `python -m classifier train`")
    p.add_argument("--baseline", help="single-stage baseline run folder (from `pipeline evaluate --train-baseline`)"
                                      " to ship beside the models")
    p.add_argument("--out", required=True, help="bundle folder to write (e.g. weights/)")
    p.add_argument("--description", help="what these models are, stored in the bundle")
    p.add_argument("--operating-point", help=OP_HELP)
    return parser


def main(argv=None) -> int:
    return run_command(build_parser(), argv, lambda args, overrides, inputs: args.func(args, overrides, inputs),
                       input_commands=("infer", "export-rois", "serve"))


if __name__ == "__main__":
    sys.exit(main())
