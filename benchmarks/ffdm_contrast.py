"""Does contrast normalization of the global branch's input help on digital mammograms? Measured once, before
any setting is added for it.

Why: the global branch's out-of-fold contact sheet (issue 24) showed that its score follows the rendering. Its
most confident false positives are dark, high-contrast renderings, and its false negatives pale, low-contrast
ones. This runs `pipeline digital-cv` on the same woman-level folds as docs/cv/ffdm-k5, with one change: CLAHE
(mammo.preprocess.clahe, clip limit 2, 8 x 8 tiles, the detector's own option) on the branch's square input,
after the polarity step. Compare the two runs image by image with benchmarks/ffdm_polarity.py (paired auROC
differences, 95 % CIs over women):

    python benchmarks/ffdm_contrast.py --out runs/ffdm-k5-clahe            # 19 min on 2 idle cores (features: 10)
    python benchmarks/ffdm_polarity.py --cv docs/cv/ffdm-k5 runs/ffdm-k5-clahe

The branch's input is wrapped for this process only. The feature cache's manifest and `experiment.json` in the
run folder say so ("contrast": "clahe"), so these features are never mixed with a cache made without CLAHE.
A setting in the library follows only if the paired difference says CLAHE helps.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the project root first

import mammo.runtime  # noqa: E402,F401  (the first import of anything that may load a framework)

import argparse  # noqa: E402
import json  # noqa: E402

CLIP_LIMIT, TILES = 2.0, 8
CONTRAST = f"clahe (clip {CLIP_LIMIT}, {TILES}x{TILES} tiles) after the polarity step: benchmarks/ffdm_contrast.py"


def with_clahe() -> None:
    """The branch input, then CLAHE, for this process; the feature cache's manifest names the change."""
    import classifier.global_branch as global_branch
    import pipeline.digital.features as features
    from mammo.preprocess import clahe

    as_read, manifest = global_branch.branch_input, features.cache_manifest

    def branch_input(pixels, size, polarity):
        square, transform, inverted = as_read(pixels, size, polarity)
        return clahe(square, CLIP_LIMIT, TILES), transform, inverted

    global_branch.branch_input = branch_input  # features.extract_features imports it at call time
    features.cache_manifest = lambda *a, **k: dict(manifest(*a, **k), contrast=CONTRAST)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/rsna_ffdm.yaml")
    parser.add_argument("--out", required=True, help="the run folder (resumable: run again to go on)")
    args, overrides = parser.parse_known_args()
    with_clahe()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiment.json").write_text(json.dumps({"contrast": CONTRAST, "compare_with": "docs/cv/ffdm-k5"}))
    from pipeline.__main__ import main as pipeline_main

    return pipeline_main(["digital-cv", "--config", args.config, "--out", str(out), *overrides])


if __name__ == "__main__":
    sys.exit(main())
