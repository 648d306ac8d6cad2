"""Compute: dynamics by hand, fluid-optimal vs brute force, congestion collapse, gradients, payoffs."""

import pytest
import torch

from envs.compute import Compute, actions_for_fractions, split_work
from envs.core import Scenario, make_generator, make_scenario

DETERMINISTIC = {"arrival_noise": 0.0, "capacity_noise": 0.0, "capacity_drop_prob": 0.0, "spike_prob": 0.0}
F64 = torch.float64


def make(**kwargs):
    return make_scenario("compute", dtype=F64, **kwargs)


def tensor(values):
    return torch.tensor(values, dtype=F64)


def test_two_steps_by_hand():
    # one server, c = 1, K = 4, theta = 1/2, max_waste = 1/2, no smoothing: C = 1, lambda = 1.5 / 2
    scenario = make(n_agents=2, n_servers=1, load_factor=1.5, smoothing=0.0, reward_mode="selfish", **DETERMINISTIC)
    state = scenario.reset(1, make_generator(0))
    state.update(queue=tensor([[[1.0], [0.5]]]), arrivals=tensor([[2.0, 1.0]]), retries=tensor([[0.5, 0.0]]),
                 capacity=tensor([[1.0]]))
    obs = scenario.observe(state)[0]
    # queue 1.5/4, capacity 1, peer load, own work / 0.75, own queue / 4, time
    torch.testing.assert_close(obs, tensor([[0.375, 1.0, 1.0, 2.5 / 0.75, 0.25, 0.0],
                                            [0.375, 1.0, 2.5, 1.0 / 0.75, 0.125, 0.0]]))

    # step 1: x = (2, 1), rejected (0.5, 0); L = 4.5, P = 1, R = 3.5, phi = 0.5 * (3.5/4 - 0.5) / 0.5
    result = scenario.step(state, tensor([[[0.8], [1.0]]]), make_generator(1))
    waste_fraction = 0.375
    server_cost = -(1 - waste_fraction) + 0.1 * 3.5  # -g G + delta Q'
    payoffs = -tensor([2 / 3 * server_cost + 0.25 * 0.5, 1 / 3 * server_cost])
    torch.testing.assert_close(result.rewards[0], payoffs)
    torch.testing.assert_close(result.system_loss, tensor([-0.15]))
    expected_info = {"throughput": 1.0, "goodput": 0.625, "drops": 0.0, "rejected": 0.5, "mean_queue": 0.875}
    assert {key: float(value[0]) for key, value in result.info.items()} == pytest.approx(expected_info)
    state = result.state
    torch.testing.assert_close(state["queue"], tensor([[[3.5 * 2 / 3], [3.5 / 3]]]))
    torch.testing.assert_close(state["retries"], tensor([[0.375 * 2 / 3, 0.375 / 3]]))
    torch.testing.assert_close(state["arrivals"], tensor([[0.75, 0.75]]))

    # step 2, everything submitted: L = 3.5 + 1.875 = 5.375, R = 4.375 > K: D = 0.375, phi = 0.5
    result = scenario.step(state, torch.ones(1, 2, 1, dtype=F64), make_generator(2))
    torch.testing.assert_close(result.system_loss, tensor([-0.5 + 0.1 * 4 + 0.375]))
    expected_info = {"throughput": 1.0, "goodput": 0.5, "drops": 0.375, "rejected": 0.0, "mean_queue": 1.0}
    assert {key: float(value[0]) for key, value in result.info.items()} == pytest.approx(expected_info)
    load = tensor([3.5 * 2 / 3 + 1.0, 3.5 / 3 + 0.875])
    torch.testing.assert_close(result.state["queue"][0, :, 0], 4 * load / 5.375)
    torch.testing.assert_close(result.state["retries"][0], 0.5 * load / 5.375)


