"""Ranks of a policy test run: ``policy_worker.py SCENARIO WORK_DIR``, WORK_DIR prepared by ``common.prepare_work``.

``tp1`` (1 process): train/resume/accumulation/non-finite cases. ``parallel`` (2 processes): DP=2, then TP=2, then
PP=2 in the same processes (re-initialising megatron's groups saves two interpreter start-ups). Rank 0 writes
``<layout>_<name>.safetensors`` (exported HF weights or log-probs) and ``<layout>_metrics.json``.
"""

from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

LAYOUTS = {"tp1": (1, 1), "dp2": (1, 1), "tp2": (2, 1), "pp2": (1, 2), "features": (1, 1)}
# Seeds of the features scenario's mini-batch order and importance weights (the test rebuilds both from them).
MULTI_SEED, WEIGHTS_SEED = 11, 12


class NanLoss:
    """A loss whose value is NaN (with the wrapped loss's metrics): the non-finite skip path."""

    needs_entropy = False

    def __init__(self, inner) -> None:
        self.inner = inner

    def __call__(self, *args, **kwargs):
        loss, metrics = self.inner(*args, **kwargs)
        return loss * float("nan"), metrics


def run(name: str, work: str) -> None:
    from safetensors.torch import save_file

    from common import (TEMPERATURE, TOTAL_STEPS, build_policy_checking_load, load_step_batches, make_loss,
                        policy_config)
    from nemo_igrpo.backends.policy.megatron_policy import MegatronPolicy
    from nemo_igrpo.backends.policy.parallel import initialize_parallel

    tp, pp = LAYOUTS[name]
    layout = initialize_parallel(tp, pp, seed=1234)
    hf_dir = os.path.join(work, "hf")
    loss_fn = make_loss()
    batches = load_step_batches(work, layout)
    metrics: dict = {"layout": str(layout)}
    rank0 = layout.rank == 0

    def policy(mbs: int, **overrides) -> MegatronPolicy:
        cfg = policy_config(hf_dir, mbs, tp, pp)
        for k, v in overrides.items():
            setattr(cfg, k, v)
        if name in ("tp2", "pp2") and "load" not in metrics:
            # The first policy of a sharded layout: what each rank read from the memory-mapped HF directory.
            import torch.distributed as dist

            p, info = build_policy_checking_load(cfg, layout, hf_dir, full_load_check=True)
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, info)
            metrics["load"] = gathered
            return p
        return MegatronPolicy.from_hf(cfg, layout, TEMPERATURE, TOTAL_STEPS)

    def draws() -> list[float]:
        import random

        import numpy as np

        return [*torch.rand(2).tolist(), float(np.random.rand()), random.random()]

    def export(p: MegatronPolicy, tag: str) -> None:
        weights = {n: t.detach().cpu().clone().contiguous() for n, t in p.export_hf_weights()}
        if rank0:
            save_file(weights, os.path.join(work, f"{name}_{tag}.safetensors"))

    def save_tensors(tag: str, **tensors: torch.Tensor) -> None:
        if rank0:
            save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(work, f"{name}_{tag}.safetensors"))

    if name == "tp1":
        ckpt = os.path.join(work, "ckpt_tp1_step1")
        a = policy(8)
        lp0, ent0 = a.get_logprobs(batches[0].input_ids, return_entropy=True)
        metrics["step1"] = a.train(batches[0], loss_fn)
        export(a, "A1")
        a.save_checkpoint(ckpt)
        metrics["draws_after_save"] = draws()
        lp1, _ = a.get_logprobs(batches[1].input_ids)
        save_tensors("logprobs", lp0=lp0, ent0=ent0, lp1=lp1)
        metrics["step2"] = a.train(batches[1], loss_fn)
        export(a, "A2")

        b = policy(2)  # gradient accumulation over 4 micro-batches
        metrics["accum"] = b.train(batches[0], loss_fn)
        export(b, "B1")

        c = policy(8)  # resume: the next step must be the uninterrupted run's step 2
        c.load_checkpoint(ckpt)
        metrics["draws_after_load"] = draws()
        metrics["resumed_num_updates"] = c.num_updates
        lp1c, _ = c.get_logprobs(batches[1].input_ids)
        save_tensors("resumed_logprobs", lp1=lp1c)
        metrics["resumed_step2"] = c.train(batches[1], loss_fn)
        export(c, "C2")

        d = policy(3)  # non-finite loss: no update, no schedule step, no gradient left over
        metrics["nan"] = d.train(batches[0], NanLoss(loss_fn))
        metrics["nan_num_updates"] = d.num_updates
        export(d, "D0")
        metrics["after_nan"] = d.train(batches[0], loss_fn)
        export(d, "D1")

        # Activation recompute changes nothing numerically; a checkpoint saved before any update (no optimizer
        # state yet) loads back.
        e = policy(8, activation_checkpointing=True)
        e.save_checkpoint(os.path.join(work, "ckpt_tp1_step0"))
        e.load_checkpoint(os.path.join(work, "ckpt_tp1_step0"))
        metrics["recompute"] = e.train(batches[0], loss_fn)
        export(e, "E1")
    elif name == "dp2":
        a = policy(2)
        lp0, _ = a.get_logprobs(batches[0].input_ids)
        save_tensors("logprobs", lp0=lp0)
        metrics["step1"] = a.train(batches[0], loss_fn)
        export(a, "A1")
        # A TP=1 checkpoint (with DP=2: its optimizer state is per DP replica) for the TP=2 run to load.
        a.save_checkpoint(os.path.join(work, "ckpt_dp2_step1"))
        lp1, _ = a.get_logprobs(batches[1].input_ids)
        save_tensors("logprobs1", lp1=lp1)
        metrics["step2"] = a.train(batches[1], loss_fn)
        export(a, "A2")
    elif name == "tp2":
        a = policy(4)
        lp0, ent0 = a.get_logprobs(batches[0].input_ids, return_entropy=True)
        metrics["step1"] = a.train(batches[0], loss_fn)
        export(a, "A1")
        c = policy(8)  # load the TP=1 checkpoint at TP=2, optimizer state included
        c.load_checkpoint(os.path.join(work, "ckpt_dp2_step1"))
        lp1c, _ = c.get_logprobs(batches[1].input_ids)
        save_tensors("logprobs", lp0=lp0, ent0=ent0, lp1_resumed=lp1c)
        metrics["resumed_step2"] = c.train(batches[1], loss_fn)
        export(c, "C2")
    elif name == "pp2":
        a = policy(3)  # 3 micro-batches of 3, 3, 2 rows: the 1F1B schedule with a ragged last one
        lp0, ent0 = a.get_logprobs(batches[0].input_ids, return_entropy=True)
        save_tensors("logprobs", lp0=lp0, ent0=ent0)
        metrics["step1"] = a.train(batches[0], loss_fn)
        export(a, "A1")
    elif name == "features":
        features(work, batches[0], policy, export, save_tensors, metrics)
    if rank0:
        with open(os.path.join(work, f"{name}_metrics.json"), "w") as f:
            json.dump(metrics, f)


