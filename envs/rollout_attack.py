"""The ``rollout`` attack objective: the system loss summed over H steps of the differentiable simulator.

The one-step ``system`` objective (``envs.shocks.system_objective``) is myopic: it sees only the loss
of the step the shock is applied to (in commons a shock that makes the agents over-harvest even
*raises* the welfare of that step, the damage comes later). ``rollout_objective`` returns

    g(delta) = sum_{k=0}^{H'-1} L(s_k, a_k),      a_0 = pi(obs + delta),   a_k = pi(observe(s_k)) (k >= 1),
    s_{k+1} = transition(s_k, a_k, xi_k)

with the shock applied at the current step only, the victim policy in the loop at the later steps
(acting on the clean observations of the simulated states), and the exogenous draws ``xi_k`` of the
window taken from a copy of the environment's generator. Shapes and conventions are those of
``system_objective``: ``shared``: ``delta`` ``(B, D)`` broadcast to every agent, ``g`` ``(B,)``;
``per_agent``: ``delta`` ``(B, N, D)``, ``g_i`` ``(B, N)`` is the H-step loss when agent i alone is
shocked at step 0 (the others at their nominal actions), all i in one batched call on the state
repeated N times. With H = 1 it *is* the system objective (same operations, same numbers).

**A clairvoyant attacker.** The generator's state is cloned once, when the objective is built, and
every call of ``g`` re-creates a generator from that state, so ``g`` is a deterministic function of
``delta`` and the environment's generator is not advanced. The window therefore sees the very demand
spikes, prices and capacity drops the environment will draw next (when nothing else draws from that
generator in between, as in ``TorchVectorEnv`` until an episode ends): an attacker who knows the
future exogenous noise. Its value is an **upper bound** on what any attacker with the same budget and
the same H-step loss can achieve; a real attacker would have to average over the noise.

**Per-agent draws.** In ``per_agent`` mode the state is repeated N times (environment-major, as in
``system_objective``). The transition of the repeated batch runs under ``torch.func.vmap`` over the N
copies with ``randomness="same"``: every copy draws exactly the numbers its original environment
draws from the same generator state. So copy i of environment b sees the same noise as environment b
in ``shared`` mode, and with ``delta = 0`` every ``g_i`` equals the shared ``g`` (tested). The same
holds for ``copies`` (PGD's runs in one batch, ``envs.shocks.batched_pgd_attack``), in either mode. This
needs a vmappable ``transition`` in ``per_agent`` mode and, with copies, in ``shared`` mode too (the
three scenarios' are: their random draws have the batch shape, taken from the state's leading dimension).

**The window stops at the episode's end.** ``state["t"]`` ``(B,)`` (int64) counts the steps played in
each environment; the losses of steps ``k >= 1`` with ``t + k >= scenario.horizon`` are left out per
environment (the episode is truncated there; ``TorchVectorEnv`` would reset it), so
``H' = min(H, horizon - t)``. Step 0, the step being played, always counts.

**Actions.** As in ``system_objective`` the policy's actions go to the simulator as they are: the
victim must return in-box actions (the learner's policies squash; ``Scenario.step`` would clip).

**Where the H-step loss is not differentiable** (gradients from autograd are one-sided or zero there;
finite differences across these points do not match; ``tests/test_rollout_attack.py`` checks the
gradient against central finite differences away from them). Every exogenous draw (prices, demands,
spikes, capacity drops, arrivals) does not depend on the actions, hence not on ``delta``.

| scenario | where | why |
|---|---|---|
| commons | ``transition``: ``x' = max(0, ...)`` | a stock harvested to below 0 is clamped: zero gradient there |
| commons | ``transition``: a resource collapses when ``x' < collapse_threshold`` | a stock that crosses the threshold stops regrowing: the H-step loss jumps, the gradient ignores the jump |
| commons | ``observe``: stock clipped at 1.5, price at 10 x mean | observation clips (the price is exogenous) |
| routing | ``observe``: path latencies clipped at 10 tau, demands at 10 x nominal | observation clips (demands are exogenous) |
| routing | ``transition``, ``system_loss`` | smooth (simplex mapping, BPR/affine latencies): no kink |
| compute | ``split_work``, ``serve`` (hinges of eqs. 1, 3, 4, 6) | C^1 smoothed hinges when ``smoothing > 0`` (second derivative jumps at ``+-tau``); exact ``max(0, .)`` kinks when ``smoothing = 0`` |
| compute | ``serve``: share ``l_is / L_s`` | undefined at an empty server (``L_s = 0``), set to 0 |
| compute | ``observe``: every feature clipped to its box | at 0 (an empty queue), occupancy <= 1, capacity <= 3 x nominal, own/peer work <= 20 |
| all | actions outside the box | ``Scenario.step`` clips them (zero gradient outside), this objective does not |

The scenarios' ``transition`` keeps the graph of what it records of the step (commons ``stock`` and
``last_effort``; routing ``last_split``, ``last_share``, ``last_latency``; compute ``queue`` and
``retries``), so the later steps' observations and losses depend on the shocked actions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from envs.core import State, check_choice, check_positive_int
from envs.shocks import MODES, repeat_batch, shocked


def _copies_transition(scenario, state: State, actions: torch.Tensor, generator: torch.Generator,
                       copies: int) -> State:
    """``transition`` of a state repeated ``copies`` times (environment-major, batch ``B * copies``),
    with every copy drawing the numbers its original environment of batch B would draw."""
    def unflatten(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.view(-1, copies, *tensor.shape[1:])

    # out_dims=0: vmap cannot expand an output that no copy changes (e.g. drawn capacities) at dim 1
    step = torch.func.vmap(lambda s, a: scenario.transition(s, a, generator), in_dims=1, randomness="same")
    next_state = step({key: unflatten(value) for key, value in state.items()}, unflatten(actions))
    return {key: value.movedim(0, 1).reshape(-1, *value.shape[2:]) for key, value in next_state.items()}


def rollout_objective(scenario, state: State, obs: torch.Tensor, policy: Callable[[torch.Tensor], torch.Tensor],
                      mode: str, horizon: int, generator: torch.Generator,
                      copies: int = 1) -> Callable[[torch.Tensor], torch.Tensor]:
    """``g(delta)``: the system loss summed over the next ``horizon`` steps (module docstring).

    :param scenario: an ``envs.core.Scenario``.
    :param state: the current state (batch B).
    :param obs: the agents' clean observations of ``state`` ``(B, N, D)`` (where the shock is added).
    :param policy: the victim, ``(B', N, D) -> (B', N, A)`` deterministic in-box actions, agent i's action
        a function of its own observation only.
    :param mode: ``shared`` (``delta`` ``(B, D)``, ``g`` ``(B,)``) or ``per_agent`` (``delta`` ``(B, N, D)``,
        ``g`` ``(B, N)``).
    :param horizon: H >= 1 steps in the window (cut at the episode's end); H = 1 is ``system_objective``.
    :param generator: the environment's generator; its state is copied now and never advanced.
    :param copies: the objective over ``copies`` environment-major copies of the batch (``delta`` of
        ``B * copies`` rows, copy r of environment b at row ``b * copies + r``; ``envs.shocks.repeat_batch``),
        every copy drawing its environment's numbers: PGD's runs in one batch (``batched_pgd_attack``).
    """
    check_choice("mode", mode, MODES)
    horizon = check_positive_int("horizon", horizon)
    copies = check_positive_int("copies", copies)
    draws = generator.get_state()
    remaining = scenario.horizon - state["t"]  # (B,) steps left in each episode, this one included
    steps = max(1, min(horizon, int(remaining.max())))
    batch, n = obs.shape[:2]
    batch, obs = batch * copies, repeat_batch(obs, copies)
    repeats = copies * (n if mode == "per_agent" else 1)  # simulated copies of every environment
    start = {key: repeat_batch(value, repeats) for key, value in state.items()}
    remaining = repeat_batch(remaining, repeats)

    def advance(current: State, actions: torch.Tensor, window: torch.Generator) -> State:
        if repeats == 1:  # the plain transition: the same numbers as without copies
            return scenario.transition(current, actions, window)
        return _copies_transition(scenario, current, actions, window, repeats)

    if mode == "shared":
        def first_actions(delta: torch.Tensor) -> torch.Tensor:
            return policy(shocked(obs, delta))
    else:
        nominal = policy(obs).detach()
        eye = torch.eye(n, dtype=torch.bool, device=obs.device).view(1, n, n, 1)

        def first_actions(delta: torch.Tensor) -> torch.Tensor:
            attacked = policy(obs + delta)  # agent j's action depends on its own observation only
            joint = torch.where(eye, attacked.unsqueeze(1), nominal.unsqueeze(1))  # (B, i, j, A)
            return joint.reshape(batch * n, n, -1)

    def objective(delta: torch.Tensor) -> torch.Tensor:
        window = torch.Generator(device=generator.device)
        window.set_state(draws)
        current, actions = start, first_actions(delta)
        total = scenario.system_loss(current, actions)
        for k in range(1, steps):
            current = advance(current, actions, window)
            actions = policy(scenario.observe(current))
            loss = scenario.system_loss(current, actions)
            total = total + torch.where(remaining > k, loss, torch.zeros_like(loss))
        return total if mode == "shared" else total.view(batch, n)

    return objective
