"""Routing: a selfish-routing congestion game (Wardrop) on a network with one origin and one destination.

| | |
|---|---|
| Agents | ``agent_0`` ... ``agent_{N-1}`` (traffic operators, each with a demand to route) |
| Action space (per agent) | ``Box(0, 1, (P,))``: raw weights of the P paths, mapped to a split on the simplex |
| Observation space (per agent) | ``Box(low, high, (3P + E + 3,))``, see the feature table |
| Rewards | ``selfish`` (minus own travel time), ``social`` (``-system_loss / N``) or ``mixed`` |
| System loss | total travel time of the step, ``sum_e x_e l_e(x_e)`` |
| References | Wardrop user equilibrium and system optimum (Frank-Wolfe), price of anarchy |
| Import | ``envs.make_scenario("routing", ...)``, ``envs.routing.parallel_env(...)``, ``gymnasium.make("envs:AAJR/Routing-v0")`` |

**Network.** P paths from the origin to the destination over E edges, given by the path-edge
incidence matrix ``Inc`` ``(P, E)`` (``Inc_pe = 1`` if path p uses edge e). Every edge has the latency

    l_e(x) = a_e + b_e (x / (c_e f_e))^p                                                          (1)

with free-flow time ``a_e``, congestion coefficient ``b_e``, capacity ``c_e``, the step's capacity
factor ``f_e`` (1, or ``capacity_drop_factor`` during a drop) and power ``p``. Layouts:

| layout | paths | edges | latencies | nominal total demand |
|---|---|---|---|---|
| ``parallel`` | M = ``n_paths`` (default 4) | the M links | ``latency`` (``bpr`` by default or ``affine``), see below | ``N * demand`` (default 1 per agent) |
| ``pigou`` | 2 | ``l_0 = 1``, ``l_1 = x`` | textbook affine | 1 |
| ``braess`` | 3: S-A-E, S-B-E, S-A-B-E | S-A, A-E, S-B, B-E, A-B | textbook affine | 4 (thousand drivers) |
| ``braess_no_link`` | 2: S-A-E, S-B-E | S-A, A-E, S-B, B-E | textbook affine | 4 (thousand drivers) |

* ``parallel``: link m has free-flow time ``t0_m`` evenly spaced in [1, 2] (time unit: the free-flow
  time of the fastest link) and capacity ``c_m`` proportional to evenly spaced weights in [0.5, 1.5]
  (the fast links are the narrow ones), scaled so that the capacities add up to the nominal total
  demand. ``bpr``: ``l = t0 (1 + alpha (x / c)^beta)`` (``a = t0``, ``b = alpha t0``, ``p = beta``);
  ``affine``: ``l = t0 (1 + x / c)`` (``a = t0``, ``b = t0``, ``p = 1``, travel time doubles at capacity).
* ``pigou``, ``braess``, ``braess_no_link``: the textbook affine latencies ``a + b x`` (``c = 1``,
  ``p = 1``) are built in; ``latency`` must be left at None (or ``"affine"``) and ``n_paths`` at None
  (or the layout's path count), anything else is a ValueError. Braess is the classic 4000-driver
  example in thousands of drivers and **hours**: S-A and B-E take ``x/100`` minutes for x drivers,
  i.e. ``x / 6`` hours for x thousand, A-E and S-B take 45 minutes (0.75 h), A-B takes 0.

**State** (batch dimension first): ``demand`` ``(B, N)`` the demand of each agent at this step,
``capacity_factor`` ``(B, E)`` the capacity factors ``f_e`` of this step, ``last_split`` ``(B, N, P)``
the agents' splits at the previous step, ``last_share`` ``(B, P)`` the population's path shares at the
previous step, ``last_latency`` ``(B, P)`` the path latencies at the previous step's flows, ``t``
``(B,)``. At reset the "previous step" is everyone splitting uniformly at the first step's demands
and capacities.

**Exogenous randomness** (drawn into the state before the step it applies to, independently per
agent / edge and step). Agent i's demand is ``d_i = dbar exp(sigma eps - sigma^2 / 2) m_i`` with
``sigma = noise``, ``dbar`` the nominal demand per agent and ``m_i = spike_magnitude`` with
probability ``spike_prob`` (a demand spike), 1 otherwise. ``f_e = capacity_drop_factor`` with
probability ``capacity_drop_prob``, 1 otherwise: it divides the capacity in (1), i.e. for the affine
latencies it multiplies the slope ``b_e`` by ``1 / capacity_drop_factor``; edges with ``b_e = 0``
(Pigou's constant link, Braess' 45-minute roads) are not affected.

**Actions and the simplex mapping.** Agent i's action ``w_i`` in [0, 1]^P is a vector of raw path
weights; its split of the demand over the paths is

    s_ip = (w_ip + 1e-6) / sum_q (w_iq + 1e-6)                                                    (2)

(smooth, uniform when all weights are 0; ``actions_for_split`` inverts it). Actions outside [0, 1]
are clipped; NaN/inf actions are an error. Path and edge flows and path latencies:

    h_p = sum_i d_i s_ip,   x_e = sum_p h_p Inc_pe,   L_p = sum_e Inc_pe l_e(x_e)                   (3)

**Payoffs and system loss.** Agent i's payoff is minus its own travel time, and the system loss is
the total travel time (flow x time: 1 = one unit of demand travelling one time unit; thousand
driver-hours for Braess), so the payoffs add up to ``-system_loss`` exactly:

    payoff_i = -d_i sum_p s_ip L_p,        system_loss = sum_e x_e l_e(x_e) = sum_p h_p L_p          (4)

**Observation features** (the same layout for every agent; *shock* marks the shared-state channels).
The time scale ``tau`` is the travel time per unit of demand at the user equilibrium for the nominal
demand and capacities (1 for Pigou, 4/3 h for Braess, about 2 for the default parallel network).

| features | meaning | range | shock |
|---|---|---|---|
| ``total_demand`` | total demand of the step relative to nominal, ``sum_j d_j / (N dbar)`` (spike feature) | [0, 10] | yes |
| ``latency_p`` | latency of path p at the previous step's flows, ``L_p / tau`` | [0, 10] | yes |
| ``capacity_e`` | capacity factor ``f_e`` of edge e at this step | [0, 1] | yes |
| ``share_p`` | share of the total flow on path p at the previous step, ``h_p / sum_q h_q`` | [0, 1] | yes |
| ``own_demand`` | own demand of the step relative to nominal, ``d_i / dbar`` | [0, 10] | no |
| ``own_share_p`` | own split at the previous step, ``s_ip`` | [0, 1] | no |
| ``time`` | t / T | [0, 1] | no |

Values are clipped to these ranges.

**References.** ``user_equilibrium`` (Wardrop: every used path has the least latency; it minimises
the Beckmann potential ``sum_e int_0^{x_e} l_e``) and ``system_optimum`` (minimum total travel time:
the equilibrium for the marginal-cost latencies ``l + x l' = a + (p + 1) b (x / (c f))^p``), both for
the state's total demand and capacity factors, computed in float64 to a stated accuracy: the
**relative gap** ``(sum_p h_p C_p - D min_p C_p) / sum_p h_p C_p`` (``C_p``: path latencies, or marginal
costs for the optimum; 0 exactly at the equilibrium) at most ``wardrop_gap_tol`` (``relative_gap``).
``equilibrium_flows`` solves parallel links whose latencies all grow with the flow exactly, by bisection
on the common latency of the used links (``parallel_links_equilibrium``), and every other network by
the batched pairwise Frank-Wolfe algorithm ``frank_wolfe``, iterated until the gap is reached, with a
``RuntimeWarning`` naming the gap left if ``frank_wolfe_max_iters`` iterations do not reach it.
``reference_action(state, name)`` gives every
agent the aggregate path shares of the reference (any such profile has the same flows, hence the
same total travel time). The Wardrop equilibrium is that of infinitesimal drivers; N operators who each
route a finite demand selfishly (``reward_mode="selfish"``) internalise their own congestion, and their
Nash equilibrium is in general neither reference: it is the system optimum for N = 1 and tends to the
Wardrop equilibrium as N grows with equal demands.
``references()`` returns, at nominal demand and capacities: ``total_demand``,
``ue_total_time``, ``so_total_time``, ``ue_mean_time`` and ``so_mean_time`` (per unit of demand),
``price_of_anarchy`` (``ue_total_time / so_total_time``), and for the textbook layouts at their
textbook demand (``demand=None``) the closed forms ``closed_form_ue_total_time``,
``closed_form_so_total_time``, ``closed_form_price_of_anarchy``:

| layout | UE total | SO total | price of anarchy |
|---|---|---|---|
| ``pigou`` | 1 (all on the x link) | 3/4 (half on each link) | 4/3 |
| ``braess`` | 16/3 (80 min per driver, all on S-A-B-E) | 4.3125 (64.6875 min: 500 drivers on S-A-B-E) | 1.2367 |
| ``braess_no_link`` | 13/3 (65 min per driver) | 13/3 | 1 |

Adding the zero-time A-B link raises the equilibrium travel time from 65 to 80 minutes (Braess'
paradox); the system optimum does use the link a little and is slightly *better* than 65 minutes.

**Diagnostics** (``info``, per step): ``total_travel_time`` (the system loss), ``mean_travel_time``
(per unit of demand), ``max_load`` (``max_e x_e / (c_e f_e)``, the largest volume/capacity ratio; the
largest edge flow for the textbook networks, whose capacities are 1), ``total_demand``.

**Arguments** (``make_scenario("routing", **kwargs)``):

| argument | default | unit / meaning |
|---|---|---|
| ``n_agents`` | 4 | N agents |
| ``horizon`` | 100 | steps per episode |
| ``reward_mode`` | ``"social"`` | ``selfish`` / ``social`` / ``mixed`` |
| ``social_weight`` | 0.5 | weight of the social term in ``mixed`` mode |
| ``layout`` | ``"parallel"`` | ``parallel``, ``pigou``, ``braess`` or ``braess_no_link`` |
| ``n_paths`` | None | number of links M of ``parallel`` (None: 4); the fixed layouts' own count otherwise |
| ``latency`` | None | ``bpr`` or ``affine`` for ``parallel`` (None: ``bpr``); the textbook ones take only affine |
| ``demand`` | None | nominal demand per agent (flow units); None: 1 for ``parallel``, the textbook total / N otherwise |
| ``noise`` | 0.1 | sigma, log-std of the demand noise |
| ``spike_prob`` | 0.02 | probability per agent and step of a demand spike |
| ``spike_magnitude`` | 2.0 | demand multiplier during a spike |
| ``capacity_drop_prob`` | 0.02 | probability per edge and step of a capacity drop |
| ``capacity_drop_factor`` | 0.5 | capacity multiplier during a drop, in (0, 1] |
| ``bpr_alpha`` | 0.15 | alpha of the BPR latency |
| ``bpr_beta`` | 4.0 | beta of the BPR latency (>= 1) |
| ``wardrop_gap_tol`` | 1e-6 | relative gap to which the references are solved (``references()``: at most 1e-10) |
| ``frank_wolfe_max_iters`` | 1000 | most Frank-Wolfe iterations (about one per path it empties); a warning if the gap is not reached |

**Version history**

* v0: first release.
* v0 (unchanged dynamics): the references are solved to a relative gap (``wardrop_gap_tol``) instead of
  a fixed 100 Frank-Wolfe iterations (``frank_wolfe_iters``, removed), which left the large preset's
  user equilibrium at a 2.1% gap.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, ClassVar, NamedTuple

import torch

from envs.core import (
    Scenario,
    ScenarioConfig,
    State,
    check_choice,
    check_positive_int,
    check_real,
    rand,
    randn,
    register_scenario,
    repeat_for_agents,
)

LAYOUTS = ("parallel", "pigou", "braess", "braess_no_link")
LATENCIES = ("bpr", "affine")
OBJECTIVES = ("user_equilibrium", "system_optimum")
SPLIT_EPSILON = 1e-6  # the constant of the simplex mapping (2)
BISECTION_STEPS = 50  # exact line search of Frank-Wolfe to 2^-50 of the step (float64 resolution)
LEVEL_BISECTION_STEPS = 200  # most halvings of the latency bracket of parallel links (stops at float64 resolution)
REFERENCES_GAP_TOL = 1e-10  # relative gap of the closed-form numbers of ``references()``
MAX_RELATIVE_DEMAND = 10.0  # observed demands are clipped to this multiple of nominal
MAX_RELATIVE_LATENCY = 10.0  # observed latencies are clipped to this multiple of the time scale

# The textbook networks: incidence (P, E), free-flow times a_e, slopes b_e (capacities 1, power 1),
# total demand, and the closed-form (UE, SO) total travel times at that demand.
_BRAESS_INCIDENCE = [[1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [1, 0, 0, 1, 1]]  # edges S-A, A-E, S-B, B-E, A-B
TEXTBOOK = {
    "pigou": {"incidence": [[1, 0], [0, 1]], "free_time": [1.0, 0.0], "slope": [0.0, 1.0],
              "total_demand": 1.0, "closed_form": (1.0, 0.75)},
    "braess": {"incidence": _BRAESS_INCIDENCE, "free_time": [0.0, 0.75, 0.75, 0.0, 0.0],
               "slope": [1 / 6, 0.0, 0.0, 1 / 6, 0.0],
               "total_demand": 4.0, "closed_form": (4 * 80 / 60, 4 * 64.6875 / 60)},
    "braess_no_link": {"incidence": [row[:4] for row in _BRAESS_INCIDENCE[:2]],
                       "free_time": [0.0, 0.75, 0.75, 0.0], "slope": [1 / 6, 0.0, 0.0, 1 / 6],
                       "total_demand": 4.0, "closed_form": (4 * 65 / 60, 4 * 65 / 60)},
}
DEFAULT_PARALLEL_LINKS = 4


@dataclasses.dataclass(frozen=True)
class RoutingConfig(ScenarioConfig):
    """Configuration of the routing scenario; see the module docstring for units."""

    layout: str = "parallel"
    n_paths: int | None = None
    latency: str | None = None
    demand: float | None = None
    noise: float = 0.1
    spike_prob: float = 0.02
    spike_magnitude: float = 2.0
    capacity_drop_prob: float = 0.02
    capacity_drop_factor: float = 0.5
    bpr_alpha: float = 0.15
    bpr_beta: float = 4.0
    wardrop_gap_tol: float = 1e-6
    frank_wolfe_max_iters: int = 1000

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("layout", self.layout, LAYOUTS)
        if self.n_paths is not None:
            check_positive_int("n_paths", self.n_paths)
        if self.latency is not None:
            check_choice("latency", self.latency, LATENCIES)
        if self.layout in TEXTBOOK:
            path_count = len(TEXTBOOK[self.layout]["incidence"])
            if self.n_paths not in (None, path_count):
                raise ValueError(f"layout {self.layout!r} has {path_count} paths; n_paths must be None or "
                                 f"{path_count}, got {self.n_paths!r}")
            if self.latency not in (None, "affine"):
                raise ValueError(f"layout {self.layout!r} has the textbook affine latencies; latency must be "
                                 f"None or 'affine', got {self.latency!r}")
        if self.demand is not None:
            check_real("demand", self.demand, 0.0, low_open=True)
        check_real("noise", self.noise, 0.0, 2.0)
        check_real("spike_prob", self.spike_prob, 0.0, 1.0)
        check_real("spike_magnitude", self.spike_magnitude, 0.0, low_open=True)
        check_real("capacity_drop_prob", self.capacity_drop_prob, 0.0, 1.0)
        check_real("capacity_drop_factor", self.capacity_drop_factor, 0.0, 1.0, low_open=True)
        check_real("bpr_alpha", self.bpr_alpha, 0.0)
        check_real("bpr_beta", self.bpr_beta, 1.0)
        check_real("wardrop_gap_tol", self.wardrop_gap_tol, 0.0, 1.0, low_open=True)
        check_positive_int("frank_wolfe_max_iters", self.frank_wolfe_max_iters)

    @property
    def demand_per_agent(self) -> float:
        """Nominal demand ``dbar`` per agent: ``demand``, or the layout's default total split over N."""
        if self.demand is not None:
            return float(self.demand)
        total = TEXTBOOK[self.layout]["total_demand"] if self.layout in TEXTBOOK else float(self.n_agents)
        return total / self.n_agents


