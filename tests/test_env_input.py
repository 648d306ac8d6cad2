"""Bad input at every environment entry point: a one-line error naming the value and what is allowed.

Actions (every adapter: finite values of any size are clipped, NaN/inf, wrong shapes and non-numbers
raise), seeds (None or an integer in [0, 2**63)), reset options, scenario and Gymnasium keyword
arguments, shock victims and configs, and third-party wrappers (Gymnasium's vector wrappers, TorchRL)
on the native vector env.
"""

import re
import warnings

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import envs
from envs.core import config_fields, make_generator
from envs.gym_env import JointEnv, JointVectorEnv
from envs.pettingzoo_env import make_aec_env, make_parallel_env
from envs.shock_wrapper import ShockConfig, ShockedParallelEnv, ShockedVectorEnv

SCENARIO_NAMES = sorted(envs.SCENARIOS)
NAME = "commons"  # the property tests run on one small scenario; the per-scenario tests cover all three
KWARGS = dict(envs.SCENARIOS[NAME].presets["small"])
N, A = KWARGS["n_agents"], KWARGS["n_resources"]
SEED_RULE = re.escape("must be None or an integer in [0, 2**63)")


def small(name):
    return dict(envs.SCENARIOS[name].presets["small"])


def victim(scenario):
    weights = 0.5 * torch.randn(scenario.obs_dim, scenario.action_dim, generator=torch.Generator().manual_seed(0))
    return lambda obs: torch.sigmoid(obs.float() @ weights).to(obs.dtype)


def one_line_error(error_type, match, fn, *args, **kwargs):
    """Call ``fn`` and check that it raises ``error_type`` with a one-line message matching ``match``."""
    with pytest.raises(error_type, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value), str(info.value)
    return str(info.value)


# --------------------------------------------------------------------------------------------
# Every adapter behind one interface: reset(seed) and a first step with a joint action (N, A).
# --------------------------------------------------------------------------------------------


def _vector_step(env, joint):
    return env.step(np.asarray(joint)[None] if isinstance(joint, np.ndarray) else joint).rewards[0].numpy()


def _dict_step(env, joint):
    actions = {agent: joint[i] for i, agent in enumerate(env.agents)} if isinstance(joint, np.ndarray) else joint
    return np.array(list(env.step(actions)[1].values()))


def _aec_step(env, joint):
    for i, _ in enumerate(env.agent_iter(max_iter=N)):
        env.step(joint[i])
    return np.array([env.rewards[agent] for agent in env.possible_agents])


def _gym_step(env, joint):
    action = joint.reshape(-1) if isinstance(joint, np.ndarray) else joint
    return env.step(action)[4]["agent_rewards"]


def _gym_vector_step(env, joint):
    action = joint.reshape(1, -1) if isinstance(joint, np.ndarray) else joint
    return env.step(action)[4]["agent_rewards"][0]


def _shocked_vector():
    base = envs.TorchVectorEnv(NAME, num_envs=1, auto_reset=False, **KWARGS)
    return ShockedVectorEnv(base, victim(base.scenario), ShockConfig(eps=0.1, steps=2), seed=0)


def _shocked_parallel():
    base = make_parallel_env(NAME, **KWARGS)
    return ShockedParallelEnv(base, victim(base.scenario), ShockConfig(eps=0.1, steps=2), seed=0)


FORMS = {
    "vector": (lambda: envs.TorchVectorEnv(NAME, num_envs=1, auto_reset=False, **KWARGS), _vector_step),
    "parallel": (lambda: make_parallel_env(NAME, **KWARGS), _dict_step),
    "aec": (lambda: make_aec_env(NAME, **KWARGS), _aec_step),
    "gym": (lambda: gymnasium.make(f"envs:{envs.GYM_IDS[NAME]}", **KWARGS), _gym_step),
    "gym_vector": (lambda: JointVectorEnv(1, NAME, **KWARGS), _gym_vector_step),
    "shocked_vector": (_shocked_vector, _vector_step),
    "shocked_parallel": (_shocked_parallel, _dict_step),
}
_BUILT: dict = {}


