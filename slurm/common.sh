# shellcheck shell=bash
# Shared by slurm/*.sbatch: defaults, the srun/pyxis flags, the rendezvous, the igrpo command lines and the
# preemption handling. Everything that builds a command lives here, once, so that a change of the igrpo CLI is a
# one-line change and tests/infra can check the generated commands with a fake srun.
#
# Paths are mounted at the same location inside the container as outside, so a path in a config, a log or an error
# message means the same thing on both sides.

igrpo_die() {
  echo "igrpo-slurm: error: $*" >&2
  exit 2
}

# Defaults for every variable the scripts read; the sbatch scripts set their own before sourcing this file, and
# anything exported at `sbatch` time wins over both.
igrpo_defaults() {
  REPO_DIR=${REPO_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}
  RESULTS_DIR=${RESULTS_DIR:-$REPO_DIR/results}
  DATA_DIR=${DATA_DIR:-$REPO_DIR/data}
  MODEL_DIR=${MODEL_DIR:-$REPO_DIR/models}
  MOUNTS=${MOUNTS:-$REPO_DIR:$REPO_DIR,$RESULTS_DIR:$RESULTS_DIR,$DATA_DIR:$DATA_DIR,$MODEL_DIR:$MODEL_DIR}
  [[ -n ${CONTAINER_IMAGE:-} ]] || igrpo_die "CONTAINER_IMAGE is not set (a .sqsh file or e.g. nvcr.io#nvidia/...)"
  # The recipes resolve ${oc.env:DATA_DIR}, ${oc.env:MODEL_DIR}, ${oc.env:RESULTS_DIR}; srun passes the environment
  # into the container, so exporting them here is what makes the same YAML work on every cluster.
  export REPO_DIR RESULTS_DIR DATA_DIR MODEL_DIR
  # Compute nodes usually have no internet: a model or tokenizer name that is not a local directory must fail at once,
  # not after minutes of Hub retries. Models are downloaded on a login node (docs/cluster.md, step 1).
  export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
  igrpo_code_version
}

