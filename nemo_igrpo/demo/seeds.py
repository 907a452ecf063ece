"""The demo over several seeds (docs/results.md): ``python -m nemo_igrpo.demo.seeds OUT DEMO_DIR...``.

Each ``DEMO_DIR`` is the output of one ``igrpo demo --seed S`` (its own warm start, GRPO and iGRPO runs, evaluation;
``tools/demo_seeds.sh`` makes them). Writes ``OUT/seeds.md``, ``OUT/seeds.json`` and three plots:

- ``accuracy.png``: sampled test accuracy of the warm start, GRPO and iGRPO per seed;
- ``refinement_vs_drafts.png``: iGRPO's per-step training accuracy of the mean draft, the best draft and the
  refinements (mean across seeds, a moving average over ``SMOOTH`` steps: each step has only 16 prompts);
- ``entropy.png``: per-step policy entropy by stage (GRPO's single-shot rollouts, iGRPO's drafts and refinements).

Across seeds, ± is the 95% Student-t half-width (``evaluation.compare.seed_stat``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from nemo_igrpo.demo.analysis import DRAFT_BEST, DRAFT_MEAN, REFINED, read_jsonl_rows
from nemo_igrpo.demo.report import BASELINE, TARGET_GAIN
from nemo_igrpo.evaluation.compare import seed_stat

METHODS = ("grpo", "igrpo")
SMOOTH = 5
# Steps per row of the drafts-vs-refinements table (the plot has every step).
WINDOW = 10
# Per-stage entropy, one estimator for every stage: the mean -log p of the sampled tokens (trainer/rollout.py,
# ``sampled_entropy``). Stage 2 is what a run trains on: GRPO's single-shot rollouts, iGRPO's refinements.
ENTROPY_STAGES = (("grpo", "entropy/stage2_sampled", "GRPO, single-shot rollouts"),
                  ("igrpo", "entropy/stage1_sampled", "iGRPO, Stage 1 (drafts)"),
                  ("igrpo", "entropy/stage2_sampled", "iGRPO, Stage 2 (refinements)"))


def load_demo(demo_dir: str | Path) -> dict:
    """One demo run: its summary (accuracies, gains) and both training runs' metrics."""
    d = Path(demo_dir)
    path = d / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {d} the output of a finished `igrpo demo`?")
    summary = json.loads(path.read_text())
    return {"dir": str(d), "seed": str(summary["seed"]), "summary": summary,
            "metrics": {m: read_jsonl_rows(d / m / "metrics.jsonl") for m in METHODS}}


def moving_average(values: Sequence[float], width: int) -> list[float]:
    """Trailing mean over up to ``width`` values (the first points average what there is)."""
    out = []
    for i in range(len(values)):
        window = values[max(0, i - width + 1): i + 1]
        out.append(sum(window) / len(window))
    return out


def mean_curve(runs: Sequence[list[dict]], key: str) -> tuple[list[int], list[float]]:
    """Steps that every run logged ``key`` at, and the mean across runs at each."""
    series = [{int(r["step"]): float(r[key]) for r in rows if r.get(key) is not None and r.get("step", 0) > 0}
              for rows in runs]
    if not series or not all(series):
        return [], []
    steps = sorted(set.intersection(*(set(s) for s in series)))
    return steps, [sum(s[t] for s in series) / len(series) for t in steps]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _stat(values: Sequence[float]) -> str:
    st = seed_stat(values)
    return f"{100 * st.mean:.1f}" if st.n == 1 else f"{100 * st.mean:.1f} ± {100 * st.half:.1f}"


