"""The learned adversary: shocks always in the masked ball (hypothesis), the action map's known answers,
the learner adapter, strength against a seeded victim, save/load and the run-directory cache, seeding,
and refused configs."""

import functools
import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import envs
from agents import run
from agents.config import parse_overrides, resolve
from agents.policy import make_policy
from agents.ppo import PPOConfig
from envs.shocks import random_in_ball
from envs.vector import TorchVectorEnv
from robustness.adversary import (ACTION_BOUND, AdversaryConfig, AttackEnv, LearnedAdversary, ShockMap,
                                  adversary_path, load_or_train, mean_system_loss, train_adversary)

# Routing without its rare demand spikes and capacity drops: the BPR latencies make those steps' losses
# tens of times the typical one, and a tiny training budget then learns from a few outliers.
CALM_ROUTING = {**envs.SCENARIOS["routing"].presets["small"], "spike_prob": 0.0, "capacity_drop_prob": 0.0}
TINY_PPO = {"num_envs": 8, "rollout_steps": 8, "update_epochs": 2, "hidden": (16, 16)}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@functools.cache
def small_scenario(name: str) -> envs.Scenario:
    return envs.make_scenario(name, **envs.SCENARIOS[name].presets["small"])


class LinearVictim:
    """A fixed seeded victim: ``low + (high - low) * sigmoid(obs W)``, sensitive to every feature."""

    def __init__(self, scenario, seed=0, scale=0.5, record=False):
        generator = torch.Generator().manual_seed(seed)
        self.weights = scale * torch.randn(scenario.obs_dim, scenario.action_dim, generator=generator)
        self.low, self.high = scenario.action_low, scenario.action_high
        self.seen = [] if record else None

    def deterministic_action(self, obs):
        if self.seen is not None:
            self.seen.append(obs)
        return self.low + (self.high - self.low) * torch.sigmoid(obs @ self.weights)


def tiny_config(**fields):
    return AdversaryConfig(**{"total_agent_steps": 64, "ppo": PPOConfig(**TINY_PPO), **fields})


def budget(delta, norm):
    return delta.abs().amax(-1) if norm == "linf" else delta.norm(dim=-1)


# ----- (a) every shock lies in the masked ball -----------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(sorted(envs.SCENARIOS)), seed=st.integers(0, 10_000), eps=st.floats(1e-3, 3.0),
       norm=st.sampled_from(["l2", "linf"]), mode=st.sampled_from(["shared", "per_agent"]),
       weight_scale=st.floats(0.01, 30.0), obs_scale=st.floats(0.0, 100.0))
def test_every_shock_lies_in_the_masked_ball(name, seed, eps, norm, mode, weight_scale, obs_scale):
    scenario = small_scenario(name)
    shock_map = ShockMap.for_scenario(scenario, eps, norm, mode)
    torch.manual_seed(seed)
    policy = make_policy(shock_map.space(scenario.device, scenario.dtype), PPOConfig(hidden=(8,)))
    with torch.no_grad():
        for parameter in policy.parameters():  # random attackers, many saturated at the box's faces
            parameter.copy_(weight_scale * torch.randn_like(parameter))
    adversary = LearnedAdversary(policy, shock_map, tiny_config(eps=eps, norm=norm, mode=mode))
    obs = obs_scale * torch.randn(5, scenario.n_agents, scenario.obs_dim)
    delta = adversary.shock(obs)
    assert delta.shape == obs.shape and delta.dtype == obs.dtype
    assert (budget(delta, norm) <= eps * (1 + 1e-6)).all()
    assert (delta[..., ~scenario.shock_mask] == 0).all()
    if mode == "shared":
        assert (delta == delta[:, :1]).all()
    raw = 1e3 * torch.randn(5, shock_map.n_attackers, int(scenario.shock_mask.sum()))  # any finite action
    assert (budget(shock_map.shock(raw), norm) <= eps * (1 + 1e-6)).all()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_the_action_map_reaches_every_point_of_the_ball_and_its_boundary(norm):
    scenario = small_scenario("routing")
    eps = 0.3
    shock_map = ShockMap.for_scenario(scenario, eps, norm, "per_agent")
    mask = scenario.shock_mask
    target = random_in_ball((64, scenario.n_agents, scenario.obs_dim), eps, norm, mask.float(),
                            torch.Generator().manual_seed(0), "cpu", torch.float64)
    actions = target[..., mask] / eps  # inside the action box
    assert actions.abs().max() <= 1.0 < ACTION_BOUND
    torch.testing.assert_close(shock_map.shock(actions), target, rtol=0, atol=1e-12)
    corner = torch.full((1, scenario.n_agents, int(mask.sum())), ACTION_BOUND, dtype=torch.float64)
    on_boundary = shock_map.shock(corner)
    torch.testing.assert_close(budget(on_boundary, norm), torch.full((1, scenario.n_agents), eps, dtype=torch.float64))
    expected = eps / math.sqrt(int(mask.sum())) if norm == "l2" else eps  # eps * a / ||a||, or a clipped
    torch.testing.assert_close(on_boundary[..., mask], torch.full_like(on_boundary[..., mask], expected))


