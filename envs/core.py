"""The scenario protocol: a pure, batched torch simulator.

A scenario is written once, as tensors with the batch dimension first, and every adapter
(PettingZoo, Gymnasium, the learner's batched interface, the shock wrapper) uses it unchanged.

Shapes: ``B`` environments, ``N`` agents, ``D = obs_dim`` features per agent, ``A = action_dim``.

* ``state``: a ``dict[str, Tensor]``; every entry has the batch dimension first, ``state["t"]`` is the
  step counter ``(B,)`` (int64). All exogenous randomness a step needs (prices, demands, arrivals,
  capacities) is drawn into the state *before* the step, so that ``system_loss(state, actions)`` is a
  deterministic, differentiable function of the actions.
* ``reset(batch_size, generator) -> state``
* ``observe(state) -> (B, N, D)`` per-agent observations, scaled to O(1).
* ``system_loss(state, actions) -> (B,)`` the system-level cost of the joint action (differentiable
  with respect to ``actions``; it expects actions inside the action box).
* ``agent_payoffs(state, actions) -> (B, N)`` selfish per-agent payoffs; the reward each agent gets is
  ``(1 - w) * payoff_i + w * (-system_loss / N)`` with ``w`` given by ``reward_mode``
  (``selfish``: 0, ``social``: 1, ``mixed``: ``social_weight``).
* ``transition(state, actions, generator) -> state`` the next state (``t`` incremented).
* ``step(state, actions, generator) -> StepResult`` validates and clips the actions, then evaluates
  the three functions above. Every adapter goes through ``step``, so the action rule is the same
  everywhere: **non-finite actions or a wrong shape raise ``ValueError``; finite actions outside the
  box are clipped to it.**
* ``shock_mask`` ``(D,)`` bool: the observation features that are shared state a shock may move.
* ``reference_action(state, name) -> (B, N, A)``: the actions of a reference solution
  (``reference_names`` lists them), e.g. the Wardrop equilibrium or the maximum sustainable yield.
* ``references() -> dict[str, float]``: closed-form reference numbers of the configuration.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from gymnasium import spaces

State = dict[str, torch.Tensor]

REWARD_MODES = ("selfish", "social", "mixed")


class StepResult(NamedTuple):
    """What ``Scenario.step`` returns; tensors have the batch dimension first."""

    state: State  # the next state
    rewards: torch.Tensor  # (B, N) per-agent rewards
    system_loss: torch.Tensor  # (B,) system loss of the joint action in the previous state
    truncated: torch.Tensor  # (B,) bool, the horizon was reached
    info: dict[str, torch.Tensor]  # (B, ...) scenario diagnostics


# --------------------------------------------------------------------------------------------
# Validation helpers: every bad value raises ValueError naming the value and what is allowed.
# --------------------------------------------------------------------------------------------


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` if it is an int >= 1, else raise a ValueError that names it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_real(name: str, value: Any, low: float = -math.inf, high: float = math.inf,
               low_open: bool = False, high_open: bool = False) -> float:
    """Return ``value`` as float if it is a finite real in the given interval, else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if not math.isfinite(value) or below or above:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")
    return value


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``allowed``, else raise a ValueError listing them."""
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(map(repr, allowed))}")
    return value


@dataclasses.dataclass(frozen=True)
class ScenarioConfig:
    """Fields every scenario has.

    :param n_agents: number of agents N (>= 1).
    :param horizon: episode length T in steps (>= 1); episodes are truncated, never terminated.
    :param reward_mode: ``selfish`` (own payoff), ``social`` (share of the negative system loss,
        ``-system_loss / N``) or ``mixed`` (``(1 - social_weight) * selfish + social_weight * social``).
    :param social_weight: weight of the social term in ``mixed`` mode, in [0, 1].
    """

    n_agents: int = 4
    horizon: int = 100
    reward_mode: str = "social"
    social_weight: float = 0.5

    def __post_init__(self) -> None:
        check_positive_int("n_agents", self.n_agents)
        check_positive_int("horizon", self.horizon)
        check_choice("reward_mode", self.reward_mode, REWARD_MODES)
        check_real("social_weight", self.social_weight, 0.0, 1.0)

    @property
    def social_weight_effective(self) -> float:
        return {"selfish": 0.0, "social": 1.0, "mixed": self.social_weight}[self.reward_mode]


def config_from_kwargs(config_cls: type, kwargs: dict[str, Any]) -> Any:
    """Build ``config_cls(**kwargs)``, refusing unknown keys with a message that lists the allowed ones."""
    allowed = [f.name for f in dataclasses.fields(config_cls)]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown argument(s) {', '.join(map(repr, unknown))} for {config_cls.__name__}; "
            f"allowed: {', '.join(allowed)}"
        )
    return config_cls(**kwargs)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded with ``seed`` (a fresh random seed if None)."""
    generator = torch.Generator(device=torch.device(device))
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


