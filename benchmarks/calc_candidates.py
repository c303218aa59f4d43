"""Do calcification-cluster candidates pay? An out-of-fold (OOF) measurement over a `pipeline cross-validate` run.

    python benchmarks/calc_candidates.py --cv /work/cv-mias-k3 --out runs/benchmarks/calc_candidates
    python benchmarks/calc_candidates.py --cv runs/cv detector.calc_spot_k=6   # another setting: in-sample then

For every finished fold k (folds/fold<k>/DONE.json; the first unfinished fold ends the list), the generator
(detector/calc_candidates.py, settings `detector.calc_*` of the run's config plus overrides) runs on fold k's
held-out images, and fold k's own classifier (folds/fold<k>/train/bundle) classifies its boxes, as `infer`
classifies the detector's. Nothing here is trained or chosen on fold k's labels. Reported:

- lesion level, overall and per lesion kind (CALC above all), sensitivity at 0.5 / 1 / 2 false positives per
  image (mammo.froc.froc_report, the hit rule of `evaluate`: centre inside or IoU >= detector.hit_iou) of
  (a) the OOF detector boxes alone (every box the fold predicted, down to its low predict conf),
  (b) the generator's boxes alone,
  (c) both merged with their own scores (what `detector.calc_candidates` would do inside the detector), and
  (d) both merged after mapping each source's score to P(box hits a lesion) by a logistic fit on the OTHER folds'
      boxes of that source (cross-fitted; needs >= 2 finished folds): a fair common scale, beside (a') the
      detector's boxes alone under the same maps;
- image level: the cross-fitted OOF auROC / auPR of `choose_operating_point` (conf, boxes kept, image-score rule
  and threshold chosen without the scored fold) with and without the classified generator boxes among each
  image's OOF lesions (needs >= 2 finished folds).

Writes results.json, froc.png (overall and CALC FROC of each variant), config.yaml and, per fold, the generator's
classified boxes (generated/fold<k>.json: a rerun with the same settings reuses them) to --out.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the project root first

import mammo.runtime  # noqa: E402  (the first import of anything that may load a framework)

import argparse  # noqa: E402
import csv  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from mammo.atomic import atomic_path, atomic_write_text  # noqa: E402
from mammo.cli import split_args  # noqa: E402
from mammo.config import load_config, save_config, to_dict  # noqa: E402
from mammo.datasets import load_split_dataset  # noqa: E402
from mammo.errors import MammoError  # noqa: E402
from mammo.froc import froc_report, hit_matrix  # noqa: E402
from mammo.imaging import read_mammogram  # noqa: E402
from mammo.preprocess import preprocess  # noqa: E402
from pipeline.cross_validate import FOLD_DONE, fold_dir, load_oof  # noqa: E402
from pipeline.evaluate import predicted_boxes, truth_boxes  # noqa: E402
from pipeline.operating_point import OofSet, choose_operating_point  # noqa: E402
from pipeline.results import LesionResult  # noqa: E402

from detector.calc_candidates import calc_candidates  # noqa: E402

RATES = (0.5, 1.0, 2.0)
FOCUS = "CALC"


def settings_key(cfg) -> dict:
    """What the generated boxes depend on: a cached fold is reused only when these are unchanged."""
    d = to_dict(cfg)
    return {"detector": {k: v for k, v in d["detector"].items() if k.startswith("calc_")},
            "preprocess": d["preprocess"], "fallback_pixel_spacing_mm": cfg.data.fallback_pixel_spacing_mm}


def generate_fold(cfg, cv: Path, k: int, records, out: Path) -> dict[str, list[LesionResult]]:
    """{image_id: classified generator boxes} for fold k's held-out images (cached in out/generated)."""
    cache = out / "generated" / f"fold{k}.json"
    key = settings_key(cfg)
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("settings") == key:
            return {i: [LesionResult(**l) for l in ls] for i, ls in saved["boxes"].items()}
    from classifier.inference import MalignancyClassifier
    from pipeline.models import read_bundle

    clf = MalignancyClassifier.load(read_bundle(fold_dir(cv, k) / "train" / "bundle").classifier,
                                    threads=cfg.run.threads)
    boxes, seconds = {}, []
    for rec in tqdm(records, desc=f"fold {k}: calcification clusters", unit="image"):
        m = read_mammogram(rec.path)
        start = time.perf_counter()
        spacing = float(np.mean(m.meta.pixel_spacing)) if m.meta.pixel_spacing else cfg.data.fallback_pixel_spacing_mm
        found = calc_candidates(preprocess(m, cfg.preprocess), spacing, cfg.detector)
        seconds.append(time.perf_counter() - start)
        malignancy = clf.predict(clf.crop_many(m.pixels, [d.box for d in found])[0]) if found else []
        boxes[rec.image_id] = [LesionResult(list(d.box), d.score, float(p)) for d, p in zip(found, malignancy)]
    atomic_write_text(cache, json.dumps({"settings": key, "seconds_per_image": float(np.mean(seconds)),
                                         "boxes": {i: [dataclasses.asdict(l) for l in ls] for i, ls in boxes.items()}}))
    return boxes


