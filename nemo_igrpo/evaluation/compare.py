"""``igrpo compare``: a report (markdown + PNG plots) over training runs, e.g. GRPO vs iGRPO at matched budget.

Each run directory holds ``metrics.jsonl`` (one JSON object per logged step, written by the trainer), optionally
``eval/summary.json`` (written by ``igrpo evaluate`` / ``evaluate_model``) and ``config.yaml``. Runs with the same name
and different seeds form a group; numbers of a group are the mean across its seeds with a 95% confidence interval
(Student t, because there are few seeds; a single seed has no interval and says so).

What the report shows, and why:

- final accuracy (``val/accuracy`` at the last step, and ``eval/summary.json`` avg@k per dataset);
- accuracy against cumulative generated tokens: iGRPO spends part of its group on drafts, so the fair comparison
  with GRPO is at equal generation budget, not at equal step;
- policy entropy per step and the first step where it falls below a threshold: the paper reports that GRPO's entropy
  collapses (2.45 -> 0.60 nats by 10% of training) while iGRPO keeps exploring (0.80 at 15%);
- the refinement gain over the selected draft (``reward/refinement_gain``) and the draft reward;
- wall-clock per phase (``time/*``), to see what the extra Stage-1 generation costs.

A metric a run did not log (GRPO has no draft metrics) is skipped with a note, never an error; a directory without
``metrics.jsonl`` is an error naming it.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from nemo_igrpo.errors import InputNotFoundError

ACCURACY_KEY = "val/accuracy"
TOKENS_KEY = "tokens/generated"
ENTROPY_KEY = "entropy"
REWARD_KEY = "reward/mean"
DRAFT_KEY = "reward/draft_best"
GAIN_KEY = "reward/refinement_gain"
PHASES = ("time/generate", "time/reward", "time/logprob", "time/train", "time/refit")
STEP_TIME_KEY = "time/step"
# Fractions of training at which entropy is reported, the points the paper quotes (10% and 15%) and the end.
ENTROPY_FRACTIONS = (0.1, 0.15, 0.5, 1.0)
# Fractions of the smallest total budget at which the matched-budget accuracy table is read.
BUDGET_FRACTIONS = (0.25, 0.5, 0.75, 1.0)

# Two-sided 95% Student t quantiles by degrees of freedom (1..30); beyond 30 the normal 1.96 is within 2%.
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t95(df: int) -> float:
    """Two-sided 95% quantile of Student's t with ``df`` degrees of freedom."""
    return _T95[df - 1] if 1 <= df <= len(_T95) else 1.959964


@dataclass
class SeedStat:
    """Mean across seeds with a 95% CI (``half`` = 0 and ``n`` = 1 for a single seed)."""

    mean: float
    half: float
    n: int

    def fmt(self, scale: float = 1.0, digits: int = 3) -> str:
        if self.n == 1:
            return f"{self.mean * scale:.{digits}f} (1 seed)"
        return f"{self.mean * scale:.{digits}f} ± {self.half * scale:.{digits}f}"


def seed_stat(values: Sequence[float]) -> SeedStat:
    """Mean and 95% CI half-width (t quantile x sample std / sqrt(n)) over seeds."""
    n = len(values)
    if n == 0:
        raise ValueError("seed_stat of no values")
    mean = sum(values) / n
    if n == 1:
        return SeedStat(mean, 0.0, 1)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return SeedStat(mean, t95(n - 1) * sd / math.sqrt(n), n)


# --- loading -----------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One run directory's logged data."""

    path: Path
    name: str
    seed: str
    records: list[dict]
    eval_summary: dict | None = None
    config: dict | None = None

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of the records that logged ``key`` as a finite number."""
        steps, values = [], []
        for i, rec in enumerate(self.records):
            v = rec.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                steps.append(float(rec.get("step", i)))
                values.append(float(v))
        return steps, values

    def has(self, key: str) -> bool:
        return bool(self.series(key)[1])

    @property
    def num_steps(self) -> int:
        steps = [r["step"] for r in self.records if isinstance(r.get("step"), (int, float))]
        return int(max(steps)) if steps else len(self.records)

    def cumulative_tokens(self) -> dict[float, float]:
        """step -> generated tokens up to and including that step. ``tokens/generated`` is per step; a step that did
        not log it adds nothing."""
        total, out = 0.0, {}
        for i, rec in enumerate(self.records):
            v = rec.get(TOKENS_KEY)
            if isinstance(v, (int, float)) and math.isfinite(v):
                total += float(v)
            out[float(rec.get("step", i))] = total
        return out


def _read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl records sorted by step. A torn last line (a run still writing, or killed) is skipped; any other
    bad line is an error naming it."""
    lines = path.read_text(encoding="utf-8").split("\n")
    records = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if all(not rest.strip() for rest in lines[lineno:]):
                continue
            raise ValueError(f"{path}:{lineno}: malformed JSON") from None
        if isinstance(rec, dict):
            records.append(rec)
    # The trainer may log a step twice (e.g. a validation record after the training one): merge by step.
    by_step: dict[Any, dict] = {}
    unstepped = []
    for rec in records:
        if "step" in rec:
            by_step.setdefault(rec["step"], {}).update(rec)
        else:
            unstepped.append(rec)
    return [by_step[s] for s in sorted(by_step)] + unstepped


