"""The tiny models (Llama and Nemotron-H), batches and hyper-parameters shared by the policy tests and their worker
processes, and the single-process HF references they are compared with."""

from __future__ import annotations

import torch
import transformers

TEMPERATURE = 0.7
TOTAL_STEPS = 10
SEQS, LENGTH = 8, 16
# Nemotron-H rows are longer than its Mamba scan chunk (8) and the padded length is not a multiple of it, so the
# scan runs over whole chunks, a chunk boundary inside a sequence and a partial last chunk.
NH_LENGTH = 21
NH_CHUNK = 8


def optimizer_kwargs() -> dict:
    # lr large enough that one step moves every weight visibly; clip below the first step's norm so clipping acts.
    # adam_eps 1e-4, not 1e-8: Adam's first step is lr * g / (|g| + eps), which amplifies float32 summation noise in
    # near-zero gradient entries by lr / eps; with a tiny eps that noise alone reaches 1e-6 in a few weights.
    return dict(lr=1e-3, min_lr_ratio=0.1, warmup_ratio=0.0, weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95,
                adam_eps=1e-4, clip_grad=0.5, use_distributed_optimizer=False)


def policy_config(model_path: str, micro_batch_size: int = 8, tp: int = 1, pp: int = 1):
    from nemo_igrpo.backends.policy.config import OptimizerConfig, PolicyConfig

    return PolicyConfig(model_path=model_path, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                        precision="auto", micro_batch_size=micro_batch_size,
                        optimizer=OptimizerConfig(**optimizer_kwargs()))


def build_policy_checking_load(cfg, layout, hf_dir: str, full_load_check: bool = False):
    """``MegatronPolicy`` from the memory-mapped HF directory, and what its loading did on this rank:
    ``bytes_read`` against ``shard_bytes`` (the bytes of the parameters the rank holds; the HF files are fp32 like
    the model) and, with ``full_load_check``, whether loading the whole state dict gives the same weights."""
    import torch

    from nemo_igrpo.backends.conversion.hf_io import open_hf_checkpoint, read_hf_checkpoint
    from nemo_igrpo.backends.policy.megatron_policy import MegatronPolicy
    from nemo_igrpo.backends.policy.weights import load_hf_state_dict

    hf_config, tensors = open_hf_checkpoint(hf_dir)
    policy = MegatronPolicy(cfg, layout, hf_config, TEMPERATURE, TOTAL_STEPS, hf_state_dict=tensors)
    tensors.close()
    params = [p for chunk in policy.chunks for p in chunk.parameters()]
    info = {"bytes_read": tensors.bytes_read, "shard_bytes": sum(p.numel() * 4 for p in params)}
    if full_load_check:
        before = [p.detach().clone() for p in params]
        load_hf_state_dict(policy.chunks, read_hf_checkpoint(hf_dir)[1], hf_config)
        info["same_as_full_load"] = all(torch.equal(a, p) for a, p in zip(before, params))
    return policy, info


def assert_rank_read_only_its_shard(ranks: list[dict], total_bytes: int, sharded: bool) -> None:
    for info in ranks:
        assert info["same_as_full_load"]
        assert info["bytes_read"] == info["shard_bytes"]
        if sharded:
            assert info["bytes_read"] < total_bytes


def load_step_batches(work: str, layout) -> list:
    """The two prepared steps' batches (``prepare_work``), each cut to this rank's contiguous data-parallel shard:
    together the shards are exactly the DP=1 batch."""
    import os

    from safetensors.torch import load_file

    from nemo_igrpo.batch import TrainBatch

    batches = [TrainBatch(**load_file(os.path.join(work, f"batch{i}.safetensors"))) for i in (1, 2)]
    if layout.dp_size > 1:
        per = batches[0].num_sequences // layout.dp_size
        batches = [b.select(slice(layout.dp_rank * per, (layout.dp_rank + 1) * per)) for b in batches]
    return batches


