"""Evaluation of a trained policy under attacks: every (attack, mode, eps) cell on the same seeded episodes.

For each cell the deterministic policy plays ``episodes`` environments for one episode (the same
exogenous draws in every cell: same environment seed) while the shock wrapper perturbs every step's
observations (``prob = 1``) with the attack; ``eps = 0`` is the nominal, unshocked evaluation. Per
cell: the mean episodic return per agent, the mean system loss per step, and its ratio to the
scenario's reference optimum (``agents.evaluate.TARGET_REFERENCE``) on the same episodes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Callable

import torch

from agents.evaluate import TARGET_REFERENCE
from envs.core import check_choice, check_positive_int, check_real
from envs.shock_wrapper import ATTACKS, ShockConfig, ShockedVectorEnv
from envs.shocks import MODES, NORMS
from envs.vector import TorchVectorEnv, evaluate_policy, run_episode
from regularizers.jvp import frozen_parameters

DEFAULT_EPS = (0.0, 0.05, 0.1, 0.2, 0.3)
EVAL_SEED = 20_000  # evaluation episodes never reuse training seeds


@dataclasses.dataclass(frozen=True)
class AttackGrid:
    """The attacks a trained policy is evaluated under.

    :param attacks: shock objectives (``envs.shock_wrapper.ATTACKS``: ``random``, ``spike``, ``system``,
        ``action``, ``value``, ``random_search``, ``rollout``, ``learned``).
    :param modes: ``shared`` and/or ``per_agent``.
    :param eps: budgets; 0 is the nominal evaluation (added when missing).
    :param steps: PGA steps K of the attacks (stronger than the training attacks by default).
    :param norm: ``l2`` or ``linf``.
    :param episodes: environments evaluated in parallel, one episode each.
    :param rule: PGA's step rule; ``normalized`` fills the ball whatever the victim's gradient size.
    :param restarts: random restarts of every gradient attack besides its zero start (best iterate kept).
    :param candidates: random boundary points per step of ``random_search``.
    :param horizon: H of the ``rollout`` attack (the steps of system loss it sums).
    :param learned_eps: the budgets at which the ``learned`` attack is trained and evaluated (None: the
        two largest eps of the grid); training one attacker per (victim, mode, eps) is expensive.
    :param learned_modes: the shock modes of the ``learned`` attack.
    :param learned_steps: each attacker's training budget in attacker-steps (``robustness.adversary``).
    """

    attacks: tuple[str, ...] = ("random", "spike", "system", "action", "value", "random_search", "rollout",
                                "learned")
    modes: tuple[str, ...] = ("shared", "per_agent")
    eps: tuple[float, ...] = DEFAULT_EPS
    steps: int = 20
    norm: str = "l2"
    episodes: int = 64
    rule: str = "normalized"
    restarts: int = 2
    candidates: int = 32
    horizon: int = 5
    learned_eps: tuple[float, ...] | None = None
    learned_modes: tuple[str, ...] = ("shared",)
    learned_steps: int = 200_000

    def __post_init__(self) -> None:
        for attack in self.attacks:
            check_choice("attack", attack, ATTACKS)
        for mode in self.modes:
            check_choice("mode", mode, MODES)
        for eps in self.eps:
            check_real("eps", eps, 0.0)
        check_positive_int("steps", self.steps)
        check_choice("norm", self.norm, NORMS)
        check_positive_int("episodes", self.episodes)
        self.shock(self.attacks[0] if self.attacks else "system", "shared", 1.0)  # checks rule, restarts, candidates
        object.__setattr__(self, "eps", tuple(sorted({0.0, *map(float, self.eps)})))
        for mode in self.learned_modes:
            check_choice("learned mode", mode, MODES)
        check_positive_int("learned_steps", self.learned_steps)
        if self.learned_eps is not None:
            for eps in self.learned_eps:
                check_real("learned eps", eps, 0.0, low_open=True)
            object.__setattr__(self, "learned_eps", tuple(sorted(map(float, self.learned_eps))))

    def evaluates(self, attack: str, mode: str, eps: float) -> bool:
        """Whether the grid evaluates ``attack`` at (mode, eps > 0): every attack does, except
        ``learned``, only at ``learned_eps`` (default: the two largest eps) and ``learned_modes``."""
        if attack != "learned":
            return True
        learned_eps = self.learned_eps if self.learned_eps is not None else tuple(e for e in self.eps if e > 0)[-2:]
        return mode in self.learned_modes and eps in learned_eps


    def shock(self, attack: str, mode: str, eps: float) -> ShockConfig:
        """The shock of one cell of the grid: every step attacked, best iterate over the restarts."""
        return ShockConfig(eps=eps, norm=self.norm, steps=self.steps, objective=attack, mode=mode, prob=1.0,
                           rule=self.rule, best_iterate=True, restarts=self.restarts, candidates=self.candidates,
                           horizon=self.horizon)


def play(env: TorchVectorEnv, policy, shock: ShockConfig | None, seed: int, adversary=None) -> dict[str, float]:
    """One episode in every environment of ``env`` (``auto_reset=False``) with the deterministic
    policy, under ``shock`` (every step) or none; mean return per agent, system loss per step and the
    shocks' mean budget use ``||delta|| / eps`` (0 without a shock)."""
    stepper = env if shock is None else ShockedVectorEnv(
        env, lambda obs: policy.deterministic_action(obs.float()).to(obs.dtype), shock,
        value_fn=lambda obs: policy.value(obs.float()), seed=seed, adversary=adversary)
    episode = run_episode(stepper, lambda obs, state: policy.deterministic_action(obs.float()).to(env.scenario.dtype),
                          seed)
    returns = functools.reduce(torch.add, episode.rewards.float().unbind(0))  # (B, N), summed step by step
    losses = functools.reduce(torch.add, episode.system_loss.float().unbind(0))
    use = episode.info.get("shock/budget_use")
    return {"return_per_agent": float(returns.mean()), "system_loss": float(losses.mean()) / env.max_steps,
            "budget_use": 0.0 if use is None else float(use.float().mean())}


