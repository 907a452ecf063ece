"""The tiny model, prompts and reference log-probs shared by the vLLM tests (CPU and GPU)."""

from __future__ import annotations

import os

import torch

TEMPERATURE = 0.7
# Weights are N(0, 0.02) at init, which makes every next-token distribution nearly uniform: greedy decoding would
# then hinge on near-ties that any change of summation order flips. Extra noise makes the distributions peaked.
WEIGHT_NOISE = 0.1


def build_model_dir(path: str, seed: int = 0, tied: bool = False) -> str:
    """Save the demo tokenizer and a randomly initialised demo Llama (head_dim 32, GQA; untied unless ``tied``, then
    the output layer is the input embedding, as in SmolLM2) under ``path``."""
    from transformers import LlamaForCausalLM

    from nemo_igrpo.backends.tiny_model import demo_model_config
    from nemo_igrpo.data.tokenizer import build_demo_tokenizer

    tok = build_demo_tokenizer(path)
    cfg = demo_model_config(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id, tie_word_embeddings=tied)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).float()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * WEIGHT_NOISE)
    model.save_pretrained(path)  # safetensors
    return path


def load_hf(path: str):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True).eval()


def prompts(path: str) -> list[list[int]]:
    """Chat-formatted prompts of different lengths; the last one is long enough to fill several KV blocks (prefix
    caching only reuses full blocks)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    texts = ["What is 2 + 3?", "Compute 17 * 4 - 9, step by step.", "hi",
             "Solve: " + " + ".join(str(i) for i in range(1, 60)) + " = ?"]
    return [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True,
                                    return_dict=False) for t in texts]


def perturbed_state_dict(path: str, scale: float = 0.05, seed: int = 7) -> dict[str, torch.Tensor]:
    """The model's HF state dict plus Gaussian noise: 'new policy weights' for a refit."""
    from safetensors.torch import load_file

    sd = load_file(os.path.join(path, "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in sd.items()}


@torch.no_grad()
def hf_token_logprobs(model, prompt: list[int], completion: list[int], temperature: float) -> torch.Tensor:
    """log_softmax(logits / T) (log_softmax(logits) for T = 0) at each completion token, one full forward."""
    ids = torch.tensor([prompt + completion])
    logits = model(input_ids=ids).logits[0].float()
    logits = logits if temperature == 0 else logits / temperature
    lp = torch.log_softmax(logits[:-1], dim=-1).gather(-1, ids[0, 1:, None])[:, 0]
    return lp[len(prompt) - 1:]