# --------------------------------------------------------------------------------------------
# The network and its latencies: pure functions on tensors.
# --------------------------------------------------------------------------------------------


class Network(NamedTuple):
    """Edge latencies ``l_e(x) = a_e + b_e (x / (c_e f_e))^p`` on paths given by their incidence."""

    incidence: torch.Tensor  # (P, E) 1 if path p uses edge e
    free_time: torch.Tensor  # (E,) a_e
    slope: torch.Tensor  # (E,) b_e
    capacity: torch.Tensor  # (E,) c_e
    power: float  # p

    def to(self, device: torch.device, dtype: torch.dtype) -> Network:
        """The same network with its tensors on ``device`` in ``dtype``."""
        return Network(*(tensor.to(device, dtype) for tensor in self[:4]), self.power)


def build_network(layout: str, n_paths: int | None = None, latency: str | None = None,
                  total_demand: float = 1.0, bpr_alpha: float = 0.15, bpr_beta: float = 4.0) -> Network:
    """The network of ``layout`` (float64, CPU); see the module docstring's layout table.

    ``n_paths`` and ``latency`` are used by ``parallel`` only (None: 4 links, ``bpr``), whose capacities
    add up to ``total_demand``.
    """
    check_choice("layout", layout, LAYOUTS)
    if layout in TEXTBOOK:
        spec = TEXTBOOK[layout]
        incidence = torch.tensor(spec["incidence"], dtype=torch.float64)
        free_time = torch.tensor(spec["free_time"], dtype=torch.float64)
        slope = torch.tensor(spec["slope"], dtype=torch.float64)
        return Network(incidence, free_time, slope, torch.ones_like(free_time), 1.0)
    links = DEFAULT_PARALLEL_LINKS if n_paths is None else n_paths
    free_time = torch.linspace(1.0, 2.0, links, dtype=torch.float64)
    weights = torch.linspace(0.5, 1.5, links, dtype=torch.float64)
    capacity = total_demand * weights / weights.sum()
    incidence = torch.eye(links, dtype=torch.float64)
    if check_choice("latency", latency or "bpr", LATENCIES) == "bpr":
        return Network(incidence, free_time, bpr_alpha * free_time, capacity, float(bpr_beta))
    return Network(incidence, free_time, free_time.clone(), capacity, 1.0)


