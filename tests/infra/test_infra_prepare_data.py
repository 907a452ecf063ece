"""igrpo prepare-data: one small fixture per source format, each with a bad line, mapped into the prompt JSONL."""

from __future__ import annotations

import builtins
import importlib.util
import json
from pathlib import Path

import pytest

from nemo_igrpo.cli import main as igrpo
from nemo_igrpo.data.prepare import DATASETS, PrepareError, prepare


def fake_parseable(answers):
    """Stands in for the math-verify check (worker processes) in the unit tests; the CLI test uses the real one."""
    return ["???" not in a for a in answers]


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def run(dataset, src, out, **kw):
    logs: list[str] = []
    report = prepare(dataset, str(src), out, parseable=fake_parseable, log=logs.append, **kw)
    return report, logs


def test_math_answer_is_the_last_boxed_of_the_solution(tmp_path):
    src = write_jsonl(tmp_path / "math.jsonl", [
        {"problem": "1+1?", "solution": "First $\\boxed{3}$ is wrong. Counting the apples again one by one, we "
                                        "see that there are only $\\boxed{2}$.", "unique_id": "test/1.json"},
        {"problem": "Half?", "solution": "It is $\\boxed{\\frac{1}{2}}$."},
        {"problem": "No answer", "solution": "We stop here."},
        '{"problem": "broken',
        {"problem": "   ", "solution": "\\boxed{4}"},
    ])
    report, logs = run("math", src, tmp_path / "math_train.jsonl")
    rows = read(tmp_path / "math_train.jsonl")
    assert rows == [
        {"id": "test/1.json", "problem": "1+1?", "answer": "2", "source": "math"},
        {"id": "math-1", "problem": "Half?", "answer": "\\frac{1}{2}", "source": "math"},
    ]
    assert report.kept == 2
    assert report.dropped == {"no_boxed_answer": 1, "malformed_json": 1, "empty_problem": 1}
    # Every drop names the file and line.
    assert any(f"{src}:4: malformed_json" in line for line in logs)
    assert any(f"{src}:3: no_boxed_answer" in line for line in logs)
    assert "kept 2 of 5" in logs[-1]


def test_acereason_json_list(tmp_path):
    src = tmp_path / "ace.json"
    src.write_text(json.dumps([
        {"problem": "P1", "answer": "12"},
        {"problem": "P2", "answer": 7},  # a JSON number is still an answer
        {"problem": "P3"},  # bad: no answer
        "not a record",
    ]))
    report, _ = run("acereason", src, tmp_path / "ace_train.jsonl")
    rows = read(tmp_path / "ace_train.jsonl")
    assert [(r["problem"], r["answer"], r["source"]) for r in rows] == [("P1", "12", "acereason"), ("P2", "7", "acereason")]
    assert report.dropped == {"missing_answer": 1, "not_an_object": 1}


def test_openr1_unparseable_and_duplicates(tmp_path):
    src = write_jsonl(tmp_path / "openr1.jsonl", [
        {"problem": "Q", "answer": "???"},  # unparseable first copy ...
        {"problem": "Q", "answer": "5"},  # ... replaced by the good duplicate
        {"problem": "Q", "answer": "5"},
        [1, 2],
    ])
    report, _ = run("openr1", src, tmp_path / "openr1_train.jsonl")
    assert [r["answer"] for r in read(tmp_path / "openr1_train.jsonl")] == ["5"]
    assert report.dropped == {"unparseable_answer": 1, "duplicate_problem": 1, "not_an_object": 1}


def test_gsm8k_answer_after_hashes_without_thousands_separators(tmp_path):
    src = write_jsonl(tmp_path / "gsm8k.jsonl", [
        {"question": "How many?", "answer": "3 * 411 = 1233\n#### 1,233"},
        {"question": "Negative?", "answer": "so\n#### -4"},
        {"question": "No marker", "answer": "42"},
        "",
        "{oops",
    ])
    report, logs = run("gsm8k", src, tmp_path / "gsm8k_train.jsonl")
    assert [(r["problem"], r["answer"]) for r in read(tmp_path / "gsm8k_train.jsonl")] == [
        ("How many?", "1233"), ("Negative?", "-4")]
    assert report.dropped == {"missing_answer": 1, "malformed_json": 1}
    assert any(f"{src}:5: malformed_json" in line for line in logs)  # blank line 4 is skipped, numbering kept


@pytest.mark.parametrize("dataset", ["aime24", "aime25", "math500", "amc", "minerva"])
def test_nemo_skills_eval_sets(tmp_path, dataset):
    src = write_jsonl(tmp_path / f"{dataset}_raw.jsonl", [
        {"id": "p1", "problem": "A", "expected_answer": 204},
        {"problem": "B", "answer": "\\sqrt{2}"},  # other mirrors name it "answer"
        {"problem": "C", "expected_answer": None},
        "nope",
    ])
    report, _ = run(dataset, src, tmp_path / f"{dataset}.jsonl")
    rows = read(tmp_path / f"{dataset}.jsonl")
    assert rows == [{"id": "p1", "problem": "A", "answer": "204", "source": dataset},
                    {"id": f"{dataset}-1", "problem": "B", "answer": "\\sqrt{2}", "source": dataset}]
    assert report.dropped == {"missing_answer": 1, "malformed_json": 1}


def test_every_dataset_has_a_fixture():
    covered = {"math", "acereason", "openr1", "gsm8k", "aime24", "aime25", "math500", "amc", "minerva"}
    assert covered == set(DATASETS)


def test_training_data_under_an_evaluation_name_warns_loudly(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"problem": "P", "answer": "1"}])
    _, logs = run("acereason", src, tmp_path / "aime24_mix.jsonl")
    assert any(line.startswith("WARNING") and "EVALUATION" in line for line in logs)


