"""Run folders: every command writes under runs/<stage>/<command>/<name>/ (or where --out says), with its
resolved config beside the outputs."""
from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

from mammo import runtime
from mammo.atomic import atomic_write_text
from mammo.config import Config, save_config


def make_run_dir(stage: str, command: str, name: str, out: str | None = None) -> Path:
    """`out` when given, else runs/<stage>/<command>/<name>. An existing folder is reused (resume-friendly)."""
    path = Path(out) if out else runtime.RUN_ROOT / stage / command / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def start_run(cfg: Config, run_dir: Path, argv=None) -> Path:
    """Save the resolved config and how the run was started; returns the config path."""
    info = {"argv": list(sys.argv if argv is None else argv), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": platform.python_version(), "machine": platform.machine(), "threads": cfg.run.threads}
    atomic_write_text(Path(run_dir) / "run.json", json.dumps(info, indent=2))
    return save_config(cfg, run_dir)


def peak_memory_mb() -> float:
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: on Linux a child started by
    fork + exec inherits its parent's maximum there, so a small child of a large parent would report the parent's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux
