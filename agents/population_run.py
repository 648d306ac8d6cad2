"""Training a population: P run configs trained as one batched program, each member's run directory
written as ``agents.run.train`` writes a single run's.

    configs = [resolve(parse_overrides(["scenario=routing", "method=aajr", f"seed={s}"])) for s in range(4)]
    summaries = train_population(configs, [f"runs/pop/seed{s}" for s in range(4)])

The members' configs may differ in ``seed``, ``reg_coef`` and ``reg.budget`` only (``check_population``),
and the method must be one a population trains (``POPULATION_METHODS``: no adversarial rollouts, no
policy transform). Each member's directory gets ``config.yaml``, ``metrics.csv`` (and TensorBoard
events), ``checkpoint.pt`` in the single-run format (``load_policy`` reads it, ``train.py --resume``
continues it alone) and, at the end, ``summary.json`` and ``learning_curve.png``.

Each member's numbers equal its single run's up to float rounding: matrix products over P blocks of rows
may round the last bit differently from products over one block (BLAS picks its kernel by the matrix
sizes), and training amplifies such differences slowly (``tests/test_population.py`` states the
tolerance). Resuming: the members' checkpoints are the population's state; members whose checkpoints
are at the same iteration resume together (``train_population(..., resume=True)``), and the run goes on
with the same numbers as an uninterrupted one. A member whose loss or gradient goes non-finite is
reported, stopped (its files stay at its last checkpoint, no summary) and the others go on.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import sys
import types
from typing import Any

import torch

from agents.code_version import code_version
from agents.config import ConfigError, TrainConfig, config_errors, to_dict
from agents.learner import PPOLearner
from agents.policy import make_policy
from agents.population import member_metrics
from agents.progress import progress_bar
from agents.run import (CHECKPOINT, SUMMARY, MetricsLog, PeriodicEvaluation, StopRequest, check_device,
                        check_new_run_dir, check_tracking, create_run, load_checkpoint, read_metrics, read_summary,
                        restore, start_tracking, train, write_checkpoint, write_summary)
from envs.vector import TorchVectorEnv
from regularizers import METHODS, make_regularizer

MEMBER_FIELDS = ("seed", "reg_coef", "reg")  # what may differ between members (of reg: the budget only)


def population_methods() -> tuple[str, ...]:
    """The methods a population trains: those without adversarial rollouts or a policy transform."""
    return tuple(name for name, method in METHODS.items() if not method.adversarial and method.transform_policy is None)


def check_population(configs: list[TrainConfig]) -> None:
    """Refuse (one-line ``ConfigError``) a population the batched program cannot train: none, a method
    it does not support, members that differ in anything but ``seed``, ``reg_coef`` and ``reg.budget``,
    members with and without a budget, or two members with the same seed and settings."""
    if not configs:
        raise ConfigError("a population needs at least one run config")
    first = configs[0]
    if first.method not in population_methods():
        raise ConfigError(f"method {first.method!r} cannot be trained as a population; allowed: "
                          f"{', '.join(population_methods())} (train the others one by one)")
    common = {key: value for key, value in to_dict(first).items() if key not in MEMBER_FIELDS}
    seen = set()
    for config in configs:
        shared = {key: value for key, value in to_dict(config).items() if key not in MEMBER_FIELDS}
        differing = sorted(key for key in common if shared.get(key) != common[key])
        if differing:
            raise ConfigError(f"population member seed={config.seed} differs from the first in {', '.join(differing)}; "
                              f"members may differ in {', '.join(MEMBER_FIELDS)} (reg: the budget) only")
        if first.reg is not None and dataclasses.replace(config.reg, budget=first.reg.budget) != first.reg:
            raise ConfigError(f"population member seed={config.seed}: its reg settings differ from the first's in "
                              f"more than the budget")
        if first.reg is not None and (config.reg.budget is None) != (first.reg.budget is None):
            raise ConfigError("population members must all have a hinge budget or all have none")
        identity = (config.seed, config.reg_coef, None if config.reg is None else config.reg.budget)
        if identity in seen:
            raise ConfigError(f"two population members have seed={config.seed}, reg_coef={config.reg_coef} "
                              f"and the same budget")
        seen.add(identity)


def build_population_learner(configs: list[TrainConfig]) -> PPOLearner:
    """The learner of a population (``check_population``): P blocks of the run config's environments,
    the members' policies stacked, the method's penalty with each member's budget and ``reg_coef``."""
    check_population(configs)
    first = configs[0]
    check_device(first.device)
    count = len(configs)
    with config_errors("env: "):
        env = TorchVectorEnv(first.scenario, num_envs=count * first.ppo.num_envs, device=first.device, **first.env)
    agent_steps_per_iteration = first.ppo.num_envs * first.ppo.rollout_steps * env.n_agents
    iterations = max(1, math.ceil(first.total_agent_steps / agent_steps_per_iteration))
    penalty = None
    if first.method_spec.penalty is not None:
        settings = first.reg
        budgets = [config.reg.budget for config in configs]
        if budgets[0] is not None and len(set(budgets)) > 1:
            # the penalties reduce per member and take a (P,) budget (regularizers.jvp.penalty_from_norms);
            # the settings dataclass validated each member's float budget already
            settings = dataclasses.replace(settings)
            object.__setattr__(settings, "budget", torch.tensor(budgets, dtype=torch.float64))
        penalty = make_regularizer(first.method, env.scenario, settings)
    return PPOLearner(env, first.ppo, iterations, seed=[config.seed for config in configs], penalty=penalty,
                      reg_coef=[config.reg_coef for config in configs],
                      policy_diagnostics=first.method_spec.policy_diagnostics)


# ----- each member's learner state, in the single-run checkpoint format ------------------------------


def _member_block(tensor: torch.Tensor, members: int, member: int) -> torch.Tensor:
    """Member ``member``'s block of a tensor whose leading dimension holds P equal member blocks."""
    rows = tensor.shape[0] // members
    return tensor[member * rows:(member + 1) * rows].detach().clone()


def member_state(learner: PPOLearner, member: int) -> dict[str, Any]:
    """Member ``member``'s part of a population learner, as ``PPOLearner.state_dict()`` of its single run."""
    count = learner.members
    optimizer = learner.optimizer.state_dict()
    optimizer = {
        "state": {index: {key: value.clone() if key == "step" else _member_block(value, count, member)
                          for key, value in entry.items()} for index, entry in optimizer["state"].items()},
        "param_groups": optimizer["param_groups"],
    }
    return {
        "policy": learner.policy.member_state_dict(member),
        "optimizer": optimizer,
        "action_generator": learner.action_generator.generators[member].get_state(),
        "minibatch_generator": learner.minibatch_generators[member].get_state(),
        "penalty_generator": learner.penalty_generator.generators[member].get_state(),
        "env_generator": learner.env.generator.generators[member].get_state(),
        "env_state": {key: _member_block(value, count, member) for key, value in learner.env.state.items()},
        "obs": _member_block(learner.obs, count, member),
        "episode_returns": _member_block(learner.episode_returns, count, member),
        "episode_system_loss": _member_block(learner.episode_system_loss, count, member),
        "iteration": learner.iteration,
        "agent_steps": learner.agent_steps,
    }


def load_member_states(learner: PPOLearner, states: list[dict[str, Any]]) -> None:
    """Load P single-run learner states (``member_state``, or single runs' checkpoints at one iteration)
    into a population learner."""
    iterations = {int(state["iteration"]) for state in states}
    if len(iterations) != 1:
        raise ConfigError(f"population members are at different iterations {sorted(iterations)}; resume them "
                          f"in groups at one iteration each")
    device = learner.device
    learner.policy.load_member_state_dicts([state["policy"] for state in states])
    optimizer = learner.optimizer.state_dict()
    entries = [state["optimizer"]["state"] for state in states]
    optimizer["state"] = {index: {key: entries[0][index][key] if key == "step"
                                  else torch.cat([entry[index][key] for entry in entries])
                                  for key in entries[0][index]} for index in entries[0]}
    optimizer["param_groups"] = [{**group, **{key: value for key, value in saved.items() if key != "params"}}
                                 for group, saved in zip(optimizer["param_groups"],
                                                         states[0]["optimizer"]["param_groups"])]
    learner.optimizer.load_state_dict(optimizer)
    for name in ("action_generator", "penalty_generator", "env_generator"):
        target = learner.env.generator if name == "env_generator" else getattr(learner, name)
        target.set_state([state[name] for state in states])
    for generator, state in zip(learner.minibatch_generators, states):
        generator.set_state(state["minibatch_generator"])
    learner.env.state = {key: torch.cat([state["env_state"][key] for state in states]).to(device)
                         for key in states[0]["env_state"]}
    learner.obs = torch.cat([state["obs"] for state in states]).to(device)
    learner.episode_returns = torch.cat([state["episode_returns"] for state in states]).to(device)
    learner.episode_system_loss = torch.cat([state["episode_system_loss"] for state in states]).to(device)
    learner.iteration = int(states[0]["iteration"])
    learner.agent_steps = int(states[0]["agent_steps"])


def member_view(learner: PPOLearner, config: TrainConfig, member: int) -> types.SimpleNamespace:
    """What ``agents.evaluate.summarise`` and the periodic evaluation read of a learner, for one member:
    its policy (a single ``MultiAgentActorCritic`` with its weights), the scenario, its counters."""
    with torch.random.fork_rng(devices=[]):
        policy = make_policy(learner.env.scenario, config.ppo)
    policy.load_state_dict(learner.policy.member_state_dict(member))
    return types.SimpleNamespace(policy=policy, env=types.SimpleNamespace(scenario=learner.env.scenario),
                                 agent_steps=learner.agent_steps, iteration=learner.iteration)


def save_member_checkpoint(run_dir: pathlib.Path, learner: PPOLearner, member: int,
                           metrics: dict[str, float] | None) -> None:
    write_checkpoint(run_dir, member_state(learner, member), metrics)


# ----- training -----------------------------------------------------------------------------------