# IGRPO_CODE_VERSION: which code the job runs. The tasks import nemo_igrpo from the checkout (TASK_WRAPPER puts
# REPO_DIR first on PYTHONPATH), not the copy installed in the image, so the version is the checkout's git commit,
# with "-dirty" when it has uncommitted changes. The trainer logs it at start-up.
igrpo_code_version() {
  local sha
  if sha=$(git -C "$REPO_DIR" rev-parse --short=12 HEAD 2>/dev/null); then
    if [[ -n $(git -C "$REPO_DIR" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
      sha=$sha-dirty
    fi
    IGRPO_CODE_VERSION=$sha
  else
    IGRPO_CODE_VERSION="unknown (not a git checkout: $REPO_DIR)"
  fi
  export IGRPO_CODE_VERSION
}

# Append "when, job, restart, code version" to $1 (a run's logs/code_versions.log), so a run resumed across requeues
# says which code wrote which part of it.
igrpo_record_code_version() {
  mkdir -p "$(dirname "$1")"
  printf '%s job %s restart %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "${SLURM_JOB_ID:-?}" \
    "${SLURM_RESTART_COUNT:-0}" "$IGRPO_CODE_VERSION" >> "$1"
}

# --- one writer per output directory --------------------------------------------------------------------------------

# True while Slurm job $1 exists and has not ended (pending, running, requeued, suspended, completing).
igrpo_job_alive() {
  local info
  info=$(scontrol show job -o "$1" 2>/dev/null) || return 1
  [[ $info =~ JobState=(PENDING|RUNNING|REQUEUED|REQUEUE_HOLD|REQUEUE_FED|SUSPENDED|CONFIGURING|COMPLETING|RESIZING|SIGNALING|STAGE_OUT|STOPPED)([[:space:]]|$) ]]
}

# igrpo_lock DIR [NAME]: refuse to run while another live job writes DIR (two submissions of one config would write
# one run directory). The lock is the directory DIR/.igrpo-NAME.lock holding the owner's job id: mkdir is atomic on
# NFS and Lustre, where flock often is not. The owner itself passes (a requeued job keeps its id); a lock whose job
# has ended (killed, node failure) is taken over, renamed aside first so that two jobs cannot both take it.
IGRPO_LOCK=""
igrpo_lock() {
  local dir=$1 name=${2:-job}
  local lock=$dir/.igrpo-$name.lock me=${SLURM_JOB_ID:?SLURM_JOB_ID is not set}
  local owner attempt
  mkdir -p "$dir"
  for attempt in 1 2 3; do
    if mkdir "$lock" 2>/dev/null; then
      echo "$me" > "$lock/job_id"
      IGRPO_LOCK=$lock
      return 0
    fi
    owner=$(cat "$lock/job_id" 2>/dev/null || true)
    if [[ -z $owner ]]; then  # created an instant ago, id not written yet
      sleep 2
      owner=$(cat "$lock/job_id" 2>/dev/null || true)
    fi
    if [[ $owner == "$me" ]]; then
      IGRPO_LOCK=$lock
      return 0
    fi
    if [[ -n $owner ]] && igrpo_job_alive "$owner"; then
      igrpo_die "$dir is already written by job $owner, which has not ended (lock $lock). Cancel that job" \
        "(scancel $owner), or give this run another name (RUN_NAME=... / EVAL_OUTPUT=...)"
    fi
    echo "igrpo-slurm: taking over the lock of ended job ${owner:-?} on $dir (attempt $attempt)" >&2
    if mv "$lock" "$lock.stale.$me" 2>/dev/null; then
      rm -rf "$lock.stale.$me"
    fi
  done
  igrpo_die "could not take the lock $lock"
}

# Release the lock when the job ends for good (a job that requeues itself keeps it for its next run).
igrpo_unlock() {
  if [[ -n $IGRPO_LOCK && $(cat "$IGRPO_LOCK/job_id" 2>/dev/null) == "${SLURM_JOB_ID:-}" ]]; then
    rm -rf "$IGRPO_LOCK"
  fi
  IGRPO_LOCK=""
}

# Add a bind mount (same path inside) for each argument not already under a mounted directory: models or
# checkpoints that live elsewhere on the cluster file system. A path must exist to be mounted.
igrpo_mount_paths() {
  local path entry covered
  local -a entries=()
  for path in "$@"; do
    covered=0
    IFS=',' read -r -a entries <<< "$MOUNTS"
    for entry in "${entries[@]}"; do
      entry=${entry%%:*}
      if [[ $path == "$entry" || $path == "$entry"/* ]]; then covered=1; fi
    done
    (( covered )) || MOUNTS=$MOUNTS,$path:$path
  done
}

# MASTER_ADDR / MASTER_PORT / WORLD_SIZE for torch.distributed, from the allocation.
igrpo_rendezvous() {
  [[ -n ${SLURM_JOB_NODELIST:-} ]] || igrpo_die "SLURM_JOB_NODELIST is not set: run this script with sbatch"
  # The first host of the allocation. (Not `| head -n 1`: under `set -o pipefail` scontrol may die of SIGPIPE once
  # head has exited, failing the job at random on large allocations.)
  local hosts
  hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
  MASTER_ADDR=${hosts%%$'\n'*}
  [[ -n $MASTER_ADDR ]] || igrpo_die "scontrol returned no host for SLURM_JOB_NODELIST=$SLURM_JOB_NODELIST"
  # A port derived from the job id: two jobs sharing a node do not collide, and a requeued job (same id) reuses it.
  MASTER_PORT=${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}
  WORLD_SIZE=${SLURM_NTASKS:?SLURM_NTASKS is not set}
  export MASTER_ADDR MASTER_PORT WORLD_SIZE
}

# SRUN_ARGS: the flags of every job step. All of the form --key=value (one word each).
#   $1: the step's log file (srun --output patterns such as %j are allowed)
igrpo_srun_args() {
  local log_file=$1
  SRUN_ARGS=(
    "--container-image=$CONTAINER_IMAGE"
    "--container-mounts=$MOUNTS"
    "--container-workdir=$REPO_DIR"
    # ~/.local inside the container would shadow the image's packages with whatever the user pip-installed at home.
    "--no-container-mount-home"
    "--export=ALL"
    # One crashed rank must end the step; otherwise the others wait in an NCCL collective until the time limit.
    "--kill-on-bad-exit=1"
    "--output=$log_file"
    # A requeued job has the same id: append to its log instead of truncating the run's history.
    "--open-mode=append"
    "--label"
  )
  # Slurm >= 22.05: srun no longer inherits --cpus-per-task from sbatch, so without this every rank would be pinned to
  # one core (its grading workers and the generation engine's scheduler thread included).
  if [[ -n ${SLURM_CPUS_PER_TASK:-} ]]; then
    SRUN_ARGS+=("--cpus-per-task=$SLURM_CPUS_PER_TASK")
  fi
}

# TASK_WRAPPER: runs in every task inside the container, turns Slurm's per-task ids into the torch.distributed
# variables, and puts the checkout first on PYTHONPATH so that the job runs the checked-out code, not the copy installed
# in the image (single quotes on purpose: expanded in each task, not here). It uses "$@" (not string formatting), so
# overrides with spaces or quotes reach igrpo intact.
# shellcheck disable=SC2016
TASK_WRAPPER=(bash -c 'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS \
PYTHONPATH=$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}; exec "$@"' igrpo-task)

# --- the igrpo command lines: adjust here when the CLI changes ------------------------------------------------------

# IGRPO_CMD for training. OVERRIDES (space-separated key=value, from the environment) then the script's arguments.
igrpo_train_cmd() {
  local -a env_overrides=()
  read -r -a env_overrides <<< "${OVERRIDES:-}"
  # resume=true always: the first run finds no checkpoint and starts fresh, a requeued run continues.
  IGRPO_CMD=(igrpo train --config "$CONFIG" "trainer.output_dir=$RUN_DIR" trainer.resume=true
             "${env_overrides[@]}" "$@")
}

# Where the evaluation of model directory $1 goes. Named after the run, never after the folder alone (every trainer
# export is called hf, and two runs' evaluations must not share a directory): <run>/hf -> <run>/eval (where
# `igrpo compare` looks), <run>/hf_step200 -> <run>/eval-hf_step200, any other model -> $RESULTS_DIR/eval/<its name>.
igrpo_eval_output() {
  local model=${1%/}
  local base parent
  base=$(basename "$model")
  parent=$(dirname "$model")
  case $base in
    hf) echo "$parent/eval" ;;
    hf[_-]*) echo "$parent/eval-$base" ;;
    *) echo "$RESULTS_DIR/eval/$base" ;;
  esac
}

# EVAL_SHARD (index/count): a Slurm array evaluates one shard of every set per task (--array=0-7: 8 GPUs), and the
# task that completes the last shard merges them; a plain job is shard 0/1.
igrpo_eval_shard() {
  if [[ -n ${SLURM_ARRAY_TASK_ID:-} ]]; then
    [[ ${SLURM_ARRAY_TASK_MIN:-0} == 0 ]] || igrpo_die "the array must start at 0 (e.g. --array=0-7), got min" \
      "${SLURM_ARRAY_TASK_MIN}"
    EVAL_SHARD=$SLURM_ARRAY_TASK_ID/$((SLURM_ARRAY_TASK_MAX + 1))
  else
    EVAL_SHARD=0/1
  fi
}

# IGRPO_CMD for evaluation: each set's file is passed explicitly from DATA_DIR/<name>.jsonl (igrpo prepare-data).
igrpo_evaluate_cmd() {
  local -a extra=() data_args=() names=()
  local name
  read -r -a extra <<< "${EVAL_ARGS:-}"
  IFS=',' read -r -a names <<< "$DATASETS"
  for name in "${names[@]}"; do
    data_args+=(--data "$name=$DATA_DIR/$name.jsonl")
  done
  IGRPO_CMD=(igrpo evaluate --model "$MODEL" --backend vllm --datasets "$DATASETS" "${data_args[@]}"
             --output "$EVAL_OUTPUT" --shard "$EVAL_SHARD" "${extra[@]}" "$@")
}

# IGRPO_CMD for checkpoint conversion (DIRECTION: hf-to-megatron or megatron-to-hf).
igrpo_convert_cmd() {
  local -a extra=()
  read -r -a extra <<< "${CONVERT_ARGS:-}"
  case $DIRECTION in
    hf-to-megatron)
      IGRPO_CMD=(igrpo convert hf-to-megatron --hf "$HF_DIR" --out "$MEGATRON_DIR" --tp "$TP" --pp "$PP"
                 "${extra[@]}" "$@") ;;
    megatron-to-hf)
      # --hf names the original HF directory: its config and tokenizer are copied next to the converted weights.
      IGRPO_CMD=(igrpo convert megatron-to-hf --megatron "$MEGATRON_DIR" --hf "$HF_DIR" --out "$HF_OUT"
                 "${extra[@]}" "$@") ;;
    *) igrpo_die "DIRECTION must be hf-to-megatron or megatron-to-hf, got '$DIRECTION'" ;;
  esac
}

# --- running a step, with preemption --------------------------------------------------------------------------------

_IGRPO_SRUN_PID=""
_IGRPO_SIGNALLED=""

# USR1 (--signal=B:USR1@LEAD: the time limit is near) and TERM (preemption, scancel, the limit itself) reach this
# shell; srun forwards them to every task. The trainer handles both (trainer/stop_signals.py): USR1 saves after the
# current step, TERM as soon as it can; either way it exits 0 and this script requeues the job.
_igrpo_on_signal() {
  _IGRPO_SIGNALLED=$1
  local what="preemption or time limit: the trainer saves as soon as it can"
  [[ $1 == USR1 ]] && what="time limit near: the trainer saves after its current step"
  echo "igrpo-slurm: SIG$1 ($what); forwarding to the job step" >&2
  if [[ -n $_IGRPO_SRUN_PID ]]; then
    kill -"$1" "$_IGRPO_SRUN_PID" 2>/dev/null || true
  fi
}

# Run `srun SRUN_ARGS TASK_WRAPPER IGRPO_CMD` in the background so that the batch shell can catch signals (bash runs a
# trap only between commands, and `wait` is interruptible while a foreground command is not). Requeue after a
# USR1/TERM when $1 is "requeue"; release the directory lock (igrpo_lock) when the job ends for good. Returns the
# step's exit status.
igrpo_run_step() {
  local requeue=${1:-no}
  trap '_igrpo_on_signal USR1' USR1
  trap '_igrpo_on_signal TERM' TERM
  echo "igrpo-slurm: code $IGRPO_CODE_VERSION; srun ${SRUN_ARGS[*]} ${TASK_WRAPPER[0]} ... ${IGRPO_CMD[*]}" >&2
  srun "${SRUN_ARGS[@]}" "${TASK_WRAPPER[@]}" "${IGRPO_CMD[@]}" &
  _IGRPO_SRUN_PID=$!
  local rc=0
  wait "$_IGRPO_SRUN_PID" || rc=$?
  # The first wait returns as soon as a trap ran; wait again for the checkpoint to be written.
  while kill -0 "$_IGRPO_SRUN_PID" 2>/dev/null; do
    rc=0
    wait "$_IGRPO_SRUN_PID" || rc=$?
  done
  trap - USR1 TERM
  if [[ -n $_IGRPO_SIGNALLED && $requeue == requeue ]]; then
    local restarts=${SLURM_RESTART_COUNT:-0}
    if (( restarts < ${MAX_RESTARTS:-20} )); then
      echo "igrpo-slurm: requeueing job $SLURM_JOB_ID after SIG$_IGRPO_SIGNALLED (restart $((restarts + 1)); it" \
        "resumes from the checkpoint)" >&2
      # Under Slurm preemption the job may already be requeued; a second request is harmless.
      scontrol requeue "$SLURM_JOB_ID" || true
      return "$rc"
    fi
    echo "igrpo-slurm: not requeueing: $restarts restarts reached MAX_RESTARTS=${MAX_RESTARTS:-20}" >&2
  fi
  igrpo_unlock
  return "$rc"
}
