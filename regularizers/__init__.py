"""Penalties on policies, added to the PPO loss as ``reg_coef * penalty(policy, batch, generator)``.

The interface every regularizer implements::

    penalty(policy, batch, generator) -> (scalar tensor, diagnostics: dict[str, float])

``policy`` is an ``agents.policy.MultiAgentActorCritic``: its ``deterministic_action(obs)`` (stacked
per-agent parameters, one batched call) is the action map the penalties differentiate. ``batch`` is
a PPO minibatch: ``obs`` ``(M, N, D)``, the environment actions ``actions`` ``(M, N, A)`` (the other
agents' actions) and the scenario state under ``state/<key>`` (what ``system_loss`` needs).
``generator`` drives any randomness (random directions, random PGA starts); the learner owns and
checkpoints it, so runs resume bit for bit.

``make_regularizer(name, scenario, settings)`` builds one of ``REGULARIZERS``:

=============  ========================================================================================
``aajr``       ||J_i(s + delta_t) u_t||^2 along the per-agent PGA trajectory of the system loss (eq. 20)
``jacobian``   the same JVPs along K random isotropic directions (Frobenius norm estimator)
``spectral``   ||J_i(s) v_i||^2 along the power-iteration top singular direction (spectral norm)
``smooth``     SA-PPO: ||pi_i(s + delta*) - pi_i(s)||^2, delta* from PGA on the action deviation
=============  ========================================================================================

Each has a hinge form ``max(0, norm - budget)^2`` when ``settings.budget`` is set. Spectral
normalisation of the layers (``regularizers.specnorm``) is an architecture, not a penalty.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from envs.core import check_choice, check_positive_int, check_real
from envs.shocks import NORMS
from regularizers.jacobian import aajr_penalty, global_jacobian_penalty
from regularizers.smoothness import smoothness_penalty
from regularizers.spectral import spectral_penalty

Penalty = Callable[[torch.nn.Module, dict[str, torch.Tensor], torch.Generator],
                   tuple[torch.Tensor, dict[str, float]]]


@dataclasses.dataclass(frozen=True)
class RegularizerSettings:
    """Shared settings of the penalties.

    :param eps: radius of the PGA ball (``aajr``, ``smooth``), in observation units.
    :param steps: K: PGA steps (``aajr``, ``smooth``) or random directions per state (``jacobian``).
    :param norm: ball of the PGA, ``l2`` or ``linf``.
    :param budget: hinge budget gamma (None: the squared form).
    :param power_iterations: power iterations of ``spectral``.
    """

    eps: float = 0.1
    steps: int = 3
    norm: str = "l2"
    budget: float | None = None
    power_iterations: int = 5

    def __post_init__(self) -> None:
        check_real("eps", self.eps, 0.0, low_open=True)
        check_positive_int("steps", self.steps)
        check_choice("norm", self.norm, NORMS)
        if self.budget is not None:
            check_real("budget", self.budget, 0.0)
        check_positive_int("power_iterations", self.power_iterations)


def _aajr(scenario, s: RegularizerSettings) -> Penalty:
    return lambda policy, batch, generator: aajr_penalty(policy, batch, scenario, s.eps, s.steps, s.norm,
                                                         budget=s.budget)


def _jacobian(scenario, s: RegularizerSettings) -> Penalty:
    return lambda policy, batch, generator: global_jacobian_penalty(policy, batch, s.steps, generator, s.budget)


def _spectral(scenario, s: RegularizerSettings) -> Penalty:
    return lambda policy, batch, generator: spectral_penalty(policy, batch, s.power_iterations, generator,
                                                             s.budget)


def _smooth(scenario, s: RegularizerSettings) -> Penalty:
    return lambda policy, batch, generator: smoothness_penalty(policy, batch, scenario.shock_mask, s.eps, s.steps,
                                                               generator, s.norm, budget=s.budget)


REGULARIZERS: dict[str, Callable[..., Penalty]] = {
    "aajr": _aajr, "jacobian": _jacobian, "spectral": _spectral, "smooth": _smooth}


def make_regularizer(name: str, scenario, settings: RegularizerSettings | None = None) -> Penalty:
    """The penalty ``penalty(policy, batch, generator)`` named ``name`` for a scenario."""
    check_choice("regularizer", name, tuple(REGULARIZERS))
    return REGULARIZERS[name](scenario, settings or RegularizerSettings())
