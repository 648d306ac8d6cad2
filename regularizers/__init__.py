"""Penalties on policies, added to the PPO loss as ``reg_coef * penalty(policy, batch)``.

The interface every regularizer implements::

    penalty(policy, batch) -> (scalar tensor, diagnostics: dict[str, float])

``policy`` is an ``agents.policy.MultiAgentActorCritic`` (its ``deterministic_action(obs)`` is the
action map a Jacobian penalty differentiates); ``batch`` is a PPO minibatch: ``obs`` ``(M, N, D)``,
the environment actions ``actions`` ``(M, N, A)`` (the other agents' actions) and the scenario state
under ``state/<key>`` (what ``system_loss`` needs). ``REGULARIZERS`` maps method names to factories.
"""

from typing import Callable

import torch

Penalty = Callable[[torch.nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]

REGULARIZERS: dict[str, Callable[..., Penalty]] = {}
