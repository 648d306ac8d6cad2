"""The theory diagnostics against constructed cases with known answers: the segment curvature sampler
against finite differences, class expansion and the global norms on a linear policy with known
singular values, the participation ratio, the normaliser-clip crossings of segments on a policy with
known statistics, and the step-size sweep's bins, with the steps crossing the clip counted apart."""

import math

import pytest
import torch

import envs
from agents.policy import MultiAgentActorCritic
from regularizers.jvp import jvp_norms
from robustness.diagnostics import (class_expansion, evaluation_states, global_norms, in_float64,
                                    normaliser_clip_changes, participation_ratio, segment_curvatures, step_size_sweep,
                                    theory_diagnostics)


def test_segment_curvature_equals_a_finite_difference_second_derivative_along_the_segment():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(5, 4, 4, generator=generator, dtype=torch.float64)
    hessians = a + a.transpose(-1, -2)

    def objective(delta):  # (5, 4) -> (5,), a different non-quadratic function per sample
        return torch.sin(3 * delta).sum(-1) + 0.5 * torch.einsum("bi,bij,bj->b", delta, hessians, delta)

    deltas = torch.randn(3, 5, 4, generator=generator, dtype=torch.float64)  # 2 segments per sample
    deltas[2, 1] = deltas[1, 1]  # one zero-length segment
    curvature, lengths = segment_curvatures(objective, deltas, points=4)
    assert curvature.shape == (2, 4, 5) and lengths.shape == (2, 5)
    assert lengths[1, 1] == 0 and (curvature[1, :, 1] == 0).all()
    h = 1e-4
    for t in range(2):
        step = deltas[t + 1] - deltas[t]
        v = step / step.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        for k, s in enumerate((0.0, 1 / 3, 2 / 3, 1.0)):
            point = deltas[t] + s * step
            fd = (objective(point + h * v) - 2 * objective(point) + objective(point - h * v)) / h ** 2
            moved = lengths[t] > 0
            torch.testing.assert_close(curvature[t, k][moved], fd[moved], rtol=1e-5, atol=1e-5)


class LinearPolicy:
    """``deterministic_action(x) = x W`` for every agent: ``J = W^T``, with known singular values."""

    def __init__(self, weights):
        self.weights = weights

    def deterministic_action(self, obs):
        return obs @ self.weights


def test_class_expansion_and_global_norms_on_a_policy_with_known_singular_structure():
    weights = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0], [10.0, 0.0]], dtype=torch.float64)  # (D=4, A=2)
    policy = LinearPolicy(weights)
    mask = torch.tensor([True, True, True, False])  # the attacker moves the first three features
    obs = torch.randn(4, 1, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # 4 states, N = 1
    shock_norm = global_norms(policy, obs, mask, iterations=50, seed=0)
    all_norm = global_norms(policy, obs, None, iterations=50, seed=0)
    torch.testing.assert_close(shock_norm, torch.full((4, 1), 3.0, dtype=torch.float64))  # sigma_max of J P
    torch.testing.assert_close(all_norm, torch.full((4, 1), math.sqrt(109.0), dtype=torch.float64))
    root = 1 / math.sqrt(2)
    directions = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [root, root, 0, 0]],
                              dtype=torch.float64).reshape(1, 4, 1, 4)  # ||J u|| = 3, 1, 0, sqrt(5)
    directional = jvp_norms(policy.deterministic_action, obs.unsqueeze(0), directions).amax(0)
    fractions = class_expansion(directional, shock_norm, gammas=(0.5, 1.5, 2.5, 3.5))
    assert fractions == pytest.approx({"frac_directional_only@0.5": 0.25, "frac_directional_only@1.5": 0.5,
                                       "frac_directional_only@2.5": 0.75, "frac_directional_only@3.5": 0.0})


def test_participation_ratio_counts_the_directions_effective_dimension():
    line = torch.tensor([[1.0, 2.0, 0.0]]).repeat(10, 1)
    assert participation_ratio(torch.cat([line, -line])) == pytest.approx(1.0)
    assert participation_ratio(torch.eye(5)) == pytest.approx(5.0)
    two = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 0]])  # zero rows are left out
    assert participation_ratio(two) == pytest.approx(2.0)


def test_normaliser_clip_changes_sees_a_segment_cross_each_agents_clip():
    policy = MultiAgentActorCritic(2, 2, torch.zeros(1), torch.ones(1)).double()
    policy.obs_norm.mean[1] = 10.0  # agent 0: mean 0, std 1, clip at |x| = 10; agent 1: mean 10, std 2, at |x - 10| = 20
    policy.obs_norm.var[1] = 4.0
    obs = torch.tensor([[[9.95, 0.0], [29.9, 0.0]], [[0.0, 0.0], [10.0, 0.0]]], dtype=torch.float64)  # (M=2, N=2, D=2)
    deltas = torch.zeros(3, 2, 2, 2, dtype=torch.float64)
    deltas[1, :, :, 0] = 0.2   # step 0: state 0 crosses both agents' clips (z 9.95 -> 10.15, 10.05); state 1 inside
    deltas[2, :, :, 0] = -0.2  # step 1: state 0 crosses back
    crossing = [[[True, True], [False, False]], [[True, True], [False, False]]]
    assert normaliser_clip_changes(policy, obs, deltas, points=4).tolist() == crossing
    through = torch.zeros(2, 1, 2, 2, dtype=torch.float64)  # agent 0 from z = -10.5 to 10.5, clipped at both ends
    through[0, ..., 0], through[1, ..., 0] = -10.5, 10.5
    assert normaliser_clip_changes(policy, obs[1:], through, points=2).tolist() == [[[False, False]]]  # ends only
    assert normaliser_clip_changes(policy, obs[1:], through, points=4).tolist() == [[[True, False]]]
    policy.normalise_obs = False
    assert normaliser_clip_changes(policy, obs, deltas, points=4).tolist() == [[[False] * 2] * 2] * 2


