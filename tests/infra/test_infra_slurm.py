"""The sbatch scripts, run with bash directly against a fake srun/scontrol/igrpo on PATH: the generated srun command,
its container flags, mounts and resources, the per-rank rendezvous environment, the igrpo command line, the code the
tasks import, the one-writer lock, evaluation output names and shards, and preemption (USR1 and TERM)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((REPO / "slurm").glob("*.sbatch")) + [REPO / "slurm" / "common.sh"]

# srun: record argv and environment, then run each task's command (everything from the first non-option word) with
# the per-task Slurm ids, as srun would inside the container. FAKE_SRUN_SLEEP: block until SIGTERM instead.
FAKE_SRUN = r'''#!/bin/bash
printf '%s\0' "$@" > "$FAKE_LOG/srun.argv"
env -0 > "$FAKE_LOG/srun.env"
if [[ -n ${FAKE_SRUN_SLEEP:-} ]]; then
  trap 'echo TERM >> "$FAKE_LOG/srun.signals"; kill $child 2>/dev/null; exit 143' TERM
  trap 'echo USR1 >> "$FAKE_LOG/srun.signals"; kill $child 2>/dev/null; exit 0' USR1
  sleep 30 & child=$!
  touch "$FAKE_LOG/srun.ready"
  wait $child
  exit 0
fi
while [[ $# -gt 0 && $1 == -* ]]; do shift; done
ntasks=${SLURM_NTASKS:-1}
for ((t = 0; t < ntasks; t++)); do
  SLURM_PROCID=$t SLURM_LOCALID=$((t % 8)) "$@" || exit $?
done
'''
FAKE_SCONTROL = r'''#!/bin/bash
echo "$*" >> "$FAKE_LOG/scontrol.calls"
if [[ $1 == show && $2 == hostnames ]]; then printf 'gpu-node-017\ngpu-node-018\n'; fi
if [[ $1 == show && $2 == job ]]; then  # FAKE_JOB_STATE: the state of every other job; unset: unknown (purged)
  [[ -n ${FAKE_JOB_STATE:-} ]] || { echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1; }
  echo "JobId=$4 JobName=igrpo-train JobState=$FAKE_JOB_STATE Reason=None"
fi
'''
# igrpo: per rank, its argv and the distributed environment it sees (plain bash: 16 ranks must stay fast).
FAKE_IGRPO = r'''#!/bin/bash
printf '%s\0' "$@" > "$FAKE_LOG/rank$RANK.argv"
env -0 > "$FAKE_LOG/rank$RANK.env"
'''


def _nul_list(path: Path) -> list[str]:
    return path.read_text().split("\0")[:-1]


def _env(path: Path) -> dict[str, str]:
    return dict(item.split("=", 1) for item in _nul_list(path))


@pytest.fixture
def slurm(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in {"srun": FAKE_SRUN, "scontrol": FAKE_SCONTROL, "igrpo": FAKE_IGRPO}.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "log"
    log.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update({
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_LOG": str(log),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "gpu-node-[017-018]",
        "SLURM_NNODES": "2",
        "SLURM_NTASKS": "16",
        "SLURM_SUBMIT_DIR": str(REPO),
        "CONTAINER_IMAGE": "/lustre/containers/nemo_igrpo.sqsh",
        "RESULTS_DIR": str(tmp_path / "results"),
        "DATA_DIR": str(tmp_path / "data"),
        "MODEL_DIR": str(tmp_path / "models"),
    })
    for var in ("REPO_DIR", "MOUNTS", "CONFIG", "OVERRIDES", "MASTER_PORT", "MASTER_ADDR", "RANK", "WORLD_SIZE",
                "HF_HUB_OFFLINE", "PYTHONPATH", "IGRPO_CODE_VERSION", "EVAL_OUTPUT"):
        env.pop(var, None)

    class Slurm:
        def __init__(self):
            self.env, self.log, self.tmp = env, log, tmp_path

        def run(self, script, *args, check=True, **extra_env):
            proc = subprocess.run(["bash", str(REPO / "slurm" / script), *args], env={**self.env, **extra_env},
                                  cwd=tmp_path, capture_output=True, text=True, timeout=60)
            if check:
                assert proc.returncode == 0, proc.stderr
            return proc

        def srun(self):
            return {"argv": _nul_list(self.log / "srun.argv"), "env": _env(self.log / "srun.env")}

        def ranks(self):
            """[{argv, env vars...}] in rank order."""
            n = len(list(self.log.glob("rank*.argv")))
            return [{"argv": _nul_list(self.log / f"rank{r}.argv"), **_env(self.log / f"rank{r}.env")}
                    for r in range(n)]

    return Slurm()


def _opts(argv):
    """srun options (all --key=value or --flag) up to the task command."""
    out = {}
    for arg in argv:
        if not arg.startswith("-"):
            break
        key, _, value = arg.partition("=")
        out[key] = value
    return out


def _task_command(argv):
    return argv[next(i for i, a in enumerate(argv) if not a.startswith("-")):]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_train_srun_command(slurm):
    slurm.run("train.sbatch", "trainer.seed=7", "data.system_prompt=Think step by step.",
              CONFIG="conf/r1distill7b_math_igrpo.yaml")
    srun = slurm.srun()
    opts = _opts(srun["argv"])
    results = slurm.tmp / "results"
    assert opts["--container-image"] == "/lustre/containers/nemo_igrpo.sqsh"
    mounts = opts["--container-mounts"].split(",")
    for path in (REPO, results, slurm.tmp / "data", slurm.tmp / "models"):
        assert f"{path}:{path}" in mounts  # same path inside and outside the container
    assert opts["--container-workdir"] == str(REPO)
    assert "--no-container-mount-home" in opts and opts["--kill-on-bad-exit"] == "1"
    assert opts["--output"] == f"{results}/r1distill7b_math_igrpo/logs/train-%j.log"
    assert (results / "r1distill7b_math_igrpo" / "logs").is_dir()
    # Rendezvous exported to the step: first host of the allocation, job-derived port.
    assert srun["env"]["MASTER_ADDR"] == "gpu-node-017"
    assert srun["env"]["MASTER_PORT"] == str(20000 + 4242)
    assert srun["env"]["WORLD_SIZE"] == "16"
    assert srun["env"]["DATA_DIR"] == str(slurm.tmp / "data")  # the recipes' ${oc.env:DATA_DIR} resolves inside
    assert _task_command(srun["argv"])[:2] == ["bash", "-c"]

    ranks = slurm.ranks()
    assert [r["RANK"] for r in ranks] == [str(i) for i in range(16)]
    assert [r["LOCAL_RANK"] for r in ranks] == [str(i % 8) for i in range(16)]
    assert {r["WORLD_SIZE"] for r in ranks} == {"16"}
    assert {(r["MASTER_ADDR"], r["MASTER_PORT"]) for r in ranks} == {("gpu-node-017", "24242")}
    assert ranks[0]["argv"] == [
        "train", "--config", "conf/r1distill7b_math_igrpo.yaml",
        f"trainer.output_dir={results}/r1distill7b_math_igrpo", "trainer.resume=true",
        "trainer.seed=7", "data.system_prompt=Think step by step.",  # spaces survive: no string re-splitting
    ]


def test_train_overrides_from_environment_and_mounts(slurm):
    slurm.run("train.sbatch", "trainer.seed=3", OVERRIDES="trainer.save_every=5 trainer.wandb=true",
              MOUNTS="/a:/a,/b:/c", RUN_NAME="ablation1", MASTER_PORT="29500")
    opts = _opts(slurm.srun()["argv"])
    assert opts["--container-mounts"] == "/a:/a,/b:/c"
    rank0 = slurm.ranks()[0]
    assert rank0["MASTER_PORT"] == "29500"
    assert rank0["argv"][2] == "conf/orn7b_acereason_igrpo.yaml"  # the default recipe
    assert rank0["argv"][3:] == [f"trainer.output_dir={slurm.tmp}/results/ablation1", "trainer.resume=true",
                                 "trainer.save_every=5", "trainer.wandb=true", "trainer.seed=3"]


def test_train_requires_a_container_image(slurm):
    proc = slurm.run("train.sbatch", check=False, CONTAINER_IMAGE="")
    assert proc.returncode == 2 and "CONTAINER_IMAGE is not set" in proc.stderr
    assert not (slurm.log / "srun.argv").exists()


def test_sigterm_is_forwarded_and_the_job_requeues(slurm):
    env = {**slurm.env, "FAKE_SRUN_SLEEP": "1"}
    proc = subprocess.Popen(["bash", str(REPO / "slurm" / "train.sbatch")], env=env, cwd=slurm.tmp,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 20
    while not (slurm.log / "srun.ready").exists() and time.time() < deadline:  # srun's trap is installed
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert (slurm.log / "srun.signals").read_text().split() == ["TERM"]
    calls = (slurm.log / "scontrol.calls").read_text().splitlines()
    assert "requeue 4242" in calls, err
    assert "forwarding to the job step" in err


def test_no_requeue_after_max_restarts(slurm):
    env = {**slurm.env, "FAKE_SRUN_SLEEP": "1", "SLURM_RESTART_COUNT": "3", "MAX_RESTARTS": "3"}
    proc = subprocess.Popen(["bash", str(REPO / "slurm" / "train.sbatch")], env=env, cwd=slurm.tmp,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 20
    while not (slurm.log / "srun.ready").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert "requeue 4242" not in (slurm.log / "scontrol.calls").read_text()
    assert "MAX_RESTARTS" in err


def test_a_failing_step_fails_the_job(slurm):
    (slurm.tmp / "bin" / "igrpo").write_text("#!/bin/bash\nexit 3\n")
    proc = slurm.run("train.sbatch", check=False)
    assert proc.returncode == 3
    assert "requeue" not in (slurm.log / "scontrol.calls").read_text()


def test_evaluate_command(slurm, tmp_path):
    model = tmp_path / "elsewhere" / "orn7b-hf"
    model.mkdir(parents=True)
    slurm.run("evaluate.sbatch", "--k", "8", SLURM_NTASKS="1", MODEL=str(model), EVAL_ARGS="--limit 5")
    opts = _opts(slurm.srun()["argv"])
    out = slurm.tmp / "results" / "eval" / "orn7b-hf"  # not a trainer export: named after the model folder
    assert f"{model}:{model}" in opts["--container-mounts"].split(",")  # a model outside the standard mounts
    data = slurm.tmp / "data"
    (rank0,) = slurm.ranks()
    assert rank0["argv"] == [
        "evaluate", "--model", str(model), "--backend", "vllm", "--datasets", "aime24,aime25",
        "--data", f"aime24={data}/aime24.jsonl", "--data", f"aime25={data}/aime25.jsonl",
        "--output", str(out), "--shard", "0/1", "--limit", "5", "--k", "8",
    ]
    assert opts["--output"] == f"{out}/logs/evaluate-shard-0-of-1-%j.log"


def test_evaluate_requires_a_model(slurm):
    proc = slurm.run("evaluate.sbatch", check=False, SLURM_NTASKS="1")
    assert proc.returncode != 0 and "set MODEL" in proc.stderr


def test_convert_commands(slurm, tmp_path):
    hf = slurm.tmp / "models" / "OpenReasoning-Nemotron-7B"
    hf.mkdir(parents=True)
    mg = slurm.tmp / "results" / "megatron" / "orn7b-tp2"
    slurm.run("convert.sbatch", SLURM_NTASKS="1", HF_DIR=str(hf), MEGATRON_DIR=str(mg), TP="2", PP="1")
    assert slurm.ranks()[0]["argv"] == ["convert", "hf-to-megatron", "--hf", str(hf), "--out", str(mg),
                                        "--tp", "2", "--pp", "1"]
    assert mg.is_dir()

    for f in slurm.log.glob("rank*"):
        f.unlink()
    hf_out = slurm.tmp / "results" / "run" / "hf"
    slurm.run("convert.sbatch", SLURM_NTASKS="1", DIRECTION="megatron-to-hf", HF_DIR=str(hf),
              MEGATRON_DIR=str(mg), HF_OUT=str(hf_out))
    assert slurm.ranks()[0]["argv"] == ["convert", "megatron-to-hf", "--megatron", str(mg), "--hf", str(hf),
                                        "--out", str(hf_out)]

    proc = slurm.run("convert.sbatch", check=False, SLURM_NTASKS="1", DIRECTION="sideways", HF_DIR=str(hf),
                     MEGATRON_DIR=str(mg))
    assert proc.returncode == 2 and "DIRECTION must be" in proc.stderr


# --- resources, code, locks, evaluation names and shards, USR1 ---------------------------------------------------------


def _sbatch_options(script: str) -> dict[str, str]:
    opts = {}
    for line in (REPO / "slurm" / script).read_text().splitlines():
        if line.startswith("#SBATCH "):
            key, _, value = line[len("#SBATCH "):].strip().partition("=")
            opts[key] = value
    return opts


def test_resources_memory_cores_and_the_time_limit_warning(slurm):
    train = _sbatch_options("train.sbatch")
    assert train["--mem"] == "0" and int(train["--cpus-per-task"]) >= 4
    assert train["--signal"] == "B:USR1@600" and "--requeue" in train
    assert _sbatch_options("convert.sbatch")["--mem"] == "0"
    evaluate = _sbatch_options("evaluate.sbatch")
    assert evaluate["--signal"].startswith("B:USR1@") and "--requeue" in evaluate and "--cpus-per-task" in evaluate
    # srun (Slurm >= 22.05) does not inherit --cpus-per-task from sbatch: the scripts pass it on explicitly
    slurm.run("train.sbatch", SLURM_CPUS_PER_TASK="8")
    assert _opts(slurm.srun()["argv"])["--cpus-per-task"] == "8"


def test_tasks_run_the_checked_out_code_offline_and_say_which(slurm):
    slurm.run("train.sbatch", SLURM_NTASKS="2")
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                         text=True, check=True).stdout.strip()
    for rank in slurm.ranks():
        assert rank["PYTHONPATH"].split(":")[0] == str(REPO)  # the checkout, before the image's installed copy
        assert rank["HF_HUB_OFFLINE"] == "1"
        assert rank["IGRPO_CODE_VERSION"].startswith(sha)
    log = (slurm.tmp / "results" / "orn7b_acereason_igrpo" / "logs" / "code_versions.log").read_text()
    assert f"job 4242 restart 0: {sha}" in log
    slurm.run("train.sbatch", SLURM_NTASKS="2", SLURM_RESTART_COUNT="1")
    log = (slurm.tmp / "results" / "orn7b_acereason_igrpo" / "logs" / "code_versions.log").read_text()
    assert len(log.splitlines()) == 2 and "restart 1" in log  # one line per (re)start of the run


def test_a_second_submission_of_one_config_is_refused_while_the_first_lives(slurm):
    lock = slurm.tmp / "results" / "orn7b_acereason_igrpo" / ".igrpo-job.lock"
    lock.mkdir(parents=True)
    (lock / "job_id").write_text("1111\n")
    proc = slurm.run("train.sbatch", check=False, FAKE_JOB_STATE="RUNNING")
    assert proc.returncode == 2 and "already written by job 1111" in proc.stderr and "scancel 1111" in proc.stderr
    assert not (slurm.log / "srun.argv").exists()
    proc = slurm.run("train.sbatch", check=False, FAKE_JOB_STATE="PENDING")  # e.g. requeued, waiting to restart
    assert proc.returncode == 2
    # the owner has ended (or is long gone from Slurm's memory): the lock is taken over, and released at the end
    slurm.run("train.sbatch", FAKE_JOB_STATE="COMPLETED")
    assert (slurm.log / "srun.argv").exists() and not lock.exists()
    lock.mkdir()
    (lock / "job_id").write_text("1111\n")
    slurm.run("train.sbatch")  # scontrol no longer knows job 1111
    # a requeued job (same id) passes its own lock
    lock.mkdir()
    (lock / "job_id").write_text("4242\n")
    slurm.run("train.sbatch", FAKE_JOB_STATE="RUNNING")


def test_usr1_is_forwarded_and_the_job_requeues_keeping_its_lock(slurm):
    env = {**slurm.env, "FAKE_SRUN_SLEEP": "1"}
    proc = subprocess.Popen(["bash", str(REPO / "slurm" / "train.sbatch")], env=env, cwd=slurm.tmp,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 20
    while not (slurm.log / "srun.ready").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=20)
    assert (slurm.log / "srun.signals").read_text().split() == ["USR1"]
    assert "requeue 4242" in (slurm.log / "scontrol.calls").read_text().splitlines(), err
    assert "SIGUSR1 (time limit near" in err
    lock = slurm.tmp / "results" / "orn7b_acereason_igrpo" / ".igrpo-job.lock"
    assert (lock / "job_id").read_text().strip() == "4242"  # the requeued run continues as the owner


def test_the_two_twins_evaluations_never_share_a_directory(slurm):
    outputs = []
    for run in ("orn7b_acereason_igrpo", "orn7b_acereason_grpo"):
        model = slurm.tmp / "results" / run / "hf"
        model.mkdir(parents=True)
        slurm.run("evaluate.sbatch", SLURM_NTASKS="1", MODEL=str(model))
        argv = slurm.ranks()[0]["argv"]
        outputs.append(argv[argv.index("--output") + 1])
    assert outputs == [str(slurm.tmp / "results" / r / "eval") for r in ("orn7b_acereason_igrpo", "orn7b_acereason_grpo")]
    step = slurm.tmp / "results" / "orn7b_acereason_igrpo" / "hf_step200"
    step.mkdir()
    slurm.run("evaluate.sbatch", SLURM_NTASKS="1", MODEL=str(step))
    argv = slurm.ranks()[0]["argv"]
    assert argv[argv.index("--output") + 1] == str(slurm.tmp / "results" / "orn7b_acereason_igrpo" / "eval-hf_step200")


def test_an_evaluation_array_gives_each_task_its_shard(slurm):
    model = slurm.tmp / "results" / "run" / "hf"
    model.mkdir(parents=True)
    slurm.run("evaluate.sbatch", SLURM_NTASKS="1", MODEL=str(model), SLURM_ARRAY_TASK_ID="3",
              SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_MAX="7", SLURM_ARRAY_TASK_COUNT="8")
    argv = slurm.ranks()[0]["argv"]
    assert argv[argv.index("--shard") + 1] == "3/8"
    assert _opts(slurm.srun()["argv"])["--output"].endswith("/eval/logs/evaluate-shard-3-of-8-%j.log")
    proc = slurm.run("evaluate.sbatch", check=False, SLURM_NTASKS="1", MODEL=str(model), SLURM_ARRAY_TASK_ID="3",
                     SLURM_ARRAY_TASK_MIN="2", SLURM_ARRAY_TASK_MAX="7")
    assert proc.returncode == 2 and "must start at 0" in proc.stderr
