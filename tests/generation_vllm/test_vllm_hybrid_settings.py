"""The vLLM generator's hybrid-model (Nemotron-H) settings, without an engine (runs without vLLM): prefix caching off
by default, the plain load_weights refit by default, and refit buckets that keep Mamba's A_log and D in float32."""

from __future__ import annotations

import json

import pytest
import torch

from nemo_igrpo.backends.generation.vllm_generator import (VLLMGenerator, _iter_buckets, is_hybrid_checkpoint,
                                                           resolve_refit_mode)


@pytest.fixture
def dirs(tmp_path):
    out = {}
    for name, model_type in (("hybrid", "nemotron_h"), ("llama", "llama")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"model_type": model_type}))
        out[name] = str(tmp_path / name)
    return out


def test_hybrid_defaults(dirs):
    assert is_hybrid_checkpoint(dirs["hybrid"]) and not is_hybrid_checkpoint(dirs["llama"])
    assert resolve_refit_mode("auto", dirs["hybrid"]) == "load_weights"
    assert resolve_refit_mode("auto", dirs["llama"]) == "layerwise"
    assert resolve_refit_mode("layerwise", dirs["hybrid"]) == "layerwise"
    with pytest.raises(ValueError, match="generation.vllm_refit"):
        resolve_refit_mode("reload", dirs["llama"])
    assert not VLLMGenerator.engine_kwargs(dirs["hybrid"])["enable_prefix_caching"]
    assert VLLMGenerator.engine_kwargs(dirs["llama"])["enable_prefix_caching"]
    assert VLLMGenerator.engine_kwargs(dirs["hybrid"], enable_prefix_caching=True)["enable_prefix_caching"]


def test_refit_buckets_keep_a_log_and_d_in_float32():
    named = [("backbone.layers.0.mixer.A_log", torch.randn(4)), ("backbone.layers.0.mixer.D", torch.randn(4)),
             ("backbone.layers.0.mixer.dt_bias", torch.randn(4)), ("backbone.layers.0.mixer.in_proj.weight",
                                                                   torch.randn(8, 4))]
    (bucket,) = list(_iter_buckets(iter(named), 1 << 20, torch.bfloat16, torch.device("cpu")))
    dtypes = {n: t.dtype for n, t in bucket}
    assert dtypes == {"backbone.layers.0.mixer.A_log": torch.float32, "backbone.layers.0.mixer.D": torch.float32,
                      "backbone.layers.0.mixer.dt_bias": torch.bfloat16,
                      "backbone.layers.0.mixer.in_proj.weight": torch.bfloat16}
    assert torch.equal(bucket[0][1], named[0][1])  # not rounded on the way
