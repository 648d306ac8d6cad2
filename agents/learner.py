"""The PPO learner loop on a ``TorchVectorEnv``: collect a rollout, update, repeat; checkpointable.

Each iteration's metrics carry CleanRL's names: ``charts/episodic_return``, ``charts/SPS``,
``charts/learning_rate``, ``losses/value_loss``, ``losses/policy_loss``, ``losses/entropy``,
``losses/approx_kl``, ``losses/clipfrac``, ``losses/explained_variance``; and the project's own
(``charts/system_loss``, ``charts/agent_steps``, ``losses/grad_norm``, ``losses/penalty``, ``reg/*``,
``shock/*``). ``LEGACY_NAMES`` repeats a few under their earlier names for the readers not yet renamed.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import torch

from agents.policy import make_policy
from agents.population import clip_member_grad_norms, restore_members, stack_policies
from agents.ppo import PPOConfig, compute_gae, explained_variance, ppo_loss
from envs.batch import Batch, member_mean
from envs.core import MemberGenerators, make_generator
from envs.shock_wrapper import ShockConfig, ShockedVectorEnv
from envs.vector import TorchVectorEnv
from regularizers import Penalty

# Earlier metric names still repeated beside CleanRL's (old name -> new name): written to metrics.csv and
# returned by ``train_iteration``, never to TensorBoard. To be removed once no reader uses them.
LEGACY_NAMES = {"losses/policy": "losses/policy_loss", "losses/value": "losses/value_loss"}


class PPOLearner:
    """Multi-agent PPO on ``num_envs`` batched environments of one scenario.

    :param env: the batched environments (``auto_reset=True``).
    :param cfg: PPO hyper-parameters (``cfg.validate()``: a bad field is a ValueError before anything is built).
    :param total_iterations: number of rollout+update iterations planned (for LR annealing).
    :param seed: seeds the policy initialisation, action sampling, minibatch order and the env.
    :param penalty: optional regularizer ``penalty(policy, batch, generator) -> (tensor, diagnostics)``;
        computed (and its diagnostics logged) even when ``reg_coef`` is 0.
    :param reg_coef: weight lambda of the penalty in the loss.
    :param transform_policy: applied in place to the new policy before the optimizer is built (a
        method's architecture, e.g. spectral normalisation: ``regularizers.registry.Method``).
    :param policy_diagnostics: ``fn(policy) -> {key: value}`` added to every update's metrics.
    :param shock: adversarial training: roll out under this shock (against the current policy's
        deterministic action map); ``shock.prob`` is the final probability of shocking a step.
    :param shock_warmup: fraction of training over which the shock probability ramps linearly from
        0 to ``shock.prob`` (0: constant).

    **Population** (``agents.population``): with a list of P seeds (and a list of P ``reg_coef``), one
    learner trains P independent runs as one batched program: ``env`` holds P blocks of environments
    (member-major), the policy is the members' networks stacked (``agents.population.stack_policies``),
    every generator is one per member (``envs.core.MemberGenerators``), losses, penalties, gradient
    clipping and statistics are per member, and every metric is a ``(P,)`` tensor. A member whose loss
    or gradient is not finite is stopped (``self.stopped``): its parameters stay as they were before that
    update, and the others go on untouched. No adversarial rollouts or policy transforms in a population.
    """

    def __init__(self, env: TorchVectorEnv, cfg: PPOConfig, total_iterations: int, seed: int,
                 penalty: Penalty | None = None, reg_coef: float = 0.0, shock: ShockConfig | None = None,
                 shock_warmup: float = 0.0, transform_policy: Callable[[torch.nn.Module], None] | None = None,
                 policy_diagnostics: Callable[[torch.nn.Module], dict[str, float]] | None = None) -> None:
        cfg.validate()
        self.env, self.cfg = env, cfg
        self.device = env.device
        self.total_iterations = total_iterations
        self.penalty = penalty
        scenario = env.scenario
        seeds = [seed] if isinstance(seed, int) else list(seed)
        self.members = count = len(seeds)
        if count == 1:  # a population of one is a single run
            seed = seeds[0]
            reg_coef = reg_coef[0] if isinstance(reg_coef, (list, tuple)) else reg_coef
        else:
            coefs = list(reg_coef) if isinstance(reg_coef, (list, tuple)) else [reg_coef] * count
            if len(coefs) != count or env.num_envs % count:
                raise ValueError(f"a population of {count} members needs {count} reg_coef values (got {len(coefs)}) "
                                 f"and num_envs a multiple of {count} (got {env.num_envs})")
            if (shock is not None and shock.prob > 0) or transform_policy is not None:
                raise ValueError("a population trains penalty methods only: no adversarial rollouts or policy "
                                 "transforms (train those runs one by one)")
            reg_coef = torch.tensor(coefs, device=self.device)
        self.reg_coef = reg_coef
        self.stopped = torch.zeros(count, dtype=torch.bool)
        policies = []
        for member_seed in seeds:
            torch.manual_seed(member_seed)
            policies.append(make_policy(scenario, cfg))
        self.policy = policies[0] if count == 1 else stack_policies(policies)
        if transform_policy is not None:
            transform_policy(self.policy)
        self.policy_diagnostics = policy_diagnostics
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=cfg.learning_rate, eps=1e-5)

        def generators(offset: int, device) -> torch.Generator | MemberGenerators:
            made = [make_generator(member_seed + offset, device) for member_seed in seeds]
            return made[0] if count == 1 else MemberGenerators(made)

        self.action_generator = generators(1, self.device)
        self.minibatch_generators = [make_generator(member_seed + 2, "cpu") for member_seed in seeds]
        self.minibatch_generator = self.minibatch_generators[0]
        self.penalty_generator = generators(5, self.device)
        self.iteration = 0
        self.agent_steps = 0
        self.shock, self.shock_warmup = shock, shock_warmup
        self.shocker = None
        if shock is not None and shock.prob > 0:
            def victim(obs: torch.Tensor) -> torch.Tensor:
                return self.policy.deterministic_action(obs.float()).to(obs.dtype)
            self.shocker = ShockedVectorEnv(env, victim, shock, value_fn=lambda obs: self.policy.value(obs.float()),
                                            seed=seed + 4)
        if count == 1:
            self.obs = (self.shocker or env).reset(seed=seed + 3).float()
        else:
            env.generator = generators(3, self.device)
            self.obs = env.reset().float()
        self.episode_returns = torch.zeros(env.num_envs, device=self.device)
        self.episode_system_loss = torch.zeros(env.num_envs, device=self.device)

    # ----- rollout ---------------------------------------------------------------------------------

    @torch.no_grad()
    def collect(self) -> tuple[Batch, dict[str, float]]:
        """Run ``rollout_steps`` steps in every environment; returns the flattened batch and stats."""
        cfg, env = self.cfg, self.env
        keys = ("obs", "pre_actions", "actions", "log_probs", "values", "rewards", "dones")
        storage: dict[str, list[torch.Tensor]] = {key: [] for key in keys}
        stepper = self.shocker or env
        shock_stats: dict[str, float] = {}
        if self.shocker is not None:
            ramp = self.shock_warmup * self.total_iterations
            prob = self.shock.prob * (min(1.0, self.iteration / ramp) if ramp > 0 else 1.0)
            self.shocker.config = dataclasses.replace(self.shock, prob=prob)
            shock_stats["shock/prob"] = prob
        states: list[dict[str, torch.Tensor]] = []
        finished_returns, finished_losses, step_losses = [], [], []
        final_values: dict[int, torch.Tensor] = {}
        for _ in range(cfg.rollout_steps):
            states.append(env.state)
            pre_actions, actions, log_probs, values = self.policy.act(self.obs, self.action_generator)
            result = stepper.step(actions.to(env.scenario.dtype))
            for key in ("shock/norm", "shock/gain"):
                if key in result.info:
                    shock_stats[key] = shock_stats.get(key, 0.0) + float(result.info[key].mean()) / cfg.rollout_steps
            if "shock/budget_use" in result.info:  # over the shocked environments only
                shocked = result.info["shock/shocked"]
                use = float((result.info["shock/budget_use"] * shocked).sum() / shocked.sum().clamp_min(1))
                shock_stats["shock/budget_use"] = shock_stats.get("shock/budget_use", 0.0) + use / cfg.rollout_steps
            rewards = result.rewards.float() * cfg.reward_scale
            next_obs = result.obs.float()
            if "final_obs" in result.info:  # truncation bootstraps from the last observation of the episode
                final_values[len(storage["obs"])] = self.policy.value(result.info["final_obs"].float())
            self.episode_returns += result.rewards.float().mean(-1)
            self.episode_system_loss += result.system_loss.float()
            step_losses.append(member_mean(result.system_loss.float(), self.members))
            if bool(result.truncated.any()):
                done = result.truncated
                finished_returns.append(self.episode_returns[done].clone())
                finished_losses.append(self.episode_system_loss[done].clone())
                self.episode_returns[done] = 0.0
                self.episode_system_loss[done] = 0.0
            for key, value in (("obs", self.obs), ("pre_actions", pre_actions), ("actions", actions),
                               ("log_probs", log_probs), ("values", values), ("rewards", rewards),
                               ("dones", result.truncated)):
                storage[key].append(value)
            self.obs = next_obs
        rollout = {key: torch.stack(value) for key, value in storage.items()}
        # V(s'_t): the next step's value, the value of the observation after the rollout at the end,
        # or V(final observation) where the episode was truncated.
        next_values = torch.cat([rollout["values"][1:], self.policy.value(self.obs).unsqueeze(0)])
        for t, value in final_values.items():
            next_values[t] = value
        rollout["next_values"] = next_values
        advantages, returns = compute_gae(rollout["rewards"], rollout["values"], rollout["next_values"],
                                          rollout["dones"], cfg.gamma, cfg.gae_lambda)
        stored = ("obs", "pre_actions", "actions", "log_probs", "values")
        batch = Batch.from_steps(states, advantages=advantages, returns=returns,
                                 **{key: rollout[key] for key in stored})
        if self.members > 1:  # rows (t, p, b) -> (p, t, b): each member's rows in one block, as its run's
            steps = cfg.rollout_steps
            batch = batch.map(lambda x: x.reshape(steps, self.members, -1, *x.shape[1:]).transpose(0, 1)
                              .reshape(x.shape))
        self.agent_steps += cfg.rollout_steps * env.num_envs * env.n_agents // self.members
        stats = {"charts/system_loss": self._metric(torch.stack(step_losses).mean(0)), **shock_stats}
        if finished_returns:  # every environment finishes its episode at the same step
            stats["charts/episodic_return"] = self._metric(member_mean(torch.stack(finished_returns), self.members, 1))
            stats["charts/episodic_system_loss"] = self._metric(
                member_mean(torch.stack(finished_losses), self.members, 1))
        return batch, stats

    def _metric(self, value: torch.Tensor) -> float | torch.Tensor:
        """A statistic as a float, or as a float64 ``(P,)`` CPU tensor in a population."""
        return float(value) if self.members == 1 else value.detach().double().cpu()

    # ----- update ----------------------------------------------------------------------------------

    def update(self, batch: Batch) -> dict[str, float]:
        """PPO epochs over the batch: loss = ppo_loss + reg_coef * penalty; Adam with gradient clipping."""
        cfg = self.cfg
        if cfg.anneal_lr:
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.learning_rate * max(1.0 - self.iteration / self.total_iterations, 0.0)
        members = self.members
        size = len(batch) // members  # each member's rows
        minibatch_size = max(size // cfg.num_minibatches, 1)
        totals: dict[str, float | torch.Tensor] = {}
        count = 0
        params = list(self.policy.parameters())
        for _ in range(cfg.update_epochs):
            orders = [torch.randperm(size, generator=generator) for generator in self.minibatch_generators]
            for start in range(0, size - minibatch_size + 1, minibatch_size):
                index = torch.cat([member * size + order[start:start + minibatch_size]
                                   for member, order in enumerate(orders)]).to(self.device)
                minibatch = batch[index]
                loss, stats = ppo_loss(self.policy, minibatch, cfg, members)
                if self.penalty is not None:
                    penalty, diagnostics = self.penalty(self.policy, minibatch, self.penalty_generator)
                    loss = loss + self.reg_coef * penalty
                    stats = {**stats, "losses/penalty": penalty.detach(), **diagnostics}
                self.optimizer.zero_grad(set_to_none=True)
                if members == 1:
                    loss.backward()
                    stats["losses/grad_norm"] = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                    self.optimizer.step()
                else:
                    before = [param.detach().clone() for param in params]
                    loss.sum().backward()
                    stats["losses/grad_norm"] = clip_member_grad_norms(params, members, cfg.max_grad_norm)
                    self.stopped |= ~torch.isfinite(loss.detach().cpu()) | ~torch.isfinite(stats["losses/grad_norm"].cpu())
                    self.optimizer.step()
                    restore_members(params, before, self.stopped)
                for key, value in stats.items():
                    value = value.detach() if torch.is_tensor(value) else value
                    value = float(value) if members == 1 else torch.as_tensor(value).double().cpu()
                    totals[key] = totals.get(key, 0.0) + value
                count += 1
        if cfg.normalise_obs:  # after the update, so that the rollout's log-probs stay consistent
            self.policy.obs_norm.update(batch.obs)
        self.iteration += 1
        out = {key: value / count for key, value in totals.items()}
        if self.policy_diagnostics is not None:
            out.update(self.policy_diagnostics(self.policy))
        out["charts/learning_rate"] = self.optimizer.param_groups[0]["lr"]
        if members == 1:
            out["losses/explained_variance"] = explained_variance(batch.values, batch.returns)
        else:
            values, returns = batch.values.reshape(members, size, -1), batch.returns.reshape(members, size, -1)
            out["charts/learning_rate"] = torch.full((members,), out["charts/learning_rate"], dtype=torch.float64)
            out["losses/explained_variance"] = torch.tensor(
                [explained_variance(values[member], returns[member]) for member in range(members)], dtype=torch.float64)
        return out

    def train_iteration(self) -> dict[str, float]:
        """One rollout and one update; returns the iteration's metrics (``charts/SPS``: agent-steps per
        second of this iteration, rollout and update together)."""
        start = time.perf_counter()
        batch, rollout_stats = self.collect()
        update_stats = self.update(batch)
        elapsed = time.perf_counter() - start
        steps = self.cfg.rollout_steps * self.env.num_envs * self.env.n_agents // self.members  # each member's
        metrics = {**rollout_stats, **update_stats, "charts/SPS": steps / elapsed,
                   "charts/agent_steps": float(self.agent_steps)}
        if self.members > 1:
            metrics.update({key: torch.full((self.members,), metrics[key], dtype=torch.float64)
                            for key in ("charts/SPS", "charts/agent_steps")})
        metrics.update({old: metrics[new] for old, new in LEGACY_NAMES.items() if new in metrics})
        return metrics

    # ----- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-for-bit: tensors, numbers and strings only."""
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "action_generator": self.action_generator.get_state(),
            "minibatch_generator": self.minibatch_generator.get_state(),
            "penalty_generator": self.penalty_generator.get_state(),
            "env_generator": self.env.generator.get_state(),
            "env_state": dict(self.env.state),
            "obs": self.obs,
            "episode_returns": self.episode_returns,
            "episode_system_loss": self.episode_system_loss,
            "iteration": self.iteration,
            "agent_steps": self.agent_steps,
            **({"shock_generator": self.shocker.generator.get_state()} if self.shocker is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.action_generator.set_state(state["action_generator"])
        self.minibatch_generator.set_state(state["minibatch_generator"])
        if "penalty_generator" in state:  # absent from checkpoints written before the regularizers
            self.penalty_generator.set_state(state["penalty_generator"])
        self.env.generator.set_state(state["env_generator"])
        self.env.state = {key: value.to(self.device) for key, value in state["env_state"].items()}
        self.obs = state["obs"].to(self.device)
        self.episode_returns = state["episode_returns"].to(self.device)
        self.episode_system_loss = state["episode_system_loss"].to(self.device)
        self.iteration = int(state["iteration"])
        self.agent_steps = int(state["agent_steps"])
        if self.shocker is not None:
            self.shocker.generator.set_state(state["shock_generator"])
