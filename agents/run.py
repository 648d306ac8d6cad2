"""Runs: the run directory, its files, building a learner from a config, training, loading a policy.

A run directory is the unit of results::

    config.yaml         the resolved ``TrainConfig`` (``agents.config.to_dict``)
    checkpoint.pt       everything needed to continue bit for bit (written atomically)
    metrics.csv         one row per iteration (TensorBoard events in ``tb/`` as well, with CleanRL's tag
                        names and the resolved config as the text ``hyperparameters``)
    summary.json        the final evaluation against the scenario's references
    learning_curve.png  training and periodic evaluation returns vs agent-steps (needs matplotlib)

    config = resolve(parse_overrides(["scenario=routing", "size=small"]))
    summary = train(config, "runs/routing-small")        # None if stopped early (Ctrl-C)
    policy = load_policy("runs/routing-small")           # the trained policy alone

Every ``eval_every`` iterations (and at the last) the deterministic policy plays the same held-out
episodes (``PeriodicEvaluation``), optionally under one attack; its ``eval/*`` numbers go in that
iteration's row. With ``track=true`` the metrics go to Weights & Biases as well (the ``wandb`` extra).

Every file is written to a temporary name and renamed, so a crash or an interrupt never leaves a
half-written one; ``train(..., resume=True)`` continues from the checkpoint with the same numbers as an
uninterrupted run (rows of ``metrics.csv`` and TensorBoard events written after the checkpoint are
dropped, so each step is logged once), and resuming a finished run changes no file. A damaged file
(a truncated checkpoint, malformed YAML, CSV or JSON, a checkpoint that does not fit ``config.yaml``) is
a one-line ``ConfigError`` naming it, raised before anything is written.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import math
import os
import pathlib
import signal
import sys
from typing import Any, Callable, NamedTuple

import torch
import yaml

from agents.code_version import code_version
from agents.config import ConfigError, TrainConfig, config_errors, device_kind, load_yaml, resolve, to_dict
from agents.evaluate import TARGET_REFERENCE, summarise
from agents.learner import LEGACY_NAMES, PPOLearner
from agents.policy import MultiAgentActorCritic, make_policy
from agents.progress import progress_bar
from envs.core import Scenario, make_scenario
from envs.vector import TorchVectorEnv, evaluate_policy
from regularizers import make_regularizer
from robustness.evaluate import AttackGrid, play

CONFIG = "config.yaml"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
SUMMARY = "summary.json"
LEARNING_CURVE = "learning_curve.png"
# The periodic evaluation's episodes: seeds neither training's (seed..seed+5) nor the final evaluation's
# (``agents.evaluate.EVAL_SEED_OFFSET``), the same at every evaluation.
PERIODIC_EVAL_SEED_OFFSET = 40_000


def atomic_write(path: pathlib.Path, write: Callable[[pathlib.Path], Any]) -> None:
    """Write through ``write(tmp_path)`` then rename, so a crash never leaves a half-written file."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def atomic_write_csv(path: pathlib.Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    """Write ``rows`` as a CSV atomically; columns: ``columns`` or the first row's keys (missing cells empty)."""
    def write(tmp: pathlib.Path) -> None:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns or list(rows[0]), restval="")
            writer.writeheader()
            writer.writerows(rows)
    atomic_write(path, write)


def save_checkpoint(run_dir: pathlib.Path, learner: PPOLearner, metrics: dict[str, float] | None = None) -> None:
    """The learner's state, and the metrics of its last iteration (the summary's ``final_training``)."""
    write_checkpoint(run_dir, learner.state_dict(), metrics)


def write_checkpoint(run_dir: pathlib.Path, state: dict[str, Any], metrics: dict[str, float] | None = None) -> None:
    """``state`` (a learner's, or a population member's in the same format) with the metrics of its last
    iteration, written atomically to ``run_dir/checkpoint.pt``."""
    if metrics is not None:
        state = {**state, "metrics": {key: float(value) for key, value in metrics.items()}}
    atomic_write(pathlib.Path(run_dir) / CHECKPOINT, lambda tmp: torch.save(state, tmp))


