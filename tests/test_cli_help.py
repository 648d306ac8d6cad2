"""train.py's command line: --help lists every config key, --print-config, --threads, and the plain
progress lines a run prints when its stdout is not a terminal."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import pathlib
import re
import subprocess
import sys

import pytest
import torch
import yaml

from agents import cli
from agents.config import TrainConfig, parse_overrides, resolve, to_dict
from agents.ppo import PPOConfig
from agents.progress import PlainProgress, progress_bar
from envs.core import SCENARIOS
from envs.shock_wrapper import ShockConfig
from regularizers import METHODS

ROOT = pathlib.Path(__file__).resolve().parent.parent
NESTED = {"reg": None, "env": None, "ppo": PPOConfig, "shock": ShockConfig}
UNDOCUMENTED: set[str] = set()  # keys allowed without a :param doc


def run_main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(argv))
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def expected_keys() -> set[str]:
    """Every key --set accepts, from the dataclasses themselves."""
    keys = {f.name for f in dataclasses.fields(TrainConfig) if f.name not in NESTED}
    keys |= {f"ppo.{f.name}" for f in dataclasses.fields(PPOConfig)}
    keys |= {f"shock.{f.name}" for f in dataclasses.fields(ShockConfig)}
    for method in METHODS.values():
        if method.settings is not None:
            keys |= {f"reg.{f.name}" for f in dataclasses.fields(method.settings)}
    for scenario in SCENARIOS.values():
        keys |= {f"env.{f.name}" for f in dataclasses.fields(scenario.config_cls)}
    return keys


def listed(help_text: str) -> dict[str, str]:
    """``key -> doc`` of the help's config key lines (``  key = value: doc``)."""
    return {match.group(1): match.group(2)
            for match in re.finditer(r"^  ([\w.]+) = .*?: (.*)$", help_text, re.MULTILINE)}


def test_help_lists_every_config_key_with_a_doc():
    code, out, _ = run_main("--help")
    assert code == 0
    keys = listed(out)
    assert expected_keys() <= set(keys), sorted(expected_keys() - set(keys))
    undocumented = {key for key, doc in keys.items() if doc.startswith("(undocumented)")}
    assert undocumented <= UNDOCUMENTED
    # values are the packaged config's for the scenario and size named (routing default: T = 50, lr 1e-3)
    routing = out[out.index("env.*: scenario routing"):]
    assert "\n  env.horizon = 50:" in routing and "\n  ppo.learning_rate = 0.001:" in out
    code, out, _ = run_main("--scenario", "commons", "--size", "small", "--help")
    steps = resolve({"scenario": "commons", "size": "small"}).total_agent_steps
    assert code == 0 and f"\n  total_agent_steps = {steps:d}:" in out


def test_help_descriptions_are_whole():
    _, out, _ = run_main("--help")
    assert "before anything is written." in out  # the description's last sentence
    for script in ("bench/jvp.py", "bench/learning.py", "bench/sb3.py", "bench/shocks.py"):
        source = (ROOT / script).read_text()
        assert "__doc__.splitlines()" not in source and "description=__doc__" in source, script


def test_print_config_prints_the_resolved_config_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--size", "small", "--method", "aajr", "--set", "reg.eps=0.2", "ppo.num_envs=32"]
    code, out, _ = run_main(*argv, "--print-config", "--run-dir", str(tmp_path / "run"))
    assert code == 0
    assert yaml.safe_load(out) == to_dict(resolve(parse_overrides(["size=small", "method=aajr", "reg.eps=0.2",
                                                                   "ppo.num_envs=32"])))
    assert list(tmp_path.iterdir()) == []
    code, _, err = run_main("--set", "ppo.gamma=2", "--print-config")
    assert code == 2 and err.startswith("error: ppo.gamma") and len(err.splitlines()) == 1


@pytest.mark.parametrize("value", ["0", "-2", "1.5", "many"])
def test_threads_must_be_a_positive_integer(value):
    code, out, err = run_main("--threads", value)
    assert code == 2 and out == ""
    prog = cli.OneLineParser().prog
    assert err == f"error: argument --threads: must be a positive integer, got {value!r} (see {prog} --help)\n"


