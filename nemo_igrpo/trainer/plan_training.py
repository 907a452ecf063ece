"""The dry-run section on how the policy is updated: optimizer updates per step, the KL reference policy and the
training-vs-generation mismatch correction (docs/algorithms.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nemo_igrpo.trainer.updates import too_many_mini_batches

if TYPE_CHECKING:
    from nemo_igrpo.trainer.plan_record import Plan


def training_section(plan: Plan) -> list[str]:
    """The section's lines; more mini-batches than a rank's rollouts is recorded as a problem of the plan."""
    a, dp = plan.cfg.algorithm, (plan.layout.dp if plan.layout is not None else 1)
    m, e = a.num_mini_batches, a.num_update_epochs
    lines = ["# policy updates",
             f"updates per step          {m * e} = {m} mini-batch(es) (algorithm.num_mini_batches) x {e} epoch(s) "
             "(algorithm.num_update_epochs)"]
    if plan.budget is not None:
        rows = plan.budget.trained // dp
        lines.append(f"rollouts per update       about {rows / m:g} per DP rank ({rows} per step / {m})")
        problem = too_many_mini_batches(m, rows)
        if problem:
            plan.problem("algorithm.num_mini_batches", problem)
    if plan.total_steps:
        lines.append(f"LR schedule               {plan.total_steps:,} steps x {m * e} = {plan.total_steps * m * e:,} "
                     "optimizer updates")
    if a.kl_coef > 0:
        where = "CPU memory" if plan.cfg.policy.reference_offload else "device memory, one more model copy"
        lines.append(f"KL penalty                kl_coef {a.kl_coef} ({a.kl_estimator}) to the initial weights, one "
                     f"more forward pass per step; the copy is in {where} (policy.reference_offload)")
    else:
        lines.append("KL penalty                off (algorithm.kl_coef = 0): no reference policy is kept")
    c = a.mismatch
    detail = {"none": "off", "tis": f"TIS, token weight min(pi_old/pi_gen, {c.tis_cap})",
              "mis": f"MIS at {c.mis_level} level, ratios outside [{c.mis_low}, {c.mis_high}] dropped"}
    lines.append(f"mismatch correction       {detail.get(c.mode, c.mode)} (algorithm.mismatch.mode)")
    return lines
