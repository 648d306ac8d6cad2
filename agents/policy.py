"""Multi-agent actor-critic: per-agent squashed-Gaussian policies and value functions.

Shapes: observations ``(B, N, D)`` in *raw* environment units (the observation normaliser is part of
the policy, so shocks and Jacobian penalties act on what the environment emits), actions ``(B, N, A)``.

Actions are bounded boxes ``[low, high]``: the policy samples a pre-squash action
``u ~ Normal(mu(s), sigma)`` and the environment receives ``low + (high - low) * sigmoid(u)``. PPO's
probability ratio is taken on ``u`` (the squashing Jacobian cancels in the ratio). The
**deterministic action map** ``deterministic_action(s) = low + (high - low) * sigmoid(mu(s))`` is the
action the environment receives from the mean; it is what shocks and Jacobian penalties differentiate.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Normal

from agents.networks import StackedMLP
from envs.core import randn


def squash(pre_actions: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Environment actions ``low + (high - low) * sigmoid(u)`` of pre-squash actions ``u`` ``(..., A)``."""
    return low + (high - low) * torch.sigmoid(pre_actions)


class RunningNorm(nn.Module):
    """Running mean/variance of observations per agent and feature (Chan et al. parallel update).

    ``normalise(x) = clip((x - mean) / sqrt(var + 1e-8), -clip, clip)``; the statistics are buffers,
    saved with the policy, and only change through ``update``.
    """

    def __init__(self, shape: tuple[int, ...], clip: float = 10.0) -> None:
        super().__init__()
        self.clip = clip
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("var", torch.ones(shape))
        self.register_buffer("count", torch.tensor(1e-4))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold a batch ``(..., *shape)`` into the statistics."""
        batch = x.reshape(-1, *self.mean.shape).to(self.mean.dtype)
        batch_mean, batch_var, n = batch.mean(0), batch.var(0, unbiased=False), batch.shape[0]
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean += delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta ** 2 * self.count * n / total) / total
        self.count = total

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / torch.sqrt(self.var + 1e-8)).clamp(-self.clip, self.clip)


def make_policy(scenario, cfg) -> "MultiAgentActorCritic":
    """The actor-critic that ``cfg`` (an ``agents.ppo.PPOConfig``) describes for a scenario's agents,
    observations and action box, on the scenario's device (initialised from torch's global generator)."""
    return MultiAgentActorCritic(
        scenario.n_agents, scenario.obs_dim, scenario.action_low.float().cpu(), scenario.action_high.float().cpu(),
        hidden=tuple(cfg.hidden), share_parameters=cfg.share_parameters, centralised_critic=cfg.centralised_critic,
        init_log_std=cfg.init_log_std, normalise_obs=cfg.normalise_obs).to(scenario.device)


class MultiAgentActorCritic(nn.Module):
    """Policies and critics of N agents, evaluated as one batched call.

    :param n_agents: N.
    :param obs_dim: D, features per agent.
    :param action_low: ``(A,)`` lower bound of each agent's action box.
    :param action_high: ``(A,)`` upper bound.
    :param hidden: hidden sizes of actor and critic MLPs.
    :param share_parameters: one actor and one critic for all agents (agent id appended).
    :param centralised_critic: MAPPO critic on all agents' observations; IPPO (own observation) if False.
    :param init_log_std: initial log standard deviation of the pre-squash Gaussian.
    :param normalise_obs: normalise observations with running statistics.
    """

    def __init__(self, n_agents: int, obs_dim: int, action_low: torch.Tensor, action_high: torch.Tensor,
                 hidden: tuple[int, ...] = (64, 64), share_parameters: bool = False,
                 centralised_critic: bool = False, init_log_std: float = -0.5, normalise_obs: bool = True) -> None:
        super().__init__()
        action_dim = action_low.shape[-1]
        self.n_agents, self.obs_dim, self.action_dim = n_agents, obs_dim, action_dim
        self.centralised_critic = centralised_critic
        self.normalise_obs = normalise_obs
        self.obs_norm = RunningNorm((n_agents, obs_dim))
        self.actor = StackedMLP(n_agents, obs_dim, hidden, action_dim, share_parameters, out_gain=0.01)
        critic_in = obs_dim * n_agents if centralised_critic else obs_dim
        self.critic = StackedMLP(n_agents, critic_in, hidden, 1, share_parameters, out_gain=1.0)
        self.log_std = nn.Parameter(torch.full((1 if share_parameters else n_agents, action_dim), init_log_std))
        self.register_buffer("action_low", action_low.detach().clone().float())
        self.register_buffer("action_high", action_high.detach().clone().float())

    def normalise(self, obs: torch.Tensor) -> torch.Tensor:
        return self.obs_norm(obs) if self.normalise_obs else obs

    def action_mean(self, obs: torch.Tensor) -> torch.Tensor:
        """Pre-squash mean ``mu(s)`` ``(B, N, A)``."""
        return self.actor(self.normalise(obs))

    def squash(self, pre_action: torch.Tensor) -> torch.Tensor:
        """Environment action ``low + (high - low) * sigmoid(u)``."""
        return squash(pre_action, self.action_low, self.action_high)

    def deterministic_action(self, obs: torch.Tensor) -> torch.Tensor:
        """The action map the environment receives from the mean, ``(B, N, D) -> (B, N, A)``."""
        return self.squash(self.action_mean(obs))

    def distribution(self, obs: torch.Tensor) -> Normal:
        mean = self.action_mean(obs)
        return Normal(mean, self.log_std.exp().expand_as(mean))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """State values ``(B, N)``."""
        features = self.normalise(obs)
        if self.centralised_critic:
            joint = features.flatten(-2)
            features = joint.unsqueeze(-2).expand(*joint.shape[:-1], self.n_agents, joint.shape[-1])
        return self.critic(features).squeeze(-1)

    def evaluate(self, obs: torch.Tensor, pre_actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probabilities ``(B, N)`` of the pre-squash actions, entropies ``(B, N)``, values ``(B, N)``."""
        dist = self.distribution(obs)
        return dist.log_prob(pre_actions).sum(-1), dist.entropy().sum(-1), self.value(obs)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample: pre-squash actions, environment actions, log-probabilities, values (``generator``: a
        ``torch.Generator``, or ``envs.core.MemberGenerators`` for a population's rows)."""
        dist = self.distribution(obs)
        noise = randn(dist.loc.shape, generator, device=dist.loc.device, dtype=dist.loc.dtype)
        pre_actions = dist.loc + dist.scale * noise
        return pre_actions, self.squash(pre_actions), dist.log_prob(pre_actions).sum(-1), self.value(obs)
