import json

import pytest

from nemo_igrpo.data.jsonl import JsonlError, read_jsonl, write_jsonl
from nemo_igrpo.data.prompts import PromptRecord, build_messages, encode_messages, load_prompts
from nemo_igrpo.data.sampler import PromptSampler


def test_jsonl_roundtrip_and_atomic(tmp_path):
    recs = [{"problem": "1+1 \\boxed{}", "answer": "2"}, {"problem": "ünï", "answer": 3}]
    path = tmp_path / "sub" / "a.jsonl"
    write_jsonl(path, recs)
    assert read_jsonl(path) == recs
    assert [p.name for p in path.parent.iterdir()] == ["a.jsonl"]  # no temp file left behind


def test_jsonl_failed_write_keeps_old_file(tmp_path):
    path = tmp_path / "a.jsonl"
    write_jsonl(path, [{"x": 1}])

    def bad():
        yield {"x": 2}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_jsonl(path, bad())
    assert read_jsonl(path) == [{"x": 1}]
    assert len(list(tmp_path.iterdir())) == 1


def test_jsonl_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2\n')
    with pytest.raises(JsonlError, match=r"bad\.jsonl:3"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(JsonlError, match=r"bad\.jsonl:2.*object"):
        read_jsonl(path)


def test_load_prompts_with_custom_keys(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"question": "Q1", "gold": 5}) + "\n" + json.dumps({"id": "x", "question": "Q2", "gold": "7"}) + "\n")
    recs = load_prompts(path, problem_key="question", answer_key="gold")
    assert recs == [PromptRecord("p-0", "Q1", "5"), PromptRecord("x", "Q2", "7")]
    with pytest.raises(JsonlError, match="problem"):
        load_prompts(path)


def test_build_and_encode_messages(tmp_path):
    from nemo_igrpo.data.tokenizer import build_demo_tokenizer

    assert build_messages("P", None, None) == [{"role": "user", "content": "P"}]
    msgs = build_messages("P", "S", "Do it.")
    assert msgs == [{"role": "system", "content": "S"}, {"role": "user", "content": "P Do it."}]
    tok = build_demo_tokenizer()
    ids = encode_messages(tok, msgs)
    assert all(isinstance(i, int) for i in ids)
    assert tok.decode(ids) == "<|system|>\nS<|end|>\n<|user|>\nP Do it.<|end|>\n<|assistant|>\n"


def _drain(sampler, n, k):
    return [sampler.next_batch(n) for _ in range(k)]


def test_sampler_deterministic_epochs_and_resume():
    items = list(range(10))
    a = PromptSampler(items, seed=3)
    batches = _drain(a, 4, 6)  # 24 items: spans epochs 0, 1, 2
    assert sorted(batches[0] + batches[1] + batches[2][:2]) == items  # epoch 0 is a permutation
    assert a.epoch == 2 and a.position == 4
    assert batches == _drain(PromptSampler(items, seed=3), 4, 6)
    assert batches != _drain(PromptSampler(items, seed=4), 4, 6)
    assert batches[0] + batches[1] + batches[2][:2] != batches[2][2:] + batches[3] + batches[4]  # reshuffled per epoch

    b = PromptSampler(items, seed=3)
    _drain(b, 3, 3)
    state = json.loads(json.dumps(b.state_dict()))
    expected = _drain(b, 4, 5)
    c = PromptSampler(items, seed=99)
    c.load_state_dict(state)
    assert _drain(c, 4, 5) == expected
    with pytest.raises(ValueError, match="10 items"):
        PromptSampler(list(range(11))).load_state_dict(state)


def test_sampler_num_epochs():
    s = PromptSampler(list(range(5)), seed=0, num_epochs=2)
    sizes = []
    while not s.exhausted:
        sizes.append(len(s.next_batch(3)))
    assert sizes == [3, 3, 3, 1]
    with pytest.raises(StopIteration):
        s.next_batch(3)
