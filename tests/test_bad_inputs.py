"""Common mistakes, made the way a new user makes them: each gets one `error: ...` line naming the key, flag, file or
line at fault, exit code 2, and no traceback.

One table, run through `nemo_igrpo.cli.main` in this process (fast: imports are paid once); the cases that need a
real process (an environment variable read at start-up, a training run that reaches the data) run the console
command itself. Every case names the substring its error line must contain.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nemo_igrpo.cli import main

REPO = Path(__file__).resolve().parents[1]
CONF = str(REPO / "conf" / "demo_igrpo.yaml")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad (and a few good) inputs on disk, by name."""
    root = tmp_path_factory.mktemp("inputs")
    f = {}

    def put(name, text=None, data=None):
        p = root / name
        if data is not None:
            p.write_bytes(data)
        else:
            p.write_text(text)
        f[name] = p
        return p

    put("bad.yaml", "trainer:\n  max_steps: [1,\n")
    put("list.yaml", "- 1\n- 2\n")
    put("badtype.yaml", "trainer:\n  max_steps: lots\n")
    put("good.jsonl", json.dumps({"problem": "1+1", "answer": "2"}) + "\n")
    put("badline.jsonl", json.dumps({"problem": "1+1", "answer": "2"}) + "\n{\"problem\": \n")
    put("nullp.jsonl", json.dumps({"problem": "1+1", "answer": "2"}) + "\n" + '{"problem": null, "answer": "2"}\n')
    put("nulla.jsonl", '{"problem": "1+1", "answer": null}\n')
    put("listp.jsonl", '{"problem": ["1+1"], "answer": "2"}\n')
    put("notutf8.jsonl", data=b'{"problem": "1+1", "answer": "2"}\n{"problem": "\xff", "answer": "2"}\n')
    put("score_ok.jsonl", json.dumps({"response": "\\boxed{2}", "answer": "2"}) + "\n")
    put("score_bad.jsonl", json.dumps({"response": "\\boxed{2}", "answer": "2"}) + "\n" + '{"response": 3}\n')
    put("a_file", "x")
    # A tiny HF model directory, and damaged copies of it.
    sys.path.insert(0, str(REPO / "tests" / "conversion"))
    import tiny_models

    model = tiny_models.llama(root / "model")
    weights = (model / "model.safetensors").read_bytes()
    for name, blob in {"truncated": weights[: len(weights) // 2], "garbage": b"not a safetensors file" * 4}.items():
        d = root / f"model_{name}"
        d.mkdir()
        (d / "config.json").write_text((model / "config.json").read_text())
        (d / "model.safetensors").write_bytes(blob)
        f[f"model_{name}"] = d
    d = root / "model_badconfig"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "llama", ')
    (d / "model.safetensors").write_bytes(weights)
    f["model_badconfig"] = d
    megatron = root / "megatron_ckpt"
    megatron.mkdir()
    (megatron / "metadata.json").write_text("{}")
    f["megatron_ckpt"] = megatron
    f["model"], f["root"] = model, root
    return f


def ev(*args: str) -> list[str]:
    """An `igrpo evaluate` command line around ``args`` (the model and data flags come from the case)."""
    return ["evaluate", "--output", "{root}/eval", *args]


# (case id, argv with {name} placeholders for files, environment, substring of the error line)
CASES = [
    # train: the config file and the overrides
    ("yaml-malformed", ["train", "--config", "{bad.yaml}"], {}, "bad.yaml: not valid YAML"),
    ("yaml-not-a-mapping", ["train", "--config", "{list.yaml}"], {}, "expected a mapping of config keys"),
    ("yaml-wrong-type", ["train", "--config", "{badtype.yaml}", "--dry-run"], {}, "'trainer.max_steps'"),
    ("config-missing", ["train", "--config", "{root}/nope.yaml"], {}, "config file not found"),
    ("config-is-a-dir", ["train", "--config", "{root}"], {}, "config file not found"),
    ("override-brace-template", ["train", "--config", CONF, "--dry-run",
                                 "algorithm.refinement.template={problem} then {draft}"], {},
     "override 'algorithm.refinement.template={problem} then {draft}': the value of"),
    ("override-unclosed-list", ["train", "--config", CONF, "--dry-run", "reward.weights=[1,"], {},
     "override 'reward.weights=[1,'"),
    ("override-wrong-type", ["train", "--config", CONF, "--dry-run", "trainer.max_steps=ten"], {},
     "override 'trainer.max_steps=ten': config key 'trainer.max_steps'"),
    ("override-unknown-key", ["train", "--config", CONF, "--dry-run", "trainer.max_step=10"], {},
     "config key 'trainer.max_step'"),
    ("override-no-equals", ["train", "--config", CONF, "--dry-run", "trainer.max_steps"], {},
     "not of the form key=value"),
    ("override-empty-key", ["train", "--config", CONF, "--dry-run", "=3"], {}, "is not a config key"),
    ("override-bad-interpolation", ["train", "--config", CONF, "--dry-run", "trainer.max_steps=${steps}"], {},
     "Interpolation key 'steps' not found"),
    ("override-value-out-of-range", ["train", "--config", CONF, "--dry-run", "algorithm.clip_eps=2"], {},
     "'algorithm.clip_eps'"),
    ("resume-and-overwrite", ["train", "--config", CONF, "--dry-run", "trainer.resume=true",
                              "trainer.overwrite=true"], {}, "'trainer.overwrite'"),
    ("world-size-empty", ["train", "--config", CONF, "--dry-run"], {"WORLD_SIZE": ""}, "WORLD_SIZE=''"),
    ("world-size-text", ["train", "--config", CONF, "--dry-run"], {"WORLD_SIZE": "two"}, "WORLD_SIZE='two'"),
    # train: paths (checked before any model is built; a local-looking path is never looked up on the hub)
    ("train-model-missing", ["train", "--config", CONF, "policy.model_path=a/b"], {},
     "'policy.model_path': 'a/b': no such directory"),
    ("train-model-is-a-file", ["train", "--config", CONF, "policy.model_path={a_file}"], {}, "not a directory"),
    ("train-tokenizer-missing", ["train", "--config", CONF, "policy.model_path={model}",
                                 "policy.tokenizer_path=org/tok"], {}, "'policy.tokenizer_path': 'org/tok'"),
    ("train-data-missing", ["train", "--config", CONF, "policy.model_path={model}", "data.train_file=nope.jsonl"], {},
     "'data.train_file': 'nope.jsonl' is not a file"),
    # evaluate
    ("eval-model-missing", ev("--model", "{root}/nope", "--datasets", "x", "--data", "x={good.jsonl}"), {},
     "--model"),
    ("eval-model-hub-looking", ev("--model", "org/model", "--datasets", "x", "--data", "x={good.jsonl}"), {},
     "--model 'org/model': no such directory"),
    ("eval-tokenizer-missing", ev("--model", "{model}", "--tokenizer", "org/tok", "--datasets", "x",
                                  "--data", "x={good.jsonl}"), {}, "--tokenizer 'org/tok'"),
    ("eval-model-truncated", ev("--model", "{model_truncated}", "--datasets", "x", "--data", "x={good.jsonl}"), {},
     "model.safetensors: damaged safetensors file"),
    ("eval-model-garbage", ev("--model", "{model_garbage}", "--datasets", "x", "--data", "x={good.jsonl}"), {},
     "model.safetensors: damaged safetensors file"),
    ("eval-model-bad-config", ev("--model", "{model_badconfig}", "--datasets", "x", "--data", "x={good.jsonl}"),
     {}, "config.json: not valid JSON"),
    ("eval-megatron-dir", ev("--model", "{megatron_ckpt}", "--datasets", "x", "--data", "x={good.jsonl}"), {},
     "looks like a Megatron checkpoint"),
    ("eval-unknown-dataset", ev("--model", "{model}", "--datasets", "gsm9k"), {}, "unknown dataset 'gsm9k'"),
    ("eval-data-flag", ev("--model", "{model}", "--datasets", "x", "--data", "x.jsonl"), {},
     "--data expects NAME=PATH.jsonl"),
    ("eval-data-missing", ev("--model", "{model}", "--datasets", "x", "--data", "x={root}/nope.jsonl"), {},
     "nope.jsonl is not a file"),
    ("eval-data-malformed", ev("--model", "{model}", "--datasets", "x", "--data", "x={badline.jsonl}"), {},
     "badline.jsonl:2: malformed JSON"),
    ("eval-data-null-problem", ev("--model", "{model}", "--datasets", "x", "--data", "x={nullp.jsonl}"), {},
     "nullp.jsonl:2: 'problem' is null"),
    ("eval-data-null-answer", ev("--model", "{model}", "--datasets", "x", "--data", "x={nulla.jsonl}"), {},
     "nulla.jsonl:1: 'answer' is null"),
    ("eval-data-list-problem", ev("--model", "{model}", "--datasets", "x", "--data", "x={listp.jsonl}"), {},
     "listp.jsonl:1: 'problem' must be a string"),
    ("eval-data-not-utf8", ev("--model", "{model}", "--datasets", "x", "--data", "x={notutf8.jsonl}"), {},
     "notutf8.jsonl:2: not UTF-8"),
    ("eval-negative-k", ev("--model", "{model}", "--datasets", "x", "--data", "x={good.jsonl}", "--k", "-1"), {},
     "--k must be >= 0"),
    ("eval-output-is-a-file", ["evaluate", "--output", "{a_file}", "--model", "{model}", "--datasets", "x",
                               "--data", "x={good.jsonl}"], {}, "exists and is not a directory"),
    # convert
    ("convert-truncated-safetensors", ["convert", "hf-to-megatron", "--hf", "{model_truncated}", "--out",
                                       "{root}/mg1"], {}, "model.safetensors: damaged safetensors file"),
    ("convert-garbage-safetensors", ["convert", "hf-to-megatron", "--hf", "{model_garbage}", "--out",
                                     "{root}/mg2"], {}, "model.safetensors: damaged safetensors file"),
    ("convert-hf-missing", ["convert", "hf-to-megatron", "--hf", "org/model", "--out", "{root}/mg3"], {},
     "HF directory not found: 'org/model'"),
    ("convert-megatron-missing", ["convert", "megatron-to-hf", "--megatron", "{root}/nope", "--hf-config",
                                  "{model}", "--out", "{root}/hf1"], {}, "Megatron checkpoint directory not found"),
    # score
    ("score-input-missing", ["score", "--input", "{root}/nope.jsonl"], {}, "cannot read"),
    ("score-bad-line", ["score", "--input", "{score_bad.jsonl}"], {}, "score_bad.jsonl:2: missing key"),
    ("score-output-dir-missing", ["score", "--input", "{score_ok.jsonl}", "--output", "{root}/no/out.jsonl"], {},
     "does not exist"),
    # other commands
    ("compare-not-a-run", ["compare", "{root}", "--output", "{root}/cmp"], {}, "no metrics.jsonl"),
    ("sft-output-exists", ["sft", "--output", "{root}", "--steps", "1"], {}, "exists (pass"),
]


def _fill(items, files):
    names = {k: str(v) for k, v in files.items()}
    out = []
    for item in items:
        for key, value in names.items():
            item = item.replace("{" + key + "}", value)
        out.append(item)
    return out


@pytest.mark.parametrize("argv, env, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_exit_2(files, argv, env, expected, capsys, monkeypatch):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    t0 = time.perf_counter()
    code = main(_fill(argv, files))
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and expected in lines[0], err[-2000:]
    assert "Traceback" not in err
    assert elapsed < 30, elapsed  # at once: no model-hub lookup (that took 56 s before failing, offline)


def _console(args, env=None, timeout=300):
    full_env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                                   "MASTER_PORT")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "nemo_igrpo.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


@pytest.mark.parametrize("args, env, expected", [
    (["train", "--config", CONF, "--dry-run"], {"WORLD_SIZE": ""}, "WORLD_SIZE=''"),
    (["train", "--config", "{bad.yaml}"], {}, "not valid YAML"),
], ids=["world-size-empty", "yaml-malformed"])
def test_console_command_exits_2_without_traceback(files, args, env, expected):
    proc = _console(_fill(args, files), env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and expected in proc.stderr


@pytest.mark.slow
def test_training_data_with_a_null_problem_names_the_line(files, tmp_path):
    """Past the config checks, inside the trainer: the data file is read after the model is built."""
    from nemo_igrpo.demo.sft import run_sft

    model = tmp_path / "sft"
    run_sft(model, steps=1, seed=0, eval_limit=0)
    proc = _console(["train", "--config", CONF, f"policy.model_path={model}", f"trainer.output_dir={tmp_path}/run",
                     f"data.train_file={files['nullp.jsonl']}", "trainer.progress_bar=false"],
                    {"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: {files['nullp.jsonl']}:2: 'problem' is null"
    assert not (tmp_path / "run").exists()
