"""Every penalty against brute force on tiny float64 policies: full Jacobians by ``jacrev`` and
finite differences, for the value and for the parameter gradient; spectral normalisation's bound."""

import pytest
import torch
from torch.func import jacrev, jvp

import envs
from agents.policy import MultiAgentActorCritic
from envs.shocks import pga, system_objective
from envs.batch import Batch
from regularizers import METHODS, PGASettings, make_regularizer, regularizer_names
from regularizers.jacobian import (aajr_penalty, aajr_trajectory, global_jacobian_penalty, random_unit_directions,
                                   sampled_steps)
from regularizers.jvp import jvp_norms, penalty_from_norms
from regularizers.smoothness import smoothness_penalty
from regularizers.specnorm import apply_spectral_norm, layer_spectral_norms
from regularizers.spectral import spectral_penalty, top_singular_directions


def tiny_setup(seed=0, hidden=(8,)):
    scenario = envs.make_scenario("routing", dtype=torch.float64, n_agents=2, n_paths=3, horizon=5)
    state = scenario.reset(3, envs.make_generator(seed))
    torch.manual_seed(seed)
    policy = MultiAgentActorCritic(2, scenario.obs_dim, scenario.action_low.float(), scenario.action_high.float(),
                                   hidden=hidden).double()
    for p in policy.actor.parameters():  # larger weights than the 0.01-gain init, so J is not tiny
        p.data.normal_(0, 0.7, generator=torch.Generator().manual_seed(seed))
    obs = scenario.observe(state)
    actions = scenario.check_actions(torch.full((3, 2, scenario.action_dim), 0.5, dtype=torch.float64))
    batch = Batch(obs=obs, actions=actions, state=state)
    return scenario, state, policy, batch


def agent_jacobian(policy, point, i):
    """Agent i's Jacobian ``(A, D)`` of its action with respect to its own observation, by jacrev."""
    return jacrev(lambda x: policy.deterministic_action(x.unsqueeze(0))[0, i])(point)[:, i]


def fd_directional(policy, points, directions, h=1e-5):
    """``||J_i(x) u||`` by central differences of the action map, ``(K, M, N)``."""
    flat_x, flat_u = points.flatten(0, 1), directions.flatten(0, 1)
    change = policy.deterministic_action(flat_x + h * flat_u) - policy.deterministic_action(flat_x - h * flat_u)
    return (change / (2 * h)).norm(dim=-1).reshape(points.shape[:3])


def fd_parameter_gradient(loss_fn, params, h=1e-6):
    """Central-difference gradient of ``loss_fn()`` with respect to each tensor of ``params``."""
    grads = []
    with torch.no_grad():
        for p in params:
            grad = torch.zeros_like(p)
            for index in range(p.numel()):
                flat = p.view(-1)
                original = flat[index].item()
                flat[index] = original + h
                plus = float(loss_fn())
                flat[index] = original - h
                minus = float(loss_fn())
                flat[index] = original
                grad.view(-1)[index] = (plus - minus) / (2 * h)
            grads.append(grad)
    return grads


def assert_grads_close(grads, references, rtol=1e-6, atol=1e-10):
    for g, r in zip(grads, references):
        g = torch.zeros_like(r) if g is None else g
        torch.testing.assert_close(g, r, rtol=rtol, atol=atol)


def brute_force_aajr(policy, scenario, state, obs, eps, steps):
    """Loop over steps, states and agents with explicit Jacobians (jacrev) of each agent's action."""
    objective = system_objective(scenario, state, obs, policy.deterministic_action, "per_agent")
    trajectory = pga(objective, tuple(obs.shape), eps, "l2", steps, mask=scenario.shock_mask, dtype=torch.float64)
    total, count = 0.0, 0
    for t in range(steps):
        for m in range(obs.shape[0]):
            for i in range(obs.shape[1]):
                jac = agent_jacobian(policy, obs[m] + trajectory.deltas[t, m], i)
                total = total + (jac @ trajectory.directions[t, m, i].detach()).pow(2).sum()
                count += 1
    return total / count


