"""The Megatron policy: megatron-core GPTModel or hybrid (Mamba) model + DDP + Megatron optimizer + LR schedule
behind ``PolicyInterface``.

Every public method is collective: all ranks of the job (TP x PP x DP) must call it, in the same order.

Inputs: ``get_logprobs``/``train`` take this data-parallel rank's own rows; ranks of one model-parallel group (same
``dp_rank``) must pass identical tensors. Outputs are identical on all ranks of a model-parallel group.

Gradient semantics of ``train``: the loss function is built with a ``LossNormalizer`` counting the whole step (all
micro-batches of all DP ranks), so the micro-batch losses of all ranks add up to the step loss; the parameters
receive exactly the gradient of that step loss (Megatron's own averaging over micro-batches and DP replicas is
undone, see ``_train_loss_func``).
"""

from __future__ import annotations

import logging
import math
import random
import warnings
from functools import partial
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist

from nemo_igrpo.backends.policy.config import PolicyConfig
from nemo_igrpo.backends.policy.interface import LossFn, PolicyInterface
from nemo_igrpo.backends.policy.micro_batches import MicroBatch, plan_micro_batches
from nemo_igrpo.batch import LossNormalizer, TrainBatch

log = logging.getLogger(__name__)

# Bumped when the checkpoint's non-tensor layout changes incompatibly.
CHECKPOINT_FORMAT = 1


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on GPU, fp32 on CPU (CPU bf16 kernels are slow and their rounding makes tests meaningless)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp32":
        return torch.float32
    raise ValueError(f"policy.precision={precision!r}: expected one of 'auto', 'bf16', 'fp32'")


