"""The groups one optimizer step trains on, for this data-parallel rank.

Without dynamic sampling: one generation round over this rank's shard of ``data.prompts_per_step`` prompts, every
group trained on. With DAPO's dynamic sampling (``algorithm.dynamic_sampling``): rounds of further prompts until the
step holds ``prompts_per_step`` groups with a learning signal, or the round bound is reached (then the step trains on
what it has; never an error).

Consistency over data-parallel ranks: every rank holds the same prompt sampler and draws the same prompts each round,
taking its own shard, so the sampler state (saved in checkpoints) is identical everywhere and a resumed run continues
the prompt stream where it was. Whether to generate another round and which groups to train on are decided from
per-group flags gathered over DP, so every rank decides the same; the chosen groups are then exchanged and dealt
round robin, so every rank runs the same optimizer step on its share of one global batch.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from nemo_igrpo.algorithms.config import AlgorithmConfig
from nemo_igrpo.algorithms.dynamic_sampling import has_signal, needs_another_round, select_groups
from nemo_igrpo.algorithms.igrpo import RolloutBudget
from nemo_igrpo.data.sampler import PromptSampler
from nemo_igrpo.trainer.rollout import Group, RolloutWorker, StepRollouts, rollout_metrics

log = logging.getLogger("nemo_igrpo.trainer")


def collect_step_rollouts(step: int, worker: RolloutWorker | None, sampler: PromptSampler, prompts_per_step: int,
                          algorithm: AlgorithmConfig, dp_rank: int, dp_size: int,
                          share: Callable[[Any], Any], gather: Callable[[Any], list[Any]]) -> StepRollouts:
    """This rank's ``StepRollouts`` for ``step``. Collective over the job.

    ``worker`` is None on ranks that do not generate; ``share`` hands the generating rank's result to its
    model-parallel peers (identity when every rank generates); ``gather`` returns one object per DP rank, in order.
    """
    if not algorithm.dynamic_sampling.enabled:
        records = sampler.next_batch(prompts_per_step)[dp_rank::dp_size]
        return share(worker.run(records, step, shard=dp_rank) if worker is not None else None)

    ds = algorithm.dynamic_sampling
    local: dict[tuple[int, int, int], Group] = {}
    flags: list[tuple[tuple[int, int, int], bool]] = []
    timings: dict[str, float] = {}
    timeouts = over_budget = rounds = 0
    while True:
        records = sampler.next_batch(prompts_per_step)[dp_rank::dp_size]
        result = share(worker.generate_groups(records, step, dp_rank, rounds) if worker is not None else None)
        for key, value in result.timings.items():
            timings[key] = timings.get(key, 0.0) + value
        timeouts, over_budget = timeouts + result.timeouts, over_budget + result.over_budget
        mine = []
        for i, group in enumerate(result.groups):
            local[(rounds, dp_rank, i)] = group
            mine.append(has_signal(group.components[ds.metric]))
        for rank, rank_flags in enumerate(gather(mine)):
            flags += [((rounds, rank, i), f) for i, f in enumerate(rank_flags)]
        rounds += 1
        if not needs_another_round(sum(f for _, f in flags), prompts_per_step, rounds, ds.max_extra_rounds):
            break

    g = RolloutBudget.from_config(algorithm).num_refinements
    # Every rank runs every mini-batch update, and each needs a row there: enough groups that each rank has one per
    # mini-batch (groups without a signal pad, carrying no loss, when too few were found).
    groups_per_rank = -(-algorithm.num_mini_batches // g)  # ceil
    selection = select_groups(flags, target=prompts_per_step, min_groups=dp_size * groups_per_rank)
    if selection.bound_reached and dp_rank == 0 and worker is not None:
        log.warning("step %d: dynamic sampling found %d of %d groups with a signal in %d round(s) "
                    "(algorithm.dynamic_sampling.max_extra_rounds=%d); training on those", step,
                    len(selection.trained), prompts_per_step, rounds, ds.max_extra_rounds)
    wanted = set(selection.batch)
    chosen: dict[tuple[int, int, int], Group] = {}
    for part in gather({k: g for k, g in local.items() if k in wanted}):
        chosen.update(part)
    trained = set(selection.trained)
    keys = selection.shard(dp_rank, dp_size)

    metrics = rollout_metrics(list(local.values()), timings, timeouts, over_budget)
    metrics.update(selection.metrics(rounds))
    # Spent on groups that carry no loss (dropped, or padding a rank), counted where generated: the matched-budget
    # view compares tokens/generated, which includes them.
    dropped = [g for k, g in local.items() if k not in trained]
    metrics["tokens/discarded"] = float(sum(g.tokens for g in dropped))
    metrics["sequences/discarded"] = float(sum(len(g.response_ids) + len(g.draft_lengths) for g in dropped))
    return StepRollouts.from_groups([chosen[k] for k in keys], g, [k in trained for k in keys],
                                    algorithm.overlong_filter, metrics)
