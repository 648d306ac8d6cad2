"""Global spectral-norm penalty on each agent's policy Jacobian, by power iteration (JVP + VJP).

    R_spec = mean_{m, i} ||J_i(s_m)||_2^2 ~= mean ||J_i(s_m) v_i||^2,  v_i = top right-singular vector

``v_i`` comes from a few power iterations on ``J_i^T J_i`` (one JVP and one VJP per iteration,
detached), so the parameter gradient is that of ``||J_i v_i||^2`` with ``v_i`` fixed, which equals the
gradient of ``sigma_max(J_i)^2`` at convergence. The hinge form ``max(0, ||J_i v_i|| - gamma)^2``
penalises only states whose global Lipschitz estimate exceeds the budget gamma. With a channel mask
P (the shock channels: the run config's default) the iteration runs on ``P J^T J P`` and the penalty is
``||J_i P||_2^2``, the largest gain of agent i's action over the shocks an attacker can apply.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.func import vjp

from envs.batch import Batch
from envs.core import members, randn
from regularizers.jvp import jvp_norms, norm_diagnostics, penalty_from_norms, tangent_of


def top_singular_directions(action_map: Callable[[torch.Tensor], torch.Tensor], points: torch.Tensor,
                            iterations: int, generator: torch.Generator,
                            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Unit directions ``(M, N, D)`` approximating each agent's top right-singular vector of ``J_i(x)``
    by power iteration on ``J^T J`` (one JVP and one VJP per iteration, detached); with a boolean
    ``mask`` ``(D,)``, of ``J_i P`` (iteration on ``P J^T J P``, zero off the mask)."""
    keep = None if mask is None else mask.to(device=points.device, dtype=points.dtype)
    v = randn(points.shape, generator, device=points.device, dtype=points.dtype)
    v = v if keep is None else v * keep
    v = v / v.norm(dim=-1, keepdim=True)
    x = points.detach()
    _, pullback = vjp(action_map, x)
    for _ in range(iterations):
        jv = tangent_of(action_map, x, v)
        v = pullback(jv)[0]  # J_i^T J_i v_i for every agent (the Jacobian is block diagonal)
        v = v if keep is None else v * keep
        v = (v / (v.norm(dim=-1, keepdim=True) + 1e-12)).detach()
    return v


def spectral_penalty(policy, batch: Batch, iterations: int, generator: torch.Generator,
                     budget: float | None = None,
                     mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Penalty on the spectral norm: ``||J_i(s) v_i||^2`` along the power-iteration direction
    (``||J_i P||_2^2`` at convergence, P the channels of ``mask``; all features when None), or its
    hinge against a global budget gamma."""
    obs = batch.obs
    with torch.no_grad():
        directions = top_singular_directions(policy.deterministic_action, obs, iterations, generator, mask)
    norms = jvp_norms(policy.deterministic_action, obs.unsqueeze(0), directions.unsqueeze(0))
    count = members(generator)
    return penalty_from_norms(norms, budget, count), norm_diagnostics(norms, "spectral_norm", count)
