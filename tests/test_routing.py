"""Routing: textbook Pigou and Braess figures, Frank-Wolfe against brute force, payoffs, errors."""

import itertools

import pytest
import torch

import envs
from envs.routing import build_network, frank_wolfe, price_of_anarchy, split, total_travel_time

QUIET = {"demand_noise": 0.0, "spike_prob": 0.0, "capacity_drop_prob": 0.0}


def make(**kwargs):
    return envs.make_scenario("routing", dtype=torch.float64, **kwargs)


def nominal_state(scenario, batch=1):
    state = scenario.reset(batch, envs.make_generator(0))
    assert torch.allclose(state["demand"].sum(-1), torch.tensor(scenario.demand, dtype=torch.float64))
    return state


def test_pigou_textbook_figures():
    scenario = make(layout="pigou", n_agents=2, **QUIET)
    refs = scenario.references()
    assert refs["ue_total_travel_time"] == pytest.approx(1.0, abs=1e-3)
    assert refs["so_total_travel_time"] == pytest.approx(0.75, abs=1e-3)
    assert refs["price_of_anarchy"] == pytest.approx(4 / 3, abs=1e-3)
    state = nominal_state(scenario)
    ue = scenario.system_loss(state, scenario.reference_action(state, "user_equilibrium"))
    so = scenario.system_loss(state, scenario.reference_action(state, "system_optimum"))
    assert float(ue) == pytest.approx(1.0, abs=1e-3) and float(so) == pytest.approx(0.75, abs=1e-3)
    # SO splits half and half; the UE sends everything down the variable link
    torch.testing.assert_close(scenario.reference_action(state, "system_optimum")[0, 0],
                               torch.tensor([0.5, 0.5], dtype=torch.float64), atol=1e-3, rtol=0)


def test_braess_paradox_adding_the_link_worsens_the_equilibrium():
    with_link = make(layout="braess", **QUIET).references()
    without = make(layout="braess_no_link", **QUIET).references()
    # 4000 drivers: 80 minutes each with the A-B link, 65 without
    assert with_link["ue_latency_per_unit_demand"] == pytest.approx(80.0, abs=1e-2)
    assert without["ue_latency_per_unit_demand"] == pytest.approx(65.0, abs=1e-2)
    assert without["so_total_travel_time"] == pytest.approx(260.0, abs=1e-2)
    # the optimum can only improve with a link: c = 0.5 thousand on S-A-B-E gives 258.75
    assert with_link["so_total_travel_time"] == pytest.approx(258.75, abs=1e-2)


def test_frank_wolfe_matches_a_grid_search_on_three_paths():
    net = build_network("parallel", 3, "bpr", 1.0)
    demand = torch.tensor([1.3], dtype=torch.float64)
    ones = torch.ones(1, 3, dtype=torch.float64)
    grid = torch.linspace(0, 1, 401, dtype=torch.float64)
    a, b = torch.meshgrid(grid, grid, indexing="ij")
    feasible = (a + b) <= 1
    shares = torch.stack([a[feasible], b[feasible], 1 - a[feasible] - b[feasible]], -1)
    costs = total_travel_time(net, shares * demand, torch.ones(shares.shape[0], 3, dtype=torch.float64))
    so = total_travel_time(net, frank_wolfe(net, demand, ones, "so"), ones)
    assert float(so) <= float(costs.min()) + 1e-9
    assert float(so) == pytest.approx(float(costs.min()), rel=1e-4)
    # at the UE, every used path has the same latency (Wardrop)
    ue = frank_wolfe(net, demand, ones, "ue")
    latency = net.free_flow * (1 + 0.15 * (ue[0] / net.capacity) ** 4)
    used = ue[0] > 1e-6
    assert float(latency[used].max() - latency[used].min()) < 1e-4


