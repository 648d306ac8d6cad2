"""Train one method on one scenario: ``python train.py --scenario routing --method ppo --seed 0``.

With no arguments it runs the default job (routing, default size, PPO, seed 0; a few minutes on a
2-core CPU). A run directory holds the resolved ``config.yaml``, ``metrics.csv``, TensorBoard events
(``tb/``), ``checkpoint.pt`` (written atomically every ``checkpoint_every`` iterations and on Ctrl-C)
and ``summary.json``. ``--resume RUN_DIR`` continues a run bit-for-bit from its checkpoint.
Any field can be overridden: ``--set ppo.learning_rate=1e-3 env.n_agents=8``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import pathlib
import signal
import sys
from typing import Any

import torch
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from agents.config import METHODS, ConfigError, TrainConfig, parse_overrides, resolve, to_dict
from agents.evaluate import summarise
from agents.learner import PPOLearner
from envs.vector import TorchVectorEnv
from regularizers import make_regularizer

CHECKPOINT = "checkpoint.pt"


def atomic_write(path: pathlib.Path, write) -> None:
    """Write through ``write(tmp_path)`` then rename, so a crash never leaves a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(run_dir: pathlib.Path, learner: PPOLearner) -> None:
    atomic_write(run_dir / CHECKPOINT, lambda tmp: torch.save(learner.state_dict(), tmp))


def load_checkpoint(run_dir: pathlib.Path, device: str) -> dict[str, Any]:
    return torch.load(run_dir / CHECKPOINT, map_location=device, weights_only=True)


