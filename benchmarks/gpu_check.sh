#!/usr/bin/env bash
# The GPU checks, in one go (under 5 minutes), for a machine with a CUDA GPU where torch, triton,
# numpy, numba, pytest and hypothesis are preinstalled and nothing can be downloaded (no veRL:
# the benchmark then times its own plain torch loop of the same recurrence).
#   bash benchmarks/gpu_check.sh
# 1. the GPU correctness tests: the torch and Triton backends on CUDA tensors against the
#    reference (the same tests CI runs on the CPU, with Triton compiled instead of interpreted);
# 2. the GPU benchmark: the loop vs torch vs triton (bool and int64 masks) at [512, 8192] and
#    [64, 32768]: time, bytes per token, bandwidth against a device-to-device copy measured in the
#    same run, and the time the cost model of docs/performance.md predicts from that copy.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PY" -c "import torch, triton; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, 'triton', triton.__version__)"
timeout 200 "$PY" -m pytest -q -p no:cacheprovider tests/test_torch_backends.py tests/test_api.py
timeout 120 "$PY" benchmarks/estimators.py --device cuda
