"""Theory diagnostics of a trained policy on evaluation states (shared/DESIGN.md section 2).

On states visited by the deterministic policy (nominal episodes), with each agent's PGA on the
system loss (agent i alone attacked; K steps, eps, the ``gradient`` rule of eq. 11, the theory's PGA):

* **Amplification** ``a_t = ||J_i(s + delta_t) u_t||`` along the trajectory, against the global
  spectral norm at the same states over the shock channels, ``||J_i(s) P||_2`` (what an attacker can
  excite; ``global_norm_*``), and over all features, ``||J_i(s)||_2`` (``global_norm_all_*``), both by
  power iteration (JVP + VJP).
* **Class expansion** (Theorem 1): for each budget gamma of one list common to every policy
  (``GAMMAS``), the fraction of (state, agent) pairs with ``max_t a_t <= gamma < ||J_i(s) P||_2``: pairs
  a directional budget admits and a global one (on the same channels) excludes
  (``frac_directional_only@<gamma>``). Theorem 1's strict inclusion needs the ascent directions in a
  proper subspace of the shock channels: ``direction_participation_ratio`` is the effective dimension
  ``(sum lambda)^2 / sum lambda^2`` of the second-moment matrix of the pooled directions ``u_t``,
  against ``shock_dim`` channels.
* **Curvature along the ascent** (Theorems 2-3): ``kappa = v^T (Hess g) v`` with ``v`` the unit step of
  each PGA segment ``[delta_t, delta_{t+1}]``, sampled at ``SEGMENT_POINTS`` points of the segment
  (its ends included; zero-length segments excluded): ``curvature_min`` (most negative) and
  ``curvature_max``. ``L_eff`` of a (state, agent) pair is the largest ``|kappa|`` along its trajectory
  (``l_eff_median``, ``l_eff_max``).
* **Step size against L_eff** (``step_size_sweep``): PGA again with ``eta = c / median L_eff`` for the
  factors c of ``ETA_FACTORS``; each step is non-monotone when ``g(delta_{t+1}) < g(delta_t)``, and
  is binned by ``eta * L_seg``, ``L_seg`` the largest ``|kappa|`` sampled on its own segment. For a
  projected gradient step, ``eta * L_seg <= 2`` implies ascent (the descent lemma with the projection's
  property ``grad . (delta_{t+1} - delta_t) >= ||delta_{t+1} - delta_t||^2 / eta``), so non-monotone steps
  in the bins ``<= 1`` and ``(1, 2]`` would contradict the theory or show that the sampled ``L_seg``
  underestimates the segment's curvature. Steps whose segment crosses the observation normaliser's clip
  (``normaliser_clip_changes``: ``clamp((x - mean) / std, -clip, clip)`` is a kink of g in delta, where the
  theorem's smoothness fails and no curvature sample sees the kink) are counted apart (``steps_clip``,
  ``nonmonotone_rate_clip``) and left out of the bins.

``SEGMENT_POINTS`` is 16: with 4 samples per segment, the 65 cells of ``results/corollary-wide`` showed
1432 non-monotone steps with ``eta * L_seg <= 2``; with 16 samples 1150 of them moved above 2 (16 and 64
samples gave the same counts on 5 cells), and each of the remaining 282 crosses the normaliser's clip
(``bench/segment_sampling.py``, ``results/corollary-wide/segment_sampling.md``). The 16 fractions
``k / 15`` include 0, 1/3, 2/3 and 1, so ``L_seg`` and ``L_eff`` are never below their 4-sample values.
"""

from __future__ import annotations

import copy

import torch

from envs.batch import Batch
from envs.core import make_generator
from envs.shocks import PGATrajectory, pga
from envs.vector import TorchVectorEnv, run_episode
from regularizers.jacobian import aajr_trajectory, per_agent_system_objective
from regularizers.jvp import jvp_norms
from regularizers.spectral import top_singular_directions

GAMMAS = (0.03, 0.1, 0.3, 1.0, 3.0)  # class-expansion budgets, one list for every policy and scenario
SEGMENT_POINTS = 16  # curvature samples per PGA segment, at k/15 of its length (4 missed peaks: module docstring)
ETA_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # eta = factor / median L_eff in the step-size sweep
ETA_L_BINS = ((0.0, 1.0), (1.0, 2.0), (2.0, float("inf")))  # bins of eta * L_seg: (low, high]


