"""The minibatch of joint transitions that the learner, the penalties and the diagnostics share.

A ``Batch`` holds M joint transitions (all N agents of one environment at one step): what the agents
observed, the actions the environment received, and the scenario state before the step (what
``system_loss`` and the attacks need). The learner adds its PPO fields; elsewhere they are None.
``Batch.from_steps`` is the one place a batch is built from T steps of B environments.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from envs.core import State


@dataclasses.dataclass(frozen=True)
class Batch:
    """M joint transitions; every tensor has the leading dimension M.

    :param obs: ``(M, N, D)`` observations the agents acted on.
    :param actions: ``(M, N, A)`` actions the environment received (after squashing).
    :param state: the scenario state before the step, each value ``(M, ...)``.
    :param pre_actions: ``(M, N, A)`` the learner's pre-squash Gaussian samples.
    :param log_probs: ``(M, N)`` their log-probabilities at collection time.
    :param values: ``(M, N)`` the critic's values at collection time.
    :param advantages: ``(M, N)`` GAE advantages.
    :param returns: ``(M, N)`` advantages + values.
    """

    obs: torch.Tensor
    actions: torch.Tensor
    state: State
    pre_actions: torch.Tensor | None = None
    log_probs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    @classmethod
    def from_steps(cls, states: Sequence[State], **steps: torch.Tensor | Sequence[torch.Tensor]) -> "Batch":
        """The batch of T steps of B environments, flattened step-major to ``M = T * B``.

        ``states``: the T scenario states (each value ``(B, ...)``); every other field is a ``(T, B, ...)``
        tensor or a sequence of T ``(B, ...)`` tensors.
        """
        def flat(value: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
            stacked = value if torch.is_tensor(value) else torch.stack(list(value))
            return stacked.flatten(0, 1)

        state = {key: flat([s[key] for s in states]) for key in states[0]}
        return cls(state=state, **{name: flat(value) for name, value in steps.items()})

    def __len__(self) -> int:
        return self.obs.shape[0]

    def __getitem__(self, index: torch.Tensor | slice) -> "Batch":
        """The transitions at ``index`` (an index tensor or a slice of the leading dimension)."""
        return self.map(lambda tensor: tensor[index])

    def map(self, fn) -> "Batch":
        """The batch with ``fn`` applied to every tensor (the state's included)."""
        fields = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        fields["state"] = {key: fn(value) for key, value in self.state.items()}
        return Batch(**{name: value if value is None or name == "state" else fn(value)
                        for name, value in fields.items()})


def member_mean(x: torch.Tensor, members: int, row_dim: int = 0, op: str = "mean") -> torch.Tensor:
    """The mean (or ``op`` = ``"max"``) of ``x`` over everything, per member when its rows (dimension
    ``row_dim``) hold P = ``members`` runs' rows member-major (``agents.population``): a scalar when
    ``members`` is 1, else ``(P,)``."""
    if members == 1:
        return x.mean() if op == "mean" else x.max()
    blocks = x.movedim(row_dim, 0).reshape(members, -1)
    return blocks.mean(1) if op == "mean" else blocks.amax(1)
