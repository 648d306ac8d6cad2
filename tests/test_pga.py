"""PGA: ball and mask invariants (hypothesis), monotone ascent, grid optimum, gradient vs finite differences."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import envs
from envs.shocks import pga, project


def random_objective(seed: int, dim: int):
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    bias = torch.randn(dim, generator=generator, dtype=torch.float64)
    return lambda delta: torch.sin(delta @ weights + bias).sum(-1) + (delta * bias).sum(-1)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), eps=st.floats(0.01, 2.0), norm=st.sampled_from(["l2", "linf"]),
       steps=st.integers(1, 6), dim=st.integers(1, 6), random_start=st.booleans(),
       step_scale=st.floats(0.1, 10.0))
def test_iterates_stay_in_the_ball_and_in_the_mask(seed, eps, norm, steps, dim, random_start, step_scale):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(dim, generator=generator) < 0.6
    trajectory = pga(random_objective(seed, dim), (5, 3, dim), eps, norm, steps, step_size=step_scale * eps,
                     mask=mask, random_start=random_start, generator=generator, dtype=torch.float64)
    assert trajectory.deltas.shape == (steps + 1, 5, 3, dim)
    assert trajectory.directions.shape == (steps, 5, 3, dim)
    assert trajectory.values.shape == (steps + 1, 5, 3)
    size = trajectory.deltas.abs().amax(-1) if norm == "linf" else trajectory.deltas.norm(dim=-1)
    assert (size <= eps * (1 + 1e-9)).all()
    assert (trajectory.deltas[..., ~mask] == 0).all()
    assert (trajectory.directions[..., ~mask] == 0).all()
    assert (trajectory.directions.norm(dim=-1) <= 1 + 1e-9).all()


def test_shared_shock_is_one_delta_for_every_agent():
    scenario = envs.make_scenario("commons", n_agents=3, n_resources=2, dtype=torch.float64)
    state = scenario.reset(4, envs.make_generator(0))
    obs = scenario.observe(state)

    def policy(o):
        return torch.sigmoid(o[..., :2] - o[..., 2:4])

    def shared_objective(delta):  # delta (B, D), broadcast to all agents
        return scenario.system_loss(state, policy(obs + delta.unsqueeze(1)))

    trajectory = pga(shared_objective, (4, scenario.obs_dim), 0.1, "l2", 3, mask=scenario.shock_mask,
                     dtype=torch.float64)
    shocked = obs + trajectory.deltas[-1].unsqueeze(1)
    differences = shocked - obs
    assert torch.equal(differences[:, 0], differences[:, 1]) and torch.equal(differences[:, 0], differences[:, 2])
    assert (trajectory.values[-1] >= trajectory.values[0]).all()


def test_ascent_is_monotone_for_step_sizes_below_one_over_l():
    # g(delta) = sum_j sin(delta_j + b_j) + a . delta has an L = 1 Lipschitz gradient
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(8, generator=generator, dtype=torch.float64)
    b = torch.randn(64, 8, generator=generator, dtype=torch.float64)

    def objective(delta):
        return torch.sin(delta + b).sum(-1) + delta @ a

    for norm in ("l2",):
        trajectory = pga(objective, (64, 8), 1.5, norm, steps=25, step_size=1.0, dtype=torch.float64)
        increments = trajectory.values[1:] - trajectory.values[:-1]
        assert (increments >= -1e-12).all()


def test_final_value_within_one_percent_of_a_grid_maximum_in_two_dimensions():
    center = torch.tensor([1.0, -2.0], dtype=torch.float64)
    curvature = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)

    def objective(delta):
        diff = delta - center
        return 5.0 - torch.einsum("...i,ij,...j->...", diff, curvature, diff) + torch.sin(3 * delta[..., 0])

    eps = 0.8
    grid = torch.linspace(-eps, eps, 801, dtype=torch.float64)
    x, y = torch.meshgrid(grid, grid, indexing="ij")
    points = torch.stack([x, y], -1).reshape(-1, 2)
    points = points[points.norm(dim=-1) <= eps]
    best = float(objective(points).max())
    trajectory = pga(objective, (1, 2), eps, "l2", steps=200, step_size=0.1, dtype=torch.float64)
    assert float(trajectory.values[-1, 0]) >= best - 0.01 * abs(best)
    linf = pga(objective, (1, 2), eps, "linf", steps=200, step_size=0.01, dtype=torch.float64)
    box = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    best_box = float(objective(box).max())
    assert float(linf.values[-1, 0]) >= best_box - 0.01 * abs(best_box)


@pytest.mark.parametrize("name", sorted(envs.SCENARIOS))
def test_pga_direction_equals_finite_difference_gradient_of_the_system_loss(name):
    scenario = envs.make_scenario(name, dtype=torch.float64, **envs.SCENARIOS[name].presets["small"])
    state = scenario.reset(2, envs.make_generator(3))
    obs = scenario.observe(state)
    generator = torch.Generator().manual_seed(0)
    weights = 0.3 * torch.randn(scenario.obs_dim, scenario.action_dim, generator=generator, dtype=torch.float64)

    def objective(delta):
        actions = scenario.action_low + (scenario.action_high - scenario.action_low) * torch.sigmoid((obs + delta) @ weights)
        return scenario.system_loss(state, actions).unsqueeze(-1).expand(*delta.shape[:-1])

    shape = (2, 1, scenario.obs_dim)  # one shared perturbation per environment
    trajectory = pga(objective, shape, 0.1, "l2", steps=1, mask=scenario.shock_mask, dtype=torch.float64)
    h = 1e-6
    fd = torch.zeros(shape, dtype=torch.float64)
    for j in range(scenario.obs_dim):
        if scenario.shock_mask[j]:
            step = torch.zeros(shape, dtype=torch.float64)
            step[..., j] = h
            fd[..., j] = (objective(step) - objective(-step))[..., None].squeeze(-1) / (2 * h)
    expected = fd / (fd.norm(dim=-1, keepdim=True) + 1e-12)
    torch.testing.assert_close(trajectory.directions[0], expected, atol=1e-6, rtol=1e-5)


def test_zero_gradient_is_safe():
    trajectory = pga(lambda delta: torch.zeros(delta.shape[:-1]), (3, 4), 0.2, "l2", 4)
    assert torch.isfinite(trajectory.directions).all() and (trajectory.directions == 0).all()
    assert (trajectory.deltas == 0).all()


def test_projection_and_bad_arguments():
    delta = torch.tensor([[3.0, 4.0, 1.0]])
    mask = torch.tensor([True, True, False])
    torch.testing.assert_close(project(delta, 1.0, "l2", mask), torch.tensor([[0.6, 0.8, 0.0]]))
    torch.testing.assert_close(project(delta, 1.0, "linf"), torch.tensor([[1.0, 1.0, 1.0]]))
    with pytest.raises(ValueError, match="unknown norm 'l1'"):
        pga(lambda d: d.sum(-1), (2, 3), 0.1, "l1")
    with pytest.raises(ValueError, match="eps must lie in"):
        pga(lambda d: d.sum(-1), (2, 3), 0.0)
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        pga(lambda d: d.sum(-1), (2, 3), 0.1, steps=0)
    with pytest.raises(ValueError, match="one value per perturbation"):
        pga(lambda d: d.sum(), (2, 3), 0.1)
    assert math.isfinite(float(pga(lambda d: (d ** 2).sum(-1), (2, 3), 0.1).values[-1, 0]))


def linear_policy(scenario, seed=0):
    generator = torch.Generator().manual_seed(seed)
    weights = 0.5 * torch.randn(scenario.obs_dim, scenario.action_dim, generator=generator, dtype=torch.float64)
    low, high = scenario.action_low, scenario.action_high
    return lambda obs: low + (high - low) * torch.sigmoid(obs @ weights)


@pytest.mark.parametrize("name", sorted(envs.SCENARIOS))
def test_per_agent_system_objective_equals_a_loop_over_attacked_agents(name):
    from envs.shocks import system_objective
    scenario = envs.make_scenario(name, dtype=torch.float64, **envs.SCENARIOS[name].presets["small"])
    state = scenario.reset(3, envs.make_generator(1))
    obs = scenario.observe(state)
    policy = linear_policy(scenario)
    delta = 0.1 * torch.randn(obs.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    values = system_objective(scenario, state, obs, policy, "per_agent")(delta)
    for i in range(scenario.n_agents):
        actions = policy(obs).clone()
        actions[:, i] = policy(obs + delta)[:, i]
        torch.testing.assert_close(values[:, i], scenario.system_loss(state, actions))
    shared = system_objective(scenario, state, obs, policy, "shared")(delta[:, 0])
    torch.testing.assert_close(shared, scenario.system_loss(state, policy(obs + delta[:, :1])))


def test_action_and_value_objectives_and_spike_shock():
    from envs.shocks import action_objective, spike_shock, value_objective
    scenario = envs.make_scenario("commons", dtype=torch.float64, n_agents=2, n_resources=3)
    obs = scenario.observe(scenario.reset(4, envs.make_generator(0)))
    policy = linear_policy(scenario)
    g = action_objective(obs, policy, "per_agent")
    assert (g(torch.zeros_like(obs)) == 0).all()
    assert (pga(g, obs.shape, 0.2, "l2", 5, dtype=torch.float64).values == 0).all()  # a stationary point at 0
    trajectory = pga(g, obs.shape, 0.2, "l2", 5, random_start=True, generator=torch.Generator().manual_seed(0),
                     dtype=torch.float64)  # so the action attack starts at a random point, as in SA-PPO
    assert (trajectory.values[-1] > trajectory.values[0]).all()
    value_fn = lambda o: o.sum(-1)  # V = sum of features: -V falls fastest along -1
    trajectory = pga(value_objective(obs, value_fn, "shared"), (4, scenario.obs_dim), 0.3, "l2", 3,
                     mask=scenario.shock_mask, dtype=torch.float64)
    assert (trajectory.deltas[-1][:, scenario.shock_mask] < 0).all()
    spike = spike_shock(scenario, (4, scenario.obs_dim), 0.2, "l2")
    assert spike.norm(dim=-1).allclose(torch.full((4,), 0.2, dtype=torch.float64))
    moved = [scenario.feature_names[j] for j in range(scenario.obs_dim) if spike[0, j] != 0]
    assert moved == list(scenario.spike_features)


@pytest.mark.parametrize("kind", ["system", "action", "value"])
def test_pga_gradient_equals_finite_differences_for_each_objective(kind):
    from envs.shocks import action_objective, system_objective, value_objective
    scenario = envs.make_scenario("compute", dtype=torch.float64, **envs.SCENARIOS["compute"].presets["small"])
    state = scenario.reset(2, envs.make_generator(4))
    obs = scenario.observe(state)
    policy = linear_policy(scenario, seed=1)
    value_weights = torch.randn(scenario.obs_dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    objective = {
        "system": lambda: system_objective(scenario, state, obs, policy, "per_agent"),
        "action": lambda: action_objective(obs, policy, "per_agent"),
        "value": lambda: value_objective(obs, lambda o: torch.tanh(o @ value_weights), "per_agent"),
    }[kind]()
    trajectory = pga(objective, obs.shape, 0.3, "l2", 1, random_start=True,
                     generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    start = trajectory.deltas[0]
    h = 1e-6
    fd = torch.zeros_like(start)
    for j in range(scenario.obs_dim):
        step = torch.zeros_like(start)
        step[..., j] = h
        fd[..., j] = (objective(start + step) - objective(start - step)) / (2 * h)
    torch.testing.assert_close(trajectory.directions[0], fd / (fd.norm(dim=-1, keepdim=True) + 1e-12),
                               atol=1e-6, rtol=1e-5)
