"""The word-problem task of the SmolLM2 recipes: the story says what the answer assumes, the splits are fixed by the
seed and disjoint, and the JSONL files the recipes read are what the generator writes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from nemo_igrpo.data.word_problems import WordProblemConfig, generate_splits, main

REPO = Path(__file__).resolve().parents[2]

# The test's own reading of the English, written from the story sentences (not from the generator's tables).
_RULES = [
    (re.compile(r"^(?:\w+ )?(?:buys|finds|gets) (\d+) more\.$"), lambda v, n: v + n),
    (re.compile(r"^A friend gives (?:him|her) (\d+) more\.$"), lambda v, n: v + n),
    (re.compile(r"^(?:He|She) (?:gives away|loses|sells) (\d+)\.$"), lambda v, n: v - n),
    (re.compile(r"^(?:He|She) gives (\d+) to a friend\.$"), lambda v, n: v - n),
    (re.compile(r"^Then the number of \w+ (?:he|she) has doubles\.$"), lambda v, n: v * 2),
    (re.compile(r"^Then the number of \w+ (?:he|she) has triples\.$"), lambda v, n: v * 3),
    (re.compile(r"^Then (?:he|she) ends up with (\d+) times as many \w+ as before\.$"), lambda v, n: v * n),
]


def solve_story(problem: str) -> list[int]:
    """The running values of the story, read sentence by sentence."""
    sentences = re.findall(r"[^.?]+[.?]", problem)
    first = re.match(r"^(\w+) has (\d+) (\w+)\.$", sentences[0].strip())
    assert first, sentences[0]
    name, value, items = first.group(1), int(first.group(2)), first.group(3)
    assert sentences[-1].strip() == f"How many {items} does {name} have now?"
    values = [value]
    for sentence in sentences[1:-1]:
        sentence = sentence.strip()
        for pattern, apply in _RULES:
            m = pattern.match(sentence)
            if m:
                values.append(apply(values[-1], int(m.group(1)) if m.groups() else 0))
                break
        else:
            raise AssertionError(f"unreadable sentence: {sentence!r}")
    return values


@pytest.mark.parametrize("cfg", [WordProblemConfig(), WordProblemConfig(seed=3, min_ops=2, max_ops=3,
                                                                         operators="+-*", num_train=300)],
                         ids=["default", "with-multiplication"])
def test_the_story_computes_the_answer(cfg):
    splits = generate_splits(cfg)
    for records in splits.values():
        for rec in records:
            values = solve_story(rec["problem"])
            assert str(values[-1]) == rec["answer"], rec
            assert cfg.min_ops <= len(values) - 1 <= cfg.max_ops
            assert all(0 <= v <= cfg.max_value for v in values)
            assert rec["solution"].endswith(f"\\boxed{{{rec['answer']}}}.")


def test_splits_are_fixed_by_the_seed_and_disjoint():
    a, b = generate_splits(), generate_splits()
    assert a == b
    assert [len(a[s]) for s in ("train", "validation", "test")] == [1000, 100, 200]
    texts = [r["problem"] for records in a.values() for r in records]
    assert len(texts) == len(set(texts))
    # A larger train split leaves the evaluation sets unchanged.
    bigger = generate_splits(WordProblemConfig(num_train=1500))
    assert bigger["test"] == a["test"] and bigger["validation"] == a["validation"]
    assert generate_splits(WordProblemConfig(seed=1))["test"] != a["test"]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="operators"):
        generate_splits(WordProblemConfig(operators="+/"))
    with pytest.raises(ValueError, match="min_ops"):
        generate_splits(WordProblemConfig(min_ops=3, max_ops=2))
    with pytest.raises(ValueError, match="too few"):
        generate_splits(WordProblemConfig(max_operand=2, max_value=3, max_ops=1, num_train=1200))
    with pytest.raises(ValueError, match="max_operand=1"):
        generate_splits(WordProblemConfig(max_operand=1))


def test_cli_writes_the_splits(tmp_path, capsys):
    assert main(["--output", str(tmp_path)]) == 0
    lines = (tmp_path / "test.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == generate_splits()["test"]


def test_the_recipes_data_files_are_the_generators_output():
    """conf/data/word_arith is what `python -m nemo_igrpo.data.word_problems --output conf/data/word_arith` writes:
    a change to the generator must regenerate the files the SmolLM2 recipes train and evaluate on."""
    from nemo_igrpo.config import load_config

    splits = generate_splits()
    cfg = load_config(REPO / "conf" / "smollm2_word_arith_igrpo.yaml")
    for split, path in (("train", cfg.data.train_file), ("validation", cfg.data.validation_file),
                        ("test", cfg.data.test_file)):
        rows = [json.loads(x) for x in (REPO / path).read_text().splitlines()]
        assert rows == splits[split], path
