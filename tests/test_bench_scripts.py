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
