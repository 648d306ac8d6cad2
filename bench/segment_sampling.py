"""How many samples per PGA segment the Theorem-3 check needs (``robustness.diagnostics.step_size_sweep``).

The benchmark's step-size sweep bins each PGA step by ``eta * L_seg``, with ``L_seg`` the largest
``|v^T Hess g v|`` sampled at ``SEGMENT_POINTS`` points of the step's segment (4 until this script's
measurement made it 16), and counts the steps that lower the system loss g. With ``eta * L_seg <= 2``
such a step contradicts Theorem 3 only if ``L_seg`` bounds the curvature on the whole segment; a sharper
curvature between the samples makes ``L_seg`` too small and puts the step in a bin it does not belong to.

For each cell named (a trained run under ``<results>/runs/<cell>``), the script redoes the cell's
sweep (the same evaluation states, eps, K and ``eta = c / l_eff_median`` as the benchmark, in float64)
and reports, per number of samples per segment, the steps with ``eta * L_seg <= 2``, how many of
them lowered g, and how many of those cross a kink of g that no curvature sample can see: the
observation normaliser's clip at ``|(x - mean) / std| = 10``, where the set of clipped features changes
along the segment (Theorem 3 assumes g smooth on the segment). For a cell made with 4 samples, the
counts with ``--points 4`` are the cell's own (the ``steps_etaL_*`` columns of ``cells/<cell>.json``,
summed over c; the script prints them beside for comparison). A cell made since the sweep counts the
steps crossing the clip apart (its ``steps_clip``) has its own counts printed beside the row with
``SEGMENT_POINTS`` (16) samples: they leave those steps out, so its non-monotone ones are that row's
non-monotone steps less those crossing the clip. If denser sampling moves the non-monotone steps
above 2, the sampled ``L_seg`` was the cause, not the theory.

    python bench/segment_sampling.py results/corollary-wide routing-ppo-lam0-seed0
    python bench/segment_sampling.py results/corollary-wide routing-ppo-lam0-seed0 routing-jacobian-lam1-gam1-seed0 \\
        --points 4 16 64
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import torch

BOUND = 2.0  # Theorem 3: a projected gradient step with eta * L <= 2 ascends


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=pathlib.Path, help="a benchmark results directory (run.json, cells/, runs/)")
    parser.add_argument("cells", nargs="+", help="cell names, e.g. routing-ppo-lam0-seed0")
    parser.add_argument("--points", type=int, nargs="+", default=[4, 16, 64],
                        help="samples per segment to compare (default: 4 16 64; the benchmark's: 16, 4 before)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    bad_points = [p for p in args.points if p < 2]
    if bad_points:
        parser.error(f"--points {bad_points[0]}: need at least 2 samples per segment (its two ends)")
    run_json = args.results / "run.json"
    if not run_json.is_file():
        parser.error(f"{args.results}: no run.json; expected a results directory of benchmark.py")
    missing = [cell for cell in args.cells
               if not (args.results / "runs" / cell).is_dir() or not (args.results / "cells" / f"{cell}.json").is_file()]
    if missing:
        parser.error(f"cell {missing[0]!r}: needs {args.results}/runs/{missing[0]}/ and cells/{missing[0]}.json")
    torch.set_num_threads(args.threads)

    from agents.run import load_run
    from regularizers.jacobian import per_agent_system_objective
    from robustness.diagnostics import (SEGMENT_POINTS, evaluation_states, in_float64, nonmonotone_steps,
                                        normaliser_clip_changes, segment_curvatures, sweep_trajectories)
    from robustness.runner import BenchmarkConfig

    config = BenchmarkConfig.from_dict(json.loads(run_json.read_text())["config"])
    print("| cell | samples per segment | steps with eta*L_seg <= 2 | of them non-monotone | of those, crossing the "
          "normaliser's clip | the cell's own |\n|---|---|---|---|---|---|")
    totals = {points: [0, 0, 0] for points in args.points}
    for name in args.cells:
        saved = json.loads((args.results / "cells" / f"{name}.json").read_text())
        seed, l_eff = saved["cell"]["seed"], saved["diagnostics"]["l_eff_median"]
        within_bins = [(row[f"steps_{name}"], row[f"nonmonotone_rate_{name}"])
                       for row in saved["step_sizes"] for name in ("etaL_0_1", "etaL_1_2")]
        recorded = sum(count for count, _ in within_bins)
        recorded_bad = sum(round(count * rate) for count, rate in within_bins if count)
        clip_apart = any("steps_clip" in row for row in saved["step_sizes"])  # made with SEGMENT_POINTS samples
        own_points = SEGMENT_POINTS if clip_apart else 4
        _, scenario, policy = load_run(args.results / "runs" / name)
        batch = evaluation_states(scenario, policy, config.attack.episodes, config.diag_states, seed=seed)
        scenario64, policy64, batch64 = in_float64(scenario, policy, batch)
        obs, objective = per_agent_system_objective(policy64, batch64, scenario64)
        trajectories = [(eta, trajectory.deltas, nonmonotone_steps(trajectory.values)) for eta, trajectory
                        in sweep_trajectories(scenario64, objective, obs, config.diag_eps, config.diag_steps, l_eff)]
        for points in args.points:
            within = contradicting = kinked = 0
            for eta, deltas, bad in trajectories:
                curvature, lengths = segment_curvatures(objective, deltas, points)
                low = (lengths > 0) & (eta * curvature.abs().amax(1) <= BOUND)
                within += int(low.sum())
                contradicting += int((low & bad).sum())
                kinked += int((low & bad & normaliser_clip_changes(policy64, obs, deltas, points)).sum())
            own = f"{recorded_bad} of {recorded}" if points == own_points else ""
            if own and clip_apart:
                own += f" ({own_points} samples, crossing the clip left out)"
            print(f"| {name} | {points} | {within} | {contradicting} | {kinked} | {own} |", flush=True)
            for index, count in enumerate((within, contradicting, kinked)):
                totals[points][index] += count
    for points, (within, contradicting, kinked) in totals.items():
        print(f"| all {len(args.cells)} cells | {points} | {within} | {contradicting} | {kinked} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
