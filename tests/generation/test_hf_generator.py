import pytest
import torch

from nemo_igrpo.backends.generation.hf_generator import HFGenerator, filter_logits
from nemo_igrpo.backends.generation.interface import SamplingParams
from nemo_igrpo.backends.tiny_model import demo_model_config
from reference import reference_logprobs

VOCAB = 48
EOS = 3


def _model(seed=0, tied=False):
    from transformers import LlamaForCausalLM

    cfg = demo_model_config(VOCAB, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=96,
                            tie_word_embeddings=tied, eos_token_id=EOS, pad_token_id=0)
    # A wide init gives peaked, varied distributions, so sampled tokens and log-probs are informative.
    cfg.initializer_range = 0.3
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]


@pytest.mark.parametrize("batch_size", [3, 2])
def test_sampled_logprobs_match_full_forward_with_left_padding(batch_size):
    model = _model()
    gen = HFGenerator(model, batch_size=batch_size, eos_token_ids=[])  # no stop: full-length rows
    sp = SamplingParams(temperature=0.7, top_p=0.9, top_k=20, max_new_tokens=12, seed=5)
    out = gen.generate(PROMPTS, sp)
    assert out.finish_reasons == ["length"] * 3
    for prompt, toks, lps in zip(PROMPTS, out.token_ids, out.logprobs):
        assert len(toks) == len(lps) == 12
        ref = reference_logprobs(model, prompt, toks, 0.7)
        assert torch.allclose(torch.tensor(lps), torch.tensor(ref), atol=1e-5), (lps, ref)


def test_greedy_equals_hand_argmax_and_uses_temperature_one():
    model = _model(1)
    out = HFGenerator(model, eos_token_ids=[]).generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=8))
    for prompt, toks, lps in zip(PROMPTS, out.token_ids, out.logprobs):
        seq = list(prompt)
        for _ in range(8):
            with torch.no_grad():
                seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
        assert toks == seq[len(prompt):]
        # fp32 rounding of a left-padded, KV-cached batch against one unpadded forward: up to 2.2e-5 measured with
        # transformers 5.19 (sdpa). A wrong position or temperature moves log-probs by far more than 1e-4.
        assert torch.allclose(torch.tensor(lps), torch.tensor(reference_logprobs(model, prompt, toks, 1.0)), atol=1e-4)


def test_seed_reproducible_and_independent_of_global_rng():
    gen = HFGenerator(_model(2), eos_token_ids=[])
    sp = SamplingParams(temperature=1.0, max_new_tokens=10, seed=11)
    torch.manual_seed(0)
    a = gen.generate(PROMPTS * 2, sp)
    torch.manual_seed(123)
    torch.rand(7)
    b = gen.generate(PROMPTS * 2, sp)
    assert a == b
    c = gen.generate(PROMPTS * 2, SamplingParams(temperature=1.0, max_new_tokens=10, seed=12))
    assert c.token_ids != a.token_ids


def test_stop_tokens_end_rows_without_leaking():
    model = _model(3)
    gen = HFGenerator(model, eos_token_ids=[])
    free = gen.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=10))
    # Make the 3rd greedy token of the first row a stop token: that row must end there, the others are unaffected.
    stop = free.token_ids[0][2]
    out = gen.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=10, stop_token_ids=[stop]))
    first = free.token_ids[0].index(stop)
    assert out.token_ids[0] == free.token_ids[0][: first + 1]
    assert out.finish_reasons[0] == "stop"
    assert len(out.logprobs[0]) == len(out.token_ids[0])
    for i in (1, 2):
        toks = free.token_ids[i]
        cut = toks[: toks.index(stop) + 1] if stop in toks else toks
        assert out.token_ids[i] == cut
    # The model's EOS is a stop token by default.
    assert HFGenerator(model).eos_token_ids == {EOS}


def test_filter_logits_top_k_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.1)).tolist() == [[False, True, True, True]]
    assert not torch.isinf(filter_logits(logits)).any()


@pytest.mark.parametrize("tied", [False, True])
def test_update_weights_then_matches_fresh_model(tmp_path, tied):
    from transformers import AutoModelForCausalLM

    src = _model(4, tied)
    src.save_pretrained(tmp_path)
    target = _model(5, tied)
    gen = HFGenerator(target, eos_token_ids=[])
    sp = SamplingParams(temperature=0.8, max_new_tokens=8, seed=3)
    before = gen.generate(PROMPTS, sp)
    gen.update_weights((n, t.clone()) for n, t in src.state_dict().items())
    after = gen.generate(PROMPTS, sp)
    assert after.token_ids != before.token_ids
    fresh = HFGenerator(AutoModelForCausalLM.from_pretrained(tmp_path), eos_token_ids=[]).generate(PROMPTS, sp)
    assert after == fresh
    if tied:
        emb = torch.randn(VOCAB, 64)
        gen.update_weights([("lm_head.weight", emb)])
        assert torch.equal(target.model.embed_tokens.weight, emb)


def test_update_weights_errors_name_the_tensor():
    gen = HFGenerator(_model())
    with pytest.raises(KeyError, match="model.nope.weight"):
        gen.update_weights([("model.nope.weight", torch.zeros(1))])
    with pytest.raises(ValueError, match="shape mismatch.*model.embed_tokens.weight"):
        gen.update_weights([("model.embed_tokens.weight", torch.zeros(3, 3))])


def test_loads_model_dir_and_edge_cases(tmp_path):
    _model(6).save_pretrained(tmp_path)
    gen = HFGenerator(str(tmp_path), batch_size=2)
    out = gen.generate(PROMPTS, SamplingParams(max_new_tokens=0))
    assert out.token_ids == [[], [], []] and out.finish_reasons == ["length"] * 3
    assert gen.generate([], SamplingParams()).token_ids == []
    with pytest.raises(ValueError, match="empty prompt"):
        gen.generate([[]], SamplingParams())
