"""Recording wrappers for the lifecycle-ORDER tests: each forwards every call to the real object (an HF generator,
the Megatron policy) and appends the call's name to a shared log. They record order only; the wrapped component does
the work."""

from __future__ import annotations

from typing import Any

RECORDED = ("generate", "update_weights", "sleep", "wake", "close", "get_logprobs", "train", "export_hf_weights",
            "offload_optimizer_state", "reload_optimizer_state", "save_checkpoint")


class Recording:
    def __init__(self, target: Any, log: list[str], prefix: str = "") -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_log", log)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name not in RECORDED or not callable(value):
            return value

        def call(*args, **kwargs):
            label = name
            if name == "wake":
                label = "wake" if kwargs.get("kv_cache", args[0] if args else True) else "wake_weights"
            self._log.append(label)
            return value(*args, **kwargs)

        return call

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._target, name, value)
