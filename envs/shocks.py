"""Projected gradient ascent (PGA) on an eps-ball of observation perturbations, implemented once.

The shock wrapper (attacks at rollout and evaluation time) and the regularizers (training
directions) both call ``pga``. Given a differentiable objective ``g(delta)`` with one value per
perturbation (``delta`` of shape ``(*batch, D)``, ``g`` of shape ``batch``; samples independent), it
runs K steps of

    u_t = grad g(delta_t) / (||grad g(delta_t)||_2 + eps0)                                        (12)
    delta_{t+1} = Proj_Delta(delta_t + eta * step(grad g(delta_t)))

with ``step`` the identity (l2 ball) or ``sign`` (linf ball), gradients and iterates restricted to the
shock channels (``mask``), ``Delta = {||delta||_p <= eps, delta = 0 outside the mask}``, and returns
the whole trajectory: the iterates ``delta_0..delta_K``, the directions ``u_0..u_{K-1}`` and ``g`` at
every iterate. Zero gradients give ``u = 0`` and no step. Shared shocks use ``delta`` ``(B, D)``
broadcast to every agent by the objective; per-agent shocks use ``(B, N, D)``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from envs.core import check_choice, check_positive_int, check_real

NORMS = ("l2", "linf")


class PGATrajectory(NamedTuple):
    """The PGA trajectory; ``batch`` is ``delta.shape[:-1]``."""

    deltas: torch.Tensor  # (K + 1, *batch, D) iterates delta_0 .. delta_K
    directions: torch.Tensor  # (K, *batch, D) normalised ascent directions u_0 .. u_{K-1}
    values: torch.Tensor  # (K + 1, *batch) objective at every iterate


def project(delta: torch.Tensor, eps: float, norm: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Euclidean projection onto ``{||delta||_p <= eps}`` over the last dimension, zero outside ``mask``.

    (The projection onto the ball intersected with the subspace of the mask is the ball projection of
    the masked vector, since the ball is symmetric in each coordinate.)
    """
    if mask is not None:
        delta = delta * mask
    if norm == "linf":
        return delta.clamp(-eps, eps)
    length = delta.norm(dim=-1, keepdim=True)
    return delta * torch.clamp(eps / length.clamp_min(1e-30), max=1.0)


