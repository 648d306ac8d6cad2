"""The benchmark grid: cells, resumability after a kill, Ray = local, evaluation rows, diagnostics, report."""

import csv
import dataclasses
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from agents.code_version import code_version
from agents.config import ConfigError
from robustness.evaluate import AttackGrid
from robustness.report import write_report
from robustness.runner import BenchmarkConfig, cell_config, cell_overrides, grid_cells, parse_sweep, run_grid

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = BenchmarkConfig(
    scenarios=("routing",), methods=("ppo", "aajr", "adv"), seeds=(0,), size="small",
    overrides=("total_agent_steps=480", "env.horizon=5", "ppo.num_envs=8", "ppo.rollout_steps=5", "eval_envs=4",
               "reg.steps=2", "checkpoint_every=1"),
    attack=AttackGrid(attacks=("random", "system", "random_search", "rollout", "learned"), modes=("shared",),
                      eps=(0.0, 0.2), steps=2, episodes=4, restarts=1, candidates=2, horizon=2, learned_steps=256),
    diag_states=8, diag_steps=2)


def results_of(results_dir: pathlib.Path) -> dict:
    return {path.name: json.loads(path.read_text()) for path in sorted((results_dir / "cells").glob("*.json"))}


def test_grid_has_one_cell_per_penalty_lambda_and_refuses_bad_names():
    config = BenchmarkConfig(scenarios=("routing",), methods=("ppo", "aajr"), seeds=(0, 1), reg_coefs=(0.1, 1.0))
    names = [cell.name for cell in grid_cells(config)]
    assert names == ["routing-ppo-lam0-seed0", "routing-aajr-lam0.1-seed0", "routing-aajr-lam1-seed0",
                     "routing-ppo-lam0-seed1", "routing-aajr-lam0.1-seed1", "routing-aajr-lam1-seed1"]  # seed-major
    with pytest.raises(ConfigError, match="unknown method 'magic'"):
        BenchmarkConfig(methods=("magic",))
    with pytest.raises(ConfigError, match="unknown scenario 'traffic'"):
        BenchmarkConfig(scenarios=("traffic",))


def test_sweeps_give_each_method_its_own_lambdas_and_hinge_budgets():
    config = BenchmarkConfig(scenarios=("routing",), methods=("ppo", "aajr", "spectral", "specnorm"), seeds=(0,),
                             reg_coefs=(1.0,), reg_budgets=(0.1, 0.3),
                             sweeps=(parse_sweep("spectral:reg_coefs=2,5"), parse_sweep("aajr:reg_budgets=0.2")))
    cells = grid_cells(config)
    assert [cell.name for cell in cells] == [
        "routing-ppo-lam0-seed0", "routing-aajr-lam1-gam0.2-seed0", "routing-spectral-lam2-gam0.1-seed0",
        "routing-spectral-lam2-gam0.3-seed0", "routing-spectral-lam5-gam0.1-seed0", "routing-spectral-lam5-gam0.3-seed0",
        "routing-specnorm-lam0-seed0"]  # specnorm: an architecture, no penalty to weigh or budget
    assert cell_overrides(cells[1], config)[-2:] == ["reg_coef=1.0", "reg.budget=0.2"]
    assert cell_config(cells[1], config).reg.budget == 0.2
    for text, message in (("aajr:reg_budget=0.1", "unknown sweep field 'reg_budget'"),
                          ("ppo:reg_coefs=1", "unknown sweep method 'ppo'"),
                          ("specnorm:reg_budgets=0.1", "unknown sweep method .specnorm.; allowed: .aajr."),
                          ("aajr:reg_coefs=1,x", "could not convert"), ("aajr:reg_coefs=-1", "must lie in")):
        with pytest.raises(ConfigError, match=message):
            parse_sweep(text)


