"""The reference the generator tests compare with: log-probs of a completion under the HF model's own forward."""

from __future__ import annotations

import torch


def reference_logprobs(model, prompt: list[int], completion: list[int], temperature: float) -> list[float]:
    """log p(completion[j] | prompt + completion[:j]) at ``temperature``, from one forward over the whole sequence."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return [logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(completion)]
