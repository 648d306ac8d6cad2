"""Gymnasium adapters: the joint-control view of a scenario, as a ``gymnasium.Env`` and as a native
``gymnasium.vector.VectorEnv`` (registered ids ``AAJR/Commons-v0``, ``AAJR/Routing-v0``,
``AAJR/Compute-v0``).

One controller chooses every agent's action:

* observation: ``Box((N * D,))``, the agents' observations concatenated (agent-major), float32;
* action: ``Box((N * A,))``, the agents' actions concatenated (agent-major); the scenario's rule
  applies (NaN/inf or a wrong shape is an error, finite out-of-box values are clipped);
* reward: the team reward ``-system_loss``; the per-agent rewards are in ``info["agent_rewards"]``,
  the system loss and the scenario's diagnostics in ``info`` too;
* episodes are truncated after the scenario's ``horizon`` (never terminated).

The vector form steps all ``num_envs`` environments as one batch of tensors (no loop over copies);
it resets itself in the same step an episode ends (``autoreset_mode = SAME_STEP``), with the last
observations in ``info["final_obs"]``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.core import Scenario
from envs.pettingzoo_env import RENDER_MODES, check_render_mode, render_text
from envs.vector import TorchVectorEnv, VectorStep


def joint_spaces(scenario: Scenario) -> tuple[spaces.Box, spaces.Box]:
    """Flat joint ``(observation_space, action_space)`` of all agents, agent-major, float32."""
    obs_space, action_space = scenario.spaces()
    n = scenario.n_agents

    def tile(space: spaces.Box) -> spaces.Box:
        return spaces.Box(np.tile(space.low, n), np.tile(space.high, n), dtype=np.float32)

    return tile(obs_space), tile(action_space)


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def _joint_info(result: VectorStep) -> dict[str, np.ndarray]:
    """Per-environment info arrays: agent rewards ``(B, N)``, system loss and diagnostics ``(B,)``."""
    info = {"agent_rewards": _to_numpy(result.rewards), "system_loss": _to_numpy(result.system_loss)}
    info.update({key: _to_numpy(value) for key, value in result.info.items() if key != "final_obs"})
    return info


class JointEnv(gym.Env):
    """One environment of a scenario under joint control (see the module docstring).

    :param scenario: scenario name; the other keyword arguments configure it.
    :param render_mode: ``None``, ``"ansi"`` or ``"human"``.
    """

    metadata = {"render_modes": list(RENDER_MODES), "render_fps": 4}

    def __init__(self, scenario: str, render_mode: str | None = None, **scenario_kwargs: Any) -> None:
        check_render_mode(render_mode)
        self._vec = TorchVectorEnv(scenario, num_envs=1, auto_reset=False, **scenario_kwargs)
        self.scenario = self._vec.scenario
        self.render_mode = render_mode
        self.observation_space, self.action_space = joint_spaces(self.scenario)
        self._last: VectorStep | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        obs = self._vec.reset(seed=seed)
        self._last = None
        return _to_numpy(obs).reshape(-1).astype(np.float32), {}

    def step(self, action: Any):
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape:
            raise ValueError(f"action must have shape {self.action_space.shape} (n_agents * action_dim), "
                             f"got {action.shape}")
        result = self._vec.step(action.reshape(1, self.scenario.n_agents, -1))
        self._last = result
        obs = _to_numpy(result.obs).reshape(-1).astype(np.float32)
        info = {key: value[0] for key, value in _joint_info(result).items()}
        reward = -float(result.system_loss[0])
        if self.render_mode == "human":
            self.render()
        return obs, reward, False, bool(result.truncated[0]), info

    def render(self) -> str | None:
        return render_text(self.render_mode, self._vec, self._last)


class JointVectorEnv(VectorEnv):
    """``num_envs`` environments of a scenario under joint control, simulated as one tensor batch.

    :param num_envs: number of environments.
    :param scenario: scenario name; the other keyword arguments configure it.
    :param device: torch device of the simulation; observations and rewards come back as numpy.
    :param render_mode: ``None``, ``"ansi"`` or ``"human"`` (renders the first environment).
    """

    metadata = {"render_modes": list(RENDER_MODES), "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, num_envs: int = 1, scenario: str = "commons", device: torch.device | str = "cpu",
                 render_mode: str | None = None, **scenario_kwargs: Any) -> None:
        check_render_mode(render_mode)
        self._vec = TorchVectorEnv(scenario, num_envs=num_envs, device=device, auto_reset=True, **scenario_kwargs)
        self.scenario = self._vec.scenario
        self.num_envs = self._vec.num_envs
        self.render_mode = render_mode
        self.single_observation_space, self.single_action_space = joint_spaces(self.scenario)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._last: VectorStep | None = None

    def _flat_obs(self, obs: torch.Tensor) -> np.ndarray:
        return _to_numpy(obs).reshape(self.num_envs, -1).astype(np.float32)

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        if isinstance(seed, (list, tuple)):
            seed = seed[0] if seed else None  # one generator drives the whole batch
        super().reset(seed=seed)
        self._last = None
        return self._flat_obs(self._vec.reset(seed=seed)), {}

    def step(self, actions: Any):
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != self.action_space.shape:
            raise ValueError(f"actions must have shape {self.action_space.shape} (num_envs, n_agents * action_dim), "
                             f"got {actions.shape}")
        result = self._vec.step(actions.reshape(self.num_envs, self.scenario.n_agents, -1))
        self._last = result
        truncated = _to_numpy(result.truncated).astype(bool)
        info = _joint_info(result)
        if "final_obs" in result.info:
            info["final_obs"] = self._flat_obs(result.info["final_obs"])
            info["_final_obs"] = truncated.copy()
        rewards = -_to_numpy(result.system_loss).astype(np.float64)
        if self.render_mode == "human":
            self.render()
        return self._flat_obs(result.obs), rewards, np.zeros(self.num_envs, dtype=bool), truncated, info

    def render(self) -> str | None:
        return render_text(self.render_mode, self._vec, self._last)
