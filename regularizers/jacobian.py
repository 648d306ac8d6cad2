"""Directional Jacobian penalties by batched forward-mode JVPs (never materialising the Jacobian).

For a policy's deterministic action map ``pi: (B, N, D) -> (B, N, A)`` (each agent's action depends
on its own observation only), points ``x`` and unit directions ``u`` of shape ``(K, M, N, D)``:

    R = (1/K) sum_t mean_{m, i} || J_i(x_t) u_t ||_2^2             (eq. 20; directions detached)

``J u`` for all K x M points and N agents is one ``torch.func.jvp`` call (the agents are already one
``vmap`` inside the policy), and reverse mode through it gives the parameter gradient.

* ``aajr``: x_t = s + delta_t and u_t from the shared PGA on the ``system`` objective (per agent);
* ``jacobian``: x_t = s and u_t uniform on the unit sphere, K per state, so that
  ``E ||J u||^2 = ||J||_F^2 / D`` (Hoffman et al. 2019): the same code with other directions.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.func import jvp, vjp

from envs.shocks import pga, system_objective
from regularizers.jvp import jvp_norms, penalty_from_norms


def aajr_penalty(policy, batch: dict[str, torch.Tensor], scenario, eps: float, steps: int,
                 norm: str = "l2", step_size: float | None = None,
                 budget: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """AAJR (eq. 20): Jacobian-vector norms along the per-agent PGA trajectory of the system loss.

    ``batch``: ``obs`` ``(M, N, D)`` and the scenario state under ``state/<key>``.
    """
    obs = batch["obs"]
    state = {key[len("state/"):]: value for key, value in batch.items() if key.startswith("state/")}
    scenario_obs = obs.to(scenario.dtype)

    policy_dtype = policy.log_std.dtype

    def action_map(x: torch.Tensor) -> torch.Tensor:
        return policy.deterministic_action(x.to(policy_dtype)).to(x.dtype)

    objective = system_objective(scenario, state, scenario_obs, action_map, "per_agent")
    trajectory = pga(objective, tuple(obs.shape), eps, norm, steps, step_size, scenario.shock_mask,
                     device=obs.device, dtype=scenario.dtype)
    points = (scenario_obs.unsqueeze(0) + trajectory.deltas[:-1]).to(policy_dtype)
    norms = jvp_norms(policy.deterministic_action, points, trajectory.directions.to(policy_dtype))
    detached = norms.detach()
    diagnostics = {"aajr/jvp_norm_mean": float(detached.mean()), "aajr/jvp_norm_max": float(detached.max()),
                   "aajr/pga_gain": float((trajectory.values[-1] - trajectory.values[0]).mean())}
    return penalty_from_norms(norms, budget), diagnostics


def global_jacobian_penalty(policy, batch: dict[str, torch.Tensor], steps: int, generator: torch.Generator,
                            budget: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Frobenius-norm estimator: ``||J u||^2`` at the states along K random unit directions each."""
    obs = batch["obs"]
    directions = torch.randn((steps, *obs.shape), generator=generator, device=obs.device, dtype=obs.dtype)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    norms = jvp_norms(policy.deterministic_action, obs.unsqueeze(0).expand(steps, *obs.shape), directions)
    return penalty_from_norms(norms, budget), {"jacobian/jvp_norm_mean": float(norms.detach().mean())}


def make_penalty(method: str, scenario, eps: float, steps: int, norm: str = "l2", seed: int = 0) -> Callable:
    """The penalty ``penalty(policy, batch) -> (tensor, diagnostics)`` of a method name."""
    if method == "aajr":
        return lambda policy, batch: aajr_penalty(policy, batch, scenario, eps, steps, norm)
    if method == "jacobian":
        generator = torch.Generator(device=scenario.device).manual_seed(seed)
        return lambda policy, batch: global_jacobian_penalty(policy, batch, steps, generator)
    raise ValueError(f"unknown regularizer {method!r}; allowed: 'aajr', 'jacobian'")


def top_singular_directions(action_map: Callable[[torch.Tensor], torch.Tensor], points: torch.Tensor,
                            iterations: int, generator: torch.Generator) -> torch.Tensor:
    """Unit directions ``(M, N, D)`` approximating each agent's top right-singular vector of ``J_i(x)``
    by power iteration on ``J^T J`` (one JVP and one VJP per iteration, detached)."""
    v = torch.randn(points.shape, generator=generator, device=points.device, dtype=points.dtype)
    v = v / v.norm(dim=-1, keepdim=True)
    x = points.detach()
    for _ in range(iterations):
        jv = jvp(action_map, (x,), (v,))[1]
        _, pullback = vjp(action_map, x)
        v = pullback(jv)[0]  # J_i^T J_i v_i for every agent (the Jacobian is block diagonal)
        v = (v / (v.norm(dim=-1, keepdim=True) + 1e-12)).detach()
    return v


def spectral_penalty(policy, batch: dict[str, torch.Tensor], iterations: int, generator: torch.Generator,
                     budget: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Penalty on the spectral norm: ``||J_i(s) v_i||^2`` along the power-iteration direction
    (``||J_i||_2^2`` at convergence), or its hinge against a global budget gamma."""
    obs = batch["obs"]
    directions = top_singular_directions(policy.deterministic_action, obs, iterations, generator)
    norms = jvp_norms(policy.deterministic_action, obs.unsqueeze(0), directions.unsqueeze(0))
    return penalty_from_norms(norms, budget), {"spectral/norm_mean": float(norms.detach().mean())}
