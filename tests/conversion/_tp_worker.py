"""One rank of the TP=2 load check: build the trainer's GPTModel at TP=2, load the converted dist checkpoint (resharded
from TP=1), gather the vocab-parallel logits and (rank 0) compare them with the HF model's. Run two of these with
RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set; argv: MEGATRON_DIR HF_DIR RESULT_JSON."""

import json
import sys

import torch
import torch.distributed as dist


def main(mg_dir: str, hf_dir: str, result: str) -> None:
    import transformers
    from megatron.core import dist_checkpointing, parallel_state

    from nemo_igrpo.backends.conversion.cli import SHARDED_METADATA
    from nemo_igrpo.backends.policy.model import build_gpt_model
    from nemo_igrpo.backends.policy.parallel import destroy_parallel, initialize_parallel

    layout = initialize_parallel(2, 1, 0)
    cfg = transformers.AutoConfig.from_pretrained(hf_dir)
    model = build_gpt_model(cfg, torch.float32)[0]
    state = dist_checkpointing.load({"model": model.sharded_state_dict(metadata=dict(SHARDED_METADATA))}, mg_dir)
    model.load_state_dict(state["model"], strict=True)
    model.eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
    with torch.no_grad():
        local = model(ids, pos, None).contiguous()
    parts = [torch.empty_like(local) for _ in range(2)]
    dist.all_gather(parts, local, group=parallel_state.get_tensor_model_parallel_group())
    logits = torch.cat(parts, dim=-1)
    if layout.rank == 0:
        hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        with torch.no_grad():
            ref = hf(ids).logits
        with open(result, "w") as f:
            json.dump({"max_abs_diff": float((logits - ref).abs().max()), "shape": list(logits.shape),
                       "local_vocab": local.shape[-1]}, f)
    destroy_parallel()


if __name__ == "__main__":
    main(*sys.argv[1:4])
