#!/usr/bin/env bash
# GPU benchmark: bf16 autocast + torch.compile + flash SDPA student step (MFU) and bf16 channels-last teachers,
# against plain fp32 eager, on one H100/H200-class GPU in one run (about 5-8 minutes; nothing is downloaded).
#   bash benchmarks/gpu.sh             # the GPU run
#   bash benchmarks/gpu.sh --dry-run   # CPU, tiny sizes, fp32, no compile (what the test runs)
# Other options: see `python benchmarks/gpu.py --help`. PYTHON picks the interpreter (default: python).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" benchmarks/gpu.py "$@"
