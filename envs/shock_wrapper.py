"""The shock wrapper: perturb what the agents observe at every step (or with a probability) by a PGA
attack on a victim policy, for the batched form (``ShockedVectorEnv``) and the PettingZoo form
(``ShockedParallelEnv``).

The victim is any callable mapping observations ``(B, N, D)`` (a torch tensor) to deterministic
actions ``(B, N, A)`` (the learner's ``policy.deterministic_action``, a wrapped SB3 model, a plain
function); the ``value`` objective also needs ``value_fn`` ``(B, N, D) -> (B, N)``. Objectives:
``system`` (the scenario's system loss), ``action`` (maximal action deviation), ``value`` (lower the
critic), ``random_search`` (the system loss, gradient-free: random points on the boundary of the ball
plus the PGD result, the best kept), ``rollout`` (the system loss summed over the next ``horizon``
steps of the differentiable simulator with the victim in the loop, the exogenous draws taken from a
copy of the environment's generator: a clairvoyant attacker, ``envs.rollout_attack``), and the
non-adaptive ``random`` (uniform in the ball) and
``spike`` (the scenario's fixed demand-spike direction), and ``learned``: a trained attacker's shock
(``robustness.adversary``), passed to the wrapper as ``adversary(obs) -> delta (B, N, D)``. The
gradient attacks run PGA with the step ``rule`` (``gradient`` as in training, or ``normalized``); with
``best_iterate``, ``restarts`` or ``random_search`` they keep each sample's best iterate over the zero
start and the random restarts (``envs.shocks.pgd_attack``). Shocks move only the scenario's shock
channels and may take an observation up to eps outside its nominal box.

``info`` (batched: tensors ``(B,)``; PettingZoo: floats per agent) holds ``shock/norm`` (largest
applied ``||delta||_p`` over agents), ``shock/budget_use`` (that norm over eps: 1 on the boundary of
the ball), ``shock/gain`` (system-objective increase, or the adaptive objective's increase, from the
unshocked value, summed over attacked agents), ``shock/shocked`` and, for ``random_search``,
``shock/search_wins`` (the fraction of attacked agents where a random candidate beat PGD's result).

Inputs are checked where they enter: every output of the victim must be a finite tensor of actions of
shape ``(*obs.shape[:-1], A)`` exactly (no broadcasting), every output of ``value_fn`` a finite
``(*obs.shape[:-1])`` tensor, and the shock itself finite, else a one-line ValueError; seeds are None or
integers in [0, 2**63) (the shock generator's seed after ``reset(seed)`` is ``seed + 1``, wrapped).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import numpy as np
import torch
from pettingzoo.utils.wrappers import BaseParallelWrapper

from envs.core import (
    check_bool,
    check_choice,
    check_positive_int,
    check_real,
    check_seed,
    derived_seed,
    make_generator,
    short_repr,
)
from envs.pettingzoo_env import ScenarioParallelEnv
from envs.rollout_attack import rollout_objective
from envs.shocks import (
    MODES,
    NORMS,
    RULES,
    action_objective,
    batched_pgd_attack,
    budget_use,
    pga,
    random_in_ball,
    random_search,
    repeat_batch,
    spike_shock,
    system_objective,
    value_objective,
)
from envs.vector import TorchVectorEnv, VectorStep

ATTACKS = ("system", "action", "value", "random", "spike", "random_search", "rollout", "learned")

Policy = Callable[[torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class ShockConfig:
    """How observations are shocked.

    :param eps: radius of the ball, in observation units (observations are O(1)).
    :param norm: ``l2`` or ``linf``.
    :param steps: PGA steps K.
    :param step_size: PGA step eta (default ``2.5 eps / K``).
    :param objective: ``system``, ``action``, ``value``, ``random_search``, ``random`` or ``spike``.
    :param mode: ``shared`` (one delta on the shared state, seen by every agent) or ``per_agent``.
    :param prob: probability that a step is shocked (per environment).
    :param random_start: start PGA at a random point of the ball (always on for ``action``, whose
        objective has a stationary point at 0).
    :param rule: PGA's step rule, ``gradient`` (eq. 11) or ``normalized`` (``envs.shocks``).
    :param best_iterate: keep each sample's best iterate instead of the last.
    :param restarts: random restarts besides the start above (the best iterate over all is kept).
    :param candidates: ``random_search``: random boundary points per step besides the PGD result.
    :param horizon: ``rollout``: H, the steps whose system loss the attack sums.
    """

    eps: float = 0.1
    norm: str = "l2"
    steps: int = 5
    step_size: float | None = None
    objective: str = "system"
    mode: str = "shared"
    prob: float = 1.0
    random_start: bool = False
    rule: str = "gradient"
    best_iterate: bool = False
    restarts: int = 0
    candidates: int = 64
    horizon: int = 5

    def __post_init__(self) -> None:
        check_real("eps", self.eps, 0.0, low_open=True)
        check_choice("norm", self.norm, NORMS)
        check_positive_int("steps", self.steps)
        if self.step_size is not None:
            check_real("step_size", self.step_size, 0.0, low_open=True)
        check_choice("objective", self.objective, ATTACKS)
        check_choice("mode", self.mode, MODES)
        check_real("prob", self.prob, 0.0, 1.0)
        check_choice("rule", self.rule, RULES)
        check_bool("random_start", self.random_start)
        check_bool("best_iterate", self.best_iterate)
        if isinstance(self.restarts, bool) or not isinstance(self.restarts, int) or self.restarts < 0:
            raise ValueError(f"restarts must be an integer >= 0, got {short_repr(self.restarts)}")
        check_positive_int("candidates", self.candidates)
        check_positive_int("horizon", self.horizon)

    @property
    def keeps_best(self) -> bool:
        """Whether the attack keeps the best iterate over its runs (``envs.shocks.pgd_attack``)."""
        return self.best_iterate or self.restarts > 0 or self.objective == "random_search"


def _describe(value: Any) -> str:
    return f"shape {tuple(value.shape)}" if torch.is_tensor(value) else f"a {type(value).__name__}"


def checked_output(fn: Policy, name: str, trailing: tuple[int, ...]) -> Policy:
    """``fn`` whose every output is checked: a finite tensor of shape ``(*obs.shape[:-1], *trailing)``
    exactly (a broadcastable shape is refused), else a ValueError naming ``name``."""
    def checked(obs: torch.Tensor) -> torch.Tensor:
        out = fn(obs)
        expected = (*obs.shape[:-1], *trailing)
        if not torch.is_tensor(out) or tuple(out.shape) != expected:
            raise ValueError(f"{name} must map observations of shape {tuple(obs.shape)} to a tensor of shape "
                             f"{expected}, got {_describe(out)}")
        if not torch.isfinite(out).all():
            raise ValueError(f"{name} returned NaN or inf for observations of shape {tuple(obs.shape)}; "
                             f"it must return finite values")
        return out
    return checked


def compute_shock(scenario, state: dict, obs: torch.Tensor, policy: Policy, cfg: ShockConfig,
                  generator: torch.Generator, value_fn: Policy | None = None, adversary: Policy | None = None,
                  env_generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The shock ``(B, N, D)`` to add to ``obs`` ``(B, N, D)`` in ``state``, and its info ``(B,)`` tensors.

    ``adversary``: the ``learned`` objective's attacker, ``obs (B, N, D) -> delta (B, N, D)`` (one delta
    for every agent in shared mode). ``env_generator``: the environment's generator, whose state the
    ``rollout`` objective copies for the exogenous draws of its window. ``policy`` and ``value_fn`` are
    checked at every call (``checked_output``), the shock before it is returned."""
    batch, n, dim = obs.shape
    policy = checked_output(policy, "the victim policy", (scenario.action_dim,))
    if value_fn is not None:
        value_fn = checked_output(value_fn, "value_fn", ())
    shape = (batch, dim) if cfg.mode == "shared" else (batch, n, dim)
    if cfg.objective == "value" and value_fn is None:
        raise ValueError("objective 'value' needs value_fn (a critic mapping (B, N, D) to (B, N))")
    if cfg.objective == "rollout" and env_generator is None:
        raise ValueError("objective 'rollout' needs env_generator (the environment's generator)")

    @functools.cache  # built once: batched_pgd_attack also takes objective_of(1) for the clean value
    def objective_of(copies: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """The objective over ``copies`` environment-major copies of the batch (``batched_pgd_attack``)."""
        if cfg.objective == "rollout":
            return rollout_objective(scenario, state, obs, policy, cfg.mode, cfg.horizon, env_generator, copies)
        copied_obs = repeat_batch(obs, copies)
        if cfg.objective == "value":
            return value_objective(copied_obs, value_fn, cfg.mode)
        if cfg.objective == "action":
            return action_objective(copied_obs, policy, cfg.mode)
        return system_objective(scenario, {key: repeat_batch(value, copies) for key, value in state.items()},
                                copied_obs, policy, cfg.mode)

    options = {"device": obs.device, "dtype": obs.dtype}
    mask = scenario.shock_mask
    random_start = cfg.random_start or cfg.objective == "action"
    trajectory = attack = None
    extra: dict[str, torch.Tensor] = {}
    if cfg.objective == "random":
        delta = random_in_ball(shape, cfg.eps, cfg.norm, mask.to(obs.dtype), generator, **options)
    elif cfg.objective == "spike":
        delta = spike_shock(scenario, shape, cfg.eps, cfg.norm).to(**options)
    elif cfg.objective == "learned":
        if adversary is None:
            raise ValueError("objective 'learned' needs adversary (a trained attacker: robustness.adversary)")
        with torch.no_grad():
            delta = adversary(obs).to(**options)
        if tuple(delta.shape) != (batch, n, dim) or not torch.isfinite(delta).all():
            raise ValueError(f"the adversary must return finite shocks of shape {(batch, n, dim)}, "
                             f"got {tuple(delta.shape)}")
        delta = delta[:, 0] if cfg.mode == "shared" else delta
    elif not cfg.keeps_best:  # the plain K-step PGA of the training rollouts
        trajectory = pga(objective_of(1), shape, cfg.eps, cfg.norm, cfg.steps, cfg.step_size, mask, random_start,
                         generator, rule=cfg.rule, **options)
        delta = trajectory.deltas[-1]
    else:
        attack = batched_pgd_attack(objective_of, shape, cfg.eps, cfg.norm, cfg.steps, cfg.step_size, mask, cfg.rule,
                                    cfg.restarts + int(random_start and cfg.restarts == 0), generator,
                                    zero_start=not random_start, **options)
        if cfg.objective == "random_search":
            attack, won = random_search(objective_of(1), attack, cfg.eps, cfg.norm, cfg.candidates, mask, generator,
                                        objective_of)
            extra["shock/search_wins"] = won.reshape(batch, -1).to(obs.dtype).mean(-1)
        delta = attack.delta
    if not torch.isfinite(delta).all():
        raise ValueError(f"the {cfg.objective} attack produced a NaN or inf shock (a non-finite gradient of the "
                         f"objective through the victim?); the victim must be finite and differentiable")
    shocked = torch.rand(batch, generator=generator, **options) < cfg.prob
    delta = delta * shocked.view(-1, *([1] * (delta.dim() - 1)))
    if trajectory is not None and not random_start:  # PGA already evaluated g(0) and g(delta_K)
        gain = torch.where(shocked.view(-1, *([1] * (trajectory.values.dim() - 2))),
                           trajectory.values[-1] - trajectory.values[0], 0.0)
    elif attack is not None:
        gain = torch.where(shocked.view(-1, *([1] * (attack.value.dim() - 1))), attack.value - attack.clean_value,
                           0.0)
    else:
        with torch.no_grad():
            gain = objective_of(1)(delta) - objective_of(1)(torch.zeros_like(delta))
    per_agent = delta if cfg.mode == "per_agent" else delta.unsqueeze(1)
    size = per_agent.abs().amax(-1) if cfg.norm == "linf" else per_agent.norm(dim=-1)
    info = {"shock/norm": size.amax(-1), "shock/budget_use": budget_use(per_agent, cfg.eps, cfg.norm).amax(-1),
            "shock/gain": gain.reshape(batch, -1).sum(-1), "shock/shocked": shocked, **extra}
    return per_agent.expand(batch, n, dim), info


def check_callables(**fns: Any) -> None:
    """A ValueError naming the first of ``fns`` that is neither None nor callable (``policy`` must be callable)."""
    for name, fn in fns.items():
        if (fn is None and name != "policy") or callable(fn):
            continue
        raise ValueError(f"{name} must be a callable mapping observations (B, N, D) to a tensor"
                         f"{'' if name == 'policy' else ' or None'}, got {short_repr(fn)}")


class ShockedVectorEnv:
    """A ``TorchVectorEnv`` whose observations are shocked before the agents see them.

    ``clean_obs`` holds the unshocked observations; ``step`` returns the shocked ones and adds the
    shock's info; everything else is the wrapped environment's.
    """

    def __init__(self, env: TorchVectorEnv, policy: Policy, config: ShockConfig, value_fn: Policy | None = None,
                 seed: int | None = None, adversary: Policy | None = None) -> None:
        if not isinstance(env, TorchVectorEnv):
            raise ValueError(f"env must be an envs.TorchVectorEnv, got {type(env).__name__}")
        check_callables(policy=policy, value_fn=value_fn, adversary=adversary)
        if not isinstance(config, ShockConfig):
            raise ValueError(f"config must be a ShockConfig, got {short_repr(config)}")
        self.env, self.policy, self.config, self.value_fn = env, policy, config, value_fn
        self.adversary = adversary
        self.scenario = env.scenario
        self.num_envs, self.device, self.max_steps = env.num_envs, env.device, env.max_steps
        self.generator = make_generator(seed, env.device)
        self.clean_obs: torch.Tensor | None = None
        self.last_shock_info: dict[str, torch.Tensor] = {}

    @property
    def n_agents(self) -> int:
        return self.env.n_agents

    @property
    def state(self) -> dict:
        return self.env.state

    def _shock(self, obs: torch.Tensor) -> torch.Tensor:
        self.clean_obs = obs
        delta, self.last_shock_info = compute_shock(self.scenario, self.env.state, obs, self.policy, self.config,
                                                    self.generator, self.value_fn, self.adversary, self.env.generator)
        return obs + delta

    def reset(self, seed: int | None = None) -> torch.Tensor:
        seed = check_seed("seed", seed)
        if seed is not None:
            self.generator = make_generator(derived_seed(seed, 1), self.device)
        return self._shock(self.env.reset(seed=seed))

    def step(self, actions: Any) -> VectorStep:
        result = self.env.step(actions)
        obs = self._shock(result.obs)
        return result._replace(obs=obs, info={**result.info, **self.last_shock_info})


class ShockedParallelEnv(BaseParallelWrapper):
    """A scenario's PettingZoo ``ParallelEnv`` whose observations are shocked (same machinery, B = 1)."""

    def __init__(self, env, policy: Policy, config: ShockConfig, value_fn: Policy | None = None,
                 seed: int | None = None) -> None:
        if not isinstance(getattr(env, "unwrapped", None), ScenarioParallelEnv):
            raise ValueError(f"env must be a scenario's ParallelEnv (envs.pettingzoo_env.make_parallel_env), got "
                             f"{type(env).__name__}")
        super().__init__(env)
        self.shocker = ShockedVectorEnv(env.unwrapped._vec, policy, config, value_fn, seed)

    def _shocked_dict(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vec = self.shocker.env
        clean = torch.as_tensor(np.stack([obs[a] for a in self.possible_agents]), dtype=vec.scenario.dtype,
                                device=vec.device).unsqueeze(0)
        shocked = self.shocker._shock(clean)[0].detach().cpu().numpy().astype(np.float32)
        return {agent: shocked[i] for i, agent in enumerate(self.possible_agents) if agent in obs}

    def _info(self) -> dict[str, float]:
        return {key: float(value[0]) for key, value in self.shocker.last_shock_info.items()}

    def reset(self, seed: int | None = None, options: dict | None = None):
        seed = check_seed("seed", seed)
        obs, infos = self.env.reset(seed=seed, options=options)
        if seed is not None:
            self.shocker.generator = make_generator(derived_seed(seed, 1), self.shocker.device)
        obs = self._shocked_dict(obs)
        return obs, {agent: {**infos.get(agent, {}), **self._info()} for agent in obs}

    def step(self, actions: dict):
        obs, rewards, terminations, truncations, infos = self.env.step(actions)
        obs = self._shocked_dict(obs)
        shock_info = self._info()
        return obs, rewards, terminations, truncations, {a: {**infos[a], **shock_info} for a in infos}