def random_in_ball(shape: tuple[int, ...], eps: float, norm: str, mask: torch.Tensor | None,
                   generator: torch.Generator, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """Uniform samples in the (masked) eps-ball of the given norm, ``shape = (*batch, D)``."""
    if norm == "linf":
        sample = eps * (2 * torch.rand(shape, generator=generator, device=device, dtype=dtype) - 1)
        return sample * mask if mask is not None else sample
    gaussian = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    if mask is not None:
        gaussian = gaussian * mask
    dim = int(mask.sum()) if mask is not None else shape[-1]
    radius = eps * torch.rand((*shape[:-1], 1), generator=generator, device=device, dtype=dtype) ** (1.0 / max(dim, 1))
    return gaussian / gaussian.norm(dim=-1, keepdim=True).clamp_min(1e-30) * radius


def pga(objective: Callable[[torch.Tensor], torch.Tensor], delta_shape: tuple[int, ...], eps: float,
        norm: str = "l2", steps: int = 5, step_size: float | None = None, mask: torch.Tensor | None = None,
        random_start: bool = False, generator: torch.Generator | None = None, device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32, eps0: float = 1e-12) -> PGATrajectory:
    """K-step projected gradient ascent of ``objective`` over the eps-ball (see the module docstring).

    :param objective: ``g(delta) -> (*batch,)``, differentiable, one value per perturbation.
    :param delta_shape: ``(*batch, D)``.
    :param eps: radius of the ball (> 0).
    :param norm: ``l2`` or ``linf``.
    :param steps: K >= 1.
    :param step_size: eta; default ``2.5 * eps / K`` (Madry et al.).
    :param mask: bool ``(D,)``, the features the shock may move (all when None).
    :param random_start: start from a uniform point of the ball instead of 0 (needs ``generator``).
    :param eps0: stabiliser of the direction normalisation (eq. 12).

    The objective's parameters receive no gradient from PGA; the returned tensors are detached.
    """
    check_real("eps", eps, 0.0, low_open=True)
    check_choice("norm", norm, NORMS)
    steps = check_positive_int("steps", steps)
    step_size = 2.5 * eps / steps if step_size is None else check_real("step_size", step_size, 0.0, low_open=True)
    mask_values = None if mask is None else mask.to(device=device, dtype=dtype)
    if random_start:
        if generator is None:
            raise ValueError("random_start=True needs a torch.Generator for reproducibility")
        delta = random_in_ball(delta_shape, eps, norm, mask_values, generator, device, dtype)
    else:
        delta = torch.zeros(delta_shape, device=device, dtype=dtype)
    deltas, directions, values = [delta], [], []
    for _ in range(steps + 1):
        with torch.enable_grad():
            point = delta.detach().requires_grad_(True)
            value = objective(point)
            if value.shape != delta_shape[:-1]:
                raise ValueError(f"objective must return one value per perturbation, shape {delta_shape[:-1]}, "
                                 f"got {tuple(value.shape)}")
            grad = (torch.autograd.grad(value.sum(), point, allow_unused=True)[0]
                    if value.requires_grad else None)  # an objective that ignores delta
        values.append(value.detach())
        if len(directions) == steps:
            break
        grad = torch.zeros_like(delta) if grad is None else grad.detach()
        if mask_values is not None:
            grad = grad * mask_values
        directions.append(grad / (grad.norm(dim=-1, keepdim=True) + eps0))
        ascent = grad.sign() if norm == "linf" else grad
        delta = project(delta + step_size * ascent, eps, norm, mask_values)
        deltas.append(delta)
    return PGATrajectory(torch.stack(deltas), torch.stack(directions), torch.stack(values))


# --------------------------------------------------------------------------------------------
# Attack objectives g(delta): what the attacker maximises. ``policy`` maps observations
# (B, N, D) to deterministic actions (B, N, A); shared shocks have delta (B, D), per-agent (B, N, D).
# --------------------------------------------------------------------------------------------

MODES = ("shared", "per_agent")
OBJECTIVES = ("system", "action", "value")


def _shocked(obs: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``obs + delta``; a shared ``delta`` (B, D) is broadcast to every agent."""
    return obs + (delta.unsqueeze(-2) if delta.dim() == obs.dim() - 1 else delta)


def system_objective(scenario, state: dict, obs: torch.Tensor, policy: Callable, mode: str) -> Callable:
    """``g(delta)``: the scenario's system loss when the attacked agents act on ``obs + delta``.

    ``shared``: every agent sees the shocked shared state, ``g`` is ``(B,)``. ``per_agent``: ``g_i`` is
    the system loss when agent i alone acts on its shocked observation and the others keep their
    nominal actions, ``(B, N)``, evaluated for all i in one batched call.
    """
    check_choice("mode", mode, MODES)
    if mode == "shared":
        return lambda delta: scenario.system_loss(state, policy(_shocked(obs, delta)))
    batch, n = obs.shape[:2]
    nominal = policy(obs).detach()
    eye = torch.eye(n, dtype=torch.bool, device=obs.device).view(1, n, n, 1)
    repeated = {key: value.repeat_interleave(n, dim=0) for key, value in state.items()}

    def objective(delta: torch.Tensor) -> torch.Tensor:
        attacked = policy(obs + delta)  # agent j's action depends on its own observation only
        joint = torch.where(eye, attacked.unsqueeze(1), nominal.unsqueeze(1))  # (B, i, j, A)
        return scenario.system_loss(repeated, joint.reshape(batch * n, n, -1)).view(batch, n)

    return objective


def action_objective(obs: torch.Tensor, policy: Callable, mode: str) -> Callable:
    """``g(delta) = ||pi(obs + delta) - pi(obs)||^2`` per agent (summed over agents when shared): the
    maximal-action-deviation attack of SA-PPO."""
    check_choice("mode", mode, MODES)
    nominal = policy(obs).detach()

    def objective(delta: torch.Tensor) -> torch.Tensor:
        change = ((policy(_shocked(obs, delta)) - nominal) ** 2).sum(-1)
        return change.sum(-1) if mode == "shared" else change

    return objective


def value_objective(obs: torch.Tensor, value_fn: Callable, mode: str) -> Callable:
    """``g(delta) = -V(obs + delta)`` per agent (summed over agents when shared): lowers the critic."""
    check_choice("mode", mode, MODES)

    def objective(delta: torch.Tensor) -> torch.Tensor:
        values = -value_fn(_shocked(obs, delta))
        return values.sum(-1) if mode == "shared" else values

    return objective


def spike_shock(scenario, delta_shape: tuple[int, ...], eps: float, norm: str) -> torch.Tensor:
    """The fixed "demand spike" shock: all of the budget pushed up along the scenario's spike features."""
    direction = torch.zeros(delta_shape[-1], device=scenario.device, dtype=scenario.dtype)
    for name in scenario.spike_features:
        direction[scenario.feature_names.index(name)] = 1.0
    if norm == "l2":
        direction = direction / direction.norm().clamp_min(1e-30)
    return (eps * direction).expand(delta_shape).clone()
