"""Batched Jacobian-vector products of a policy's action map: the one kernel every Jacobian penalty uses.

For a deterministic action map ``pi: (B, N, D) -> (B, N, A)`` in which agent i's action depends on its
own observation only, the Jacobian of the whole map is block diagonal, so one JVP with a tangent
``u`` of shape ``(B, N, D)`` gives every agent's ``J_i(x) u_i`` at once. Points and directions with
leading ``(K, M)`` dimensions are flattened into one call: no loop over steps, states or agents.
The JVP runs on PyTorch's dual tensors (``torch.autograd.forward_ad``): the same forward-mode rules as
``torch.func.jvp`` (the same tangents; parameter gradients equal up to float rounding), without its
per-operation functorch wrapping, which on minibatch-sized inputs (800 x 4 rows, width 64, one thread)
cost about a quarter of the penalty's time.

Cost: the tangent doubles every matrix product, so a penalty's forward+backward takes about twice the
products of one plain forward+backward of the policy on the same inputs, and that is what it does
with ``agents.networks.StackedMLP``, whose layers carry their own forward-mode rule (PyTorch's rule for
a matrix product adds a product with the weights' zero tangent, forward and backward).
``bench/jvp.py`` measures the ratio.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.autograd.forward_ad as forward_ad

from envs.batch import member_mean


def jvp_norms(action_map: Callable[[torch.Tensor], torch.Tensor], points: torch.Tensor,
              directions: torch.Tensor) -> torch.Tensor:
    """``||J_i(x) u||_2`` ``(K, M, N)`` for points and directions ``(K, M, N, D)``, in one JVP call.

    The directions are detached: no gradient flows through them (the stopgrad of eq. 20). The rows are
    flattened state-major, ``(M, K)``, so that a population's rows stay member-major (``agents.population``).
    """
    k, m = points.shape[:2]
    flat_points = points.transpose(0, 1).reshape(m * k, *points.shape[2:])
    flat_directions = directions.transpose(0, 1).reshape(m * k, *directions.shape[2:]).detach()
    norms = tangent_of(action_map, flat_points, flat_directions).norm(dim=-1)
    return norms.reshape(m, k, -1).transpose(0, 1)


def tangent_of(action_map: Callable[[torch.Tensor], torch.Tensor], points: torch.Tensor,
               directions: torch.Tensor) -> torch.Tensor:
    """The JVP ``J(x) u`` of ``action_map`` at ``points`` along ``directions`` (same shape), differentiable
    in reverse mode with respect to the map's parameters (zeros where the output ignores the input)."""
    with forward_ad.dual_level():
        # a dual tensor needs memory of its own (an expanded view of the states is copied)
        output = action_map(forward_ad.make_dual(points.contiguous(), directions.contiguous()))
        primal, tangent = forward_ad.unpack_dual(output)
    return torch.zeros_like(primal) if tangent is None else tangent


@contextlib.contextmanager
def frozen_parameters(module: torch.nn.Module) -> Iterator[None]:
    """Inside the block ``module``'s parameters do not require gradients (restored on exit): for passes
    that differentiate with respect to the input only, such as PGA's. A layer written as an
    ``autograd.Function`` (``agents.networks``) decides at forward time which gradients its backward
    computes, so ``torch.autograd.grad(output, input)`` through a parameter that requires a gradient also
    computes that parameter's gradient and throws it away (about 12% of a per-agent system-objective
    pass, ``bench/update_cost.py``)."""
    flags = [(parameter, parameter.requires_grad) for parameter in module.parameters()]
    try:
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def penalty_from_norms(norms: torch.Tensor, budget: float | torch.Tensor | None, members: int = 1) -> torch.Tensor:
    """Mean of ``||J u||^2``, or of the hinge ``max(0, ||J u|| - budget)^2`` (eq. 14) with a budget, over
    ``norms`` ``(K, M, N)``. With ``members`` = P > 1 (a population's rows, ``agents.population``) the
    means are per member, ``(P,)``, and ``budget`` may be a ``(P,)`` tensor of the members' budgets."""
    if budget is None:
        return member_mean(norms ** 2, members, row_dim=1)
    if torch.is_tensor(budget):
        budget = budget.to(norms).repeat_interleave(norms.shape[1] // members).view(1, -1, 1)
    return member_mean(torch.relu(norms - budget).pow(2), members, row_dim=1)


def norm_diagnostics(norms: torch.Tensor, name: str, members: int = 1) -> dict[str, float | torch.Tensor]:
    """``reg/<name>_mean`` and ``reg/<name>_max`` of detached ``norms`` ``(K, M, N)``: floats, or ``(P,)``
    tensors per member of a population."""
    detached = norms.detach()
    mean, top = member_mean(detached, members, 1), member_mean(detached, members, 1, op="max")
    if members == 1:
        return {f"reg/{name}_mean": float(mean), f"reg/{name}_max": float(top)}
    return {f"reg/{name}_mean": mean, f"reg/{name}_max": top}
