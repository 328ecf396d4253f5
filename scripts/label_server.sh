#!/usr/bin/env bash
# Start a MONAI Label server with the kvmonai app: every bundle under bundles/ by name (e.g. setr_kv) for
# auto-segmentation and fine-tuning. Bound to 127.0.0.1 only; downloads nothing (no model zoo, no SAM weights).
# Creates the MONAI Label environment (.venv-label) first if needed (scripts/label_env.sh).
#
# usage: scripts/label_server.sh [STUDIES_DIR] [monailabel start_server options...]
#   STUDIES_DIR  folder of NIfTI (or DICOM) volumes; created if missing; default data/studies. MONAI Label keeps
#                the saved labels in STUDIES_DIR/labels/final.
#   options      e.g. --conf models setr_kv  --conf overrides preset=small,img_size=128  --conf bundles DIR
# Environment:
#   KVMONAI_LABEL_PORT   port (default 8000); the server answers at http://127.0.0.1:PORT
#   KVMONAI_LABEL_VENV, KVMONAI_LABEL_CONSTRAINTS   see scripts/label_env.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LABEL_VENV="$("$ROOT/scripts/label_env.sh")"

STUDIES="$ROOT/data/studies"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    STUDIES="$1"
    shift
fi
mkdir -p "$STUDIES"
STUDIES="$(cd "$STUDIES" && pwd)"
PORT="${KVMONAI_LABEL_PORT:-8000}"

echo "[kvmonai] MONAI Label on http://127.0.0.1:$PORT, studies $STUDIES" >&2
exec "$LABEL_VENV/bin/python" -m monailabel.main start_server \
    --app "$ROOT/kvmonai/label/app" --studies "$STUDIES" --host 127.0.0.1 --port "$PORT" "$@"