_SEED_SUFFIX = re.compile(r"[-_.]?seed[-_]?(\d+)$", re.IGNORECASE)


def _dig(config: dict | None, *paths: str) -> Any:
    """The first of dotted ``paths`` present in a nested dict."""
    for p in paths:
        node: Any = config
        for part in p.split("."):
            if not isinstance(node, dict) or part not in node:
                node = None
                break
            node = node[part]
        if node is not None:
            return node
    return None


def load_run(path: str | Path) -> Run:
    """Read a run directory. The group name is ``name`` (or ``trainer.name``/``run.name``) from config.yaml, else the
    directory name without a ``seed<N>`` suffix; the seed is ``seed``/``trainer.seed`` or that suffix."""
    path = Path(path)
    metrics_file = path / "metrics.jsonl"
    if not metrics_file.is_file():
        raise InputNotFoundError(f"{path}: no metrics.jsonl (is this a training run directory?)")
    config = None
    if (path / "config.yaml").is_file():
        import yaml

        loaded = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
        config = loaded if isinstance(loaded, dict) else None
    summary = None
    if (path / "eval" / "summary.json").is_file():
        summary = json.loads((path / "eval" / "summary.json").read_text(encoding="utf-8"))
    dirname = path.resolve().name
    m = _SEED_SUFFIX.search(dirname)
    name = _dig(config, "name", "trainer.name", "run.name") or (dirname[: m.start()] if m else dirname)
    seed = _dig(config, "seed", "trainer.seed")
    if seed is None:
        seed = m.group(1) if m else dirname
    return Run(path, str(name), str(seed), _read_metrics(metrics_file), summary, config)


def group_runs(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs by name, in first-seen order."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.name, []).append(r)
    return groups


# --- analyses (pure; the report formats them) --------------------------------------------------------------------------


def final_value(run: Run, key: str) -> float | None:
    """The last logged value of ``key``."""
    values = run.series(key)[1]
    return values[-1] if values else None


def value_at_budget(run: Run, budget: float) -> float | None:
    """The last ``val/accuracy`` logged at a step whose cumulative generated tokens are <= ``budget``."""
    cum = run.cumulative_tokens()
    best = None
    for step, acc in zip(*run.series(ACCURACY_KEY)):
        if cum.get(step, math.inf) <= budget:
            best = acc
    return best


def first_step_below(run: Run, key: str, threshold: float) -> float | None:
    """The first step at which ``key`` is below ``threshold``; None if never."""
    for step, v in zip(*run.series(key)):
        if v < threshold:
            return step
    return None


def value_at_fraction(run: Run, key: str, fraction: float) -> float | None:
    """``key`` at the first logged step >= fraction x the run's last step."""
    steps, values = run.series(key)
    if not steps:
        return None
    target = fraction * steps[-1]
    for s, v in zip(steps, values):
        if s >= target:
            return v
    return values[-1]


def mean_over_steps(run: Run, key: str) -> float | None:
    values = run.series(key)[1]
    return sum(values) / len(values) if values else None


def _group_stat(runs: Sequence[Run], fn) -> SeedStat | None:
    values = [v for v in (fn(r) for r in runs) if v is not None]
    return seed_stat(values) if values else None


# --- plots -------------------------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: compare runs on login nodes and in CI without a display
    import matplotlib.pyplot as plt

    return plt


def _mean_curve(runs: Sequence[Run], key: str) -> tuple[list[float], list[float], list[float]]:
    """Steps logged by every seed, the mean across seeds and the CI half-width at each."""
    per_run = [dict(zip(*r.series(key))) for r in runs]
    common = sorted(set.intersection(*(set(d) for d in per_run))) if per_run else []
    means, halves = [], []
    for s in common:
        st = seed_stat([d[s] for d in per_run])
        means.append(st.mean)
        halves.append(st.half)
    return common, means, halves


def _plot_per_step(groups: dict[str, list[Run]], key: str, ylabel: str, out: Path, hline: float | None = None) -> bool:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    drawn = False
    for name, runs in groups.items():
        runs = [r for r in runs if r.has(key)]
        if not runs:
            continue
        steps, mean, half = _mean_curve(runs, key)
        if not steps:
            continue
        line = ax.plot(steps, mean, label=f"{name} (n={len(runs)})")[0]
        if len(runs) > 1:
            ax.fill_between(steps, [m - h for m, h in zip(mean, half)], [m + h for m, h in zip(mean, half)],
                            color=line.get_color(), alpha=0.2)
        drawn = True
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle="--", linewidth=1)
    return _finish(fig, ax, drawn, "step", ylabel, out)


