#!/usr/bin/env bash
# The prepared GPU check (issue 15): perln, gsg, clipfusion and cope at paper-like shapes on
# one GPU, each part in its own process with its own time limit (≤ 8 min in all on one
# H100/H200), offline. Writes <out>/<part>.json and <out>/summary.md; see docs/gpu-check.md.
#
#   scripts/gpu-check.sh                       # on a GPU machine, into runs/gpu-check/
#   scripts/gpu-check.sh --out /tmp/gc --parts perln,gsg
#   scripts/gpu-check.sh --tiny --out /tmp/gc  # tiny shapes on CPU, seconds (CI)
#
# vLLM may be installed in a venv of its own: GPU_CHECK_COPE_PYTHON=/path/to/venv/bin/python
# runs the cope part with it. PYTHON overrides the interpreter of the rest (default: the
# workspace's, through `uv run --no-sync`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -n "${PYTHON:-}" ]; then
    exec "$PYTHON" scripts/gpu_check.py "$@"
elif command -v uv >/dev/null 2>&1; then
    exec uv run --no-sync python scripts/gpu_check.py "$@"
else
    exec python3 scripts/gpu_check.py "$@"
fi