def test_threads_sets_torch_threads_before_training(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(cli, "train", lambda *args, **kwargs: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    try:
        code, _, _ = run_main("--size", "small", "--threads", "1", "--run-dir", str(tmp_path / "run"))
    finally:
        torch.set_num_threads(before)
    assert code == 0 and seen == [1]


PLAIN = re.compile(r"^(\S+) (\d+)/(\d+) \(\d+%\)(?: \| (.*))? \| elapsed \d+:\d\d:\d\d")


def test_plain_progress_prints_a_line_per_tenth():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), progress_bar(plain=True) as bar:
        task = bar.add_task("job", total=23, status="")
        for step in range(1, 24):
            bar.update(task, completed=step, status=f"step {step}")
    assert isinstance(bar, PlainProgress)
    done = [int(PLAIN.match(line).group(2)) for line in out.getvalue().splitlines()]
    assert done == [0, 3, 5, 7, 10, 12, 14, 17, 19, 21, 23]  # the first step past each tenth of 23
    assert out.getvalue().splitlines()[-1].startswith("job 23/23 (100%) | step 23 | elapsed 0:00:0")


def test_plain_progress_without_a_total_prints_every_step():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), progress_bar(plain=True) as bar:
        task = bar.add_task("grid", total=None, status="")
        bar.update(task, completed=1, total=3, status="done: a")
        bar.update(task, status="waiting")  # status only: nothing new to report
        bar.update(task, completed=2, total=3, status="done: b")
    assert [line.split(" | ")[0] for line in out.getvalue().splitlines()] == ["grid 0", "grid 1/3 (33%)",
                                                                              "grid 2/3 (67%)"]


def test_a_piped_training_prints_a_plain_line_per_tenth(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "train.py", "--scenario", "commons", "--size", "small", "--threads", "1",
                             "--total-agent-steps", "800", "--run-dir", str(run_dir), "--set", "eval_envs=4",
                             "env.horizon=10", "ppo.num_envs=4", "ppo.rollout_steps=5", "ppo.update_epochs=1",
                             "checkpoint_every=100"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [PLAIN.match(line) for line in result.stdout.splitlines() if line.startswith("commons/ppo/seed0 ")]
    assert lines and all(lines), result.stdout
    total = int(lines[0].group(3))
    assert total >= 10
    done = [int(line.group(2)) for line in lines]
    for tenth in range(1, 11):  # a line within every tenth of the run
        assert any((tenth - 1) * total / 10 < d <= tenth * total / 10 for d in done), (tenth, done)
    for line in lines[1:]:
        assert "return" in line.group(4) and "loss/step" in line.group(4) and "agent-steps/s" in line.group(4)
        assert "agent-steps |" in line.group(4)
    assert "\x1b[" not in result.stdout  # no terminal control sequences in a log file


@pytest.mark.parametrize("finish_times, lines_expected", [
    ((600.0, 600.0), ("benchmark smoke 6/10 (60%) | done: c1 | elapsed 0:10:00 left 0:40:00",  # 4 cells x 10 min
                      "benchmark smoke 7/10 (70%) | done: c2 | elapsed 0:20:00 left 0:30:00")),
    ((3600.0, 1.0), ("benchmark smoke 6/10 (60%) | done: c1 | elapsed 1:00:00 left 4:00:00",  # two jobs: 2 cells
                     "benchmark smoke 7/10 (70%) | done: c2 | elapsed 1:00:01 left 1:30:02")),  # in 3601 s
])
def test_benchmark_progress_estimates_the_time_left_from_this_calls_cells(finish_times, lines_expected, monkeypatch,
                                                                          capsys, tmp_path):
    """Cells take minutes: the time left comes from the pace of the cells finished in this call, counted from
    its start (rich's default 30 s window would leave it unknown; a pace counted from the first finished cell
    would make two parallel jobs' nearly simultaneous cells look seconds apart), and the cells a resumed grid
    already holds do not count."""
    import rich.console

    from robustness import cli as benchmark_cli

    for name in ("FORCE_TERMINAL", "TTY_COMPATIBLE"):
        monkeypatch.delenv(name, raising=False)
    clock = [1000.0]
    monkeypatch.setattr(rich.console, "monotonic", lambda: clock[0])

    def fake_grid(config, out, backend, jobs, address, command, preset, progress, population_size=0):
        progress(5, 10, "")  # five cells done before this call
        for finished, seconds in zip((6, 7), finish_times):
            clock[0] += seconds
            progress(finished, 10, f"c{finished - 5}")

    monkeypatch.setattr(benchmark_cli, "run_grid", fake_grid)
    assert benchmark_cli.main(["--preset", "smoke", "--no-report", "--out", str(tmp_path / "grid")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("benchmark smoke ")]
    assert tuple(lines[-2:]) == lines_expected
