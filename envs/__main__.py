"""``python -m envs``: describe a scenario and roll out its reference policies.

Prints the scenario's features (shock channels marked), its closed-form references, and the mean
per-step system loss of each reference policy and of uniformly random actions over a batch of
seeded episodes, e.g.::

    python -m envs --scenario routing --set layout=pigou --num-envs 256

Each rollout's line appears as soon as it is done, with its time. The rollouts run on one torch thread
by default (``--threads``): their tensors (a few hundred environments x agents) are too small for
intra-op parallelism to help, and on a busy machine a second thread made the routing references' solver
(a bisection per step) 10-15x slower, for the same numbers.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import yaml

from envs.core import (
    SCENARIOS,
    check_positive_int,
    check_seed,
    derived_seed,
    make_generator,
    make_scenario,
)
from envs.vector import evaluate_policy


def parse_assignments(assignments: list[str]) -> dict:
    """``["n_agents=4", "layout=pigou"]`` -> ``{"n_agents": 4, "layout": "pigou"}`` (values read as YAML)."""
    kwargs = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        kwargs[key] = yaml.safe_load(value)
    return kwargs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m envs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="routing", help=f"one of {', '.join(sorted(SCENARIOS))}")
    parser.add_argument("--preset", default="default", help="named size: small, default or large")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="scenario arguments")
    parser.add_argument("--num-envs", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of the rollouts (default: 1)")
    args = parser.parse_args(argv)
    try:
        if args.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {args.scenario!r}; allowed: {', '.join(sorted(SCENARIOS))}")
        presets = SCENARIOS[args.scenario].presets
        if args.preset not in presets:
            raise ValueError(f"unknown preset {args.preset!r}; allowed: {', '.join(presets)}")
        kwargs = {**presets[args.preset], **parse_assignments(args.set)}
        check_positive_int("--num-envs", args.num_envs)
        check_seed("--seed", args.seed)
        check_positive_int("--threads", args.threads)
        scenario = make_scenario(args.scenario, device=args.device, **kwargs)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    print(f"{scenario}\n")
    print(f"agents N={scenario.n_agents}, obs_dim={scenario.obs_dim}, action_dim={scenario.action_dim}, "
          f"horizon={scenario.horizon}")
    shocked = [name for name, flag in zip(scenario.feature_names, scenario.shock_mask.tolist()) if flag]
    print(f"shock channels ({len(shocked)}/{scenario.obs_dim}): {', '.join(shocked)}")
    for key, value in scenario.references().items():
        print(f"  {key:>28s} = {value:.6g}")

    def uniform(state):
        shape = (state["t"].shape[0], scenario.n_agents, scenario.action_dim)
        noise = torch.rand(shape, generator=policy_generator, device=scenario.device, dtype=scenario.dtype)
        return scenario.action_low + (scenario.action_high - scenario.action_low) * noise

    policy_generator = make_generator(derived_seed(args.seed, 1), scenario.device)
    policies = {name: (lambda state, name=name: scenario.reference_action(state, name))
                for name in scenario.reference_names}
    policies["random"] = uniform
    print(f"\nmean system loss per step ({args.num_envs} episodes, seed {args.seed}):")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        for name, policy in policies.items():
            print(f"  {name:>28s}   ", end="", flush=True)  # the name while its rollout runs
            start = time.perf_counter()
            loss = evaluate_policy(scenario, policy, args.num_envs, args.seed)["system_loss"]
            print(f"{loss:<12.6g} ({time.perf_counter() - start:.1f} s)", flush=True)
    finally:
        torch.set_num_threads(threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
