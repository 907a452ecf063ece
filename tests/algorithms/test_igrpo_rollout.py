"""iGRPO rollout logic: draft selection, refinement prompt construction, budget and token accounting."""

import pytest

from nemo_igrpo.algorithms.config import AlgorithmConfig, RefinementConfig
from nemo_igrpo.algorithms.igrpo import (EMPTY_DRAFT_TEXT, TRUNCATION_MARKER, RolloutBudget, StageTokenCounter,
                                         build_refinement_messages, draft_text, fill_template, select_best_drafts)


def chars(ids):
    """A toy tokenizer: one token per character (its code point)."""
    return "".join(chr(i) for i in ids)


def encode(text):
    return [ord(c) for c in text]


def utf8_bytes(ids):
    """A byte-level tokenizer, like GPT-2/Qwen: a cut inside a multi-byte character decodes to U+FFFD."""
    return bytes(ids).decode("utf-8", errors="replace")


# ---------------------------------------------------------------- select_best_drafts --------------------------------


def test_select_highest_reward():
    assert select_best_drafts([[0.0, 1.0, 0.5], [2.0, 1.0, 0.0]], [[5, 5, 5], [5, 5, 5]], "first") == [1, 0]


def test_ties_shortest_then_lowest_index():
    rewards = [[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    lengths = [[30, 1, 10, 20], [7, 3, 3, 1], [4, 2, 9, 2]]
    # prompt 0: best reward at 0, 2, 3 -> shortest is 2; prompt 1: 1 and 2 share 3 tokens -> lower index 1;
    # prompt 2: all tied (all wrong) -> 1 and 3 share 2 tokens -> 1.
    assert select_best_drafts(rewards, lengths, "shortest") == [2, 1, 1]
    assert select_best_drafts(rewards, lengths, "first") == [0, 0, 0]


def test_single_draft_and_negative_rewards():
    assert select_best_drafts([[-3.0], [-1.0, -0.5]], [[9], [1, 99]], "shortest") == [0, 1]


@pytest.mark.parametrize("rewards, lengths, tie, match", [
    ([[1.0]], [[1]], "longest", "tie_break"),
    ([[1.0], [0.0]], [[1]], "first", "prompts"),
    ([[1.0, 0.0]], [[1]], "first", "drafts"),
    ([[]], [[]], "first", "drafts"),
    ([[float("nan"), 1.0]], [[1, 1]], "first", "NaN"),
])
def test_select_rejects_bad_input(rewards, lengths, tie, match):
    with pytest.raises(ValueError, match=match):
        select_best_drafts(rewards, lengths, tie)


# ---------------------------------------------------------------- refinement prompt ---------------------------------


def _cfg(**kw):
    return RefinementConfig(**{"template": "P: {prompt}\nD: {draft}", **kw})


def _q(content="What is 1+1? Box it.", system="SYS"):
    """A single-shot prompt q, as data.prompts.build_messages makes it."""
    return ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user",
                                                                                       "content": content}]


def test_stage2_prompt_is_the_single_shot_prompt_plus_the_draft():
    # q' = Concat(q, d) (paper Sec. 3): the system message unchanged, the single-shot user message verbatim.
    q = _q()
    msgs = build_refinement_messages(q, encode("It is \\boxed{2}."), chars, _cfg())
    assert msgs == [{"role": "system", "content": "SYS"},
                    {"role": "user", "content": "P: What is 1+1? Box it.\nD: It is \\boxed{2}."}]
    assert q == _q()  # the caller's messages are not modified


def test_stage2_prompt_keeps_the_absence_of_a_system_prompt():
    msgs = build_refinement_messages(_q(system=None), encode("x"), chars, _cfg())
    assert [m["role"] for m in msgs] == ["user"]


def test_single_shot_prompt_must_end_with_a_user_turn():
    with pytest.raises(ValueError, match="user message"):
        build_refinement_messages([{"role": "system", "content": "s"}], encode("x"), chars, _cfg())


def test_latex_braces_and_placeholders_in_user_text_survive():
    prompt = r"Compute $\frac{1}{2} + \frac{a}{b}$ where {b} = {draft} and {0} {}."
    draft = r"We get \boxed{\frac{1}{2}}; note {prompt} is literal. }{"
    msgs = build_refinement_messages(_q(prompt, system=None), encode(draft), chars, _cfg())
    assert msgs[0]["content"] == f"P: {prompt}\nD: {draft}"


def test_template_with_literal_braces():
    assert fill_template(r"\boxed{} {prompt} | {draft} {x}", "p", "d") == r"\boxed{} p | d {x}"
    with pytest.raises(ValueError, match="draft"):
        fill_template("{prompt} only", "p", "d")