def run_scenario(run, scenario: str, work: str) -> None:
    """A worker's entry point: ``run(layout_name, work)`` for one layout, or dp2, tp2 and pp2 in one process for
    ``scenario == "parallel"``; then the process groups go."""
    import gc

    from nemo_igrpo.backends.policy.parallel import destroy_parallel

    for name in (["dp2", "tp2", "pp2"] if scenario == "parallel" else [scenario]):
        run(name, work)
        gc.collect()  # the previous layout's DDP hooks must not outlive its process groups
    destroy_parallel()


def make_loss(**algorithm):
    from nemo_igrpo.algorithms.config import AlgorithmConfig
    from nemo_igrpo.algorithms.losses import make_policy_loss

    return make_policy_loss(AlgorithmConfig(**algorithm), max_response_tokens=LENGTH)


def tiny_hf_model(seed: int = 0, family: str = "llama"):
    """The tiny HF model of a family (``llama`` or ``nemotron_h``), fp32, with non-trivial weights."""
    if family == "nemotron_h":
        return tiny_nemotron_h(seed)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                                      max_position_embeddings=64, rope_theta=10000.0, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).float()
    with torch.no_grad():
        # Non-trivial norm weights, so that a wrong treatment of TP-duplicated params shows.
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def nemotron_h_config() -> transformers.NemotronHConfig:
    """Mamba, attention, Mamba, MLP ("M*M-"): with PP=2 each stage has a Mamba layer, the first the attention
    layer, the second the MLP. 8 Mamba heads in 2 groups and 2 KV heads: TP=2 gives each rank whole heads and groups,
    and a plain chunk of in_proj/conv1d would hand it the wrong parts."""
    return transformers.NemotronHConfig(
        vocab_size=128, hidden_size=64, hybrid_override_pattern="M*M-", num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, intermediate_size=96, ssm_state_size=8, mamba_num_heads=8, mamba_head_dim=8, n_groups=2,
        conv_kernel=4, chunk_size=NH_CHUNK, max_position_embeddings=64, layer_norm_epsilon=1e-5,
        tie_word_embeddings=False)


def tiny_nemotron_h(seed: int = 0) -> transformers.NemotronHForCausalLM:
    torch.manual_seed(seed)
    model = transformers.NemotronHForCausalLM(nemotron_h_config()).float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("dt_bias"):
                # Step sizes softplus(dt + dt_bias) well above HF's time_step_min (1e-3), where HF clamps them and
                # megatron-core (like vLLM) does not: the two models agree only above it (docs/nemotron_h.md).
                p.uniform_(-1.0, 1.0)
            else:
                p.add_(torch.randn_like(p) * 0.05)
    return model


def hf_model_class(family: str):
    return transformers.NemotronHForCausalLM if family == "nemotron_h" else transformers.LlamaForCausalLM


