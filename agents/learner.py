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
from agents.ppo import PPOConfig, compute_gae, explained_variance, ppo_loss
from envs.batch import Batch
from envs.core import make_generator
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
    """

    def __init__(self, env: TorchVectorEnv, cfg: PPOConfig, total_iterations: int, seed: int,
                 penalty: Penalty | None = None, reg_coef: float = 0.0, shock: ShockConfig | None = None,
                 shock_warmup: float = 0.0, transform_policy: Callable[[torch.nn.Module], None] | None = None,
                 policy_diagnostics: Callable[[torch.nn.Module], dict[str, float]] | None = None) -> None:
        cfg.validate()
        self.env, self.cfg = env, cfg
        self.device = env.device
        self.total_iterations = total_iterations
        self.penalty, self.reg_coef = penalty, reg_coef
        scenario = env.scenario
        torch.manual_seed(seed)
        self.policy = make_policy(scenario, cfg)
        if transform_policy is not None:
            transform_policy(self.policy)
        self.policy_diagnostics = policy_diagnostics
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=cfg.learning_rate, eps=1e-5)
        self.action_generator = make_generator(seed + 1, self.device)
        self.minibatch_generator = make_generator(seed + 2, "cpu")
        self.penalty_generator = make_generator(seed + 5, self.device)
        self.iteration = 0
        self.agent_steps = 0
        self.shock, self.shock_warmup = shock, shock_warmup
        self.shocker = None
        if shock is not None and shock.prob > 0:
            def victim(obs: torch.Tensor) -> torch.Tensor:
                return self.policy.deterministic_action(obs.float()).to(obs.dtype)
            self.shocker = ShockedVectorEnv(env, victim, shock, value_fn=lambda obs: self.policy.value(obs.float()),
                                            seed=seed + 4)
        self.obs = (self.shocker or env).reset(seed=seed + 3).float()
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
            step_losses.append(result.system_loss.float().mean())
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
        self.agent_steps += cfg.rollout_steps * env.num_envs * env.n_agents
        stats = {"charts/system_loss": float(torch.stack(step_losses).mean()), **shock_stats}
        if finished_returns:
            stats["charts/episodic_return"] = float(torch.cat(finished_returns).mean())
            stats["charts/episodic_system_loss"] = float(torch.cat(finished_losses).mean())
        return batch, stats

    # ----- update ----------------------------------------------------------------------------------

    def update(self, batch: Batch) -> dict[str, float]:
        """PPO epochs over the batch: loss = ppo_loss + reg_coef * penalty; Adam with gradient clipping."""
        cfg = self.cfg
        if cfg.anneal_lr:
            for group in self.optimizer.param_groups:
                group["lr"] = cfg.learning_rate * max(1.0 - self.iteration / self.total_iterations, 0.0)
        size = len(batch)
        minibatch_size = max(size // cfg.num_minibatches, 1)
        totals: dict[str, float] = {}
        count = 0
        for _ in range(cfg.update_epochs):
            order = torch.randperm(size, generator=self.minibatch_generator).to(self.device)
            for start in range(0, size - minibatch_size + 1, minibatch_size):
                index = order[start:start + minibatch_size]
                minibatch = batch[index]
                loss, stats = ppo_loss(self.policy, minibatch, cfg)
                if self.penalty is not None:
                    penalty, diagnostics = self.penalty(self.policy, minibatch, self.penalty_generator)
                    loss = loss + self.reg_coef * penalty
                    stats = {**stats, "losses/penalty": penalty.detach(), **diagnostics}
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                stats["losses/grad_norm"] = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + float(value.detach() if torch.is_tensor(value) else value)
                count += 1
        if cfg.normalise_obs:  # after the update, so that the rollout's log-probs stay consistent
            self.policy.obs_norm.update(batch.obs)
        self.iteration += 1
        out = {key: value / count for key, value in totals.items()}
        if self.policy_diagnostics is not None:
            out.update(self.policy_diagnostics(self.policy))
        out["charts/learning_rate"] = self.optimizer.param_groups[0]["lr"]
        out["losses/explained_variance"] = explained_variance(batch.values, batch.returns)
        return out

    def train_iteration(self) -> dict[str, float]:
        """One rollout and one update; returns the iteration's metrics (``charts/SPS``: agent-steps per
        second of this iteration, rollout and update together)."""
        start = time.perf_counter()
        batch, rollout_stats = self.collect()
        update_stats = self.update(batch)
        elapsed = time.perf_counter() - start
        steps = self.cfg.rollout_steps * self.env.num_envs * self.env.n_agents
        metrics = {**rollout_stats, **update_stats, "charts/SPS": steps / elapsed,
                   "charts/agent_steps": float(self.agent_steps)}
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
