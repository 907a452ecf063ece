"""``igrpo demo``: the whole loop on a laptop CPU, no downloads.

1. ``igrpo sft``: build a tokenizer and a tiny Llama locally, warm-start it on worked solutions of the synthetic task.
2. ``igrpo train`` twice from that warm start, at the same rollout budget: GRPO (8 rollouts) and iGRPO (4 drafts +
   4 refinements), each a separate process exactly as a user would launch it.
3. Evaluate the warm start and both trained policies single-shot on the test split.
4. Write ``report.md`` (accuracy before/after, seconds per step per phase) and PNG plots of reward, accuracy and
   entropy per step for both runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("grpo", "igrpo")
REPO_CONF = Path(__file__).resolve().parents[2] / "conf"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="the CPU demo: sft, GRPO vs iGRPO at matched budget, evaluation, report",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default="runs/demo", help="results directory (default: runs/demo)")
    p.add_argument("--conf-dir", default=str(REPO_CONF), help="where demo_grpo.yaml / demo_igrpo.yaml live")
    p.add_argument("--steps", type=int, default=None, help="training steps per method (default: the recipe's)")
    p.add_argument("--sft-steps", type=int, default=None, help="warm-start steps (default: igrpo sft's)")
    p.add_argument("--seed", type=int, default=42,
                   help="seed of the warm start (initialisation, batch order) and of both training runs (sampling, "
                        "prompt order)")
    p.add_argument("--eval-samples", type=int, default=4,
                   help="sampled completions per test problem for avg@k (plus one greedy pass)")
    p.add_argument("overrides", nargs="*", help="key=value overrides passed to both training runs")
    p.set_defaults(func=run)


def _train(method: str, args: argparse.Namespace, sft_dir: Path, out: Path) -> float:
    cmd = [sys.executable, "-m", "nemo_igrpo.cli", "train", "--config", str(Path(args.conf_dir) / f"demo_{method}.yaml"),
           f"policy.model_path={sft_dir}", f"trainer.output_dir={out / method}", f"trainer.seed={args.seed}",
           f"data.seed={args.seed}", "trainer.resume=true", *args.overrides]
    if args.steps is not None:
        cmd.append(f"trainer.max_steps={args.steps}")
    print(f"[demo] {method}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return time.perf_counter() - t0


def _machine_load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def run(args: argparse.Namespace) -> int:
    from nemo_igrpo.config import load_config
    from nemo_igrpo.demo.report import evaluate_test_split, write_report
    from nemo_igrpo.demo.sft import run_sft

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    # The warm start and the evaluation read the iGRPO recipe: its task settings and its Stage-2 template (both
    # recipes share the data section; see docs/demo.md).
    recipe = load_config(Path(args.conf_dir) / "demo_igrpo.yaml")
    machine = {"cpus": os.cpu_count(), "load_start": _machine_load()}
    timings: dict[str, float] = {}
    sft_dir = out / "sft"
    t0 = time.perf_counter()
    if not (sft_dir / "config.json").is_file():
        print("[demo] sft: warm-starting the tiny model", flush=True)
        steps = {} if args.sft_steps is None else {"steps": args.sft_steps}
        summary = run_sft(sft_dir, seed=args.seed, data_config=recipe.data, refinement=recipe.algorithm.refinement,
                          overwrite=True, log_every=100, eval_limit=0, **steps)
        print(f"[demo] sft: {summary['steps']} steps in {summary['train_seconds']:.0f} s", flush=True)
    timings["sft"] = time.perf_counter() - t0
    for method in METHODS:
        timings[f"train/{method}"] = _train(method, args, sft_dir, out)
    t0 = time.perf_counter()
    models = {"warm start (SFT)": sft_dir, **{m: out / m / "hf" for m in METHODS}}
    results = evaluate_test_split(models, out / "eval", num_samples=args.eval_samples, data_cfg=recipe.data)
    timings["evaluate"] = time.perf_counter() - t0
    machine["load_end"] = _machine_load()
    cpu = os.times()
    # CPU seconds of this process and of the training processes it waited for, against the wall clock: how much of
    # the machine the demo actually got.
    machine["cpu_seconds"] = cpu.user + cpu.system + cpu.children_user + cpu.children_system
    report = write_report(out, results, {m: out / m for m in METHODS}, timings, machine, args.seed)
    (out / "timings.json").write_text(json.dumps({**timings, "machine": machine}, indent=1))
    print(f"[demo] report: {report}", flush=True)
    return 0
