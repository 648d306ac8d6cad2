"""Evaluation attacks with PGD's runs in one batch against the same runs one after another.

For each scenario (default config) a freshly initialised policy of its default PPO config is attacked
on the same seeded episodes (``robustness.evaluate.evaluate_under_attacks``, shared shock, eps 0.2, the
benchmark's K = 20 steps and 2 random restarts besides the zero start) by each gradient attack, with
``envs.shock_wrapper``'s PGD either batched (``batched_pgd_attack``: the zero start and the restarts, and
random search's candidates, in one pass per step) or sequential (``pgd_attack`` run by run, the
candidates one by one). Both are timed in the same process in interleaved rounds; the table gives the
median seconds and the ratio sequential / batched, and checks that both give the same mean return,
system loss and budget use (to 1e-6 relative; the shocks themselves are compared in
``tests/test_rollout_attack.py``).

    python bench/batched_attacks.py                        # compute and routing, 3 rounds
    python bench/batched_attacks.py --scenarios compute --episodes 16 --rounds 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

ATTACKS = ("system", "value", "action", "random_search", "rollout")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", nargs="+", default=["compute", "routing"],
                        choices=["commons", "compute", "routing"])
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=ATTACKS)
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="PGA steps K of the attacks")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for name in ("episodes", "steps", "rounds"):
        if getattr(args, name) < 1:
            parser.exit(2, f"--{name} must be positive, got {getattr(args, name)}\n")
    torch.set_num_threads(1)

    import envs
    import envs.shock_wrapper as shock_wrapper
    from agents.config import TrainConfig
    from agents.policy import make_policy
    from envs.shocks import pgd_attack
    from robustness.evaluate import AttackGrid, evaluate_under_attacks

    batched, batched_search = shock_wrapper.batched_pgd_attack, shock_wrapper.random_search

    def sequential(objective_of, *pga_args, **kwargs):
        return pgd_attack(objective_of(1), *pga_args, **kwargs)

    def sequential_search(*search_args, objective_of=None):  # the candidates one by one
        return batched_search(*search_args)

    print("| scenario | attack | sequential (s) | batched (s) | speed-up | same returns |")
    print("|---|---|---|---|---|---|")
    for scenario_name in args.scenarios:
        scenario = envs.make_scenario(scenario_name, **envs.SCENARIOS[scenario_name].presets["default"])
        torch.manual_seed(0)
        policy = make_policy(scenario, TrainConfig(scenario=scenario_name).ppo)
        for attack in args.attacks:
            grid = AttackGrid(attacks=(attack,), modes=("shared",), eps=(0.2,), steps=args.steps,
                              episodes=args.episodes)
            times: dict[str, list[float]] = {"sequential": [], "batched": []}
            returns = {}
            for _ in range(args.rounds):
                for label, attack_fn, search_fn in (("sequential", sequential, sequential_search),
                                                    ("batched", batched, batched_search)):
                    shock_wrapper.batched_pgd_attack, shock_wrapper.random_search = attack_fn, search_fn
                    start = time.perf_counter()
                    rows = evaluate_under_attacks(scenario, policy, grid)
                    times[label].append(time.perf_counter() - start)
                    returns[label] = [(row["return_per_agent"], row["system_loss"], row["budget_use"]) for row in rows]
            shock_wrapper.batched_pgd_attack, shock_wrapper.random_search = batched, batched_search
            seq, bat = statistics.median(times["sequential"]), statistics.median(times["batched"])
            same = all(abs(a - b) <= 1e-6 * max(1.0, abs(a)) for first, second in zip(returns["sequential"],
                                                                                       returns["batched"])
                       for a, b in zip(first, second))
            print(f"| {scenario_name} | {attack} | {seq:.2f} | {bat:.2f} | {seq / bat:.2f}x | {'yes' if same else 'no'} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
