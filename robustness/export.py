"""Export a benchmark results directory in the marl-eval JSON layout (what BenchMARL writes).

marl-eval (instadeepai/marl-eval) reads ``environment -> task -> algorithm -> run -> step``::

    {"<scenario>": {"<size>[:<attack>:<mode>:eps=<eps>]": {"<method>[-lam<λ>][-gam<γ>]": {"<seed>": {
        "step_0": {"step_count": <agent-steps>, "return": [<value>]}, ...,
        "absolute_metrics": {"return": [<return per agent>]}}}}}}

* environment: the scenario; task: the config size for the nominal evaluation (eps = 0), and
  ``<size>:<attack>:<mode>:eps=<eps>`` for every attacked evaluation (eps > 0), so marl-eval's
  aggregation over tasks compares the methods under each attack;
* algorithm: the method with its lambda (``-lam``) and hinge budget gamma (``-gam``) when it has a
  penalty; run: the seed, as a string (marl-eval accepts seeds as run names);
* steps: the run's learning curve from ``runs/<cell>/metrics.csv`` (the periodic evaluation's
  ``eval/return_per_agent`` when present, else the training ``charts/episodic_return``), resampled
  onto one grid of agent-steps per scenario (marl-eval needs the same steps in every run); without
  run directories, one step at the end of training holding the final nominal evaluation;
* ``absolute_metrics`` (the run's last key, as marl-eval expects): ``return``, the final evaluation's
  return per agent under the task's attack and eps (one value: the mean over its episodes).

marl-eval takes the metric names of ``absolute_metrics`` as the metrics of every step: both hold
``return`` only. The step-wise curve is the same in every task of a run (it is the run's training).

CLI: ``python -m robustness.export RESULTS_DIR [--out FILE]`` (default ``RESULTS_DIR/marl_eval.json``);
``python benchmark.py ... --export marl-eval`` writes it after the grid.
"""

from __future__ import annotations

import argparse
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from robustness import ReportError

FORMATS = ("marl-eval",)
METRIC = "return"
STEPS = 20


def algorithm_name(method: str, reg_coef: float, budget: float) -> str:
    """``aajr-lam0.1-gam0.3``: the method with its penalty's lambda and hinge budget (when they are set)."""
    return method + (f"-lam{reg_coef:g}" if reg_coef else "") + (f"-gam{budget:g}" if budget else "")


def task_name(size: str, attack: str, mode: str, eps: float) -> str:
    return size if eps == 0 else f"{size}:{attack}:{mode}:eps={eps:g}"


def marl_eval_data(results_dir: str | pathlib.Path, steps: int = STEPS) -> dict[str, Any]:
    """The results of ``results_dir`` in marl-eval's layout (see the module docstring)."""
    from robustness.report import CELL, EVAL_KEYS, EVAL_VALUES, learning_curves, read_table  # pandas: imported late,
    # so that the benchmark command can name the missing extra before it trains
    results_dir = pathlib.Path(results_dir)
    run_file = results_dir / "run.json"
    size = json.loads(run_file.read_text()).get("config", {}).get("size", "default") if run_file.is_file() else "default"
    evals = read_table(results_dir / "evaluations.csv", EVAL_KEYS, EVAL_VALUES)
    curves, _ = learning_curves(results_dir)
    final_steps = training_steps(results_dir)
    data: dict[str, Any] = {}
    for scenario in dict.fromkeys(row["scenario"] for row in evals):
        rows = [row for row in evals if row["scenario"] == scenario and (row["eps"] > 0 or row["attack"] == "none")]
        runs = {tuple(row[k] for k in CELL) for row in rows}
        step_grid = curve_grid([curves[cell[:-1]][cell[-1]][0] for cell in runs
                                if cell[-1] in curves.get(cell[:-1], {})], steps)
        for row in rows:
            cell = tuple(row[k] for k in CELL)
            curve = curves.get(cell[:-1], {}).get(cell[-1])
            if step_grid is not None and curve is not None:
                logged = {f"step_{i}": {"step_count": int(count), METRIC: [float(value)]}
                          for i, (count, value) in enumerate(zip(step_grid, np.interp(step_grid, *curve)))}
            else:
                nominal = next(r["return_per_agent"] for r in evals if r["attack"] == "none"
                               and tuple(r[k] for k in CELL) == cell)
                logged = {"step_0": {"step_count": int(final_steps.get(cell, 0)), METRIC: [nominal]}}
            task = task_name(size, row["attack"], row["mode"], row["eps"])
            algorithm = algorithm_name(*cell[1:4])
            data.setdefault(scenario, {}).setdefault(task, {}).setdefault(algorithm, {})[str(cell[-1])] = {
                **logged, "absolute_metrics": {METRIC: [row["return_per_agent"]]}}
    return data


def curve_grid(step_arrays: Sequence[np.ndarray], steps: int) -> np.ndarray | None:
    """``steps`` agent-step counts spread over the range every curve covers; None without curves."""
    step_arrays = [s for s in step_arrays if len(s)]
    if not step_arrays:
        return None
    start, stop = max(s[0] for s in step_arrays), min(s[-1] for s in step_arrays)
    return np.unique(np.linspace(start, stop, steps).round()) if stop > start else np.array([float(stop)])


def training_steps(results_dir: pathlib.Path) -> dict[tuple, int]:
    """Per cell (scenario, method, reg_coef, budget, seed), the agent-steps its training ran (``cells/*.json``)."""
    found = {}
    for path in (results_dir / "cells").glob("*.json"):
        result = json.loads(path.read_text())
        cell = result["cell"]
        key = (cell["scenario"], cell["method"], float(cell["reg_coef"]), float(cell.get("budget", 0.0)),
               int(cell["seed"]))
        found[key] = int(result.get("training", {}).get("agent_steps", 0))
    return found


def write_export(results_dir: str | pathlib.Path, fmt: str = "marl-eval", out: str | pathlib.Path | None = None) -> pathlib.Path:
    """Write the export of ``results_dir`` (``fmt``: one of ``FORMATS``); returns its path."""
    if fmt not in FORMATS:
        raise ReportError(f"unknown export format {fmt!r}; allowed: {', '.join(FORMATS)}")
    results_dir = pathlib.Path(results_dir)
    path = pathlib.Path(out) if out is not None else results_dir / "marl_eval.json"
    path.write_text(json.dumps(marl_eval_data(results_dir), indent=1) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m robustness.export", description=(__doc__ or "").partition("\n")[0])  # no docstring under -OO
    parser.add_argument("results_dir", type=pathlib.Path, help="folder with evaluations.csv, run.json, cells/")
    parser.add_argument("--out", type=pathlib.Path, help="JSON file (default RESULTS_DIR/marl_eval.json)")
    args = parser.parse_args(argv)
    try:
        print(write_export(args.results_dir, out=args.out))
    except ReportError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
