"""The README's and docs/cluster.md's commands, run as written, in document order, in a sandbox standing for a login
node: `igrpo prepare-data`, `igrpo train --dry-run`, `igrpo score` and `igrpo compare` run for real; `sbatch` runs the
real slurm/*.sbatch scripts with Slurm's environment, against a fake `srun`/`scontrol`; the download, Docker and enroot
commands are recorded. What needs GPUs (training, vLLM evaluation) is replaced by a stand-in that parses the command
with the real `igrpo` parser (and, for training, loads the recipe with its overrides) and leaves the files the next
documented command reads, marked as coming from the stand-in. Only the paths under /lustre/$USER are changed, to the
sandbox, and the `make` commands of the README are skipped (they are CI itself)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable

# huggingface-cli download REPO --local-dir DIR: a model directory with the named model's config.json shape.
FAKE_HF_CLI = f'''#!{PY}
import json, struct, sys
from pathlib import Path
args = sys.argv[1:]
assert args[0] == "download", args
repo, out = args[1], Path(args[args.index("--local-dir") + 1])
with open(Path(__import__("os").environ["FAKE_LOG"]) / "downloads", "a") as f:
    f.write(repo + "\\n")
shapes = {{
    "nvidia/OpenReasoning-Nemotron-7B": dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28,
        num_key_value_heads=4, num_hidden_layers=28, vocab_size=152064, max_position_embeddings=131072,
        tie_word_embeddings=False),
    "Qwen/Qwen2.5-0.5B-Instruct": dict(hidden_size=896, intermediate_size=4864, num_attention_heads=14,
        num_key_value_heads=2, num_hidden_layers=24, vocab_size=151936, max_position_embeddings=32768,
        tie_word_embeddings=True),
}}
out.mkdir(parents=True, exist_ok=True)
cfg = dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], rope_theta=1000000.0, rms_norm_eps=1e-6,
           hidden_act="silu", use_sliding_window=False, torch_dtype="bfloat16", **shapes[repo])
(out / "config.json").write_text(json.dumps(cfg))
header = json.dumps({{"w": {{"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}}}).encode()
(out / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
(out / "tokenizer.json").write_text("{{}}")
(out / "tokenizer_config.json").write_text(json.dumps({{"chat_template": "{{{{ messages }}}}"}}))
'''

# sbatch [options] SCRIPT [args]: runs the script as Slurm would start it (submit dir, job id, node list, task counts
# from --nodes and the script's #SBATCH lines, array ids: the first and the last task of an array).
FAKE_SBATCH = f'''#!{PY}
import os, re, subprocess, sys
from pathlib import Path
argv = sys.argv[1:]
i = 0
opts = {{}}
while i < len(argv) and not argv[i].endswith(".sbatch"):
    a = argv[i]
    if a.startswith("--") and "=" in a:
        k, v = a[2:].split("=", 1)
    elif a in ("-A", "-p", "-J"):
        k, v = a, argv[i + 1]
        i += 1
    else:
        k, v = a.lstrip("-"), ""
    opts[k] = v
    i += 1
script, args = argv[i], argv[i + 1:]
defaults = dict(re.findall(r"^#SBATCH --([a-z-]+)=(\\S+)", Path(script).read_text(), re.M))
nodes = int(opts.get("nodes", defaults.get("nodes", "1")))
per_node = int(defaults.get("ntasks-per-node", "1"))
log = Path(os.environ["FAKE_LOG"])
n = len(list(log.glob("job*.argv")))
job = 5000 + n
(log / f"job{{job}}.argv").write_text("\\0".join(argv))
array = opts.get("array", defaults.get("array"))
tasks = [None]
if array:
    lo, hi = map(int, array.split("-"))
    tasks = sorted({{lo, hi}})
for t in tasks:
    env = dict(os.environ, SLURM_JOB_ID=str(job if t is None else job + 100 + t), SLURM_SUBMIT_DIR=os.getcwd(),
               SLURM_JOB_NODELIST=f"node-[001-{{nodes:03d}}]", SLURM_NNODES=str(nodes),
               SLURM_NTASKS=str(nodes * per_node), SLURM_CPUS_PER_TASK=defaults.get("cpus-per-task", "1"))
    if t is not None:
        env.update(SLURM_ARRAY_TASK_ID=str(t), SLURM_ARRAY_TASK_MIN=str(lo), SLURM_ARRAY_TASK_MAX=str(hi),
                   SLURM_ARRAY_JOB_ID=str(job))
    proc = subprocess.run(["bash", script, *args], env=env)
    if proc.returncode:
        sys.exit(proc.returncode)
print(f"Submitted batch job {{job}}")
'''

# srun [options] CMD...: records its options and runs the task command once, as rank 0, with the GPU stand-ins first
# on PATH (the real scripts' wrapper then exports RANK etc. and PYTHONPATH).
FAKE_SRUN = r'''#!/bin/bash
printf '%s\0' "$@" >> "$FAKE_LOG/srun.argv"
while [[ $# -gt 0 && $1 == -* ]]; do shift; done
SLURM_PROCID=0 SLURM_LOCALID=0 PATH="$FAKE_TASK_BIN:$PATH" "$@"
'''
FAKE_SCONTROL = r'''#!/bin/bash
if [[ $1 == show && $2 == hostnames ]]; then echo node-001; echo node-002; fi
if [[ $1 == show && $2 == job ]]; then exit 1; fi
echo "$*" >> "$FAKE_LOG/scontrol.calls"
'''
FAKE_RECORDER = r'''#!/bin/bash
printf '%s ' "$(basename "$0")" "$@" >> "$FAKE_LOG/recorded"; echo >> "$FAKE_LOG/recorded"
'''

# The stand-in for what needs GPUs: parse with the real CLI (exit 2 on any unknown flag), load the recipe with its
# overrides, and leave the files the documented next step reads.
STAND_IN = f'''#!{PY}
import json, os, shutil, sys
from pathlib import Path
sys.path.insert(0, os.environ["REPO"])
from nemo_igrpo.cli import build_parser
argv = sys.argv[1:]
args = build_parser(only=argv[0]).parse_args(argv)
log = Path(os.environ["FAKE_LOG"])
with open(log / "stand_in.argv", "a") as f:
    f.write(json.dumps(argv) + "\\n")
MARK = "written by the docs test's stand-in for a GPU job"
if argv[0] == "train":
    from nemo_igrpo.config import load_config, to_yaml
    cfg = load_config(args.config, args.overrides)
    out = Path(cfg.trainer.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    (out / "metrics.jsonl").write_text("".join(json.dumps({{"step": s, "val/accuracy": 0.0, "entropy": 1.0,
        "reward/mean": 0.0, "tokens/generated": 100.0 * s, "time/step": 1.0, "note": MARK}}) + "\\n" for s in (1, 2)))
    hf = out / "hf"
    if Path(cfg.policy.model_path).is_dir() and not hf.exists():
        shutil.copytree(cfg.policy.model_path, hf)
    hf.mkdir(exist_ok=True)
elif argv[0] == "evaluate":
    from nemo_igrpo.evaluation.evaluate import check_hf_model_dir, parse_data_flags, parse_shard
    from nemo_igrpo.evaluation.protocol import load_records, resolve_datasets
    check_hf_model_dir(args.model)
    parse_shard(args.shard)
    for path in resolve_datasets(args.datasets.split(","), parse_data_flags(args.data)).values():
        load_records(path)  # the sets the job would read exist and parse
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    names = args.datasets.split(",")
    from nemo_igrpo.evaluation.metrics import summarize
    # the shape of a real summary (30 problems, 4 samples, none correct): placeholders, not results
    summary = {{"model": args.model, "note": MARK,
               "datasets": {{n: summarize([[False] * 4] * 30, [[None] * 4] * 30) for n in names}}}}
    (out / "summary.json").write_text(json.dumps(summary))
    (out / "summary.md").write_text(f"# {{MARK}}\\n" + "".join(f"| {{n}} |\\n" for n in names))
elif argv[0] == "prepare-model":  # a download from the package index: the name must be known, the output new
    from nemo_igrpo.backends.conversion.prepare_model import lookup
    lookup(args.name)
    out = Path(args.output)
    assert not out.exists(), out
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({{"note": MARK}}))
elif argv[0] == "convert" and args.direction == "megatron-to-hf":
    shutil.copytree(args.hf_config, args.out, dirs_exist_ok=True)  # config and tokenizer come from --hf
elif argv[0] == "convert":
    Path(args.out).mkdir(parents=True, exist_ok=True)
'''

# igrpo on the login node: the real command, except what needs a GPU (training without --dry-run, vLLM evaluation) or
# the package index (prepare-model).
LOGIN_IGRPO = r'''#!/bin/bash
if [[ $1 == train && " $* " != *" --dry-run "* ]] || [[ $1 == evaluate && " $* " == *" --backend vllm "* ]] \
    || [[ $1 == prepare-model ]]; then
  exec "$FAKE_TASK_BIN/igrpo" "$@"
fi
exec "$PYTHON" -m nemo_igrpo.cli "$@"
'''


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def bash_blocks(markdown: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", markdown, re.S)


def commands(markdown: str) -> list[str]:
    """Each command of the bash blocks, continuation lines joined, comment lines dropped."""
    out = []
    for block in bash_blocks(markdown):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                out.append(line.strip())
    return out


def _raw_data(raw: Path) -> None:
    raw.mkdir()

    def w(name, rows):
        (raw / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    w("acereason_math.jsonl", [{"problem": f"What is {i} + 3?", "answer": str(i + 3)} for i in range(300)])
    w("math_train.jsonl", [{"problem": f"Compute {i} * 2.", "solution": f"It is $\\boxed{{{2 * i}}}$."}
                           for i in range(200)])
    w("math500.jsonl", [{"problem": f"Find {i} - 1.", "answer": str(i - 1), "unique_id": f"m{i}"} for i in range(40)])
    for name in ("aime24", "aime25"):
        w(f"{name}.jsonl", [{"id": f"{name}-{i}", "problem": f"AIME {name} {i}?", "expected_answer": str(i)}
                            for i in range(30)])


@pytest.fixture
def sandbox(tmp_path):
    home = tmp_path / "login"
    home.mkdir()
    for name in ("conf", "slurm", "Dockerfile", "constraints.txt"):
        (home / name).symlink_to(REPO / name)
    _raw_data(home / "raw")
    (home / "generations.jsonl").write_text(json.dumps({"response": "so \\boxed{1/2}", "answer": "0.5"}) + "\n")
    bins, task_bin, log = tmp_path / "bin", tmp_path / "task-bin", tmp_path / "log"
    for d in (bins, task_bin, log):
        d.mkdir()
    _write(bins / "huggingface-cli", FAKE_HF_CLI)
    _write(bins / "sbatch", FAKE_SBATCH)
    _write(bins / "srun", FAKE_SRUN)
    _write(bins / "scontrol", FAKE_SCONTROL)
    for tool in ("docker", "enroot"):
        _write(bins / tool, FAKE_RECORDER)
    _write(bins / "igrpo", LOGIN_IGRPO)
    _write(task_bin / "igrpo", STAND_IN)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLURM_") and k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                        "MASTER_PORT", "MODEL_DIR", "DATA_DIR", "RESULTS_DIR")}
    env.update(PATH=f"{bins}:{os.environ['PATH']}", FAKE_LOG=str(log), FAKE_TASK_BIN=str(task_bin), REPO=str(REPO),
               PYTHON=PY, PYTHONPATH=str(REPO), USER="alice", OMP_NUM_THREADS="1")
    return home, env, log


def _run_doc(markdown: str, home: Path, env: dict, skip=lambda cmd: False) -> subprocess.CompletedProcess:
    lines = [c.replace("/lustre/$USER", str(home.parent / "lustre")) for c in commands(markdown) if not skip(c)]
    script = "set -euo pipefail\n" + "\n".join(f"echo '+ {c.replace(chr(39), '')}' >&2\n{c}" for c in lines)
    return subprocess.run(["bash", "-c", script], cwd=home, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_cluster_md_runs_as_written_from_checkpoint_to_evaluation_table(sandbox):
    home, env, log = sandbox
    proc = _run_doc((REPO / "docs" / "cluster.md").read_text(), home, env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lustre = home.parent / "lustre"
    data, results = lustre / "data", lustre / "results"
    # step 1 and 2: the checkpoint and the data are where the recipes look for them
    assert (log / "downloads").read_text().split() == ["nvidia/OpenReasoning-Nemotron-7B", "Qwen/Qwen2.5-0.5B-Instruct"]
    for name, rows in (("acereason_math_train", 300), ("math_train", 200), ("math500", 40), ("aime24", 30),
                       ("acereason_math_9k4_train", 300)):
        assert len((data / f"{name}.jsonl").read_text().splitlines()) == rows, name
    # step 3: the dry runs found nothing wrong and planned for the stated layouts
    out = proc.stdout
    assert out.count("# no problems found") == 3
    assert "world size        16 = TP 2 x PP 1 x DP 8" in out and "world size        8 = TP 2 x PP 1 x DP 4" in out
    assert "steps per epoch           2 = 300 training prompts // 128 per step" in out
    # step 4: the base model's evaluation, an 8-task array, each task its shard, named after the model
    evals = [json.loads(x) for x in (log / "stand_in.argv").read_text().splitlines() if x.startswith('["evaluate"')]
    base = [a for a in evals if a[a.index("--model") + 1].endswith("models/OpenReasoning-Nemotron-7B")]
    assert [a[a.index("--shard") + 1] for a in base] == ["0/8", "7/8"]
    assert all(a[a.index("--output") + 1] == str(results / "eval" / "OpenReasoning-Nemotron-7B") for a in base)
    assert all(a[a.index("--backend") + 1] == "vllm" for a in evals)
    # steps 5-6: the smoke run and its evaluation table, in the run's own directory
    assert (results / "smoke_qwen05b_math_igrpo" / "eval" / "summary.md").is_file()
    assert "| math500 |" in out
    # the twins' evaluations never share a directory, and compare reads them
    outputs = {a[a.index("--output") + 1] for a in evals}
    assert {str(results / r / "eval") for r in ("orn7b_acereason_igrpo", "orn7b_acereason_grpo")} <= outputs
    assert (results / "compare" / "report.md").is_file()
    # the container lines were given to docker and enroot as written
    recorded = (log / "recorded").read_text()
    assert "docker build -t nemo_igrpo:latest --build-arg IGRPO_CODE_VERSION=" in recorded
    assert f"enroot import -o {lustre}/containers/nemo_igrpo.sqsh dockerd://nemo_igrpo:latest" in recorded


@pytest.mark.slow
def test_readme_commands_run_as_written(sandbox):
    home, env, log = sandbox
    lustre = home.parent / "lustre"
    # the README's cluster lines assume docs/cluster.md's environment (MODEL_DIR etc., a downloaded model, data)
    env = {**env, "MODEL_DIR": str(lustre / "models"), "DATA_DIR": str(lustre / "data"),
           "RESULTS_DIR": str(lustre / "results"), "CONTAINER_IMAGE": str(lustre / "nemo_igrpo.sqsh")}
    setup = ("huggingface-cli download nvidia/OpenReasoning-Nemotron-7B --local-dir "
             "$MODEL_DIR/OpenReasoning-Nemotron-7B\n"
             "igrpo prepare-data --dataset acereason --input raw/acereason_math.jsonl --output "
             "$DATA_DIR/acereason_math_train.jsonl\n"
             "igrpo prepare-data --dataset math500 --input raw/math500.jsonl --output $DATA_DIR/math500.jsonl\n"
             "igrpo prepare-data --dataset aime24 --input raw/aime24.jsonl --output $DATA_DIR/aime24.jsonl\n"
             "igrpo prepare-data --dataset aime25 --input raw/aime25.jsonl --output $DATA_DIR/aime25.jsonl\n")
    readme = "```bash\n" + setup + "```\n" + (REPO / "README.md").read_text()
    # make installs; the GPU kit downloads wheels and needs a GPU (tests/infra/test_gpu_check.py covers its CLI)
    proc = _run_doc(readme, home, env, skip=lambda c: c.startswith(("make ", "tools/gpu_check.sh")))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "# no problems found" in proc.stdout
    graded = json.loads((home / "graded.jsonl").read_text())
    assert graded["accuracy"] == 1.0  # igrpo score, as the README shows it
    evaluate = [json.loads(x) for x in (log / "stand_in.argv").read_text().splitlines() if '"evaluate"' in x]
    assert evaluate and all(a[a.index("--backend") + 1] == "vllm" for a in evaluate)
    assert (lustre / "results" / "compare" / "report.md").is_file()


def test_every_igrpo_command_in_the_docs_parses():
    """The commands in other docs that this test cannot run (GPU, demo outputs) still name real flags."""
    from nemo_igrpo.cli import build_parser

    for doc in ("README.md", "docs/cluster.md", "docs/evaluation.md", "docs/models.md"):
        for cmd in commands((REPO / doc).read_text()):
            words = shlex.split(cmd, comments=True)
            if words[0] != "igrpo":
                continue
            build_parser(only=words[1]).parse_args(words[1:])  # SystemExit on an unknown flag