def evaluation_states(scenario, policy, episodes: int, max_states: int, seed: int) -> Batch:
    """States visited by the deterministic policy in ``episodes`` nominal episodes, subsampled
    uniformly to at most ``max_states``: a ``Batch`` of their observations, actions and states."""
    env = TorchVectorEnv(scenario, num_envs=episodes, auto_reset=False)
    observations, actions = [], []

    def act(obs: torch.Tensor, state) -> torch.Tensor:
        observations.append(obs.float())
        actions.append(policy.deterministic_action(observations[-1]).to(scenario.dtype))
        return actions[-1]

    episode = run_episode(env, act, seed)
    visited = Batch.from_steps(episode.states, actions=actions, obs=observations)
    keep = torch.randperm(len(visited), generator=torch.Generator().manual_seed(seed))[:max_states]
    return visited[keep.to(scenario.device)]


def in_float64(scenario, policy, batch: Batch):
    """Float64 copies of a scenario, a policy and a batch of its states (floating tensors converted), so
    that the diagnostics resolve changes of the system loss that float32 rounds away: a robust policy's
    PGA moves the loss by less than float32's ~1e-7 relative resolution."""
    scenario64 = type(scenario)(scenario.config, device=scenario.device, dtype=torch.float64)
    policy64 = copy.deepcopy(policy).double()
    to64 = lambda value: value.double() if torch.is_tensor(value) and value.is_floating_point() else value  # noqa: E731
    batch64 = Batch(obs=to64(batch.obs), actions=to64(batch.actions),
                    state={key: to64(value) for key, value in batch.state.items()})
    return scenario64, policy64, batch64


def segment_curvatures(objective, deltas: torch.Tensor, points: int = SEGMENT_POINTS) -> tuple[torch.Tensor, torch.Tensor]:
    """``kappa`` ``(K, points, *batch)``: ``v_t^T Hess g(delta_t + s (delta_{t+1} - delta_t)) v_t`` at
    ``s = 0, 1/(points-1), ..., 1`` of each segment, ``v_t`` its unit direction; and the segments'
    lengths ``(K, *batch)`` (where a length is 0, kappa is 0 and means nothing). ``objective`` maps
    ``(*batch, D)`` to ``batch``, each sample depending on its own ``delta`` only."""
    fractions = torch.linspace(0.0, 1.0, points).tolist() if points > 1 else [0.0]
    curvatures, lengths = [], []
    for t in range(deltas.shape[0] - 1):
        step = deltas[t + 1] - deltas[t]
        length = step.norm(dim=-1, keepdim=True)
        v = torch.where(length > 0, step / length.clamp_min(1e-30), torch.zeros_like(step)).detach()
        along = []
        for s in fractions:
            delta = (deltas[t] + s * step).detach().clone().requires_grad_(True)
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(objective(delta).sum(), delta, create_graph=True)
                (hv,) = torch.autograd.grad((grad * v).sum(), delta, allow_unused=True)
            along.append(torch.zeros_like(length[..., 0]) if hv is None else (hv * v).sum(-1).detach())
        curvatures.append(torch.stack(along))
        lengths.append(length[..., 0])
    return torch.stack(curvatures), torch.stack(lengths)


def normaliser_clip_changes(policy, obs: torch.Tensor, deltas: torch.Tensor, points: int = SEGMENT_POINTS
                            ) -> torch.Tensor:
    """Bool ``(K, *batch)``: whether the set of observation features that the policy's normaliser clips
    (``|(x - mean) / sqrt(var + 1e-8)| > clip``, ``agents.policy.RunningNorm``) changes along each PGA
    segment ``[delta_t, delta_{t+1}]`` of ``deltas`` ``(K + 1, *batch, D)`` shocking ``obs`` ``(*batch, D)``
    (``*batch`` ending with the N agents, as the normaliser's statistics ``(N, D)``), looked at in ``points``
    samples ``s = 0, 1/(points-1), ..., 1`` of the segment. The clip is a kink of g in delta that no
    curvature sample sees. All False for a policy without observation normalisation."""
    if not policy.normalise_obs:
        return torch.zeros(deltas.shape[:-1], dtype=torch.bool, device=deltas.device)[1:]
    norm = policy.obs_norm
    fractions = torch.linspace(0.0, 1.0, points, dtype=deltas.dtype, device=deltas.device)
    changes = []
    for t in range(deltas.shape[0] - 1):
        along = deltas[t] + fractions.view(-1, *[1] * obs.dim()) * (deltas[t + 1] - deltas[t])  # (points, *batch, D)
        clipped = ((obs + along - norm.mean) / torch.sqrt(norm.var + 1e-8)).abs() > norm.clip
        changes.append((clipped != clipped[:1]).any(0).any(-1))
    return torch.stack(changes)


