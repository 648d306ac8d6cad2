"""Every scenario through every adapter: PettingZoo's and Gymnasium's own API checks, determinism
across forms, observation containment, the action rule and the registered ids."""

import warnings

import gymnasium
import numpy as np
import pettingzoo
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode
from pettingzoo.test import api_test, max_cycles_test, parallel_api_test, parallel_seed_test, render_test

import envs
from envs.gym_env import JointVectorEnv
from envs.pettingzoo_env import make_aec_env, make_parallel_env

SCENARIO_NAMES = sorted(envs.SCENARIOS)
SIZES = ("small", "default")


def preset(name: str, size: str) -> dict:
    kwargs = dict(envs.SCENARIOS[name].presets[size])
    kwargs["horizon"] = min(kwargs.get("horizon", 100), 25)  # keep the API tests fast
    return kwargs


@pytest.fixture(autouse=True)
def _quiet_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_pettingzoo_api(name, size):
    kwargs = preset(name, size)
    parallel_api_test(make_parallel_env(name, **kwargs), num_cycles=60)
    parallel_seed_test(lambda: make_parallel_env(name, **kwargs), num_cycles=60)
    api_test(make_aec_env(name, **kwargs), num_cycles=60)


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_pettingzoo_module_conventions(name):
    module = getattr(envs, name)
    max_cycles_test(module)
    render_test(lambda render_mode: module.env(render_mode=render_mode, **preset(name, "small")))
    assert isinstance(pettingzoo.make("parallel", envs.GYM_IDS[name]), pettingzoo.ParallelEnv)
    assert isinstance(pettingzoo.make("aec", envs.GYM_IDS[name]), pettingzoo.AECEnv)


def random_episode(env, seed):
    """Observations, rewards and infos of one full episode with seeded random actions."""
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    trajectory = [obs]
    while env.agents:
        actions = {agent: rng.uniform(-0.2, 1.2, env.action_space(agent).shape) for agent in env.agents}
        obs, rewards, _, _, infos = env.step(actions)
        trajectory.append((obs, rewards, infos))
    return trajectory


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_observations_stay_in_space_for_a_whole_episode(name, size):
    env = make_parallel_env(name, **preset(name, size))
    for step in random_episode(env, seed=3)[1:]:
        for agent, obs in step[0].items():
            assert obs.dtype == np.float32
            assert env.observation_space(agent).contains(obs), (agent, obs)


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_full_episode_determinism(name):
    kwargs = preset(name, "small")
    first = random_episode(make_parallel_env(name, **kwargs), seed=11)
    second = random_episode(make_parallel_env(name, **kwargs), seed=11)
    other = random_episode(make_parallel_env(name, **kwargs), seed=12)
    assert len(first) == kwargs["horizon"] + 1
    for a, b in zip(first[1:], second[1:]):
        for agent in a[0]:
            np.testing.assert_array_equal(a[0][agent], b[0][agent])
            assert a[1][agent] == b[1][agent]
    assert any(not np.array_equal(a[0]["agent_0"], b[0]["agent_0"]) for a, b in zip(first[1:], other[1:]))


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_batched_and_pettingzoo_forms_give_identical_trajectories(name):
    kwargs = preset(name, "small")
    parallel = make_parallel_env(name, **kwargs)
    batched = envs.TorchVectorEnv(name, num_envs=1, seed=5, auto_reset=False, **kwargs)
    obs_pz, _ = parallel.reset(seed=5)
    obs_batched = batched.reset()
    rng = np.random.default_rng(0)
    for _ in range(kwargs["horizon"]):
        np.testing.assert_array_equal(np.stack([obs_pz[a] for a in parallel.possible_agents]),
                                      obs_batched[0].numpy())
        joint = rng.uniform(0, 1, (parallel.scenario.n_agents, parallel.scenario.action_dim))
        obs_pz, rewards, _, _, _ = parallel.step({a: joint[i] for i, a in enumerate(parallel.agents)})
        result = batched.step(joint[None])
        obs_batched = result.obs
        np.testing.assert_array_equal(np.array(list(rewards.values()), dtype=np.float32), result.rewards[0].numpy())
    assert not parallel.agents and bool(result.truncated.all())


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_gymnasium_registered_ids(name):
    env_id = envs.GYM_IDS[name]
    env = gymnasium.make(f"envs:{env_id}", **preset(name, "small"))
    check_env(env.unwrapped, skip_render_check=False)
    obs, _ = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs)
    assert info["agent_rewards"].shape == (env.unwrapped.scenario.n_agents,)
    assert reward == pytest.approx(-info["system_loss"])


