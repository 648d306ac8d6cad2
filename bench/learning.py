"""Learning-quality benchmark: PPO on each scenario's default config, several seeds, against the
scenario's reference optimum. Prints a markdown table (the one in the README).

    python bench/learning.py                      # routing, commons, compute x seeds 0 1 2
    python bench/learning.py --scenarios commons --seeds 0 --jobs 2

Targets (issue "Multi-agent PPO learner"): routing total travel time within 5% of the Frank-Wolfe
system optimum (ratio <= 1.05); commons welfare >= 90% of the MSY reference (ratio >= 0.90) with no
collapse; compute objective >= 90% of the fluid-optimal one (ratio >= 0.90); each within 2M agent-steps.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import pathlib
import statistics
import sys
import time

from envs.core import SCENARIOS, meets_learning_target

SCENARIO_NAMES = ("routing", "commons", "compute")


def run_one(scenario: str, seed: int, out_dir: str, threads: int) -> dict:
    import torch

    from agents.config import resolve
    from agents.run import CHECKPOINT, train

    torch.set_num_threads(threads)
    config = resolve({"scenario": scenario, "seed": seed})
    run_dir = pathlib.Path(out_dir) / f"{scenario}-seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CHECKPOINT).unlink(missing_ok=True)
    start = time.perf_counter()
    summary = train(config, run_dir, progress=False)
    summary["wall_clock_s"] = time.perf_counter() - start
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIO_NAMES), choices=SCENARIO_NAMES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each gets 2 // jobs threads)")
    parser.add_argument("--out", default="runs/bench-learning")
    args = parser.parse_args()
    threads = max(1, 2 // args.jobs)
    jobs = [(scenario, seed) for scenario in args.scenarios for seed in args.seeds]
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {job: pool.submit(run_one, *job, args.out, threads) for job in jobs}
        results = {job: future.result() for job, future in futures.items()}

    print(f"\n| scenario | reference | target | ratio per seed ({', '.join(map(str, args.seeds))}) | mean | "
          f"agent-steps | wall-clock per run (s, {threads} thread{'s' * (threads > 1)}) | collapsed | met |")
    print("|---|---|---|---|---|---|---|---|---|")
    all_met = True
    for scenario in args.scenarios:
        summaries = [results[(scenario, seed)] for seed in args.seeds]
        ratios = [s["ratio_to_reference"] for s in summaries]
        op, bound = SCENARIOS[scenario].learning_target
        met = all(meets_learning_target(scenario, r) for r in ratios)
        collapsed = max(s["diagnostics"]["learned"].get("final/collapsed_fraction", 0.0) for s in summaries)
        met &= collapsed == 0.0
        all_met &= met
        wall = statistics.mean(s["wall_clock_s"] for s in summaries)
        print(f"| {scenario} | {summaries[0]['reference']} | {op} {bound:.2f} | "
              f"{' '.join(f'{r:.3f}' for r in ratios)} | {statistics.mean(ratios):.3f} | "
              f"{summaries[0]['agent_steps']:,} | {wall:.0f} | {collapsed:.0%} | {'yes' if met else 'no'} |")
    return 0 if all_met else 1


if __name__ == "__main__":
    sys.exit(main())
