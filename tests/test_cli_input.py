"""Bad input on the command lines and in run directories (issue 17): one line naming the field (or file),
the value and what is allowed; exit code 2; nothing written before the input is validated; resume is
idempotent and TensorBoard holds each step once."""

import math
import pathlib
import shutil

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from agents import cli, run
from agents.config import ConfigError, parse_overrides, resolve
from agents.learner import PPOLearner
from agents.ppo import PPOConfig
from envs.core import INT64_LIMIT, short_repr
from envs.vector import TorchVectorEnv
from robustness import attack, cli as benchmark_cli
from robustness.evaluate import AttackGrid
from robustness.runner import BenchmarkConfig, grid_cells, run_cell, run_grid

TINY = ["scenario=commons", "size=small", "total_agent_steps=640", "checkpoint_every=1", "eval_envs=4",
        "env.horizon=5", "ppo.num_envs=8", "ppo.rollout_steps=10", "ppo.update_epochs=1", "ppo.hidden=[8]"]
SMALL = {"scenario": "commons", "size": "small"}
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
# every numeric PPOConfig field: values it refuses
BAD_PPO_VALUES = {
    **{name: st.integers(max_value=0) for name in ("num_envs", "rollout_steps", "update_epochs", "num_minibatches")},
    **{name: st.floats(max_value=0.0) | NON_FINITE
       for name in ("learning_rate", "clip_coef", "max_grad_norm", "reward_scale")},
    **{name: st.floats().filter(lambda x: not 0.0 <= x <= 1.0) for name in ("gamma", "gae_lambda")},
    **{name: st.floats(max_value=-1e-300) | NON_FINITE for name in ("ent_coef", "vf_coef")},
    "init_log_std": NON_FINITE,
}
GOOD_PPO_VALUES = {
    **{name: st.floats(min_value=1e-12, max_value=1e6) for name in ("learning_rate", "clip_coef", "max_grad_norm",
                                                                     "reward_scale")},
    **{name: st.floats(min_value=0.0, max_value=1.0) for name in ("gamma", "gae_lambda")},
    **{name: st.floats(min_value=0.0, max_value=1e6) for name in ("ent_coef", "vf_coef")},
    "init_log_std": st.floats(min_value=-20.0, max_value=5.0),
}


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def call(main, *args: str) -> tuple[int, str, str]:
    """Run a command line's ``main`` in-process: exit code, stdout, stderr."""
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as stop:  # argparse's own errors
            code = stop.code
    return code, out.getvalue(), err.getvalue()


def snapshot(root: pathlib.Path) -> dict:
    """Every file under ``root`` with its bytes and modification time."""
    return {path.relative_to(root): (path.read_bytes(), path.stat().st_mtime_ns)
            for path in sorted(root.rglob("*")) if path.is_file()}


# ----- PPOConfig and the run config: every value checked where it enters ------------------------------


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_every_bad_ppo_value_is_refused_naming_field_and_value(data):
    name = data.draw(st.sampled_from(sorted(BAD_PPO_VALUES)))
    value = data.draw(BAD_PPO_VALUES[name])
    with pytest.raises(ValueError) as error:
        PPOConfig(**{name: value}).validate()
    assert str(error.value).startswith(f"{name} must ") and repr(value) in str(error.value)
    with pytest.raises(ConfigError) as error:  # through the run config: the same line, under ppo.
        resolve({**SMALL, "ppo": {name: value}})
    assert str(error.value).startswith(f"ppo.{name} must ") and "\n" not in str(error.value)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_every_good_ppo_value_is_accepted(data):
    name = data.draw(st.sampled_from(sorted(GOOD_PPO_VALUES)))
    value = data.draw(GOOD_PPO_VALUES[name])
    assert getattr(resolve({**SMALL, "ppo": {name: value}}).ppo, name) == value


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 8), st.integers(1, 8), st.integers(1, 80))
def test_minibatches_hold_at_least_two_rows(num_envs, rollout_steps, num_minibatches):
    cfg = PPOConfig(num_envs=num_envs, rollout_steps=rollout_steps, num_minibatches=num_minibatches)
    if num_envs * rollout_steps // num_minibatches >= 2:
        cfg.validate()
    else:
        with pytest.raises(ValueError, match=f"num_minibatches must be at most .* got {num_minibatches}$"):
            cfg.validate()


