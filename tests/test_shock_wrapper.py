"""The shock wrapper on the batched and PettingZoo forms."""

import warnings

import numpy as np
import pytest
import torch
from pettingzoo.test import parallel_api_test

import envs
from envs.pettingzoo_env import make_parallel_env
from envs.shock_wrapper import ShockConfig, ShockedParallelEnv, ShockedVectorEnv


def victim(scenario, seed=0):
    generator = torch.Generator().manual_seed(seed)
    weights = 0.5 * torch.randn(scenario.obs_dim, scenario.action_dim, generator=generator)
    return lambda obs: torch.sigmoid(obs.float() @ weights).to(obs.dtype)


@pytest.mark.parametrize("objective", ["system", "action", "value", "random", "spike"])
@pytest.mark.parametrize("mode", ["shared", "per_agent"])
@pytest.mark.parametrize("name", sorted(envs.SCENARIOS))
def test_batched_shocks_respect_ball_mask_and_mode(name, mode, objective):
    kwargs = envs.SCENARIOS[name].presets["small"]
    env = envs.TorchVectorEnv(name, num_envs=16, seed=0, **kwargs)
    scenario = env.scenario
    config = ShockConfig(eps=0.2, norm="l2", steps=3, objective=objective, mode=mode)
    shocked_env = ShockedVectorEnv(env, victim(scenario), config, value_fn=lambda o: o.sum(-1), seed=1)
    obs = shocked_env.reset()
    for _ in range(3):
        delta = obs - shocked_env.clean_obs
        assert (delta[..., ~scenario.shock_mask] == 0).all()
        assert (delta.norm(dim=-1) <= 0.2 + 1e-5).all()
        if mode == "shared":
            torch.testing.assert_close(delta[:, 0], delta[:, -1], atol=1e-6, rtol=0)
        result = shocked_env.step(torch.rand(16, scenario.n_agents, scenario.action_dim))
        assert result.info["shock/shocked"].all() and result.info["shock/norm"].shape == (16,)
        obs = result.obs
    if objective == "system":
        assert float(result.info["shock/gain"].mean()) > 0


def test_probability_zero_never_shocks_and_pga_beats_random_on_average():
    env = envs.TorchVectorEnv("routing", num_envs=64, seed=0, n_agents=4)
    policy = victim(env.scenario)
    none = ShockedVectorEnv(env, policy, ShockConfig(prob=0.0), seed=0)
    obs = none.reset(seed=3)
    assert torch.equal(obs, none.clean_obs) and not none.last_shock_info["shock/shocked"].any()
    gains = {}
    for objective in ("system", "random"):
        shocked = ShockedVectorEnv(envs.TorchVectorEnv("routing", num_envs=64, seed=0, n_agents=4), policy,
                                   ShockConfig(eps=0.1, objective=objective, steps=5), seed=0)
        shocked.reset(seed=3)
        gains[objective] = float(shocked.last_shock_info["shock/gain"].mean())
    assert gains["system"] > gains["random"]


@pytest.mark.parametrize("name", sorted(envs.SCENARIOS))
def test_wrapped_parallel_env_passes_the_api_test(name):
    kwargs = dict(envs.SCENARIOS[name].presets["small"])
    base = make_parallel_env(name, **kwargs)
    wrapped = ShockedParallelEnv(base, victim(base.scenario), ShockConfig(eps=0.1, steps=2, prob=0.5), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        parallel_api_test(wrapped, num_cycles=20)
    obs, infos = wrapped.reset(seed=0)
    assert set(infos["agent_0"]) >= {"shock/norm", "shock/gain", "shock/shocked"}
    clean = wrapped.shocker.clean_obs[0].numpy()
    shocked = np.stack([obs[a] for a in wrapped.possible_agents])
    assert np.linalg.norm(shocked - clean, axis=-1).max() <= 0.1 + 1e-5


def test_bad_shock_configs_are_named():
    with pytest.raises(ValueError, match="unknown objective 'mad'"):
        ShockConfig(objective="mad")
    with pytest.raises(ValueError, match="prob must lie in \\[0.0, 1.0\\], got 1.5"):
        ShockConfig(prob=1.5)
    env = envs.TorchVectorEnv("commons", num_envs=2, seed=0, n_agents=2, n_resources=2)
    with pytest.raises(ValueError, match="objective 'value' needs value_fn"):
        ShockedVectorEnv(env, victim(env.scenario), ShockConfig(objective="value")).reset()
