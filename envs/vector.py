"""The batched torch interface: B environments x N agents of one scenario, as tensors on a device.

This is what the learner and the shock wrapper use, and what the PettingZoo and Gymnasium adapters
are built on (with ``num_envs=1`` for the single-environment forms), so that every form shares one
code path: the same seed gives the same trajectory in all of them.

All environments of a ``TorchVectorEnv`` start together and reach the horizon together (episodes are
truncated, never terminated), so an automatic reset resets the whole batch at once; the observation
returned by that step is the first observation of the new episodes and the last one of the finished
episodes is in ``info["final_obs"]``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch

from envs.core import (
    Scenario,
    State,
    check_bool,
    check_positive_int,
    check_seed,
    make_generator,
    make_scenario,
)


class VectorStep(NamedTuple):
    """What ``TorchVectorEnv.step`` returns."""

    obs: torch.Tensor  # (B, N, D) observations after the step (after an automatic reset, if any)
    rewards: torch.Tensor  # (B, N)
    system_loss: torch.Tensor  # (B,)
    truncated: torch.Tensor  # (B,) bool
    info: dict[str, torch.Tensor]


class TorchVectorEnv:
    """``num_envs`` environments of one scenario stepped as one batch of tensors.

    :param scenario: a ``Scenario`` or a scenario name (then ``scenario_kwargs`` configure it).
    :param num_envs: number of environments B.
    :param device: torch device of the simulation (``"cpu"``, ``"cuda"``...).
    :param dtype: ``torch.float32`` (default) or ``torch.float64``.
    :param seed: seed of the first reset, None or an integer in [0, 2**63) (a later ``reset(seed=...)``
        reseeds).
    :param auto_reset: reset the batch when the horizon is reached (the learner's mode); the
        single-environment adapters set it to False and stop at the horizon.
    :param max_steps: episode length; the scenario's horizon when None.
    """

    def __init__(self, scenario: Scenario | str, num_envs: int = 1, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, seed: int | None = None, auto_reset: bool = True,
                 max_steps: int | None = None, **scenario_kwargs: Any) -> None:
        if isinstance(scenario, str):
            scenario = make_scenario(scenario, device=device, dtype=dtype, **scenario_kwargs)
        elif not isinstance(scenario, Scenario):
            raise ValueError(f"scenario must be a scenario name or an envs.Scenario, got {type(scenario).__name__}")
        elif scenario_kwargs:
            raise ValueError(f"scenario keyword arguments {sorted(scenario_kwargs)} given with a built "
                             f"Scenario; pass a scenario name to configure it")
        self.scenario = scenario
        self.num_envs = check_positive_int("num_envs", num_envs)
        self.device = scenario.device
        self.auto_reset = check_bool("auto_reset", auto_reset)
        self.max_steps = scenario.horizon if max_steps is None else check_positive_int("max_steps", max_steps)
        self._seed = check_seed("seed", seed)
        self.generator: torch.Generator | None = None
        self.state: State | None = None

    @property
    def n_agents(self) -> int:
        return self.scenario.n_agents

    def reset(self, seed: int | None = None) -> torch.Tensor:
        """Start new episodes in every environment; returns the observations ``(B, N, D)``.

        ``seed`` (None or an integer in [0, 2**63)) reseeds the generator; without it the generator goes
        on from where it was (seeded at construction, or randomly on the first reset).
        """
        seed = check_seed("seed", seed)
        if seed is None and self.generator is None:
            seed = self._seed
        if seed is not None or self.generator is None:
            self.generator = make_generator(seed, self.device)
        try:
            self.state = self.scenario.reset(self.num_envs, self.generator)
            return self.scenario.observe(self.state)
        except (MemoryError, RuntimeError) as error:  # torch.OutOfMemoryError is a RuntimeError
            if not isinstance(error, MemoryError) and "alloc" not in str(error).lower():
                raise
            scenario = self.scenario
            raise ValueError(f"num_envs={self.num_envs} environments of {scenario.name} (n_agents={scenario.n_agents}, "
                             f"obs_dim={scenario.obs_dim}) do not fit in the memory of {self.device}; use fewer "
                             f"environments or a smaller configuration") from None

    def step(self, actions: Any) -> VectorStep:
        """Apply the joint actions ``(B, N, A)`` (validated and clipped by the scenario)."""
        if self.state is None:
            raise RuntimeError("step() called before reset()")
        result = self.scenario.step(self.state, actions, self.generator)
        self.state = result.state
        truncated = self.state["t"] >= self.max_steps
        obs = self.scenario.observe(self.state)
        info = dict(result.info)
        if self.auto_reset and bool(truncated.any()):
            info["final_obs"] = obs
            obs = self.reset()
        return VectorStep(obs, result.rewards, result.system_loss, truncated, info)

    def render_text(self, index: int = 0, last: VectorStep | None = None) -> str:
        """A text picture of environment ``index``: time, shared features, per-agent observations."""
        if self.state is None:
            return f"{self.scenario.name}: not reset"
        scenario = self.scenario
        obs = scenario.observe(self.state)[index]
        t = int(self.state["t"][index])
        lines = [f"{scenario.name} t={t}/{self.max_steps}"]
        if last is not None:
            rewards = " ".join(f"{r:+.3f}" for r in last.rewards[index].tolist())
            lines.append(f"  system_loss={float(last.system_loss[index]):.4f} rewards=[{rewards}]")
            lines.extend(f"  {key}={float(value[index]):.4f}" for key, value in last.info.items()
                         if key != "final_obs")
        shared = [f"{name}={float(obs[0, j]):.3f}" for j, name in enumerate(scenario.feature_names)
                  if bool(scenario.shock_mask[j])]
        lines.append("  shared: " + " ".join(shared))
        for i in range(scenario.n_agents):
            private = [f"{name}={float(obs[i, j]):.3f}" for j, name in enumerate(scenario.feature_names)
                       if not bool(scenario.shock_mask[j])]
            lines.append(f"  agent_{i}: " + " ".join(private))
        return "\n".join(lines)


class Episode(NamedTuple):
    """One episode of B environments, step by step (what ``run_episode`` returns)."""

    rewards: torch.Tensor  # (T, B, N)
    system_loss: torch.Tensor  # (T, B)
    info: dict[str, torch.Tensor]  # (T, B) per key: the scenario's diagnostics (and a wrapper's, e.g. shocks)
    states: list[State]  # the T states before each step


def run_episode(env, act: Callable[[torch.Tensor, State], torch.Tensor], seed: int) -> Episode:
    """Play one episode in every environment of ``env`` (a ``TorchVectorEnv`` with ``auto_reset=False``, or
    a wrapper with its interface such as ``envs.shock_wrapper.ShockedVectorEnv``) from ``reset(seed)``.

    ``act(obs (B, N, D), state) -> actions (B, N, A)`` sees what the agents observe (shocked, under a
    shock wrapper) and the true state (what reference policies need). This is the one episode loop of
    the evaluations and diagnostics; the learner's rollouts (auto-reset, sampling) have their own.
    """
    obs = env.reset(seed=seed)
    rewards, losses, states, infos = [], [], [], []
    for _ in range(env.max_steps):
        states.append(env.state)
        with torch.no_grad():
            actions = act(obs, env.state)
        result = env.step(actions)
        rewards.append(result.rewards)
        losses.append(result.system_loss)
        infos.append(result.info)
        obs = result.obs
    info = {key: torch.stack([step[key] for step in infos]) for key in infos[0] if key != "final_obs"}
    return Episode(torch.stack(rewards), torch.stack(losses), info, states)


def evaluate_policy(scenario: Scenario, policy: Callable[[State], torch.Tensor], num_envs: int,
                    seed: int) -> dict[str, float]:
    """Per-step means of the system loss and of the scenario's diagnostics over one episode of
    ``num_envs`` environments seeded with ``seed`` (the same exogenous draws for every policy), for
    ``policy(state) -> actions (B, N, A)``; ``final/<name>`` is a diagnostic's mean at the last step."""
    env = TorchVectorEnv(scenario, num_envs=num_envs, auto_reset=False)
    episode = run_episode(env, lambda obs, state: policy(state), seed)
    out = {}
    for key, per_step in {"system_loss": episode.system_loss, **episode.info}.items():
        total = sum((step.mean() for step in per_step), 0.0)  # step by step, as the per-step means accrue
        out[key] = float(total) / env.max_steps
    out.update({f"final/{key}": float(value[-1].mean()) for key, value in episode.info.items()})
    return out
