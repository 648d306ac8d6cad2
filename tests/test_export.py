"""The marl-eval export (robustness.export): the layout marl-eval documents (environment -> task ->
algorithm -> run -> step_i {step_count, metrics as lists} + absolute_metrics last), checked on the
synthetic results of test_report. marl-eval itself (id-marl-eval) pins pandas==1.4.4, which does not
install beside this project's pandas, so the schema is checked here rather than by loading it there."""

import json

import pytest

from robustness import ReportError, export
from test_report import CELLS, EPS, SCENARIOS, SEEDS, attacked, make_results, nominal, write_run_dirs


def check_marl_eval_schema(data):
    """marl-eval's documented layout and the conditions its processing checks: the same algorithms, runs
    and steps in every task of an environment, the same metrics in every step and in absolute_metrics."""
    assert isinstance(data, dict) and data
    for environment, tasks in data.items():
        assert isinstance(environment, str) and environment == environment.lower()
        shapes = set()
        for task, algorithms in tasks.items():
            assert isinstance(task, str) and task == task.lower()
            for algorithm, runs in algorithms.items():
                for run, logged in runs.items():
                    assert isinstance(run, str)
                    keys = list(logged)
                    assert keys[-1] == "absolute_metrics"
                    assert keys[:-1] == [f"step_{i}" for i in range(len(keys) - 1)] and len(keys) > 1
                    metric_names = set(logged["absolute_metrics"])
                    counts = []
                    for step in keys[:-1]:
                        assert isinstance(logged[step]["step_count"], int)
                        counts.append(logged[step]["step_count"])
                        assert set(logged[step]) - {"step_count"} == metric_names
                    assert counts == sorted(counts)
                    for metrics in (logged[step] for step in keys):
                        for name in metric_names:
                            values = metrics[name]
                            assert isinstance(values, list) and values
                            assert all(isinstance(v, float) for v in values)
            shapes.add((tuple(sorted(algorithms)), tuple(sorted(tuple(sorted(runs)) for runs in algorithms.values())),
                        tuple(sorted(len(run) for runs in algorithms.values() for run in runs.values()))))
        assert len(shapes) == 1, f"{environment}: tasks differ in algorithms, runs or steps"


def test_export_without_run_directories_round_trips_with_the_final_returns(tmp_path):
    results = make_results(tmp_path / "results")
    path = export.write_export(results)
    assert path == results / "marl_eval.json"
    data = json.loads(path.read_text())
    check_marl_eval_schema(data)
    assert data == export.marl_eval_data(results)
    assert set(data) == set(SCENARIOS)
    attacks = {"system:shared", "system:per_agent", "random:shared", "random_search:shared", "worst:shared",
               "worst:per_agent"}
    assert set(data["routing"]) == {"default"} | {f"default:{a}:eps={e:g}" for a in attacks for e in EPS if e > 0}
    assert set(data["routing"]["default"]) == {"ppo", "aajr-lam0.1", "aajr-lam1", "adv"}
    assert set(data["routing"]["default"]["ppo"]) == {str(seed) for seed in SEEDS}
    run = data["commons"]["default:system:shared:eps=0.2"]["aajr-lam1"]["3"]
    assert run["absolute_metrics"]["return"] == [attacked("commons", "aajr", 1.0, 3, "system", 0.2)]
    assert run["step_0"] == {"step_count": 0, "return": [nominal("commons", "aajr", 1.0, 3)]}
    assert data["commons"]["default"]["aajr-lam1"]["3"]["absolute_metrics"]["return"] == [
        nominal("commons", "aajr", 1.0, 3)]


def test_export_with_learning_curves_has_the_same_steps_in_every_run(tmp_path):
    results = make_results(tmp_path / "results")
    write_run_dirs(results, eval_column=True)  # eval/return_per_agent at 200 and 400 agent-steps: -(i + seed)
    data = export.marl_eval_data(results, steps=3)
    check_marl_eval_schema(data)
    run = data["routing"]["default:worst:shared:eps=0.1"]["adv"]["2"]
    assert [run[f"step_{i}"]["step_count"] for i in range(3)] == [200, 300, 400]
    assert [run[f"step_{i}"]["return"] for i in range(3)] == [[-4.0], [-5.0], [-6.0]]
    assert len(data["routing"]["default"]) == len(CELLS)


def test_export_refuses_an_unknown_format(tmp_path):
    with pytest.raises(ReportError, match="unknown export format 'csv'"):
        export.write_export(make_results(tmp_path / "results"), "csv")
