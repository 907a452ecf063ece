"""The image builds the one tested version set: every pin of the stack comes from constraints.txt (`pip install -c`),
the CUDA base is a build argument (a plain CUDA devel image: vLLM's PyPI wheel, not a recompile against NGC torch),
`pip check` runs in the build, the kernels are built for A100 and H100, wandb is in, and the Hub is offline. No Docker
engine runs here: what can be checked without one is checked on the text (hadolint runs in .ci/run)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()
STACK = ("torch", "vllm", "megatron-core", "transformers")


def _instructions() -> list[str]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(l for l in DOCKERFILE.splitlines() if not l.lstrip().startswith("#")))
    return [l.strip() for l in text.splitlines() if l.strip()]


def test_the_base_image_is_a_build_argument_and_a_cuda_devel_image():
    lines = _instructions()
    froms = [l for l in lines if l.startswith("FROM ")]
    assert froms == ["FROM ${BASE_IMAGE}"]
    base = next(l for l in lines if l.startswith("ARG BASE_IMAGE="))
    assert "cuda-dl-base" in base and "devel" in base


def test_the_stack_is_installed_from_constraints_txt_only():
    constraints = dict(l.split("==") for l in (REPO / "constraints.txt").read_text().splitlines()
                       if "==" in l and not l.startswith("#"))
    assert all(p in constraints for p in STACK)
    installs = [l for l in _instructions() if "pip install" in l]
    for line in installs:
        for command in line.split("&&"):
            if "pip install" in command:
                assert "-c constraints.txt" in command, command
    # no version of the stack is stated in an instruction (only constraints.txt has them)
    instructions = " ".join(_instructions())
    for package in STACK:
        assert not re.search(rf"{package}\s*[=~<>]=\s*\d", instructions, re.IGNORECASE), package
    assert "git clone" not in DOCKERFILE  # vLLM comes from its PyPI wheel, not a source build
    assert re.search(r"\bvllm\b", " ".join(installs)) and re.search(r"\bwandb\b", " ".join(installs))


def test_the_build_checks_itself():
    run = " ".join(l for l in _instructions() if l.startswith("RUN "))
    assert "pip check" in run
    assert "torch_version.txt" in run  # torch is still the pinned build at the end
    assert "nvcc --version" in run and "torch.version.cuda" in run  # one CUDA major for torch and the kernels
    assert "cuobjdump" in run and "sm_80" in run and "sm_90" in run


def test_a100_and_h100_kernels_wandb_and_offline_hub():
    assert 'ARG TORCH_CUDA_ARCH_LIST="8.0;9.0"' in DOCKERFILE
    assert 'ARG NVTE_CUDA_ARCHS="80;90"' in DOCKERFILE
    assert "HF_HUB_OFFLINE=1" in DOCKERFILE
    assert '".[wandb]"' in DOCKERFILE
    assert "IGRPO_CODE_VERSION" in DOCKERFILE  # the image records which commit it was built from
