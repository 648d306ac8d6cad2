"""Final evaluation of a trained policy against the scenario's reference solutions."""

from __future__ import annotations

from typing import Any

import torch

from envs.vector import evaluate_policy

# The reference each scenario's learning target is measured against (issue: learning quality).
TARGET_REFERENCE = {"routing": "system_optimum", "commons": "msy", "compute": "fluid_optimal"}
EVAL_SEED_OFFSET = 10_000  # evaluation episodes never reuse training seeds


@torch.no_grad()
def evaluate_against_references(scenario, policy, eval_envs: int, seed: int) -> dict[str, Any]:
    """Mean system loss per step of ``policy``'s deterministic action map (anything with
    ``deterministic_action(obs (B, N, D))``: a native policy, ``agents.sb3.SB3Policy``) and of every
    reference policy, on the same ``eval_envs`` episodes seeded with ``seed``, and the ratio to the
    scenario's target reference.

    ``ratio_to_reference = loss / reference_loss``: for costs (positive losses, routing) 1 is optimal
    and lower is better; for welfare (negative losses, commons, compute) it is the achieved fraction
    of the reference's objective and higher is better.
    """
    def learned(state):
        obs = scenario.observe(state).to(torch.float32)
        return policy.deterministic_action(obs).to(scenario.dtype)

    evaluations = {"learned": evaluate_policy(scenario, learned, eval_envs, seed)}
    for name in scenario.reference_names:
        evaluations[name] = evaluate_policy(
            scenario, lambda state, name=name: scenario.reference_action(state, name), eval_envs, seed)
    losses = {name: evaluation["system_loss"] for name, evaluation in evaluations.items()}
    reference = TARGET_REFERENCE.get(scenario.name, scenario.reference_names[0])
    ratio = losses["learned"] / losses[reference]
    meaning = ("cost ratio, 1 is optimal, lower is better" if losses[reference] > 0
               else "fraction of the reference objective, higher is better")
    return {"system_loss_per_step": losses, "reference": reference, "ratio_to_reference": ratio,
            "ratio_meaning": meaning, "ratio_higher_is_better": losses[reference] < 0, "diagnostics": evaluations}


def summarise(learner, config) -> dict[str, Any]:
    """The final evaluation of a training run (``evaluate_against_references`` on episodes seeded with
    ``config.seed + EVAL_SEED_OFFSET``) with the run's identity. The policy is evaluated in eval mode,
    as ``agents.run.load_policy`` returns it (spectral normalisation's power iteration stands still)."""
    training = learner.policy.training
    learner.policy.eval()
    try:
        evaluation = evaluate_against_references(learner.env.scenario, learner.policy, config.eval_envs,
                                                 config.seed + EVAL_SEED_OFFSET)
    finally:
        learner.policy.train(training)
    return {
        "scenario": learner.env.scenario.name, "method": config.method, "seed": config.seed,
        "agent_steps": learner.agent_steps, "iterations": learner.iteration, "eval_envs": config.eval_envs,
        **evaluation,
    }
