"""HF <-> Megatron mapping (pure torch, in-process): bit-identical round trips, both layer-norm namings, the
megatron layouts themselves (QKV per query group, fc1 = [gate; up]), config checks, and safetensors-only reading."""

from __future__ import annotations

import json

import pytest
import torch

from nemo_igrpo.backends.conversion import get_mapping, supported_model_types
from nemo_igrpo.backends.conversion.llama import fuse_qkv, hf_to_megatron, megatron_to_hf
from tiny import KINDS, hf_state_dict, tiny_config, tiny_hf_model


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("te", [False, True], ids=["local", "te"])
def test_round_trip_bit_identical(kind, te):
    config, model = tiny_hf_model(kind)
    sd = hf_state_dict(model)
    mg = hf_to_megatron(sd, config, transformer_engine=te)
    back = megatron_to_hf(mg, config)
    assert sorted(back) == sorted(sd)
    for name in sd:
        assert back[name].dtype == sd[name].dtype and torch.equal(back[name], sd[name]), name
    norm_names = [k for k in mg if "layernorm" in k or "layer_norm" in k]
    assert all(("layer_norm_weight" in k) == te for k in norm_names if "final" not in k)
    assert ("output_layer.weight" in mg) == (not config.tie_word_embeddings)
    assert any(k.endswith("linear_qkv.bias") for k in mg) == (config.model_type == "qwen2")


def test_qkv_layout_groups_queries_with_their_kv():
    config = tiny_config("llama")  # 4 heads, 2 kv groups, head_dim 16
    hd = 16
    q = torch.arange(4 * hd).float()  # bias-shaped: one row per output channel
    k = 1000 + torch.arange(2 * hd).float()
    v = 2000 + torch.arange(2 * hd).float()
    fused = fuse_qkv(q, k, v, config)
    expect = torch.cat([q[: 2 * hd], k[:hd], v[:hd], q[2 * hd:], k[hd:], v[hd:]])
    assert torch.equal(fused, expect)


def test_fc1_is_gate_then_up():
    config, model = tiny_hf_model("llama")
    sd = hf_state_dict(model)
    fc1 = hf_to_megatron(sd, config)["decoder.layers.1.mlp.linear_fc1.weight"]
    assert torch.equal(fc1, torch.cat([sd["model.layers.1.mlp.gate_proj.weight"],
                                       sd["model.layers.1.mlp.up_proj.weight"]]))


def test_tied_hf_checkpoint_with_lm_head_is_accepted():
    config, model = tiny_hf_model("qwen2_tied")
    sd = {k: v for k, v in model.state_dict().items()}  # lm_head.weight included (shared with the embedding)
    assert "lm_head.weight" in sd
    assert "output_layer.weight" not in hf_to_megatron(sd, config)


def test_missing_and_unknown_tensors_are_errors():
    config, model = tiny_hf_model("llama")
    sd = hf_state_dict(model)
    with pytest.raises(KeyError, match="model.layers.0.self_attn.k_proj.weight"):
        hf_to_megatron({k: v for k, v in sd.items() if k != "model.layers.0.self_attn.k_proj.weight"}, config)
    with pytest.raises(ValueError, match="not mapped"):
        hf_to_megatron({**sd, "model.layers.0.extra.weight": torch.zeros(1)}, config)
    with pytest.raises(ValueError, match="no HF name"):
        megatron_to_hf({"decoder.layers.0.mystery.weight": torch.zeros(1)}, config)


def test_registry():
    assert {"llama", "qwen2"} <= set(supported_model_types())
    assert get_mapping("qwen2").hf_to_megatron is hf_to_megatron
    with pytest.raises(ValueError, match="supported"):
        get_mapping("gpt2")


def test_transformer_config_checks():
    from nemo_igrpo.backends.policy.model import transformer_config_from_hf

    config = tiny_config("qwen2_tied")
    tc, args = transformer_config_from_hf(config, torch.float32, tp=2, pp=2)
    assert (tc.num_query_groups, tc.kv_channels, tc.add_qkv_bias, tc.gated_linear_unit) == (2, 16, True, True)
    assert (tc.hidden_dropout, tc.attention_dropout, tc.normalization) == (0.0, 0.0, "RMSNorm")
    assert args.share_embeddings_and_output_weights and args.rotary_base == 20000.0
    with pytest.raises(ValueError, match="vocab_size=128 must be divisible by tensor_model_parallel_size=3"):
        transformer_config_from_hf(config, torch.float32, tp=3)
    with pytest.raises(ValueError, match="num_hidden_layers=2 .* pipeline_model_parallel_size=4"):
        transformer_config_from_hf(config, torch.float32, pp=4)
    config.model_type = "gpt2"
    with pytest.raises(ValueError, match=r"supported model_types: \['llama', 'qwen2'\]"):
        transformer_config_from_hf(config, torch.float32)


def test_read_hf_checkpoint_safetensors_only(tmp_path):
    from nemo_igrpo.backends.conversion.hf_io import read_hf_checkpoint, save_hf_checkpoint

    config, model = tiny_hf_model("qwen2_tied")
    sd = hf_state_dict(model)
    save_hf_checkpoint(str(tmp_path / "one"), config, sd.items())
    cfg, loaded = read_hf_checkpoint(str(tmp_path / "one"))
    assert cfg.model_type == "qwen2" and sorted(loaded) == sorted(sd)
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)

    # sharded layout: the index names which file holds which tensor
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    config.save_pretrained(str(sharded))
    from safetensors.torch import save_file

    names = sorted(sd)
    halves = {"a.safetensors": names[: len(names) // 2], "b.safetensors": names[len(names) // 2:]}
    for file, keys in halves.items():
        save_file({k: sd[k].contiguous() for k in keys}, str(sharded / file))
    (sharded / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: f for f, keys in halves.items() for k in keys}}))
    _, loaded = read_hf_checkpoint(str(sharded))
    assert sorted(loaded) == names

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    config.save_pretrained(str(pickled))
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="pickle checkpoints are not loaded"):
        read_hf_checkpoint(str(pickled))
    with pytest.raises(FileNotFoundError, match="config.json"):
        read_hf_checkpoint(str(tmp_path))
