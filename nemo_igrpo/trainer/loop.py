"""The actor loop (NeMo-Aligner's shape, on megatron-core):

    rollout (iGRPO: drafts -> best draft -> refinement prompts -> refinements; GRPO: one stage)
    -> reward -> advantages -> old log-probs -> train -> refit generator -> log / validate / checkpoint

The loop talks to the policy and the generator only through their interfaces; the same SPMD program runs on a
laptop (one process, gloo) and on a cluster (torchrun / srun, NCCL).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from nemo_igrpo.algorithms.advantages import compute_advantages
from nemo_igrpo.algorithms.igrpo import RolloutBudget
from nemo_igrpo.algorithms.losses import make_policy_loss
from nemo_igrpo.algorithms.mismatch import mismatch_weights
from nemo_igrpo.backends import collectives
from nemo_igrpo.batch import TrainBatch
from nemo_igrpo.backends.generation.interface import SamplingParams
from nemo_igrpo.config import Config, ConfigError, to_dict, to_yaml
from nemo_igrpo.data.sampler import PromptSampler
from nemo_igrpo import seeding
from nemo_igrpo.trainer.batching import masked_mean, pack_sequences
from nemo_igrpo.errors import DamagedFileError
from nemo_igrpo.trainer.checkpoints import (CheckpointDirectory, OutputDirError, ResumeError, check_resume_compatible,
                                            output_dir_refusal, read_trainer_state, remove_run_artifacts,
                                            step_dir_name)
from nemo_igrpo.trainer.data import load_prompt_splits
from nemo_igrpo.trainer.lifecycle import TRANSITIONS, ColocatedLifecycle
from nemo_igrpo.trainer.memory_plan import sequence_budget
from nemo_igrpo.trainer.metrics_logger import MetricsLogger
from nemo_igrpo.trainer.provenance import write_provenance
from nemo_igrpo.trainer.rollout import RolloutWorker, StepRollouts
from nemo_igrpo.trainer.step_rollouts import collect_step_rollouts
from nemo_igrpo.trainer.stop_signals import StepAbandoned, StopSignals
from nemo_igrpo.trainer.updates import run_updates, too_many_mini_batches, updates_per_step

log = logging.getLogger("nemo_igrpo.trainer")


# Counts that add up over data-parallel shards (the matched-budget view needs the step's total); everything else is
# a per-shard mean.
_SUMMED_OVER_RANKS = ("tokens/", "sequences/")


class NonFiniteLossError(RuntimeError):
    pass


def model_fingerprint(hf_config: Any) -> dict[str, Any]:
    keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "vocab_size", "tie_word_embeddings")
    return {k: getattr(hf_config, k, None) for k in keys}


class Trainer:
    def __init__(self, cfg: Config) -> None:
        from transformers import AutoTokenizer

        from nemo_igrpo.backends.policy.megatron_policy import MegatronPolicy
        from nemo_igrpo.backends.policy.parallel import initialize_parallel
        from nemo_igrpo.backends.conversion.hf_io import open_hf_checkpoint

        self.cfg = cfg
        if not cfg.policy.model_path:
            raise ConfigError("config key 'policy.model_path': required (a Hugging Face model directory)")
        self.layout = initialize_parallel(cfg.policy.tensor_model_parallel_size,
                                          cfg.policy.pipeline_model_parallel_size, cfg.trainer.seed)
        self.is_rank0 = self.layout.rank == 0
        self.output_dir = Path(cfg.trainer.output_dir)
        self.checkpoints = CheckpointDirectory(self.output_dir / "checkpoints")
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.policy.tokenizer_path or cfg.policy.model_path,
                                                       trust_remote_code=cfg.policy.trust_remote_code)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

        splits = load_prompt_splits(cfg.data, self.tokenizer)
        self.train_records, self.validation_records = splits.train, splits.validation
        per_step = cfg.data.prompts_per_step
        if per_step % self.layout.dp_size:
            raise ConfigError(f"config key 'data.prompts_per_step': {per_step} is not divisible by the data-parallel "
                              f"size {self.layout.dp_size}")
        if len(self.train_records) < per_step:
            raise ConfigError(f"config key 'data.prompts_per_step': {per_step} exceeds the {len(self.train_records)} "
                              "usable training prompts")
        steps_per_epoch = len(self.train_records) // per_step
        self.total_steps = cfg.trainer.max_steps or steps_per_epoch * cfg.data.num_epochs
        self.sampler = PromptSampler(self.train_records, seed=cfg.data.seed)
        rows_per_rank = per_step // self.layout.dp_size * RolloutBudget.from_config(cfg.algorithm).num_refinements
        problem = too_many_mini_batches(cfg.algorithm.num_mini_batches, rows_per_rank)
        if problem:
            raise ConfigError(f"config key 'algorithm.num_mini_batches': {problem}")

        # Memory-mapped: each rank reads only the slices of its own shard.
        self.hf_config, hf_state = open_hf_checkpoint(cfg.policy.model_path)
        # The LR schedule counts optimizer updates, several per step with mini-batches or update epochs.
        self.policy = MegatronPolicy(cfg.policy, self.layout, self.hf_config,
                                     temperature=cfg.generation.temperature,
                                     total_steps=self.total_steps * updates_per_step(cfg.algorithm),
                                     hf_state_dict=hf_state)
        hf_state.close()
        self.loss_fn = make_policy_loss(cfg.algorithm, max_response_tokens=cfg.generation.max_new_tokens)
        if self.loss_fn.needs_reference:
            # Now, before any resume loads a checkpoint: the KL reference is the initial weights in every run.
            self.policy.keep_reference(offload=cfg.policy.reference_offload)
        # HF (CPU): the model-parallel source rank generates and broadcasts to its peers. vLLM (GPU): every rank
        # builds an engine and the ranks of a TP group form one vLLM TP group, generating in lockstep from the same
        # prompts and seeds (external_launcher), so they all hold the same rollouts and nothing is broadcast.
        self.spmd_generation = cfg.generation.backend == "vllm"
        if self.spmd_generation and self.layout.pp_size > 1:
            raise ConfigError("config key 'generation.backend': vllm with policy.pipeline_model_parallel_size > 1 is "
                              "not supported (each pipeline stage would need its own engine); use tensor parallelism")
        self.worker: RolloutWorker | None = None
        if self.layout.is_mp_src or self.spmd_generation:
            self.worker = self._build_worker()
        # The one owner of sleep/wake/refit and of the memory the policy and the generator share.
        self.lifecycle = ColocatedLifecycle(self.policy, self.worker.generator if self.worker is not None else None,
                                            offload_optimizer=cfg.policy.offload_optimizer_during_generation)
        self.step = 0
        self.consecutive_nonfinite = 0

    # ----------------------------------------------------------------------------------------------- construction
    def _build_worker(self) -> RolloutWorker:
        from nemo_igrpo.backends.generation import build_generator
        from nemo_igrpo.rewards.reward_fn import RewardFunction

        cfg = self.cfg
        generator = build_generator(cfg.generation, cfg.policy, max_model_len=sequence_budget(cfg).max_model_len)
        sampling = SamplingParams(temperature=cfg.generation.temperature, top_p=cfg.generation.top_p,
                                  top_k=cfg.generation.top_k, max_new_tokens=cfg.generation.max_new_tokens)
        return RolloutWorker(generator, RewardFunction(cfg.reward), self.tokenizer, cfg.algorithm, sampling,
                             cfg.data.system_prompt, cfg.data.instruction, cfg.trainer.seed)

    # --------------------------------------------------------------------------------------------------- resume
    def _trainer_state(self) -> dict[str, Any]:
        return {"step": self.step, "sampler": self.sampler.state_dict(), "config": to_dict(self.cfg),
                "model_fingerprint": model_fingerprint(self.hf_config),
                "consecutive_nonfinite": self.consecutive_nonfinite}

    def maybe_resume(self) -> None:
        """Continue from the newest intact checkpoint. A damaged one (truncated shard, broken trainer_state.json) is
        reported with the file it names, set aside as ``step_N.damaged``, and the one before it is tried; a checkpoint
        of a different run (config, model) is refused, not skipped."""
        if not self.cfg.trainer.resume:
            return
        steps = self.checkpoints.complete_steps()
        if not steps:
            if self.is_rank0:
                log.warning("trainer.resume=true but no complete checkpoint in %s: starting from scratch",
                            self.checkpoints.root)
            return
        damaged: list[tuple[int, str]] = []
        for step in reversed(steps):
            ckpt = self.checkpoints.root / step_dir_name(step)
            try:
                state = read_trainer_state(ckpt)
                check_resume_compatible(state, to_dict(self.cfg), model_fingerprint(self.hf_config),
                                        self.cfg.trainer.force_resume)
                self.policy.load_checkpoint(str(ckpt / "policy"))
            except DamagedFileError as err:
                damaged.append((step, str(err)))
                if self.is_rank0:
                    log.warning("checkpoint %s is damaged: %s; trying the previous one", ckpt, err)
                continue
            break
        else:
            raise ResumeError(f"trainer.resume=true: no intact checkpoint in {self.checkpoints.root}:\n  - "
                              + "\n  - ".join(f"{step_dir_name(s)}: {why}" for s, why in damaged))
        self.sampler.load_state_dict(state["sampler"])
        self.step = int(state["step"])
        self.consecutive_nonfinite = int(state.get("consecutive_nonfinite", 0))
        collectives.barrier()  # every rank has finished reading before rank 0 renames anything
        if self.is_rank0:
            for bad_step, _ in damaged:
                log.warning("set aside damaged checkpoint %s", self.checkpoints.set_aside(bad_step))
            log.info("resumed from %s (step %d)%s", ckpt, self.step,
                     f", not from the newest: {len(damaged)} newer checkpoint(s) damaged" if damaged else "")
            saved_max = state["config"].get("trainer", {}).get("max_steps")
            if saved_max != self.cfg.trainer.max_steps:
                next_lr = getattr(self.policy, "lr", None)
                log.warning("trainer.max_steps changed from %s to %s on resume: the learning-rate schedule now spans "
                            "%d steps, so from step %d on the LR follows the new schedule%s instead of continuing the "
                            "old one (it can go back up)", saved_max, self.cfg.trainer.max_steps, self.total_steps,
                            self.step + 1, f" ({next_lr:.3g} for the next update)" if next_lr is not None else "")

    def save_checkpoint(self) -> None:
        if self.is_rank0:
            self.checkpoints.begin(self.step)
        collectives.barrier()
        partial = self.checkpoints.partial_dir(self.step)
        self.policy.save_checkpoint(str(partial / "policy"))
        collectives.barrier()
        if self.is_rank0:
            self.checkpoints.commit(self.step, self._trainer_state())
            self.checkpoints.prune(self.cfg.trainer.keep_checkpoints)
        collectives.barrier()

    # ------------------------------------------------------------------------------------------------ the loop
    def refit(self) -> float:
        """Copy the policy's weights into the generator (through the lifecycle, the only place a refit happens).
        Every rank takes part in the gather."""
        return self.lifecycle.refit()

    def _rollouts(self) -> StepRollouts:
        share = (lambda x: x) if self.spmd_generation else collectives.broadcast_from_model_parallel_source
        with self.lifecycle.generation():  # the step's last generation (its last round) ends here: the engine sleeps
            return collect_step_rollouts(self.step, self.worker, self.sampler, self.cfg.data.prompts_per_step,
                                         self.cfg.algorithm, self.layout.dp_rank, self.layout.dp_size, share=share,
                                         gather=collectives.data_parallel_all_gather)

    def train_step(self) -> dict[str, float]:
        t_step = time.perf_counter()
        self.step += 1
        rollouts = self._rollouts()
        metrics = dict(rollouts.metrics)
        g = rollouts.group_size
        rewards = torch.tensor(rollouts.rewards, dtype=torch.float32).view(-1, g)
        advantages = compute_advantages(self.cfg.algorithm.advantage_estimator, rewards,
                                        self.cfg.algorithm.advantage_eps).reshape(-1)
        input_ids, loss_mask, gen_logprobs = pack_sequences(rollouts.prompt_ids, rollouts.response_ids,
                                                            self.tokenizer.pad_token_id, rollouts.generator_logprobs)
        loss_mask *= torch.tensor(rollouts.loss_rows, dtype=loss_mask.dtype)[:, None]  # overlong filter, padding
        t0 = time.perf_counter()
        lengths = [len(p) + len(r) for p, r in zip(rollouts.prompt_ids, rollouts.response_ids)]
        old_logprobs, entropy = self.policy.get_logprobs(input_ids, return_entropy=True, lengths=lengths)
        metrics["time/logprob"] = time.perf_counter() - t0
        # A silent refit failure (generator sampling from stale or wrong weights) shows up here first.
        metrics["refit/logprob_mismatch"] = masked_mean((old_logprobs - gen_logprobs).abs(), loss_mask)
        metrics["entropy"] = masked_mean(entropy, loss_mask)
        metrics["advantage/abs_mean"] = float(advantages.abs().mean())
        correction = mismatch_weights(old_logprobs, gen_logprobs, loss_mask, self.cfg.algorithm.mismatch)
        metrics.update(correction.metrics)
        ref_logprobs = None
        if self.loss_fn.needs_reference:
            t0 = time.perf_counter()
            ref_logprobs = self.policy.get_reference_logprobs(input_ids, lengths=lengths)
            metrics["time/ref_logprob"] = time.perf_counter() - t0
        batch = TrainBatch(input_ids=input_ids, loss_mask=loss_mask, advantages=advantages,
                           old_logprobs=old_logprobs, ref_logprobs=ref_logprobs, is_weights=correction.weights)
        t0 = time.perf_counter()
        a = self.cfg.algorithm
        train_metrics = run_updates(self.policy, batch, self.loss_fn, num_mini_batches=a.num_mini_batches,
                                    num_epochs=a.num_update_epochs,
                                    seed=seeding.derive_seed(self.cfg.trainer.seed, self.step, seeding.MINI_BATCHES,
                                                             self.layout.dp_rank))
        metrics["time/train"] = time.perf_counter() - t0
        metrics.update(train_metrics)
        skipped = bool(train_metrics.get("skipped", 0.0))
        self.consecutive_nonfinite = self.consecutive_nonfinite + 1 if skipped else 0
        metrics["time/refit"] = self.refit()
        metrics = collectives.data_parallel_mean(metrics)
        for key in metrics:
            if key.startswith(_SUMMED_OVER_RANKS):
                metrics[key] *= self.layout.dp_size  # mean * ranks: the step's total over all shards
        metrics["time/step"] = time.perf_counter() - t_step
        if self.consecutive_nonfinite >= self.cfg.trainer.max_consecutive_nonfinite:
            raise NonFiniteLossError(
                f"{self.consecutive_nonfinite} non-finite losses in a row (trainer.max_consecutive_nonfinite="
                f"{self.cfg.trainer.max_consecutive_nonfinite}) at step {self.step}: stopping. Lower "
                "policy.optimizer.lr or check the data; the last good checkpoint is in " + str(self.checkpoints.root))
        return metrics

    def validate(self) -> dict[str, float]:
        limit = self.cfg.trainer.num_validation_prompts or len(self.validation_records)
        records = self.validation_records[:limit][self.layout.dp_rank::self.layout.dp_size]
        correct = n = 0.0
        with self.lifecycle.generation():
            if self.worker is not None and records:
                seed = seeding.derive_seed(self.cfg.trainer.seed, self.step, seeding.VALIDATION, self.layout.dp_rank)
                correct, n = self.worker.validate(records, self.cfg.trainer.validation_temperature, seed)
        if not self.layout.is_mp_src:
            correct = n = 0.0  # counted once per data-parallel shard
        correct, n = collectives.data_parallel_sum([correct, n])
        return {"val/accuracy": correct / n if n else math.nan}

    def fit(self) -> dict[str, float]:
        cfg = self.cfg.trainer
        # Rank 0 decides for all (it is the one that writes here), before anything in the directory is touched.
        refusal = output_dir_refusal(self.output_dir, cfg.resume, cfg.overwrite) if self.is_rank0 else None
        refusal = collectives.broadcast_from_rank0(refusal)
        if refusal is not None:
            raise OutputDirError(refusal)
        if self.is_rank0 and cfg.overwrite:
            removed = remove_run_artifacts(self.output_dir)
            if removed:
                log.warning("trainer.overwrite=true: deleted the earlier run's %s in %s", ", ".join(removed),
                            self.output_dir)
        collectives.barrier()
        self.maybe_resume()
        if self.is_rank0:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.yaml").write_text(to_yaml(self.cfg))
            write_provenance(self.output_dir)  # versions, git commit, dirty tree: one line per start
        logger = MetricsLogger(self.output_dir, enabled=self.is_rank0, tensorboard=cfg.tensorboard, wandb=cfg.wandb,
                               wandb_project=cfg.wandb_project, run_name=self.cfg.name, config=to_dict(self.cfg),
                               progress_bar=cfg.progress_bar, total_steps=self.total_steps, initial_step=self.step,
                               truncate_after_step=self.step)
        # Signals (stop_signals.py): USR1 saves after the step, TERM/INT save as soon as the policy can. Only a single
        # process may abandon a step mid-way (no peer can be left waiting in a collective), and only in the rollouts.
        single = self.layout.world_size == 1
        stop = StopSignals(cfg.preemption_grace_s, abandonable=(Trainer._rollouts.__code__,) if single else (),
                           protected=TRANSITIONS)
        stop.saved(self.step)  # a resumed run's checkpoint, or step 0: nothing to save yet
        stop.step_rolled_back(self.step)
        last: dict[str, float] = {}
        try:
            with stop:
                self.refit()  # the generator starts from exactly the policy's weights (after a resume too)
                if self.step == 0 and cfg.validate_every and self.validation_records:
                    logger.log(0, self.validate())
                while self.step < self.total_steps:
                    if collectives.any_rank(stop.requested):  # a signal between steps (validation, a save)
                        self._save_for_stop(stop)
                        break
                    before = (self.step, self.sampler.state_dict())
                    stop.step_started(self.step + 1)
                    try:
                        metrics = self.train_step()
                    except StepAbandoned:
                        self.step = before[0]
                        self.sampler.load_state_dict(before[1])
                        stop.step_rolled_back(self.step)
                        self._save_for_stop(stop)
                        break
                    stop.step_finished()
                    stopping = collectives.any_rank(stop.requested)
                    urgent = stopping and collectives.any_rank(stop.urgent)
                    if cfg.validate_every and not urgent and self.validation_records \
                            and (self.step % cfg.validate_every == 0 or self.step == self.total_steps):
                        metrics.update(self.validate())
                    logger.log(self.step, metrics)
                    last = metrics
                    if stopping:
                        self._save_for_stop(stop)
                        break
                    if self.step == self.total_steps or (cfg.save_every and self.step % cfg.save_every == 0):
                        self.save_checkpoint()
                        stop.saved(self.step)
                else:
                    self.export_final()
        finally:
            logger.close()
            if self.worker is not None:
                self.worker.close()
        return last

    def _save_for_stop(self, stop: StopSignals) -> None:
        """A stop signal: checkpoint the last finished step unless it is already on disk, then say what happens."""
        if self.step > stop.last_saved:
            self.save_checkpoint()
            stop.saved(self.step)
        if self.is_rank0:
            kept = f"checkpoint of step {self.step} saved" if self.step else "no step finished, nothing to save"
            log.warning("%s: %s; exiting with status 0 (a requeued job resumes at step %d)", stop.reason or "stop",
                        kept, self.step + 1)

    def export_final(self) -> None:
        """The trained policy as an HF directory (``output_dir/hf``), ready for ``igrpo evaluate``."""
        from nemo_igrpo.backends.conversion.hf_io import save_hf_checkpoint

        named = self.policy.export_hf_weights()
        if self.is_rank0:
            save_hf_checkpoint(self.output_dir / "hf", self.hf_config, named, self.tokenizer)
        else:
            for _ in named:
                pass
        collectives.barrier()

    def close(self) -> None:
        from nemo_igrpo.backends.policy.parallel import destroy_parallel

        # The engine runs on the default process group: it shuts down after megatron's groups and before that one.
        destroy_parallel(shutdown=[self.lifecycle.close])
