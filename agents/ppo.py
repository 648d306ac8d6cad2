"""PPO for N agents: hyper-parameters and the loss as pure functions on tensors.

The learner loop is ``agents.learner.PPOLearner``; its update reads in one screen: GAE, clipped surrogate, (clipped) value loss,
entropy bonus, the regularizer term ``reg_coef * penalty(policy, batch)``, gradient clipping, Adam.
The statistics carry CleanRL's TensorBoard names (``losses/policy_loss``, ``losses/value_loss``,
``losses/entropy``, ``losses/approx_kl``, ``losses/clipfrac``, ``losses/explained_variance``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import torch

from agents.policy import MultiAgentActorCritic
from envs.batch import Batch, member_mean
from envs.core import check_positive_int, check_real


@dataclasses.dataclass
class PPOConfig:
    """PPO hyper-parameters (CleanRL's continuous-action defaults where they apply).

    :param num_envs: environments B simulated in one batch.
    :param rollout_steps: steps per environment between updates.
    :param learning_rate: Adam step size (linearly annealed to 0 when ``anneal_lr``).
    :param anneal_lr: anneal the learning rate linearly to 0 over the run.
    :param gamma: discount factor.
    :param gae_lambda: GAE lambda.
    :param update_epochs: passes over each rollout.
    :param num_minibatches: minibatches per pass (split over environments x steps).
    :param clip_coef: PPO ratio clip.
    :param clip_value_loss: clip the value loss around the old values.
    :param ent_coef: entropy bonus weight.
    :param vf_coef: value loss weight.
    :param max_grad_norm: global gradient-norm clip.
    :param hidden: hidden sizes of actor and critic.
    :param share_parameters: one network for all agents.
    :param centralised_critic: MAPPO critic (all observations) instead of IPPO.
    :param init_log_std: initial policy log-std (pre-squash).
    :param normalise_obs: running observation normalisation inside the policy.
    :param normalise_advantages: normalise advantages per minibatch.
    :param reward_scale: rewards are multiplied by this before learning.

    ``validate()`` checks every field (the run config and ``PPOLearner`` call it before anything is built).
    """

    num_envs: int = 64
    rollout_steps: int = 50
    learning_rate: float = 3e-4
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    update_epochs: int = 10
    num_minibatches: int = 4
    clip_coef: float = 0.2
    clip_value_loss: bool = True
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden: tuple[int, ...] = (64, 64)
    share_parameters: bool = False
    centralised_critic: bool = False
    init_log_std: float = -0.5
    normalise_obs: bool = True
    normalise_advantages: bool = True
    reward_scale: float = 1.0

    def validate(self) -> None:
        """Raise a one-line ValueError naming the first bad field, its value and what is allowed."""
        for name in ("num_envs", "rollout_steps", "update_epochs", "num_minibatches"):
            check_positive_int(name, getattr(self, name))
        for name in ("learning_rate", "clip_coef", "max_grad_norm", "reward_scale"):
            check_real(name, getattr(self, name), 0.0, low_open=True)
        for name in ("gamma", "gae_lambda"):
            check_real(name, getattr(self, name), 0.0, 1.0)
        for name in ("ent_coef", "vf_coef"):
            check_real(name, getattr(self, name), 0.0)
        if isinstance(self.init_log_std, bool) or not isinstance(self.init_log_std, numbers.Real) or not math.isfinite(
                self.init_log_std):
            raise ValueError(f"init_log_std must be a finite real number, got {self.init_log_std!r}")
        for name in ("anneal_lr", "clip_value_loss", "share_parameters", "centralised_critic", "normalise_obs",
                     "normalise_advantages"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.hidden, (tuple, list)):
            raise ValueError(f"hidden must be a list of positive integers, got {self.hidden!r}")
        for i, size in enumerate(self.hidden):
            check_positive_int(f"hidden[{i}]", size)
        rows = self.num_envs * self.rollout_steps
        if rows // self.num_minibatches < 2:  # one-row minibatches: the advantages' std is NaN
            raise ValueError(f"num_minibatches must be at most num_envs x rollout_steps / 2 = {rows // 2} "
                             f"(minibatches of at least 2 rows), got {self.num_minibatches}")


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, dones: torch.Tensor,
                gamma: float, gae_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over a rollout of T steps.

    ``rewards``, ``values``, ``next_values``: ``(T, B, N)``; ``dones``: ``(T, B)``, the episode ended
    (by truncation) after step t. ``next_values[t]`` is the value of the observation that followed
    step t (of the final observation when the episode was truncated, so truncation bootstraps):

        delta_t = r_t + gamma V(s'_t) - V(s_t),   A_t = delta_t + gamma lambda (1 - done_t) A_{t+1}

    Returns advantages and returns ``A + V``, both ``(T, B, N)``.
    """
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    continues = (1.0 - dones.to(rewards.dtype)).unsqueeze(-1)
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * next_values[t] - values[t]
        running = delta + gamma * gae_lambda * continues[t] * running
        advantages[t] = running
    return advantages, advantages + values


def clipped_surrogate(log_ratio: torch.Tensor, advantages: torch.Tensor, clip_coef: float,
                      members: int = 1) -> torch.Tensor:
    """PPO's clipped objective as a loss: ``mean(max(-A r, -A clip(r, 1 - c, 1 + c)))`` (per member
    of a population: ``envs.batch.member_mean``)."""
    ratio = log_ratio.exp()
    return member_mean(torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef)), members)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               clip_coef: float | None, members: int = 1) -> torch.Tensor:
    """``0.5 * mean((V - R)^2)``, or with ``clip_coef`` the max with the clipped-around-old version."""
    unclipped = (values - returns) ** 2
    if clip_coef is None:
        return 0.5 * member_mean(unclipped, members)
    clipped = (old_values + (values - old_values).clamp(-clip_coef, clip_coef) - returns) ** 2
    return 0.5 * member_mean(torch.max(unclipped, clipped), members)


