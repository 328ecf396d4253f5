#!/usr/bin/env bash
# The main job: create .venv if missing, then print the paper's complexity table (parameters and MACs of every
# architecture/attention pair at the paper sizes). Extra arguments go to `kvmonai complexity`
# (e.g. --preset small --format csv). The full KV-vs-QKV study replaces this once it lands.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
exec kvmonai complexity --preset paper --out results/complexity/paper.md "$@"
