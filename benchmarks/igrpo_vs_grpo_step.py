"""Cost of one iGRPO step over one GRPO step at matched rollout budget (N + G = K), measured on the real trainer.

    .venv/bin/python benchmarks/igrpo_vs_grpo_step.py [--steps 6] [--reps 3] [--out results.json]
    .venv/bin/python benchmarks/igrpo_vs_grpo_step.py --recipe smollm2_word_arith --model smollm2 \
        --python .venv-vllm/bin/python generation.backend=vllm          # a real model, vLLM CPU generation
    .venv/bin/python benchmarks/igrpo_vs_grpo_step.py --from-runs RUN_GRPO RUN_IGRPO   # two finished runs

Runs ``igrpo train`` on ``conf/demo_grpo.yaml`` and ``conf/demo_igrpo.yaml`` (``--recipe``: other twins) as
subprocesses, alternating the two
(GRPO, iGRPO, iGRPO, GRPO, ...) so that a change in machine load hits both alike, then reads each run's
``metrics.jsonl`` and reports per-phase seconds per step (time/generate, time/reward, time/logprob, time/train,
time/refit, time/step), tokens per step, and the iGRPO/GRPO ratio of each (median over the steps after the first of
every run: step 1 pays one-off costs such as allocator growth and worker start).

The paper's numbers for the same comparison: 94.1 vs 83.3 GPU-hours (+13%), 0.34 vs 0.41 samples/s.

Where iGRPO's extra cost comes from (the script prints the measured split):
* two *sequential* generation rounds: Stage 2 cannot start before every draft of its prompt is scored, so the decode
  loop runs twice, each round over half the sequences. Decoding is bound by reading the weights once per decode
  step, whatever the batch (until the batch is large enough to be compute-bound), so a round of B/2 sequences costs
  almost as much as a round of B: the generation phase can approach 2x GRPO's at small batch, and tends to 1x
  (+ the longer prefill) when decode is compute-bound;
* longer Stage-2 prompts (problem + best draft + template): more prefill and more KV cache read per decode step;
* two reward calls instead of one (same number of graded answers, twice the fixed overhead).
And where it saves: only the G refinements are trained on (K/2 sequences here instead of K), so time/logprob and
time/train shrink, partly offset by their longer prompts.

Physical limit printed: the step's FLOPs (2 N per generated token, 2 N per log-prob token, 6 N per trained token)
divided by this CPU's measured matmul peak, i.e. the step time if every phase ran at peak: how far the tiny demo
model is from it shows it is overhead-bound (Python, kernel launches, small matmuls), not FLOP- or bandwidth-bound.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

PHASES = ("time/generate", "time/reward", "time/logprob", "time/train", "time/refit", "time/step")
COUNTS = ("tokens/generated", "tokens/stage1", "tokens/stage2", "sequences/generated", "sequences/stage2",
          "prompt_length/mean",
          "response_length/mean")
METHODS = ("grpo", "igrpo")


def run_trainer(method: str, out_dir: Path, model: Path, steps: int, extra: list[str], threads: int,
                recipe: str = "demo", python: str = sys.executable) -> float:
    """One ``igrpo train`` run; returns its wall seconds (start-up included, reported apart from the steps)."""
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = [python, "-m", "nemo_igrpo.cli", "train", "--config", str(C.REPO / "conf" / f"{recipe}_{method}.yaml"),
           f"policy.model_path={model}", f"trainer.output_dir={out_dir}", f"trainer.max_steps={steps}",
           "trainer.validate_every=0", "trainer.save_every=0", "trainer.progress_bar=false",
           "trainer.tensorboard=false", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=C.REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                               **({"OMP_NUM_THREADS": str(threads)} if threads > 0 else {})})
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"igrpo train ({method}) failed with exit code {proc.returncode}")
    return time.perf_counter() - t0


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def flops_per_step(m: dict, n_matmul: int) -> float:
    """Model FLOPs of one step from its own counts: 2N per generated token (decode), 2N per token of the log-prob
    pass and 6N per trained token over the trained sequences (prompt + response). Attention's quadratic term is
    left out: at these lengths (< 300 tokens, hidden 128) it is a few percent."""
    seqs = m["sequences/stage2"]
    trained_tokens = seqs * (m["prompt_length/mean"] + m["response_length/mean"])
    return 2 * n_matmul * m["tokens/generated"] + (2 + 6) * n_matmul * trained_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 6 steps x 3 runs: 15 timed steps per method in about 2 minutes on 2 idle cores (about 15 s a run, most of it
    # start-up); the first run of this script under load 3-4 took 10x longer per step, so check the load columns.
    ap.add_argument("--steps", type=int, default=6, help="training steps per run (the first is not counted)")
    ap.add_argument("--reps", type=int, default=3, help="runs per method, interleaved")
    # One thread by default: on a shared 2-core machine, 2 OpenMP threads spin at barriers whenever another job holds
    # a core, and a step went from 0.7 s to 15.8 s at load 4.7 (measured); one thread slows down in proportion to the
    # load instead, which keeps the GRPO/iGRPO ratio meaningful. 0: torch's default (all cores).
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the training runs (0: default)")
    ap.add_argument("--sft-steps", type=int, default=C.SFT_STEPS, help="warm start steps (cached in runs/bench/sft)")
    ap.add_argument("--recipe", default="demo", help="the twins conf/<recipe>_grpo.yaml and conf/<recipe>_igrpo.yaml")
    ap.add_argument("--model", default="demo",
                    help="policy.model_path of both runs: 'demo' (the cached warm start), 'smollm2' (SmolLM2-135M-"
                         "Instruct, prepared once), or an HF directory")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter of the training runs: the vLLM venv's with generation.backend=vllm on CPU")
    ap.add_argument("--from-runs", nargs=2, metavar=("GRPO_DIR", "IGRPO_DIR"), default=None,
                    help="train nothing: analyse two finished runs of the twins (their metrics.jsonl), e.g. runs "
                         "made side by side on one machine so that its load hit both alike")
    ap.add_argument("--out", default=None, help="JSON output (default runs/bench/igrpo_vs_grpo_step.json)")
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides for both runs (e.g. data.prompts_per_step=16)")
    args = ap.parse_args()
    if args.steps < 2:
        raise SystemExit("--steps must be >= 2 (step 1 is excluded as warm-up)")

    configs = [f"conf/{args.recipe}_grpo.yaml", f"conf/{args.recipe}_igrpo.yaml"]
    if args.from_runs:
        from omegaconf import OmegaConf

        # Each run directory holds the resolved config it ran with.
        resolved = [OmegaConf.load(Path(d) / "config.yaml") for d in args.from_runs]
        configs = [f"{c.name} ({d}/config.yaml)" for c, d in zip(resolved, args.from_runs)]
        model = Path(resolved[0].policy.model_path)
    elif args.model == "demo":
        model = C.ensure_sft_model(steps=args.sft_steps)
    else:
        model = C.resolve_model(args.model, on_gpu=False)
    from safetensors.torch import load_file

    params = C.count_params({k: v for f in sorted(model.glob("*.safetensors")) for k, v in load_file(str(f)).items()})
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)  # the peak that the training runs can reach, with their thread count
    peak = C.matmul_peak_flops()
    load_start = C.loadavg()

    per_method: dict[str, list[dict]] = {m: [] for m in METHODS}
    runs = []
    per_rep: dict[int, dict[str, dict[str, float]]] = {}
    for rep in range(1 if args.from_runs else args.reps):
        order = METHODS if rep % 2 == 0 else METHODS[::-1]
        for method in order:
            if args.from_runs:
                out_dir = Path(args.from_runs[METHODS.index(method)])
                load, wall = None, float("nan")
            else:
                out_dir = C.BENCH_DIR / "step" / f"{method}_rep{rep}"
                load = C.loadavg()
                wall = run_trainer(method, out_dir, model, args.steps, args.overrides, args.threads, args.recipe,
                                   args.python)
            rows = [r for r in read_metrics(out_dir / "metrics.jsonl") if r["step"] > 1]
            per_method[method].extend(rows)
            per_rep.setdefault(rep, {})[method] = {k: C.median(r.get(k, 0.0) or 0.0 for r in rows) for k in PHASES}
            step_sum = sum(r["time/step"] for r in rows)
            runs.append({"method": method, "rep": rep, "wall_s": round(wall, 2), "loadavg_before": load,
                         "steps_timed": len(rows), "startup_s": round(wall - step_sum - sum(
                             r["time/step"] for r in read_metrics(out_dir / "metrics.jsonl") if r["step"] == 1), 2)})
            print(f"[bench] {method} rep {rep}: {wall:.1f} s wall, load {load[0] if load else 'n/a'}", flush=True)

    summary: dict[str, dict[str, float]] = {}
    best: dict[str, dict[str, float]] = {}
    for method, rows in per_method.items():
        s = {k: C.median(r.get(k, 0.0) or 0.0 for r in rows) for k in PHASES + COUNTS}
        # Other jobs on a shared machine only ever add time, so the fastest step of each phase is the estimate least
        # disturbed by them; it is reported beside the median.
        best[method] = {k: min(r.get(k, 0.0) or 0.0 for r in rows) for k in PHASES}
        s["trained_tokens"] = C.median(r["sequences/stage2"] * (r["prompt_length/mean"] + r["response_length/mean"])
                                       for r in rows)
        s["time/other"] = C.median(r["time/step"] - sum(r.get(k, 0.0) or 0.0 for k in PHASES[:-1]) for r in rows)
        s["gen_tokens_per_s"] = C.median(r["tokens/generated"] / r["time/generate"] for r in rows)
        s["samples_per_s"] = C.median(r["sequences/stage2"] / r["time/step"] for r in rows)
        s["flops_per_step"] = C.median(flops_per_step(r, params["matmul"]) for r in rows)
        s["step_s_at_peak"] = s["flops_per_step"] / peak
        s["fraction_of_peak"] = s["step_s_at_peak"] / s["time/step"]
        summary[method] = s
    keys = list(PHASES) + ["time/other"] + list(COUNTS) + ["trained_tokens", "gen_tokens_per_s", "samples_per_s",
                                                            "step_s_at_peak"]
    ratio = {k: summary["igrpo"][k] / summary["grpo"][k] if summary["grpo"][k] else float("nan") for k in keys}
    ratio_best = {k: best["igrpo"][k] / best["grpo"][k] if best["grpo"][k] else float("nan") for k in PHASES}

    # Paired: the two runs of one repetition ran back to back, under about the same load; the median over the
    # repetitions of their ratio is the estimate least moved by load changing between repetitions.
    ratio_paired = {k: C.median(p["igrpo"][k] / p["grpo"][k] for p in per_rep.values() if p["grpo"][k])
                    for k in PHASES}
    rows = [[k, summary["grpo"][k], summary["igrpo"][k], ratio[k]]
            + ([best["grpo"][k], best["igrpo"][k], ratio_best[k], ratio_paired[k]] if k in PHASES else [""] * 4)
            for k in keys]
    print(C.fmt_table(rows, ["per step", "GRPO median", "iGRPO median", "ratio", "GRPO min", "iGRPO min",
                             "ratio (min)", "ratio (paired)"]))
    extra_gen = summary["igrpo"]["time/generate"] - summary["grpo"]["time/generate"]
    extra_step = summary["igrpo"]["time/step"] - summary["grpo"]["time/step"]
    print(f"iGRPO step = {ratio['time/step']:.2f}x GRPO by medians, {ratio_best['time/step']:.2f}x by fastest steps, "
          f"{ratio_paired['time/step']:.2f}x paired (paper: 1.13x GPU-hours); generation accounts for "
          f"{extra_gen:+.2f} s of the {extra_step:+.2f} s difference; trained samples/s GRPO "
          f"{summary['grpo']['samples_per_s']:.2f} vs iGRPO {summary['igrpo']['samples_per_s']:.2f} "
          "(paper 0.41 vs 0.34)")
    print(f"physical limit: at the measured peak {peak / 1e9:.1f} GFLOP/s a step would take "
          f"{summary['grpo']['step_s_at_peak'] * 1e3:.1f} ms (GRPO) / {summary['igrpo']['step_s_at_peak'] * 1e3:.1f} ms "
          f"(iGRPO): the runs reach {summary['grpo']['fraction_of_peak']:.2%} / "
          f"{summary['igrpo']['fraction_of_peak']:.2%} of it"
          + (" (overhead-bound: small matmuls, Python)" if summary["grpo"]["fraction_of_peak"] < 0.3 else ""))
    C.write_results(args.out, "igrpo_vs_grpo_step",
                    {"steps": args.steps, "reps": args.reps, "threads": args.threads, "overrides": args.overrides,
                     "model": str(model), "from_runs": args.from_runs,
                     "configs": configs,
                     "excluded_steps": [1]},
                    {"per_method": summary, "ratio_igrpo_over_grpo": ratio, "per_method_min": best,
                     "ratio_igrpo_over_grpo_min": ratio_best, "ratio_igrpo_over_grpo_paired": ratio_paired,
                     "per_rep_medians": {str(k): v for k, v in per_rep.items()}, "runs": runs,
                     "stage2_reward_mean": C.median(r.get("reward/mean") or 0.0 for r in per_method["igrpo"]),
                     "draft_best_reward_mean": C.median(r.get("reward/draft_best") or 0.0 for r in per_method["igrpo"]),
                     "grpo_reward_mean": C.median(r.get("reward/mean") or 0.0 for r in per_method["grpo"]),
                     "paper": {"gpu_hours": {"grpo": 83.3, "igrpo": 94.1, "ratio": 94.1 / 83.3},
                               "samples_per_s": {"grpo": 0.41, "igrpo": 0.34}}},
                    {"loadavg_at_start": load_start, "matmul_peak_gflops": round(peak / 1e9, 2), "params": params})


if __name__ == "__main__":
    main()
