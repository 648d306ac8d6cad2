"""The training command line (``python train.py`` and the ``aajr-train`` entry point)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import pathlib
import re
import shutil
import sys
import textwrap
from collections.abc import Iterator
from typing import Any, NamedTuple

import yaml

from agents.config import SIZES, ConfigError, TrainConfig, parse_overrides, resolve, to_dict
from agents.run import default_run_dir, load_config, train
from envs.core import SCENARIOS
from regularizers import METHODS

DESCRIPTION = """Train one method on one scenario: python train.py --scenario routing --method ppo --seed 0.

With no arguments it runs the default job (routing, default size, PPO, seed 0; a few minutes on a
2-core CPU). A run directory holds the resolved config.yaml, metrics.csv, TensorBoard events (tb/),
checkpoint.pt (written atomically every checkpoint_every iterations and on Ctrl-C) and summary.json.
--resume RUN_DIR continues a run bit for bit from its checkpoint (on a finished run it changes nothing).
Any config field can be overridden: --set ppo.learning_rate=1e-3 env.n_agents=8 reg.eps=0.2 (every
key is listed below; --print-config shows the resolved config of a command line without running it).
When stdout is not a terminal (a pipe, nohup, CI) the progress bar is replaced by plain log lines.

A bad value or a damaged run file is one line naming the field (or file), the value and what is
allowed, with exit code 2, before anything is written."""


class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (``error: ...``, exit code 2), like the config's."""

    def error(self, message: str) -> None:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """argparse type of a count: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


# ----- the config keys, from the dataclasses and their docstrings ----------------------------------


class ConfigKey(NamedTuple):
    """One key ``--set`` accepts: its dotted name, default and the first line of its documentation."""

    key: str
    default: Any
    doc: str


def param_docs(cls: type) -> dict[str, str]:
    """The ``:param name: text`` entries of a class's docstring (continuation lines joined), and for a
    scenario's config the rows ``| ``name`` | default | meaning |`` of its module's documentation table."""
    docs: dict[str, str] = {}
    module_doc = sys.modules[cls.__module__].__doc__ or ""
    for line in module_doc.splitlines():
        row = re.match(r"\|\s*``(\w+)``\s*\|[^|]*\|\s*(.*?)\s*\|\s*$", line)
        if row:
            docs.setdefault(row.group(1), row.group(2))
    name = None
    for line in inspect.cleandoc(cls.__doc__ or "").splitlines():
        param = re.match(r":param (\w+):\s*(.*)", line)
        if param:
            name = param.group(1)
            docs[name] = param.group(2)
        elif name and line.startswith(" ") and line.strip():
            docs[name] += " " + line.strip()
        else:
            name = None
    return docs


def dataclass_keys(cls: type, values: Any, prefix: str = "") -> Iterator[ConfigKey]:
    """The keys of dataclass ``cls`` under ``prefix``, their values taken from ``values`` (an instance
    or a mapping; a field missing there: the dataclass default)."""
    docs = param_docs(cls)
    for field in dataclasses.fields(cls):
        if isinstance(values, dict):
            default = values.get(field.name, field.default)
        else:
            default = getattr(values, field.name)
        if default is dataclasses.MISSING and field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        yield ConfigKey(prefix + field.name, default, docs.get(field.name, ""))


NESTED = ("reg", "env", "ppo", "shock")  # the sections of TrainConfig, listed by their own dataclasses


def config_sections(scenario: str = TrainConfig.scenario, size: str = TrainConfig.size,
                    method: str = TrainConfig.method) -> list[tuple[str, list[ConfigKey]]]:
    """Every key ``--set`` accepts, in titled groups, with its value for ``scenario``/``size``/``method``
    (the packaged config over the dataclass defaults): the top-level fields, ``ppo.*``, ``shock.*``,
    ``reg.*`` of each kind of method settings and ``env.*`` of each scenario."""
    config = resolve({"scenario": scenario, "size": size, "method": method})
    docs = param_docs(TrainConfig)
    top = [ConfigKey(f.name, getattr(config, f.name), docs.get(f.name, ""))
           for f in dataclasses.fields(TrainConfig) if f.name not in NESTED]
    adversarial = [name for name, m in METHODS.items() if m.adversarial]
    shock = config.shock if config.method_spec.adversarial else resolve(
        {"scenario": scenario, "size": size, "method": adversarial[0]}).shock
    sections = [("run", top), ("ppo.*: PPO", list(dataclass_keys(type(config.ppo), config.ppo, "ppo."))),
                (f"shock.*: rollout shocks of {', '.join(adversarial)} (refused by the other methods)",
                 list(dataclass_keys(type(shock), shock, "shock.")))]
    settings: dict[type, list[str]] = {}
    for name, spec in METHODS.items():
        if spec.settings is not None:
            settings.setdefault(spec.settings, []).append(name)
    for cls, names in settings.items():
        sections.append((f"reg.*: settings of method {', '.join(names)}", list(dataclass_keys(cls, cls(), "reg."))))
    for name in sorted(SCENARIOS):
        env = config.env if name == scenario else resolve({"scenario": name, "size": size}).env
        sections.append((f"env.*: scenario {name} (size {size})",
                         list(dataclass_keys(SCENARIOS[name].config_cls, env, "env."))))
    return sections


def config_help(scenario: str = TrainConfig.scenario, size: str = TrainConfig.size,
                method: str = TrainConfig.method) -> str:
    """The ``--help`` epilog: every config key with its value for the scenario/size/method and its doc."""
    width = max(60, min(shutil.get_terminal_size().columns, 120) - 2)
    lines = textwrap.wrap(f"config keys (--set KEY=VALUE), with their values for --scenario {scenario} --size {size} "
                          f"--method {method} (the packaged agents/configs/{scenario}.yaml over the dataclass "
                          f"defaults; give --scenario, --size or --method with --help to see another's):", width)
    for title, keys in config_sections(scenario, size, method):
        lines.append(f"\n{title}")
        for key in keys:
            value = yaml.safe_dump(key.default, default_flow_style=True).removesuffix("...\n").strip()
            lines.extend(textwrap.wrap(f"  {key.key} = {value}: {key.doc or '(undocumented)'}", width,
                                       subsequent_indent="      ", break_on_hyphens=False))
    return "\n".join(lines)


def help_context(argv: list[str] | None) -> tuple[str, str, str]:
    """The scenario, size and method the command line names (the defaults otherwise, and for names
    that are not valid: ``--help`` must work whatever else is wrong)."""
    pre = argparse.ArgumentParser(add_help=False)
    for name in ("--scenario", "--size", "--method"):
        pre.add_argument(name)
    known, _ = pre.parse_known_args(argv)
    scenario = known.scenario if known.scenario in SCENARIOS else TrainConfig.scenario
    size = known.size if known.size in SIZES else TrainConfig.size
    method = known.method if known.method in METHODS else TrainConfig.method
    return scenario, size, method


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else argv
    try:
        epilog = config_help(*help_context(argv))  # a few YAML reads: cheap enough to build on every call
    except ConfigError as error:  # a broken packaged config: --help still works, the run will name it
        epilog = f"config keys: cannot list them ({error})"
    parser = OneLineParser(description=DESCRIPTION, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", help=f"{', '.join(sorted(SCENARIOS))} (default: {TrainConfig.scenario})")
    parser.add_argument("--size", help=f"{', '.join(SIZES)}: scenario preset and config section "
                                       f"(default: {TrainConfig.size})")
    parser.add_argument("--method", help=f"training method: {', '.join(METHODS)} (default: {TrainConfig.method})")
    parser.add_argument("--seed", type=int, help=f"seed of everything (default: {TrainConfig.seed})")
    parser.add_argument("--device", help="cpu, cuda, cuda:N (default: cpu)")
    parser.add_argument("--total-agent-steps", type=int, help="training budget in agent-steps (default: the "
                                                                 "config file's, e.g. 2000000 for routing)")
    parser.add_argument("--reg-coef", type=float, help="weight lambda of the method's penalty (default 0.1)")
    parser.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                        help="override any config field (repeatable; keys below)")
    parser.add_argument("--run-dir", type=pathlib.Path, help="where to write (default runs/<name>-<time>)")
    parser.add_argument("--resume", type=pathlib.Path, metavar="RUN_DIR", help="continue a run from its checkpoint")
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help="torch CPU threads (torch.set_num_threads; default: torch's own choice)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config of these options as YAML and exit, writing nothing")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (nor the plain progress lines printed when stdout is not a terminal)")
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
        if args.print_config:
            print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
            return 0
        if args.threads is not None:
            import torch
            torch.set_num_threads(args.threads)
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