def lr_schedule_steps(total_steps: int, warmup_ratio: float) -> tuple[int, int]:
    """(warmup_steps, decay_steps) of the schedule: floor(warmup_ratio * total) warmup, cosine until ``total``."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup = int(warmup_ratio * total_steps)
    # Megatron's scheduler requires warmup < decay steps.
    return min(warmup, total_steps - 1), total_steps


def make_lr_scheduler(optimizer, ocfg, total_steps: int):
    """Megatron's ``OptimizerParamScheduler`` for ``ocfg`` (an ``OptimizerConfig``), already stepped once.

    The scheduler's step 0 is lr=0 in warmup; stepping it once up front makes update ``k`` (1-based) use the
    schedule's value at step ``k``, so no update is wasted at lr 0 and the last one (``k = total_steps``) uses
    ``min_lr_ratio * lr``. ``num_steps`` therefore always equals completed updates + 1. ``optimizer`` needs only
    ``param_groups``.
    """
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    warmup, decay = lr_schedule_steps(total_steps, ocfg.warmup_ratio)
    sched = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=ocfg.lr,
        min_lr=ocfg.lr * ocfg.min_lr_ratio,
        lr_warmup_steps=warmup,
        lr_decay_steps=decay,
        lr_decay_style="cosine",
        start_wd=ocfg.weight_decay,
        end_wd=ocfg.weight_decay,
        wd_incr_steps=decay,
        wd_incr_style="constant",
        # The run's config wins over a checkpoint's schedule; only the step count is restored.
        use_checkpoint_opt_param_scheduler=False,
        override_opt_param_scheduler=True,
    )
    sched.step(1)
    return sched


class MegatronPolicy(PolicyInterface):
    """A Llama/Qwen2 (GPTModel) or Nemotron-H (hybrid Mamba model) policy trained with megatron-core.

    Construct after ``initialize_parallel`` on every rank::

        hf_config, tensors = open_hf_checkpoint(path)   # memory-mapped; each rank reads only its shard
        policy = MegatronPolicy(cfg.policy, layout, hf_config, temperature, total_steps, hf_state_dict=tensors)

    ``hf_state_dict`` may also be a dict of full HF tensors.

    ``total_steps`` is the number of optimizer steps of the run (the LR schedule ends there). Update ``k`` (1-based)
    uses the schedule's value at step ``k``: linear warmup reaching ``lr`` at step ``floor(warmup_ratio*total)``,
    then cosine to ``min_lr_ratio * lr`` at step ``total``. Weight decay is not applied to biases and 1-D parameters
    (norm weights), as in Megatron.
    """

    # The frozen KL reference (``keep_reference``) and its fingerprint; set before any update or checkpoint load.
    _reference = None
    _reference_fingerprint: str | None = None
    _loaded_checkpoint = False

    def __init__(self, cfg: PolicyConfig, layout, hf_config, temperature: float, total_steps: int,
                 hf_state_dict=None) -> None:
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.distributed.finalize_model_grads import finalize_model_grads

        from nemo_igrpo.backends.policy.model import build_model

        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.cfg = cfg
        self.layout = layout
        self.hf_config = hf_config
        self.temperature = float(temperature)
        self.total_steps = int(total_steps)
        self.device = torch.device(layout.device)
        self.on_gpu = self.device.type == "cuda"
        self.dtype = resolve_dtype(cfg.precision, self.device)
        log.info("micro-batches: %s (policy.micro_batching=%s)", self.micro_batch_layout, cfg.micro_batching)

        self.use_distributed_optimizer = bool(cfg.optimizer.use_distributed_optimizer)
        if self.use_distributed_optimizer and not self.on_gpu:
            warnings.warn("policy.optimizer.use_distributed_optimizer is GPU-only in megatron-core 0.16 (its buffers "
                          "and collectives assume CUDA); using the plain optimizer on CPU", stacklevel=2)
            self.use_distributed_optimizer = False

        chunks = build_model(hf_config, self.dtype, activation_checkpointing=cfg.activation_checkpointing)
        if hf_state_dict is not None:
            # Before DDP/optimizer creation: the optimizer copies (bf16) or aliases the parameters at construction.
            from nemo_igrpo.backends.policy.weights import load_hf_state_dict

            load_hf_state_dict(chunks, hf_state_dict, hf_config)

        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=False,
            use_distributed_optimizer=self.use_distributed_optimizer,
            # A non-finite gradient must skip the step (reported as skipped=1), not raise inside Megatron.
            check_for_nan_in_grad=False,
        )
        self.model = [
            DistributedDataParallel(config=chunk.config, ddp_config=ddp_config, module=chunk,
                                    # Megatron buckets only the first chunk (the others overlap with its compute).
                                    disable_bucketing=i > 0)
            for i, chunk in enumerate(chunks)
        ]
        self.optimizer = self._build_optimizer()
        self.scheduler = self._build_scheduler()

        mcfg = self.model[0].config
        mcfg.finalize_model_grads_func = finalize_model_grads
        mcfg.grad_scale_func = self.optimizer.scale_loss
        mcfg.no_sync_func = (self.model[0].no_sync if len(self.model) == 1 else [m.no_sync for m in self.model])
        if layout.pp_size > 1:
            # Micro-batches may differ in size (the last one of a step) and length (per call): let p2p send shapes.
            mcfg.variable_seq_lengths = True

    # ------------------------------------------------------------------------------------------------ construction
    @classmethod
    def from_hf(cls, cfg: PolicyConfig, layout, temperature: float, total_steps: int,
                path: str | None = None) -> "MegatronPolicy":
        """Build from a Hugging Face directory (``path`` or ``cfg.model_path``); each rank reads only its shard."""
        from nemo_igrpo.backends.conversion.hf_io import open_hf_checkpoint

        hf_config, tensors = open_hf_checkpoint(path or cfg.model_path, trust_remote_code=cfg.trust_remote_code)
        try:
            return cls(cfg, layout, hf_config, temperature, total_steps, hf_state_dict=tensors)
        finally:
            tensors.close()

    def _build_optimizer(self):
        from megatron.core.optimizer import OptimizerConfig as MOptimizerConfig
        from megatron.core.optimizer import get_megatron_optimizer

        o = self.cfg.optimizer
        bf16 = self.dtype == torch.bfloat16
        mconf = MOptimizerConfig(
            optimizer="adam",
            lr=o.lr,
            min_lr=o.lr * o.min_lr_ratio,
            weight_decay=o.weight_decay,
            adam_beta1=o.adam_beta1,
            adam_beta2=o.adam_beta2,
            adam_eps=o.adam_eps,
            bf16=bf16,
            params_dtype=self.dtype,
            use_distributed_optimizer=self.use_distributed_optimizer,
            # Clipping is done in ``_clip_and_step`` so that a non-finite norm can skip the update first.
            clip_grad=0.0,
        )
        return get_megatron_optimizer(mconf, self.model)

    def _build_scheduler(self):
        return make_lr_scheduler(self.optimizer, self.cfg.optimizer, self.total_steps)

    # ---------------------------------------------------------------------------------------------------- helpers
    @property
    def chunks(self) -> list[torch.nn.Module]:
        """The unwrapped model chunks of this PP stage (for weights.py)."""
        return [m.module for m in self.model]

    @property
    def num_updates(self) -> int:
        """Completed optimizer updates (skipped steps excluded)."""
        return self.scheduler.num_steps - 1

    @property
    def lr(self) -> float:
        """The learning rate the next update will use."""
        return float(self.optimizer.param_groups[0]["lr"])

    def _pp_group(self):
        from megatron.core import parallel_state

        return parallel_state.get_pipeline_model_parallel_group()

    def _pp_last_rank(self) -> int:
        from megatron.core import parallel_state

        return parallel_state.get_pipeline_model_parallel_last_rank()

    def _dp_group(self):
        from megatron.core import parallel_state

        return parallel_state.get_data_parallel_group()

    @property
    def micro_batch_layout(self) -> str:
        """``policy.micro_batching`` resolved: ``auto`` packs where the attention kernel skips other sequences'
        tokens (Transformer Engine's THD layout), and buckets by length otherwise (a block-diagonal mask would
        compute, then discard, attention across the sequences of a row). Hybrid Mamba models never pack: a Mamba
        layer's state runs along the whole row, through every sequence in it."""
        from nemo_igrpo.backends.policy.architecture import micro_batching_problems

        layout = self.cfg.micro_batching
        if layout == "auto":
            return "packed" if self._thd and not self.hybrid else "bucketed"
        problems = micro_batching_problems(self.hf_config, layout)
        if problems:
            raise ValueError(f"config key 'policy.micro_batching': {'; '.join(problems)}")
        return layout

    @property
    def hybrid(self) -> bool:
        from nemo_igrpo.backends.policy.architecture import is_hybrid

        return is_hybrid(self.hf_config)

    @property
    def _thd(self) -> bool:
        from nemo_igrpo.backends.policy.model import use_transformer_engine

        return use_transformer_engine()

    def _plan(self, lengths: list[int], width: int, rows: int, token_budget: int) -> list[MicroBatch]:
        """Micro-batches of a call (``micro_batches.plan_micro_batches``); the token budget defaults to ``rows`` x the
        longest sequence, the memory one padded micro-batch needed. Every rank of a model-parallel group plans the same
        (same lengths, deterministic order)."""
        longest = max(lengths)
        budget = token_budget or max(1, rows) * longest
        thd = self._thd and self.micro_batch_layout == "packed"
        return plan_micro_batches(lengths, self.micro_batch_layout, rows_per_micro_batch=rows, token_budget=budget,
                                  row_capacity=budget if thd else longest, width=width, one_row=thd)

    def _model_input(self, mb: MicroBatch, ids: torch.Tensor) -> dict[str, Any]:
        """The forward's inputs for one micro-batch. Attention never crosses sequences: causal attention hides right
        padding; packed rows get a block-diagonal causal mask, or under Transformer Engine the THD layout with
        ``cu_seqlens``. On GPU an unpacked micro-batch passes no mask (the fused causal kernels). On CPU the mask is
        always explicit: megatron's default one is built with device="cuda", and activation recompute builds it again
        inside autograd's backward, where only the shims' backward interception would keep the device rewrite
        alive."""
        out: dict[str, Any] = {"input_ids": mb.gather_tokens(ids), "position_ids": mb.position_ids(self.device),
                               "attention_mask": None, "packed_seq_params": None, "layout": mb}
        if mb.packed and self._thd:
            from megatron.core.packed_seq_params import PackedSeqParams

            cu = mb.cu_seqlens(self.device)
            longest = max(s.length for s in mb.segments)
            out["packed_seq_params"] = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                                                       max_seqlen_q=longest, max_seqlen_kv=longest)
        elif mb.packed or not self.on_gpu:
            out["attention_mask"] = mb.attention_mask(self.device)
        return out

    def _run(self, forward_step, data: list[Any], forward_only: bool) -> list[Any]:
        from megatron.core.pipeline_parallel import get_forward_backward_func

        return get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iter(data) if len(self.model) == 1 else [iter(data) for _ in self.model],
            model=self.model if len(self.model) > 1 else self.model[0],
            num_microbatches=len(data),
            seq_length=max(d["input_ids"].shape[1] for d in data),
            micro_batch_size=max(d["input_ids"].shape[0] for d in data),
            forward_only=forward_only,
        )

    def _forward(self, model, inputs: dict[str, Any]) -> torch.Tensor:
        return model(inputs["input_ids"], inputs["position_ids"], inputs["attention_mask"],
                     packed_seq_params=inputs["packed_seq_params"])

    # -------------------------------------------------------------------------------------------------- log-probs
    @torch.no_grad()
    def get_logprobs(self, input_ids: torch.Tensor, return_entropy: bool = False,
                     lengths: torch.Tensor | list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs [S, L] (float32, CPU) at the sampling temperature, aligned with ``input_ids``;
        optionally the entropy [S, L]. ``lengths``: real tokens of each row (None: all L); positions past a row's
        length are not computed and are 0. Micro-batched by ``policy.micro_batching`` and
        ``policy.logprob_micro_batch_tokens``. Collective; identical on every rank of the model-parallel group."""
        from nemo_igrpo.backends.policy.logprobs import token_entropy, token_logprobs

        for m in self.model:
            m.eval()
        s, l = input_ids.shape
        ids = input_ids.to(self.device, dtype=torch.long)
        rows = self.cfg.logprob_micro_batch_size or self.cfg.micro_batch_size
        row_lengths = [l] * s if lengths is None else [max(1, min(int(n), l)) for n in lengths]
        plan = self._plan(row_lengths, l, rows, self.cfg.logprob_micro_batch_tokens) if s > 0 else []
        data = [self._model_input(mb, ids) for mb in plan]
        temperature = self.temperature

        def loss_func(mb, logits):
            layout = mb["layout"]
            out = {"logprobs": layout.unpack(token_logprobs(logits, mb["input_ids"], temperature).float())}
            if return_entropy:
                out["entropy"] = layout.unpack(token_entropy(logits, temperature).float())
            # The schedule wants a scalar "loss"; in forward-only mode it is discarded.
            return logits.new_zeros(()), out

        def forward_step(data_iterator, model):
            mb = next(data_iterator)
            return self._forward(model, mb), partial(loss_func, mb)

        outs = self._run(forward_step, data, forward_only=True) if s > 0 else []
        lp = torch.zeros(s, l, dtype=torch.float32, device=self.device)
        ent = torch.zeros(s, l, dtype=torch.float32, device=self.device) if return_entropy else None
        if self.layout.is_last_stage and s > 0:
            for mb, o in zip(plan, outs):
                rows_of = mb.indices.to(self.device)
                lp[rows_of, :mb.seq_width] = o["logprobs"]
                if ent is not None:
                    ent[rows_of, :mb.seq_width] = o["entropy"]
        if self.layout.pp_size > 1:
            dist.broadcast(lp, src=self._pp_last_rank(), group=self._pp_group())
            if ent is not None:
                dist.broadcast(ent, src=self._pp_last_rank(), group=self._pp_group())
        return lp.cpu(), (ent.cpu() if ent is not None else None)

    # ------------------------------------------------------------------------------------------ reference policy
    def keep_reference(self, offload: bool = False) -> None:
        """Freeze this rank's shards of the current weights as the KL reference (see ``backends.policy.reference``).

        Refused after an update or a checkpoint load: the reference must be the run's initial weights, which a
        resumed run gets by calling this on the freshly built policy before ``load_checkpoint``. Checkpoints record
        the reference's fingerprint and ``load_checkpoint`` refuses one written with another reference (a resume
        may point ``policy.model_path`` at a new directory; its weights must be the same). Collective.
        """
        from nemo_igrpo.backends.policy.reference import ReferenceWeights, weights_fingerprint

        if self._reference is not None:
            raise RuntimeError("keep_reference: a reference policy is already kept")
        if self.num_updates > 0 or self._loaded_checkpoint:
            raise RuntimeError("keep_reference: the policy was already trained or loaded from a checkpoint; the "
                               "reference must be the initial weights, so keep it right after construction")
        self._reference = ReferenceWeights(self.chunks, offload=offload)
        self._reference_fingerprint = weights_fingerprint(self.export_hf_weights())
        log.info("reference policy kept (%.1f MiB on this rank, %s)", self._reference.num_bytes / 2**20,
                 "CPU memory" if offload else str(self.device))

    def get_reference_logprobs(self, input_ids: torch.Tensor,
                               lengths: torch.Tensor | list[int] | None = None) -> torch.Tensor:
        """``get_logprobs`` with the reference weights swapped in; the policy's weights are restored bit for bit.
        Collective, like ``get_logprobs``."""
        if self._reference is None:
            raise RuntimeError("get_reference_logprobs: no reference policy; call keep_reference() first")
        with self._reference.swapped_in():
            logprobs, _ = self.get_logprobs(input_ids, lengths=lengths)
        return logprobs

    # --------------------------------------------------------------------------------------------------- training
    def train(self, batch: TrainBatch, loss_fn: LossFn) -> dict[str, float]:
        """One optimizer step over this DP rank's ``batch``, micro-batched by ``policy.micro_batching`` and
        ``policy.micro_batch_tokens`` (``micro_batches.py``). Collective.

        Returns (same on every rank): ``loss`` (the step loss, summed over micro-batches and DP ranks), the loss
        function's metrics token-weighted over the step and DP, ``num_tokens`` (total), ``grad_norm`` (before
        clipping), ``lr`` (used by this update), ``skipped`` (1.0 when a non-finite loss or gradient norm skipped
        the update: gradients are dropped and neither the optimizer nor the schedule advance).
        """
        for m in self.model:
            m.train()
            m.zero_grad_buffer()
        self.optimizer.zero_grad()

        s, l = batch.input_ids.shape
        if s == 0:
            # An empty rank would skip the schedule and with it the gradient all-reduce the others wait in.
            raise ValueError("MegatronPolicy.train: this data-parallel rank got an empty batch; every rank needs rows")
        counts = torch.tensor([float(s), float(batch.loss_mask.sum())], dtype=torch.float64, device=self.device)
        if self.layout.dp_size > 1:
            dist.all_reduce(counts, group=self._dp_group())
        normalizer = LossNormalizer(num_sequences=int(counts[0].item()), num_tokens=int(counts[1].item()))

        ids = batch.input_ids.to(self.device, dtype=torch.long)
        # A row ends at its last loss token: later tokens (padding) cannot change an earlier token's log-prob under
        # causal attention. A row without loss tokens keeps one token (it still counts in the normalizer).
        positions = torch.arange(1, l + 1, dtype=torch.float32)
        row_lengths = [max(1, int(n)) for n in (batch.loss_mask.cpu() > 0).float().mul(positions).amax(dim=1)]
        plan = self._plan(row_lengths, l, self.cfg.micro_batch_size, self.cfg.micro_batch_tokens)

        def per_sequence(mb: MicroBatch, t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else mb.select(t).to(self.device, dtype=torch.float32)

        data = []
        for mb in plan:
            data.append({
                **self._model_input(mb, ids),
                "loss_mask": per_sequence(mb, batch.loss_mask),
                "advantages": batch.advantages[mb.indices].to(self.device, dtype=torch.float32),
                "old_logprobs": per_sequence(mb, batch.old_logprobs),
                "ref_logprobs": per_sequence(mb, batch.ref_logprobs),
                "is_weights": per_sequence(mb, batch.is_weights),
            })
        # Megatron divides each micro-batch loss by the number of micro-batches and DDP averages gradients over DP.
        scale = float(len(data) * self.layout.dp_size)
        loss_func = partial(self._train_loss_func, loss_fn=loss_fn, normalizer=normalizer, scale=scale,
                            temperature=self.temperature)

        def forward_step(data_iterator, model):
            mb = next(data_iterator)
            return self._forward(model, mb), partial(loss_func, mb)

        outs = self._run(forward_step, data, forward_only=False)
        metrics = self._reduce_train_metrics(outs)

        grad_norm = self._grad_norm()
        lr_used = self.lr
        finite = math.isfinite(metrics.get("loss", 0.0)) and math.isfinite(grad_norm)
        if finite:
            self._clip(grad_norm)
            self.optimizer.step_with_ready_grads()
            self.scheduler.step(1)
        else:
            log.warning("non-finite loss (%s) or grad norm (%s): update skipped", metrics.get("loss"), grad_norm)
        # Gradients of a skipped step must not leak into the next one; after a good step they are spent.
        for m in self.model:
            m.zero_grad_buffer()
        self.optimizer.zero_grad()

        metrics.update(grad_norm=grad_norm, lr=lr_used, skipped=0.0 if finite else 1.0)
        return metrics

    @staticmethod
    def _train_loss_func(mb: dict, logits: torch.Tensor, *, loss_fn: LossFn, normalizer, scale: float,
                         temperature: float):
        from nemo_igrpo.backends.policy.logprobs import token_entropy, token_logprobs

        # Per sequence ([n, width], as the loss expects), whatever the micro-batch's rows hold.
        layout = mb["layout"]
        logprobs = layout.unpack(token_logprobs(logits, mb["input_ids"], temperature))
        entropy = layout.unpack(token_entropy(logits, temperature)) if loss_fn.needs_entropy else None
        loss, metrics = loss_fn(logprobs, mb["old_logprobs"], mb["advantages"], mb["loss_mask"],
                                normalizer=normalizer, ref_logprobs=mb["ref_logprobs"], entropy=entropy,
                                is_weights=mb["is_weights"])
        reported = {k: v.detach().float() for k, v in metrics.items()}
        reported["loss"] = loss.detach().float()
        if "num_tokens" not in reported:
            reported["num_tokens"] = mb["loss_mask"].sum().detach().float()
        # ``scale`` cancels the schedule's 1/num_microbatches and DDP's 1/dp_size, so that the summed gradient is
        # that of sum(micro-batch losses over all ranks) = the step loss under the global normalizer.
        return loss * scale, reported

    def _reduce_train_metrics(self, outs: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Over micro-batches and DP, then sent to every PP stage: ``loss`` and ``num_tokens`` are summed, keys
        ending in ``/max`` or ``/min`` take the extreme over micro-batches that had tokens, the rest are
        token-weighted means."""
        result: dict[str, float] | None = None
        if self.layout.is_last_stage:
            keys = sorted({k for o in outs for k in o})
            # One vector, one all-reduce per op: [sums | maxima | negated minima].
            sums = torch.zeros(len(keys), dtype=torch.float64, device=self.device)
            extremes = torch.full((len(keys),), -math.inf, dtype=torch.float64, device=self.device)
            for o in outs:
                nt = float(o["num_tokens"])
                for i, k in enumerate(keys):
                    if k not in o:
                        continue
                    v = float(o[k])
                    if k in ("loss", "num_tokens"):
                        sums[i] += v
                    elif k.endswith("/max") or k.endswith("/min"):
                        if nt > 0:
                            extremes[i] = max(float(extremes[i]), v if k.endswith("/max") else -v)
                    else:
                        sums[i] += v * nt
            if self.layout.dp_size > 1:
                # Keys are the loss function's, identical on every DP rank.
                dist.all_reduce(sums, group=self._dp_group())
                dist.all_reduce(extremes, op=dist.ReduceOp.MAX, group=self._dp_group())
            total_nt = float(sums[keys.index("num_tokens")]) if "num_tokens" in keys else 0.0
            result = {}
            for i, k in enumerate(keys):
                if k in ("loss", "num_tokens"):
                    result[k] = float(sums[i])
                elif k.endswith("/max") or k.endswith("/min"):
                    e = float(extremes[i])
                    # No token anywhere: the loss's neutral value (ratio 1) has no meaning to preserve; report 0.
                    result[k] = 0.0 if e == -math.inf else (e if k.endswith("/max") else -e)
                else:
                    result[k] = float(sums[i]) / total_nt if total_nt > 0 else 0.0
        if self.layout.pp_size > 1:
            box = [result]
            dist.broadcast_object_list(box, src=self._pp_last_rank(), group=self._pp_group(),
                                       device=self.device if self.on_gpu else None)
            result = box[0]
        return result or {}

    def _optimizers(self) -> list:
        return list(getattr(self.optimizer, "chained_optimizers", [self.optimizer]))

    @torch.no_grad()
    def _grad_norm(self) -> float:
        """Global L2 norm of the step's gradient (after DP reduction), each parameter counted once."""
        self.optimizer.prepare_grads()
        if self.on_gpu:
            return float(self.optimizer.get_grad_norm())
        # Megatron's get_grad_norm_fp32 allocates its buffers on CUDA: compute it here with the optimizer's own
        # selection (it drops TP-duplicated params like norm weights and the PP-shared embedding copy).
        sq = torch.zeros((), dtype=torch.float64, device=self.device)
        group = None
        for opt in self._optimizers():
            for g in opt.get_main_grads_for_grad_norm():
                sq += g.detach().double().pow(2).sum()
            group = opt.get_grad_stats_parallel_group()
        if group is not None and dist.get_world_size(group) > 1:
            dist.all_reduce(sq, group=group)
        return float(sq.sqrt())

    @torch.no_grad()
    def _clip(self, grad_norm: float) -> None:
        max_norm = self.cfg.optimizer.clip_grad
        if max_norm <= 0 or grad_norm <= 0:
            return
        if self.on_gpu:
            from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

            for opt in self._optimizers():
                params = opt.get_parameters()
                if params:
                    clip_grad_by_total_norm_fp32(params, max_norm, grad_norm)
            return
        coeff = max_norm / (grad_norm + 1.0e-6)
        if coeff < 1.0:
            for opt in self._optimizers():
                for p in opt.get_parameters():
                    if p.grad is not None:
                        p.grad.mul_(coeff)

    # ------------------------------------------------------------------------------------------- optimizer memory
    def optimizer_state_tensors(self) -> list[tuple[dict, Any, torch.Tensor]]:
        """The tensors only the optimizer holds, as ``(container, key, tensor)``: fp32 master copies of bf16
        parameters (``container`` a ``{"param": p}`` stand-in, moved through ``p.data``) and Adam's moments
        (``container`` the parameter's state dict). Master "copies" that share storage with the model's parameters
        (fp32 training, the distributed optimizer's views into the parameter buffer) are the model's and excluded."""
        model_storages = {p.untyped_storage().data_ptr() for m in self.model for p in m.parameters()}
        out: list[tuple[dict, Any, torch.Tensor]] = []
        for opt in self._optimizers():
            inner = getattr(opt, "optimizer", None)
            if inner is None:
                continue
            for group in inner.param_groups:
                for p in group["params"]:
                    if p.untyped_storage().data_ptr() not in model_storages:
                        out.append(({"param": p}, "param", p))
                    state = inner.state.get(p, {})
                    for key, value in state.items():
                        if torch.is_tensor(value) and value.dim() > 0:
                            out.append((state, key, value))
        return out

    def _move_optimizer_state(self, device: torch.device) -> None:
        for container, key, tensor in self.optimizer_state_tensors():
            if tensor.device == device:
                continue
            if key == "param":
                p = container["param"]
                p.grad = None  # the step's gradient is spent (train() zeroed it); it must not pin device memory
                p.data = p.data.to(device, non_blocking=True)
            else:
                container[key] = tensor.to(device, non_blocking=True)
        if self.on_gpu:
            torch.cuda.synchronize()

    def offload_optimizer_state(self) -> None:
        """Optimizer-only tensors (``optimizer_state_tensors``) to host memory; see ``PolicyInterface``."""
        self._move_optimizer_state(torch.device("cpu"))

    def reload_optimizer_state(self) -> None:
        self._move_optimizer_state(self.device)

    # ------------------------------------------------------------------------------------------------------ refit
    def export_hf_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Full weights under HF names (TP-gathered, all PP stages). Collective: every rank must exhaust it."""
        from nemo_igrpo.backends.policy.weights import export_hf_state_dict

        return export_hf_state_dict(self.chunks, self.hf_config)

    # ------------------------------------------------------------------------------------------------ checkpoints
    def _model_sharded_state_dict(self, metadata: dict) -> dict:
        # From the unwrapped model: tensor keys then do not depend on the DDP wrapper.
        if len(self.model) == 1:
            return {"model": self.chunks[0].sharded_state_dict(metadata=metadata)}
        return {f"model{i}": m.sharded_state_dict(metadata=metadata) for i, m in enumerate(self.chunks)}

    @staticmethod
    def _sharded_metadata() -> dict:
        # Fully reshardable distributed-optimizer format; no "chained_" key prefix so plain and chained optimizers
        # produce the same keys.
        return {"distrib_optim_sharding_type": "fully_reshardable", "chained_optim_avoid_prefix": True}

    def _optimizer_has_state(self) -> bool:
        return any(len(opt.optimizer.state) > 0 for opt in self._optimizers()
                   if getattr(opt, "optimizer", None) is not None)

    def _rng_object(self, state: dict | None):
        from megatron.core.dist_checkpointing.mapping import ShardedObject

        world = dist.get_world_size() if dist.is_initialized() else 1
        rank = dist.get_rank() if dist.is_initialized() else 0
        return ShardedObject("rng_state", state, (world,), (rank,), replica_id=0)

    def save_checkpoint(self, path: str) -> None:
        """Model, optimizer (when it has state), LR schedule and per-rank RNG states into directory ``path``
        with megatron ``dist_checkpointing`` (torch_dist format). Collective; returns after all ranks finished."""
        import os

        from megatron.core import dist_checkpointing

        meta = self._sharded_metadata()
        model_sd = self._model_sharded_state_dict(meta)
        has_opt = self._optimizer_has_state()
        sd: dict[str, Any] = dict(model_sd)
        if has_opt:
            sd["optimizer"] = self.optimizer.sharded_state_dict(model_sd, is_loading=False, metadata=meta)
        sd["scheduler"] = self.scheduler.state_dict()
        sd["rng_state"] = self._rng_object(_capture_rng_state())
        sd["policy_meta"] = {
            "format": CHECKPOINT_FORMAT,
            "world_size": dist.get_world_size() if dist.is_initialized() else 1,
            "tp": self.layout.tp_size,
            "pp": self.layout.pp_size,
            "has_optimizer": has_opt,
            "distributed_optimizer": self.use_distributed_optimizer,
            "reference_fingerprint": self._reference_fingerprint,
        }
        if (not dist.is_initialized() or dist.get_rank() == 0):
            os.makedirs(path, exist_ok=True)
        if dist.is_initialized():
            dist.barrier()
        dist_checkpointing.save(sd, path)
        if dist.is_initialized():
            dist.barrier()

    def load_checkpoint(self, path: str, load_optimizer: bool = True) -> None:
        """Inverse of ``save_checkpoint``; TP/PP/DP may differ from the saving run (dist_checkpointing reshards).

        Optimizer state reshards too (the plain optimizer's state is stored per model tensor). RNG states are
        restored only when the world size is unchanged (they are per rank); otherwise kept as seeded. Collective.
        The directory is verified first and read without running pickled code (``safe_dist_checkpoint``): a damaged
        or crafted one raises ``DamagedCheckpointError`` / ``UnsafeCheckpointError`` naming the file.
        """
        from megatron.core import dist_checkpointing

        from nemo_igrpo.backends.safe_checkpoint import safe_dist_checkpoint

        with safe_dist_checkpoint(path):
            common = dist_checkpointing.load_common_state_dict(path)
        pmeta = common.get("policy_meta", {})
        if pmeta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: not a policy checkpoint of format {CHECKPOINT_FORMAT} (got {pmeta!r})")
        saved_reference = pmeta.get("reference_fingerprint")
        if self._reference is not None and saved_reference is not None \
                and saved_reference != self._reference_fingerprint:
            raise ValueError(f"{path}: written by a run whose KL reference (its initial weights) differs from this "
                             "run's (policy.model_path holds other weights); a resumed run must keep its reference")
        world = dist.get_world_size() if dist.is_initialized() else 1
        same_world = pmeta.get("world_size") == world
        with_opt = load_optimizer and bool(pmeta.get("has_optimizer"))

        meta = self._sharded_metadata()
        model_sd = self._model_sharded_state_dict(meta)
        sd: dict[str, Any] = dict(model_sd)
        if with_opt:
            sd["optimizer"] = self.optimizer.sharded_state_dict(model_sd, is_loading=True, metadata=meta)
        if same_world:
            sd["rng_state"] = self._rng_object(None)
        with safe_dist_checkpoint(path, verify=False):
            state = dist_checkpointing.load(sd, path)

        if len(self.model) == 1:
            self.model[0].module.load_state_dict(state["model"], strict=True)
        else:
            for i, m in enumerate(self.model):
                m.module.load_state_dict(state[f"model{i}"], strict=True)
        if with_opt:
            self.optimizer.load_state_dict(state["optimizer"])
        else:
            # Main (fp32) copies of bf16 params must follow the loaded model weights.
            self.optimizer.reload_model_params()
            if load_optimizer and not pmeta.get("has_optimizer"):
                log.info("%s has no optimizer state (saved before the first update)", path)
        # Megatron's load_state_dict *adds* the saved step count to the current one.
        self.scheduler.num_steps = 0
        self.scheduler.load_state_dict(state["scheduler"])
        self._loaded_checkpoint = True
        if same_world:
            _restore_rng_state(state["rng_state"])
        elif dist.is_initialized() and dist.get_rank() == 0:
            log.warning("%s was saved with world size %s, now %s: RNG states not restored", path,
                        pmeta.get("world_size"), world)
        if dist.is_initialized():
            dist.barrier()


# ------------------------------------------------------------------------------------------------------- RNG state
def _capture_rng_state() -> dict[str, Any]:
    """This rank's RNG states as tensors and plain numbers only, so that ``torch.load(weights_only=True)`` loads
    them (numpy arrays and Python tuples would need unpickling)."""
    from megatron.core import tensor_parallel

    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_name": str(np_name),
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "python_version": int(py_version),
        "python_state": torch.tensor(py_state, dtype=torch.int64),
        "python_gauss": py_gauss,
        "tracker": {k: v.clone() for k, v in tensor_parallel.get_cuda_rng_tracker().get_states().items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _restore_rng_state(state: dict[str, Any]) -> None:
    from megatron.core import tensor_parallel

    torch.set_rng_state(state["torch"])
    np.random.set_state((state["numpy_name"], state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    random.setstate((state["python_version"], tuple(int(x) for x in state["python_state"].tolist()),
                     state["python_gauss"]))
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])
