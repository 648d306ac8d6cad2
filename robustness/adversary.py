"""A learned adversary: an RL attacker trained with the project's PPO against a frozen victim (the
"optimal attack" of SA-PPO/ATLA, Zhang et al. 2020/2021, and PA-AD, Sun et al. 2022).

The attacker is an ordinary ``agents.learner.PPOLearner`` (unchanged) on ``AttackEnv``, an adapter with
the interface of an ``envs.TorchVectorEnv`` in which the attackers are the agents:

| | shared mode | per-agent mode |
|---|---|---|
| Attackers (the learner's agents) | 1 | N, attacker i shocks victim i |
| Attacker observation | agent 0's shock channels and ``time`` (``t / T``) | victim i's observation ``(D,)`` |
| Attacker action | ``a`` in ``[-2, 2]^k``, k = number of shock channels | the same, per attacker |
| Shock | ``delta = Proj_Delta(eps * a)`` on the shock channels, the same for every victim | per victim |
| Reward (every attacker) | the step's system loss minus a coupled unshocked twin's, standardised (below) | the same |

**Action map.** The learner squashes its Gaussian into the box ``[-2, 2]^k``; the action ``a`` is
placed on the shock channels (zero elsewhere), scaled by eps and projected onto the ball
(``envs.shocks.project``): linf clips each coordinate to ``[-eps, eps]``, l2 scales ``eps * a`` back
onto the sphere when ``||a||_2 > 1``. Every point ``delta`` of the masked ball is reached (by
``a = delta / eps``, inside the box since ``|delta_j| <= eps``), and its boundary is the image of an
open set of actions (``|a_j| >= 1`` for some j, or ``||a||_2 >= 1``), reached at finite pre-squash
logits: attacks that spend the whole budget, the usual optimum, are easy to represent. The learner's
initial mean action is ``a = 0`` (no shock). Shocks are **always** inside the masked ball.

**Reward.** The attacker maximises the victims' system loss (minus their social reward). Raw, that
signal is mostly the exogenous draws: against a robust victim the best shock moves the per-step loss by
about 0.1% of its spread across environments (compute, AAJR), and 200k attacker steps learned a shock
*weaker than a random one*. So each environment runs beside an unshocked **twin**: the same victim, the
same initial state and the same exogenous draws (a copy of the environment's generator; the scenarios'
draws do not depend on the state, so the two stay in lockstep), never shocked. The reward is
``(L_t - L_t^twin - m) / s``, the step's system loss over the twin's (common random numbers). The twin
never sees the attacker's actions, so its losses are a baseline independent of them: the expected
return changes by a constant and the optimum, including harm done through the dynamics over later
steps, is the same as for the raw loss; only the noise goes. ``m`` and ``s`` are the mean and standard
deviation of that difference under uniform random shocks of the ball on one calibration episode of
``CALIBRATION_ENVS`` environments (``s`` at least ``1e-6`` of the nominal loss's scale): centred and
O(1) at the start, so that the critic's targets are O(1) and its gradients do not crowd out the
actor's under the learner's global gradient clipping. Centring does not change the optimum: every
episode has the same length. ``reward="raw"`` keeps the first version, ``(L_t - m) / s`` with ``m, s``
those of the unshocked loss (for comparison). The learner's ``charts/system_loss`` stays the raw system
loss; ``shock/norm`` (applied ``||delta||_p``), ``shock/gain`` (system loss minus that of the unshocked
victim in the same state) and ``shock/twin_gain`` (``L_t - L_t^twin``) are logged.

**Budget.** ``total_agent_steps`` counts attacker steps (environment steps x attackers), as the
learner counts agents. The victim acts deterministically (``deterministic_action``) on float32
observations, as everywhere in the project.

    adversary = train_adversary("routing", victim, AdversaryConfig(eps=0.1), n_agents=2, n_paths=2)
    delta = adversary.shock(obs)                     # (B, N, D), inside the masked ball
    adversary = load_or_train("runs/routing-small", AdversaryConfig(eps=0.1))   # cached in the run dir

**Files.** ``adversary_path(run_dir, mode, norm, eps)`` is ``run_dir/adversaries/<mode>-<norm>-eps<eps>.pt``:
``torch.save`` of tensors and plain values (read with ``weights_only=True``), written atomically;
``load_or_train`` reuses it when it holds an adversary of the same ``AdversaryConfig`` and retrains
(overwriting it) otherwise.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from typing import Any, Callable

import torch

from agents.learner import PPOLearner
from agents.policy import MultiAgentActorCritic, make_policy
from agents.ppo import PPOConfig
from agents.progress import progress_bar
from agents.run import atomic_write, load_run, one_line, read_torch_file
from envs.core import Scenario, State, check_choice, check_positive_int, check_real, make_scenario
from envs.shocks import MODES, NORMS, project, random_in_ball
from envs.vector import TorchVectorEnv, VectorStep, run_episode

ACTION_BOUND = 2.0  # attacker actions live in [-ACTION_BOUND, ACTION_BOUND]^k, delta = Proj(eps * a)
FILE_FORMAT = 2  # 2: AdversaryConfig.reward
ADVERSARIES_DIR = "adversaries"
REWARDS = ("twin", "raw")
CALIBRATION_SEED_OFFSET = 7_000  # the reward calibration episode never reuses the learner's seeds
CALIBRATION_ENVS = 256

Victim = Callable[[torch.Tensor], torch.Tensor]


def attacker_ppo() -> PPOConfig:
    """The attacker's PPO defaults: the project's, with the routing configs' short discount (a shock acts
    mostly within a few steps), 16-step rollouts of 64 environments, 5 epochs per rollout and a learning
    rate of 3e-3 (routing, small preset, eps 0.2, 65k attacker steps, two seeds: mean loss increase 4.7
    against 3.3 with 1e-3)."""
    return PPOConfig(num_envs=64, rollout_steps=16, learning_rate=3e-3, gamma=0.9, update_epochs=5)


@dataclasses.dataclass(frozen=True)
class AdversaryConfig:
    """A learned adversary's budget and training.

    :param eps: radius of the ball, in observation units (> 0).
    :param norm: ``l2`` or ``linf``.
    :param mode: ``shared`` (one attacker, one delta seen by every victim) or ``per_agent``.
    :param total_agent_steps: training budget in attacker steps (environment steps x attackers).
    :param seed: seeds the attacker's initialisation, sampling, environments and calibration (>= 0).
    :param ppo: the attacker's PPO hyper-parameters (``attacker_ppo()`` by default).
    :param reward: ``twin`` (the loss over a coupled unshocked twin's) or ``raw`` (see the module docstring).
    """

    eps: float = 0.1
    norm: str = "l2"
    mode: str = "shared"
    total_agent_steps: int = 200_000
    seed: int = 0
    ppo: PPOConfig = dataclasses.field(default_factory=attacker_ppo)
    reward: str = "twin"

    def __post_init__(self) -> None:
        check_real("eps", self.eps, 0.0, low_open=True)
        check_choice("reward", self.reward, REWARDS)
        check_choice("norm", self.norm, NORMS)
        check_choice("mode", self.mode, MODES)
        check_positive_int("total_agent_steps", self.total_agent_steps)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.ppo, PPOConfig):
            raise ValueError(f"ppo must be an agents.ppo.PPOConfig, got {type(self.ppo).__name__}")
        check_positive_int("ppo.num_envs", self.ppo.num_envs)
        check_positive_int("ppo.rollout_steps", self.ppo.rollout_steps)

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (what the adversary file stores)."""
        data = dataclasses.asdict(self)
        data["ppo"]["hidden"] = list(data["ppo"]["hidden"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AdversaryConfig":
        ppo = dict(data["ppo"])
        ppo["hidden"] = tuple(ppo["hidden"])
        return cls(**{**data, "ppo": PPOConfig(**ppo)})


def victim_actions(victim: Any) -> Victim:
    """``obs (B, N, D) -> actions (B, N, A)`` of a victim: its ``deterministic_action`` (a policy of
    ``agents.run.load_policy``, an ``agents.sb3.SB3Policy``) or the victim itself if it is a callable;
    evaluated on float32 observations, returned in the observations' dtype."""
    act = getattr(victim, "deterministic_action", victim)
    if not callable(act):
        raise ValueError(f"victim must have deterministic_action(obs) or be callable, got {type(victim).__name__}")
    return lambda obs: act(obs.float()).to(obs.dtype)


@dataclasses.dataclass(frozen=True)
class AttackerSpace:
    """What ``agents.policy.make_policy`` and ``PPOLearner`` read of ``env.scenario``: the attackers'
    count, observation size and action box."""

    n_agents: int
    obs_dim: int
    action_low: torch.Tensor
    action_high: torch.Tensor
    device: torch.device
    dtype: torch.dtype


@dataclasses.dataclass(frozen=True)
class ShockMap:
    """The attacker's observation of the victims' observations, and its action's shock.

    :param eps: radius of the ball.
    :param norm: ``l2`` or ``linf``.
    :param mode: ``shared`` or ``per_agent``.
    :param shock_mask: bool ``(D,)``, the scenario's shock channels.
    :param feature_index: int64 ``(F,)``, the observation features an attacker sees.
    :param n_agents: N victims.
    """

    eps: float
    norm: str
    mode: str
    shock_mask: torch.Tensor
    feature_index: torch.Tensor
    n_agents: int

    @classmethod
    def for_scenario(cls, scenario: Scenario, eps: float, norm: str, mode: str) -> "ShockMap":
        """Shared: the shock channels and the ``time`` feature (when the scenario has one); per-agent: all D."""
        mask = scenario.shock_mask.to(torch.bool)
        if not bool(mask.any()):
            raise ValueError(f"{scenario.name}: the scenario has no shock channels to attack")
        seen = mask.clone()
        if mode == "per_agent":
            seen[:] = True
        elif "time" in scenario.feature_names:
            seen[scenario.feature_names.index("time")] = True
        return cls(eps, norm, mode, mask, torch.nonzero(seen).flatten(), scenario.n_agents)

    @property
    def n_attackers(self) -> int:
        return 1 if self.mode == "shared" else self.n_agents

    def space(self, device: torch.device, dtype: torch.dtype) -> AttackerSpace:
        bound = torch.full((int(self.shock_mask.sum()),), ACTION_BOUND, device=device, dtype=dtype)
        return AttackerSpace(self.n_attackers, self.feature_index.numel(), -bound, bound, torch.device(device), dtype)

    def observe(self, obs: torch.Tensor) -> torch.Tensor:
        """Attacker observations ``(B, n_attackers, F)`` of the victims' observations ``(B, N, D)``."""
        return (obs[:, :1] if self.mode == "shared" else obs)[..., self.feature_index]

    def shock(self, actions: torch.Tensor) -> torch.Tensor:
        """The shock ``(B, N, D)`` of attacker actions ``(B, n_attackers, k)``: ``Proj(eps * a)`` on the
        shock channels (see the module docstring); inside the masked ball for any finite actions."""
        delta = actions.new_zeros(*actions.shape[:-1], self.shock_mask.shape[0])
        delta[..., self.shock_mask] = self.eps * actions
        delta = project(delta, self.eps, self.norm)
        return delta.expand(delta.shape[0], self.n_agents, delta.shape[-1])


class AttackEnv:
    """The attackers' environment, shaped like a ``TorchVectorEnv`` for ``PPOLearner`` (no penalty, no
    shocks): ``num_envs`` environments of ``scenario`` (auto-reset) whose frozen victims act on their
    observations plus the attackers' shock; rewards ``(B, n_attackers)`` are the standardised system loss,
    over that of an unshocked twin of each environment when ``twin`` (see the module docstring).

    :param scenario: the victims' scenario.
    :param victim: ``obs (B, N, D) -> actions (B, N, A)`` (``victim_actions``).
    :param shock_map: the attackers' observation and action map.
    :param num_envs: environments B.
    :param reward_shift: ``m`` of the reward ``(system_loss [- twin's] - m) / scale``.
    :param reward_scale: its ``scale`` (> 0).
    :param twin: run the coupled unshocked twins and subtract their losses.
    """

    def __init__(self, scenario: Scenario, victim: Victim, shock_map: ShockMap, num_envs: int,
                 reward_shift: float = 0.0, reward_scale: float = 1.0, twin: bool = False) -> None:
        self.env = TorchVectorEnv(scenario, num_envs=num_envs)
        self.twin = TorchVectorEnv(scenario, num_envs=num_envs) if twin else None
        self.victim, self.shock_map = victim, shock_map
        self.reward_shift, self.reward_scale = reward_shift, reward_scale
        self.scenario = shock_map.space(scenario.device, scenario.dtype)
        self.num_envs, self.device, self.max_steps = self.env.num_envs, self.env.device, self.env.max_steps

    @property
    def n_agents(self) -> int:
        return self.shock_map.n_attackers

    @property
    def state(self) -> State | None:
        return self.env.state

    @state.setter
    def state(self, state: State) -> None:  # PPOLearner.load_state_dict: the twins restart from it
        self.env.state = state
        self._couple_twin()

    @property
    def generator(self) -> torch.Generator | None:
        return self.env.generator

    def _couple_twin(self) -> None:
        """Put the twins in the environments' state, with a copy of their generator."""
        if self.twin is not None and self.env.state is not None:
            self.twin.state = {key: value.clone() for key, value in self.env.state.items()}
            self.twin.generator = torch.Generator(device=self.env.generator.device)
            self.twin.generator.set_state(self.env.generator.get_state())

    def reset(self, seed: int | None = None) -> torch.Tensor:
        obs = self.env.reset(seed=seed)
        self._couple_twin()
        return self.shock_map.observe(obs)

    @torch.no_grad()
    def step(self, actions: torch.Tensor) -> VectorStep:
        """Shock the victims' observations by the attackers' ``actions`` ``(B, n_attackers, k)``, let them act."""
        scenario, state = self.env.scenario, self.env.state
        obs = scenario.observe(state)  # from the state, so that a restored learner state is honoured
        delta = self.shock_map.shock(actions.to(obs.dtype))
        result = self.env.step(self.victim(obs + delta))
        nominal_loss = scenario.system_loss(state, scenario.check_actions(self.victim(obs)))
        info = {key: value for key, value in result.info.items() if key != "final_obs"}
        if "final_obs" in result.info:
            info["final_obs"] = self.shock_map.observe(result.info["final_obs"])
        size = delta.abs().amax(-1) if self.shock_map.norm == "linf" else delta.norm(dim=-1)
        info["shock/norm"] = size.amax(-1)
        info["shock/gain"] = result.system_loss - nominal_loss
        loss = result.system_loss
        if self.twin is not None:
            twin = self.twin.step(self.victim(scenario.observe(self.twin.state)))
            loss = loss - twin.system_loss
            info["shock/twin_gain"] = loss
        reward = (loss - self.reward_shift) / self.reward_scale
        rewards = reward.unsqueeze(-1).expand(-1, self.n_agents)
        return VectorStep(self.shock_map.observe(result.obs), rewards, result.system_loss, result.truncated, info)


class LearnedAdversary:
    """A trained attacker: ``shock(obs)`` is its deterministic action mapped into the masked ball.

    :param policy: the attacker's actor-critic (``n_attackers`` agents, eval mode).
    :param shock_map: its observation and action map.
    :param config: the config it was trained with.
    :param info: plain numbers about its training (``reward_shift``, ``reward_scale``, ``train_seconds``...).
    """

    def __init__(self, policy: MultiAgentActorCritic, shock_map: ShockMap, config: AdversaryConfig,
                 info: dict[str, float] | None = None) -> None:
        self.policy, self.shock_map, self.config = policy.eval(), shock_map, config
        self.info = dict(info or {})

    @torch.no_grad()
    def shock(self, obs: torch.Tensor) -> torch.Tensor:
        """The shock ``(B, N, D)`` for the victims' observations ``obs`` ``(B, N, D)``, in ``obs``' dtype."""
        actions = self.policy.deterministic_action(self.shock_map.observe(obs).float())
        return self.shock_map.shock(actions.to(obs.dtype))

    def save(self, path: pathlib.Path | str) -> None:
        """Write the adversary to ``path`` (tensors and plain values; atomically)."""
        shock_map = self.shock_map
        data = {"format": FILE_FORMAT, "config": self.config.to_dict(), "info": self.info,
                "shock_mask": shock_map.shock_mask.cpu(), "feature_index": shock_map.feature_index.cpu(),
                "n_agents": shock_map.n_agents,
                "policy": {key: value.cpu() for key, value in self.policy.state_dict().items()}}
        atomic_write(pathlib.Path(path), lambda tmp: torch.save(data, tmp))

    @classmethod
    def load(cls, path: pathlib.Path | str, device: torch.device | str = "cpu") -> "LearnedAdversary":
        """The adversary saved at ``path``, on ``device``; an unreadable file is a one-line ValueError."""
        path = pathlib.Path(path)
        data = read_torch_file(path, device, "adversary file")
        try:
            if not isinstance(data, dict) or data.get("format") != FILE_FORMAT:
                raise ValueError(f"format {data.get('format') if isinstance(data, dict) else None!r}, "
                                 f"expected {FILE_FORMAT}")
            config = AdversaryConfig.from_dict(data["config"])
            shock_map = ShockMap(config.eps, config.norm, config.mode, data["shock_mask"].to(torch.bool),
                                 data["feature_index"], int(data["n_agents"]))
            with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave the caller's alone
                policy = make_policy(shock_map.space(torch.device(device), torch.float32), config.ppo)
            policy.load_state_dict(data["policy"])
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{path}: not a readable adversary file ({one_line(error)})") from None
        return cls(policy, shock_map, config, data["info"])


def episode_losses(scenario: Scenario, victim: Victim, shock: Victim | None, num_envs: int,
                   seed: int) -> torch.Tensor:
    """System losses ``(T, B)`` of one episode of ``num_envs`` environments seeded with ``seed``, the
    victim acting on ``obs + shock(obs)`` (``shock`` None: unshocked)."""
    env = TorchVectorEnv(scenario, num_envs=num_envs, auto_reset=False)
    act = victim_actions(victim)
    return run_episode(env, lambda obs, state: act(obs if shock is None else obs + shock(obs)), seed).system_loss


def mean_system_loss(scenario: Scenario, victim: Any, shock: Victim | None = None, num_envs: int = 64,
                     seed: int = 20_000) -> float:
    """Mean system loss per step of the victim under ``shock`` (e.g. ``adversary.shock``), or unshocked,
    on one seeded episode of ``num_envs`` environments (the same exogenous draws for every shock)."""
    return float(episode_losses(scenario, victim, shock, num_envs, seed).mean())


def random_shocks(shock_map: ShockMap, seed: int) -> Victim:
    """``obs (B, N, D) -> delta``: uniform random shocks of ``shock_map``'s masked ball, one per
    environment (shared mode) or per victim, from a generator seeded with ``seed``."""
    generator = None

    def shock(obs: torch.Tensor) -> torch.Tensor:
        nonlocal generator
        if generator is None:
            generator = torch.Generator(device=obs.device).manual_seed(seed)
        shape = (obs.shape[0], shock_map.n_attackers, obs.shape[-1])
        delta = random_in_ball(shape, shock_map.eps, shock_map.norm, shock_map.shock_mask.to(obs.dtype),
                               generator, obs.device, obs.dtype)
        return delta.expand(obs.shape)

    return shock


def reward_calibration(scenario: Scenario, victim: Victim, shock_map: ShockMap, reward: str,
                       seed: int) -> tuple[float, float]:
    """``(m, s)`` of the attacker's reward ``(loss - m) / s`` on one episode of ``CALIBRATION_ENVS``
    environments: for ``raw``, mean and standard deviation of the unshocked victim's per-step system loss
    (``s`` at least ``1e-3 |m|``); for ``twin``, those of the per-step loss under uniform random shocks
    minus the unshocked loss with the same draws (``s`` at least ``1e-6`` of the unshocked loss's scale)."""
    nominal = episode_losses(scenario, victim, None, CALIBRATION_ENVS, seed).double()
    if reward == "raw":
        shift = float(nominal.mean())
        return shift, max(float(nominal.std()), 1e-3 * abs(shift), 1e-8)
    shocked = episode_losses(scenario, victim, random_shocks(shock_map, seed), CALIBRATION_ENVS, seed).double()
    gain = shocked - nominal
    floor = 1e-6 * max(float(nominal.std()), float(nominal.abs().mean()), 1e-2)
    return float(gain.mean()), max(float(gain.std()), floor)


def train_adversary(scenario: Scenario | str, victim: Any, config: AdversaryConfig | None = None, *,
                    device: torch.device | str = "cpu", progress: bool = False,
                    **scenario_kwargs: Any) -> LearnedAdversary:
    """Train an attacker with ``PPOLearner`` against the frozen ``victim`` in ``scenario``.

    :param scenario: a ``Scenario`` (trained on its device) or a scenario name (then built on ``device``
        with ``scenario_kwargs``).
    :param victim: anything with ``deterministic_action(obs (B, N, D)) -> (B, N, A)``, or such a callable.
    :param config: budget and training (``AdversaryConfig()`` when None).
    :param progress: show a progress bar.

    Same config and victim, same adversary (on CPU); torch's global generator is left as it was.
    """
    config = AdversaryConfig() if config is None else config
    if isinstance(scenario, str):
        scenario = make_scenario(scenario, device=device, **scenario_kwargs)
    elif scenario_kwargs:
        raise ValueError(f"scenario keyword arguments {sorted(scenario_kwargs)} given with a built Scenario")
    act = victim_actions(victim)
    start = time.perf_counter()
    shock_map = ShockMap.for_scenario(scenario, config.eps, config.norm, config.mode)
    shift, scale = reward_calibration(scenario, act, shock_map, config.reward, config.seed + CALIBRATION_SEED_OFFSET)
    env = AttackEnv(scenario, act, shock_map, config.ppo.num_envs, shift, scale, twin=config.reward == "twin")
    per_iteration = config.ppo.num_envs * config.ppo.rollout_steps * env.n_agents
    iterations = max(1, math.ceil(config.total_agent_steps / per_iteration))
    metrics: dict[str, float] = {}
    with torch.random.fork_rng(devices=[]), progress_bar(disable=not progress) as bar:
        learner = PPOLearner(env, config.ppo, iterations, seed=config.seed)
        task = bar.add_task(f"adversary {scenario.name}/{config.mode}/{config.norm}/eps{config.eps:g}",
                            total=iterations, status="")
        while learner.iteration < iterations:
            metrics = learner.train_iteration()
            bar.update(task, completed=learner.iteration,
                       status=f"loss/step {metrics['charts/system_loss']:+.4f} (nominal {shift:+.4f})")
    info = {"reward_shift": shift, "reward_scale": scale, "iterations": float(iterations),
            "agent_steps": float(learner.agent_steps), "train_seconds": time.perf_counter() - start,
            **{key: value for key, value in metrics.items() if key.startswith(("charts/", "shock/"))}}
    return LearnedAdversary(learner.policy, shock_map, config, info)


def adversary_path(run_dir: pathlib.Path | str, mode: str, norm: str, eps: float) -> pathlib.Path:
    """``run_dir/adversaries/<mode>-<norm>-eps<eps:g>.pt``."""
    return pathlib.Path(run_dir) / ADVERSARIES_DIR / f"{mode}-{norm}-eps{eps:g}.pt"


def saved_adversaries(run_dir: pathlib.Path | str, grid, seed: int = 0,
                      device: torch.device | str = "cpu") -> Callable[[str, float], "LearnedAdversary"]:
    """``adversary_for(mode, eps)`` of ``robustness.evaluate.evaluate_under_attacks``: the ``learned``
    attacker of an attack grid (its norm and ``learned_steps``) against the run's policy, saved in the
    run directory and reused (``load_or_train``)."""
    def adversary_for(mode: str, eps: float) -> LearnedAdversary:
        config = AdversaryConfig(eps=eps, norm=grid.norm, mode=mode, total_agent_steps=grid.learned_steps, seed=seed)
        return load_or_train(run_dir, config, device=device)
    return adversary_for


def load_or_train(run_dir: pathlib.Path | str, config: AdversaryConfig | None = None, *,
                  device: torch.device | str = "cpu", progress: bool = False) -> LearnedAdversary:
    """The adversary of ``config`` against the run's policy (``agents.run.load_run``): the saved one at
    ``adversary_path`` when it was trained with the same config, else (also when that file is unreadable
    or of another format) trained now and saved there."""
    config = AdversaryConfig() if config is None else config
    path = adversary_path(run_dir, config.mode, config.norm, config.eps)
    if path.is_file():
        try:
            adversary = LearnedAdversary.load(path, device)
        except ValueError:  # another file format or a damaged file: the cache is rebuilt
            adversary = None
        if adversary is not None and adversary.config.to_dict() == config.to_dict():
            return adversary
    run = load_run(run_dir, str(device))
    adversary = train_adversary(run.scenario, run.policy, config, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    adversary.save(path)
    return adversary