# --------------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------------


class Scenario(abc.ABC):
    """Base class of the batched torch simulators (see the module docstring for the protocol).

    Subclasses set, in ``__init__`` after calling ``super().__init__``: ``obs_dim``, ``action_dim``,
    ``feature_names`` (length ``obs_dim``), ``shock_mask`` (bool ``(obs_dim,)``), ``obs_low`` and
    ``obs_high`` (``(obs_dim,)``, may be infinite), ``action_low`` and ``action_high`` (``(action_dim,)``).
    """

    name: ClassVar[str]
    config_cls: ClassVar[type[ScenarioConfig]]
    reference_names: ClassVar[tuple[str, ...]]
    # Names of the observation features a "demand spike" shock pushes up (used by the shock module).
    spike_features: ClassVar[tuple[str, ...]] = ()
    # Named keyword sets: "small" (tests), "default", "large" (N=16, M=64 or more).
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    obs_dim: int
    action_dim: int
    feature_names: tuple[str, ...]
    shock_mask: torch.Tensor
    obs_low: torch.Tensor
    obs_high: torch.Tensor
    action_low: torch.Tensor
    action_high: torch.Tensor

    def __init__(self, config: ScenarioConfig, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        if not isinstance(config, self.config_cls):
            raise TypeError(f"{type(self).__name__} needs a {self.config_cls.__name__}, got {type(config).__name__}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.config = config
        self.device = torch.device(device)
        self.dtype = dtype
        self.n_agents = config.n_agents
        self.horizon = config.horizon
        self._spaces: tuple[spaces.Box, spaces.Box] | None = None

    # ----- the functions each scenario writes ------------------------------------------------

    @abc.abstractmethod
    def reset(self, batch_size: int, generator: torch.Generator) -> State:
        """Initial states of ``batch_size`` environments (``t = 0``)."""

    @abc.abstractmethod
    def observe(self, state: State) -> torch.Tensor:
        """Per-agent observations ``(B, N, obs_dim)``, scaled to O(1)."""

    @abc.abstractmethod
    def system_loss(self, state: State, actions: torch.Tensor) -> torch.Tensor:
        """System-level cost ``(B,)`` of the in-box joint action ``actions`` ``(B, N, A)``; differentiable."""

    @abc.abstractmethod
    def agent_payoffs(self, state: State, actions: torch.Tensor) -> torch.Tensor:
        """Selfish payoff ``(B, N)`` of each agent for the in-box joint action ``actions``."""

    @abc.abstractmethod
    def transition(self, state: State, actions: torch.Tensor, generator: torch.Generator) -> State:
        """Next state after the in-box joint action ``actions``; ``t`` is incremented."""

    @abc.abstractmethod
    def reference_action(self, state: State, name: str) -> torch.Tensor:
        """Actions ``(B, N, A)`` of the reference solution ``name`` (one of ``reference_names``)."""

    def references(self) -> dict[str, float]:
        """Closed-form reference numbers of this configuration (documented per scenario)."""
        return {}

    def diagnostics(self, state: State, actions: torch.Tensor) -> dict[str, torch.Tensor]:
        """Scenario-specific quantities ``(B,)`` reported in ``info`` (travel time, stock, drops...)."""
        return {}

    # ----- shared machinery ------------------------------------------------------------------

    def check_actions(self, actions: Any, batch_size: int | None = None) -> torch.Tensor:
        """Validate a joint action ``(B, N, A)`` and clip it to the action box.

        Raises ValueError on a wrong shape or on NaN/inf entries; finite out-of-box entries are
        clipped (the documented rule, the same in every adapter).
        """
        actions = torch.as_tensor(actions, dtype=self.dtype, device=self.device)
        expected = (batch_size if batch_size is not None else "B", self.n_agents, self.action_dim)
        if actions.dim() != 3 or actions.shape[1:] != expected[1:] or (
                batch_size is not None and actions.shape[0] != batch_size):
            raise ValueError(
                f"{self.name}: actions must have shape {expected} (batch, agents, action_dim), "
                f"got {tuple(actions.shape)}")
        if not torch.isfinite(actions).all():
            raise ValueError(f"{self.name}: actions contain NaN or inf; actions must be finite "
                             f"(values outside [{self.action_low.min().item()}, "
                             f"{self.action_high.max().item()}] are clipped)")
        return torch.maximum(torch.minimum(actions, self.action_high), self.action_low)

    def rewards(self, state: State, actions: torch.Tensor, system_loss: torch.Tensor | None = None) -> torch.Tensor:
        """Per-agent rewards ``(B, N)``: ``(1 - w) * payoff_i + w * (-system_loss / N)``."""
        weight = self.config.social_weight_effective
        if system_loss is None:
            system_loss = self.system_loss(state, actions)
        social = (-system_loss / self.n_agents).unsqueeze(-1).expand(-1, self.n_agents)
        if weight == 1.0:
            return social
        return (1.0 - weight) * self.agent_payoffs(state, actions) + weight * social

    def step(self, state: State, actions: Any, generator: torch.Generator) -> StepResult:
        """One step of every environment; see the module docstring for the action rule."""
        batch_size = state["t"].shape[0]
        actions = self.check_actions(actions, batch_size)
        system_loss = self.system_loss(state, actions)
        rewards = self.rewards(state, actions, system_loss)
        info = self.diagnostics(state, actions)
        next_state = self.transition(state, actions, generator)
        truncated = next_state["t"] >= self.horizon
        return StepResult(next_state, rewards, system_loss, truncated, info)

    def spaces(self) -> tuple[spaces.Box, spaces.Box]:
        """Per-agent ``(observation_space, action_space)`` as float32 Boxes (the same objects every call)."""
        if self._spaces is None:
            def box(low: torch.Tensor, high: torch.Tensor) -> spaces.Box:
                return spaces.Box(low.detach().cpu().numpy().astype(np.float32),
                                  high.detach().cpu().numpy().astype(np.float32), dtype=np.float32)
            self._spaces = (box(self.obs_low, self.obs_high), box(self.action_low, self.action_high))
        return self._spaces

    def tensor(self, values: Any) -> torch.Tensor:
        """``values`` as a tensor of this scenario's dtype and device."""
        return torch.as_tensor(values, dtype=self.dtype, device=self.device)

    def check_reference_name(self, name: str) -> str:
        return check_choice(f"{self.name} reference", name, self.reference_names)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


# --------------------------------------------------------------------------------------------
# Scenario registry: adapters, the trainer and the benchmark pick scenarios up by name.
# --------------------------------------------------------------------------------------------

SCENARIOS: dict[str, type[Scenario]] = {}


def register_scenario(cls: type[Scenario]) -> type[Scenario]:
    """Class decorator adding a scenario to ``SCENARIOS`` under ``cls.name``."""
    SCENARIOS[cls.name] = cls
    return cls


def make_scenario(name: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                  **kwargs: Any) -> Scenario:
    """Build the scenario ``name`` from keyword arguments (unknown names and keys are errors)."""
    check_choice("scenario", name, tuple(sorted(SCENARIOS)))
    cls = SCENARIOS[name]
    return cls(config_from_kwargs(cls.config_cls, kwargs), device=device, dtype=dtype)
