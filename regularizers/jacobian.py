"""Directional Jacobian penalties by batched forward-mode JVPs (never materialising the Jacobian).

For a policy's deterministic action map ``pi: (B, N, D) -> (B, N, A)`` (each agent's action depends
on its own observation only), points ``x`` and unit directions ``u`` of shape ``(K, M, N, D)``:

    R = (1/K) sum_t mean_{m, i} || J_i(x_t) stopgrad(u_t) ||_2^2           (eq. 20)

or, with a budget gamma, the hinge ``mean max(0, ||J_i u_t|| - gamma)^2`` (the constraint of eq. 14).
``J u`` for all K x M points and N agents is one ``torch.func.jvp`` call (``regularizers.jvp``), and
reverse mode through it gives the parameter gradient.

* ``aajr``: x_t = s + delta_t and u_t from the shared PGA on the ``system`` objective, per agent
  (agent i alone attacked, the others at their nominal actions);
* ``jacobian``: x_t = s and u_t uniform on the unit sphere, K per state, so that
  ``E ||J u||^2 = ||J||_F^2 / D`` (Hoffman et al. 2019): the same code with other directions. With a
  channel mask P (the shock channels, k of them: the run config's default) the sphere is that of the
  masked subspace and ``E ||J u||^2 = ||J P||_F^2 / k``: the part of J an attacker can excite.
"""

from __future__ import annotations

import torch

from envs.batch import Batch, member_mean
from envs.shocks import budget_use, pga, system_objective
from envs.core import members, randint, randn
from regularizers.jvp import frozen_parameters, jvp_norms, norm_diagnostics, penalty_from_norms


def per_agent_system_objective(policy, batch: Batch, scenario):
    """The minibatch observations in the scenario's dtype and ``g(delta)`` ``(M, N)``: the system
    loss when agent i alone acts on its shocked observation (``envs.shocks.system_objective``)."""
    obs = batch.obs.to(scenario.dtype)
    policy_dtype = policy.log_std.dtype

    def action_map(x: torch.Tensor) -> torch.Tensor:
        return policy.deterministic_action(x.to(policy_dtype)).to(x.dtype)

    return obs, system_objective(scenario, batch.state, obs, action_map, "per_agent")


def aajr_trajectory(policy, batch: Batch, scenario, eps: float, steps: int, norm: str = "l2",
                    step_size: float | None = None, rule: str = "gradient"):
    """Per-agent PGA on the system loss at the minibatch states (in the scenario's dtype): the points
    ``s + delta_t`` and the directions ``u_t`` of eq. 20, with the trajectory itself (PGA differentiates
    with respect to the shock alone: the policy's parameters are frozen meanwhile)."""
    with frozen_parameters(policy):
        obs, objective = per_agent_system_objective(policy, batch, scenario)
        trajectory = pga(objective, tuple(obs.shape), eps, norm, steps, step_size, scenario.shock_mask,
                         device=obs.device, dtype=scenario.dtype, rule=rule)
    points = (obs.unsqueeze(0) + trajectory.deltas[:-1]).to(policy.log_std.dtype)
    return points, trajectory.directions.to(policy.log_std.dtype), trajectory


def sampled_steps(points: torch.Tensor, directions: torch.Tensor,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One step t drawn uniformly per (state, agent): points and directions ``(1, M, N, D)`` taken from
    ``(K, M, N, D)``. The mean of ``||J u_t||^2`` over them is an unbiased estimate of eq. 20's mean over
    the K steps (agent i's action depends on its own observation only, so each agent may sit at its
    own step), at 1/K of the JVPs."""
    k, m, n, d = points.shape
    steps = randint(k, (1, m, n, 1), generator, row_dim=1, device=points.device).expand(1, m, n, d)
    return points.gather(0, steps), directions.gather(0, steps)


def aajr_penalty(policy, batch: Batch, scenario, eps: float, steps: int,
                 norm: str = "l2", step_size: float | None = None,
                 budget: float | None = None, rule: str = "gradient", sample_steps: bool = False,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """AAJR (eq. 20): Jacobian-vector norms along the per-agent PGA trajectory of the system loss.

    ``batch``: ``obs`` ``(M, N, D)`` and the scenario ``state``. Diagnostics: mean
    and max ``||J u_t||``, the mean PGA gain ``g(delta_K) - g(0)`` and the trajectory's mean budget use
    ``||delta_K|| / eps``. ``rule``: PGA's step rule (``envs.shocks``); the directions are eq. 12 either way.
    ``sample_steps``: the JVPs at one step per (state, agent) drawn with ``generator`` (``sampled_steps``)
    instead of all K.
    """
    points, directions, trajectory = aajr_trajectory(policy, batch, scenario, eps, steps, norm, step_size, rule)
    if sample_steps:
        if generator is None:
            raise ValueError("sample_steps=True needs a torch.Generator for reproducibility")
        points, directions = sampled_steps(points, directions, generator)
    norms = jvp_norms(policy.deterministic_action, points, directions)
    count = members(generator)
    gain = member_mean(trajectory.values[-1] - trajectory.values[0], count)
    use = member_mean(budget_use(trajectory.deltas[-1], eps, norm), count)
    diagnostics = {**norm_diagnostics(norms, "jvp_norm", count),
                   "reg/pga_gain": float(gain) if count == 1 else gain,
                   "reg/budget_use": float(use) if count == 1 else use}
    return penalty_from_norms(norms, budget, count), diagnostics


def random_unit_directions(shape: tuple[int, ...], generator: torch.Generator, device, dtype,
                           mask: torch.Tensor | None = None, row_dim: int = 0) -> torch.Tensor:
    """Directions uniform on the unit sphere of the last dimension, or of its coordinates where the
    boolean ``mask`` ``(D,)`` is set (zero elsewhere)."""
    directions = randn(shape, generator, row_dim=row_dim, device=device, dtype=dtype)
    if mask is not None:
        directions = directions * mask.to(device=device, dtype=dtype)
    return directions / directions.norm(dim=-1, keepdim=True)


def global_jacobian_penalty(policy, batch: Batch, directions: int, generator: torch.Generator,
                            budget: float | None = None,
                            mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Frobenius-norm estimator: ``||J_i(s) u||^2`` at the states along ``directions`` (K) random unit
    directions each, on the sphere of the channels ``mask`` ``(D,)`` (all features when None)."""
    obs = batch.obs
    units = random_unit_directions((directions, *obs.shape), generator, obs.device, obs.dtype, mask, row_dim=1)
    norms = jvp_norms(policy.deterministic_action, obs.unsqueeze(0).expand(directions, *obs.shape), units)
    count = members(generator)
    return penalty_from_norms(norms, budget, count), norm_diagnostics(norms, "jvp_norm", count)
