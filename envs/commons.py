"""Commons: common-pool renewable resources (fisheries, pastures) and the tragedy of the commons.

| | |
|---|---|
| Agents | ``agent_0`` ... ``agent_{N-1}`` (harvesters) |
| Action space (per agent) | ``Box(0, 1, (M,))``: fraction of the agent's maximal effort put on each resource |
| Observation space (per agent) | ``Box(low, high, (4M + 1,))``, see the feature table |
| Rewards | ``selfish`` (own profit), ``social`` (``-system_loss / N``) or ``mixed`` |
| System loss | negative aggregate welfare (profit of all agents) of the step |
| References | maximum sustainable yield, maximum economic yield, open-access equilibrium |
| Import | ``envs.make_scenario("commons", ...)``, ``envs.commons.parallel_env(...)``, ``gymnasium.make("envs:AAJR/Commons-v0")`` |

**State** (batch dimension first): ``stock`` ``(B, M)`` in units of the carrying capacity K (K = 1),
``log_price`` ``(B, M)`` the AR(1) log-price deviation ``z``, ``price`` ``(B, M)`` the price of the
step (with demand spikes), ``collapsed`` ``(B, M)`` bool, ``last_effort`` ``(B, N, M)``, ``t`` ``(B,)``.

**Actions and harvest.** Agent i's action ``a_im`` in [0, 1] is its effort on resource m as a fraction
of its maximal effort. The aggregate effort is ``E_m = mean_i a_im`` and the catch is proportional
to effort x stock:

    h_im = c_max * a_im * x_m / N,        H_m = sum_i h_im = c_max * E_m * x_m            (1)

where ``c_max`` (``max_catch_fraction``) is the fraction of the stock caught when every agent puts
full effort. Actions outside [0, 1] are clipped; NaN/inf actions are an error.

**Dynamics.** Logistic regrowth on the stock, then the harvest is removed:

    x'_m = max(0, x_m + r_m x_m (1 - x_m) * xi_m - H_m)                                    (2)

with growth noise ``xi_m = exp(sigma_g eps - sigma_g^2 / 2)`` (mean 1). A resource whose stock falls
below ``collapse_threshold`` **collapses**: it no longer regrows (``r_m = 0``) for the rest of the
episode. Growth rates are heterogeneous, ``r_m`` evenly spaced in ``growth_rate * [0.75, 1.25]``
(all equal to ``growth_rate`` when M = 1). Prices follow a log-AR(1) with stationary mean ``price``:
``z' = rho z + sigma_p sqrt(1 - rho^2) eps``, ``p = price * exp(z - sigma_p^2 / 2)``, multiplied by
``spike_magnitude`` on a step with a demand spike (probability ``spike_prob`` per resource and step).

**Payoffs and system loss.** Agent i's profit is ``pi_i = sum_m (p_m h_im - w a_im / N)`` (``w`` is
``effort_cost``, the cost of the aggregate effort E = 1), the welfare is ``W = sum_i pi_i =
sum_m (p_m c_max E_m x_m - w E_m)``, and ``system_loss = -W``.

**Observation features** (the same layout for every agent; *shock* marks the shared-state channels):

| features | meaning | range | shock |
|---|---|---|---|
| ``stock_m`` | stock x_m / K | [0, 1.5] | yes |
| ``price_m`` | price p_m / ``price`` (clipped at 10) | [0, 10] | yes |
| ``peer_effort_m`` | mean effort of the other agents at the last step | [0, 1] | yes |
| ``own_effort_m`` | the agent's own effort at the last step | [0, 1] | no |
| ``time`` | t / T | [0, 1] | no |

**References** (per resource, at the mean price p, K = 1; aggregate effort E in [0, 1]):

* maximum sustainable yield (MSY): stock 1/2, harvest ``r/4``, effort ``E = r / (2 c_max)``;
* maximum economic yield (MEY): stock ``x* = (1 + w / (p c_max)) / 2`` maximising the steady-state
  rent ``r (1 - x)(p x - w / c_max)``, effort ``E = r (1 - x*) / c_max``;
* open access (bionomic equilibrium): zero rent, stock ``w / (p c_max)``, effort ``r (1 - x) / c_max``.

``reference_action(state, name)`` gives every agent the constant action ``E`` of the named reference.

**Arguments** (``make_scenario("commons", **kwargs)``):

| argument | default | unit / meaning |
|---|---|---|
| ``n_agents`` | 4 | N harvesters |
| ``n_resources`` | 4 | M resources |
| ``horizon`` | 100 | steps per episode |
| ``reward_mode`` | ``"social"`` | ``selfish`` / ``social`` / ``mixed`` |
| ``social_weight`` | 0.5 | weight of the social term in ``mixed`` mode |
| ``growth_rate`` | 0.4 | mean intrinsic growth rate r per step |
| ``max_catch_fraction`` | 0.8 | c_max, fraction of the stock caught per step at full effort |
| ``effort_cost`` | 0.1 | w, cost per step of aggregate effort 1 (price units) |
| ``price`` | 1.0 | stationary mean price p |
| ``price_volatility`` | 0.1 | sigma_p, stationary std of the log-price |
| ``price_persistence`` | 0.9 | rho of the log-price AR(1) |
| ``spike_prob`` | 0.02 | probability of a demand spike per resource and step |
| ``spike_magnitude`` | 2.0 | price multiplier during a spike |
| ``growth_noise`` | 0.05 | sigma_g, log-std of the growth noise |
| ``collapse_threshold`` | 0.05 | stock (fraction of K) below which a resource collapses |
| ``initial_stock`` | (0.5, 0.9) | initial stocks drawn uniformly in this interval |

**Version history**

* v0: first release.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

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


MAX_RELATIVE_PRICE = 10.0  # observed prices are clipped to this multiple of the mean price


@dataclasses.dataclass(frozen=True)
class CommonsConfig(ScenarioConfig):
    """Configuration of the commons scenario; see the module docstring for units."""

    n_resources: int = 4
    growth_rate: float = 0.4
    max_catch_fraction: float = 0.8
    effort_cost: float = 0.1
    price: float = 1.0
    price_volatility: float = 0.1
    price_persistence: float = 0.9
    spike_prob: float = 0.02
    spike_magnitude: float = 2.0
    growth_noise: float = 0.05
    collapse_threshold: float = 0.05
    initial_stock: tuple[float, float] = (0.5, 0.9)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("n_resources", self.n_resources)
        check_real("growth_rate", self.growth_rate, 0.0, 1.0, low_open=True)
        check_real("max_catch_fraction", self.max_catch_fraction, 0.0, 1.0, low_open=True)
        check_real("effort_cost", self.effort_cost, 0.0)
        check_real("price", self.price, 0.0, low_open=True)
        check_real("price_volatility", self.price_volatility, 0.0, 2.0)
        check_real("price_persistence", self.price_persistence, 0.0, 1.0, high_open=True)
        check_real("spike_prob", self.spike_prob, 0.0, 1.0)
        check_real("spike_magnitude", self.spike_magnitude, 0.0, low_open=True)
        check_real("growth_noise", self.growth_noise, 0.0, 1.0)
        check_real("collapse_threshold", self.collapse_threshold, 0.0, 0.5, high_open=True)
        if (not isinstance(self.initial_stock, (tuple, list)) or len(self.initial_stock) != 2):
            raise ValueError(f"initial_stock must be a pair (low, high), got {self.initial_stock!r}")
        low = check_real("initial_stock[0]", self.initial_stock[0], 0.0, 1.0)
        check_real("initial_stock[1]", self.initial_stock[1], low, 1.0)


def harvest(effort: torch.Tensor, stock: torch.Tensor, max_catch_fraction: float) -> torch.Tensor:
    """Per-agent catch ``h_im = c_max * a_im * x_m / N`` (eq. 1): effort ``(B, N, M)``, stock ``(B, M)``."""
    return max_catch_fraction * effort * stock.unsqueeze(1) / effort.shape[1]


def logistic_growth(stock: torch.Tensor, growth_rates: torch.Tensor) -> torch.Tensor:
    """Logistic regrowth ``r x (1 - x)`` with carrying capacity 1; shapes broadcast."""
    return growth_rates * stock * (1.0 - stock)


def steady_state_effort(stock: float, growth_rate: float, max_catch_fraction: float) -> float:
    """Aggregate effort that keeps the stock at ``stock``: ``c_max E x = r x (1 - x)``."""
    return growth_rate * (1.0 - stock) / max_catch_fraction


def reference_stocks(price: float, effort_cost: float, max_catch_fraction: float) -> dict[str, float]:
    """Steady-state stocks (fraction of K) of the MSY, MEY and open-access references."""
    break_even_stock = min(1.0, effort_cost / (price * max_catch_fraction))
    return {
        "msy": 0.5,
        "mey": (1.0 + break_even_stock) / 2.0,
        "open_access": break_even_stock,
    }


@register_scenario
class Commons(Scenario):
    """Batched common-pool resource simulator (documentation: the module docstring)."""

    name = "commons"
    config_cls = CommonsConfig
    reference_names = ("msy", "mey", "open_access")
    learning_target = (">=", 0.90)
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "small": {"n_agents": 2, "n_resources": 2, "horizon": 8},
        "default": {"n_agents": 4, "n_resources": 4, "horizon": 100},
        "large": {"n_agents": 16, "n_resources": 64, "horizon": 100},
    }
    config: CommonsConfig

    def __init__(self, config: CommonsConfig, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__(config, device, dtype)
        m = config.n_resources
        self.n_resources = m
        self.obs_dim = 4 * m + 1
        self.action_dim = m
        # built in float64 and cast once, so that a float64 scenario has the exact rates
        spread = (torch.linspace(0.75, 1.25, m, dtype=torch.float64) if m > 1
                  else torch.ones(1, dtype=torch.float64))
        self.growth_rates = self.tensor(config.growth_rate * spread)
        self.feature_names = tuple(
            [f"stock_{j}" for j in range(m)] + [f"price_{j}" for j in range(m)]
            + [f"peer_effort_{j}" for j in range(m)] + [f"own_effort_{j}" for j in range(m)] + ["time"])
        self.spike_features = tuple(f"price_{j}" for j in range(m))
        shared = torch.zeros(self.obs_dim, dtype=torch.bool, device=self.device)
        shared[: 3 * m] = True
        self.shock_mask = shared
        self.obs_low = self.tensor([0.0] * self.obs_dim)
        self.obs_high = self.tensor([1.5] * m + [MAX_RELATIVE_PRICE] * m + [1.0] * (2 * m + 1))
        self.action_low = self.tensor([0.0] * m)
        self.action_high = self.tensor([1.0] * m)

    # ----- exogenous randomness ----------------------------------------------------------------

    def _price(self, log_price: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Price of a step: ``p0 exp(z - sigma^2/2)``, times ``spike_magnitude`` on spikes."""
        cfg = self.config
        spikes = rand(log_price.shape, generator, device=self.device, dtype=self.dtype) < cfg.spike_prob
        base = cfg.price * torch.exp(log_price - cfg.price_volatility ** 2 / 2)
        return torch.where(spikes, base * cfg.spike_magnitude, base)

    def reset(self, batch_size: int, generator: torch.Generator) -> State:
        cfg = self.config
        batch_size = check_positive_int("batch_size", batch_size)
        shape = (batch_size, self.n_resources)
        low, high = cfg.initial_stock
        uniform = rand(shape, generator, device=self.device, dtype=self.dtype)
        log_price = cfg.price_volatility * randn(shape, generator, device=self.device, dtype=self.dtype)
        return {
            "stock": low + (high - low) * uniform,
            "log_price": log_price,
            "price": self._price(log_price, generator),
            "collapsed": torch.zeros(shape, dtype=torch.bool, device=self.device),
            "last_effort": torch.zeros(batch_size, self.n_agents, self.n_resources, device=self.device, dtype=self.dtype),
            "t": torch.zeros(batch_size, dtype=torch.long, device=self.device),
        }

    def observe(self, state: State) -> torch.Tensor:
        n = self.n_agents
        effort = state["last_effort"]
        peer_effort = (effort.sum(1, keepdim=True) - effort) / max(n - 1, 1)
        relative_price = (state["price"] / self.config.price).clamp(max=MAX_RELATIVE_PRICE)
        shared = torch.cat([state["stock"].clamp(max=1.5), relative_price], dim=-1)
        time = (state["t"].to(self.dtype) / self.horizon).clamp(max=1.0)
        return torch.cat([
            repeat_for_agents(shared, n),
            peer_effort,
            effort,
            repeat_for_agents(time.view(-1, 1), n),
        ], dim=-1)

    def agent_payoffs(self, state: State, actions: torch.Tensor) -> torch.Tensor:
        catch = harvest(actions, state["stock"], self.config.max_catch_fraction)
        revenue = (catch * state["price"].unsqueeze(1)).sum(-1)
        return revenue - self.config.effort_cost * actions.sum(-1) / self.n_agents

    def system_loss(self, state: State, actions: torch.Tensor) -> torch.Tensor:
        return -self.agent_payoffs(state, actions).sum(-1)

    def transition(self, state: State, actions: torch.Tensor, generator: torch.Generator) -> State:
        cfg = self.config
        stock = state["stock"]
        total_catch = harvest(actions, stock, cfg.max_catch_fraction).sum(1)
        eps = randn(stock.shape, generator, device=self.device, dtype=self.dtype)
        noise = torch.exp(cfg.growth_noise * eps - cfg.growth_noise ** 2 / 2)
        growth_rates = torch.where(state["collapsed"], 0.0, self.growth_rates)
        next_stock = (stock + logistic_growth(stock, growth_rates) * noise - total_catch).clamp(min=0.0)
        innovation = randn(stock.shape, generator, device=self.device, dtype=self.dtype)
        rho = cfg.price_persistence
        log_price = rho * state["log_price"] + cfg.price_volatility * math.sqrt(1 - rho ** 2) * innovation
        return {
            "stock": next_stock,
            "log_price": log_price,
            "price": self._price(log_price, generator),
            "collapsed": state["collapsed"] | (next_stock < cfg.collapse_threshold),
            "last_effort": actions.clone(),
            "t": state["t"] + 1,
        }

    def diagnostics(self, state: State, actions: torch.Tensor) -> dict[str, torch.Tensor]:
        total_catch = harvest(actions, state["stock"], self.config.max_catch_fraction).sum(1)
        return {
            "harvest": total_catch.sum(-1),
            "mean_stock": state["stock"].mean(-1),
            "collapsed_fraction": state["collapsed"].to(self.dtype).mean(-1),
            "mean_effort": actions.mean((1, 2)),
        }

    # ----- references --------------------------------------------------------------------------

    def reference_efforts(self, name: str) -> torch.Tensor:
        """Aggregate effort ``(M,)`` holding each resource at the named reference's steady state."""
        self.check_reference_name(name)
        cfg = self.config
        stock = reference_stocks(cfg.price, cfg.effort_cost, cfg.max_catch_fraction)[name]
        return (self.growth_rates * (1.0 - stock) / cfg.max_catch_fraction).clamp(0.0, 1.0)

    def reference_action(self, state: State, name: str) -> torch.Tensor:
        batch_size = state["t"].shape[0]
        return self.reference_efforts(name).expand(batch_size, self.n_agents, -1).clone()

    def references(self) -> dict[str, float]:
        """Per-step references summed over resources, at the mean price (deterministic steady states).

        ``<name>_stock`` (mean over resources), ``<name>_harvest`` and ``<name>_welfare`` for
        ``msy``, ``mey`` and ``open_access``; ``msy_harvest`` equals ``sum_m r_m / 4``.
        """
        cfg = self.config
        out: dict[str, float] = {}
        for name, stock in reference_stocks(cfg.price, cfg.effort_cost, cfg.max_catch_fraction).items():
            effort = self.reference_efforts(name)
            catch = cfg.max_catch_fraction * effort * stock
            out[f"{name}_stock"] = stock
            out[f"{name}_harvest"] = float(catch.sum())
            out[f"{name}_welfare"] = float((cfg.price * catch - cfg.effort_cost * effort).sum())
        return out

    def unilateral_system_loss(self, state: State, nominal_actions: torch.Tensor,
                               attacked_actions: torch.Tensor) -> torch.Tensor:
        """``-W`` ``(B, N)`` when agent i alone deviates. Agent i's profit depends on its own effort only and
        ``W`` is their sum, so ``g_i = -sum_j pi_j(a_j) + pi_i(a_i) - pi_i(a'_i)``: two payoff evaluations
        (the default evaluates the loss on N copies of every state)."""
        nominal = self.agent_payoffs(state, nominal_actions)
        return nominal - nominal.sum(-1, keepdim=True) - self.agent_payoffs(state, attacked_actions)


def parallel_env(**kwargs):
    """PettingZoo ParallelEnv of this scenario (see envs.pettingzoo_env)."""
    from envs.pettingzoo_env import make_parallel_env
    return make_parallel_env("commons", **kwargs)


def env(**kwargs):
    """PettingZoo AEC env of this scenario, through PettingZoo's parallel_to_aec."""
    from envs.pettingzoo_env import make_aec_env
    return make_aec_env("commons", **kwargs)
