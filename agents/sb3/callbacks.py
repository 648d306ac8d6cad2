"""SB3 callbacks: the project's progress bar over ``learn`` (``agents.sb3``)."""

from __future__ import annotations

import math

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from agents.progress import progress_bar


class RichProgressCallback(BaseCallback):
    """A rich progress bar (``agents.progress.progress_bar``, on stderr) of the agent-steps of one ``learn``
    call; SB3's own ``progress_bar=True`` needs tqdm.

    ``model.learn(steps, callback=RichProgressCallback("seed 0"))``; the bar counts ``num_timesteps`` (every
    agent of every environment is one SB3 step with ``make_sb3_env``) up to the target rounded up to whole
    rollouts, as on-policy SB3 learns, and shows the mean episode return of the last 100 episodes
    (``VecMonitor``).
    """

    def __init__(self, description: str = "training") -> None:
        super().__init__()
        self.description = description
        self.bar = progress_bar(stderr=True)
        self.task = None

    def _on_training_start(self) -> None:
        start, target = self.model.num_timesteps, self.locals["total_timesteps"]
        rollout = getattr(self.model, "n_steps", 1) * self.training_env.num_envs
        total = start + math.ceil(max(target - start, 0) / rollout) * rollout
        self.bar.start()
        self.task = self.bar.add_task(self.description, total=total, completed=start, status="")

    def _on_step(self) -> bool:
        self.bar.update(self.task, completed=self.model.num_timesteps)
        return True

    def _on_rollout_end(self) -> None:
        returns = [info["r"] for info in self.model.ep_info_buffer]
        if returns:
            self.bar.update(self.task, status=f"return {np.mean(returns):+.3f}")

    def _on_training_end(self) -> None:
        self.bar.update(self.task, completed=self.model.num_timesteps)
        self.bar.stop()
