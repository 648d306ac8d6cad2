"""The benchmark grid: scenarios x methods x lambda x seeds, each cell trained, attacked and diagnosed.

A cell's work (``run_cell``) is a pure function of the cell and the benchmark config (and it records
the ``agents.code_version`` of the code that did it): it trains with
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

from agents.code_version import code_version
from agents.config import SIZES, ConfigError, TrainConfig, device_kind, to_dict as config_to_dict, check_run_seed, config_errors, parse_overrides, resolve
from agents.population_run import population_methods, train_population
from agents.run import (CHECKPOINT, CONFIG, SUMMARY, atomic_write, atomic_write_csv, check_device, load_checkpoint,
                        load_config, load_run, read_json, train)
from envs.core import SCENARIOS, check_choice, check_positive_int, check_real
from regularizers import METHODS
from robustness.adversary import saved_adversaries
from robustness.diagnostics import evaluation_states, in_float64, step_size_sweep, theory_diagnostics
from robustness.evaluate import AttackGrid, evaluate_under_attacks

BACKENDS = ("local", "ray", "population")


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    """The grid and how each cell is trained and evaluated.

    :param scenarios: scenario names.
    :param methods: training methods (``regularizers.METHODS``).
    :param seeds: training seeds.
    :param reg_coefs: lambda values of the methods with a penalty (others run once, lambda 0).
    :param reg_budgets: hinge budgets gamma of the methods whose settings have ``budget`` (0: the squared
        penalty ``||J u||^2``; gamma > 0: ``max(0, ||J u|| - gamma)^2``); every lambda with every gamma.
    :param sweeps: per-method replacements of those lists, ``(method, "reg_coefs" | "reg_budgets",
        values)``, so that each method traces its own curve (e.g. ``("aajr", "reg_budgets", (0.1, 0.3))``).
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
    reg_budgets: tuple[float, ...] = (0.0,)
    sweeps: tuple[tuple[str, str, tuple[float, ...]], ...] = ()
    size: str = "default"
    overrides: tuple[str, ...] = ()
    attack: AttackGrid = AttackGrid()
    diag_states: int = 256
    diag_eps: float = 0.1
    diag_steps: int = 5

    def __post_init__(self) -> None:
        for name in self.scenarios:
            if not isinstance(name, str) or name not in SCENARIOS:
                raise ConfigError(f"unknown scenario {name!r}; allowed: {', '.join(sorted(SCENARIOS))}")
        for name in self.methods:
            if not isinstance(name, str) or name not in METHODS:
                raise ConfigError(f"unknown method {name!r}; allowed: {', '.join(METHODS)}")
        if not self.seeds:
            raise ConfigError("seeds must be a non-empty list of integers in [0, 2**63), got []")
        if not isinstance(self.attack, AttackGrid):
            raise ConfigError(f"attack must be a robustness.evaluate.AttackGrid, got {type(self.attack).__name__}")
        with config_errors():
            for seed in self.seeds:
                check_run_seed("seed", seed)
            for coef in self.reg_coefs:
                check_real("reg_coef", coef, 0.0)
            for budget in self.reg_budgets:
                check_real("reg_budget", budget, 0.0)
            for sweep in self.sweeps:
                check_sweep(sweep)
            check_choice("size", self.size, SIZES)
            check_positive_int("diag_states", self.diag_states)
            check_real("diag_eps", self.diag_eps, 0.0, low_open=True)
            check_positive_int("diag_steps", self.diag_steps)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return json.loads(json.dumps(data))  # tuples as lists

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchmarkConfig:
        """The grid ``to_dict`` wrote (``run.json``'s ``config``); ConfigError if it is not one."""
        def tuples(value: Any) -> Any:
            return tuple(tuples(item) for item in value) if isinstance(value, list) else value

        try:
            fields = {key: tuples(value) for key, value in data.items()}
            fields["attack"] = AttackGrid(**{key: tuples(value) for key, value in data["attack"].items()})
            return cls(**fields)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ConfigError(f"not a benchmark grid: {error}") from None


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
    # the core of Corollary 1: AAJR against the global penalties at equal hinge budgets gamma (lambda 1),
    # routing and compute default, five seeds, the whole attack suite (shared shock) on 64 episodes; 4 PPO
    # epochs per rollout instead of 10 (plain PPO still meets its learning target: routing 1.0061 of the
    # optimal cost against 1.05, compute 0.9378 of the fluid optimum against 0.90, seed 0)
    "corollary": BenchmarkConfig(
        scenarios=("routing", "compute"), methods=("ppo", "aajr", "jacobian", "spectral"), seeds=(0, 1, 2, 3, 4),
        reg_coefs=(1.0,), reg_budgets=(0.1, 0.3, 1.0, 3.0), size="default", overrides=("ppo.update_epochs=4",),
        attack=AttackGrid(modes=("shared",), eps=(0.0, 0.1, 0.2), episodes=64)),
    # the second stage: the same comparison on a wide routing network (N = 8 agents, P = 16 paths), where
    # the shock channels outnumber what a few ascent directions span; 3M agent-steps, at which plain PPO
    # meets its learning target (1.0233-1.0282 of the optimal cost, seeds 0-4; 1.0179-1.0209 at 4M, 1.0526
    # at 2M, seed 0, short of 1.05)
    "corollary-wide": BenchmarkConfig(
        scenarios=("routing",), methods=("ppo", "aajr", "jacobian", "spectral"), seeds=(0, 1, 2, 3, 4),
        reg_coefs=(1.0,), reg_budgets=(0.1, 0.3, 1.0, 3.0), size="default",
        overrides=("ppo.update_epochs=4", "env.n_agents=8", "env.n_paths=16", "total_agent_steps=3000000"),
        attack=AttackGrid(modes=("shared",), eps=(0.0, 0.1, 0.2), episodes=64)),
    # commons under the suite (its ``rollout`` attack sees the damage that comes after the shocked step):
    # the core of Corollary 1 at 4M agent-steps and 4 PPO epochs, where plain PPO meets its learning
    # target (1.0124 and 1.0291 of the MSY welfare, seeds 0 and 1; 0.8840 at 2M, seed 0, short of 0.90)
    "corollary-commons": BenchmarkConfig(
        scenarios=("commons",), methods=("ppo", "aajr", "jacobian", "spectral"), seeds=(0, 1, 2, 3, 4),
        reg_coefs=(1.0,), reg_budgets=(0.1, 0.3, 1.0, 3.0), size="default",
        overrides=("ppo.update_epochs=4", "total_agent_steps=4000000"),
        attack=AttackGrid(modes=("shared",), eps=(0.0, 0.1, 0.2), episodes=64)),
    # the third stage: the other robust methods (SA-PPO smoothness, adversarial training, AAJR on shocked
    # rollouts) at one hinge budget each, with plain PPO and AAJR at the same budget for reference; the
    # smoothness penalty ||pi(s + delta*) - pi(s)|| / eps is ||J u|| to first order, so gamma = 0.3
    # bounds the same quantity for aajr, smooth and aajr+adv
    "corollary-others": BenchmarkConfig(
        scenarios=("routing", "compute"), methods=("ppo", "aajr", "smooth", "adv", "aajr+adv"),
        seeds=(0, 1, 2, 3, 4), reg_coefs=(1.0,), reg_budgets=(0.3,), size="default",
        overrides=("ppo.update_epochs=4",), attack=AttackGrid(modes=("shared",), eps=(0.0, 0.1, 0.2), episodes=64)),
}


