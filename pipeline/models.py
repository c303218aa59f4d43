"""The models the pipeline runs, as one bundle folder:

    pipeline.json        {"detector": "detector.pt", "classifier": "classifier", "threshold": 0.31,
                          "config_overrides": ["detector.imgsz=640", ...], "description": "..."}
    detector.pt          ultralytics weights (detector_config.yaml: the resolved config of its training run),
                         loaded through detector.checkpoint (allow-listed classes only, nothing executed)
    classifier/          model.keras + calibration.json + config.yaml (its training run's resolved config)
    baseline/            optional: the single-stage baseline (whole-breast classifier) trained on the same split,
                         so anyone can measure the two-stage design against it (`pipeline benchmark --data`)
    global/              optional: the global branch for digital mammograms (model.keras + head.json +
                         trained_on.txt), named by pipeline.json's `domains.digital`

`config_overrides` are the settings the models were trained with (input size, preprocessing); they sit under
the user's own command-line overrides. `threshold` is the image-level operating point on the image score:
chosen on out-of-fold predictions when pipeline.json has `operating_point` (its `source` says how), else on the
validation split. `calibration` (optional, plain numbers, mammo.calibration) maps the image score to
P(malignant); `operating_curve` is its out-of-fold sensitivity and specificity per probability threshold.
Those are film's. `domains` (optional) holds what another domain runs with instead: today `digital`, the global
branch (`global_branch` folder) with its own score threshold, calibration and operating curve, all chosen out of
fold on digital images (`pipeline digital-cv`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mammo import runtime
from mammo.atomic import atomic_path, atomic_write_text
from mammo.calibration import apply_calibration, check_calibration
from mammo.config import ClassifierConfig, Config, check_setting
from mammo.errors import ConfigError, WeightsError
from mammo.weights_store import sha256_of as sha256
from pipeline.findings import check_findings
from pipeline.operating_point import check_curve

BUNDLE_FILE = "pipeline.json"
MANIFEST = "MANIFEST.sha256"  # '<sha256>  <relative path>' per model file, checked before anything is loaded
# A manifest proves integrity (files unchanged since it was written), not trust: anyone can write one next to their
# files. What keeps a planted detector.pt from running code is detector.checkpoint, for every bundle alike.
OTHER_MODELS_NOTE = ("note: models from {path}, not the shipped ones: {manifest}. The detector weights are loaded "
                     "only if they hold nothing but allow-listed model classes (no code from them runs), but the "
                     "results are only as good as whoever trained these models.")
WITH_MANIFEST = f"its {MANIFEST} matches its files (they are unchanged since it was written; it does not say by whom)"
WITHOUT_MANIFEST = f"it has no {MANIFEST}, so damaged or modified files cannot be detected"


def model_files(root: Path) -> list[Path]:
    """Every file of a bundle but the manifest itself and documents (the model card)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST and p.suffix != ".md"
                  and ".partial" not in p.name)


def write_manifest(root) -> Path:
    root = Path(root)
    lines = [f"{sha256(p)}  {p.relative_to(root).as_posix()}" for p in model_files(root)]
    return atomic_write_text(root / MANIFEST, "\n".join(lines) + "\n")


def verify_manifest(root) -> None:
    """Refuse a bundle whose files differ from its manifest (modified, missing or added model files)."""
    root = Path(root)
    listed = {}
    for line in (root / MANIFEST).read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            listed[name.strip()] = digest
    for name, digest in listed.items():
        path = root / name
        if not path.is_file():
            raise WeightsError(path, f"listed in {MANIFEST} but missing: refusing the bundle")
        if sha256(path) != digest:
            raise WeightsError(path, f"SHA-256 differs from {MANIFEST}: the file was modified or damaged; "
                                     f"refusing to load it (restore it with git, or retrain)")
    extra = [p.relative_to(root).as_posix() for p in model_files(root) if p.relative_to(root).as_posix() not in listed]
    if extra:
        raise WeightsError(root, f"files not in {MANIFEST}: {extra}; refusing the bundle")


