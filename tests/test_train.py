"""train.py: determinism, resume, Ctrl-C, bad configs, and a subprocess smoke test."""

import csv
import pathlib
import signal
import subprocess
import sys
import time

import pytest

import train
from agents.config import ConfigError, parse_overrides, resolve

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = ["scenario=commons", "size=small", "total_agent_steps=1600", "checkpoint_every=1", "eval_envs=4",
        "env.horizon=10", "ppo.num_envs=8", "ppo.rollout_steps=10"]


def tiny_config(*extra: str):
    return resolve(parse_overrides(TINY + list(extra)))


def metric_rows(run_dir: pathlib.Path) -> list[dict]:
    with (run_dir / "metrics.csv").open() as f:
        return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in csv.DictReader(f)]


def run_to_end(tmp_path, name, *extra):
    config = tiny_config(*extra)
    run_dir = tmp_path / name
    run_dir.mkdir()
    return train.train(config, run_dir, progress=False), run_dir


def test_same_seed_same_metrics_different_seed_different(tmp_path):
    first, dir1 = run_to_end(tmp_path, "a")
    second, dir2 = run_to_end(tmp_path, "b")
    third, dir3 = run_to_end(tmp_path, "c", "seed=1")
    assert len(metric_rows(dir1)) == 10
    assert metric_rows(dir1) == metric_rows(dir2)
    assert first["system_loss_per_step"] == second["system_loss_per_step"]
    assert metric_rows(dir1) != metric_rows(dir3)


def test_interrupted_and_resumed_run_ends_like_an_uninterrupted_one(tmp_path):
    full, full_dir = run_to_end(tmp_path, "full")
    config = tiny_config()
    run_dir = tmp_path / "cut"
    run_dir.mkdir()
    assert train.train(config, run_dir, progress=False, max_iterations=4) is None
    # a row written after the checkpoint (as if killed mid-iteration) must not survive the resume
    with (run_dir / "metrics.csv").open("a") as f:
        f.write("99,junk\n")
    resumed = train.train(config, run_dir, resume=True, progress=False)
    assert metric_rows(run_dir) == metric_rows(full_dir)
    assert resumed["system_loss_per_step"] == full["system_loss_per_step"]


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["--scenario", "traffic"], "error: unknown scenario 'traffic'; allowed: commons, compute, routing"),
    (["--method", "magic"], "error: unknown method 'magic'; allowed: ppo, aajr, jacobian, spectral, specnorm, "
                            "smooth, adv, aajr+adv"),
    (["--method", "adv", "--reg-coef", "0.1"], "error: method 'adv' has no penalty, so reg_coef=0.1 has no effect"),
    (["--method", "ppo", "--set", "shock.prob=0.5"], "error: shock settings configure the rollouts of the "
                                                    "adversarial methods (adv, aajr+adv); method 'ppo' does not"),
    (["--method", "adv", "--set", "shock.prob=0"], "error: method 'adv' trains under shocks: shock.prob must be > 0"),
    (["--method", "aajr", "--reg-coef", "-1"], "error: reg_coef must be >= 0, got -1.0"),
    (["--method", "aajr", "--set", "reg_norm=l3"], "error: unknown norm 'l3'; allowed: 'l2', 'linf'"),
    (["--set", "env.n_agents=-1"], "error: n_agents must be a positive integer, got -1"),
    (["--set", "ppo.num_envs=abc"], "error: ppo.num_envs: expected int, got 'abc' (str)"),
    (["--set", "ppo.learning_rat=0.1"], "error: unknown key(s) ppo.learning_rat; allowed: ppo.num_envs"),
    (["--size", "huge"], "error: unknown size 'huge'; allowed: small, default, large"),
])
def test_bad_configs_give_one_clear_line(args, message, tmp_path):
    result = run_cli(*args, "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert result.stderr.strip().startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_config_types_are_checked():
    with pytest.raises(ConfigError, match="ppo.hidden\\[1\\]: expected int, got 'x'"):
        tiny_config("ppo.hidden=[4, x]")
    assert tiny_config("ppo.learning_rate=1").ppo.learning_rate == 1.0
    assert tiny_config("total_agent_steps=2e4").total_agent_steps == 20000


def test_cli_smoke_and_resume_refuses_overrides(tmp_path):
    run_dir = tmp_path / "smoke"
    result = run_cli("--set", *TINY, "--run-dir", str(run_dir), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "ratio to msy" in result.stdout
    for name in ("config.yaml", "metrics.csv", "checkpoint.pt", "summary.json"):
        assert (run_dir / name).exists()
    assert list((run_dir / "tb").iterdir())
    again = run_cli("--set", *TINY, "--run-dir", str(run_dir))
    assert again.returncode == 2 and "already holds a run" in again.stderr


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tmp_path):
    run_dir = tmp_path / "interrupted"
    overrides = [item for item in TINY if not item.startswith("total_agent_steps")] + ["total_agent_steps=400000"]
    process = subprocess.Popen([sys.executable, "train.py", "--set", *overrides, "--run-dir", str(run_dir),
                                "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (run_dir / "metrics.csv").exists() and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "continue with: python train.py --resume" in out
    assert (run_dir / "checkpoint.pt").exists()


def test_adversarial_rollouts_under_shocks_resume_bit_for_bit(tmp_path):
    shock = ["method=adv", "shock.prob=0.5", "shock.eps=0.1", "shock.steps=2", "shock_warmup=0.5",
             "total_agent_steps=960"]
    full, full_dir = run_to_end(tmp_path, "full", *shock)
    rows = metric_rows(full_dir)
    probs = [float(row["shock/prob"]) for row in rows]
    assert probs[0] == 0.0 and probs[-1] == 0.5 and probs == sorted(probs)  # the warm-up ramp
    assert float(rows[-1]["shock/norm"]) > 0
    config = tiny_config(*shock)
    run_dir = tmp_path / "cut"
    run_dir.mkdir()
    train.train(config, run_dir, progress=False, max_iterations=2)
    resumed = train.train(config, run_dir, resume=True, progress=False)
    assert metric_rows(run_dir) == rows
    assert resumed["system_loss_per_step"] == full["system_loss_per_step"]
    with pytest.raises(ValueError, match="unknown objective 'mad'"):
        tiny_config("shock.objective=mad")


def test_aajr_method_trains_and_logs_its_diagnostics(tmp_path):
    summary, run_dir = run_to_end(tmp_path, "aajr", "method=aajr", "reg_coef=0.5", "reg_steps=2")
    rows = metric_rows(run_dir)
    assert float(rows[-1]["reg/jvp_norm_mean"]) > 0 and "reg/pga_gain" in rows[-1]
    again, again_dir = run_to_end(tmp_path, "aajr2", "method=aajr", "reg_coef=0.5", "reg_steps=2")
    assert metric_rows(again_dir) == rows
