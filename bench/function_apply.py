"""What the policy layers' precomputed forward signature saves (``agents.networks._cached_forward_signature``).

``torch.autograd.Function.apply`` binds its arguments with ``inspect.signature(cls.forward)`` on every
call when the Function defines ``setup_context`` (as the policy's layers ``agents.networks.FUNCTIONS`` do,
for ``torch.func`` support), and ``inspect.signature`` builds the signature anew each time unless the
function carries ``__signature__``. The cost is per layer call, so it weighs most at small batches:
the evaluation attacks' PGD steps on 64 episodes.

Per scenario (``--size``, the PPO policy that ``agents.run.build_learner`` builds, seed 0), three
computations of the policy alone, each timed with the signature cached and without it:

* ``attack step``: the input gradient of one PGD step through the policy, ``d/dx sum(pi(x)^2)``, on 64
  states (the batch of the benchmark's evaluation episodes);
* ``penalty``: AAJR's ``mean ||J_i(x) u||^2`` by ``regularizers.jvp.jvp_norms`` and its backward into the
  parameters, at K x M points: K = 3 PGA steps (``reg.steps``' default), M = one minibatch's states;
* ``ppo loss``: ``agents.ppo.ppo_loss`` and its backward on that minibatch of a collected rollout.

Each round times both modes, alternating which goes first; a ratio is the median over ``--rounds``
rounds of (time without) / (time with): above 1 the cache saves time. The script also checks that
both modes give identical outputs (exit code 1 otherwise); that guards the benchmark's own setup, since
the cache cannot change a number.

    python bench/function_apply.py                 # routing, compute and commons
    python bench/function_apply.py --scenario routing --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

WARMUP = 3  # calls of each computation in each mode before timing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", nargs="+", default=["routing", "compute", "commons"])
    parser.add_argument("--size", default="default", help="small, default, large")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--calls", type=int, default=20, help="calls of a computation per timing")
    args = parser.parse_args()
    if args.rounds < 1 or args.calls < 1:
        parser.error("--rounds and --calls must be positive")

    from agents.config import ConfigError, parse_overrides, resolve
    from agents.networks import FUNCTIONS
    from agents.ppo import ppo_loss
    from agents.run import build_learner
    from regularizers.jvp import jvp_norms
    from regularizers.settings import PGASettings

    torch.set_num_threads(1)
    signatures = {layer: layer.forward.__signature__ for layer in FUNCTIONS}

    def cached(on: bool) -> None:
        for layer in FUNCTIONS:
            if on:
                layer.forward.__signature__ = signatures[layer]
            else:
                layer.forward.__dict__.pop("__signature__", None)

    print("| scenario | computation | states | ms per call (cached) | uncached / cached |\n|---|---|---|---|---|")
    try:
        for name in args.scenario:
            try:
                config = resolve(parse_overrides([f"scenario={name}", f"size={args.size}", "method=ppo", "seed=0"]))
            except ConfigError as error:
                parser.error(str(error))
            learner = build_learner(config)
            batch, _ = learner.collect()
            policy, cfg = learner.policy, learner.cfg
            size = len(batch) // cfg.num_minibatches
            minibatch = batch[torch.randperm(len(batch), generator=torch.Generator().manual_seed(0))[:size]]
            generator = torch.Generator().manual_seed(0)
            shape, steps = (policy.n_agents, policy.obs_dim), PGASettings().steps
            states = torch.randn(64, *shape, generator=generator)
            points = torch.randn(steps, size, *shape, generator=generator)
            directions = torch.randn(steps, size, *shape, generator=generator)

            def attack_step() -> torch.Tensor:
                x = states.clone().requires_grad_(True)
                return torch.autograd.grad(policy.deterministic_action(x).square().sum(), x)[0]

            def parameter_gradient(objective) -> torch.Tensor:
                """The flattened gradient of ``objective()`` in the policy's parameters."""
                policy.zero_grad(set_to_none=True)
                objective().backward()
                return torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])

            def penalty() -> torch.Tensor:
                return parameter_gradient(
                    lambda: jvp_norms(policy.deterministic_action, points, directions).square().mean())

            def loss() -> torch.Tensor:
                return parameter_gradient(lambda: ppo_loss(policy, minibatch, cfg)[0])

            for label, work, rows in (("attack step", attack_step, "64"), ("penalty", penalty, f"{steps} x {size}"),
                                      ("ppo loss", loss, str(size))):
                outputs = {}
                for on in (True, False):
                    cached(on)
                    for _ in range(WARMUP):
                        outputs[on] = work()
                if not torch.equal(outputs[True], outputs[False]):
                    print(f"{name} {label}: outputs differ with and without the cache", file=sys.stderr)
                    return 1
                ratios, with_cache = [], []
                for round_ in range(args.rounds):
                    seconds = {}
                    for on in ((True, False) if round_ % 2 == 0 else (False, True)):
                        cached(on)
                        start = time.perf_counter()
                        for _ in range(args.calls):
                            work()
                        seconds[on] = time.perf_counter() - start
                    ratios.append(seconds[False] / seconds[True])
                    with_cache.append(seconds[True] / args.calls)
                print(f"| {name} | {label} | {rows} | {statistics.median(with_cache) * 1e3:.3f} | "
                      f"{statistics.median(ratios):.3f}x |")
    finally:
        cached(True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
