#!/usr/bin/env bash
# The main job: create .venv if missing, then run the KV-vs-QKV study of all 14 architecture/attention pairs.
# With no --data it writes a small synthetic dataset to data/synthetic first. Extra arguments go to `kvmonai study`
# (e.g. --data /path/to/kaggle/folder --preset paper --folds 0,1,2,3,4 --device cuda). A re-run skips finished runs.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"
exec kvmonai study "$@"