def edge_latency(network: Network, edge_flow: torch.Tensor, capacity_factor: torch.Tensor) -> torch.Tensor:
    """``l_e(x_e) = a_e + b_e (x_e / (c_e f_e))^p`` (1): edge flows and factors ``(B, E)`` -> ``(B, E)``."""
    return network.free_time + network.slope * (edge_flow / (network.capacity * capacity_factor)) ** network.power


def marginal_cost_network(network: Network) -> Network:
    """The network whose latencies are the marginal costs ``l + x l' = a + (p + 1) b (x / (c f))^p``."""
    return network._replace(slope=(network.power + 1.0) * network.slope)


def total_travel_time(network: Network, edge_flow: torch.Tensor, capacity_factor: torch.Tensor) -> torch.Tensor:
    """Total travel time ``sum_e x_e l_e(x_e)`` ``(B,)`` of edge flows ``(B, E)``."""
    return (edge_flow * edge_latency(network, edge_flow, capacity_factor)).sum(-1)


def beckmann_potential(network: Network, edge_flow: torch.Tensor, capacity_factor: torch.Tensor) -> torch.Tensor:
    """Beckmann potential ``sum_e int_0^{x_e} l_e = sum_e a_e x_e + b_e c_e f_e (x_e / (c_e f_e))^(p+1) / (p+1)``."""
    capacity = network.capacity * capacity_factor
    congestion = network.slope * capacity * (edge_flow / capacity) ** (network.power + 1.0) / (network.power + 1.0)
    return (network.free_time * edge_flow + congestion).sum(-1)


