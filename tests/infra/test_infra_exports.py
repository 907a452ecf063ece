"""HF directories the trainer and `igrpo convert` write are read the same way by other tools: the source config.json
survives (transformers 5's save_pretrained would drop the top-level rope_theta that transformers-4 readers need, and a
Qwen model would run with RoPE base 10000 instead of 1e6), and generation_config.json is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nemo_igrpo.backends.conversion.hf_io import save_hf_checkpoint

# A Qwen2 config.json as the Hub ships it (transformers-4 style: top-level rope_theta and torch_dtype).
SOURCE_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128,
    "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 96,
    "max_position_embeddings": 4096, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "hidden_act": "silu",
    "tie_word_embeddings": False, "use_sliding_window": False, "torch_dtype": "bfloat16", "bos_token_id": 1,
    "eos_token_id": 2, "some_field_only_this_model_has": [1, 2, 3],
}
SOURCE_GENERATION = {"bos_token_id": 1, "eos_token_id": [2, 5], "temperature": 0.6, "top_p": 0.95, "do_sample": True}


def _weights(config, dtype=torch.bfloat16):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    return [(k, v.to(dtype)) for k, v in model.state_dict().items()]


@pytest.fixture
def source(tmp_path) -> Path:
    d = tmp_path / "source"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(SOURCE_CONFIG, indent=2))
    (d / "generation_config.json").write_text(json.dumps(SOURCE_GENERATION))
    return d


def test_export_keeps_the_source_config_and_generation_config(source, tmp_path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source)  # what the trainer's read_hf_checkpoint does
    out = save_hf_checkpoint(tmp_path / "hf", config, _weights(config))
    written = json.loads((out / "config.json").read_text())
    assert written == SOURCE_CONFIG  # byte-for-byte content, top-level rope_theta included
    assert written["rope_theta"] == 1000000.0
    assert json.loads((out / "generation_config.json").read_text()) == SOURCE_GENERATION
    # transformers 5 reads it back with the right RoPE base
    assert AutoConfig.from_pretrained(out).rope_parameters["rope_theta"] == 1000000.0


def test_another_dtype_changes_only_the_dtype_field(source, tmp_path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source)
    out = save_hf_checkpoint(tmp_path / "hf", config, _weights(config, torch.float32))
    written = json.loads((out / "config.json").read_text())
    assert written == {**SOURCE_CONFIG, "torch_dtype": "float32"}


def test_a_config_built_in_code_gets_the_transformers4_keys_and_a_generation_config(tmp_path):
    from transformers import AutoConfig, Qwen2Config

    config = Qwen2Config(**{k: v for k, v in SOURCE_CONFIG.items()
                            if k not in ("architectures", "torch_dtype", "some_field_only_this_model_has")})
    out = save_hf_checkpoint(tmp_path / "hf", config, _weights(config, torch.float32))
    written = json.loads((out / "config.json").read_text())
    assert written["rope_theta"] == 1000000.0 and written["torch_dtype"] == "float32"
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2 and generation["bos_token_id"] == 1
    assert AutoConfig.from_pretrained(out).rope_parameters["rope_theta"] == 1000000.0


def test_a_source_for_another_model_is_not_copied(source, tmp_path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source, vocab_size=128)  # the source's config.json does not describe it
    out = save_hf_checkpoint(tmp_path / "hf", config, _weights(config))
    written = json.loads((out / "config.json").read_text())
    assert written["vocab_size"] == 128 and "transformers_version" in written  # saved by transformers
    assert written["rope_theta"] == 1000000.0
