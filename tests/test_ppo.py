"""PPO pieces against hand-computed cases; stacked networks against separate modules."""

import math

import pytest
import torch

from agents.networks import StackedMLP, mlp
from agents.policy import MultiAgentActorCritic, RunningNorm
from agents.ppo import clipped_surrogate, compute_gae, explained_variance, value_loss


def test_gae_hand_computed_with_truncation_bootstrap():
    # T=3, B=1, N=1; the episode is truncated after step 1 (bootstrapped with V(final) = 10).
    rewards = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1)
    values = torch.tensor([0.5, 1.0, 1.5]).view(3, 1, 1)
    next_values = torch.tensor([1.0, 10.0, 2.0]).view(3, 1, 1)
    dones = torch.tensor([False, True, False]).view(3, 1)
    gamma, lam = 0.9, 0.8
    d0 = 1.0 + 0.9 * 1.0 - 0.5
    d1 = 2.0 + 0.9 * 10.0 - 1.0
    d2 = 3.0 + 0.9 * 2.0 - 1.5
    expected = torch.tensor([d0 + gamma * lam * d1, d1, d2]).view(3, 1, 1)
    advantages, returns = compute_gae(rewards, values, next_values, dones, gamma, lam)
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, expected + values)


def test_gae_matches_a_loop_over_envs_and_agents():
    generator = torch.Generator().manual_seed(0)
    rewards, values, next_values = (torch.randn(6, 3, 2, generator=generator) for _ in range(3))
    dones = torch.rand(6, 3, generator=generator) < 0.3
    advantages, _ = compute_gae(rewards, values, next_values, dones, 0.99, 0.95)
    for b in range(3):
        for i in range(2):
            running = 0.0
            for t in reversed(range(6)):
                delta = rewards[t, b, i] + 0.99 * next_values[t, b, i] - values[t, b, i]
                running = delta + 0.99 * 0.95 * (0.0 if dones[t, b] else 1.0) * running
                assert float(advantages[t, b, i]) == pytest.approx(float(running), abs=1e-5)


def test_clipped_surrogate_hand_computed():
    ratios = torch.tensor([0.5, 1.5, 1.1, 0.7])
    advantages = torch.tensor([1.0, 1.0, -2.0, -1.0])
    # per sample: max(-A r, -A clip(r, 0.8, 1.2))
    expected = torch.tensor([max(-0.5, -0.8), max(-1.5, -1.2), max(2.2, 2.2), max(0.7, 0.8)]).mean()
    torch.testing.assert_close(clipped_surrogate(ratios.log(), advantages, 0.2), expected)


def test_value_loss_hand_computed():
    values, old, returns = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5]), torch.tensor([2.0, 0.0])
    assert float(value_loss(values, old, returns, None)) == pytest.approx(0.5 * (1.0 + 0.0) / 2)
    # clipped values: [0.7, 0.3] -> squared errors [1.69, 0.09]; max with [1, 0]
    assert float(value_loss(values, old, returns, 0.2)) == pytest.approx(0.5 * (1.69 + 0.09) / 2)


def test_stacked_networks_equal_separate_modules():
    torch.manual_seed(0)
    stacked = StackedMLP(3, 5, (16, 16), 2)
    x = torch.randn(7, 3, 5)
    for i in range(3):
        single = mlp(5, (16, 16), 2)
        params = {name: p[i] for name, p in zip(stacked.param_names, stacked.stacked)}
        single.load_state_dict(params)
        torch.testing.assert_close(stacked(x)[:, i], single(x[:, i]))


def test_parameter_sharing_same_shapes_fewer_parameters():
    low, high = torch.zeros(3), torch.ones(3)
    independent = MultiAgentActorCritic(4, 6, low, high, share_parameters=False)
    shared = MultiAgentActorCritic(4, 6, low, high, share_parameters=True)
    obs = torch.randn(5, 4, 6)
    for policy in (independent, shared):
        assert policy.deterministic_action(obs).shape == (5, 4, 3)
        assert policy.value(obs).shape == (5, 4)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(shared) < count(independent)
    # shared: one network, so agents with the same observation differ only by the id input
    same_obs = obs[:, :1].expand(-1, 4, -1)
    shared_actions = shared.deterministic_action(same_obs)
    assert not torch.allclose(shared_actions[:, 0], shared_actions[:, 1])


def test_centralised_critic_sees_all_agents():
    policy = MultiAgentActorCritic(3, 4, torch.zeros(2), torch.ones(2), centralised_critic=True)
    obs = torch.randn(2, 3, 4)
    changed = obs.clone()
    changed[:, 2] += 1.0
    values, new_values = policy.value(obs), policy.value(changed)
    assert not torch.allclose(values[:, 0], new_values[:, 0])  # agent 0's value depends on agent 2
    actions = policy.deterministic_action(obs)
    torch.testing.assert_close(actions[:, 0], policy.deterministic_action(changed)[:, 0])


def test_actions_stay_in_the_box_and_log_probs_match():
    low, high = torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 3.0])
    policy = MultiAgentActorCritic(2, 3, low, high)
    obs = torch.randn(100, 2, 3) * 5
    pre, actions, log_probs, values = policy.act(obs, torch.Generator().manual_seed(0))
    assert (actions >= low).all() and (actions <= high).all()
    new_log_probs, _, new_values = policy.evaluate(obs, pre)
    torch.testing.assert_close(new_log_probs, log_probs)
    torch.testing.assert_close(new_values, values)


def test_running_norm_matches_batch_statistics():
    norm = RunningNorm((2, 3))
    data = torch.randn(1000, 2, 3) * 3 + 1
    for chunk in data.split(100):
        norm.update(chunk)
    torch.testing.assert_close(norm.mean, data.mean(0), atol=1e-3, rtol=0)
    torch.testing.assert_close(norm.var, data.var(0, unbiased=False), atol=1e-2, rtol=1e-3)


def test_explained_variance_hand_computed():
    returns = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # (M=2, N=2): every element counts
    values = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    # Var[returns] = 1.25; returns - values = (0, 0, 0, -1): mean -0.25, Var = (3 * 0.0625 + 0.5625) / 4 = 0.1875
    assert explained_variance(values, returns) == pytest.approx(1 - 0.1875 / 1.25)
    assert explained_variance(returns, returns) == 1.0
    assert explained_variance(torch.full_like(returns, 2.5), returns) == pytest.approx(0.0)
    assert math.isnan(explained_variance(values, torch.ones_like(returns)))  # returns that do not vary


def test_the_learner_logs_the_explained_variance_of_its_rollout():
    from agents.learner import PPOLearner
    from agents.ppo import PPOConfig
    from envs.vector import TorchVectorEnv
    env = TorchVectorEnv("commons", num_envs=4, seed=0, n_agents=2, n_resources=2, horizon=5)
    learner = PPOLearner(env, PPOConfig(num_envs=4, rollout_steps=5, update_epochs=1, num_minibatches=2),
                         total_iterations=1, seed=0)
    batch, _ = learner.collect()
    returns, values = batch.returns.double().numpy(), batch.values.double().numpy()
    expected = 1 - (returns - values).var() / returns.var()  # CleanRL's numpy formula
    assert learner.update(batch)["losses/explained_variance"] == pytest.approx(float(expected), rel=1e-9)