def platt_cross_fit(sources: dict, hits: dict, folds: np.ndarray) -> dict:
    """Each source's box scores mapped to P(box hits a lesion), for each fold by a logistic fit on logit(score)
    over the other folds' boxes of that source (strictly monotone: each source keeps its own ranking, only the
    two scales are aligned). sources / hits: {name: per-image arrays of scores / hit flags}."""
    from sklearn.linear_model import LogisticRegression

    def logit(p):
        p = np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p)).reshape(-1, 1)

    out = {}
    for name, scores in sources.items():
        mapped = [None] * len(scores)
        for k in np.unique(folds):
            rest = np.flatnonzero(folds != k)
            x = np.concatenate([scores[i] for i in rest])
            y = np.concatenate([hits[name][i] for i in rest]).astype(int)
            if len(np.unique(y)) < 2:  # no hit (or no miss) on the other folds: P(hit) is that constant
                for i in np.flatnonzero(folds == k):
                    mapped[i] = np.full(len(scores[i]), y.mean() if len(y) else 0.0)
                continue
            fit = LogisticRegression(C=100.0).fit(logit(x), y)
            for i in np.flatnonzero(folds == k):
                mapped[i] = fit.predict_proba(logit(scores[i]))[:, 1] if len(scores[i]) else np.zeros(0)
        out[name] = mapped
    return out


def lesion_report(preds, truths, kinds, cfg, rates=RATES) -> tuple[dict, object]:
    """FROC summary (overall and per kind at `rates`) and the curve, with the hit rule of `evaluate`."""
    curve, summary = froc_report(preds, truths, kinds, cfg.detector.hit_iou, cfg.detector.hit_centre, rates)
    return {"overall": summary["sensitivity"], "n_lesions": summary["n_lesions"], "by_kind": summary["by_kind"]}, curve


def kind_curve(preds, truths, kinds, cfg, curve, kind: str):
    """Sensitivity for one kind at every overall operating point (the x axis stays the overall FP/image)."""
    rates = np.unique(curve.fp_per_image[curve.fp_per_image <= 4.0])
    table = lesion_report(preds, truths, kinds, cfg, rates)[0]["by_kind"]
    if kind not in table:
        return rates, np.full(len(rates), np.nan)
    return rates, np.array([table[kind]["sensitivity"][str(float(r))] for r in rates])


