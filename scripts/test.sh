#!/usr/bin/env bash
# Create .venv if missing, then check style and the import layers (lint-imports) and run the test suite. Extra
# arguments go to pytest (e.g. -k attention).
# The MONAI Label server test (tests/label/test_server.py) runs in its own environment, .venv-label, which is
# created here too (scripts/label_env.sh, about 2.5 minutes the first time); KVMONAI_SKIP_LABEL_ENV=1 leaves it
# out, and that test is then skipped.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
if [ "${KVMONAI_SKIP_LABEL_ENV:-0}" != "1" ]; then
    "$ROOT/scripts/label_env.sh" > /dev/null
fi
ruff check .
ruff format --check .
lint-imports  # the layer contract of pyproject.toml (docs/architecture.md)
exec python -m pytest --durations=15 "$@"
