"""One rank of a CPU-shim necessity check: apply every shim but ``skip``, run one megatron operation, and record
whether it worked (rank<r>.json: {"ok": bool, "error": str, "where": the failing traceback's frames})."""

from __future__ import annotations

import json
import os
import sys
import traceback
from datetime import timedelta

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _tiny_model(**overrides):
    import transformers

    from nemo_igrpo.backends.policy.model import build_gpt_model

    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return build_gpt_model(config, __import__("torch").float32, **overrides)


def _tiny_hybrid_model():
    import transformers

    from nemo_igrpo.backends.policy.model import build_model

    config = transformers.NemotronHConfig(
        vocab_size=64, hidden_size=32, hybrid_override_pattern="M*-", num_attention_heads=2, num_key_value_heads=1,
        head_dim=16, intermediate_size=48, ssm_state_size=8, mamba_num_heads=4, mamba_head_dim=8, n_groups=1,
        conv_kernel=4, chunk_size=4, max_position_embeddings=64)
    return build_model(config, __import__("torch").float32)


def _run(op: str, pp: int) -> None:
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state, tensor_parallel

    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    parallel_state.initialize_model_parallel(pipeline_model_parallel_size=pp)
    tensor_parallel.model_parallel_cuda_manual_seed(1)
    if op == "seed":
        return
    if op == "mamba_forward":
        ids = torch.randint(0, 64, (2, 7))
        mask = torch.triu(torch.ones(7, 7, dtype=torch.bool), diagonal=1)[None, None]
        _tiny_hybrid_model()[0](ids, None, mask).sum().backward()
        return
    recompute = dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    chunks = _tiny_model(**(recompute if op == "recompute" else {}))
    ids = torch.randint(0, 128, (2, 8))
    pos = torch.arange(8).expand_as(ids)
    if op in ("forward", "recompute"):
        # Tensor.backward on purpose: the backward pass (recompute) must still see the shims.
        chunks[0](ids, pos, None).sum().backward()
        return
    assert op == "pp_forward"
    from megatron.core.pipeline_parallel import get_forward_backward_func

    def forward_step(data_iterator, model):
        return model(ids, pos, None), lambda out: (out.float().mean(), {})

    get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter([None]), model=chunks,
                                num_microbatches=1, seq_length=8, micro_batch_size=2, forward_only=True)


def main(skip: str, op: str, pp: int, out_dir: str) -> None:
    import torch.distributed as dist

    from nemo_igrpo.backends.cpu_shims import apply_cpu_shims

    apply_cpu_shims(skip=(skip,) if skip else ())
    rank = int(os.environ["RANK"])
    try:
        _run(op, pp)
        result = {"ok": True, "error": "", "where": []}
    except Exception as e:  # the failure is the result being measured
        frames = [f"{os.path.basename(f.filename)}:{f.name}" for f in traceback.extract_tb(e.__traceback__)]
        result = {"ok": False, "error": f"{type(e).__name__}: {e}", "where": frames}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    if result["ok"]:
        from megatron.core import parallel_state

        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()
    else:
        # A failed rank leaves its peer blocked in a collective: leave without teardown; the peer's gloo
        # connection then errors out instead of waiting for the timeout.
        os._exit(0)
