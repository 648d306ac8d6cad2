"""The benchmark grid: scenarios x methods x lambda x seeds, each cell trained, attacked and diagnosed.

A cell's work (``run_cell``) is a pure function of the cell and the benchmark config: it trains with
``agents.run.train`` in the run directory ``RESULTS/runs/<cell>`` (resuming from the cell's checkpoint when a
previous attempt crashed), evaluates the trained policy under the attack grid, computes the theory
diagnostics, and writes ``RESULTS/cells/<cell>.json`` atomically. A cell whose JSON exists is done
and never re-run, so a killed runner started again finishes the grid with the same numbers. Every
cell runs with one torch thread, so the local (sequential or process pool) and Ray backends give
the same results.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import pathlib
from typing import Any, Callable, Iterable

import torch

from agents.config import ConfigError, parse_overrides, resolve
from agents.run import CHECKPOINT, atomic_write, atomic_write_csv, load_config, load_run, train
from envs.core import SCENARIOS
from regularizers import METHODS
from robustness.adversary import saved_adversaries
from robustness.diagnostics import evaluation_states, theory_diagnostics
from robustness.evaluate import AttackGrid, evaluate_under_attacks

BACKENDS = ("local", "ray")


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    """The grid and how each cell is trained and evaluated.

    :param scenarios: scenario names.
    :param methods: training methods (``regularizers.METHODS``).
    :param seeds: training seeds.
    :param reg_coefs: lambda values of the methods with a penalty (others run once, lambda 0).
    :param size: config section of every scenario (``small``, ``default``, ``large``).
    :param overrides: ``KEY=VALUE`` overrides of the training runs: ``reg.<key>`` ones apply to the
        methods whose settings have ``<key>``, ``shock.*`` and ``shock_warmup`` to the adversarial
        methods, the others to every run.
    :param attack: the attack grid of the evaluation.
    :param diag_states: evaluation states of the theory diagnostics.
    :param diag_eps: eps of the diagnostics' PGA.
    :param diag_steps: K of the diagnostics' PGA.
    """

    scenarios: tuple[str, ...] = tuple(sorted(SCENARIOS))
    methods: tuple[str, ...] = tuple(METHODS)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    reg_coefs: tuple[float, ...] = (0.1,)
    size: str = "default"
    overrides: tuple[str, ...] = ()
    attack: AttackGrid = AttackGrid()
    diag_states: int = 256
    diag_eps: float = 0.1
    diag_steps: int = 5

    def __post_init__(self) -> None:
        for name in self.scenarios:
            if name not in SCENARIOS:
                raise ConfigError(f"unknown scenario {name!r}; allowed: {', '.join(sorted(SCENARIOS))}")
        for name in self.methods:
            if name not in METHODS:
                raise ConfigError(f"unknown method {name!r}; allowed: {', '.join(METHODS)}")
        if not self.seeds or any(seed < 0 for seed in self.seeds):
            raise ConfigError(f"seeds must be a non-empty list of integers >= 0, got {list(self.seeds)}")
        if any(coef < 0 for coef in self.reg_coefs):
            raise ConfigError(f"reg_coefs must be >= 0, got {list(self.reg_coefs)}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return json.loads(json.dumps(data))  # tuples as lists


PRESETS: dict[str, BenchmarkConfig] = {
    # minutes on a 2-core CPU: two scenarios, three methods, two seeds, the small configs, every attack of
    # the suite with small budgets
    "smoke": BenchmarkConfig(
        scenarios=("commons", "routing"), methods=("ppo", "aajr", "adv"), seeds=(0, 1), size="small",
        attack=AttackGrid(modes=("shared",), eps=(0.0, 0.1, 0.2), steps=5, episodes=16, restarts=1, candidates=8,
                          horizon=3, learned_eps=(0.2,), learned_steps=8192),
        diag_states=64),
    # the full grid: every scenario and method, five seeds, the default configs
    "full": BenchmarkConfig(),
}


@dataclasses.dataclass(frozen=True)
class Cell:
    scenario: str
    method: str
    reg_coef: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.scenario}-{self.method}-lam{self.reg_coef:g}-seed{self.seed}"


def grid_cells(config: BenchmarkConfig) -> list[Cell]:
    """Every cell of the grid, in a fixed order (methods without a penalty get lambda 0 once)."""
    cells = []
    for scenario in config.scenarios:
        for method in config.methods:
            coefs = config.reg_coefs if METHODS[method].penalty else (0.0,)
            for coef in coefs:
                for seed in config.seeds:
                    cells.append(Cell(scenario, method, float(coef), seed))
    return cells


def applies(override: str, method: str) -> bool:
    """Whether a ``KEY=VALUE`` override of the grid applies to the runs of ``method``."""
    key = override.partition("=")[0]
    spec = METHODS[method]
    if key.startswith("reg."):
        fields = {field.name for field in dataclasses.fields(spec.settings)} if spec.settings else set()
        return key.split(".")[1] in fields
    if key.startswith("shock.") or key == "shock_warmup":
        return spec.adversarial
    return True


def cell_overrides(cell: Cell, config: BenchmarkConfig) -> list[str]:
    """The run config of a cell as ``KEY=VALUE`` overrides."""
    return ([f"scenario={cell.scenario}", f"size={config.size}", f"method={cell.method}", f"seed={cell.seed}"]
            + [item for item in config.overrides if applies(item, cell.method)]
            + ([f"reg_coef={cell.reg_coef}"] if METHODS[cell.method].penalty else []))


def check_grid(config: BenchmarkConfig) -> None:
    """Resolve every cell's run config, and refuse overrides no method of the grid uses (``ConfigError``
    naming the value, before anything is written)."""
    for item in config.overrides:
        if not any(applies(item, method) for method in config.methods):
            raise ConfigError(f"override {item!r} applies to none of the methods {', '.join(config.methods)}")
    for cell in grid_cells(config):
        try:
            resolve(parse_overrides(cell_overrides(cell, config)))
        except ConfigError as error:
            raise ConfigError(f"cell {cell.name}: {error}") from None


def run_cell(cell: Cell, config: BenchmarkConfig, results_dir: pathlib.Path | str) -> dict[str, Any]:
    """Train (or resume), evaluate and diagnose one cell; writes and returns its result."""
    torch.set_num_threads(1)
    results_dir = pathlib.Path(results_dir)
    out = results_dir / "cells" / f"{cell.name}.json"
    if out.exists():
        return json.loads(out.read_text())
    run_dir = results_dir / "runs" / cell.name
    overrides = parse_overrides(cell_overrides(cell, config))
    if (run_dir / CHECKPOINT).exists():
        summary = train(load_config(run_dir), run_dir, resume=True, progress=False)
    else:
        summary = train(resolve(overrides), run_dir, progress=False)
    if summary is None:
        raise RuntimeError(f"cell {cell.name}: training stopped before the end")
    _, scenario, policy = load_run(run_dir)
    grid = config.attack

    evaluations = evaluate_under_attacks(scenario, policy, grid,
                                         adversary_for=saved_adversaries(run_dir, grid, seed=cell.seed))
    batch = evaluation_states(scenario, policy, config.attack.episodes, config.diag_states, seed=cell.seed)
    diagnostics = theory_diagnostics(scenario, policy, batch, config.diag_eps, config.diag_steps, seed=cell.seed)
    result = {"cell": dataclasses.asdict(cell), "evaluations": evaluations, "diagnostics": diagnostics,
              "training": {"ratio_to_reference": summary["ratio_to_reference"],
                           "agent_steps": summary["agent_steps"]}}
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=1)
    atomic_write(out, lambda tmp: tmp.write_text(text))
    return result


def _run_local(cells: list[Cell], config: BenchmarkConfig, results_dir: pathlib.Path, jobs: int,
               done: Callable[[Cell], None]) -> None:
    if jobs == 1:
        for cell in cells:
            run_cell(cell, config, results_dir)
            done(cell)
        return
    context = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no inherited torch state
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
        futures = {pool.submit(run_cell, cell, config, results_dir): cell for cell in cells}
        for future in concurrent.futures.as_completed(futures):
            future.result()
            done(futures[future])


def _run_ray(cells: list[Cell], config: BenchmarkConfig, results_dir: pathlib.Path, jobs: int,
             done: Callable[[Cell], None], address: str | None) -> None:
    try:
        import ray
    except ImportError:
        raise ConfigError("--backend ray needs Ray: pip install -c constraints.txt -e '.[ray]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, num_cpus=None if address else jobs, include_dashboard=False,
                 log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1)(run_cell)
        pending = {remote.remote(cell, config, str(results_dir)): cell for cell in cells}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ray.get(ready[0])
            done(pending.pop(ready[0]))
    finally:
        if started:
            ray.shutdown()


def run_grid(config: BenchmarkConfig, results_dir: pathlib.Path, backend: str = "local", jobs: int = 1,
             address: str | None = None, command: str = "", preset: str = "",
             progress: Callable[[int, int, str], None] | None = None) -> list[Cell]:
    """Run every pending cell of the grid and merge the results into ``evaluations.csv`` and
    ``diagnostics.csv``; returns the cells run in this call. ``run.json`` records the command and
    grid; a results directory holding another grid is refused."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    check_grid(config)
    results_dir.mkdir(parents=True, exist_ok=True)
    record = {"command": command, "preset": preset, "config": config.to_dict()}
    run_file = results_dir / "run.json"
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        if previous["config"] != record["config"]:
            raise ConfigError(f"{results_dir} holds the results of another grid (see {run_file}); "
                              f"use another --out")
    text = json.dumps(record, indent=1)
    atomic_write(run_file, lambda tmp: tmp.write_text(text))
    cells = grid_cells(config)
    pending = [cell for cell in cells if not (results_dir / "cells" / f"{cell.name}.json").exists()]
    finished = len(cells) - len(pending)

    def done(cell: Cell) -> None:
        nonlocal finished
        finished += 1
        if progress is not None:
            progress(finished, len(cells), cell.name)

    if progress is not None:
        progress(finished, len(cells), "")
    if backend == "ray":
        _run_ray(pending, config, results_dir, jobs, done, address)
    else:
        _run_local(pending, config, results_dir, jobs, done)
    merge_results(results_dir, cells)
    return pending


def merge_results(results_dir: pathlib.Path, cells: Iterable[Cell]) -> None:
    """``evaluations.csv`` (one row per cell x attack x mode x eps) and ``diagnostics.csv`` (one per
    cell) from the cells' JSON files, in grid order, written atomically."""
    evaluation_rows, diagnostic_rows = [], []
    for cell in cells:
        result = json.loads((results_dir / "cells" / f"{cell.name}.json").read_text())
        key = {"scenario": cell.scenario, "method": cell.method, "reg_coef": cell.reg_coef, "seed": cell.seed}
        evaluation_rows += [{**key, **row} for row in result["evaluations"]]
        diagnostic_rows.append({**key, **result["diagnostics"]})
    for name, rows in (("evaluations.csv", evaluation_rows), ("diagnostics.csv", diagnostic_rows)):
        atomic_write_csv(results_dir / name, rows)
