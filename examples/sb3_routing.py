"""SB3 PPO with and without AAJR on the routing scenario, evaluated under PGA shocks.

    python examples/sb3_routing.py                    # 3 seeds, 500k agent-steps each, lambda 1
    python examples/sb3_routing.py --seeds 0 --agent-steps 20000 --save models/

Trains stable-baselines3's ``PPO`` and ``agents.sb3.RegularizedPPO`` (the same PPO with the AAJR penalty
in its loss) on the routing scenario's default config (4 agents, 4 paths, 50 steps; the PPO settings of
``agents/configs/routing.yaml`` through ``agents.sb3.ppo_kwargs``) with the same seeds, then evaluates each
deterministic policy under shared-state PGD attacks on the system loss (``robustness.evaluate``: K = 10
normalized steps, the best iterate over the zero start and 2 random restarts, l2 ball of radius eps,
every step of 64 held-out episodes) and prints the total travel time per
step relative to the system optimum (1 is optimal, lower is better), the mean over seeds.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys

from stable_baselines3 import PPO
from stable_baselines3.common.logger import Logger

from agents.config import resolve
from agents.sb3 import RegularizedPPO, RichProgressCallback, SB3Policy, make_sb3_env, ppo_kwargs
from robustness.evaluate import AttackGrid, evaluate_under_attacks

CONFIG = resolve({"scenario": "routing"})  # agents/configs/routing.yaml, default size: 4 agents, 4 paths, 50 steps


def train(regularized: bool, seed: int, agent_steps: int, reg_coef: float):
    """SB3 PPO (or RegularizedPPO with AAJR) trained for ``agent_steps`` on the routing scenario."""
    env = make_sb3_env("routing", CONFIG.ppo.num_envs, reward_scale=CONFIG.ppo.reward_scale, **CONFIG.env)
    kwargs = {**ppo_kwargs(CONFIG.ppo, CONFIG.env["n_agents"]), "device": "cpu"}  # SB3 runs MLPs best on CPU
    if regularized:
        model = RegularizedPPO("MlpPolicy", env, regularizer="aajr", reg_coef=reg_coef,
                               reg_settings={"eps": 0.1, "steps": 3}, seed=seed, **kwargs)
    else:
        model = PPO("MlpPolicy", env, seed=seed, **kwargs)
    model.set_logger(Logger(folder=None, output_formats=[]))  # SB3's default leaves a /tmp/SB3-* folder per run
    name = "ppo+aajr" if regularized else "ppo"
    return model.learn(agent_steps, callback=RichProgressCallback(f"seed {seed} {name}"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--agent-steps", type=int, default=500_000)
    parser.add_argument("--reg-coef", type=float, default=1.0, help="AAJR weight lambda")
    parser.add_argument("--eps", nargs="+", type=float, default=[0.1, 0.2, 0.3], help="attack budgets")
    parser.add_argument("--save", type=pathlib.Path, default=None, help="save the SB3 models (.zip) here")
    args = parser.parse_args()
    grid = AttackGrid(attacks=("system",), modes=("shared",), eps=tuple(args.eps), steps=10, episodes=64)
    ratios: dict[str, dict[float, list[float]]] = {"ppo": {}, "ppo+aajr": {}}
    for seed in args.seeds:
        for name, regularized in (("ppo", False), ("ppo+aajr", True)):
            model = train(regularized, seed, args.agent_steps, args.reg_coef)
            if args.save is not None:
                args.save.mkdir(parents=True, exist_ok=True)
                model.save(args.save / f"{name}-seed{seed}.zip")
            scenario = model.get_env().get_attr("scenario")[0]
            for row in evaluate_under_attacks(scenario, SB3Policy(model, scenario), grid):
                if row["attack"] == "system":
                    ratios[name].setdefault(row["eps"], []).append(row["ratio_to_reference"])
            print(f"seed {seed}: {name} evaluated under attacks", file=sys.stderr)

    print(f"\nrouting (4 agents, 4 paths), SB3 PPO, {args.agent_steps:,} agent-steps, seeds {args.seeds}, "
          f"AAJR lambda {args.reg_coef}; travel time / system optimum under shared PGA shocks (K=10, l2):\n")
    print("| eps | " + " | ".join(ratios) + " |")
    print("|---|" + "---|" * len(ratios))
    for eps in grid.eps:
        print(f"| {eps:g} | " + " | ".join(f"{statistics.mean(ratios[name][eps]):.3f}" for name in ratios) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
