"""Cost of the directional Jacobian penalty (batched forward-mode JVP) against one plain
forward+backward of the policy on the same K x batch inputs. Ratios are measured in one process,
medians of repeats. (The full-Jacobian contrast of issue 5 is still to be added.)

    python bench/jvp.py                    # d in 16 64 256, N in 1 8, K in 1 5 10, batch 2048
    python bench/jvp.py --device cuda
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from agents.policy import MultiAgentActorCritic  # noqa: E402
from regularizers.jvp import jvp_norms  # noqa: E402


def timed(fn, repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats + 1):  # the first call warms up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--agents", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--batch", type=int, default=2048, help="states per agent (K x batch inputs)")
    parser.add_argument("--action-dim", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    print("| d | N | K | penalty fwd+bwd / plain fwd+bwd | device |")
    print("|---|---|---|---|---|")
    for dim in args.dims:
        for n in args.agents:
            policy = MultiAgentActorCritic(n, dim, torch.zeros(args.action_dim), torch.ones(args.action_dim),
                                           hidden=(256, 256)).to(args.device)
            params = list(policy.actor.parameters())
            for k in args.steps:
                points = torch.randn(k, args.batch, n, dim, device=args.device)
                directions = torch.nn.functional.normalize(torch.randn_like(points), dim=-1)

                def plain():
                    policy.deterministic_action(points.reshape(k * args.batch, n, dim)).square().mean().backward()

                def penalty():
                    jvp_norms(policy.deterministic_action, points, directions).square().mean().backward()

                base = timed(plain, args.repeats, args.device)
                ratio = timed(penalty, args.repeats, args.device) / base
                policy.zero_grad(set_to_none=True)
                print(f"| {dim} | {n} | {k} | {ratio:.2f}x | {args.device} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
