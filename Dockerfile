# nemo_igrpo training and evaluation image: megatron-core (policy) and vLLM (rollouts) in ONE Python process, built
# from the project's one tested version set, constraints.txt (torch 2.13.0, megatron-core 0.16.1, transformers 5.19.0,
# vLLM 0.32.0, whose PyPI wheel pins torch==2.13.0 and transformers<5.20).
#
# Why this layout. vLLM and Megatron run colocated in the same SPMD processes (weights are refitted in memory), so they
# must share one torch. vLLM's PyPI wheel is built against the PyPI torch it pins, so the image installs exactly those
# two from PyPI into a plain CUDA devel base, as NVIDIA's own RL stack (NeMo-RL) does, instead of recompiling vLLM
# against an NGC PyTorch build (an hour of compilation and a torch no test here ran). The devel base brings the CUDA
# toolkit (nvcc, cuDNN headers) to compile what has no wheel for this torch: Transformer Engine's torch extension and
# the Mamba kernels of Nemotron-H, for A100 and H100 (sm_80, sm_90; add 10.0 for Blackwell).
#
# Verified here: the Dockerfile lints with hadolint (bash .ci/lint_dockerfile.sh), and the Python set installs and
# passes the test suite on CPU (CI). NOT verified here (no Docker engine or CUDA compiler on this project's machines):
# that the image builds, the BASE_IMAGE tag below (NVIDIA's naming scheme; pick one whose CUDA major version equals
# torch 2.13.0's, which the build checks), and the Transformer Engine / mamba-ssm / causal-conv1d pins (the newest on
# PyPI when written, untested with this torch). The build stops on any mismatch it can see: CUDA majors, pip check,
# torch replaced, kernels missing sm_80 or sm_90.
#
#   docker build -t nemo_igrpo:latest --build-arg IGRPO_CODE_VERSION=$(git rev-parse --short=12 HEAD) .
#   enroot import -o nemo_igrpo.sqsh dockerd://nemo_igrpo:latest     # the .sqsh is CONTAINER_IMAGE in slurm/*.sbatch
#
# Jobs launched by slurm/*.sbatch import nemo_igrpo from the mounted checkout (PYTHONPATH), not from the copy below,
# and log the checkout's git commit; the copy serves `docker run` and records the commit it was built from.
ARG BASE_IMAGE=nvcr.io/nvidia/cuda-dl-base:25.09-cuda13.0-devel-ubuntu24.04
FROM ${BASE_IMAGE}

ARG TORCH_CUDA_ARCH_LIST="8.0;9.0"
ARG NVTE_CUDA_ARCHS="80;90"
ARG TRANSFORMER_ENGINE_VERSION=2.20.2
ARG MAMBA_SSM_VERSION=2.3.2.post1
ARG CAUSAL_CONV1D_VERSION=1.7.0
ARG MAX_JOBS=16
ARG IGRPO_CODE_VERSION=unknown

# HF_HUB_OFFLINE: compute nodes have no internet; models are downloaded on a login node (docs/cluster.md, step 1),
# so a name that is not a local directory fails at once instead of after minutes of retries.
ENV TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} \
    NVTE_CUDA_ARCHS=${NVTE_CUDA_ARCHS} \
    MAX_JOBS=${MAX_JOBS} \
    MAMBA_FORCE_BUILD=TRUE \
    CAUSAL_CONV1D_FORCE_BUILD=TRUE \
    HF_HUB_OFFLINE=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    IGRPO_IMAGE_CODE_VERSION=${IGRPO_CODE_VERSION}
LABEL org.opencontainers.image.title="nemo_igrpo" \
      org.opencontainers.image.revision="${IGRPO_CODE_VERSION}"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Python 3.12 (Ubuntu 24.04's) in a virtual environment, so pip never touches the distribution's packages.
# DL3008 (apt versions unpinned): they follow the base image's Ubuntu release, which BASE_IMAGE pins.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-dev python3-venv git \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /opt/nemo_igrpo
COPY constraints.txt ./

# The tested version set, from PyPI: torch first (its CUDA build), then vLLM's wheel (built for that torch), megatron-core
# and the rest. -c constraints.txt pins every one of them; nothing else may move torch.
# DL3013 (pip versions not on the command line): they are in constraints.txt, passed with -c.
# hadolint ignore=DL3013
RUN pip install -c constraints.txt torch \
    && pip install -c constraints.txt vllm megatron-core transformers tokenizers safetensors omegaconf \
       "math-verify[antlr4_9_3]" psutil wandb \
    && python -c "import torch; print(torch.__version__)" > /opt/torch_version.txt \
    && test "$(cut -d+ -f1 /opt/torch_version.txt)" = "$(sed -n 's/^torch==//p' constraints.txt)"

# The toolkit that compiles the kernels must be the CUDA major version torch was built with.
RUN torch_cuda="$(python -c 'import torch; print(torch.version.cuda)')" \
    && nvcc_cuda="$(nvcc --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')" \
    && echo "torch built with CUDA ${torch_cuda}, base image nvcc ${nvcc_cuda}" \
    && test "${torch_cuda%%.*}" = "${nvcc_cuda%%.*}"

# Transformer Engine (the GPU layer spec) and the Mamba kernels of Nemotron-H (megatron-core's MambaModel), compiled
# against the installed torch (hence no build isolation) for TORCH_CUDA_ARCH_LIST / NVTE_CUDA_ARCHS.
RUN pip install --no-build-isolation -c constraints.txt "transformer_engine[pytorch]==${TRANSFORMER_ENGINE_VERSION}" \
    && pip install --no-build-isolation -c constraints.txt "causal-conv1d==${CAUSAL_CONV1D_VERSION}" \
       "mamba-ssm==${MAMBA_SSM_VERSION}"

# Every compiled kernel library must hold code for A100 (sm_80) and H100 (sm_90).
RUN site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && libs="$(find "$site"/transformer_engine* "$site"/mamba_ssm* "$site"/causal_conv1d* -name '*.so' | sort -u)" \
    && test -n "$libs" \
    && for lib in $libs; do \
         archs="$(cuobjdump --list-elf "$lib" 2>/dev/null | grep -o 'sm_[0-9]*' | sort -u | tr '\n' ' ')"; \
         [[ -z $archs ]] && continue; \
         echo "$lib: $archs"; \
         [[ $archs == *sm_80* && $archs == *sm_90* ]] || { echo "missing sm_80 or sm_90 in $lib" >&2; exit 1; }; \
       done

# This package last: code changes rebuild only these layers.
COPY pyproject.toml README.md ./
COPY nemo_igrpo ./nemo_igrpo
COPY conf ./conf
COPY slurm ./slurm
# The checks: pip's dependency check over the whole set, torch still the pinned build, the stack imports (Transformer
# Engine and mamba_ssm are only looked up: their kernels need the GPU driver, absent during docker build).
RUN pip install -c constraints.txt ".[wandb]" \
    && pip check \
    && test "$(python -c 'import torch; print(torch.__version__)')" = "$(cat /opt/torch_version.txt)" \
    && python -c "import importlib.util as u, vllm, megatron.core, wandb, nemo_igrpo; \
from importlib.metadata import version as v; \
assert all(u.find_spec(m) for m in ('transformer_engine', 'mamba_ssm', 'causal_conv1d')); \
print(*(f'{p} {v(p)}' for p in ('torch', 'vllm', 'megatron-core', 'transformers', 'transformer-engine', 'mamba-ssm')))"
