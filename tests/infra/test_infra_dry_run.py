"""`igrpo train --dry-run` as a cluster user runs it on a login node: it plans for the recipe's layout without
WORLD_SIZE, opens the model directory, the data files and the output directory the job will need, and reports every
problem at once, each naming the config key or file. No megatron, no GPU."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_igrpo.cli import main as igrpo

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"

# OpenReasoning-Nemotron-7B's config.json (a Qwen2.5-7B shape), as transformers-4 tools write it: top-level rope_theta.
QWEN2_7B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944,
    "num_attention_heads": 28, "num_key_value_heads": 4, "num_hidden_layers": 28, "vocab_size": 152064,
    "max_position_embeddings": 131072, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "hidden_act": "silu",
    "tie_word_embeddings": False, "use_sliding_window": False, "torch_dtype": "bfloat16",
}


def write_safetensors(path: Path, nbytes: int = 8, truncate: int = 0) -> None:
    """A valid safetensors file with one tensor (header + data), optionally cut short by ``truncate`` bytes."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [nbytes // 4], "data_offsets": [0, nbytes]}}).encode()
    blob = struct.pack("<Q", len(header)) + header + bytes(nbytes)
    path.write_bytes(blob[: len(blob) - truncate])


def make_model(root: Path, config: dict | None = None, chat_template: bool = True) -> Path:
    d = root / "OpenReasoning-Nemotron-7B"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(config or QWEN2_7B))
    shards = {"model-00001-of-00002.safetensors": ["a"], "model-00002-of-00002.safetensors": ["b"]}
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {t: f for f, ts in shards.items() for t in ts}}))
    for f in shards:
        write_safetensors(d / f)
    (d / "tokenizer.json").write_text("{}")
    tok_cfg = {"chat_template": "{{ messages }}"} if chat_template else {}
    (d / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    return d


def write_prompts(path: Path, n: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": f"p{i}", "problem": f"{i} + 1 = ?", "answer": str(i + 1)}) + "\n"
                            for i in range(n)))
    return path


