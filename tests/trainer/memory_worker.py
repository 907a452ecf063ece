"""Ranks for the memory-plan test: build a tiny Qwen2-shaped MegatronPolicy and measure what it allocates (weights,
the DDP gradient buffer, optimizer state after a step, tensors saved for backward by one micro-batch)."""

from __future__ import annotations

import json
import os

# The tiny model the plan's arithmetic is checked on: Qwen2 (q/k/v biases), GQA, untied, shapes that TP=2 splits.
TINY = dict(model_type="qwen2", vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
# (rows, width) of the measured micro-batches.
SHAPES = [(2, 24), (3, 40)]


def _saved_bytes(policy, ids) -> int:
    """Unique storages the autograd graph of one micro-batch keeps (parameters excluded): the forward and the
    token log-probs, as ``MegatronPolicy.train``'s loss function computes them."""
    import torch

    from nemo_igrpo.backends.policy.logprobs import token_logprobs
    from nemo_igrpo.backends.policy.micro_batches import plan_micro_batches

    model = policy.model[0]
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    rows, width = ids.shape
    mb = plan_micro_batches([width] * rows, "padded", rows_per_micro_batch=rows, token_budget=0, row_capacity=width)[0]
    inputs = policy._model_input(mb, ids)
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = policy._forward(model, inputs)
        token_logprobs(logits, inputs["input_ids"], 0.7)
    return sum(seen.values())


def measure(out_dir: str, tp: int) -> None:
    import torch
    import transformers

    from nemo_igrpo.algorithms.config import AlgorithmConfig
    from nemo_igrpo.algorithms.losses import make_policy_loss
    from nemo_igrpo.backends.policy.config import OptimizerConfig, PolicyConfig
    from nemo_igrpo.backends.policy.megatron_policy import MegatronPolicy
    from nemo_igrpo.backends.policy.parallel import destroy_parallel, initialize_parallel
    from nemo_igrpo.batch import TrainBatch

    layout = initialize_parallel(tp, 1, seed=0)
    hf = transformers.AutoConfig.for_model(**TINY)
    result: dict = {"activations": {}, "activations_recompute": {}}
    for recompute in (False, True):
        cfg = PolicyConfig(precision="fp32", micro_batch_size=8, activation_checkpointing=recompute,
                           optimizer=OptimizerConfig(use_distributed_optimizer=False))
        policy = MegatronPolicy(cfg, layout, hf, temperature=0.7, total_steps=4)
        key = "activations_recompute" if recompute else "activations"
        for rows, width in SHAPES:
            ids = torch.randint(0, TINY["vocab_size"], (rows, width), generator=torch.Generator().manual_seed(rows))
            result[key][f"{rows}x{width}"] = _saved_bytes(policy, ids)
    chunk = policy.model[0]
    result["weights"] = sum(p.numel() * p.element_size() for p in chunk.parameters())
    result["params"] = sum(p.numel() for p in chunk.parameters())
    buffers = list(chunk.buffers) + list(getattr(chunk, "expert_parallel_buffers", []))
    result["gradients"] = sum(b.grad_data.numel() * b.grad_data.element_size() for b in buffers)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, TINY["vocab_size"], (4, 16), generator=g)
    mask = torch.zeros(4, 16)
    mask[:, 6:] = 1.0
    batch = TrainBatch(input_ids=ids, loss_mask=mask, advantages=torch.randn(4, generator=g),
                       old_logprobs=torch.zeros(4, 16))
    result["optimizer_before_step"] = sum(t.numel() * t.element_size() for *_, t in policy.optimizer_state_tensors())
    policy.train(batch, make_policy_loss(AlgorithmConfig(), max_response_tokens=16))
    result["optimizer"] = sum(t.numel() * t.element_size() for *_, t in policy.optimizer_state_tensors())
    with open(os.path.join(out_dir, f"memory_tp{tp}_rank{layout.rank}.json"), "w") as f:
        json.dump(result, f)
    destroy_parallel()
