"""stable-baselines3 bridge: SB3 PPO on the scenarios, the project's penalties in SB3's PPO loss, and SB3
policies as victims of the shock wrapper and in the robustness evaluation.

* ``make_sb3_env`` / ``SharedPolicyVecEnv`` (``agents.sb3.envs``): B batched environments x N agents of a
  scenario as one SB3 ``VecEnv`` of ``B * N`` single-agent environments (index ``k = b * N + i``). One SB3
  policy acts for every agent on that agent's own observation (parameter sharing). It steps the batched
  torch simulator directly, with no loop over environments or agents. SB3's Gaussian acts on the
  *pre-squash* action ``u`` (a ``Box`` of half-width ``PRE_SQUASH_BOUND``, where the sigmoid is flat to
  2e-9; SB3 needs finite bounds) and the environment receives ``agents.policy.squash(u, low, high)``: the
  native learner's parameterisation, so the deterministic action map is smooth (no clipping kinks
  under Jacobian penalties) and SB3 and ``agents.learner`` train the same policy class.
* ``make_supersuit_vec_env`` (``agents.sb3.envs``): the same parameter sharing built from the PettingZoo
  ``ParallelEnv`` with SuperSuit (one environment at a time, much slower), made seedable; actions in the
  scenario's box, clipped by SB3 as usual. The Gymnasium joint-control view
  (``gymnasium.make("envs:AAJR/Routing-v0")``, one controller for all agents) works with SB3 as it is.
* ``SB3Policy`` (``agents.sb3.policy``): any SB3 Gaussian actor-critic policy trained on one of these
  views as a multi-agent ``deterministic_action(obs (B, N, D)) -> (B, N, A)`` and ``value(obs) -> (B, N)``:
  what the shock wrapper, the regularizers and ``robustness.evaluate.evaluate_under_attacks`` take.
* ``RegularizedPPO`` (``agents.sb3.ppo``): SB3's ``PPO`` whose loss is SB3's PPO loss plus
  ``reg_coef * penalty``, the penalty one of ``regularizers.regularizer_names()`` (``aajr``, ``jacobian``,
  ``spectral``, ``smooth``: the same ``regularizers.METHODS`` code as the native learner, with that
  method's settings) evaluated on ``SB3Policy`` over an ``envs.batch.Batch`` of joint transitions
  recorded during the rollout.
* ``ppo_kwargs`` (``agents.sb3.ppo``): SB3 PPO arguments equal to a native ``PPOConfig`` (used by
  ``bench/sb3.py``).
* ``RichProgressCallback`` (``agents.sb3.callbacks``): the project's progress bar
  (``agents.progress.progress_bar``) over the agent-steps of ``learn``.

SB3's ``.zip`` format stores its own metadata with cloudpickle: load only files you trust (the network
weights inside are read with ``torch.load(weights_only=True)``).
"""

try:
    import stable_baselines3  # noqa: F401
except ModuleNotFoundError as error:  # pragma: no cover - depends on the installed extras
    if error.name != "stable_baselines3":
        raise
    raise ImportError("agents.sb3 needs stable-baselines3: pip install -c constraints.txt -e '.[sb3]'") from error

from agents.sb3.callbacks import RichProgressCallback
from agents.sb3.envs import (PRE_SQUASH_BOUND, SeedableSuperSuitVecEnv, SharedPolicyVecEnv, make_sb3_env,
                             make_supersuit_vec_env, pre_squash_space, shared_env)
from agents.sb3.policy import SB3Policy
from agents.sb3.ppo import RegularizedPPO, checked_regularizer_args, ppo_kwargs

__all__ = ["PRE_SQUASH_BOUND", "RegularizedPPO", "RichProgressCallback", "SB3Policy",
           "SeedableSuperSuitVecEnv", "SharedPolicyVecEnv", "checked_regularizer_args", "make_sb3_env",
           "make_supersuit_vec_env", "pre_squash_space", "ppo_kwargs", "shared_env"]
