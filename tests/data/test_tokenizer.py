import pytest

from nemo_igrpo.algorithms.config import DEFAULT_REFINEMENT_TEMPLATE
from nemo_igrpo.data.config import DataConfig, SyntheticTaskConfig
from nemo_igrpo.data.prompts import build_messages, encode_messages
from nemo_igrpo.data.synthetic import generate_splits
from nemo_igrpo.data.tokenizer import EOS_TOKEN, build_demo_tokenizer


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("tok")
    build_demo_tokenizer(d)
    return AutoTokenizer.from_pretrained(str(d))


def test_saved_dir_and_vocab(saved, tmp_path):
    build_demo_tokenizer(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "tokenizer_config.json").is_file()
    assert len(saved) % 8 == 0 and len(saved) <= 256
    ids = {saved.pad_token_id, saved.eos_token_id, saved.bos_token_id, saved.unk_token_id}
    assert None not in ids and len(ids) == 4
    assert saved.eos_token == EOS_TOKEN


def _texts():
    splits = generate_splits(SyntheticTaskConfig(num_train=200, num_validation=20, num_test=20))
    recs = [r for s in splits.values() for r in s]
    draft = recs[0]["solution"]
    yield DEFAULT_REFINEMENT_TEMPLATE.format(prompt=recs[0]["problem"], draft=draft)
    yield DataConfig().instruction
    for r in recs:
        yield r["problem"]
        yield r["solution"]


def test_round_trip_without_unk(saved):
    for text in _texts():
        ids = saved.encode(text, add_special_tokens=False)
        assert saved.unk_token_id not in ids, text
        assert len(ids) == len(text)  # character level
        assert saved.decode(ids) == text


def test_unknown_characters_map_to_unk(saved):
    assert saved.encode("é", add_special_tokens=False) == [saved.unk_token_id]


def test_chat_template_like_qwen2(saved):
    system = "You are a careful mathematician."
    msgs = build_messages("Compute 1 + 2.", system, DataConfig().instruction)
    ids = encode_messages(saved, msgs)
    text = saved.decode(ids)
    assert text.startswith("<|system|>\n" + system + "<|end|>\n<|user|>\nCompute 1 + 2. Put")
    assert text.endswith("<|end|>\n<|assistant|>\n")
    assert saved.unk_token_id not in ids
    full = saved.decode(ids + saved.encode("\\boxed{3}" + EOS_TOKEN, add_special_tokens=False), skip_special_tokens=True)
    assert full.endswith("\\boxed{3}") and "<|" not in full
