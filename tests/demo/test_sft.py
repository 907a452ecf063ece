import json

import pytest
import torch

from nemo_igrpo.backends.tiny_model import demo_model_config
from nemo_igrpo.data.config import DataConfig, SyntheticTaskConfig
from nemo_igrpo.data.jsonl import read_jsonl
from nemo_igrpo.demo.sft import _collate, run_sft

TINY_DATA = DataConfig(synthetic=SyntheticTaskConfig(num_train=64, num_validation=8, num_test=8))


def test_demo_model_config_shapes():
    cfg = demo_model_config(112)
    assert cfg.head_dim == 32 and cfg.num_key_value_heads == 2 and cfg.vocab_size == 112
    with pytest.raises(ValueError):
        demo_model_config(112, hidden_size=100, num_heads=3)


def test_collate_masks_prompt_and_padding():
    ids, labels = _collate([([1, 2], [3, 4]), ([5], [6])], pad_id=0)
    assert ids.tolist() == [[1, 2, 3, 4], [5, 6, 0, 0]]
    assert labels.tolist() == [[-100, -100, 3, 4], [-100, 6, -100, -100]]


def test_short_sft_writes_loadable_hf_dir(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nemo_igrpo.backends.generation.hf_generator import HFGenerator
    from nemo_igrpo.backends.generation.interface import SamplingParams

    out = tmp_path / "model"
    torch.manual_seed(0)
    expected_next = torch.rand(1)
    torch.manual_seed(0)
    summary = run_sft(out, steps=3, seed=1, data_config=TINY_DATA, batch_size=4, eval_limit=4,
                      model_kwargs={"num_layers": 1})
    assert torch.equal(torch.rand(1), expected_next)  # the caller's global RNG stream is left alone
    assert not (tmp_path / "model.tmp").exists()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json", "sft_summary.json"):
        assert (out / name).is_file(), name
    assert summary["num_eval"] == 4 and 0.0 <= summary["test_accuracy"] <= 1.0
    assert json.loads((out / "sft_summary.json").read_text())["steps"] == 3
    assert len(read_jsonl(summary["data_files"]["train"])) == 64
    assert len(read_jsonl(out / "data" / "test.jsonl")) == 8

    tok = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.config.eos_token_id == tok.eos_token_id
    gen = HFGenerator(model)
    assert gen.eos_token_ids == {tok.eos_token_id}
    res = gen.generate([[4, 5, 6]], SamplingParams(temperature=0, max_new_tokens=4))
    assert len(res.token_ids[0]) >= 1

    with pytest.raises(FileExistsError):
        run_sft(out, steps=1, data_config=TINY_DATA)
    again = run_sft(out, steps=1, seed=1, data_config=TINY_DATA, batch_size=4, eval_limit=0, overwrite=True,
                    data_dir=tmp_path / "data", model_kwargs={"num_layers": 1})
    assert again["test_accuracy"] is None and (tmp_path / "data" / "validation.jsonl").is_file()
    assert not (out / "data").exists() and (out / "model.safetensors").is_file()


def test_sft_is_seeded(tmp_path):
    from safetensors.torch import load_file

    kw = dict(steps=2, data_config=TINY_DATA, batch_size=4, eval_limit=0, model_kwargs={"num_layers": 1})
    run_sft(tmp_path / "a", seed=3, **kw)
    run_sft(tmp_path / "b", seed=3, **kw)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_registers_sft(tmp_path):
    from nemo_igrpo.cli import build_parser

    args = build_parser(only="sft").parse_args(["sft", "--output", str(tmp_path / "m"), "--steps", "5"])
    assert args.steps == 5 and callable(args.func)
