"""The HF generator on Nemotron-H (CPU): a left-padded, cached batch through Mamba, attention and MLP layers samples
with the log-probs of one unpadded full forward (with the trainer's step-size rule: no dt clamp), and refit by the
policy's on-disk HF names reaches every Mamba tensor."""

import torch
import transformers

from nemo_igrpo.backends.generation.hf_generator import HFGenerator
from nemo_igrpo.backends.generation.interface import SamplingParams
from reference import reference_logprobs

PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [12, 13], [14, 15, 16, 17, 18]]


def _model(seed=0):
    # A wide init and HF's own dt_bias init (step sizes from 1e-3 up): some fall below time_step_min, where HF's
    # prefill clamps them and its decode does not; the generator follows the trainer (no clamp) in both.
    cfg = transformers.NemotronHConfig(
        vocab_size=48, hidden_size=64, hybrid_override_pattern="M*M-", num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, intermediate_size=96, ssm_state_size=8, mamba_num_heads=8, mamba_head_dim=8, n_groups=2,
        conv_kernel=4, chunk_size=4, max_position_embeddings=64, eos_token_id=3, pad_token_id=0,
        initializer_range=0.3)
    torch.manual_seed(seed)
    return transformers.NemotronHForCausalLM(cfg).eval()


def test_left_padded_cached_batch_matches_full_forward():
    model = _model()
    gen = HFGenerator(model, batch_size=3, eos_token_ids=[])
    assert all(m.time_step_limit == (0.0, float("inf")) for m in model.modules() if hasattr(m, "time_step_limit"))
    out = gen.generate(PROMPTS, SamplingParams(temperature=0.7, max_new_tokens=10, seed=3))
    alone = [HFGenerator(model, batch_size=1, eos_token_ids=[]).generate(
        [p], SamplingParams(temperature=0, max_new_tokens=10)).token_ids[0] for p in PROMPTS]
    greedy = gen.generate(PROMPTS, SamplingParams(temperature=0, max_new_tokens=10))
    assert greedy.token_ids == alone  # padding and the cached Mamba/conv states change nothing
    for prompt, toks, lps in zip(PROMPTS, out.token_ids, out.logprobs):
        assert len(toks) == 10
        torch.testing.assert_close(torch.tensor(lps), torch.tensor(reference_logprobs(model, prompt, toks, 0.7)),
                                   atol=1e-4, rtol=0)


def test_refit_by_hf_name_reaches_mamba_tensors():
    model, other = _model(0), _model(1)
    gen = HFGenerator(model, eos_token_ids=[])
    # The policy exports on-disk names ("backbone."), which transformers 5 renames to "model." in memory.
    on_disk = {"backbone." + n[len("model."):] if n.startswith("model.") else n: t
               for n, t in other.state_dict().items()}
    assert any(n.startswith("backbone.") for n in on_disk)
    gen.update_weights(on_disk.items())
    for name, t in other.state_dict().items():
        assert torch.equal(model.state_dict()[name], t), name
    sp = SamplingParams(temperature=0, max_new_tokens=6)
    assert gen.generate(PROMPTS, sp).token_ids == HFGenerator(other, eos_token_ids=[]).generate(PROMPTS, sp).token_ids
