"""Do the views of one breast, averaged, rank better than each image alone? The digital set's labels are per
breast ("that breast had cancer"), and a screening exam has two or more views of each breast, so a breast-level
score (the mean image logit of its views) is what a reader would act on.

The JPEG exports carry no laterality, so the side is measured: after the branch's polarity rule, the breast is
on the brighter half of the image. On these 2,518 images the rule puts all the images of 349 of the 368 women with
cancer (whose images are mostly the views of one breast) on one side, no breast so found has images of both labels,
and nearly every other woman's images fall on both sides: the image side stands in for laterality. A DICOM header
has it (ImageLaterality).

    python benchmarks/ffdm_breast_level.py --cv docs/cv/ffdm-k5 [OTHER_RUN ...] [--config configs/rsna_ffdm.yaml]

Prints, per run: the pooled out-of-fold auROC of the image logits and of the breast means (every image given its
breast's mean), and their paired difference (95 % CI over women). Needs the images (to measure the sides).
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from classifier.global_branch import branch_input  # noqa: E402
from mammo.annotations import read_annotations  # noqa: E402
from mammo.config import load_config  # noqa: E402
from mammo.imaging import read_mammogram  # noqa: E402
from mammo.metrics import auroc, bootstrap_ci  # noqa: E402
from pipeline.digital.baseline import paired_auroc_difference  # noqa: E402


def breast_side(pixels: np.ndarray) -> str:
    """'left' or 'right' half of the image holding the breast (the brighter half once air is dark)."""
    square = branch_input(pixels, 128, "dark_background")[0]
    return "left" if square[:, :64].mean() > square[:, 64:].mean() else "right"


def group_means(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each row's group mean."""
    _, inverse = np.unique(groups, return_inverse=True)
    return (np.bincount(inverse, weights=values) / np.bincount(inverse))[inverse]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/rsna_ffdm.yaml")
    parser.add_argument("--cv", nargs="+", required=True, help="digital-cv run folders (summary.json)")
    parser.add_argument("--boot", type=int, default=1000)
    args = parser.parse_args()
    cfg = load_config(args.config)
    records = read_annotations(cfg.data.format, cfg.data.annotations, cfg.data.images_root or None).images
    y = np.array([r.label for r in records])
    women = np.array([r.patient_id for r in records])
    side = np.array([breast_side(read_mammogram(r.path).pixels) for r in records])
    breast = np.char.add(np.char.add(women.astype(str), "|"), side)
    mixed = sum(len(set(y[breast == b])) > 1 for b in np.unique(breast))
    one_side = [len(set(side[women == w])) == 1 for w in np.unique(women[y == 1])]
    print(f"{len(np.unique(breast))} breasts by (woman, measured side); with both labels among their images: {mixed}; "
          f"women with cancer whose images are all on one side: {sum(one_side)} of {len(one_side)}")
    for run in args.cv:
        oof = json.loads((Path(run) / "summary.json").read_text())["oof"]
        logit = dict(zip(oof["image_id"], oof["logit"]))
        image = np.array([logit[r.image_id] for r in records])
        mean = group_means(image, breast)  # a breast lies in one fold: its woman does
        a_img = bootstrap_ci(auroc, y, image, women, n=args.boot)
        a_br = bootstrap_ci(auroc, y, mean, women, n=args.boot)
        diff = paired_auroc_difference(y, image, mean, women, args.boot, seed=0)
        print(f"{run}: auROC image {a_img[0]:.3f} [{a_img[1]:.3f}, {a_img[2]:.3f}]; breast mean {a_br[0]:.3f} "
              f"[{a_br[1]:.3f}, {a_br[2]:.3f}]; difference {diff[0]:+.3f} [{diff[1]:+.3f}, {diff[2]:+.3f}]")


if __name__ == "__main__":
    main()
