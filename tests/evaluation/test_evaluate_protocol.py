"""Evaluation that can reproduce the paper's table and never mixes models: NeMo-Skills defaults and prompt order, every
request of a set in one generate() call, shards merged once all are done, NeMo-Skills' output files written and read
back, the model's identity in the resume fingerprint, and a generation limit the model's context can hold."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nemo_igrpo.cli import main as igrpo
from nemo_igrpo.evaluation import evaluate as E
from nemo_igrpo.evaluation.identity import model_identity
from nemo_igrpo.evaluation.protocol import NEMO_SKILLS_MATH_PROMPT, EvalProtocol, load_records

FIXTURE = Path(__file__).parent / "data" / "aime_mini.jsonl"


def _make_model(root: Path, seed: int) -> Path:
    import torch
    from transformers import LlamaForCausalLM

    from nemo_igrpo.backends.tiny_model import demo_model_config
    from nemo_igrpo.data.tokenizer import build_demo_tokenizer

    d = root / "hf"
    tok = build_demo_tokenizer(d)
    cfg = demo_model_config(len(tok), hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
                            intermediate_size=128, max_position_embeddings=2048,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> tuple[Path, Path]:
    """Two trainings of one architecture, each exported as `<run>/hf` (as the GRPO and iGRPO twins are)."""
    root = tmp_path_factory.mktemp("runs")
    return _make_model(root / "run_igrpo", 0), _make_model(root / "run_grpo", 1)


@pytest.fixture(scope="module")
def grader():
    with E.build_grader(num_workers=1, timeout_s=5.0) as g:
        yield g


class CountingGenerator:
    """Delegates to the real HF generator and records the size of every generate() call."""

    def __init__(self, model_dir: Path):
        from nemo_igrpo.backends.generation.hf_generator import HFGenerator

        self.inner = HFGenerator(str(model_dir), batch_size=64)
        self.calls: list[int] = []

    def generate(self, prompt_ids, sampling):
        self.calls.append(len(prompt_ids))
        return self.inner.generate(prompt_ids, sampling)


def _tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def _protocol(**kw) -> EvalProtocol:
    return EvalProtocol(**{"k": 2, "max_new_tokens": 4, "temperature": 1.0, **kw})


def test_defaults_are_the_papers_nemo_skills_protocol(twins):
    p = EvalProtocol()
    assert (p.temperature, p.top_p, p.top_k) == (0.6, 0.95, -1)
    assert p.k_for("aime24") == p.k_for("aime25") == 64 and p.k_for("math500") == 8
    assert p.max_new_tokens == 65536
    # NeMo-Skills' order: the instruction, a blank line, then the problem, as the user turn of the chat template
    tok = _tokenizer(twins[0])
    (ids,) = E.build_prompt_ids(tok, [{"problem": "What is 2+2?"}], p)
    text = tok.decode(ids)
    instruction = "Solve the following math problem. Make sure to put the answer (and only answer) inside \\boxed{}."
    assert instruction + "\n\nWhat is 2+2?" in text
    assert p.prompt == NEMO_SKILLS_MATH_PROMPT


def test_every_request_of_a_set_is_in_flight_at_once(twins, grader, tmp_path):
    gen = CountingGenerator(twins[0])
    records = load_records(FIXTURE)
    E.evaluate_model(gen, _tokenizer(twins[0]), {"mini": records}, _protocol(k=3), tmp_path, grader)
    assert gen.calls == [len(records) * 3]  # one call, not one per problem


def test_another_model_in_the_same_output_is_refused(twins, grader, tmp_path):
    igrpo_hf, grpo_hf = twins
    records = {"mini": load_records(FIXTURE)}
    out = tmp_path / "eval"
    first = E.evaluate_model(CountingGenerator(igrpo_hf), _tokenizer(igrpo_hf), records, _protocol(), out, grader,
                             model_name=str(igrpo_hf))
    assert first["identity"]["path"] == str(igrpo_hf.resolve())
    with pytest.raises(ValueError, match="holds samples of another model") as err:
        E.evaluate_model(CountingGenerator(grpo_hf), _tokenizer(grpo_hf), records, _protocol(), out, grader,
                         model_name=str(grpo_hf))
    assert str(igrpo_hf.resolve()) in str(err.value) and "new --output" in str(err.value)
    # the same model resumes (nothing to do)
    again = E.evaluate_model(None, _tokenizer(igrpo_hf), records, _protocol(), out, grader, model_name=str(igrpo_hf))
    assert again["datasets"]["mini"]["resumed_problems"] == 3


def test_identity_tells_the_twins_apart_and_sees_a_rewritten_export(twins, tmp_path):
    a, b = model_identity(twins[0]), model_identity(twins[1])
    assert a["config_sha256"] == b["config_sha256"]  # one architecture, one config
    assert a["weights_sha256"] != b["weights_sha256"]
    copy = tmp_path / "hf"
    shutil.copytree(twins[1], copy)
    assert model_identity(copy)["weights_sha256"] == b["weights_sha256"]
    shutil.copyfile(twins[0] / "model.safetensors", copy / "model.safetensors")  # retrained into the same folder
    assert model_identity(copy)["weights_sha256"] == a["weights_sha256"]


def test_shards_merge_once_all_are_complete(twins, grader, tmp_path):
    tok = _tokenizer(twins[0])
    records = load_records(FIXTURE)
    out = tmp_path / "eval"
    first = E.evaluate_model(CountingGenerator(twins[0]), tok, {"mini": records}, _protocol(), out, grader,
                             model_name=str(twins[0]), shard=(1, 2))
    assert not first["complete"] and first["pending"] == {"mini": [0]} and not (out / "summary.json").exists()
    rows = [json.loads(x) for x in (out / "samples" / "mini.shard-1-of-2.jsonl").read_text().splitlines()]
    assert {r["problem_id"] for r in rows} == {records[1]["id"]}  # problems 1, 3, 5, ... of the set
    # merging before the other shard is done is an error that names it
    rc = igrpo(["evaluate", "--model", str(twins[0]), "--datasets", "mini", "--data", f"mini={FIXTURE}", "--k", "2",
                "--max-new-tokens", "4", "--temperature", "1.0", "--shard", "0/2", "--merge", "--grader-workers", "1",
                "--output", str(out)])
    assert rc == 2
    last = E.evaluate_model(CountingGenerator(twins[0]), tok, {"mini": records}, _protocol(), out, grader,
                            model_name=str(twins[0]), shard=(0, 2))
    assert last["complete"] and json.loads((out / "summary.json").read_text())["datasets"]["mini"]["num_samples"] == 6
    merged = last["datasets"]["mini"]
    all_rows = [json.loads(x) for f in sorted((out / "samples").glob("mini.shard-*.jsonl"))
                for x in f.read_text().splitlines()]
    assert merged["avg@k"] == pytest.approx(sum(r["correct"] for r in all_rows) / 6)


def test_nemo_skills_files_are_written_and_read_back(twins, grader, tmp_path, capsys):
    tok = _tokenizer(twins[0])
    records = load_records(FIXTURE)
    out = tmp_path / "eval"
    summary = E.evaluate_model(CountingGenerator(twins[0]), tok, {"mini": records}, _protocol(k=3), out, grader,
                               model_name=str(twins[0]))
    bench = out / "nemo_skills" / "eval-results" / "mini"
    files = sorted(bench.glob("output-rs*.jsonl"))
    assert [f.name for f in files] == ["output-rs0.jsonl", "output-rs1.jsonl", "output-rs2.jsonl"]
    samples = [json.loads(x) for x in (out / "samples" / "mini.jsonl").read_text().splitlines()]
    for j, f in enumerate(files):
        lines = [json.loads(x) for x in f.read_text().splitlines()]
        assert [x["problem"] for x in lines] == [r["problem"] for r in records]
        assert [x["expected_answer"] for x in lines] == [r["answer"] for r in records]
        assert [x["generation"] for x in lines] == [s["response"] for s in samples if s["sample_idx"] == j]
        assert all(x["is_correct"] == x["symbolic_correct"] for x in lines)
    # NeMo-Skills' files are graded back with this project's grader: same numbers, full agreement
    rc = igrpo(["evaluate", "--from-nemo-skills", str(out / "nemo_skills"), "--datasets", "mini",
                "--grader-workers", "1", "--output", str(tmp_path / "from_ns")])
    assert rc == 0
    back = json.loads((tmp_path / "from_ns" / "summary.json").read_text())["datasets"]["mini"]
    assert back["avg@k"] == summary["datasets"]["mini"]["avg@k"] and back["k"] == 3
    assert back["nemo_skills_agreement"] == 1.0
    assert "Agreement with NeMo-Skills" in capsys.readouterr().out


def test_a_generation_limit_beyond_the_models_context_is_refused(twins, tmp_path, capsys):
    rc = igrpo(["evaluate", "--model", str(twins[0]), "--datasets", "mini", "--data", f"mini={FIXTURE}",
                "--max-new-tokens", "4096", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "--max-new-tokens 4096 plus the longest prompt" in err
    assert "max_position_embeddings=2048" in err and len(err.strip().splitlines()) == 1


def test_the_cli_refuses_another_models_samples_in_one_line(twins, tmp_path, capsys):
    common = ["--datasets", "mini", "--data", f"mini={FIXTURE}", "--k", "1", "--max-new-tokens", "3",
              "--grader-workers", "1", "--output", str(tmp_path / "eval")]
    assert igrpo(["evaluate", "--model", str(twins[0]), *common]) == 0
    capsys.readouterr()
    assert igrpo(["evaluate", "--model", str(twins[1]), *common]) == 2
    err = capsys.readouterr().err
    assert "holds samples of another model" in err and len(err.strip().splitlines()) == 1


def test_resuming_with_another_extraction_is_refused_and_old_fingerprints_read_as_boxed(twins, tmp_path, capsys):
    """Samples are graded as they are written: grading the rest of a set with --extraction full after boxed would mix
    two graders' verdicts in one number. A fingerprint written before the key existed reads as boxed (the only mode
    then), so older evaluations still resume."""
    out = tmp_path / "eval"
    common = ["--datasets", "mini", "--data", f"mini={FIXTURE}", "--k", "1", "--max-new-tokens", "3",
              "--grader-workers", "1", "--output", str(out), "--model", str(twins[0])]
    assert igrpo(["evaluate", *common]) == 0
    fingerprint = out / E.SAMPLES_DIR / "mini.protocol.json"
    assert json.loads(fingerprint.read_text())["extraction"] == "boxed"
    capsys.readouterr()
    assert igrpo(["evaluate", *common, "--extraction", "full"]) == 2
    err = capsys.readouterr().err
    assert "graded with different settings (extraction)" in err and len(err.strip().splitlines()) == 1
    old = json.loads(fingerprint.read_text())
    del old["extraction"]
    fingerprint.write_text(json.dumps(old))
    assert igrpo(["evaluate", *common]) == 0
    assert "graded with boxed extraction" in (out / "summary.md").read_text()