@pytest.mark.parametrize("hidden, message", [
    ([0], r"ppo.hidden\[0\] must be a positive integer, got 0"),
    ([8, -4], r"ppo.hidden\[1\] must be a positive integer, got -4"),
])
def test_hidden_sizes_are_positive(hidden, message):
    with pytest.raises(ConfigError, match=message):
        resolve({**SMALL, "ppo": {"hidden": hidden}})
    assert resolve({**SMALL, "ppo": {"hidden": []}}).ppo.hidden == ()  # a linear policy is allowed


def test_the_learner_checks_its_ppo_config_before_building_anything():
    env = TorchVectorEnv("commons", num_envs=2, n_agents=2, horizon=5)
    with pytest.raises(ValueError, match="gamma must lie in"):
        PPOLearner(env, PPOConfig(num_envs=2, rollout_steps=5, gamma=math.nan), 1, seed=0)


@settings(max_examples=40, deadline=None)
@given(st.integers(max_value=-1) | st.integers(min_value=INT64_LIMIT))
def test_seeds_outside_the_torch_range_are_refused(seed):
    with pytest.raises(ConfigError, match=r"^seed must be an integer in \[0, 2\*\*63\), got ") as error:
        resolve({**SMALL, "seed": seed})
    assert str(error.value).endswith(f"got {short_repr(seed)}")
    with pytest.raises(ConfigError, match=r"seed must be an integer in \[0, 2\*\*63\)"):
        BenchmarkConfig(seeds=(seed,))


@settings(max_examples=20, deadline=None)
@given(st.integers(0, INT64_LIMIT - 1))
def test_seeds_inside_the_range_are_kept(seed):
    assert resolve({**SMALL, "seed": seed}).seed == seed


@pytest.mark.parametrize("overrides, message", [
    ({"method": "aajr", "reg_coef": math.nan}, r"^reg_coef must lie in \[0.0, inf\], got nan$"),
    ({"method": "aajr", "reg_coef": math.inf}, r"^reg_coef must lie in \[0.0, inf\], got inf$"),
    ({"method": "adv", "shock_warmup": math.nan}, r"^shock_warmup must lie in \[0.0, 1.0\], got nan$"),
    ({"method": "adv", "shock": {"eps": math.inf}}, r"^shock.eps must lie in \(0.0, inf\], got inf$"),
    ({"method": "adv", "shock": {"prob": 1.5}}, r"^shock.prob must lie in \[0.0, 1.0\], got 1.5$"),
    ({"method": "adv", "shock": [1]}, r"^shock: expected a mapping, got \[1\]$"),
    ({"ppo": 3}, r"^ppo: expected a mapping, got 3$"),
    ({"total_agent_steps": 0}, r"^total_agent_steps must be a positive integer, got 0$"),
    ({"eval_envs": -2}, r"^eval_envs must be a positive integer, got -2$"),
    ({"scenario": ["commons"]}, r"^unknown scenario \['commons'\]; allowed: commons, compute, routing$"),
    ({"method": {"a": 1}}, r"^unknown method \{'a': 1\}; allowed: ppo"),
])
def test_top_level_and_shock_values_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve({**SMALL, **overrides})


