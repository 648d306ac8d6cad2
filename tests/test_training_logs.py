"""What a training run logs: periodic evaluation rows (and their resume), the learning curve, CleanRL's
TensorBoard tags with the hyper-parameters as text, and Weights & Biases tracking (mocked, and offline
when wandb is installed)."""

import csv
import pathlib
import shutil
import sys
import types

import pytest
import torch

from agents import run
from agents.config import ConfigError, parse_overrides, resolve
from agents.evaluate import TARGET_REFERENCE
from agents.learner import LEGACY_NAMES
from envs.vector import TorchVectorEnv, evaluate_policy
from robustness.evaluate import play

# 10 iterations of 160 agent-steps; evaluations at iterations 3, 6, 9 and the last, 10
TINY = ["scenario=commons", "size=small", "total_agent_steps=1600", "checkpoint_every=1", "eval_envs=4",
        "env.horizon=10", "ppo.num_envs=8", "ppo.rollout_steps=10", "eval_every=3", "eval_episodes=6"]
EVALUATED = [3, 6, 9, 10]
SHORT = ["total_agent_steps=480"]  # 3 iterations
CLEANRL_TAGS = ["losses/value_loss", "losses/policy_loss", "losses/entropy", "losses/approx_kl", "losses/clipfrac",
                "losses/explained_variance", "charts/SPS", "charts/learning_rate", "charts/episodic_return"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_config(*extra: str):
    return resolve(parse_overrides(TINY + list(extra)))


def read_rows(run_dir: pathlib.Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as f:
        return [{k: v for k, v in row.items() if k != "charts/SPS"} for row in csv.DictReader(f)]


def eval_rows(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [row for row in rows if row.get("eval/return_per_agent", "") != ""]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[dict, pathlib.Path]:
    """One uninterrupted tiny run (its torch threads set to 1 for the time it trains)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_dir = tmp_path_factory.mktemp("runs") / "full"
        return run.train(tiny_config(), run_dir, progress=False), run_dir
    finally:
        torch.set_num_threads(threads)


def test_evaluation_rows_appear_every_eval_every_iterations_and_at_the_last(finished):
    summary, run_dir = finished
    rows = read_rows(run_dir)
    assert [int(row["iteration"]) for row in rows] == list(range(1, 11))
    assert [int(row["iteration"]) for row in eval_rows(rows)] == EVALUATED
    references = {round(float(row["eval/system_loss"]) / float(row["eval/ratio_to_reference"]), 4)
                  for row in eval_rows(rows)}
    assert len(references) == 1  # the same reference episodes every time
    # the last evaluation is the trained policy's deterministic play on the held-out episodes
    config, scenario, policy = run.load_run(run_dir)
    seed = config.seed + run.PERIODIC_EVAL_SEED_OFFSET
    expected = play(TorchVectorEnv(scenario, num_envs=config.eval_episodes, auto_reset=False), policy, None, seed)
    reference = evaluate_policy(scenario, lambda state: scenario.reference_action(state, TARGET_REFERENCE["commons"]),
                                config.eval_episodes, seed)["system_loss"]
    last = eval_rows(rows)[-1]
    assert float(last["eval/return_per_agent"]) == pytest.approx(expected["return_per_agent"], rel=1e-5)
    assert float(last["eval/system_loss"]) == pytest.approx(expected["system_loss"], rel=1e-5)
    assert float(last["eval/ratio_to_reference"]) == pytest.approx(expected["system_loss"] / reference, rel=1e-5)
    # held-out: other episodes than the final evaluation's
    assert float(last["eval/system_loss"]) != pytest.approx(summary["system_loss_per_step"]["learned"], rel=1e-6)


def test_a_run_killed_after_an_evaluation_resumes_without_duplicate_rows_and_the_same_numbers(finished, tmp_path):
    _, full_dir = finished
    config = tiny_config()
    run_dir = tmp_path / "cut"
    assert run.train(config, run_dir, progress=False, max_iterations=5) is None
    checkpoint = (run_dir / "checkpoint.pt").read_bytes()
    run.train(config, run_dir, resume=True, progress=False, max_iterations=1)  # logs iteration 6, evaluated
    (run_dir / "checkpoint.pt").write_bytes(checkpoint)  # killed after logging iteration 6, before its checkpoint
    assert [int(row["iteration"]) for row in eval_rows(read_rows(run_dir))] == [3, 6]
    run.train(config, run_dir, resume=True, progress=False)
    rows = read_rows(run_dir)
    assert [int(row["iteration"]) for row in rows] == list(range(1, 11))
    assert rows == read_rows(full_dir)  # every number, evaluations included, as uninterrupted


def test_tensorboard_has_cleanrl_tags_evaluations_and_the_hyperparameters_once(finished):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    _, run_dir = finished
    events = event_accumulator.EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert set(CLEANRL_TAGS) <= scalars
    assert {"eval/return_per_agent", "eval/system_loss", "eval/ratio_to_reference"} <= scalars
    assert not scalars & set(LEGACY_NAMES)  # the old names stay in metrics.csv only
    assert not scalars & {"losses/clip_fraction", "perf/agent_steps_per_second"}
    assert [event.step for event in events.Scalars("eval/return_per_agent")] == [160 * i for i in EVALUATED]
    assert len(events.Scalars("charts/SPS")) == 10
    texts = events.Tensors("hyperparameters/text_summary")
    assert len(texts) == 1
    text = texts[0].tensor_proto.string_val[0].decode()
    assert text.startswith("|param|value|\n|-|-|\n") and "|ppo.num_envs|8|" in text and "|eval_every|3|" in text


def test_old_names_repeat_the_new_ones_in_metrics_csv(finished):
    _, run_dir = finished
    for row in read_rows(run_dir):
        for old, new in LEGACY_NAMES.items():
            assert row[old] == row[new]


def test_the_learning_curve_png_is_written(finished):
    summary, run_dir = finished
    assert summary["learning_curve"] == "learning_curve.png"
    assert (run_dir / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run_dir / "learning_curve.png").stat().st_size > 5000
    assert "charts/SPS" not in summary["final_training"]  # the summary holds the numbers that repeat


def test_without_matplotlib_or_evaluations_the_run_finishes_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib... raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    summary = run.train(tiny_config("eval_every=0", *SHORT), tmp_path / "run", progress=False)
    assert summary["learning_curve"].startswith("not written: matplotlib is not installed")
    assert not (tmp_path / "run" / "learning_curve.png").exists()
    rows = read_rows(tmp_path / "run")
    assert len(rows) == 3 and not any(key.startswith("eval/") for key in rows[0])


def test_evaluation_under_an_attack_logs_the_budget_use(finished, tmp_path):
    summary = run.train(tiny_config("eval_attack=system", "eval_eps=0.3", "eval_every=2", *SHORT), tmp_path / "run",
                        progress=False)
    assert summary is not None
    attacked = eval_rows(read_rows(tmp_path / "run"))
    assert [int(row["iteration"]) for row in attacked] == [2, 3]
    assert all(0 < float(row["eval/budget_use"]) <= 1 + 1e-6 for row in attacked)
    nominal = eval_rows(read_rows(finished[1]))[0]  # iteration 3 of the same training without the attack
    assert "eval/budget_use" not in nominal or nominal["eval/budget_use"] == ""
    assert float(attacked[-1]["eval/system_loss"]) != float(nominal["eval/system_loss"])


@pytest.mark.parametrize("override, message", [
    ("eval_every=-1", "eval_every must be an integer >= 0 (0: no periodic evaluation), got -1"),
    ("eval_episodes=0", "eval_episodes must be a positive integer, got 0"),
    ("eval_attack=learned", "unknown eval_attack 'learned'; allowed: 'none', 'system'"),
    ("eval_eps=0", "eval_eps must lie in (0.0, inf], got 0.0"),
    ("track=maybe", "track: expected bool, got 'maybe' (str)"),
    ("wandb_project=' '", "wandb_project must not be empty"),
])
def test_bad_evaluation_and_tracking_settings_are_one_line(override, message):
    with pytest.raises(ConfigError) as error:
        tiny_config(override)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_track_without_wandb_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match=r"^track=true logs to Weights & Biases, which is not installed"):
        run.train(tiny_config("track=true"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


class FakeWandb(types.ModuleType):
    """Records ``wandb.init``'s arguments and every ``log`` call."""

    def __init__(self) -> None:
        super().__init__("wandb")
        self.inits, self.logs, self.finished = [], [], 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return self

    def log(self, data, step):
        self.logs.append((step, dict(data)))

    def finish(self):
        self.finished += 1


def test_track_logs_every_iteration_with_the_config_to_wandb(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    config = tiny_config("track=true", "wandb_project=robust-marl", *SHORT)
    run_dir = tmp_path / "run"
    run.train(config, run_dir, progress=False, max_iterations=2)
    run.train(config, run_dir, resume=True, progress=False)
    first, second = fake.inits
    assert first["project"] == "robust-marl" and first["config"]["eval_every"] == 3
    assert first["id"] == second["id"] and first["resume"] == "allow"  # a resumed run continues the same W&B run
    assert [step for step, _ in fake.logs] == [160, 320, 480] and fake.finished == 2
    assert set(CLEANRL_TAGS) <= set(fake.logs[0][1]) and "eval/return_per_agent" in fake.logs[2][1]
    assert not set(fake.logs[0][1]) & set(LEGACY_NAMES)


def test_track_with_wandb_offline_writes_the_offline_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    try:
        summary = run.train(tiny_config("track=true", *SHORT), run_dir, progress=False)
    finally:
        shutil.rmtree(tmp_path / "wandb-home", ignore_errors=True)
    assert summary is not None
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