@pytest.mark.parametrize("mode", ["next_step", "same_step"])
@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_make_vec_returns_native_batched_env(name, mode):
    kwargs = preset(name, "small")
    vec = gymnasium.make_vec(envs.GYM_IDS[name], num_envs=6, vectorization_mode="vector_entry_point",
                             autoreset_mode=mode, **kwargs)
    assert isinstance(vec, JointVectorEnv)
    assert vec.autoreset_mode == vec.metadata["autoreset_mode"] == AutoresetMode(
        {"next_step": "NextStep", "same_step": "SameStep"}[mode])
    obs, _ = vec.reset(seed=1)
    assert obs.shape == vec.observation_space.shape and vec.observation_space.contains(obs)
    again, _ = gymnasium.make_vec(envs.GYM_IDS[name], num_envs=6, vectorization_mode="vector_entry_point",
                                  autoreset_mode=mode, **kwargs).reset(seed=1)
    np.testing.assert_array_equal(obs, again)
    for step in range(kwargs["horizon"]):
        obs, rewards, terminated, truncated, info = vec.step(vec.action_space.sample())
        assert rewards.shape == (6,) and not terminated.any()
        assert truncated.all() == (step == kwargs["horizon"] - 1)
    def time_feature(flat_obs):  # the last feature of every scenario is t / T
        return flat_obs.reshape(6, vec.scenario.n_agents, -1)[..., -1]

    if mode == "same_step":  # the batch was reset in the step that ended the episodes
        assert info["final_obs"].shape == obs.shape and info["_final_obs"].all()
        assert (time_feature(info["final_obs"]) == 1).all()
        first = obs
    else:  # the step that ended the episodes returned their last observations; the next one resets
        assert "final_obs" not in info and (time_feature(obs) == 1).all()
        first, rewards, terminated, truncated, info = vec.step(vec.action_space.sample())
        assert not (terminated.any() or truncated.any()) and (rewards == 0).all() and info == {}
    assert (time_feature(first) == 0).all()  # the first observations of the new episodes
    obs_after, *_ = vec.step(vec.action_space.sample())
    assert obs_after.shape == obs.shape


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_out_of_box_actions_are_clipped_identically_in_every_form(name):
    kwargs = preset(name, "small")
    scenario = envs.make_scenario(name, **kwargs)
    low = scenario.action_low.numpy()
    high = scenario.action_high.numpy()
    shape = (scenario.n_agents, scenario.action_dim)
    rng = np.random.default_rng(0)
    wild = rng.uniform(-3, 3, shape)
    clipped = np.clip(wild, low, high)

    def first_reward_pz(joint):
        env = make_parallel_env(name, **kwargs)
        env.reset(seed=0)
        return env.step({a: joint[i] for i, a in enumerate(env.agents)})[1]

    def first_reward_gym(joint):
        env = gymnasium.make(f"envs:{envs.GYM_IDS[name]}", **kwargs)
        env.reset(seed=0)
        return env.step(joint.reshape(-1))[1]

    assert first_reward_pz(wild) == first_reward_pz(clipped)
    assert first_reward_gym(wild) == first_reward_gym(clipped)


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_bad_actions_raise_clear_errors(name):
    kwargs = preset(name, "small")
    env = make_parallel_env(name, **kwargs)
    env.reset(seed=0)
    good = {a: env.action_space(a).sample() for a in env.agents}
    with pytest.raises(ValueError, match="NaN or inf"):
        env.step({**good, "agent_0": np.full_like(good["agent_0"], np.nan)})
    with pytest.raises(ValueError, match="shape"):
        env.step({**good, "agent_0": np.zeros(env.scenario.action_dim + 1)})
    with pytest.raises(ValueError, match="missing"):
        env.step({"agent_0": good["agent_0"]})
    vec = envs.TorchVectorEnv(name, num_envs=3, seed=0, **kwargs)
    vec.reset()
    with pytest.raises(ValueError, match=r"\(3, 2, "):
        vec.step(torch.zeros(3, 3, vec.scenario.action_dim))
    with pytest.raises(ValueError, match="inf"):
        vec.step(torch.full((3, 2, vec.scenario.action_dim), float("inf")))
    gym_env = gymnasium.make(f"envs:{envs.GYM_IDS[name]}", **kwargs)
    gym_env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        gym_env.step(np.zeros(3))


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_bad_configuration_raises_clear_errors(name):
    with pytest.raises(ValueError, match="n_agents must be a positive integer, got 0"):
        envs.make_scenario(name, n_agents=0)
    with pytest.raises(ValueError, match="horizon must be a positive integer, got -3"):
        envs.make_scenario(name, horizon=-3)
    with pytest.raises(ValueError, match="unknown argument.*'n_agentz'.*allowed: n_agents"):
        envs.make_scenario(name, n_agentz=3)
    with pytest.raises(ValueError, match="unknown reward_mode 'greedy'"):
        envs.make_scenario(name, reward_mode="greedy")
    with pytest.raises(ValueError, match="render_mode 'rgb'"):
        make_parallel_env(name, render_mode="rgb")
    with pytest.raises(ValueError, match="num_envs must be a positive integer, got 0"):
        envs.TorchVectorEnv(name, num_envs=0)


