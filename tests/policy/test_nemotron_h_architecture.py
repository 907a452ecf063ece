"""Nemotron-H's architecture rules (backends/policy/architecture.py), shared by the trainer and the login-node dry
run: the 8B checkpoint's config.json passes for the recipe's layout, every unsupported variant is reported at once
with its key, and `igrpo train --dry-run` of the Nemotron-H recipes plans without a refusal."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import transformers

from nemo_igrpo.backends.policy.architecture import architecture_problems, layer_pattern, mamba_dims
from nemo_igrpo.cli import main as igrpo

CONF = Path(__file__).resolve().parents[2] / "conf"

# The shape of Nemotron-H-8B-Base-8K's config.json: 52 layers, of which 24 Mamba-2, 4 attention, 24 MLP.
PATTERN = "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-"
NEMOTRON_H_8B = {
    "architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h", "hidden_size": 4096,
    "num_hidden_layers": len(PATTERN), "hybrid_override_pattern": PATTERN, "vocab_size": 131072,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 21504,
    "mamba_num_heads": 128, "mamba_head_dim": 64, "n_groups": 8, "ssm_state_size": 128, "conv_kernel": 4,
    "chunk_size": 128, "mlp_hidden_act": "relu2", "mamba_hidden_act": "silu", "layer_norm_epsilon": 1e-5,
    "use_bias": False, "use_conv_bias": True, "attention_bias": False, "mlp_bias": False,
    "tie_word_embeddings": False, "max_position_embeddings": 8192, "torch_dtype": "bfloat16",
}


def test_8b_config_splits_over_the_recipe_layout():
    assert (PATTERN.count("M"), PATTERN.count("*"), PATTERN.count("-")) == (24, 4, 24)
    assert architecture_problems(NEMOTRON_H_8B, tp=2, pp=1) == []
    assert architecture_problems(NEMOTRON_H_8B, tp=8, pp=4) == []
    # The transformers config object (layers_block_type, no hybrid_override_pattern) says the same.
    hf = transformers.NemotronHConfig(**{k: v for k, v in NEMOTRON_H_8B.items() if k != "architectures"})
    assert layer_pattern(hf) == PATTERN and mamba_dims(hf) == mamba_dims(NEMOTRON_H_8B)
    assert architecture_problems(hf, tp=2, pp=1) == []


def test_every_problem_is_reported_with_its_key():
    bad = {**NEMOTRON_H_8B, "hybrid_override_pattern": PATTERN[:-1] + "E", "layer_norm_epsilon": 1e-6,
           "mlp_hidden_act": "gelu", "use_conv_bias": False}
    problems = architecture_problems(bad, tp=3, pp=5)
    text = "\n".join(problems)
    for expected in ("MoE 'E' is not", "layer_norm_epsilon=1e-06", "mlp_hidden_act='gelu'", "use_conv_bias=False",
                     "mamba_num_heads=128 is not divisible by tensor_model_parallel_size=3",
                     "n_groups=8 is not divisible by tensor_model_parallel_size=3",
                     "vocab_size=131072 is not divisible by tensor_model_parallel_size=3",
                     "is not divisible by pipeline_model_parallel_size=5"):
        assert expected in text, (expected, problems)
    assert architecture_problems({**NEMOTRON_H_8B, "mamba_num_heads": None}, 1, 1) == ["mamba_num_heads is missing"]


def _write_model(d: Path) -> Path:
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(NEMOTRON_H_8B))
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    (d / "tokenizer.json").write_text("{}")
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    return d


@pytest.mark.parametrize("recipe", ["nemotronh8b_math_igrpo", "nemotronh8b_math_grpo"])
def test_recipe_dry_run_plans_without_refusal(recipe, tmp_path, monkeypatch, capsys):
    models, data, results = tmp_path / "models", tmp_path / "data", tmp_path / "results"
    _write_model(models / "Nemotron-H-8B-Base-8K")
    data.mkdir()
    for name, n in (("math_train.jsonl", 300), ("math500.jsonl", 20)):
        (data / name).write_text("".join(json.dumps({"id": f"p{i}", "problem": f"{i} + 1 = ?", "answer": str(i + 1)})
                                         + "\n" for i in range(n)))
    results.mkdir()
    for var, path in (("MODEL_DIR", models), ("DATA_DIR", data), ("RESULTS_DIR", results)):
        monkeypatch.setenv(var, str(path))
    for var in ("WORLD_SIZE", "RANK", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    assert igrpo(["train", "--config", str(CONF / f"{recipe}.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "nemotron_h, 52 layers" in out and "splits over TP 2 x PP 1" in out
    assert "# no problems found" in out


def test_dry_run_refuses_packed_micro_batches_as_the_builder_does(tmp_path, monkeypatch, capsys):
    """MegatronPolicy refuses policy.micro_batching=packed for a hybrid model (a Mamba layer's state would run from
    one sequence of a packed row into the next); the dry run, which reads the same config.json, must say so before a
    cluster allocates GPUs, with the key named."""
    models = tmp_path / "models"
    _write_model(models / "Nemotron-H-8B-Base-8K")
    for var, path in (("MODEL_DIR", models), ("DATA_DIR", tmp_path), ("RESULTS_DIR", tmp_path / "results")):
        monkeypatch.setenv(var, str(path))
    for var in ("WORLD_SIZE", "RANK", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    recipe = str(CONF / "nemotronh8b_math_igrpo.yaml")
    assert igrpo(["train", "--config", recipe, "--dry-run", "policy.micro_batching=packed"]) == 2
    problems = capsys.readouterr().out.split("# problems")[1]
    assert "- policy.micro_batching: 'packed' is not supported for hybrid Mamba models" in problems
    # The same rule, stated once, is what the builder applies; bucketed and auto are accepted.
    from nemo_igrpo.backends.policy.architecture import micro_batching_problems

    assert micro_batching_problems(NEMOTRON_H_8B, "packed") and not micro_batching_problems(NEMOTRON_H_8B, "auto")
    igrpo(["train", "--config", recipe, "--dry-run", "policy.micro_batching=bucketed"])
    assert "policy.micro_batching" not in capsys.readouterr().out.split("# problems")[-1]
