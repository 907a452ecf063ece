"""Per-GPU memory of a recipe, before asking a cluster for it: what the policy and the colocated generator hold, and
which of them exist at the same time. Printed by ``igrpo train --dry-run`` (``trainer/plan.py``).

Pure Python arithmetic over the model's shape (read from ``policy.model_path/config.json``, or the built-in shape of
the recipes' models when that directory is not on this machine); no torch, megatron or GPU. The byte counts follow
what megatron-core allocates:

* policy weights: the parameters of this rank's shard in the training dtype (TP splits every matrix, the vocabulary
  and Mamba's per-head vectors; norms over the hidden size are replicated; PP splits the layers);
* gradients: Megatron DDP's main-grad buffer, fp32 (``grad_reduce_in_fp32``): 4 bytes per parameter;
* optimizer state: Adam's two moments, fp32, plus an fp32 master copy when training in bf16 (8 or 12 bytes per
  parameter), divided by DP with the distributed optimizer;
* KL reference (``algorithm.kl_coef`` > 0): a copy of this rank's weights, on the device for the whole run unless
  ``policy.reference_offload`` keeps it in host memory (``backends/policy/reference.py``);
* activations: the tensors a training micro-batch saves for its backward pass, from the operations megatron-core's
  local layers run (``training_activation_bytes``; the test measures them on a tiny model). With Transformer Engine on
  GPU the score matrix is never stored (flash attention): that variant is an estimate until measured on a GPU;
* vLLM: its weights (every layer, split by the same TP) and its KV cache, which together fill
  ``generation.gpu_memory_utilization`` of the GPU while generating and are released by sleep mode otherwise.

The phases (see ``trainer/lifecycle.py``): while generating, the policy's weights, gradient buffer and (unless
offloaded) optimizer state stay where they are beside the whole engine; while computing log-probs and training the
engine sleeps; during a refit the engine's weights are awake beside the policy and one refit bucket.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nemo_igrpo.algorithms.igrpo import TRUNCATION_MARKER
from nemo_igrpo.backends.policy.architecture import (ATTENTION, MAMBA, ArchitectureError, ParameterTensor, field,
                                                     is_hybrid, layer_pattern, num_heads, parameter_tensors)

GIB = 1024**3
# Tokens a Stage-2 prompt may have beyond its parts counted separately (tokenization at the joins of prompt, template
# and draft). Generous: a join changes at most a couple of tokens.
CHAT_TEMPLATE_ALLOWANCE = 64
# VLLMGenerator's default refit bucket (converted copies in flight during a refit).
REFIT_BUCKET_BYTES = 512 * 1024**2


# ----------------------------------------------------------------------------------------------- sequence lengths
@dataclass(frozen=True)
class SequenceBudget:
    """Token lengths a run can reach. Stage-2 prompts carry a draft, so they are the longest."""

    prompt: int  # single-shot prompt (GRPO, Stage 1, validation): data.max_prompt_tokens
    stage2_prompt: int  # iGRPO refinement prompt; 0 for GRPO
    completion: int  # generation.max_new_tokens
    max_model_len: int  # what the vLLM engine is built with: generation.max_model_len, or longest_sequence

    @property
    def longest_prompt(self) -> int:
        return max(self.prompt, self.stage2_prompt)

    @property
    def longest_sequence(self) -> int:
        """Prompt + completion of the longest sequence generated, scored and trained on."""
        return self.longest_prompt + self.completion


def stage2_overhead_tokens(cfg) -> int:
    """An upper bound on what a Stage-2 prompt adds besides the single-shot prompt it carries (``{prompt}``, at most
    ``data.max_prompt_tokens`` with its chat template) and the draft's tokens: the template's own text and the
    truncation marker, counted in UTF-8 bytes (no tokenizer makes more tokens than bytes: byte-level BPE covers at
    least one byte per token), and an allowance for tokens that merge differently at the joins."""
    template = re.sub(r"\{(prompt|draft)\}", "", cfg.algorithm.refinement.template)
    return len(template.encode("utf-8")) + len(TRUNCATION_MARKER.encode("utf-8")) + CHAT_TEMPLATE_ALLOWANCE


def sequence_budget(cfg) -> SequenceBudget:
    """The run's token lengths from its config (``cfg``: ``nemo_igrpo.config.Config``)."""
    prompt = cfg.data.max_prompt_tokens
    stage2 = 0
    if cfg.algorithm.refinement.enabled:
        stage2 = prompt + cfg.algorithm.refinement.max_draft_tokens + stage2_overhead_tokens(cfg)
    completion = cfg.generation.max_new_tokens
    longest = max(prompt, stage2) + completion
    return SequenceBudget(prompt=prompt, stage2_prompt=stage2, completion=completion,
                          max_model_len=cfg.generation.max_model_len or longest)


