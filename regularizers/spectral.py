"""Global spectral-norm penalty on each agent's policy Jacobian, by power iteration (JVP + VJP).

    R_spec = mean_{m, i} ||J_i(s_m)||_2^2 ~= mean ||J_i(s_m) v_i||^2,  v_i = top right-singular vector

``v_i`` comes from a few power iterations on ``J_i^T J_i`` (one JVP and one VJP per iteration,
detached), so the parameter gradient is that of ``||J_i v_i||^2`` with ``v_i`` fixed, which equals the
gradient of ``sigma_max(J_i)^2`` at convergence. The hinge form ``max(0, ||J_i v_i|| - gamma)^2``
penalises only states whose global Lipschitz estimate exceeds the budget gamma.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.func import jvp, vjp

from envs.batch import Batch
from regularizers.jvp import jvp_norms, penalty_from_norms


def top_singular_directions(action_map: Callable[[torch.Tensor], torch.Tensor], points: torch.Tensor,
                            iterations: int, generator: torch.Generator) -> torch.Tensor:
    """Unit directions ``(M, N, D)`` approximating each agent's top right-singular vector of ``J_i(x)``
    by power iteration on ``J^T J`` (one JVP and one VJP per iteration, detached)."""
    v = torch.randn(points.shape, generator=generator, device=points.device, dtype=points.dtype)
    v = v / v.norm(dim=-1, keepdim=True)
    x = points.detach()
    _, pullback = vjp(action_map, x)
    for _ in range(iterations):
        jv = jvp(action_map, (x,), (v,))[1]
        v = pullback(jv)[0]  # J_i^T J_i v_i for every agent (the Jacobian is block diagonal)
        v = (v / (v.norm(dim=-1, keepdim=True) + 1e-12)).detach()
    return v


def spectral_penalty(policy, batch: Batch, iterations: int, generator: torch.Generator,
                     budget: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Penalty on the spectral norm: ``||J_i(s) v_i||^2`` along the power-iteration direction
    (``||J_i||_2^2`` at convergence), or its hinge against a global budget gamma."""
    obs = batch.obs
    with torch.no_grad():
        directions = top_singular_directions(policy.deterministic_action, obs, iterations, generator)
    norms = jvp_norms(policy.deterministic_action, obs.unsqueeze(0), directions.unsqueeze(0))
    detached = norms.detach()
    diagnostics = {"reg/spectral_norm_mean": float(detached.mean()), "reg/spectral_norm_max": float(detached.max())}
    return penalty_from_norms(norms, budget), diagnostics
