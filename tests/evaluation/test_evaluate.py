"""The evaluate pipeline on real AIME text: grading + aggregation of known responses against hand-computed numbers,
a tiny real HF model (random init, demo tokenizer) end to end for counts and files, resumption after a simulated kill,
and the CLI."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from nemo_igrpo.evaluation import evaluate as E
from nemo_igrpo.evaluation.protocol import EvalProtocol, load_records

FIXTURE = Path(__file__).parent / "data" / "aime_mini.jsonl"
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="module")
def grader():
    from nemo_igrpo.rewards.config import RewardConfig
    from nemo_igrpo.rewards.reward_fn import RewardFunction

    with RewardFunction(RewardConfig(weights={"accuracy": 1.0}, num_workers=1)) as g:
        yield g


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random-init Llama with the demo tokenizer, saved as an HF directory (what `--model` takes)."""
    import torch
    from transformers import LlamaForCausalLM

    from nemo_igrpo.backends.tiny_model import demo_model_config
    from nemo_igrpo.data.tokenizer import build_demo_tokenizer

    d = tmp_path_factory.mktemp("tiny_model")
    tok = build_demo_tokenizer(d)
    cfg = demo_model_config(len(tok), hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
                            intermediate_size=128, max_position_embeddings=2048,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny(model_dir):
    from transformers import AutoTokenizer

    from nemo_igrpo.backends.generation.hf_generator import HFGenerator

    return HFGenerator(str(model_dir)), AutoTokenizer.from_pretrained(str(model_dir))


# --- grading + aggregation on prepared responses -----------------------------------------------------------------------


def _completions(texts):
    return [[E.Completion(t, len(t), "stop") for t in problem] for problem in texts]


def test_grading_and_aggregation_hand_computed(grader):
    records = load_records(FIXTURE)
    assert [r["answer"] for r in records] == ["70", "540", "321"]
    responses = [
        ["\\boxed{70}", "so the sum is \\boxed{70}", "\\boxed{21}", "I think 70"],  # 2/4, majority 70 (right)
        ["\\boxed{540}", "\\boxed{504}", "\\boxed{504}", "\\boxed{100}"],  # 1/4, majority 504 (wrong)
        ["\\boxed{1}", "\\boxed{2}", "\\boxed{3}", "\\boxed{4}"],  # 0/4, tie -> first ("1"), wrong
    ]
    rows = E.grade_samples(grader, "aime_mini", records, _completions(responses))
    assert [[r["correct"] for r in p] for p in rows] == [[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert rows[0][3]["extracted"] is None and rows[1][1]["extracted"] == "504"
    assert set(rows[0][0]) >= set(E.ROW_KEYS)
    s = E.aggregate_dataset([r for p in rows for r in p], records, k=4)
    assert s["num_problems"] == 3 and s["k"] == 4 and s["num_samples"] == 12
    assert s["avg@k"] == pytest.approx(0.25)  # (0.5 + 0.25 + 0) / 3
    # per-problem means .5 .25 0: deviations .25 0 -.25, var (ddof 1) = .125 / 2, stderr = sqrt(var / 3)
    assert s["avg@k_stderr"] == pytest.approx(math.sqrt(0.0625 / 3))
    assert s["avg@k_ci95"][0] == 0.0  # .25 - 1.96 * .144 < 0, clipped
    assert s["maj@k"] == pytest.approx(1 / 3)
    assert s["pass@1"] == pytest.approx(0.25)
    assert s["pass@4"] == pytest.approx(2 / 3)  # any of 4 correct: problems 1 and 2
    assert s["no_answer_fraction"] == pytest.approx(1 / 12)
    assert s["per_problem_accuracy"] == {"aime25-0": 0.5, "aime24-21": 0.25, "aime24-12": 0.0}


def test_majority_vote_groups_equivalent_answers(grader):
    records = [{"id": "half", "problem": "What is one half?", "answer": "\\frac{1}{2}"}]
    # "0.5" and "\frac{1}{2}" vote together (2) against "3" (2): a tie, won by the first seen group, which is right.
    responses = [["\\boxed{0.5}", "\\boxed{3}", "\\boxed{\\frac{1}{2}}", "\\boxed{3}"]]
    rows = E.grade_samples(grader, "x", records, _completions(responses))[0]
    assert [r["correct"] for r in rows] == [True, False, True, False]
    s = E.aggregate_dataset(rows, records, k=4)
    assert s["maj@k"] == 1.0 and s["avg@k"] == 0.5


# --- the whole pipeline with a tiny real model -------------------------------------------------------------------------


def _protocol(**kw):
    return EvalProtocol(**{"k": 3, "max_new_tokens": 5, "temperature": 1.0, **kw})


def _rows(out: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (out / "samples" / f"{name}.jsonl").read_text().splitlines()]


def _datasets():
    sets = {"aime_mini": load_records(FIXTURE)}
    for name in ("aime24", "aime25"):
        if (SHARED / f"{name}.jsonl").is_file():
            sets[name] = load_records(SHARED / f"{name}.jsonl")
    return sets


def test_evaluate_model_counts_and_files(tiny, grader, tmp_path):
    generator, tokenizer = tiny
    datasets = _datasets()
    protocol = _protocol(limit=2, k_per_dataset={"aime_mini": 2})
    summary = E.evaluate_model(generator, tokenizer, datasets, protocol, tmp_path, grader, model_name="tiny")
    assert set(summary["datasets"]) == set(datasets)
    for name in datasets:
        k = 2 if name == "aime_mini" else 3
        rows = _rows(tmp_path, name)
        assert len(rows) == 2 * k
        assert [(r["problem_id"], r["sample_idx"]) for r in rows] == [
            (rec["id"], j) for rec in datasets[name][:2] for j in range(k)]
        for r in rows:
            assert 1 <= r["num_tokens"] <= 5 and r["finish_reason"] in ("stop", "length")
            assert isinstance(r["response"], str) and r["dataset"] == name
        d = summary["datasets"][name]
        assert d["num_problems"] == 2 and d["k"] == k and d["num_samples"] == 2 * k
        assert 0.0 <= d["avg@k"] <= 1.0 and "pass@1" in d and "maj@k" in d
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["datasets"].keys() == summary["datasets"].keys() and on_disk["protocol"]["k"] == 3
    md = (tmp_path / "summary.md").read_text()
    assert "| aime_mini | 2 | 2 |" in md


@pytest.mark.skipif(not (SHARED / "aime24.jsonl").is_file(), reason=f"{SHARED}/aime24.jsonl absent")
def test_shared_aime_sets_resolve_by_name():
    from nemo_igrpo.evaluation.protocol import resolve_datasets

    paths = resolve_datasets(["aime24", "aime25"])
    for name, path in paths.items():
        records = load_records(path)
        assert len(records) == 30 and all(r["answer"].isdigit() for r in records), name
        assert EvalProtocol().k_for(name) == 64
    assert EvalProtocol().k_for("math500") == 8


def test_resume_after_kill_equals_uninterrupted_run(tiny, grader, tmp_path):
    generator, tokenizer = tiny
    datasets = {"aime_mini": load_records(FIXTURE)}
    # Two problems per call: the first call holds problems 0 and 1, so a kill inside problem 1 makes the resumed
    # run regenerate a call of which half is already on disk.
    protocol = _protocol(problems_per_call=2)
    full = E.evaluate_model(generator, tokenizer, datasets, protocol, tmp_path / "full", grader)

    killed = tmp_path / "killed"
    shutil.copytree(tmp_path / "full", killed)
    path = killed / "samples" / "aime_mini.jsonl"
    data = path.read_bytes()
    lines = data.split(b"\n")
    # Keep problem 0 (3 lines), one complete line of problem 1, and half of the next line: a torn write.
    cut = sum(len(x) + 1 for x in lines[:4]) + len(lines[4]) // 2
    path.write_bytes(data[:cut])
    (killed / "summary.json").unlink()

    resumed = E.evaluate_model(generator, tokenizer, datasets, protocol, killed, grader)
    assert resumed["datasets"]["aime_mini"]["resumed_problems"] == 1
    assert _rows(killed, "aime_mini") == _rows(tmp_path / "full", "aime_mini")
    def metrics_of(summary):
        d = summary["datasets"]["aime_mini"]
        return {k: v for k, v in d.items() if k not in ("samples_file", "resumed_problems")}

    assert metrics_of(resumed) == metrics_of(full)

    # A third run finds everything done and generates nothing.
    again = E.evaluate_model(generator, tokenizer, datasets, protocol, killed, grader)
    assert again["datasets"]["aime_mini"]["resumed_problems"] == 3

    # Different sampling settings in the same directory are refused rather than mixed.
    with pytest.raises(ValueError, match="temperature"):
        E.evaluate_model(generator, tokenizer, datasets, _protocol(problems_per_call=2, temperature=0.5), killed,
                         grader)


def test_corrupt_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "s.jsonl"
    good = json.dumps({"problem_id": "a", "sample_idx": 0})
    path.write_text(good + "\n{not json\n" + good + "\n")
    with pytest.raises(ValueError, match=r"s.jsonl:2"):
        E.load_completed(path, 1, {"a"})


def test_seeds_depend_on_dataset_problem_and_sub_batch():
    base = E.call_seed(0, "aime24", "aime24-0", 0)
    assert base == E.call_seed(0, "aime24", "aime24-0", 0)
    assert len({base, E.call_seed(1, "aime24", "aime24-0", 0), E.call_seed(0, "aime25", "aime24-0", 0),
                E.call_seed(0, "aime24", "aime24-1", 0), E.call_seed(0, "aime24", "aime24-0", 1)}) == 5


# --- CLI ---------------------------------------------------------------------------------------------------------------


def test_cli_evaluate(model_dir, tmp_path, capsys):
    from nemo_igrpo.cli import main

    rc = main(["evaluate", "--model", str(model_dir), "--datasets", "mini", "--data", f"mini={FIXTURE}",
               "--k", "2", "--max-new-tokens", "3", "--limit", "1", "--grader-workers", "1",
               "--output", str(tmp_path / "out")])
    assert rc == 0
    assert len(_rows(tmp_path / "out", "mini")) == 2
    assert "| mini | 1 | 2 |" in capsys.readouterr().out


def test_cli_errors(tmp_path):
    megatron = tmp_path / "ckpt"
    megatron.mkdir()
    (megatron / "latest_checkpointed_iteration.txt").write_text("10")
    with pytest.raises(ValueError, match="igrpo convert megatron-to-hf"):
        E.check_hf_model_dir(megatron)
    with pytest.raises(ValueError, match="unknown dataset 'nope'.*--data nope="):
        from nemo_igrpo.evaluation.protocol import resolve_datasets

        resolve_datasets(["nope"])
    with pytest.raises(ValueError, match="NAME=PATH"):
        E.parse_data_flags(["aime24"])


def test_vllm_backend_missing_is_a_clear_error(model_dir):
    import argparse
    import importlib.util

    try:
        has_vllm = importlib.util.find_spec("vllm") is not None
    except ValueError:
        has_vllm = False
    if has_vllm:
        pytest.skip("vLLM is installed here: the error path cannot be exercised")
    args = argparse.Namespace(backend="vllm", temperature=0.6, top_p=0.95, top_k=-1, max_new_tokens=8,
                              max_batch_sequences=4, gpu_memory_utilization=0.5, trust_remote_code=False, dtype="auto")
    with pytest.raises(RuntimeError, match="vLLM is not installed"):
        E.build_generator(args, model_dir, None)
