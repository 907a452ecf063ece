"""The demo's evaluation and report: single-shot test accuracy of the warm start and of both trained policies, the
gain of each over the warm start, iGRPO's drafts against its refinements, and a side-by-side of the two training runs
(``igrpo compare`` does the plots)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nemo_igrpo.data.config import DataConfig
from nemo_igrpo.demo.analysis import (DRAFT_BEST, DRAFT_MEAN, REFINED, direct_share, paired_gain,
                                      per_problem_accuracy, read_jsonl_rows, refinement_windows)

# The demo's generation limit (the recipes' generation.max_new_tokens).
MAX_NEW_TOKENS = 96
# The bar the demo is built to clear: GRPO's sampled test accuracy at least this far above the warm start's.
TARGET_GAIN = 0.10
# Steps averaged at the start and at the end of training for the draft / refinement table.
WINDOW = 10
BASELINE = "warm start (SFT)"


def _test_records(data_cfg: DataConfig) -> list[dict[str, Any]]:
    from nemo_igrpo.data.synthetic import generate_splits

    return [{"id": r["id"], "problem": r["problem"], "answer": str(r["answer"])}
            for r in generate_splits(data_cfg.synthetic)["test"]]


def evaluate_test_split(models: dict[str, Path], out_dir: Path, num_samples: int,
                        data_cfg: DataConfig) -> dict[str, dict[str, Any]]:
    """Per model: greedy accuracy and sampled avg@k (temperature 0.6, top-p 0.95) on the task's test split, the
    per-problem sampled accuracy, and the share of sampled answers given without working."""
    from transformers import AutoTokenizer

    from nemo_igrpo.backends.generation.hf_generator import HFGenerator
    from nemo_igrpo.evaluation.evaluate import build_grader, evaluate_model
    from nemo_igrpo.evaluation.protocol import EvalProtocol

    records = _test_records(data_cfg)
    results: dict[str, dict[str, Any]] = {}
    with build_grader(num_workers=2, timeout_s=5.0) as grader:
        for label, model_dir in models.items():
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            generator = HFGenerator(str(model_dir), batch_size=200)
            slug = label.split(" ")[0]
            row: dict[str, Any] = {"model_dir": str(model_dir)}
            for mode, protocol in (("greedy", EvalProtocol(k=1, temperature=0.0, top_p=1.0)),
                                   ("sampled", EvalProtocol(k=num_samples))):
                protocol.max_new_tokens = MAX_NEW_TOKENS
                # The prompt the demo model was trained on (data.prompts.build_messages with the recipe's own,
                # shorter instruction), not NeMo-Skills' order.
                protocol.prompt = "{problem}" + (f" {data_cfg.instruction}" if data_cfg.instruction else "")
                protocol.system_prompt = data_cfg.system_prompt
                protocol.max_batch_sequences = 200
                protocol.problems_per_call = max(1, 200 // protocol.k_for("demo_test"))
                summary = evaluate_model(generator, tokenizer, {"demo_test": records}, protocol,
                                         out_dir / slug / mode, grader, model_name=str(model_dir))
                row[mode] = summary["datasets"]["demo_test"]
            samples = read_jsonl_rows(row["sampled"]["samples_file"])
            row["per_problem"] = per_problem_accuracy(samples)
            row["direct_share"] = direct_share(samples)
            results[label] = row
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    return results


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _metrics(run_dir: Path) -> list[dict]:
    return read_jsonl_rows(run_dir / "metrics.jsonl")


def _phase_means(rows: list[dict]) -> dict[str, float]:
    rows = [r for r in rows if r.get("step", 0) > 0 and r.get("time/step") is not None]
    keys = ("time/generate", "time/reward", "time/logprob", "time/train", "time/refit", "time/step",
            "tokens/generated")
    return {k: sum(r.get(k) or 0.0 for r in rows) / max(len(rows), 1) for k in keys}


def gains(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each trained model's sampled-accuracy gain over the warm start, paired by problem (mean, stderr, 95% CI)."""
    base = results[BASELINE]["per_problem"]
    return {label: paired_gain(base, row["per_problem"]) for label, row in results.items() if label != BASELINE}