# ----- AAJR ---------------------------------------------------------------------------------------


def test_aajr_penalty_and_its_gradient_equal_a_jacrev_brute_force_computation():
    scenario, state, policy, batch = tiny_setup()
    penalty, diagnostics = aajr_penalty(policy, batch, scenario, eps=0.2, steps=3)
    reference = brute_force_aajr(policy, scenario, state, batch.obs, 0.2, 3)
    torch.testing.assert_close(penalty, reference, rtol=1e-6, atol=1e-12)
    assert diagnostics["reg/jvp_norm_max"] >= diagnostics["reg/jvp_norm_mean"] > 0
    assert diagnostics["reg/pga_gain"] > 0
    params = list(policy.actor.parameters())
    assert_grads_close(torch.autograd.grad(penalty, params, allow_unused=True),
                       torch.autograd.grad(reference, params))


@pytest.mark.parametrize("budget", [None, "mean"])
@pytest.mark.parametrize("name", ["aajr", "jacobian", "spectral"])
def test_jvp_penalties_and_gradients_equal_finite_differences(name, budget):
    """Value: ||J u|| by central differences of the action map; gradient: central differences of the
    penalty in every parameter with the points and directions held fixed (the stopgrad of eq. 20)."""
    scenario, state, policy, batch = tiny_setup(5)
    generator = torch.Generator().manual_seed(0)
    obs = batch.obs
    if name == "aajr":
        points, directions, _ = aajr_trajectory(policy, batch, scenario, eps=0.2, steps=3)
    elif name == "jacobian":
        directions = random_unit_directions((4, *obs.shape), generator, "cpu", torch.float64)
        points = obs.unsqueeze(0).expand_as(directions)
    else:
        from regularizers.spectral import top_singular_directions
        directions = top_singular_directions(policy.deterministic_action, obs, 50, generator).unsqueeze(0)
        points = obs.unsqueeze(0)
    norms = jvp_norms(policy.deterministic_action, points, directions)
    fd_norms = fd_directional(policy, points, directions)
    torch.testing.assert_close(norms, fd_norms, rtol=1e-6, atol=1e-12)
    gamma = None if budget is None else float(norms.detach().mean())  # some terms active, some not
    penalty = penalty_from_norms(norms, gamma)
    assert float(penalty.detach()) > 0
    params = list(policy.actor.parameters())
    grads = torch.autograd.grad(penalty, params, allow_unused=True)
    fd = fd_parameter_gradient(lambda: penalty_from_norms(jvp_norms(policy.deterministic_action, points, directions),
                                                          gamma), params)
    assert_grads_close(grads, fd, rtol=1e-5, atol=1e-8)


def test_aajr_gradient_does_not_flow_through_the_ascent_directions():
    """With K = 1 the direction is u_0 = grad g(0) / ||grad g(0)||, a function of theta. AAJR's gradient
    equals that of the penalty with u_0 explicitly detached, and differs from the one through u_0."""
    scenario, state, policy, batch = tiny_setup(6)
    obs = batch.obs
    penalty, _ = aajr_penalty(policy, batch, scenario, eps=0.2, steps=1)
    objective = system_objective(scenario, state, obs, policy.deterministic_action, "per_agent")
    delta = torch.zeros_like(obs, requires_grad=True)
    (grad,) = torch.autograd.grad(objective(delta).sum(), delta, create_graph=True)
    grad = grad * scenario.shock_mask
    u = grad / (grad.norm(dim=-1, keepdim=True) + 1e-12)

    def penalty_along(direction):
        return jvp(policy.deterministic_action, (obs,), (direction,))[1].norm(dim=-1).pow(2).mean()

    detached, through = penalty_along(u.detach()), penalty_along(u)
    torch.testing.assert_close(penalty, detached, rtol=1e-10, atol=0)
    params = list(policy.actor.parameters())
    ours = torch.autograd.grad(penalty, params, allow_unused=True)
    assert_grads_close(ours, torch.autograd.grad(detached, params, retain_graph=True, allow_unused=True))
    differs = torch.autograd.grad(through, params, allow_unused=True)
    assert max(float((a - b).abs().max()) for a, b in zip(ours, differs) if a is not None and b is not None) > 1e-6