def test_attack_env_shocks_what_the_victims_see_and_rewards_the_standardised_loss():
    scenario = envs.make_scenario("routing", **CALM_ROUTING)
    victim = LinearVictim(scenario, record=True)
    shock_map = ShockMap.for_scenario(scenario, 0.2, "l2", "shared")
    env = AttackEnv(scenario, victim.deterministic_action, shock_map, num_envs=4, reward_shift=1.0,
                    reward_scale=2.0)
    obs = env.reset(seed=0)
    features = [name for name, seen in zip(scenario.feature_names, scenario.shock_mask) if seen] + ["time"]
    assert obs.shape == (4, 1, len(features)) and env.n_agents == 1
    clean = scenario.observe(env.state)
    torch.testing.assert_close(obs[:, 0, -1], torch.zeros(4))  # t / T at reset
    victim.seen.clear()
    actions = torch.full((4, 1, int(scenario.shock_mask.sum())), ACTION_BOUND)
    result = env.step(actions)
    shocked = victim.seen[0]  # the victims' first call is on the shocked observations
    assert (shocked[..., ~scenario.shock_mask] == clean[..., ~scenario.shock_mask]).all()
    torch.testing.assert_close((shocked - clean).norm(dim=-1), torch.full((4, 2), 0.2))
    torch.testing.assert_close(result.rewards[:, 0], (result.system_loss - 1.0) / 2.0)
    torch.testing.assert_close(result.info["shock/norm"], torch.full((4,), 0.2))
    torch.testing.assert_close(obs.new_tensor(1 / scenario.horizon).expand(4), result.obs[:, 0, -1])


@pytest.mark.parametrize("name", sorted(envs.SCENARIOS))
def test_the_twin_is_coupled_so_an_unshocked_step_has_zero_reward_signal(name):
    """The twin shares the state and the exogenous draws: without a shock the loss difference is exactly
    zero at every step, across the auto-reset; with one it is not, and the twin never sees the shock."""
    scenario = small_scenario(name)
    victim = LinearVictim(scenario)
    shock_map = ShockMap.for_scenario(scenario, 0.5, "l2", "shared")
    env = AttackEnv(scenario, victim.deterministic_action, shock_map, num_envs=3, reward_shift=0.25,
                    reward_scale=4.0, twin=True)
    env.reset(seed=1)
    zero = torch.zeros(3, 1, int(scenario.shock_mask.sum()))
    for _ in range(scenario.horizon + 2):  # one auto-reset included
        result = env.step(zero)
        assert torch.equal(result.info["shock/twin_gain"], torch.zeros(3))
        torch.testing.assert_close(result.rewards[:, 0], torch.full((3,), -0.25 / 4.0))
    shocked = env.step(torch.full_like(zero, ACTION_BOUND))
    assert shocked.info["shock/twin_gain"].abs().max() > 0
    torch.testing.assert_close(shocked.rewards[:, 0], (shocked.info["shock/twin_gain"] - 0.25) / 4.0)
    twin_obs = scenario.observe(env.twin.state)
    clean = TorchVectorEnv(scenario, num_envs=3, auto_reset=True)  # the same draws, never shocked
    clean.reset(seed=1)
    for _ in range(scenario.horizon + 3):
        clean.step(victim.deterministic_action(scenario.observe(clean.state)))
    torch.testing.assert_close(twin_obs, scenario.observe(clean.state), rtol=0, atol=0)


