# Shared by scripts/demo.sh and scripts/test.sh: make sure .venv exists and holds kvmonai, then activate it.
# Idempotent: the install runs only when .venv is missing or pyproject.toml / the constraints file changed.
#
# Environment knobs:
#   KVMONAI_CONSTRAINTS  pip constraints file (default: constraints/cpu.txt, which pins the CPU torch 2.13.0).
#                        Point it at your own file to get a CUDA build, e.g. one containing "torch==2.13.0"
#                        plus PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cu128.
#   KVMONAI_VENV         virtual environment folder (default: .venv in the repository).
#   KVMONAI_SYSTEM_TORCH=1  create the venv with --system-site-packages and do not constrain torch, so an
#                        already-installed torch (e.g. a cluster module or a CUDA container) is reused.
#   PYTHON               interpreter used to create the venv (default: python3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${KVMONAI_VENV:-$ROOT/.venv}"
CONSTRAINTS="${KVMONAI_CONSTRAINTS:-$ROOT/constraints/cpu.txt}"
PY="${PYTHON:-python3}"

if [ ! -f "$CONSTRAINTS" ]; then
    echo "error: constraints file '$CONSTRAINTS' (KVMONAI_CONSTRAINTS) does not exist" >&2
    exit 2
fi

venv_args=()
pip_constraint=(-c "$CONSTRAINTS")
if [ "${KVMONAI_SYSTEM_TORCH:-0}" = "1" ]; then
    venv_args+=(--system-site-packages)
    pip_constraint=()
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "[kvmonai] creating virtual environment in $VENV" >&2
    "$PY" -m venv "${venv_args[@]}" "$VENV"
fi

stamp="$VENV/.kvmonai-install-stamp"
want="$(cat "$ROOT/pyproject.toml" "$CONSTRAINTS" | sha256sum | cut -d' ' -f1) system_torch=${KVMONAI_SYSTEM_TORCH:-0}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[kvmonai] installing kvmonai and its dependencies into $VENV (a few minutes the first time)" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${pip_constraint[@]}" -e "$ROOT[test,openvino,dicom,timm]"
    printf '%s' "$want" > "$stamp.tmp" && mv "$stamp.tmp" "$stamp"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
