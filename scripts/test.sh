#!/usr/bin/env bash
# Create .venv if missing, then run the test suite. Extra arguments go to pytest (e.g. -k attention).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
ruff check .
ruff format --check .
exec python -m pytest --durations=15 "$@"