@dataclass
class Bundle:
    root: Path
    detector: Path
    classifier: Path
    threshold: float
    config_overrides: list[str] = field(default_factory=list)
    description: str = ""
    info: dict = field(default_factory=dict)
    baseline: Path | None = None

    @property
    def calibration(self) -> dict | None:
        return self.info.get("calibration") or None

    @property
    def findings(self) -> dict | None:
        """The findings rule's box-level maps (pipeline.findings); its thresholds are config overrides."""
        return self.info.get("findings") or None

    @property
    def operating_curve(self) -> dict | None:
        """Out-of-fold sensitivity and specificity per probability threshold (the review app's slider)."""
        return self.info.get("operating_curve") or None

    @property
    def threshold_source(self) -> str:
        op = self.info.get("operating_point") or {}
        return f"chosen on {op['source']}" if op.get("source") else "chosen on the validation split"

    @property
    def domains(self) -> dict:
        """{domain: its section of pipeline.json} for the domains with models of their own (not film)."""
        return self.info.get("domains") or {}

    def settings(self) -> list[str]:
        """Config overrides that say what these models run with: the training settings of `config_overrides`,
        the classifier section of the classifier's own training run (its backbone, input size, margin ...) and
        the shipped operating threshold. Without them a run's config.yaml would show the defaults."""
        out = list(self.config_overrides)
        run_config = self.classifier / "config.yaml"
        if run_config.is_file():
            section = (yaml.safe_load(run_config.read_text()) or {}).get("classifier") or {}
            # inference_backend: how this machine runs the model, not a property of it (the user's choice stands)
            known = {f.name for f in dataclasses.fields(ClassifierConfig)} - {"inference_backend"}
            out += [f"classifier.{k}={json.dumps(v)}" for k, v in section.items() if k in known]
        return out + [f"pipeline.threshold={self.threshold!r}"]


def read_bundle(root, require_manifest: bool = False) -> Bundle:
    """Read (and, when it has a manifest, verify) a bundle. The shipped bundle must have its manifest."""
    root = Path(root)
    path = root / BUNDLE_FILE
    if not path.is_file():
        raise WeightsError(path, "not a model bundle (no pipeline.json); make one with `python -m pipeline "
                                 "bundle` or pass --models with a folder that has one")
    try:
        data = json.loads(path.read_text())
        bundle = Bundle(root, root / data["detector"], root / data["classifier"], float(data["threshold"]),
                        list(data.get("config_overrides", [])), data.get("description", ""), data,
                        root / data["baseline"] if data.get("baseline") else None)
        check_setting("pipeline.threshold", bundle.threshold)  # finite, in [0, 1]: it is written into every JSON
        if bundle.calibration is not None:
            check_calibration(bundle.calibration)
        if bundle.findings is not None:
            check_findings(bundle.findings)
        check_curve(bundle.operating_curve)
        for name, section in bundle.domains.items():
            check_domain_section(name, section)
    except (KeyError, ValueError, TypeError, ConfigError) as exc:
        raise WeightsError(path, f"malformed bundle file ({type(exc).__name__}: {exc})") from None
    branches = [root / section["global_branch"] for section in bundle.domains.values()]
    for part in filter(None, (bundle.detector, bundle.classifier, bundle.baseline, *branches)):
        if not part.resolve().is_relative_to(root.resolve()):  # the manifest covers the bundle folder only
            raise WeightsError(part, "named in pipeline.json but outside the bundle folder; refusing the bundle")
        if not part.exists():
            raise WeightsError(part, "named in pipeline.json but missing")
    if (root / MANIFEST).is_file():
        verify_manifest(root)
    elif require_manifest:
        raise WeightsError(root / MANIFEST, "missing: the shipped models are loaded only with their manifest")
    if not require_manifest:
        manifest = WITH_MANIFEST if (root / MANIFEST).is_file() else WITHOUT_MANIFEST
        print(OTHER_MODELS_NOTE.format(path=root, manifest=manifest), file=sys.stderr)
    return bundle


