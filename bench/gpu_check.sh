#!/usr/bin/env bash
# The checks that need a GPU, on a machine with one (and its driver):
#
#   bench/gpu_check.sh [--quick]
#
# 1. the GPUs as NVML sees them (nvidia-smi);
# 2. tests/gpu/ against the real driver: placement by free memory (GPU_MEMORY_MB), the
#    per-worker cap (GPU_MEMORY_CAP), a worker larger than every GPU refused;
# 3. bench/bench_batching.py: MiniLM through the gateway on CUDA, batching off and on;
# 4. SmolLM2-135M-Instruct on CUDA (endpoints/chat.py): tests/openai/test_smollm2.py, and
#    bench/bench_generation.py, one stream against eight (continuous batching).
#
# Results go to $OUT when it is set (the folder a device run brings back), else to
# ./gpu_check: the test report (JUnit XML) and the benchmark's JSON. --quick runs one
# short benchmark round. The virtual environment is $VIRTUAL_ENV, else .venv, made by
# the README's install line; torch must be the CUDA build the machine needs.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check}"
mkdir -p "$out"
rounds=3 duration=5
[ "${1:-}" = "--quick" ] && rounds=1 duration=3

# shellcheck disable=SC1091
. "${VIRTUAL_ENV:-.venv}/bin/activate"
nvidia-smi --query-gpu=index,name,memory.total,memory.used,driver_version --format=csv \
    | tee "$out/gpus.csv"
python -c 'import torch; assert torch.cuda.is_available(), "torch sees no CUDA device"; print("torch", torch.__version__, "CUDA", torch.version.cuda)'

status=0
BIS_GPU_TESTS=1 python -m pytest -q tests/gpu tests/integration/test_gpu_placement.py \
    --junitxml="$out/gpu_tests.xml" || status=$?
python bench/bench_batching.py --rounds "$rounds" --duration "$duration" \
    --json "$out/minilm_batching.json" | tee "$out/minilm_batching.txt" || status=$?
python -m pytest -q tests/openai/test_smollm2.py --junitxml="$out/smollm2_tests.xml" || status=$?
python bench/bench_generation.py --rounds "$rounds" --json "$out/smollm2_generation.json" \
    | tee "$out/smollm2_generation.txt" || status=$?
exit "$status"
