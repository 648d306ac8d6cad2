"""Population training against single runs one after another: agent-steps per second of each.

For each method and population size P, P single-run learners (seeds 0..P-1, ``agents.run.build_learner``)
and one population of the same P runs (``agents.population_run.build_population_learner``) train in the
same process, in interleaved rounds: a round times ``--iterations`` iterations (rollout and update) of
every single learner in turn, then as many of the population. The table gives the median agent-steps/s
over rounds, counted over all P runs, and the ratio population / sequential (above 1: the population is
faster). One warm-up iteration of each is not timed.

    python bench/population.py                                   # routing default, ppo and aajr, P = 1 4 16
    python bench/population.py --members 1 8 64 256 --device cuda --sequential-max 8   # on a GPU

On a GPU the single runs are timed only up to ``--sequential-max`` members (their rate per run does not
change with P, so the sequential rate of a larger P is that of the largest measured); the population
is timed at every P.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def timed(learners, iterations: int) -> float:
    """Seconds for ``iterations`` training iterations of every learner, one after another."""
    if learners[0].device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for learner in learners:
        for _ in range(iterations):
            learner.train_iteration()
    if learners[0].device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="routing")
    parser.add_argument("--size", default="default")
    parser.add_argument("--methods", nargs="+", default=["ppo", "aajr"])
    parser.add_argument("--members", type=int, nargs="+", default=[1, 4, 16], help="population sizes P")
    parser.add_argument("--iterations", type=int, default=2, help="timed iterations per learner and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sequential-max", type=int, default=0,
                        help="time single runs up to this P only (0: every P)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="run config overrides")
    args = parser.parse_args()
    for name in ("iterations", "rounds", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if any(p < 1 for p in args.members) or args.sequential_max < 0:
        parser.error(f"--members must be positive integers and --sequential-max >= 0, got {args.members}, "
                     f"{args.sequential_max}")

    from agents.config import ConfigError, parse_overrides, resolve
    from agents.population_run import build_population_learner
    from agents.run import build_learner

    torch.set_num_threads(args.threads)
    print(f"{args.scenario} {args.size} on {args.device}, {args.threads} thread(s), {args.iterations} iterations "
          f"per learner, median of {args.rounds} rounds\n")
    print("| method | P | sequential agent-steps/s | population agent-steps/s | population / sequential |")
    print("|---|---:|---:|---:|---:|")
    for method in args.methods:
        sequential_rate = None
        for members in args.members:
            try:
                configs = [resolve(parse_overrides([f"scenario={args.scenario}", f"size={args.size}", f"method={method}",
                                                    f"seed={seed}", f"device={args.device}", *args.set]))
                           for seed in range(members)]
                population = build_population_learner(configs)
                singles = ([build_learner(config) for config in configs]
                           if not args.sequential_max or members <= args.sequential_max else None)
            except ConfigError as error:
                print(f"error: {error}", file=sys.stderr)
                return 2
            steps = configs[0].ppo.num_envs * configs[0].ppo.rollout_steps * population.env.n_agents
            timed([population], 1)
            if singles is not None:
                timed(singles, 1)
            seconds_population, seconds_sequential = [], []
            for _ in range(args.rounds):
                if singles is not None:
                    seconds_sequential.append(timed(singles, args.iterations))
                seconds_population.append(timed([population], args.iterations))
            total = steps * members * args.iterations
            population_rate = total / statistics.median(seconds_population)
            if singles is not None:
                sequential_rate = total / statistics.median(seconds_sequential)
                marker = ""
            else:
                marker = " (P <= %d)" % args.sequential_max
            if sequential_rate is None:
                print(f"| {method} | {members} | - | {population_rate:,.0f} | - |")
            else:
                print(f"| {method} | {members} | {sequential_rate:,.0f}{marker} | {population_rate:,.0f} | "
                      f"{population_rate / sequential_rate:.2f} |")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
