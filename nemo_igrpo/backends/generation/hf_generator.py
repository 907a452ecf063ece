"""Rollout generation with Hugging Face transformers on CPU (tests and the laptop demo).

A hand-written decoding loop rather than ``model.generate``: it needs the log-prob of every sampled token under
exactly ``log_softmax(logits / T)`` (before top-p/top-k), one explicit ``torch.Generator`` for reproducibility, and
nothing of ``generate``'s logits processors that would silently change the distribution.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from nemo_igrpo.backends.generation.interface import GenerationInterface, GenerationOutput, SamplingParams


def _as_id_set(value) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, int):
        return {value}
    return {int(v) for v in value}


def filter_logits(scaled: torch.Tensor, top_p: float = 1.0, top_k: int = -1) -> torch.Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf. ``scaled`` is [B, V], already divided by
    the temperature. The most likely token always survives."""
    out = scaled
    if top_k is not None and 0 < top_k < scaled.shape[-1]:
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Mass strictly before each token: a token is kept while the nucleus is not yet full.
        before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def _align_with_trainer(model) -> None:
    """Where transformers' maths departs from the trainer's (megatron-core) and vLLM's, follow theirs: the mapping
    module of the architecture knows how (Nemotron-H: no dt clamp, see ``nemotron_h.align_hf_model``)."""
    from nemo_igrpo.backends.conversion import get_mapping, supported_model_types

    model_type = getattr(model.config, "model_type", None)
    if model_type in supported_model_types():
        align = getattr(get_mapping(model_type), "align_hf_model", None)
        if align is not None:
            align(model)


def _on_disk_aliases(config, names) -> dict[str, str]:
    """On-disk HF name -> this module's name, where transformers renames weights when loading them."""
    from nemo_igrpo.backends.conversion import get_mapping, supported_model_types

    if getattr(config, "model_type", None) not in supported_model_types():
        return {}
    canonical = get_mapping(config.model_type).canonical_hf_name
    return {canonical(n): n for n in names if canonical(n) != n}