SWEPT = ("reg_coefs", "reg_budgets")


def check_sweep(sweep: Any) -> None:
    """A ``(method, "reg_coefs" | "reg_budgets", values)`` sweep of a penalty method (ValueError otherwise)."""
    if not (isinstance(sweep, (tuple, list)) and len(sweep) == 3):
        raise ValueError(f"a sweep is (method, field, values), got {sweep!r}")
    method, field, values = sweep
    check_choice("sweep method", method, tuple(name for name, spec in METHODS.items() if spec.penalty))
    check_choice("sweep field", field, SWEPT)
    if field == "reg_budgets" and not has_budget(method):
        raise ValueError(f"method {method!r} has no hinge budget to sweep")
    if not values:
        raise ValueError(f"sweep of {method} {field}: no values")
    for value in values:
        check_real(f"sweep of {method} {field}", value, 0.0)


def has_budget(method: str) -> bool:
    """Whether the method's settings have a hinge budget ``budget``."""
    settings = METHODS[method].settings
    return settings is not None and "budget" in {field.name for field in dataclasses.fields(settings)}


def parse_sweep(text: str) -> tuple[str, str, tuple[float, ...]]:
    """``"aajr:reg_budgets=0.1,0.3"`` -> ``("aajr", "reg_budgets", (0.1, 0.3))`` (ConfigError if malformed)."""
    method, _, rest = text.partition(":")
    field, _, values = rest.partition("=")
    try:
        sweep = (method, field, tuple(float(value) for value in values.split(",")))
        check_sweep(sweep)
    except ValueError as error:
        raise ConfigError(f"--sweep {text!r}: {error} (form: METHOD:reg_coefs=V,V or METHOD:reg_budgets=V,V)") from None
    return sweep