def test_action_mapping_and_its_inverse():
    work = tensor([[2.0, 4.0]])
    submitted, rejected = split_work(work, tensor([[[0.25, 0.5], [1.0, 1.0]]]), smoothing=0.0)
    torch.testing.assert_close(submitted, tensor([[[0.5, 1.0], [2.0, 2.0]]]))
    torch.testing.assert_close(rejected, tensor([[0.5, 0.0]]))
    fractions = tensor([[0.3, 0.2], [0.6, 0.38], [0.5, 0.5], [0.0, 0.0]])  # sums 0.5, 0.98 (in the band), 1, 0
    for smoothing in (0.0, 0.05, 0.5):
        actions = actions_for_fractions(fractions, smoothing)
        submitted, _ = split_work(torch.ones(4, 1, dtype=F64), actions.unsqueeze(1), smoothing)
        torch.testing.assert_close(submitted[:, 0], fractions, rtol=0, atol=1e-12)


def random_states(scenario, batch_size, seed):
    """States with queues, capacities and pending work spread from empty to overloaded."""
    generator = torch.Generator().manual_seed(seed)
    n, s = scenario.n_agents, scenario.n_servers
    state = scenario.reset(batch_size, make_generator(seed))
    occupancy = torch.rand(batch_size, 1, s, generator=generator, dtype=F64)
    split = torch.rand(batch_size, n, s, generator=generator, dtype=F64)
    state["queue"] = occupancy * scenario.buffer * split / split.sum(1, keepdim=True)
    state["capacity"] = scenario.nominal_capacity * 1.5 * torch.rand(batch_size, s, generator=generator, dtype=F64)
    state["arrivals"] = 1.5 * s * torch.rand(batch_size, n, generator=generator, dtype=F64)
    return state


@pytest.mark.parametrize("n_servers, points, smoothing, reject_cost", [
    (2, 201, 0.0, 0.3), (3, 41, 0.0, 0.3), (2, 201, 0.0, 0.05), (2, 201, 0.05, 0.3), (3, 41, 0.05, 0.3)])
def test_fluid_optimal_matches_brute_force(n_servers, points, smoothing, reject_cost):
    # reject_cost 0.3: thrashing is worth it on servers below 0.8 of nominal capacity; 0.05: no queueing
    scenario = make(n_agents=2, n_servers=n_servers, smoothing=smoothing, reject_cost=reject_cost)
    batch_size = 24
    state = random_states(scenario, batch_size, seed=n_servers)
    reference_loss = scenario.system_loss(state, scenario.reference_action(state, "fluid_optimal"))
    # the loss depends on the total submission only: both agents playing the same grid point reach them all
    axis = torch.linspace(0.0, 1.0, points, dtype=F64)
    grid = torch.cartesian_prod(*[axis] * n_servers).unsqueeze(1).expand(-1, 2, -1)
    brute_force = torch.stack([
        scenario.system_loss({key: value[b:b + 1].expand(len(grid), *value.shape[1:]) for key, value in state.items()},
                             grid).min()
        for b in range(batch_size)])
    gap = reference_loss - brute_force
    assert gap.max() <= (1e-12 if smoothing == 0.0 else smoothing)  # O(smoothing): see actions_for_fractions
    if smoothing == 0.0:  # the exact optimum is often off the grid, hence strictly better, but not by much
        assert (gap < -1e-6).any() and gap.min() >= -0.05


def rollout_loss(scenario, policy, batch_size=128, seed=0):
    generator = make_generator(seed)
    state = scenario.reset(batch_size, generator)
    total = torch.zeros(batch_size, dtype=F64)
    for _ in range(scenario.horizon):
        result = scenario.step(state, policy(state, generator), generator)
        total += result.system_loss
        state = result.state
    return float(total.mean()) / scenario.horizon