def test_a_config_file_whose_section_is_not_a_mapping_is_one_line(tmp_path):
    for text, message in (("small:\n  ppo: 3\n", "ppo: expected a mapping, got 3"),
                          ("small:\n  env: [1]\n", "small.env must be a mapping, got list"),
                          ("small:\n  ppo: {gamma: 2}\n", r"ppo.gamma must lie in \[0.0, 1.0\], got 2.0"),
                          ("small:\n  ppo: {gamma: 0.9\n", "not valid YAML at line 3, column 1"),
                          ("small:\n\tppo: 3\n", "not valid YAML at line 2, column 1")):
        (tmp_path / "commons.yaml").write_text(text)
        with pytest.raises(ConfigError, match=message) as error:
            resolve(SMALL, config_dir=tmp_path)
        assert "\n" not in str(error.value)


# ----- the command lines: exit code 2, one line, nothing written ---------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--set", "ppo.gamma=.nan"], r"error: ppo.gamma must lie in [0.0, 1.0], got nan"),
    (["--set", "ppo.num_minibatches=1000"], "error: ppo.num_minibatches must be at most num_envs x rollout_steps"),
    (["--set", "ppo.init_log_std=.inf"], "error: ppo.init_log_std must be a finite real number, got inf"),
    (["--set", "ppo.hidden=[-4]"], "error: ppo.hidden[0] must be a positive integer, got -4"),
    (["--method", "aajr", "--reg-coef", "nan"], "error: reg_coef must lie in [0.0, inf], got nan"),
    (["--seed", str(2 ** 64)], f"error: seed must be an integer in [0, 2**63), got {2 ** 64}"),
    (["--seed", "1.5"], "error: argument --seed: invalid int value: '1.5'"),
    (["--set", "ppo.gama=0.9"], "error: unknown key(s) ppo.gama"),
    (["--device", "gpu"], "error: device 'gpu' is not a torch device"),
    pytest.param(["--device", "cuda"], "error: device 'cuda' requested but cuda is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")),
    pytest.param(["--device", "mps"], "error: device 'mps' requested but mps is not available",
                 marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason="MPS is available here")),
])
def test_train_command_refuses_bad_values_before_writing(args, message, tmp_path):
    code, _, err = call(cli.main, "--no-progress", "--run-dir", str(tmp_path / "run"), "--set", *TINY[:2], *args)
    assert code == 2 and one_line(err).startswith(message), err
    assert list(tmp_path.iterdir()) == []


def test_run_dir_on_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("keep")
    for run_dir in ("file", "file/run"):
        code, _, err = call(cli.main, "--no-progress", "--run-dir", str(tmp_path / run_dir), "--set", *TINY)
        assert code == 2 and "file is a file; choose another --run-dir" in one_line(err)
    assert (tmp_path / "file").read_text() == "keep" and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("args, message", [
    (["--reps", "0"], "error: reps must be a positive integer, got 0"),
    (["--reg-coefs", "nan"], "error: reg_coef must lie in [0.0, inf], got nan"),
    (["--seeds", "-1"], "error: seed must be an integer in [0, 2**63), got -1"),
    (["--eps", "nan"], "error: eps must lie in [0.0, inf], got nan"),
    (["--episodes", "0"], "error: episodes must be a positive integer, got 0"),
    (["--jobs", "0"], "error: jobs must be >= 1, got 0"),
    (["--set", "ppo.gamma=2"], "error: cell commons-ppo-lam0-seed0: ppo.gamma must lie in [0.0, 1.0], got 2.0"),
    (["--set", "device=cuda:7"], "error: device 'cuda:7' requested but cuda is not available"),
    (["--reps", "many"], "error: argument --reps: invalid int value: 'many'"),
])
def test_benchmark_command_refuses_bad_values_before_training_or_writing(args, message, tmp_path):
    if "cuda:7" in args[-1] and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    code, _, err = call(benchmark_cli.main, "--out", str(tmp_path / "out"), *args)
    assert code == 2 and one_line(err).startswith(message), err
    assert not (tmp_path / "out").exists()  # no run.json: the corrected command is not "another grid"


def test_benchmark_out_on_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("keep")
    code, _, err = call(benchmark_cli.main, "--out", str(tmp_path / "file"))
    assert code == 2 and "file is a file; use another --out" in one_line(err)
    assert (tmp_path / "file").read_text() == "keep"