def simplex_split(weights: torch.Tensor) -> torch.Tensor:
    """The split (2) ``s_p = (w_p + 1e-6) / sum_q (w_q + 1e-6)`` of raw weights ``(..., P)`` in [0, 1]."""
    shifted = weights + SPLIT_EPSILON
    return shifted / shifted.sum(-1, keepdim=True)


def actions_for_split(split: torch.Tensor) -> torch.Tensor:
    """Weights in [0, 1] whose simplex split (2) is ``split`` ``(..., P)`` (a point of the simplex).

    ``w_p = (1 + 1e-6) s_p / max_q s_q - 1e-6`` is exact wherever ``s_p >= 1e-6 max_q s_q``; smaller
    shares are rounded up to the mapping's least share, about ``1e-6 / P``.
    """
    return ((1.0 + SPLIT_EPSILON) * split / split.amax(-1, keepdim=True) - SPLIT_EPSILON).clamp(0.0, 1.0)


def path_costs(network: Network, path_flow: torch.Tensor, capacity_factor: torch.Tensor,
               objective: str) -> torch.Tensor:
    """Path costs ``C_p`` ``(B, P)`` of path flows ``(B, P)``: latencies (``user_equilibrium``) or marginal
    costs ``l + x l'`` summed over the path's edges (``system_optimum``)."""
    cost_network = network if objective == "user_equilibrium" else marginal_cost_network(network)
    return edge_latency(cost_network, path_flow @ network.incidence, capacity_factor) @ network.incidence.T


