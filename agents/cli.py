"""The training command line (``python train.py`` and the ``aajr-train`` entry point)."""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Any

from agents.config import ConfigError, parse_overrides, resolve
from agents.run import default_run_dir, load_config, train
from regularizers import METHODS

DESCRIPTION = """Train one method on one scenario: python train.py --scenario routing --method ppo --seed 0.

With no arguments it runs the default job (routing, default size, PPO, seed 0; a few minutes on a
2-core CPU). A run directory holds the resolved config.yaml, metrics.csv, TensorBoard events (tb/),
checkpoint.pt (written atomically every checkpoint_every iterations and on Ctrl-C) and summary.json.
--resume RUN_DIR continues a run bit for bit from its checkpoint (on a finished run it changes nothing).
Any config field can be overridden: --set ppo.learning_rate=1e-3 env.n_agents=8 reg.eps=0.2.

A bad value or a damaged run file is one line naming the field (or file), the value and what is
allowed, with exit code 2, before anything is written."""


class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (``error: ...``, exit code 2), like the config's."""

    def error(self, message: str) -> None:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", help="commons, compute or routing (default: routing)")
    parser.add_argument("--size", help="small, default or large: scenario preset and config section (default: default)")
    parser.add_argument("--method", help=f"training method: {', '.join(METHODS)} (default: ppo)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="cpu, cuda, cuda:N")
    parser.add_argument("--total-agent-steps", type=int)
    parser.add_argument("--reg-coef", type=float, help="weight lambda of the method's penalty (default 0.1)")
    parser.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                        help="override any config field (repeatable)")
    parser.add_argument("--run-dir", type=pathlib.Path, help="where to write (default runs/<name>-<time>)")
    parser.add_argument("--resume", type=pathlib.Path, metavar="RUN_DIR", help="continue a run from its checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """The config overrides the command line names (``--set`` and the dedicated options)."""
    overrides = parse_overrides(args.set)
    for name in ("scenario", "size", "method", "seed", "device", "total_agent_steps", "reg_coef"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    return overrides


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        overrides = overrides_from(args)
        if args.resume is not None:
            if overrides or args.run_dir is not None:
                raise ConfigError("--resume takes the run's own config; other options are not allowed with it")
            run_dir, config = args.resume, load_config(args.resume)
        else:
            config = resolve(overrides)
            run_dir = args.run_dir or default_run_dir(config)
        summary = train(config, run_dir, resume=args.resume is not None, progress=not args.no_progress)
    except ConfigError as error:  # a bad value named in one line; anything else keeps its traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    if summary is not None:
        print(format_summary(summary))
    print(f"run directory: {run_dir}")
    return 0


def format_summary(summary: dict[str, Any]) -> str:
    final = summary["final_training"]

    def last(key: str) -> str:  # an iteration in which no episode ended logs no return
        return f"{final[key]:+.4f}" if key in final else "n/a"

    lines = [f"{summary['scenario']} / {summary['method']} / seed {summary['seed']}: "
             f"{summary['agent_steps']:,} agent-steps in {summary['iterations']} iterations",
             f"  last training iteration: episodic return (mean over agents) {last('charts/episodic_return')}, "
             f"system loss per step {last('charts/system_loss')}",
             f"  mean system loss per step (deterministic policy, {summary['eval_envs']} episodes):"]
    for name, value in summary["system_loss_per_step"].items():
        lines.append(f"    {name:>20s}  {value:+.5f}")
    lines.append(f"  ratio to {summary['reference']}: {summary['ratio_to_reference']:.4f} "
                 f"({summary['ratio_meaning']})")
    return "\n".join(lines)
