"""SB3's PPO with the project's penalties in its loss, and SB3 PPO arguments from a native ``PPOConfig``
(``agents.sb3``)."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.utils import LinearSchedule, explained_variance
from torch import nn

from agents.config import DEFAULT_REG_COEF
from agents.ppo import PPOConfig
from agents.sb3.envs import shared_env
from agents.sb3.policy import SB3Policy
from envs.batch import Batch
from envs.core import check_choice, check_positive_int, check_real, config_from_kwargs, make_generator
from regularizers import METHODS, make_regularizer, regularizer_names


def ppo_kwargs(cfg: PPOConfig, n_agents: int) -> dict[str, Any]:
    """SB3 ``PPO`` arguments equal to a native ``PPOConfig`` on ``SharedPolicyVecEnv(num_envs=cfg.num_envs)``.

    Same rollout length, minibatch count, epochs, learning rate (annealed linearly to 0), discount,
    GAE, clip ranges, loss weights (SB3's value loss has no factor 1/2, so ``vf_coef`` is halved),
    gradient clip, tanh MLP sizes and initial log-std. What differs is SB3's own: one network shared
    by the agents without an agent id, no observation normalisation, a value loss on the clipped value
    only (the native learner takes the max with the unclipped one). A bad field of ``cfg`` or a
    non-positive ``n_agents`` is a one-line ValueError.
    """
    cfg.validate()
    check_positive_int("n_agents", n_agents)
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


def checked_regularizer_args(regularizer: str | None, reg_coef: float,
                             reg_settings: Any = None) -> tuple[str | None, float, dict[str, Any]]:
    """``RegularizedPPO``'s own arguments checked: ``regularizer`` one of ``regularizers.regularizer_names()``
    or None, ``reg_coef >= 0``, and ``reg_settings`` (a dict, the method's settings dataclass, or None for
    its defaults) fields of ``METHODS[regularizer].settings``, returned as a dict (what the model saves)."""
    if regularizer is not None:
        check_choice("regularizer", regularizer, regularizer_names())
    reg_coef = check_real("reg_coef", reg_coef, 0.0)
    if regularizer is None:
        if reg_settings:
            raise ValueError(f"regularizer=None takes no reg_settings, got {reg_settings!r}")
        return None, reg_coef, {}
    settings_class = METHODS[regularizer].settings
    if isinstance(reg_settings, settings_class):
        reg_settings = dataclasses.asdict(reg_settings)
    if reg_settings is not None and not isinstance(reg_settings, dict):
        raise ValueError(f"reg_settings of {regularizer!r} must be a dict of {settings_class.__name__} fields or a "
                         f"{settings_class.__name__}, got {reg_settings!r}")
    config_from_kwargs(settings_class, reg_settings or {})  # refuses unknown keys and bad values
    return regularizer, reg_coef, dict(reg_settings or {})


class RegularizedPPO(PPO):
    """SB3 PPO whose loss adds a project penalty: ``loss = L_PPO + reg_coef * penalty(SB3Policy, batch)``.

    :param policy: SB3 policy (``"MlpPolicy"``).
    :param env: a ``SharedPolicyVecEnv`` (``make_sb3_env``), possibly under ``VecMonitor``; the penalties
        need the scenario state of every step, which it records during the rollout, and its own
        observations (wrappers that change them, such as ``VecNormalize``, are refused).
    :param regularizer: one of ``regularizers.regularizer_names()`` (``aajr``, ``jacobian``, ``spectral``,
        ``smooth``), or None for SB3's plain PPO loss.
    :param reg_coef: lambda; the penalty is computed and logged (``train/penalty``, ``reg/...``) even at 0.
    :param reg_settings: fields of the regularizer's settings (``regularizers.METHODS[regularizer].settings``;
        the others keep their defaults), as a dict or that dataclass: ``eps``, ``steps``, ``norm``, ``budget``
        for ``aajr`` and ``smooth`` (``PGASettings``), ``directions``, ``budget`` for ``jacobian``
        (``JacobianSettings``), ``power_iterations``, ``budget`` for ``spectral`` (``SpectralSettings``); none
        without a regularizer. Kept as a dict (``reg_settings``, saved with the model).
    :param kwargs: SB3 ``PPO`` arguments.

    ``L_PPO`` is SB3's PPO loss, computed as ``PPO.train`` computes it (with ``reg_coef=0`` and the same
    seed this class trains bit for bit as SB3's ``PPO``; ``regularizer=None`` runs ``PPO.train``
    itself). For each SB3 minibatch of agent samples the penalty is evaluated on
    ``max(1, batch_size // N)`` joint transitions (all N agents of an environment at one step) drawn
    without replacement from the rollout, by a generator seeded from ``seed`` (saved with the model, so
    that training resumes its draws).

    ``RegularizedPPO.load(path, env, regularizer=..., reg_coef=..., reg_settings=...)``: the keyword
    arguments replace the saved values and the result is checked as the constructor's arguments are (a
    new regularizer takes the saved settings only if they are fields of its own settings).
    """

    def __init__(self, policy, env, regularizer: str | None = "aajr", reg_coef: float = DEFAULT_REG_COEF,
                 reg_settings: Any = None, _init_setup_model: bool = True, **kwargs: Any) -> None:
        self.regularizer, self.reg_coef, self.reg_settings = regularizer, reg_coef, reg_settings
        self.penalty_generator_state: list[int] | None = None  # saved with the model (see save)
        super().__init__(policy, env, _init_setup_model=False, **kwargs)
        if _init_setup_model:  # refuses bad arguments and an environment without joint transitions
            self._setup_model()

    def _setup_model(self) -> None:
        # Where the constructor and SB3's load (saved values, then load's keyword arguments) meet.
        self.regularizer, self.reg_coef, self.reg_settings = checked_regularizer_args(
            self.regularizer, self.reg_coef, self.reg_settings)
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
        self._joint_rollout: Batch | None = None  # the last rollout's joint transitions

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

    def penalty(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The penalty of the policy on joint transitions (``obs``, ``actions`` and ``state`` of ``batch``)."""
        if self.regularizer is None:
            raise ValueError("this model has no regularizer (regularizer=None)")
        if self._penalty_fn is None:
            scenario = shared_env(self.env).scenario
            settings = METHODS[self.regularizer].settings(**self.reg_settings)
            self._penalty_fn = (make_regularizer(self.regularizer, scenario, settings),
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

    def _joint_minibatch(self) -> Batch:
        size = len(self._joint_rollout)
        count = min(size, max(1, self.batch_size // shared_env(self.env).n_agents))
        generator = self.penalty_generator
        index = torch.randperm(size, generator=generator, device=generator.device)[:count]
        return self._joint_rollout[index]

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
        if self._joint_rollout is None:
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