def relative_gap(network: Network, path_flow: torch.Tensor, capacity_factor: torch.Tensor,
                 objective: str = "user_equilibrium") -> torch.Tensor:
    """Relative gap ``(sum_p h_p C_p - D min_p C_p) / sum_p h_p C_p`` ``(B,)`` of path flows ``h`` ``(B, P)``
    with ``D = sum_p h_p`` and path costs ``C`` (``path_costs``): 0 exactly when every used path is a
    cheapest one (Wardrop's condition for ``user_equilibrium``, optimality for ``system_optimum``)."""
    check_choice("objective", objective, OBJECTIVES)
    return _gap(path_flow, path_costs(network, path_flow, capacity_factor, objective))


def _gap(path_flow: torch.Tensor, path_cost: torch.Tensor) -> torch.Tensor:
    total = (path_flow * path_cost).sum(-1)
    least = path_flow.sum(-1) * path_cost.amin(-1)
    return (total - least) / total.clamp_min(torch.finfo(total.dtype).tiny)


@torch.no_grad()
def frank_wolfe(network: Network, demand: torch.Tensor, capacity_factor: torch.Tensor,
                objective: str = "user_equilibrium", tol: float = 1e-6, max_iterations: int = 1000) -> torch.Tensor:
    """Path flows ``(B, P)`` of the user equilibrium or the system optimum, batched over B states, to a
    relative gap ``tol`` (``relative_gap``).

    Minimises over path flows ``h >= 0``, ``sum_p h_p = D`` (edge flows ``x = h Inc``) the Beckmann
    potential ``sum_e int_0^{x_e} l_e`` (``objective="user_equilibrium"``: Wardrop's condition, every
    used path has the least latency) or the total travel time ``sum_e x_e l_e(x_e)``
    (``"system_optimum"``, whose gradient is the marginal cost ``l + x l'``).

    Pairwise Frank-Wolfe from the uniform split: each iteration computes the path costs ``C_p`` (the
    objective's gradient: latencies or marginal costs), and moves flow from the costliest *used*
    path to the cheapest one, along ``d = e_cheapest - e_costliest``, by the exact line search over
    ``gamma in [0, h_costliest]``: the derivative ``sum_e c_e(x + gamma d Inc) (d Inc)_e`` is
    increasing (the objective is convex), and its root is found by bisection (``BISECTION_STEPS``),
    taking the full step when the derivative is still negative there (the path is emptied exactly).
    Unlike the classic Frank-Wolfe step towards the all-or-nothing flow, it converges linearly on
    these problems: Braess' system optimum to 1e-12 in 10 iterations where the classic step zigzags;
    it needs about one iteration per path it empties (64 parallel links: about 700 iterations to 1e-6,
    which ``parallel_links_equilibrium`` solves exactly). A state stops moving at the first iteration
    its gap is at most ``tol`` (so a batch gives each state the flows it would get alone); states still
    above ``tol`` after ``max_iterations`` iterations give a ``RuntimeWarning`` naming the gap.

    :param network: the network (tensors on the device and dtype of ``demand``).
    :param demand: total demand D ``(B,)``.
    :param capacity_factor: capacity factors f ``(B, E)``.
    :param objective: ``user_equilibrium`` or ``system_optimum``.
    :param tol: relative gap to reach, in (0, 1].
    :param max_iterations: most Frank-Wolfe iterations.
    """
    check_choice("objective", objective, OBJECTIVES)
    tol = check_real("tol", tol, 0.0, 1.0, low_open=True)
    max_iterations = check_positive_int("max_iterations", max_iterations)
    cost_network = network if objective == "user_equilibrium" else marginal_cost_network(network)
    n_paths = network.incidence.shape[0]
    path_flow = demand.unsqueeze(-1).expand(-1, n_paths) / n_paths
    for _ in range(max_iterations):
        edge_flow = path_flow @ network.incidence
        path_cost = path_costs(network, path_flow, capacity_factor, objective)
        active = _gap(path_flow, path_cost) > tol
        if not bool(active.any()):
            return path_flow
        cheapest = path_cost.argmin(-1, keepdim=True)
        costliest_used = torch.where(path_flow > 0, path_cost, -torch.inf).argmax(-1, keepdim=True)
        direction = torch.zeros_like(path_flow).scatter(-1, cheapest, 1.0).scatter_add(
            -1, costliest_used, -torch.ones_like(path_flow[:, :1]))
        max_step = path_flow.gather(-1, costliest_used).squeeze(-1)
        edge_direction = direction @ network.incidence

        def slope_at(step: torch.Tensor) -> torch.Tensor:
            moved = edge_flow + step.unsqueeze(-1) * edge_direction
            return (edge_latency(cost_network, moved, capacity_factor) * edge_direction).sum(-1)

        low, high = torch.zeros_like(max_step), max_step
        for _ in range(BISECTION_STEPS):
            middle = (low + high) / 2
            descending = slope_at(middle) < 0
            low, high = torch.where(descending, middle, low), torch.where(descending, high, middle)
        step = torch.where(slope_at(max_step) <= 0, max_step, (low + high) / 2)
        step = torch.where(active, step, torch.zeros_like(step))
        path_flow = (path_flow + step.unsqueeze(-1) * direction).clamp(min=0.0)
    gap = relative_gap(network, path_flow, capacity_factor, objective)
    behind = gap > tol
    if bool(behind.any()):
        warnings.warn(f"frank_wolfe ({objective}): relative gap {float(gap.max()):.2e} > tol {tol:g} after "
                      f"{max_iterations} iterations in {int(behind.sum())} of {gap.numel()} states; raise the "
                      f"iteration limit (frank_wolfe_max_iters) or the tolerance (wardrop_gap_tol)",
                      RuntimeWarning, stacklevel=2)
    return path_flow


