"""Compute: agents submit work to shared servers with finite buffers; congestion collapse under spikes.

| | |
|---|---|
| Agents | ``agent_0`` ... ``agent_{N-1}`` (e.g. LLM agents with arriving requests) |
| Action space (per agent) | ``Box(0, 1, (S,))``: how much of its pending work the agent sends to each server |
| Observation space (per agent) | ``Box(low, high, (3S + 3,))``, see the feature table |
| Rewards | ``selfish`` (own share of the cost), ``social`` (``-system_loss / N``) or ``mixed`` |
| System loss | delay + drops + rejected work - goodput of the step, per unit of total capacity |
| References | fluid-optimal allocation (one-step water-filling); proportional submission (heuristic) |
| Import | ``envs.make_scenario("compute", ...)``, ``envs.compute.parallel_env(...)``, ``gymnasium.make("envs:AAJR/Compute-v0")`` |

**Units.** Work is measured in units of work a server of mean nominal capacity (``capacity``) serves
in one step; the per-step costs are divided by the total nominal capacity ``C = sum_s cbar_s``, so
the loss does not grow with the size of the system and a goodput of 1 means "every server busy".

**Servers.** Server s has nominal capacity ``cbar_s`` evenly spaced in
``capacity * [1 - capacity_spread, 1 + capacity_spread]`` (all equal to ``capacity`` when S = 1) and
a buffer of ``K_s = buffer_size * cbar_s`` (``buffer_size`` steps of nominal service).

**State** (batch dimension first): ``queue`` ``(B, N, S)`` the work of agent i waiting at server s,
``arrivals`` ``(B, N)`` the new work of the step, ``retries`` ``(B, N)`` the work returned by the
previous step's wasted service, ``spiking`` ``(B, N)`` bool, the agent is in a demand spike,
``capacity`` ``(B, S)`` the capacity ``c_s`` of the step, ``t`` ``(B,)``. The pending work of agent i
is ``w_i = arrivals_i + retries_i``.

**Exogenous randomness** (drawn into the state before the step it applies to). Agent i's mean
arrival rate is ``lambda = load_factor * C / N``; its arrivals are
``lambda * m_i * exp(sigma_a eps - sigma_a^2 / 2)`` with ``m_i = spike_magnitude`` during a spike and 1
otherwise. Each step an ongoing spike ends with probability ``1 / spike_duration`` and a spike starts
with probability ``spike_prob`` (independently per agent; also at reset). Capacities are
``c_s = cbar_s exp(sigma_c eps - sigma_c^2 / 2)``, times ``capacity_drop_factor`` with probability
``capacity_drop_prob`` (independently per server and step).

**Actions and their mapping.** Agent i's action ``a_i`` in [0, 1]^S is turned into the fractions of
its pending work it submits to each server; the rest is **rejected**: shed at the source, lost for
good, at cost ``reject_cost`` per unit:

    f_is = a_is / (1 + h(sum_s a_is - 1)),   x_is = w_i f_is,   J_i = w_i (1 - sum_s f_is)       (1)

so actions summing to at most ``1 - tau`` are the fractions themselves and actions summing to at least
``1 + tau`` are normalised (their proportions are the split, everything is submitted); ``h`` is the
smoothed hinge ``max(0, .)`` below (``actions_for_fractions`` inverts the mapping).
Actions outside [0, 1] are clipped; NaN/inf actions are an error.

**Service** (fluid model, one step). Each server shares its service among the work present in
proportion to it (processor sharing of the load):

    l_is = q_is + x_is,   L_s = sum_i l_is,   pi_is = l_is / L_s                               (2)
    R_s = h(L_s - c_s),   P_s = L_s - R_s          (work left after service, throughput)        (3)
    phi_s = max_waste * [h(R_s - theta K_s) - h(R_s - K_s)] / ((1 - theta) K_s)                   (4)
    G_s = (1 - phi_s) P_s,   V_s = phi_s P_s       (goodput, wasted service)                      (5)
    D_s = h(R_s - K_s),   Q'_s = R_s - D_s          (drops, queue carried to the next step)       (6)
    q'_is = pi_is Q'_s,   retries'_i = sum_s pi_is V_s,   w'_i = arrivals'_i + retries'_i        (7)

**Congestion collapse.** A server whose backlog ``R_s`` exceeds ``theta = waste_threshold`` of its
buffer thrashes: its requests wait so long that their clients time out, and part of what it serves is
work nobody waits for any more. The wasted fraction ``phi_s`` of its throughput grows linearly from 0
at a backlog of ``theta K_s`` to ``max_waste`` at a full buffer (4). Wasted work is not lost: its
clients retry it, so it comes back to the agents' pending work at the next step (7). Hence overload
lowers *goodput*, not only raises delay: with every agent submitting everything under a sustained
spike, buffers fill, goodput falls from the offered load to ``(1 - max_waste)`` of capacity, and the
retries keep the load above capacity after the spike has ended (a metastable failure) unless the
agents shed load.

**Smoothing.** Every hinge ``max(0, x)`` above is the C^1 quadratic hinge
``h(x) = min(max(x + tau, 0), 2 tau)^2 / (4 tau) + max(x - tau, 0)``, exact for ``|x| >= tau``, with
half-width ``tau = smoothing`` times the scale of ``x``: 1 in (1), the step's capacity ``c_s`` in (3),
the buffer ``K_s`` in (4) and (6). ``smoothing = 0`` gives the exact piecewise-linear model. Hence the
system loss has gradients with respect to the actions everywhere.

**Payoffs and system loss.** With goodput value g, delay cost delta (per unit of work carried to the
next step, in a queue), drop cost d and reject cost r:

    system_loss = (-g sum_s G_s + delta sum_s Q'_s + d sum_s D_s + r sum_i J_i) / C              (8)
    payoff_i = -(-g sum_s pi_is G_s + delta sum_s pi_is Q'_s + d sum_s pi_is D_s + r J_i) / C      (9)

so the payoffs add up to ``-system_loss`` exactly. Selfishly, flooding a congested server raises an
agent's share ``pi_is`` of its goodput at the others' expense, which is what drives the collapse.

**Observation features** (the same layout for every agent; *shock* marks the shared-state channels):

| features | meaning | range | shock |
|---|---|---|---|
| ``queue_s`` | occupancy of server s, ``sum_i q_is / K_s`` | [0, 1] | yes |
| ``capacity_s`` | capacity of the step relative to nominal, ``c_s / cbar_s`` | [0, 3] | yes |
| ``peer_load`` | pending work of the other agents, ``sum_{j != i} w_j / C`` (spike feature) | [0, 20] | yes |
| ``own_work`` | own pending work relative to the mean arrival rate, ``w_i / lambda`` | [0, 20] | no |
| ``own_queue_s`` | own work waiting at server s, ``q_is / K_s`` | [0, 1] | no |
| ``time`` | t / T | [0, 1] | no |

Values are clipped to these ranges.

**References.** ``fluid_optimal``: the allocation minimising the one-step (myopic) system loss (8)
of the exact (``smoothing = 0``) fluid model, given the state's pending work, queues and capacities, by
water-filling (see ``fluid_optimal_submission``). The loss depends on the total submission to each
server only, so every agent submits the same fractions of its work, realised exactly through (1) by
``actions_for_fractions``: the allocation is optimal for ``smoothing = 0`` and within O(``smoothing``)
of the optimum of the smoothed loss otherwise (it fills servers up to the kinks). ``proportional``:
every agent submits all its work, split in proportion to the servers' current capacities (the
greedy "use everything" heuristic that collapses under spikes).
``references()`` returns ``total_capacity`` (C), ``total_arrival_rate`` (``load_factor * C``),
``load_factor``, ``collapse_goodput`` (``1 - max_waste``, the goodput of full buffers), and
``fluid_optimal_loss`` / ``fluid_optimal_goodput``: the loss and goodput of the fluid-optimal
allocation at nominal arrivals and capacities with empty queues (``-g * load_factor`` and
``load_factor`` when ``load_factor <= 1 - smoothing``).

**Diagnostics** (``info``, per step, in units of C unless noted): ``throughput`` ``sum P / C``,
``goodput`` ``sum G / C``, ``drops`` ``sum D / C``, ``rejected`` ``sum J / C``, ``mean_queue`` the
mean occupancy ``Q'_s / K_s`` after the step.

**Arguments** (``make_scenario("compute", **kwargs)``):

| argument | default | unit / meaning |
|---|---|---|
| ``n_agents`` | 4 | N agents |
| ``n_servers`` | 4 | S servers |
| ``horizon`` | 100 | steps per episode |
| ``reward_mode`` | ``"social"`` | ``selfish`` / ``social`` / ``mixed`` |
| ``social_weight`` | 0.5 | weight of the social term in ``mixed`` mode |
| ``capacity`` | 1.0 | mean nominal capacity of a server (work per step) |
| ``capacity_spread`` | 0.5 | nominal capacities spread over ``capacity * [1 - spread, 1 + spread]``, in [0, 1) |
| ``buffer_size`` | 4.0 | buffer of a server, in steps of its nominal service |
| ``load_factor`` | 0.8 | total mean arrival rate / total nominal capacity |
| ``arrival_noise`` | 0.2 | sigma_a, log-std of the arrival noise |
| ``spike_prob`` | 0.02 | probability per agent and step that a demand spike starts |
| ``spike_magnitude`` | 3.0 | arrival multiplier during a spike |
| ``spike_duration`` | 5.0 | mean length of a spike (steps, >= 1) |
| ``capacity_noise`` | 0.1 | sigma_c, log-std of the capacity fluctuation |
| ``capacity_drop_prob`` | 0.02 | probability per server and step of a capacity drop |
| ``capacity_drop_factor`` | 0.3 | capacity multiplier during a drop, in [0, 1] |
| ``waste_threshold`` | 0.5 | theta, backlog (fraction of the buffer) where thrashing starts, in [0, 1) |
| ``max_waste`` | 0.5 | wasted fraction of the throughput at a full buffer, in [0, 1] |
| ``goodput_value`` | 1.0 | g, value of a unit of goodput |
| ``delay_cost`` | 0.1 | delta, cost of a unit of work waiting one step in a queue |
| ``drop_cost`` | 1.0 | d, cost of a unit of work dropped by a full buffer |
| ``reject_cost`` | 0.25 | r, cost of a unit of work rejected at the source (``<= drop_cost``) |
| ``smoothing`` | 0.05 | relative half-width tau of the smoothed hinges, in [0, 0.5] |

**Version history**

* v0: first release.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import torch

from envs.core import (
    Scenario,
    ScenarioConfig,
    State,
    check_positive_int,
    check_real,
    rand,
    randn,
    register_scenario,
    repeat_for_agents,
)

MAX_RELATIVE_CAPACITY = 3.0  # observed capacities are clipped to this multiple of nominal
MAX_RELATIVE_WORK = 20.0  # observed own/peer work is clipped to this


@dataclasses.dataclass(frozen=True)
class ComputeConfig(ScenarioConfig):
    """Configuration of the compute scenario; see the module docstring for units."""

    n_servers: int = 4
    capacity: float = 1.0
    capacity_spread: float = 0.5
    buffer_size: float = 4.0
    load_factor: float = 0.8
    arrival_noise: float = 0.2
    spike_prob: float = 0.02
    spike_magnitude: float = 3.0
    spike_duration: float = 5.0
    capacity_noise: float = 0.1
    capacity_drop_prob: float = 0.02
    capacity_drop_factor: float = 0.3
    waste_threshold: float = 0.5
    max_waste: float = 0.5
    goodput_value: float = 1.0
    delay_cost: float = 0.1
    drop_cost: float = 1.0
    reject_cost: float = 0.25
    smoothing: float = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("n_servers", self.n_servers)
        check_real("capacity", self.capacity, 0.0, low_open=True)
        check_real("capacity_spread", self.capacity_spread, 0.0, 1.0, high_open=True)
        check_real("buffer_size", self.buffer_size, 0.0, low_open=True)
        check_real("load_factor", self.load_factor, 0.0, low_open=True)
        check_real("arrival_noise", self.arrival_noise, 0.0, 2.0)
        check_real("spike_prob", self.spike_prob, 0.0, 1.0)
        check_real("spike_magnitude", self.spike_magnitude, 0.0, low_open=True)
        check_real("spike_duration", self.spike_duration, 1.0)
        check_real("capacity_noise", self.capacity_noise, 0.0, 2.0)
        check_real("capacity_drop_prob", self.capacity_drop_prob, 0.0, 1.0)
        check_real("capacity_drop_factor", self.capacity_drop_factor, 0.0, 1.0)
        check_real("waste_threshold", self.waste_threshold, 0.0, 1.0, high_open=True)
        check_real("max_waste", self.max_waste, 0.0, 1.0)
        check_real("goodput_value", self.goodput_value, 0.0)
        check_real("delay_cost", self.delay_cost, 0.0)
        check_real("drop_cost", self.drop_cost, 0.0)
        check_real("reject_cost", self.reject_cost, 0.0)
        if self.reject_cost > self.drop_cost:
            raise ValueError(f"reject_cost must not exceed drop_cost ({self.drop_cost!r}): shedding work at the "
                             f"source cannot cost more than losing it in a full buffer; got {self.reject_cost!r}")
        check_real("smoothing", self.smoothing, 0.0, 0.5)


# --------------------------------------------------------------------------------------------
# The fluid model, as pure functions on tensors
# --------------------------------------------------------------------------------------------


def smooth_relu(x: torch.Tensor, width: torch.Tensor | float) -> torch.Tensor:
    """C^1 hinge ``h(x) = min(max(x + tau, 0), 2 tau)^2 / (4 tau) + max(x - tau, 0)``, ``tau = width``.

    Equals ``max(0, x)`` where ``|x| >= tau`` (everywhere when ``tau = 0``), lies above it, is
    1-Lipschitz and nondecreasing; ``width`` broadcasts against ``x``.
    """
    width = torch.as_tensor(width, dtype=x.dtype, device=x.device)
    band = torch.minimum(torch.relu(x + width), 2 * width)
    return band ** 2 / (4 * width.clamp_min(torch.finfo(x.dtype).tiny)) + torch.relu(x - width)


def split_work(work: torch.Tensor, actions: torch.Tensor, smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Submissions ``x_is = w_i f_is`` ``(B, N, S)`` and rejected work ``J_i`` ``(B, N)`` (eq. 1).

    ``work``: pending work ``(B, N)``; ``actions``: ``(B, N, S)`` in [0, 1].
    """
    fractions = actions / (1.0 + smooth_relu(actions.sum(-1, keepdim=True) - 1.0, smoothing))
    submitted = work.unsqueeze(-1) * fractions
    return submitted, work * (1.0 - fractions.sum(-1))


