"""tools/heldout_rates.py (the SmolLM2 evidence table): rates and paired differences on hand-made samples."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "heldout_rates.py"


def _write(folder: Path, rows: list[tuple[str, str, bool, str]]) -> str:
    (folder / "samples").mkdir(parents=True)
    lines = [json.dumps({"problem_id": pid, "response": text, "correct": ok, "finish_reason": reason,
                         "num_tokens": len(text.split())}) for pid, text, ok, reason in rows]
    (folder / "samples" / "word_test.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder)


def _run(*dirs: str) -> str:
    proc = subprocess.run([sys.executable, str(TOOL), *dirs], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_rates_and_paired_differences(tmp_path):
    good = "<think>3 + 2 = 5 so</think> \\boxed{5}"  # format 1, boxed, 7 tokens (words)
    base = _write(tmp_path / "base", [("p1", "\\boxed{4}", False, "stop"), ("p1", "no answer here", False, "length"),
                                      ("p2", "\\boxed{5}", True, "stop"), ("p2", "\\boxed{6}", False, "stop")])
    after = _write(tmp_path / "after", [("p1", good, True, "stop"), ("p1", "\\boxed{5}", True, "stop"),
                                        ("p2", "\\boxed{5}", True, "stop"), ("p2", "\\boxed{9}", False, "stop")])
    out = _run(base, after)
    # Base: 1 of 4 correct, 3 of 4 boxed, no format, 1 of 4 cut, tokens (1+3+1+1)/4, 1 of 2 problems solved.
    # After: 3 of 4 correct, all boxed, 1 of 4 formatted, none cut, tokens (7+1+1+1)/4, both problems solved.
    assert f"| {base} | 2 x 2 | 25.0 | 75.0 | 0.0 | 25.0 | 1.5 | 50.0 |" in out
    assert f"| {after} | 2 x 2 | 75.0 | 100.0 | 25.0 | 0.0 | 2.5 | 100.0 |" in out
    # Per-problem accuracy differences: p1 0 -> 1 (+1), p2 0.5 -> 0.5 (0): mean +0.5, sd 0.7071, half-width
    # 1.96 * 0.7071 / sqrt(2) = 0.98.
    assert f"{after} - {base}: accuracy +50.0 ± 98.0 points" in out
    # Format: p1 0 -> 0.5, p2 0 -> 0: mean +0.25, sd 0.35355, half-width 1.96 * 0.35355 / sqrt(2) = 0.49.
    assert f"{after} - {base}: format +25.0 ± 49.0 points" in out


def test_bad_folders_are_named(tmp_path):
    base = _write(tmp_path / "base", [("p1", "\\boxed{4}", False, "stop")])
    other = _write(tmp_path / "other", [("p2", "\\boxed{4}", False, "stop")])
    proc = subprocess.run([sys.executable, str(TOOL), base, other], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0 and "different problems" in proc.stderr
    proc = subprocess.run([sys.executable, str(TOOL), str(tmp_path / "missing")], capture_output=True, text=True)
    assert proc.returncode != 0 and "missing" in proc.stderr and "word_test.jsonl" in proc.stderr
    (tmp_path / "base" / "samples" / "word_test.jsonl").write_text("{not json\n")
    proc = subprocess.run([sys.executable, str(TOOL), base], capture_output=True, text=True)
    assert proc.returncode != 0 and "word_test.jsonl:1" in proc.stderr


@pytest.mark.parametrize("text,boxed", [("The answer is 5.", False), ("so \\boxed{7}", True)])
def test_boxed_rate_needs_a_boxed_answer(tmp_path, text, boxed):
    d = _write(tmp_path / "d", [("p1", text, False, "stop")])
    assert f"| {d} | 1 x 1 | 0.0 | {100.0 if boxed else 0.0:.1f} |" in _run(d)