def train_population(configs: list[TrainConfig], run_dirs: list[pathlib.Path | str], resume: bool = False,
                     progress: bool = True, max_iterations: int | None = None) -> list[dict[str, Any] | None]:
    """Train the members ``configs`` in their ``run_dirs`` as one batched program (or for
    ``max_iterations`` more iterations); returns each member's summary, None for a member stopped
    early (Ctrl-C, or a non-finite loss). ``resume=True`` continues from the members' checkpoints (all at
    one iteration); finished members' files are left as they are."""
    code_version()  # read now, while the checkout still holds the code this process imported
    run_dirs = [pathlib.Path(run_dir) for run_dir in run_dirs]
    if len(run_dirs) != len(configs):
        raise ConfigError(f"{len(configs)} population members but {len(run_dirs)} run directories")
    if len(set(run_dirs)) != len(run_dirs):
        raise ConfigError("two population members share a run directory")
    check_population(configs)
    if len(configs) == 1:  # a population of one is a single run
        return [train(configs[0], run_dirs[0], resume=resume, progress=progress, max_iterations=max_iterations)]
    for config in configs:
        check_tracking(config)
    if resume:
        states = [load_checkpoint(run_dir, configs[0].device) for run_dir in run_dirs]
        iterations = [state.get("iteration") for state in states]
        if len(set(iterations)) != 1:
            at = ", ".join(f"{run_dir / CHECKPOINT} at {iteration}" for run_dir, iteration in zip(run_dirs, iterations))
            raise ConfigError(f"population members are at different iterations ({at}); resume them in groups "
                              f"at one iteration each")
    else:
        for run_dir in run_dirs:
            check_new_run_dir(run_dir)
    learner = build_population_learner(configs)
    count = learner.members
    metrics: list[dict[str, float]] = [{} for _ in configs]
    rows: list[list[dict[str, Any]]] = [[] for _ in configs]
    if resume:
        restore(lambda loaded: load_member_states(learner, loaded), states, run_dirs[0] / CHECKPOINT)
        if learner.iteration >= learner.total_iterations and all((d / SUMMARY).exists() for d in run_dirs):
            return [read_summary(run_dir) for run_dir in run_dirs]
        rows = [read_metrics(run_dir / "metrics.csv", learner.iteration) for run_dir in run_dirs]
        metrics = [state.get("metrics", {}) for state in states]
    else:
        for config, run_dir in zip(configs, run_dirs):
            create_run(config, run_dir)
    stop_at = learner.total_iterations if max_iterations is None else min(
        learner.total_iterations, learner.iteration + max_iterations)
    evaluations = [PeriodicEvaluation(config, learner.env.scenario) for config in configs]
    logs = [MetricsLog(run_dir, kept, purge_step=learner.agent_steps + 1, tracker=start_tracking(config, run_dir))
            for config, run_dir, kept in zip(configs, run_dirs, rows)]
    if learner.iteration == 0:
        for log, config in zip(logs, configs):
            log.write_hyperparameters(config)
    reported = torch.zeros(count, dtype=torch.bool)
    first = configs[0]
    with StopRequest() as stop, progress_bar(disable=not progress) as bar:
        task = bar.add_task(f"{first.scenario}/{first.method}/population of {count}", total=learner.total_iterations,
                            completed=learner.iteration, status="")
        while learner.iteration < stop_at and not stop.requested and not bool(learner.stopped.all()):
            population_metrics = learner.train_iteration()
            checkpoint = learner.iteration % first.checkpoint_every == 0 or stop.requested
            for member, (config, run_dir) in enumerate(zip(configs, run_dirs)):
                if learner.stopped[member]:
                    if not reported[member]:
                        reported[member] = True
                        print(f"population member {run_dir}: non-finite loss or gradient at iteration "
                              f"{learner.iteration}; stopped (its files stay at its last checkpoint)", file=sys.stderr)
                    continue
                metrics[member] = member_metrics(population_metrics, member)
                if evaluations[member].due(learner.iteration, learner.total_iterations):
                    metrics[member].update(evaluations[member](member_view(learner, config, member).policy))
                logs[member].write(learner.iteration, metrics[member])
                if checkpoint:
                    save_member_checkpoint(run_dir, learner, member, metrics[member])
            rate = float(population_metrics["charts/SPS"][0]) * count
            bar.update(task, completed=learner.iteration,
                       status=f"{learner.agent_steps:,} agent-steps per member | {rate:,.0f} agent-steps/s in all")
    for member, run_dir in enumerate(run_dirs):
        if not learner.stopped[member]:
            save_member_checkpoint(run_dir, learner, member, metrics[member] or None)
        logs[member].close()
    summaries: list[dict[str, Any] | None] = []
    for member, (config, run_dir) in enumerate(zip(configs, run_dirs)):
        if learner.stopped[member] or learner.iteration < learner.total_iterations:
            summaries.append(None)
            continue
        summaries.append(write_summary(member_view(learner, config, member), config, run_dir, metrics[member]))
    if learner.iteration < learner.total_iterations and not bool(learner.stopped.all()):
        print(f"population stopped at iteration {learner.iteration}/{learner.total_iterations}; continue with "
              f"train_population(..., resume=True)")
    return summaries