def test_unknown_scenario_names_are_listed():
    with pytest.raises(ValueError, match="unknown scenario 'traffic'; allowed: 'commons', 'compute', 'routing'"):
        envs.make_scenario("traffic")


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_system_loss_gradient_matches_finite_differences(name):
    scenario = envs.make_scenario(name, dtype=torch.float64, **preset(name, "small"))
    generator = envs.make_generator(0)
    state = scenario.reset(4, generator)
    for _ in range(3):  # move away from the initial state
        actions = torch.rand(4, scenario.n_agents, scenario.action_dim, generator=generator, dtype=torch.float64)
        state = scenario.step(state, actions, generator).state
    low, high = scenario.action_low, scenario.action_high
    interior = low + (high - low) * (0.1 + 0.8 * torch.rand(4, scenario.n_agents, scenario.action_dim,
                                                            generator=generator, dtype=torch.float64))
    interior.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: scenario.system_loss(state, a), (interior,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_large_preset_is_high_dimensional_and_steps_in_batch(name):
    scenario = envs.make_scenario(name, **envs.SCENARIOS[name].presets["large"])
    assert scenario.n_agents >= 16 and scenario.obs_dim >= 64
    vec = envs.TorchVectorEnv(scenario, num_envs=256, seed=0)
    obs = vec.reset()
    result = vec.step(torch.rand(256, scenario.n_agents, scenario.action_dim))
    assert obs.shape == (256, scenario.n_agents, scenario.obs_dim)
    assert result.rewards.shape == (256, scenario.n_agents) and torch.isfinite(result.rewards).all()
    assert scenario.shock_mask.shape == (scenario.obs_dim,) and scenario.shock_mask.any()
    assert len(scenario.feature_names) == scenario.obs_dim
    assert set(scenario.spike_features) <= set(scenario.feature_names)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_cuda_matches_cpu_shapes_and_runs(name):
    vec = envs.TorchVectorEnv(name, num_envs=64, device="cuda", seed=0, **preset(name, "default"))
    obs = vec.reset()
    result = vec.step(torch.rand(64, vec.n_agents, vec.scenario.action_dim, device="cuda"))
    assert obs.device.type == "cuda" and result.rewards.device.type == "cuda"