def test_template_with_the_bare_problem_is_refused():
    # {problem} would drop the instruction from Stage 2: the refinements would not be asked for the answer format
    # the reward checks.
    with pytest.raises(ValueError, match=r"\{problem\}.*\{prompt\}"):
        fill_template("{problem} {draft}", "p", "d")


def test_default_template_contains_prompt_then_draft():
    from nemo_igrpo.data.prompts import build_messages

    q = build_messages("PROBLEM", None, "Put the final answer within \\boxed{}.")
    msgs = build_refinement_messages(q, encode("DRAFT"), chars, RefinementConfig())
    assert [m["role"] for m in msgs] == ["user"]
    user = msgs[0]["content"]
    assert user.startswith(q[0]["content"])  # problem and instruction, verbatim
    assert user.index("\\boxed{}") < user.index("DRAFT")
    assert "{prompt}" not in user and "{draft}" not in user


def test_over_long_draft_keeps_the_end():
    draft = "reasoning " * 50 + "so the answer is \\boxed{42}"
    cfg = _cfg(max_draft_tokens=30)
    text = draft_text(encode(draft), chars, cfg.max_draft_tokens)
    assert text == TRUNCATION_MARKER + draft[-30:]
    assert text.endswith("\\boxed{42}")
    prompt = "long problem " * 100  # the prompt is never cut, whatever its length
    msgs = build_refinement_messages(_q(prompt), encode(draft), chars, cfg)
    assert msgs[1]["content"] == f"P: {prompt}\nD: {TRUNCATION_MARKER}{draft[-30:]}"


def test_draft_at_the_limit_is_not_marked():
    assert draft_text(encode("abc"), chars, 3) == "abc"
    assert draft_text(encode("abcd"), chars, 3) == TRUNCATION_MARKER + "bcd"


def test_unicode_and_split_multibyte_character():
    draft = "Soit x = π/2 ⇒ réponse \\boxed{π}"
    assert draft_text(encode(draft), chars, 1000) == draft
    ids = list(draft.encode("utf-8"))
    # keep a tail that starts inside the 3-byte "⇒": its leftover bytes decode to U+FFFD and must be dropped
    start = draft.encode("utf-8").index("⇒".encode("utf-8")) + 1
    text = draft_text(ids, utf8_bytes, len(ids) - start)
    assert text == TRUNCATION_MARKER + " réponse \\boxed{π}"


@pytest.mark.parametrize("draft", [[], encode("   \n")])
def test_empty_draft(draft):
    msgs = build_refinement_messages(_q("q"), draft, chars, _cfg())
    assert msgs[1]["content"] == f"P: q\nD: {EMPTY_DRAFT_TEXT}"


def test_bad_max_draft_tokens():
    with pytest.raises(ValueError, match="max_draft_tokens"):
        draft_text([1], chars, 0)


# ---------------------------------------------------------------- budget and accounting -----------------------------


def test_budget_from_config():
    cfg = AlgorithmConfig(group_size=8)
    b = RolloutBudget.from_config(cfg)
    assert (b.group_size, b.num_drafts, b.num_refinements, b.refinement_enabled) == (8, 4, 4, True)
    cfg.refinement.enabled = False
    g = RolloutBudget.from_config(cfg)
    assert (g.num_drafts, g.num_refinements, g.refinement_enabled) == (0, 8, False)
    cfg = AlgorithmConfig(group_size=6, refinement=RefinementConfig(num_drafts=2))
    assert RolloutBudget.from_config(cfg).num_refinements == 4


@pytest.mark.parametrize("k, n", [(8, 0), (8, 8), (8, 9), (1, 1)])
def test_budget_rejects_drafts_outside_range(k, n):
    with pytest.raises(ValueError, match="num_drafts"):
        RolloutBudget.from_config(AlgorithmConfig(group_size=k, refinement=RefinementConfig(num_drafts=n)))


@pytest.mark.parametrize("k, n, g", [(8, 4, 3), (8, 0, 0), (8, -1, 9)])
def test_budget_invariant(k, n, g):
    with pytest.raises(ValueError):
        RolloutBudget(group_size=k, num_drafts=n, num_refinements=g)


def test_stage_token_counter():
    c = StageTokenCounter()
    c.add("stage1", 4, 100)
    c.add("stage2", 4, 60)
    c.add("stage1", 2, 7)
    assert c.as_metrics() == {
        "tokens/generated": 167.0, "tokens/stage1": 107.0, "tokens/stage2": 60.0,
        "sequences/generated": 10.0, "sequences/stage1": 6.0, "sequences/stage2": 4.0,
    }
    assert StageTokenCounter().as_metrics()["tokens/generated"] == 0.0  # fresh counters do not share state
    with pytest.raises(ValueError, match="stage"):
        c.add("stage3", 1, 1)
    with pytest.raises(ValueError, match=">= 0"):
        c.add("stage1", -1, 1)