def form_env(form):
    """The environment of ``form`` (built once per test session: the property tests reuse it)."""
    if form not in _BUILT:
        _BUILT[form] = FORMS[form][0]()
    return _BUILT[form]


def first_rewards(form, joint, seed=0):
    env = form_env(form)
    env.reset(seed=seed)
    return FORMS[form][1](env, joint)


def box():
    scenario = envs.make_scenario(NAME, **KWARGS)
    return scenario.action_low.numpy().astype(np.float64), scenario.action_high.numpy().astype(np.float64)


LOW, HIGH = box()
FINITE = st.floats(allow_nan=False, allow_infinity=False)
HUGE = st.sampled_from([1e300, -1e300, np.finfo(np.float64).max, -np.finfo(np.float64).max, 3.4e38, 1e39])


@settings(max_examples=60, deadline=None)
@given(form=st.sampled_from(sorted(FORMS)),
       joint=arrays(np.float64, (N, A), elements=st.one_of(FINITE, HUGE)))
def test_finite_actions_of_any_size_are_clipped_in_every_adapter(form, joint):
    np.testing.assert_array_equal(first_rewards(form, joint), first_rewards(form, np.clip(joint, LOW, HIGH)))


@settings(max_examples=40, deadline=None)
@given(form=st.sampled_from(sorted(FORMS)), joint=arrays(np.float64, (N, A), elements=FINITE),
       bad=st.sampled_from([np.nan, np.inf, -np.inf]), index=st.tuples(st.integers(0, N - 1), st.integers(0, A - 1)))
