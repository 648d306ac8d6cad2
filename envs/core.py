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
* ``unilateral_system_loss(state, nominal_actions, attacked_actions) -> (B, N)``: entry i is the
  system loss when agent i alone plays its attacked action and the others their nominal ones (the
  per-agent attack objective, ``envs.shocks.system_objective``). The default evaluates ``system_loss``
  on N copies of the state; scenarios override it with the same values from the aggregates their loss
  depends on (no copy of the state per agent).
* ``agent_payoffs(state, actions) -> (B, N)`` selfish per-agent payoffs; the reward each agent gets is
  ``(1 - w) * payoff_i + w * (-system_loss / N)`` with ``w`` given by ``reward_mode``
  (``selfish``: 0, ``social``: 1, ``mixed``: ``social_weight``).
* ``transition(state, actions, generator) -> state`` the next state (``t`` incremented).
* ``step(state, actions, generator) -> StepResult`` validates and clips the actions, then evaluates
  the three functions above (through ``evaluate_step``, which a scenario may override to share work
  between them, with the same results). Every adapter goes through ``step``, so the action rule is the same
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
import reprlib
import warnings
from collections.abc import Mapping
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
# Validation helpers: every bad value raises a one-line ValueError naming the value and what is
# allowed (unknown keyword arguments at the Gymnasium entry points raise TypeError, Gymnasium's
# convention).
# --------------------------------------------------------------------------------------------

INT64_LIMIT = 2 ** 63  # seeds, counts and step numbers are stored as int64