def make_batch(seed: int, length: int = LENGTH) -> dict[str, torch.Tensor]:
    """Prompt + response rows of different lengths, right-padded with 0; old log-probs are filled by the test."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(SEQS, length, dtype=torch.long)
    mask = torch.zeros(SEQS, length)
    for i in range(SEQS):
        prompt = int(torch.randint(2, 6, (1,), generator=g))
        total = int(torch.randint(prompt + 2, length + 1, (1,), generator=g))
        ids[i, :total] = torch.randint(1, 128, (total,), generator=g)
        mask[i, prompt:total] = 1.0
    adv = torch.randn(SEQS, generator=g)
    return {"input_ids": ids, "loss_mask": mask, "advantages": adv}


@torch.no_grad()
def hf_logprobs(model, ids: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    return hf_logprobs_grad(model, ids, temperature)


def hf_logprobs_grad(model, ids: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    logits = model(input_ids=ids).logits.float()
    lp = torch.log_softmax(logits[:, :-1] / temperature, dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
    return torch.cat([torch.zeros(ids.shape[0], 1), lp], dim=1)


# ------------------------------------------------------------------------------------------ test-process helpers
def prepare_work(work: str, family: str = "llama") -> None:
    """Write the tiny HF model (WORK/hf) and two batches with off-policy old log-probs (WORK/batch{1,2})."""
    import os

    from safetensors.torch import save_file

    model = tiny_hf_model(family=family)
    model.save_pretrained(os.path.join(work, "hf"))
    for i in (1, 2):
        b = make_batch(i, NH_LENGTH if family == "nemotron_h" else LENGTH)
        lp = hf_logprobs(model, b["input_ids"])
        noise = torch.randn(lp.shape, generator=torch.Generator().manual_seed(100 + i))
        # Off-policy old log-probs so that ratios differ from 1 and the clip is exercised.
        b["old_logprobs"] = (lp + 0.05 * noise) * b["loss_mask"]
        save_file(b, os.path.join(work, f"batch{i}.safetensors"))


def _reference_loss(model, b):
    loss, _ = make_loss()(logprobs=hf_logprobs_grad(model, b["input_ids"], TEMPERATURE),
                          old_logprobs=b["old_logprobs"], advantages=b["advantages"], mask=b["loss_mask"])
    return loss


def reference_grads(work: str, family: str = "llama") -> tuple[dict[str, torch.Tensor], float]:
    """HF gradients of the step-1 loss (batch 1, initial weights) by HF parameter name, and the loss."""
    import os

    from safetensors.torch import load_file

    model = hf_model_class(family).from_pretrained(os.path.join(work, "hf"), dtype=torch.float32)
    model.train()
    loss = _reference_loss(model, load_file(os.path.join(work, "batch1.safetensors")))
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}, float(loss.detach())


def reference_step(work: str, family: str = "llama"):
    """HF model + torch AdamW + the same loss, one step on batch 1: (weights, loss, grad norm, lr)."""
    weights, losses, norms, lrs = reference_updates(work, [(load(work, "batch1"), slice(None), None)], family)
    return weights, losses[0], norms[0], lrs[0]


def reference_updates(work: str, updates: list, family: str = "llama"):
    """HF model + torch AdamW from WORK/hf: one optimizer update per ``(batch, rows, loss_fn)`` of ``updates``
    (``batch`` a dict of TrainBatch fields, ``rows`` its row indices, ``loss_fn`` None for ``make_loss()``), the loss
    normalised over those rows and the LR schedule's value at that update. Returns (weights, losses, norms, lrs)."""
    import math
    import os

    model = hf_model_class(family).from_pretrained(os.path.join(work, "hf"), dtype=torch.float32)
    model.train()
    o = optimizer_kwargs()
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]  # megatron: no weight decay on norms/biases
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=o["lr"], betas=(o["adam_beta1"], o["adam_beta2"]), eps=o["adam_eps"])
    losses, norms, lrs = [], [], []
    for k, (batch, rows, loss_fn) in enumerate(updates, start=1):
        # Update k uses the schedule at step k: no warmup here, cosine over TOTAL_STEPS.
        lr = o["lr"] * (o["min_lr_ratio"] + (1 - o["min_lr_ratio"]) * 0.5 * (1 + math.cos(math.pi * k / TOTAL_STEPS)))
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        part = {key: (None if batch.get(key) is None else batch[key][rows])
                for key in ("input_ids", "loss_mask", "advantages", "old_logprobs", "ref_logprobs", "is_weights")}
        loss, _ = (loss_fn or make_loss())(hf_logprobs_grad(model, part["input_ids"], TEMPERATURE),
                                           part["old_logprobs"], part["advantages"], part["loss_mask"],
                                           ref_logprobs=part["ref_logprobs"], is_weights=part["is_weights"])
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), o["clip_grad"])
        opt.step()
        losses.append(float(loss.detach()))
        norms.append(float(norm))
        lrs.append(lr)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, losses, norms, lrs


def load(work: str, name: str) -> dict[str, torch.Tensor]:
    import os

    from safetensors.torch import load_file

    return load_file(os.path.join(work, f"{name}.safetensors"))


def metrics(work: str, scenario: str) -> dict:
    import json
    import os

    with open(os.path.join(work, f"{scenario}_metrics.json")) as f:
        return json.load(f)


# fp32, lr 1e-3: a wrong gradient or optimizer state moves weights by ~lr, 500x more.
ATOL = 2e-6


def assert_same_weights(got: dict, want: dict, atol: float = ATOL) -> None:
    assert set(got) == set(want)
    worst = max((got[k].float() - want[k].float()).abs().max().item() for k in want)
    assert worst <= atol, f"max weight difference {worst:.3g} > {atol}"
