"""Population training (``agents.population_run``): members equal their single runs, resume, NaN isolation.

Tolerance: a member's numbers equal its single run's up to float rounding, because BLAS rounds matrix
products over P blocks of rows differently from products over one block in the last bit, and PPO
amplifies such differences slowly; over the few iterations here every logged number agrees to 1e-3
relative (absolute below 1e-3) and the final evaluation to 1e-4 relative.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import pytest
import torch

from agents.config import ConfigError, parse_overrides, resolve
from agents.learner import PPOLearner
from agents.networks import StackedMLP, stack_members
from agents.population_run import check_population, train_population
from agents.run import load_policy, train
from robustness.runner import cell_config

SHORT = ["scenario=routing", "size=small", "total_agent_steps=1500", "eval_every=2", "eval_episodes=4", "eval_envs=8",
         "checkpoint_every=2"]


def member(seed: int, reg_coef: float = 0.1, budget: float = 0.1, method: str = "aajr", extra: tuple = ()):
    overrides = [*SHORT, f"method={method}", f"seed={seed}", *extra]
    if method != "ppo":
        overrides += [f"reg_coef={reg_coef}", f"reg.budget={budget}"]
    return resolve(parse_overrides(overrides))


def rows(run_dir) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def timing_free(table: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{key: value for key, value in row.items() if key != "charts/SPS"} for row in table]


@pytest.mark.parametrize("share", [False, True])
def test_stacked_members_equal_each_network(one_thread, share):
    networks = [StackedMLP(3, 5, (8, 8), 2, share) for _ in range(3)]
    inputs = [torch.randn(6, 3, 5) for _ in range(3)]
    together = stack_members(networks)(torch.cat(inputs))
    assert torch.allclose(together, torch.cat([net(x) for net, x in zip(networks, inputs)]), atol=1e-6, rtol=0)


def test_members_equal_their_single_runs(tmp_path, one_thread):
    configs = [member(0, 0.1, 0.1), member(1, 0.1, 0.1), member(2, 1.0, 0.3)]  # another lambda and gamma
    summaries = train_population(configs, [tmp_path / f"pop{i}" for i in range(3)], progress=False)
    for index, config in enumerate(configs):
        single = train(config, tmp_path / f"single{index}", progress=False)
        together, alone = rows(tmp_path / f"pop{index}"), rows(tmp_path / f"single{index}")
        assert [row["iteration"] for row in together] == [row["iteration"] for row in alone]
        assert set(together[0]) == set(alone[0])
        for row_together, row_alone in zip(together, alone):
            for key, value in row_alone.items():
                if key == "charts/SPS" or value == "":
                    continue
                assert float(row_together[key]) == pytest.approx(float(value), rel=1e-3, abs=1e-3), (index, key)
        assert summaries[index]["ratio_to_reference"] == pytest.approx(single["ratio_to_reference"], rel=1e-4)
        assert load_policy(tmp_path / f"pop{index}") is not None  # the single-run checkpoint format


def test_killed_population_resumes_to_the_same_files(tmp_path, one_thread, monkeypatch):
    configs = [member(0), member(1, 0.5, 0.2)]
    uninterrupted = [tmp_path / f"full{i}" for i in range(2)]
    train_population(configs, uninterrupted, progress=False)

    original = PPOLearner.train_iteration

    def killed_after_three(self):
        if self.iteration == 3:  # iteration 3 is logged but not checkpointed (checkpoint_every=2)
            raise KeyboardInterrupt
        return original(self)

    resumed = [tmp_path / f"resumed{i}" for i in range(2)]
    monkeypatch.setattr(PPOLearner, "train_iteration", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        train_population(configs, resumed, progress=False)
    monkeypatch.setattr(PPOLearner, "train_iteration", original)
    assert len(rows(resumed[0])) == 3 and not (resumed[0] / "summary.json").exists()
    train_population(configs, resumed, resume=True, progress=False)
    for full, again in zip(uninterrupted, resumed):
        assert timing_free(rows(again)) == timing_free(rows(full))
        assert json.loads((again / "summary.json").read_text()) == json.loads((full / "summary.json").read_text())
    before = [(run_dir / "metrics.csv").read_bytes() for run_dir in resumed]
    train_population(configs, resumed, resume=True, progress=False)  # finished: nothing changes
    assert [(run_dir / "metrics.csv").read_bytes() for run_dir in resumed] == before


def test_a_nan_member_is_stopped_and_the_others_are_untouched(tmp_path, one_thread, monkeypatch, capsys):
    configs = [member(0), member(1), member(2)]
    clean = train_population(configs, [tmp_path / f"clean{i}" for i in range(3)], progress=False)
    original = PPOLearner.update

    def poisoned(self, batch):
        if self.iteration == 1:  # member 1's loss goes NaN in its second update
            self.reg_coef = self.reg_coef.clone()
            self.reg_coef[1] = math.nan
        return original(self, batch)

    monkeypatch.setattr(PPOLearner, "update", poisoned)
    summaries = train_population(configs, [tmp_path / f"nan{i}" for i in range(3)], progress=False)
    assert summaries[1] is None and "non-finite" in capsys.readouterr().err
    assert not (tmp_path / "nan1" / "summary.json").exists()
    assert len(rows(tmp_path / "nan1")) == 1  # logged up to the iteration before the NaN
    for index in (0, 2):
        assert timing_free(rows(tmp_path / f"nan{index}")) == timing_free(rows(tmp_path / f"clean{index}"))
        assert summaries[index]["ratio_to_reference"] == clean[index]["ratio_to_reference"]


@pytest.mark.parametrize("configs, message", [
    (lambda: [member(0, method="aajr+adv")], "cannot be trained as a population"),
    (lambda: [member(0), member(1, extra=("ppo.learning_rate=0.01",))], "differs from the first in ppo"),
    (lambda: [member(0), member(0)], "the same budget"),
    (lambda: [member(0, extra=("reg.steps=2",)), member(1)], "more than the budget"),
])
def test_bad_populations_are_refused_in_one_line(configs, message):
    with pytest.raises(ConfigError, match=message) as error:
        check_population(configs())
    assert "\n" not in str(error.value)


def tiny_grid(**changes):
    from robustness.evaluate import AttackGrid
    from robustness.runner import BenchmarkConfig
    grid = BenchmarkConfig(
        scenarios=("routing",), methods=("ppo", "aajr", "adv"), seeds=(0, 1), size="small",
        overrides=("total_agent_steps=480", "env.horizon=5", "ppo.num_envs=8", "ppo.rollout_steps=5", "eval_envs=4",
                   "reg.steps=2", "checkpoint_every=1"),
        attack=AttackGrid(attacks=("random", "system"), modes=("shared",), eps=(0.0, 0.2), steps=2, episodes=4,
                          restarts=1), diag_states=8, diag_steps=2)
    return dataclasses.replace(grid, **changes)


def test_population_groups_keep_squared_and_hinge_penalties_apart(tmp_path):
    from robustness.runner import grid_cells, population_groups
    grid = tiny_grid(methods=("aajr",), reg_budgets=(0.0, 0.1))
    groups = population_groups(grid_cells(grid), grid, tmp_path)
    assert sorted(sorted(cell.budget for cell in group) for group in groups) == [[0.0, 0.0], [0.1, 0.1]]
    for group in groups:
        check_population([cell_config(cell, grid) for cell in group])


def test_population_backend_stops_the_grid_on_a_stopped_member(tmp_path, one_thread, monkeypatch):
    from robustness.runner import run_grid
    original = PPOLearner.update

    def poisoned(self, batch):
        if self.members > 1 and self.iteration == 1:
            self.reg_coef = self.reg_coef.clone()
            self.reg_coef[1] = math.nan
        return original(self, batch)

    monkeypatch.setattr(PPOLearner, "update", poisoned)
    with pytest.raises(RuntimeError, match="routing-aajr-lam0.1-seed1: training stopped"):
        run_grid(tiny_grid(methods=("aajr",)), tmp_path, backend="population")
    assert (tmp_path / "cells" / "routing-aajr-lam0.1-seed0.json").exists()
    assert not (tmp_path / "cells" / "routing-aajr-lam0.1-seed1.json").exists()


def test_population_backend_gives_the_local_backends_results(tmp_path, one_thread):
    from robustness.runner import grid_cells, population_groups, run_grid
    grid = tiny_grid()
    groups = population_groups(grid_cells(grid), grid, tmp_path / "population")
    assert [[cell.method for cell in group] for group in groups] == [["ppo"] * 2, ["aajr"] * 2, ["adv"] * 2]
    run_grid(grid, tmp_path / "local", backend="local")
    run_grid(grid, tmp_path / "population", backend="population")
    local = (tmp_path / "local" / "evaluations.csv").read_text().splitlines()
    together = (tmp_path / "population" / "evaluations.csv").read_text().splitlines()
    assert len(local) == len(together) and local[0] == together[0]
    for line_local, line_together in zip(local[1:], together[1:]):
        for a, b in zip(line_local.split(","), line_together.split(",")):
            try:
                assert float(b) == pytest.approx(float(a), rel=1e-3, abs=1e-4)
            except ValueError:
                assert a == b
