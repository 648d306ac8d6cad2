"""Population training: P independent runs of one scenario and method as one batched program.

The members differ in seed, ``reg_coef`` and the penalty's hinge budget; everything else of their run
configs is the same. Their networks are stacked along the leading dimension that already stacks the
agents (``agents.networks.stack_members``: P * N slices, or P with parameter sharing), their
environments are P blocks of one ``TorchVectorEnv`` (member-major rows), and every random draw is
made by the member's own generator for its block of rows (``envs.core.MemberGenerators``), so that
member p sees the numbers its single run would: the same initial weights, environment draws, action
noise, minibatch order and penalty directions. Losses, penalties and statistics are reduced per
member (``envs.batch.member_mean``), and the gradient of the sum of the members' losses with respect to
member p's parameters is member p's own gradient (the parameters are disjoint); clipping is per
member (``clip_member_grad_norms``) and Adam is element-wise, so it needs nothing more.

This module holds the tensor pieces (stacking, per-member clipping, per-member state dicts);
``agents.learner.PPOLearner`` trains a population when given a list of seeds, and
``agents.population_run`` writes each member's run directory as a single run writes it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributions import Normal

from agents.networks import member_slice, stack_members
from agents.policy import MultiAgentActorCritic, RunningNorm


class MemberRunningNorm(RunningNorm):
    """P members' observation statistics ``(P, N, D)``, applied to member-major rows ``(P * R, N, D)``."""

    def __init__(self, norms: list[RunningNorm]) -> None:
        nn.Module.__init__(self)
        self.clip = norms[0].clip
        self.members = len(norms)
        self.register_buffer("mean", torch.stack([norm.mean for norm in norms]))
        self.register_buffer("var", torch.stack([norm.var for norm in norms]))
        self.register_buffer("count", torch.stack([norm.count for norm in norms]))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold each member's block of rows into its statistics (``RunningNorm.update`` per member)."""
        blocks = x.reshape(self.members, -1, *self.mean.shape[1:])
        for member in range(self.members):
            single = RunningNorm(tuple(self.mean.shape[1:]), self.clip).to(self.mean.device)
            single.mean.copy_(self.mean[member])
            single.var.copy_(self.var[member])
            single.count.copy_(self.count[member])
            single.update(blocks[member])
            self.mean[member], self.var[member], self.count[member] = single.mean, single.var, single.count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = x.reshape(self.members, -1, *x.shape[-2:])
        normalised = (blocks - self.mean.unsqueeze(1)) / torch.sqrt(self.var.unsqueeze(1) + 1e-8)
        return normalised.clamp(-self.clip, self.clip).reshape(x.shape)


class PopulationActorCritic(MultiAgentActorCritic):
    """P members' ``MultiAgentActorCritic`` evaluated as one: observations ``(P * R, N, D)`` with member
    p's rows in the p-th block; every method of a single policy works on them unchanged."""

    def __init__(self, policies: list[MultiAgentActorCritic]) -> None:
        nn.Module.__init__(self)
        first = policies[0]
        self.members = len(policies)
        self.n_agents, self.obs_dim, self.action_dim = first.n_agents, first.obs_dim, first.action_dim
        self.centralised_critic, self.normalise_obs = first.centralised_critic, first.normalise_obs
        self.obs_norm = MemberRunningNorm([policy.obs_norm for policy in policies])
        self.actor = stack_members([policy.actor for policy in policies])
        self.critic = stack_members([policy.critic for policy in policies])
        self.log_std = nn.Parameter(torch.cat([policy.log_std.detach() for policy in policies]))
        self.register_buffer("action_low", first.action_low.clone())
        self.register_buffer("action_high", first.action_high.clone())

    def distribution(self, obs: torch.Tensor) -> Normal:
        mean = self.action_mean(obs)
        log_std = self.log_std.view(self.members, 1, -1, self.action_dim)  # (P, 1, N or 1, A)
        scale = log_std.exp().expand(self.members, mean.shape[0] // self.members, *mean.shape[1:])
        return Normal(mean, scale.reshape(mean.shape))

    def member_state_dict(self, member: int) -> dict[str, torch.Tensor]:
        """Member ``member``'s weights as its single run's ``MultiAgentActorCritic.state_dict()``."""
        state = {}
        for key, value in self.state_dict().items():
            if key.startswith(("actor.", "critic.")):
                network = self.actor if key.startswith("actor.") else self.critic
                value = value[member_slice(network, member)]
            elif key == "log_std":
                rows = value.shape[0] // self.members
                value = value[member * rows:(member + 1) * rows]
            elif key.startswith("obs_norm."):
                value = value[member]
            state[key] = value.detach().clone()
        return state

    def load_member_state_dicts(self, states: list[dict[str, torch.Tensor]]) -> None:
        """Load each member's single-run ``state_dict`` into its slices."""
        stacked = {}
        for key in states[0]:
            values = [state[key] for state in states]
            if key.startswith("obs_norm."):
                stacked[key] = torch.stack(values)
            elif key in ("action_low", "action_high"):
                stacked[key] = values[0]
            else:
                stacked[key] = torch.cat(values)
        self.load_state_dict(stacked)


def stack_policies(policies: list[MultiAgentActorCritic]) -> PopulationActorCritic:
    """The population policy of P members' policies (same architecture), on their device."""
    return PopulationActorCritic(policies).to(policies[0].log_std.device)


def member_slices(param: torch.Tensor, members: int) -> torch.Tensor:
    """A stacked parameter (or its gradient) viewed as ``(P, -1)``: member p's entries in row p."""
    return param.reshape(members, -1)


def clip_member_grad_norms(params: list[torch.Tensor], members: int, max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` per member: each member's gradients (its slices of every
    parameter) scaled by ``min(1, max_norm / (||g_p|| + 1e-6))``; returns the norms ``||g_p||`` ``(P,)``
    (non-finite for a member whose gradient is, whose gradients are then zeroed)."""
    grads = [param.grad for param in params if param.grad is not None]
    norms = torch.stack([torch.linalg.vector_norm(member_slices(grad, members), dim=1) for grad in grads], dim=1)
    total = torch.linalg.vector_norm(norms, dim=1)
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    scale = torch.where(torch.isfinite(total), scale, torch.zeros_like(scale))
    for grad in grads:
        view = member_slices(grad, members)
        view.mul_(scale.unsqueeze(1))
        view.nan_to_num_(0.0, 0.0, 0.0)
    return total


def restore_members(params: list[torch.Tensor], before: list[torch.Tensor], stopped: torch.Tensor) -> None:
    """Put the stopped members' slices of every parameter back to ``before`` (their values before the
    update), so that a member whose loss or gradient went non-finite keeps its last finite weights."""
    if not bool(stopped.any()):
        return
    mask = stopped.to(params[0].device)
    with torch.no_grad():
        for param, old in zip(params, before):
            view, old_view = member_slices(param, len(mask)), member_slices(old, len(mask))
            view[mask] = old_view[mask]


def member_metrics(metrics: dict[str, Any], member: int) -> dict[str, float]:
    """Member ``member``'s row of a population's metrics (each a ``(P,)`` tensor or a number)."""
    return {key: float(value[member]) if torch.is_tensor(value) and value.dim() else float(value)
            for key, value in metrics.items()}
