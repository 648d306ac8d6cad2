"""The one registry of training methods: what each adds to PPO, its typed settings, its diagnostic.

A method is one ``Method`` entry: a penalty factory (``regularizers.<file>``), the dataclass of its
settings (the run config's ``reg:`` section), the metrics key of the quantity it acts on, whether it
rolls out under PGA shocks (the run config's ``shock:``), and an optional change of the policy's
architecture. Its place in reports is its place in the registry. Everything that lists methods (the
run config, ``train.py --method``, the benchmark grid and report, the stable-baselines3 bridge,
``bench/methods.py``) reads ``METHODS``; adding a method is one ``register_method`` call plus its
penalty file::

    register_method(Method("mine", penalty=make_my_penalty, settings=MySettings,
                           diagnostic="reg/my_norm_mean", description="what it penalises"))

``make_my_penalty(scenario, settings)`` returns ``penalty(policy, batch, generator) -> (scalar tensor,
diagnostics)`` (``regularizers`` module docstring).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from envs.batch import Batch
from envs.core import check_choice
from regularizers.jacobian import aajr_penalty, global_jacobian_penalty
from regularizers.settings import JacobianSettings, PGASettings, SpecNormSettings, SpectralSettings
from regularizers.smoothness import smoothness_penalty
from regularizers.specnorm import apply_spectral_norm, layer_spectral_norms
from regularizers.spectral import spectral_penalty

Penalty = Callable[[torch.nn.Module, Batch, torch.Generator], tuple[torch.Tensor, dict[str, float]]]
PenaltyFactory = Callable[[Any, Any], Penalty]  # (scenario, settings) -> penalty


@dataclasses.dataclass(frozen=True)
class Method:
    """One training method.

    :param name: what ``--method`` takes.
    :param description: one line for help texts and tables.
    :param penalty: ``factory(scenario, settings) -> penalty``, added to the PPO loss as
        ``reg_coef * penalty`` (None: no penalty, and ``reg_coef`` is refused).
    :param settings: the dataclass of the method's settings (the run config's ``reg:``), or None.
    :param diagnostic: the metrics key of the quantity the method acts on (None: none).
    :param adversarial: roll out under PGA shocks (the run config's ``shock:``): adversarial training.
    :param transform_policy: ``fn(policy, settings)`` applied in place to a freshly built policy, in
        training and when a trained policy is loaded (an architecture such as spectral normalisation).
    :param policy_diagnostics: ``fn(policy) -> {key: value}`` logged after every update.
    """

    name: str
    description: str
    penalty: PenaltyFactory | None = None
    settings: type | None = None
    diagnostic: str | None = None
    adversarial: bool = False
    transform_policy: Callable[[torch.nn.Module, Any], None] | None = None
    policy_diagnostics: Callable[[torch.nn.Module], dict[str, float]] | None = None

    def __post_init__(self) -> None:
        if not self.name or any(char.isspace() for char in self.name):
            raise ValueError(f"method name must be a non-empty word, got {self.name!r}")
        if self.settings is not None and not dataclasses.is_dataclass(self.settings):
            raise ValueError(f"method {self.name!r}: settings must be a dataclass, got {self.settings!r}")
        if (self.penalty is not None or self.transform_policy is not None) and self.settings is None:
            raise ValueError(f"method {self.name!r}: a penalty or policy transform needs a settings dataclass")

    def default_settings(self) -> Any:
        """The settings dataclass with its defaults (None for a method without settings)."""
        return None if self.settings is None else self.settings()


METHODS: dict[str, Method] = {}


def register_method(method: Method, replace: bool = False) -> Method:
    """Add ``method`` to the registry (after the others: its place in reports); returns it."""
    if method.name in METHODS and not replace:
        raise ValueError(f"method {method.name!r} is registered already (replace=True to replace it)")
    METHODS[method.name] = method
    return method


def unregister_method(name: str) -> Method:
    """Remove a method from the registry; returns its entry."""
    check_choice("method", name, tuple(METHODS))
    return METHODS.pop(name)


def regularizer_names() -> tuple[str, ...]:
    """The penalties a PPO loss can add on its own: the methods with a penalty that are not adversarial
    (what the stable-baselines3 bridge offers)."""
    return tuple(name for name, method in METHODS.items() if method.penalty is not None and not method.adversarial)


def make_regularizer(name: str, scenario, settings: Any = None) -> Penalty:
    """The penalty ``penalty(policy, batch, generator)`` of method ``name`` for a scenario (the method's
    default settings when ``settings`` is None)."""
    check_choice("regularizer", name, tuple(n for n, m in METHODS.items() if m.penalty is not None))
    method = METHODS[name]
    if settings is None:
        settings = method.default_settings()
    elif not isinstance(settings, method.settings):
        raise ValueError(f"method {name!r} takes {method.settings.__name__}, got {type(settings).__name__}")
    return method.penalty(scenario, settings)


def _aajr(scenario, s: PGASettings) -> Penalty:
    return lambda policy, batch, generator: aajr_penalty(policy, batch, scenario, s.eps, s.steps, s.norm,
                                                         budget=s.budget, rule=s.rule,
                                                         sample_steps=s.sample_steps, generator=generator)


def channel_mask(scenario, channels: str) -> torch.Tensor | None:
    """The boolean ``(D,)`` mask of a global penalty's ``channels``: the shock channels, or None (all)."""
    return scenario.shock_mask.to(torch.bool) if channels == "shock" else None


def _jacobian(scenario, s: JacobianSettings) -> Penalty:
    mask = channel_mask(scenario, s.channels)
    return lambda policy, batch, generator: global_jacobian_penalty(policy, batch, s.directions, generator,
                                                                    s.budget, mask)


def _spectral(scenario, s: SpectralSettings) -> Penalty:
    mask = channel_mask(scenario, s.channels)
    return lambda policy, batch, generator: spectral_penalty(policy, batch, s.power_iterations, generator,
                                                             s.budget, mask)


def _smooth(scenario, s: PGASettings) -> Penalty:
    if s.sample_steps:
        raise ValueError("sample_steps applies to aajr only: smooth penalises the last PGA point alone")
    return lambda policy, batch, generator: smoothness_penalty(policy, batch, scenario.shock_mask, s.eps, s.steps,
                                                               generator, s.norm, budget=s.budget, rule=s.rule)


def _spectral_norm(policy, s: SpecNormSettings) -> None:
    apply_spectral_norm(policy.actor, s.bound)


def _layer_norms(policy) -> dict[str, float]:
    training = policy.training
    policy.eval()  # reading the weights in training mode would advance the power iteration
    try:
        return {"reg/layer_spectral_norm_max": float(layer_spectral_norms(policy.actor).max())}
    finally:
        policy.train(training)


for _method in (
    Method("ppo", "plain PPO"),
    Method("aajr", "AAJR: ||J_i u_t||^2 along the per-agent PGA trajectory of the system loss (eq. 20)",
           penalty=_aajr, settings=PGASettings, diagnostic="reg/jvp_norm_mean"),
    Method("jacobian", "global Jacobian: ||J_i u||^2 along random unit directions of the shock channels "
                       "(Frobenius estimator)",
           penalty=_jacobian, settings=JacobianSettings, diagnostic="reg/jvp_norm_mean"),
    Method("spectral", "global spectral norm: ||J_i v_i||^2 along the power-iteration top direction of the "
                       "shock channels",
           penalty=_spectral, settings=SpectralSettings, diagnostic="reg/spectral_norm_mean"),
    Method("specnorm", "spectral normalisation of the actor's layers (architectural Lipschitz bound)",
           settings=SpecNormSettings, diagnostic="reg/layer_spectral_norm_max", transform_policy=_spectral_norm,
           policy_diagnostics=_layer_norms),
    Method("smooth", "SA-PPO smoothness: ||pi_i(s + delta*) - pi_i(s)||^2 / eps^2, delta* by PGA",
           penalty=_smooth, settings=PGASettings, diagnostic="reg/action_change_mean"),
    Method("adv", "PGD adversarial training: rollouts under PGA shocks, no penalty",
           diagnostic="shock/norm", adversarial=True),
    Method("aajr+adv", "AAJR on rollouts under PGA shocks (the regularized robust objective, eq. 21)",
           penalty=_aajr, settings=PGASettings, diagnostic="reg/jvp_norm_mean", adversarial=True),
):
    register_method(_method)
