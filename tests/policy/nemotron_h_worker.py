"""Ranks of the Nemotron-H policy tests: ``nemotron_h_worker.py SCENARIO WORK_DIR``, WORK_DIR prepared by
``common.prepare_work(work, "nemotron_h")``.

``parallel`` (2 processes): DP=2 (TP=1), then TP=2, then PP=2 in the same processes; ``tp2pp2`` (4 processes). In
every layout each rank builds the policy from the memory-mapped HF directory and records the bytes it read and
whether its weights equal those of the full-state-dict load; then log-probs, the step-1 gradients (under HF names,
captured before clipping), one training step and the exported weights. DP=2 also saves a checkpoint (TP=1) that the
TP=2 layout loads, and repeats step 1 with activation recompute. Rank 0 writes ``<layout>_<name>.safetensors`` and
``<layout>_metrics.json``.
"""

from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

LAYOUTS = {"dp2": (1, 1), "tp2": (2, 1), "pp2": (1, 2), "tp2pp2": (2, 2)}
MICRO_BATCH = {"dp2": 2, "tp2": 4, "pp2": 3, "tp2pp2": 3}  # pp: 3 micro-batches of 3, 3, 2 rows (ragged 1F1B)


def run(name: str, work: str) -> None:
    import logging

    import torch.distributed as dist
    from safetensors.torch import save_file

    from common import build_policy_checking_load, load_step_batches, make_loss, policy_config
    from nemo_igrpo.backends.policy.megatron_policy import MegatronPolicy
    from nemo_igrpo.backends.policy.parallel import initialize_parallel
    from nemo_igrpo.backends.policy.weights import export_hf_state_dict

    tp, pp = LAYOUTS[name]
    layout = initialize_parallel(tp, pp, seed=1234)
    hf_dir = os.path.join(work, "hf")
    loss_fn = make_loss()
    batches = load_step_batches(work, layout)
    metrics: dict = {"layout": str(layout)}
    rank0 = layout.rank == 0

    warnings: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record):
            warnings.append(record.getMessage())

    logging.getLogger("nemo_igrpo").addHandler(Capture(level=logging.WARNING))

    def policy(mbs: int, full_load_check: bool = False, **overrides) -> tuple[MegatronPolicy, dict]:
        cfg = policy_config(hf_dir, mbs, tp, pp)
        for k, v in overrides.items():
            setattr(cfg, k, v)
        return build_policy_checking_load(cfg, layout, hf_dir, full_load_check)

    def export(p: MegatronPolicy, tag: str, select=None) -> None:
        kw = {} if select is None else {"select": select}
        tensors = {n: t.detach().cpu().clone().contiguous() for n, t in export_hf_state_dict(p.chunks, p.hf_config,
                                                                                               **kw)}
        if rank0:
            save_file(tensors, os.path.join(work, f"{name}_{tag}.safetensors"))

    def save_tensors(tag: str, **tensors: torch.Tensor) -> None:
        if rank0:
            save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(work, f"{name}_{tag}.safetensors"))

    def train_capturing_grads(p: MegatronPolicy, batch) -> dict:
        """One step; the gradient under HF names is exported just before clipping and the update."""
        clip = p._clip

        def capture_then_clip(grad_norm):
            export(p, "grads", select=lambda prm: prm.main_grad)
            clip(grad_norm)

        p._clip = capture_then_clip
        try:
            return p.train(batch, loss_fn)
        finally:
            p._clip = clip

    mbs = MICRO_BATCH[name]
    a, load_info = policy(mbs, full_load_check=True)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, load_info)
    metrics["load"] = gathered

    lp0, ent0 = a.get_logprobs(batches[0].input_ids, return_entropy=True)
    metrics["step1"] = train_capturing_grads(a, batches[0])
    export(a, "A1")
    if name == "dp2":
        a.save_checkpoint(os.path.join(work, "ckpt_dp2_step1"))
        lp1, _ = a.get_logprobs(batches[1].input_ids)
        save_tensors("logprobs", lp0=lp0, ent0=ent0, lp1=lp1)
        metrics["step2"] = a.train(batches[1], loss_fn)
        export(a, "A2")
        # Activation recompute (selective on the hybrid stack) changes nothing numerically; start-up says what it
        # does not cover.
        warnings.clear()
        e, _ = policy(mbs, activation_checkpointing=True)
        metrics["recompute_warnings"] = list(warnings)
        metrics["recompute"] = e.train(batches[0], loss_fn)
        export(e, "E1")
    elif name == "tp2":
        c, _ = policy(8)  # the TP=1 checkpoint at TP=2, optimizer state included
        c.load_checkpoint(os.path.join(work, "ckpt_dp2_step1"))
        lp1c, _ = c.get_logprobs(batches[1].input_ids)
        save_tensors("logprobs", lp0=lp0, ent0=ent0, lp1_resumed=lp1c)
        metrics["resumed_step2"] = c.train(batches[1], loss_fn)
        export(c, "C2")
    else:
        save_tensors("logprobs", lp0=lp0, ent0=ent0)
    if rank0:
        with open(os.path.join(work, f"{name}_metrics.json"), "w") as f:
            json.dump(metrics, f)


if __name__ == "__main__":
    from common import run_scenario

    run_scenario(run, sys.argv[1], sys.argv[2])