def is_parallel_links(network: Network) -> bool:
    """Whether ``network`` is parallel links (incidence = identity) whose latencies all grow with the flow."""
    n_paths, n_edges = network.incidence.shape
    identity = torch.eye(n_paths, dtype=network.incidence.dtype, device=network.incidence.device)
    return n_paths == n_edges and bool((network.incidence == identity).all()) and bool((network.slope > 0).all())


@torch.no_grad()
def parallel_links_equilibrium(network: Network, demand: torch.Tensor, capacity_factor: torch.Tensor,
                               objective: str = "user_equilibrium") -> torch.Tensor:
    """Path (= link) flows ``(B, P)`` of the user equilibrium or the system optimum of parallel links
    (``is_parallel_links``), exact to the resolution of the dtype.

    At either solution every used link has the same cost ``lambda`` and the unused ones cost more, so
    the flow of link e is ``x_e(lambda) = c_e f_e ((lambda - a_e) / b_e)^(1/p)`` above ``a_e`` and 0 below
    (``b_e``: the slope of the latencies, or ``(p + 1) b_e`` for the marginal costs), and ``lambda`` is the
    root of the increasing ``sum_e x_e(lambda) = D``. It lies in ``[min_e a_e, min_e c_e(D)]`` (one link
    carrying everything costs at least lambda) and is found by bisection until the bracket stops
    shrinking (at most ``LEVEL_BISECTION_STEPS`` halvings); the flows are then scaled to add up to D.

    :param network: parallel links (tensors on the device and dtype of ``demand``).
    :param demand: total demand D ``(B,)``.
    :param capacity_factor: capacity factors f ``(B, E)``.
    :param objective: ``user_equilibrium`` or ``system_optimum``.
    """
    check_choice("objective", objective, OBJECTIVES)
    if not is_parallel_links(network):
        raise ValueError("parallel_links_equilibrium needs parallel links (identity incidence) with positive "
                         "slopes; use frank_wolfe (or equilibrium_flows) for this network")
    cost_network = network if objective == "user_equilibrium" else marginal_cost_network(network)
    capacity = network.capacity * capacity_factor

    def flows_at(level: torch.Tensor) -> torch.Tensor:
        excess = torch.relu(level.unsqueeze(-1) - cost_network.free_time) / cost_network.slope
        return capacity * excess ** (1.0 / network.power)

    full_load = edge_latency(cost_network, demand.unsqueeze(-1).expand_as(capacity), capacity_factor)
    low, high = cost_network.free_time.amin().expand_as(demand).clone(), full_load.amin(-1)
    for _ in range(LEVEL_BISECTION_STEPS):
        middle = (low + high) / 2
        if not bool(((middle > low) & (middle < high)).any()):  # no bracket can shrink any more
            break
        short = flows_at(middle).sum(-1) < demand
        low, high = torch.where(short, middle, low), torch.where(short, high, middle)
    flows = flows_at(high)
    return flows * (demand / flows.sum(-1).clamp_min(torch.finfo(flows.dtype).tiny)).unsqueeze(-1)


def equilibrium_flows(network: Network, demand: torch.Tensor, capacity_factor: torch.Tensor,
                      objective: str = "user_equilibrium", tol: float = 1e-6,
                      max_iterations: int = 1000) -> torch.Tensor:
    """Path flows ``(B, P)`` of the user equilibrium or the system optimum to a relative gap ``tol``:
    ``parallel_links_equilibrium`` (exact) where it applies, ``frank_wolfe`` otherwise."""
    if is_parallel_links(network):
        return parallel_links_equilibrium(network, demand, capacity_factor, objective)
    return frank_wolfe(network, demand, capacity_factor, objective, tol, max_iterations)


def price_of_anarchy(network: Network, demand: torch.Tensor, capacity_factor: torch.Tensor,
                     tol: float = 1e-6, max_iterations: int = 1000) -> torch.Tensor:
    """Price of anarchy ``(B,)``: total travel time at the user equilibrium over that at the system optimum."""
    ue, so = (equilibrium_flows(network, demand, capacity_factor, objective, tol, max_iterations) @ network.incidence
              for objective in OBJECTIVES)
    return total_travel_time(network, ue, capacity_factor) / total_travel_time(network, so, capacity_factor)


class Flows(NamedTuple):
    """Flows and latencies (3) of a joint split; batch dimension first."""

    path_flow: torch.Tensor  # (B, P) h_p
    edge_flow: torch.Tensor  # (B, E) x_e
    edge_latency: torch.Tensor  # (B, E) l_e(x_e)
    path_latency: torch.Tensor  # (B, P) L_p


def total_time_of(flows: Flows) -> torch.Tensor:
    """Total travel time ``sum_e x_e l_e(x_e)`` ``(B,)`` of routed flows (the system loss)."""
    return (flows.edge_flow * flows.edge_latency).sum(-1)


def route(network: Network, demand: torch.Tensor, split: torch.Tensor, capacity_factor: torch.Tensor) -> Flows:
    """Flows (3) of agents with demands ``(B, N)`` splitting them as ``split`` ``(B, N, P)``."""
    path_flow = torch.einsum("bn,bnp->bp", demand, split)
    edge_flow = path_flow @ network.incidence
    latency = edge_latency(network, edge_flow, capacity_factor)
    return Flows(path_flow, edge_flow, latency, latency @ network.incidence.T)


# --------------------------------------------------------------------------------------------
# The scenario
# --------------------------------------------------------------------------------------------


