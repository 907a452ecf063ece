"""Ranks for the micro-batch layout test: the same tiny policy, batch and step under the padded reference layout and
under token-budget bucketing and sequence packing; saves log-probs, entropies, the step's reduced gradients (each
rank its own shard) and metrics per layout."""

from __future__ import annotations

import json
import os

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
LAYOUTS = {
    # layout: (micro_batch_size, micro_batch_tokens). The padded reference uses 4 rows padded to the step's longest.
    "padded": (4, 0),
    "bucketed": (4, 60),
    "packed": (4, 80),
}
SEQS, WIDTH = 11, 40


def make_batch() -> dict[str, torch.Tensor]:
    """Rows of very different lengths (5 to 40 tokens), responses after prompts of 2-8 tokens, right-padded with 3
    (a real token id: padding must be invisible whatever it holds)."""
    g = torch.Generator().manual_seed(3)
    ids = torch.full((SEQS, WIDTH), 3, dtype=torch.long)
    mask = torch.zeros(SEQS, WIDTH)
    lengths = [40, 5, 23, 9, 31, 14, 6, 38, 11, 27, 17]
    for i, n in enumerate(lengths):
        prompt = int(torch.randint(2, min(8, n - 1), (1,), generator=g))
        ids[i, :n] = torch.randint(4, 128, (n,), generator=g)
        mask[i, prompt:n] = 1.0
    return {"input_ids": ids, "loss_mask": mask, "advantages": torch.randn(SEQS, generator=g),
            "lengths": torch.tensor(lengths)}


def run(work: str, tp: int, pp: int) -> None:
    from safetensors.torch import save_file

    from common import TEMPERATURE, hf_logprobs, make_loss, optimizer_kwargs, tiny_hf_model
    from nemo_igrpo.backends.conversion.hf_io import read_hf_checkpoint
    from nemo_igrpo.backends.policy.config import OptimizerConfig, PolicyConfig
    from nemo_igrpo.backends.policy.megatron_policy import MegatronPolicy
    from nemo_igrpo.backends.policy.micro_batches import padding_fraction
    from nemo_igrpo.backends.policy.parallel import destroy_parallel, initialize_parallel
    from nemo_igrpo.batch import TrainBatch

    layout = initialize_parallel(tp, pp, seed=0)
    hf_dir = os.path.join(work, "hf")
    if layout.rank == 0 and not os.path.isdir(hf_dir):
        tiny_hf_model().save_pretrained(hf_dir)
    torch.distributed.barrier()
    b = make_batch()
    old = hf_logprobs(tiny_hf_model(), b["input_ids"]) * b["loss_mask"]
    old = old + 0.05 * torch.randn(old.shape, generator=torch.Generator().manual_seed(9)) * b["loss_mask"]
    meta: dict = {}
    for name, (rows, tokens) in LAYOUTS.items():
        hf_config, sd = read_hf_checkpoint(hf_dir)
        cfg = PolicyConfig(model_path=hf_dir, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                           precision="fp32", micro_batch_size=rows, micro_batching=name, micro_batch_tokens=tokens,
                           logprob_micro_batch_tokens=tokens, optimizer=OptimizerConfig(**optimizer_kwargs()))
        policy = MegatronPolicy(cfg, layout, hf_config, TEMPERATURE, total_steps=10, hf_state_dict=sd)
        lp, ent = policy.get_logprobs(b["input_ids"], return_entropy=True, lengths=b["lengths"])
        grads: dict[str, torch.Tensor] = {}
        clip = policy._clip

        def capture(grad_norm, policy=policy, clip=clip):
            for i, chunk in enumerate(policy.model):
                for pname, p in chunk.module.named_parameters():
                    grads[f"{i}.{pname}"] = p.main_grad.detach().clone()
            clip(grad_norm)

        policy._clip = capture
        batch = TrainBatch(input_ids=b["input_ids"], loss_mask=b["loss_mask"], advantages=b["advantages"],
                           old_logprobs=old)
        metrics = policy.train(batch, make_loss())
        lengths = [int(n) for n in b["lengths"]]
        plan = policy._plan(lengths, WIDTH, rows, tokens)
        meta[name] = {"metrics": metrics, "micro_batches": len(plan), "padding": padding_fraction(plan),
                      "packed_rows": sum(mb.packed for mb in plan), "layout": policy.micro_batch_layout}
        save_file({"lp": lp, "ent": ent, **{f"grad.{k}": v for k, v in grads.items()}},
                  os.path.join(work, f"{name}_tp{tp}pp{pp}_rank{layout.rank}.safetensors"))
    if layout.rank == 0:
        with open(os.path.join(work, f"meta_tp{tp}pp{pp}.json"), "w") as f:
            json.dump(meta, f)
    destroy_parallel()
