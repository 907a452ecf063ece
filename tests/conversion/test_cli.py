"""``igrpo convert`` end to end on tiny Llama/Qwen2 checkpoints: bit-identical round trips, a TP=2 load that gives
HF's logits, clear errors before writing, and no half-written output when interrupted."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(__file__))
import tiny_models  # noqa: E402

from nemo_igrpo.cli import main  # noqa: E402

HERE = Path(__file__).parent


def igrpo(*args: str) -> int:
    return main(["convert", *args])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"llama": tiny_models.llama(root / "llama"), "qwen2": tiny_models.qwen2(root / "qwen2"),
            "llama_tied": tiny_models.llama(root / "llama_tied", tie=True)}


@pytest.fixture(scope="module")
def converted(models, tmp_path_factory):
    """Each model converted HF -> Megatron once (shared by the round-trip and TP=2 tests)."""
    root = tmp_path_factory.mktemp("mg")
    out = {}
    for name, hf in models.items():
        assert igrpo("hf-to-megatron", "--hf", str(hf), "--out", str(root / name), "--tp", "2") == 0
        out[name] = root / name
    return out


@pytest.mark.parametrize("name", ["llama", "qwen2", "llama_tied"])
def test_round_trip_bit_identical(models, converted, tmp_path, name):
    hf = models[name]
    assert igrpo("megatron-to-hf", "--megatron", str(converted[name]), "--hf-config", str(hf),
                 "--out", str(tmp_path / "hf")) == 0
    a, b = load_file(str(hf / "model.safetensors")), load_file(str(tmp_path / "hf" / "model.safetensors"))
    if name == "llama_tied":
        a.pop("lm_head.weight", None)  # HF may store the tied copy; we never write it
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert (hf / "config.json").read_bytes() == (tmp_path / "hf" / "config.json").read_bytes()
    assert (tmp_path / "hf" / "tokenizer.json").read_text() == tiny_models.TOKENIZER_JSON
    assert not (tmp_path / "hf.partial").exists()
    if name == "qwen2":
        assert "model.layers.0.self_attn.q_proj.bias" in b


def test_dtype_cast(models, converted, tmp_path):
    assert igrpo("megatron-to-hf", "--megatron", str(converted["llama"]), "--hf", str(models["llama"]),
                 "--out", str(tmp_path / "hf"), "--dtype", "bf16") == 0
    b = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert {t.dtype for t in b.values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"


def test_reads_trainer_step_directory(models, converted, tmp_path):
    # A trainer checkpoint keeps the policy's dist checkpoint in step_N/policy, next to other files.
    step = tmp_path / "checkpoints" / "step_000003"
    shutil.copytree(converted["llama"], step / "policy")
    (step / "trainer_state.json").write_text("{}")
    assert igrpo("megatron-to-hf", "--megatron", str(step), "--hf-config", str(models["llama"]),
                 "--out", str(tmp_path / "hf")) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", ["qwen2"])
def test_tp2_load_gives_hf_logits(models, converted, tmp_path, name):
    """2 gloo processes load the TP=1-written checkpoint at TP=2 (resharded) into the trainer's GPTModel."""
    result = tmp_path / "result.json"
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        procs.append(subprocess.Popen([sys.executable, str(HERE / "_tp_worker.py"), str(converted[name]),
                                       str(models[name]), str(result)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=180)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outputs)
    res = json.loads(result.read_text())
    assert res["local_vocab"] == 32 and res["shape"] == [2, 12, 64]
    assert res["max_abs_diff"] < 1e-4, res


# ------------------------------------------------------------------------------------------------------- errors
def _fails(capsys, *args: str) -> str:
    assert igrpo(*args) == 2
    return capsys.readouterr().err


def test_missing_config(tmp_path, capsys):
    (tmp_path / "hf").mkdir()
    err = _fails(capsys, "hf-to-megatron", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "out"))
    assert "no config.json" in err and not (tmp_path / "out").exists()


def test_missing_safetensors(models, tmp_path, capsys):
    hf = shutil.copytree(models["llama"], tmp_path / "hf")
    (hf / "model.safetensors").unlink()
    err = _fails(capsys, "hf-to-megatron", "--hf", str(hf), "--out", str(tmp_path / "out"))
    assert "model.safetensors" in err and not (tmp_path / "out").exists()


def test_unsupported_architecture(tmp_path, capsys):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    err = _fails(capsys, "hf-to-megatron", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "out"))
    assert "gpt2" in err and "llama" in err and "nemotron_h" in err and "qwen2" in err
    assert not (tmp_path / "out").exists()


def test_tp_not_dividing_heads(models, tmp_path, capsys):
    err = _fails(capsys, "hf-to-megatron", "--hf", str(models["llama"]), "--out", str(tmp_path / "out"), "--tp", "3")
    assert "--tp 3" in err and "divisible" in err and not (tmp_path / "out").exists()


def test_wrong_shapes(models, tmp_path, capsys):
    hf = shutil.copytree(models["llama"], tmp_path / "hf")
    sd = load_file(str(hf / "model.safetensors"))
    sd["model.layers.1.mlp.up_proj.weight"] = sd["model.layers.1.mlp.up_proj.weight"][:40].clone()
    save_file(sd, str(hf / "model.safetensors"), metadata={"format": "pt"})
    err = _fails(capsys, "hf-to-megatron", "--hf", str(hf), "--out", str(tmp_path / "out"))
    assert "model.layers.1.mlp.up_proj.weight" in err and "(40, 32)" in err
    assert not (tmp_path / "out").exists()


def test_megatron_side_errors(models, converted, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = _fails(capsys, "megatron-to-hf", "--megatron", str(tmp_path / "empty"), "--hf-config",
                 str(models["llama"]), "--out", str(tmp_path / "out"))
    assert "not a megatron dist checkpoint" in err
    # A Qwen2 checkpoint against the Llama config: the q/k/v biases have no Llama name.
    err = _fails(capsys, "megatron-to-hf", "--megatron", str(converted["qwen2"]), "--hf-config",
                 str(models["llama"]), "--out", str(tmp_path / "out"))
    assert "bias" in err and not (tmp_path / "out").exists()


def test_non_empty_out_needs_overwrite(models, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    err = _fails(capsys, "hf-to-megatron", "--hf", str(models["llama"]), "--out", str(tmp_path / "out"))
    assert "--overwrite" in err and (tmp_path / "out" / "keep").exists()


# ------------------------------------------------------------------------------------------------- interruption
def test_interrupted_hf_to_megatron_leaves_no_out(models, tmp_path, monkeypatch):
    from megatron.core import dist_checkpointing

    def broken_save(sharded, path, *a, **k):
        Path(path, "__0_0.distcp").write_bytes(b"half")  # something was written, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(dist_checkpointing, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        igrpo("hf-to-megatron", "--hf", str(models["llama"]), "--out", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_interrupted_megatron_to_hf_leaves_no_out(models, converted, tmp_path, monkeypatch):
    from nemo_igrpo.backends.conversion import hf_io

    def broken_save_file(tensors, path, metadata=None):
        Path(path).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(hf_io, "save_file", broken_save_file)
    with pytest.raises(OSError, match="disk full"):
        igrpo("megatron-to-hf", "--megatron", str(converted["llama"]), "--hf-config", str(models["llama"]),
              "--out", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