# ------------------------------------------------------------------------------------------------- model shapes
# The recipes' models, for a dry run on a machine without their checkpoints (values from their published
# config.json files; the parameter totals 7,615,616,512, 8,100,852,736 and 494,032,768 are checked in the tests;
# SmolLM2's against the directory `igrpo prepare-model` writes, tests/models).
_QWEN25_7B = dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                  num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False)
BUILTIN_SHAPES: dict[str, dict[str, Any]] = {
    "Qwen2.5-0.5B-Instruct": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                  num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                  tie_word_embeddings=True, max_position_embeddings=32768),
    "SmolLM2-135M-Instruct": dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                  num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                                  tie_word_embeddings=True, max_position_embeddings=8192),
    "OpenReasoning-Nemotron-7B": {**_QWEN25_7B, "max_position_embeddings": 65536},
    "DeepSeek-R1-Distill-Qwen-7B": {**_QWEN25_7B, "max_position_embeddings": 131072},
    "Nemotron-H-8B-Base-8K": dict(
        model_type="nemotron_h", vocab_size=131072, hidden_size=4096, num_hidden_layers=52,
        hybrid_override_pattern="M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-", num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, intermediate_size=21504, mamba_num_heads=128, mamba_head_dim=64,
        ssm_state_size=128, n_groups=8, conv_kernel=4, tie_word_embeddings=False, max_position_embeddings=8192),
}


