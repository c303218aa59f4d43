"""How many images of an image-labelled folder set are stored in inverted polarity (a bright background, as a
MONOCHROME1 image shown raw), and the cancer rate of each group: a shortcut a model can learn instead of anatomy.

    python benchmarks/ffdm_polarity.py [--config configs/rsna_ffdm.yaml] [--cv docs/cv/ffdm-k5]

With --cv (a `pipeline digital-cv` run), the out-of-fold auROC within each group too: how much of the pooled
figure is the polarity alone.
"""
import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mammo.annotations import read_annotations  # noqa: E402
from mammo.config import load_config  # noqa: E402
from mammo.metrics import auroc, bootstrap_ci  # noqa: E402


def bright_background(path) -> bool:
    """The median of a 4-pixel frame of the 64 x 64 thumbnail above mid-grey."""
    g = cv2.resize(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), (64, 64), interpolation=cv2.INTER_AREA)
    frame = np.concatenate([g[:4].ravel(), g[-4:].ravel(), g[:, :4].ravel(), g[:, -4:].ravel()])
    return bool(np.median(frame) > 128)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/rsna_ffdm.yaml")
    parser.add_argument("--cv", help="a digital-cv run folder (its summary.json)")
    args = parser.parse_args()
    cfg = load_config(args.config)
    records = read_annotations(cfg.data.format, cfg.data.annotations, cfg.data.images_root or None).images
    inverted = np.array([bright_background(r.path) for r in records])
    y = np.array([r.label for r in records])
    women = np.array([r.patient_id for r in records])
    rate = lambda y_, p_: float(np.mean(y_[p_ > 0.5])) if (p_ > 0.5).any() else float("nan")  # noqa: E731
    for name, flag in (("bright background (inverted)", inverted), ("dark background", ~inverted)):
        value, low, high = bootstrap_ci(rate, y, flag.astype(float), women, n=1000)
        print(f"{name}: {flag.sum()} of {len(records)} images, cancer rate {value:.3f} [{low:.3f}, {high:.3f}]")
    if args.cv:
        oof = json.loads((Path(args.cv) / "summary.json").read_text())["oof"]
        logit = dict(zip(oof["image_id"], oof["logit"]))
        s = np.array([logit[r.image_id] for r in records])
        print(f"out-of-fold auROC: pooled {auroc(y, s):.3f}; polarity alone {auroc(y, (~inverted).astype(float)):.3f}; "
              f"within dark-background images {auroc(y[~inverted], s[~inverted]):.3f}; "
              f"within inverted images {auroc(y[inverted], s[inverted]):.3f}")


if __name__ == "__main__":
    main()
