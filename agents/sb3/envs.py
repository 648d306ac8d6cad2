"""The scenarios as SB3 ``VecEnv``s: the batched parameter-sharing view and the SuperSuit one (``agents.sb3``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecMonitor

from agents.policy import squash
from envs.batch import Batch
from envs.core import Scenario, State, check_positive_int, check_real
from envs.vector import TorchVectorEnv

PRE_SQUASH_BOUND = 20.0


def pre_squash_space(action_dim: int) -> spaces.Box:
    """The action space SB3 sees on a ``SharedPolicyVecEnv``: pre-squash actions in ``[-20, 20]^A``."""
    return spaces.Box(-PRE_SQUASH_BOUND, PRE_SQUASH_BOUND, shape=(action_dim,), dtype=np.float32)


class SharedPolicyVecEnv(VecEnv):
    """``num_envs`` batched environments of a scenario, each agent an SB3 environment (``agents.sb3``).

    :param scenario: scenario name (then ``scenario_kwargs`` configure it) or a built ``Scenario``.
    :param num_envs: B, environments simulated as one batch; SB3 sees ``B * N`` environments.
    :param seed: seed of the first reset (SB3's ``model.set_random_seed``/``PPO(seed=...)`` reseeds).
    :param reward_scale: the agents' rewards are multiplied by this (``PPOConfig.reward_scale``).
    :param device: torch device of the simulation; SB3 gets numpy arrays.

    All environments reach the horizon together; the step that ends an episode returns the first
    observations of the next one, with ``terminal_observation`` and ``TimeLimit.truncated`` in the
    infos (SB3 bootstraps the truncated episodes from it). Every info holds the step's ``system_loss``.
    """

    def __init__(self, scenario: str | Scenario, num_envs: int = 16, seed: int | None = None,
                 reward_scale: float = 1.0, device: torch.device | str = "cpu", **scenario_kwargs: Any) -> None:
        self.vec = TorchVectorEnv(scenario, num_envs=num_envs, device=device, seed=seed, auto_reset=True,
                                  **scenario_kwargs)
        self.scenario = self.vec.scenario
        self.n_agents = self.scenario.n_agents
        self.reward_scale = check_real("reward_scale", reward_scale, 0.0, low_open=True)
        self.render_mode = None
        obs_space, action_space = self.scenario.spaces()
        super().__init__(num_envs * self.n_agents, obs_space, pre_squash_space(self.scenario.action_dim))
        self._obs: torch.Tensor | None = None
        self._actions: np.ndarray | None = None
        self._recording: list[tuple[State, torch.Tensor, torch.Tensor]] | None = None

    def squash(self, pre_actions: torch.Tensor) -> torch.Tensor:
        """Environment actions ``low + (high - low) * sigmoid(u)``."""
        return squash(pre_actions, self.scenario.action_low, self.scenario.action_high)

    def _flat(self, obs: torch.Tensor) -> np.ndarray:
        return obs.detach().cpu().numpy().reshape(self.num_envs, -1).astype(np.float32)

    def reset(self) -> np.ndarray:
        seed = self._seeds[0]  # one generator drives the whole batch
        self._obs = self.vec.reset(seed=seed)
        self._reset_seeds()
        self._reset_options()
        return self._flat(self._obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self):
        if self._obs is None:
            raise RuntimeError("step() called before reset()")
        expected = (self.num_envs, *self.action_space.shape)
        if self._actions is None or self._actions.shape != expected:
            got = None if self._actions is None else self._actions.shape
            raise ValueError(f"actions must have shape {expected} (num_envs * n_agents, action_dim), got {got}")
        scenario = self.scenario
        pre_actions = torch.as_tensor(self._actions, dtype=scenario.dtype, device=self.vec.device)
        actions = self.squash(pre_actions.reshape(self.vec.num_envs, self.n_agents, -1))
        if self._recording is not None:
            self._recording.append((self.vec.state, self._obs.float(), actions))
        result = self.vec.step(actions)
        self._obs = result.obs
        rewards = (result.rewards.reshape(-1) * self.reward_scale).detach().cpu().numpy().astype(np.float32)
        dones = np.repeat(result.truncated.detach().cpu().numpy(), self.n_agents)
        losses = np.repeat(result.system_loss.detach().cpu().numpy(), self.n_agents)
        infos: list[dict[str, Any]] = [{"system_loss": float(loss)} for loss in losses]
        if "final_obs" in result.info:
            final = self._flat(result.info["final_obs"])
            for k in np.flatnonzero(dones):
                infos[k]["terminal_observation"] = final[k]
                infos[k]["TimeLimit.truncated"] = True
        return self._flat(result.obs), rewards, dones, infos

    # Recording of joint transitions, for the penalties of ``RegularizedPPO``.

    def start_recording(self) -> None:
        """Record ``(state, observations (B, N, D), environment actions (B, N, A))`` before each step."""
        self._recording = []

    def stop_recording(self) -> Batch | None:
        """The ``T * B`` joint transitions of the T steps recorded since ``start_recording`` (step-major),
        or None when no step was recorded."""
        steps, self._recording = self._recording or [], None
        if not steps:
            return None
        states, obs, actions = zip(*steps)
        return Batch.from_steps(states, obs=obs, actions=actions)

    # The rest of SB3's VecEnv interface: one batched simulator, the same attributes for every index.

    def close(self) -> None:
        pass

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self, attr_name)] * len(list(self._get_indices(indices)))

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        raise NotImplementedError(f"env_method({method_name!r}): the {self.num_envs} environments are one batched "
                                  f"simulator; use .vec (envs.TorchVectorEnv) or .scenario")

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False] * len(list(self._get_indices(indices)))

    def get_images(self):
        return [None] * self.num_envs


def make_sb3_env(scenario: str, num_envs: int = 16, seed: int | None = None, reward_scale: float = 1.0,
                 **scenario_kwargs: Any) -> VecMonitor:
    """``SharedPolicyVecEnv`` under SB3's ``VecMonitor`` (episode returns per agent in SB3's logs)."""
    return VecMonitor(SharedPolicyVecEnv(scenario, num_envs, seed=seed, reward_scale=reward_scale,
                                         **scenario_kwargs))


def shared_env(env) -> SharedPolicyVecEnv:
    """The ``SharedPolicyVecEnv`` under ``env``, whose wrappers must leave observations and actions as
    they are (the penalties read the recorded scenario observations, not what a wrapper made of them)."""
    wrappers, node = [], env
    while isinstance(node, VecEnvWrapper):
        wrappers.append(node)
        node = node.venv
    if not isinstance(node, SharedPolicyVecEnv):
        raise ValueError(f"the penalties need the joint transitions of a SharedPolicyVecEnv (agents.sb3.make_sb3_env), "
                         f"got {type(node).__name__}")
    for wrapper in wrappers:
        if not isinstance(wrapper, VecMonitor):
            raise ValueError(f"the penalties need the SharedPolicyVecEnv's own observations, but the environment is "
                             f"wrapped in {type(wrapper).__name__}; allowed wrappers: VecMonitor")
    return node


class SeedableSuperSuitVecEnv(VecEnvWrapper):
    """SuperSuit's SB3 vector env (``concat_vec_envs_v1(..., base_class="stable_baselines3")``) of a
    scenario made seedable: ``seed()`` (what ``PPO(seed=...)`` calls) is kept for the next reset, which
    goes to the concatenated PettingZoo environments' own ``reset(seed=...)`` (SuperSuit's wrapper has
    no ``seed``, and its ``reset(seed=...)`` calls it). SuperSuit reports every episode end as a plain
    ``done``; the scenarios only truncate, so each one is marked ``TimeLimit.truncated``."""

    def __init__(self, venv) -> None:
        self._next_seed: int | None = None
        super().__init__(venv)

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        if attr_name == "render_mode":  # SuperSuit's wrapper holds it, its environments do not
            return [self.venv.render_mode] * len(list(self._get_indices(indices)))
        return self.venv.get_attr(attr_name, indices)

    def seed(self, seed: int | None = None) -> list[int | None]:
        self._next_seed = seed
        return [seed] * self.num_envs

    def reset(self) -> np.ndarray:
        seed, self._next_seed = self._next_seed, None
        observations, self.venv.reset_infos = self.venv.venv.reset(seed=seed)
        return observations

    def step_wait(self):
        observations, rewards, dones, infos = self.venv.step_wait()
        for k in np.flatnonzero(dones):  # the scenarios' episodes end by truncation only: SB3 bootstraps them
            infos[k]["TimeLimit.truncated"] = True
        return observations, rewards, dones, infos


def make_supersuit_vec_env(scenario: str, num_copies: int = 1, **env_kwargs: Any) -> VecMonitor:
    """Parameter-sharing SB3 ``VecEnv`` from the PettingZoo ``ParallelEnv`` through SuperSuit
    (``pettingzoo_env_to_vec_env_v1`` + ``concat_vec_envs_v1``), seedable, under ``VecMonitor``."""
    try:
        import supersuit
    except ImportError as error:
        raise ImportError("make_supersuit_vec_env needs supersuit: pip install -c constraints.txt -e '.[sb3]'") \
            from error
    from envs.pettingzoo_env import make_parallel_env

    check_positive_int("num_copies", num_copies)
    vec = supersuit.pettingzoo_env_to_vec_env_v1(make_parallel_env(scenario, **env_kwargs))
    vec = supersuit.concat_vec_envs_v1(vec, num_copies, num_cpus=0, base_class="stable_baselines3")
    return VecMonitor(SeedableSuperSuitVecEnv(vec))
