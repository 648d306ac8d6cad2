"""Routing: Pigou and Braess textbook figures, Frank-Wolfe against brute force, payoffs, gradients, errors."""

import dataclasses
import re

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import envs.routing  # noqa: F401  (registers the scenario)
from envs.core import Scenario, make_generator, make_scenario
from envs.routing import (
    actions_for_split,
    beckmann_potential,
    build_network,
    equilibrium_flows,
    frank_wolfe,
    parallel_links_equilibrium,
    price_of_anarchy,
    relative_gap,
    route,
    simplex_split,
    total_travel_time,
)

F64 = torch.float64
QUIET = {"noise": 0.0, "spike_prob": 0.0, "capacity_drop_prob": 0.0}


def make(**kwargs):
    return make_scenario("routing", dtype=F64, **kwargs)


def tensor(values):
    return torch.tensor(values, dtype=F64)


def reference_loss(scenario, name, batch_size=1):
    """System loss of the reference ``name`` at nominal demand and capacities."""
    state = scenario.reset(batch_size, make_generator(0))
    return scenario.system_loss(state, scenario.reference_action(state, name))


def random_states(scenario, batch_size, seed):
    """States with spiked demands and dropped capacities in about half the entries."""
    config = dataclasses.replace(scenario.config, noise=0.5, spike_prob=0.5, capacity_drop_prob=0.5)
    return type(scenario)(config, dtype=F64).reset(batch_size, make_generator(seed))


