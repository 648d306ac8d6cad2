"""Native learner vs stable-baselines3 PPO: same scenarios, sample budget, seeds and hyper-parameters.

For each scenario (the ``small`` configs of ``agents/configs/``) and seed, trains

* ``native``: ``agents.learner.PPOLearner`` as ``agents.run.build_learner`` builds it (method ``ppo``);
* ``sb3``: SB3's ``PPO`` on ``agents.sb3.make_sb3_env`` (the batched parameter-sharing env) with
  ``agents.sb3.ppo_kwargs`` of the same ``PPOConfig``;
* ``sb3-supersuit``: the same on the PettingZoo env through SuperSuit (``make_supersuit_vec_env``);

for the same number of agent-steps, one torch thread per run, and evaluates each deterministic policy
with ``agents.evaluate.evaluate_against_references`` on the same held-out episodes. Prints one
Markdown table: ratio to the reference optimum, IQM [95% CI] over seeds (``robustness.stats``),
training wall-clock per run, and each SB3 variant's wall-clock over the native one's. "native as
good" is ``yes`` when the native IQM is no worse than the unfavourable end of that SB3 variant's CI
(its upper bound for a cost ratio, its lower bound for a fraction of the optimum).

    python bench/sb3.py                                   # routing + commons, seeds 0-4, 200k agent-steps
    python bench/sb3.py --scenarios routing --seeds 0 1 --agent-steps 20000 --jobs 2
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import pathlib
import statistics
import sys
import time

from rich.progress import track

from agents.run import atomic_write

LEARNERS = ("native", "sb3", "sb3-supersuit")
# Both learners train the same policy class: SB3 has one network shared by the agents and no observation
# normalisation inside the policy, so the native learner is configured alike; 128 environments per batch.
MATCHED = ["ppo.num_envs=128", "ppo.share_parameters=true", "ppo.normalise_obs=false"]
EVAL_SEED = 30_000  # held-out evaluation episodes, the same for both learners


def run_one(learner: str, scenario: str, seed: int, agent_steps: int, overrides: list[str]) -> dict:
    """Train one run; returns its ratio to the reference and its training wall-clock."""
    import torch

    from agents.config import merge, parse_overrides, resolve
    from agents.evaluate import evaluate_against_references
    from agents.run import build_learner
    from envs import make_scenario

    torch.set_num_threads(1)
    config = resolve(merge(parse_overrides(overrides), {"scenario": scenario, "size": "small", "seed": seed,
                                                        "total_agent_steps": agent_steps}))
    if learner == "native":
        native = build_learner(config)
        start = time.perf_counter()
        while native.iteration < native.total_iterations:
            native.train_iteration()
        wall = time.perf_counter() - start
        policy, scenario_obj, steps = native.policy, native.env.scenario, native.agent_steps
    else:
        from stable_baselines3 import PPO
        from stable_baselines3.common.logger import Logger

        from agents.sb3 import SB3Policy, make_sb3_env, make_supersuit_vec_env, ppo_kwargs

        ppo = config.ppo
        n_agents = int(config.env["n_agents"])
        if learner == "sb3":
            env = make_sb3_env(scenario, ppo.num_envs, reward_scale=ppo.reward_scale, **config.env)
        else:
            env = make_supersuit_vec_env(scenario, ppo.num_envs, **config.env)
        model = PPO("MlpPolicy", env, seed=seed, device="cpu", **ppo_kwargs(ppo, n_agents))
        model.set_logger(Logger(folder=None, output_formats=[]))  # SB3's default leaves a /tmp/SB3-* folder per run
        start = time.perf_counter()
        model.learn(agent_steps)
        wall = time.perf_counter() - start
        scenario_obj = make_scenario(scenario, **config.env)
        policy, steps = SB3Policy(model, scenario_obj), model.num_timesteps
    evaluation = evaluate_against_references(scenario_obj, policy, config.eval_envs * 4, EVAL_SEED + seed)
    return {"learner": learner, "scenario": scenario, "seed": seed, "agent_steps": steps, "wall_clock_s": wall,
            "ratio_to_reference": evaluation["ratio_to_reference"], "reference": evaluation["reference"],
            "higher_is_better": evaluation["ratio_higher_is_better"]}


def table(results: list[dict], seeds: list[int], learners: list[str]) -> tuple[str, bool]:
    """The Markdown table and whether the native learner is as good as every SB3 variant everywhere."""
    from robustness.stats import iqm_ci

    lines = [f"| scenario | reference | learner | ratio to reference, IQM [95% CI] over seeds {seeds} | agent-steps | "
             f"wall-clock per run (s) | agent-steps/s | wall-clock / native | native as good |",
             "|---|---|---|---|---|---|---|---|---|"]
    all_good = True
    for scenario in dict.fromkeys(r["scenario"] for r in results):
        rows = {learner: [r for r in results if r["scenario"] == scenario and r["learner"] == learner]
                for learner in learners}
        estimates = {learner: iqm_ci([r["ratio_to_reference"] for r in rows[learner]]) for learner in learners}
        walls = {learner: statistics.mean(r["wall_clock_s"] for r in rows[learner]) for learner in learners}
        higher = rows[learners[0]][0]["higher_is_better"]
        for learner in learners:
            estimate, steps = estimates[learner], rows[learner][0]["agent_steps"]
            comparison = "| |"
            if learner != "native" and "native" in learners:
                native = estimates["native"].iqm
                good = native >= estimate.lo if higher else native <= estimate.hi
                all_good &= good
                comparison = f"{walls[learner] / walls['native']:.1f}x | {'yes' if good else 'no'} |"
            direction = "higher" if higher else "lower"
            lines.append(f"| {scenario} | {rows[learner][0]['reference']} ({direction} is better) | {learner} "
                         f"| {estimate.iqm:.3f} [{estimate.lo:.3f}, {estimate.hi:.3f}] | {steps:,} | "
                         f"{walls[learner]:.1f} | {steps / walls[learner]:,.0f} | {comparison}")
    return "\n".join(lines), all_good


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", nargs="+", default=["routing", "commons"],
                        choices=["routing", "commons", "compute"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--agent-steps", type=int, default=200_000, help="training budget of every run")
    parser.add_argument("--learners", nargs="+", default=list(LEARNERS), choices=LEARNERS,
                        help="sb3: SB3 PPO on agents.sb3.make_sb3_env; sb3-supersuit: on the PettingZoo env through "
                             "SuperSuit (stock SB3: actions clipped to the box, rewards not scaled)")
    parser.add_argument("--set", nargs="*", default=MATCHED, metavar="KEY=VALUE",
                        help=f"config fields of every learner (train.py's --set; default: {' '.join(MATCHED)})")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (one torch thread each)")
    parser.add_argument("--out", default=None, help="also write the per-run results to this JSON file")
    args = parser.parse_args()
    if args.agent_steps < 1:
        parser.error(f"--agent-steps must be a positive integer, got {args.agent_steps}")
    jobs = [(learner, scenario, seed)
            for scenario in args.scenarios for seed in args.seeds for learner in args.learners]
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_one, *job, args.agent_steps, args.set) for job in jobs]
        results = [future.result() for future in track(futures, description="training runs")]
    if args.out:
        atomic_write(pathlib.Path(args.out), lambda tmp: tmp.write_text(json.dumps(results, indent=2)))
    text, all_good = table(results, args.seeds, args.learners)
    overrides = f", overrides: {' '.join(args.set)}" if args.set else ""
    print(f"\nsmall configs{overrides}, {args.agent_steps:,} agent-steps per run, "
          f"{args.jobs} run(s) at a time, 1 thread each\n")
    print(text)
    return 0 if all_good else 1


if __name__ == "__main__":
    sys.exit(main())
