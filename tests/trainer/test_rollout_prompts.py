"""What the model is asked in each stage: Stage 2 sends the exact single-shot prompt followed by the draft
(q' = Concat(q, d), arXiv 2602.09000 Sec. 3), so GRPO's trained prompts and iGRPO's differ only by the draft."""

from __future__ import annotations

import pytest
import torch

from nemo_igrpo.algorithms.config import AlgorithmConfig, RefinementConfig
from nemo_igrpo.backends.generation.hf_generator import HFGenerator
from nemo_igrpo.backends.generation.interface import SamplingParams
from nemo_igrpo.backends.tiny_model import demo_model_config
from nemo_igrpo.data.prompts import PromptRecord
from nemo_igrpo.data.tokenizer import build_demo_tokenizer
from nemo_igrpo.rewards.config import RewardConfig
from nemo_igrpo.rewards.reward_fn import RewardFunction
from nemo_igrpo.trainer.rollout import RolloutWorker

SYSTEM = "Think step by step."
INSTRUCTION = "Put the final answer within \\boxed{}."
RECORDS = [PromptRecord(id="a", problem="Compute 3 + 4.", answer="7"),
           PromptRecord(id="b", problem="Compute 2 * 5.", answer="10")]


@pytest.fixture(scope="module")
def tokenizer():
    return build_demo_tokenizer()


def _worker(tokenizer, refinement: bool, reward_fn) -> RolloutWorker:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(demo_model_config(len(tokenizer), hidden_size=32, num_layers=1, num_heads=1,
                                               num_kv_heads=1, intermediate_size=64,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id))
    algorithm = AlgorithmConfig(group_size=4, refinement=RefinementConfig(
        enabled=refinement, num_drafts=2, template="{prompt}\nPrevious attempt: {draft}\nCheck it.",
        max_draft_tokens=16))
    sampling = SamplingParams(temperature=1.0, max_new_tokens=12)
    return RolloutWorker(HFGenerator(model), reward_fn, tokenizer, algorithm, sampling, SYSTEM, INSTRUCTION,
                         run_seed=0)


def test_stage2_prompt_is_the_trained_single_shot_prompt_plus_the_draft(tokenizer):
    with RewardFunction(RewardConfig(weights={"format": 1.0})) as reward_fn:
        grpo = _worker(tokenizer, False, reward_fn).run(RECORDS, step=1, shard=0)
        igrpo = _worker(tokenizer, True, reward_fn).run(RECORDS, step=1, shard=0)
    end_of_user_turn = "<|end|>\n<|assistant|>\n"
    for i, record in enumerate(RECORDS):
        q = tokenizer.decode(grpo.prompt_ids[i * grpo.group_size])  # GRPO trains on the single-shot prompt
        assert q.startswith(f"<|system|>\n{SYSTEM}<|end|>\n<|user|>\n{record.problem} {INSTRUCTION}")
        assert q.endswith(end_of_user_turn)
        q_prime = tokenizer.decode(igrpo.prompt_ids[i * igrpo.group_size])
        # Everything of q up to the end of its user message, then the draft block, then the same turn ending.
        head = q[: -len(end_of_user_turn)]
        assert q_prime.startswith(head + "\nPrevious attempt: ")
        assert q_prime.endswith("\nCheck it." + end_of_user_turn)
        draft = q_prime[len(head + "\nPrevious attempt: "): -len("\nCheck it." + end_of_user_turn)]
        assert draft.strip()  # the selected draft (or its stand-in) sits between the two
