"""A refit of a tied-embedding model on vLLM's CPU build, in its own process (one engine per process; the other
modules' engine holds untied weights). Writes the largest log-prob differences to OUT_JSON.

    python tied_refit_worker.py MODEL_DIR OUT_JSON
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(model_dir: str, out_path: str) -> None:
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    from nemo_igrpo.backends.generation.interface import SamplingParams
    from nemo_igrpo.backends.generation.vllm_generator import VLLMGenerator
    from vllm_common import TEMPERATURE, hf_token_logprobs, load_hf, perturbed_state_dict, prompts

    old_model = load_hf(model_dir)
    new_weights = perturbed_state_dict(model_dir)  # what a tied policy exports: the embedding, no lm_head
    new_model = LlamaForCausalLM(AutoConfig.from_pretrained(model_dir)).float().eval()
    new_model.load_state_dict(new_weights, strict=False)
    assert new_model.lm_head.weight is new_model.model.embed_tokens.weight

    gen = VLLMGenerator.from_pretrained(model_dir, max_model_len=512)
    gen.update_weights(new_weights.items())
    ps = prompts(model_dir)
    out = gen.generate(ps, SamplingParams(temperature=TEMPERATURE, max_new_tokens=16, seed=3))

    def worst(model) -> float:
        return max((torch.tensor(lps) - hf_token_logprobs(model, p, toks, TEMPERATURE)).abs().max().item()
                   for p, toks, lps in zip(ps, out.token_ids, out.logprobs))

    with open(out_path, "w") as f:
        json.dump({"tied_in_vllm": gen.llm.collective_rpc(
                       lambda w: w.get_model().lm_head.weight is w.get_model().model.embed_tokens.weight)[0],
                   "vs_new_weights": worst(new_model), "vs_old_weights": worst(old_model)}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
