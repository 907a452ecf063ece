"""``igrpo demo``: the whole loop on a laptop CPU, no downloads.

1. ``igrpo sft``: build a tokenizer and a tiny Llama locally, warm-start it on worked solutions of the synthetic task.
2. ``igrpo train`` twice from that warm start, at the same rollout budget: GRPO (8 rollouts) and iGRPO (4 drafts +
   4 refinements), each a separate process exactly as a user would launch it, both at once (one thread each: on
   2 cores the pair takes the time of one run).
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
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the warm start (initialisation, batch order) and of both training runs (sampling, "
                        "prompt order)")
    p.add_argument("--eval-samples", type=int, default=4,
                   help="sampled completions per test problem for avg@k (plus one greedy pass)")
    p.add_argument("overrides", nargs="*", help="key=value overrides passed to both training runs")
    p.set_defaults(func=run)


# Every demo process computes on one thread: the results are then the same on every machine (CPU kernels reduce in
# an order fixed by the thread count), and the two training runs share 2 cores without oversubscribing them.
THREADS = 1
THREAD_ENV = {"OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}


def _train_cmd(method: str, args: argparse.Namespace, sft_dir: Path, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "nemo_igrpo.cli", "train", "--config", str(Path(args.conf_dir) / f"demo_{method}.yaml"),
           f"policy.model_path={sft_dir}", f"trainer.output_dir={out / method}", f"trainer.seed={args.seed}",
           f"data.seed={args.seed}", "trainer.resume=true", *args.overrides]
    if args.steps is not None:
        cmd.append(f"trainer.max_steps={args.steps}")
    return cmd


def _train_all(args: argparse.Namespace, sft_dir: Path, out: Path) -> dict[str, dict[str, float]]:
    """Both training runs at once, each logging to ``out/train_<method>.log``; per run its wall and CPU seconds
    (``os.wait4`` reports a child's own CPU time, with that of the grading workers it waited for)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **THREAD_ENV}
    procs: dict[str, tuple[subprocess.Popen, float, Path]] = {}
    for method in METHODS:
        cmd, log = _train_cmd(method, args, sft_dir, out), out / f"train_{method}.log"
        print(f"[demo] {method}: {' '.join(cmd[1:])}\n[demo] {method}: log in {log}", flush=True)
        with log.open("ab") as f:  # appended: a resumed run keeps the interrupted run's log above its own
            procs[method] = (subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env), time.perf_counter(),
                             log)
    runs: dict[str, dict[str, float]] = {}
    failed: list[str] = []
    while len(runs) < len(procs):
        for method, (proc, t0, log) in procs.items():
            if method in runs:
                continue
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == 0:
                continue
            proc.returncode = os.waitstatus_to_exitcode(status)
            runs[method] = {"wall_s": time.perf_counter() - t0, "cpu_s": usage.ru_utime + usage.ru_stime}
            print(f"[demo] {method}: exit {proc.returncode} after {runs[method]['wall_s']:.0f} s "
                  f"({runs[method]['cpu_s']:.0f} CPU seconds)", flush=True)
            if proc.returncode != 0:
                failed.append(method)
                print(log.read_text(errors="replace")[-3000:], file=sys.stderr, flush=True)
        time.sleep(0.5)
    if failed:
        raise SystemExit(f"[demo] training failed: {', '.join(failed)} (logs: {out}/train_<method>.log); rerun "
                         "the same command to resume")
    return runs


def _machine_load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def _cpu_seconds() -> float:
    """CPU time of this process and of the children it has waited for (the training runs, grading workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class _Phases:
    """Wall-clock and CPU seconds per phase: on a shared machine the CPU time shows how much of it the demo got."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        w0, c0 = time.perf_counter(), _cpu_seconds()
        result = fn(*args, **kwargs)
        self.wall[name], self.cpu[name] = time.perf_counter() - w0, _cpu_seconds() - c0
        return result


def run(args: argparse.Namespace) -> int:
    import torch

    from nemo_igrpo.config import load_config
    from nemo_igrpo.demo.report import evaluate_test_split, write_report
    from nemo_igrpo.demo.sft import run_sft

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    # The warm start and the evaluation read the iGRPO recipe: its task settings and its Stage-2 template (both
    # recipes share the data section; see docs/demo.md).
    recipe = load_config(Path(args.conf_dir) / "demo_igrpo.yaml")
    machine = {"cpus": os.cpu_count(), "load_start": _machine_load(), "threads_per_process": THREADS}
    torch.set_num_threads(THREADS)
    t_start = time.perf_counter()
    phases = _Phases()
    sft_dir = out / "sft"

    def warm_start() -> None:
        if (sft_dir / "config.json").is_file():
            return
        print("[demo] sft: warm-starting the tiny model", flush=True)
        steps = {} if args.sft_steps is None else {"steps": args.sft_steps}
        summary = run_sft(sft_dir, seed=args.seed, data_config=recipe.data, refinement=recipe.algorithm.refinement,
                          overwrite=True, log_every=100, eval_limit=0, **steps)
        print(f"[demo] sft: {summary['steps']} steps in {summary['train_seconds']:.0f} s", flush=True)

    phases.run("sft", warm_start)
    machine["train_runs"] = phases.run("train (both runs at once)", _train_all, args, sft_dir, out)
    models = {"warm start (SFT)": sft_dir, **{m: out / m / "hf" for m in METHODS}}
    results = phases.run("evaluate", evaluate_test_split, models, out / "eval", num_samples=args.eval_samples,
                         data_cfg=recipe.data)
    machine["load_end"] = _machine_load()
    machine["wall_seconds"] = time.perf_counter() - t_start
    machine["cpu_seconds"] = sum(phases.cpu.values())
    machine["cpu_seconds_per_phase"] = phases.cpu
    report = write_report(out, results, {m: out / m for m in METHODS}, phases.wall, machine, args.seed)
    (out / "timings.json").write_text(json.dumps({**phases.wall, "machine": machine}, indent=1))
    print(f"[demo] report: {report}", flush=True)
    return 0