def test_method_settings_reach_the_methods_that_have_them_and_a_bad_grid_writes_nothing(tmp_path):
    config = BenchmarkConfig(scenarios=("routing",), methods=("ppo", "aajr", "jacobian", "adv"), seeds=(0,),
                             overrides=("reg.steps=2", "reg.directions=4", "shock.eps=0.2", "ppo.num_envs=8"))
    extra = {cell.method: cell_overrides(cell, config)[4:] for cell in grid_cells(config)}
    assert extra == {"ppo": ["ppo.num_envs=8"], "aajr": ["reg.steps=2", "ppo.num_envs=8", "reg_coef=0.1"],
                     "jacobian": ["reg.directions=4", "ppo.num_envs=8", "reg_coef=0.1"],
                     "adv": ["shock.eps=0.2", "ppo.num_envs=8"]}
    unused = dataclasses.replace(config, methods=("ppo", "adv"), overrides=("reg.steps=2",))
    with pytest.raises(ConfigError, match="override 'reg.steps=2' applies to none of the methods ppo, adv"):
        run_grid(unused, tmp_path / "a")
    typo = dataclasses.replace(config, overrides=("ppo.num_env=8",))
    with pytest.raises(ConfigError, match="cell routing-ppo-lam0-seed0: unknown key.s. ppo.num_env"):
        run_grid(typo, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_grid_results_hold_the_nominal_row_at_eps_zero_and_refuse_another_grid(tmp_path):
    run_grid(TINY, tmp_path, command="pytest")
    results = results_of(tmp_path)
    assert len(results) == 3
    for result in results.values():
        rows = result["evaluations"]
        nominal = next(row for row in rows if row["attack"] == "none")
        for row in rows:
            if row["eps"] == 0.0:
                assert row["return_per_agent"] == nominal["return_per_agent"]
        system = next(row for row in rows if row["attack"] == "system" and row["eps"] == 0.2)
        assert system["system_loss"] > nominal["system_loss"]  # the PGA attack hurts
        assert system["budget_use"] > 0.9 and nominal["budget_use"] == 0.0  # normalized steps fill the ball
        attacked = [row for row in rows if row["eps"] == 0.2 and row["attack"] != "worst"]
        worst = next(row for row in rows if row["attack"] == "worst" and row["eps"] == 0.2)
        lowest = min(attacked, key=lambda row: row["return_per_agent"])
        assert worst["worst_attack"] == lowest["attack"] and worst["return_per_agent"] == lowest["return_per_agent"]
        learned = next(row for row in rows if row["attack"] == "learned" and row["eps"] == 0.2)
        assert 0 < learned["budget_use"] <= 1 + 1e-6
        cell = result["cell"]
        run_dir = tmp_path / "runs" / f"routing-{cell['method']}-lam{cell['reg_coef']:g}-seed0"
        assert (run_dir / "adversaries" / "shared-l2-eps0.2.pt").is_file()  # saved beside the victim, reused
        assert result["diagnostics"]["eval_states"] == 8
        assert result["diagnostics"]["jvp_norm_mean"] > 0
        assert result["code"] == code_version()
        assert json.loads((run_dir / "summary.json").read_text())["code"] == code_version()
    lines = (tmp_path / "evaluations.csv").read_text().splitlines()
    assert len(lines) == 1 + 3 * 13  # header + 3 cells x (none + 5 attacks x 2 eps + worst x 2 eps)
    assert json.loads((tmp_path / "run.json").read_text())["command"] == "pytest"
    paths = write_report(tmp_path, reps=200)
    assert (tmp_path / "report" / "index.md") in paths and all(path.exists() for path in paths)
    index = (tmp_path / "report" / "index.md").read_text()
    assert f"Code: 3 cell(s) made with `{code_version()}`." in index and "Learning curves: drawn" not in index
    (tmp_path / "runs" / "routing-adv-lam0-seed0" / "metrics.csv").unlink()  # e.g. cells copied without runs/
    write_report(tmp_path, reps=200)
    assert "Learning curves: drawn from 2 of the 3 cells" in (tmp_path / "report" / "index.md").read_text()
    with (tmp_path / "report" / "robustness.csv").open() as f:
        table = [row for row in csv.DictReader(f) if row["quantity"] == "return_per_agent"]
    for row in table:  # one seed: the IQM is the value, its CI the point, and eps 0 the nominal return
        assert float(row["ci_low"]) <= float(row["iqm"]) <= float(row["ci_high"])
        if float(row["eps"]) == 0.0:
            cell = results[f"routing-{row['method']}-lam{float(row['reg_coef']):g}-seed0.json"]
            nominal = next(r for r in cell["evaluations"] if r["attack"] == "none")["return_per_agent"]
            assert float(row["iqm"]) == pytest.approx(nominal, rel=1e-6)
    with pytest.raises(ConfigError, match="holds the results of another grid"):
        run_grid(BenchmarkConfig(scenarios=("routing",), methods=("ppo",), seeds=(5,)), tmp_path)


@pytest.mark.slow
def test_a_killed_runner_finishes_the_grid_without_rerunning_finished_cells(tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    run_grid(TINY, clean)
    script = ("import pathlib, sys; sys.path.insert(0, '.'); from tests.test_benchmark import TINY; "
              "from robustness.runner import run_grid; run_grid(TINY, pathlib.Path(sys.argv[1]))")
    process = subprocess.Popen([sys.executable, "-c", script, str(killed)], cwd=ROOT)
    deadline = time.time() + 300
    while not list((killed / "cells").glob("*.json")) and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # into the second cell's training
    process.send_signal(signal.SIGKILL)
    process.wait()
    first = sorted((killed / "cells").glob("*.json"))
    assert 1 <= len(first) < 3, "the runner should have been killed mid-grid"
    stamps = {path.name: os.stat(path).st_mtime_ns for path in first}
    ran = run_grid(TINY, killed)
    assert {cell.name + ".json" for cell in ran}.isdisjoint(stamps)
    assert {path.name: os.stat(path).st_mtime_ns for path in first} == stamps
    assert results_of(killed) == results_of(clean)
    assert (killed / "evaluations.csv").read_text() == (clean / "evaluations.csv").read_text()


@pytest.mark.slow
def test_ray_backend_gives_the_same_results_as_the_local_backend(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("HOME", str(tmp_path))  # Ray writes ~/.ray
    ray_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    local, remote = tmp_path / "local", tmp_path / "remote"
    run_grid(TINY, local, backend="local", jobs=1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=ray_dir)
    try:
        run_grid(TINY, remote, backend="ray", jobs=2)
    finally:
        ray.shutdown()
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert results_of(remote) == results_of(local)
    assert (remote / "evaluations.csv").read_text() == (local / "evaluations.csv").read_text()


def test_benchmark_refuses_a_missing_report_dependency_before_training(tmp_path, monkeypatch, capsys):
    from robustness import cli, runner
    monkeypatch.setitem(sys.modules, "rliable", None)  # importing it raises ImportError
    monkeypatch.setattr(runner, "run_grid", lambda *args, **kwargs: pytest.fail("trained without the report's extra"))
    monkeypatch.setattr(cli, "run_grid", runner.run_grid)
    assert cli.main(["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rliable" in err[0] and "benchmark" in err[0] and "--no-report" in err[0]
    assert not (tmp_path / "out").exists()
    assert cli.main(["--out", str(tmp_path / "out"), "--no-report", "--export", "marl-eval"]) == 2


def test_benchmark_default_out_is_outside_the_committed_results(monkeypatch, tmp_path):
    from robustness import cli
    seen = {}
    monkeypatch.setattr(cli, "run_grid", lambda config, out, *args, **kwargs: seen.setdefault("out", out))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--preset", "full", "--no-report"]) == 0
    assert seen["out"] == pathlib.Path("runs/benchmark/full")
    assert subprocess.run(["git", "check-ignore", "-q", "runs/benchmark/full/run.json"], cwd=ROOT).returncode == 0


@pytest.mark.parametrize("device", ["mps", "xpu", "cuda", "cuda:7", "tpu"])
def test_benchmark_checks_every_device_before_writing(tmp_path, device, capsys):
    import torch

    from robustness import cli
    kind = device.split(":")[0]
    backend = {"cuda": torch.cuda, "mps": getattr(torch.backends, "mps", None), "xpu": getattr(torch, "xpu", None)}
    if kind in backend and backend[kind] is not None and backend[kind].is_available():
        pytest.skip(f"{kind} is available here")
    assert cli.main(["--out", str(tmp_path / "out"), "--no-report", "--set", f"device={device}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and repr(device) in err[-1]
    assert not (tmp_path / "out").exists()


def test_merging_cells_of_older_and_newer_code_keeps_every_column_and_the_report_names_the_mix(tmp_path):
    from robustness import ReportError
    from robustness.report import read_step_sizes
    from robustness.runner import Cell, merge_results

    old_row = {"eta_factor": 1.0, "eta": 0.1, "steps": 4, "nonmonotone_rate": 0.25, "steps_etaL_0_1": 4,
               "nonmonotone_rate_etaL_0_1": 0.25, "steps_etaL_1_2": 0, "nonmonotone_rate_etaL_1_2": float("nan"),
               "steps_etaL_2_inf": 0, "nonmonotone_rate_etaL_2_inf": float("nan")}
    new_row = {**old_row, "steps_etaL_0_1": 3, "nonmonotone_rate_etaL_0_1": 0.0, "steps_clip": 1,
               "nonmonotone_rate_clip": 1.0}
    cells = [Cell("routing", "ppo", 0.0, seed) for seed in (0, 1)]
    (tmp_path / "cells").mkdir()
    for cell, row in zip(cells, (old_row, new_row)):  # the older cell first: its rows lack the clip columns
        (tmp_path / "cells" / f"{cell.name}.json").write_text(json.dumps(
            {"cell": {}, "evaluations": [{"attack": "none"}], "diagnostics": {"eval_states": 8}, "step_sizes": [row]}))
    merge_results(tmp_path, cells)
    header, first, second = (tmp_path / "step_sizes.csv").read_text().splitlines()
    assert header.endswith("steps_clip,nonmonotone_rate_clip") and first.endswith(",,") and second.endswith(",1,1.0")
    with pytest.raises(ReportError, match=r"steps_clip is empty in 1 of 2 rows .*mixed; rerun the older cells"):
        read_step_sizes(tmp_path / "step_sizes.csv")
