#!/usr/bin/env bash
# Our DICOM results in a real DICOM viewer: a throw-away Orthanc (Debian's orthanc + orthanc-dicomweb), one sample
# mammogram with its identifiers replaced, `pipeline infer --dicom-out` on it with the shipped models, the image and
# its SR + segmentation stored into Orthanc, then OHIF Viewer (scripts/system-deps.sh unpacks it) served on
# 127.0.0.1 over Orthanc's DICOMweb. Prints the viewer URL; Ctrl-C stops both. Nothing is downloaded here.
# Usage: scripts/viewer.sh [WORK_DIR (default runs/viewer)]   env: PYTHON, ORTHANC_PORT (8042), VIEWER_PORT (3000)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
work=$(mkdir -p "${1:-runs/viewer}" && cd "${1:-runs/viewer}" && pwd)
orthanc_port=${ORTHANC_PORT:-8042}
orthanc=http://127.0.0.1:$orthanc_port
plugin=$(ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so* /usr/lib/orthanc/libOrthancDicomWeb.so* 2>/dev/null \
  | head -n1)
[ -n "$plugin" ] || { echo "no Orthanc DICOMweb plugin: run scripts/system-deps.sh as root" >&2; exit 2; }

# no DICOM server: this Orthanc takes nothing by C-STORE; remote access off: loopback only
cat > "$work/orthanc.json" <<JSON
{"Name": "mammo-viewer", "StorageDirectory": "$work/orthanc-db", "IndexDirectory": "$work/orthanc-db",
 "HttpPort": $orthanc_port, "DicomServerEnabled": false, "RemoteAccessAllowed": false, "AuthenticationEnabled": false,
 "HttpCompressionEnabled": false, "Plugins": ["$plugin"], "DicomWeb": {"Enable": true, "Root": "/dicom-web/"}}
JSON
/usr/sbin/Orthanc "$work/orthanc.json" >"$work/orthanc.log" 2>&1 &
orthanc_pid=$!
trap 'kill $orthanc_pid 2>/dev/null' EXIT
for _ in $(seq 100); do curl -sf "$orthanc/system" >/dev/null && break; sleep 0.2; done

study=$("$py" -m pipeline.dicomnode.viewer deidentify "$work/sample.dcm")
"$py" -m pipeline infer "$work/sample.dcm" --dicom-out --out "$work/results"
for f in "$work/sample.dcm" "$work"/results/dicom/*/*.dcm; do
  curl -sf -X POST --data-binary @"$f" "$orthanc/instances" >/dev/null
done
"$py" -m pipeline.dicomnode.viewer serve --dicomweb "$orthanc/dicom-web" --study "$study" --port "${VIEWER_PORT:-3000}"