def _finish(fig, ax, drawn: bool, xlabel: str, ylabel: str, out: Path) -> bool:
    """Label and save a line plot (only if something was drawn), then free the figure."""
    if drawn:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out, dpi=120)
    _plt().close(fig)
    return drawn


def _plot_accuracy_vs_tokens(groups: dict[str, list[Run]], out: Path) -> bool:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    drawn = False
    for gi, (name, runs) in enumerate(groups.items()):
        color = f"C{gi % 10}"
        for ri, r in enumerate(runs):
            steps, acc = r.series(ACCURACY_KEY)
            if not steps or not r.has(TOKENS_KEY):
                continue
            cum = r.cumulative_tokens()
            ax.plot([cum[s] for s in steps], acc, color=color, marker="o", markersize=3,
                    label=name if ri == 0 else None, alpha=0.9 if len(runs) == 1 else 0.6)
            drawn = True
    return _finish(fig, ax, drawn, "cumulative generated tokens", ACCURACY_KEY, out)


def _plot_phases(groups: dict[str, list[Run]], phases: Sequence[str], out: Path) -> bool:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    names = list(groups)
    bottoms = [0.0] * len(names)
    drawn = False
    for phase in phases:
        heights = []
        for name in names:
            st = _group_stat(groups[name], lambda r: sum(r.series(phase)[1]) if r.has(phase) else None)
            heights.append(st.mean if st else 0.0)
        if any(heights):
            ax.bar(names, heights, bottom=bottoms, label=phase.split("/", 1)[1])
            bottoms = [b + h for b, h in zip(bottoms, heights)]
            drawn = True
    if drawn:
        ax.set_ylabel("seconds (total over the run, mean over seeds)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out, dpi=120)
    plt.close(fig)
    return drawn


# --- the report --------------------------------------------------------------------------------------------------------


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]


def _fmt(st: SeedStat | None, scale: float = 1.0, digits: int = 3) -> str:
    return "n/a" if st is None else st.fmt(scale, digits)


