"""Every method on one scenario's config: the diagnostic its penalty targets with lambda = 0 and with
lambda > 0 after the same training (same seed; a method without a penalty: its diagnostic after training),
the final efficiency, and the wall-clock of a run. Each method's diagnostic is its registry entry's.

    python bench/methods.py                                  # routing, small config, lambda 1, seed 0
    python bench/methods.py --scenario commons --reg-coef 0.1 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from agents.config import parse_overrides, resolve
from agents.evaluate import summarise
from agents.run import build_learner
from regularizers import METHODS


def run(scenario: str, size: str, method: str, seed: int, extra: list[str]) -> tuple[dict, float, float, object]:
    """Train one run in memory; returns the last 5 iterations' mean metrics, the efficiency ratio,
    the wall-clock and the learner."""
    config = resolve(parse_overrides([f"scenario={scenario}", f"size={size}", f"method={method}", f"seed={seed}",
                                      *extra]))
    start = time.perf_counter()
    learner = build_learner(config)
    rows = [learner.train_iteration() for _ in range(learner.total_iterations)]
    elapsed = time.perf_counter() - start
    last = {key: statistics.fmean(row[key] for row in rows[-5:] if key in row) for key in rows[-1]}
    return last, summarise(learner, config)["ratio_to_reference"], elapsed, learner


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="routing")
    parser.add_argument("--size", default="small")
    parser.add_argument("--reg-coef", type=float, default=1.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args()
    print(f"{args.scenario} ({args.size} config), seeds {args.seeds}, lambda {args.reg_coef}; diagnostic = mean "
          f"of the last 5 iterations")
    print("| method | diagnostic | lambda = 0 | lambda > 0 | ratio to reference | s per run |")
    print("|---|---|---|---|---|---|")
    for method in args.methods:
        spec = METHODS[method]
        cells = {"zero": [], "reg": [], "ratio": [], "time": []}
        key = spec.diagnostic
        for seed in args.seeds:
            coef = [f"reg_coef={args.reg_coef}"] if spec.penalty else []
            metrics, ratio, elapsed, learner = run(args.scenario, args.size, method, seed, coef)
            cells["ratio"].append(ratio)
            cells["time"].append(elapsed)
            if key is not None:
                cells["reg"].append(metrics[key])
            if key is not None and spec.penalty:
                zero, *_ = run(args.scenario, args.size, method, seed, ["reg_coef=0"])
                cells["zero"].append(zero[key])
        fmt = lambda values: f"{statistics.fmean(values):.4f}" if values else "-"
        print(f"| {method} | {key or '-'} | {fmt(cells['zero'])} | {fmt(cells['reg'])} | {fmt(cells['ratio'])} | "
              f"{statistics.fmean(cells['time']):.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
