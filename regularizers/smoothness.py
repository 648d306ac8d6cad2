"""SA-PPO-style smoothness regularizer (Zhang et al. 2020): the change of the action under the worst
perturbation of the observation found by PGA on the ``action`` objective.

    delta*_i = PGA_K( ||pi_i(s + delta) - pi_i(s)||^2 ),  ||delta||_p <= eps, shock channels only
    R_smooth = mean_{m, i} ||pi_i(s_m + stopgrad(delta*_i)) - pi_i(s_m)||_2^2 / eps^2

(per agent, each agent's own worst perturbation; PGA starts at a random point of the ball, since
``delta = 0`` is a stationary point of the objective). Dividing by eps^2 puts it in the units of the
Jacobian penalties: for a linear policy and an l2 ball it is ``||J u||^2`` along the unit direction
``u = delta* / eps``, so one ``reg_coef`` means the same for ``smooth`` and ``aajr``. With a budget
gamma, the hinge ``max(0, ||pi_i(s + delta*) - pi_i(s)|| / eps - gamma)^2``.
"""

from __future__ import annotations

import torch

from envs.batch import Batch, member_mean
from envs.core import members
from envs.shocks import action_objective, budget_use, pga
from regularizers.jvp import frozen_parameters, norm_diagnostics, penalty_from_norms


def smoothness_penalty(policy, batch: Batch, mask: torch.Tensor | None, eps: float, steps: int,
                       generator: torch.Generator, norm: str = "l2", step_size: float | None = None,
                       budget: float | None = None, rule: str = "gradient") -> tuple[torch.Tensor, dict[str, float]]:
    """The smoothness penalty and diagnostics (mean/max action change ``||pi(s + delta*) - pi(s)||``,
    PGA gain, and how far PGA moved from its random start, ``||delta_K - delta_0|| / eps``).

    :param mask: the shock channels (``scenario.shock_mask``), or None for every feature.
    """
    obs = batch.obs
    action_map = policy.deterministic_action
    nominal = action_map(obs)  # one forward for PGA's reference and the penalty's
    objective = action_objective(obs.detach(), action_map, "per_agent", nominal=nominal)
    with frozen_parameters(policy):  # PGA differentiates with respect to the shock alone
        trajectory = pga(objective, tuple(obs.shape), eps, norm, steps, step_size,
                         None if mask is None else mask.to(obs.device), random_start=True, generator=generator,
                         device=obs.device, dtype=obs.dtype, rule=rule)
    delta = trajectory.deltas[-1].detach()
    change = (action_map(obs + delta) - nominal).norm(dim=-1) / eps
    count = members(generator)
    moved = {"reg/pga_gain": member_mean(trajectory.values[-1] - trajectory.values[0], count),
             "reg/pga_move": member_mean(budget_use(delta - trajectory.deltas[0], eps, norm), count)}
    diagnostics = {**norm_diagnostics(change.unsqueeze(0) * eps, "action_change", count),
                   **{key: float(value) if count == 1 else value for key, value in moved.items()}}
    return penalty_from_norms(change.unsqueeze(0), budget, count), diagnostics
