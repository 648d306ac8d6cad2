"""The cost of one minibatch update with each Jacobian penalty, as a ratio to a plain PPO update.

On one minibatch of a routing rollout (default config: 800 joint transitions of 4 agents), one
thread, every piece timed in the same process in interleaved rounds (median over rounds):

* ``ppo``: the PPO loss, forward and backward (the unit);
* ``aajr K=k``: PPO plus AAJR with k PGA steps (``normalized`` rule), forward and backward; ``sampled``:
  the same with ``reg.sample_steps`` (the JVPs at one drawn step per state and agent); and its parts: the PGA alone (k + 1 objective evaluations, the last without a gradient) and one per-agent
  system-objective evaluation (forward and backward through the policy and the system loss);
* ``smooth``, ``spectral``, ``jacobian``: PPO plus that penalty at its default settings.

The issue's floor for AAJR is (K + 2)x a plain update: K + 1 objective passes plus the penalty.

What each costs inherently (profiled with ``torch.profiler`` on this configuration, one thread):

* a per-agent objective pass is one policy forward and one input-gradient backward at the M x N
  observations (~0.4x a plain update, which is actor *and* critic) plus the system loss of the N
  unilateral deviations (``Scenario.unilateral_system_loss``: the nominal aggregates once plus agent
  i's own change, no copy of the state per agent), ~0.1x in eager per-operation overhead on such small
  tensors; PGA freezes the policy's parameters so that no weight gradient is computed and discarded;
* the AAJR penalty at all K steps is a JVP forward and its reverse pass at K x M x N points: the
  tangent doubles every matrix product and adds the tanh-tangent terms (six (M N, 64) elementwise
  passes per hidden-layer pair), ~1.3-1.6x a plain update *per step*. So plain AAJR costs about
  1 + 0.5 (K + 1) + 1.4 K, above K + 2 for every K: the floor counts the penalty once, and only
  ``reg.sample_steps`` (the JVPs at one drawn step per state and agent, ~1.4x) pays it once;
* ``smooth``: K gradient passes of PGA on the action objective from a random start, the last iterate
  evaluated without a gradient, plus two policy forwards and a backward (the nominal forward is shared
  with PGA's reference);
* ``spectral``: ``power_iterations`` (5) x (JVP forward + VJP) without a graph, then the penalty's JVP
  forward and backward; each JVP recomputes the primal forward (forward mode keeps no linearisation
  without tracing the policy), so an iteration costs ~three policy passes;
* ``jacobian``: the penalty's JVP forward and backward at K (3) x M x N points.

JVPs run on ``torch.autograd.forward_ad`` dual tensors (``regularizers.jvp``): ``torch.func.jvp``'s
per-operation wrapping cost ~1.5 ms per call here, a quarter of a plain update.

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