class ServerOutcome(NamedTuple):
    """One step of service (eqs. 2-6); server totals are ``(B, S)``."""

    share: torch.Tensor  # (B, N, S) pi_is, agent i's share of server s's load (0 where L_s = 0)
    processed: torch.Tensor  # P_s, throughput
    goodput: torch.Tensor  # G_s
    wasted: torch.Tensor  # V_s, served work whose clients timed out (retried next step)
    dropped: torch.Tensor  # D_s, work dropped by a full buffer
    carried: torch.Tensor  # Q'_s, queue carried to the next step


def serve(load_by_agent: torch.Tensor, capacity: torch.Tensor, buffer: torch.Tensor,
          waste_threshold: float, max_waste: float, smoothing: float) -> ServerOutcome:
    """Service of one step (eqs. 2-6).

    ``load_by_agent``: ``l_is = q_is + x_is`` ``(B, N, S)``; ``capacity``: ``c_s`` ``(B, S)``;
    ``buffer``: ``K_s`` ``(S,)``.
    """
    load = load_by_agent.sum(1)
    safe_load = torch.where(load > 0, load, torch.ones_like(load))
    share = load_by_agent / safe_load.unsqueeze(1)
    remaining = smooth_relu(load - capacity, smoothing * capacity)
    processed = load - remaining
    dropped = smooth_relu(remaining - buffer, smoothing * buffer)
    overload = smooth_relu(remaining - waste_threshold * buffer, smoothing * buffer) - dropped
    waste_fraction = max_waste * overload / ((1.0 - waste_threshold) * buffer)
    return ServerOutcome(share, processed, (1.0 - waste_fraction) * processed, waste_fraction * processed,
                         dropped, remaining - dropped)