def compare_runs(
    run_dirs: Sequence[str | Path], output_dir: str | Path, entropy_threshold: float | None = None
) -> dict:
    """Write ``report.md``, ``summary.json`` and PNG plots comparing runs; return the summary (numbers per group).

    ``entropy_threshold``: nats; None uses half of each run's first logged entropy (a scale-free default: a tiny demo
    model and a 7B model start at very different entropies).
    """
    runs = [load_run(d) for d in run_dirs]
    groups = group_runs(runs)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    summary: dict = {"groups": {}}
    md = ["# Run comparison", ""]
    md += _table(
        ["group", "seeds", "steps", "run directories"],
        [[n, ", ".join(r.seed for r in rs), ", ".join(str(r.num_steps) for r in rs), ", ".join(str(r.path) for r in rs)]
         for n, rs in groups.items()],
    )
    md += ["", "Group values are the mean across seeds ± the 95% confidence half-width (Student t).", ""]
    for name, rs in groups.items():
        summary["groups"][name] = {"seeds": [r.seed for r in rs], "runs": [str(r.path) for r in rs]}

    # Final accuracy.
    md += ["## Final accuracy", ""]
    rows = []
    for name, rs in groups.items():
        st = _group_stat(rs, lambda r: final_value(r, ACCURACY_KEY))
        summary["groups"][name]["final_val_accuracy"] = None if st is None else vars(st)
        rows.append([name, _fmt(st)])
    if all(r[1] == "n/a" for r in rows):
        notes.append(f"no run logged `{ACCURACY_KEY}`: final and matched-budget accuracy skipped")
    else:
        md += _table(["group", f"final {ACCURACY_KEY}"], rows) + [""]
    eval_rows = []
    datasets = sorted({d for r in runs if r.eval_summary for d in r.eval_summary.get("datasets", {})})
    for name, rs in groups.items():
        for ds in datasets:
            vals = [r.eval_summary["datasets"][ds] for r in rs if r.eval_summary and ds in r.eval_summary["datasets"]]
            if not vals:
                continue
            st = seed_stat([v["avg@k"] for v in vals])
            # With one seed the across-seed CI is unknown; the within-run stderr across problems is what we have.
            within = f"stderr across problems {100 * vals[0]['avg@k_stderr']:.1f}" if len(vals) == 1 else ""
            maj = seed_stat([v["maj@k"] for v in vals if v.get("maj@k") is not None]) if any(
                v.get("maj@k") is not None for v in vals) else None
            summary["groups"][name].setdefault("eval", {})[ds] = {"avg@k": vars(st), "k": vals[0]["k"]}
            eval_rows.append([name, ds, str(vals[0]["k"]), st.fmt(100, 1), _fmt(maj, 100, 1), within])
    if eval_rows:
        md += ["Held-out evaluation (`eval/summary.json`, percent):", ""]
        md += _table(["group", "dataset", "k", "avg@k", "maj@k", "note"], eval_rows) + [""]
    elif runs:
        notes.append("no run has eval/summary.json: held-out evaluation table skipped (run `igrpo evaluate`)")

    # Matched budget.
    md += ["## Accuracy at matched generation budget", ""]
    with_budget = {n: [r for r in rs if r.has(TOKENS_KEY) and r.has(ACCURACY_KEY)] for n, rs in groups.items()}
    with_budget = {n: rs for n, rs in with_budget.items() if rs}
    if with_budget:
        smallest = min(max(r.cumulative_tokens().values()) for rs in with_budget.values() for r in rs)
        budgets = [f * smallest for f in BUDGET_FRACTIONS]
        rows = []
        for name, rs in with_budget.items():
            cells = []
            for b in budgets:
                st = _group_stat(rs, lambda r, b=b: value_at_budget(r, b))
                cells.append(_fmt(st))
            summary["groups"][name]["accuracy_at_budget"] = dict(zip([str(int(b)) for b in budgets], cells))
            rows.append([name, *cells])
        md += [
            f"`{ACCURACY_KEY}` at the last validation within a budget of cumulative `{TOKENS_KEY}` (fractions of the "
            "smallest run's total, so every group is read at a budget it reached):",
            "",
        ]
        md += _table(["group", *(f"{int(b):,} tokens" for b in budgets)], rows) + [""]
        if _plot_accuracy_vs_tokens(with_budget, out / "accuracy_vs_tokens.png"):
            md += ["![accuracy vs tokens](accuracy_vs_tokens.png)", ""]
    else:
        notes.append(f"no run logged both `{TOKENS_KEY}` and `{ACCURACY_KEY}`: matched-budget view skipped")

    # Entropy.
    md += ["## Entropy", ""]
    ent_groups = {n: [r for r in rs if r.has(ENTROPY_KEY)] for n, rs in groups.items()}
    ent_groups = {n: rs for n, rs in ent_groups.items() if rs}
    if ent_groups:
        rule = (f"{entropy_threshold} nats" if entropy_threshold is not None
                else "half of the run's first logged entropy")
        md += [f"First step with `{ENTROPY_KEY}` below the threshold ({rule}), and entropy at fractions of training "
               "(paper: GRPO 2.45 -> 0.60 nats by 10%, iGRPO still 0.80 at 15%).", ""]
        rows = []
        for name, rs in ent_groups.items():
            def thr(r):
                return entropy_threshold if entropy_threshold is not None else 0.5 * r.series(ENTROPY_KEY)[1][0]

            crossings = [first_step_below(r, ENTROPY_KEY, thr(r)) for r in rs]
            cross_txt = ", ".join("never" if c is None else f"{c:g}" for c in crossings)
            at = [_group_stat(rs, lambda r, f=f: value_at_fraction(r, ENTROPY_KEY, f)) for f in ENTROPY_FRACTIONS]
            summary["groups"][name]["entropy_first_below"] = crossings
            summary["groups"][name]["entropy_at_fraction"] = {
                str(f): (None if s is None else vars(s)) for f, s in zip(ENTROPY_FRACTIONS, at)}
            rows.append([name, cross_txt, *(_fmt(s) for s in at)])
        md += _table(["group", "first step below (per seed)", *(f"at {int(f * 100)}%" for f in ENTROPY_FRACTIONS)],
                     rows) + [""]
        hline = entropy_threshold
        if _plot_per_step(ent_groups, ENTROPY_KEY, "entropy (nats)", out / "entropy.png", hline):
            md += ["![entropy](entropy.png)", ""]
    else:
        notes.append(f"no run logged `{ENTROPY_KEY}`: entropy section skipped")

    # Refinement gain.
    md += ["## Refinement over the selected draft", ""]
    rows = []
    for name, rs in groups.items():
        gain = _group_stat(rs, lambda r: mean_over_steps(r, GAIN_KEY))
        draft = _group_stat(rs, lambda r: mean_over_steps(r, DRAFT_KEY))
        reward = _group_stat(rs, lambda r: mean_over_steps(r, REWARD_KEY))
        summary["groups"][name]["refinement"] = {
            k: (None if s is None else vars(s)) for k, s in ((GAIN_KEY, gain), (DRAFT_KEY, draft), (REWARD_KEY, reward))}
        rows.append([name, _fmt(reward), _fmt(draft), _fmt(gain)])
    md += ["Means over all logged steps; n/a: not logged (GRPO has no drafts).", ""]
    md += _table(["group", REWARD_KEY, DRAFT_KEY, GAIN_KEY], rows) + [""]
    gain_groups = {n: [r for r in rs if r.has(GAIN_KEY)] for n, rs in groups.items()}
    gain_groups = {n: rs for n, rs in gain_groups.items() if rs}
    if gain_groups and _plot_per_step(gain_groups, GAIN_KEY, "refinement gain", out / "refinement_gain.png", 0.0):
        md += ["![refinement gain](refinement_gain.png)", ""]
    elif not gain_groups:
        notes.append(f"no run logged `{GAIN_KEY}`: refinement plot skipped")
    reward_groups = {n: [r for r in rs if r.has(REWARD_KEY)] for n, rs in groups.items()}
    reward_groups = {n: rs for n, rs in reward_groups.items() if rs}
    if reward_groups and _plot_per_step(reward_groups, REWARD_KEY, REWARD_KEY, out / "reward.png"):
        md += ["![reward](reward.png)", ""]

    # Wall clock.
    md += ["## Wall-clock per phase", ""]
    phases = [p for p in (*PHASES, STEP_TIME_KEY) if any(r.has(p) for r in runs)]
    if phases:
        rows = []
        for name, rs in groups.items():
            cells = []
            for p in phases:
                st = _group_stat(rs, lambda r, p=p: sum(r.series(p)[1]) if r.has(p) else None)
                cells.append(_fmt(st, digits=1))
                summary["groups"][name].setdefault("time_total_s", {})[p] = None if st is None else vars(st)
            rows.append([name, *cells])
        md += ["Seconds summed over the run (mean across seeds):", ""]
        md += _table(["group", *phases], rows) + [""]
        inner = [p for p in phases if p != STEP_TIME_KEY]
        if inner and _plot_phases(groups, inner, out / "time_per_phase.png"):
            md += ["![time per phase](time_per_phase.png)", ""]
        missing = [p for p in PHASES if p not in phases]
        if missing:
            notes.append(f"phases not logged by any run: {', '.join(missing)}")
    else:
        notes.append("no run logged `time/*`: wall-clock section skipped")

    if notes:
        md += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    summary["notes"] = notes
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``igrpo compare``."""
    p = subparsers.add_parser(
        "compare",
        help="report + plots comparing training runs (seeds of one name are grouped)",
        description=(
            "Compare run directories (metrics.jsonl, optional eval/summary.json and config.yaml): final accuracy with "
            "95% CIs across seeds, accuracy vs cumulative generated tokens, entropy, refinement gain, wall-clock per "
            "phase. Writes report.md, summary.json and PNG plots to --output."
        ),
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--output", required=True, help="report directory")
    p.add_argument("--entropy-threshold", type=float, default=None,
                   help="nats; default: half of each run's first logged entropy")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    compare_runs(args.runs, args.output, args.entropy_threshold)
    print(Path(args.output) / "report.md")
    return 0
