"""PettingZoo adapters: any scenario as a ``ParallelEnv`` (numpy in/out, one environment), and as an
AEC env through PettingZoo's own ``parallel_to_aec`` conversion.

Agents are named ``agent_0`` ... ``agent_{N-1}``; every agent acts at every step; episodes end by
truncation after ``max_cycles`` steps (the scenario's horizon by default), when ``agents`` is emptied.
``infos[agent]`` holds the step's ``system_loss`` and the scenario's diagnostics.
Actions follow the scenario rule: NaN/inf or a wrong shape is an error, finite values outside the
action box are clipped. ``reset(seed=...)`` takes None or an integer in [0, 2**63); the environments
have no reset options (unknown keys give a ``UserWarning``, not an error, because PettingZoo's own API
test passes ``options={"options": 1}``; options that are not a dict are an error).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from pettingzoo import AECEnv, ParallelEnv
from pettingzoo.utils.conversions import parallel_to_aec

from envs.core import as_real_tensor, check_options, check_positive_int, short_repr
from envs.vector import TorchVectorEnv, VectorStep

RENDER_MODES = ("human", "ansi")


def check_render_mode(render_mode: str | None) -> None:
    if render_mode is not None and (not isinstance(render_mode, str) or render_mode not in RENDER_MODES):
        raise ValueError(f"unknown render_mode {short_repr(render_mode)}; allowed: None, "
                         f"{', '.join(map(repr, RENDER_MODES))}")


def render_text(render_mode: str | None, vec: TorchVectorEnv, last: VectorStep | None) -> str | None:
    """``render()`` of every adapter: the text of environment 0, returned (``ansi``) or printed (``human``)."""
    if render_mode is None:
        return None
    text = vec.render_text(0, last)
    if render_mode == "human":
        print(text)
        return None
    return text


class ScenarioParallelEnv(ParallelEnv):
    """One environment of a scenario as a PettingZoo ``ParallelEnv``.

    :param scenario: scenario name (``commons``, ``routing``, ``compute``).
    :param render_mode: ``None``, ``"ansi"`` (``render()`` returns text) or ``"human"`` (prints it).
    :param max_cycles: episode length in steps; the scenario's ``horizon`` when None.
    :param scenario_kwargs: the scenario's arguments (see its module docstring).
    """

    def __init__(self, scenario: str, render_mode: str | None = None, max_cycles: int | None = None,
                 **scenario_kwargs: Any) -> None:
        check_render_mode(render_mode)
        if max_cycles is not None:
            scenario_kwargs["horizon"] = check_positive_int("max_cycles", max_cycles)
        self._vec = TorchVectorEnv(scenario, num_envs=1, auto_reset=False, **scenario_kwargs)
        self.scenario = self._vec.scenario
        self.render_mode = render_mode
        self.metadata = {"name": f"{self.scenario.name}_v0", "render_modes": list(RENDER_MODES),
                         "is_parallelizable": True, "render_fps": 4}
        self.possible_agents = [f"agent_{i}" for i in range(self.scenario.n_agents)]
        self.agents: list[str] = []
        obs_space, action_space = self.scenario.spaces()
        self.observation_spaces = {agent: obs_space for agent in self.possible_agents}
        self.action_spaces = {agent: action_space for agent in self.possible_agents}
        n = self.scenario.n_agents
        self.state_space = spaces.Box(np.tile(obs_space.low, n), np.tile(obs_space.high, n), dtype=np.float32)
        self._last: VectorStep | None = None

    @property
    def max_cycles(self) -> int:
        return self._vec.max_steps

    @max_cycles.setter
    def max_cycles(self, value: int) -> None:
        self._vec.max_steps = check_positive_int("max_cycles", value)

    def observation_space(self, agent: str):
        return self.observation_spaces[agent]

    def action_space(self, agent: str):
        return self.action_spaces[agent]

    def _observations(self, obs: torch.Tensor) -> dict[str, np.ndarray]:
        obs_np = obs[0].detach().cpu().numpy().astype(np.float32)
        return {agent: obs_np[i] for i, agent in enumerate(self.possible_agents)}

    def reset(self, seed: int | None = None, options: dict | None = None):
        check_options(options, warn_unknown=True)
        obs = self._vec.reset(seed=seed)
        self.agents = list(self.possible_agents)
        self._last = None
        return self._observations(obs), {agent: {} for agent in self.agents}

    def step(self, actions: dict[str, Any]):
        if not self.agents:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        if not isinstance(actions, Mapping):
            raise ValueError(f"actions must be a dict {{agent: action}} with one entry per live agent "
                             f"{self.agents}, got {type(actions).__name__} {short_repr(actions)}")
        missing = [agent for agent in self.agents if agent not in actions]
        unknown = [agent for agent in actions if agent not in self.agents]
        if missing or unknown:
            raise ValueError(f"actions must have exactly one entry per live agent {self.agents}; "
                             f"missing {missing}, unknown {unknown}")
        shape = self.action_spaces[self.agents[0]].shape
        joint = []
        for agent in self.agents:
            action = as_real_tensor(f"action of {agent}", actions[agent])
            if tuple(action.shape) != shape:
                raise ValueError(f"action of {agent} must have shape {shape}, got {tuple(action.shape)}")
            joint.append(action.to(torch.float64))  # lossless for every float dtype: the scenario checks and clips
        result = self._vec.step(torch.stack(joint)[None])
        self._last = result
        done = bool(result.truncated[0])
        info = {"system_loss": float(result.system_loss[0])}
        info.update({key: float(value[0]) for key, value in result.info.items()})
        rewards_np = result.rewards[0].detach().cpu().numpy()
        observations = self._observations(result.obs)
        rewards = {agent: float(rewards_np[i]) for i, agent in enumerate(self.agents)}
        terminations = {agent: False for agent in self.agents}
        truncations = {agent: done for agent in self.agents}
        infos = {agent: dict(info) for agent in self.agents}
        if done:
            self.agents = []
        if self.render_mode == "human":
            self.render()
        return observations, rewards, terminations, truncations, infos

    def render(self) -> str | None:
        return render_text(self.render_mode, self._vec, self._last)

    def state(self) -> np.ndarray:
        """Global state: the concatenated observations of all agents, ``(N * D,)``."""
        if self._vec.state is None:
            raise RuntimeError("state() called before reset()")
        return self.scenario.observe(self._vec.state)[0].reshape(-1).detach().cpu().numpy().astype(np.float32)

    def close(self) -> None:
        pass


def make_parallel_env(scenario: str, **kwargs: Any) -> ScenarioParallelEnv:
    """PettingZoo ``ParallelEnv`` of ``scenario`` (keyword arguments as in ``ScenarioParallelEnv``)."""
    return ScenarioParallelEnv(scenario, **kwargs)


def make_aec_env(scenario: str, **kwargs: Any) -> AECEnv:
    """PettingZoo AEC env of ``scenario``, through ``pettingzoo.utils.conversions.parallel_to_aec``."""
    return parallel_to_aec(make_parallel_env(scenario, **kwargs))
