"""The demo's report numbers (gains over the warm start, direct-answer share, drafts vs refinements) and the
multi-seed summary, on hand-made evaluation samples and training logs."""

import json
import math

import pytest

from nemo_igrpo.demo.analysis import (direct_share, paired_gain, per_problem_accuracy, refinement_windows,
                                      window_mean)
from nemo_igrpo.demo.teacher import direct_solution


def _samples(correct_by_problem, responses=None):
    rows = []
    for pid, flags in correct_by_problem.items():
        for j, c in enumerate(flags):
            rows.append({"problem_id": pid, "sample_idx": j, "correct": c,
                         "response": (responses or {}).get((pid, j), "<think>1+1=2.</think> \\boxed{2}")})
    return rows


def test_per_problem_accuracy_and_paired_gain_by_hand():
    base = per_problem_accuracy(_samples({"a": [1, 0, 0, 0], "b": [0, 0, 0, 0], "c": [1, 1, 0, 0]}))
    model = per_problem_accuracy(_samples({"a": [1, 1, 1, 0], "b": [1, 0, 0, 0], "c": [1, 1, 0, 0]}))
    assert base == {"a": 0.25, "b": 0.0, "c": 0.5}
    g = paired_gain(base, model)
    # differences 0.5, 0.25, 0: mean 0.25, sample sd 0.25, stderr 0.25 / sqrt(3)
    assert g.mean == pytest.approx(0.25) and g.stderr == pytest.approx(0.25 / math.sqrt(3))
    assert g.ci95_low == pytest.approx(0.25 - 1.959964 * 0.25 / math.sqrt(3), abs=1e-6)
    with pytest.raises(ValueError, match="different problems"):
        paired_gain(base, {"a": 1.0})


def test_direct_share_counts_the_teachers_direct_style():
    rows = _samples({"a": [1, 0], "b": [0, 0]}, responses={("a", 1): direct_solution(3), ("b", 0): direct_solution(4)})
    assert direct_share(rows) == 0.5
    assert math.isnan(direct_share([]))


def test_refinement_windows_average_first_and_last_steps():
    rows = [{"step": 0, "val/accuracy": 0.1}]
    rows += [{"step": s, "accuracy/draft_mean": 0.1 * s, "accuracy/draft_best": 0.2 * s, "accuracy/train": 0.15 * s}
             for s in range(1, 7)]
    w = refinement_windows(rows, window=2)
    assert w["first"]["accuracy/draft_mean"] == pytest.approx(0.15)  # steps 1, 2
    assert w["last"]["accuracy/train"] == pytest.approx(0.15 * 5.5)  # steps 5, 6
    assert refinement_windows([{"step": 1, "accuracy/train": 0.5}], window=2) == {}
    assert window_mean(rows, "accuracy/train", 10, 20) is None


def _fake_demo(path, seed, warm, grpo, igrpo, steps=20):
    """An `igrpo demo` output directory as seeds.summarize reads it."""
    path.mkdir(parents=True)
    acc = {"warm start (SFT)": warm, "grpo": grpo, "igrpo": igrpo}
    summary = {"seed": seed,
               "accuracy": {k: {"greedy": v, "sampled": v, "sampled_stderr": 0.02, "direct_share": 0.0}
                            for k, v in acc.items()},
               "gains": {m: {"mean": acc[m] - warm, "stderr": 0.02, "ci95": [acc[m] - warm - 0.04,
                                                                          acc[m] - warm + 0.04], "n": 200}
                         for m in ("grpo", "igrpo")}}
    (path / "summary.json").write_text(json.dumps(summary))
    for m in ("grpo", "igrpo"):
        (path / m).mkdir()
        rows = [{"step": s, "accuracy/train": 0.5, "entropy": 0.1} for s in range(1, steps + 1)]
        if m == "igrpo":
            for r in rows:
                r.update({"accuracy/draft_mean": 0.3, "accuracy/draft_best": 0.6, "accuracy/train": 0.4})
        (path / m / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_seed_summary_table_and_verdict(tmp_path):
    from nemo_igrpo.demo.seeds import moving_average, summarize

    _fake_demo(tmp_path / "s1", 1, 0.30, 0.55, 0.35)
    _fake_demo(tmp_path / "s2", 2, 0.30, 0.35, 0.40)
    res = summarize([tmp_path / "s1", tmp_path / "s2"], tmp_path / "out")
    md = (tmp_path / "out" / "seeds.md").read_text()
    assert res["seeds"] == ["1", "2"]
    assert "in 1 of 2 seeds" in md  # +25 meets the 10-point bar, +5 does not
    assert res["igrpo_minus_grpo"] == pytest.approx([-0.20, 0.05])
    # one row per 10 steps, consecutive and covering every step
    assert [w["steps"] for w in res["refinement_windows"]] == [[1, 10], [11, 20]]
    w = res["refinement_windows"][0]
    assert w["accuracy/draft_mean"] == pytest.approx([0.3, 0.3]) and w["accuracy/train"] == pytest.approx([0.4, 0.4])
    assert "| 10.0 ± 0.0 | -20.0 ± 0.0 |" in md  # refinement - mean draft, refinement - best draft
    assert (tmp_path / "out" / "refinement_vs_drafts.png").is_file()
    assert moving_average([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]
    with pytest.raises(FileNotFoundError, match="finished `igrpo demo`"):
        summarize([tmp_path / "nope"], tmp_path / "out2")
