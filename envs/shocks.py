"""Projected gradient ascent (PGA) on an eps-ball of observation perturbations, implemented once.

The shock wrapper (attacks at rollout and evaluation time) and the regularizers (training
directions) both call ``pga``. Given a differentiable objective ``g(delta)`` with one value per
perturbation (``delta`` of shape ``(*batch, D)``, ``g`` of shape ``batch``; samples independent), it
runs K steps of

    u_t = grad g(delta_t) / (||grad g(delta_t)||_2 + eps0)                                        (12)
    delta_{t+1} = Proj_Delta(delta_t + eta * step_t)

with gradients and iterates restricted to the shock channels (``mask``), ``Delta = {||delta||_p <= eps,
delta = 0 outside the mask}``, and returns the whole trajectory: the iterates ``delta_0..delta_K``, the
directions ``u_0..u_{K-1}`` and ``g`` at every iterate. Zero gradients give ``u = 0`` and no step.
Shared shocks use ``delta`` ``(B, D)`` broadcast to every agent by the objective; per-agent shocks use
``(B, N, D)``. Two step rules (``RULES``):

* ``gradient``: ``step_t = grad g`` on the l2 ball (eq. 11 as written), ``sign(grad g)`` on linf. How
  far it moves depends on the size of the gradient: against a policy with small input gradients it
  barely leaves 0, so as an *attack* it flatters regularised policies (gradient masking).
* ``normalized``: ``step_t = u_t`` on l2, ``sign(grad g)`` on linf: steepest ascent with steps of
  fixed length, which fills the ball in about ``eps / eta`` steps whatever the gradient's size
  (Madry et al.'s PGD).

``pgd_attack`` is the evaluation attack on top of ``pga``: the best iterate of every sample over the
zero start and ``restarts`` random starts (``batched_pgd_attack``: the same, its runs in one batch). ``random_search`` is the gradient-free check: candidates
on the boundary of the ball plus a PGD result, the best kept.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from envs.core import check_choice, check_positive_int, check_real, rand, randn

NORMS = ("l2", "linf")
RULES = ("gradient", "normalized")


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
        sample = eps * (2 * rand(shape, generator, device=device, dtype=dtype) - 1)
        return sample * mask if mask is not None else sample
    gaussian = randn(shape, generator, device=device, dtype=dtype)
    if mask is not None:
        gaussian = gaussian * mask
    dim = int(mask.sum()) if mask is not None else shape[-1]
    radius = eps * rand((*shape[:-1], 1), generator, device=device, dtype=dtype) ** (1.0 / max(dim, 1))
    return gaussian / gaussian.norm(dim=-1, keepdim=True).clamp_min(1e-30) * radius


def pga(objective: Callable[[torch.Tensor], torch.Tensor], delta_shape: tuple[int, ...], eps: float,
        norm: str = "l2", steps: int = 5, step_size: float | None = None, mask: torch.Tensor | None = None,
        random_start: bool = False, generator: torch.Generator | None = None, device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32, eps0: float = 1e-12, rule: str = "gradient",
        start: torch.Tensor | None = None) -> PGATrajectory:
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
    :param rule: ``gradient`` or ``normalized`` (module docstring); the directions ``u_t`` are eq. 12
        under either.
    :param start: the starting point ``delta_0`` ``(*batch, D)`` (in the ball), instead of 0 or a random one.

    The objective's parameters receive no gradient from PGA; the returned tensors are detached.
    """
    check_real("eps", eps, 0.0, low_open=True)
    check_choice("norm", norm, NORMS)
    steps = check_positive_int("steps", steps)
    check_choice("rule", rule, RULES)
    step_size = 2.5 * eps / steps if step_size is None else check_real("step_size", step_size, 0.0, low_open=True)
    mask_values = None if mask is None else mask.to(device=device, dtype=dtype)
    if start is not None:
        delta = project(start.detach().to(device=device, dtype=dtype), eps, norm, mask_values)
    elif random_start:
        if generator is None:
            raise ValueError("random_start=True needs a torch.Generator for reproducibility")
        delta = random_in_ball(delta_shape, eps, norm, mask_values, generator, device, dtype)
    else:
        delta = torch.zeros(delta_shape, device=device, dtype=dtype)
    deltas, directions, values = [delta], [], []
    for _ in range(steps + 1):
        last = len(directions) == steps  # the last iterate needs its value only, not a gradient
        with torch.set_grad_enabled(not last):
            point = delta.detach().requires_grad_(not last)
            value = objective(point)
            if value.shape != delta_shape[:-1]:
                raise ValueError(f"objective must return one value per perturbation, shape {delta_shape[:-1]}, "
                                 f"got {tuple(value.shape)}")
            grad = (torch.autograd.grad(value.sum(), point, allow_unused=True)[0]
                    if value.requires_grad else None)  # an objective that ignores delta
        values.append(value.detach())
        if last:
            break
        grad = torch.zeros_like(delta) if grad is None else grad.detach()
        if mask_values is not None:
            grad = grad * mask_values
        directions.append(grad / (grad.norm(dim=-1, keepdim=True) + eps0))
        ascent = grad.sign() if norm == "linf" else grad if rule == "gradient" else directions[-1]
        delta = project(delta + step_size * ascent, eps, norm, mask_values)
        deltas.append(delta)
    return PGATrajectory(torch.stack(deltas), torch.stack(directions), torch.stack(values))


