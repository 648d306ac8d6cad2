"""Typed run configuration: dataclasses, the packaged YAML file per scenario, ``KEY=VALUE`` overrides.

Resolution order: dataclass defaults <- the scenario's preset of that size (``env``) <- the packaged
``agents/configs/<scenario>.yaml`` section ``<size>`` <- overrides. Every field can be overridden
(``ppo.learning_rate=1e-3``, ``env.n_agents=8``, ``reg.eps=0.2``). The method's own settings are the
``reg:`` section, typed by its registry entry (``regularizers.registry``); the shocks of the
adversarial methods' rollouts are ``shock:``. Unknown keys, values of the wrong type and missing or
malformed config files raise ``ConfigError`` with one line naming the field, the value and what is
allowed: ``resolve`` checks every field (ranges and finiteness included) before anything is built or
written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.resources
import pathlib
import types
import typing
from typing import Any, Iterator

import torch
import yaml

from agents.ppo import PPOConfig
from envs.core import (SCENARIOS, check_choice, check_positive_int, check_real, check_seed, config_from_kwargs,
                       short_repr)
from envs.shock_wrapper import ATTACKS, ShockConfig
from regularizers import METHODS, Method

SIZES = ("small", "default", "large")
# The attacks of the periodic evaluation: ``learned`` needs an attacker trained against each policy.
EVAL_ATTACKS = ("none", *(attack for attack in ATTACKS if attack != "learned"))
DEFAULT_REG_COEF = 0.1
# Flat keys of earlier versions, refused with a pointer to their place in the ``reg:`` section.
RENAMED = {"reg_eps": "reg.eps", "reg_steps": "reg.steps (jacobian: reg.directions)", "reg_norm": "reg.norm",
           "reg_budget": "reg.budget", "reg_power_iterations": "reg.power_iterations",
           "specnorm_bound": "reg.bound"}


class ConfigError(ValueError):
    """A bad configuration value; the message is one line naming the field."""


@contextlib.contextmanager
def config_errors(prefix: str = "") -> Iterator[None]:
    """Turn a ValueError raised inside (a dataclass's or a ``check_*`` function's one-line message) into
    a ``ConfigError``, its message prefixed with ``prefix`` (e.g. ``"ppo."``, ``"env: "``)."""
    try:
        yield
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(f"{prefix}{error}") from None


def check_run_seed(name: str, value: Any) -> int:
    """A seed that must be given (a run's, a grid's): ``envs.core.check_seed`` without None, so an integer
    in [0, 2**63); else a ValueError naming it."""
    if value is not None:
        with contextlib.suppress(ValueError):
            return check_seed(name, value)
    raise ValueError(f"{name} must be an integer in [0, 2**63), got {short_repr(value)}")


@dataclasses.dataclass
class TrainConfig:
    """One training run: one scenario, one method, one seed.

    :param scenario: scenario name.
    :param size: ``small``, ``default`` or ``large``: the scenario preset and the config file's section.
    :param method: training method (``regularizers.METHODS``).
    :param seed: seed of everything, an integer in [0, 2**63) (same seed, same numbers on CPU).
    :param device: torch device (``cpu``, ``cuda``, ``cuda:1``...).
    :param total_agent_steps: training budget in agent-steps (environment steps x agents).
    :param reg_coef: weight lambda of the method's penalty (default 0.1 for methods with one; 0 still
        computes and logs it); methods without a penalty refuse it.
    :param reg: the method's settings (its registry entry's dataclass), None for methods without any.
    :param checkpoint_every: iterations between checkpoints.
    :param eval_envs: environments in the final evaluation.
    :param eval_every: iterations between periodic evaluations (0: none); the last iteration is always
        evaluated too. Each one plays the deterministic policy on ``eval_episodes`` held-out episodes
        (the same ones every time, seeds disjoint from training's and from the final evaluation's) and
        logs ``eval/return_per_agent``, ``eval/system_loss`` (per step) and ``eval/ratio_to_reference``.
    :param eval_episodes: environments of the periodic evaluation, one episode each.
    :param eval_attack: ``none``, or the attack of the periodic evaluation (one of
        ``envs.shock_wrapper.ATTACKS`` but ``learned``: every step shocked, shared mode, the benchmark's
        attack strength ``robustness.evaluate.AttackGrid``).
    :param eval_eps: the budget of ``eval_attack`` (observation units, l2).
    :param track: also log to Weights & Biases (the ``wandb`` extra; ``WANDB_MODE=offline`` works
        without network).
    :param wandb_project: the Weights & Biases project of ``track``.
    :param env: the scenario's keyword arguments.
    :param ppo: PPO hyper-parameters.
    :param shock: the shocks of the adversarial methods' rollouts (``adv``, ``aajr+adv``); ``shock.prob``
        is the probability that a step is shocked once the warm-up is over; PGA with normalized steps
        (``shock.rule=gradient`` for the first round's).
    :param shock_warmup: fraction of training over which the shock probability ramps up from 0.
    """

    scenario: str = "routing"
    size: str = "default"
    method: str = "ppo"
    seed: int = 0
    device: str = "cpu"
    total_agent_steps: int = 2_000_000
    reg_coef: float | None = None
    reg: Any = None
    checkpoint_every: int = 10
    eval_envs: int = 256
    eval_every: int = 10
    eval_episodes: int = 32
    eval_attack: str = "none"
    eval_eps: float = 0.1
    track: bool = False
    wandb_project: str = "aajr-marl"
    env: dict = dataclasses.field(default_factory=dict)
    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)
    shock: ShockConfig = dataclasses.field(default_factory=lambda: ShockConfig(prob=0.5, steps=3, rule="normalized"))
    shock_warmup: float = 0.3

    @property
    def method_spec(self) -> Method:
        return METHODS[self.method]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(path: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp`` (ints pass as floats, lists as tuples)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        tp = next(option for option in options if option is not type(None))
        origin = typing.get_origin(tp)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r} ({type(value).__name__})")
        item_type = typing.get_args(tp)[0]
        return tuple(_coerce(f"{path}[{i}]", item, item_type) for i, item in enumerate(value))
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r} ({type(value).__name__})")
        return dict(value)
    if tp in (int, float) and isinstance(value, str):
        try:
            value = float(value)  # YAML reads 2e6 (no dot) as a string
        except ValueError:
            pass
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 53:
        return int(value)  # 2e6 in YAML
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    return value


def build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested mapping, refusing unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix[:-1] if prefix else 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        renamed = [f"{prefix}{k} is now {RENAMED[k]}" for k in unknown if not prefix and k in RENAMED]
        hint = f" ({'; '.join(renamed)})" if renamed else ""
        raise ConfigError(f"unknown key(s) {', '.join(prefix + k for k in unknown)}{hint}; "
                          f"allowed: {', '.join(prefix + k for k in fields)}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if tp is Any:
            kwargs[name] = value
        elif dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(prefix + name, value, tp)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as error:  # the dataclass's own checks: "<field> must ..." or "unknown <field> ..."
        message = str(error)
        if prefix and message.split(" ", 1)[0] not in fields:
            message = f"{prefix[:-1]}: {message}"
        elif prefix:
            message = prefix + message
        raise ConfigError(message) from None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["ppo.learning_rate=1e-3", "env.n_agents=8"]`` -> nested mapping (values parsed as YAML)."""
    nested: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not KEY=VALUE")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({error.problem})") from None
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override")
        node[parts[-1]] = value
    return nested


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins. The scenario's ``env`` mapping merges key by key."""
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, dict) else value
    return out