def short_repr(value: Any) -> str:
    """A repr of ``value`` bounded in length (an error message stays one short line)."""
    return reprlib.repr(value)


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` if it is an int in [1, 2**63), else raise a ValueError that names it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {short_repr(value)}")
    if value >= INT64_LIMIT:
        raise ValueError(f"{name} must be a positive integer below 2**63, got {value!r}")
    return int(value)


def check_seed(name: str, value: Any) -> int | None:
    """Return ``value`` if it is None or an integer in [0, 2**63) (a plain or numpy int, not a bool),
    else raise a ValueError that names it."""
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
            or not 0 <= int(value) < INT64_LIMIT):
        raise ValueError(f"{name} must be None or an integer in [0, 2**63), got {short_repr(value)}")
    return int(value)


def derived_seed(seed: int, offset: int) -> int:
    """``seed + offset`` wrapped into [0, 2**63): the seed of a second stream derived from ``seed``."""
    return (seed + offset) % INT64_LIMIT


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool (or a numpy bool), else raise a ValueError that names it."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {short_repr(value)}")
    return bool(value)


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
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"unknown {name} {short_repr(value)}; allowed: {', '.join(map(repr, allowed))}")
    return value


def check_device(value: Any) -> torch.device:
    """``value`` (a ``torch.device`` or a string such as ``"cpu"``, ``"cuda:0"``) as a device this
    machine has, else a ValueError that names it."""
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', got {short_repr(value)}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} is not available here (torch.cuda.is_available() is False); "
                         f"use 'cpu'")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r} is not available here (torch.backends.mps.is_available() is "
                         f"False); use 'cpu'")
    return device


def check_options(options: Any, allowed: tuple[str, ...] = (), warn_unknown: bool = False) -> dict[str, Any]:
    """``reset``'s ``options`` as a dict: None or a dict whose keys are in ``allowed``.

    Anything else raises a ValueError that names it; with ``warn_unknown`` unknown keys give a
    ``UserWarning`` instead (PettingZoo's own API test passes ``options={"options": 1}``).
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ValueError(f"options must be None or a dict, got {short_repr(options)}")
    unknown = sorted(repr(key) for key in options if key not in allowed)
    if unknown:
        message = (f"unknown reset option(s) {', '.join(unknown)}; allowed: "
                   f"{', '.join(map(repr, allowed)) if allowed else 'none (pass None or {})'}")
        if not warn_unknown:
            raise ValueError(message)
        warnings.warn(message + "; they are ignored", UserWarning, stacklevel=3)
    return dict(options)


def check_keywords(owner: str, kwargs: dict[str, Any], allowed: tuple[str, ...]) -> None:
    """Raise a TypeError naming the keyword arguments of ``kwargs`` that are not in ``allowed`` and
    listing the allowed ones, worded as Python words it (``got an unexpected keyword argument 'x'``,
    which Gymnasium's clients such as TorchRL's ``GymEnv`` look for)."""
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        what = (f"an unexpected keyword argument {unknown[0]!r}" if len(unknown) == 1
                else f"unexpected keyword arguments {', '.join(map(repr, unknown))}")
        raise TypeError(f"{owner} got {what}; allowed: {', '.join(allowed)}")


def as_real_tensor(name: str, values: Any, device: torch.device | str = "cpu") -> torch.Tensor:
    """``values`` (a tensor, an array or nested sequences of real numbers) as a tensor on ``device``.

    Floating values keep their dtype (no cast that could turn a finite 1e300 into inf before it is
    checked); integers become float64; booleans, complex numbers, strings and ragged or non-numeric
    sequences raise a ValueError that names ``name``.
    """
    if torch.is_tensor(values):
        if values.dtype == torch.bool or values.is_complex():
            raise ValueError(f"{name} must be real numbers, got a tensor of {values.dtype}")
        return values.to(device) if values.is_floating_point() else values.to(device, torch.float64)
    try:
        array = np.asarray(values)
        if array.dtype.kind == "O":
            if any(item is None for item in array.flat):  # numpy would read None as NaN
                raise TypeError("None is not a number")
            array = array.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an array of real numbers, got {short_repr(values)}") from None
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be real numbers, got {short_repr(values)} (dtype {array.dtype})")
    if array.dtype.kind in "iu":
        array = array.astype(np.float64)
    elif array.dtype.itemsize > 8:  # long double: clip finite values to the float64 range first
        limit = np.finfo(np.float64).max
        array = np.where(np.isfinite(array), np.clip(array, -limit, limit), array).astype(np.float64)
    return torch.as_tensor(array, device=device)


def repeat_for_agents(features: torch.Tensor, n_agents: int) -> torch.Tensor:
    """``features`` ``(B, F)`` repeated for every agent, ``(B, N, F)``, as a contiguous tensor: ``torch.cat``
    of observation parts takes a slow path when one of them is a stride-0 ``expand`` view (about 1.5x
    slower on a CPU at B = 4096, N = 8)."""
    return features.unsqueeze(1).expand(-1, n_agents, -1).contiguous()


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
        real_fields = [f.name for f in dataclasses.fields(self) if str(f.type).startswith("float")]
        for name in real_fields:  # an int given for a real argument (2**70) is used as a float in torch
            value = getattr(self, name)
            if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))
        check_positive_int("n_agents", self.n_agents)
        check_positive_int("horizon", self.horizon)
        check_choice("reward_mode", self.reward_mode, REWARD_MODES)
        check_real("social_weight", self.social_weight, 0.0, 1.0)

    @property
    def social_weight_effective(self) -> float:
        return {"selfish": 0.0, "social": 1.0, "mixed": self.social_weight}[self.reward_mode]


def config_fields(config_cls: type) -> tuple[str, ...]:
    """The field names of the config dataclass ``config_cls``, in order."""
    return tuple(f.name for f in dataclasses.fields(config_cls))


def config_from_kwargs(config_cls: type, kwargs: dict[str, Any]) -> Any:
    """Build ``config_cls(**kwargs)``, refusing unknown keys with a message that lists the allowed ones."""
    allowed = config_fields(config_cls)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown argument(s) {', '.join(map(repr, unknown))} for {config_cls.__name__}; "
            f"allowed: {', '.join(allowed)}"
        )
    return config_cls(**kwargs)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded with ``seed`` (an integer in [0, 2**63); a fresh random
    seed if None)."""
    seed = check_seed("seed", seed)
    generator = torch.Generator(device=torch.device(device))
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


class MemberGenerators:
    """The generators of P independent runs batched together (``agents.population``): member p owns the
    p-th of P equal blocks of rows along a draw's row dimension and draws them with its own generator,
    so each member sees the numbers its single run would. ``rand``, ``randn`` and ``randint`` below take
    one in place of a ``torch.Generator``.

    :param generators: one ``torch.Generator`` per member, all on one device.
    """

    def __init__(self, generators: list[torch.Generator]) -> None:
        if not generators:
            raise ValueError("MemberGenerators needs at least one generator")
        self.generators = list(generators)
        self.device = generators[0].device

    def __len__(self) -> int:
        return len(self.generators)

    def get_state(self) -> list[torch.Tensor]:
        return [generator.get_state() for generator in self.generators]

    def set_state(self, states: list[torch.Tensor]) -> None:
        for generator, state in zip(self.generators, states, strict=True):
            generator.set_state(state)


def members(generator: "torch.Generator | MemberGenerators | None") -> int:
    """P, the number of runs whose rows a batch holds: ``len(generator)`` for ``MemberGenerators``, else 1."""
    return len(generator) if isinstance(generator, MemberGenerators) else 1


def _draw(sample, shape: tuple[int, ...], generator, row_dim: int, **options) -> torch.Tensor:
    """``sample(shape, generator=generator, **options)``; with ``MemberGenerators``, member p draws its
    block of ``shape[row_dim]`` with its own generator and the blocks are concatenated."""
    if not isinstance(generator, MemberGenerators):
        return sample(tuple(shape), generator=generator, **options)
    shape = list(shape)
    count = len(generator)
    if shape[row_dim] % count:
        raise ValueError(f"{shape[row_dim]} rows do not split into {count} equal member blocks")
    shape[row_dim] //= count
    return torch.cat([sample(tuple(shape), generator=g, **options) for g in generator.generators], dim=row_dim)


def rand(shape: tuple[int, ...], generator, row_dim: int = 0, **options) -> torch.Tensor:
    """``torch.rand`` with a ``torch.Generator`` or ``MemberGenerators`` (rows along ``row_dim``)."""
    return _draw(torch.rand, shape, generator, row_dim, **options)


def randn(shape: tuple[int, ...], generator, row_dim: int = 0, **options) -> torch.Tensor:
    """``torch.randn`` with a ``torch.Generator`` or ``MemberGenerators`` (rows along ``row_dim``)."""
    return _draw(torch.randn, shape, generator, row_dim, **options)


def randint(high: int, shape: tuple[int, ...], generator, row_dim: int = 0, **options) -> torch.Tensor:
    """``torch.randint(high, shape)`` with a ``torch.Generator`` or ``MemberGenerators``."""
    return _draw(lambda size, **kw: torch.randint(high, size, **kw), shape, generator, row_dim, **options)


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
    # The ratio to the scenario's target reference (``agents.evaluate.TARGET_REFERENCE``, else the first
    # reference) a trained policy should reach on the default config: ("<=", bound) for a cost ratio,
    # (">=", bound) for a welfare ratio (the README's learning-quality check).
    learning_target: ClassVar[tuple[str, float]]
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
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {short_repr(dtype)}")
        self.config = config
        self.device = check_device(device)
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
        """Validate a joint action ``(B, N, A)`` and clip it to the action box; returns it in this
        scenario's dtype and device.

        Raises ValueError on a wrong shape, on non-numbers or on NaN/inf entries; finite out-of-box
        entries (even 1e300) are clipped (the documented rule, the same in every adapter). Finiteness
        is checked and the clip applied in the dtype the actions come in, before the cast.
        """
        if not (torch.is_tensor(actions) and actions.dtype == self.dtype):
            actions = as_real_tensor(f"{self.name}: actions", actions, self.device)
        expected = (batch_size if batch_size is not None else "B", self.n_agents, self.action_dim)
        if actions.dim() != 3 or actions.shape[1:] != expected[1:] or (
                batch_size is not None and actions.shape[0] != batch_size):
            raise ValueError(
                f"{self.name}: actions must have shape {expected} (batch, agents, action_dim), "
                f"got {tuple(actions.shape)}")
        actions = actions.to(self.device)
        # NaN propagates through min and max, so the two extremes are finite iff every entry is: one
        # reduction instead of an elementwise mask (the mask is built only to name a bad entry)
        if actions.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(actions))).all()):
            bad = ~torch.isfinite(actions)
            index = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(f"{self.name}: actions contain NaN or inf ({actions[index].item()} at index {index}); "
                             f"actions must be finite (finite values outside [{self.action_low.min().item()}, "
                             f"{self.action_high.max().item()}] are clipped)")
        low, high = self.action_low.to(actions.dtype), self.action_high.to(actions.dtype)
        return torch.maximum(torch.minimum(actions, high), low).to(self.dtype)

    def rewards(self, state: State, actions: torch.Tensor, system_loss: torch.Tensor | None = None,
                payoffs: torch.Tensor | None = None) -> torch.Tensor:
        """Per-agent rewards ``(B, N)``: ``(1 - w) * payoff_i + w * (-system_loss / N)``.

        ``system_loss`` ``(B,)`` and ``payoffs`` ``(B, N)``, when given, are those of ``(state, actions)``
        already computed (they are then not evaluated again).
        """
        weight = self.config.social_weight_effective
        if system_loss is None:
            system_loss = self.system_loss(state, actions)
        social = (-system_loss / self.n_agents).unsqueeze(-1).expand(-1, self.n_agents)
        if weight == 1.0:
            return social
        if payoffs is None:
            payoffs = self.agent_payoffs(state, actions)
        return (1.0 - weight) * payoffs + weight * social

    def evaluate_step(self, state: State, actions: torch.Tensor, generator: torch.Generator
                      ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], State]:
        """``(system_loss, rewards, info, next_state)`` of the in-box joint action ``actions``, the part of
        ``step`` after the action check: by default the separate ``system_loss``, ``rewards``,
        ``diagnostics`` and ``transition`` calls.

        A scenario whose functions share an expensive intermediate (compute's service model, routing's
        flows) overrides it to evaluate that once; the override must return what the separate calls
        return, drawing the same random numbers in the same order (its scenario's tests compare them).
        """
        system_loss = self.system_loss(state, actions)
        rewards = self.rewards(state, actions, system_loss)
        info = self.diagnostics(state, actions)
        return system_loss, rewards, info, self.transition(state, actions, generator)

    def step(self, state: State, actions: Any, generator: torch.Generator) -> StepResult:
        """One step of every environment; see the module docstring for the action rule."""
        batch_size = state["t"].shape[0]
        actions = self.check_actions(actions, batch_size)
        system_loss, rewards, info, next_state = self.evaluate_step(state, actions, generator)
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

    def unilateral_system_loss(self, state: State, nominal_actions: torch.Tensor,
                               attacked_actions: torch.Tensor) -> torch.Tensor:
        """``g`` ``(B, N)``: ``g_i`` is ``system_loss`` of the joint action in which agent i plays
        ``attacked_actions[:, i]`` and every other agent j its ``nominal_actions[:, j]`` (both ``(B, N, A)``,
        in the box); differentiable with respect to both.

        This default builds the N joint actions of every state and evaluates ``system_loss`` on N copies
        of the state (``B * N`` rows); a scenario whose loss depends on the actions through aggregates
        overrides it with the same values (its tests compare the override with this form).
        """
        batch, n = nominal_actions.shape[:2]
        alone = torch.eye(n, dtype=torch.bool, device=nominal_actions.device).view(1, n, n, 1)
        joint = torch.where(alone, attacked_actions.unsqueeze(1), nominal_actions.unsqueeze(1))  # (B, i, j, A)
        repeated = {key: value.repeat_interleave(n, dim=0) for key, value in state.items()}
        return self.system_loss(repeated, joint.reshape(batch * n, n, -1)).view(batch, n)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


# --------------------------------------------------------------------------------------------
# Scenario registry: adapters, the trainer and the benchmark pick scenarios up by name.
# --------------------------------------------------------------------------------------------

SCENARIOS: dict[str, type[Scenario]] = {}


def meets_learning_target(scenario: str, ratio: float) -> bool:
    """Whether a ratio to the scenario's target reference meets its ``learning_target``."""
    op, bound = SCENARIOS[scenario].learning_target
    return ratio <= bound if op == "<=" else ratio >= bound


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