@register_scenario
class Routing(Scenario):
    """Batched selfish-routing simulator (documentation: the module docstring)."""

    name = "routing"
    config_cls = RoutingConfig
    reference_names = OBJECTIVES
    learning_target = ("<=", 1.05)
    spike_features = ("total_demand",)
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "small": {"n_agents": 2, "n_paths": 2, "horizon": 8},
        # the parallel layout with M = 4 links (the defaults), so that ``layout=...`` may override it
        "default": {"n_agents": 4, "horizon": 100},
        "large": {"n_agents": 16, "n_paths": 64, "horizon": 100},
    }
    config: RoutingConfig

    def __init__(self, config: RoutingConfig, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__(config, device, dtype)
        self.demand_per_agent = config.demand_per_agent
        self.nominal_total_demand = self.demand_per_agent * self.n_agents
        self.network_float64 = build_network(config.layout, config.n_paths, config.latency,
                                             self.nominal_total_demand, config.bpr_alpha, config.bpr_beta)
        self.network = self.network_float64.to(self.device, self.dtype)
        self.reference_network = self.network_float64.to(self.device, torch.float64)  # references: float64
        self.n_paths, self.n_edges = self.network.incidence.shape
        p, e = self.n_paths, self.n_edges
        ue_total_time = self.nominal_total_time("user_equilibrium", config.wardrop_gap_tol)
        self.time_scale = ue_total_time / self.nominal_total_demand  # tau of the feature table
        self.obs_dim = 3 * p + e + 3
        self.action_dim = p
        self.feature_names = tuple(
            ["total_demand"] + [f"latency_{j}" for j in range(p)] + [f"capacity_{j}" for j in range(e)]
            + [f"share_{j}" for j in range(p)] + ["own_demand"] + [f"own_share_{j}" for j in range(p)] + ["time"])
        self.shock_mask = torch.tensor([True] * (2 * p + e + 1) + [False] * (p + 2), device=self.device)
        self.obs_low = self.tensor([0.0] * self.obs_dim)
        self.obs_high = self.tensor([MAX_RELATIVE_DEMAND] + [MAX_RELATIVE_LATENCY] * p + [1.0] * (e + p)
                                    + [MAX_RELATIVE_DEMAND] + [1.0] * (p + 1))
        self.action_low = self.tensor([0.0] * p)
        self.action_high = self.tensor([1.0] * p)

    # ----- exogenous randomness ----------------------------------------------------------------

    def _uniform(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        return rand(shape, generator, device=self.device, dtype=self.dtype)

    def _exogenous(self, batch_size: int, generator: torch.Generator) -> State:
        """Demands ``(B, N)`` and capacity factors ``(B, E)`` of a step."""
        cfg = self.config
        eps = randn((batch_size, self.n_agents), generator, device=self.device, dtype=self.dtype)
        spikes = self._uniform((batch_size, self.n_agents), generator) < cfg.spike_prob
        demand = self.demand_per_agent * torch.exp(cfg.noise * eps - cfg.noise ** 2 / 2)
        drops = self._uniform((batch_size, self.n_edges), generator) < cfg.capacity_drop_prob
        return {
            "demand": torch.where(spikes, cfg.spike_magnitude * demand, demand),
            "capacity_factor": torch.where(drops, cfg.capacity_drop_factor, 1.0).to(self.dtype),
        }

    def _flows(self, state: State, split: torch.Tensor) -> Flows:
        return route(self.network, state["demand"], split, state["capacity_factor"])

    def _after(self, state: State, split: torch.Tensor, flows: Flows | None = None) -> State:
        """The ``last_*`` entries recording the joint ``split`` ``(B, N, P)`` played in ``state`` (``flows``:
        its flows, when computed already)."""
        flows = self._flows(state, split) if flows is None else flows
        return {
            "last_split": split.clone(),
            "last_share": flows.path_flow / flows.path_flow.sum(-1, keepdim=True),
            "last_latency": flows.path_latency,
        }

    def reset(self, batch_size: int, generator: torch.Generator) -> State:
        batch_size = check_positive_int("batch_size", batch_size)
        state = self._exogenous(batch_size, generator)
        uniform = torch.full((batch_size, self.n_agents, self.n_paths), 1.0 / self.n_paths,
                             device=self.device, dtype=self.dtype)
        state.update(self._after(state, uniform))
        state["t"] = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        return state

    def observe(self, state: State) -> torch.Tensor:
        n = self.n_agents
        relative_demand = state["demand"] / self.demand_per_agent
        shared = torch.cat([
            relative_demand.mean(-1, keepdim=True).clamp(max=MAX_RELATIVE_DEMAND),
            (state["last_latency"] / self.time_scale).clamp(max=MAX_RELATIVE_LATENCY),
            state["capacity_factor"],
            state["last_share"],
        ], dim=-1)
        time = (state["t"].to(self.dtype) / self.horizon).clamp(max=1.0)
        return torch.cat([
            repeat_for_agents(shared, n),
            relative_demand.clamp(max=MAX_RELATIVE_DEMAND).unsqueeze(-1),
            state["last_split"],
            repeat_for_agents(time.view(-1, 1), n),
        ], dim=-1)

    def system_loss(self, state: State, actions: torch.Tensor) -> torch.Tensor:
        return total_time_of(self._flows(state, simplex_split(actions)))

    def agent_payoffs(self, state: State, actions: torch.Tensor) -> torch.Tensor:
        split = simplex_split(actions)
        return self._payoffs(state, split, self._flows(state, split))

    def _payoffs(self, state: State, split: torch.Tensor, flows: Flows) -> torch.Tensor:
        return -state["demand"] * (split * flows.path_latency.unsqueeze(1)).sum(-1)

    def evaluate_step(self, state: State, actions: torch.Tensor, generator: torch.Generator
                      ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], State]:
        """``step``'s loss, rewards, diagnostics and next state from one evaluation of the flows (the
        separate functions route the split once each); the same operations, hence the same numbers."""
        split = simplex_split(actions)
        flows = self._flows(state, split)
        system_loss = total_time_of(flows)
        payoffs = None if self.config.social_weight_effective == 1.0 else self._payoffs(state, split, flows)
        rewards = self.rewards(state, actions, system_loss, payoffs)
        return system_loss, rewards, self._diagnostics(state, flows), self._next_state(state, split, flows, generator)

    def transition(self, state: State, actions: torch.Tensor, generator: torch.Generator) -> State:
        return self._next_state(state, simplex_split(actions), None, generator)

    def _next_state(self, state: State, split: torch.Tensor, flows: Flows | None,
                    generator: torch.Generator) -> State:
        next_state = self._after(state, split, flows)
        next_state.update(self._exogenous(state["t"].shape[0], generator))
        next_state["t"] = state["t"] + 1
        return next_state

    def diagnostics(self, state: State, actions: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._diagnostics(state, self._flows(state, simplex_split(actions)))

    def _diagnostics(self, state: State, flows: Flows) -> dict[str, torch.Tensor]:
        total_time = total_time_of(flows)
        total_demand = state["demand"].sum(-1)
        load = flows.edge_flow / (self.network.capacity * state["capacity_factor"])
        return {
            "total_travel_time": total_time,
            "mean_travel_time": total_time / total_demand,
            "max_load": load.amax(-1),
            "total_demand": total_demand,
        }

    # ----- references --------------------------------------------------------------------------

    def nominal_total_time(self, objective: str, tol: float) -> float:
        """Total travel time of the UE or SO at nominal demand and capacities, to the relative gap ``tol``
        (float64, on the CPU)."""
        network = self.network_float64
        demand = torch.tensor([self.nominal_total_demand], dtype=torch.float64)
        capacity_factor = torch.ones(1, self.n_edges, dtype=torch.float64)
        path_flow = equilibrium_flows(network, demand, capacity_factor, objective, tol,
                                      self.config.frank_wolfe_max_iters)
        return float(total_travel_time(network, path_flow @ network.incidence, capacity_factor))

    def reference_action(self, state: State, name: str) -> torch.Tensor:
        self.check_reference_name(name)
        total_demand = state["demand"].to(torch.float64).sum(-1)  # solved in float64 whatever the dtype
        path_flow = equilibrium_flows(self.reference_network, total_demand,
                                      state["capacity_factor"].to(torch.float64), name, self.config.wardrop_gap_tol,
                                      self.config.frank_wolfe_max_iters)
        shares = path_flow / total_demand.unsqueeze(-1)
        return actions_for_split(shares).to(self.dtype).unsqueeze(1).expand(-1, self.n_agents, -1).clone()

    def references(self) -> dict[str, float]:
        """UE/SO total and mean travel times and the price of anarchy at nominal demand and capacities
        (float64, relative gap at most ``min(wardrop_gap_tol, 1e-10)``), and the textbook closed forms."""
        tol = min(self.config.wardrop_gap_tol, REFERENCES_GAP_TOL)
        out = {"total_demand": self.nominal_total_demand}
        for short, objective in zip(("ue", "so"), OBJECTIVES):
            out[f"{short}_total_time"] = self.nominal_total_time(objective, tol)
            out[f"{short}_mean_time"] = out[f"{short}_total_time"] / self.nominal_total_demand
        out["price_of_anarchy"] = out["ue_total_time"] / out["so_total_time"]
        if self.config.layout in TEXTBOOK and self.config.demand is None:
            ue_total, so_total = TEXTBOOK[self.config.layout]["closed_form"]
            out.update(closed_form_ue_total_time=ue_total, closed_form_so_total_time=so_total,
                       closed_form_price_of_anarchy=ue_total / so_total)
        return out

    def unilateral_system_loss(self, state: State, nominal_actions: torch.Tensor,
                               attacked_actions: torch.Tensor) -> torch.Tensor:
        """Total travel time (4) ``(B, N)`` when agent i alone deviates: the nominal path flows once, plus
        agent i's own change ``d_i (s'_i - s_i)``, then edge flows and latencies ``(B, N, E)`` (the default
        routes N copies of every state's joint split)."""
        demand = state["demand"]
        nominal_split = simplex_split(nominal_actions)
        path_flow = torch.einsum("bn,bnp->bp", demand, nominal_split)
        deviated = path_flow.unsqueeze(1) + demand.unsqueeze(-1) * (simplex_split(attacked_actions) - nominal_split)
        edge_flow = deviated @ self.network.incidence
        latency = edge_latency(self.network, edge_flow, state["capacity_factor"].unsqueeze(1))
        return (edge_flow * latency).sum(-1)


def parallel_env(**kwargs):
    """PettingZoo ParallelEnv of this scenario (see envs.pettingzoo_env)."""
    from envs.pettingzoo_env import make_parallel_env
    return make_parallel_env("routing", **kwargs)


def env(**kwargs):
    """PettingZoo AEC env of this scenario, through PettingZoo's parallel_to_aec."""
    from envs.pettingzoo_env import make_aec_env
    return make_aec_env("routing", **kwargs)
