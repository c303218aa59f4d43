#!/usr/bin/env bash
# System packages that some tests drive for real, installed only when missing:
#   postgresql  the tuning stage's multi-worker test starts its own server (initdb/pg_ctl in a temporary folder)
#   chromium    a headless browser: the ROI contact sheet test and the `pipeline serve` browser test (Playwright)
#   orthanc, orthanc-dicomweb  a real PACS with DICOMweb for the DICOM node tests (tests/orthanc_server.py)
#   dicom3tools dciodvfy, the DICOM validator the DICOM results tests run on the SR and heatmap objects written
#   nodejs, npm, and the npm package @ohif/app (OHIF Viewer, a built web app: static files, no build step) unpacked
#               into ~/.cache/mammo-cad/ohif-VERSION/dist: the viewer test and scripts/viewer.sh serve it locally
# Idempotent and quiet; fast when everything is there. Needs root and apt-get; anywhere else it says why it
# installs nothing and exits 0 (the tests that need a missing piece then skip with the reason, except in CI,
# where the PostgreSQL and Orthanc tests fail instead).
set -uo pipefail

missing=()
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || ! compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null; then
  missing+=(postgresql)
fi
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  missing+=(chromium)
fi
if ! command -v Orthanc >/dev/null 2>&1 && [ ! -x /usr/sbin/Orthanc ]; then
  missing+=(orthanc)
fi
if ! compgen -G "/usr/share/orthanc/plugins/libOrthancDicomWeb.so*" >/dev/null \
   && ! compgen -G "/usr/lib/orthanc/libOrthancDicomWeb.so*" >/dev/null; then
  missing+=(orthanc-dicomweb)
fi
if ! command -v dciodvfy >/dev/null 2>&1; then
  missing+=(dicom3tools)
fi
if ! command -v npm >/dev/null 2>&1; then
  missing+=(npm)  # brings nodejs
fi

# OHIF Viewer: version and folder as pipeline/dicomnode/viewer.py expects them; `npm pack` fetches the package's
# tarball alone (its dist/ is the whole app; no dependency install).
ohif_version=3.13.2
ohif_dir="${XDG_CACHE_HOME:-$HOME/.cache}/mammo-cad/ohif-$ohif_version"
install_ohif() {
  [ -f "$ohif_dir/dist/index.html" ] && return 0
  if ! command -v npm >/dev/null 2>&1; then
    echo "system-deps: no npm, not installing OHIF Viewer" >&2
    return 0
  fi
  local tmp
  tmp=$(mktemp -d)
  if (cd "$tmp" && npm pack --silent "@ohif/app@$ohif_version" >/dev/null 2>"$tmp/log" && tar xzf ./*.tgz); then
    mkdir -p "$ohif_dir" && rm -rf "$ohif_dir/dist" && mv "$tmp/package/dist" "$ohif_dir/dist"
  else
    echo "system-deps: npm pack @ohif/app@$ohif_version failed:" >&2
    tail -n 5 "$tmp/log" >&2
  fi
  rm -rf "$tmp"
}

trap install_ohif EXIT  # on every way out below: npm needs no root, and an apt step that failed may have left npm
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "system-deps: not root, not installing: ${missing[*]}" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: no apt-get on this system, not installing: ${missing[*]}" >&2
  exit 0
fi

echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
if ! apt-get update -qq >"$log" 2>&1; then
  echo "system-deps: apt-get update failed, not installing ${missing[*]}:" >&2
  tail -n 5 "$log" >&2
  rm -f "$log"
  exit 0
fi
for pkg in "${missing[@]}"; do  # one at a time: a package that fails does not block the other
  if ! apt-get install -y -qq --no-install-recommends "$pkg" >"$log" 2>&1; then
    echo "system-deps: apt-get install $pkg failed:" >&2
    tail -n 5 "$log" >&2
  fi
done
rm -f "$log"
exit 0
