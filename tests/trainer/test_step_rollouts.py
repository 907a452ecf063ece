"""Which groups a step trains on, with a scripted generator: DAPO's dynamic sampling (refill, round bound, budget
accounting, data-parallel consistency, resume), overlong filtering, the metadata rewards see, and the refinement
metrics against the mean draft. GRPO and iGRPO alike."""

from __future__ import annotations

import re
import threading
from collections import Counter

import pytest

from nemo_igrpo.algorithms.config import AlgorithmConfig, DynamicSamplingConfig, RefinementConfig
from nemo_igrpo.backends.generation.interface import GenerationInterface, GenerationOutput, SamplingParams
from nemo_igrpo.data.prompts import PromptRecord
from nemo_igrpo.data.sampler import PromptSampler
from nemo_igrpo.data.tokenizer import build_demo_tokenizer
from nemo_igrpo.rewards.reward_fn import RewardOutput
from nemo_igrpo.trainer.rollout import RolloutWorker
from nemo_igrpo.trainer.step_rollouts import collect_step_rollouts

MAX_NEW = 24
_PROBLEM = re.compile(r"Q(\d+) (\w+)")
_BOX = re.compile(r"\\boxed\{([^}]*)\}")


def records(kinds: list[str]) -> list[PromptRecord]:
    return [PromptRecord(id=str(i), problem=f"Q{i} {k}", answer=str(i)) for i, k in enumerate(kinds)]