class MetricsLog:
    """CSV (one row per iteration, columns fixed by the first row) plus TensorBoard when installed."""

    def __init__(self, run_dir: pathlib.Path, keep_until_iteration: int) -> None:
        self.path = run_dir / "metrics.csv"
        self.rows: list[dict[str, Any]] = []
        if self.path.exists():  # on resume, drop rows written after the checkpoint
            with self.path.open() as f:
                self.rows = [row for row in csv.DictReader(f) if int(row["iteration"]) <= keep_until_iteration]
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tensorboard = SummaryWriter(str(run_dir / "tb"))
        except ImportError:
            self.tensorboard = None

    def write(self, iteration: int, metrics: dict[str, float]) -> None:
        row = {"iteration": iteration, **{k: f"{v:.6g}" for k, v in sorted(metrics.items())}}
        self.rows.append(row)
        columns = list(dict.fromkeys(key for logged in self.rows for key in logged))

        def write_csv(tmp: pathlib.Path) -> None:
            with tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns, restval="")
                writer.writeheader()
                writer.writerows(self.rows)

        atomic_write(self.path, write_csv)
        if self.tensorboard is not None:
            step = int(metrics.get("charts/agent_steps", iteration))
            for key, value in metrics.items():
                self.tensorboard.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def parse_args(argv: list[str] | None) -> tuple[dict[str, Any], pathlib.Path | None, pathlib.Path | None, bool]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", help="commons, compute or routing (default: routing)")
    parser.add_argument("--size", help="configs/<scenario>.yaml section: small, default, large")
    parser.add_argument("--method", help=f"training method: {', '.join(METHODS)} (default: ppo)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="cpu, cuda, cuda:N")
    parser.add_argument("--total-agent-steps", type=int)
    parser.add_argument("--reg-coef", type=float, help="weight lambda of the method's penalty (default 0.1)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override any field")
    parser.add_argument("--run-dir", type=pathlib.Path, help="where to write (default runs/<name>-<time>)")
    parser.add_argument("--resume", type=pathlib.Path, metavar="RUN_DIR", help="continue a run from its checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.set)
    for name in ("scenario", "size", "method", "seed", "device", "total_agent_steps", "reg_coef"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    return overrides, args.run_dir, args.resume, args.no_progress


def prepare_run(overrides: dict[str, Any], run_dir: pathlib.Path | None,
                resume: pathlib.Path | None) -> tuple[TrainConfig, pathlib.Path]:
    """Resolve the config (from the run directory when resuming) and create the run directory."""
    if resume is not None:
        if not (resume / "config.yaml").exists() or not (resume / CHECKPOINT).exists():
            raise ConfigError(f"--resume {resume}: no config.yaml and {CHECKPOINT} there")
        if overrides:
            raise ConfigError("--resume takes the run's own config; other options are not allowed with it")
        saved = yaml.safe_load((resume / "config.yaml").read_text())
        return resolve(saved), resume
    config = resolve(overrides)
    if run_dir is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = pathlib.Path("runs") / f"{config.scenario}-{config.method}-seed{config.seed}-{stamp}"
    if (run_dir / CHECKPOINT).exists():
        raise ConfigError(f"{run_dir} already holds a run; use --resume {run_dir} or another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(to_dict(config), sort_keys=False)
    atomic_write(run_dir / "config.yaml", lambda tmp: tmp.write_text(text))
    return config, run_dir


def build_learner(config: TrainConfig) -> PPOLearner:
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {config.device!r} requested but CUDA is not available")
    env = TorchVectorEnv(config.scenario, num_envs=config.ppo.num_envs, device=config.device,
                         seed=config.seed, **config.env)
    agent_steps_per_iteration = config.ppo.num_envs * config.ppo.rollout_steps * env.n_agents
    iterations = max(1, math.ceil(config.total_agent_steps / agent_steps_per_iteration))
    method = config.method_spec
    penalty = None
    if method.penalty is not None:
        penalty = make_regularizer(method.penalty, env.scenario, config.regularizer_settings())
    return PPOLearner(env, config.ppo, iterations, seed=config.seed, penalty=penalty, reg_coef=config.reg_coef,
                      shock=config.shock if method.adversarial else None, shock_warmup=config.shock_warmup,
                      spectral_bound=config.specnorm_bound if method.spectral_norm else None)


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


def train(config: TrainConfig, run_dir: pathlib.Path, resume: bool = False, progress: bool = True,
          max_iterations: int | None = None) -> dict[str, Any] | None:
    """Train to the end (or for ``max_iterations`` more iterations); returns the summary when finished."""
    learner = build_learner(config)
    if resume:
        learner.load_state_dict(load_checkpoint(run_dir, config.device))
    log = MetricsLog(run_dir, keep_until_iteration=learner.iteration)
    stop_at = learner.total_iterations if max_iterations is None else min(
        learner.total_iterations, learner.iteration + max_iterations)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   TextColumn("{task.fields[status]}"), disable=not progress, transient=False)
    metrics: dict[str, float] = {}
    with StopRequest() as stop, bar:
        task = bar.add_task(f"{config.scenario}/{config.method}/seed{config.seed}", total=learner.total_iterations,
                            completed=learner.iteration, status="")
        while learner.iteration < stop_at and not stop.requested:
            metrics = learner.train_iteration()
            log.write(learner.iteration, metrics)
            status = (f"return {metrics.get('charts/episodic_return', float('nan')):+.3f} "
                      f"loss/step {metrics['charts/system_loss']:+.4f} "
                      f"{metrics['perf/agent_steps_per_second']:,.0f} agent-steps/s")
            bar.update(task, completed=learner.iteration, status=status)
            if learner.iteration % config.checkpoint_every == 0 or stop.requested:
                save_checkpoint(run_dir, learner)
    save_checkpoint(run_dir, learner)
    log.close()
    if learner.iteration < learner.total_iterations:
        print(f"stopped at iteration {learner.iteration}/{learner.total_iterations}; "
              f"continue with: python train.py --resume {run_dir}")
        return None
    summary = summarise(learner, config)
    summary["final_training"] = {key: value for key, value in metrics.items() if key.startswith("charts/")}
    text = json.dumps(summary, indent=2)
    atomic_write(run_dir / "summary.json", lambda tmp: tmp.write_text(text))
    return summary


def main(argv: list[str] | None = None) -> int:
    try:
        overrides, run_dir, resume, no_progress = parse_args(argv)
        config, run_dir = prepare_run(overrides, run_dir, resume)
        summary = train(config, run_dir, resume=resume is not None, progress=not no_progress)
    except (ConfigError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if summary is not None:
        print(format_summary(summary))
    print(f"run directory: {run_dir}")
    return 0


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"{summary['scenario']} / {summary['method']} / seed {summary['seed']}: "
             f"{summary['agent_steps']:,} agent-steps in {summary['iterations']} iterations",
             f"  last training iteration: episodic return (mean over agents) "
             f"{summary['final_training'].get('charts/episodic_return', float('nan')):+.4f}, "
             f"system loss per step {summary['final_training'].get('charts/system_loss', float('nan')):+.4f}",
             f"  mean system loss per step (deterministic policy, {summary['eval_envs']} episodes):"]
    for name, value in summary["system_loss_per_step"].items():
        lines.append(f"    {name:>20s}  {value:+.5f}")
    lines.append(f"  ratio to {summary['reference']}: {summary['ratio_to_reference']:.4f} "
                 f"({summary['ratio_meaning']})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
