"""One rank of a TP x PP parity run: load a tiny HF model into megatron, compare logits, log-probs, entropy,
the log-prob gradient and the HF export against the HF reference. Writes rank<r>.pt: {kind: dict of floats/bools}."""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

TEMPERATURE = 0.7


def main(kinds: str, tp: int, pp: int, out_dir: str) -> None:
    from nemo_igrpo.backends.policy.parallel import destroy_parallel, initialize_parallel

    layout = initialize_parallel(tp, pp, seed=1234)
    results = {kind: check(kind, layout) for kind in kinds.split(",")}
    torch.save(results, os.path.join(out_dir, f"rank{layout.rank}.pt"))
    destroy_parallel()


def check(kind: str, layout) -> dict:
    from tiny import hf_state_dict, tiny_hf_model

    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from nemo_igrpo.backends.policy.logprobs import token_entropy, token_logprobs
    from nemo_igrpo.backends.policy.model import build_gpt_model
    from nemo_igrpo.backends.policy.weights import export_hf_state_dict, load_hf_state_dict

    tp, pp = layout.tp_size, layout.pp_size
    res: dict = {}
    config, hf = tiny_hf_model(kind)
    sd = hf_state_dict(hf)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, config.vocab_size, (3, 12), generator=g)
    with torch.no_grad():
        ref_logits = hf(input_ids=ids).logits.float()
    ref_lp_full = torch.log_softmax(ref_logits[:, :-1] / TEMPERATURE, dim=-1)
    ref_lp = torch.cat([torch.zeros(3, 1), ref_lp_full.gather(-1, ids[:, 1:, None])[..., 0]], dim=1)
    ref_ent = torch.cat([torch.zeros(3, 1), -(ref_lp_full.exp() * ref_lp_full).sum(-1)], dim=1)

    chunks = build_gpt_model(config, torch.float32)
    load_hf_state_dict(chunks, sd, config)
    for c in chunks:
        c.eval()
    model = chunks[0]
    tp_group = parallel_state.get_tensor_model_parallel_group()
    v_lo, v_hi = layout.tp_rank * config.vocab_size // tp, (layout.tp_rank + 1) * config.vocab_size // tp
    positions = torch.arange(ids.shape[1]).expand_as(ids)

    def gather_vocab(x):
        parts = [torch.empty_like(x) for _ in range(tp)]
        dist.all_gather(parts, x.contiguous(), group=tp_group)
        return torch.cat(parts, dim=-1)

    def loss_func(logits):
        lp = token_logprobs(logits, ids, TEMPERATURE)
        ent = token_entropy(logits, TEMPERATURE)
        return lp.sum() * 0, {"lp": lp.detach(), "ent": ent, "logits": gather_vocab(logits.detach())}

    def forward_step(data_iterator, model):
        next(data_iterator)
        return model(ids, positions, None), loss_func

    store = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter([None]), model=chunks, num_microbatches=1,
        seq_length=ids.shape[1], micro_batch_size=ids.shape[0], forward_only=True)
    if layout.is_last_stage:
        out = store[0]
        res["logit_err"] = (out["logits"] - ref_logits).abs().max().item()
        res["lp_err"] = (out["lp"] - ref_lp).abs().max().item()
        res["ent_err"] = (out["ent"] - ref_ent).abs().max().item()
        res["lp"] = out["lp"]

    if pp == 1:
        # Gradient of sum(log-probs) w.r.t. this rank's logit shard equals the matching slice of the HF gradient.
        with torch.no_grad():
            shard = model(ids, positions, None)
        leaf = shard.clone().requires_grad_(True)
        token_logprobs(leaf, ids, TEMPERATURE).sum().backward()
        ref_leaf = ref_logits.clone().requires_grad_(True)
        lsm = torch.log_softmax(ref_leaf[:, :-1] / TEMPERATURE, dim=-1)
        lsm.gather(-1, ids[:, 1:, None]).sum().backward()
        res["grad_err"] = (leaf.grad - ref_leaf.grad[..., v_lo:v_hi]).abs().max().item()

    exported = dict(export_hf_state_dict(chunks, config))
    res["export_keys_equal"] = sorted(exported) == sorted(sd)
    res["export_bit_identical"] = res["export_keys_equal"] and all(torch.equal(exported[k], sd[k]) for k in sd)
    return res



TOL = 1e-5


def run_and_check(kinds: list[str], tp: int, pp: int, tmp_path) -> None:
    """Launch tp*pp ranks and assert on what they report (called from the pytest process)."""
    from launch import launch

    result = launch(main, (",".join(kinds), tp, pp, str(tmp_path)), world_size=tp * pp, err_dir=str(tmp_path))
    assert result.ok, result.tail()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(tp * pp)]
    for kind in kinds:
        for r, all_res in enumerate(ranks):
            res = all_res[kind]
            assert res["export_bit_identical"], f"{kind} rank {r}: export differs from the loaded HF weights {res}"
            if "lp_err" in res:  # last pipeline stage
                assert res["logit_err"] < TOL and res["lp_err"] < TOL and res["ent_err"] < TOL, (kind, r, res)
            if "grad_err" in res:
                assert res["grad_err"] < TOL, (kind, r, res)
        # every TP rank of the last stage reports the same, full result
        assert sum("lp_err" in all_res[kind] for all_res in ranks) == tp


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