def test_non_finite_actions_raise_in_every_adapter(form, joint, bad, index):
    joint = joint.copy()
    joint[index] = bad
    one_line_error(ValueError, "NaN or inf.*must be finite.*clipped", first_rewards, form, joint)


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_a_finite_1e300_action_is_clipped_in_float32_and_float64(name):
    for dtype in (torch.float32, torch.float64):
        scenario = envs.make_scenario(name, dtype=dtype, **small(name))
        state = scenario.reset(2, make_generator(0))
        wild = torch.full((2, scenario.n_agents, scenario.action_dim), 1e300, dtype=torch.float64)
        wild[:, 0] = -1e300
        expected = torch.where(wild > 0, scenario.action_high, scenario.action_low)
        torch.testing.assert_close(scenario.check_actions(wild), expected, rtol=0, atol=0)
        for values in (wild.numpy(), wild.tolist(), np.full(wild.shape, 10**400 // 10**100)):  # ints too
            assert torch.isfinite(scenario.check_actions(values)).all()
        scenario.step(state, wild, make_generator(1))


JOINT_FORMS = ("vector", "gym", "gym_vector", "shocked_vector")  # one array for all agents


@pytest.mark.parametrize("form, joint, match", [
    *[(form, np.zeros((N, A + 1)), "shape") for form in sorted(FORMS)],
    *[(form, np.zeros((N + 1, A)), "shape") for form in JOINT_FORMS],
    *[(form, np.zeros((N, A), dtype=complex), "real numbers") for form in sorted(FORMS)],
    *[(form, np.full((N, A), "0.5"), "real numbers") for form in sorted(FORMS)],
])
def test_wrong_shapes_and_non_numbers_raise_in_every_adapter(form, joint, match):
    one_line_error(ValueError, match, first_rewards, form, joint)


@pytest.mark.parametrize("actions", [[np.zeros(A)] * N, np.zeros((N, A)), "abc", None, 0.5])
def test_parallel_env_needs_a_dict_of_actions(actions):
    env = form_env("parallel")
    env.reset(seed=0)
    message = one_line_error(ValueError, r"actions must be a dict \{agent: action\}", env.step, actions)
    assert "agent_0" in message


@pytest.mark.parametrize("action", ["abc", None, {"x": 1}, [[0.1, 0.2], [0.3]], object()])
def test_non_numeric_actions_raise_clear_errors(action):
    env = form_env("parallel")
    env.reset(seed=0)
    one_line_error(ValueError, "action of agent_0 must be", env.step, {a: action for a in env.agents})
    vector = form_env("vector")
    vector.reset(seed=0)
    one_line_error(ValueError, "actions must be", vector.step, action)
    gym_env = form_env("gym")
    gym_env.reset(seed=0)
    one_line_error(ValueError, "action must be", gym_env.step, action)


# --------------------------------------------------------------------------------------------
# Seeds
# --------------------------------------------------------------------------------------------

BAD_SEEDS = st.one_of(
    st.booleans(), st.floats(), st.text(max_size=5), st.integers(max_value=-1), st.integers(min_value=2 ** 63),
    st.sampled_from([1.5, "7", 2 ** 64, np.float64(3.0), np.int64(-1), np.uint64(2 ** 63), [1], torch.tensor(3)]))


@settings(max_examples=60, deadline=None)
@given(form=st.sampled_from(sorted(FORMS)), seed=BAD_SEEDS)
def test_bad_seeds_are_refused_by_every_reset(form, seed):
    env = form_env(form)
    if form == "gym_vector" and isinstance(seed, list):
        seed = [seed]  # a list of seeds must have num_envs entries: the entry itself is bad
    one_line_error(ValueError, "seed " + SEED_RULE, env.reset, seed=seed)


def reset_obs(form, seed):
    """The first observation (of agent 0, in the agent-wise forms) after ``reset(seed=seed)``."""
    env = form_env(form)
    out = env.reset(seed=seed)
    if form == "aec":
        return env.observe("agent_0")
    out = out[0] if isinstance(out, tuple) else out
    return np.asarray(out["agent_0"] if isinstance(out, dict) else out)


@settings(max_examples=30, deadline=None)
@given(form=st.sampled_from(sorted(FORMS)), seed=st.one_of(st.integers(0, 2 ** 63 - 1), st.just(2 ** 63 - 1)))
def test_every_valid_seed_is_accepted_and_reproducible(form, seed):
    np.testing.assert_array_equal(reset_obs(form, seed), reset_obs(form, np.int64(seed)))


@pytest.mark.parametrize("seed", [1.5, "7", -1, 2 ** 64, True])
def test_bad_seeds_are_refused_by_constructors_and_generators(seed):
    vector = envs.TorchVectorEnv(NAME, num_envs=2, **KWARGS)
    for build in (lambda: envs.TorchVectorEnv(NAME, seed=seed, **KWARGS),
                  lambda: ShockedVectorEnv(vector, victim(vector.scenario), ShockConfig(), seed=seed),
                  lambda: ShockedParallelEnv(make_parallel_env(NAME, **KWARGS), victim(vector.scenario), ShockConfig(),
                                             seed=seed),
                  lambda: make_generator(seed)):
        one_line_error(ValueError, "seed " + SEED_RULE, build)


def test_vector_env_seed_lists_need_num_envs_valid_entries():
    env = JointVectorEnv(3, NAME, **KWARGS)
    np.testing.assert_array_equal(env.reset(seed=[5, 6, 7])[0], env.reset(seed=5)[0])
    one_line_error(ValueError, "num_envs=3 entries", env.reset, seed=[5])
    one_line_error(ValueError, "seed " + SEED_RULE, env.reset, seed=[5, "6", 7])


# --------------------------------------------------------------------------------------------
# Options, scenario keyword arguments, Gymnasium entry points, devices, memory
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["gym", "gym_vector"])
def test_gymnasium_reset_options_are_checked(form):
    env = form_env(form)
    env.reset(seed=0, options={})
    env.reset(seed=0, options=None)
    one_line_error(ValueError, r"unknown reset option\(s\) 'foo'; allowed: none", env.reset, seed=0, options={"foo": 1})
    one_line_error(ValueError, "options must be None or a dict, got 'abc'", env.reset, seed=0, options="abc")


@pytest.mark.parametrize("form", ["parallel", "aec", "shocked_parallel"])
def test_pettingzoo_reset_options_are_checked(form):
    env = form_env(form)
    one_line_error(ValueError, "options must be None or a dict", env.reset, seed=0, options=[("foo", 1)])
    with pytest.warns(UserWarning, match=r"unknown reset option\(s\) 'foo'.*ignored"):
        env.reset(seed=0, options={"foo": 1})


BAD_VALUES = ["abc", float("nan"), float("inf"), -(2 ** 70), 2 ** 70, [1]]


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_every_scenario_argument_names_itself_when_bad(name):
    cls = envs.SCENARIOS[name].config_cls
    defaults = cls()
    for field in config_fields(cls):
        for value in BAD_VALUES:
            try:
                envs.make_scenario(name, **{field: value})
            except ValueError as error:
                assert field in str(error) and "\n" not in str(error), (field, value, str(error))
            else:
                default = getattr(defaults, field)
                # a huge finite number is a valid value of an unbounded real argument
                assert value == 2 ** 70 and (default is None or isinstance(default, float)), (field, value)
    one_line_error(ValueError, "unknown argument.*'n_agentz'.*allowed: n_agents", envs.make_scenario, name,
                   n_agentz=2)
    one_line_error(ValueError, "device must be a torch device.*'gpu'", envs.make_scenario, name, device="gpu")
    one_line_error(ValueError, "dtype must be torch.float32 or torch.float64", envs.make_scenario, name,
                   dtype="float64")
    one_line_error(ValueError, "max_cycles must be a positive integer below 2\\*\\*63", make_parallel_env, name,
                   max_cycles=2 ** 70)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_an_unavailable_device_is_named():
    one_line_error(ValueError, "device 'cuda' is not available here", envs.make_scenario, NAME, device="cuda")


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_gymnasium_entry_points_raise_type_error_for_unknown_keywords(name):
    env_id = f"envs:{envs.GYM_IDS[name]}"
    message = one_line_error(TypeError, "got an unexpected keyword argument 'frameskip'; allowed: render_mode, "
                             "n_agents", gymnasium.make, env_id, frameskip=2)
    assert "horizon" in message
    one_line_error(TypeError, "got unexpected keyword arguments 'foo', 'frameskip'; allowed: num_envs, device, "
                   "render_mode, autoreset_mode, max_episode_steps, n_agents", gymnasium.make_vec, env_id,
                   num_envs=2, vectorization_mode="vector_entry_point", frameskip=2, foo=1)
    one_line_error(ValueError, "n_agents must be a positive integer, got 0", gymnasium.make, env_id, n_agents=0)
    one_line_error(ValueError, "unknown scenario 'traffic'", JointEnv, "traffic")
    one_line_error(ValueError, "unknown autoreset_mode 'disabled'", JointVectorEnv, 2, name,
                   autoreset_mode="disabled")
    one_line_error(ValueError, "unknown autoreset_mode", JointVectorEnv, 2, name,
                   autoreset_mode=AutoresetMode.DISABLED)


def test_make_vec_max_episode_steps_sets_the_episode_length():
    vec = gymnasium.make_vec(envs.GYM_IDS[NAME], num_envs=2, vectorization_mode="vector_entry_point",
                             max_episode_steps=3, **KWARGS)
    vec.reset(seed=0)
    assert [bool(vec.step(vec.action_space.sample())[3].all()) for _ in range(3)] == [False, False, True]
    one_line_error(ValueError, "max_episode_steps must be a positive integer, got 0", JointVectorEnv, 2, NAME,
                   max_episode_steps=0)


def test_an_allocation_failure_names_the_batch_size(monkeypatch):
    env = envs.TorchVectorEnv(NAME, num_envs=3, **KWARGS)

    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 12 GiB\nmore lines")

    monkeypatch.setattr(env.scenario, "reset", out_of_memory)
    one_line_error(ValueError, "num_envs=3 environments of commons .* do not fit in the memory of cpu", env.reset)


@pytest.mark.parametrize("argv, message", [
    (["--seed", "-3"], "--seed must be None or an integer in [0, 2**63), got -3"),
    (["--num-envs", "0"], "--num-envs must be a positive integer, got 0"),
    (["--set", "n_agents=1.5"], "n_agents must be a positive integer, got 1.5"),
    (["--device", "gpu"], "device must be a torch device such as 'cpu' or 'cuda', got 'gpu'"),
])
def test_the_describe_command_reports_bad_input_in_one_line(argv, message, capsys):
    from envs.__main__ import main

    assert main(["--scenario", NAME, "--preset", "small", *argv]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


# --------------------------------------------------------------------------------------------
# Shock victims and configs
# --------------------------------------------------------------------------------------------


def bad_victims(scenario):
    good = victim(scenario)
    return {
        "broadcastable": lambda obs: good(obs)[..., :1],
        "one more action": lambda obs: torch.cat([good(obs), good(obs)[..., :1]], -1),
        "agents dropped": lambda obs: good(obs)[..., 0, :],
        "numpy": lambda obs: good(obs).detach().numpy(),
    }


@pytest.mark.parametrize("objective", ["system", "action", "rollout", "random", "spike"])
def test_shock_victims_with_wrong_shapes_or_nan_are_refused(objective):
    vector = envs.TorchVectorEnv(NAME, num_envs=4, seed=0, **KWARGS)
    config = ShockConfig(eps=0.1, steps=2, objective=objective, horizon=2)
    for label, policy in bad_victims(vector.scenario).items():
        message = one_line_error(ValueError, r"the victim policy must map observations of shape \(4, 2, 9\) to a "
                                 r"tensor of shape \(4, 2, 2\)", ShockedVectorEnv(vector, policy, config).reset)
        assert "got" in message, label
    def nan_victim(obs):
        return victim(vector.scenario)(obs) * float("nan")

    one_line_error(ValueError, "the victim policy returned NaN or inf", ShockedVectorEnv(vector, nan_victim,
                                                                                         config).reset)
    parallel = ShockedParallelEnv(make_parallel_env(NAME, **KWARGS), nan_victim, config, seed=0)
    one_line_error(ValueError, "the victim policy returned NaN or inf", parallel.reset, seed=0)


def test_value_function_and_shock_config_are_checked():
    vector = envs.TorchVectorEnv(NAME, num_envs=4, seed=0, **KWARGS)
    policy = victim(vector.scenario)
    config = ShockConfig(objective="value", steps=2)
    one_line_error(ValueError, r"value_fn must map observations of shape \(4, 2, 9\) to a tensor of shape \(4, 2\)",
                   ShockedVectorEnv(vector, policy, config, value_fn=lambda obs: obs.sum(-1, keepdim=True)).reset)
    one_line_error(ValueError, "value_fn returned NaN or inf",
                   ShockedVectorEnv(vector, policy, config, value_fn=lambda obs: obs.sum(-1) / 0.0).reset)
    one_line_error(ValueError, "policy must be a callable", ShockedVectorEnv, vector, None, ShockConfig())
    one_line_error(ValueError, "value_fn must be a callable .* or None, got 3", ShockedVectorEnv, vector, policy,
                   ShockConfig(), value_fn=3)
    one_line_error(ValueError, "config must be a ShockConfig", ShockedVectorEnv, vector, policy, {"eps": 0.1})
    one_line_error(ValueError, "random_start must be True or False, got 'yes'", ShockConfig, random_start="yes")
    one_line_error(ValueError, "best_iterate must be True or False, got 1", ShockConfig, best_iterate=1)
    one_line_error(ValueError, "steps must be a positive integer, got 2.5", ShockConfig, steps=2.5)
    one_line_error(ValueError, "env must be an envs.TorchVectorEnv, got JointVectorEnv", ShockedVectorEnv,
                   JointVectorEnv(2, NAME, **KWARGS), policy, ShockConfig())
    one_line_error(ValueError, "env must be a scenario's ParallelEnv", ShockedParallelEnv, vector, policy,
                   ShockConfig())
    one_line_error(ValueError, "scenario must be a scenario name or an envs.Scenario, got int", envs.TorchVectorEnv,
                   3)


def test_largest_seed_works_in_the_shock_wrappers():
    shocked = form_env("shocked_vector")
    first = shocked.reset(seed=2 ** 63 - 1)
    torch.testing.assert_close(shocked.reset(seed=2 ** 63 - 1), first, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# Third-party wrappers on the native vector env
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_gymnasium_vector_observation_wrappers_run_on_every_scenario(name):
    from gymnasium.wrappers.vector import (
        DtypeObservation,
        FlattenObservation,
        NormalizeObservation,
        RecordEpisodeStatistics,
    )

    kwargs = small(name)
    horizon, num_envs = kwargs["horizon"], 3
    vec = gymnasium.make_vec(envs.GYM_IDS[name], num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)
    wrapped = RecordEpisodeStatistics(DtypeObservation(FlattenObservation(NormalizeObservation(vec)), np.float64))
    obs, _ = wrapped.reset(seed=0)
    wrapped.action_space.seed(0)
    assert obs.dtype == np.float64 and obs.shape == (num_envs, vec.single_observation_space.shape[0])
    returns = np.zeros(num_envs)
    for step in range(2 * horizon + 1):  # two episodes, each followed by the step that resets
        obs, rewards, terminated, truncated, info = wrapped.step(wrapped.action_space.sample())
        assert obs.dtype == np.float64 and np.isfinite(obs).all() and not terminated.any()
        returns += rewards
        if truncated.any():
            assert truncated.all() and step % (horizon + 1) == horizon - 1
            np.testing.assert_allclose(info["episode"]["r"], returns)
            np.testing.assert_array_equal(info["episode"]["l"], horizon)
            returns[:] = 0
    normalizer = wrapped.env.env.env
    assert normalizer.obs_rms.count > 2 * horizon * num_envs  # every observation went into the running mean
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        same_step = JointVectorEnv(num_envs, name, autoreset_mode="same_step", **kwargs)
    with pytest.raises(ValueError, match="NEXT_STEP"):  # Gymnasium's normalizer refuses same-step autoreset
        NormalizeObservation(same_step)


@pytest.fixture(scope="module")
def torchrl():
    return pytest.importorskip("torchrl")


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_torchrl_gym_env_and_pettingzoo_wrapper(torchrl, name):
    from torchrl.envs import GymEnv, GymWrapper, PettingZooWrapper
    from torchrl.envs.utils import check_env_specs

    kwargs = small(name)
    horizon = kwargs["horizon"]
    gym_env = GymEnv(f"envs:{envs.GYM_IDS[name]}", **kwargs)  # TorchRL passes frameskip= and expects TypeError
    check_env_specs(gym_env)
    assert gym_env.rollout(horizon + 2)["next", "truncated"].sum() == 1  # the rollout stops at the episode's end
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # TorchRL warns about PettingZoo versions it did not test
        pz_env = PettingZooWrapper(env=make_parallel_env(name, **kwargs))
    check_env_specs(pz_env)
    assert pz_env.rollout(3)["next", "agent", "reward"].shape == (3, kwargs["n_agents"], 1)
    vec_env = GymWrapper(JointVectorEnv(3, name, autoreset_mode="same_step", **kwargs))  # TorchRL needs SAME_STEP
    check_env_specs(vec_env)
    rollout = vec_env.rollout(horizon + 2, break_when_any_done=False)
    time_feature = rollout["next", "observation"][..., -1]
    assert rollout["next", "truncated"][:, horizon - 1].all() and (time_feature[:, horizon - 1] == 1).all()
    assert (rollout["observation"][:, horizon, ..., -1] == 0).all()  # a new episode starts after the horizon
