"""Every training method end to end: finite losses, its diagnostics, bit-exact resume, and (slow) that
each penalty moves its diagnostic the expected way after the same training."""

import csv
import dataclasses
import math

import pytest
import torch

from agents import run
from agents.config import parse_overrides, resolve
from regularizers import METHODS, Method, register_method, unregister_method
from regularizers.specnorm import layer_spectral_norms
from robustness.report import method_key

TINY = ["scenario=routing", "size=small", "total_agent_steps=640", "checkpoint_every=1", "eval_envs=4",
        "env.horizon=5", "ppo.num_envs=8", "ppo.rollout_steps=5"]
# the test's own expectation of what each method logs (the registry's entries must agree)
DIAGNOSTIC = {"aajr": "reg/jvp_norm_mean", "jacobian": "reg/jvp_norm_mean", "spectral": "reg/spectral_norm_mean",
              "smooth": "reg/action_change_mean", "aajr+adv": "reg/jvp_norm_mean", "adv": "shock/norm",
              "specnorm": "reg/layer_spectral_norm_max"}


def config_for(method, *extra):
    spec = METHODS[method]
    fields = {f.name for f in dataclasses.fields(spec.settings)} if spec.settings else set()
    cheap = [f"reg.{key}=2" for key in ("steps", "directions", "power_iterations") if key in fields]
    shock = ["shock.steps=2"] if spec.adversarial else []
    return resolve(parse_overrides(TINY + cheap + shock + [f"method={method}", *extra]))


def test_the_registry_names_each_method_diagnostic():
    assert {name: method.diagnostic for name, method in METHODS.items() if method.diagnostic} == DIAGNOSTIC


def train_iterations(config, iterations=None):
    learner = run.build_learner(config)
    rows = [learner.train_iteration() for _ in range(iterations or learner.total_iterations)]
    return learner, rows


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_with_finite_losses_and_logs_its_diagnostics(method):
    learner, rows = train_iterations(config_for(method))
    for row in rows:
        for key, value in row.items():
            if key.startswith(("losses/", "reg/")):
                assert math.isfinite(value), (key, value)
    if method in DIAGNOSTIC:
        assert rows[-1][DIAGNOSTIC[method]] > 0
    assert ("losses/penalty" in rows[-1]) == (METHODS[method].penalty is not None)
    if method == "specnorm":  # one power-iteration step per forward lags the Adam steps slightly
        assert float(layer_spectral_norms(learner.policy.actor).max()) <= 1.0 + 1e-2
        assert rows[-1]["reg/layer_spectral_norm_max"] <= 1.0 + 1e-2


@pytest.mark.parametrize("method", ["jacobian", "smooth", "specnorm"])
def test_methods_with_their_own_randomness_or_state_resume_bit_for_bit(method, tmp_path):
    config = config_for(method)
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    full_dir.mkdir(), cut_dir.mkdir()
    full = run.train(config, full_dir, progress=False)
    assert run.train(config, cut_dir, progress=False, max_iterations=3) is None
    resumed = run.train(config, cut_dir, resume=True, progress=False)
    assert (cut_dir / "metrics.csv").read_text().count("\n") == (full_dir / "metrics.csv").read_text().count("\n")
    assert resumed["system_loss_per_step"] == full["system_loss_per_step"]


@dataclasses.dataclass(frozen=True)
class ActionSizeSettings:
    target: float = 0.5


def action_size_penalty(scenario, settings):
    def penalty(policy, batch, generator):
        actions = policy.deterministic_action(batch.obs)
        value = ((actions - settings.target) ** 2).mean()
        return value, {"reg/action_size": float(value.detach())}
    return penalty


@pytest.fixture
def registered():
    names = []

    def register(method):
        names.append(register_method(method).name)

    yield register
    for name in names:
        unregister_method(name)


def test_a_method_registered_through_the_registry_alone_trains(registered, tmp_path):
    registered(Method("actsize", "pull the actions towards a target", penalty=action_size_penalty,
                      settings=ActionSizeSettings, diagnostic="reg/action_size"))
    config = config_for("actsize", "reg.target=0.25", "reg_coef=2")
    assert config.reg == ActionSizeSettings(0.25) and config.reg_coef == 2.0
    assert run.train(config, tmp_path / "run", progress=False, max_iterations=1) is None
    with (tmp_path / "run" / "metrics.csv").open() as f:
        row = next(csv.DictReader(f))
    assert float(row["reg/action_size"]) > 0 and float(row["losses/penalty"]) == float(row["reg/action_size"])
    assert run.load_config(tmp_path / "run") == config
    assert method_key(("actsize", 2.0, 0.0)) > method_key(("aajr+adv", 0.1, 0.0))  # reported after the built-in methods


def test_registry_entries_are_checked(registered):
    with pytest.raises(ValueError, match="registered already"):
        register_method(Method("ppo", "again"))
    with pytest.raises(ValueError, match="needs a settings dataclass"):
        Method("bare", "a penalty without settings", penalty=action_size_penalty)


SLOW = ["scenario=routing", "size=small", "total_agent_steps=12000", "eval_envs=4"]


def final_diagnostic(method, reg_coef, key, *extra):
    config = resolve(parse_overrides(SLOW + [f"method={method}", f"reg_coef={reg_coef}", *extra]))
    learner, rows = train_iterations(config)
    assert all(math.isfinite(row["losses/policy_loss"]) for row in rows)
    return sum(row[key] for row in rows[-5:]) / 5


@pytest.mark.slow
@pytest.mark.parametrize("method", ["aajr", "jacobian", "spectral", "smooth", "aajr+adv"])
def test_the_penalty_lowers_its_diagnostic_after_the_same_training(method):
    key = DIAGNOSTIC[method]
    without = final_diagnostic(method, 0.0, key)
    with_penalty = final_diagnostic(method, 1.0, key)
    assert with_penalty < 0.7 * without, (method, key, without, with_penalty)


@pytest.mark.slow
def test_spectral_normalisation_keeps_the_layers_below_the_bound_where_ppo_does_not():
    norms = {}
    for method in ("ppo", "specnorm"):
        learner, _ = train_iterations(resolve(parse_overrides(SLOW + [f"method={method}"])))
        norms[method] = layer_spectral_norms(learner.policy.actor)
    assert float(norms["specnorm"].max()) <= 1.0 + 1e-2
    assert float(norms["ppo"][:-1].max()) > 1.2  # the hidden layers start at sqrt(2) and stay above the bound


@pytest.mark.slow
def test_adversarial_training_rolls_out_under_shocks_that_raise_the_system_loss():
    learner, rows = train_iterations(resolve(parse_overrides(SLOW + ["method=adv", "shock_warmup=0"])))
    assert all(row["shock/prob"] == 0.5 for row in rows)
    assert sum(row["shock/gain"] for row in rows) / len(rows) > 0
    assert torch.isfinite(torch.tensor([row["losses/value_loss"] for row in rows])).all()