@dataclasses.dataclass(frozen=True)
class Cell:
    scenario: str
    method: str
    reg_coef: float
    seed: int
    budget: float = 0.0  # hinge budget gamma; 0: the squared penalty

    @property
    def name(self) -> str:
        budget = f"-gam{self.budget:g}" if self.budget > 0 else ""
        return f"{self.scenario}-{self.method}-lam{self.reg_coef:g}{budget}-seed{self.seed}"


def method_settings(config: BenchmarkConfig, method: str) -> list[tuple[float, float]]:
    """The (lambda, gamma) settings of a method in the grid: (0, 0) without a penalty; else every lambda
    with every gamma (gamma 0 only, when the method has no hinge budget), the sweeps' lists first."""
    if not METHODS[method].penalty:
        return [(0.0, 0.0)]
    swept = {field: tuple(values) for name, field, values in config.sweeps if name == method}
    coefs = swept.get("reg_coefs", config.reg_coefs)
    budgets = swept.get("reg_budgets", config.reg_budgets) if has_budget(method) else (0.0,)
    return [(float(coef), float(budget)) for coef in coefs for budget in budgets]


def grid_cells(config: BenchmarkConfig) -> list[Cell]:
    """Every cell of the grid, seed by seed (an interrupted grid has every setting for its first seeds),
    then scenario, method and setting."""
    return [Cell(scenario, method, coef, seed, budget)
            for seed in config.seeds for scenario in config.scenarios for method in config.methods
            for coef, budget in method_settings(config, method)]


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
            + ([f"reg_coef={cell.reg_coef}"] if METHODS[cell.method].penalty else [])
            + ([f"reg.budget={cell.budget}"] if cell.budget > 0 else []))


def cell_config(cell: Cell, config: BenchmarkConfig) -> TrainConfig:
    """The resolved run config of a cell (``ConfigError`` naming the cell)."""
    try:
        return resolve(parse_overrides(cell_overrides(cell, config)))
    except ConfigError as error:
        raise ConfigError(f"cell {cell.name}: {error}") from None


def check_grid(config: BenchmarkConfig) -> None:
    """Resolve every cell's run config (its device available here), and refuse overrides no method of the
    grid uses (``ConfigError`` naming the value, before anything is written)."""
    for item in config.overrides:
        if not any(applies(item, method) for method in config.methods):
            raise ConfigError(f"override {item!r} applies to none of the methods {', '.join(config.methods)}")
    for device in {cell_config(cell, config).device for cell in grid_cells(config)}:
        check_device(device)


LOGGING_FIELDS = ("eval_every", "eval_episodes", "eval_attack", "eval_eps", "track", "wandb_project")


def training_fields(config: TrainConfig) -> dict[str, Any]:
    """The run config without the fields that only decide what is logged (``LOGGING_FIELDS``): a run
    started before such a field existed, or with other logging, resumes as the same cell."""
    return {key: value for key, value in config_to_dict(config).items() if key not in LOGGING_FIELDS}