def normalise_advantages(advantages: torch.Tensor, members: int = 1) -> torch.Tensor:
    """Advantages ``(M, N)`` standardised per agent over the minibatch (per member of a population)."""
    if members == 1:
        return (advantages - advantages.mean(0)) / (advantages.std(0) + 1e-8)
    blocks = advantages.reshape(members, -1, *advantages.shape[1:])
    return ((blocks - blocks.mean(1, keepdim=True)) / (blocks.std(1, keepdim=True) + 1e-8)).reshape(advantages.shape)


def ppo_loss(policy: MultiAgentActorCritic, batch: Batch, cfg: PPOConfig,
             members: int = 1) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO loss of a minibatch (every agent's terms averaged) and its statistics.

    ``batch``: ``obs`` ``(M, N, D)``, ``pre_actions`` ``(M, N, A)``, ``log_probs``, ``advantages``,
    ``returns``, ``values`` ``(M, N)``. With ``members`` = P > 1 the rows are P runs' minibatches
    (member-major, ``agents.population``): the loss and every statistic are ``(P,)``, one per member.
    """
    new_log_probs, entropy, new_values = policy.evaluate(batch.obs, batch.pre_actions)
    log_ratio = new_log_probs - batch.log_probs
    advantages = batch.advantages
    if cfg.normalise_advantages:
        advantages = normalise_advantages(advantages, members)
    policy_loss = clipped_surrogate(log_ratio, advantages, cfg.clip_coef, members)
    v_loss = value_loss(new_values, batch.values, batch.returns, cfg.clip_coef if cfg.clip_value_loss else None,
                        members)
    entropy_mean = member_mean(entropy, members)
    loss = policy_loss + cfg.vf_coef * v_loss - cfg.ent_coef * entropy_mean
    with torch.no_grad():
        stats = {
            "losses/policy_loss": policy_loss,
            "losses/value_loss": v_loss,
            "losses/entropy": entropy_mean,
            "losses/approx_kl": member_mean((log_ratio.exp() - 1) - log_ratio, members),
            "losses/clipfrac": member_mean(((log_ratio.exp() - 1).abs() > cfg.clip_coef).float(), members),
        }
    return loss, stats


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """``1 - Var[returns - values] / Var[returns]`` over every element (CleanRL's and SB3's diagnostic of
    the critic: 1 is a perfect fit, 0 no better than a constant, negative worse); NaN when the returns
    do not vary. ``values``, ``returns``: the rollout's ``(M, N)`` critic values and GAE returns."""
    values, returns = values.detach().double().flatten(), returns.detach().double().flatten()
    variance = returns.var(unbiased=False)
    if variance == 0:
        return math.nan
    return float(1.0 - (returns - values).var(unbiased=False) / variance)
