#!/usr/bin/env bash
# Make sure the MONAI Label environment (.venv-label) exists and holds monailabel 0.8.5 and kvmonai; print its path.
# monailabel pins numpy<2 and pydicom<3 and pulls torchvision, so it gets its own venv beside the main .venv.
# Idempotent: the install runs only when the venv is missing or pyproject.toml (its 'label' extra pins monailabel)
# or the constraints file changed.
#
# Environment knobs:
#   KVMONAI_LABEL_VENV         virtual environment folder (default: .venv-label in the repository).
#   KVMONAI_LABEL_CONSTRAINTS  pip constraints file (default: constraints/label.txt: CPU torch 2.13.0, numpy<2,
#                              pydicom<3). For a CUDA build use a copy of it with PIP_EXTRA_INDEX_URL set.
#   PYTHON                     interpreter used to create the venv (default: python3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LABEL_VENV="${KVMONAI_LABEL_VENV:-$ROOT/.venv-label}"
LABEL_CONSTRAINTS="${KVMONAI_LABEL_CONSTRAINTS:-$ROOT/constraints/label.txt}"

if [ ! -f "$LABEL_CONSTRAINTS" ]; then
    echo "error: constraints file '$LABEL_CONSTRAINTS' (KVMONAI_LABEL_CONSTRAINTS) does not exist" >&2
    exit 2
fi

if [ ! -x "$LABEL_VENV/bin/python" ]; then
    echo "[kvmonai] creating the MONAI Label environment in $LABEL_VENV" >&2
    "${PYTHON:-python3}" -m venv "$LABEL_VENV"
fi

label_stamp="$LABEL_VENV/.kvmonai-label-install-stamp"
label_want="$(cat "$ROOT/pyproject.toml" "$LABEL_CONSTRAINTS" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$label_stamp" ] || [ "$(cat "$label_stamp")" != "$label_want" ]; then
    echo "[kvmonai] installing monailabel and kvmonai into $LABEL_VENV (about 3 minutes the first time)" >&2
    "$LABEL_VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c "$LABEL_CONSTRAINTS" \
        -e "$ROOT[label]"
    printf '%s' "$label_want" > "$label_stamp.tmp" && mv "$label_stamp.tmp" "$label_stamp"
fi
echo "$LABEL_VENV"
