"""How many images of an image-labelled folder set are stored in inverted polarity (a bright background, as a
MONOCHROME1 image shown raw), and the cancer rate of each group: a shortcut a model can learn instead of anatomy.

    python benchmarks/ffdm_polarity.py [--config configs/rsna_ffdm.yaml] [--cv docs/cv/ffdm-k5 [OTHER_RUN]]

With --cv (a `pipeline digital-cv` run), the out-of-fold auROC within each group too: how much of the pooled
figure is the polarity alone. With two runs on the same folds (say global_branch.polarity as_read, then
dark_background), the paired difference of each auROC too (second minus first, 95 % CI over women).
The rule is the global branch's own (classifier.global_branch.bright_background).
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from classifier.global_branch import bright_background  # noqa: E402
from mammo.annotations import read_annotations  # noqa: E402
from mammo.imaging import read_mammogram  # noqa: E402
from mammo.config import load_config  # noqa: E402
from mammo.metrics import auroc, bootstrap_ci  # noqa: E402


def oof_logits(run, records) -> np.ndarray:
    oof = json.loads((Path(run) / "summary.json").read_text())["oof"]
    logit = dict(zip(oof["image_id"], oof["logit"]))
    return np.array([logit[r.image_id] for r in records])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/rsna_ffdm.yaml")
    parser.add_argument("--cv", nargs="+", default=[], help="one or two digital-cv run folders (summary.json)")
    args = parser.parse_args()
    cfg = load_config(args.config)
    records = read_annotations(cfg.data.format, cfg.data.annotations, cfg.data.images_root or None).images
    inverted = np.array([bright_background(read_mammogram(r.path).pixels) for r in records])
    y = np.array([r.label for r in records])
    women = np.array([r.patient_id for r in records])
    rate = lambda y_, p_: float(np.mean(y_[p_ > 0.5])) if (p_ > 0.5).any() else float("nan")  # noqa: E731
    for name, flag in (("bright background (inverted)", inverted), ("dark background", ~inverted)):
        value, low, high = bootstrap_ci(rate, y, flag.astype(float), women, n=1000)
        print(f"{name}: {flag.sum()} of {len(records)} images, cancer rate {value:.3f} [{low:.3f}, {high:.3f}]")
    groups = {"pooled": np.ones(len(y), bool), "within dark-background images": ~inverted,
              "within inverted images": inverted}
    runs = [oof_logits(run, records) for run in args.cv]
    for run, s in zip(args.cv, runs):
        print(f"{run}: out-of-fold auROC " + "; ".join(f"{name} {auroc(y[g], s[g]):.3f}" for name, g in groups.items())
              + f"; polarity alone {auroc(y, (~inverted).astype(float)):.3f}")
    if len(runs) == 2:
        rows = np.arange(len(y))
        for name, g in groups.items():
            def diff(y_, r, g=g):  # resampled rows of the group, both runs together
                r = r.astype(int)[g[r.astype(int)]]
                return auroc(y[r], runs[1][r]) - auroc(y[r], runs[0][r])
            value, low, high = bootstrap_ci(diff, y, rows, women, n=1000)
            print(f"auROC {name}: second minus first {value:+.3f} [{low:+.3f}, {high:+.3f}]")


if __name__ == "__main__":
    main()
