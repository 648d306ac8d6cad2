"""Cost of the directional Jacobian penalty against one plain forward+backward of the policy.

For observation dim d, N agents and K PGA steps, on K x batch synthetic inputs per agent (tanh MLP
policy, hidden ``--hidden``, A = ``--action-dim`` actions, observation normaliser and squashing
included), three computations, each a forward and a backward into the actor's parameters:

* plain: ``policy.deterministic_action(x).square().mean().backward()``, the same actor forward the
  PPO learner uses (``StackedMLP``), on the K x batch inputs;
* penalty: ``jvp_norms(policy.deterministic_action, x, u).square().mean().backward()``, i.e.
  ``mean ||J_i(x) u||^2`` by one ``torch.func.jvp`` over agents x K x batch (``regularizers.jvp``)
  and reverse mode through it;
* full Jacobian (for contrast): every agent's ``J_i(x)`` (A x D) materialised at every point, by A
  vector-Jacobian products with the output basis batched by ``vmap`` (block diagonal: agent i's
  action depends on its own observation only, so one VJP with cotangent e_a at every agent gives row
  a of every agent's block), then ``mean ||J_i u||^2`` and backward; in chunks of
  ``--jacobian-chunk`` agent-rows, each chunk's backward before the next, so memory stays bounded.

Each round times plain, penalty and full Jacobian back to back; a ratio is the median over
``--repeats`` rounds (after one warm-up call of each) of that round's time over its plain time. A
full Jacobian that does not fit in memory is reported as ``n/a (out of memory)``.

PPO update ratio: ``PPOLearner.update(batch)`` with the AAJR penalty (reg_coef 0.1, K = the row's K)
over the same update without the penalty, on one rollout of the routing scenario at its default size
as ``agents.run.build_learner`` builds it (N=4, D=19, A=4, hidden (64, 64), 64 envs x 50 steps, 10 epochs x 4
minibatches of 800 states; ``--quick``: the small size). Every timed update starts from the same
saved learner state. It does not depend on the synthetic d and N: one value per K (the footnote
gives the scenario's sizes). It includes the K-step PGA that produces the penalty's points and
directions, which is most of its cost.

One table per device: the CPU, then the GPU when CUDA is available. The default batch, 1024 states
per agent on CPU, keeps the CPU table under about 7 minutes on 2 cores (``--batch 2048`` gives the
sizes of the design notes); on CUDA it is 16384, since smaller batches measure kernel-launch and
Python overheads rather than arithmetic.

On Linux, glibc returns large freed blocks to the system, and page faults on fresh memory then take
a third to a half of the CPU time at large batches (both sides of every ratio):
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 python bench/jvp.py`` keeps that memory.

    python bench/jvp.py                      # d in 16 64 256, N in 1 8, K in 1 5 10
    python bench/jvp.py --markdown           # the same tables in Markdown, for the README
    python bench/jvp.py --device cuda        # the GPU table only
    python bench/jvp.py --quick              # a few seconds: smoke test
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from typing import Callable

import torch
from torch.func import vjp, vmap

from agents.config import resolve
from agents.policy import MultiAgentActorCritic
from agents.run import build_learner
from regularizers.jvp import jvp_norms


def agent_jacobians(action_map: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Every agent's Jacobian ``J_i(x_m) = d pi_i(x_m) / d x_{m,i}``, ``(M, N, A, D)``, for ``x`` ``(M, N, D)``:
    A VJPs with cotangents ``e_a`` at every (m, i), batched by ``vmap``."""
    actions, pullback = vjp(action_map, x)
    n_actions = actions.shape[-1]
    basis = torch.eye(n_actions, dtype=actions.dtype, device=actions.device)
    (jacobian,) = vmap(pullback)(basis[:, None, None, :].expand(n_actions, *actions.shape))
    return jacobian.movedim(0, -2)