def test_attack_command_refuses_bad_values_before_evaluating(tmp_path, stopped_run):
    for args, message in ((["--eps", "nan"], "error: eps must lie in [0.0, inf], got nan"),
                          (["--steps", "0"], "error: steps must be a positive integer, got 0"),
                          (["--out", str(tmp_path / "missing" / "rows.csv")], "error: --out "),
                          (["--device", "gpu"], "error: device 'gpu' is not a torch device")):
        code, _, err = call(attack.main, str(stopped_run), *args)
        assert code == 2 and one_line(err).startswith(message), err
    assert not (tmp_path / "missing").exists()


# ----- damaged run directories: one line naming the file, nothing overwritten ---------------------------


def tiny_run(root: pathlib.Path, name: str, max_iterations: int | None) -> pathlib.Path:
    run_dir = root / name
    run.train(resolve(parse_overrides(TINY)), run_dir, progress=False, max_iterations=max_iterations)
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, pathlib.Path]:
    root = tmp_path_factory.mktemp("runs")
    return {"finished": tiny_run(root, "finished", None), "stopped": tiny_run(root, "stopped", 2)}


@pytest.fixture
def stopped_run(runs, tmp_path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(runs["stopped"], tmp_path / "stopped"))


@pytest.fixture
def finished_run(runs, tmp_path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(runs["finished"], tmp_path / "finished"))


def other_config(run_dir: pathlib.Path) -> str:
    data = yaml.safe_load((run_dir / "config.yaml").read_text())
    data["env"]["n_agents"] = 3
    return yaml.safe_dump(data)


@pytest.mark.parametrize("name, damage, message", [
    ("checkpoint.pt", lambda d: b"", "checkpoint.pt: not a readable checkpoint"),
    ("checkpoint.pt", lambda d: b"garbage", "checkpoint.pt: not a readable checkpoint"),
    ("checkpoint.pt", lambda d: (d / "checkpoint.pt").read_bytes()[:1000], "checkpoint.pt: not a readable checkpoint"),
    ("config.yaml", lambda d: b"", "config.yaml: not a run config (no scenario, size, method)"),
    ("config.yaml", lambda d: b"scenario: [unclosed\n", "config.yaml: not valid YAML at line 2, column 1"),
    ("config.yaml", lambda d: b"- a\n- b\n", "config.yaml: expected a mapping at the top level, got list"),
    ("config.yaml", lambda d: b"\xff\xfe\x00garbage", "config.yaml: not a text file"),
    ("config.yaml", lambda d: (d / "config.yaml").read_bytes().replace(b"ppo:", b"ppo: 3\nold_ppo:"),
     "config.yaml: unknown key(s) old_ppo"),
    ("config.yaml", lambda d: other_config(d).encode(), "checkpoint.pt: does not fit the run's config.yaml"),
    ("metrics.csv", lambda d: b"hello\nworld\n", "metrics.csv: not a metrics log (its header ['hello']"),
    ("metrics.csv", lambda d: b"iteration,x\nabc,1\n", "metrics.csv: row 1: iteration 'abc' is not an integer"),
    ("metrics.csv", lambda d: b"iteration,x\n1,2,3\n", "metrics.csv: row 1 (iteration 1) has not one cell per"),
    ("metrics.csv", lambda d: b"\xff\xfe\x00\x01", "metrics.csv: not a metrics log"),
])
def test_resume_on_a_damaged_run_is_one_line_and_overwrites_nothing(stopped_run, name, damage, message):
    (stopped_run / name).write_bytes(damage(stopped_run))
    before = snapshot(stopped_run)
    code, _, err = call(cli.main, "--no-progress", "--resume", str(stopped_run))
    assert code == 2 and message in one_line(err), err
    assert str(stopped_run / message.split(":")[0]) in err  # the file is named in full
    assert snapshot(stopped_run) == before


