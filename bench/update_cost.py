"""The cost of one minibatch update with each Jacobian penalty, as a ratio to a plain PPO update.

On one minibatch of a routing rollout (default config: 800 joint transitions of 4 agents), one
thread, every piece timed in the same process in interleaved rounds (median over rounds):

* ``ppo``: the PPO loss, forward and backward (the unit);
* ``aajr K=k``: PPO plus AAJR with k PGA steps (``normalized`` rule), forward and backward; ``sampled``:
  the same with ``reg.sample_steps`` (the JVPs at one drawn step per state and agent); and its parts: the PGA alone (k + 1 objective evaluations, the last without a gradient) and one per-agent
  system-objective evaluation (forward and backward through the policy and the system loss);
* ``smooth``, ``spectral``, ``jacobian``: PPO plus that penalty at its default settings.

The issue's floor for AAJR is (K + 2)x a plain update: K + 1 objective passes plus the penalty.

    python bench/update_cost.py                      # K = 1 3 5 10, 7 rounds
    python bench/update_cost.py --steps 3 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="routing")
    parser.add_argument("--size", default="default")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 3, 5, 10], help="AAJR's PGA steps K")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if args.rounds < 1 or any(k < 1 for k in args.steps):
        parser.error("--rounds and --steps must be positive")

    from agents.config import parse_overrides, resolve
    from agents.ppo import ppo_loss
    from agents.run import build_learner
    from regularizers import METHODS, make_regularizer
    from regularizers.jacobian import per_agent_system_objective

    torch.set_num_threads(1)
    config = resolve(parse_overrides([f"scenario={args.scenario}", f"size={args.size}", "method=ppo", "seed=0"]))
    learner = build_learner(config)
    batch, _ = learner.collect()
    size = len(batch) // learner.cfg.num_minibatches
    minibatch = batch[torch.randperm(len(batch), generator=torch.Generator().manual_seed(0))[:size]]
    policy, scenario, generator = learner.policy, learner.env.scenario, torch.Generator().manual_seed(0)

    def with_penalty(penalty):
        def step():
            loss, _ = ppo_loss(policy, minibatch, learner.cfg)
            value, _ = penalty(policy, minibatch, generator)
            (loss + value).backward()
        return step

    def plain():
        loss, _ = ppo_loss(policy, minibatch, learner.cfg)
        loss.backward()

    obs, objective = per_agent_system_objective(policy, minibatch, scenario)

    def objective_pass():
        delta = torch.zeros_like(obs, requires_grad=True)
        torch.autograd.grad(objective(delta).sum(), delta)

    pieces = {"ppo": plain, "objective pass": objective_pass}
    for k in args.steps:
        settings = METHODS["aajr"].settings(steps=k)
        pieces[f"aajr K={k}"] = with_penalty(make_regularizer("aajr", scenario, settings))
        sampled = METHODS["aajr"].settings(steps=k, sample_steps=True)
        pieces[f"aajr K={k} sampled"] = with_penalty(make_regularizer("aajr", scenario, sampled))
        pga_settings = settings

        def pga_only(s=pga_settings):
            from regularizers.jacobian import aajr_trajectory
            aajr_trajectory(policy, minibatch, scenario, s.eps, s.steps, s.norm, rule=s.rule)
        pieces[f"  PGA K={k}"] = pga_only
    for name in ("smooth", "spectral", "jacobian"):
        pieces[name] = with_penalty(make_regularizer(name, scenario))
    times: dict[str, list[float]] = {name: [] for name in pieces}
    for _ in range(args.rounds):
        for name, piece in pieces.items():
            start = time.perf_counter()
            piece()
            times[name].append(time.perf_counter() - start)
            policy.zero_grad(set_to_none=True)
    unit = statistics.median(times["ppo"])
    print(f"{args.scenario}/{args.size}: minibatch of {size} joint transitions x {scenario.n_agents} agents, "
          f"one thread, median of {args.rounds} interleaved rounds; ratio to a plain PPO update ({unit * 1e3:.1f} ms)")
    for name, values in times.items():
        floor = ""
        if name.startswith("aajr K="):
            k = int(name.split("=")[1].split()[0])
            floor = f"   floor (K + 2) = {k + 2}"
        print(f"{name:16s} {statistics.median(values) / unit:6.2f}x{floor}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