def class_expansion(directional_max: torch.Tensor, global_norm: torch.Tensor,
                    gammas: tuple[float, ...] = GAMMAS) -> dict[str, float]:
    """``frac_directional_only@<gamma>``: the fraction of pairs with ``directional_max <= gamma <
    global_norm`` (both ``(M, N)``), for every gamma."""
    return {f"frac_directional_only@{gamma:g}":
            float(((directional_max <= gamma) & (global_norm > gamma)).float().mean()) for gamma in gammas}


def participation_ratio(directions: torch.Tensor) -> float:
    """Effective dimension ``(sum lambda)^2 / sum lambda^2`` of the second-moment matrix ``E[u u^T]`` of
    the directions ``(..., D)`` (zero rows left out): 1 when they all lie on one line, D when isotropic."""
    flat = directions.reshape(-1, directions.shape[-1]).double()
    flat = flat[flat.norm(dim=-1) > 0]
    if flat.shape[0] == 0:
        return float("nan")
    eigenvalues = torch.linalg.eigvalsh(flat.T @ flat / flat.shape[0]).clamp_min(0.0)
    return float(eigenvalues.sum() ** 2 / (eigenvalues ** 2).sum())


def nonmonotone_steps(values: torch.Tensor) -> torch.Tensor:
    """Bool ``(K, *batch)``: ``g(delta_{t+1}) < g(delta_t)`` beyond rounding, per step (a decrease larger
    than 16 ulps of ``max(|g|, 1)`` in the values' dtype: float32 objectives round at ~1e-7 of |g|)."""
    tolerance = 16 * torch.finfo(values.dtype).eps * values[:-1].abs().clamp_min(1.0)
    return values[1:] < values[:-1] - tolerance


def global_norms(policy, obs: torch.Tensor, mask: torch.Tensor | None, iterations: int, seed: int) -> torch.Tensor:
    """``||J_i(s) P||_2`` ``(M, N)`` by power iteration (P the channels of ``mask``; all when None)."""
    with torch.no_grad():
        top = top_singular_directions(policy.deterministic_action, obs, iterations, make_generator(seed, obs.device),
                                      mask)
        return jvp_norms(policy.deterministic_action, obs.unsqueeze(0), top.unsqueeze(0))[0]


def theory_diagnostics(scenario, policy, batch: Batch, eps: float, steps: int, norm: str = "l2",
                       gammas: tuple[float, ...] = GAMMAS, power_iterations: int = 20,
                       seed: int = 0) -> dict[str, float]:
    """The diagnostics of the module docstring on the minibatch of states ``batch`` (all but the sweep)."""
    points, directions, trajectory = aajr_trajectory(policy, batch, scenario, eps, steps, norm)
    mask = scenario.shock_mask.to(torch.bool)
    obs = batch.obs
    with torch.no_grad():
        directional = jvp_norms(policy.deterministic_action, points, directions)  # (K, M, N)
    shock_norm = global_norms(policy, obs, mask, power_iterations, seed)
    all_norm = global_norms(policy, obs, None, power_iterations, seed)
    _, objective = per_agent_system_objective(policy, batch, scenario)
    curvature, lengths = segment_curvatures(objective, trajectory.deltas)
    moved = (lengths > 0).unsqueeze(1).expand_as(curvature)
    sampled = curvature[moved]
    l_eff = torch.where(moved, curvature.abs(), torch.zeros_like(curvature)).amax(dim=(0, 1))  # (M, N)
    steps_taken = nonmonotone_steps(trajectory.values)[lengths > 0]
    if not sampled.numel():  # no PGA step moved (zero gradients everywhere): 0, with moving_steps = 0
        sampled, steps_taken = torch.zeros(1, dtype=curvature.dtype), torch.zeros(1, dtype=torch.bool)
    return {
        "jvp_norm_mean": float(directional.mean()), "jvp_norm_max": float(directional.max()),
        "global_norm_mean": float(shock_norm.mean()), "global_norm_max": float(shock_norm.max()),
        "global_norm_all_mean": float(all_norm.mean()), "global_norm_all_max": float(all_norm.max()),
        **class_expansion(directional.amax(0), shock_norm, gammas),
        "direction_participation_ratio": participation_ratio(directions[..., mask]),
        "shock_dim": int(mask.sum()),
        "curvature_min": float(sampled.min()), "curvature_max": float(sampled.max()),
        "segment_points": SEGMENT_POINTS,  # the curvature samples per segment behind L_eff and the sweep's bins
        "l_eff_median": float(l_eff.median()), "l_eff_max": float(l_eff.max()),
        "moving_steps": int((lengths > 0).sum()),
        "nonmonotone_rate": float(steps_taken.float().mean()),
        "pga_gain": float((trajectory.values[-1] - trajectory.values[0]).mean()),
        "eval_states": int(obs.shape[0]),
    }


