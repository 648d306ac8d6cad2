"""Shock benchmark: PGA ``system`` shocks against random and demand-spike shocks of the same budget,
and the cost of a shocked step. Prints the README's tables.

    python bench/shocks.py                    # 100 states per scenario, eps 0.05 0.1 0.2, K 1 5 10

Victim: a fixed, seeded linear-sigmoid policy on raw observations (the same in every run), so the
numbers measure the attacks, not a training run. Gain: mean increase of the system loss of the step
over the unshocked joint action (shared shock, l2 ball, K = 10 PGA steps, eta = 2.5 eps / K).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import envs
from envs.shock_wrapper import ShockConfig, ShockedVectorEnv, compute_shock


def fixed_policy(scenario, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(scenario.obs_dim, scenario.action_dim, generator=generator) / scenario.obs_dim ** 0.5
    low, high = scenario.action_low, scenario.action_high
    return lambda obs: low + (high - low) * torch.sigmoid(2.0 * (obs @ weights))


def states_after_warmup(name: str, num_states: int, policy, seed: int = 0):
    env = envs.TorchVectorEnv(name, num_envs=num_states, seed=seed)
    obs = env.reset()
    for _ in range(5):
        obs = env.step(policy(obs)).obs
    return env, obs


def gain_table(num_states: int, eps_values: list[float]) -> str:
    lines = ["| scenario | eps | PGA gain | random gain | spike gain | PGA >= random |", "|---|---|---|---|---|---|"]
    for name in sorted(envs.SCENARIOS):
        scenario = envs.make_scenario(name)
        policy = fixed_policy(scenario)
        env, obs = states_after_warmup(name, num_states, policy)
        for eps in eps_values:
            gains = {}
            for objective in ("system", "random", "spike"):
                config = ShockConfig(eps=eps, steps=10, objective=objective)
                _, info = compute_shock(env.scenario, env.state, obs, policy, config, envs.make_generator(1))
                gains[objective] = float(info["shock/gain"].mean())
            lines.append(f"| {name} | {eps} | {gains['system']:+.5f} | {gains['random']:+.5f} | "
                         f"{gains['spike']:+.5f} | {'yes' if gains['system'] >= gains['random'] else 'no'} |")
    return "\n".join(lines)


def cost_table(num_envs: int, steps_values: list[int], repeats: int) -> str:
    lines = [f"| scenario | K | shocked step / plain step (median of {repeats}, B={num_envs}) |", "|---|---|---|"]
    for name in sorted(envs.SCENARIOS):
        env = envs.TorchVectorEnv(name, num_envs=num_envs, seed=0)
        policy = fixed_policy(env.scenario)
        for steps in steps_values:
            shocked = ShockedVectorEnv(envs.TorchVectorEnv(name, num_envs=num_envs, seed=0), policy,
                                       ShockConfig(eps=0.1, steps=steps), seed=0)
            ratios = []
            for plain_env in (env,):
                obs_plain, obs_shocked = plain_env.reset(), shocked.reset()
                for _ in range(repeats):
                    start = time.perf_counter()
                    obs_plain = plain_env.step(policy(obs_plain)).obs
                    plain = time.perf_counter() - start
                    start = time.perf_counter()
                    obs_shocked = shocked.step(policy(obs_shocked)).obs
                    ratios.append((time.perf_counter() - start) / plain)
            lines.append(f"| {name} | {steps} | {statistics.median(ratios):.1f}x |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--states", type=int, default=100)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--cost-envs", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(gain_table(args.states, args.eps))
    print()
    print(cost_table(args.cost_envs, args.steps, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
