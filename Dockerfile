# nemo_igrpo training image: megatron-core (policy) and vLLM (rollouts) in ONE Python process, on the NGC PyTorch base.
#
# Why this layout. vLLM and Megatron run colocated in the same SPMD processes (weights are refitted in memory), so they
# must share one torch. Every vLLM wheel on PyPI pins its own CUDA torch, and `pip install vllm` in an NGC container
# replaces NVIDIA's torch build (and then torchvision, Transformer Engine and apex no longer match it). Instead vLLM is
# compiled here against the container's torch, with vLLM's documented "existing torch" procedure
# (use_existing_torch.py strips its torch pins; --no-build-isolation builds against the installed torch). The NGC
# image's pip constraint file (/etc/pip/constraint.txt, PIP_CONSTRAINT) keeps pip from swapping torch for a PyPI
# build, and the last step fails the build if torch changed anyway.
#
# Versions (to verify on the cluster; not measured on this project's GPU machines):
#   nvcr.io/nvidia/pytorch:26.05-py3: Python 3.12, PyTorch 2.12.0a0, CUDA 13.2, Transformer Engine, apex, NCCL 2.30.
#   vLLM 0.25.0 from source on that base (a reported working pairing), megatron-core 0.19.x (needs Python >= 3.12).
#   mamba-ssm 2.3.x + causal-conv1d 1.7.x (Nemotron-H's Mamba layers in megatron-core; compiled against this torch).
# Building takes about an hour (vLLM kernels); TORCH_CUDA_ARCH_LIST limits it to Hopper (add 10.0 for Blackwell).
#
#   docker build -t nemo_igrpo:latest .
#   enroot import -o nemo_igrpo.sqsh dockerd://nemo_igrpo:latest     # the .sqsh is CONTAINER_IMAGE in slurm/*.sbatch
FROM nvcr.io/nvidia/pytorch:26.05-py3

ARG VLLM_VERSION=0.25.0
ARG MCORE_VERSION=0.19.0
ARG MAMBA_SSM_VERSION=2.3.1
ARG CAUSAL_CONV1D_VERSION=1.7.0
ARG TORCH_CUDA_ARCH_LIST=9.0
ARG MAX_JOBS=16

ENV TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} \
    MAX_JOBS=${MAX_JOBS} \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Remember the container's torch so that the final check can prove nothing replaced it.
RUN python -c "import torch; print(torch.__version__)" > /opt/torch_version.txt

# vLLM from source against the container's torch.
WORKDIR /tmp/vllm
RUN git clone --depth 1 --branch "v${VLLM_VERSION}" https://github.com/vllm-project/vllm.git . \
    && python use_existing_torch.py \
    && pip install -r requirements/build.txt \
    && pip install --no-build-isolation . \
    && rm -rf /tmp/vllm

# megatron-core, and the Mamba kernels of Nemotron-H (built against the container's torch, hence no build isolation).
RUN pip install "megatron-core~=${MCORE_VERSION}" \
    && pip install --no-build-isolation "causal-conv1d==${CAUSAL_CONV1D_VERSION}" "mamba-ssm==${MAMBA_SSM_VERSION}"

# This package last: code changes rebuild only these layers.
WORKDIR /opt/nemo_igrpo
COPY pyproject.toml README.md ./
COPY nemo_igrpo ./nemo_igrpo
COPY conf ./conf
COPY slurm ./slurm
# The checks: torch is still the container's; the stack imports (mamba_ssm is only looked up: its kernels need the
# GPU driver, absent during docker build).
RUN pip install . \
    && test "$(python -c 'import torch; print(torch.__version__)')" = "$(cat /opt/torch_version.txt)" \
    && python -c "import vllm, megatron.core, nemo_igrpo; from importlib.metadata import version as v; \
print('vllm', v('vllm'), 'megatron-core', v('megatron-core'), 'mamba-ssm', v('mamba-ssm'))"
