"""stable-baselines3 bridge: SB3 PPO on the scenarios, the project's penalties in SB3's PPO loss, and SB3
policies as victims of the shock wrapper and in the robustness evaluation.

* ``make_sb3_env`` / ``SharedPolicyVecEnv``: B batched environments x N agents of a scenario as one SB3
  ``VecEnv`` of ``B * N`` single-agent environments (index ``k = b * N + i``). One SB3 policy acts for
  every agent on that agent's own observation (parameter sharing). It steps the batched torch simulator
  directly, with no loop over environments or agents. SB3's Gaussian acts on the *pre-squash* action
  ``u`` (a ``Box`` of half-width ``PRE_SQUASH_BOUND``, where the sigmoid is flat to 2e-9; SB3 needs
  finite bounds) and the environment receives ``low + (high - low) * sigmoid(u)``: the
  native learner's parameterisation, so the deterministic action map is smooth (no clipping kinks
  under Jacobian penalties) and SB3 and ``agents.learner`` train the same policy class.
* ``make_supersuit_vec_env``: the same parameter sharing built from the PettingZoo ``ParallelEnv`` with
  SuperSuit (one environment at a time, much slower), made seedable; actions in the scenario's box,
  clipped by SB3 as usual. The Gymnasium joint-control view (``gymnasium.make("envs:AAJR/Routing-v0")``,
  one controller for all agents) works with SB3 as it is.
* ``SB3Policy``: any SB3 Gaussian actor-critic policy trained on one of these views as a multi-agent
  ``deterministic_action(obs (B, N, D)) -> (B, N, A)`` and ``value(obs) -> (B, N)``: what the shock
  wrapper, the regularizers and ``robustness.evaluate.evaluate_under_attacks`` take.
* ``RegularizedPPO``: SB3's ``PPO`` whose loss is SB3's PPO loss plus ``reg_coef * penalty``, the
  penalty being one of ``regularizers.REGULARIZERS`` (the same code as the native learner) evaluated
  on ``SB3Policy`` over a minibatch of joint transitions recorded during the rollout.
* ``ppo_kwargs``: SB3 PPO arguments equal to a native ``PPOConfig`` (used by ``bench/sb3.py``).

SB3's ``.zip`` format stores its own metadata with cloudpickle: load only files you trust (the network
weights inside are read with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

try:
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.distributions import DiagGaussianDistribution
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.common.utils import LinearSchedule, explained_variance
    from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecMonitor
except ModuleNotFoundError as error:  # pragma: no cover - depends on the installed extras
    if error.name != "stable_baselines3":
        raise
    raise ImportError("agents.sb3 needs stable-baselines3: pip install -c constraints.txt -e '.[sb3]'") from error

from agents.config import DEFAULT_REG_COEF
from agents.ppo import PPOConfig
from envs.core import Scenario, check_choice, check_positive_int, check_real, config_from_kwargs, make_generator
from envs.vector import TorchVectorEnv
from regularizers import REGULARIZERS, RegularizerSettings, make_regularizer

PRE_SQUASH_BOUND = 20.0


def pre_squash_space(action_dim: int) -> spaces.Box:
    """The action space SB3 sees on a ``SharedPolicyVecEnv``: pre-squash actions in ``[-20, 20]^A``."""
    return spaces.Box(-PRE_SQUASH_BOUND, PRE_SQUASH_BOUND, shape=(action_dim,), dtype=np.float32)


# ----- environments --------------------------------------------------------------------------------


class SharedPolicyVecEnv(VecEnv):
    """``num_envs`` batched environments of a scenario, each agent an SB3 environment (see module doc).

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
        self._recording: list[tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]] | None = None

    def squash(self, pre_actions: torch.Tensor) -> torch.Tensor:
        """Environment actions ``low + (high - low) * sigmoid(u)``."""
        low, high = self.scenario.action_low, self.scenario.action_high
        return low + (high - low) * torch.sigmoid(pre_actions)

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

    def stop_recording(self) -> dict[str, torch.Tensor]:
        """The recorded steps as a batch of ``T * B`` joint transitions: ``obs``, ``actions`` and the
        scenario state under ``state/<key>`` (the layout the regularizers read)."""
        steps, self._recording = self._recording or [], None
        if not steps:
            return {}
        states, obs, actions = zip(*steps)
        batch = {"obs": torch.stack(obs).flatten(0, 1), "actions": torch.stack(actions).flatten(0, 1)}
        for key in states[0]:
            batch[f"state/{key}"] = torch.stack([state[key] for state in states]).flatten(0, 1)
        return batch

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


