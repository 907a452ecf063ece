"""The Megatron policy on one CUDA GPU (NCCL beside gloo, bf16): what the CPU suite cannot show. Part of the GPU check
kit (tools/gpu_check.sh); skipped without CUDA. Each test prints what it measured, which the kit collects.

Tolerances marked "first guess" have not been measured yet: replace them with the measured value times a safety
factor once the kit has run on a GPU (docs/benchmarks.md records the run).
"""

from __future__ import annotations

import math

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

pytestmark = pytest.mark.gpu

TEMPERATURE = 0.7
BF16_LOGPROB_ATOL = 0.1  # first guess: a bf16 logit step (~2^-8 relative) / T over peaked distributions


def _config():
    import transformers

    return transformers.LlamaConfig(vocab_size=2048, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                    num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
                                    rms_norm_eps=1e-5, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import transformers

    path = tmp_path_factory.mktemp("gpu_model")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(_config()).float()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # peaked next-token distributions
    model.save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def layout():
    from nemo_igrpo.backends.policy.parallel import destroy_parallel, initialize_parallel

    lay = initialize_parallel(1, 1, seed=0)
    yield lay
    destroy_parallel()


def _policy(model_dir, layout, precision="bf16", **cfg):
    from nemo_igrpo.backends.conversion.hf_io import read_hf_checkpoint
    from nemo_igrpo.backends.policy.config import OptimizerConfig, PolicyConfig
    from nemo_igrpo.backends.policy.megatron_policy import MegatronPolicy

    hf_config, sd = read_hf_checkpoint(model_dir)
    pc = PolicyConfig(model_path=model_dir, precision=precision, **{"micro_batch_size": 4, **cfg},
                      optimizer=OptimizerConfig(lr=1e-4, use_distributed_optimizer=False))
    return MegatronPolicy(pc, layout, hf_config, TEMPERATURE, total_steps=10, hf_state_dict=sd)


def _batch(seqs=8, width=96, vocab=2048, seed=0):
    from nemo_igrpo.batch import TrainBatch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (seqs, width), generator=g)
    lengths = torch.randint(width // 4, width + 1, (seqs,), generator=g)
    lengths[0] = width
    mask = torch.zeros(seqs, width)
    for i, n in enumerate(lengths.tolist()):
        mask[i, 8:n] = 1.0
    return TrainBatch(input_ids=ids, loss_mask=mask, advantages=torch.randn(seqs, generator=g),
                      old_logprobs=torch.zeros(seqs, width)), lengths


@torch.no_grad()
def _hf_logprobs(model_dir, ids, dtype):
    import transformers

    model = transformers.LlamaForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="eager").cuda()
    logits = model(input_ids=ids.cuda()).logits.float()
    lp = torch.log_softmax(logits[:, :-1] / TEMPERATURE, dim=-1).gather(-1, ids.cuda()[:, 1:, None])[..., 0]
    return torch.cat([torch.zeros(ids.shape[0], 1, device="cuda"), lp], dim=1).cpu()


def test_default_group_carries_host_and_device_tensors(layout):
    import torch.distributed as dist

    assert dist.get_backend_config() == "cpu:gloo,cuda:nccl"
    for device in ("cpu", "cuda"):
        t = torch.ones(2, device=device)
        dist.all_reduce(t)  # a CPU tensor on an NCCL-only group raised here before
        assert t.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("precision,atol", [("fp32", 1e-3), ("bf16", BF16_LOGPROB_ATOL)])
def test_logprobs_match_hf(model_dir, layout, precision, atol):
    policy = _policy(model_dir, layout, precision)
    batch, lengths = _batch()
    lp, _ = policy.get_logprobs(batch.input_ids, lengths=lengths)
    ref = _hf_logprobs(model_dir, batch.input_ids, torch.float32 if precision == "fp32" else torch.bfloat16)
    valid = (torch.arange(batch.input_ids.shape[1])[None] < lengths[:, None]) & \
        (torch.arange(batch.input_ids.shape[1])[None] > 0)
    diff = (lp - ref).abs()[valid]
    print(f"GPU {precision}: max |Megatron - HF| log-prob {diff.max():.3e}, mean {diff.mean():.3e} "
          f"(micro-batching {policy.micro_batch_layout})")
    assert diff.max() < atol


def test_train_step_memory_and_optimizer_offload(model_dir, layout):
    from nemo_igrpo.algorithms.config import AlgorithmConfig
    from nemo_igrpo.algorithms.losses import make_policy_loss
    from nemo_igrpo.trainer import memory_plan as mp

    loss_fn = make_policy_loss(AlgorithmConfig(), max_response_tokens=96)
    batch, lengths = _batch(seed=1)
    steps = {}
    for offload in (False, True):
        policy = _policy(model_dir, layout, "bf16")
        lp, _ = policy.get_logprobs(batch.input_ids, lengths=lengths)
        batch.old_logprobs = lp * batch.loss_mask
        m1 = policy.train(batch, loss_fn)
        assert m1["skipped"] == 0.0 and math.isfinite(m1["loss"]) and m1["grad_norm"] > 0
        owned = sum(t.numel() * t.element_size() for *_, t in policy.optimizer_state_tensors())
        params = sum(p.numel() for p in policy.model[0].module.parameters())
        assert owned == 12 * params  # bf16: fp32 master copy + Adam m, v (the memory plan's 12 B/param)
        if offload:
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            policy.offload_optimizer_state()
            freed = before - torch.cuda.memory_allocated()
            print(f"optimizer offload freed {freed / 2**20:.1f} MiB of {owned / 2**20:.1f} MiB optimizer state")
            assert freed >= 0.9 * owned
            assert all(t.device.type == "cpu" for *_, t in policy.optimizer_state_tensors())
            policy.reload_optimizer_state()
            assert all(t.device.type == "cuda" for *_, t in policy.optimizer_state_tensors())
        m2 = policy.train(batch, loss_fn)
        steps[offload] = (m2, [t.detach().float().cpu() for *_, t in policy.optimizer_state_tensors()])
    (m_a, s_a), (m_b, s_b) = steps[False], steps[True]
    # Same start, same data: the second step sees the same optimizer state whether it went to host memory and back
    # or not. (GPU reductions are not bitwise deterministic, so the comparison allows float noise; a lost or stale
    # moment would move the fp32 master weights by ~lr = 1e-4.)
    assert m_a["loss"] == pytest.approx(m_b["loss"], rel=1e-3)
    assert len(s_a) == len(s_b)
    for a, b in zip(s_a, s_b):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)
    # The plan's static terms against what this policy holds.
    shape = mp.shape_from_config(_config().to_dict())
    assert mp.params_per_rank(shape, 1, 1)[0] == params
    print(f"peak allocated during the steps: {torch.cuda.max_memory_allocated() / 2**20:.1f} MiB")


def test_micro_batch_layouts_agree_in_bf16(model_dir, layout):
    results = {}
    batch, lengths = _batch(seqs=12, seed=2)
    for name in ("padded", "bucketed", "packed"):
        policy = _policy(model_dir, layout, "bf16", micro_batching=name)
        lp, _ = policy.get_logprobs(batch.input_ids, lengths=lengths)
        results[name] = lp
        print(f"{name}: layout {policy.micro_batch_layout}, THD packing: {policy._thd}")
    valid = torch.arange(batch.input_ids.shape[1])[None] < lengths[:, None]
    for name in ("bucketed", "packed"):
        diff = (results[name] - results["padded"]).abs()[valid]
        print(f"bf16 {name} vs padded: max |log-prob diff| {diff.max():.3e}")
        assert diff.max() < BF16_LOGPROB_ATOL
