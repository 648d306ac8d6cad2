"""Which PGA step rule the training-time trajectories should use: ``gradient`` or ``normalized``.

For ``aajr`` and ``smooth`` (``reg.rule``) and ``adv`` (``shock.rule``) on the routing and compute
configs, one run per rule and seed: how much of its budget the training-time PGA uses (last 5
iterations), the trained policy's nominal return, and its worst-case return over the attack suite
(``robustness.evaluate``: normalized PGD with restarts on the system, action and value objectives,
random search, rollout, random and spike shocks; shared shock) at eps 0.1 and 0.2.

    python bench/training_rule.py --jobs 2                 # small configs, seeds 0 and 1
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import pathlib
import statistics
import sys
import time

METHODS = ("aajr", "smooth", "adv")
RULES = ("gradient", "normalized")
EPS = (0.1, 0.2)
# what each method logs about its training-time PGA: budget use, or the PGA's move from a random start
TRAINING_USE = {"aajr": "reg/budget_use", "smooth": "reg/pga_move", "adv": "shock/budget_use"}


def run_one(scenario: str, method: str, rule: str, seed: int, size: str, runs: str, episodes: int) -> dict:
    import csv

    import torch

    from agents.config import parse_overrides, resolve
    from agents.run import SUMMARY, load_run, train
    from robustness.evaluate import AttackGrid, evaluate_under_attacks

    torch.set_num_threads(1)
    key = "shock.rule" if method == "adv" else "reg.rule"
    config = resolve(parse_overrides([f"scenario={scenario}", f"size={size}", f"method={method}", f"seed={seed}",
                                      f"{key}={rule}"]))
    run_dir = pathlib.Path(runs) / f"{scenario}-{size}-{method}-{rule}-seed{seed}"
    start = time.perf_counter()
    if not (run_dir / SUMMARY).exists():
        train(config, run_dir, progress=False)
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))[-5:]
    use_key = TRAINING_USE[method]
    use = statistics.fmean(float(row[use_key]) for row in rows) if use_key in rows[-1] else float("nan")
    _, scenario_obj, policy = load_run(run_dir)
    grid = AttackGrid(attacks=("random", "spike", "system", "action", "value", "random_search", "rollout"),
                      modes=("shared",), eps=EPS, episodes=episodes)
    evaluations = evaluate_under_attacks(scenario_obj, policy, grid)
    nominal = next(row for row in evaluations if row["attack"] == "none")["return_per_agent"]
    worst = {f"worst_{row['eps']:g}": row["return_per_agent"] for row in evaluations
             if row["attack"] == "worst" and row["eps"] > 0}
    attack = {f"worst_attack_{row['eps']:g}": row["worst_attack"] for row in evaluations
              if row["attack"] == "worst" and row["eps"] > 0}
    return {"scenario": scenario, "method": method, "rule": rule, "seed": seed, "training_use": use,
            "nominal": nominal, **worst, **attack, "seconds": time.perf_counter() - start}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", nargs="+", default=["routing", "compute"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--size", default="small")
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--runs", default="runs/bench-training-rule")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", type=pathlib.Path, help="write the rows here (JSON)")
    args = parser.parse_args()
    start = time.perf_counter()
    jobs = [(s, m, r, seed) for s in args.scenarios for m in args.methods for r in RULES for seed in args.seeds]
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_one, *job, args.size, args.runs, args.episodes) for job in jobs]
        rows = [future.result() for future in futures]
    print(f"{args.size} configs, seeds {args.seeds}, {args.episodes} episodes, shared shock; means over seeds; "
          f"{time.perf_counter() - start:.0f} s")
    print("| scenario | method | rule | training PGA budget use | nominal return | worst return eps=0.1 | "
          "worst return eps=0.2 | worst attacks (eps=0.2) |")
    print("|---|---|---|---|---|---|---|---|")
    for scenario in args.scenarios:
        for method in args.methods:
            for rule in RULES:
                cell = [row for row in rows
                        if (row["scenario"], row["method"], row["rule"]) == (scenario, method, rule)]
                mean = lambda key: statistics.fmean(row[key] for row in cell)  # noqa: E731
                attacks = ", ".join(sorted({row["worst_attack_0.2"] for row in cell}))
                print(f"| {scenario} | {method} | {rule} | {mean('training_use'):.3f} | {mean('nominal'):.4g} | "
                      f"{mean('worst_0.1'):.4g} | {mean('worst_0.2'):.4g} | {attacks} |")
    if args.out is not None:
        from agents.run import atomic_write
        text = json.dumps(rows, indent=1)
        atomic_write(args.out, lambda tmp: tmp.write_text(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