def plot(path: Path, curves: dict, calc: dict) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    styles = ("-", "--", ":", "-.", (0, (6, 2)))  # variants can coincide: every line stays visible
    for i, (name, curve) in enumerate(curves.items()):
        style = dict(where="post", label=name, linestyle=styles[i % len(styles)], linewidth=2.2 - 0.3 * i)
        axes[0].step(curve.fp_per_image, curve.sensitivity, **style)
        axes[1].step(*calc[name], **style)
    for ax, title in zip(axes, ("all lesions", f"{FOCUS} (at the overall operating points)")):
        ax.set_xlim(0, 4)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("false positives per image")
        ax.set_ylabel("sensitivity")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)


def image_level(oof: OofSet, generated: dict, cfg) -> dict:
    """Cross-fitted OOF image figures of the operating-point choice, without and with the generator boxes."""
    with_gen = OofSet([dataclasses.replace(im, lesions=tuple(im.lesions) + tuple(generated[im.image_id]))
                       for im in oof.images], oof.k, oof.conf, oof.max_det)
    out = {}
    for name, data in (("detector boxes", oof), ("detector + calcification clusters", with_gen)):
        op = choose_operating_point(data, beta=cfg.pipeline.fbeta, min_specificity=cfg.pipeline.min_specificity,
                                    n_boot=cfg.pipeline.bootstrap, seed=cfg.run.seed)
        out[name] = {"cross_fitted": op["figures"]["cross_fitted"],
                     "chosen_on_all": {k: v for k, v in op["settings"].items() if k not in ("stacker",)}}
    return out


def read_folds(cv: Path) -> dict[str, int]:
    with open(cv / "folds.csv", newline="") as f:
        return {row["image_id"]: int(row["fold"]) for row in csv.DictReader(f)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cv", required=True, help="a `pipeline cross-validate` run folder")
    parser.add_argument("--config", help="config (default: the run's own config.yaml)")
    parser.add_argument("--out", default="runs/benchmarks/calc_candidates", help="output folder")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. detector.calc_spot_k=6)")
    args = parser.parse_args(argv)
    overrides, stray = split_args(args.overrides)
    if stray:
        parser.error(f"expected key=value overrides, got {stray}")
    cv, out = Path(args.cv), Path(args.out)
    cfg = load_config(args.config or cv / "config.yaml", overrides)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)

    folds = read_folds(cv)
    k_total = max(folds.values()) + 1
    done = []
    for k in range(k_total):  # the finished prefix: load_oof reads folds 0 .. n-1
        if not (fold_dir(cv, k) / FOLD_DONE).is_file():
            break
        done.append(k)
    if not done:
        raise MammoError(f"{cv}: no finished fold yet (folds/fold0/{FOLD_DONE} missing)")
    used = {tuple(json.loads((fold_dir(cv, k) / FOLD_DONE).read_text())["predicted_with"].values()) for k in done}
    if len(used) > 1:
        raise MammoError(f"{cv}: the folds were predicted with different detector settings {sorted(used)}")
    conf, max_det = used.pop()
    annotations, _ = load_split_dataset(dataclasses.replace(cfg.data, split_file=""))
    records = [r for r in annotations.images if folds.get(r.image_id, -1) in done]
    print(f"{cv}: folds {done} of {k_total} finished, {len(records)} held-out images")

    oof, _ = load_oof(cv, records, folds, len(done), conf, max_det)
    generated = {}
    for k in done:
        generated.update(generate_fold(cfg, cv, k, [r for r in records if folds[r.image_id] == k], out))

    by_id = {r.image_id: r for r in records}
    images = oof.images
    truths, kinds = truth_boxes([by_id[im.image_id] for im in images])
    fold_of = np.array([im.fold for im in images])
    det = [predicted_boxes(im.lesions) for im in images]
    gen = [predicted_boxes(generated[im.image_id]) for im in images]
    variants = {"(a) detector": det, "(b) calcification clusters": gen,
                "(c) merged, own scores": [(np.r_[db, gb], np.r_[ds, gs]) for (db, ds), (gb, gs) in zip(det, gen)]}
    if len(done) >= 2:
        hits = {name: [hit_matrix(b, t, cfg.detector.hit_iou, cfg.detector.hit_centre).any(axis=1)
                       for (b, _), t in zip(src, truths)] for name, src in (("det", det), ("gen", gen))}
        mapped = platt_cross_fit({"det": [s for _, s in det], "gen": [s for _, s in gen]}, hits, fold_of)
        # the fair reference for (d): the detector's boxes under the same per-fold maps (their pooled ranking
        # changes when each fold's scores are mapped by another fit)
        variants["(a') detector, cross-fitted P(hit)"] = [(db, md) for (db, _), md in zip(det, mapped["det"])]
        variants["(d) merged, cross-fitted P(hit)"] = [
            (np.r_[db, gb], np.r_[md, mg]) for (db, _), (gb, _), md, mg in zip(det, gen, mapped["det"], mapped["gen"])]

    report, curves, calc = {}, {}, {}
    for name, preds in variants.items():
        report[name], curves[name] = lesion_report(preds, truths, kinds, cfg)
        calc[name] = kind_curve(preds, truths, kinds, cfg, curves[name], FOCUS)
    plot(out / "froc.png", curves, calc)

    gen_stats = [len(g[1]) for g in gen]
    seconds = [json.loads((out / "generated" / f"fold{k}.json").read_text())["seconds_per_image"] for k in done]
    summary = {"cv_run": str(cv), "folds": done, "k": k_total, "n_images": len(images),
               "predicted_with": {"detector.conf": conf, "detector.max_det": max_det},
               "generator": {"settings": settings_key(cfg)["detector"], "boxes_per_image": float(np.mean(gen_stats)),
                             "images_with_a_box": int(np.count_nonzero(gen_stats)),
                             "seconds_per_image": float(np.mean(seconds))},
               "hit_rule": {"hit_iou": cfg.detector.hit_iou, "centre": cfg.detector.hit_centre},
               "lesion_level": report}
    if len(done) >= 2:
        summary["image_level"] = image_level(oof, generated, cfg)
    atomic_write_text(out / "results.json", json.dumps(summary, indent=2, default=float))
    print_table(summary)
    print(f"written: {out / 'results.json'}, {out / 'froc.png'}, {out / 'config.yaml'}")
    return 0


