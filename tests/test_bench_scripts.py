"""The benchmark scripts of the README's performance section run and print their tables (small sizes;
the figures themselves are measured by the commands in the README, never by tests)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_population_benchmark_prints_one_row_per_method_and_size():
    result = run_script("bench/population.py", "--size", "small", "--members", "1", "2", "--iterations", "1",
                        "--rounds", "1", "--methods", "ppo", "jacobian")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ppo |") or line.startswith("| jacobian |")]
    assert len(rows) == 4 and all(float(row.split("|")[-2]) > 0 for row in rows)


def test_population_benchmark_refuses_bad_values_in_one_line():
    result = run_script("bench/population.py", "--members", "0")
    assert result.returncode == 2 and "--members must be positive" in result.stderr


def test_environment_throughput_benchmark_prints_every_scenario():
    result = run_script("bench/env_throughput.py", "--num-envs", "32", "--steps", "3", "--rounds", "1",
                        "--pettingzoo-steps", "5")
    assert result.returncode == 0, result.stderr
    for name in ("commons", "routing", "compute"):
        assert any(line.startswith(f"| {name} |") for line in result.stdout.splitlines()), result.stdout


def test_batched_attack_benchmark_prints_a_row_per_attack_with_equal_returns():
    result = run_script("bench/batched_attacks.py", "--scenarios", "compute", "--attacks", "system", "rollout",
                        "--episodes", "4", "--steps", "2", "--rounds", "1")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| compute |")]
    assert len(rows) == 2 and all(row.rstrip().endswith("| yes |") for row in rows), result.stdout


def test_signature_cache_benchmark_prints_three_computations_with_equal_outputs():
    result = run_script("bench/function_apply.py", "--scenario", "routing", "--size", "small", "--rounds", "2",
                        "--calls", "1")
    assert result.returncode == 0, result.stderr  # 1 if the outputs with and without the cache differ
    rows = [line.split("|") for line in result.stdout.splitlines() if line.startswith("| routing |")]
    assert [row[2].strip() for row in rows] == ["attack step", "penalty", "ppo loss"], result.stdout
    assert all(float(row[-2].strip().rstrip("x")) > 0 for row in rows)


def test_segment_sampling_check_redoes_the_cells_own_step_counts(tmp_path):
    from robustness.evaluate import AttackGrid
    from robustness.runner import BenchmarkConfig, run_grid

    config = BenchmarkConfig(
        scenarios=("routing",), methods=("ppo",), seeds=(0,), size="small",
        overrides=("total_agent_steps=480", "env.horizon=5", "ppo.num_envs=8", "ppo.rollout_steps=5", "eval_envs=4"),
        attack=AttackGrid(attacks=("random",), modes=("shared",), eps=(0.0, 0.2), episodes=4),
        diag_states=8, diag_steps=3)
    run_grid(config, tmp_path, command="pytest")
    result = run_script("bench/segment_sampling.py", str(tmp_path), "routing-ppo-lam0-seed0", "--points", "4", "16")
    assert result.returncode == 0, result.stderr
    rows = [[field.strip() for field in line.split("|")[1:-1]] for line in result.stdout.splitlines()
            if line.startswith("| routing-ppo-lam0-seed0 |")]
    assert [row[1] for row in rows] == ["4", "16"]
    assert rows[0][5] == f"{rows[0][3]} of {rows[0][2]}" and int(rows[0][2]) > 0  # 4 samples: the cell's counts
    assert all(0 <= int(row[4]) <= int(row[3]) for row in rows)


def test_segment_sampling_check_refuses_bad_values_in_one_line(tmp_path):
    result = run_script("bench/segment_sampling.py", str(tmp_path), "routing-ppo-lam0-seed0", "--points", "1")
    assert result.returncode == 2 and "--points 1: need at least 2 samples" in result.stderr
    result = run_script("bench/segment_sampling.py", str(tmp_path), "routing-ppo-lam0-seed0")
    assert result.returncode == 2 and "no run.json" in result.stderr


def test_segment_sampling_sees_a_segment_cross_the_normalisers_clip():
    import importlib.util

    import torch

    from agents.policy import MultiAgentActorCritic

    spec = importlib.util.spec_from_file_location("segment_sampling", ROOT / "bench" / "segment_sampling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    policy = MultiAgentActorCritic(1, 2, torch.zeros(1), torch.ones(1)).double()  # mean 0, var 1: clip at |x| = 10
    obs = torch.tensor([[[9.95, 0.0]], [[0.0, 0.0]]], dtype=torch.float64)  # (M = 2, N = 1, D = 2)
    deltas = torch.zeros(3, 2, 1, 2, dtype=torch.float64)
    deltas[1, :, :, 0] = 0.1   # step 0: state 0 crosses 10 (its end is clipped), state 1 stays inside
    deltas[2, :, :, 0] = -0.1  # step 1: state 0 crosses back; both ends of state 1's segment inside
    assert module.clip_changes(policy, obs, deltas, points=4).tolist() == [[[True], [False]], [[True], [False]]]
    policy.normalise_obs = False
    assert not module.clip_changes(policy, obs, deltas, points=4).any()
