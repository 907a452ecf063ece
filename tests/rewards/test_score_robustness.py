"""`igrpo score` keeps its work: the output path is checked before any grading, results are written as they are
graded and an interrupted run continues where it stopped, and valid JSON that is not valid UTF-8 (a lone surrogate)
is written back instead of crashing the run at the end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_igrpo.cli import main
from nemo_igrpo.rewards import reward_fn, score

ROWS = [{"response": f"\\boxed{{{i}}}", "answer": str(i if i % 2 else i + 1), "id": i} for i in range(7)]


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("output", ["missing_dir/out.jsonl", "."])
def test_bad_output_path_fails_before_grading(tmp_path, monkeypatch, capsys, output):
    def never(*args, **kwargs):
        raise AssertionError("grading started")

    monkeypatch.setattr(reward_fn.RewardFunction, "__init__", never)
    src = _write(tmp_path / "in.jsonl", ROWS)
    assert main(["score", "--input", str(src), "--output", str(tmp_path / output)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --output ") and ("does not exist" in err[-1] or "is a directory" in err[-1])


def test_interrupted_run_keeps_what_it_graded_and_continues(tmp_path, monkeypatch):
    src = _write(tmp_path / "in.jsonl", ROWS)
    reference = tmp_path / "reference.jsonl"
    assert main(["score", "--input", str(src), "--output", str(reference), "--workers", "1"]) == 0

    monkeypatch.setattr(score, "CHUNK", 2)
    graded: list[int] = []
    real_call = reward_fn.RewardFunction.__call__

    def crash_on_third_chunk(self, problems, responses, answers):
        if len(graded) == 2:
            raise KeyboardInterrupt  # the user's Ctrl-C, or a kill, in the middle of the run
        graded.append(len(responses))
        return real_call(self, problems, responses, answers)

    monkeypatch.setattr(reward_fn.RewardFunction, "__call__", crash_on_third_chunk)
    out = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        main(["score", "--input", str(src), "--output", str(out), "--workers", "1"])
    assert not out.exists()
    partial = tmp_path / "out.jsonl.partial"
    assert len(partial.read_text().splitlines()) == 4  # two chunks were written as soon as they were graded
    with open(partial, "a") as f:
        f.write('{"response": "\\\\boxed{4}", "ans')  # and the kill tore the next line

    graded.clear()
    monkeypatch.setattr(reward_fn.RewardFunction, "__call__", lambda self, *a: (graded.append(len(a[1])),
                                                                               real_call(self, *a))[1])
    assert main(["score", "--input", str(src), "--output", str(out), "--workers", "1"]) == 0
    assert sum(graded) == 3  # only the 3 lines not yet graded
    assert out.read_text() == reference.read_text() and not partial.exists()


def test_lone_surrogate_round_trips(tmp_path):
    rows = [{"problem": "p \ud800", "response": "\\boxed{1} \udfff", "answer": "1"}, {"response": "é \\boxed{2}",
                                                                                       "answer": "2"}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))  # ASCII-escaped, valid JSON
    out = tmp_path / "out.jsonl"
    assert main(["score", "--input", str(src), "--output", str(out), "--workers", "1"]) == 0
    got = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [g["response"] for g in got] == [r["response"] for r in rows]
    assert got[0]["problem"] == "p \ud800" and [g["accuracy"] for g in got] == [1.0, 1.0]
    assert "é" in out.read_text(encoding="utf-8")  # lines without a surrogate stay readable
    proc = subprocess.run([sys.executable, "-m", "nemo_igrpo.cli", "score", "--input", str(src), "--workers", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["response"] for line in proc.stdout.splitlines()] == [r["response"] for r in rows]


def test_input_that_is_not_utf8_names_the_line(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_bytes(json.dumps(ROWS[0]).encode() + b"\n" + b'{"response": "\xff", "answer": "1"}\n')
    assert main(["score", "--input", str(src)]) == 2
    assert f"{src}:2: not UTF-8" in capsys.readouterr().err