def full_jacobian_penalty_backward(action_map: Callable[[torch.Tensor], torch.Tensor], points: torch.Tensor,
                                   directions: torch.Tensor, chunk_rows: int) -> float:
    """``mean ||J_i(x) u||^2`` over points and directions ``(K, M, N, D)`` with every ``J_i`` materialised,
    and its backward (gradients accumulate into ``.grad``), in chunks of about ``chunk_rows`` agent-rows."""
    n_agents, dim = points.shape[-2:]
    x = points.reshape(-1, n_agents, dim)
    u = directions.reshape(-1, n_agents, dim).detach()
    count = x.shape[0] * n_agents
    rows = max(1, chunk_rows // n_agents)
    total = 0.0
    for start in range(0, x.shape[0], rows):
        jacobian = agent_jacobians(action_map, x[start:start + rows])
        value = torch.einsum("mnad,mnd->mna", jacobian, u[start:start + rows]).square().sum() / count
        value.backward()
        total += float(value.detach())
    return total


def stopwatch(fn: Callable[[], object], device: str) -> float:
    """Seconds that ``fn()`` takes, the device synchronised before and after."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def round_ratios(timers: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Runs every timer once per round; the median over rounds of each timer's time over the first
    timer's time in the same round. The first timer's entry is its median time (seconds)."""
    times = {name: [] for name in timers}
    for _ in range(repeats):
        for name, timer in timers.items():
            times[name].append(timer())
    base, *others = timers
    out = {base: statistics.median(times[base])}
    for name in others:
        out[name] = statistics.median(t / b for t, b in zip(times[name], times[base]))
    return out


def is_out_of_memory(error: RuntimeError) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def synthetic_row(dim: int, n_agents: int, steps: int, device: str, batch: int, chunk: int,
                  args: argparse.Namespace) -> dict[str, float | str]:
    """Plain time and the penalty / full-Jacobian ratios for one (d, N, K) on ``device``."""
    policy = MultiAgentActorCritic(n_agents, dim, torch.zeros(args.action_dim), torch.ones(args.action_dim),
                                   hidden=tuple(args.hidden)).to(device)
    points = torch.randn(steps, batch, n_agents, dim, device=device)
    directions = torch.nn.functional.normalize(torch.randn_like(points), dim=-1)
    flat_points = points.reshape(steps * batch, n_agents, dim)

    def plain() -> None:
        policy.deterministic_action(flat_points).square().mean().backward()

    def penalty() -> None:
        jvp_norms(policy.deterministic_action, points, directions).square().mean().backward()

    def full() -> None:
        full_jacobian_penalty_backward(policy.deterministic_action, points, directions, chunk)

    timers = {"plain": plain, "penalty": penalty, "full": full}
    plain(), penalty()  # warm-up; the full Jacobian's warm-up also tells whether it fits in memory
    try:
        full()
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
        del timers["full"]
        policy.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    row: dict[str, float | str] = {"full": "n/a (out of memory)"}
    row.update(round_ratios({name: (lambda fn=fn: stopwatch(fn, device)) for name, fn in timers.items()},
                            args.repeats))
    return row


def ppo_update_ratios(steps: list[int], device: str, args: argparse.Namespace) -> tuple[dict[int, float], str]:
    """Per K, the median time of ``learner.update(batch)`` with AAJR over the time without it; and a
    line describing the learner."""
    ratios: dict[int, float] = {}
    description = ""
    for k in steps:
        config = resolve({"scenario": "routing", "size": "small" if args.quick else "default", "method": "aajr",
                          "reg": {"steps": k}, "reg_coef": 0.1, "device": device})
        learner = build_learner(config)
        batch, _ = learner.collect()
        snapshot = copy.deepcopy(learner.state_dict())
        penalty = learner.penalty

        def update(with_penalty: bool) -> float:
            learner.load_state_dict(snapshot)
            learner.penalty = penalty if with_penalty else None
            return stopwatch(lambda: learner.update(batch), device)

        update(False), update(True)  # warm-up
        result = round_ratios({"plain": lambda: update(False), "aajr": lambda: update(True)}, args.ppo_repeats)
        ratios[k] = result["aajr"]
        cfg, scenario = config.ppo, learner.env.scenario
        description = (f"PPO update: routing {config.size}, N={scenario.n_agents}, D={scenario.obs_dim}, "
                       f"A={scenario.action_low.shape[-1]}, hidden {tuple(cfg.hidden)}, {cfg.num_envs} envs x "
                       f"{cfg.rollout_steps} steps, {cfg.update_epochs} epochs x {cfg.num_minibatches} minibatches; "
                       f"AAJR reg_coef {config.reg_coef}, eps {config.reg.eps}, K PGA steps; "
                       f"plain update {result['plain'] * 1e3:.0f} ms; medians of {args.ppo_repeats} rounds")
    return ratios, description


DEFAULT_BATCH = {"cpu": 1024, "cuda": 16384}
DEFAULT_CHUNK = {"cpu": 16384, "cuda": 131072}
HEADER = ("d", "N", "K", "penalty / plain", "full Jacobian / plain", "PPO update AAJR / plain", "plain fwd+bwd")


def format_ratio(value: float | str) -> str:
    return value if isinstance(value, str) else f"{value:.2f}x"


def print_line(cells: list[str], markdown: bool) -> None:
    """One table line: Markdown, or right-aligned under the header's column widths."""
    if markdown:
        print("| " + " | ".join(cells) + " |", flush=True)
    else:
        print("  ".join(cell.rjust(max(len(title), 6)) for cell, title in zip(cells, HEADER)), flush=True)


def table(device: str, args: argparse.Namespace) -> None:
    """Computes and prints the table for one device, a row at a time, then its footnotes."""
    start = time.perf_counter()
    batch = args.batch or DEFAULT_BATCH[device.split(":")[0]]
    chunk = args.jacobian_chunk or DEFAULT_CHUNK[device.split(":")[0]]
    ppo, ppo_note = ppo_update_ratios(args.steps, device, args)
    print_line(list(HEADER), args.markdown)
    if args.markdown:
        print("|" + "|".join("---:" for _ in HEADER) + "|")
    for dim in args.dims:
        for n_agents in args.agents:
            for steps in args.steps:
                row = synthetic_row(dim, n_agents, steps, device, batch, chunk, args)
                cells = [str(dim), str(n_agents), str(steps), format_ratio(row["penalty"]),
                         format_ratio(row["full"]), format_ratio(ppo[steps]), f"{row['plain'] * 1e3:.1f} ms"]
                print_line(cells, args.markdown)
    if device.startswith("cuda"):
        where = torch.cuda.get_device_name(torch.device(device))
    else:
        where = f"CPU ({platform.machine()}), {torch.get_num_threads()} threads"
    notes = [f"{where}, torch {torch.__version__}; synthetic policy: hidden {tuple(args.hidden)}, A={args.action_dim}, "
             f"batch {batch} states per agent and step (K x {batch} inputs), medians of {args.repeats} rounds; "
             f"full Jacobian in chunks of {chunk} agent-rows",
             ppo_note, f"total {time.perf_counter() - start:.0f} s"]
    print()
    for note in notes:
        print(f"* {note}" if args.markdown else note)
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="+", default=[16, 64, 256], help="observation dims d")
    parser.add_argument("--agents", type=int, nargs="+", default=[1, 8], help="numbers of agents N")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5, 10], help="PGA steps K")
    parser.add_argument("--batch", type=int, help="states per agent and step, K x batch inputs "
                        f"(default: {DEFAULT_BATCH['cpu']} on CPU, {DEFAULT_BATCH['cuda']} on CUDA)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256], help="policy hidden sizes")
    parser.add_argument("--action-dim", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per cell (after one warm-up)")
    parser.add_argument("--ppo-repeats", type=int, default=3, help="timed rounds of the PPO updates")
    parser.add_argument("--jacobian-chunk", type=int, help="agent-rows per chunk of the full Jacobian, which bounds "
                        f"its memory (default: {DEFAULT_CHUNK['cpu']} on CPU, {DEFAULT_CHUNK['cuda']} on CUDA)")
    parser.add_argument("--device", nargs="+", help="devices, one table each (default: cpu, and cuda when available)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: d=16, N in 1 2, K in 1 2, batch 32, hidden 32 32, one round, routing small")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = parser.parse_args(argv)
    if args.quick:
        args.dims, args.agents, args.steps, args.batch, args.hidden = [16], [1, 2], [1, 2], 32, [32, 32]
        args.repeats = args.ppo_repeats = 1
    devices = args.device or ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    for device in devices:
        if device.startswith("cuda") and not torch.cuda.is_available():
            parser.error(f"--device {device}: CUDA is not available")
    torch.manual_seed(0)
    for device in devices:
        table(device, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
