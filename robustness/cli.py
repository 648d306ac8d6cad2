"""The benchmark command line (python benchmark.py and the aajr-benchmark entry point)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import pathlib
import shlex
import sys

from agents.cli import OneLineParser
from agents.config import SIZES, ConfigError, config_errors
from agents.progress import progress_bar
from envs.core import check_positive_int
from robustness import ReportError
from robustness.export import FORMATS
from robustness.runner import BACKENDS, PRESETS, BenchmarkConfig, parse_sweep, run_grid

DEFAULT_OUT = pathlib.Path("runs") / "benchmark"  # runs/ is ignored by git; results/ holds committed results
CELLS_SPEED_PERIOD_S = 7 * 24 * 3600.0  # the remaining time from the pace of every cell finished in this call
DESCRIPTION = """Robustness benchmark: train every (scenario, method, lambda, seed) cell of a grid, attack it,
diagnose it, and report IQMs with bootstrap confidence intervals.

    python benchmark.py --preset smoke                      # minutes on a 2-core CPU
    python benchmark.py --preset full --jobs 2 --out runs/benchmark/full
    python benchmark.py --preset full --backend ray --address auto   # on a Ray cluster
    python benchmark.py --preset corollary --backend population --set device=cuda   # populations on a GPU

Results go to --out (default runs/benchmark/<preset>; results/ holds the committed results): run.json (command and grid),
cells/<cell>.json, runs/<cell>/ (run directories, as train.py writes them), evaluations.csv,
diagnostics.csv, report/ (tables and figures) and, with --export marl-eval, marl_eval.json (the
marl-eval/BenchMARL layout). Run the same command again after an
interruption: finished cells are kept, a crashed cell resumes from its checkpoint. A bad value is one
line naming it and what is allowed (exit code 2), refused before anything is trained or written."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="smoke", choices=sorted(PRESETS))
    parser.add_argument("--out", type=pathlib.Path, help="results directory (default runs/benchmark/<preset>)")
    parser.add_argument("--scenarios", nargs="+", help="override the preset's scenarios")
    parser.add_argument("--methods", nargs="+", help="override the preset's methods")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the preset's seeds")
    parser.add_argument("--reg-coefs", type=float, nargs="+", help="override the preset's lambda values")
    parser.add_argument("--reg-budgets", type=float, nargs="+",
                        help="override the preset's hinge budgets gamma (0: the squared penalty)")
    parser.add_argument("--sweep", nargs="+", metavar="METHOD:FIELD=V,V",
                        help="a method's own lambdas or budgets, e.g. aajr:reg_budgets=0.1,0.3 spectral:reg_coefs=1,10")
    parser.add_argument("--size", choices=SIZES, help="override the preset's config size")
    parser.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides of the cells (e.g. total_agent_steps=1e5 reg.steps=2); reg.* reach "
                             "the methods with that setting, shock.* the adversarial ones")
    parser.add_argument("--attacks", nargs="+",
                        help="override the attacks (random spike system action value random_search learned)")
    parser.add_argument("--modes", nargs="+", help="override the shock modes (shared per_agent)")
    parser.add_argument("--eps", type=float, nargs="+", help="override the eps grid (0 is always included)")
    parser.add_argument("--episodes", type=int, help="override the evaluation episodes per cell")
    parser.add_argument("--backend", default="local", choices=BACKENDS,
                        help="local: cells one by one or in --jobs processes; ray: Ray tasks; population: the cells of "
                             "one scenario and method trained as one batched program (agents.population_run), then "
                             "attacked like local ones")
    parser.add_argument("--jobs", type=int, default=1,
                        help="cells run in parallel (processes or Ray tasks; the population backend's evaluations)")
    parser.add_argument("--population-size", type=int, default=0,
                        help="the population backend's largest population (0: 8 on a CPU, where larger ones outgrow the "
                             "caches; every cell of a scenario and method on an accelerator)")
    parser.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples of the report")
    parser.add_argument("--no-report", action="store_true", help="skip tables and figures")
    parser.add_argument("--export", choices=FORMATS, action="append", default=[],
                        help="also write the results in this layout (marl-eval: marl_eval.json, as BenchMARL writes)")
    return parser.parse_args(argv)


def grid_config(args: argparse.Namespace) -> BenchmarkConfig:
    """The preset with the command line's changes, validated (``ConfigError``; ``--reps`` as well)."""
    config = PRESETS[args.preset]
    changes = {name: tuple(value) for name, value in (("scenarios", args.scenarios), ("methods", args.methods),
                                                       ("seeds", args.seeds), ("reg_coefs", args.reg_coefs),
                                                       ("reg_budgets", args.reg_budgets))
               if value is not None}
    if args.size is not None:
        changes["size"] = args.size
    if args.sweep:
        changes["sweeps"] = tuple(parse_sweep(text) for text in args.sweep)
    if args.set:
        changes["overrides"] = config.overrides + tuple(args.set)
    attack = {name: tuple(value) if isinstance(value, list) else value
              for name, value in (("attacks", args.attacks), ("modes", args.modes), ("eps", args.eps),
                                  ("episodes", args.episodes)) if value is not None}
    with config_errors():  # the grids' own checks name the field
        check_positive_int("reps", args.reps)  # the report's, refused before the grid trains
        if args.population_size < 0 or (args.population_size and args.backend != "population"):
            raise ValueError(f"--population-size must be an integer >= 0 and goes with --backend population, got "
                             f"{args.population_size} with --backend {args.backend}")
        if attack:
            changes["attack"] = dataclasses.replace(config.attack, **attack)
        return dataclasses.replace(config, **changes)


REPORT_MODULES = ("pandas", "matplotlib", "rliable")


def check_report_dependencies() -> None:
    """Refuse (``ConfigError``, before the grid trains) when a module the report or export needs is missing."""
    for name in REPORT_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            raise ConfigError(f"the report needs {name}, which is not installed: pip install -e '.[benchmark]' "
                              "(the benchmark extra), or pass --no-report") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = grid_config(args)
        if not args.no_report or args.export:
            check_report_dependencies()
        out = args.out or DEFAULT_OUT / args.preset
        command = "python " + " ".join(shlex.quote(arg) for arg in ["benchmark.py", *(argv or sys.argv[1:])])
        with progress_bar(speed_estimate_period=CELLS_SPEED_PERIOD_S) as bar:
            task = bar.add_task(f"benchmark {args.preset}", total=None, status="")

            def progress(finished: int, total: int, cell: str) -> None:
                if not cell:  # the start: the pace counts from now, and the cells of a resumed grid not at all
                    bar.reset(task, total=total, completed=finished, status="")
                    bar.advance(task, 0)  # rich's first sample anchors the pace (reset leaves none)
                else:
                    bar.update(task, completed=finished, total=total, status=f"done: {cell}")

            run_grid(config, out, args.backend, args.jobs, args.address, command, args.preset, progress,
                     population_size=args.population_size)
        if not args.no_report:
            from robustness.report import write_report
            paths = write_report(out, reps=args.reps)
            print(f"report: {len(paths)} files in {out / 'report'} (start with {out / 'report' / 'index.md'})")
        for fmt in args.export:
            from robustness.export import write_export
            print(f"export ({fmt}): {write_export(out, fmt)}")
    except (ConfigError, ReportError) as error:  # bad input named in one line; anything else keeps its traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"results: {out}")
    return 0
