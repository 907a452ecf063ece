"""Refit time: ``policy.export_hf_weights()`` -> ``generator.update_weights()``, the copy of the trained Megatron
weights into the rollout engine that ``Trainer.refit`` does after every optimizer step.

    .venv/bin/python benchmarks/refit.py [--reps 20] [--out FILE]                  # CPU: tiny model, HF (+ vLLM CPU)
    python benchmarks/refit.py --model qwen2-1.5b --generator vllm               # GPU: 1.66 B Qwen2 shape, bf16

Single process, TP = PP = 1, as the trainer runs on one device. Three timings per repetition, interleaved:
``export`` (drain the export iterator: name mapping, q/k/v and gate/up splits), ``update`` (the generator's copy of
an already exported list) and ``refit`` (the two streamed together, which is what the trainer times as time/refit).
With ``--generator vllm`` on a GPU the production sequence is also timed: engine asleep (weights offloaded), refit
wakes only the weights, then ``wake()`` restores the KV cache.

CPU default: the warm-started demo model into the HF generator in this process, then (if ``.venv-vllm`` works) the
same into an in-process vLLM CPU engine in a child process of that venv. The share of a training step comes from
``benchmarks/igrpo_vs_grpo_step.py``'s JSON (time/refit over time/step), when it exists.

Physical limit: a refit must at least read every weight once and write it once into the engine's buffers, so
time >= 2 x weight bytes / copy bandwidth (measured here with a large tensor copy; on a GPU, HBM bandwidth, plus a
host-to-device transfer when the weights were offloaded by sleep mode).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

RESULT_TAG = "BENCH_RESULT "
TEMPERATURE = 0.7


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def time_refit(policy, generator, reps: int, device) -> dict:
    """Median seconds of export, update and streamed refit over ``reps`` interleaved repetitions."""
    export, update, refit = [], [], []
    # Untimed first pass: lazily built index maps and the engine's first reload session.
    generator.update_weights(policy.export_hf_weights())
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        named = list(policy.export_hf_weights())
        _sync(device)
        export.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        generator.update_weights(named)
        _sync(device)
        update.append(time.perf_counter() - t0)
        del named
        t0 = time.perf_counter()
        generator.update_weights(policy.export_hf_weights())
        _sync(device)
        refit.append(time.perf_counter() - t0)
    return {"export_s": C.median(export), "update_s": C.median(update), "refit_s": C.median(refit),
            "refit_samples_s": [round(x, 5) for x in refit]}


def time_sleep_refit(policy, generator, reps: int, device) -> dict:
    """GPU production order, through the trainer's lifecycle: the engine sleeps after generating (training would run
    here); timed: the refit (cache release, weights woken, copy) and waking the KV cache for the next generation."""
    from nemo_igrpo.trainer.lifecycle import ColocatedLifecycle

    lifecycle = ColocatedLifecycle(policy, generator)
    out = []
    for _ in range(reps):
        lifecycle.begin_generation()
        lifecycle.end_generation()
        _sync(device)
        t0 = time.perf_counter()
        lifecycle.refit()
        lifecycle.begin_generation()
        _sync(device)
        out.append(time.perf_counter() - t0)
        lifecycle.end_generation()
    return {"sleep_refit_wake_s": C.median(out)}


def weight_bytes(policy) -> int:
    return sum(t.numel() * t.element_size() for _, t in policy.export_hf_weights())


def measure(args) -> dict:
    """Build policy + generator in this process and time the refit (runs in either venv)."""
    import torch
    from nemo_igrpo.backends.conversion.hf_io import read_hf_checkpoint
    from nemo_igrpo.backends.policy.config import OptimizerConfig, PolicyConfig
    from nemo_igrpo.backends.policy.megatron_policy import MegatronPolicy
    from nemo_igrpo.backends.policy.parallel import destroy_parallel, initialize_parallel

    on_gpu = torch.cuda.is_available()
    model_dir = args.model_dir
    precision = "bf16" if on_gpu else "fp32"
    gen = None
    info = {"generator": args.generator, "precision": precision}
    if args.generator == "vllm" and not on_gpu:
        # CPU: the engine first, so that it creates the world-size-1 process group initialize_parallel then reuses
        # (the order of tests/generation_vllm); on GPU the policy goes first and vLLM joins via external_launcher.
        from nemo_igrpo.backends.generation.vllm_generator import VLLMGenerator

        gen = VLLMGenerator.from_pretrained(model_dir, precision=precision, enable_sleep_mode=False)
    layout = initialize_parallel(1, 1, seed=0)
    try:
        hf_config, sd = read_hf_checkpoint(model_dir)
        cfg = PolicyConfig(model_path=model_dir, precision=precision, micro_batch_size=4,
                           optimizer=OptimizerConfig(use_distributed_optimizer=False))
        policy = MegatronPolicy(cfg, layout, hf_config, TEMPERATURE, total_steps=10, hf_state_dict=sd)
        del sd
        if gen is None:
            if args.generator == "vllm":
                from nemo_igrpo.backends.generation.vllm_generator import VLLMGenerator

                gen = VLLMGenerator.from_pretrained(model_dir, precision=precision, gpu_memory_utilization=0.3,
                                                    enable_sleep_mode=True, max_model_len=2048)
            else:
                from nemo_igrpo.backends.generation.hf_generator import HFGenerator

                gen = HFGenerator(model_dir)
        device = layout.device
        info.update(time_refit(policy, gen, args.reps, device))
        if args.generator == "vllm" and on_gpu:
            info.update(time_sleep_refit(policy, gen, max(3, args.reps // 4), device))
        info["weight_bytes"] = weight_bytes(policy)
        info["tensors"] = sum(1 for _ in policy.export_hf_weights())
        info["copy_bandwidth_Bps"] = C.memory_bandwidth(device=str(device.type))
        info["bound_s"] = 2 * info["weight_bytes"] / info["copy_bandwidth_Bps"]
        info["fraction_of_bound"] = info["bound_s"] / info["refit_s"]
        info["versions"] = C.versions()
        info["model_params"] = sum(t.numel() for _, t in policy.export_hf_weights())
    finally:
        if args.generator == "vllm" and not on_gpu:
            from megatron.core import parallel_state

            parallel_state.destroy_model_parallel()  # the default group belongs to the engine
        else:
            destroy_parallel()
    return info


def step_share() -> dict | None:
    """time/refit and its share of time/step from the step benchmark's JSON, when that has been run."""
    path = C.BENCH_DIR / "igrpo_vs_grpo_step.json"
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    per = doc["results"]["per_method"]
    return {m: {"time/refit": v["time/refit"], "time/step": v["time/step"],
                "share": v["time/refit"] / v["time/step"]} for m, v in per.items()} | {"source": str(path),
                                                                                         "date": doc["date"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo", help="'demo', 'qwen2-1.5b' (GPU), or an HF model directory")
    ap.add_argument("--generator", choices=["hf", "vllm", "both"], default="both",
                    help="'both' (CPU default): HF here and vLLM in .venv-vllm")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--vllm-python", default=str(C.REPO / ".venv-vllm" / "bin" / "python"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(RESULT_TAG + json.dumps(measure(args)), flush=True)
        return

    import torch

    on_gpu = torch.cuda.is_available()
    model_dir = C.resolve_model(args.model, on_gpu)
    if model_dir is None:
        return
    load_start = C.loadavg()
    generators = ["hf", "vllm"] if args.generator == "both" else [args.generator]
    results, notes = [], {}
    for name in generators:
        # Each measurement in a fresh process: torch.distributed and megatron's groups are once per process, and
        # vLLM needs its own venv on CPU.
        python = Path(args.vllm_python) if name == "vllm" and not on_gpu else Path(sys.executable)
        if not python.is_file():
            notes[name] = f"not measured: {python} does not exist (build it with .ci/vllm_cpu.sh)"
            print(f"[bench] {name}: {notes[name]}")
            continue
        cmd = [str(python), __file__, "--child", "--model-dir", str(model_dir), "--generator", name,
               "--reps", str(args.reps)]
        env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PYTHONUNBUFFERED": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=C.REPO)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
        if proc.returncode != 0 or not lines:
            notes[name] = f"failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}"
            print(f"[bench] {name}: {notes[name]}")
            continue
        res = json.loads(lines[-1][len(RESULT_TAG):])
        res["loadavg_after"] = C.loadavg()
        results.append(res)

    rows = [[r["generator"], r["precision"], f"{r['weight_bytes'] / 1e6:.2f} MB", r["tensors"], r["export_s"] * 1e3,
             r["update_s"] * 1e3, r["refit_s"] * 1e3, r["bound_s"] * 1e3, f"{r['fraction_of_bound']:.2%}"]
            for r in results]
    print(C.fmt_table(rows, ["generator", "dtype", "weights", "tensors", "export ms", "update ms", "refit ms",
                             "bound ms", "of bound"]))
    share = step_share()
    if share:
        for m in ("grpo", "igrpo"):
            print(f"{m}: time/refit {share[m]['time/refit'] * 1e3:.1f} ms = {share[m]['share']:.2%} of time/step "
                  f"({share[m]['time/step']:.2f} s) in the step benchmark")
    C.write_results(args.out, "refit", {"model": str(model_dir), "reps": args.reps, "generators": generators},
                    results, {"loadavg_at_start": load_start, "notes": notes, "step_share": share})


if __name__ == "__main__":
    main()
