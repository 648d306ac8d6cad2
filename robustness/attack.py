"""Attack one trained policy with the attack suite and print the table (``aajr-attack`` as well).

    python -m robustness.attack runs/routing-aajr                       # a native run directory
    python -m robustness.attack runs/routing-aajr --eps 0.1 0.2 --attacks system random_search
    python -m robustness.attack model.zip --scenario routing --size small   # an SB3 model (extra: sb3)

Every (attack, mode, eps) is played on the same seeded episodes (``robustness.evaluate``); the table
gives the return per agent, the system loss per step, the ratio to the scenario's reference, the
attack's budget use ``||delta|| / eps`` and, per (mode, eps), the worst case over the attacks.
``learned`` trains an RL attacker per (mode, eps) (``robustness.adversary``; the two largest eps and the
shared mode by default), saved in ``RUN_DIR/adversaries/`` and reused. ``--out FILE.csv`` also writes
the rows. An SB3 model needs the scenario it was trained on
(``--scenario``, ``--size``, ``--set env.KEY=VALUE``); its ``.zip`` holds cloudpickled metadata:
load only files you trust.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from agents.cli import OneLineParser
from agents.config import ConfigError, config_errors, parse_overrides, resolve
from agents.run import atomic_write_csv, check_device, load_run
from envs.core import make_scenario
from robustness.adversary import saved_adversaries
from robustness.evaluate import AttackGrid, evaluate_under_attacks


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = AttackGrid()
    parser = OneLineParser(prog="python -m robustness.attack", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("policy", type=pathlib.Path, help="a run directory (train.py) or an SB3 model .zip")
    parser.add_argument("--attacks", nargs="+", default=list(defaults.attacks), help="attacks of the suite")
    parser.add_argument("--modes", nargs="+", default=list(defaults.modes), help="shared and/or per_agent")
    parser.add_argument("--eps", type=float, nargs="+", default=list(defaults.eps), help="budgets (0 is added)")
    parser.add_argument("--norm", default=defaults.norm, help="l2 or linf")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="PGD steps K")
    parser.add_argument("--rule", default=defaults.rule, help="PGD step rule: normalized or gradient")
    parser.add_argument("--restarts", type=int, default=defaults.restarts, help="random restarts of PGD")
    parser.add_argument("--candidates", type=int, default=defaults.candidates, help="random_search candidates")
    parser.add_argument("--episodes", type=int, default=defaults.episodes, help="seeded evaluation episodes")
    parser.add_argument("--learned-eps", type=float, nargs="+", help="budgets of the learned attacker "
                        "(default: the two largest eps)")
    parser.add_argument("--learned-steps", type=int, default=defaults.learned_steps,
                        help="training budget of each learned attacker (saved beside a run directory and reused)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scenario", help="SB3 model: the scenario it was trained on")
    parser.add_argument("--size", default="default", help="SB3 model: the scenario's size")
    parser.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                        help="SB3 model: config fields of the scenario (env.n_agents=4 ...)")
    parser.add_argument("--out", type=pathlib.Path, help="also write the rows to this CSV")
    return parser.parse_args(argv)


def load_victim(args: argparse.Namespace):
    """The scenario and the policy to attack: a native run directory, or an SB3 model on a scenario."""
    check_device(args.device)
    if args.policy.is_dir():
        if args.scenario or args.set:
            raise ConfigError("a run directory brings its own scenario: --scenario and --set are for SB3 models")
        run = load_run(args.policy, args.device)
        return run.scenario, run.policy
    if args.policy.suffix != ".zip" or not args.policy.is_file():
        raise ConfigError(f"{args.policy}: neither a run directory nor an SB3 model .zip")
    if not args.scenario:
        raise ConfigError("an SB3 model needs --scenario (and --size/--set as it was trained)")
    config = resolve({**parse_overrides(args.set), "scenario": args.scenario, "size": args.size})
    try:
        from stable_baselines3 import PPO

        from agents.sb3 import SB3Policy
    except ImportError as error:
        raise ConfigError(f"attacking an SB3 model needs the sb3 extra ({error})") from None
    with config_errors("env: "):
        scenario = make_scenario(config.scenario, device=args.device, **config.env)
    return scenario, SB3Policy(PPO.load(args.policy, device=args.device), scenario)


def attack_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for column in ("attack", "mode", "eps", "return/agent", "system loss/step", "ratio", "budget use", "worst"):
        table.add_column(column, justify="left" if column in ("attack", "mode", "worst") else "right", no_wrap=True)
    for row in rows:
        if row["attack"] != "none" and row["eps"] == 0:
            continue  # the nominal row, repeated per attack
        table.add_row(row["attack"], row["mode"], f"{row['eps']:g}", f"{row['return_per_agent']:.4g}",
                      f"{row['system_loss']:.4g}", f"{row['ratio_to_reference']:.4f}", f"{row['budget_use']:.2f}",
                      row["worst_attack"] if row["attack"] == "worst" else "",
                      style="bold" if row["attack"] == "worst" else None)
    return table


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with config_errors():
            grid = AttackGrid(attacks=tuple(args.attacks), modes=tuple(args.modes), eps=tuple(args.eps),
                              steps=args.steps, norm=args.norm, episodes=args.episodes, rule=args.rule,
                              restarts=args.restarts, candidates=args.candidates,
                              learned_eps=None if args.learned_eps is None else tuple(args.learned_eps),
                              learned_steps=args.learned_steps)
        if args.out is not None and args.out.is_dir():
            raise ConfigError(f"--out {args.out} is a directory; give a CSV file name")
        if args.out is not None and not args.out.parent.is_dir():
            raise ConfigError(f"--out {args.out}: folder {args.out.parent} does not exist")
        scenario, policy = load_victim(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # attackers are saved beside a run directory and reused; an SB3 model's are trained in memory
    adversary_for = saved_adversaries(args.policy, grid, device=args.device) if args.policy.is_dir() else None
    rows = evaluate_under_attacks(scenario, policy, grid, adversary_for=adversary_for)
    settings = ", ".join(f"{key}={value}" for key, value in dataclasses.asdict(grid).items()
                         if key in ("steps", "rule", "restarts", "candidates", "norm", "episodes"))
    console = Console()
    console.width = max(console.width, 120)  # piped output: rich would squeeze the table into 80 columns
    console.print(attack_table(rows, f"{args.policy} on {scenario.name} ({settings})"))
    if args.out is not None:
        atomic_write_csv(args.out, rows)
        print(f"rows: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