DOMAINS_WITH_MODELS = ("digital",)


def check_domain_section(name: str, section: dict) -> None:
    """A domain's entry of pipeline.json: its global branch folder, score threshold, calibration and curve."""
    if name not in DOMAINS_WITH_MODELS:
        raise ValueError(f"domains.{name}: unknown domain (known: {', '.join(DOMAINS_WITH_MODELS)})")
    if not isinstance(section.get("global_branch"), str) or not section["global_branch"]:
        raise ValueError(f"domains.{name}.global_branch: the folder of its model, relative to the bundle")
    check_setting("pipeline.threshold", section["threshold"])
    check_calibration(section["calibration"])
    check_curve(section.get("operating_curve"))


def add_domain(root, name: str, branch_dir, cv_summary: dict, description: str = "") -> Path:
    """Copy a trained global branch into the bundle at `root` and describe it under pipeline.json's
    `domains.<name>` with the operating point its cross-validation chose; the manifest is rewritten."""
    root, branch_dir = Path(root), Path(branch_dir)
    for file in ("model.keras", "head.json", "trained_on.txt"):
        if not (branch_dir / file).is_file():
            raise WeightsError(branch_dir / file, "missing: not a global branch folder of `pipeline digital-train`")
        _copy(branch_dir / file, root / "global" / file)
    from classifier.global_branch import GLOBAL_ONNX_FILE

    graph = root / "global" / GLOBAL_ONNX_FILE
    if (branch_dir / GLOBAL_ONNX_FILE).is_file():  # exported from this model.keras (checked by SHA-256 at load)
        _copy(branch_dir / GLOBAL_ONNX_FILE, graph)
    elif graph.is_file():  # exported from the model just replaced: the manifest must not vouch for it
        graph.unlink()
    data = json.loads((root / BUNDLE_FILE).read_text())
    s, f = cv_summary["settings"], cv_summary["figures"]
    section = {"global_branch": "global", "threshold": s["score_threshold"], "calibration": s["calibration"],
               "probability_threshold": s["probability_threshold"], "operating_curve": f["operating_curve"],
               "description": description,
               "operating_point": {"source": cv_summary["source"], "beta": cv_summary["beta"],
                                   "min_specificity": cv_summary["min_specificity"],
                                   "settings": {k: s[k] for k in ("top_fraction", "weight_decay", "grid", "size")},
                                   "figures": {k: f[k] for k in ("cross_fitted", "cross_fitted_probability",
                                                                 "logit_auroc", "per_fold")}}}
    check_domain_section(name, section)
    data.setdefault("domains", {})[name] = section
    atomic_write_text(root / BUNDLE_FILE, json.dumps(data, indent=2))
    write_manifest(root)
    return root / BUNDLE_FILE


TRAINED_ON = "trained_on.json"


def ids_digest(image_ids) -> str:
    """SHA-256 of the sorted ids, one per line: what anyone holding a list of ids can recompute."""
    return hashlib.sha256("\n".join(sorted(image_ids)).encode()).hexdigest()


def write_trained_on(root, film_cfg: Config, film_cv_dir) -> Path:
    """trained_on.json: the image ids every part of the bundle was fitted or calibrated on, with a SHA-256 of
    each sorted list, so anyone holding other images can show they are disjoint from the training data.
    Film: the split of `film_cfg` (fit / validation) and the cross-validation whose out-of-fold predictions chose
    the operating point; digital: the global branch's own trained_on.txt (fit, and its CV's calibration)."""
    import csv

    from mammo.datasets import load_split_dataset

    root = Path(root)
    _, splits = load_split_dataset(film_cfg.data)
    with open(Path(film_cv_dir) / "folds.csv", newline="") as f:
        cv_ids = [row["image_id"] for row in csv.DictReader(f)]

    def entry(ids, what):
        return {"what": what, "n": len(ids), "sha256": ids_digest(ids), "image_ids": sorted(ids)}

    train, val = [r.image_id for r in splits["train"]], [r.image_id for r in splits["val"]]
    parts = {"detector.pt": entry(train, "fitted on (mini-MIAS development images)"),
             "detector.pt epochs": entry(val, "best epoch chosen on"),
             "classifier": entry(train, "fitted on"),
             "classifier early stopping and temperature": entry(val, "chosen on"),
             "baseline": entry(train + val, "fitted (train) and early-stopped (val) on"),
             "pipeline.json operating point, calibration and findings maps":
                 entry(cv_ids, "chosen on the out-of-fold predictions of a cross-validation of the recipe over")}
    data = json.loads((root / BUNDLE_FILE).read_text())
    for name, section in (data.get("domains") or {}).items():
        listed = root / section["global_branch"] / "trained_on.txt"
        ids = listed.read_text().split()
        parts[f"{section['global_branch']}/ ({name})"] = entry(ids, "fitted on, and its operating point and "
                                                                    "calibration chosen out of fold on")
    return atomic_write_text(root / TRAINED_ON, json.dumps(parts, indent=1))


