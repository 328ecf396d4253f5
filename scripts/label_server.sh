#!/usr/bin/env bash
# Start a MONAI Label server with the kvmonai app: every bundle under bundles/ by name (e.g. setr_kv) for
# auto-segmentation and fine-tuning. Bound to 127.0.0.1 only; downloads nothing (no model zoo, no SAM weights).
# Creates the MONAI Label environment (.venv-label) first if needed (scripts/label_env.sh).
#
# usage: scripts/label_server.sh [STUDIES] [monailabel start_server options...]
#   STUDIES      a folder of NIfTI (or DICOM) volumes (created if missing; default data/studies; MONAI Label keeps
#                the saved labels in STUDIES/labels/final), or a DICOMweb URL such as
#                http://127.0.0.1:8042/dicom-web (scripts/pacs.sh): the PACS's MR series are the studies, a saved
#                final label is stored back as DICOM SEG, and OHIF at http://127.0.0.1:PORT/ohif/ shows both.
#   options      e.g. --conf models setr_kv  --conf overrides preset=small,img_size=128  --conf bundles DIR
# Environment:
#   KVMONAI_LABEL_PORT   port (default 8000); the server answers at http://127.0.0.1:PORT
#   KVMONAI_LABEL_VENV, KVMONAI_LABEL_CONSTRAINTS   see scripts/label_env.sh
#   MONAI_LABEL_DICOMWEB_SEARCH_FILTER   which PACS series are studies (default here {"Modality": "MR"}; MONAI
#                        Label's own default lists CT only)
#   MONAI_LABEL_DICOMWEB_CACHE_PATH      where series fetched from the PACS are kept (default data/label-cache)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LABEL_VENV="$("$ROOT/scripts/label_env.sh")"

STUDIES="$ROOT/data/studies"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    STUDIES="$1"
    shift
fi
# dcmqi's itkimage2segimage (installed in the MONAI Label environment) writes the SEG of saved labels; with it on
# PATH MONAI Label does not try to download dcmqi
export PATH="$LABEL_VENV/bin:$PATH"
case "$STUDIES" in
    http://* | https://*)
        if ! command -v itkimage2segimage > /dev/null; then
            echo "error: itkimage2segimage (dcmqi) is missing from $LABEL_VENV; rerun scripts/label_env.sh" >&2
            exit 2
        fi
        if ! "$LABEL_VENV/bin/python" -c "import sys, requests; requests.get(sys.argv[1] + '/studies', params={'limit': 1}, timeout=10).raise_for_status()" "${STUDIES%/}" 2> /dev/null; then
            echo "error: no DICOMweb server answers at $STUDIES (start one with scripts/pacs.sh start)" >&2
            exit 2
        fi
        export MONAI_LABEL_DICOMWEB_SEARCH_FILTER="${MONAI_LABEL_DICOMWEB_SEARCH_FILTER:-{\"Modality\": \"MR\"}}"
        export MONAI_LABEL_DICOMWEB_CACHE_PATH="${MONAI_LABEL_DICOMWEB_CACHE_PATH:-$ROOT/data/label-cache}"
        mkdir -p "$MONAI_LABEL_DICOMWEB_CACHE_PATH"
        ;;
    *)
        mkdir -p "$STUDIES"
        STUDIES="$(cd "$STUDIES" && pwd)"
        ;;
esac
PORT="${KVMONAI_LABEL_PORT:-8000}"

echo "[kvmonai] MONAI Label on http://127.0.0.1:$PORT, studies $STUDIES" >&2
exec "$LABEL_VENV/bin/python" -m monailabel.main start_server \
    --app "$ROOT/kvmonai/label/app" --studies "$STUDIES" --host 127.0.0.1 --port "$PORT" "$@"