class HFGenerator(GenerationInterface):
    """``GenerationInterface`` on a transformers causal LM.

    ``model``: a model directory (safetensors weights; ``trust_remote_code`` off unless asked) or a loaded
    ``PreTrainedModel``, which is used as is (no copy), so a caller's in-place weight changes are seen too. A
    Nemotron-H model is set to the trainer's step-size rule (no dt clamp; ``nemotron_h.align_hf_model``).
    Prompts are processed ``batch_size`` at a time, left-padded. Generation stops at ``sampling.stop_token_ids`` and
    always at the model's EOS ids (``eos_token_ids`` overrides them).
    """

    def __init__(
        self,
        model,
        batch_size: int = 64,
        trust_remote_code: bool = False,
        eos_token_ids: int | Iterable[int] | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        if isinstance(model, (str, Path)):
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(
                str(model), trust_remote_code=trust_remote_code, dtype=dtype, use_safetensors=True
            )
        self.model = model
        self.model.eval()
        _align_with_trainer(self.model)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        if eos_token_ids is None:
            gen_cfg = getattr(model, "generation_config", None)
            eos_token_ids = getattr(gen_cfg, "eos_token_id", None)
            if eos_token_ids is None:
                eos_token_ids = model.config.eos_token_id
        self.eos_token_ids = _as_id_set(eos_token_ids)
        pad = model.config.pad_token_id
        # Padded positions are masked out, so any valid id serves as filler.
        self.pad_token_id = int(pad) if pad is not None else 0

    # -- generation -------------------------------------------------------------------------------------------------

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingParams) -> GenerationOutput:
        """One completion per prompt; see ``GenerationInterface.generate``. The same ``sampling.seed``, weights and
        batch_size give the same output whatever the global RNG state."""
        if sampling.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {sampling.temperature}")
        if any(len(p) == 0 for p in prompt_ids):
            raise ValueError("empty prompt: every prompt needs at least one token")
        stops = self.eos_token_ids | _as_id_set(sampling.stop_token_ids)
        gen = torch.Generator(device="cpu").manual_seed(int(sampling.seed))
        out = GenerationOutput(token_ids=[], logprobs=[], finish_reasons=[])
        for start in range(0, len(prompt_ids), self.batch_size):
            toks, lps, reasons = self._generate_batch(prompt_ids[start : start + self.batch_size], sampling, stops, gen)
            out.token_ids.extend(toks)
            out.logprobs.extend(lps)
            out.finish_reasons.extend(reasons)
        return out

    def _choose(self, logits: torch.Tensor, sampling: SamplingParams, gen: torch.Generator):
        logits = logits.float()
        if sampling.temperature == 0:
            tok = torch.argmax(logits, dim=-1)
            logp = torch.log_softmax(logits, dim=-1)
        else:
            scaled = logits / sampling.temperature
            logp = torch.log_softmax(scaled, dim=-1)
            probs = torch.softmax(filter_logits(scaled, sampling.top_p, sampling.top_k), dim=-1)
            tok = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
        return tok, logp.gather(-1, tok[:, None]).squeeze(-1)

    @torch.inference_mode()
    def _generate_batch(self, prompts, sampling, stops, gen):
        from transformers import DynamicCache

        n = len(prompts)
        toks: list[list[int]] = [[] for _ in range(n)]
        lps: list[list[float]] = [[] for _ in range(n)]
        reasons = ["length"] * n
        if sampling.max_new_tokens <= 0:
            return toks, lps, reasons
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            input_ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
        # Explicit positions: with left padding, each row's first real token must be position 0.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        input_ids, mask, positions = input_ids.to(device), mask.to(device), positions.to(device)
        cache = DynamicCache(config=self.model.config)
        logits = self.model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
            use_cache=True, logits_to_keep=1,
        ).logits[:, -1]
        next_pos = positions[:, -1:] + 1
        done = [False] * n
        for step in range(sampling.max_new_tokens):
            tok, lp = self._choose(logits, sampling, gen)
            tok_list, lp_list = tok.tolist(), lp.tolist()
            for i in range(n):
                if done[i]:
                    continue  # nothing after a stop token reaches the output
                toks[i].append(tok_list[i])
                lps[i].append(lp_list[i])
                if tok_list[i] in stops:
                    done[i], reasons[i] = True, "stop"
            if all(done) or step + 1 == sampling.max_new_tokens:
                break
            mask = torch.cat([mask, mask.new_ones((n, 1))], dim=-1)
            logits = self.model(
                input_ids=tok[:, None].to(device), attention_mask=mask, position_ids=next_pos,
                past_key_values=cache, use_cache=True,
            ).logits[:, -1]
            next_pos = next_pos + 1
        return toks, lps, reasons

    # -- refit ------------------------------------------------------------------------------------------------------

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy tensors into the model in place, by Hugging Face parameter name.

        Names are the model's own or the on-disk ones (Nemotron-H: ``backbone.`` in files and in the policy's export,
        ``model.`` in a transformers 5 module).

        Tied weights are one tensor reachable under both names (``lm_head.weight`` and
        ``model.embed_tokens.weight``), so either name updates both. An unknown name or a shape mismatch raises before
        that tensor is copied (tensors earlier in the stream are already in place: the stream may be a generator that
        never holds the whole model).
        """
        targets = self.model.state_dict(keep_vars=True)
        aliases = _on_disk_aliases(self.model.config, targets)
        with torch.no_grad():
            for name, tensor in named_tensors:
                name = aliases.get(name, name)
                if name not in targets:
                    raise KeyError(f"update_weights: the model has no parameter named {name!r}")
                target = targets[name]
                if tuple(tensor.shape) != tuple(target.shape):
                    raise ValueError(
                        f"update_weights: shape mismatch for {name!r}: got {tuple(tensor.shape)}, "
                        f"model has {tuple(target.shape)}"
                    )
                target.data.copy_(tensor.detach().to(device=target.device, dtype=target.dtype))
