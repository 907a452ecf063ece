"""HF <-> Megatron checkpoint mappings, one module per architecture family.

A mapping module provides ``hf_to_megatron(hf_sd, hf_config, transformer_engine=False) -> dict`` and
``megatron_to_hf(mg_sd, hf_config) -> dict`` over full (unsharded, global layer index) state dicts, and the
HF -> Megatron direction as data, ``megatron_sources(hf_config, transformer_engine)`` (see ``sources.py``), with
``canonical_hf_name`` / ``ignored_hf_name`` for the HF names it accepts.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# model_type -> module under nemo_igrpo.backends.conversion.
_MAPPINGS = {
    "llama": "llama",
    "qwen2": "llama",
    "nemotron_h": "nemotron_h",
}


# HF tensors that stay float32 whatever dtype the model runs in: Mamba's A_log and D. A = -exp(A_log) sets each head's
# decay rate per step; rounded to bf16, the generator would decay at other rates than the trainer (megatron keeps
# both in float32 too).
_FP32_SUFFIXES = (".mixer.A_log", ".mixer.D")


def keeps_fp32(hf_name: str) -> bool:
    """Whether this HF tensor is kept in float32 through export, refit and checkpoint writing."""
    return hf_name.endswith(_FP32_SUFFIXES)


def supported_model_types() -> list[str]:
    """HF ``model_type`` values with a mapping."""
    return sorted(_MAPPINGS)


def get_mapping(model_type: str) -> ModuleType:
    """The mapping module for an HF ``model_type``; ValueError listing the supported ones otherwise."""
    if model_type not in _MAPPINGS:
        raise ValueError(f"no HF<->Megatron mapping for model_type={model_type!r}; supported: {supported_model_types()}")
    return importlib.import_module(f"{__name__}.{_MAPPINGS[model_type]}")