@dataclass(frozen=True)
class ModelShape:
    model_type: str
    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    attention_layers: int  # layers with a KV cache (all of them for Llama/Qwen2)
    max_position_embeddings: int
    tensors: tuple[ParameterTensor, ...]
    pattern: str = ""  # hybrid models: the layer pattern (architecture.layer_pattern), one symbol per layer

    @property
    def total_params(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def tied(self) -> bool:
        return not any(t.name == "lm_head.weight" for t in self.tensors)


def shape_from_config(c: dict[str, Any]) -> ModelShape:
    """The sizes the plan needs, from a config.json dict (parameter tensors: ``architecture.parameter_tensors``)."""
    heads, kv = num_heads(c)
    h = int(field(c, "hidden_size"))
    hybrid = is_hybrid(c)
    return ModelShape(model_type=str(field(c, "model_type")), hidden=h, ffn=int(field(c, "intermediate_size", 0)),
                      layers=len(layer_pattern(c)) if hybrid else int(field(c, "num_hidden_layers")), heads=heads,
                      kv_heads=kv, head_dim=int(field(c, "head_dim", h // heads)), vocab=int(field(c, "vocab_size")),
                      attention_layers=(layer_pattern(c).count(ATTENTION) if hybrid
                                        else int(field(c, "num_hidden_layers"))),
                      max_position_embeddings=int(field(c, "max_position_embeddings", 0)),
                      tensors=tuple(parameter_tensors(c)), pattern=layer_pattern(c) if hybrid else "")


def _demo_shape() -> dict[str, Any]:
    from nemo_igrpo.backends.tiny_model import demo_model_config
    from nemo_igrpo.data.tokenizer import build_demo_tokenizer

    return demo_model_config(vocab_size=len(build_demo_tokenizer())).to_dict()


def model_shape(model_path: str, model_config: dict | None = None) -> tuple[ModelShape | None, str]:
    """The shape of ``model_path``'s model and where it came from: ``model_config`` (its config.json, as the dry run
    read it), else the built-in shape of a recipe model with that directory name (``sft``: the demo's warm start),
    else None with the reason."""
    path = Path(model_path) if model_path else None
    if model_config is not None:
        return shape_from_config(model_config), f"{path / 'config.json' if path else 'config.json'}"
    name = path.name if path is not None else ""
    if name in BUILTIN_SHAPES:
        return shape_from_config(BUILTIN_SHAPES[name]), f"built-in shape of {name} (no config.json at {path})"
    if name == "sft":
        return shape_from_config(_demo_shape()), f"built-in shape of the demo model (no config.json at {path})"
    return None, f"no config.json at {model_path or '(policy.model_path is empty)'} and no built-in shape for it"


def params_per_rank(shape: ModelShape, tp: int, pp: int) -> list[int]:
    """Parameters held by one TP rank of each pipeline stage. Layers are split evenly across stages; the embedding
    sits on the first stage, the final norm and output layer on the last (a tied output layer is a second copy of
    the embedding there when PP > 1)."""
    per_stage = [0] * pp
    layers_per_stage = shape.layers // pp
    for t in shape.tensors:
        share = t.numel // tp if t.tp_split else t.numel
        if t.layer is not None:
            per_stage[min(t.layer // layers_per_stage, pp - 1)] += share
        elif "embed" in t.name:
            per_stage[0] += share
            if shape.tied and pp > 1:
                per_stage[-1] += share
        else:
            per_stage[-1] += share
    return per_stage


# ------------------------------------------------------------------------------------------------ byte counts
def dtype_bytes(precision: str) -> int:
    """Training dtype: ``auto`` is bf16 on GPU, the machine a plan is for."""
    return 4 if precision == "fp32" else 2


def optimizer_bytes_per_param(param_bytes: int) -> int:
    """Adam's fp32 moments (8 bytes), plus an fp32 master copy when the parameters are not fp32 themselves."""
    return 8 + (4 if param_bytes != 4 else 0)


def _layer_activation_bytes(shape: ModelShape, rows: int, width: int, tp: int, e: int, flash: bool) -> int:
    """One layer's saved tensors for a micro-batch (see ``saved_activation_bytes``)."""
    h = shape.hidden
    heads = shape.heads // tp
    kv = max(1, shape.kv_heads // tp)
    hd = shape.head_dim
    tokens = rows * width
    if flash:
        attention = tokens * ((heads + 2 * kv + heads) * hd * e + heads * 4)
    else:
        probs = 4 + (e if e != 4 else 0)
        attention = tokens * 4 * heads * hd * e + rows * heads * width * width * probs
    return tokens * (6 * h * e + 2 * 4 + 5 * (shape.ffn // tp) * e) + attention + 4 * width * hd * e


def saved_activation_bytes(shape: ModelShape, rows: int, width: int, *, tp: int = 1, pp: int = 1,
                           param_bytes: int = 2, recompute: bool = False, flash: bool = False,
                           unrecomputed_layers: int = 0) -> int:
    """Bytes a training micro-batch of ``rows`` x ``width`` tokens saves for its backward pass on the last pipeline
    stage (the one that also holds the loss), Llama/Qwen2 layers.

    Per token and layer, megatron-core's local layers save (``e`` = bytes of the training dtype): the two norms'
    inputs, their normalised outputs and the linear layers' inputs (6 hidden-size vectors) and two fp32 inverse RMS;
    query, expanded key and value, and the attention output (4 x heads x head_dim); the softmax probabilities
    (heads x width, fp32, plus a copy in the training dtype when that is not fp32); the MLP's fused gate/up output,
    the activation's output and intermediate, and the down projection's input (5 x ffn). Per layer and micro-batch,
    the rotary cos/sin for query and key (4 x width x head_dim). After the last layer: the final norm and output
    layer (3 hidden-size vectors, one fp32 RMS), the token ids (int64) and, with TP > 1, the vocab-parallel
    embedding's out-of-shard mask (a byte per token), the fp32 softmax of the vocab-parallel cross entropy (vocab / TP
    per predicted token) with its mask and targets, and the boolean causal mask.

    ``recompute`` (Megatron full recompute, one layer per checkpoint): each layer keeps its input only (and the
    rotary table is kept once, as a checkpoint argument), except ``unrecomputed_layers`` of them, which keep all their
    activations (Nemotron-H's Mamba layers, see ``recompute_exempt_layers``). ``flash`` (Transformer Engine): no score
    matrix, keys and values stored unexpanded, the softmax statistics in fp32; an estimate, not measured.
    """
    e = param_bytes
    tokens = rows * width
    layers = shape.layers // pp
    full = min(unrecomputed_layers, layers) if recompute else layers
    kept = full * _layer_activation_bytes(shape, rows, width, tp, e, flash)
    if full < layers:
        kept += (layers - full) * tokens * shape.hidden * e + width * shape.head_dim * e
    predicted = rows * (width - 1)
    final = (tokens * (3 * shape.hidden * e + 4) + tokens * (8 + (1 if tp > 1 else 0))
             + predicted * ((shape.vocab // tp) * 4 + 1 + 8) + width * width)
    return kept + final


def recompute_exempt_layers(shape: ModelShape, pp: int) -> int:
    """Layers of the last pipeline stage that ``policy.activation_checkpointing`` does not recompute: none for
    GPTModel (full recompute); for the hybrid model its Mamba layers, since megatron-core 0.16.1's hybrid stack only
    recomputes attention cores and MLPs (``backends/policy/model.recompute_settings``)."""
    if not shape.pattern:
        return 0
    per_stage = len(shape.pattern) // pp
    return shape.pattern[(pp - 1) * per_stage:].count(MAMBA)


def training_activation_bytes(shape: ModelShape, rows: int, width: int, *, tp: int = 1, pp: int = 1,
                              param_bytes: int = 2, recompute: bool = False, flash: bool = False) -> int:
    """Peak activation memory of a training micro-batch: what it saves (``saved_activation_bytes``) and, with
    recompute, the one layer the backward pass rebuilds at a time."""
    exempt = recompute_exempt_layers(shape, pp)
    saved = saved_activation_bytes(shape, rows, width, tp=tp, pp=pp, param_bytes=param_bytes, recompute=recompute,
                                   flash=flash, unrecomputed_layers=exempt)
    rebuilt = recompute and exempt < shape.layers // pp
    return saved + (_layer_activation_bytes(shape, rows, width, tp, param_bytes, flash) if rebuilt else 0)


def logprob_transient_bytes(shape: ModelShape, tokens: int, *, tp: int = 1, param_bytes: int = 2) -> int:
    """Largest transient of a forward-only (log-prob) micro-batch: its logits over the vocabulary shard and the fp32
    copies the log-softmax makes (about three). An estimate; nothing is kept for a backward pass."""
    return tokens * (shape.vocab // tp) * (param_bytes + 3 * 4)


def kv_cache_bytes_per_token(shape: ModelShape, tp: int, kv_bytes: int = 2) -> int:
    """Keys and values of one token in every attention layer, for one vLLM TP rank (heads split by TP, replicated
    when TP exceeds the number of KV heads)."""
    return 2 * shape.attention_layers * max(1, shape.kv_heads // tp) * shape.head_dim * kv_bytes


# --------------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per GPU (the heaviest pipeline stage), and the phases in which they coexist."""

    params: int
    weights: int
    gradients: int
    optimizer: int
    optimizer_offloaded: bool
    reference: int  # the KL reference's copy of the weights on this GPU (0: no KL penalty, or kept in host memory)
    activations: int
    logprob_transient: int
    micro_batch: tuple[int, int]  # rows x width of the largest training micro-batch
    vllm_weights: int
    vllm_total: int  # gpu_memory_utilization x GPU memory: weights + KV cache + vLLM's own workspace
    kv_bytes_per_token: int
    refit_transient: int
    gpu_bytes: int

    @property
    def kv_cache(self) -> int:
        """At most this much KV cache (vLLM also subtracts its profiled activation peak)."""
        return max(0, self.vllm_total - self.vllm_weights)

    @property
    def training_state(self) -> int:
        """What the policy keeps on the GPU between phases (the KL reference included: it is never offloaded by
        the lifecycle)."""
        return self.weights + self.gradients + self.optimizer + self.reference

    def phases(self) -> dict[str, tuple[str, int]]:
        resident = self.weights + self.gradients + self.reference
        optimizer_while_generating = 0 if self.optimizer_offloaded else self.optimizer
        return {
            "generate": ("policy weights + gradients" + ("" if self.optimizer_offloaded else " + optimizer")
                         + (" + KL reference" if self.reference else "") + " + vLLM (weights + KV cache)", resident + optimizer_while_generating + self.vllm_total),
            "log-probs": ("policy state + log-prob transient (vLLM asleep)",
                          self.training_state + self.logprob_transient),
            "train": ("policy state + activations (vLLM asleep)", self.training_state + self.activations),
            "refit": ("policy state + vLLM weights + refit bucket and gathered tensor",
                      self.training_state + self.vllm_weights + self.refit_transient),
        }


def micro_batch_shape(cfg, longest: int) -> tuple[int, int]:
    """Rows x width of the largest training micro-batch: rows of at most the longest sequence, as many as the token
    budget holds (``policy.micro_batch_tokens``, default ``micro_batch_size`` x the longest sequence)."""
    budget = getattr(cfg.policy, "micro_batch_tokens", 0) or cfg.policy.micro_batch_size * longest
    return max(1, budget // longest), longest


def build_memory_plan(cfg, shape: ModelShape, tp: int, pp: int, dp: int, gpu_bytes: int) -> MemoryPlan:
    e = dtype_bytes(cfg.policy.precision)
    params = max(params_per_rank(shape, tp, pp))
    optimizer = params * optimizer_bytes_per_param(e)
    if cfg.policy.optimizer.use_distributed_optimizer:
        optimizer //= dp
    on_device_reference = cfg.algorithm.kl_coef > 0 and not cfg.policy.reference_offload
    budget = sequence_budget(cfg)
    rows, width = micro_batch_shape(cfg, budget.longest_sequence)
    activations = training_activation_bytes(shape, rows, width, tp=tp, pp=pp, param_bytes=e,
                                            recompute=cfg.policy.activation_checkpointing, flash=e == 2)
    lp_rows = max(1, (cfg.policy.logprob_micro_batch_size or cfg.policy.micro_batch_size))
    logprob = logprob_transient_bytes(shape, lp_rows * width, tp=tp, param_bytes=e)
    vllm_weights = sum(t.numel // tp if t.tp_split else t.numel for t in shape.tensors) * 2
    largest = max(t.numel for t in shape.tensors) * e  # the export gathers one full tensor at a time
    vllm = cfg.generation.backend == "vllm"
    return MemoryPlan(
        params=params, weights=params * e, gradients=params * 4, optimizer=optimizer,
        optimizer_offloaded=cfg.policy.offload_optimizer_during_generation,
        reference=params * e if on_device_reference else 0, activations=activations,
        logprob_transient=logprob, micro_batch=(rows, width),
        vllm_weights=vllm_weights if vllm else 0,
        vllm_total=int(cfg.generation.gpu_memory_utilization * gpu_bytes) if vllm else 0,
        kv_bytes_per_token=kv_cache_bytes_per_token(shape, tp) if vllm else 0,
        refit_transient=(REFIT_BUCKET_BYTES + largest) if vllm else largest, gpu_bytes=gpu_bytes)


def _gib(n: int) -> str:
    """GiB with one decimal; MiB below 1 GiB (the demo's numbers would all read 0.0 GiB)."""
    return f"{n / GIB:7.1f} GiB" if n >= GIB else f"{n / 1024**2:7.1f} MiB"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def memory_section(plan) -> list[str]:
    """The dry run's sections on sequence lengths and per-GPU memory (``plan``: ``trainer.plan.Plan``): one line per
    allocation, then what coexists in each phase and the peak against the GPU; warnings go to the plan's."""
    cfg = plan.cfg
    budget = sequence_budget(cfg)
    lines = ["# sequence lengths",
             f"longest prompt            {budget.longest_prompt:,} tokens"
             + (f" (Stage 2: <= {budget.prompt:,} prompt + {cfg.algorithm.refinement.max_draft_tokens:,} draft + "
                f"<= {stage2_overhead_tokens(cfg):,} template)" if budget.stage2_prompt else ""),
             f"longest sequence          {budget.longest_sequence:,} tokens (+ {budget.completion:,} completion)",
             f"vLLM max_model_len        {budget.max_model_len:,}"
             + (" (generation.max_model_len)" if cfg.generation.max_model_len else " (derived)"), "",
             f"# memory plan per GPU ({plan.gpu_memory_gib:g} GiB GPUs; --gpu-memory-gib to change)"]
    if plan.layout is None:
        return lines + ["not available: the layout does not fit the world size (see problems)"]
    tp, pp, dp = plan.layout.tp, plan.layout.pp, plan.layout.dp
    try:
        shape, source = model_shape(cfg.policy.model_path, plan.model_config)
    except (ArchitectureError, KeyError, ValueError, TypeError) as err:
        return lines + [f"not available: the model's config.json cannot be sized ({err})"]
    if shape is None:
        return lines + [f"not available: {source}"]
    gpu_bytes = int(plan.gpu_memory_gib * GIB)
    mem = build_memory_plan(cfg, shape, tp, pp, dp, gpu_bytes)
    e = dtype_bytes(cfg.policy.precision)
    rows, width = mem.micro_batch
    vllm = cfg.generation.backend == "vllm"
    lines += [
        f"model                     {_count(shape.total_params)} parameters ({shape.model_type}), from {source}",
        f"  on this GPU             {_count(mem.params)} (TP {tp} x PP {pp}, heaviest stage)",
        f"policy weights          {_gib(mem.weights)}   {'bf16' if e == 2 else 'fp32'}, {e} B/param",
        f"gradients               {_gib(mem.gradients)}   fp32 main-grad buffer, 4 B/param",
        f"optimizer state         {_gib(mem.optimizer)}   {optimizer_bytes_per_param(e)} B/param"
        + (f" / DP {dp} (distributed optimizer)" if cfg.policy.optimizer.use_distributed_optimizer else "")
        + (", in host memory while generating" if mem.optimizer_offloaded else ""),
    ]
    if cfg.algorithm.kl_coef > 0:
        lines.append(f"KL reference            {_gib(mem.reference)}   copy of the initial weights (algorithm.kl_coef)"
                     if mem.reference else
                     "KL reference            in host memory (policy.reference_offload): no copy on the GPU")
    recompute = ""
    if cfg.policy.activation_checkpointing:
        recompute = (f", selective recompute (attention cores and MLPs; the {recompute_exempt_layers(shape, pp)} "
                     "Mamba layers of the stage keep their activations)" if shape.pattern else ", full recompute")
    lines += [
        f"activations (train)     {_gib(mem.activations)}   micro-batch {rows} x {width:,} tokens{recompute}"
        + (", flash attention (estimate)" if e == 2 else ""),
        f"log-prob transient      {_gib(mem.logprob_transient)}   logits + fp32 log-softmax of a micro-batch "
        "(estimate)",
    ]
    if is_hybrid(plan.model_config or {"model_type": shape.model_type}):
        lines.append("  note: activations use the attention/MLP layer model for every layer (rough for Mamba layers)")
    if vllm:
        kv_tokens = mem.kv_cache // mem.kv_bytes_per_token if mem.kv_bytes_per_token else 0
        lines += [
            f"vLLM weights            {_gib(mem.vllm_weights)}   bf16, every layer, TP {tp}",
            f"vLLM KV cache        <= {_gib(mem.kv_cache)}   gpu_memory_utilization "
            f"{cfg.generation.gpu_memory_utilization:g} x GPU - weights; {mem.kv_bytes_per_token:,} B/token -> "
            f"{kv_tokens:,} tokens = {kv_tokens // max(1, budget.max_model_len):,} sequences of max_model_len",
        ]
        if shape.attention_layers < shape.layers:
            lines.append("  note: Mamba layers also hold a fixed state per sequence (not counted)")
    lines += [f"refit transient         {_gib(mem.refit_transient)}   largest gathered tensor"
              + (" + one refit bucket" if vllm else ""), "", "# what coexists (trainer/lifecycle.py)"]
    phases = mem.phases()
    if not vllm:
        phases.pop("generate")
        lines.append("generation              HF backend (CPU): no engine memory on the GPU")
    for name, (what, total) in phases.items():
        lines.append(f"{name:<10}{_gib(total)}   {what}")
    peak_name, (_, peak) = max(phases.items(), key=lambda kv: kv[1][1])
    lines.append(f"peak: {peak_name}, {_gib(peak).strip()} of {plan.gpu_memory_gib:g} GiB"
                 + (": fits" if peak <= gpu_bytes else ": does not fit"))
    if peak > gpu_bytes:
        plan.warnings.append(f"memory plan: the {peak_name} phase needs about {peak / GIB:.1f} GiB per GPU, more than "
                             f"{plan.gpu_memory_gib:g} GiB (policy.tensor_model_parallel_size, "
                             "policy.micro_batch_tokens, policy.activation_checkpointing, "
                             "generation.gpu_memory_utilization, policy.offload_optimizer_during_generation)")
    if budget.longest_sequence > shape.max_position_embeddings > 0:
        plan.warnings.append(f"the longest sequence ({budget.longest_sequence:,} tokens) exceeds the model's "
                             f"max_position_embeddings ({shape.max_position_embeddings:,})")
    return lines
