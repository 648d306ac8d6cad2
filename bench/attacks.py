"""How much each attack of the suite hurts trained policies, and how much of its budget it uses.

PPO and AAJR (seed 0, lambda 0.1, AAJR's training PGA with the ``gradient`` rule) on the routing and
compute default configs (trained here, or reused from ``--runs``), attacked on the same 64 seeded episodes at eps 0.1 and 0.2 (l2, shared shock):

* ``gradient``: the first round's attack (PGA with ``eta * grad`` steps, K = 10, last iterate);
* ``normalized``: PGD with normalized steps, K = 20, best iterate;
* ``restarts``: the same with 2 random restarts (the benchmark's default gradient attack);
* ``random_search``: 32 boundary candidates per step plus the ``restarts`` result;
* ``rollout``: normalized PGD with restarts on the system loss summed over H = 5 steps;
* ``learned``: an RL attacker trained against the frozen victim (200k attacker-steps);
* ``random``: a uniform shock in the ball (the floor a learned attacker must beat);
* ``worst``: per eps, the attack with the lowest return.

Damage is the return per agent lost against the unattacked policy. The script checks the attack
issue's criteria and prints the Markdown table of the README; ``--out`` keeps the rows (JSON). With
``--attacks`` only those rows are measured; ``--update`` then takes the others from the ``--out`` file
(and recomputes ``worst``), so one attack can be re-measured without the hour the whole table takes.

    python bench/attacks.py --jobs 2 --out results/attacks/all.json
    python bench/attacks.py --jobs 2 --attacks learned --update --out results/attacks/all.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import pathlib
import sys
import time

VICTIMS = (("routing", "ppo"), ("routing", "aajr"), ("compute", "ppo"), ("compute", "aajr"))
EPS = (0.1, 0.2)
ATTACKS = ("gradient", "normalized", "restarts", "random_search", "rollout", "learned", "random")
HEADERS = {"gradient": "gradient (K=10)", "normalized": "normalized (K=20)", "restarts": "+ 2 restarts",
           "rollout": "rollout (H=5)"}


def shock_config(attack: str, eps: float):
    """The ``ShockConfig`` of one row of the table (``learned`` takes its attacker separately)."""
    from envs.shock_wrapper import ShockConfig

    common = {"eps": eps, "norm": "l2", "mode": "shared", "prob": 1.0}
    strong = {"rule": "normalized", "best_iterate": True, "steps": 20}
    return {
        "gradient": ShockConfig(objective="system", rule="gradient", steps=10, **common),
        "normalized": ShockConfig(objective="system", **strong, **common),
        "restarts": ShockConfig(objective="system", restarts=2, **strong, **common),
        "random_search": ShockConfig(objective="random_search", restarts=2, candidates=32, **strong, **common),
        "rollout": ShockConfig(objective="rollout", horizon=5, restarts=2, **strong, **common),
        "learned": ShockConfig(objective="learned", **common),
        "random": ShockConfig(objective="random", **common),
    }[attack]


def trained_run(scenario: str, method: str, runs: pathlib.Path, size: str) -> pathlib.Path:
    """The run directory of (scenario, method, seed 0) on the ``size`` config, trained (or resumed) here."""
    from agents.config import resolve
    from agents.run import CHECKPOINT, SUMMARY, load_config, train

    # the victims of the README's table: AAJR trained with the first round's training rule (gradient)
    extra = {"reg": {"rule": "gradient"}} if method == "aajr" else {}
    config = resolve({"scenario": scenario, "method": method, "seed": 0, "size": size, **extra})
    run_dir = runs / f"{scenario}-{method}" if size == "default" else runs / f"{scenario}-{method}-{size}"
    if (run_dir / "config.yaml").exists() and load_config(run_dir) != config:
        raise SystemExit(f"{run_dir} holds another config; remove it or pass another --runs")
    if not (run_dir / SUMMARY).exists():
        resume = (run_dir / CHECKPOINT).exists()
        train(load_config(run_dir) if resume else config, run_dir, resume=resume, progress=False)
    return run_dir


def attack_victim(scenario_name: str, method: str, runs: str, size: str, episodes: int,
                  learned_steps: int, attacks: tuple[str, ...] = ATTACKS) -> list[dict]:
    """The (attack, eps) rows of one victim, without ``worst``."""
    import torch

    from agents.run import load_run
    from envs.vector import TorchVectorEnv
    from robustness.adversary import AdversaryConfig, load_or_train
    from robustness.evaluate import EVAL_SEED, play

    torch.set_num_threads(1)
    run_dir = trained_run(scenario_name, method, pathlib.Path(runs), size)
    _, scenario, policy = load_run(run_dir)
    env = TorchVectorEnv(scenario, num_envs=episodes, auto_reset=False)
    nominal = play(env, policy, None, EVAL_SEED)["return_per_agent"]
    rows = []
    for eps in EPS:
        for attack in attacks:
            start = time.perf_counter()
            adversary = None
            if attack == "learned":
                adversary = load_or_train(run_dir, AdversaryConfig(eps=eps, norm="l2", mode="shared",
                                                                   total_agent_steps=learned_steps)).shock
            metrics = play(env, policy, shock_config(attack, eps), EVAL_SEED, adversary)
            rows.append({"scenario": scenario_name, "method": method, "eps": eps, "attack": attack,
                         "nominal": nominal, "return_per_agent": metrics["return_per_agent"],
                         "damage": nominal - metrics["return_per_agent"], "budget_use": metrics["budget_use"],
                         "seconds": time.perf_counter() - start})
    return rows


def with_worst(rows: list[dict]) -> list[dict]:
    """``rows`` (any ``worst`` rows dropped) plus, after each (scenario, method, eps) cell, its
    ``robustness.evaluate.worst_rows`` row (the attack with the lowest return, i.e. the largest damage)."""
    from robustness.evaluate import worst_rows

    rows = [row for row in rows if row["attack"] != "worst"]
    out = []
    for cell in dict.fromkeys((row["scenario"], row["method"], row["eps"]) for row in rows):
        cell_rows = [row for row in rows if (row["scenario"], row["method"], row["eps"]) == cell]
        out += [*cell_rows, *({**row, "seconds": 0.0} for row in worst_rows(cell_rows, by=("eps",)))]
    return out


def merged(previous: list[dict], measured: list[dict]) -> list[dict]:
    """``previous`` rows with those of the same (scenario, method, eps, attack) in ``measured`` replaced."""
    key = lambda row: (row["scenario"], row["method"], row["eps"], row["attack"])  # noqa: E731
    new = {key(row): row for row in measured}
    kept = [new.pop(key(row), row) for row in previous if row["attack"] != "worst"]
    return kept + list(new.values())


CHECKS = (  # (criterion, the two attacks it compares, whether the row pair passes)
    ("normalized PGD uses >= 0.9 of its budget", ("normalized", "normalized"),
     lambda a, b: a["budget_use"] >= 0.9),
    ("normalized PGD's damage >= the gradient rule's", ("normalized", "gradient"),
     lambda a, b: a["damage"] >= b["damage"]),
    ("normalized PGD with restarts (the evaluation default) uses >= 0.9 of its budget", ("restarts", "restarts"),
     lambda a, b: a["budget_use"] >= 0.9),
    ("normalized PGD with restarts: damage >= the gradient rule's", ("restarts", "gradient"),
     lambda a, b: a["damage"] >= b["damage"]),
    ("the learned attacker's damage > the random shock's", ("learned", "random"),
     lambda a, b: a["damage"] > b["damage"]),
    ("the learned attacker's damage >= normalized PGD's", ("learned", "normalized"),
     lambda a, b: a["damage"] >= b["damage"]),
)


def checks(rows: list[dict]) -> list[str]:
    """The attack issue's criteria, one line each, with the cells that fail (cells without both rows
    are left out)."""
    at = {(row["scenario"], row["method"], row["eps"], row["attack"]): row for row in rows}
    cells = sorted({(row["scenario"], row["method"], row["eps"]) for row in rows})
    lines = []
    for name, (first, second), ok in CHECKS:
        measured = [c for c in cells if (*c, first) in at and (*c, second) in at]
        if not measured:
            continue
        failing = [f"{s}/{m}/eps={e:g}" for s, m, e in measured if not ok(at[(s, m, e, first)], at[(s, m, e, second)])]
        lines.append(f"{'yes' if not failing else 'NO '} {name} in {len(measured) - len(failing)} of "
                     f"{len(measured)} cells" + (f" (not in: {', '.join(failing)})" if failing else ""))
    return lines


def markdown(rows: list[dict]) -> str:
    header = ["scenario", "method", "eps", *(HEADERS.get(attack, attack) for attack in ATTACKS), "worst"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for scenario, method in VICTIMS:
        for eps in EPS:
            cell = {row["attack"]: row for row in rows if (row["scenario"], row["method"], row["eps"])
                    == (scenario, method, eps)}
            if not cell:
                continue
            values = [f"{cell[a]['damage']:.3g} ({cell[a]['budget_use']:.2f})" if a in cell else "-"
                      for a in ATTACKS]
            worst = cell["worst"]
            lines.append(f"| {scenario} | {method} | {eps:g} | " + " | ".join(values)
                         + f" | {worst['damage']:.3g} ({worst['worst_attack']}) |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=pathlib.Path, default=pathlib.Path("runs/bench-attacks"),
                        help="where the victims are trained (reused when there)")
    parser.add_argument("--size", default="default", help="the victims' config size (small: a quick check)")
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--learned-steps", type=int, default=200_000, help="each learned attacker's budget")
    parser.add_argument("--jobs", type=int, default=1, help="victims at a time (one thread each)")
    parser.add_argument("--victims", nargs="+", default=[f"{s}-{m}" for s, m in VICTIMS],
                        choices=[f"{s}-{m}" for s, m in VICTIMS], help="a subset of the victims")
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=ATTACKS,
                        help="measure only these attacks")
    parser.add_argument("--update", action="store_true",
                        help="take the other attacks' rows from the --out file and write the merged rows there")
    parser.add_argument("--out", type=pathlib.Path, help="write the rows here (JSON)")
    args = parser.parse_args()
    if args.jobs < 1 or args.episodes < 1 or args.learned_steps < 1:
        parser.error("--jobs, --episodes and --learned-steps must be positive")
    previous: list[dict] = []
    if args.update:
        if args.out is None or not args.out.is_file():
            parser.error(f"--update needs an existing --out file, got {args.out}")
        try:
            previous = json.loads(args.out.read_text())
        except json.JSONDecodeError as error:
            parser.error(f"{args.out}: not a JSON file of rows ({error})")
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        futures = [pool.submit(attack_victim, scenario, method, str(args.runs), args.size, args.episodes,
                               args.learned_steps, tuple(args.attacks)) for scenario, method in VICTIMS
                   if f"{scenario}-{method}" in args.victims]
        rows = with_worst(merged(previous, [row for future in futures for row in future.result()]))
    print(f"damage: return per agent lost against the unattacked policy (budget use ||delta|| / eps); {args.size} "
          f"configs, {args.episodes} episodes, l2, shared shock; {time.perf_counter() - start:.0f} s")
    print(markdown(rows))
    print("\n".join(checks(rows)))
    if args.out is not None:
        from agents.run import atomic_write
        text = json.dumps(rows, indent=1)
        atomic_write(args.out, lambda tmp: tmp.write_text(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