def counted_steps(bad: torch.Tensor, chosen: torch.Tensor, suffix: str = "") -> dict[str, float]:
    """``steps<suffix>``: how many steps ``chosen`` holds, and ``nonmonotone_rate<suffix>``: the fraction of
    them that are ``bad`` (NaN over 0 steps); both bool masks of the same shape."""
    return {f"steps{suffix}": int(chosen.sum()),
            f"nonmonotone_rate{suffix}": float(bad[chosen].float().mean()) if chosen.any() else float("nan")}


def sweep_trajectories(scenario, objective, obs: torch.Tensor, eps: float, steps: int, l_eff: float,
                       norm: str = "l2", factors: tuple[float, ...] = ETA_FACTORS) -> list[tuple[float, PGATrajectory]]:
    """Per factor c, ``(eta, trajectory)`` of PGA (``gradient`` rule) on ``objective`` with ``eta = c / l_eff``
    from ``obs`` (M, N, D): the runs behind ``step_size_sweep`` (``trajectory.deltas`` (K + 1, M, N, D),
    ``trajectory.values`` (K + 1, M, N))."""
    runs = []
    for factor in factors:
        eta = factor / l_eff
        runs.append((eta, pga(objective, tuple(obs.shape), eps, norm, steps, eta, scenario.shock_mask,
                              device=obs.device, dtype=scenario.dtype, rule="gradient")))
    return runs


def step_size_sweep(scenario, policy, batch: Batch, eps: float, steps: int, l_eff: float, norm: str = "l2",
                    factors: tuple[float, ...] = ETA_FACTORS) -> list[dict[str, float]]:
    """Per factor c, PGA (``gradient`` rule) with ``eta = c / l_eff`` (e.g. ``l_eff_median`` of
    ``theory_diagnostics``): the rate of non-monotone steps among the steps that moved (``steps``,
    ``nonmonotone_rate``); among those whose segment crosses the normaliser's clip
    (``normaliser_clip_changes``; ``steps_clip``, ``nonmonotone_rate_clip``); and among the others per bin
    of ``eta * L_seg`` (``ETA_L_BINS``; ``steps_<bin>``, ``nonmonotone_rate_<bin>``), so that
    ``steps = steps_clip + sum of steps_<bin>``. A rate over 0 steps is NaN."""
    if not l_eff > 0:
        return []
    obs, objective = per_agent_system_objective(policy, batch, scenario)
    rows = []
    for factor, (eta, trajectory) in zip(factors, sweep_trajectories(scenario, objective, obs, eps, steps, l_eff,
                                                                     norm, factors)):
        curvature, lengths = segment_curvatures(objective, trajectory.deltas)
        moved = lengths > 0
        clip = moved & normaliser_clip_changes(policy, obs, trajectory.deltas)
        smooth = moved & ~clip  # where Theorem 3's smoothness assumption can hold
        eta_l = eta * curvature.abs().amax(1)  # (K, M, N)
        bad = nonmonotone_steps(trajectory.values)
        row = {"eta_factor": factor, "eta": eta, **counted_steps(bad, moved)}
        for low, high in ETA_L_BINS:
            chosen = smooth & (eta_l > low) & (eta_l <= high) if low > 0 else smooth & (eta_l <= high)
            row.update(counted_steps(bad, chosen, f"_etaL_{low:g}_{high:g}"))
        rows.append({**row, **counted_steps(bad, clip, "_clip")})
    return rows