def write_report(out: Path, results: dict[str, dict[str, Any]], run_dirs: dict[str, Path],
                 timings: dict[str, float], machine: dict[str, Any], seed: int) -> Path:
    """``out/report.md`` with the accuracy table and the gains over the warm start, iGRPO's drafts against its
    refinements, seconds per step per phase, the wall clock with the machine's load, and the comparison plots."""
    from nemo_igrpo.evaluation.compare import compare_runs

    compare_runs([str(d) for d in run_dirs.values()], out / "compare")
    k = next(iter(results.values()))["sampled"].get("k", "k")
    gain = gains(results)
    wall = machine.get("wall_seconds", sum(timings.values()))
    md = ["# iGRPO vs GRPO: the CPU demo", "",
          "A tiny Llama warm-started on the synthetic arithmetic task by a teacher that answers half of the problems "
          "without working, then trained with GRPO (8 rollouts per prompt) and iGRPO (4 drafts + 4 refinements) at the "
          "same rollout budget, from the same warm start and seed. Accuracy is single-shot (no drafts) on the test "
          f"split; the gain is paired by problem, ± its 95% interval. See docs/demo.md.", "",
          f"| model | greedy % | avg@{k} % (T=0.6) ± stderr | gain over the warm start, points (95% CI) "
          "| answers without working % |", "|---|---|---|---|---|"]
    for label, row in results.items():
        s, g = row["sampled"], gain.get(label)
        gtxt = "-" if g is None else f"{100 * g.mean:+.1f} ({100 * g.ci95_low:+.1f}, {100 * g.ci95_high:+.1f})"
        md.append(f"| {label} | {_pct(row['greedy']['avg@k'])} | {_pct(s['avg@k'])} ± {_pct(s['avg@k_stderr'])} "
                  f"| {gtxt} | {_pct(row['direct_share'])} |")
    if "grpo" in gain:
        g = gain["grpo"]
        verdict = "meets" if g.mean >= TARGET_GAIN else "misses"
        md += ["", f"GRPO {verdict} the demo's bar of +{100 * TARGET_GAIN:.0f} points over the warm start "
               f"(measured {100 * g.mean:+.1f})."]
    windows = {name: refinement_windows(_metrics(d), WINDOW) for name, d in run_dirs.items()}
    windows = {name: w for name, w in windows.items() if w}
    if windows:
        md += ["", f"## iGRPO: drafts against refinements (training accuracy, mean of the first and last {WINDOW} steps)",
               "", "Drafts are single-shot samples of the current policy; the refinement sees the problem and the "
               "best-rewarded draft. A refinement that only copied its draft would score the best draft's accuracy.",
               "", "| run | steps | mean draft % | best draft % | refinement % |", "|---|---|---|---|---|"]
        for name, w in windows.items():
            for span in ("first", "last"):
                v = w[span]
                md.append(f"| {name} | {span} {WINDOW} | {_pct(v[DRAFT_MEAN])} | {_pct(v[DRAFT_BEST])} "
                          f"| {_pct(v[REFINED])} |")
    md += ["", "## Seconds per training step, by phase (mean over steps)", "",
           "| run | generate | reward | logprob | train | refit | step | tokens generated / step |",
           "|---|---|---|---|---|---|---|---|"]
    for name, d in run_dirs.items():
        p = _phase_means(_metrics(d))
        md.append(f"| {name} | " + " | ".join(f"{p[k2]:.2f}" for k2 in
                                              ("time/generate", "time/reward", "time/logprob", "time/train",
                                               "time/refit", "time/step")) + f" | {p['tokens/generated']:.0f} |")
    md += ["", "## Wall clock", "",
           f"{machine.get('cpus')} CPUs; load average (1 min) {machine.get('load_start', 0):.1f} at the start, "
           f"{machine.get('load_end', 0):.1f} at the end; the demo's processes used "
           f"{machine.get('cpu_seconds', 0):.0f} CPU seconds in {wall:.0f} s "
           f"({machine.get('cpu_seconds', 0) / max(wall, 1e-9):.2f} cores on average), one thread per process. Every "
           "number above except the times is independent of the load (all sampling is seeded per step).", "",
           "| phase | seconds | CPU seconds |", "|---|---|---|"]
    cpu = machine.get("cpu_seconds_per_phase", {})
    md += [f"| {k2} | {v:.0f} | {cpu[k2]:.0f} |" if k2 in cpu else f"| {k2} | {v:.0f} | - |"
           for k2, v in timings.items()]
    md += [f"| - {name} process | {r['wall_s']:.0f} | {r['cpu_s']:.0f} |"
           for name, r in machine.get("train_runs", {}).items()]
    md += ["", "## Training curves", "", "Reward, accuracy and entropy per step for both runs: see "
           "[compare/report.md](compare/report.md).", ""]
    for png in sorted((out / "compare").glob("*.png")):
        md.append(f"![{png.stem}](compare/{png.name})")
    report = out / "report.md"
    report.write_text("\n".join(md) + "\n")
    summary = {"seed": seed, "gains": {label: g.as_dict() for label, g in gain.items()},
               "accuracy": {label: {"greedy": row["greedy"]["avg@k"], "sampled": row["sampled"]["avg@k"],
                                    "sampled_stderr": row["sampled"]["avg@k_stderr"],
                                    "direct_share": row["direct_share"]} for label, row in results.items()},
               "refinement_windows": windows, "timings": timings, "machine": machine}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return report