def evaluate_under_attacks(scenario, policy, grid: AttackGrid, seed: int = EVAL_SEED,
                           adversary_for: Callable[[str, float], Any] | None = None) -> list[dict[str, Any]]:
    """One row per (attack, mode, eps) with ``return_per_agent``, ``system_loss``, ``budget_use``,
    ``ratio_to_reference`` and ``ratio_higher_is_better``; the eps = 0 row of every attack is the
    nominal evaluation (computed once). Per (mode, eps), a row with attack ``worst``: the attack with
    the lowest return, named in ``worst_attack`` (``-`` in the other rows).

    ``adversary_for(mode, eps)``: the ``learned`` attacker (``robustness.adversary.load_or_train`` reuses
    the one saved beside a run); by default one is trained here, in memory, with ``grid.learned_steps``."""
    if adversary_for is None:
        def adversary_for(mode: str, eps: float):
            from robustness.adversary import AdversaryConfig, train_adversary
            config = AdversaryConfig(eps=eps, norm=grid.norm, mode=mode, total_agent_steps=grid.learned_steps)
            return train_adversary(scenario, policy, config)

    env = TorchVectorEnv(scenario, num_envs=grid.episodes, auto_reset=False)
    reference_name = TARGET_REFERENCE.get(scenario.name, scenario.reference_names[0])
    reference = evaluate_policy(scenario, lambda state: scenario.reference_action(state, reference_name),
                                grid.episodes, seed)["system_loss"]

    def row(attack: str, mode: str, eps: float, metrics: dict[str, float]) -> dict[str, Any]:
        return {"attack": attack, "mode": mode, "eps": eps, **metrics,
                "ratio_to_reference": metrics["system_loss"] / reference,
                "ratio_higher_is_better": int(reference < 0), "worst_attack": "-"}

    # the attacks differentiate with respect to the observations only: no weight gradient (same numbers)
    def frozen():
        return frozen_parameters(policy) if isinstance(policy, torch.nn.Module) else contextlib.nullcontext()

    nominal = play(env, policy, None, seed)
    rows = [row("none", "-", 0.0, nominal)]
    for attack in grid.attacks:
        for mode in grid.modes:
            rows.append(row(attack, mode, 0.0, nominal))
            for eps in grid.eps:
                if eps > 0 and grid.evaluates(attack, mode, eps):
                    adversary = adversary_for(mode, eps).shock if attack == "learned" else None
                    with frozen():
                        metrics = play(env, policy, grid.shock(attack, mode, eps), seed, adversary)
                    rows.append(row(attack, mode, eps, metrics))
    return rows + worst_rows(rows)


def worst_rows(rows: list[dict[str, Any]], by: tuple[str, ...] = ("mode", "eps")) -> list[dict[str, Any]]:
    """Per group of the attacked rows that share the ``by`` keys (default: mode and eps), the row with the
    lowest ``return_per_agent`` as attack ``worst``, its attack named in ``worst_attack`` (``none`` at
    eps = 0, where every attack is the nominal evaluation)."""
    worst: dict[tuple, dict[str, Any]] = {}
    for candidate in rows:
        key = tuple(candidate[name] for name in by)
        if candidate["attack"] in ("none", "worst"):
            continue
        if key not in worst or candidate["return_per_agent"] < worst[key]["return_per_agent"]:
            worst[key] = candidate
    return [{**chosen, "attack": "worst", "worst_attack": "none" if chosen["eps"] == 0 else chosen["attack"]}
            for chosen in worst.values()]
