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
}

# TASK_WRAPPER: runs in every task inside the container, and turns Slurm's per-task ids into the torch.distributed
# variables (single quotes on purpose: expanded in each task, not here). It uses "$@" (not string formatting), so overrides with spaces or quotes reach igrpo intact.
# shellcheck disable=SC2016
TASK_WRAPPER=(bash -c 'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS; exec "$@"' igrpo-task)

# --- the igrpo command lines: adjust here when the CLI changes ------------------------------------------------------

# IGRPO_CMD for training. OVERRIDES (space-separated key=value, from the environment) then the script's arguments.
igrpo_train_cmd() {
  local -a env_overrides=()
  read -r -a env_overrides <<< "${OVERRIDES:-}"
  # resume=true always: the first run finds no checkpoint and starts fresh, a requeued run continues.
  IGRPO_CMD=(igrpo train --config "$CONFIG" "trainer.output_dir=$RUN_DIR" trainer.resume=true
             "${env_overrides[@]}" "$@")
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
             --output "$EVAL_OUTPUT" "${extra[@]}" "$@")
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
_IGRPO_TERMINATED=0

_igrpo_on_term() {
  _IGRPO_TERMINATED=1
  echo "igrpo-slurm: SIGTERM (time limit or preemption): forwarding to the job step so the trainer checkpoints" >&2
  # srun forwards SIGTERM to every task; the trainer saves a checkpoint and exits within the --signal lead time.
  [[ -n $_IGRPO_SRUN_PID ]] && kill -TERM "$_IGRPO_SRUN_PID" 2>/dev/null
}

# Run `srun SRUN_ARGS TASK_WRAPPER IGRPO_CMD` in the background so that the batch shell can catch SIGTERM (bash runs a
# trap only between commands, and `wait` is interruptible while a foreground command is not). Requeue on SIGTERM
# when $1 is "requeue". Returns the step's exit status.
igrpo_run_step() {
  local requeue=${1:-no}
  trap _igrpo_on_term TERM
  echo "igrpo-slurm: srun ${SRUN_ARGS[*]} ${TASK_WRAPPER[0]} ... ${IGRPO_CMD[*]}" >&2
  srun "${SRUN_ARGS[@]}" "${TASK_WRAPPER[@]}" "${IGRPO_CMD[@]}" &
  _IGRPO_SRUN_PID=$!
  local rc=0
  wait "$_IGRPO_SRUN_PID" || rc=$?
  # The first wait returns as soon as the trap ran; wait again for the checkpoint to be written.
  while kill -0 "$_IGRPO_SRUN_PID" 2>/dev/null; do
    rc=0
    wait "$_IGRPO_SRUN_PID" || rc=$?
  done
  trap - TERM
  if [[ $_IGRPO_TERMINATED == 1 && $requeue == requeue ]]; then
    local restarts=${SLURM_RESTART_COUNT:-0}
    if (( restarts < ${MAX_RESTARTS:-20} )); then
      echo "igrpo-slurm: requeueing job $SLURM_JOB_ID (restart $((restarts + 1)); it resumes from the checkpoint)" >&2
      # Under Slurm preemption the job may already be requeued; a second request is harmless.
      scontrol requeue "$SLURM_JOB_ID" || true
    else
      echo "igrpo-slurm: not requeueing: $restarts restarts reached MAX_RESTARTS=${MAX_RESTARTS:-20}" >&2
    fi
  fi
  return "$rc"
}
