"""Typed run configuration: dataclasses, YAML files per scenario, ``KEY=VALUE`` command-line overrides.

Resolution order: dataclass defaults <- ``configs/<scenario>.yaml`` section ``<size>`` <- overrides.
Every field can be overridden (``ppo.learning_rate=1e-3``, ``env.n_agents=8``). Unknown keys and
values of the wrong type raise ``ConfigError`` with one line naming the field, the value and what is
allowed.
"""

from __future__ import annotations

import dataclasses
import pathlib
import types
import typing
from typing import Any

import yaml

from agents.ppo import PPOConfig
from envs.core import SCENARIOS
from envs.shock_wrapper import ShockConfig
from regularizers import RegularizerSettings

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"
SIZES = ("small", "default", "large")


class ConfigError(ValueError):
    """A bad configuration value; the message is one line naming the field."""


@dataclasses.dataclass(frozen=True)
class Method:
    """What a training method adds to PPO.

    :param penalty: name of the regularizer in ``regularizers.REGULARIZERS`` (None: no penalty).
    :param adversarial: roll out under PGA shocks (``TrainConfig.shock``): PGD adversarial training.
    :param spectral_norm: bound the spectral norm of every actor layer (``regularizers.specnorm``).
    """

    penalty: str | None = None
    adversarial: bool = False
    spectral_norm: bool = False


METHODS = {
    "ppo": Method(),
    "aajr": Method(penalty="aajr"),
    "jacobian": Method(penalty="jacobian"),
    "spectral": Method(penalty="spectral"),
    "specnorm": Method(spectral_norm=True),
    "smooth": Method(penalty="smooth"),
    "adv": Method(adversarial=True),
    "aajr+adv": Method(penalty="aajr", adversarial=True),  # the regularized robust objective (eq. 21)
}
DEFAULT_REG_COEF = 0.1


@dataclasses.dataclass
class TrainConfig:
    """One training run: one scenario, one method, one seed.

    :param scenario: scenario name.
    :param size: section of ``configs/<scenario>.yaml`` (small, default, large).
    :param method: training method.
    :param seed: seed of everything (same seed, same numbers on CPU).
    :param device: torch device (``cpu``, ``cuda``, ``cuda:1``...).
    :param total_agent_steps: training budget in agent-steps (environment steps x agents).
    :param reg_coef: weight lambda of the method's penalty (default 0.1 for methods with one; 0 still
        computes and logs it); methods without a penalty refuse it.
    :param reg_eps: radius of the ball of the regularizer's PGA (``aajr``, ``smooth``), observation units.
    :param reg_steps: K: PGA steps (``aajr``, ``smooth``) or random directions per state (``jacobian``).
    :param reg_norm: ``l2`` or ``linf``.
    :param reg_budget: hinge budget gamma: penalise ``max(0, norm - gamma)^2`` instead of ``norm^2``.
    :param reg_power_iterations: power iterations of the ``spectral`` penalty.
    :param specnorm_bound: per-layer spectral-norm bound c of ``specnorm``.
    :param checkpoint_every: iterations between checkpoints.
    :param eval_envs: environments in the final evaluation.
    :param env: the scenario's keyword arguments.
    :param ppo: PPO hyper-parameters.
    :param shock: the shocks of the adversarial methods' rollouts (``adv``, ``aajr+adv``); ``shock.prob``
        is the probability that a step is shocked once the warm-up is over.
    :param shock_warmup: fraction of training over which the shock probability ramps up from 0.
    """

    scenario: str = "routing"
    size: str = "default"
    method: str = "ppo"
    seed: int = 0
    device: str = "cpu"
    total_agent_steps: int = 2_000_000
    reg_coef: float | None = None
    reg_eps: float = 0.1
    reg_steps: int = 3
    reg_norm: str = "l2"
    reg_budget: float | None = None
    reg_power_iterations: int = 5
    specnorm_bound: float = 1.0
    checkpoint_every: int = 10
    eval_envs: int = 256
    env: dict = dataclasses.field(default_factory=dict)
    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)
    shock: ShockConfig = dataclasses.field(default_factory=lambda: ShockConfig(prob=0.5, steps=3))
    shock_warmup: float = 0.3

    @property
    def method_spec(self) -> Method:
        return METHODS[self.method]

    def regularizer_settings(self) -> RegularizerSettings:
        return RegularizerSettings(self.reg_eps, self.reg_steps, self.reg_norm, self.reg_budget,
                                   self.reg_power_iterations)


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
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(prefix + k for k in unknown)}; "
                          f"allowed: {', '.join(prefix + k for k in fields)}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(prefix + name, value, tp)
    return cls(**kwargs)


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


def load_yaml(path: pathlib.Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def resolve(overrides: dict[str, Any], config_dir: pathlib.Path = CONFIG_DIR) -> TrainConfig:
    """Defaults <- ``configs/<scenario>.yaml[size]`` <- overrides, validated."""
    scenario = overrides.get("scenario", TrainConfig.scenario)
    size = overrides.get("size", TrainConfig.size)
    if scenario not in SCENARIOS:
        raise ConfigError(f"unknown scenario {scenario!r}; allowed: {', '.join(sorted(SCENARIOS))}")
    if size not in SIZES:
        raise ConfigError(f"unknown size {size!r}; allowed: {', '.join(SIZES)}")
    path = config_dir / f"{scenario}.yaml"
    sections = load_yaml(path) if path.exists() else {}
    unknown = sorted(set(sections) - set(SIZES))
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)}; allowed: {', '.join(SIZES)}")
    merged = merge(sections.get(size) or {}, overrides)
    config = build(TrainConfig, merged)
    if config.method not in METHODS:
        raise ConfigError(f"unknown method {config.method!r}; allowed: {', '.join(METHODS)}")
    if config.seed < 0:
        raise ConfigError(f"seed must be >= 0, got {config.seed}")
    for name in ("total_agent_steps", "checkpoint_every", "eval_envs"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be a positive integer, got {getattr(config, name)}")
    for name in ("num_envs", "rollout_steps", "update_epochs", "num_minibatches"):
        if getattr(config.ppo, name) < 1:
            raise ConfigError(f"ppo.{name} must be a positive integer, got {getattr(config.ppo, name)}")
    if config.ppo.learning_rate <= 0:
        raise ConfigError(f"ppo.learning_rate must be > 0, got {config.ppo.learning_rate}")
    method = config.method_spec
    if not method.adversarial and ("shock" in merged or "shock_warmup" in merged):
        raise ConfigError(f"shock settings configure the rollouts of the adversarial methods "
                          f"({', '.join(name for name, m in METHODS.items() if m.adversarial)}); "
                          f"method {config.method!r} does not use them")
    if not 0.0 <= config.shock_warmup <= 1.0:
        raise ConfigError(f"shock_warmup must lie in [0, 1], got {config.shock_warmup}")
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
    if config.reg_coef < 0:
        raise ConfigError(f"reg_coef must be >= 0, got {config.reg_coef}")
    if config.specnorm_bound <= 0:
        raise ConfigError(f"specnorm_bound must be > 0, got {config.specnorm_bound}")
    try:
        config.regularizer_settings()
    except ValueError as error:
        raise ConfigError(f"{error} (reg_* settings)") from None
    return config


def to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain YAML-safe mapping of the resolved config (tuples as lists); the shock settings only for
    the adversarial methods, which use them (``resolve(to_dict(config)) == config``)."""
    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    data = plain(dataclasses.asdict(config))
    if not config.method_spec.adversarial:
        del data["shock"], data["shock_warmup"]
    return data
