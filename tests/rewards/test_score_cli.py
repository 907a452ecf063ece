import json
import os
import subprocess
import sys
from pathlib import Path

from nemo_igrpo.cli import main

ROWS = [
    {"problem": "1/2?", "response": "<think>easy</think> \\boxed{\\frac{1}{2}}", "answer": "0.5", "id": 7},
    {"response": "\\boxed{3}", "answer": "4"},
    {"response": "\\boxed{9^{9^{9^{9}}}}", "answer": "5"},
]


def _write(path: Path, lines):
    path.write_text("".join(line if isinstance(line, str) else json.dumps(line) + "\n" for line in lines))
    return path


def test_score_in_process(tmp_path, capsys):
    src = _write(tmp_path / "in.jsonl", ROWS[:2] + ["\n"])
    dst = tmp_path / "out.jsonl"
    assert main(["score", "--input", str(src), "--output", str(dst), "--workers", "1", "--timeout", "10"]) == 0
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert out[0]["id"] == 7 and out[0]["accuracy"] == 1.0 and out[0]["format"] == 1.0 and out[0]["reward"] == 2.0
    assert out[0]["extracted_answer"] == "\\frac{1}{2}"
    assert out[1]["accuracy"] == 0.0 and out[1]["format"] == 0.0 and out[1]["extracted_answer"] == "3"
    err = capsys.readouterr().err
    assert "n=2" in err and "accuracy=0.5000" in err and "timeouts=0" in err


def test_malformed_lines_name_file_and_line(tmp_path, capsys):
    cases = {
        "bad json": [ROWS[0], "{not json\n"],
        "missing key 'answer'": [ROWS[0], ROWS[1], {"response": "x"}],
        "'answer' must be a string": [{"response": "x", "answer": 5}],
        "expected a JSON object": [[1, 2]],
    }
    for message, lines in cases.items():
        src = _write(tmp_path / "in.jsonl", lines)
        dst = tmp_path / "out.jsonl"
        assert main(["score", "--input", str(src), "--output", str(dst)]) == 2
        err = capsys.readouterr().err
        line_no = len(lines)
        assert f"{src}:{line_no}:" in err, err
        assert message.split(" '")[0].replace("bad json", "not valid JSON") in err, err
        assert not dst.exists()
        assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_missing_input_file(tmp_path, capsys):
    assert main(["score", "--input", str(tmp_path / "nope.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_console_script_to_stdout(tmp_path):
    src = _write(tmp_path / "in.jsonl", ROWS)
    exe = Path(sys.executable).parent / "igrpo"
    proc = subprocess.run([str(exe), "score", "--input", str(src), "--workers", "2", "--timeout", "3"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["accuracy"] for o in out] == [1.0, 0.0, 0.0]
    assert "n=3" in proc.stderr and "timeouts=0" in proc.stderr  # the tower is rejected before math-verify


FREE_FORM = [
    {"response": "<think>t</think> The final answer is $\\frac{1}{2}$. I hope it is correct.", "answer": "0.5"},
    {"response": "<think>t</think> $\\boxed{(2, 2)}$ and $\\boxed{(6, 2)}$", "answer": "(6, 2), (2, 2)"},
]


def test_score_extraction_flag(tmp_path, capsys):
    """`--extraction boxed` (default) needs a box; `--extraction full` lets math-verify find the answer anywhere.
    Both grade several boxes as one answer."""
    src = _write(tmp_path / "in.jsonl", FREE_FORM)
    got = {}
    for mode in ("boxed", "full"):
        dst = tmp_path / f"{mode}.jsonl"
        assert main(["score", "--input", str(src), "--output", str(dst), "--workers", "1", "--timeout", "20",
                     "--extraction", mode]) == 0
        got[mode] = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [o["accuracy"] for o in got["boxed"]] == [0.0, 1.0]
    assert [o["accuracy"] for o in got["full"]] == [1.0, 1.0]
    assert got["boxed"][0]["extracted_answer"] is None and got["full"][0]["extracted_answer"] == "\\frac{1}{2}"
    capsys.readouterr()
    try:
        main(["score", "--input", str(src), "--extraction", "last"])
    except SystemExit as err:
        assert err.code == 2
    assert "invalid choice: 'last'" in capsys.readouterr().err


def test_evaluate_extraction_flag():
    """`igrpo evaluate --extraction full` builds its grader with math-verify's own extraction."""
    from nemo_igrpo.cli import build_parser
    from nemo_igrpo.evaluation.evaluate import build_grader

    args = build_parser(only="evaluate").parse_args(
        ["evaluate", "--model", "m", "--datasets", "aime24", "--output", "o", "--extraction", "full"])
    assert args.extraction == "full"
    assert build_parser(only="evaluate").parse_args(
        ["evaluate", "--model", "m", "--datasets", "aime24", "--output", "o"]).extraction == "boxed"
    with build_grader(1, 20.0, args.extraction) as grader:
        assert grader.grader.extraction == "full"
        out = grader(["p"], [FREE_FORM[0]["response"]], ["0.5"])
    assert out.components["accuracy"] == [1.0]
