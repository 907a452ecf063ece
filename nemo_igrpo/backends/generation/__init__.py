"""Rollout generators behind one interface; ``build_generator`` picks one from the config."""

from __future__ import annotations

from nemo_igrpo.backends.generation.config import GenerationConfig
from nemo_igrpo.backends.generation.interface import GenerationInterface
from nemo_igrpo.backends.policy.config import PolicyConfig


def build_generator(gen: GenerationConfig, policy: PolicyConfig) -> GenerationInterface:
    """The generator starts from the same HF checkpoint as the policy; the trainer refits it before every rollout."""
    if gen.backend == "hf":
        from nemo_igrpo.backends.generation.hf_generator import HFGenerator

        return HFGenerator(policy.model_path, batch_size=gen.batch_size, trust_remote_code=policy.trust_remote_code)
    if gen.backend == "vllm":
        try:
            from nemo_igrpo.backends.generation.vllm_generator import VLLMGenerator
        except ImportError as err:
            raise RuntimeError(f"generation.backend=vllm needs vLLM installed ({err})") from None
        return VLLMGenerator.from_config(gen, policy)
    raise ValueError(f"config key 'generation.backend': unknown backend {gen.backend!r}; choose 'hf' or 'vllm'")
