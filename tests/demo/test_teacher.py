"""The warm start's teacher: direct answers, slipped attempts, and refinement examples that build on the attempt."""

import operator
import random

import pytest

from nemo_igrpo.data.config import DataConfig, SyntheticTaskConfig
from nemo_igrpo.data.synthetic import extract_boxed, generate_splits, is_correct
from nemo_igrpo.demo.teacher import DIRECT_REASONING, Step, direct_solution, parse_steps, slipped_steps, worked_solution
from nemo_igrpo.rewards.format_reward import format_reward

RECORDS = generate_splits(SyntheticTaskConfig(num_train=400, num_validation=10, num_test=10))["train"]
_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def test_worked_solution_round_trips_the_task_solutions():
    for rec in RECORDS:
        steps = parse_steps(rec["solution"])
        assert worked_solution(steps) == rec["solution"]
        assert steps[-1].result == int(rec["answer"])
    with pytest.raises(ValueError, match="not a worked solution"):
        parse_steps(direct_solution(7))


def test_direct_answer_is_well_formed_and_gradable():
    text = direct_solution(42)
    assert text == f"<think>{DIRECT_REASONING}</think> \\boxed{{42}}"
    assert format_reward(text) == 1.0 and is_correct(text, 42) and not is_correct(text, 41)


def test_slip_changes_one_step_and_propagates():
    rng = random.Random(0)
    positions = set()
    for rec in RECORDS:
        gold = parse_steps(rec["solution"])
        bad, k = slipped_steps(gold, rng)
        positions.add(k)
        assert len(bad) == len(gold) and bad[:k] == gold[:k]
        assert 1 <= abs(bad[k].result - gold[k].result) <= 3
        assert (bad[k].left, bad[k].op, bad[k].right) == (gold[k].left, gold[k].op, gold[k].right)
        for prev, s, g in zip(bad[k:], bad[k + 1:], gold[k + 1:]):
            # later steps use the wrong value and are computed right from it: the error propagates
            assert s.left == prev.result and (s.op, s.right) == (g.op, g.right)
            assert s.result == _OPS[s.op](s.left, s.right)
        assert bad[-1].result != gold[-1].result and all(s.result >= 0 for s in bad)
    assert positions == {0, 1, 2}  # a slip can be at any step of a 3-step chain


def test_single_shot_examples_answer_directly_at_the_given_rate():
    from nemo_igrpo.data.tokenizer import build_demo_tokenizer
    from nemo_igrpo.demo.sft import _encode_examples

    tok = build_demo_tokenizer()
    examples = _encode_examples(tok, RECORDS, DataConfig(), direct_fraction=0.5, seed=0)
    targets = [tok.decode(t, skip_special_tokens=True) for _, t in examples]
    direct = [t for t in targets if DIRECT_REASONING in t]
    assert 0.4 < len(direct) / len(targets) < 0.6
    for rec, t in zip(RECORDS, targets):
        assert t == (direct_solution(rec["answer"]) if DIRECT_REASONING in t else rec["solution"])
    assert all(DIRECT_REASONING not in tok.decode(t) for _, t in _encode_examples(tok, RECORDS, DataConfig()))


def test_refinement_examples_build_on_the_attempt():
    from nemo_igrpo.algorithms.config import RefinementConfig
    from nemo_igrpo.data.tokenizer import build_demo_tokenizer
    from nemo_igrpo.demo.sft import _encode_refinement_examples

    tok = build_demo_tokenizer()
    cfg = RefinementConfig(template="{prompt}\nPrevious attempt: {draft}\nFix it.")
    examples = _encode_refinement_examples(tok, RECORDS, DataConfig(), cfg, fraction=1.0, seed=0)
    assert len(examples) == len(RECORDS)
    kinds = {"right": 0, "slip": 0, "direct": 0}
    for rec, (p, t) in zip(RECORDS, examples):
        prompt, target = tok.decode(p), tok.decode(t, skip_special_tokens=True)
        # Stage 2 keeps the single-shot prompt, then the attempt; the teacher always works the answer out.
        assert f"{rec['problem']} {DataConfig().instruction}\nPrevious attempt: " in prompt and "Fix it." in prompt
        assert target == rec["solution"]
        draft = prompt.split("Previous attempt: ")[1].split("\nFix it.")[0]
        if DIRECT_REASONING in draft:
            kinds["direct"] += 1
            assert extract_boxed(draft).isdigit()
        elif draft == target:
            kinds["right"] += 1
        else:
            kinds["slip"] += 1
            got, gold = parse_steps(draft), parse_steps(target)
            k = next(i for i, (a, b) in enumerate(zip(got, gold)) if a != b)
            # The target repeats the attempt up to its slip and repairs that very step.
            assert got[:k] == gold[:k] and got[k].result != gold[k].result
            assert target.startswith(worked_solution(got)[: len("<think>") + len(" ".join(s.text() for s in got[:k]))])
    n = len(examples)
    assert 0.4 < kinds["right"] / n < 0.6 and 0.2 < kinds["slip"] / n < 0.4 and 0.1 < kinds["direct"] / n < 0.3


def test_step_text():
    assert Step(7, "+", 5, 12).text() == "7+5=12."