def load_yaml(path: pathlib.Path | importlib.resources.abc.Traversable, what: str) -> dict[str, Any]:
    """The mapping in a YAML file (``what`` names it in errors); an empty file is an empty mapping."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{what}: cannot read it ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{what}: not a text file ({error.reason} at byte {error.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ConfigError(f"{what}: not valid YAML{where} ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def config_file(scenario: str, config_dir: pathlib.Path | None = None):
    """The YAML file of a scenario: ``<config_dir>/<scenario>.yaml``, or the one packaged in ``agents/configs``."""
    if config_dir is not None:
        return pathlib.Path(config_dir) / f"{scenario}.yaml"
    return importlib.resources.files("agents").joinpath("configs", f"{scenario}.yaml")


def size_section(scenario: str, size: str, config_dir: pathlib.Path | None = None) -> dict[str, Any]:
    """The ``size`` section of the scenario's config file, with the scenario preset of that size under
    its ``env`` (a missing file or section is an error)."""
    path = config_file(scenario, config_dir)
    what = f"config file {path}"
    if not path.is_file():
        raise ConfigError(f"{what} is missing: every scenario needs one, with sections {', '.join(SIZES)}")
    sections = load_yaml(path, what)
    unknown = sorted(set(sections) - set(SIZES))
    if unknown:
        raise ConfigError(f"{what}: unknown section(s) {', '.join(map(str, unknown))}; allowed: {', '.join(SIZES)}")
    if size not in sections:
        raise ConfigError(f"{what} has no section {size!r}")
    section = sections[size] or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{what}: section {size!r} must be a mapping, got {type(section).__name__}")
    preset = SCENARIOS[scenario].presets.get(size, {})
    env = section.get("env") or {}
    if not isinstance(env, dict):
        raise ConfigError(f"{what}: {size}.env must be a mapping, got {type(env).__name__}")
    return {**section, "env": {**preset, **env}}


def device_kind(device: str) -> str:
    """The kind of a torch device name (``cpu``, ``cuda``...); a name torch does not parse is refused."""
    try:
        return torch.device(device).type
    except RuntimeError:
        raise ConfigError(f"device {device!r} is not a torch device; e.g. cpu, cuda, cuda:1") from None


def resolve(overrides: dict[str, Any], config_dir: pathlib.Path | None = None) -> TrainConfig:
    """Defaults <- preset <- ``<scenario>.yaml[size]`` <- overrides, validated (``ConfigError``)."""
    if not isinstance(overrides, dict):
        raise ConfigError(f"config: expected a mapping, got {type(overrides).__name__}")
    scenario = overrides.get("scenario", TrainConfig.scenario)
    size = overrides.get("size", TrainConfig.size)
    if not isinstance(scenario, str) or scenario not in SCENARIOS:
        raise ConfigError(f"unknown scenario {scenario!r}; allowed: {', '.join(sorted(SCENARIOS))}")
    if not isinstance(size, str) or size not in SIZES:
        raise ConfigError(f"unknown size {size!r}; allowed: {', '.join(SIZES)}")
    merged = merge(size_section(scenario, size, config_dir), overrides)
    method_name = merged.get("method", TrainConfig.method)
    if not isinstance(method_name, str) or method_name not in METHODS:
        raise ConfigError(f"unknown method {method_name!r}; allowed: {', '.join(METHODS)}")
    method = METHODS[method_name]
    reg = merged.pop("reg", None)
    config = build(TrainConfig, merged)
    config = dataclasses.replace(config, reg=build_settings(method, reg))
    with config_errors("env: "):
        config_from_kwargs(SCENARIOS[scenario].config_cls, config.env)
    with config_errors("ppo."):
        config.ppo.validate()
    with config_errors():
        check_run_seed("seed", config.seed)
        for name in ("total_agent_steps", "checkpoint_every", "eval_envs", "eval_episodes"):
            check_positive_int(name, getattr(config, name))
        if config.eval_every < 0:
            raise ValueError(f"eval_every must be an integer >= 0 (0: no periodic evaluation), got {config.eval_every}")
        check_choice("eval_attack", config.eval_attack, EVAL_ATTACKS)
        check_real("eval_eps", config.eval_eps, 0.0, low_open=True)
        check_real("shock_warmup", config.shock_warmup, 0.0, 1.0)
        if not config.wandb_project.strip():
            raise ValueError("wandb_project must not be empty")
    device_kind(config.device)
    if not method.adversarial and ("shock" in merged or "shock_warmup" in merged):
        raise ConfigError(f"shock settings configure the rollouts of the adversarial methods "
                          f"({', '.join(name for name, m in METHODS.items() if m.adversarial)}); "
                          f"method {config.method!r} does not use them")
    if method.adversarial and config.shock.prob <= 0:
        raise ConfigError(f"method {config.method!r} trains under shocks: shock.prob must be > 0, "
                          f"got {config.shock.prob}")
    if method.penalty is None:
        if config.reg_coef:
            raise ConfigError(f"method {config.method!r} has no penalty, so reg_coef={config.reg_coef} has no "
                              f"effect; methods with a penalty: "
                              f"{', '.join(name for name, m in METHODS.items() if m.penalty)}")
        config = dataclasses.replace(config, reg_coef=0.0)
    elif config.reg_coef is None:
        config = dataclasses.replace(config, reg_coef=DEFAULT_REG_COEF)
    with config_errors():
        check_real("reg_coef", config.reg_coef, 0.0)
    return config


def build_settings(method: Method, data: Any) -> Any:
    """The method's settings dataclass from the ``reg:`` mapping (None when the method has none)."""
    if method.settings is None:
        if data:
            raise ConfigError(f"method {method.name!r} has no settings, got reg={data!r}; methods with settings: "
                              f"{', '.join(name for name, m in METHODS.items() if m.settings)}")
        return None
    if dataclasses.is_dataclass(data) and isinstance(data, method.settings):
        return data
    return build(method.settings, {} if data is None else data, "reg.")


def to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain YAML-safe mapping of the resolved config (tuples as lists); ``reg`` only for methods with
    settings, the shock settings only for the adversarial methods (``resolve(to_dict(config)) == config``)."""
    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    data = plain(dataclasses.asdict(config))
    if config.reg is None:
        del data["reg"]
    if not config.method_spec.adversarial:
        del data["shock"], data["shock_warmup"]
    return data