def test_fluid_optimal_rollout_beats_heuristics():
    scenario = make(horizon=60)
    shape = (128, scenario.n_agents, scenario.n_servers)
    losses = {
        "fluid_optimal": rollout_loss(scenario, lambda s, g: scenario.reference_action(s, "fluid_optimal")),
        "proportional": rollout_loss(scenario, lambda s, g: scenario.reference_action(s, "proportional")),
        "uniform": rollout_loss(scenario, lambda s, g: torch.ones(shape, dtype=F64)),
        "random": rollout_loss(scenario, lambda s, g: torch.rand(shape, generator=g, dtype=F64)),
    }
    assert losses["fluid_optimal"] < -0.75  # about the goodput of the offered load
    for name in ("proportional", "uniform", "random"):
        assert losses["fluid_optimal"] < losses[name] - 0.2, losses


def test_references_at_nominal_load():
    refs = make().references()
    assert refs["total_capacity"] == 4.0 and refs["total_arrival_rate"] == pytest.approx(3.2)
    assert refs["fluid_optimal_loss"] == pytest.approx(-0.8)  # -g * load_factor: all work served at once
    assert refs["fluid_optimal_goodput"] == pytest.approx(0.8)
    assert refs["collapse_goodput"] == 0.5
    # overloaded: capacity served, then queues up to theta K (delta 0.1 < r 0.25), the rest rejected
    refs = make(n_servers=2, n_agents=2, load_factor=4.0, smoothing=0.0, capacity_spread=0.0).references()
    excess = 8.0 - 2.0
    queued = 0.5 * 4.0 * 2  # theta * K per server
    expected = (-2.0 + 0.1 * queued + 0.25 * (excess - queued)) / 2.0
    assert refs["fluid_optimal_loss"] == pytest.approx(expected)


def test_congestion_collapse_under_a_sustained_spike():
    scenario = make(n_agents=4, n_servers=2, capacity_spread=0.0, spike_duration=1e12, **DETERMINISTIC)
    generator = make_generator(0)

    def run(state, name, steps):
        goodput = []
        for _ in range(steps):
            result = scenario.step(state, scenario.reference_action(state, name), generator)
            state = result.state
            goodput.append(float(result.info["goodput"][0]))
        return state, goodput

    state, before = run(scenario.reset(2, generator), "proportional", 5)
    assert before[-1] == pytest.approx(0.8)  # offered load, all served
    state["spiking"][:] = True  # arrivals x3 from the next step on, for good
    spiking, during = run(state, "proportional", 12)
    assert during[-1] == pytest.approx(0.5) and during[-1] < before[-1]  # (1 - max_waste) of capacity
    _, optimal_during = run(state, "fluid_optimal", 12)
    assert min(optimal_during[2:]) > 0.95  # shedding the excess keeps the servers productive
    spiking["spiking"][:] = False  # the spike ends, but the retries keep the servers thrashing
    _, after = run(spiking, "proportional", 15)
    assert after[-1] == pytest.approx(0.5)
    _, recovered = run(spiking, "fluid_optimal", 15)
    assert recovered[-1] == pytest.approx(0.8)


def test_system_loss_gradient_matches_finite_differences():
    scenario = make(n_agents=3, n_servers=4)
    state = random_states(scenario, 16, seed=5)
    actions = torch.rand(16, 3, 4, generator=torch.Generator().manual_seed(6), dtype=F64)
    actions[:2] = 0.25  # kinks of the exact model: the action sums are exactly 1
    actions[2] = 1.0
    actions.requires_grad_(True)
    (gradient,) = torch.autograd.grad(scenario.system_loss(state, actions).sum(), actions)
    step = 1e-6
    finite_differences = torch.zeros_like(gradient)
    for i in range(3):
        for j in range(4):
            shift = torch.zeros_like(actions)
            shift[:, i, j] = step
            with torch.no_grad():
                difference = scenario.system_loss(state, actions + shift) - scenario.system_loss(state, actions - shift)
            finite_differences[:, i, j] = difference / (2 * step)
    assert gradient.abs().max() > 0.01
    torch.testing.assert_close(gradient, finite_differences, rtol=1e-5, atol=1e-7)