def test_agent_i_penalty_gives_no_gradient_to_agent_j():
    scenario, state, policy, batch = tiny_setup(1)
    points, directions, _ = aajr_trajectory(policy, batch, scenario, eps=0.2, steps=2)
    norms = jvp_norms(policy.deterministic_action, points, directions)
    for i in range(2):
        grads = torch.autograd.grad(norms[..., i].pow(2).mean(), list(policy.actor.stacked), allow_unused=True,
                                    retain_graph=True)
        for g in grads:
            if g is not None:
                assert g[i].abs().sum() > 0 and torch.all(g[1 - i] == 0)


def test_zero_objective_gradient_gives_a_finite_penalty():
    scenario, state, policy, batch = tiny_setup(3)
    batch = Batch(batch.obs, batch.actions, {**batch.state, "demand": torch.zeros_like(batch.state["demand"])})  # no traffic
    penalty, _ = aajr_penalty(policy, batch, scenario, eps=0.1, steps=2)
    assert torch.isfinite(penalty) and float(penalty.detach()) == 0.0
    params = list(policy.actor.parameters())
    assert all(g is None or torch.isfinite(g).all() for g in torch.autograd.grad(penalty, params, allow_unused=True))


def test_sampled_steps_pick_one_step_per_state_and_agent_and_keep_the_expectation():
    scenario, state, policy, batch = tiny_setup(3)
    full, _ = aajr_penalty(policy, batch, scenario, eps=0.2, steps=3)
    sampled, _ = aajr_penalty(policy, batch, scenario, eps=0.2, steps=3, sample_steps=True,
                              generator=torch.Generator().manual_seed(5))
    points, directions, _ = aajr_trajectory(policy, batch, scenario, 0.2, 3)
    norms = jvp_norms(policy.deterministic_action, points, directions)  # (K, M, N)
    m, n = norms.shape[1:]
    chosen = torch.randint(3, (1, m, n, 1), generator=torch.Generator().manual_seed(5))[0, ..., 0]  # the same draws
    reference = norms.gather(0, chosen.unsqueeze(0))[0].pow(2).mean()
    torch.testing.assert_close(sampled, reference, rtol=1e-10, atol=1e-12)  # exactly the drawn steps' terms
    params = list(policy.actor.parameters())
    assert_grads_close(torch.autograd.grad(sampled, params, allow_unused=True),
                       torch.autograd.grad(reference, params, allow_unused=True))
    # unbiased: the mean over every step assignment is the full penalty (K^(M N) assignments, by linearity
    # the mean over each (state, agent)'s K steps)
    torch.testing.assert_close(norms.pow(2).mean(0).mean(), full.detach(), rtol=1e-10, atol=1e-12)
    generator = torch.Generator().manual_seed(1)
    draws = [jvp_norms(policy.deterministic_action, *sampled_steps(points, directions, generator)).pow(2).mean()
             for _ in range(400)]
    assert float(torch.stack(draws).detach().mean()) == pytest.approx(float(full.detach()), rel=0.03)  # Monte Carlo
    one, _ = aajr_penalty(policy, batch, scenario, eps=0.2, steps=1, sample_steps=True,
                          generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(one, aajr_penalty(policy, batch, scenario, eps=0.2, steps=1)[0])  # K = 1: the same
    with pytest.raises(ValueError, match="needs a torch.Generator"):
        aajr_penalty(policy, batch, scenario, eps=0.2, steps=3, sample_steps=True)
    with pytest.raises(ValueError, match="sample_steps applies to aajr only"):
        make_regularizer("smooth", scenario, PGASettings(sample_steps=True))
    with pytest.raises(ValueError, match="sample_steps must be True or False"):
        PGASettings(sample_steps=1)


# ----- global baselines ---------------------------------------------------------------------------


def test_global_estimator_is_unbiased_for_the_frobenius_norm():
    scenario, state, policy, batch = tiny_setup(2)
    obs = batch.obs[:1]
    penalty, _ = global_jacobian_penalty(policy, Batch(obs, None, {}), directions=20000,
                                         generator=torch.Generator().manual_seed(0))
    frobenius = sum(agent_jacobian(policy, obs[0], i).pow(2).sum() / obs.shape[-1] for i in range(2))
    assert penalty.item() == pytest.approx(frobenius.item() / 2, rel=0.03)


def test_jacobian_penalty_equals_jacrev_with_the_same_directions():
    scenario, state, policy, batch = tiny_setup(7)
    obs = batch.obs
    penalty, _ = global_jacobian_penalty(policy, batch, directions=3, generator=torch.Generator().manual_seed(1))
    directions = random_unit_directions((3, *obs.shape), torch.Generator().manual_seed(1), "cpu", torch.float64)
    reference = torch.stack([(agent_jacobian(policy, obs[m], i) @ directions[t, m, i]).pow(2).sum()
                             for t in range(3) for m in range(obs.shape[0]) for i in range(2)]).mean()
    torch.testing.assert_close(penalty, reference, rtol=1e-6, atol=1e-12)
    params = list(policy.actor.parameters())
    assert_grads_close(torch.autograd.grad(penalty, params, allow_unused=True), torch.autograd.grad(reference, params))


def test_spectral_penalty_converges_to_the_largest_singular_value():
    scenario, state, policy, batch = tiny_setup(4)
    obs = batch.obs
    penalty, diagnostics = spectral_penalty(policy, batch, iterations=100, generator=torch.Generator().manual_seed(0))
    squares, fd_squares = [], []
    h = 1e-5
    for m in range(obs.shape[0]):
        for i in range(obs.shape[1]):
            squares.append(torch.linalg.matrix_norm(agent_jacobian(policy, obs[m], i), 2) ** 2)
            with torch.no_grad():  # the Jacobian column by column, by central differences
                basis = torch.eye(obs.shape[-1], dtype=torch.float64)
                shifted = obs[m].unsqueeze(0).repeat(obs.shape[-1], 1, 1)
                plus, minus = shifted.clone(), shifted.clone()
                plus[:, i] += h * basis
                minus[:, i] -= h * basis
                columns = (policy.deterministic_action(plus) - policy.deterministic_action(minus))[:, i] / (2 * h)
                fd_squares.append(torch.linalg.matrix_norm(columns.T, 2) ** 2)
    reference = torch.stack(squares).mean()
    torch.testing.assert_close(penalty, reference, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(penalty.detach(), torch.stack(fd_squares).mean(), rtol=1e-6, atol=1e-12)
    params = list(policy.actor.parameters())
    # envelope theorem: with the converged direction detached, the gradient is that of ||J||_2^2
    assert_grads_close(torch.autograd.grad(penalty, params, allow_unused=True),
                       torch.autograd.grad(reference, params), rtol=1e-5, atol=1e-9)
    hinge, _ = spectral_penalty(policy, batch, iterations=100, generator=torch.Generator().manual_seed(0), budget=1e6)
    assert hinge.item() == 0.0


def test_masked_spectral_penalty_equals_the_largest_singular_value_of_the_masked_jacrev_jacobian():
    scenario, state, policy, batch = tiny_setup(4)
    obs, mask = batch.obs, scenario.shock_mask.to(torch.bool)
    assert 0 < int(mask.sum()) < obs.shape[-1]
    penalty, diagnostics = spectral_penalty(policy, batch, iterations=200, generator=torch.Generator().manual_seed(0),
                                            mask=mask)
    masked = [torch.linalg.matrix_norm(agent_jacobian(policy, obs[m], i)[:, mask], 2)
              for m in range(obs.shape[0]) for i in range(obs.shape[1])]
    unmasked = [torch.linalg.matrix_norm(agent_jacobian(policy, obs[m], i), 2)
                for m in range(obs.shape[0]) for i in range(obs.shape[1])]
    torch.testing.assert_close(penalty, torch.stack(masked).pow(2).mean(), rtol=1e-6, atol=1e-12)
    assert diagnostics["reg/spectral_norm_max"] == pytest.approx(float(torch.stack(masked).detach().max()), rel=1e-6)
    assert float(torch.stack(masked).detach().max()) < 0.99 * float(torch.stack(unmasked).detach().max())
    directions = top_singular_directions(policy.deterministic_action, obs, 5, torch.Generator().manual_seed(0), mask)
    assert (directions[..., ~mask] == 0).all()  # the attacker cannot move the other features


def test_masked_jacobian_penalty_is_unbiased_for_the_masked_frobenius_norm():
    scenario, state, policy, batch = tiny_setup(2)
    obs, mask = batch.obs[:1], scenario.shock_mask.to(torch.bool)
    penalty, _ = global_jacobian_penalty(policy, Batch(obs, None, {}), directions=20000,
                                         generator=torch.Generator().manual_seed(0), mask=mask)
    frobenius = sum(agent_jacobian(policy, obs[0], i)[:, mask].pow(2).sum() / int(mask.sum()) for i in range(2))
    assert penalty.item() == pytest.approx(frobenius.item() / 2, rel=0.03)
    registered = make_regularizer("jacobian", scenario)  # the run config's default acts on the shock channels
    masked, _ = registered(policy, batch, torch.Generator().manual_seed(3))
    reference, _ = global_jacobian_penalty(policy, batch, 3, torch.Generator().manual_seed(3), mask=mask)
    torch.testing.assert_close(masked, reference)


# ----- smoothness (SA-PPO) ------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [None, 0.01])
def test_smoothness_penalty_equals_a_loop_over_agents_and_finite_differences(budget):
    scenario, state, policy, batch = tiny_setup(8)
    obs = batch.obs
    mask = scenario.shock_mask
    penalty, diagnostics = smoothness_penalty(policy, batch, mask, eps=0.3, steps=4,
                                              generator=torch.Generator().manual_seed(3), budget=budget)
    # the same PGA (same seed) on the action objective, then an explicit loop over states and agents
    from envs.shocks import action_objective
    trajectory = pga(action_objective(obs, policy.deterministic_action, "per_agent"), tuple(obs.shape), 0.3, "l2", 4,
                     mask=mask, random_start=True, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    delta = trajectory.deltas[-1]
    assert float(delta.norm(dim=-1).max()) <= 0.3 * (1 + 1e-9) and torch.all(delta[..., ~mask] == 0)

    def loop():
        terms = []
        for m in range(obs.shape[0]):
            for i in range(obs.shape[1]):
                shocked = obs[m].clone()
                shocked[i] = shocked[i] + delta[m, i]
                change = (policy.deterministic_action(shocked.unsqueeze(0)) - policy.deterministic_action(
                    obs[m].unsqueeze(0)))[0, i].norm() / 0.3
                terms.append(change ** 2 if budget is None else torch.relu(change - budget) ** 2)
        return torch.stack(terms).mean()

    reference = loop()
    torch.testing.assert_close(penalty, reference, rtol=1e-6, atol=1e-12)
    assert penalty.item() > 0 and diagnostics["reg/action_change_max"] >= diagnostics["reg/action_change_mean"]
    params = list(policy.actor.parameters())
    grads = torch.autograd.grad(penalty, params, allow_unused=True)
    assert_grads_close(grads, torch.autograd.grad(reference, params))
    assert_grads_close(grads, fd_parameter_gradient(loop, params), rtol=1e-5, atol=1e-8)


# ----- spectral normalisation -------------------------------------------------------------------


@pytest.mark.parametrize("share", [False, True])
def test_spectral_normalisation_bounds_every_layer_and_the_policy_lipschitz_constant(share):
    torch.manual_seed(0)
    low, high = torch.zeros(3), 2 * torch.ones(3)
    policy = MultiAgentActorCritic(4, 6, low, high, hidden=(16, 16), share_parameters=share, normalise_obs=False)
    for p in policy.actor.parameters():
        p.data.normal_(0, 1.0)
    before = layer_spectral_norms(policy.actor)
    assert float(before[:2].min()) > 1.5  # the raw hidden layers are far above the bound
    apply_spectral_norm(policy.actor, bound=0.8)
    policy.train()
    x = torch.randn(64, 4, 6)
    for _ in range(20):  # one power-iteration step per training-mode forward
        policy.deterministic_action(x)
    after = layer_spectral_norms(policy.actor)
    # power iteration underestimates sigma slightly (as torch's spectral_norm does): 0.1% slack
    assert float(after.max()) <= 0.8 * (1 + 1e-3)
    torch.testing.assert_close(after[:2], torch.full_like(after[:2], 0.8), rtol=1e-3, atol=0)
    policy.eval()
    lipschitz = 0.8 ** 3 * float((high - low).max()) / 4  # three layers, tanh 1-Lipschitz, sigmoid' <= 1/4
    for i in range(4):
        for m in range(8):
            jac = jacrev(lambda z: policy.deterministic_action(z.unsqueeze(0))[0, i])(x[m])[:, i]
            assert torch.linalg.matrix_norm(jac.detach(), 2).item() <= lipschitz * (1 + 3e-3)
    (policy.deterministic_action(x).sum()).backward()
    originals = [p for name, p in policy.named_parameters() if name.endswith("original")]
    assert len(originals) == 3 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in originals)


def test_spectral_normalisation_state_round_trips():
    torch.manual_seed(1)
    make = lambda: apply_spectral_norm(
        MultiAgentActorCritic(2, 5, torch.zeros(2), torch.ones(2), hidden=(8,)).actor, bound=1.0)
    net = make()
    x = torch.randn(7, 2, 5)
    for _ in range(3):
        net(x)
    copy = make()
    copy.load_state_dict(net.state_dict())
    net.eval(), copy.eval()
    assert torch.equal(net(x), copy(x))


# ----- registry -----------------------------------------------------------------------------------


SETTINGS = {"aajr": {"eps": 0.2, "steps": 2}, "smooth": {"eps": 0.2, "steps": 2}, "jacobian": {"directions": 2},
            "spectral": {"power_iterations": 2}}


@pytest.mark.parametrize("name", regularizer_names())
def test_every_registered_penalty_runs_through_the_common_interface(name):
    scenario, state, policy, batch = tiny_setup(9)
    penalty_fn = make_regularizer(name, scenario, METHODS[name].settings(**SETTINGS[name]))
    first, diagnostics = penalty_fn(policy, batch, torch.Generator().manual_seed(0))
    again, _ = penalty_fn(policy, batch, torch.Generator().manual_seed(0))
    assert first.dim() == 0 and torch.isfinite(first) and first.item() > 0 and torch.equal(first, again)
    assert diagnostics and all(isinstance(value, float) for value in diagnostics.values())
    first.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.actor.parameters())


def test_bad_regularizer_names_and_settings_are_refused():
    with pytest.raises(ValueError, match="unknown regularizer 'magic'; allowed: 'aajr'"):
        make_regularizer("magic", None)
    with pytest.raises(ValueError, match="method 'jacobian' takes JacobianSettings, got PGASettings"):
        make_regularizer("jacobian", None, PGASettings())
    with pytest.raises(ValueError, match="eps must lie in"):
        PGASettings(eps=0.0)
    with pytest.raises(ValueError, match="unknown norm 'l3'"):
        PGASettings(norm="l3")