def one_line(error: BaseException) -> str:
    """An exception's message on one line (its lines joined), or its type's name when it has none."""
    text = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return text[:300] or type(error).__name__


def read_torch_file(path: pathlib.Path, device: torch.device | str, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` (no code is unpickled); a file that cannot be read as one,
    whatever the unpickler raises on its bytes, is a one-line ``ConfigError`` naming ``path`` and ``what``."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # truncated, empty or garbage bytes fail in many ways inside the unpickler
        raise ConfigError(f"{path}: not a readable {what} ({one_line(error)})") from None


def read_json(path: pathlib.Path, what: str) -> Any:
    """The JSON value in ``path``; an unreadable or malformed file is a one-line ``ConfigError`` naming it."""
    try:
        return json.loads(pathlib.Path(path).read_text())
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the {what} ({error.strerror or error})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: not a readable {what} ({one_line(error)})") from None


def restore(load: Callable[[Any], Any], state: Any, path: pathlib.Path) -> None:
    """``load(state)`` (a ``load_state_dict``); a checkpoint that does not fit the run (another size,
    scenario or method than its ``config.yaml``, missing entries) is a one-line ``ConfigError`` naming ``path``."""
    try:
        load(state)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as error:
        reason = f"no entry {error}" if isinstance(error, KeyError) else one_line(error)
        raise ConfigError(f"{path}: does not fit the run's {CONFIG} ({reason})") from None


def load_checkpoint(run_dir: pathlib.Path, device: str = "cpu") -> dict[str, Any]:
    """The checkpoint's tensors and numbers, read with ``weights_only=True`` (no code is unpickled)."""
    path = pathlib.Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise ConfigError(f"{path}: no checkpoint there")
    return read_torch_file(path, device, "checkpoint")


def read_metrics(path: pathlib.Path, keep_until_iteration: int) -> list[dict[str, str]]:
    """The rows of a ``metrics.csv`` up to ``keep_until_iteration`` (rows written after the checkpoint are
    dropped; no file, no rows); a file that is not a metrics log is a one-line ``ConfigError`` naming it."""
    if not path.exists():
        return []
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the metrics log ({error.strerror or error})") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise ConfigError(f"{path}: not a metrics log ({one_line(error)})") from None
    if "iteration" not in (reader.fieldnames or []):
        raise ConfigError(f"{path}: not a metrics log (its header {reader.fieldnames!r} has no iteration column)")
    kept = []
    for number, row in enumerate(rows, start=1):
        try:
            iteration = int(row["iteration"])
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: row {number}: iteration {row['iteration']!r} is not an integer") from None
        if iteration <= keep_until_iteration:
            if None in row or None in row.values():
                raise ConfigError(f"{path}: row {number} (iteration {iteration}) has not one cell per column")
            kept.append(row)
    return kept


class MetricsLog:
    """CSV (one row per iteration, the union of the rows' keys as columns, missing cells empty) plus
    TensorBoard when installed and Weights & Biases when tracking. ``LEGACY_NAMES`` go to the CSV only.

    :param rows: the rows kept from before (``read_metrics``), rewritten with the next row.
    :param purge_step: TensorBoard drops the events logged at this step and later (written after the
        checkpoint a run resumes from), so each step is logged once.
    :param tracker: a ``wandb`` run (``start_tracking``) or None.
    """

    def __init__(self, run_dir: pathlib.Path, rows: list[dict[str, Any]], purge_step: int, tracker: Any = None) -> None:
        self.path = pathlib.Path(run_dir) / METRICS
        self.rows = list(rows)
        self.tracker = tracker
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tensorboard = SummaryWriter(str(pathlib.Path(run_dir) / "tb"), purge_step=purge_step)
        except ImportError:
            self.tensorboard = None

    def write_hyperparameters(self, config: TrainConfig) -> None:
        """The resolved config as TensorBoard text ``hyperparameters`` (CleanRL's table), once per run."""
        if self.tensorboard is not None:
            rows = "\n".join(f"|{key}|{value}|" for key, value in flat_items(to_dict(config)))
            self.tensorboard.add_text("hyperparameters", f"|param|value|\n|-|-|\n{rows}")

    def write(self, iteration: int, metrics: dict[str, float]) -> None:
        row = {"iteration": iteration, **{k: f"{v:.6g}" for k, v in sorted(metrics.items())}}
        self.rows.append(row)
        atomic_write_csv(self.path, self.rows, list(dict.fromkeys(key for logged in self.rows for key in logged)))
        step = int(metrics.get("charts/agent_steps", iteration))
        logged = {key: value for key, value in metrics.items() if key not in LEGACY_NAMES}
        if self.tensorboard is not None:
            for key, value in logged.items():
                self.tensorboard.add_scalar(key, value, step)
        if self.tracker is not None:
            self.tracker.log(logged, step=step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.tracker is not None:
            self.tracker.finish()


def flat_items(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``{"ppo": {"gamma": 0.9}}`` -> ``[("ppo.gamma", 0.9)]`` (the keys ``--set`` takes)."""
    items = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            items.extend(flat_items(value, f"{prefix}{key}."))
        else:
            items.append((f"{prefix}{key}", value))
    return items


def check_tracking(config: TrainConfig) -> None:
    """Refuse ``track=true`` without Weights & Biases installed (one line, before anything is written)."""
    if config.track:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError("track=true logs to Weights & Biases, which is not installed: "
                              "pip install 'aajr-marl[wandb]' (or set track=false)") from None


def start_tracking(config: TrainConfig, run_dir: pathlib.Path) -> Any:
    """A Weights & Biases run for ``config.track`` (None otherwise), its files under ``run_dir/wandb``.
    Its id derives from the run directory's absolute path, so a resumed run continues the same W&B run
    (W&B drops the steps it already has). ``WANDB_MODE=offline`` logs without network."""
    if not config.track:
        return None
    import wandb
    run_id = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]
    return wandb.init(project=config.wandb_project, name=run_dir.name, id=run_id, resume="allow",
                      config=to_dict(config), dir=str(run_dir))


class PeriodicEvaluation:
    """The deterministic policy on ``config.eval_episodes`` held-out episodes (seeded with ``config.seed
    + PERIODIC_EVAL_SEED_OFFSET``, the same at every call), under ``config.eval_attack`` or none: one
    ``robustness.evaluate.play`` per call. ``ratio_to_reference`` divides the system loss by that of the
    scenario's target reference (``agents.evaluate.TARGET_REFERENCE``, unattacked) on the same episodes.

    Evaluating changes nothing the training reads (the policy is evaluated in eval mode; torch's global
    generator is restored), so a resumed run logs the same numbers as an uninterrupted one.
    """

    def __init__(self, config: TrainConfig, scenario: Scenario) -> None:
        self.every = config.eval_every
        self.scenario = scenario
        self.episodes = config.eval_episodes
        self.seed = config.seed + PERIODIC_EVAL_SEED_OFFSET
        self.env = TorchVectorEnv(scenario, num_envs=config.eval_episodes, auto_reset=False)
        self.shock = None
        if config.eval_attack != "none":
            grid = AttackGrid(attacks=(config.eval_attack,), modes=("shared",), eps=(config.eval_eps,),
                              episodes=config.eval_episodes)
            self.shock = grid.shock(config.eval_attack, "shared", config.eval_eps)
        self.reference_loss: float | None = None

    def due(self, iteration: int, total_iterations: int) -> bool:
        """Whether iteration ``iteration`` (counted from 1) is evaluated: every ``eval_every``-th and the last."""
        return self.every > 0 and (iteration % self.every == 0 or iteration == total_iterations)

    def __call__(self, policy: MultiAgentActorCritic) -> dict[str, float]:
        """``eval/return_per_agent`` (episodic, mean over agents), ``eval/system_loss`` (per step),
        ``eval/ratio_to_reference`` and, under an attack, ``eval/budget_use``."""
        training = policy.training
        policy.eval()
        try:
            with torch.random.fork_rng(devices=[]):
                if self.reference_loss is None:
                    name = TARGET_REFERENCE.get(self.scenario.name, self.scenario.reference_names[0])
                    self.reference_loss = evaluate_policy(
                        self.scenario, lambda state: self.scenario.reference_action(state, name), self.episodes,
                        self.seed)["system_loss"]
                result = play(self.env, policy, self.shock, self.seed)
        finally:
            policy.train(training)
        metrics = {"eval/return_per_agent": result["return_per_agent"], "eval/system_loss": result["system_loss"],
                   "eval/ratio_to_reference": result["system_loss"] / self.reference_loss}
        if self.shock is not None:
            metrics["eval/budget_use"] = result["budget_use"]
        return metrics


# ----- the run directory ---------------------------------------------------------------------------


def default_run_dir(config: TrainConfig) -> pathlib.Path:
    """``runs/<scenario>-<method>-seed<seed>-<time>``."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return pathlib.Path("runs") / f"{config.scenario}-{config.method}-seed{config.seed}-{stamp}"


def check_new_run_dir(run_dir: pathlib.Path) -> None:
    """Refuse a place a new run cannot go: a file, a folder inside a file, a directory holding a run."""
    for place in (run_dir, *run_dir.parents):
        if place.exists() and not place.is_dir():
            raise ConfigError(f"run directory {run_dir}: {place} is a file; choose another --run-dir")
    if (run_dir / CHECKPOINT).exists():
        raise ConfigError(f"{run_dir} already holds a run; use --resume {run_dir} or another --run-dir")


def create_run(config: TrainConfig, run_dir: pathlib.Path | str | None = None) -> pathlib.Path:
    """Create the run directory (``default_run_dir`` when None) and write its ``config.yaml``; a
    directory that already holds a run (a checkpoint) or is a file is refused."""
    run_dir = default_run_dir(config) if run_dir is None else pathlib.Path(run_dir)
    check_device(config.device)
    check_new_run_dir(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"run directory {run_dir}: cannot create it ({error.strerror or error})") from None
    text = yaml.safe_dump(to_dict(config), sort_keys=False)
    atomic_write(run_dir / CONFIG, lambda tmp: tmp.write_text(text))
    return run_dir


def load_config(run_dir: pathlib.Path | str) -> TrainConfig:
    """The resolved config of a run directory (its ``config.yaml``, validated again); a missing, empty,
    malformed or invalid one is a one-line ``ConfigError`` naming it."""
    path = pathlib.Path(run_dir) / CONFIG
    if not path.is_file():
        raise ConfigError(f"{path}: no run config there (is {run_dir} a run directory?)")
    data = load_yaml(path, str(path))
    missing = [key for key in ("scenario", "size", "method") if key not in data]
    if missing:
        raise ConfigError(f"{path}: not a run config (no {', '.join(missing)}); a run directory's {CONFIG} "
                          f"holds the run's resolved config")
    try:
        return resolve(data)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def check_device(device: str) -> None:
    """Refuse a device this machine does not have (one line, before anything is built)."""
    kind = device_kind(device)
    backend = {"cuda": torch.cuda, "mps": getattr(torch.backends, "mps", None), "xpu": getattr(torch, "xpu", None)}
    if kind != "cpu" and not (kind in backend and backend[kind] is not None and backend[kind].is_available()):
        raise ConfigError(f"device {device!r} requested but {kind} is not available on this machine")


# ----- building, training, loading -----------------------------------------------------------------


def build_learner(config: TrainConfig) -> PPOLearner:
    """The learner of a run config: environments, policy (with the method's architecture), penalty,
    adversarial rollouts, optimizer; seeded by ``config.seed``."""
    check_device(config.device)
    with config_errors("env: "):
        env = TorchVectorEnv(config.scenario, num_envs=config.ppo.num_envs, device=config.device,
                             seed=config.seed, **config.env)
    agent_steps_per_iteration = config.ppo.num_envs * config.ppo.rollout_steps * env.n_agents
    iterations = max(1, math.ceil(config.total_agent_steps / agent_steps_per_iteration))
    method = config.method_spec
    penalty = None if method.penalty is None else make_regularizer(method.name, env.scenario, config.reg)
    transform = None
    if method.transform_policy is not None:
        transform = lambda policy: method.transform_policy(policy, config.reg)  # noqa: E731
    return PPOLearner(env, config.ppo, iterations, seed=config.seed, penalty=penalty, reg_coef=config.reg_coef,
                      shock=config.shock if method.adversarial else None, shock_warmup=config.shock_warmup,
                      transform_policy=transform, policy_diagnostics=method.policy_diagnostics)


class StopRequest:
    """First Ctrl-C asks the loop to checkpoint and stop at the end of the iteration; a second one aborts."""

    def __init__(self) -> None:
        self.requested = False

    def __enter__(self) -> "StopRequest":
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupt: saving a checkpoint at the end of this iteration (Ctrl-C again to abort)",
              file=sys.stderr)

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self.previous)


def train(config: TrainConfig, run_dir: pathlib.Path | str, resume: bool = False, progress: bool = True,
          max_iterations: int | None = None) -> dict[str, Any] | None:
    """Train the run in ``run_dir`` to the end (or for ``max_iterations`` more iterations) and write its
    files; returns the summary when finished, None when stopped early.

    A fresh run (``resume=False``) creates the directory and its ``config.yaml`` (``create_run``); with
    ``resume=True`` it continues from the directory's checkpoint (pass ``load_config(run_dir)``), and on a
    finished run returns its ``summary.json`` unchanged. Every file the run reads is checked (one-line
    ``ConfigError``) before anything is written.
    """
    code_version()  # read now, while the checkout still holds the code this process imported
    run_dir = pathlib.Path(run_dir)
    check_device(config.device)
    check_tracking(config)
    if resume:
        state = load_checkpoint(run_dir, config.device)
    else:
        check_new_run_dir(run_dir)
    learner = build_learner(config)
    rows: list[dict[str, Any]] = []
    metrics: dict[str, float] = {}
    if resume:
        restore(learner.load_state_dict, state, run_dir / CHECKPOINT)
        if learner.iteration >= learner.total_iterations and (run_dir / SUMMARY).exists():
            return read_summary(run_dir)  # resuming a finished run changes no file
        rows = read_metrics(run_dir / METRICS, learner.iteration)
        metrics = state.get("metrics", {})  # the last iteration's, for the summary of a run killed after it
    else:
        create_run(config, run_dir)
    stop_at = learner.total_iterations if max_iterations is None else min(
        learner.total_iterations, learner.iteration + max_iterations)
    if learner.iteration < stop_at or not resume:
        metrics = run_iterations(config, learner, run_dir, rows, stop_at, progress) or metrics
    if learner.iteration < learner.total_iterations:
        print(f"stopped at iteration {learner.iteration}/{learner.total_iterations}; "
              f"continue with: python train.py --resume {run_dir}")
        return None
    return write_summary(learner, config, run_dir, metrics)


def write_summary(learner, config: TrainConfig, run_dir: pathlib.Path, metrics: dict[str, float]) -> dict[str, Any]:
    """The finished run's ``summary.json`` (``summarise`` of ``learner``, anything with its ``policy``, ``env``
    and counters, plus the last iteration's ``metrics`` and ``code_version()``, the code this process
    runs) and ``learning_curve.png``; returns the summary."""
    summary = summarise(learner, config)
    summary["final_training"] = {key: value for key, value in metrics.items()
                                 if key.startswith("charts/") and key != "charts/SPS"}  # the numbers that repeat
    summary["learning_curve"] = write_learning_curve(run_dir)
    summary["code"] = code_version()
    text = json.dumps(summary, indent=2)
    atomic_write(run_dir / SUMMARY, lambda tmp: tmp.write_text(text))
    return summary


def read_summary(run_dir: pathlib.Path | str) -> dict[str, Any]:
    """The ``summary.json`` of a finished run (a one-line ``ConfigError`` naming a damaged one)."""
    path = pathlib.Path(run_dir) / SUMMARY
    summary = read_json(path, "run summary")
    if not isinstance(summary, dict):
        raise ConfigError(f"{path}: not a run summary (a JSON {type(summary).__name__}, not an object)")
    return summary


def run_iterations(config: TrainConfig, learner: PPOLearner, run_dir: pathlib.Path, rows: list[dict[str, Any]],
                   stop_at: int, progress: bool) -> dict[str, float]:
    """Train until iteration ``stop_at`` or Ctrl-C, logging every iteration after ``rows`` (the log kept
    from before) and checkpointing; returns the last iteration's metrics (empty if none ran)."""
    evaluation = PeriodicEvaluation(config, learner.env.scenario)
    log = MetricsLog(run_dir, rows, purge_step=learner.agent_steps + 1, tracker=start_tracking(config, run_dir))
    if learner.iteration == 0:
        log.write_hyperparameters(config)
    metrics: dict[str, float] = {}
    with StopRequest() as stop, progress_bar(disable=not progress) as bar:
        task = bar.add_task(f"{config.scenario}/{config.method}/seed{config.seed}", total=learner.total_iterations,
                            completed=learner.iteration, status="")
        while learner.iteration < stop_at and not stop.requested:
            metrics = learner.train_iteration()
            if evaluation.due(learner.iteration, learner.total_iterations):
                metrics.update(evaluation(learner.policy))
            log.write(learner.iteration, metrics)
            status = (f"{learner.agent_steps:,} agent-steps | "
                      f"return {metrics.get('charts/episodic_return', float('nan')):+.3f} "
                      f"loss/step {metrics['charts/system_loss']:+.4f} "
                      f"{metrics['charts/SPS']:,.0f} agent-steps/s")
            bar.update(task, completed=learner.iteration, status=status)
            if learner.iteration % config.checkpoint_every == 0 or stop.requested:
                save_checkpoint(run_dir, learner, metrics)
    save_checkpoint(run_dir, learner, metrics or None)
    log.close()
    return metrics


def write_learning_curve(run_dir: pathlib.Path) -> str:
    """``learning_curve.png`` from the run's ``metrics.csv``: the training episodic return (with
    exploration noise, and shocks for the adversarial methods) and the periodic evaluation's return
    (deterministic policy, ``eval/return_per_agent``) vs agent-steps. Returns the file's name, or a
    one-line note when matplotlib is missing (the ``benchmark`` extra)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return "not written: matplotlib is not installed (pip install 'aajr-marl[benchmark]')"
    rows = read_metrics(run_dir / METRICS, keep_until_iteration=2 ** 63)

    def curve(key: str) -> tuple[list[float], list[float]]:
        points = [(float(row["charts/agent_steps"]), float(row[key])) for row in rows if row.get(key, "") != ""]
        return [x for x, _ in points], [y for _, y in points]

    figure = Figure(figsize=(6.4, 4.0), layout="constrained")
    axes = figure.subplots()
    axes.plot(*curve("charts/episodic_return"), label="training (sampled actions)", alpha=0.6)
    axes.plot(*curve("eval/return_per_agent"), "o-", label="evaluation (deterministic, held-out episodes)")
    axes.set_xlabel("agent-steps")
    axes.set_ylabel("episodic return per agent")
    axes.set_title(run_dir.name)
    axes.grid(alpha=0.3)
    axes.legend()
    atomic_write(run_dir / LEARNING_CURVE, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    return LEARNING_CURVE


class TrainedRun(NamedTuple):
    """A run directory loaded for evaluation."""

    config: TrainConfig
    scenario: Scenario
    policy: MultiAgentActorCritic


def load_run(run_dir: pathlib.Path | str, device: str = "cpu") -> TrainedRun:
    """The config, the scenario (float32, on ``device``) and the trained policy (eval mode) of a run
    directory, rebuilt from ``config.yaml`` and the checkpoint's policy weights only."""
    config = load_config(run_dir)
    check_device(device)
    with config_errors("env: "):
        scenario = make_scenario(config.scenario, device=device, **config.env)
    with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave the caller's generator alone
        policy = make_policy(scenario, config.ppo)
        method = config.method_spec
        if method.transform_policy is not None:
            method.transform_policy(policy, config.reg)
    path = pathlib.Path(run_dir) / CHECKPOINT
    restore(lambda state: policy.load_state_dict(state["policy"]), load_checkpoint(run_dir, device), path)
    policy.eval()
    return TrainedRun(config, scenario, policy)


def load_policy(run_dir: pathlib.Path | str, device: str = "cpu") -> MultiAgentActorCritic:
    """The trained policy of a run directory (eval mode, on ``device``): ``deterministic_action(obs)``,
    ``act``, ``value``, ready for evaluation, attacks and the penalties."""
    return load_run(run_dir, device).policy