def test_payoffs_add_up_to_the_system_loss_and_reward_modes():
    kwargs = dict(n_agents=3, n_servers=2)
    state = random_states(make(**kwargs), 8, seed=7)
    actions = torch.rand(8, 3, 2, generator=torch.Generator().manual_seed(8), dtype=F64)
    by_mode = {mode: make(reward_mode=mode, social_weight=0.25, **kwargs).step(state, actions, make_generator(0))
               for mode in ("selfish", "social", "mixed")}
    loss = by_mode["social"].system_loss
    torch.testing.assert_close(by_mode["selfish"].rewards.sum(-1), -loss)
    torch.testing.assert_close(by_mode["social"].rewards, (-loss / 3).unsqueeze(-1).expand(-1, 3))
    torch.testing.assert_close(by_mode["mixed"].rewards,
                               0.75 * by_mode["selfish"].rewards + 0.25 * by_mode["social"].rewards)
    assert not torch.allclose(by_mode["selfish"].rewards, by_mode["social"].rewards)


def test_flooding_a_congested_server_pays_selfishly_and_hurts_the_others():
    scenario = make(n_agents=2, n_servers=1)
    state = scenario.reset(1, make_generator(0))
    state.update(queue=tensor([[[1.25], [1.25]]]), capacity=tensor([[1.0]]), arrivals=tensor([[1.0, 1.0]]))
    optimal = scenario.reference_action(state, "fluid_optimal")
    torch.testing.assert_close(optimal, torch.full((1, 2, 1), 0.25, dtype=F64))  # fill the queue up to theta K
    flooding = optimal.clone()
    flooding[0, 0] = 1.0
    payoff_gain = scenario.agent_payoffs(state, flooding) - scenario.agent_payoffs(state, optimal)
    assert payoff_gain[0, 0] > 0.1 and payoff_gain[0, 1] < -0.1
    assert scenario.system_loss(state, flooding) > scenario.system_loss(state, optimal) + 0.05


def test_large_batch_steps_stay_in_bounds():
    scenario = make_scenario("compute", **Compute.presets["small"])  # float32
    generator = make_generator(9)
    state = scenario.reset(1024, generator)
    for step in range(scenario.horizon):
        obs = scenario.observe(state)
        assert obs.shape == (1024, 2, scenario.obs_dim) and obs.dtype == torch.float32
        assert bool(((obs >= scenario.obs_low) & (obs <= scenario.obs_high)).all())
        result = scenario.step(state, 1.5 * torch.rand(1024, 2, 2, generator=generator), generator)
        state = result.state
        assert bool(torch.isfinite(result.rewards).all()) and bool(torch.isfinite(result.system_loss).all())
        assert bool((state["queue"] >= 0).all()) and bool((state["queue"].sum(1) <= scenario.buffer + 1e-5).all())
        assert bool(result.truncated.all()) == (step == scenario.horizon - 1)
    assert sorted(result.info) == ["drops", "goodput", "mean_queue", "rejected", "throughput"]


