"""The ``rollout`` attack objective: gradients vs central finite differences (float64) through H steps of
every scenario's dynamics, H = 1 is the system objective, clairvoyant draws equal to the environment's,
the window cut at the episode's end, and the scenarios' ``step`` differentiable where the dynamics are."""

import pytest
import torch

import envs
from envs.rollout_attack import rollout_objective
from envs.shocks import pga, system_objective

F64 = torch.float64
NAMES = sorted(envs.SCENARIOS)
MODES = ("shared", "per_agent")
BATCH = 3
WARMUP = 3  # steps played before the attack: t = 3 of the small presets' horizon 8, 5 steps left
# next-state entries that depend on the joint action (the rest is drawn or counted)
ACTION_DEPENDENT = {"commons": {"stock", "last_effort"}, "routing": {"last_split", "last_share", "last_latency"},
                    "compute": {"queue", "retries"}}


def linear_sigmoid_policy(scenario, seed: int = 0):
    """The seeded victim of bench/shocks.py, in float64: in-box, smooth, agent i sees its own observation."""
    weights = torch.randn(scenario.obs_dim, scenario.action_dim, generator=torch.Generator().manual_seed(seed),
                          dtype=F64) / scenario.obs_dim ** 0.5
    low, high = scenario.action_low, scenario.action_high
    return lambda obs: low + (high - low) * torch.sigmoid(2.0 * (obs @ weights))


def setup(name: str, seed: int = 0):
    """Scenario (small preset, float64), victim, state after ``WARMUP`` steps, its observations, the generator."""
    scenario = envs.make_scenario(name, dtype=F64, **envs.SCENARIOS[name].presets["small"])
    policy = linear_sigmoid_policy(scenario)
    generator = envs.make_generator(seed)
    state = scenario.reset(BATCH, generator)
    for _ in range(WARMUP):
        state = scenario.step(state, policy(scenario.observe(state)), generator).state
    return scenario, policy, state, scenario.observe(state), generator


def delta_shape(scenario, mode: str) -> tuple[int, ...]:
    return (BATCH, scenario.obs_dim) if mode == "shared" else (BATCH, scenario.n_agents, scenario.obs_dim)


