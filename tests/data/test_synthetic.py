import ast
import operator
import re

import pytest

from nemo_igrpo.data.config import SyntheticTaskConfig
from nemo_igrpo.data.synthetic import extract_boxed, generate_splits, is_correct, write_splits
from nemo_igrpo.data.jsonl import read_jsonl

SMALL = SyntheticTaskConfig(seed=7, num_train=300, num_validation=50, num_test=50)
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _evaluate(expr: str) -> int:
    """Independent evaluator: Python's own parser and precedence, restricted to + - * on ints."""

    def ev(node):
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        raise AssertionError(f"unexpected node {ast.dump(node)}")

    return ev(ast.parse(expr, mode="eval").body)


def test_deterministic_and_seed_dependent():
    assert generate_splits(SMALL) == generate_splits(SMALL)
    other = generate_splits(SyntheticTaskConfig(seed=8, num_train=300, num_validation=50, num_test=50))
    assert other["test"] != generate_splits(SMALL)["test"]


def test_split_sizes_disjoint_and_eval_sets_independent_of_train_size():
    splits = generate_splits(SMALL)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [300, 50, 50]
    texts = [{r["problem"] for r in splits[s]} for s in ("train", "validation", "test")]
    assert sum(map(len, texts)) == 400  # unique within and across splits
    bigger = generate_splits(SyntheticTaskConfig(seed=7, num_train=600, num_validation=50, num_test=50))
    assert bigger["test"] == splits["test"] and bigger["validation"] == splits["validation"]
    ids = [r["id"] for s in splits.values() for r in s]
    assert len(set(ids)) == len(ids)


def test_answers_and_solutions_are_correct():
    cfg = SMALL
    for rec in generate_splits(cfg)["train"]:
        m = re.fullmatch(r"Compute (.+)\.", rec["problem"])
        assert m, rec
        value = _evaluate(m.group(1))
        assert str(value) == rec["answer"]
        assert 0 <= value <= cfg.max_value
        think = re.fullmatch(r"<think>(.*)</think> \\boxed\{(-?\d+)\}", rec["solution"])
        assert think and int(think.group(2)) == value
        steps = think.group(1).split(" ")
        assert cfg.min_ops <= len(steps) <= cfg.max_ops
        for step in steps:
            lhs, rhs = step.rstrip(".").split("=")
            assert _evaluate(lhs) == int(rhs) and 0 <= int(rhs) <= cfg.max_value
        assert int(steps[-1].rstrip(".").split("=")[1]) == value
        assert is_correct(rec["solution"], rec["answer"])


def test_difficulty_knobs():
    cfg = SyntheticTaskConfig(seed=1, num_train=100, num_validation=0, num_test=0, min_ops=1, max_ops=1,
                              max_operand=15, operators="+")
    for rec in generate_splits(cfg)["train"]:
        assert rec["solution"].count("=") == 1 and "*" not in rec["problem"] and "-" not in rec["problem"]
    with pytest.raises(ValueError, match="operators"):
        generate_splits(SyntheticTaskConfig(operators="/"))
    with pytest.raises(ValueError, match="distinct problems"):
        generate_splits(SyntheticTaskConfig(min_ops=1, max_ops=1, max_operand=2, operators="+", num_train=500))


def test_write_splits(tmp_path):
    paths = write_splits(tmp_path, SMALL)
    assert read_jsonl(paths["test"]) == generate_splits(SMALL)["test"]


def test_extract_boxed():
    assert extract_boxed("a \\boxed{1} b \\boxed{{2}}") == "{2}"
    assert extract_boxed("\\boxed{3} then \\boxed{4") == "3"
    assert extract_boxed("nothing") is None
    assert is_correct("<think>x</think> \\boxed{ 32 }", "32")
    assert not is_correct("\\boxed{32.5}", "32")
    assert not is_correct("32", "32")
