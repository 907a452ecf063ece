"""Training throughput of ``MegatronPolicy.train`` (one optimizer step: forward, backward, Adam) in tokens/s and MFU.

    .venv/bin/python benchmarks/train_throughput.py [--seqs 64 --length 160 --micro-batch 32] [--out FILE]  # CPU
    python benchmarks/train_throughput.py --model qwen2-1.5b                                              # GPU
    .venv/bin/python benchmarks/train_throughput.py --model smollm2 [--steps 2]           # CPU, a real 135 M model

CPU default: the warm-started demo model in fp32, the demo's step shape (64 sequences = 8 prompts x 8 rollouts,
about 160 tokens each, micro-batch 32). GPU (``--model qwen2-1.5b``): a randomly initialised 1.66 B Qwen2-shaped
model in bf16, 32 sequences of 1024 tokens, micro-batch 4; skipped when CUDA is absent.

Also timed: ``get_logprobs`` on the same batch (forward only), which the trainer runs once per step for the old
log-probs (time/logprob).

Physical limit: training is FLOP-bound; one token costs 6 N FLOPs (forward 2 N, backward 4 N) with N the parameters
that take part in matmuls (the input embedding is a lookup), plus the attention scores 12 x layers x hidden x length
(forward and backward of QK^T and AV). MFU = achieved model FLOP/s / peak, with the peak measured in the same run by a
large matmul (on a GPU also given against the datasheet dense bf16 peak, --nominal-peak-tflops).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

TEMPERATURE = 0.7
# Default batch shape per --model: (sequences, tokens per sequence, prompt tokens (None: a third), micro-batch).
# demo: its recipe's step; qwen2-1.5b: a GPU-sized step; smollm2: one micro-batch of its recipe's step (8 of the 32
# sequences; prompt 133 tokens with the one-shot system message, about 40 generated), which is minutes on 2 cores.
DEFAULT_SHAPES = {"demo": (64, 160, None, 32), "qwen2-1.5b": (32, 1024, None, 4), "smollm2": (8, 176, 133, 8)}


def make_batch(seqs: int, length: int, prompt: int, vocab: int, seed: int = 0):
    """Random token rows of the given shape, the loss on the last ``length - prompt`` tokens (the response), random
    advantages; old log-probs are filled in by the caller from the policy (ratios near 1, as on-policy)."""
    import torch

    from nemo_igrpo.batch import TrainBatch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (seqs, length), generator=g)
    mask = torch.zeros(seqs, length)
    mask[:, prompt:] = 1.0
    adv = torch.randn(seqs, generator=g)
    return TrainBatch(input_ids=ids, loss_mask=mask, advantages=adv, old_logprobs=torch.zeros(seqs, length))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo",
                    help="'demo', 'smollm2' (SmolLM2-135M-Instruct), 'qwen2-1.5b' (GPU), or an HF model directory")
    ap.add_argument("--seqs", type=int, default=None, help="sequences per step (default: DEFAULT_SHAPES)")
    ap.add_argument("--length", type=int, default=None, help="tokens per sequence (default: DEFAULT_SHAPES)")
    ap.add_argument("--prompt", type=int, default=None, help="prompt tokens (no loss) per sequence")
    ap.add_argument("--micro-batch", type=int, default=None, help="default: DEFAULT_SHAPES")
    ap.add_argument("--steps", type=int, default=5, help="timed optimizer steps (after one untimed)")
    ap.add_argument("--nominal-peak-tflops", type=float, default=989.0,
                    help="GPU datasheet dense bf16 peak (H100 SXM: 989)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch

    on_gpu = torch.cuda.is_available()
    model_dir = C.resolve_model(args.model, on_gpu)
    if model_dir is None:
        return
    # (sequences, tokens each, prompt tokens, micro-batch) when not given.
    shape = DEFAULT_SHAPES.get(args.model, DEFAULT_SHAPES["demo"])
    seqs = args.seqs or shape[0]
    length = args.length or shape[1]
    prompt = args.prompt if args.prompt is not None else (shape[2] if shape[2] is not None else length // 3)
    mbs = args.micro_batch or shape[3]
    precision = "bf16" if on_gpu else "fp32"
    device = "cuda" if on_gpu else "cpu"
    dtype = torch.bfloat16 if on_gpu else torch.float32

    # Peak first, before the model takes memory and while nothing else of ours runs.
    peak = C.matmul_peak_flops(dtype=dtype, n=8192 if on_gpu else 1024, device=device)
    load_start = C.loadavg()

    from nemo_igrpo.algorithms.config import AlgorithmConfig
    from nemo_igrpo.algorithms.losses import make_policy_loss
    from nemo_igrpo.backends.conversion.hf_io import read_hf_checkpoint
    from nemo_igrpo.backends.policy.config import OptimizerConfig, PolicyConfig
    from nemo_igrpo.backends.policy.megatron_policy import MegatronPolicy
    from nemo_igrpo.backends.policy.parallel import destroy_parallel, initialize_parallel

    layout = initialize_parallel(1, 1, seed=0)
    try:
        hf_config, sd = read_hf_checkpoint(str(model_dir))
        params = C.count_params(sd)
        # A tiny lr: the benchmark times the step, the weights should stay sane over a few steps of random data.
        cfg = PolicyConfig(model_path=str(model_dir), precision=precision, micro_batch_size=mbs,
                           logprob_micro_batch_size=mbs,
                           optimizer=OptimizerConfig(lr=1e-7, use_distributed_optimizer=on_gpu))
        policy = MegatronPolicy(cfg, layout, hf_config, TEMPERATURE, total_steps=args.steps + 10, hf_state_dict=sd)
        del sd
        loss_fn = make_policy_loss(AlgorithmConfig(), max_response_tokens=length - prompt)
        batch = make_batch(seqs, length, prompt, hf_config.vocab_size)
        sync = torch.cuda.synchronize if on_gpu else (lambda: None)

        logprob_s, train_s, loads = [], [], []
        for i in range(args.steps + 1):
            sync()
            t0 = time.perf_counter()
            old, _ = policy.get_logprobs(batch.input_ids)
            sync()
            t1 = time.perf_counter()
            batch.old_logprobs = old.float().cpu() * batch.loss_mask
            metrics = policy.train(batch, loss_fn)
            sync()
            t2 = time.perf_counter()
            if i == 0:
                continue  # first step: allocator growth, optimizer state creation
            logprob_s.append(t1 - t0)
            train_s.append(t2 - t1)
            loads.append(C.loadavg()[0])
        skipped = metrics.get("skipped", 0.0)
    finally:
        destroy_parallel()

    tokens = seqs * length
    n = params["matmul"]
    layers, hidden = hf_config.num_hidden_layers, hf_config.hidden_size
    attn_per_token = 12 * layers * hidden * length / 2  # causal: half of the score matrix on average
    t_train, t_lp = C.median(train_s), C.median(logprob_s)
    train_tps, lp_tps = tokens / t_train, tokens / t_lp
    res = {
        "tokens_per_step": tokens, "train_s_median": t_train, "logprob_s_median": t_lp,
        "train_tokens_per_s": train_tps, "logprob_tokens_per_s": lp_tps,
        "train_flops_per_token_6N": 6 * n, "attention_flops_per_token": attn_per_token,
        "mfu_6N": 6 * n * train_tps / peak, "mfu_6N_plus_attention": (6 * n + attn_per_token) * train_tps / peak,
        "logprob_mfu_2N": 2 * n * lp_tps / peak, "train_samples_s": train_s, "logprob_samples_s": logprob_s,
        "loadavg_per_step": loads, "last_step_skipped": skipped,
        "train_s_at_peak": 6 * n * tokens / peak,
    }
    if on_gpu:
        nominal = args.nominal_peak_tflops * 1e12
        res["mfu_6N_vs_nominal_peak"] = 6 * n * train_tps / nominal
    rows = [["train (fwd+bwd+Adam)", t_train, train_tps, f"{res['mfu_6N']:.2%}", f"{res['mfu_6N_plus_attention']:.2%}"],
            ["get_logprobs (fwd)", t_lp, lp_tps, f"{res['logprob_mfu_2N']:.2%}", "-"]]
    print(C.fmt_table(rows, ["phase", "s/step (median)", "tokens/s", "MFU (6N | 2N)", "MFU (+attn)"]))
    print(f"model {params['total'] / 1e6:.3f} M params ({n / 1e6:.3f} M in matmuls), {precision}; batch {seqs} x "
          f"{length} tokens, micro-batch {mbs}; measured matmul peak {peak / 1e9:.1f} GFLOP/s: at peak the step "
          f"would take {res['train_s_at_peak'] * 1e3:.1f} ms")
    C.write_results(args.out, "train_throughput",
                    {"model": str(model_dir), "precision": precision, "seqs": seqs, "length": length,
                     "prompt": prompt, "micro_batch": mbs, "steps": args.steps},
                    res, {"loadavg_at_start": load_start, "matmul_peak_gflops": round(peak / 1e9, 2),
                          "params": params})


if __name__ == "__main__":
    main()
