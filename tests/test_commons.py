"""Commons: dynamics by hand, the MSY/MEY/open-access references, collapse, payoffs."""

import pytest
import torch

import envs
from envs.commons import reference_stocks

DETERMINISTIC = {"growth_noise": 0.0, "price_volatility": 0.0, "spike_prob": 0.0}


def make(**kwargs):
    return envs.make_scenario("commons", dtype=torch.float64, **kwargs)


def test_one_step_by_hand():
    scenario = make(n_agents=2, n_resources=1, growth_rate=0.4, max_catch_fraction=0.8, effort_cost=0.1,
                    **DETERMINISTIC)
    state = scenario.reset(1, envs.make_generator(0))
    state["stock"] = torch.tensor([[0.6]], dtype=torch.float64)
    actions = torch.tensor([[[0.5], [0.25]]], dtype=torch.float64)
    result = scenario.step(state, actions, envs.make_generator(0))
    # h_i = 0.8 * a_i * 0.6 / 2; profit_i = h_i - 0.1 * a_i / 2
    catch = torch.tensor([0.12, 0.06], dtype=torch.float64)
    profit = catch - 0.1 * torch.tensor([0.5, 0.25], dtype=torch.float64) / 2
    torch.testing.assert_close(scenario.agent_payoffs(state, actions)[0], profit)
    torch.testing.assert_close(result.system_loss, -profit.sum().reshape(1))
    expected_stock = 0.6 + 0.4 * 0.6 * 0.4 - catch.sum()
    torch.testing.assert_close(result.state["stock"], expected_stock.reshape(1, 1))
    torch.testing.assert_close(result.rewards, (-result.system_loss / 2).expand(1, 2))


def test_constant_msy_effort_converges_to_half_the_carrying_capacity():
    scenario = make(n_agents=4, n_resources=3, horizon=400, **DETERMINISTIC)
    generator = envs.make_generator(1)
    state = scenario.reset(8, generator)
    for _ in range(400):
        result = scenario.step(state, scenario.reference_action(state, "msy"), generator)
        state = result.state
    torch.testing.assert_close(state["stock"], torch.full_like(state["stock"], 0.5), atol=1e-6, rtol=0)
    refs = scenario.references()
    # harvest at MSY is r K / 4 per resource
    assert refs["msy_harvest"] == pytest.approx(float(scenario.growth_rates.sum() / 4))
    assert float(result.info["harvest"][0]) == pytest.approx(refs["msy_harvest"], rel=1e-6)


@pytest.mark.parametrize("name", ["mey", "open_access"])
def test_reference_efforts_hold_their_steady_state(name):
    scenario = make(n_resources=2, horizon=600, **DETERMINISTIC)
    generator = envs.make_generator(2)
    state = scenario.reset(2, generator)
    for _ in range(600):
        state = scenario.step(state, scenario.reference_action(state, name), generator).state
    target = reference_stocks(1.0, scenario.config.effort_cost, scenario.config.max_catch_fraction)[name]
    torch.testing.assert_close(state["stock"], torch.full_like(state["stock"], target), atol=1e-6, rtol=0)


def test_mey_maximises_steady_state_rent_and_open_access_has_none():
    scenario = make(n_resources=1, growth_rate=0.5, effort_cost=0.2)
    r, c, w = 0.5, scenario.config.max_catch_fraction, 0.2
    stocks = torch.linspace(0.0, 1.0, 100001, dtype=torch.float64)
    rent = r * (1 - stocks) * (stocks - w / c)  # price 1
    refs = scenario.references()
    assert refs["mey_stock"] == pytest.approx(float(stocks[rent.argmax()]), abs=1e-4)
    assert refs["mey_welfare"] == pytest.approx(float(rent.max()), rel=1e-6)
    assert refs["open_access_welfare"] == pytest.approx(0.0, abs=1e-12)
    assert refs["msy_welfare"] < refs["mey_welfare"]


def test_full_effort_collapses_the_resource_for_good():
    scenario = make(n_agents=3, n_resources=2, horizon=50, **DETERMINISTIC)
    generator = envs.make_generator(3)
    state = scenario.reset(4, generator)
    for _ in range(20):
        state = scenario.step(state, torch.ones(4, 3, 2, dtype=torch.float64), generator).state
    assert bool(state["collapsed"].all())
    stock_at_collapse = state["stock"].clone()
    for _ in range(20):  # no effort, yet no regrowth
        state = scenario.step(state, torch.zeros(4, 3, 2, dtype=torch.float64), generator).state
    torch.testing.assert_close(state["stock"], stock_at_collapse)


def test_reward_modes_mix_selfish_and_social():
    kwargs = dict(n_agents=3, n_resources=2, **DETERMINISTIC)
    generator = envs.make_generator(4)
    actions = torch.rand(5, 3, 2, generator=generator, dtype=torch.float64)
    by_mode = {}
    for mode in ("selfish", "social", "mixed"):
        scenario = make(reward_mode=mode, social_weight=0.25, **kwargs)
        state = scenario.reset(5, envs.make_generator(4))
        by_mode[mode] = scenario.step(state, actions, envs.make_generator(0))
    loss = by_mode["social"].system_loss
    torch.testing.assert_close(by_mode["selfish"].rewards.sum(-1), -loss)  # payoffs add up to the welfare
    torch.testing.assert_close(by_mode["social"].rewards, (-loss / 3).unsqueeze(-1).expand(-1, 3))
    torch.testing.assert_close(by_mode["mixed"].rewards,
                               0.75 * by_mode["selfish"].rewards + 0.25 * by_mode["social"].rewards)
    assert not torch.allclose(by_mode["selfish"].rewards, by_mode["social"].rewards)


def test_shock_mask_marks_shared_state_only():
    scenario = make(n_resources=3)
    shared = [name for name, flag in zip(scenario.feature_names, scenario.shock_mask.tolist()) if flag]
    assert shared == [f"{kind}_{j}" for kind in ("stock", "price", "peer_effort") for j in range(3)]
    assert scenario.spike_features == ("price_0", "price_1", "price_2")


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="growth_rate must lie in \\(0.0, 1.0\\], got 1.5"):
        make(growth_rate=1.5)
    with pytest.raises(ValueError, match="n_resources must be a positive integer, got 0"):
        make(n_resources=0)
    with pytest.raises(ValueError, match="initial_stock must be a pair"):
        make(initial_stock=0.5)
    with pytest.raises(ValueError, match="unknown commons reference 'mmsy'"):
        scenario = make()
        scenario.reference_action(scenario.reset(1, envs.make_generator(0)), "mmsy")


@pytest.mark.parametrize("n_resources", [1, 3, 7])
def test_float64_growth_rates_are_exact(n_resources):
    # r_m evenly spaced in growth_rate * [0.75, 1.25], built in float64 (they were built in float32 and cast)
    scenario = make(n_resources=n_resources, growth_rate=0.3)
    spread = [0.75 + 0.5 * m / (n_resources - 1) for m in range(n_resources)] if n_resources > 1 else [1.0]
    expected = torch.tensor([0.3 * value for value in spread], dtype=torch.float64)
    torch.testing.assert_close(scenario.growth_rates, expected, rtol=2e-16, atol=0)
    assert scenario.growth_rates.dtype == torch.float64
    single = envs.make_scenario("commons", n_resources=n_resources, growth_rate=0.3)
    assert single.growth_rates.dtype == torch.float32
    torch.testing.assert_close(single.growth_rates, expected.float(), rtol=0, atol=0)