class ScriptedGenerator(GenerationInterface):
    """Answers by the problem's kind: "easy" always right, "hard" always wrong, "mixed" right for even samples
    (drafts, GRPO) or all but the last sample (refinements), "long" cut at the limit after a right box, "longmix"
    cut (right) for even samples and complete (wrong) for odd ones. Logs every completion it returns."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.log: list[dict] = []

    def generate(self, prompt_ids, sampling: SamplingParams) -> GenerationOutput:
        counts = Counter(map(tuple, prompt_ids))
        seen: Counter = Counter()
        ids, lps, reasons = [], [], []
        for p in prompt_ids:
            j = seen[tuple(p)]
            seen[tuple(p)] += 1
            text = self.tok.decode(p)
            num, kind = _PROBLEM.search(text).groups()
            refine = "Previous attempt" in text
            right = {"easy": True, "hard": False, "long": True,
                     "mixed": j < counts[tuple(p)] - 1 if refine else j % 2 == 0,
                     "longmix": j % 2 == 0}[kind]
            cut = kind == "long" or (kind == "longmix" and j % 2 == 0)
            body = f"\\boxed{{{num if right else 'no'}}}" + "." * (j + 1)
            out = self.tok.encode(body + "x" * MAX_NEW, add_special_tokens=False)[:sampling.max_new_tokens] if cut \
                else self.tok.encode(body, add_special_tokens=False) + sampling.stop_token_ids
            ids.append(out)
            lps.append([-0.5] * len(out))
            reasons.append("length" if cut else "stop")
            self.log.append({"problem": f"Q{num} {kind}", "refine": refine, "tokens": len(out), "seed": sampling.seed})
        return GenerationOutput(token_ids=ids, logprobs=lps, finish_reasons=reasons)

    def update_weights(self, named_tensors):
        pass


class ScriptedReward:
    """accuracy: the box equals the answer; format: 1 for an even number of characters, so that the total reward of
    an all-correct group varies while its accuracy does not."""

    def __init__(self):
        self.seen = []

    def __call__(self, problems, responses, answers, meta=None):
        self.seen += list(zip(problems, meta))
        acc = [float(bool((m := _BOX.search(r))) and m.group(1) == a) for r, a in zip(responses, answers)]
        fmt = [float(len(r) % 2 == 0) for r in responses]
        return RewardOutput(total=[a + 0.5 * f for a, f in zip(acc, fmt)],
                            components={"accuracy": acc, "format": fmt}, extracted=[None] * len(responses))


def algorithm(refinement: bool, ds: bool = True, rounds: int = 3, overlong_filter: bool = False, k: int = 4,
              n: int = 2) -> AlgorithmConfig:
    return AlgorithmConfig(group_size=k, overlong_filter=overlong_filter,
                           refinement=RefinementConfig(enabled=refinement, num_drafts=n,
                                                       template="{prompt}\nPrevious attempt: {draft}\nAgain.",
                                                       max_draft_tokens=16),
                           dynamic_sampling=DynamicSamplingConfig(enabled=ds, max_extra_rounds=rounds))


def worker(alg: AlgorithmConfig, tokenizer=None):
    tok = tokenizer or build_demo_tokenizer()
    return RolloutWorker(ScriptedGenerator(tok), ScriptedReward(), tok, alg,
                         SamplingParams(temperature=1.0, max_new_tokens=MAX_NEW), None, "Box it.", run_seed=7)


def collect(w, sampler, step, per_step, alg, dp_rank=0, dp_size=1, gather=lambda x: [x]):
    return collect_step_rollouts(step, w, sampler, per_step, alg, dp_rank, dp_size, share=lambda x: x,
                                 gather=gather)


def trained_problems(w, rollouts) -> list[str]:
    g = rollouts.group_size
    return [_PROBLEM.search(w.tokenizer.decode(rollouts.prompt_ids[i])).group(0)
            for i in range(0, len(rollouts.prompt_ids), g) if rollouts.loss_rows[i]]


@pytest.fixture(scope="module")
def tokenizer():
    return build_demo_tokenizer()


# ---------------------------------------------------------------- dynamic sampling -----------------------------------


@pytest.mark.parametrize("refinement", [False, True], ids=["grpo", "igrpo"])
def test_refills_with_informative_groups_and_accounts_for_every_token(tokenizer, refinement):
    kinds = ["easy", "mixed", "hard", "easy", "hard", "mixed", "easy", "mixed", "hard", "mixed", "mixed", "easy"] * 3
    data = records(kinds)
    alg = algorithm(refinement)
    w = worker(alg, tokenizer)
    sampler = PromptSampler(data, seed=3)
    out = collect(w, sampler, step=1, per_step=4, alg=alg)

    # The reference: walk the same prompt stream round by round, as DAPO would, keeping groups with 0 < #correct < G.
    ref = PromptSampler(data, seed=3)
    kept, rounds, used = [], 0, []
    while len(kept) < 4 and rounds < 4:
        batch = ref.next_batch(4)
        used += batch
        kept += [r for r in batch if r.problem.endswith("mixed")]
        rounds += 1
    assert trained_problems(w, out) == [r.problem for r in kept[:4]]
    assert len(out.prompt_ids) == 4 * out.group_size and all(out.loss_rows)
    assert sampler.state_dict() == ref.state_dict()  # the stream advanced by exactly the prompts used
    m = out.metrics
    assert m["dynamic_sampling/rounds"] == rounds and m["dynamic_sampling/bound_reached"] == 0.0
    assert m["dynamic_sampling/generated_groups"] == len(used)
    assert m["dynamic_sampling/filtered_share"] == pytest.approx(1 - sum(r.problem.endswith("mixed")
                                                                         for r in used) / len(used))
    # Budget: every generated token is counted once; those of groups not trained on are also counted as discarded.
    trained = {r.problem for r in kept[:4]}
    assert m["tokens/generated"] == sum(e["tokens"] for e in w.generator.log)
    assert m["tokens/discarded"] == sum(e["tokens"] for e in w.generator.log if e["problem"] not in trained)
    assert m["sequences/generated"] == len(w.generator.log)
    assert m["tokens/stage1"] == sum(e["tokens"] for e in w.generator.log if e["refine"] is False and refinement)
    # Each round drew fresh seeds; the first round's are those of a run without dynamic sampling.
    assert len({e["seed"] for e in w.generator.log}) == rounds * (2 if refinement else 1)


@pytest.mark.parametrize("refinement", [False, True], ids=["grpo", "igrpo"])
def test_the_round_bound_trains_on_what_there_is(tokenizer, refinement, caplog):
    kinds = ["easy", "hard"] * 10 + ["mixed"] + ["easy", "hard"] * 10
    data = records(kinds)
    alg = algorithm(refinement, rounds=2)
    w = worker(alg, tokenizer)
    sampler = PromptSampler(data, seed=0)
    with caplog.at_level("WARNING", logger="nemo_igrpo.trainer"):
        out = collect(w, sampler, step=3, per_step=4, alg=alg)
    ref = PromptSampler(data, seed=0)
    used = [r for _ in range(3) for r in ref.next_batch(4)]
    mixed = [r.problem for r in used if r.problem.endswith("mixed")]
    assert out.metrics["dynamic_sampling/rounds"] == 3.0 and out.metrics["dynamic_sampling/bound_reached"] == 1.0
    assert trained_problems(w, out) == mixed  # never an error: the step trains on the groups it found
    assert out.metrics["dynamic_sampling/trained_groups"] == len(mixed)
    assert f"step 3: dynamic sampling found {len(mixed)} of 4 groups with a signal in 3 round(s)" in caplog.text


def test_every_mini_batch_update_gets_a_row_when_few_groups_are_found(tokenizer):
    # 3 mini-batch updates per step need 3 rows; one informative group has 2 (G = 2): one padding group joins it.
    data = records(["mixed", "easy", "easy", "easy"])
    alg = algorithm(True, rounds=0)
    alg.num_mini_batches = 3
    w = worker(alg, tokenizer)
    out = collect(w, PromptSampler(data, seed=0), step=1, per_step=4, alg=alg)
    assert len(out.prompt_ids) == 4 and out.loss_rows.count(True) == 2
    assert out.metrics["dynamic_sampling/bound_reached"] == 1.0


def test_accuracy_not_the_total_reward_decides(tokenizer):
    data = records(["easy"] * 4 + ["mixed"] * 4)
    alg = algorithm(False, rounds=0)
    w = worker(alg, tokenizer)
    plain = w.run(data[:4], step=1, shard=0)  # the "easy" groups as plain GRPO would train on them
    g = plain.group_size
    assert all(len(set(plain.rewards[i:i + g])) > 1 for i in range(0, len(plain.rewards), g))  # format bonus varies
    out = collect(w, PromptSampler(data, seed=1), step=1, per_step=8, alg=alg)
    assert sorted(trained_problems(w, out)) == sorted(r.problem for r in data if r.problem.endswith("mixed"))


def test_without_dynamic_sampling_every_group_is_trained_and_nothing_is_gathered(tokenizer):
    data = records(["easy", "mixed", "hard", "mixed"])
    alg = algorithm(True, ds=False)
    w = worker(alg, tokenizer)

    def no_gather(x):
        raise AssertionError("no collective without dynamic sampling")

    out = collect(w, PromptSampler(data, seed=0), step=1, per_step=4, alg=alg, gather=no_gather)
    assert len(trained_problems(w, out)) == 4 and not any(k.startswith("dynamic_sampling/") for k in out.metrics)


def test_resume_continues_the_prompt_stream(tokenizer):
    data = records(["easy", "mixed", "hard", "mixed", "hard", "mixed", "easy", "mixed"] * 4)
    alg = algorithm(True, rounds=2)
    whole = PromptSampler(data, seed=5)
    w = worker(alg, tokenizer)
    uninterrupted = [collect(w, whole, step, 4, alg) for step in (1, 2, 3)]

    first = PromptSampler(data, seed=5)
    collect(worker(alg, tokenizer), first, 1, 4, alg)
    state = first.state_dict()  # what the checkpoint after step 1 holds
    resumed_sampler = PromptSampler(data, seed=5)
    resumed_sampler.load_state_dict(state)
    w2 = worker(alg, tokenizer)
    resumed = [collect(w2, resumed_sampler, step, 4, alg) for step in (2, 3)]
    for a, b in zip(uninterrupted[1:], resumed):
        assert a.prompt_ids == b.prompt_ids and a.response_ids == b.response_ids and a.rewards == b.rewards
        assert a.metrics["dynamic_sampling/rounds"] == b.metrics["dynamic_sampling/rounds"]
    assert resumed_sampler.state_dict() == whole.state_dict()


class _ThreadGroup:
    """all_gather over data-parallel "ranks" that are threads."""

    def __init__(self, size: int) -> None:
        self.slots = [None] * size
        self.barrier = threading.Barrier(size, timeout=60)

    def gather_for(self, rank: int):
        def gather(obj):
            self.slots[rank] = obj
            self.barrier.wait()
            out = list(self.slots)
            self.barrier.wait()
            return out

        return gather


@pytest.mark.parametrize("kinds, want_padding", [
    (["easy", "mixed", "hard", "mixed", "mixed", "easy", "hard", "hard"] * 3, False),
    (["easy"] * 12 + ["mixed"] + ["hard"] * 11, True),  # one informative group for two ranks: one pads
], ids=["refill", "bound"])
def test_data_parallel_ranks_agree(kinds, want_padding):
    data = records(kinds)
    alg = algorithm(True, rounds=2)
    dp = 2
    group = _ThreadGroup(dp)
    results, samplers, workers, errors = [None] * dp, [], [], []
    for rank in range(dp):
        samplers.append(PromptSampler(data, seed=2))
        workers.append(worker(alg))

    def run(rank):
        try:
            results[rank] = collect(workers[rank], samplers[rank], 1, 4, alg, rank, dp, group.gather_for(rank))
        except Exception as err:  # surfaced below
            errors.append(err)
            group.barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(dp)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert samplers[0].state_dict() == samplers[1].state_dict()  # one prompt stream, the same position everywhere
    for key in ("dynamic_sampling/rounds", "dynamic_sampling/trained_groups", "dynamic_sampling/filtered_share"):
        assert results[0].metrics[key] == results[1].metrics[key]
    trained = [trained_problems(workers[r], results[r]) for r in range(dp)]
    assert not set(trained[0]) & set(trained[1])  # no group trained twice
    # The reference: the global stream, rank-major within a round, first 4 "mixed" problems.
    ref = PromptSampler(data, seed=2)
    order = []
    for _ in range(int(results[0].metrics["dynamic_sampling/rounds"])):
        batch = ref.next_batch(4)
        order += [r.problem for rank in range(dp) for r in batch[rank::dp]]
    want = [p for p in order if p.endswith("mixed")][:4]
    assert sorted(trained[0] + trained[1]) == sorted(want)
    assert [len(r.prompt_ids) // r.group_size for r in results] == ([1, 1] if want_padding else [2, 2])
    assert len(want) == (1 if want_padding else 4)
    assert any(not all(r.loss_rows) for r in results) == want_padding  # the padding group carries no loss
    # Tokens are counted where they were generated: the ranks' sums are the step's total.
    total = sum(e["tokens"] for w in workers for e in w.generator.log)
    assert sum(r.metrics["tokens/generated"] for r in results) == total


# ---------------------------------------------------------------- overlong filtering, metadata, metrics --------------


@pytest.mark.parametrize("refinement", [False, True], ids=["grpo", "igrpo"])
def test_overlong_filter_masks_truncated_rollouts(tokenizer, refinement):
    data = records(["long", "mixed", "longmix", "easy"])
    for on in (False, True):
        alg = algorithm(refinement, ds=False, overlong_filter=on)
        w = worker(alg, tokenizer)
        out = w.run(data, step=1, shard=0)
        texts = [w.tokenizer.decode(r, skip_special_tokens=True) for r in out.response_ids]
        truncated = [len(r) == MAX_NEW and "x" in t for r, t in zip(out.response_ids, texts)]
        assert any(truncated) and not all(truncated)
        assert out.loss_rows == [not (on and t) for t in truncated]
        assert ("overlong/masked_share" in out.metrics) == on
        if on:
            assert out.metrics["overlong/masked_share"] == pytest.approx(sum(truncated) / len(truncated))


def test_a_truncated_draft_is_not_selected_when_the_filter_is_on(tokenizer):
    # "longmix": draft 0 is cut after a right box (higher reward), draft 1 is complete and wrong.
    data = records(["longmix"])
    picked = {}
    for on in (False, True):
        w = worker(algorithm(True, ds=False, overlong_filter=on), tokenizer)
        out = w.run(data, step=1, shard=0)
        picked[on] = out.best_draft_texts[0]
    assert picked[False].startswith("\\boxed{0}") and picked[True] == "\\boxed{no}.."


def test_rewards_see_each_responses_metadata(tokenizer):
    alg = algorithm(True, ds=False, k=5, n=2)
    w = worker(alg, tokenizer)
    w.run(records(["mixed", "long"]), step=1, shard=0)
    stages = Counter(meta.stage for _, meta in w.reward_fn.seen)
    assert stages == {"stage1": 4, "stage2": 6}
    log = w.generator.log
    assert [m.num_tokens for _, m in w.reward_fn.seen] == [e["tokens"] for e in log]
    for (problem, meta), e in zip(w.reward_fn.seen, log):
        assert problem == e["problem"] and meta.max_tokens == MAX_NEW
        assert meta.finish_reason == ("length" if e["tokens"] == MAX_NEW and "long" in problem else "stop")


def test_refinement_accuracy_against_the_mean_and_the_best_draft(tokenizer):
    # "mixed", N = 2 drafts: right, wrong (mean 0.5, best 1); G = 3 refinements: right, right, wrong (2/3).
    # "hard": everything wrong. Per prompt-pair: draft mean 0.25, draft best 0.5, refinements 1/3.
    w = worker(algorithm(True, ds=False, k=5, n=2), tokenizer)
    m = w.run(records(["mixed", "hard"]), step=1, shard=0).metrics
    assert m["accuracy/draft_mean"] == pytest.approx(0.25) and m["accuracy/draft_best"] == pytest.approx(0.5)
    assert m["accuracy/train"] == pytest.approx(1 / 3)
    assert m["accuracy/refinement_gain"] == pytest.approx(1 / 3 - 0.5)
    assert m["accuracy/refinement_gain_vs_draft_mean"] == pytest.approx(1 / 3 - 0.25)
    assert m["reward/refinement_gain_vs_draft_mean"] == pytest.approx(m["reward/mean"] - m["reward/draft_mean"])


class LimitedReward(ScriptedReward):
    """Each scoring call reports two responses that hit a grading limit, one of them for the batch budget."""

    def __call__(self, problems, responses, answers, meta=None):
        out = super().__call__(problems, responses, answers, meta)
        out.timeouts, out.over_budget = 2, 1
        return out


@pytest.mark.parametrize("refinement", [False, True], ids=["grpo", "igrpo"])
def test_grading_limits_of_every_stage_and_round_are_logged(tokenizer, refinement):
    alg = algorithm(refinement, rounds=2)
    w = worker(alg, tokenizer)
    w.reward_fn = LimitedReward()
    out = collect(w, PromptSampler(records(["easy", "hard", "mixed", "easy"] * 4), seed=1), step=1, per_step=4, alg=alg)
    calls = out.metrics["dynamic_sampling/rounds"] * (2 if refinement else 1)  # drafts and refinements: two calls
    assert out.metrics["dynamic_sampling/rounds"] > 1
    assert out.metrics["reward/timeouts"] == 2 * calls and out.metrics["reward/over_budget"] == calls
