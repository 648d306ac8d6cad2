"""Batched Jacobian-vector products of a policy's action map: the one kernel every Jacobian penalty uses.

For a deterministic action map ``pi: (B, N, D) -> (B, N, A)`` in which agent i's action depends on its
own observation only, the Jacobian of the whole map is block diagonal, so one JVP with a tangent
``u`` of shape ``(B, N, D)`` gives every agent's ``J_i(x) u_i`` at once. Points and directions with
leading ``(K, M)`` dimensions are flattened into one call: no loop over steps, states or agents.

Cost: the tangent doubles every matrix product, so a penalty's forward+backward takes about twice the
products of one plain forward+backward of the policy on the same inputs, and that is what it does
with ``agents.networks.StackedMLP``, whose layers carry their own forward-mode rule (PyTorch's rule for
a matrix product adds a product with the weights' zero tangent, forward and backward).
``bench/jvp.py`` measures the ratio.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.func import jvp


def jvp_norms(action_map: Callable[[torch.Tensor], torch.Tensor], points: torch.Tensor,
              directions: torch.Tensor) -> torch.Tensor:
    """``||J_i(x) u||_2`` ``(K, M, N)`` for points and directions ``(K, M, N, D)``, in one JVP call.

    The directions are detached: no gradient flows through them (the stopgrad of eq. 20).
    """
    k, m = points.shape[:2]
    flat_points = points.contiguous().reshape(k * m, *points.shape[2:])
    flat_directions = directions.reshape(k * m, *directions.shape[2:]).detach()
    _, tangent = jvp(action_map, (flat_points,), (flat_directions,))
    return tangent.norm(dim=-1).reshape(k, m, -1)


def penalty_from_norms(norms: torch.Tensor, budget: float | None) -> torch.Tensor:
    """Mean of ``||J u||^2``, or of the hinge ``max(0, ||J u|| - budget)^2`` (eq. 14) with a budget."""
    if budget is None:
        return (norms ** 2).mean()
    return torch.relu(norms - budget).pow(2).mean()
