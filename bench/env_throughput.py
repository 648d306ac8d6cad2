"""Environment throughput: env-steps/s and agent-steps/s of each scenario's batched simulator.

Each scenario (commons, routing, compute) runs as one ``envs.TorchVectorEnv`` of B environments with
N = 8 agents and M = 16 resources (commons ``n_resources``, routing ``n_paths`` of the ``parallel``
layout, compute ``n_servers``), auto-resetting at the horizon (100 steps), beside:

* the PettingZoo loop: the same scenario's ``ParallelEnv`` (one environment, dict actions) stepped in
  a Python loop, reset when its episode ends;
* VMAS ``simple_spread`` with N agents and the same B (continuous actions), when ``vmas`` is installed
  (``pip install -e ".[vmas]"``); the row is skipped otherwise.

Random in-box actions are drawn before timing (a pool of 8 joint actions per contender, cycled). Every
contender is timed in turn in each of R interleaved rounds in one process, after one warm-up round;
the table gives the median over rounds, agent-steps/s = N x env-steps/s, and the ratios of each
scenario to VMAS and to its own PettingZoo loop.

    python bench/env_throughput.py                      # B = 4096, 5 rounds of 50 steps, one thread
    python bench/env_throughput.py --rounds 3 --steps 20 --num-envs 1024 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

N_AGENTS = 8
M_RESOURCES = 16
SCENARIO_KWARGS = {
    "commons": {"n_agents": N_AGENTS, "n_resources": M_RESOURCES},
    "routing": {"n_agents": N_AGENTS, "n_paths": M_RESOURCES},
    "compute": {"n_agents": N_AGENTS, "n_servers": M_RESOURCES},
}
POOL = 8  # distinct joint actions drawn per contender, cycled through the timed steps


def batched(name: str, num_envs: int) -> Callable[[int], None]:
    """``run(steps)`` stepping the scenario's ``TorchVectorEnv`` of ``num_envs`` environments."""
    from envs import TorchVectorEnv

    env = TorchVectorEnv(name, num_envs=num_envs, seed=0, **SCENARIO_KWARGS[name])
    env.reset()
    scenario = env.scenario
    generator = torch.Generator().manual_seed(0)
    low, high = scenario.action_low, scenario.action_high
    pool = [low + (high - low) * torch.rand(num_envs, scenario.n_agents, scenario.action_dim, generator=generator,
                                            dtype=scenario.dtype) for _ in range(POOL)]

    def run(steps: int) -> None:
        with torch.no_grad():
            for i in range(steps):
                env.step(pool[i % POOL])
    return run


def pettingzoo_loop(name: str) -> Callable[[int], None]:
    """``run(steps)`` stepping the scenario's PettingZoo ``ParallelEnv`` (one environment) in a Python loop."""
    from envs.pettingzoo_env import make_parallel_env

    env = make_parallel_env(name, **SCENARIO_KWARGS[name])
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    space = env.action_space(env.possible_agents[0])
    pool = [{agent: rng.uniform(space.low, space.high).astype(np.float32) for agent in env.possible_agents}
            for _ in range(POOL)]

    def run(steps: int) -> None:
        for i in range(steps):
            if not env.agents:
                env.reset()
            env.step(pool[i % POOL])
    return run


def vmas_simple_spread(num_envs: int) -> Callable[[int], None]:
    """``run(steps)`` stepping VMAS ``simple_spread`` with ``N_AGENTS`` agents and ``num_envs`` environments."""
    import vmas

    env = vmas.make_env("simple_spread", num_envs=num_envs, device="cpu", continuous_actions=True,
                        n_agents=N_AGENTS, seed=0)
    env.reset()
    generator = torch.Generator().manual_seed(0)
    pool = []
    for _ in range(POOL):
        joint = []
        for agent in env.agents:
            space = env.get_agent_action_space(agent)
            low, high = torch.as_tensor(space.low), torch.as_tensor(space.high)
            joint.append(low + (high - low) * torch.rand(num_envs, *space.shape, generator=generator))
        pool.append(joint)

    def run(steps: int) -> None:
        with torch.no_grad():
            for i in range(steps):
                env.step(pool[i % POOL])
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median reported)")
    parser.add_argument("--num-envs", type=int, default=4096, help="B, batched environments")
    parser.add_argument("--steps", type=int, default=50, help="batched steps per contender and round")
    parser.add_argument("--pettingzoo-steps", type=int, default=300,
                        help="steps of each PettingZoo loop per round (one environment)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    for option in ("rounds", "num_envs", "steps", "pettingzoo_steps", "threads"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be a positive integer, got {getattr(args, option)}")

    torch.set_num_threads(args.threads)
    contenders: dict[str, tuple[Callable[[int], None], int, int]] = {}  # name: (run, steps, envs per step)
    for name in SCENARIO_KWARGS:
        contenders[name] = (batched(name, args.num_envs), args.steps, args.num_envs)
    for name in SCENARIO_KWARGS:
        contenders[f"{name} PettingZoo loop"] = (pettingzoo_loop(name), args.pettingzoo_steps, 1)
    try:
        contenders["VMAS simple_spread"] = (vmas_simple_spread(args.num_envs), args.steps, args.num_envs)
        skipped = None
    except ImportError:
        skipped = 'VMAS row skipped: vmas is not installed (pip install -e ".[vmas]", or pip install vmas)'

    for run, steps, _ in contenders.values():  # warm-up round, untimed
        run(min(steps, 10))
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, (run, steps, envs_per_step) in contenders.items():
            start = time.perf_counter()
            run(steps)
            rates[name].append(steps * envs_per_step / (time.perf_counter() - start))
    median = {name: statistics.median(values) for name, values in rates.items()}

    print(f"B = {args.num_envs}, N = {N_AGENTS}, M = {M_RESOURCES} (commons n_resources, routing n_paths, compute "
          f"n_servers); torch {torch.__version__}, {args.threads} thread(s); median of {args.rounds} interleaved "
          f"rounds ({args.steps} batched steps, {args.pettingzoo_steps} PettingZoo steps per round)")
    if skipped:
        print(skipped)
    print()
    print("| contender | env-steps/s | agent-steps/s | vs VMAS simple_spread | vs its PettingZoo loop |")
    print("|---|---:|---:|---:|---:|")
    vmas_rate = median.get("VMAS simple_spread")
    for name, rate in median.items():
        versus_vmas = versus_loop = ""
        if name in SCENARIO_KWARGS:
            versus_vmas = f"{rate / vmas_rate:.1f}x" if vmas_rate else "n/a"
            versus_loop = f"{rate / median[f'{name} PettingZoo loop']:.0f}x"
        print(f"| {name} | {rate:,.0f} | {rate * N_AGENTS:,.0f} | {versus_vmas} | {versus_loop} |")
    print()
    print(f"compute / routing env-steps/s: {median['compute'] / median['routing']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