# ----- (b) a trained adversary is stronger than a random shock of the same budget -------------------


def random_shared_shock(scenario, eps, norm, seed):
    generator = torch.Generator().manual_seed(seed)

    def shock(obs):
        delta = random_in_ball((obs.shape[0], obs.shape[-1]), eps, norm, scenario.shock_mask.to(obs.dtype),
                               generator, obs.device, obs.dtype)
        return delta.unsqueeze(1).expand_as(obs)

    return shock


def test_trained_adversary_raises_the_system_loss_far_more_than_a_random_shock():
    scenario = envs.make_scenario("routing", **CALM_ROUTING)
    victim = LinearVictim(scenario)
    config = AdversaryConfig(eps=0.2, norm="l2", mode="shared", total_agent_steps=4096, seed=0,
                             ppo=PPOConfig(num_envs=32, rollout_steps=8, learning_rate=3e-3, gamma=0.9,
                                           update_epochs=5))
    adversary = train_adversary(scenario, victim, config)
    held_out = {"num_envs": 256, "seed": 20_000}  # not the learner's nor the calibration's seeds
    nominal = mean_system_loss(scenario, victim, None, **held_out)
    random = mean_system_loss(scenario, victim, random_shared_shock(scenario, 0.2, "l2", 1), **held_out)
    learned = mean_system_loss(scenario, victim, adversary.shock, **held_out)
    print(f"\nsystem loss per step: none {nominal:.4f}, random {random:.4f}, learned {learned:.4f} "
          f"(training {adversary.info['train_seconds']:.1f} s)")
    assert learned > 1.05 * nominal
    assert learned - nominal > 5 * max(random - nominal, 0.0)
    assert adversary.info["shock/norm"] == pytest.approx(0.2, rel=0.05)  # it spends its budget


# ----- (c) save/load and the run-directory cache -----------------------------------------------------


def test_save_load_round_trip_gives_identical_shocks(tmp_path):
    scenario = small_scenario("commons")
    adversary = train_adversary(scenario, LinearVictim(scenario), tiny_config(mode="per_agent", norm="linf"))
    path = tmp_path / "adversary.pt"
    adversary.save(path)
    assert not list(tmp_path.glob("*.tmp"))
    loaded = LearnedAdversary.load(path)
    obs = scenario.observe(scenario.reset(16, envs.make_generator(5)))
    assert torch.equal(loaded.shock(obs), adversary.shock(obs))
    assert loaded.config == adversary.config and loaded.info == adversary.info
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable adversary file"):
        LearnedAdversary.load(path)


