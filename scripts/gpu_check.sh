#!/usr/bin/env bash
# The GPU check as one command on the GPU machine: install the carried wheels (.whl/, made by
# scripts/gpu_wheels.sh) into /tmp/site when they are there, then run scripts/gpu_check.py
# with the given arguments. Files go to $OUT (set by the device tool), else a folder it names.
#   scripts/gpu_check.sh                # on the GPU machine
#   scripts/gpu_check.sh --dry-run      # anywhere kvopt is installed: the CPU rehearsal
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G '.whl/*.whl' >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
exec python3 scripts/gpu_check.py "$@"
