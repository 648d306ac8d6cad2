"""SB3 Gaussian actor-critic policies as multi-agent policies on ``(B, N, D)`` observations (``agents.sb3``)."""

from __future__ import annotations

import torch
from stable_baselines3.common.distributions import DiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

from agents.policy import squash
from agents.sb3.envs import pre_squash_space
from envs.core import Scenario


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
            return squash(mean, low, high)
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