def tiny_run(seed=0):
    scenario = envs.make_scenario("routing", **envs.SCENARIOS["routing"].presets["small"])
    torch.manual_seed(seed)
    policy = MultiAgentActorCritic(scenario.n_agents, scenario.obs_dim, scenario.action_low.float(),
                                   scenario.action_high.float(), hidden=(16,))
    for parameter in policy.actor.parameters():  # sensitive enough that PGA moves the loss
        parameter.data.normal_(0, 0.8, generator=torch.Generator().manual_seed(seed))
    batch = evaluation_states(scenario, policy, episodes=4, max_states=24, seed=seed)
    return in_float64(scenario, policy, batch)


def test_theory_diagnostics_report_both_global_norms_and_the_common_gammas():
    scenario, policy, batch = tiny_run()
    assert scenario.dtype == torch.float64 and batch.obs.dtype == torch.float64
    result = theory_diagnostics(scenario, policy, batch, eps=0.2, steps=4, gammas=(0.1, 1.0))
    assert result["global_norm_mean"] <= result["global_norm_all_mean"] * (1 + 1e-6)  # P restricts J
    assert set(key for key in result if key.startswith("frac_")) == {"frac_directional_only@0.1",
                                                                     "frac_directional_only@1"}
    assert 1.0 <= result["direction_participation_ratio"] <= result["shock_dim"] + 1e-9
    assert result["segment_points"] == 16  # recorded with the results: older cells (4 samples) lack it
    assert result["curvature_min"] <= result["curvature_max"] and result["l_eff_max"] >= result["l_eff_median"] >= 0
    assert result["moving_steps"] > 0 and 0 <= result["nonmonotone_rate"] <= 1


def test_step_size_sweep_bins_every_moving_step_and_small_steps_ascend():
    scenario, policy, batch = tiny_run(1)
    l_eff = theory_diagnostics(scenario, policy, batch, eps=0.2, steps=4)["l_eff_median"]
    rows = step_size_sweep(scenario, policy, batch, eps=0.2, steps=4, l_eff=l_eff, factors=(0.25, 8.0))
    assert [row["eta_factor"] for row in rows] == [0.25, 8.0]
    for row in rows:
        assert row["eta"] == pytest.approx(row["eta_factor"] / l_eff)
        assert_steps_add_up(row)
        for name in ("0_1", "1_2"):  # the descent lemma: eta * L_seg <= 2 ascends
            assert row[f"steps_etaL_{name}"] == 0 or row[f"nonmonotone_rate_etaL_{name}"] == 0.0
    assert step_size_sweep(scenario, policy, batch, eps=0.2, steps=4, l_eff=0.0) == []


def assert_steps_add_up(row):
    """Every moving step is in one bin of eta * L_seg or among those crossing the clip, and so is every
    non-monotone one."""
    parts = ("_etaL_0_1", "_etaL_1_2", "_etaL_2_inf", "_clip")
    assert sum(row[f"steps{part}"] for part in parts) == row["steps"]

    def bad(part):
        return round(row[f"steps{part}"] * row[f"nonmonotone_rate{part}"]) if row[f"steps{part}"] else 0

    assert sum(bad(part) for part in parts) == bad("")


def test_step_size_sweep_counts_the_steps_crossing_the_normalisers_clip_apart_from_the_bins():
    scenario, policy, batch = tiny_run(1)
    policy.obs_norm.mean.copy_(batch.obs.median(0).values)  # std 0.01: a shock of 0.2 spans 20 in z, so
    policy.obs_norm.var.fill_(0.01 ** 2)                     # segments near the median cross the clip
    (row,) = step_size_sweep(scenario, policy, batch, eps=0.2, steps=4, l_eff=4e4, factors=(8.0,))
    assert_steps_add_up(row)
    assert 0 < row["steps_clip"] < row["steps"] and row["nonmonotone_rate_clip"] > 0  # a kink lowers g
    for name in ("0_1", "1_2"):  # outside the kink, the theorem holds
        assert row[f"steps_etaL_{name}"] > 0 and row[f"nonmonotone_rate_etaL_{name}"] == 0.0
    policy.normalise_obs = False
    (row,) = step_size_sweep(scenario, policy, batch, eps=0.2, steps=4, l_eff=4e4, factors=(8.0,))
    assert row["steps_clip"] == 0 and math.isnan(row["nonmonotone_rate_clip"])
    assert_steps_add_up(row)
