"""ROI export for a radiologist's review: crops with their Grad-CAM, a CSV to fill in, and an offline HTML sheet.

The detected regions are the boxes `infer` shows, from the same `analyse_image` (findings and the box(es) that
score the image, each marked, with their calibrated P(true lesion) and P(malignant) when the models carry those
maps), and each row carries its image's score, probability and call, so a sheet never disagrees with `infer`.
With annotations, the true lesions are exported beside them (kind 'true').

Nothing patient-identifying leaves: files are named by image id (hashed when the name looks like an
identifier), crops are re-encoded from pixels (no DICOM tags), and the CSV holds no paths.
"""
from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from mammo.atomic import atomic_path, atomic_write_text, folder_lock, remove_stale_partials
from mammo.config import Config
from mammo.froc import hit_matrix
from mammo.imaging import read_mammogram
from pipeline.heatmap import HeatmapCanvas
from pipeline.ids import IdAllocator
from pipeline.infer import StepTimer, analyse_image, image_domain, image_score, operating_threshold
from pipeline.inputs import discover
from pipeline.render import colorize, three_panels
from pipeline.results import decide

ROI_COLUMNS = ["roi_id", "image_id", "kind", "x1", "y1", "x2", "y2", "detector_score", "malignancy", "p_lesion",
               "p_malignant", "scores_image", "finding", "image_score", "image_probability", "image_decision",
               "image_domain", "true_label", "review_label"]
TILE = 192  # pixels per half of a review tile (crop | crop with Grad-CAM)