def test_a_checkpoint_of_another_shape_is_named_when_loading_the_policy(stopped_run):
    torch.save({"policy": {"weights": torch.zeros(2)}}, stopped_run / "checkpoint.pt")
    with pytest.raises(ConfigError, match="checkpoint.pt: does not fit the run's config.yaml"):
        run.load_policy(stopped_run)
    torch.save([1, 2], stopped_run / "checkpoint.pt")
    with pytest.raises(ConfigError, match="checkpoint.pt: does not fit the run's config.yaml"):
        run.train(run.load_config(stopped_run), stopped_run, resume=True, progress=False)


def test_a_garbage_summary_of_a_finished_run_is_one_line(finished_run):
    (finished_run / "summary.json").write_text("{not json")
    before = snapshot(finished_run)
    code, _, err = call(cli.main, "--no-progress", "--resume", str(finished_run))
    assert code == 2 and "summary.json: not a readable run summary" in one_line(err)
    assert snapshot(finished_run) == before


def test_the_benchmark_refuses_damaged_or_foreign_results(tmp_path, runs):
    config = BenchmarkConfig(scenarios=("commons",), methods=("ppo",), seeds=(0,), size="small",
                             overrides=tuple(item for item in TINY[2:] if item != "env.horizon=5") + ("env.horizon=6",),
                             attack=AttackGrid(attacks=("random",), modes=("shared",), eps=(0.1,), episodes=2))
    cell = grid_cells(config)[0]
    run_dir = pathlib.Path(shutil.copytree(runs["stopped"], tmp_path / "out" / "runs" / cell.name))
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError, match="config.yaml holds another run config than cell commons-ppo-lam0-seed0"):
        run_cell(cell, config, tmp_path / "out")
    assert snapshot(tmp_path) == before and run_dir.is_dir()
    (tmp_path / "out" / "cells").mkdir()
    (tmp_path / "out" / "cells" / f"{cell.name}.json").write_text("[1, 2")
    with pytest.raises(ConfigError, match=f"{cell.name}.json: not a readable cell result"):
        run_cell(cell, config, tmp_path / "out")
    (tmp_path / "out" / "run.json").write_bytes(b"\x00garbage")
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError, match="run.json: not a readable grid record"):
        run_grid(config, tmp_path / "out")
    assert snapshot(tmp_path) == before


# ----- resume is idempotent; TensorBoard holds each step once -------------------------------------------


def test_resuming_a_finished_run_changes_no_file(finished_run):
    before = snapshot(finished_run)
    code, out, err = call(cli.main, "--no-progress", "--resume", str(finished_run))
    assert code == 0, err
    assert "nan" not in out.lower() and "ratio to msy" in out
    assert snapshot(finished_run) == before


def test_a_run_killed_during_its_final_evaluation_writes_the_same_summary(finished_run):
    summary = (finished_run / "summary.json").read_text()
    (finished_run / "summary.json").unlink()
    checkpoint = (finished_run / "checkpoint.pt").read_bytes()
    assert run.train(run.load_config(finished_run), finished_run, resume=True, progress=False) is not None
    assert (finished_run / "summary.json").read_text() == summary  # final_training included
    assert (finished_run / "checkpoint.pt").read_bytes() == checkpoint


def test_tensorboard_holds_each_step_once_after_a_kill_and_resume(stopped_run, runs):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    config = run.load_config(stopped_run)
    checkpoint = (stopped_run / "checkpoint.pt").read_bytes()
    run.train(config, stopped_run, resume=True, progress=False, max_iterations=1)
    (stopped_run / "checkpoint.pt").write_bytes(checkpoint)  # killed after logging iteration 3, before its checkpoint
    run.train(config, stopped_run, resume=True, progress=False)

    def steps(run_dir: pathlib.Path) -> list[int]:
        events = event_accumulator.EventAccumulator(str(run_dir / "tb"))
        events.Reload()
        return [event.step for event in events.Scalars("charts/system_loss")]

    assert steps(stopped_run) == steps(runs["finished"]) == [160, 320, 480, 640]