def test_features_shock_mask_and_presets():
    scenario = make(n_servers=3)
    shared = [name for name, flag in zip(scenario.feature_names, scenario.shock_mask.tolist()) if flag]
    assert shared == ["queue_0", "queue_1", "queue_2", "capacity_0", "capacity_1", "capacity_2", "peer_load"]
    assert scenario.obs_dim == len(scenario.feature_names) == 12
    assert set(scenario.spike_features) <= set(shared)
    large = make(**scenario.presets["large"])
    assert (large.n_agents, large.n_servers, large.obs_dim) == (16, 64, 195)
    torch.testing.assert_close(large.nominal_capacity.sum(), tensor(64.0))


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="n_servers must be a positive integer, got 0"):
        make(n_servers=0)
    with pytest.raises(ValueError, match=r"buffer_size must lie in \(0.0, inf\], got -1"):
        make(buffer_size=-1)
    with pytest.raises(ValueError, match=r"capacity_spread must lie in \[0.0, 1.0\), got 1.0"):
        make(capacity_spread=1.0)
    with pytest.raises(ValueError, match="reject_cost must not exceed drop_cost .0.5.*got 0.75"):
        make(drop_cost=0.5, reject_cost=0.75)
    with pytest.raises(ValueError, match="unknown argument.*'servers'"):
        make(servers=2)
    scenario = make()
    state = scenario.reset(2, make_generator(0))
    with pytest.raises(ValueError, match="unknown compute reference 'wardrop'"):
        scenario.reference_action(state, "wardrop")
    with pytest.raises(ValueError, match=r"actions must have shape \(2, 4, 4\)"):
        scenario.step(state, torch.ones(2, 4, 3), make_generator(0))
    with pytest.raises(ValueError, match="NaN or inf"):
        scenario.step(state, torch.full((2, 4, 4), float("nan")), make_generator(0))


@pytest.mark.parametrize("reward_mode", ["social", "selfish", "mixed"])
def test_fused_step_equals_the_separate_calls(reward_mode):
    # Compute.evaluate_step evaluates the service model once; Scenario.evaluate_step (the default) calls
    # system_loss, rewards, diagnostics and transition separately: the same operations, so bit-equal
    scenario = make(n_agents=3, n_servers=4, reward_mode=reward_mode, spike_prob=0.3, load_factor=1.5)
    generator = make_generator(0)
    state = scenario.reset(64, generator)
    for _ in range(6):  # random states with queues, spikes and full buffers
        actions = torch.rand(64, 3, 4, dtype=F64, generator=generator)
        draws = generator.get_state()
        fused = scenario.evaluate_step(state, actions, generator)
        separate_generator = make_generator(0)
        separate_generator.set_state(draws)
        separate = Scenario.evaluate_step(scenario, state, actions, separate_generator)
        assert torch.equal(generator.get_state(), separate_generator.get_state())  # the same draws
        for name, got, expected in zip(("system_loss", "rewards"), fused[:2], separate[:2]):
            assert torch.equal(got, expected), name
        for part, got, expected in (("info", fused[2], separate[2]), ("next state", fused[3], separate[3])):
            assert got.keys() == expected.keys(), part
            for key in got:
                assert torch.equal(got[key], expected[key]), (part, key)
        state = fused[3]
    assert state["queue"].sum() > 0 and state["spiking"].any()


def test_observe_clips_each_feature_to_its_range():
    # observe clips its parts separately (cheaper): the result is the whole observation clipped to the box
    scenario = make(n_agents=2, n_servers=3, horizon=2)
    generator = make_generator(0)
    state = scenario.reset(5, generator)

    def uniform(scale, *shape):
        return scale * torch.rand(*shape, dtype=F64, generator=generator)
    state.update(queue=uniform(20.0, 5, 2, 3) - 1.0, arrivals=uniform(200.0, 5, 2), capacity=uniform(10.0, 5, 3),
                 t=torch.arange(5))
    work = state["arrivals"] + state["retries"]
    raw = torch.cat([
        (state["queue"].sum(1) / scenario.buffer).unsqueeze(1).expand(-1, 2, -1),
        (state["capacity"] / scenario.nominal_capacity).unsqueeze(1).expand(-1, 2, -1),
        ((work.sum(-1, keepdim=True) - work) / scenario.total_capacity).unsqueeze(-1),
        (work / scenario.arrival_rate).unsqueeze(-1),
        state["queue"] / scenario.buffer,
        (state["t"] / 2.0).view(-1, 1, 1).expand(-1, 2, 1),
    ], dim=-1)
    expected = torch.minimum(torch.maximum(raw, scenario.obs_low), scenario.obs_high)
    assert torch.equal(scenario.observe(state), expected)
    assert (raw != expected).any(dim=(0, 1)).all()  # every feature is clipped somewhere