def write_bundle(root, detector_weights, classifier_dir, threshold: float, config_overrides=(),
                 description: str = "", baseline_dir=None, **info) -> Path:
    """Copy the trained models into `root` and describe them (pipeline.json is written last)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _copy(Path(detector_weights), root / "detector.pt")
    parts = {"classifier": classifier_dir, "baseline": baseline_dir}
    for name, source in parts.items():
        if source is None:
            continue
        if not (Path(source) / "model.keras").is_file():
            raise WeightsError(Path(source) / "model.keras", f"no trained {name} model here")
        _copy_keras_model(Path(source) / "model.keras", root / name / "model.keras")
        for file in ("calibration.json", "config.yaml"):  # config.yaml: every setting of the run that trained it
            if (Path(source) / file).is_file():
                _copy(Path(source) / file, root / name / file)
    # the detector run's resolved config: runs/detector/train/<name>/weights/best.pt, or beside the .pt when the
    # models come from another bundle (re-packaged with a new operating point)
    weights = Path(detector_weights)
    for config in (weights.parent.parent / "config.yaml", weights.parent / "detector_config.yaml"):
        if config.is_file() and config.resolve() != (root / "detector_config.yaml").resolve():
            _copy(config, root / "detector_config.yaml")
            break
    data = {"detector": "detector.pt", "classifier": "classifier", "threshold": float(threshold),
            "config_overrides": list(config_overrides), "description": description,
            **({"baseline": "baseline"} if baseline_dir is not None else {}), **info}
    atomic_write_text(root / BUNDLE_FILE, json.dumps(data, indent=2))
    write_manifest(root)
    return root / BUNDLE_FILE


def _copy_keras_model(source: Path, target: Path) -> None:
    """The model without its optimizer state (Adam keeps two slots per weight): a third of the size, and
    inference needs none of it."""
    import keras

    model = keras.models.load_model(source, compile=False)
    with atomic_path(target) as tmp:  # the temporary name keeps the .keras suffix keras insists on
        model.save(tmp)


def _copy(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def bundle_fingerprint(bundle: Bundle) -> str:
    """SHA-256 over the contents of every model file of the bundle (its manifest when it has one)."""
    manifest = bundle.root / MANIFEST
    if manifest.is_file():
        return hashlib.sha256(manifest.read_bytes()).hexdigest()
    parts = [bundle.detector] + ([bundle.classifier] if bundle.classifier.is_file() else
                                 [p for p in sorted(bundle.classifier.rglob("*")) if p.is_file()])
    return hashlib.sha256("".join(sha256(p) for p in parts).encode()).hexdigest()


@dataclass
class DomainModels:
    """What a domain with models of its own runs with: the global branch and its operating point."""

    name: str
    branch: object  # classifier.global_branch.GlobalBranch, or LazyGlobalBranch (loaded on its first image)
    threshold: float  # on the score (sigmoid of the branch's logit)
    calibration: dict
    operating_curve: dict | None
    threshold_source: str

    def probability(self, score: float) -> float:
        return float(apply_calibration(self.calibration, [score])[0])


class PipelineModels:
    """Detector + classifier + operating threshold, loaded once; a context manager frees them. `fingerprint`
    identifies the model files, so an output folder is never resumed with other models."""

    def __init__(self, detector, classifier, threshold: float, description: str = "", fingerprint: str = "",
                 calibrated: bool | None = None, stacker: dict | None = None, calibration: dict | None = None,
                 threshold_source: str = "", findings: dict | None = None, operating_curve: dict | None = None):
        self.detector, self.classifier = detector, classifier
        self.threshold, self.description = float(threshold), description
        self.fingerprint = fingerprint
        self._calibrated = calibrated
        self.stacker = stacker  # coefficients of pipeline.aggregate=stacker (plain JSON numbers), if shipped
        self.calibration = calibration  # image score -> P(malignant) (plain JSON numbers), if shipped
        self.threshold_source = threshold_source
        self.findings = findings  # box-level P(true lesion) and P(malignant) maps (plain JSON numbers), if shipped
        self.operating_curve = operating_curve  # OOF sensitivity / specificity per probability threshold, if shipped
        self.domains: dict[str, DomainModels] = {}  # models of a domain other than film (digital), if shipped

    def probability(self, score: float) -> float | None:
        """The calibrated P(malignant) of an image score; None when the models ship no calibration map."""
        return None if self.calibration is None else float(apply_calibration(self.calibration, [score])[0])

    @property
    def calibrated(self) -> bool:
        return self._calibrated if self._calibrated is not None else bool(self.classifier.calibrated)

    @classmethod
    def load(cls, bundle: Bundle, cfg: Config) -> "PipelineModels":
        """Both models, the classifier on classifier.inference_backend (refused when this process already runs
        keras on the other one). On torch, nothing is compiled: no background load is needed to hide a
        TensorFlow import and a graph trace from the first image."""
        from detector.model import LesionDetector

        # The detector first: its checkpoint is judged before anything else of the bundle is trusted, whatever
        # this process's keras can do. It imports no keras, so the backend is still free to choose after it.
        detector = LesionDetector.load(bundle.detector, cfg.detector, device=cfg.run.device, threads=cfg.run.threads)
        try:  # anything failing after it (backend choice, classifier, domains) must not leak the detector
            runtime.keras_backend_for_inference(cfg.classifier.inference_backend)  # before anything imports keras
            classifier = _load_classifier(bundle.classifier, cfg.run.threads,
                                          cfg.classifier.inference_backend == "onnx")
            info = bundle.classifier / "calibration.json"
            calibrated = bool(json.loads(info.read_text()).get("calibrated")) if info.is_file() else None
            models = cls(detector, classifier, bundle.threshold, bundle.description, bundle_fingerprint(bundle),
                         calibrated, bundle.info.get("stacker"), bundle.calibration, bundle.threshold_source,
                         bundle.findings, bundle.operating_curve)
            from classifier.global_branch import LazyGlobalBranch

            for name, section in bundle.domains.items():
                op = section.get("operating_point") or {}
                models.domains[name] = DomainModels(
                    name, LazyGlobalBranch(bundle.root / section["global_branch"], threads=cfg.run.threads,
                                           backend=cfg.classifier.inference_backend),
                    float(section["threshold"]), section["calibration"], section.get("operating_curve"),
                    f"chosen on {op['source']} of {name} images" if op.get("source") else "shipped with the models")
            return models
        except BaseException:
            detector.close()
            raise

    def close(self) -> None:
        self.detector.close()
        self.classifier = None
        self.domains = {}

    def __enter__(self) -> "PipelineModels":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _load_classifier(path, threads, onnx: bool = False):
    """The classifier, warmed up on a blank crop now (TensorFlow: its graphs traced) rather than on the first
    image that has boxes, which then took seconds longer than every other image."""
    from classifier.inference import MalignancyClassifier

    clf = MalignancyClassifier.load(path, threads=threads, onnx=onnx)
    clf.warmup()
    return clf
