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

The vector form steps all ``num_envs`` environments as one batch of tensors (no loop over copies).
All of them start together and reach the horizon together; ``autoreset_mode`` chooses what happens then
(``metadata["autoreset_mode"]`` and the ``autoreset_mode`` attribute say which, as Gymnasium and TorchRL read):

* ``AutoresetMode.NEXT_STEP`` (default, Gymnasium's default): the step that reaches the horizon returns
  the last observations with ``truncated`` set; the next ``step`` ignores its (still validated)
  actions, resets the batch and returns the first observations with zero rewards, no ``terminated`` or
  ``truncated`` flag and an empty ``info``. Gymnasium's vector wrappers (``NormalizeObservation``,
  ``FlattenObservation``, ``DtypeObservation``...) need this mode.
* ``AutoresetMode.SAME_STEP``: the step that reaches the horizon resets the batch and returns the first
  observations of the new episodes, the last ones in ``info["final_obs"]`` (``info["_final_obs"]``
  marks them).

Inputs: ``reset(seed=...)`` takes None or an integer in [0, 2**63) (the vector form also a list of
``num_envs`` such seeds, whose first one seeds the batch's generator); there are no reset options
(``options`` must be None or ``{}``); a keyword argument the constructor does not know raises
``TypeError`` listing the allowed names (Gymnasium's convention, on which e.g. TorchRL's ``GymEnv``
relies); bad values raise ``ValueError``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.core import (
    SCENARIOS,
    Scenario,
    as_real_tensor,
    check_choice,
    check_keywords,
    check_options,
    check_positive_int,
    check_seed,
    config_fields,
    short_repr,
)
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
    return tensor.detach().cpu().contiguous().numpy()  # contiguous: no zero-stride (expanded) arrays in info


def check_gym_keywords(owner: str, scenario: Any, kwargs: dict[str, Any], own: tuple[str, ...]) -> None:
    """TypeError for a keyword argument that neither ``owner`` (its arguments ``own``) nor the scenario
    ``scenario`` knows, listing the allowed names (after a ValueError for an unknown scenario)."""
    check_choice("scenario", scenario, tuple(sorted(SCENARIOS)))
    check_keywords(f"{owner}({scenario!r})", kwargs, own + config_fields(SCENARIOS[scenario].config_cls))


def joint_actions(name: str, actions: Any, shape: tuple[int, ...], meaning: str) -> torch.Tensor:
    """``actions`` as a real tensor of ``shape`` (no float cast: the scenario checks finiteness and clips)."""
    actions = as_real_tensor(name, actions)
    if tuple(actions.shape) != shape:
        raise ValueError(f"{name} must have shape {shape} ({meaning}), got {tuple(actions.shape)}")
    return actions


AUTORESET_MODES = {"next_step": AutoresetMode.NEXT_STEP, "same_step": AutoresetMode.SAME_STEP}


def check_autoreset_mode(value: Any) -> AutoresetMode:
    """``AutoresetMode.NEXT_STEP`` or ``SAME_STEP``, given as the enum, its value (``"NextStep"``) or
    ``"next_step"`` / ``"same_step"``; anything else (``DISABLED`` included) is a ValueError."""
    for name, mode in AUTORESET_MODES.items():
        if value is mode or (isinstance(value, str) and value in (name, mode.value)):
            return mode
    raise ValueError(f"unknown autoreset_mode {short_repr(value)}; allowed: AutoresetMode.NEXT_STEP, "
                     f"AutoresetMode.SAME_STEP (or 'next_step', 'same_step')")


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
        check_gym_keywords(type(self).__name__, scenario, scenario_kwargs, ("render_mode",))
        check_render_mode(render_mode)
        self._vec = TorchVectorEnv(scenario, num_envs=1, auto_reset=False, **scenario_kwargs)
        self.scenario = self._vec.scenario
        self.render_mode = render_mode
        self.observation_space, self.action_space = joint_spaces(self.scenario)
        self._last: VectorStep | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        seed = check_seed("seed", seed)
        check_options(options)
        super().reset(seed=seed)
        obs = self._vec.reset(seed=seed)
        self._last = None
        return _to_numpy(obs).reshape(-1).astype(np.float32), {}

    def step(self, action: Any):
        action = joint_actions("action", action, self.action_space.shape, "n_agents * action_dim")
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
    :param autoreset_mode: ``AutoresetMode.NEXT_STEP`` (default) or ``AutoresetMode.SAME_STEP`` (module
        docstring); also ``"next_step"`` / ``"same_step"``.
    :param max_episode_steps: episode length, set as the scenario's ``horizon`` (as PettingZoo's
        ``max_cycles``); the ``horizon`` argument when None (``make_vec`` passes a registered spec's value
        under this name).
    """

    metadata = {"render_modes": list(RENDER_MODES), "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, scenario: str = "commons", device: torch.device | str = "cpu",
                 render_mode: str | None = None, autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
                 max_episode_steps: int | None = None, **scenario_kwargs: Any) -> None:
        check_gym_keywords(type(self).__name__, scenario, scenario_kwargs,
                           ("num_envs", "device", "render_mode", "autoreset_mode", "max_episode_steps"))
        check_render_mode(render_mode)
        mode = check_autoreset_mode(autoreset_mode)
        self.metadata = {**type(self).metadata, "autoreset_mode": mode}
        if max_episode_steps is not None:
            scenario_kwargs["horizon"] = check_positive_int("max_episode_steps", max_episode_steps)
        self._vec = TorchVectorEnv(scenario, num_envs=num_envs, device=device,
                                   auto_reset=mode == AutoresetMode.SAME_STEP, **scenario_kwargs)
        self.scenario = self._vec.scenario
        self.num_envs = self._vec.num_envs
        self.render_mode = render_mode
        self.single_observation_space, self.single_action_space = joint_spaces(self.scenario)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._last: VectorStep | None = None
        self._reset_next_step = False

    @property
    def autoreset_mode(self) -> AutoresetMode:
        """The autoreset mode (the attribute TorchRL reads; Gymnasium reads ``metadata["autoreset_mode"]``)."""
        return self.metadata["autoreset_mode"]

    def _flat_obs(self, obs: torch.Tensor) -> np.ndarray:
        return _to_numpy(obs).reshape(self.num_envs, -1).astype(np.float32)

    def _check_seed(self, seed: Any) -> int | None:
        """The seed of the batch's one generator: ``seed``, or the first of a list of ``num_envs`` seeds."""
        if isinstance(seed, (list, tuple)):
            if len(seed) != self.num_envs:
                raise ValueError(f"a list of seeds must have num_envs={self.num_envs} entries (the first seeds "
                                 f"the whole batch), got {len(seed)}")
            for value in seed:
                check_seed("seed", value)
            seed = seed[0]  # one generator drives the whole batch
        return check_seed("seed", seed)

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        seed = self._check_seed(seed)
        check_options(options)
        super().reset(seed=seed)
        self._last = None
        self._reset_next_step = False
        return self._flat_obs(self._vec.reset(seed=seed)), {}

    def step(self, actions: Any):
        actions = joint_actions("actions", actions, self.action_space.shape, "num_envs, n_agents * action_dim")
        actions = actions.reshape(self.num_envs, self.scenario.n_agents, -1)
        no_flags = np.zeros(self.num_envs, dtype=bool)
        if self._reset_next_step:  # NEXT_STEP: the episodes ended at the last step; this one resets them
            self.scenario.check_actions(actions, self.num_envs)
            self._reset_next_step, self._last = False, None
            obs = self._vec.reset()
            return self._flat_obs(obs), np.zeros(self.num_envs, dtype=np.float64), no_flags, no_flags.copy(), {}
        result = self._vec.step(actions)
        self._last = result
        truncated = _to_numpy(result.truncated).astype(bool)
        info = _joint_info(result)
        if "final_obs" in result.info:
            info["final_obs"] = self._flat_obs(result.info["final_obs"])
            info["_final_obs"] = truncated.copy()
        self._reset_next_step = self.autoreset_mode == AutoresetMode.NEXT_STEP and bool(truncated.any())
        rewards = -_to_numpy(result.system_loss).astype(np.float64)
        if self.render_mode == "human":
            self.render()
        return self._flat_obs(result.obs), rewards, no_flags, truncated, info

    def render(self) -> str | None:
        return render_text(self.render_mode, self._vec, self._last)