def actions_for_fractions(fractions: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Actions ``(..., S)`` whose submitted fractions (eq. 1) are ``fractions`` ``f_s`` (sum ``F <= 1``).

    Inverts eq. (1): the actions are ``a = f y / F`` with ``y = sum_s a_s`` solving
    ``y / (1 + h(y - 1)) = F``, i.e. ``y = F`` for ``F <= 1 - tau`` and, in the smoothing band,
    ``y = 1 - tau + 2 (tau - sqrt(tau (1 - F)(F + tau))) / F`` (``y = 1 + tau`` at ``F = 1``).
    Actions are clipped to [0, 1]; with a single server the fraction 1 is then only reached up to
    O(tau).
    """
    tau = smoothing
    total = fractions.sum(-1, keepdim=True)
    in_band = total > 1.0 - tau
    band_total = total.clamp(1.0 - tau, 1.0)
    band_sum = 1.0 - tau + 2.0 * (tau - torch.sqrt(tau * (1.0 - band_total) * (band_total + tau))) / band_total
    scale = torch.where(in_band, band_sum / band_total, torch.ones_like(total))
    return (fractions * scale).clamp(0.0, 1.0)


def fill_proportionally(work: torch.Tensor, room: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Place ``work`` ``(B,)`` into ``room`` ``(B, S)`` in proportion to the room; returns (placed, left)."""
    total_room = room.sum(-1)
    fraction = torch.where(total_room > work, work / total_room.clamp_min(torch.finfo(room.dtype).tiny),
                           torch.ones_like(work))
    placed = room * fraction.unsqueeze(-1)
    return placed, (work - placed.sum(-1)).clamp_min(0.0)


def fluid_optimal_submission(total_work: torch.Tensor, queue: torch.Tensor, capacity: torch.Tensor,
                             buffer: torch.Tensor, *, goodput_value: float, delay_cost: float,
                             reject_cost: float, waste_threshold: float, max_waste: float) -> torch.Tensor:
    """Total work ``u_s`` ``(B, S)`` to submit to each server, minimising the one-step loss (8).

    ``total_work``: ``W = sum_i w_i`` ``(B,)``; ``queue``: ``Q_s = sum_i q_is`` ``(B, S)``;
    ``capacity``: ``c_s`` ``(B, S)``; ``buffer``: ``K_s`` ``(S,)``. Exact fluid model (no smoothing).

    In the exact model the loss is separable, ``C * loss = sum_s F_s(u_s) + r (W - sum_s u_s)``, and
    each ``F_s`` is piecewise linear in ``u_s``, with marginal cost (backlog before submission
    ``b_s = max(Q_s - c_s, 0)``):

    * ``-g`` on the spare capacity ``max(c_s - Q_s, 0)`` (served at once),
    * ``delta`` while the backlog stays below ``theta K_s`` (queued),
    * ``delta + g max_waste c_s / ((1 - theta) K_s)`` until the buffer is full (queued, and each unit
      raises the wasted fraction),
    * ``d >= r`` beyond (dropped): never better than rejecting.

    The marginal costs increase along each server (F_s is convex), so the optimum fills the segments
    cheaper than rejecting (``< r``) in increasing order of cost, a water-filling: spare capacity
    first (split in proportion to the spare capacity of each server), then the queues up to
    ``theta K_s`` (in proportion to their room), then the thrashing segments, cheapest server first.
    Whatever does not fit is rejected.
    """
    backlog = torch.relu(queue - capacity)
    placed_spare, left = fill_proportionally(total_work, torch.relu(capacity - queue))
    queue_room = (torch.relu(waste_threshold * buffer - backlog) if delay_cost < reject_cost
                  else torch.zeros_like(backlog))
    placed_queue, left = fill_proportionally(left, queue_room)
    thrash_cost = delay_cost + goodput_value * max_waste * capacity / ((1.0 - waste_threshold) * buffer)
    thrash_room = torch.where(thrash_cost < reject_cost,
                              torch.relu(buffer - torch.maximum(backlog, waste_threshold * buffer)),
                              torch.zeros_like(backlog))
    order = thrash_cost.argsort(dim=-1)
    room_sorted = thrash_room.gather(-1, order)
    room_before = room_sorted.cumsum(-1) - room_sorted
    placed_sorted = torch.minimum(torch.relu(left.unsqueeze(-1) - room_before), room_sorted)
    placed_thrash = torch.zeros_like(placed_sorted).scatter(-1, order, placed_sorted)
    return placed_spare + placed_queue + placed_thrash


# --------------------------------------------------------------------------------------------
# The scenario
# --------------------------------------------------------------------------------------------


@register_scenario
class Compute(Scenario):
    """Batched multi-server queueing simulator (documentation: the module docstring)."""

    name = "compute"
    config_cls = ComputeConfig
    reference_names = ("fluid_optimal", "proportional")
    learning_target = (">=", 0.90)
    spike_features = ("peer_load",)
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "small": {"n_agents": 2, "n_servers": 2, "horizon": 8},
        "default": {"n_agents": 4, "n_servers": 4, "horizon": 100},
        "large": {"n_agents": 16, "n_servers": 64, "horizon": 100},
    }
    config: ComputeConfig

    def __init__(self, config: ComputeConfig, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__(config, device, dtype)
        s = config.n_servers
        self.n_servers = s
        self.obs_dim = 3 * s + 3
        self.action_dim = s
        spread = config.capacity_spread
        relative = (torch.linspace(1.0 - spread, 1.0 + spread, s, dtype=torch.float64) if s > 1
                    else torch.ones(1, dtype=torch.float64))
        self.nominal_capacity = self.tensor(config.capacity * relative)
        self.buffer = config.buffer_size * self.nominal_capacity
        self.total_capacity = config.capacity * s
        self.arrival_rate = config.load_factor * self.total_capacity / self.n_agents
        self.feature_names = tuple(
            [f"queue_{j}" for j in range(s)] + [f"capacity_{j}" for j in range(s)] + ["peer_load", "own_work"]
            + [f"own_queue_{j}" for j in range(s)] + ["time"])
        self.shock_mask = torch.tensor([True] * (2 * s + 1) + [False] * (s + 2), device=self.device)
        self.obs_low = self.tensor([0.0] * self.obs_dim)
        self.obs_high = self.tensor([1.0] * s + [MAX_RELATIVE_CAPACITY] * s + [MAX_RELATIVE_WORK] * 2
                                    + [1.0] * (s + 1))
        self.action_low = self.tensor([0.0] * s)
        self.action_high = self.tensor([1.0] * s)

    # ----- exogenous randomness ----------------------------------------------------------------

    def _uniform(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        return rand(shape, generator, device=self.device, dtype=self.dtype)

    def _lognormal(self, shape: tuple[int, ...], sigma: float, generator: torch.Generator) -> torch.Tensor:
        """Mean-one log-normal noise ``exp(sigma eps - sigma^2 / 2)``."""
        eps = randn(shape, generator, device=self.device, dtype=self.dtype)
        return torch.exp(sigma * eps - sigma ** 2 / 2)

    def _exogenous(self, spiking: torch.Tensor, generator: torch.Generator) -> State:
        """Arrivals ``(B, N)`` and capacities ``(B, S)`` of a step, given who is spiking."""
        cfg = self.config
        multiplier = 1.0 + (cfg.spike_magnitude - 1.0) * spiking.to(self.dtype)
        arrivals = self.arrival_rate * multiplier * self._lognormal(spiking.shape, cfg.arrival_noise, generator)
        shape = (spiking.shape[0], self.n_servers)
        drops = self._uniform(shape, generator) < cfg.capacity_drop_prob
        capacity = self.nominal_capacity * self._lognormal(shape, cfg.capacity_noise, generator)
        capacity = torch.where(drops, capacity * cfg.capacity_drop_factor, capacity)
        return {"arrivals": arrivals, "capacity": capacity}

    def reset(self, batch_size: int, generator: torch.Generator) -> State:
        batch_size = check_positive_int("batch_size", batch_size)
        spiking = self._uniform((batch_size, self.n_agents), generator) < self.config.spike_prob
        return {
            "queue": torch.zeros(batch_size, self.n_agents, self.n_servers, device=self.device, dtype=self.dtype),
            "retries": torch.zeros(batch_size, self.n_agents, device=self.device, dtype=self.dtype),
            "spiking": spiking,
            **self._exogenous(spiking, generator),
            "t": torch.zeros(batch_size, dtype=torch.long, device=self.device),
        }

    # ----- one step ----------------------------------------------------------------------------

    def _outcome(self, state: State, actions: torch.Tensor) -> tuple[torch.Tensor, ServerOutcome]:
        """Rejected work ``J_i`` ``(B, N)`` and the service outcome of the joint action."""
        cfg = self.config
        submitted, rejected = split_work(state["arrivals"] + state["retries"], actions, cfg.smoothing)
        outcome = serve(state["queue"] + submitted, state["capacity"], self.buffer,
                        cfg.waste_threshold, cfg.max_waste, cfg.smoothing)
        return rejected, outcome

    def observe(self, state: State) -> torch.Tensor:
        n, s = self.n_agents, self.n_servers
        work = state["arrivals"] + state["retries"]
        peer_load = (work.sum(-1, keepdim=True) - work) / self.total_capacity
        occupancy = state["queue"].sum(1) / self.buffer

        def clip(features: torch.Tensor, start: int) -> torch.Tensor:
            """``features`` (last dimension: the observation's features from ``start`` on) clipped to their range."""
            stop = start + features.shape[-1]
            return torch.minimum(torch.maximum(features, self.obs_low[start:stop]), self.obs_high[start:stop])

        # every part is clipped before the concatenation, the shared features before they are repeated for
        # every agent: the values (and gradients) of clipping the whole observation, for a third of the work
        shared = clip(torch.cat([occupancy, state["capacity"] / self.nominal_capacity], dim=-1), 0)
        own_work = clip(torch.stack([peer_load, work / self.arrival_rate], dim=-1), 2 * s)
        time = clip((state["t"].to(self.dtype) / self.horizon).view(-1, 1), 3 * s + 2)
        return torch.cat([
            repeat_for_agents(shared, n),
            own_work,
            clip(state["queue"] / self.buffer, 2 * s + 2),
            repeat_for_agents(time, n),
        ], dim=-1)

    def _payoffs(self, rejected: torch.Tensor, out: ServerOutcome) -> torch.Tensor:
        """Payoffs (9) ``(B, N)`` of a service outcome."""
        cfg = self.config
        server_cost = -cfg.goodput_value * out.goodput + cfg.delay_cost * out.carried + cfg.drop_cost * out.dropped
        cost = (out.share * server_cost.unsqueeze(1)).sum(-1) + cfg.reject_cost * rejected
        return -cost / self.total_capacity

    def agent_payoffs(self, state: State, actions: torch.Tensor) -> torch.Tensor:
        return self._payoffs(*self._outcome(state, actions))

    def system_loss(self, state: State, actions: torch.Tensor) -> torch.Tensor:
        return -self.agent_payoffs(state, actions).sum(-1)

    def evaluate_step(self, state: State, actions: torch.Tensor, generator: torch.Generator
                      ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], State]:
        """``step``'s loss, rewards, diagnostics and next state from one evaluation of the service model
        (the separate functions evaluate it once each); the same operations, hence the same numbers."""
        rejected, out = self._outcome(state, actions)
        payoffs = self._payoffs(rejected, out)
        system_loss = -payoffs.sum(-1)
        rewards = self.rewards(state, actions, system_loss, payoffs)
        return system_loss, rewards, self._diagnostics(rejected, out), self._next_state(state, out, generator)

    def transition(self, state: State, actions: torch.Tensor, generator: torch.Generator) -> State:
        return self._next_state(state, self._outcome(state, actions)[1], generator)

    def _next_state(self, state: State, out: ServerOutcome, generator: torch.Generator) -> State:
        """The next state after the service outcome ``out`` of ``state``."""
        cfg = self.config
        ends = self._uniform(state["spiking"].shape, generator) < 1.0 / cfg.spike_duration
        starts = self._uniform(state["spiking"].shape, generator) < cfg.spike_prob
        spiking = (state["spiking"] & ~ends) | starts
        return {
            "queue": out.share * out.carried.unsqueeze(1),
            "retries": (out.share * out.wasted.unsqueeze(1)).sum(-1),
            "spiking": spiking,
            **self._exogenous(spiking, generator),
            "t": state["t"] + 1,
        }

    def diagnostics(self, state: State, actions: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._diagnostics(*self._outcome(state, actions))

    def _diagnostics(self, rejected: torch.Tensor, out: ServerOutcome) -> dict[str, torch.Tensor]:
        per_capacity = 1.0 / self.total_capacity
        return {
            "throughput": out.processed.sum(-1) * per_capacity,
            "goodput": out.goodput.sum(-1) * per_capacity,
            "drops": out.dropped.sum(-1) * per_capacity,
            "rejected": rejected.sum(-1) * per_capacity,
            "mean_queue": (out.carried / self.buffer).mean(-1),
        }

    # ----- references --------------------------------------------------------------------------

    def reference_action(self, state: State, name: str) -> torch.Tensor:
        self.check_reference_name(name)
        cfg = self.config
        capacity = state["capacity"]
        if name == "proportional":
            total_capacity = capacity.sum(-1, keepdim=True)
            fractions = capacity / torch.where(total_capacity > 0, total_capacity, torch.ones_like(total_capacity))
        else:
            total_work = (state["arrivals"] + state["retries"]).sum(-1)
            submission = fluid_optimal_submission(
                total_work, state["queue"].sum(1), capacity, self.buffer,
                goodput_value=cfg.goodput_value, delay_cost=cfg.delay_cost, reject_cost=cfg.reject_cost,
                waste_threshold=cfg.waste_threshold, max_waste=cfg.max_waste)
            safe_work = torch.where(total_work > 0, total_work, torch.ones_like(total_work))
            fractions = submission / safe_work.unsqueeze(-1)
        actions = actions_for_fractions(fractions, cfg.smoothing)
        return actions.unsqueeze(1).expand(-1, self.n_agents, -1).clone()

    def nominal_state(self) -> State:
        """One environment (B = 1) at nominal arrivals and capacities, with empty queues and no spike."""
        n, s = self.n_agents, self.n_servers
        return {
            "queue": torch.zeros(1, n, s, device=self.device, dtype=self.dtype),
            "arrivals": torch.full((1, n), self.arrival_rate, device=self.device, dtype=self.dtype),
            "retries": torch.zeros(1, n, device=self.device, dtype=self.dtype),
            "spiking": torch.zeros(1, n, dtype=torch.bool, device=self.device),
            "capacity": self.nominal_capacity.unsqueeze(0).clone(),
            "t": torch.zeros(1, dtype=torch.long, device=self.device),
        }

    def references(self) -> dict[str, float]:
        """Reference numbers of the configuration (see "References" in the module docstring)."""
        cfg = self.config
        state = self.nominal_state()
        actions = self.reference_action(state, "fluid_optimal")
        return {
            "total_capacity": self.total_capacity,
            "total_arrival_rate": cfg.load_factor * self.total_capacity,
            "load_factor": cfg.load_factor,
            "collapse_goodput": 1.0 - cfg.max_waste,
            "fluid_optimal_loss": float(self.system_loss(state, actions)[0]),
            "fluid_optimal_goodput": float(self.diagnostics(state, actions)["goodput"][0]),
        }

    def unilateral_system_loss(self, state: State, nominal_actions: torch.Tensor,
                               attacked_actions: torch.Tensor) -> torch.Tensor:
        """System loss (8) ``(B, N)`` when agent i alone deviates. The loss depends on the joint action
        through each server's load and the total rejected work only (the shares of (9) add up to 1), so
        agent i's deviation is the nominal totals plus its own change, and the service model runs on
        ``(B, N, S)`` loads, each as the one "agent" of its server (the default serves N copies of every
        state's ``(N, S)`` loads)."""
        cfg = self.config
        work = state["arrivals"] + state["retries"]
        nominal_sent, nominal_rejected = split_work(work, nominal_actions, cfg.smoothing)
        attacked_sent, attacked_rejected = split_work(work, attacked_actions, cfg.smoothing)
        load = (state["queue"] + nominal_sent).sum(1, keepdim=True) + (attacked_sent - nominal_sent)  # (B, i, S)
        rejected = nominal_rejected.sum(-1, keepdim=True) + (attacked_rejected - nominal_rejected)  # (B, i)
        out = serve(load.unsqueeze(1), state["capacity"].unsqueeze(1), self.buffer,
                    cfg.waste_threshold, cfg.max_waste, cfg.smoothing)
        return -self._payoffs(rejected.unsqueeze(1), out).squeeze(1)


def parallel_env(**kwargs):
    """PettingZoo ParallelEnv of this scenario (see envs.pettingzoo_env)."""
    from envs.pettingzoo_env import make_parallel_env
    return make_parallel_env("compute", **kwargs)


def env(**kwargs):
    """PettingZoo AEC env of this scenario, through PettingZoo's parallel_to_aec."""
    from envs.pettingzoo_env import make_aec_env
    return make_aec_env("compute", **kwargs)