def test_batched_frank_wolfe_equals_one_state_at_a_time():
    scenario = make(n_agents=3, n_paths=5, capacity_drop_prob=0.3, spike_prob=0.3)
    state = scenario.reset(6, envs.make_generator(1))
    batched = scenario.reference_action(state, "system_optimum")
    for b in range(6):
        single = {key: value[b:b + 1] for key, value in state.items()}
        torch.testing.assert_close(scenario.reference_action(single, "system_optimum"), batched[b:b + 1])


def test_payoffs_add_up_to_minus_total_travel_time_and_split_mapping():
    scenario = make(n_agents=3, n_paths=4, reward_mode="selfish")
    generator = envs.make_generator(2)
    state = scenario.reset(5, generator)
    actions = torch.rand(5, 3, 4, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(scenario.agent_payoffs(state, actions).sum(-1), -scenario.system_loss(state, actions))
    torch.testing.assert_close(split(torch.zeros(4, dtype=torch.float64)), torch.full((4,), 0.25, dtype=torch.float64))
    torch.testing.assert_close(split(torch.tensor([1.0, 0.0], dtype=torch.float64)),
                               torch.tensor([1.0 + 1e-6, 1e-6], dtype=torch.float64) / (1 + 2e-6))


def test_system_optimum_beats_equilibrium_and_random_play_on_rollouts():
    scenario = make(n_agents=4, n_paths=4, horizon=20)
    results = {}
    for name in ("system_optimum", "user_equilibrium", "random"):
        generator = envs.make_generator(3)
        state = scenario.reset(32, generator)
        policy_generator = envs.make_generator(4)
        total = 0.0
        for _ in range(20):
            actions = (torch.rand(32, 4, 4, generator=policy_generator, dtype=torch.float64) if name == "random"
                       else scenario.reference_action(state, name))
            result = scenario.step(state, actions, generator)
            total += float(result.system_loss.mean())
            state = result.state
        results[name] = total
    assert results["system_optimum"] < results["user_equilibrium"] < results["random"]


def test_demand_spikes_and_capacity_drops_are_drawn():
    scenario = make(n_agents=8, n_paths=8, spike_prob=0.5, capacity_drop_prob=0.5, demand_noise=0.0)
    state = scenario.reset(64, envs.make_generator(5))
    per_agent = state["demand"] / (scenario.demand / 8)
    assert set(torch.unique(per_agent.round(decimals=6)).tolist()) == {1.0, 2.0}
    assert set(torch.unique(state["capacity_factor"]).tolist()) == {0.5, 1.0}
    # a capacity drop raises the latency of that link (BPR: capacity scaled by the factor)
    low_capacity = {**state, "capacity_factor": torch.full_like(state["capacity_factor"], 0.5)}
    actions = torch.rand(64, 8, 8, generator=envs.make_generator(6), dtype=torch.float64)
    assert (scenario.system_loss(low_capacity, actions) > scenario.system_loss(state, actions) - 1e-12).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"layout": "grid"}, "unknown layout 'grid'; allowed: 'parallel', 'pigou', 'braess', 'braess_no_link'"),
    ({"latency": "linear"}, "unknown latency 'linear'; allowed: 'bpr', 'affine'"),
    ({"layout": "pigou", "latency": "bpr"}, "layout 'pigou' is a textbook affine network"),
    ({"n_paths": 0}, "n_paths must be a positive integer, got 0"),
    ({"demand": -1.0}, "demand must lie in \\(0.0, inf\\], got -1.0"),
    ({"capacity_drop_factor": 0.0}, "capacity_drop_factor must lie in \\(0.0, 1.0\\], got 0.0"),
])
def test_bad_values_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(**kwargs)


def test_price_of_anarchy_function_on_pigou():
    net = build_network("pigou", 2, "affine", 1.0)
    poa = price_of_anarchy(net, torch.tensor([1.0, 1.0], dtype=torch.float64), torch.ones(2, 2, dtype=torch.float64))
    torch.testing.assert_close(poa, torch.full((2,), 4 / 3, dtype=torch.float64), atol=1e-3, rtol=0)
