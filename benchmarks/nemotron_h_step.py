"""Time per iGRPO step of a tiny Nemotron-H (hybrid Mamba-2) next to the tiny Llama of the demo, on the real trainer.

    .venv/bin/python benchmarks/nemotron_h_step.py [--steps 4] [--reps 2] [--threads 1] [key=value ...] [--out FILE]

Both models are randomly initialised with the demo tokenizer and about the same size: the demo's Llama (hidden 128,
2 layers, 0.37 M parameters) and a Nemotron-H with pattern "M*M-" (Mamba, attention, Mamba, MLP; hidden 128,
8 Mamba heads of 32, state 16). ``igrpo train`` runs on ``conf/demo_igrpo.yaml`` for each, alternating
(Llama, Nemotron-H, Nemotron-H, Llama, ...) so that a change in machine load hits both alike; step 1 of every run is
dropped (one-off costs). Reported: the median seconds per step and per phase, generated tokens per step, and the
Nemotron-H / Llama ratio of each. Random weights rarely emit EOS, so both generate about the same number of tokens.

On CPU the Mamba layers run the pure-PyTorch kernels (backends/mamba_cpu_kernels.py) in the trainer and the HF
reference implementation in generation: the ratio says what this CPU path costs, not what the CUDA kernels do.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

PHASES = ("time/generate", "time/reward", "time/logprob", "time/train", "time/refit", "time/step")
MODELS = ("llama", "nemotron_h")


def model_config(kind: str, vocab: int, tok):
    import transformers

    from nemo_igrpo.backends.tiny_model import demo_model_config

    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if kind == "llama":
        return demo_model_config(vocab, **ids)
    return transformers.NemotronHConfig(
        vocab_size=vocab, hidden_size=128, hybrid_override_pattern="M*M-", num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, intermediate_size=320, ssm_state_size=16, mamba_num_heads=8,
        mamba_head_dim=32, n_groups=2, conv_kernel=4, chunk_size=64, max_position_embeddings=1024,
        tie_word_embeddings=False, **ids)


def ensure_model(kind: str) -> Path:
    from nemo_igrpo.data.tokenizer import build_demo_tokenizer

    path = C.BENCH_DIR / f"random_{kind}"
    if not (path / "config.json").is_file():
        tok = build_demo_tokenizer()
        C.write_random_model_dir(path, model_config(kind, len(tok), tok), dtype=__import__("torch").float32)
    return path


def run_trainer(out_dir: Path, model: Path, steps: int, extra: list[str], threads: int) -> float:
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "nemo_igrpo.cli", "train", "--config", str(C.REPO / "conf" / "demo_igrpo.yaml"),
           f"policy.model_path={model}", f"trainer.output_dir={out_dir}", f"trainer.max_steps={steps}",
           "trainer.validate_every=0", "trainer.save_every=0", "trainer.progress_bar=false",
           "trainer.tensorboard=false", *extra]
    env = {**__import__("os").environ, "PYTHONUNBUFFERED": "1"}
    if threads > 0:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=C.REPO, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"igrpo train ({model.name}) failed with exit code {proc.returncode}")
    return time.perf_counter() - t0


def main() -> None:
    import json

    from safetensors.torch import load_file

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the runs (0: leave as is)")
    p.add_argument("--out", default=None)
    p.add_argument("overrides", nargs="*", help="key=value for igrpo train (both models)")
    args = p.parse_args()

    models = {kind: ensure_model(kind) for kind in MODELS}
    params = {kind: C.count_params(load_file(str(path / "model.safetensors")))["total"]
              for kind, path in models.items()}
    order = [MODELS[(i // 2 + i) % 2] for i in range(2 * args.reps)]  # L N N L L N ...
    steps: dict[str, list[dict]] = {kind: [] for kind in MODELS}
    startup: dict[str, list[float]] = {kind: [] for kind in MODELS}
    for i, kind in enumerate(order):
        out = C.BENCH_DIR / "nemotron_h_step" / f"{kind}_{i}"
        wall = run_trainer(out, models[kind], args.steps, args.overrides, args.threads)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        steps[kind].extend(rows[1:])
        startup[kind].append(wall - sum(r["time/step"] for r in rows))
        print(f"[bench] run {i + 1}/{len(order)} {kind}: {wall:.1f} s, load {C.loadavg()}", flush=True)

    results = {}
    table = []
    for key in (*PHASES, "tokens/generated"):
        med = {kind: C.median(r[key] for r in steps[kind]) for kind in MODELS}
        results[key] = {**med, "ratio": med["nemotron_h"] / med["llama"] if med["llama"] else float("nan")}
        table.append([key, med["llama"], med["nemotron_h"], results[key]["ratio"]])
    results["parameters"] = params
    results["startup_s"] = {kind: C.median(v) for kind, v in startup.items()}
    print(C.fmt_table(table, ["per step (median)", "tiny Llama", "tiny Nemotron-H", "ratio"]))
    print(f"parameters: Llama {params['llama']:,}, Nemotron-H {params['nemotron_h']:,}; start-up (s): "
          f"{results['startup_s']}")
    C.write_results(args.out, "nemotron_h_step", vars(args), results)


if __name__ == "__main__":
    main()
