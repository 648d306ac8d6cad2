"""Penalties on policies, added to the PPO loss as ``reg_coef * penalty(policy, batch, generator)``.

The interface every penalty implements::

    penalty(policy, batch, generator) -> (scalar tensor, diagnostics: dict[str, float])

``policy`` is an ``agents.policy.MultiAgentActorCritic`` (or anything with ``deterministic_action(obs)``
and ``log_std``, such as ``agents.sb3.SB3Policy``): its deterministic action map is what the penalties
differentiate. ``batch`` is an ``envs.batch.Batch``: ``obs`` ``(M, N, D)``, ``actions`` ``(M, N, A)`` and
the scenario ``state`` (what ``system_loss`` needs). ``generator`` drives any randomness (random
directions, random PGA starts); the learner owns and checkpoints it, so runs resume bit for bit.

The methods live in one registry (``regularizers.registry.METHODS``); ``make_regularizer(name, scenario,
settings)`` builds the penalty of one of them:

=============  ========================================================================================
``aajr``       ||J_i(s + delta_t) u_t||^2 along the per-agent PGA trajectory of the system loss (eq. 20)
``jacobian``   the same JVPs along K random isotropic directions (Frobenius norm estimator)
``spectral``   ||J_i(s) v_i||^2 along the power-iteration top singular direction (spectral norm)
``smooth``     SA-PPO: ||pi_i(s + delta*) - pi_i(s)||^2, delta* from PGA on the action deviation
=============  ========================================================================================

Each has a hinge form ``max(0, norm - budget)^2`` when its settings' ``budget`` is set. Spectral
normalisation of the layers (``regularizers.specnorm``, method ``specnorm``) is an architecture, not a
penalty; ``adv`` and ``aajr+adv`` roll out under PGA shocks.
"""

from regularizers.registry import (METHODS, Method, Penalty, make_regularizer, register_method, regularizer_names,
                                   unregister_method)
from regularizers.settings import JacobianSettings, PGASettings, SpecNormSettings, SpectralSettings

__all__ = ["METHODS", "JacobianSettings", "Method", "PGASettings", "Penalty", "SpecNormSettings", "SpectralSettings",
           "make_regularizer", "register_method", "regularizer_names", "unregister_method"]
