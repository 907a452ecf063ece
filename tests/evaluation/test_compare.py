"""igrpo compare on hand-written run directories (data fixtures): grouping by name across seeds, the report's
numbers, the plots, graceful skipping of missing keys, and the error for a directory without metrics.jsonl."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from nemo_igrpo.evaluation import compare as C


def _write_run(root: Path, dirname: str, name: str, seed: int, steps: list[dict], eval_avg: float | None = None):
    d = root / dirname
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(f"name: {name}\ntrainer:\n  seed: {seed}\n")
    (d / "metrics.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    if eval_avg is not None:
        (d / "eval").mkdir()
        summary = {"datasets": {"aime24": {"k": 4, "avg@k": eval_avg, "avg@k_stderr": 0.05, "maj@k": eval_avg}}}
        (d / "eval" / "summary.json").write_text(json.dumps(summary))
    return d


def _grpo_steps(acc_final: float):
    # 4 steps, 100 tokens each; validation at steps 2 and 4; entropy collapses.
    ent = [2.0, 0.9, 0.6, 0.5]
    out = []
    for i in range(4):
        rec = {"step": i + 1, "reward/mean": 0.1 * (i + 1), "entropy": ent[i], "tokens/generated": 100,
               "time/generate": 2.0, "time/train": 1.0, "time/step": 3.5}
        if i == 1:
            rec["val/accuracy"] = 0.2
        if i == 3:
            rec["val/accuracy"] = acc_final
        out.append(rec)
    return out


def _igrpo_steps():
    ent = [2.0, 1.8, 1.5, 1.2]
    out = []
    for i in range(4):
        rec = {"step": i + 1, "reward/mean": 0.2 * (i + 1), "reward/draft_best": 0.1 * (i + 1),
               "reward/refinement_gain": 0.1 * (i + 1), "entropy": ent[i], "tokens/generated": 150,
               "time/generate": 3.0, "time/train": 1.0, "time/refit": 0.5, "time/step": 5.0}
        if i in (1, 3):
            rec["val/accuracy"] = 0.3 if i == 1 else 0.6
        out.append(rec)
    return out


@pytest.fixture
def runs(tmp_path):
    a = _write_run(tmp_path, "grpo_seed1", "demo_grpo", 1, _grpo_steps(0.4), eval_avg=0.30)
    b = _write_run(tmp_path, "grpo_seed2", "demo_grpo", 2, _grpo_steps(0.5), eval_avg=0.40)
    steps = _igrpo_steps()
    steps.append('{"step": 5, "entr')  # a torn last line (run killed while writing): skipped
    c = tmp_path / "igrpo"
    _write_run(tmp_path, "igrpo", "demo_igrpo", 1, [])
    (c / "metrics.jsonl").write_text("".join((json.dumps(s) if isinstance(s, dict) else s) + "\n" for s in steps))
    return [a, b, c]


def test_compare_report_numbers_and_plots(runs, tmp_path):
    out = tmp_path / "report"
    s = C.compare_runs(runs, out)
    g = s["groups"]
    assert list(g) == ["demo_grpo", "demo_igrpo"]
    assert g["demo_grpo"]["seeds"] == ["1", "2"]
    # Final val/accuracy: GRPO seeds 0.4 and 0.5 -> mean .45, sd = .0707107, t(1) = 12.706, half = 12.706*.05
    fa = g["demo_grpo"]["final_val_accuracy"]
    assert fa["mean"] == pytest.approx(0.45)
    assert fa["half"] == pytest.approx(12.706 * math.sqrt(0.005) / math.sqrt(2))
    assert g["demo_igrpo"]["final_val_accuracy"] == {"mean": 0.6, "half": 0.0, "n": 1}
    # Matched budget: smallest total = 400 tokens (GRPO); budgets 100, 200, 300, 400.
    # GRPO: val at cum 200 (0.2) and 400 (final); iGRPO: val at cum 300 (0.3) and 600 (0.6, beyond 400).
    bud = g["demo_igrpo"]["accuracy_at_budget"]
    assert bud == {"100": "n/a", "200": "n/a", "300": "0.300 (1 seed)", "400": "0.300 (1 seed)"}
    assert g["demo_grpo"]["accuracy_at_budget"]["200"] == "0.200 ± 0.000"
    # Entropy below half of the first value (1.0): GRPO at step 2, iGRPO never.
    assert g["demo_grpo"]["entropy_first_below"] == [2.0, 2.0]
    assert g["demo_igrpo"]["entropy_first_below"] == [None]
    # At 15% of 4 steps (0.6): the first logged step >= 0.6 is step 1; at 100%: step 4.
    assert g["demo_igrpo"]["entropy_at_fraction"]["0.15"]["mean"] == pytest.approx(2.0)
    assert g["demo_igrpo"]["entropy_at_fraction"]["1.0"]["mean"] == pytest.approx(1.2)
    assert g["demo_grpo"]["entropy_at_fraction"]["0.5"]["mean"] == pytest.approx(0.9)
    # Refinement gain mean over steps: (.1+.2+.3+.4)/4 = .25; GRPO: not logged.
    assert g["demo_igrpo"]["refinement"]["reward/refinement_gain"]["mean"] == pytest.approx(0.25)
    assert g["demo_grpo"]["refinement"]["reward/refinement_gain"] is None
    # Wall clock totals.
    assert g["demo_igrpo"]["time_total_s"]["time/generate"]["mean"] == pytest.approx(12.0)
    assert g["demo_grpo"]["time_total_s"]["time/refit"] is None
    # Held-out eval across seeds: mean of .30 and .40.
    assert g["demo_grpo"]["eval"]["aime24"]["avg@k"]["mean"] == pytest.approx(0.35)
    report = (out / "report.md").read_text()
    assert "0.450 ± " in report and "demo_igrpo" in report and "never" in report
    assert "time/reward, time/logprob" in report  # missing phases are noted
    for png in ("accuracy_vs_tokens.png", "entropy.png", "refinement_gain.png", "reward.png", "time_per_phase.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", png
        assert f"]({png})" in report


def test_compare_missing_keys_are_skipped_with_notes(tmp_path):
    d = _write_run(tmp_path, "bare", "bare", 0, [{"step": 1, "reward/mean": 0.5}, {"step": 2, "reward/mean": 0.7}])
    s = C.compare_runs([d], tmp_path / "out")
    notes = " ".join(s["notes"])
    assert "val/accuracy" in notes and "entropy" in notes and "time/*" in notes
    assert (tmp_path / "out" / "reward.png").exists()
    assert not (tmp_path / "out" / "entropy.png").exists()


def test_compare_without_metrics_names_the_directory(tmp_path):
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FileNotFoundError, match="empty_run.*metrics.jsonl"):
        C.compare_runs([tmp_path / "empty_run"], tmp_path / "out")


def test_group_name_from_directory_suffix(tmp_path):
    for seed in (3, 4):
        d = tmp_path / f"myrun_seed{seed}"
        d.mkdir()
        (d / "metrics.jsonl").write_text(json.dumps({"step": 1, "val/accuracy": 0.1 * seed}) + "\n")
    runs = [C.load_run(tmp_path / f"myrun_seed{s}") for s in (3, 4)]
    assert [(r.name, r.seed) for r in runs] == [("myrun", "3"), ("myrun", "4")]
    assert list(C.group_runs(runs)) == ["myrun"]


def test_cli_compare(runs, tmp_path):
    from nemo_igrpo.cli import main

    assert main(["compare", *map(str, runs), "--output", str(tmp_path / "cli"), "--entropy-threshold", "0.7"]) == 0
    assert "0.7 nats" in (tmp_path / "cli" / "report.md").read_text()