def test_load_or_train_reuses_the_saved_adversary(tmp_path):
    config = resolve(parse_overrides(["scenario=routing", "size=small", "ppo.num_envs=4", "ppo.rollout_steps=4"]))
    run_dir = tmp_path / "run"
    run.create_run(config, run_dir)
    run.save_checkpoint(run_dir, run.build_learner(config))  # an untrained victim is enough here
    adversary_config = tiny_config(eps=0.05)
    first = load_or_train(run_dir, adversary_config)
    path = adversary_path(run_dir, "shared", "l2", 0.05)
    assert path == run_dir / "adversaries" / "shared-l2-eps0.05.pt" and path.is_file()
    written = path.stat().st_mtime_ns
    again = load_or_train(run_dir, tiny_config(eps=0.05))
    assert path.stat().st_mtime_ns == written
    scenario = run.load_run(run_dir).scenario
    obs = scenario.observe(scenario.reset(8, envs.make_generator(1)))
    assert torch.equal(again.shock(obs), first.shock(obs))
    retrained = load_or_train(run_dir, tiny_config(eps=0.05, seed=1))  # another config: trained and saved again
    assert retrained.config.seed == 1 and LearnedAdversary.load(path).config.seed == 1
    path.write_bytes(b"an adversary of an older format")  # an unreadable cache is rebuilt, not an error
    rebuilt = load_or_train(run_dir, tiny_config(eps=0.05, seed=1))
    assert torch.equal(rebuilt.shock(obs), retrained.shock(obs)) and LearnedAdversary.load(path).config.seed == 1


# ----- (d) seeding ---------------------------------------------------------------------------------------


def test_same_seed_same_adversary_other_seed_other_adversary():
    scenario = small_scenario("compute")
    victim = LinearVictim(scenario)
    global_state = torch.random.get_rng_state()
    first, second, third = (train_adversary(scenario, victim, tiny_config(mode="per_agent", seed=seed))
                            for seed in (3, 3, 4))
    assert torch.equal(torch.random.get_rng_state(), global_state)  # the caller's generator is left alone
    for key, value in first.policy.state_dict().items():
        assert torch.equal(value, second.policy.state_dict()[key]), key
    assert first.info["reward_shift"] == second.info["reward_shift"]
    obs = scenario.observe(scenario.reset(8, envs.make_generator(2)))
    assert torch.equal(first.shock(obs), second.shock(obs))
    assert not torch.equal(first.shock(obs), third.shock(obs))


# ----- (e) refused values -------------------------------------------------------------------------------


@pytest.mark.parametrize("fields, message", [
    ({"eps": 0.0}, r"eps must lie in \(0.0, inf\], got 0.0"),
    ({"eps": float("nan")}, "eps must lie in"),
    ({"norm": "l1"}, "unknown norm 'l1'; allowed: 'l2', 'linf'"),
    ({"mode": "joint"}, "unknown mode 'joint'; allowed: 'shared', 'per_agent'"),
    ({"total_agent_steps": 0}, "total_agent_steps must be a positive integer, got 0"),
    ({"reward": "clean"}, "unknown reward 'clean'; allowed: 'twin', 'raw'"),
    ({"seed": -1}, "seed must be a non-negative integer, got -1"),
    ({"seed": 1.5}, "seed must be a non-negative integer, got 1.5"),
    ({"ppo": {"num_envs": 4}}, "ppo must be an agents.ppo.PPOConfig, got dict"),
    ({"ppo": PPOConfig(num_envs=0)}, "ppo.num_envs must be a positive integer, got 0"),
])
def test_bad_config_values_are_refused_with_a_message(fields, message):
    with pytest.raises(ValueError, match=message):
        AdversaryConfig(**fields)


def test_bad_victims_and_arguments_are_refused():
    scenario = small_scenario("routing")
    with pytest.raises(ValueError, match="victim must have deterministic_action"):
        train_adversary(scenario, object(), tiny_config())
    with pytest.raises(ValueError, match="scenario keyword arguments"):
        train_adversary(scenario, LinearVictim(scenario), tiny_config(), n_agents=3)
    with pytest.raises(ValueError, match="unknown argument"):
        train_adversary("routing", LinearVictim(scenario), tiny_config(), n_agent=3)


def test_adversary_path_names_mode_norm_and_eps(tmp_path):
    assert adversary_path(tmp_path, "per_agent", "linf", 0.1) == tmp_path / "adversaries" / "per_agent-linf-eps0.1.pt"
    assert os.fspath(adversary_path("runs/x", "shared", "l2", 1e-3)).endswith("shared-l2-eps0.001.pt")