def test_pigou_equilibrium_optimum_and_price_of_anarchy():
    scenario = make(layout="pigou", n_agents=2, **QUIET)
    refs = scenario.references()
    assert refs["ue_total_time"] == pytest.approx(1.0, abs=1e-6)
    assert refs["so_total_time"] == pytest.approx(0.75, abs=1e-6)
    assert refs["price_of_anarchy"] == pytest.approx(4 / 3, abs=1e-6)
    assert (refs["closed_form_ue_total_time"], refs["closed_form_so_total_time"]) == (1.0, 0.75)
    assert float(reference_loss(scenario, "user_equilibrium")) == pytest.approx(1.0, abs=1e-3)
    assert float(reference_loss(scenario, "system_optimum")) == pytest.approx(0.75, abs=1e-3)
    # UE: everything on the x link; SO: half and half
    network, demand, ones = build_network("pigou"), tensor([1.0, 1.0]), torch.ones(2, 2, dtype=F64)
    torch.testing.assert_close(frank_wolfe(network, demand, ones, "user_equilibrium"), tensor([[0.0, 1.0]] * 2))
    torch.testing.assert_close(frank_wolfe(network, demand, ones, "system_optimum"), tensor([[0.5, 0.5]] * 2),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(price_of_anarchy(network, demand, ones), tensor([4 / 3, 4 / 3]), atol=1e-6, rtol=0)


def test_braess_paradox():
    minutes_per_driver = {}  # total travel time in thousand driver-hours -> minutes per driver (4000 drivers)
    for layout in ("braess", "braess_no_link"):
        scenario = make(layout=layout, n_agents=4, **QUIET)
        assert scenario.nominal_total_demand == 4.0
        refs = scenario.references()
        for name, short in (("user_equilibrium", "ue"), ("system_optimum", "so")):
            minutes_per_driver[layout, short] = float(reference_loss(scenario, name)) / 4 * 60
            assert refs[f"{short}_total_time"] == pytest.approx(refs[f"closed_form_{short}_total_time"], abs=1e-6)
    assert minutes_per_driver["braess", "ue"] == pytest.approx(80.0, abs=1e-3)  # all on S-A-B-E
    assert minutes_per_driver["braess_no_link", "ue"] == pytest.approx(65.0, abs=1e-3)
    assert minutes_per_driver["braess_no_link", "so"] == pytest.approx(65.0, abs=1e-3)
    # the optimum uses the free link a little: 500 drivers on S-A-B-E, 2250 on S-A and on B-E
    assert minutes_per_driver["braess", "so"] == pytest.approx((2 * 2250 ** 2 / 100 + 45 * 3500) / 4000, abs=1e-3)
    assert minutes_per_driver["braess", "so"] < 65.0 < minutes_per_driver["braess", "ue"]


def test_braess_system_optimum_path_flows():
    network = build_network("braess")
    flows = frank_wolfe(network, tensor([4.0]), torch.ones(1, 5, dtype=F64), "system_optimum", tol=1e-12)
    torch.testing.assert_close(flows, tensor([[1.75, 1.75, 0.5]]), atol=1e-9, rtol=0)


@pytest.mark.parametrize("layout, latency", [("parallel", "bpr"), ("parallel", "affine"), ("braess", None)])
def test_frank_wolfe_matches_a_grid_search_on_three_paths(layout, latency):
    network = build_network(layout, 3, latency, total_demand=2.0)
    n_edges = network.incidence.shape[1]
    demand = tensor([2.7, 1.3])
    capacity_factor = tensor([[1.0] * n_edges, [0.5] + [1.0] * (n_edges - 1)])
    axis = torch.linspace(0.0, 1.0, 301, dtype=F64)
    first, second = torch.meshgrid(axis, axis, indexing="ij")
    inside = first + second <= 1.0
    shares = torch.stack([first[inside], second[inside], 1.0 - first[inside] - second[inside]], -1)
    for b in range(2):
        grid_flows = demand[b] * shares @ network.incidence
        factor = capacity_factor[b].expand(len(shares), -1)
        path_flow = frank_wolfe(network, demand, capacity_factor, "user_equilibrium", tol=1e-10)
        potential = beckmann_potential(network, path_flow @ network.incidence, capacity_factor)[b]
        grid_potential = beckmann_potential(network, grid_flows, factor).min()
        assert grid_potential - 1e-3 <= potential <= grid_potential + 1e-12
        # Wardrop: every used path has the least latency
        edge_latency = network.free_time + network.slope * (
            path_flow[b] @ network.incidence / (network.capacity * capacity_factor[b])) ** network.power
        path_latency = network.incidence @ edge_latency
        used = path_flow[b] > 1e-9
        assert float(path_latency[used].max() - path_latency.min()) < 1e-6
        path_flow = frank_wolfe(network, demand, capacity_factor, "system_optimum", tol=1e-10)
        cost = total_travel_time(network, path_flow @ network.incidence, capacity_factor)[b]
        grid_cost = total_travel_time(network, grid_flows, factor).min()
        assert grid_cost - 1e-3 <= cost <= grid_cost + 1e-12


@pytest.mark.parametrize("kwargs", [{"n_paths": 5}, {"layout": "braess"}])  # exact solver, Frank-Wolfe
def test_batched_frank_wolfe_equals_one_state_at_a_time(kwargs):
    scenario = make(n_agents=3, **kwargs)
    state = random_states(scenario, 6, seed=1)
    for name in scenario.reference_names:
        batched = scenario.reference_action(state, name)
        assert batched.shape == (6, 3, scenario.n_paths)
        for b in range(6):
            single = {key: value[b:b + 1] for key, value in state.items()}
            torch.testing.assert_close(scenario.reference_action(single, name), batched[b:b + 1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_large_preset_references_reach_the_stated_gap(dtype):
    # 100 fixed Frank-Wolfe iterations left the user equilibrium of 64 links at a 2.1% gap
    scenario = make_scenario("routing", dtype=dtype, **make().presets["large"])
    state = scenario.reset(8, make_generator(0))
    total_demand = state["demand"].to(F64).sum(-1, keepdim=True)
    for name in scenario.reference_names:
        split = simplex_split(scenario.reference_action(state, name)[:, 0].to(F64))
        gap = relative_gap(scenario.reference_network, total_demand * split, state["capacity_factor"].to(F64), name)
        assert float(gap.max()) <= 1e-6  # (the split's floor of 1e-6 / P on unused links included)
    refs = scenario.references()
    assert refs["so_total_time"] < refs["ue_total_time"]


@settings(max_examples=15, deadline=None)
@example(links=6, latency="bpr", demand=0.3515625, drops=[True, False, False, False, False, False],
         objective="user_equilibrium")  # a link just above its threshold: the gap bound's worst case seen
@given(links=st.integers(2, 6), latency=st.sampled_from(["bpr", "affine"]), demand=st.floats(0.2, 5.0),
       drops=st.lists(st.booleans(), min_size=6, max_size=6), objective=st.sampled_from(["user_equilibrium",
                                                                                       "system_optimum"]))
def test_exact_parallel_solver_agrees_with_frank_wolfe(links, latency, demand, drops, objective):
    network = build_network("parallel", links, latency, total_demand=2.0)
    capacity_factor = torch.where(torch.tensor(drops[:links]), 0.5, 1.0).to(F64).unsqueeze(0)
    total = tensor([demand])
    exact = parallel_links_equilibrium(network, total, capacity_factor, objective)
    iterated = frank_wolfe(network, total, capacity_factor, objective, tol=1e-9)
    # exact to float64 resolution: a link just above its threshold (flow ~ (lambda - a)^(1/p), p = 4) turns
    # the last bit of lambda into a relative gap of up to ~1e-11 (links=6, bpr, demand 0.35, link 0 halved)
    assert float(relative_gap(network, exact, capacity_factor, objective)) <= 1e-10
    assert float(relative_gap(network, iterated, capacity_factor, objective)) <= 1e-9
    torch.testing.assert_close(exact.sum(-1), total, rtol=1e-12, atol=0)
    torch.testing.assert_close(exact, iterated, rtol=0, atol=1e-3 * demand)
    value = beckmann_potential if objective == "user_equilibrium" else total_travel_time
    exact_value, iterated_value = (value(network, flows, capacity_factor) for flows in (exact, iterated))
    assert float(exact_value) <= float(iterated_value) + 1e-12 <= float(exact_value) * (1 + 1e-8) + 1e-12
    torch.testing.assert_close(equilibrium_flows(network, total, capacity_factor, objective), exact, rtol=0, atol=0)


def test_frank_wolfe_stops_at_the_tolerance_and_warns_at_the_iteration_limit():
    network = build_network("braess")
    ones = torch.ones(1, 5, dtype=F64)
    loose = frank_wolfe(network, tensor([4.0]), ones, "system_optimum", tol=1e-2)
    assert 1e-12 < float(relative_gap(network, loose, ones, "system_optimum")) <= 1e-2  # stopped early
    large = build_network("parallel", 64, "bpr", total_demand=16.0)
    with pytest.warns(RuntimeWarning, match=r"frank_wolfe \(user_equilibrium\): relative gap .* > tol 1e-06 after "
                                            r"5 iterations in 1 of 1 states"):
        frank_wolfe(large, tensor([16.0]), torch.ones(1, 64, dtype=F64), tol=1e-6, max_iterations=5)
    with pytest.raises(ValueError, match="parallel_links_equilibrium needs parallel links"):
        parallel_links_equilibrium(network, tensor([4.0]), ones)


def test_system_optimum_beats_equilibrium_beats_random_play():
    scenario = make(horizon=10)
    generator = make_generator(2)
    state = scenario.reset(64, generator)
    random_actions = torch.rand(64, 4, 4, generator=generator, dtype=F64)
    losses = {name: scenario.system_loss(state, scenario.reference_action(state, name))
              for name in scenario.reference_names}
    random_loss = scenario.system_loss(state, random_actions)
    assert (losses["system_optimum"] <= losses["user_equilibrium"] + 1e-9).all()
    assert (losses["system_optimum"] < random_loss).all()
    assert losses["user_equilibrium"].mean() < random_loss.mean()
    # the price of anarchy of the default network is about 1.10 (heterogeneous BPR links)
    assert make().references()["price_of_anarchy"] == pytest.approx(1.0966, abs=1e-3)


def test_payoffs_by_hand_and_their_sum():
    # Pigou, two agents with demands 0.25 and 0.5: agent 0 all on the x link, agent 1 split 1/4 : 3/4
    scenario = make(layout="pigou", n_agents=2, reward_mode="selfish", **QUIET)
    state = scenario.reset(1, make_generator(0))
    state["demand"] = tensor([[0.25, 0.5]])
    split = tensor([[[0.0, 1.0], [0.25, 0.75]]])
    actions = actions_for_split(split)
    torch.testing.assert_close(simplex_split(actions), split, atol=1e-6, rtol=0)
    x_link = 0.25 + 0.375  # latency of the x link = its flow
    expected = tensor([[-0.25 * x_link, -0.5 * (0.25 * 1.0 + 0.75 * x_link)]])
    torch.testing.assert_close(scenario.agent_payoffs(state, actions), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(scenario.system_loss(state, actions), tensor([0.125 + x_link ** 2]), atol=1e-6, rtol=0)

    scenario = make(n_agents=3, n_paths=4, layout="parallel")
    state = random_states(scenario, 8, seed=3)
    actions = torch.rand(8, 3, 4, generator=torch.Generator().manual_seed(4), dtype=F64)
    torch.testing.assert_close(scenario.agent_payoffs(state, actions).sum(-1), -scenario.system_loss(state, actions))


def test_simplex_mapping():
    torch.testing.assert_close(simplex_split(torch.zeros(3, dtype=F64)), torch.full((3,), 1 / 3, dtype=F64))
    torch.testing.assert_close(simplex_split(tensor([1.0, 0.0])), tensor([1.0 + 1e-6, 1e-6]) / (1 + 2e-6))
    split = torch.distributions.Dirichlet(torch.ones(5, dtype=F64)).sample((100,))
    actions = actions_for_split(split)
    assert actions.min() >= 0.0 and actions.max() <= 1.0
    torch.testing.assert_close(simplex_split(actions), split, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kwargs", [{"layout": "braess"}, {"n_paths": 3, "latency": "affine"}, {"n_paths": 4}])
def test_system_loss_and_payoff_gradients_match_finite_differences(kwargs):
    scenario = make(n_agents=3, **kwargs)
    state = random_states(scenario, 4, seed=5)
    actions = torch.rand(4, 3, scenario.action_dim, generator=torch.Generator().manual_seed(6), dtype=F64)
    actions.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: scenario.system_loss(state, a), (actions,))
    assert torch.autograd.gradcheck(lambda a: scenario.agent_payoffs(state, a), (actions,))


def test_exogenous_shocks_and_transition():
    scenario = make(n_agents=8, n_paths=8, noise=0.0, spike_prob=0.5, capacity_drop_prob=0.5)
    generator = make_generator(7)
    state = scenario.reset(64, generator)
    assert set(state["demand"].unique().tolist()) == {1.0, 2.0}  # nominal 1 per agent, spikes x2
    assert set(state["capacity_factor"].unique().tolist()) == {0.5, 1.0}
    # a drop halves the capacity: the congestion term of the BPR latency x 2^4, of the affine one x 2
    for latency, multiplier in (("bpr", 16.0), ("affine", 2.0)):
        scenario = make(n_agents=8, n_paths=8, latency=latency)
        actions = torch.rand(64, 8, 8, generator=generator, dtype=F64)
        network = scenario.network
        edge_flow = route(network, state["demand"], simplex_split(actions), state["capacity_factor"]).edge_flow
        free_flow_time = (network.free_time * edge_flow).sum(-1)
        congestion = {factor: scenario.system_loss({**state, "capacity_factor": torch.full((64, 8), factor, dtype=F64)},
                                                   actions) - free_flow_time for factor in (1.0, 0.5)}
        torch.testing.assert_close(congestion[0.5], multiplier * congestion[1.0])

    # the transition records the split, the population shares and the path latencies of the step
    scenario = make(layout="pigou", n_agents=2, **QUIET)
    state = scenario.reset(1, make_generator(0))
    actions = actions_for_split(tensor([[[0.0, 1.0], [0.5, 0.5]]]))
    result = scenario.step(state, actions, make_generator(1))
    torch.testing.assert_close(result.state["last_share"], tensor([[0.25, 0.75]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(result.state["last_latency"], tensor([[1.0, 0.75]]), atol=1e-6, rtol=0)
    assert result.state["t"].tolist() == [1]
    obs = scenario.observe(result.state)[0, 1]
    features = dict(zip(scenario.feature_names, obs.tolist()))
    assert features == pytest.approx({"total_demand": 1.0, "latency_0": 1.0, "latency_1": 0.75,
                                      "capacity_0": 1.0, "capacity_1": 1.0, "share_0": 0.25, "share_1": 0.75,
                                      "own_demand": 1.0, "own_share_0": 0.5, "own_share_1": 0.5, "time": 1 / 100},
                                     abs=1e-6)


def test_features_masks_and_presets():
    scenario = make(layout="braess")
    assert scenario.obs_dim == len(scenario.feature_names) == 3 * 3 + 5 + 3
    shocked = {name for name, flag in zip(scenario.feature_names, scenario.shock_mask.tolist()) if flag}
    private = {"own_demand", "own_share_0", "own_share_1", "own_share_2", "time"}
    assert shocked == set(scenario.feature_names) - private
    assert set(scenario.spike_features) <= shocked
    for name, kwargs in scenario.presets.items():
        size = make(**kwargs)
        assert size.n_paths == {"small": 2, "default": 4, "large": 64}[name]
    assert make(**scenario.presets["default"], layout="pigou").n_paths == 2


def test_large_batch_step_stays_in_the_observation_box():
    scenario = make_scenario("routing", spike_prob=0.3, capacity_drop_prob=0.3)  # float32
    generator = make_generator(8)
    state = scenario.reset(1024, generator)
    for _ in range(3):
        actions = torch.rand(1024, 4, 4, generator=generator)
        result = scenario.step(state, actions, generator)
        state = result.state
        obs = scenario.observe(state)
        assert obs.shape == (1024, 4, scenario.obs_dim) and obs.dtype == torch.float32
        assert ((obs >= scenario.obs_low) & (obs <= scenario.obs_high)).all()
        assert result.rewards.shape == (1024, 4) and torch.isfinite(result.system_loss).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"layout": "grid"}, "unknown layout 'grid'; allowed: 'parallel', 'pigou', 'braess', 'braess_no_link'"),
    ({"latency": "linear"}, "unknown latency 'linear'; allowed: 'bpr', 'affine'"),
    ({"layout": "pigou", "latency": "bpr"}, "layout 'pigou' has the textbook affine latencies; latency must be "
                                            "None or 'affine', got 'bpr'"),
    ({"layout": "braess", "n_paths": 4}, "layout 'braess' has 3 paths; n_paths must be None or 3, got 4"),
    ({"n_paths": 0}, "n_paths must be a positive integer, got 0"),
    ({"n_agents": 0}, "n_agents must be a positive integer, got 0"),
    ({"demand": -1.0}, "demand must lie in (0.0, inf], got -1.0"),
    ({"capacity_drop_factor": 0.0}, "capacity_drop_factor must lie in (0.0, 1.0], got 0.0"),
    ({"bpr_beta": 0.5}, "bpr_beta must lie in [1.0, inf], got 0.5"),
    ({"frank_wolfe_max_iters": 0}, "frank_wolfe_max_iters must be a positive integer, got 0"),
    ({"wardrop_gap_tol": 0.0}, "wardrop_gap_tol must lie in (0.0, 1.0], got 0.0"),
])
def test_bad_values_are_named(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make(**kwargs)


def test_bad_reference_and_objective_names():
    scenario = make(layout="pigou")
    state = scenario.reset(1, make_generator(0))
    with pytest.raises(ValueError, match="'nash'"):
        scenario.reference_action(state, "nash")
    with pytest.raises(ValueError, match="unknown objective 'ue'"):
        frank_wolfe(scenario.network, tensor([1.0]), torch.ones(1, 2, dtype=F64), "ue")


@pytest.mark.parametrize("reward_mode", ["social", "mixed"])
def test_fused_step_equals_the_separate_calls(reward_mode):
    # Routing.evaluate_step routes the split once; Scenario.evaluate_step (the default) calls system_loss,
    # rewards, diagnostics and transition separately: the same operations, so bit-equal
    scenario = make_scenario("routing", n_agents=3, n_paths=5, reward_mode=reward_mode, dtype=torch.float64)
    generator = make_generator(0)
    state = scenario.reset(32, generator)
    for _ in range(3):
        actions = torch.rand(32, 3, 5, dtype=torch.float64, generator=generator)
        draws = generator.get_state()
        fused = scenario.evaluate_step(state, actions, generator)
        separate_generator = make_generator(0)
        separate_generator.set_state(draws)
        separate = Scenario.evaluate_step(scenario, state, actions, separate_generator)
        assert torch.equal(fused[0], separate[0]) and torch.equal(fused[1], separate[1])
        for got, expected in zip(fused[2:], separate[2:]):
            assert got.keys() == expected.keys()
            assert all(torch.equal(got[key], expected[key]) for key in got)
        state = fused[3]