def test_evaluation_set_into_a_training_path_is_refused(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"problem": "P", "expected_answer": "1"}])
    with pytest.raises(PrepareError, match="contaminate"):
        run("aime24", src, tmp_path / "aime24_train.jsonl")
    assert not (tmp_path / "aime24_train.jsonl").exists()
    run("aime24", src, tmp_path / "aime24_train.jsonl", force=True)
    assert (tmp_path / "aime24_train.jsonl").exists()


def test_training_set_does_not_overwrite_an_evaluation_file(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"problem": "P", "expected_answer": "1"}])
    out = tmp_path / "heldout.jsonl"
    run("aime25", src, out)
    before = out.read_bytes()
    train = write_jsonl(tmp_path / "train_in.jsonl", [{"problem": "T", "answer": "2"}])
    with pytest.raises(PrepareError, match="refusing to overwrite"):
        run("openr1", train, out)
    assert out.read_bytes() == before


def test_nothing_usable_leaves_the_old_file_alone(tmp_path):
    out = write_jsonl(tmp_path / "out.jsonl", [{"id": "old", "problem": "x", "answer": "1", "source": "openr1"}])
    before = out.read_bytes()
    src = write_jsonl(tmp_path / "in.jsonl", ["garbage", {"problem": "", "answer": "1"}])
    with pytest.raises(PrepareError, match="no usable"):
        run("openr1", src, out)
    assert out.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_strict_fails_on_any_drop(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"problem": "P", "answer": "1"}, "bad"])
    with pytest.raises(PrepareError, match=r"in.jsonl:2: malformed_json"):
        run("openr1", src, tmp_path / "o.jsonl", strict=True)
    assert not (tmp_path / "o.jsonl").exists()


def test_input_errors_name_the_file(tmp_path):
    with pytest.raises(PrepareError, match="input file not found"):
        run("openr1", tmp_path / "missing.jsonl", tmp_path / "o.jsonl")
    csv = tmp_path / "x.csv"
    csv.write_text("a,b\n")
    with pytest.raises(PrepareError, match="unknown input format '.csv'"):
        run("openr1", csv, tmp_path / "o.jsonl")
    bad = tmp_path / "bad.json"
    bad.write_text('[{"problem": "a",\n "answer": }]')
    with pytest.raises(PrepareError, match=rf"{bad}:2: malformed JSON"):
        run("openr1", bad, tmp_path / "o.jsonl")


def test_parquet(tmp_path, monkeypatch):
    path = tmp_path / "d.parquet"
    if importlib.util.find_spec("pyarrow") is None:
        path.write_bytes(b"PAR1")
        with pytest.raises(PrepareError, match="needs pyarrow"):
            run("openr1", path, tmp_path / "o.jsonl")
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"problem": ["P", ""], "answer": ["3", "4"]}), path)
    report, _ = run("openr1", path, tmp_path / "o.jsonl")
    assert report.kept == 1 and report.dropped == {"empty_problem": 1}


def test_from_hub_without_datasets_is_a_clear_error(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(PrepareError, match=r"needs the Hugging Face `datasets` package"):
        run("acereason", "nvidia/AceReason-Math", tmp_path / "o.jsonl", from_hub=True)


def test_cli_with_the_real_grader(tmp_path, capsys):
    """End to end through `igrpo prepare-data`, with the rewards package's math-verify check."""
    src = write_jsonl(tmp_path / "gsm8k.jsonl", [
        {"question": "Q1", "answer": "work\n#### 12"},
        {"question": "Q2", "answer": "work\n#### 1,000"},
        {"question": "Q3", "answer": "no marker"},
        "{",
    ])
    out = tmp_path / "gsm8k_train.jsonl"
    assert igrpo(["prepare-data", "--dataset", "gsm8k", "--input", str(src), "--output", str(out)]) == 0
    assert [r["answer"] for r in read(out)] == ["12", "1000"]
    err = capsys.readouterr().err
    assert "kept 2 of 4" in err and "malformed_json: 1" in err and "missing_answer: 1" in err
    # A refused write is exit status 2 with the reason on stderr.
    assert igrpo(["prepare-data", "--dataset", "aime24", "--input", str(src), "--output", str(tmp_path / "a_train.jsonl")]) == 2


def test_limit_and_seed_draw_a_reproducible_subset_in_input_order(tmp_path, capsys):
    """--limit/--seed draw the paper's subset size (9.4k of AceReason-Math) the same way on every machine."""
    rows = [{"problem": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(200)]
    src = write_jsonl(tmp_path / "ace.jsonl", rows)
    outs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        out = tmp_path / f"{name}_train.jsonl"
        report, logs = run("acereason", src, out, limit=50, seed=seed)
        assert report.kept == 200  # usable records; 50 of them are written
        assert "a random 50 of them (--limit 50 --seed" in logs[-1]
        outs.append(read(out))
    a, b, c = outs
    assert len(a) == 50 and a == b and a != c  # same seed, same subset; another seed, another subset
    positions = [int(r["id"].split("-")[1]) for r in a]
    assert positions == sorted(positions) and len(set(positions)) == 50  # input order, no repeats
    # a limit above the usable records keeps them all, with a warning
    _, logs = run("acereason", src, tmp_path / "all_train.jsonl", limit=500)
    assert len(read(tmp_path / "all_train.jsonl")) == 200 and any("--limit 500 exceeds" in x for x in logs)
    # the CLI flags
    out = tmp_path / "cli_train.jsonl"
    assert igrpo(["prepare-data", "--dataset", "acereason", "--input", str(src), "--output", str(out), "--limit",
                  "50", "--seed", "0"]) == 0
    assert read(out) == a
