"""What ``agents.networks.cache_forward_signature`` saves: the policy's layers with and without a
precomputed ``forward.__signature__``.

``torch.autograd.Function.apply`` binds its arguments with ``inspect.signature(cls.forward)`` on every
call when the Function defines ``setup_context`` (as the policy's layers ``_Dense`` and
``_TanhTangent`` do, for ``torch.func`` support), and ``inspect.signature`` builds the signature anew
each time unless the function carries ``__signature__``. The cost is per layer call, so it weighs
most at small batches: the evaluation attacks' PGD steps on 64 episodes.

Per scenario (default size, the PPO policy that ``agents.run.build_learner`` builds, seed 0), three
computations, each timed with the signature cached and then without it, in interleaved rounds:

* ``attack step``: one PGD step's gradient, ``d/dx sum(pi(x)^2)``, on 64 states (the batch of the
  benchmark's evaluation episodes);
* ``penalty``: the AAJR penalty's ``mean ||J_i(x) u||^2`` by ``regularizers.jvp.jvp_norms`` and its
  backward into the parameters, on 5 x 256 states (PGA steps x states);
* ``ppo loss``: ``agents.ppo.ppo_loss`` and its backward on one minibatch of a collected rollout.

A ratio is the median over ``--rounds`` rounds of (time without) / (time with); above 1 the cache saves
time. Same arguments, same numbers: the script also checks that both give identical outputs.

    python bench/function_apply.py                 # routing, compute and commons
    python bench/function_apply.py --scenario routing --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", nargs="+", default=["routing", "compute", "commons"])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--calls", type=int, default=20, help="calls of a computation per timing")
    args = parser.parse_args()
    if args.rounds < 1 or args.calls < 1:
        parser.error("--rounds and --calls must be positive")

    from agents.config import parse_overrides, resolve
    from agents.networks import _Dense, _TanhTangent
    from agents.ppo import ppo_loss
    from agents.run import build_learner
    from regularizers.jvp import jvp_norms

    torch.set_num_threads(1)
    layers = (_Dense, _TanhTangent)
    signatures = {layer: layer.forward.__signature__ for layer in layers}

    def cached(on: bool) -> None:
        for layer in layers:
            if on:
                layer.forward.__signature__ = signatures[layer]
            else:
                layer.forward.__dict__.pop("__signature__", None)

    print(f"{'scenario':<10}{'computation':<14}{'ms per call (cached)':>22}{'uncached / cached':>20}")
    try:
        for name in args.scenario:
            config = resolve(parse_overrides([f"scenario={name}", "size=default", "method=ppo", "seed=0"]))
            learner = build_learner(config)
            batch, _ = learner.collect()
            policy, cfg = learner.policy, learner.cfg
            minibatch = batch[torch.randperm(len(batch), generator=torch.Generator().manual_seed(0))[
                :len(batch) // cfg.num_minibatches]]
            generator = torch.Generator().manual_seed(0)
            shape = (policy.n_agents, policy.obs_dim)
            states = torch.randn(64, *shape, generator=generator)
            points = torch.randn(5, 256, *shape, generator=generator)
            directions = torch.randn(5, 256, *shape, generator=generator)

            def attack_step() -> torch.Tensor:
                x = states.clone().requires_grad_(True)
                return torch.autograd.grad(policy.deterministic_action(x).square().sum(), x)[0]

            def penalty() -> torch.Tensor:
                policy.zero_grad(set_to_none=True)
                jvp_norms(policy.deterministic_action, points, directions).square().mean().backward()
                return torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])

            def loss() -> torch.Tensor:
                policy.zero_grad(set_to_none=True)
                ppo_loss(policy, minibatch, cfg)[0].backward()
                return torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])

            for label, work in (("attack step", attack_step), ("penalty", penalty), ("ppo loss", loss)):
                outputs = []
                for on in (True, False):
                    cached(on)
                    outputs.append(work())  # warm-up, and the outputs to compare
                if not torch.equal(*outputs):
                    print(f"{name} {label}: outputs differ with and without the cache", file=sys.stderr)
                    return 1
                ratios, with_cache = [], []
                for _ in range(args.rounds):
                    seconds = {}
                    for on in (True, False):
                        cached(on)
                        start = time.perf_counter()
                        for _ in range(args.calls):
                            work()
                        seconds[on] = time.perf_counter() - start
                    ratios.append(seconds[False] / seconds[True])
                    with_cache.append(seconds[True] / args.calls)
                print(f"{name:<10}{label:<14}{statistics.median(with_cache) * 1e3:>22.3f}"
                      f"{statistics.median(ratios):>20.3f}")
    finally:
        cached(True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
