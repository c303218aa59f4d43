"""Time to first result from a cold process, in this checkout or another one (e.g. an older commit, to compare).

    python benchmarks/cold_start.py [--tree DIR] [--repeats 2] [IMAGE] [key=value ...]

Runs `python -m pipeline infer --out TMP IMAGE` in DIR (default: this checkout) with DIR's shipped models and
default config, and prints the seconds until the image's result JSON exists and until the process exits, with
the load average (on a shared machine the figures only compare when it is alike). IMAGE defaults to the first
DICOM of the embedded sample. An older checkout: `git worktree add /tmp/old <commit>`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the project root first

import mammo.runtime  # noqa: E402  (the first import of anything that may load a framework)

import argparse  # noqa: E402

from pipeline.benchmark import measure_cold_start  # noqa: E402
from pipeline.demo import sample_inputs  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", type=Path, default=mammo.runtime.PROJECT_ROOT, help="checkout to run in")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("rest", nargs="*", help="IMAGE and key=value overrides")
    args = p.parse_args()
    image = next((a for a in args.rest if "=" not in a), str(sample_inputs()[0]))
    overrides = [a for a in args.rest if "=" in a]
    tree = args.tree.resolve()
    for k in range(max(1, min(args.repeats, 20))):
        r = measure_cold_start(image, tree / "weights", str(tree / "configs" / "default.yaml"), overrides,
                               mammo.runtime.default_threads(), cwd=tree)
        print(f"{tree} run {k + 1}: first result {r['first_result_seconds']:.1f} s, exit {r['exit_seconds']:.1f} s, "
              f"load average {r['load_average_before']:.1f} -> {r['load_average_after']:.1f}", flush=True)


if __name__ == "__main__":
    main()