# ----- policies -------------------------------------------------------------------------------------


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


class RichProgressCallback(BaseCallback):
    """A rich progress bar (on stderr) of the agent-steps of one ``learn`` call; SB3's own
    ``progress_bar=True`` needs tqdm.

    ``model.learn(steps, callback=RichProgressCallback("seed 0"))``; the bar counts ``num_timesteps`` (every
    agent of every environment is one SB3 step with ``make_sb3_env``) up to the target rounded up to whole
    rollouts, as on-policy SB3 learns, and shows the mean episode return of the last 100 episodes
    (``VecMonitor``).
    """

    def __init__(self, description: str = "training") -> None:
        super().__init__()
        self.description = description
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), TextColumn("{task.fields[status]}"), console=Console(stderr=True))
        self.task = None

    def _on_training_start(self) -> None:
        start, target = self.model.num_timesteps, self.locals["total_timesteps"]
        rollout = getattr(self.model, "n_steps", 1) * self.training_env.num_envs
        total = start + math.ceil(max(target - start, 0) / rollout) * rollout
        self.bar.start()
        self.task = self.bar.add_task(self.description, total=total, completed=start, status="")

    def _on_step(self) -> bool:
        self.bar.update(self.task, completed=self.model.num_timesteps)
        return True

    def _on_rollout_end(self) -> None:
        returns = [info["r"] for info in self.model.ep_info_buffer]
        if returns:
            self.bar.update(self.task, status=f"return {np.mean(returns):+.3f}")

    def _on_training_end(self) -> None:
        self.bar.update(self.task, completed=self.model.num_timesteps)
        self.bar.stop()


class SB3Policy(nn.Module):
    """An SB3 Gaussian actor-critic policy as a multi-agent policy on ``(B, N, D)`` observations.

    :param policy: an SB3 ``ActorCriticPolicy`` or a model holding one (``PPO``, ``RegularizedPPO``...).
    :param scenario: the scenario it acts in.

    The view is read from the policy's spaces: observations ``(D,)`` mean one policy shared by the
    agents (``SharedPolicyVecEnv``, SuperSuit), ``(N * D,)`` the Gymnasium joint-control view. The
    action map is what the environment receives from the Gaussian's mean: squashed into the scenario's
    box when the policy's action space is ``pre_squash_space`` (``SharedPolicyVecEnv``), else clipped to
    the action space as SB3 does. Observations go in and actions come out on the observations' device,
    whatever the SB3 policy's device; they must be what the policy was trained on, the scenario's own (a
    model trained under ``VecNormalize`` would need its normalisation here too). Jacobian penalties need
    the shared view (agent i's action depends on its own observation only).
    """

    def __init__(self, policy, scenario: Scenario) -> None:
        super().__init__()
        policy = getattr(policy, "policy", policy)
        if not isinstance(policy, ActorCriticPolicy) or not isinstance(policy.action_dist, DiagGaussianDistribution):
            raise ValueError(f"SB3Policy needs an SB3 ActorCriticPolicy with a Gaussian (non-gSDE) action "
                             f"distribution on a Box, got {type(policy).__name__}")
        self.policy = policy
        n, d, a = scenario.n_agents, scenario.obs_dim, scenario.action_dim
        obs_shape, action_shape = policy.observation_space.shape, policy.action_space.shape
        if obs_shape == (d,) and action_shape == (a,):
            self.joint = False
        elif obs_shape == (n * d,) and action_shape == (n * a,):
            self.joint = True
        else:
            raise ValueError(f"the SB3 policy's spaces (observations {obs_shape}, actions {action_shape}) fit "
                             f"neither the shared view ({(d,)}, {(a,)}) nor the joint view ({(n * d,)}, "
                             f"{(n * a,)}) of {scenario.name} with {n} agents")
        self.n_agents, self.obs_dim = n, d
        space = policy.action_space
        self.squashed = not self.joint and space == pre_squash_space(a)
        if self.squashed:
            low, high = scenario.action_low, scenario.action_high
        else:
            low, high = torch.as_tensor(space.low), torch.as_tensor(space.high)
        self.action_low = low.detach().clone().float()  # on the observations' device (see deterministic_action)
        self.action_high = high.detach().clone().float()

    @property
    def log_std(self) -> torch.Tensor:
        return self.policy.log_std

    def _inputs(self, obs: torch.Tensor) -> torch.Tensor:
        """Observations as the SB3 network's rows, on its device and in its dtype."""
        width = self.n_agents * self.obs_dim if self.joint else self.obs_dim
        return obs.reshape(-1, width).to(self.policy.device, self.policy.log_std.dtype)

    def action_mean(self, obs: torch.Tensor) -> torch.Tensor:
        """The Gaussian's mean, ``(B, N, A)`` (the pre-squash action when ``squashed``)."""
        policy = self.policy
        # SB3's preprocessing of a flat Box observation is a cast to float32; skipping it keeps the
        # policy's dtype (float64 policies in the tests).
        features = policy.pi_features_extractor(self._inputs(obs))
        mean = policy.action_net(policy.mlp_extractor.forward_actor(features))
        return mean.to(obs.device).reshape(*obs.shape[:-1], -1)

    def deterministic_action(self, obs: torch.Tensor) -> torch.Tensor:
        """The action the environment receives from the mean, ``(B, N, D) -> (B, N, A)``."""
        mean = self.action_mean(obs)
        low, high = self.action_low.to(mean.device, mean.dtype), self.action_high.to(mean.device, mean.dtype)
        if self.squashed:
            return low + (high - low) * torch.sigmoid(mean)
        if self.joint:
            mean = mean.reshape(*obs.shape[:-2], -1)
            return torch.minimum(torch.maximum(mean, low), high).reshape(*obs.shape[:-1], -1)
        return torch.minimum(torch.maximum(mean, low), high)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """State values ``(B, N)`` (the joint critic's value repeated for every agent)."""
        policy = self.policy
        values = policy.value_net(policy.mlp_extractor.forward_critic(policy.vf_features_extractor(self._inputs(obs))))
        values = values.to(obs.device)
        if self.joint:
            return values.reshape(*obs.shape[:-2], 1).expand(*obs.shape[:-1])
        return values.reshape(*obs.shape[:-1])


