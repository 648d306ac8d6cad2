"""Theory diagnostics of a trained policy on evaluation states (shared/DESIGN.md section 2).

On states visited by the deterministic policy (nominal episodes), with each agent's PGA on the
system loss (agent i alone attacked; K steps, eps, the regularizer's settings):

* directional amplification ``a_t = ||J_i(s + delta_t) u_t||`` along the trajectory, against the
  global ``||J_i(s)||_2`` (power iteration, JVP + VJP) at the same states; for a budget gamma, the
  fraction of (state, agent) pairs where ``max_t a_t <= gamma`` while ``||J_i(s)||_2 > gamma``: the
  states a directional budget admits and a global one excludes (class expansion);
* effective curvature ``kappa_t = v_t^T (Hess g)(delta_t) v_t`` along the unit step directions
  ``v_t = (delta_{t+1} - delta_t) / ||delta_{t+1} - delta_t||`` (Hessian-vector products by double
  backward), and the rate of non-monotone ascent steps ``g(delta_{t+1}) < g(delta_t)`` (the step-size
  condition ``eta <= 1 / L_eff`` fails where curvature is large).
"""

from __future__ import annotations

import torch

from envs.batch import Batch
from envs.core import make_generator
from envs.vector import TorchVectorEnv, run_episode
from regularizers.jacobian import aajr_trajectory, per_agent_system_objective
from regularizers.jvp import jvp_norms
from regularizers.spectral import top_singular_directions


def evaluation_states(scenario, policy, episodes: int, max_states: int, seed: int) -> Batch:
    """States visited by the deterministic policy in ``episodes`` nominal episodes, subsampled
    uniformly to at most ``max_states``: a ``Batch`` of their observations, actions and states."""
    env = TorchVectorEnv(scenario, num_envs=episodes, auto_reset=False)
    observations, actions = [], []

    def act(obs: torch.Tensor, state) -> torch.Tensor:
        observations.append(obs.float())
        actions.append(policy.deterministic_action(observations[-1]).to(scenario.dtype))
        return actions[-1]

    episode = run_episode(env, act, seed)
    visited = Batch.from_steps(episode.states, actions=actions, obs=observations)
    keep = torch.randperm(len(visited), generator=torch.Generator().manual_seed(seed))[:max_states]
    return visited[keep.to(scenario.device)]


def curvature_along_steps(objective, deltas: torch.Tensor) -> torch.Tensor:
    """``v_t^T Hess g(delta_t) v_t`` ``(K, *batch)`` with ``v_t`` the unit step from ``delta_t`` to
    ``delta_{t+1}`` (0 where the step is 0); ``objective`` maps ``(*batch, D)`` to ``batch``, each
    sample depending on its own ``delta`` only."""
    curvatures = []
    for t in range(deltas.shape[0] - 1):
        step = deltas[t + 1] - deltas[t]
        length = step.norm(dim=-1, keepdim=True)
        v = torch.where(length > 0, step / length.clamp_min(1e-30), torch.zeros_like(step)).detach()
        delta = deltas[t].detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(delta).sum(), delta, create_graph=True)
        (hv,) = torch.autograd.grad((grad * v).sum(), delta)
        curvatures.append((hv * v).sum(-1))
    return torch.stack(curvatures)


def theory_diagnostics(scenario, policy, batch: Batch, eps: float, steps: int, norm: str = "l2",
                       budget: float | None = None, power_iterations: int = 20, seed: int = 0) -> dict[str, float]:
    """The diagnostics of the module docstring on the minibatch of states ``batch``.

    ``budget`` gamma defaults to the median of the global norms over (state, agent) pairs.
    """
    points, directions, trajectory = aajr_trajectory(policy, batch, scenario, eps, steps, norm)
    with torch.no_grad():
        directional = jvp_norms(policy.deterministic_action, points, directions)  # (K, M, N)
        obs = batch.obs
        top = top_singular_directions(policy.deterministic_action, obs, power_iterations,
                                      make_generator(seed, obs.device))
        global_norm = jvp_norms(policy.deterministic_action, obs.unsqueeze(0), top.unsqueeze(0))[0]  # (M, N)
    gamma = float(global_norm.median()) if budget is None else float(budget)
    directional_max = directional.amax(0)
    directional_only = (directional_max <= gamma) & (global_norm > gamma)
    _, objective = per_agent_system_objective(policy, batch, scenario)
    curvature = curvature_along_steps(objective, trajectory.deltas)
    values = trajectory.values
    nonmonotone = (values[1:] < values[:-1] - 1e-12 * values[:-1].abs().clamp_min(1.0)).float()
    return {
        "jvp_norm_mean": float(directional.mean()), "jvp_norm_max": float(directional.max()),
        "global_norm_mean": float(global_norm.mean()), "global_norm_max": float(global_norm.max()),
        "budget": gamma, "frac_directional_only": float(directional_only.float().mean()),
        "curvature_mean": float(curvature.mean()), "curvature_max": float(curvature.max()),
        "nonmonotone_rate": float(nonmonotone.mean()), "pga_gain": float((values[-1] - values[0]).mean()),
        "eval_states": int(obs.shape[0]),
    }