def best_iterate(trajectory: PGATrajectory) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's best iterate ``(*batch, D)`` and its objective value ``(*batch)`` along a trajectory."""
    best = trajectory.values.argmax(0)
    delta = torch.gather(trajectory.deltas, 0, best.unsqueeze(0).unsqueeze(-1).expand(
        1, *trajectory.deltas.shape[1:]))[0]
    return delta, trajectory.values.amax(0)


def budget_use(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """``||delta||_p / eps`` over the last dimension: 1 on the boundary of the ball."""
    size = delta.abs().amax(-1) if norm == "linf" else delta.norm(dim=-1)
    return size / eps


class Attack(NamedTuple):
    """An attack's shock and objective values; ``batch`` is ``delta.shape[:-1]``."""

    delta: torch.Tensor  # (*batch, D)
    value: torch.Tensor  # (*batch) g(delta)
    clean_value: torch.Tensor  # (*batch) g(0)


def check_runs(restarts: int, zero_start: bool, generator: torch.Generator | None) -> None:
    """PGD's runs: ``restarts`` an integer >= 0, at least one run, a generator for the random starts."""
    if restarts < 0 or isinstance(restarts, bool) or not isinstance(restarts, int):
        raise ValueError(f"restarts must be an integer >= 0, got {restarts!r}")
    if not zero_start and restarts == 0:
        raise ValueError("pgd_attack needs the zero start or at least one random restart")
    if restarts and generator is None:
        raise ValueError("random restarts need a torch.Generator for reproducibility")


def pgd_attack(objective: Callable[[torch.Tensor], torch.Tensor], delta_shape: tuple[int, ...], eps: float,
               norm: str = "l2", steps: int = 20, step_size: float | None = None, mask: torch.Tensor | None = None,
               rule: str = "normalized", restarts: int = 2, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
               zero_start: bool = True) -> Attack:
    """PGD as an attack: ``pga`` from 0 (``zero_start``) and from ``restarts`` uniform random points of
    the ball, keeping each sample's best iterate over every run (never worse than the last iterate, and
    restarts never worse than none: the zero-start run is always among the candidates when it is made).
    """
    check_runs(restarts, zero_start, generator)
    options = {"mask": mask, "rule": rule, "device": device, "dtype": dtype}
    best_delta, best_value, clean = None, None, None
    for run in range(int(zero_start) + restarts):
        random_start = run > 0 or not zero_start
        trajectory = pga(objective, delta_shape, eps, norm, steps, step_size, random_start=random_start,
                         generator=generator, **options)
        delta, value = best_iterate(trajectory)
        if clean is None and not random_start:
            clean = trajectory.values[0]
        if best_value is None:
            best_delta, best_value = delta, value
        else:
            better = value > best_value
            best_delta = torch.where(better.unsqueeze(-1), delta, best_delta)
            best_value = torch.maximum(value, best_value)
    if clean is None:
        with torch.no_grad():
            clean = objective(torch.zeros(delta_shape, device=device, dtype=dtype)).detach()
    return Attack(best_delta, best_value, clean)


def repeat_batch(tensor: torch.Tensor, copies: int) -> torch.Tensor:
    """``copies`` environment-major copies of a batch along dim 0: copy r of sample b at row ``b * copies + r``."""
    return tensor if copies == 1 else tensor.repeat_interleave(copies, dim=0)


def batched_pgd_attack(objective_of: Callable[[int], Callable[[torch.Tensor], torch.Tensor]],
                       delta_shape: tuple[int, ...], eps: float, norm: str = "l2", steps: int = 20,
                       step_size: float | None = None, mask: torch.Tensor | None = None, rule: str = "normalized",
                       restarts: int = 2, generator: torch.Generator | None = None,
                       device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                       zero_start: bool = True) -> Attack:
    """``pgd_attack`` with all its runs in one batch: one objective pass per PGA step instead of one per run
    and step (on small batches a pass costs little more for three times the rows).

    ``objective_of(copies)`` is the objective over ``copies`` environment-major copies of every sample
    (``repeat_batch``: ``delta`` of shape ``(B * copies, *delta_shape[1:])``), each copy the same function
    of its own delta as ``objective_of(1)``. The random starts are drawn in ``pgd_attack``'s order from
    the same generator and ties go to the earliest run, so the result is ``pgd_attack(objective_of(1),
    ...)``'s up to the float rounding of a larger batch (tested)."""
    check_runs(restarts, zero_start, generator)
    runs = int(zero_start) + restarts
    if runs == 1:
        return pgd_attack(objective_of(1), delta_shape, eps, norm, steps, step_size, mask, rule, restarts, generator,
                          device, dtype, zero_start)
    mask_values = None if mask is None else mask.to(device=device, dtype=dtype)
    starts = [torch.zeros(delta_shape, device=device, dtype=dtype)] if zero_start else []
    starts += [random_in_ball(delta_shape, eps, norm, mask_values, generator, device, dtype) for _ in range(restarts)]
    batch, rest = delta_shape[0], tuple(delta_shape[1:])
    start = torch.stack(starts, dim=1).reshape(batch * runs, *rest)
    trajectory = pga(objective_of(runs), (batch * runs, *rest), eps, norm, steps, step_size, mask, rule=rule,
                     device=device, dtype=dtype, start=start)
    delta, value = best_iterate(trajectory)
    delta, value = delta.view(batch, runs, *rest), value.view(batch, runs, *value.shape[1:])
    # the first of equal maxima: the earliest run, as in pgd_attack; a NaN value never wins (argmax would
    # take it; pgd_attack keeps a NaN first run, the only case where the two differ)
    best = value.nan_to_num(nan=-torch.inf).argmax(1, keepdim=True)
    best_value = value.gather(1, best).squeeze(1)
    best_delta = delta.gather(1, best.unsqueeze(-1).expand(-1, -1, *delta.shape[2:])).squeeze(1)
    if zero_start:
        clean = trajectory.values[0].view(batch, runs, *value.shape[2:])[:, 0]
    else:
        with torch.no_grad():
            clean = objective_of(1)(torch.zeros(delta_shape, device=device, dtype=dtype)).detach()
    return Attack(best_delta, best_value, clean)


def on_boundary(shape: tuple[int, ...], eps: float, norm: str, mask: torch.Tensor | None, generator: torch.Generator,
                device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """Random points on the boundary of the (masked) eps-ball, ``shape = (*batch, D)``: uniform on the l2
    sphere of the mask's subspace, or random vertices ``+-eps`` of the linf cube."""
    if norm == "linf":
        signs = torch.randint(0, 2, shape, generator=generator, device=device).to(dtype) * 2 - 1
        return eps * (signs * mask if mask is not None else signs)
    gaussian = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    if mask is not None:
        gaussian = gaussian * mask
    return eps * gaussian / gaussian.norm(dim=-1, keepdim=True).clamp_min(1e-30)


def random_search(objective: Callable[[torch.Tensor], torch.Tensor], start: Attack, eps: float, norm: str,
                  candidates: int, mask: torch.Tensor | None, generator: torch.Generator,
                  objective_of: Callable[[int], Callable[[torch.Tensor], torch.Tensor]] | None = None
                  ) -> tuple[Attack, torch.Tensor]:
    """The gradient-free attack: ``candidates`` random points on the boundary of the ball per sample and
    the PGD result ``start``; keeps each sample's best (never worse than ``start``). Also returns where a
    random candidate won ``(*batch)`` bool: where PGD's own result was beaten (a gradient-masking sign).

    ``objective_of``: the objective over copies of the batch (``batched_pgd_attack``); when given, every
    candidate is evaluated in one batched pass (the same candidates, the same result up to float rounding)."""
    candidates = check_positive_int("candidates", candidates)
    shape = tuple(start.delta.shape)
    draw = [on_boundary(shape, eps, norm, None if mask is None else mask.to(start.delta), generator,
                        start.delta.device, start.delta.dtype) for _ in range(candidates)]
    with torch.no_grad():
        if objective_of is None:
            values = [objective(delta) for delta in draw]
        else:
            copied = objective_of(candidates)(torch.stack(draw, dim=1).reshape(shape[0] * candidates, *shape[1:]))
            values = list(copied.view(shape[0], candidates, *copied.shape[1:]).unbind(1))
    best_delta, best_value = start.delta, start.value
    for delta, value in zip(draw, values):
        better = value > best_value
        best_delta = torch.where(better.unsqueeze(-1), delta, best_delta)
        best_value = torch.maximum(value, best_value)
    return Attack(best_delta, best_value, start.clean_value), best_value > start.value


# --------------------------------------------------------------------------------------------
# Attack objectives g(delta): what the attacker maximises. ``policy`` maps observations
# (B, N, D) to deterministic actions (B, N, A); shared shocks have delta (B, D), per-agent (B, N, D).
# --------------------------------------------------------------------------------------------

MODES = ("shared", "per_agent")
OBJECTIVES = ("system", "action", "value")


def shocked(obs: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``obs + delta``; a shared ``delta`` (B, D) is broadcast to every agent."""
    return obs + (delta.unsqueeze(-2) if delta.dim() == obs.dim() - 1 else delta)


def system_objective(scenario, state: dict, obs: torch.Tensor, policy: Callable, mode: str) -> Callable:
    """``g(delta)``: the scenario's system loss when the attacked agents act on ``obs + delta``.

    ``shared``: every agent sees the shocked shared state, ``g`` is ``(B,)``. ``per_agent``: ``g_i`` is
    the system loss when agent i alone acts on its shocked observation and the others keep their
    nominal actions, ``(B, N)``, for all i at once (``Scenario.unilateral_system_loss``; the nominal
    actions are computed once, outside the objective).
    """
    check_choice("mode", mode, MODES)
    if mode == "shared":
        return lambda delta: scenario.system_loss(state, policy(shocked(obs, delta)))
    with torch.no_grad():
        nominal = policy(obs)

    def objective(delta: torch.Tensor) -> torch.Tensor:
        # agent i's attacked action depends on its own shocked observation only
        return scenario.unilateral_system_loss(state, nominal, policy(obs + delta))

    return objective


def action_objective(obs: torch.Tensor, policy: Callable, mode: str,
                     nominal: torch.Tensor | None = None) -> Callable:
    """``g(delta) = ||pi(obs + delta) - pi(obs)||^2`` per agent (summed over agents when shared): the
    maximal-action-deviation attack of SA-PPO. ``nominal``: ``pi(obs)`` when the caller has it already."""
    check_choice("mode", mode, MODES)
    if nominal is None:
        with torch.no_grad():
            nominal = policy(obs)
    nominal = nominal.detach()

    def objective(delta: torch.Tensor) -> torch.Tensor:
        change = ((policy(shocked(obs, delta)) - nominal) ** 2).sum(-1)
        return change.sum(-1) if mode == "shared" else change

    return objective


def value_objective(obs: torch.Tensor, value_fn: Callable, mode: str) -> Callable:
    """``g(delta) = -V(obs + delta)`` per agent (summed over agents when shared): lowers the critic."""
    check_choice("mode", mode, MODES)

    def objective(delta: torch.Tensor) -> torch.Tensor:
        values = -value_fn(shocked(obs, delta))
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