def features(work: str, b, policy, export, save_tensors, metrics: dict) -> None:
    """Several updates per batch, the KL reference policy, importance weights and the entropy contract (TP=1)."""
    import dataclasses

    from common import make_loss
    from nemo_igrpo.trainer.updates import run_updates

    loss_fn = make_loss()
    ids = b.input_ids

    # One mini-batch and one epoch is the single-update path, bit for bit.
    a = policy(8)
    lp_fresh, _ = a.get_logprobs(ids)
    metrics["single_train"] = a.train(b, loss_fn)
    export(a, "single_train")
    u = policy(8)
    metrics["single_updates"] = run_updates(u, b, loss_fn, num_mini_batches=1, num_epochs=1, seed=MULTI_SEED)
    export(u, "single_updates")

    # 2 mini-batches x 2 epochs with on-policy old log-probs: the first update's ratio is 1, the later ones' are not.
    m = policy(2)
    lp_old, _ = m.get_logprobs(ids)
    on_policy = dataclasses.replace(b, old_logprobs=lp_old)
    metrics["multi"] = run_updates(m, on_policy, loss_fn, num_mini_batches=2, num_epochs=2, seed=MULTI_SEED)
    metrics["multi_num_updates"] = m.num_updates
    export(m, "multi")

    # The reference policy: kept in CPU memory and swapped in and out. A plain step moves the policy away from it
    # (at the reference itself KL and its gradient are 0), then a KL step with importance weights.
    r = policy(8)
    r.keep_reference(offload=True)
    ref0 = r.get_reference_logprobs(ids)
    lp_after_swap, _ = r.get_logprobs(ids)
    metrics["kl_step1"] = r.train(b, loss_fn)
    ref1 = r.get_reference_logprobs(ids)
    weights = torch.rand(ids.shape, generator=torch.Generator().manual_seed(WEIGHTS_SEED)) * 2 * b.loss_mask
    kl_batch = dataclasses.replace(b, ref_logprobs=ref1, is_weights=weights)
    metrics["kl_step2"] = r.train(kl_batch, make_loss(kl_coef=0.1))
    export(r, "kl_step")
    lp2, _ = r.get_logprobs(ids)
    ckpt = os.path.join(work, "ckpt_features")
    r.save_checkpoint(ckpt)
    resumed = policy(8)
    resumed.keep_reference()
    resumed.load_checkpoint(ckpt)
    ref_resumed = resumed.get_reference_logprobs(ids)
    lp_resumed, _ = resumed.get_logprobs(ids)
    from common import tiny_hf_model

    other_dir = os.path.join(work, "hf_other")
    tiny_hf_model(seed=1).save_pretrained(other_dir)
    other = policy(8, model_path=other_dir)  # same architecture, other initial weights
    other.keep_reference()
    try:
        other.load_checkpoint(ckpt)
        metrics["other_reference"] = "accepted"
    except ValueError as err:
        metrics["other_reference"] = str(err)
    late = policy(8)
    late.load_checkpoint(ckpt)
    try:
        late.keep_reference()
        metrics["keep_after_load"] = "accepted"
    except RuntimeError as err:
        metrics["keep_after_load"] = str(err)
    save_tensors("reference", lp_fresh=lp_fresh, lp_old=lp_old, ref0=ref0, lp_after_swap=lp_after_swap, ref1=ref1,
                 lp2=lp2, ref_resumed=ref_resumed, lp_resumed=lp_resumed, is_weights=weights)

    # A loss that declares needs_entropy gets the current policy's entropy; the registered losses do not ask.
    e = policy(8)
    _, ent = e.get_logprobs(ids, return_entropy=True)
    metrics["entropy_loss"] = e.train(b, dataclasses.replace(loss_fn, needs_entropy=True))
    metrics["entropy_expected"] = float((ent * b.loss_mask).sum() / b.loss_mask.sum())


if __name__ == "__main__":
    from common import run_scenario

    run_scenario(run, sys.argv[1], sys.argv[2])