def run_cell(cell: Cell, config: BenchmarkConfig, results_dir: pathlib.Path | str) -> dict[str, Any]:
    """Train (or resume), evaluate and diagnose one cell; writes and returns its result."""
    torch.set_num_threads(1)
    code = code_version()  # the code this process imported (a worker reads it when it starts its first cell)
    results_dir = pathlib.Path(results_dir)
    out = results_dir / "cells" / f"{cell.name}.json"
    if out.exists():
        return read_json(out, "cell result")
    run_dir = results_dir / "runs" / cell.name
    run_config = cell_config(cell, config)
    if (run_dir / CHECKPOINT).exists():
        saved = load_config(run_dir)
        if training_fields(saved) != training_fields(run_config):
            raise ConfigError(f"{run_dir / CONFIG} holds another run config than cell {cell.name} asks for; "
                              f"move {run_dir} away to train the cell again")
        summary = train(saved, run_dir, resume=True, progress=False)  # its own logging settings, too
    else:
        summary = train(run_config, run_dir, progress=False)
    if summary is None:
        raise RuntimeError(f"cell {cell.name}: training stopped before the end")
    _, scenario, policy = load_run(run_dir)
    grid = config.attack

    evaluations = evaluate_under_attacks(scenario, policy, grid,
                                         adversary_for=saved_adversaries(run_dir, grid, seed=cell.seed))
    batch = evaluation_states(scenario, policy, config.attack.episodes, config.diag_states, seed=cell.seed)
    scenario64, policy64, batch64 = in_float64(scenario, policy, batch)
    diagnostics = theory_diagnostics(scenario64, policy64, batch64, config.diag_eps, config.diag_steps, seed=cell.seed)
    step_sizes = step_size_sweep(scenario64, policy64, batch64, config.diag_eps, config.diag_steps,
                                 diagnostics["l_eff_median"])
    result = {"cell": dataclasses.asdict(cell), "evaluations": evaluations, "diagnostics": diagnostics,
              "step_sizes": step_sizes,
              "training": {"ratio_to_reference": summary["ratio_to_reference"],
                           "agent_steps": summary["agent_steps"]},
              "code": code}
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


def checkpoint_iteration(run_dir: pathlib.Path) -> int | None:
    """The iteration of a cell's checkpoint (-1 without one), or None when its run is finished."""
    if (run_dir / SUMMARY).exists():
        return None
    if not (run_dir / CHECKPOINT).exists():
        return -1
    return int(load_checkpoint(run_dir)["iteration"])


# The largest population on a CPU when --population-size is 0: beyond it the batched tensors outgrow the
# caches and a population trains slower than its members one after another (bench/population.py,
# routing default, aajr: 1.07x at P = 8, 0.75x at P = 16).
CPU_POPULATION_SIZE = 8


def population_groups(cells: list[Cell], config: BenchmarkConfig, results_dir: pathlib.Path,
                      size: int = 0) -> list[list[Cell]]:
    """The pending cells that train together (``--backend population``): those of one scenario and one
    method that a population trains (``agents.population_run.population_methods``), all with a hinge budget
    or all without, whose runs are at one checkpoint iteration (or all fresh), at most ``size`` per group
    (0: ``CPU_POPULATION_SIZE`` on a CPU, no limit on an accelerator), in grid order. The other cells
    (other methods, finished runs) come last, in one group that trains nothing together."""
    supported = population_methods()
    groups: dict[tuple, list[Cell]] = {}
    alone: list[Cell] = []
    for cell in cells:
        iteration = checkpoint_iteration(results_dir / "runs" / cell.name)
        if iteration is None or cell.method not in supported:
            alone.append(cell)
        else:
            groups.setdefault((cell.scenario, cell.method, cell.budget > 0, iteration), []).append(cell)
    chunks = []
    for group in groups.values():
        on_cpu = device_kind(cell_config(group[0], config).device) == "cpu"
        step = size or (CPU_POPULATION_SIZE if on_cpu else len(group))
        chunks += [group[start:start + step] for start in range(0, len(group), step)]
    return chunks + ([alone] if alone else [])


def _run_population(cells: list[Cell], config: BenchmarkConfig, results_dir: pathlib.Path, jobs: int,
                    done: Callable[[Cell], None], size: int) -> None:
    """Train each group of ``population_groups`` as one population (``agents.population_run``), then
    attack and diagnose its cells as the local backend does (the last group, of cells that train alone or
    are trained, goes to the local backend whole, ``jobs`` at a time). A population stopped early (Ctrl-C)
    or with a member stopped for a non-finite loss is a ``RuntimeError`` naming those cells, after its
    finished cells are attacked."""
    torch.set_num_threads(1)
    supported = population_methods()
    for group in population_groups(cells, config, results_dir, size):
        if not all(cell.method in supported for cell in group) or len(group) == 1 or all(
                checkpoint_iteration(results_dir / "runs" / cell.name) is None for cell in group):
            _run_local(group, config, results_dir, jobs, done)
            continue
        run_dirs = [results_dir / "runs" / cell.name for cell in group]
        configs = [cell_config(cell, config) for cell in group]
        resume = (run_dirs[0] / CHECKPOINT).exists()
        if resume:
            for cell, run_config, run_dir in zip(group, configs, run_dirs):
                if training_fields(load_config(run_dir)) != training_fields(run_config):
                    raise ConfigError(f"{run_dir / CONFIG} holds another run config than cell {cell.name} asks "
                                      f"for; move {run_dir} away to train the cell again")
        summaries = train_population(configs, run_dirs, resume=resume, progress=False)
        trained = [cell for cell, summary in zip(group, summaries) if summary is not None]
        _run_local(trained, config, results_dir, jobs, done)
        if len(trained) < len(group):
            stopped = ", ".join(cell.name for cell, summary in zip(group, summaries) if summary is None)
            raise RuntimeError(f"cells {stopped}: training stopped before the end (interrupted, or a non-finite "
                               f"loss; see above)")


