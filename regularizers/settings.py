"""Typed settings of the methods (the run config's ``reg:`` section), one dataclass per kind of penalty.

Each validates its values on construction (``ValueError`` naming the field and what is allowed).
"""

from __future__ import annotations

import dataclasses

from envs.core import check_bool, check_choice, check_positive_int, check_real
from envs.shocks import NORMS, RULES


CHANNELS = ("shock", "all")  # the input features a global penalty acts on


def _check_budget(budget: float | None) -> None:
    if budget is not None:
        check_real("budget", budget, 0.0)


@dataclasses.dataclass(frozen=True)
class PGASettings:
    """Penalties along a PGA trajectory (``aajr``, ``smooth``).

    :param eps: radius of the PGA ball, in observation units.
    :param steps: K, PGA steps.
    :param norm: ball of the PGA, ``l2`` or ``linf``.
    :param budget: hinge budget gamma: penalise ``max(0, norm - gamma)^2`` (None: ``norm^2``).
    :param rule: PGA's step rule, ``normalized`` (fills the ball whatever the gradient's size) or
        ``gradient`` (eq. 11, the first round's); ``bench/training_rule.py`` measured the choice.
    :param sample_steps: ``aajr`` only: the Jacobian-vector products at one PGA step per (state, agent),
        drawn uniformly, instead of all K (an unbiased estimate of eq. 20 at 1/K of the JVPs;
        ``bench/update_cost.py`` measures the saving). ``smooth`` refuses it.
    """

    eps: float = 0.1
    steps: int = 3
    norm: str = "l2"
    budget: float | None = None
    rule: str = "normalized"
    sample_steps: bool = False

    def __post_init__(self) -> None:
        check_real("eps", self.eps, 0.0, low_open=True)
        check_positive_int("steps", self.steps)
        check_choice("norm", self.norm, NORMS)
        _check_budget(self.budget)
        check_choice("rule", self.rule, RULES)
        check_bool("sample_steps", self.sample_steps)


@dataclasses.dataclass(frozen=True)
class JacobianSettings:
    """The global Frobenius-norm penalty (``jacobian``).

    :param directions: K, random unit directions per state.
    :param budget: hinge budget gamma (None: the squared form).
    :param channels: ``shock``: the Jacobian restricted to the scenario's shock channels, the features an
        attacker moves (``J P``, the default: the same footing as AAJR); ``all``: every feature.
    """

    directions: int = 3
    budget: float | None = None
    channels: str = "shock"

    def __post_init__(self) -> None:
        check_positive_int("directions", self.directions)
        _check_budget(self.budget)
        check_choice("channels", self.channels, CHANNELS)


@dataclasses.dataclass(frozen=True)
class SpectralSettings:
    """The global spectral-norm penalty (``spectral``).

    :param power_iterations: power iterations (JVP + VJP each) per minibatch.
    :param budget: hinge budget gamma (None: the squared form).
    :param channels: ``shock`` (the default: ``||J P||_2``, the shock channels only) or ``all`` (``||J||_2``).
    """

    power_iterations: int = 5
    budget: float | None = None
    channels: str = "shock"

    def __post_init__(self) -> None:
        check_positive_int("power_iterations", self.power_iterations)
        _check_budget(self.budget)
        check_choice("channels", self.channels, CHANNELS)


@dataclasses.dataclass(frozen=True)
class SpecNormSettings:
    """Spectral normalisation of the actor's layers (``specnorm``).

    :param bound: per-layer spectral-norm bound c.
    """

    bound: float = 1.0

    def __post_init__(self) -> None:
        check_real("bound", self.bound, 0.0, low_open=True)