def _plots(demos: list[dict], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    labels = [BASELINE, *METHODS]
    for i, demo in enumerate(demos):
        acc = demo["summary"]["accuracy"]
        ax.plot(range(len(labels)), [100 * acc[label]["sampled"] for label in labels], marker="o",
                label=f"seed {demo['seed']}")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("test avg@4 % (T=0.6)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)
    plt.close(fig)
    made.append("accuracy.png")

    igrpo = [d["metrics"]["igrpo"] for d in demos]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    drawn = False
    for key, name in ((DRAFT_MEAN, "mean draft"), (DRAFT_BEST, "best draft"), (REFINED, "refinement")):
        steps, mean = mean_curve(igrpo, key)
        if steps:
            ax.plot(steps, [100 * v for v in moving_average(mean, SMOOTH)], label=name)
            drawn = True
    steps, mean = mean_curve([d["metrics"]["grpo"] for d in demos], REFINED)
    if steps:
        ax.plot(steps, [100 * v for v in moving_average(mean, SMOOTH)], label="GRPO rollouts", linestyle="--")
    if drawn:
        ax.set_xlabel("training step")
        ax.set_ylabel("training accuracy %")
        ax.set_title(f"iGRPO drafts vs refinements: mean of {len(demos)} seeds, {SMOOTH}-step average", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "refinement_vs_drafts.png", dpi=120)
        made.append("refinement_vs_drafts.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    drawn = False
    for method, key, name in ENTROPY_STAGES:
        steps, mean = mean_curve([d["metrics"][method] for d in demos], key)
        if steps:
            ax.plot(steps, mean, label=name)
            drawn = True
    if drawn:
        ax.set_xlabel("training step")
        ax.set_ylabel("entropy, nats per token (T=0.7, sampled tokens)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "entropy.png", dpi=120)
        made.append("entropy.png")
    plt.close(fig)
    return made


def _window(rows: list[dict], key: str, first: int, last: int) -> float | None:
    vals = [float(r[key]) for r in rows if first <= int(r.get("step", 0)) <= last and r.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def summarize(demo_dirs: Sequence[str | Path], out_dir: str | Path) -> dict:
    """Write ``seeds.md``, ``seeds.json`` and the plots for the given demo outputs; return the numbers."""
    demos = [load_demo(d) for d in demo_dirs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = [BASELINE, *METHODS]
    acc = {label: [d["summary"]["accuracy"][label]["sampled"] for d in demos] for label in labels}
    greedy = {label: [d["summary"]["accuracy"][label]["greedy"] for d in demos] for label in labels}
    direct = {label: [d["summary"]["accuracy"][label]["direct_share"] for d in demos] for label in labels}
    gains = {m: [d["summary"]["gains"][m] for d in demos] for m in METHODS}
    seeds = [d["seed"] for d in demos]
    md = [f"# The demo over {len(demos)} seeds", "",
          f"Seeds {', '.join(seeds)}; each seed has its own warm start. Test avg@4 at T=0.6 / top-p 0.95 on the "
          "task's 200 test problems. Per seed, the gain is paired by problem with its 95% interval; across seeds, "
          "± is the 95% Student-t half-width.", "",
          "| model | " + " | ".join(f"seed {s} avg@4 %" for s in seeds) + " | mean avg@4 % | mean greedy % "
          "| answers without working % |", "|---|" + "---|" * (len(seeds) + 3)]
    for label in labels:
        md.append(f"| {label} | " + " | ".join(_pct(v) for v in acc[label]) + f" | {_stat(acc[label])} "
                  f"| {_stat(greedy[label])} | {_stat(direct[label])} |")
    md += ["", "| gain over the warm start, points | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
           "|---|" + "---|" * (len(seeds) + 1)]
    for m in METHODS:
        cells = [f"{100 * g['mean']:+.1f} ({100 * g['ci95'][0]:+.1f}, {100 * g['ci95'][1]:+.1f})" for g in gains[m]]
        md.append(f"| {m} | " + " | ".join(cells) + f" | {_stat([g['mean'] for g in gains[m]])} |")
    met = sum(g["mean"] >= TARGET_GAIN for g in gains["grpo"])
    md += ["", f"GRPO is at least {100 * TARGET_GAIN:.0f} points above its warm start in {met} of {len(demos)} seeds."]
    diff = [a - b for a, b in zip(acc["igrpo"], acc["grpo"])]
    md += [f"iGRPO minus GRPO, avg@4 points: {', '.join(f'{100 * x:+.1f}' for x in diff)} (mean {_stat(diff)})."]
    # Stage 1 against Stage 2 in windows of training.
    steps = max((int(r["step"]) for d in demos for r in d["metrics"]["igrpo"]), default=0)
    spans = [(lo, min(lo + WINDOW - 1, steps)) for lo in range(1, steps + 1, WINDOW)]
    md += ["", "## iGRPO: drafts against refinements (training accuracy %, mean across seeds)", "",
           "| steps | mean draft | best draft | refinement | refinement - mean draft | refinement - best draft |",
           "|---|---|---|---|---|---|"]
    windows = []
    for lo, hi in spans:
        vals = {k: [_window(d["metrics"]["igrpo"], k, lo, hi) for d in demos] for k in (DRAFT_MEAN, DRAFT_BEST, REFINED)}
        if any(v is None for vs in vals.values() for v in vs):
            continue
        vm, vb, vr = vals[DRAFT_MEAN], vals[DRAFT_BEST], vals[REFINED]
        md.append(f"| {lo}-{hi} | {_stat(vm)} | {_stat(vb)} | {_stat(vr)} "
                  f"| {_stat([r - m for r, m in zip(vr, vm)])} | {_stat([r - b for r, b in zip(vr, vb)])} |")
        windows.append({"steps": [lo, hi], **{k: v for k, v in vals.items()}})
    md += ["", "## Entropy by stage (nats per token at T=0.7, mean across seeds)", "",
           "| run, stage | steps 1-10 | last 10 steps |", "|---|---|---|"]
    for method, key, name in ENTROPY_STAGES:
        first = [_window(d["metrics"][method], key, 1, 10) for d in demos]
        last = [_window(d["metrics"][method], key, steps - 9, steps) for d in demos]
        if any(v is None for v in first + last):
            md.append(f"| {name} | not logged | not logged |")
            continue
        md.append(f"| {name} | {sum(first) / len(first):.3f} | {sum(last) / len(last):.3f} |")
    plots = _plots(demos, out)
    md += [""] + [f"![{p[:-4]}]({p})" for p in plots]
    (out / "seeds.md").write_text("\n".join(md) + "\n")
    result = {"seeds": seeds, "dirs": [d["dir"] for d in demos], "sampled": acc, "greedy": greedy,
              "direct_share": direct, "gains": gains, "igrpo_minus_grpo": diff, "refinement_windows": windows,
              "plots": plots}
    (out / "seeds.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nemo_igrpo.demo.seeds", description=__doc__.split("\n\n")[0])
    p.add_argument("output", help="directory for seeds.md, seeds.json and the plots")
    p.add_argument("demo_dirs", nargs="+", help="outputs of `igrpo demo --seed S`")
    args = p.parse_args(argv)
    summarize(args.demo_dirs, args.output)
    print(f"{args.output}/seeds.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