# ----- PPO with the project's penalties -------------------------------------------------------------


def ppo_kwargs(cfg: PPOConfig, n_agents: int) -> dict[str, Any]:
    """SB3 ``PPO`` arguments equal to a native ``PPOConfig`` on ``SharedPolicyVecEnv(num_envs=cfg.num_envs)``.

    Same rollout length, minibatch count, epochs, learning rate (annealed linearly to 0), discount,
    GAE, clip ranges, loss weights (SB3's value loss has no factor 1/2, so ``vf_coef`` is halved),
    gradient clip, tanh MLP sizes and initial log-std. What differs is SB3's own: one network shared
    by the agents without an agent id, no observation normalisation, a value loss on the clipped value
    only (the native learner takes the max with the unclipped one).
    """
    batch = cfg.rollout_steps * cfg.num_envs * n_agents
    hidden = list(cfg.hidden)
    return {
        "n_steps": cfg.rollout_steps,
        "batch_size": max(batch // cfg.num_minibatches, 2),
        "n_epochs": cfg.update_epochs,
        "learning_rate": LinearSchedule(cfg.learning_rate, 0.0, 1.0) if cfg.anneal_lr else cfg.learning_rate,
        "gamma": cfg.gamma,
        "gae_lambda": cfg.gae_lambda,
        "clip_range": cfg.clip_coef,
        "clip_range_vf": cfg.clip_coef if cfg.clip_value_loss else None,
        "ent_coef": cfg.ent_coef,
        "vf_coef": cfg.vf_coef / 2,
        "max_grad_norm": cfg.max_grad_norm,
        "normalize_advantage": cfg.normalise_advantages,
        "policy_kwargs": {"net_arch": {"pi": hidden, "vf": hidden}, "activation_fn": nn.Tanh,
                          "log_std_init": cfg.init_log_std},
    }


REGULARIZER_ARGS = ("regularizer", "reg_coef", "reg_settings")


def checked_regularizer_args(**args: Any) -> dict[str, Any]:
    """``RegularizedPPO``'s own arguments (any of ``REGULARIZER_ARGS``) checked, ``reg_settings`` as a dict."""
    checked = {}
    if "regularizer" in args:
        regularizer = args["regularizer"]
        checked["regularizer"] = None if regularizer is None else check_choice("regularizer", regularizer,
                                                                               tuple(REGULARIZERS))
    if "reg_coef" in args:
        checked["reg_coef"] = check_real("reg_coef", args["reg_coef"], 0.0)
    if "reg_settings" in args:
        settings = args["reg_settings"]
        if isinstance(settings, RegularizerSettings):
            settings = dataclasses.asdict(settings)
        if settings is not None and not isinstance(settings, dict):
            raise ValueError(f"reg_settings must be a dict or RegularizerSettings, got {settings!r}")
        config_from_kwargs(RegularizerSettings, settings or {})  # refuses unknown keys and bad values
        checked["reg_settings"] = dict(settings or {})
    return checked


class RegularizedPPO(PPO):
    """SB3 PPO whose loss adds a project penalty: ``loss = L_PPO + reg_coef * penalty(SB3Policy, batch)``.

    :param policy: SB3 policy (``"MlpPolicy"``).
    :param env: a ``SharedPolicyVecEnv`` (``make_sb3_env``), possibly under ``VecMonitor``; the penalties
        need the scenario state of every step, which it records during the rollout, and its own
        observations (wrappers that change them, such as ``VecNormalize``, are refused).
    :param regularizer: one of ``regularizers.REGULARIZERS`` (``aajr``, ``jacobian``, ``spectral``,
        ``smooth``), or None for SB3's plain PPO loss.
    :param reg_coef: lambda; the penalty is computed and logged (``train/penalty``, ``reg/...``) even at 0.
    :param reg_settings: ``RegularizerSettings`` fields (eps, steps, norm, budget, power_iterations).
    :param kwargs: SB3 ``PPO`` arguments.

    ``L_PPO`` is SB3's PPO loss, computed as ``PPO.train`` computes it (with ``reg_coef=0`` and the same
    seed this class trains bit for bit as SB3's ``PPO``; ``regularizer=None`` runs ``PPO.train``
    itself). For each SB3 minibatch of agent samples the penalty is evaluated on
    ``max(1, batch_size // N)`` joint transitions (all N agents of an environment at one step) drawn
    without replacement from the rollout, by a generator seeded from ``seed`` (saved with the model, so
    that training resumes its draws).
    """

    def __init__(self, policy, env, regularizer: str | None = "aajr", reg_coef: float = DEFAULT_REG_COEF,
                 reg_settings: dict[str, Any] | RegularizerSettings | None = None, _init_setup_model: bool = True,
                 **kwargs: Any) -> None:
        checked = checked_regularizer_args(regularizer=regularizer, reg_coef=reg_coef, reg_settings=reg_settings)
        self.regularizer = checked["regularizer"]
        self.reg_coef = checked["reg_coef"]
        self.reg_settings = checked["reg_settings"]
        self.penalty_generator_state: list[int] | None = None  # saved with the model (see save)
        super().__init__(policy, env, _init_setup_model=False, **kwargs)
        if _init_setup_model:  # refuses an environment without joint transitions
            self._setup_model()

    def _setup_model(self) -> None:
        super()._setup_model()
        device = "cpu"
        if self.regularizer is not None and self.env is not None:
            device = shared_env(self.env).scenario.device
        seed = self.seed if self.seed is not None else int(np.random.randint(2 ** 31))
        self.penalty_generator = make_generator(seed + 5, device)
        if self.penalty_generator_state is not None:  # a loaded model goes on with its draws
            try:
                self.penalty_generator.set_state(torch.tensor(self.penalty_generator_state, dtype=torch.uint8))
            except RuntimeError:
                warnings.warn(f"the saved penalty generator state does not fit a generator on {device}; "
                              f"it starts again from seed {seed} + 5")
        self._penalty_fn = None
        self._joint_rollout: dict[str, torch.Tensor] = {}

    @classmethod
    def load(cls, path, env=None, device="auto", custom_objects=None, print_system_info=False, force_reset=True,
             **kwargs: Any) -> "RegularizedPPO":
        """SB3's ``load``; ``regularizer``, ``reg_coef`` or ``reg_settings`` passed as keyword arguments
        replace the saved ones after the constructor's checks."""
        kwargs.update(checked_regularizer_args(**{key: kwargs.pop(key) for key in REGULARIZER_ARGS if key in kwargs}))
        return super().load(path, env=env, device=device, custom_objects=custom_objects,
                            print_system_info=print_system_info, force_reset=force_reset, **kwargs)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "penalty_generator", "_penalty_fn", "_joint_rollout"]

    def save(self, path, exclude=None, include=None) -> None:
        """SB3's ``save``, with the penalty generator's state (so that training resumes its draws)."""
        self.penalty_generator_state = self.penalty_generator.get_state().tolist()
        super().save(path, exclude, include)

    def set_env(self, env, force_reset: bool = True) -> None:
        if self.regularizer is not None:
            shared_env(env)  # refused before anything changes
        super().set_env(env, force_reset)
        self._penalty_fn = None  # built again for the new environment's scenario

    def penalty(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """The penalty of the policy on a batch of joint transitions (``obs``, ``actions``, ``state/<key>``)."""
        if self.regularizer is None:
            raise ValueError("this model has no regularizer (regularizer=None)")
        if self._penalty_fn is None:
            scenario = shared_env(self.env).scenario
            self._penalty_fn = (make_regularizer(self.regularizer, scenario, RegularizerSettings(**self.reg_settings)),
                                SB3Policy(self.policy, scenario))
        penalty_fn, view = self._penalty_fn
        return penalty_fn(view, batch, self.penalty_generator)

    def collect_rollouts(self, env, callback, rollout_buffer, n_rollout_steps: int) -> bool:
        if self.regularizer is None:
            return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)
        recorder = shared_env(env)
        recorder.start_recording()
        try:
            return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)
        finally:
            self._joint_rollout = recorder.stop_recording()

    def _joint_minibatch(self) -> dict[str, torch.Tensor]:
        size = next(iter(self._joint_rollout.values())).shape[0]
        count = min(size, max(1, self.batch_size // shared_env(self.env).n_agents))
        generator = self.penalty_generator
        index = torch.randperm(size, generator=generator, device=generator.device)[:count]
        return {key: value[index] for key, value in self._joint_rollout.items()}

    def _ppo_loss(self, data, clip_range: float, clip_range_vf: float | None):
        """SB3's PPO loss of a minibatch (as ``PPO.train`` computes it) and its statistics."""
        values, log_prob, entropy = self.policy.evaluate_actions(data.observations, data.actions)
        values = values.flatten()
        advantages = data.advantages
        if self.normalize_advantage and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        ratio = torch.exp(log_prob - data.old_log_prob)
        surrogate = torch.min(advantages * ratio, advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range))
        policy_loss = -surrogate.mean()
        if clip_range_vf is not None:
            values = data.old_values + torch.clamp(values - data.old_values, -clip_range_vf, clip_range_vf)
        value_loss = nn.functional.mse_loss(data.returns, values)
        entropy_loss = -torch.mean(-log_prob) if entropy is None else -torch.mean(entropy)
        loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
        with torch.no_grad():
            log_ratio = log_prob - data.old_log_prob
            stats = {"policy_gradient_loss": policy_loss.item(), "value_loss": value_loss.item(),
                     "entropy_loss": entropy_loss.item(),
                     "clip_fraction": torch.mean((torch.abs(ratio - 1) > clip_range).float()).item(),
                     "approx_kl": torch.mean((torch.exp(log_ratio) - 1) - log_ratio).cpu().numpy()}
        return loss, stats

    def train(self) -> None:
        """PPO epochs over the rollout buffer with ``loss = L_PPO + reg_coef * penalty`` (SB3's own
        ``PPO.train`` without a regularizer)."""
        if self.regularizer is None:
            return super().train()
        if not self._joint_rollout:
            raise RuntimeError("no joint transitions recorded: train() runs after collect_rollouts() (use learn())")
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)
        clip_range_vf = None if self.clip_range_vf is None else self.clip_range_vf(self._current_progress_remaining)
        logs: dict[str, list[float]] = {}
        stop = False
        for epoch in range(self.n_epochs):
            kls = []
            for data in self.rollout_buffer.get(self.batch_size):
                loss, stats = self._ppo_loss(data, clip_range, clip_range_vf)
                kls.append(stats.pop("approx_kl"))
                for key, value in stats.items():
                    logs.setdefault(key, []).append(value)
                if self.target_kl is not None and kls[-1] > 1.5 * self.target_kl:
                    stop = True
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {kls[-1]:.2f}")
                    break
                penalty, diagnostics = self.penalty(self._joint_minibatch())
                loss = loss + self.reg_coef * penalty
                for key, value in {"penalty": penalty.item(), **diagnostics}.items():
                    logs.setdefault(key, []).append(value)
                self.policy.optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()
            self._n_updates += 1
            if stop:
                break
        for key, values in logs.items():
            self.logger.record(key if key.startswith("reg/") else f"train/{key}", float(np.mean(values)))
        self.logger.record("train/approx_kl", float(np.mean(kls)))
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_variance(self.rollout_buffer.values.flatten(),
                                                                          self.rollout_buffer.returns.flatten()))
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", torch.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)