@pytest.fixture
def cluster_dirs(tmp_path, monkeypatch):
    """MODEL_DIR / DATA_DIR / RESULTS_DIR as docs/cluster.md sets them, with the model and data the recipe names."""
    models, data, results = tmp_path / "models", tmp_path / "data", tmp_path / "results"
    make_model(models)
    write_prompts(data / "acereason_math_train.jsonl", 300)
    write_prompts(data / "math500.jsonl", 20)
    results.mkdir()
    for var, path in (("MODEL_DIR", models), ("DATA_DIR", data), ("RESULTS_DIR", results)):
        monkeypatch.setenv(var, str(path))
    for var in ("WORLD_SIZE", "RANK", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def test_readme_dry_run_command_plans_for_the_recipe_layout(cluster_dirs):
    """The README's command, as written, in a fresh process with no WORLD_SIZE (it used to fail on world size 1)."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, "-m", "nemo_igrpo.cli", "train", "--config",
                           "conf/orn7b_acereason_igrpo.yaml", "--dry-run"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "2 node(s) x 8 GPU(s) per node (the recipe's '# Layout:' comment" in out
    assert "world size        16 = TP 2 x PP 1 x DP 8" in out
    # the model, the data and the output directory were opened
    assert "qwen2, 28 layers, 28 heads / 4 kv heads, vocab 152064: splits over TP 2 x PP 1" in out
    assert "2 safetensors file(s)" in out and "chat template" in out
    assert "acereason_math_train.jsonl: 300 rows" in out and "math500.jsonl: 20 rows" in out
    assert "steps per epoch           2 = 300 training prompts // 128 per step" in out
    assert "optimizer steps           2 = 2 x 1 epoch(s)" in out
    assert "orn7b_acereason_igrpo: will be created" in out
    assert "# no problems found" in out
    # megatron was never needed
    assert "megatron" not in proc.stderr.lower()


def test_nodes_and_gpus_flags_override_the_recipe(cluster_dirs, capsys):
    assert igrpo(["train", "--config", str(CONF / "orn7b_acereason_igrpo.yaml"), "--dry-run", "--nodes", "1"]) == 0
    out = capsys.readouterr().out
    assert "1 node(s) x 8 GPU(s) per node (--nodes / --gpus-per-node)" in out
    assert "world size        8 = TP 2 x PP 1 x DP 4" in out and "prompts per step          128   per DP rank: 32" in out
    assert igrpo(["train", "--config", str(CONF / "orn7b_acereason_igrpo.yaml"), "--dry-run", "--nodes", "4",
                  "--gpus-per-node", "4"]) == 0
    assert "world size        16 = TP 2 x PP 1 x DP 8" in capsys.readouterr().out


def test_every_problem_is_reported_at_once(cluster_dirs, capsys):
    models, data = cluster_dirs / "models", cluster_dirs / "data"
    model = models / "OpenReasoning-Nemotron-7B"
    # config.json: 28 heads do not split over TP 8, 28 layers not over PP 3, an unsupported RoPE scaling
    cfg = dict(QWEN2_7B, rope_scaling={"rope_type": "yarn", "factor": 4.0})
    (model / "config.json").write_text(json.dumps(cfg))
    write_safetensors(model / "model-00002-of-00002.safetensors", truncate=3)  # an interrupted download
    (model / "tokenizer_config.json").write_text("{}")  # no chat template
    # data: a null answer on line 3 (would train on the string "None"), and a missing validation file
    lines = (data / "acereason_math_train.jsonl").read_text().splitlines()
    lines[2] = json.dumps({"problem": "x?", "answer": None})
    (data / "acereason_math_train.jsonl").write_text("\n".join(lines) + "\n")
    (data / "math500.jsonl").unlink()
    blocker = cluster_dirs / "results" / "blocked"
    blocker.write_text("a file where the output's parent directory should be")
    rc = igrpo(["train", "--config", str(CONF / "orn7b_acereason_igrpo.yaml"), "--dry-run", "--nodes", "1",
                "policy.tensor_model_parallel_size=8", "policy.pipeline_model_parallel_size=3",
                f"trainer.output_dir={blocker}/run"])
    captured = capsys.readouterr()
    assert rc == 2
    assert "problem(s)" in captured.err
    problems = captured.out.split("# problems (", 1)[1]
    expected = [
        "num_attention_heads=28 and num_key_value_heads=4 must both be divisible by tensor_model_parallel_size=8",
        "num_hidden_layers=28 must be divisible by pipeline_model_parallel_size=3",
        "rope_type='yarn' is not supported",
        f"{model}/model-00002-of-00002.safetensors: truncated",
        "the tokenizer has no chat template",
        f"data.train_file: {data}/acereason_math_train.jsonl:3: 'answer' is null",
        f"data.validation_file: {data}/math500.jsonl: not found",
        f"trainer.output_dir: {blocker}/run: cannot be created",
        "world size 8 is not divisible by policy.tensor_model_parallel_size (8) x "
        "policy.pipeline_model_parallel_size (3)",
    ]
    for text in expected:
        assert text in problems, text
    # the architecture problems name config.json, the file that causes them
    assert f"- {model}/config.json: num_attention_heads=28" in problems


def test_missing_model_and_pickle_only_weights(cluster_dirs, capsys):
    model = cluster_dirs / "models" / "OpenReasoning-Nemotron-7B"
    for f in model.glob("*.safetensors*"):
        f.unlink()
    (model / "pytorch_model.bin").write_bytes(b"\x80")
    assert igrpo(["train", "--config", str(CONF / "orn7b_acereason_igrpo.yaml"), "--dry-run"]) == 2
    assert "pickle checkpoints are never loaded" in capsys.readouterr().out
    assert igrpo(["train", "--config", str(CONF / "orn7b_acereason_igrpo.yaml"), "--dry-run",
                  "policy.model_path=/nonexistent/model"]) == 2
    assert "policy.model_path: /nonexistent/model: not a directory" in capsys.readouterr().out


def test_output_directory_with_a_checkpoint(cluster_dirs, capsys):
    run = cluster_dirs / "results" / "orn7b_acereason_igrpo"
    (run / "checkpoints" / "step_000020").mkdir(parents=True)
    (run / "checkpoints" / "step_000020" / "trainer_state.json").write_text("{}")
    assert igrpo(["train", "--config", str(CONF / "orn7b_acereason_igrpo.yaml"), "--dry-run",
                  "trainer.resume=true"]) == 0
    assert "continues from checkpoint step 20 (trainer.resume=true)" in capsys.readouterr().out
    assert igrpo(["train", "--config", str(CONF / "orn7b_acereason_igrpo.yaml"), "--dry-run"]) == 2
    out = capsys.readouterr().out
    assert "already holds a run (checkpoints)" in out and "(checkpoints up to step 20)" in out
    assert igrpo(["train", "--config", str(CONF / "orn7b_acereason_igrpo.yaml"), "--dry-run",
                  "trainer.overwrite=true"]) == 0
    assert "trainer.overwrite=true deletes its checkpoints" in capsys.readouterr().out


def test_demo_recipe_plans_one_process(capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert igrpo(["train", "--config", str(CONF / "demo_igrpo.yaml"), "--dry-run", "policy.model_path=/x"]) == 2
    out = capsys.readouterr().out
    assert "world size        1 = TP 1 x PP 1 x DP 1" in out
    assert "the synthetic demo task, 4,000 training problems" in out
    assert "steps per epoch           250 = 4,000 training prompts // 16 per step" in out


def test_world_size_from_a_launcher_and_a_malformed_one(cluster_dirs, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert igrpo(["train", "--config", str(CONF / "orn7b_acereason_igrpo.yaml"), "--dry-run"]) == 0
    assert "WORLD_SIZE=8 (from the environment" in capsys.readouterr().out
    monkeypatch.setenv("WORLD_SIZE", "")
    assert igrpo(["train", "--config", str(CONF / "orn7b_acereason_igrpo.yaml"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "WORLD_SIZE=''" in err and len(err.strip().splitlines()) == 1


def test_the_builder_and_the_dry_run_share_the_rules():
    """One statement of each rule: the model builder refuses the same config.json the dry run refuses, with the
    same words, from a transformers config object instead of the JSON dict."""
    import torch
    from transformers import Qwen2Config

    from nemo_igrpo.backends.policy.architecture import architecture_problems
    from nemo_igrpo.backends.policy.model import transformer_config_from_hf

    raw = dict(QWEN2_7B, num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=96, rope_scaling={"rope_type": "yarn", "factor": 4.0})
    from_json = architecture_problems(raw, tp=4, pp=1)
    assert len(from_json) == 2  # kv heads over TP 4, and the yarn RoPE
    hf_config = Qwen2Config(**{k: v for k, v in raw.items() if k not in ("architectures", "torch_dtype")})
    with pytest.raises(ValueError) as err:
        transformer_config_from_hf(hf_config, torch.float32, tp=4)
    for problem in from_json:
        assert problem in str(err.value)


# Qwen2.5-0.5B-Instruct's config.json (the smoke recipe's model).
QWEN2_05B = dict(QWEN2_7B, hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
                 num_hidden_layers=24, vocab_size=151936, max_position_embeddings=32768, tie_word_embeddings=True)


def test_the_one_node_smoke_recipe_plans_a_short_run_that_checkpoints(tmp_path, monkeypatch, capsys):
    models, data = tmp_path / "models", tmp_path / "data"
    model = make_model(models, QWEN2_05B)
    model.rename(models / "Qwen2.5-0.5B-Instruct")
    write_prompts(data / "math_train.jsonl", 7500)
    write_prompts(data / "math500.jsonl", 500)
    for var, path in (("MODEL_DIR", models), ("DATA_DIR", data), ("RESULTS_DIR", tmp_path / "results")):
        monkeypatch.setenv(var, str(path))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert igrpo(["train", "--config", str(CONF / "smoke_qwen05b_math_igrpo.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 node(s) x 8 GPU(s) per node" in out and "world size        8 = TP 1 x PP 1 x DP 8" in out
    assert "optimizer steps           6 (trainer.max_steps)" in out
    assert "checkpoints               every 2 steps (trainer.save_every): 3 in the run" in out
    assert "# no problems found" in out
