"""AAJR and the global Jacobian penalty against brute force (full Jacobians by jacrev, float64)."""

import pytest
import torch
from torch.func import jacrev

import envs
from agents.policy import MultiAgentActorCritic
from envs.shocks import pga, system_objective
from regularizers.jacobian import aajr_penalty, global_jacobian_penalty, jvp_norms


def tiny_setup(seed=0):
    scenario = envs.make_scenario("routing", dtype=torch.float64, n_agents=2, n_paths=3, horizon=5)
    state = scenario.reset(3, envs.make_generator(seed))
    torch.manual_seed(seed)
    policy = MultiAgentActorCritic(2, scenario.obs_dim, scenario.action_low.float(), scenario.action_high.float(),
                                   hidden=(8,)).double()
    for p in policy.actor.parameters():  # larger weights than the 0.01-gain init, so J is not tiny
        p.data.normal_(0, 0.7, generator=torch.Generator().manual_seed(seed))
    batch = {"obs": scenario.observe(state), **{f"state/{k}": v for k, v in state.items()}}
    return scenario, state, policy, batch


def brute_force_aajr(policy, scenario, state, obs, eps, steps):
    """Loop over steps, states and agents with explicit Jacobians (jacrev) of each agent's action."""
    objective = system_objective(scenario, state, obs, policy.deterministic_action, "per_agent")
    trajectory = pga(objective, tuple(obs.shape), eps, "l2", steps, mask=scenario.shock_mask, dtype=torch.float64)
    total, count = 0.0, 0
    for t in range(steps):
        for m in range(obs.shape[0]):
            for i in range(obs.shape[1]):
                point = obs[m] + trajectory.deltas[t, m]
                jac = jacrev(lambda x: policy.deterministic_action(x.unsqueeze(0))[0, i])(point)[:, i]  # (A, D)
                total = total + (jac @ trajectory.directions[t, m, i].detach()).pow(2).sum()
                count += 1
    return total / count


def test_aajr_penalty_and_its_gradient_equal_a_brute_force_computation():
    scenario, state, policy, batch = tiny_setup()
    penalty, diagnostics = aajr_penalty(policy, batch, scenario, eps=0.2, steps=3)
    reference = brute_force_aajr(policy, scenario, state, batch["obs"], 0.2, 3)
    torch.testing.assert_close(penalty, reference, rtol=1e-6, atol=1e-12)
    assert diagnostics["aajr/jvp_norm_max"] >= diagnostics["aajr/jvp_norm_mean"] > 0
    params = [p for p in policy.actor.parameters()]
    grads = torch.autograd.grad(penalty, params, allow_unused=True)
    reference_grads = torch.autograd.grad(reference, params, allow_unused=True)
    for g, r in zip(grads, reference_grads):
        if r is None:
            assert g is None or torch.all(g == 0)
        else:
            torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-10)


def test_agent_i_penalty_gives_no_gradient_to_agent_j():
    scenario, state, policy, batch = tiny_setup(1)
    obs = batch["obs"]
    directions = torch.randn(2, *obs.shape, dtype=torch.float64)
    norms = jvp_norms(policy.deterministic_action, obs.unsqueeze(0).expand(2, *obs.shape), directions)
    first_layer = policy.actor.stacked[0]
    (grad,) = torch.autograd.grad(norms[..., 0].pow(2).mean(), [first_layer])
    assert grad[0].abs().sum() > 0 and torch.all(grad[1] == 0)


def test_global_estimator_is_unbiased_for_the_frobenius_norm():
    scenario, state, policy, batch = tiny_setup(2)
    obs = batch["obs"][:1]
    penalty, _ = global_jacobian_penalty(policy, {"obs": obs}, steps=20000, generator=torch.Generator().manual_seed(0))
    frobenius = 0.0
    for i in range(2):
        jac = jacrev(lambda x: policy.deterministic_action(x.unsqueeze(0))[0, i])(obs[0])[:, i]
        frobenius += jac.pow(2).sum() / obs.shape[-1]
    assert float(penalty) == pytest.approx(float(frobenius) / 2, rel=0.03)


def test_zero_objective_gradient_gives_a_finite_penalty():
    scenario, state, policy, batch = tiny_setup(3)
    batch = {**batch, "state/demand": torch.zeros_like(batch["state/demand"])}  # no traffic: loss 0
    penalty, _ = aajr_penalty(policy, batch, scenario, eps=0.1, steps=2)
    assert torch.isfinite(penalty) and float(penalty) == 0.0


def test_spectral_penalty_converges_to_the_largest_singular_value():
    from regularizers.jacobian import spectral_penalty
    scenario, state, policy, batch = tiny_setup(4)
    obs = batch["obs"]
    penalty, diagnostics = spectral_penalty(policy, batch, iterations=100, generator=torch.Generator().manual_seed(0))
    squares = []
    for m in range(obs.shape[0]):
        for i in range(obs.shape[1]):
            jac = jacrev(lambda x: policy.deterministic_action(x.unsqueeze(0))[0, i])(obs[m])[:, i]
            squares.append(torch.linalg.matrix_norm(jac, 2) ** 2)
    reference = torch.stack(squares).mean()
    torch.testing.assert_close(penalty, reference, rtol=1e-6, atol=1e-12)
    params = list(policy.actor.parameters())
    # envelope theorem: with the converged direction detached, the gradient is that of ||J||_2^2
    for g, r in zip(torch.autograd.grad(penalty, params, allow_unused=True),
                    torch.autograd.grad(reference, params, allow_unused=True)):
        if r is not None:
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-9)
    hinge, _ = spectral_penalty(policy, batch, iterations=100, generator=torch.Generator().manual_seed(0), budget=1e6)
    assert float(hinge) == 0.0