def review_tile(crop: np.ndarray, cam: np.ndarray) -> np.ndarray:
    grey = cv2.resize(np.round(np.clip(crop, 0, 1) * 255).astype(np.uint8), (TILE, TILE),
                      interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    heat = colorize(cv2.resize(cam.astype(np.float32), (TILE, TILE)))
    blended = cv2.addWeighted(grey, 0.6, heat, 0.4, 0)
    return np.concatenate([grey, np.full((TILE, 4, 3), 255, np.uint8), blended], axis=1)


def _cell(value):
    """A CSV cell: numbers to 4 decimals, flags as yes/no, '' for what does not apply (a true lesion's
    detector score, probabilities of models without the findings maps)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return round(float(value), 4)


def _true_label(box, truth, cfg: Config) -> str:
    """The pathology of the true lesion this box hits (the evaluation's hit rule: centre inside or IoU >=
    detector.hit_iou), '' when the image has no annotation."""
    if truth is None:
        return ""
    lesions = truth.boxed_lesions
    if lesions:
        hits = hit_matrix([box], [l.box for l in lesions], cfg.detector.hit_iou, cfg.detector.hit_centre)[0]
        if hits.any():
            return lesions[int(np.argmax(hits))].pathology
    return "none"  # annotated image, no true lesion here: a false-positive candidate


def export_rois(inputs, out_dir, models, cfg: Config, annotations=None, *, overwrite: bool = False,
                progress: bool = True, review=None) -> dict:
    """Crops, overlays, rois.csv and index.html; the folder is locked for the run (a second run is refused).
    `review`: optional (image_id, box) -> label, e.g. the readers' verdicts recorded with `pipeline serve`
    (pipeline.serve.verdicts.review_labels), written to the `review_label` column."""
    with folder_lock(out_dir):
        return _export_locked(inputs, Path(out_dir), models, cfg, annotations, overwrite, progress, review)


def _export_locked(inputs, out_dir: Path, models, cfg: Config, annotations, overwrite: bool, progress: bool,
                   review=None) -> dict:
    (out_dir / "crops").mkdir(parents=True, exist_ok=True)
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    state = out_dir / ".done"
    state.mkdir(exist_ok=True)
    for folder in (out_dir, out_dir / "crops", out_dir / "overlays", state):
        remove_stale_partials(folder)  # left by a run that was killed mid-write
    truth_by_path = {str(Path(r.path).resolve()): r for r in annotations.images} if annotations else {}
    paths = discover(inputs, exclude=[out_dir]).images if inputs else [Path(r.path) for r in annotations.images] if annotations else []
    allocate = IdAllocator(cfg.pipeline.image_id, cfg.pipeline.id_salt)
    clf = models.classifier
    threshold = operating_threshold(cfg, models)
    failures = []
    for path in tqdm(paths, desc="export-rois", unit="img", disable=not progress):
        truth = truth_by_path.get(str(path.resolve()))
        try:
            mammogram = read_mammogram(path, max_pixels=cfg.run.max_pixels)
            domain = image_domain(mammogram, cfg)  # as infer decides it: refused when nothing says
        except Exception as exc:  # recorded, the batch goes on
            failures.append(str(exc))
            continue
        meta = mammogram.meta
        identifiers = [*meta.identifiers, truth.patient_id if truth else ""]
        image_id = allocate(path, identifiers, meta.is_dicom)
        marker = state / f"{image_id}.json"
        if marker.exists() and not overwrite:
            continue
        tiles = []
        lesions, canvas, below_conf = analyse_image(mammogram, models, cfg, StepTimer(), tiles, domain=domain)
        score = image_score(lesions, below_conf, models, cfg)
        probability = models.probability(score)
        image = {"image_id": image_id, "image_score": round(score, 5),
                 "image_probability": "" if probability is None else round(probability, 4),
                 "image_decision": decide(score, threshold), "image_domain": domain.domain, "review_label": ""}
        # per region: kind, box, its numbers, crop and Grad-CAM for the review tile, true label
        numbers = ("detector_score", "malignancy", "p_lesion", "p_malignant", "scores_image", "finding")
        rois = [("detected", l.box, {k: getattr(l, k) for k in numbers}, crop, cam, _true_label(l.box, truth, cfg))
                for l, (crop, cam) in zip(lesions, tiles)]
        true = list(truth.boxed_lesions) if truth else []
        if true:  # the truth, classified and mapped as a detected box would be
            batch, transforms = clf.crop_many(mammogram.pixels, [l.box for l in true])
            batch = batch.astype(np.float32, copy=False)
            probs = np.asarray(clf.predict(batch)).reshape(-1)
            cams = clf.gradcam(batch)
            for l, crop, to_crop, p, cam in zip(true, batch, transforms, probs, cams):
                canvas.paste_max(cam, to_crop)
                rois.append(("true", l.box, {"malignancy": p}, crop, cam, l.pathology))
        rows = []
        for i, (kind, box, values, crop, cam, label) in enumerate(rois):
            roi_id = f"{image_id}_r{i + 1:02d}"
            with atomic_path(out_dir / "crops" / f"{roi_id}.png") as tmp:
                cv2.imwrite(str(tmp), review_tile(crop, cam))
            rows.append({**image, "roi_id": roi_id, "kind": kind,
                         **dict(zip(("x1", "y1", "x2", "y2"), (round(float(v), 1) for v in box))),
                         **{k: _cell(values.get(k)) for k in numbers}, "true_label": label})
        figure = three_panels(mammogram.pixels, canvas.pixels, [roi[1] for roi in rois],
                              [f"{r['malignancy']:.2f}" for r in rows], dashed=[r["scores_image"] == "no" for r in rows])
        with atomic_path(out_dir / "overlays" / f"{image_id}.png") as tmp:
            cv2.imwrite(str(tmp), figure)
        atomic_write_text(marker, json.dumps(rows))  # last: marks the image as exported
    all_rows = [r for f in sorted(state.glob("*.json")) for r in json.loads(f.read_text())]
    all_rows.sort(key=lambda r: -float(r["malignancy"]))
    for r in all_rows if review else ():
        r["review_label"] = review(r["image_id"], [float(r[k]) for k in ("x1", "y1", "x2", "y2")])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=ROI_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(all_rows)
    atomic_write_text(out_dir / "rois.csv", buf.getvalue())
    atomic_write_text(out_dir / "index.html", contact_sheet(all_rows, threshold, models.probability(threshold)))
    return {"images": len(paths), "rois": len(all_rows), "failed": len(failures), "failures": failures}


def contact_sheet(rows, threshold: float, probability_threshold: float | None = None) -> str:
    """A static page: cards sorted by malignancy, a label filter, each crop linking to its full-image overlay.
    'predicted' is the image's call (its score against the threshold), the one `infer` makes: a box's own
    malignancy is on another scale. On load it counts images that rendered, so a headless browser can check
    that every link resolved."""
    cards = []
    for r in rows:
        predicted = "malignant" if r.get("image_decision", "") == "malignant" else "not-malignant"
        truth = r["true_label"] or "unknown"
        detector = "" if r["detector_score"] == "" else f" · detector {float(r['detector_score']):.2f}"
        box = "".join(f" · {name} {float(r[key]):.2f}" for key, name in (("p_malignant", "P(malignant)"),
                                                                         ("p_lesion", "P(lesion)")) if r.get(key, "") != "")
        role = {"yes": " · scores the image", "no": " · finding"}.get(r.get("scores_image", ""), "")
        image_p = "" if r.get("image_probability", "") == "" else f"P(malignant) {float(r['image_probability']):.2f}, "
        domain = f", {html.escape(r['image_domain'])}" if r.get("image_domain") else ""
        image_text = f"image: {image_p}score {r.get('image_score', '')}, {predicted.replace('-', ' ')}{domain}"
        roi, image = html.escape(r["roi_id"]), html.escape(r["image_id"])
        cards.append(
            f'<figure class="card" data-pred="{predicted}" data-truth="{html.escape(truth)}" '
            f'data-kind="{r["kind"]}"><a href="overlays/{image}.png"><img src="crops/{roi}.png" alt="{roi}"></a>'
            f'<figcaption><b>{roi}</b> ({r["kind"]}{role})<br>malignancy {float(r["malignancy"]):.2f}{detector}{box}'
            f'<br>{image_text}<br>truth: {html.escape(truth)}</figcaption></figure>')
    on_probability = "" if probability_threshold is None else f" (P(malignant) {probability_threshold:.4f})"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ROI review</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }} .grid {{ display: flex; flex-wrap: wrap; gap: 10px; }}
.card {{ margin: 0; border: 1px solid #ccc; padding: 4px; font-size: 12px; width: 388px; }}
.card img {{ width: 388px; display: block; }} .hidden {{ display: none; }}
</style></head><body>
<h1>Regions of interest for review</h1>
<p>{len(rows)} regions, sorted by malignancy; operating threshold on the image score {threshold:.4f}{on_probability}.
Fill the <code>review_label</code> column of <code>rois.csv</code>. Click a crop for its full-image overlay.
Research tool, not a medical device.</p>
<label>Show: <select id="filter">
<option value="all">all</option>
<option value="pred:malignant">image predicted malignant</option>
<option value="pred:not-malignant">image predicted not malignant</option>
<option value="truth:malignant">truth: malignant</option>
<option value="truth:benign">truth: benign</option>
<option value="truth:none">truth: no lesion (false-positive candidates)</option>
<option value="truth:unknown">truth: unknown</option>
</select></label> <span id="count"></span>
<div class="grid">
{chr(10).join(cards)}
</div>
<script>
const cards = Array.from(document.querySelectorAll('.card'));
function applyFilter() {{
  const [key, value] = document.getElementById('filter').value.split(':');
  let shown = 0;
  for (const c of cards) {{
    const keep = key === 'all' || c.dataset[key] === value;
    c.classList.toggle('hidden', !keep); shown += keep;
  }}
  document.getElementById('count').textContent = shown + ' shown';
}}
document.getElementById('filter').addEventListener('change', applyFilter);
applyFilter();
window.addEventListener('load', () => {{
  const imgs = Array.from(document.images);
  document.body.dataset.imagesOk = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.imagesBroken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;
}});
</script>
</body></html>
"""