def run_grid(config: BenchmarkConfig, results_dir: pathlib.Path, backend: str = "local", jobs: int = 1,
             address: str | None = None, command: str = "", preset: str = "",
             progress: Callable[[int, int, str], None] | None = None, population_size: int = 0) -> list[Cell]:
    """Run every pending cell of the grid and merge the results into ``evaluations.csv`` and
    ``diagnostics.csv``; returns the cells run in this call. ``run.json`` records the command and
    grid; a results directory holding another grid is refused. ``backend="population"`` trains the
    cells of one scenario and method as populations of at most ``population_size`` runs (0: all)."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    check_grid(config)
    code_version()  # read before the run, while the checkout holds the code it imports
    results_dir = pathlib.Path(results_dir)
    record = {"command": command, "preset": preset, "config": config.to_dict()}
    run_file = results_dir / "run.json"
    if results_dir.exists() and not results_dir.is_dir():
        raise ConfigError(f"results directory {results_dir} is a file; use another --out")
    if run_file.exists():
        previous = read_json(run_file, "grid record")
        if not isinstance(previous, dict) or previous.get("config") != record["config"]:
            raise ConfigError(f"{results_dir} holds the results of another grid (see {run_file}); "
                              f"use another --out")
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"results directory {results_dir}: cannot create it ({error.strerror or error})") from None
    text = json.dumps(record, indent=1)
    atomic_write(run_file, lambda tmp: tmp.write_text(text))
    cells = grid_cells(config)
    pending = [cell for cell in cells if not (results_dir / "cells" / f"{cell.name}.json").exists()]
    finished = len(cells) - len(pending)

    def done(cell: Cell) -> None:
        nonlocal finished
        finished += 1
        merge_results(results_dir, finished_cells(results_dir, cells))  # the CSVs follow the grid as it goes
        if progress is not None:
            progress(finished, len(cells), cell.name)

    if progress is not None:
        progress(finished, len(cells), "")
    if backend == "ray":
        _run_ray(pending, config, results_dir, jobs, done, address)
    elif backend == "population":
        _run_population(pending, config, results_dir, jobs, done, population_size)
    else:
        _run_local(pending, config, results_dir, jobs, done)
    merge_results(results_dir, cells)
    return pending


def finished_cells(results_dir: pathlib.Path, cells: Iterable[Cell]) -> list[Cell]:
    """The cells of ``cells`` whose result file exists, in their order."""
    return [cell for cell in cells if (pathlib.Path(results_dir) / "cells" / f"{cell.name}.json").exists()]


def merge_results(results_dir: pathlib.Path, cells: Iterable[Cell]) -> None:
    """``evaluations.csv`` (one row per cell x attack x mode x eps), ``diagnostics.csv`` (one per cell) and
    ``step_sizes.csv`` (one per cell x step-size factor) from the cells' JSON files, in grid order, written
    atomically. A file's columns are those of all its rows (cells of code that records fewer fields leave
    theirs empty: the report says when that mix matters)."""
    evaluation_rows, diagnostic_rows, step_rows = [], [], []
    for cell in cells:
        result = read_json(results_dir / "cells" / f"{cell.name}.json", "cell result")
        key = {"scenario": cell.scenario, "method": cell.method, "reg_coef": cell.reg_coef, "budget": cell.budget,
               "seed": cell.seed}
        evaluation_rows += [{**key, **row} for row in result["evaluations"]]
        diagnostic_rows.append({**key, **result["diagnostics"]})
        step_rows += [{**key, **row} for row in result.get("step_sizes", [])]
    for name, rows in (("evaluations.csv", evaluation_rows), ("diagnostics.csv", diagnostic_rows),
                       ("step_sizes.csv", step_rows)):
        if rows:  # a grid whose policies never moved the PGA has no step-size rows
            atomic_write_csv(results_dir / name, rows, list(dict.fromkeys(key for row in rows for key in row)))