def random_delta(scenario, mode: str, seed: int = 1, scale: float = 0.1) -> torch.Tensor:
    return scale * torch.randn(delta_shape(scenario, mode), generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("horizon", [1, 4])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_gradient_matches_central_finite_differences(name, mode, horizon):
    scenario, policy, state, obs, generator = setup(name)
    objective = rollout_objective(scenario, state, obs, policy, mode, horizon, generator)
    delta = random_delta(scenario, mode).requires_grad_(True)
    assert torch.autograd.gradcheck(objective, (delta,), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_one_step_is_the_system_objective(name, mode):
    scenario, policy, state, obs, generator = setup(name)
    delta = random_delta(scenario, mode)
    one_step = rollout_objective(scenario, state, obs, policy, mode, 1, generator)(delta)
    # per agent, system_objective uses the scenario's unilateral_system_loss (aggregates, not N copies of the
    # state), so the two agree to float64 rounding
    torch.testing.assert_close(one_step, system_objective(scenario, state, obs, policy, mode)(delta),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_deterministic_and_the_generator_is_not_advanced(name, mode):
    scenario, policy, state, obs, generator = setup(name)
    before = generator.get_state()
    objective = rollout_objective(scenario, state, obs, policy, mode, 4, generator)
    delta = random_delta(scenario, mode)
    first, second = objective(delta), objective(delta)
    assert torch.equal(first, second)
    assert torch.equal(generator.get_state(), before)
    scenario.step(state, policy(obs), generator)  # a real step does advance it
    assert not torch.equal(generator.get_state(), before)


@pytest.mark.parametrize("name", NAMES)
def test_unshocked_window_is_the_real_future_in_both_modes(name):
    """g(0) is the loss the environment will really record over the next H steps (clairvoyance), and
    every per-agent copy draws what its environment draws, so g_i(0) = g(0) for every agent i."""
    scenario, policy, state, obs, generator = setup(name)
    horizon = 4
    shared = rollout_objective(scenario, state, obs, policy, "shared", horizon, generator)(
        torch.zeros(delta_shape(scenario, "shared"), dtype=F64))
    per_agent = rollout_objective(scenario, state, obs, policy, "per_agent", horizon, generator)(
        torch.zeros(delta_shape(scenario, "per_agent"), dtype=F64))
    real, current = torch.zeros(BATCH, dtype=F64), state
    for _ in range(horizon):
        result = scenario.step(current, policy(scenario.observe(current)), generator)
        real, current = real + result.system_loss, result.state
    torch.testing.assert_close(shared, real, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(per_agent, shared.unsqueeze(-1).expand(-1, scenario.n_agents), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_window_stops_at_the_episode_end(name):
    scenario, policy, state, obs, generator = setup(name)
    left = torch.tensor([1, 2, 3])  # steps left in each environment, this one included
    state = {**state, "t": scenario.horizon - left}
    obs = scenario.observe(state)
    for mode in MODES:
        delta = random_delta(scenario, mode)
        values = {h: rollout_objective(scenario, state, obs, policy, mode, h, generator)(delta) for h in (1, 2, 3, 5)}
        assert torch.equal(values[5], values[3])
        for b in range(BATCH):
            assert torch.equal(values[5][b], values[int(left[b])][b])
        assert not torch.equal(values[2][2], values[3][2])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_window_is_not_silently_one_step(name, mode):
    """The later steps depend on the shock through the dynamics: the H-step gradient is not the one-step one."""
    scenario, policy, state, obs, generator = setup(name)
    delta = random_delta(scenario, mode).requires_grad_(True)
    gradients = {}
    for horizon in (1, 4):
        value = rollout_objective(scenario, state, obs, policy, mode, horizon, generator)(delta)
        (gradients[horizon],) = torch.autograd.grad(value.sum(), delta)
    future = (gradients[4] - gradients[1]).norm(dim=-1)
    assert (future > 1e-3 * gradients[1].norm(dim=-1)).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_pga_raises_the_rollout_loss(name, mode):
    scenario, policy, state, obs, generator = setup(name)
    objective = rollout_objective(scenario, state, obs, policy, mode, 5, generator)
    trajectory = pga(objective, delta_shape(scenario, mode), 0.2, "l2", 10, mask=scenario.shock_mask, dtype=F64)
    gain = trajectory.values[-1] - trajectory.values[0]
    assert (gain > 0).all()
    torch.testing.assert_close(trajectory.values[0], objective(torch.zeros_like(trajectory.deltas[0])))
    torch.testing.assert_close(trajectory.values[-1], objective(trajectory.deltas[-1]))


@pytest.mark.parametrize("name", NAMES)
def test_step_is_differentiable_in_actions_and_state(name):
    """``step`` (and so ``transition``) against central finite differences, with respect to the actions and
    every floating state entry; the next state keeps the graph of exactly the action-dependent entries."""
    scenario, policy, state, obs, _ = setup(name)
    actions = policy(obs)
    keys = sorted(key for key, value in state.items() if value.is_floating_point())

    def step(actions, *values):
        result = scenario.step({**state, **dict(zip(keys, values))}, actions, envs.make_generator(7))
        floating = [value for value in result.state.values() if value.requires_grad]
        return (result.rewards, result.system_loss, *floating)

    nxt = scenario.step(state, actions.clone().requires_grad_(True), envs.make_generator(7)).state
    assert {key for key, value in nxt.items() if value.requires_grad} == ACTION_DEPENDENT[name]
    inputs = [actions.clone().requires_grad_(True)] + [state[key].clone().requires_grad_(True) for key in keys]
    assert torch.autograd.gradcheck(step, tuple(inputs), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_bad_arguments_are_errors():
    scenario, policy, state, obs, generator = setup("commons")
    with pytest.raises(ValueError, match="mode"):
        rollout_objective(scenario, state, obs, policy, "everyone", 3, generator)
    with pytest.raises(ValueError, match="horizon"):
        rollout_objective(scenario, state, obs, policy, "shared", 0, generator)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_copies_are_the_objective_of_each_copys_own_delta(name, mode):
    """The objective over 3 environment-major copies (PGD's runs in one batch) at 3 different deltas per
    environment is, copy by copy, the one-copy objective at that delta: every copy draws its environment's
    numbers, so the clairvoyant window stays the environment's real future."""
    from envs.shocks import repeat_batch

    scenario, policy, state, obs, generator = setup(name)
    deltas = [random_delta(scenario, mode, seed=seed) for seed in (1, 2, 3)]
    single = rollout_objective(scenario, state, obs, policy, mode, 4, generator)
    copied = rollout_objective(scenario, state, obs, policy, mode, 4, generator, copies=3)
    stacked = torch.stack(deltas, dim=1).reshape(BATCH * 3, *deltas[0].shape[1:])  # row b * 3 + r: copy r of b
    values = copied(stacked).view(BATCH, 3, *([scenario.n_agents] if mode == "per_agent" else []))
    for r, delta in enumerate(deltas):
        torch.testing.assert_close(values[:, r], single(delta), rtol=1e-12, atol=1e-12)
    assert torch.equal(repeat_batch(obs, 3)[3:6], obs[1:2].expand(3, *obs.shape[1:]))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_compute_shock_batches_pgds_runs_without_changing_the_shock(name, mode, monkeypatch):
    """Every evaluation objective through compute_shock: the batched runs (copies of the episodes, copy r of
    environment b at row b * copies + r) give the shocks and infos of the run-by-run attack; a layout that
    mixed the copies up would pair deltas with the wrong environments' states and fail here."""
    import envs.shock_wrapper as shock_wrapper
    from envs.shock_wrapper import ShockConfig, compute_shock
    from envs.shocks import pgd_attack, random_search

    scenario, policy, state, obs, generator = setup(name)
    weights = torch.randn(scenario.obs_dim, generator=torch.Generator().manual_seed(11), dtype=F64)

    def value_fn(x):
        return torch.tanh(x @ weights) + 0.1 * (x ** 2).sum(-1)

    def sequential_pgd(objective_of, *args, **kwargs):
        return pgd_attack(objective_of(1), *args, **kwargs)

    def sequential_search(*args, objective_of=None):
        return random_search(*args)

    for objective in ("system", "value", "action", "rollout", "random_search"):
        config = ShockConfig(eps=0.3, steps=4, objective=objective, mode=mode, rule="normalized", best_iterate=True,
                             restarts=2, candidates=8, horizon=3)
        shocks = []
        for sequential in (False, True):
            if sequential:
                monkeypatch.setattr(shock_wrapper, "batched_pgd_attack", sequential_pgd)
                monkeypatch.setattr(shock_wrapper, "random_search", sequential_search)
            shocks.append(compute_shock(scenario, state, obs, policy, config, envs.make_generator(123), value_fn,
                                        env_generator=generator))
        monkeypatch.undo()
        (batched, batched_info), (run_by_run, run_info) = shocks
        torch.testing.assert_close(batched, run_by_run, rtol=1e-9, atol=1e-12)
        assert batched_info.keys() == run_info.keys()
        for key in run_info:
            torch.testing.assert_close(batched_info[key].double(), run_info[key].double(), rtol=1e-9, atol=1e-12)
        assert float(batched_info["shock/budget_use"].max()) > 0.5  # the attack moved: the comparison has content


@pytest.mark.parametrize("objective", ["system", "rollout"])
def test_compute_shock_builds_each_objective_once(objective, monkeypatch):
    """Building an objective costs a nominal policy pass (and, for ``rollout``, a copy of the generator's
    state): a zero-start batched PGD builds only its copies' objective, and random search reuses the
    single-copy one it builds for its candidates' comparison and the gain."""
    import envs.shock_wrapper as shock_wrapper
    from envs.shock_wrapper import ShockConfig, compute_shock

    scenario, policy, state, obs, generator = setup("routing")
    built = []
    for name in ("system_objective", "rollout_objective"):
        original = getattr(shock_wrapper, name)

        def counting(*args, _original=original, _name=name, **kwargs):
            built.append((_name, len(args[2])))  # which objective, over how many rows of observations
            return _original(*args, **kwargs)
        monkeypatch.setattr(shock_wrapper, name, counting)
    for attack, expected in ((objective, 1), ("random_search", 3)):
        built.clear()
        config = ShockConfig(eps=0.3, steps=2, objective=attack, mode="shared", rule="normalized", best_iterate=True,
                             restarts=2, candidates=4, horizon=2)
        compute_shock(scenario, state, obs, policy, config, envs.make_generator(1), env_generator=generator)
        assert len(built) == expected, (attack, built)
