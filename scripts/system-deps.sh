#!/usr/bin/env bash
# System packages that some tests drive for real, installed only when missing:
#   postgresql  the tuning stage's multi-worker test starts its own server (initdb/pg_ctl in a temporary folder)
#   chromium    a headless browser: the ROI contact sheet test and the `pipeline serve` browser test (Playwright)
#   orthanc, orthanc-dicomweb  a real PACS with DICOMweb for the DICOM node tests (tests/orthanc_server.py)
#   dicom3tools dciodvfy, the DICOM validator the DICOM results tests run on the SR and heatmap objects written
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
