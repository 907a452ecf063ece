"""Ranks of the SmolLM2 checks (run through tests/backends/launch.py): the trainer's own path (MegatronPolicy.from_hf:
read the HF directory, shard it, build megatron-core's GPTModel) on a real checkpoint.

``logprobs(hf_dir, tp, pp, ids_file, out_file)``: per-token log-probs of the ids in ``ids_file`` at TP x PP; rank 0
writes them. ``train_step(hf_dir, ids_file, out_dir)``: one optimizer step at TP1, then the refit export; rank 0
writes the exported weights and the policy's log-probs after the step, for the test to reload into transformers.
"""

from __future__ import annotations

import os

import torch

TEMPERATURE = 1.0


def _policy(hf_dir: str, tp: int, pp: int, micro_batch_size: int = 4):
    from nemo_igrpo.backends.policy.config import OptimizerConfig, PolicyConfig
    from nemo_igrpo.backends.policy.megatron_policy import MegatronPolicy
    from nemo_igrpo.backends.policy.parallel import initialize_parallel

    layout = initialize_parallel(tp, pp, seed=0)
    cfg = PolicyConfig(model_path=hf_dir, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                       precision="fp32", micro_batch_size=micro_batch_size,
                       optimizer=OptimizerConfig(lr=1e-4, warmup_ratio=0.0, weight_decay=0.0, clip_grad=1.0,
                                                 use_distributed_optimizer=False))
    return layout, MegatronPolicy.from_hf(cfg, layout, TEMPERATURE, total_steps=2)


def logprobs(hf_dir: str, tp: int, pp: int, ids_file: str, out_file: str) -> None:
    from safetensors.torch import load_file, save_file

    from nemo_igrpo.backends.policy.parallel import destroy_parallel

    layout, policy = _policy(hf_dir, tp, pp)
    ids = load_file(ids_file)["input_ids"]
    lp, _ = policy.get_logprobs(ids)
    if layout.rank == 0:
        save_file({"logprobs": lp.contiguous()}, out_file)
    destroy_parallel()


def train_step(hf_dir: str, ids_file: str, out_dir: str) -> None:
    from safetensors.torch import load_file, save_file

    from nemo_igrpo.algorithms.config import AlgorithmConfig
    from nemo_igrpo.algorithms.losses import make_policy_loss
    from nemo_igrpo.backends.policy.parallel import destroy_parallel
    from nemo_igrpo.batch import TrainBatch

    layout, policy = _policy(hf_dir, 1, 1)
    data = load_file(ids_file)
    ids, mask = data["input_ids"], data["loss_mask"]
    old, _ = policy.get_logprobs(ids)
    batch = TrainBatch(input_ids=ids, loss_mask=mask, advantages=data["advantages"], old_logprobs=old)
    metrics = policy.train(batch, make_policy_loss(AlgorithmConfig(), max_response_tokens=ids.shape[1]))
    after, _ = policy.get_logprobs(ids)
    exported = {name: t.detach().clone().contiguous() for name, t in policy.export_hf_weights()}
    if layout.rank == 0:
        save_file(exported, os.path.join(out_dir, "exported.safetensors"))
        save_file({"before": old.contiguous(), "after": after.contiguous(),
                   "loss": torch.tensor([metrics["loss"]]), "grad_norm": torch.tensor([metrics["grad_norm"]]),
                   "skipped": torch.tensor([metrics["skipped"]])},
                  os.path.join(out_dir, "step.safetensors"))
    destroy_parallel()
