"""The benchmark scripts of the README's performance section run and print their tables (small sizes;
the figures themselves are measured by the commands in the README, never by tests)."""

from __future__ import annotations

import json
import pathlib
import re
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


def cell_rows(table: str, cell: str) -> list[list[str]]:
    """The fields of a Markdown table's rows that begin with ``cell``."""
    return [[field.strip() for field in line.split("|")[1:-1]] for line in table.splitlines()
            if line.startswith(f"| {cell} |")]


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
    rows = cell_rows(result.stdout, "routing-ppo-lam0-seed0")
    assert [row[1] for row in rows] == ["4", "16"]
    assert all(0 <= int(row[4]) <= int(row[3]) for row in rows)
    # the cell was made with 16 samples, steps crossing the clip left out of its bins: its own counts stand
    # beside the 16-sample row, with the non-monotone steps that do not cross the clip
    own = re.fullmatch(r"(\d+) of (\d+) \(16 samples, crossing the clip left out\)", rows[1][5])
    assert rows[0][5] == "" and own, rows
    cell_file = tmp_path / "cells" / "routing-ppo-lam0-seed0.json"
    saved = json.loads(cell_file.read_text())
    clip_steps = sum(row["steps_clip"] for row in saved["step_sizes"])
    assert int(own[1]) == int(rows[1][3]) - int(rows[1][4])
    assert 0 < int(rows[1][2]) - clip_steps <= int(own[2]) <= int(rows[1][2])
    for row in saved["step_sizes"]:  # as a cell made before the clip count: its own counts beside 4 samples
        del row["steps_clip"], row["nonmonotone_rate_clip"]
    cell_file.write_text(json.dumps(saved))
    result = run_script("bench/segment_sampling.py", str(tmp_path), "routing-ppo-lam0-seed0", "--points", "4", "16")
    rows = cell_rows(result.stdout, "routing-ppo-lam0-seed0")
    assert rows[0][5] == f"{own[1]} of {own[2]}" and rows[1][5] == "", rows


def test_segment_sampling_check_refuses_bad_values_in_one_line(tmp_path):
    result = run_script("bench/segment_sampling.py", str(tmp_path), "routing-ppo-lam0-seed0", "--points", "1")
    assert result.returncode == 2 and "--points 1: need at least 2 samples" in result.stderr
    result = run_script("bench/segment_sampling.py", str(tmp_path), "routing-ppo-lam0-seed0")
    assert result.returncode == 2 and "no run.json" in result.stderr
