"""agents.run and train.py: determinism, resume, Ctrl-C, load_policy, configs, and a subprocess smoke test."""

import csv
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import torch

from agents import run
from agents.config import ConfigError, parse_overrides, resolve
from agents.evaluate import EVAL_SEED_OFFSET, evaluate_against_references

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = ["scenario=commons", "size=small", "total_agent_steps=1600", "checkpoint_every=1", "eval_envs=4",
        "env.horizon=10", "ppo.num_envs=8", "ppo.rollout_steps=10"]


def tiny_config(*extra: str):
    return resolve(parse_overrides(TINY + list(extra)))


def metric_rows(run_dir: pathlib.Path) -> list[dict]:
    with (run_dir / "metrics.csv").open() as f:
        return [{k: v for k, v in row.items() if k != "charts/SPS"} for row in csv.DictReader(f)]  # timing varies


def run_to_end(tmp_path, name, *extra):
    config = tiny_config(*extra)
    run_dir = tmp_path / name
    run_dir.mkdir()
    return run.train(config, run_dir, progress=False), run_dir


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
    assert run.train(config, run_dir, progress=False, max_iterations=4) is None
    # a row written after the checkpoint (as if killed mid-iteration) must not survive the resume
    with (run_dir / "metrics.csv").open("a") as f:
        f.write("99,junk\n")
    resumed = run.train(config, run_dir, resume=True, progress=False)
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
    (["--method", "aajr", "--reg-coef", "-1"], "error: reg_coef must lie in [0.0, inf], got -1.0"),
    (["--method", "aajr", "--set", "reg.norm=l3"], "error: reg: unknown norm 'l3'; allowed: 'l2', 'linf'"),
    (["--method", "aajr", "--set", "reg_eps=0.2"], "error: unknown key(s) reg_eps (reg_eps is now reg.eps)"),
    (["--method", "jacobian", "--set", "reg.eps=0.2"], "error: unknown key(s) reg.eps; allowed: reg.directions"),
    (["--method", "ppo", "--set", "reg.eps=0.2"], "error: method 'ppo' has no settings"),
    (["--set", "env.n_agents=-1"], "error: env: n_agents must be a positive integer, got -1"),
    (["--set", "ppo.num_envs=abc"], "error: ppo.num_envs: expected int, got 'abc' (str)"),
    (["--set", "ppo.learning_rat=0.1"], "error: unknown key(s) ppo.learning_rat; allowed: ppo.num_envs"),
    (["--size", "huge"], "error: unknown size 'huge'; allowed: small, default, large"),
    (["--device", "gpu"], "error: device 'gpu' is not a torch device"),
    pytest.param(["--device", "cuda"], "error: device 'cuda' requested but cuda is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")),
])
def test_bad_configs_give_one_clear_line(args, message, tmp_path):
    result = run_cli(*args, "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert result.stderr.strip().startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # refused before anything is written


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
    run.train(config, run_dir, progress=False, max_iterations=2)
    resumed = run.train(config, run_dir, resume=True, progress=False)
    assert metric_rows(run_dir) == rows
    assert resumed["system_loss_per_step"] == full["system_loss_per_step"]
    with pytest.raises(ValueError, match="unknown objective 'mad'"):
        tiny_config("shock.objective=mad")


def test_aajr_method_trains_and_logs_its_diagnostics(tmp_path):
    summary, run_dir = run_to_end(tmp_path, "aajr", "method=aajr", "reg_coef=0.5", "reg.steps=2")
    rows = metric_rows(run_dir)
    assert float(rows[-1]["reg/jvp_norm_mean"]) > 0 and "reg/pga_gain" in rows[-1]
    again, again_dir = run_to_end(tmp_path, "aajr2", "method=aajr", "reg_coef=0.5", "reg.steps=2")
    assert metric_rows(again_dir) == rows


def test_load_policy_rebuilds_the_trained_policy_alone(tmp_path):
    summary, run_dir = run_to_end(tmp_path, "trained", "method=specnorm")  # an architecture the loader must rebuild
    before = torch.random.get_rng_state()
    loaded = run.load_run(run_dir)
    assert torch.equal(torch.random.get_rng_state(), before)  # loading leaves the caller's generator alone
    assert not loaded.policy.training and loaded.config == tiny_config("method=specnorm")
    again = evaluate_against_references(loaded.scenario, run.load_policy(run_dir), loaded.config.eval_envs,
                                        loaded.config.seed + EVAL_SEED_OFFSET)
    assert again["system_loss_per_step"] == summary["system_loss_per_step"]  # same policy, same episodes


def test_run_files_are_checked_before_use(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        run.create_run(tiny_config(), tmp_path / "file")
    with pytest.raises(ConfigError, match="no run config there"):
        run.load_policy(tmp_path)
    summary, run_dir = run_to_end(tmp_path, "run")
    intact = (run_dir / "checkpoint.pt").read_bytes()
    for damaged in (b"garbage", b"", intact[: len(intact) // 2], b"\x80\x02]q\x00a."):  # the last: an unpickler IndexError
        (run_dir / "checkpoint.pt").write_bytes(damaged)
        with pytest.raises(ConfigError, match="not a readable checkpoint"):
            run.load_policy(run_dir)
    (run_dir / "config.yaml").write_text("scenario: [unclosed")
    with pytest.raises(ConfigError, match="config.yaml: not valid YAML"):
        run.load_config(run_dir)


def test_configs_ship_with_the_package_and_a_bad_one_is_one_line(tmp_path):
    packaged = resolve({"scenario": "routing", "size": "small"})
    assert packaged.env == {"n_agents": 2, "n_paths": 3, "horizon": 10} and packaged.total_agent_steps == 20000
    (tmp_path / "routing.yaml").write_text("small:\n  total_agent_steps: 1234\n")
    assert resolve({"size": "small"}, config_dir=tmp_path).total_agent_steps == 1234
    assert resolve({"size": "small"}, config_dir=tmp_path).env["n_paths"] == 2  # the scenario's small preset
    with pytest.raises(ConfigError, match="routing.yaml has no section 'default'"):
        resolve({}, config_dir=tmp_path)
    with pytest.raises(ConfigError, match="commons.yaml is missing"):
        resolve({"scenario": "commons"}, config_dir=tmp_path)
    (tmp_path / "routing.yaml").write_text("small: [1, 2\n")
    with pytest.raises(ConfigError, match="routing.yaml: not valid YAML at line 2"):
        resolve({"size": "small"}, config_dir=tmp_path)
    (tmp_path / "routing.yaml").write_text("small: 3\n")
    with pytest.raises(ConfigError, match="section 'small' must be a mapping"):
        resolve({"size": "small"}, config_dir=tmp_path)


def test_the_library_imports_no_top_level_script():
    code = ("import importlib, pkgutil, sys\n"
            "import agents, envs, regularizers, robustness\n"
            "for package in (agents, envs, regularizers, robustness):\n"
            "    for module in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
            "        importlib.import_module(module.name)\n"
            "assert 'agents.sb3' in sys.modules\n"
            "print(sorted(name for name in ('train', 'benchmark') if name in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT.parent, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
