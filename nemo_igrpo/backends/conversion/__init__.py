"""HF <-> Megatron checkpoint mappings, one module per architecture family.

A mapping module provides ``hf_to_megatron(hf_sd, hf_config, transformer_engine=False) -> dict`` and
``megatron_to_hf(mg_sd, hf_config) -> dict`` over full (unsharded, global layer index) state dicts.
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


def supported_model_types() -> list[str]:
    """HF ``model_type`` values with a mapping."""
    return sorted(_MAPPINGS)


def get_mapping(model_type: str) -> ModuleType:
    """The mapping module for an HF ``model_type``; ValueError listing the supported ones otherwise."""
    if model_type not in _MAPPINGS:
        raise ValueError(f"no HF<->Megatron mapping for model_type={model_type!r}; supported: {supported_model_types()}")
    return importlib.import_module(f"{__name__}.{_MAPPINGS[model_type]}")