def print_table(summary: dict) -> None:
    g = summary["generator"]
    print(f"\n{summary['n_images']} OOF images (folds {summary['folds']}); generator: {g['boxes_per_image']:.2f} "
          f"boxes per image, {g['images_with_a_box']} images with a box, {g['seconds_per_image'] * 1000:.0f} ms/image")
    kinds = sorted({k for r in summary["lesion_level"].values() for k in r["by_kind"]})
    head = ["variant", "all " + "/".join(f"{r:g}" for r in RATES)] + [f"{k} (n)" for k in kinds]
    rows = []
    for name, r in summary["lesion_level"].items():
        cells = [name, "/".join(f"{r['overall'][str(x)]:.2f}" for x in RATES)]
        for k in kinds:
            s = r["by_kind"].get(k)
            cells.append("/".join(f"{s['sensitivity'][str(float(x))]:.2f}" for x in RATES) + f" ({s['n']})"
                         if s else "-")
        rows.append(cells)
    print(f"sensitivity at {'/'.join(f'{r:g}' for r in RATES)} false positives per image")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for cells in rows:
        print("| " + " | ".join(cells) + " |")
    for name, fig in summary.get("image_level", {}).items():
        f = fig["cross_fitted"]
        print(f"image level, {name}: cross-fitted OOF auROC {f['auroc']['value']:.3f} [{f['auroc']['low']:.3f}, "
              f"{f['auroc']['high']:.3f}], auPR {f['aupr']['value']:.3f} [{f['aupr']['low']:.3f}, "
              f"{f['aupr']['high']:.3f}]")


if __name__ == "__main__":
    sys.exit(main())
