"""The demo's evaluation and report: single-shot test accuracy of the warm start and of both trained policies, and a
side-by-side of the two training runs (``igrpo compare`` does the plots)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nemo_igrpo.data.config import DataConfig

# The demo's generation limit and the test protocol: greedy, and avg@k at the NeMo-Skills sampling settings.
MAX_NEW_TOKENS = 96


def _test_records() -> list[dict[str, Any]]:
    from nemo_igrpo.data.synthetic import generate_splits

    return [{"id": r["id"], "problem": r["problem"], "answer": str(r["answer"])}
            for r in generate_splits(DataConfig().synthetic)["test"]]


def evaluate_test_split(models: dict[str, Path], out_dir: Path, num_samples: int) -> dict[str, dict[str, Any]]:
    """Per model: greedy accuracy and sampled avg@k (temperature 0.6, top-p 0.95) on the synthetic test split."""
    from transformers import AutoTokenizer

    from nemo_igrpo.backends.generation.hf_generator import HFGenerator
    from nemo_igrpo.evaluation.evaluate import build_grader, evaluate_model
    from nemo_igrpo.evaluation.protocol import TRAINING_PROMPT, EvalProtocol

    records = _test_records()
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
                protocol.prompt = TRAINING_PROMPT  # the format the demo model was trained on
                protocol.max_batch_sequences = 200
                protocol.problems_per_call = max(1, 200 // protocol.k_for("demo_test"))
                summary = evaluate_model(generator, tokenizer, {"demo_test": records}, protocol,
                                         out_dir / slug / mode, grader, model_name=str(model_dir))
                row[mode] = summary["datasets"]["demo_test"]
            results[label] = row
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    return results


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _phase_means(run_dir: Path) -> dict[str, float]:
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    rows = [r for r in rows if r.get("step", 0) > 0 and r.get("time/step") is not None]
    keys = ("time/generate", "time/reward", "time/logprob", "time/train", "time/refit", "time/step",
            "tokens/generated")
    return {k: sum(r.get(k) or 0.0 for r in rows) / max(len(rows), 1) for k in keys}


def write_report(out: Path, results: dict[str, dict[str, Any]], run_dirs: dict[str, Path],
                 timings: dict[str, float]) -> Path:
    """``out/report.md`` with the accuracy table, seconds per step per phase, and the comparison plots."""
    from nemo_igrpo.evaluation.compare import compare_runs

    compare_runs([str(d) for d in run_dirs.values()], out / "compare")
    k = next(iter(results.values()))["sampled"].get("k", "k")
    md = ["# iGRPO vs GRPO: the CPU demo", "",
          "Tiny Llama warm-started on the synthetic arithmetic task, then trained with GRPO (8 rollouts per prompt) and "
          "iGRPO (4 drafts + 4 refinements) at the same rollout budget, from the same warm start and seed. "
          "Accuracy is single-shot (no drafts) on the test split.", "",
          f"| model | greedy accuracy % | avg@{k} % (T=0.6) | ± stderr |", "|---|---|---|---|"]
    for label, row in results.items():
        s = row["sampled"]
        md.append(f"| {label} | {_pct(row['greedy']['avg@k'])} | {_pct(s['avg@k'])} | {_pct(s['avg@k_stderr'])} |")
    md += ["", "## Seconds per training step, by phase (mean over steps)", "",
           "| run | generate | reward | logprob | train | refit | step | tokens generated / step |",
           "|---|---|---|---|---|---|---|---|"]
    for name, d in run_dirs.items():
        p = _phase_means(d)
        md.append(f"| {name} | " + " | ".join(f"{p[k2]:.2f}" for k2 in
                                              ("time/generate", "time/reward", "time/logprob", "time/train",
                                               "time/refit", "time/step")) + f" | {p['tokens/generated']:.0f} |")
    md += ["", "## Wall clock", "", "| phase | seconds |", "|---|---|"]
    md += [f"| {k2} | {v:.0f} |" for k2, v in timings.items()]
    md += ["", "## Training curves", "", "Reward, accuracy and entropy per step for both runs: see "
           "[compare/report.md](compare/report.md).", ""]
    for png in sorted((out / "compare").glob("*.png")):
        md.append(f"![{png.stem}](compare/{png.name})")
    report = out / "report.md"
    report.write_text("\n".join(md) + "\n")
    return report
