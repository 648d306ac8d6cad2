"""Tables and figures of a benchmark results directory, with the command that produced them.

Reads ``RESULTS_DIR/evaluations.csv``, ``diagnostics.csv`` and ``run.json`` (written by the grid
runner) and writes into ``RESULTS_DIR/report/``:

* ``learning.md/.csv``: per scenario and setting, the nominal ratio to the reference (no attack; IQM
  [CI] and per seed) and how many seeds meet the scenario's learning target (``envs.core``);
* ``robustness.md/.csv``: per scenario and (attack, mode), per setting (method, with its lambda and
  hinge budget gamma when it has several; ``budget`` 0 is the squared penalty) and eps: IQM [95% CI] over seeds of ``return_per_agent`` and
  ``ratio_to_reference``;
* ``attacks.md/.csv``: per scenario, attack, shock mode and method: the budget use ``||delta|| / eps``
  of every attack (IQM [CI]); which attack was the worst case, counted over seeds; and the
  gradient-masking warnings: cells where ``random_search`` lowers the return below PGD's (``system``)
  by more than noise (the paired per-seed difference's 95% CI lies below 0);
* ``price_of_robustness.md/.csv``: per scenario and method, under the headline attack (``worst``, the
  lowest return over every attack evaluated, per seed; ``shared`` shock by default): the nominal
  return R(0) (eps = 0), the robust return R(eps) at every
  eps > 0, the Price of Robustness ``PoR = R_ppo(0) - R(0)`` (nominal return lost relative to plain
  PPO) and the robust gain ``G(eps) = R(eps) - R_ppo(eps)``, both paired per seed (same scenario,
  same seed) before the IQM [CI] is taken;
* ``tradeoff.md/.csv``: per scenario and eps, Delta PoR of AAJR against each global method at matched
  worst-case robustness (``robustness.pareto``: each method's front over its settings, per seed; IQM
  [CI] over seeds), Corollary 1's paired nominal difference AAJR - spectral at equal hinge budgets, and
  the paired differences R_aajr(eps) - R_other(eps) against every other method (its setting of the same
  lambda and gamma, or its only one), at eps = 0 and under the headline attack;
* ``diagnostics.md/.csv``: IQM [CI] of every theory diagnostic per scenario x setting;
* ``step_sizes.md/.csv`` (when ``step_sizes.csv`` exists; Theorems 2-3): per scenario, setting and step
  size ``eta = c / median L_eff``, the non-monotone PGA step rate (IQM [CI] over seeds), and per method
  the rate pooled over its settings, seeds and c in each bin of ``eta * L_seg`` (steps counted), and,
  when the results count them (``steps_clip``, ``nonmonotone_rate_clip``: optional, older results lack
  them), among the steps crossing the observation normaliser's clip, left out of the bins;
  ``step_sizes_<scenario>.png`` draws both (the bins only);
* ``improvement.md/.csv``: under the headline attack, on the normalised score (``ratio_to_reference``
  where higher is better, ``2 - ratio`` for a cost ratio; 1 = the scenario's reference): per scenario and
  eps, rliable's probability of improvement P(aajr > G) and the paired per-seed win rate against every
  other setting G; the same over all scenarios (tasks); and the IQM [CI] of the normalised score over
  scenarios x seeds (stratified bootstrap, scenarios as tasks);
* ``improvement.png`` (those probabilities over all scenarios, with CIs), ``performance_profiles.png``
  (score distributions over scenarios x seeds, one panel per eps), ``learning_curves_<scenario>.png``
  (IQM over seeds vs agent-steps from ``runs/<cell>/metrics.csv``: ``eval/return_per_agent`` when every
  run has it, else ``charts/episodic_return``; skipped with a note in index.md without run directories);
* ``robustness_<scenario>_<attack>_<mode>.png`` (return vs eps, CI bands), ``pareto_<scenario>.png``
  (nominal vs robust return, one panel per eps: per-seed points and a line per method across its
  settings), ``amplification_<scenario>.png`` (``||J u||`` vs ``||J P||_2`` per cell, y = x line);
* ``index.md``: links to everything, the figures with their captions, how much of the grid the results
  hold, which code versions made the cells (``code`` in each cell file), and the provenance.

CSV tables are long ("tidy"): the key columns, then ``quantity, iqm, ci_low, ci_high, n`` (n = seeds
pooled). Provenance: every Markdown file ends with a footer giving the benchmark command, its
preset, a link to ``run.json`` (the full grid) and the report command; every CSV ``<name>.csv`` has
a sidecar ``<name>.provenance.json`` with the same information (the CSVs stay plain for any
reader); every PNG carries it in its metadata (``Source``: benchmark command, ``Comment``: report
command and run.json) and is shown with its caption in ``index.md``.

CLI: ``python -m robustness.report RESULTS_DIR [--reps N] [--attack worst] [--mode shared]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import shlex
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import trim_mean

from envs.core import SCENARIOS, meets_learning_target
from regularizers import METHODS
from robustness import MissingResultsError, ReportError
from robustness.diagnostics import ETA_L_BINS, GAMMAS
from robustness.pareto import matched_por_difference, pareto_front
from agents.config import ConfigError
from robustness.runner import BenchmarkConfig, grid_cells
from robustness.stats import (BOOTSTRAP_SEED, CONFIDENCE, REPS, Estimate, aggregate, describe, differences_to_baseline,
                              iqm_ci, iqm_cis, performance_profiles, probability_of_improvement)

CELL = ("scenario", "method", "reg_coef", "budget", "seed")
EVAL_KEYS = (*CELL, "attack", "mode", "eps")
EVAL_VALUES = ("return_per_agent", "system_loss", "ratio_to_reference", "ratio_higher_is_better", "budget_use",
               "worst_attack")
STEP_BINS = tuple(f"etaL_{low:g}_{high:g}" for low, high in ETA_L_BINS)
STEP_KEYS = (*CELL, "eta_factor")
STEP_VALUES = ("steps", "nonmonotone_rate", *(f"{prefix}_{name}" for name in STEP_BINS
                                              for prefix in ("steps", "nonmonotone_rate")))
CLIP = "clip"  # the steps crossing the normaliser's clip, apart from the bins (older step_sizes.csv lack them)
STEP_CLIP = (f"steps_{CLIP}", f"nonmonotone_rate_{CLIP}")
DIAGNOSTICS = ("jvp_norm_mean", "global_norm_mean", "global_norm_all_mean",
               *(f"frac_directional_only@{gamma:g}" for gamma in GAMMAS), "direction_participation_ratio",
               "curvature_min", "curvature_max", "l_eff_median", "nonmonotone_rate", "eval_states")
TEXT_COLUMNS = ("scenario", "method", "attack", "mode", "worst_attack")
HEADLINE_ATTACK = "worst"
NOT_RECORDED, UNREADABLE = "not recorded", "unreadable"  # code_note's cells without a code version
INTEGER_COLUMNS = ("seed", "ratio_higher_is_better", "eval_states")
BASELINE = "ppo"
FOCUS = "aajr"  # the method compared with each global one at matched robustness
GLOBAL_METHODS = ("jacobian", "spectral", "specnorm")
COROLLARY_BASELINE = "spectral"  # Corollary 1: the directional against the global budget of the same size
ROBUSTNESS_KEYS = ("scenario", "attack", "mode", "method", "reg_coef", "budget", "eps")
ROBUSTNESS_QUANTITIES = {"return_per_agent": "Return per agent (higher is better)",
                         "ratio_to_reference": "Ratio to reference"}
PRICE_KEYS = ("scenario", "method", "reg_coef", "budget", "eps")
DIAGNOSTIC_KEYS = ("scenario", "method", "reg_coef", "budget")
ALL = "all"  # the scenario key of statistics over every scenario (scenarios as tasks)


def read_table(path: pathlib.Path, keys: Sequence[str], values: Sequence[str],
               nan_ok: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The rows of a results CSV as dicts; a missing column, a missing/NaN/non-numeric value (NaN is
    allowed in the columns ``nan_ok``: a rate over zero steps) or a duplicated cell is an error naming
    it. Other columns are ignored."""
    if not path.is_file():
        raise MissingResultsError(f"{path} not found")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)  # attack "none" stays a string
    missing = [column for column in (*keys, *values) if column not in raw.columns]
    if missing:
        raise ReportError(f"{path.name}: missing column(s) {', '.join(missing)}")
    raw = raw[[*keys, *values]]

    def where(row: int) -> str:
        return f"line {row + 2} ({describe(keys, [raw[key].iat[row] for key in keys])})"

    frame = raw.copy()
    for column in frame.columns:
        if column in TEXT_COLUMNS:
            continue
        frame[column] = pd.to_numeric(raw[column].str.strip(), errors="coerce")
        bad = frame[column].isna().to_numpy()
        if column in nan_ok:
            bad &= ~raw[column].str.strip().str.lower().isin(("nan", "")).to_numpy()
        if bad.any():
            row = int(bad.argmax())
            raise ReportError(f"{path.name}: column {column!r} is missing, NaN or not a number "
                             f"({raw[column].iat[row]!r}) in {where(row)}")
        frame[column] = frame[column].astype(int if column in INTEGER_COLUMNS else float)
    duplicated = frame.duplicated(list(keys)).to_numpy()
    if duplicated.any():
        raise ReportError(f"{path.name}: duplicated cell in {where(int(duplicated.argmax()))}")
    return frame.to_dict("records")


@dataclasses.dataclass(frozen=True)
class Provenance:
    """The benchmark command and preset (from run.json) and the report command behind every output."""

    command: str
    preset: str
    report_command: str
    reps: int
    grid: Any = None  # run.json's "config": the grid the benchmark ran (None when it has none)

    @classmethod
    def read(cls, results_dir: pathlib.Path, report_command: str, reps: int) -> Provenance:
        path = results_dir / "run.json"
        if not path.is_file():
            raise MissingResultsError(f"{path} not found: every table and figure must record the benchmark command")
        run = json.loads(path.read_text())
        if not run.get("command"):
            raise ReportError(f"{path}: missing 'command'")
        return cls(str(run["command"]), str(run.get("preset", "-")), report_command, reps, run.get("config"))

    @property
    def method(self) -> str:
        return (f"IQM over seeds with {CONFIDENCE:.0%} stratified-bootstrap CIs "
                f"({self.reps} replicates, bootstrap seed {BOOTSTRAP_SEED})")

    def footer(self) -> str:
        return (f"\n---\nBenchmark command: `{self.command}` (preset `{self.preset}`; full grid in "
                f"[run.json](../run.json)).  \nReport: `{self.report_command}`; {self.method}.\n")

    def sidecar(self, source: pathlib.Path) -> pathlib.Path:
        path = source.with_name(source.stem + ".provenance.json")
        path.write_text(json.dumps({"file": source.name, "command": self.command, "preset": self.preset,
                                    "run_json": "../run.json", "report_command": self.report_command,
                                    "statistics": self.method}, indent=2) + "\n")
        return path

    def png_metadata(self, title: str) -> dict[str, str]:
        return {"Title": title, "Source": self.command,
                "Comment": f"report: {self.report_command}; grid: ../run.json; {self.method}"}


def unique(values: Iterable[Any]) -> list[Any]:
    """Distinct values in first-seen order."""
    return list(dict.fromkeys(values))


def method_key(cell: tuple[str, float, float]) -> tuple:
    """Sort key of a (method, reg_coef, budget) setting: the method's place in the registry
    (``regularizers.METHODS``) first, then by name, then by lambda, then by hinge budget gamma."""
    method, coef, budget = cell
    order = list(METHODS)
    return (order.index(method) if method in order else len(order), method, coef, budget)


class Labels:
    """Setting labels per scenario: ``method``, with ``λ=coef`` when the method has several lambdas and
    ``γ=budget`` when it has several hinge budgets (budget 0: the squared penalty)."""

    def __init__(self, rows: Iterable[dict[str, Any]]):
        self.cells: dict[str, list[tuple[str, float, float]]] = {}
        for row in rows:
            self.cells.setdefault(row["scenario"], []).append((row["method"], row["reg_coef"], row["budget"]))
        self.cells = {scenario: sorted(set(cells), key=method_key) for scenario, cells in self.cells.items()}

    def __call__(self, scenario: str, method: str, coef: float, budget: float = 0.0) -> str:
        settings = [(c, b) for m, c, b in self.cells[scenario] if m == method]
        label = method
        if len({c for c, _ in settings}) > 1:
            label += f" λ={coef:g}"
        if len({b for _, b in settings}) > 1 or budget > 0:
            label += f" γ={budget:g}"
        return label

    def methods(self, scenario: str) -> list[str]:
        """The scenario's methods in report order."""
        return unique(method for method, _, _ in self.cells[scenario])

    def indexed_settings(self, scenario: str) -> Iterator[tuple[int, int, tuple[str, float, float]]]:
        """``(method_index, setting_index, cell)`` over the scenario's cells in report order, numbered per
        method and per setting within the method: for figures with a color per method and a line style
        or marker per setting."""
        for method_index, method in enumerate(self.methods(scenario)):
            settings = [cell for cell in self.cells[scenario] if cell[0] == method]
            for setting_index, cell in enumerate(settings):
                yield method_index, setting_index, cell


def fmt(estimate: Estimate | None) -> str:
    return "–" if estimate is None else str(estimate)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n\n"


def estimate_rows(estimates: dict[tuple, Estimate], keys: Sequence[str], quantity: str,
                  **constant: Any) -> list[dict[str, Any]]:
    """Long CSV rows: the key columns, ``constant`` columns, then quantity, iqm, ci_low, ci_high, n."""
    return [{**dict(zip(keys, key)), **constant, "quantity": quantity, "iqm": e.iqm, "ci_low": e.lo,
             "ci_high": e.hi, "n": e.n} for key, e in estimates.items()]


def ratio_note(evals: list[dict[str, Any]], scenario: str) -> str:
    directions = {row["ratio_higher_is_better"] for row in evals if row["scenario"] == scenario}
    if len(directions) != 1:
        raise ReportError(f"evaluations.csv: ratio_higher_is_better is not constant for scenario={scenario}")
    return ("fraction of the reference welfare, higher is better" if directions.pop()
            else "cost relative to the reference optimum, lower is better, 1 = optimal")


def robustness_tables(evals: list[dict[str, Any]], labels: Labels, reps: int) -> tuple[str, list[dict], dict]:
    """Markdown and CSV rows of the robustness tables; the return estimates for the figures."""
    attacked = [row for row in evals if row["attack"] != "none"]
    estimates = {q: aggregate(attacked, q, ROBUSTNESS_KEYS, reps) for q in ROBUSTNESS_QUANTITIES}
    csv_rows = [row for q, e in estimates.items() for row in estimate_rows(e, ROBUSTNESS_KEYS, q)]
    markdown = []
    for scenario in unique(row["scenario"] for row in attacked):
        rows = [row for row in attacked if row["scenario"] == scenario]
        for attack, mode in unique((row["attack"], row["mode"]) for row in rows):
            grid = sorted(unique(row["eps"] for row in rows if (row["attack"], row["mode"]) == (attack, mode)))
            markdown.append(f"## {scenario}: {attack} attack, {mode} shock\n\n")
            for quantity, title in ROBUSTNESS_QUANTITIES.items():
                note = f" ({ratio_note(evals, scenario)})" if quantity == "ratio_to_reference" else ""
                body = [[labels(scenario, *cell)] + [fmt(estimates[quantity].get((scenario, attack, mode, *cell, eps)))
                                                     for eps in grid] for cell in labels.cells[scenario]]
                markdown.append(f"{title}{note}:\n\n" + markdown_table(["method"] + [f"ε={e:g}" for e in grid], body))
    return "".join(markdown), csv_rows, estimates["return_per_agent"]


def attack_tables(evals: list[dict[str, Any]], labels: Labels, reps: int) -> tuple[str, list[dict]]:
    """Markdown and CSV rows of the attack table: budget use per attack, the worst attack's counts over
    seeds, and the gradient-masking warnings (``random_search`` below ``system`` PGD beyond noise)."""
    attacked = [row for row in evals if row["eps"] > 0 and row["attack"] not in ("none", HEADLINE_ATTACK)]
    keys = ROBUSTNESS_KEYS
    use = aggregate(attacked, "budget_use", keys, reps)
    csv_rows = estimate_rows(use, keys, "budget_use")
    warnings = masking_warnings(evals, reps)
    csv_rows += [{"scenario": w["scenario"], "attack": "random_search", "mode": w["mode"], "method": w["method"],
                  "reg_coef": w["reg_coef"], "budget": w["budget"], "eps": w["eps"], "quantity": "masking_gap", "iqm": w["gap"].iqm,
                  "ci_low": w["gap"].lo, "ci_high": w["gap"].hi, "n": w["gap"].n} for w in warnings]
    markdown = ["Budget use: ||δ|| / ε of the shocks each attack applied (1: the boundary of the ball), IQM [95% CI] "
                "over seeds. A gradient attack far below 1 is a finding about the attack, not about the policy.\n\n"]
    worst = [row for row in evals if row["attack"] == HEADLINE_ATTACK and row["eps"] > 0]
    for scenario in unique(row["scenario"] for row in attacked):
        rows = [row for row in attacked if row["scenario"] == scenario]
        for mode in unique(row["mode"] for row in rows):
            grid = sorted(unique(row["eps"] for row in rows if row["mode"] == mode))
            body = [[attack, labels(scenario, *cell)]
                    + [fmt(use.get((scenario, attack, mode, *cell, eps))) for eps in grid]
                    for attack in unique(row["attack"] for row in rows if row["mode"] == mode)
                    for cell in labels.cells[scenario]]
            markdown.append(f"## {scenario}, {mode} shock: budget use\n\n"
                            + markdown_table(["attack", "method"] + [f"ε={e:g}" for e in grid], body))
            counts = [[labels(scenario, *cell)] + [worst_counts(worst, scenario, mode, cell, eps) for eps in grid]
                      for cell in labels.cells[scenario]]
            markdown.append(f"Worst attack per seed ({scenario}, {mode} shock):\n\n"
                            + markdown_table(["method"] + [f"ε={e:g}" for e in grid], counts))
    markdown.append("## Gradient-masking warnings\n\n")
    if warnings:
        markdown.append("`random_search` (boundary candidates plus the PGD result) lowered the return below PGD's "
                        "`system` attack by more than noise (return difference, paired per seed, IQM [95% CI] < 0): "
                        "PGD's gradients mislead it on these policies.\n\n" + markdown_table(
                            ["scenario", "method", "mode", "ε", "return difference"],
                            [[w["scenario"], labels(w["scenario"], w["method"], w["reg_coef"], w["budget"]), w["mode"],
                              f"{w['eps']:g}", str(w["gap"])] for w in warnings]))
    else:
        markdown.append("None: wherever both were evaluated, `random_search` did not beat PGD beyond noise.\n\n")
    return "".join(markdown), csv_rows


def worst_counts(worst: list[dict[str, Any]], scenario: str, mode: str, cell: tuple[str, float, float],
                 eps: float) -> str:
    """``"system 3, action 2"``: how often each attack was the worst case over the seeds of a cell; ties in
    the order the rows name them (not a set's, which changes with the interpreter's hash seed)."""
    names = [row["worst_attack"] for row in worst if (row["scenario"], row["mode"], row["eps"]) == (scenario, mode, eps)
             and (row["method"], row["reg_coef"], row["budget"]) == cell]
    return ", ".join(f"{name} {names.count(name)}" for name in sorted(unique(names), key=names.count, reverse=True)) or "–"


def masking_warnings(evals: list[dict[str, Any]], reps: int) -> list[dict[str, Any]]:
    """Cells (scenario, method, reg_coef, budget, mode, eps) where ``random_search``'s return minus
    ``system``'s, paired per seed, has its 95% CI below 0."""
    pairs: dict[tuple, dict[str, float]] = {}
    for row in evals:
        if row["attack"] in ("random_search", "system") and row["eps"] > 0:
            key = tuple(row[k] for k in (*CELL[:-1], "mode", "eps", "seed"))
            pairs.setdefault(key, {})[row["attack"]] = row["return_per_agent"]
    keys = (*CELL[:-1], "mode", "eps")
    gaps = [{**dict(zip((*keys, "seed"), key)), "gap": both["random_search"] - both["system"]}
            for key, both in pairs.items() if len(both) == 2]
    if not gaps:
        return []
    return [{**dict(zip(keys, key)), "gap": estimate} for key, estimate in aggregate(gaps, "gap", keys, reps).items()
            if estimate.hi < 0]


def price_tables(evals: list[dict[str, Any]], labels: Labels, attack: str, mode: str,
                 reps: int) -> tuple[str, list[dict], dict]:
    """Markdown and CSV rows of the Price of Robustness tables; the estimates for the Pareto figures.

    PoR = R_ppo(0) - R(0) and G(eps) = R(eps) - R_ppo(eps), differences paired per scenario and seed.
    """
    rows = [row for row in evals if (row["attack"], row["mode"]) == (attack, mode)]
    nominal = [row for row in rows if row["eps"] == 0]
    attacked = [row for row in rows if row["eps"] > 0]
    if not nominal or not attacked:
        raise ReportError(f"evaluations.csv: the Price of Robustness needs eps = 0 and eps > 0 rows for "
                         f"attack={attack}, mode={mode}")
    value, baseline = "return_per_agent", {"method": BASELINE}
    lost = [{**row, value: 0.0 - row[value]}  # 0.0 - d: the baseline's own PoR prints as 0, not -0
            for row in differences_to_baseline(nominal, value, ("scenario", "seed"), baseline)]
    gained = differences_to_baseline(attacked, value, ("scenario", "seed", "eps"), baseline)
    estimates = {"nominal_return": aggregate(nominal, value, PRICE_KEYS, reps),
                 "price_of_robustness": aggregate(lost, value, PRICE_KEYS, reps),
                 "robust_return": aggregate(attacked, value, PRICE_KEYS, reps),
                 "robust_gain": aggregate(gained, value, PRICE_KEYS, reps)}
    csv_rows = [row for q, e in estimates.items()
                for row in estimate_rows(e, PRICE_KEYS, q, attack=attack, mode=mode)]
    what = ("the worst case over every attack evaluated, per seed" if attack == HEADLINE_ATTACK
            else "one attack, not the worst case over the suite")
    markdown = [(f"Attack: `{attack}` ({what}), `{mode}` shock. R(0): nominal return per agent; "
                f"PoR = R_{BASELINE}(0) - R(0): nominal return lost relative to {BASELINE} (same seed); "
                f"R(ε): robust return; G(ε) = R(ε) - R_{BASELINE}(ε): robust return gained (same seed).\n\n")]
    for scenario in unique(row["scenario"] for row in rows):
        grid = sorted(unique(row["eps"] for row in attacked if row["scenario"] == scenario))
        header = ["method", "R(0)", "PoR"] + [f"R(ε={e:g})" for e in grid] + [f"G(ε={e:g})" for e in grid]
        body = [[labels(scenario, *cell), fmt(estimates["nominal_return"].get((scenario, *cell, 0.0))),
                 fmt(estimates["price_of_robustness"].get((scenario, *cell, 0.0)))]
                + [fmt(estimates["robust_return"].get((scenario, *cell, e))) for e in grid]
                + [fmt(estimates["robust_gain"].get((scenario, *cell, e))) for e in grid]
                for cell in labels.cells[scenario]]
        markdown.append(f"## {scenario}\n\n" + markdown_table(header, body))
    return "".join(markdown), csv_rows, estimates


def diagnostics_tables(diags: list[dict[str, Any]], labels: Labels, reps: int) -> tuple[str, list[dict]]:
    """Markdown and CSV rows of IQM [CI] of every diagnostic per scenario x method (x reg_coef)."""
    estimates = {q: aggregate(diags, q, DIAGNOSTIC_KEYS, reps) for q in DIAGNOSTICS}
    csv_rows = [row for q, e in estimates.items() for row in estimate_rows(e, DIAGNOSTIC_KEYS, q)]
    markdown = [("jvp_norm: directional amplification ||J u_t|| along PGA trajectories; global_norm: ||J P||_2 "
                "over the shock channels, global_norm_all: ||J||_2 over all features (power iteration, same "
                "states); frac_directional_only@γ: (state, agent) pairs with max_t ||J u_t|| <= γ < ||J P||_2; "
                "direction_participation_ratio: effective dimension of the pooled u_t; curvature: "
                "v^T Hess g v sampled along the PGA segments; l_eff: largest |curvature| along a state's "
                "trajectory; nonmonotone_rate: PGA steps that decreased g (robustness/diagnostics.py).\n\n")]
    for scenario in unique(row["scenario"] for row in diags):
        body = [[labels(scenario, *cell)] + [fmt(estimates[q].get((scenario, *cell))) for q in DIAGNOSTICS]
                for cell in labels.cells[scenario]]
        markdown.append(f"## {scenario}\n\n" + markdown_table(["method", *DIAGNOSTICS], body))
    return "".join(markdown), csv_rows


def diag_steps(grid: Any) -> str:
    """K of the diagnostics' PGA as run.json's grid records it ("K" when it does not)."""
    return str(grid.get("diag_steps", "K")) if isinstance(grid, dict) else "K"


def read_step_sizes(path: pathlib.Path) -> list[dict[str, Any]]:
    """The rows of ``step_sizes.csv`` (``read_table``), with ``STEP_CLIP`` when the file has them (results
    of code that counts the steps crossing the normaliser's clip apart; older ones lack them). A file
    holding them for some rows only (cells of both codes merged) is an error."""
    nan_ok = ["nonmonotone_rate", *(f"nonmonotone_rate_{name}" for name in STEP_BINS)]
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    if not any(column in raw.columns for column in STEP_CLIP):
        return read_table(path, STEP_KEYS, STEP_VALUES, nan_ok)
    empty = raw[STEP_CLIP[0]].str.strip().eq("").to_numpy() if STEP_CLIP[0] in raw.columns else None
    if empty is not None and empty.any():  # merge_results leaves an older cell's missing columns empty
        raise ReportError(f"{path.name}: {STEP_CLIP[0]} is empty in {int(empty.sum())} of {len(raw)} rows (first: line "
                          f"{int(empty.argmax()) + 2}): cells of code before and since the step-size sweep counts "
                          "the steps crossing the normaliser's clip apart are mixed; rerun the older cells")
    return read_table(path, STEP_KEYS, (*STEP_VALUES, *STEP_CLIP), [*nan_ok, STEP_CLIP[1]])


def segment_points(path: pathlib.Path) -> str:
    """The curvature samples per PGA segment behind the cells' L_seg, from ``diagnostics.csv``'s
    ``segment_points`` column: ``"16"``, or per value with its cell count when cells differ. Cells without
    the record were made by code before it (commit 4ca8220), which sampled 4."""
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    values = raw["segment_points"].str.strip().tolist() if "segment_points" in raw.columns else [""] * len(raw)
    values = [value or "4" for value in values]
    counts = {value: values.count(value) for value in unique(values)}
    return next(iter(counts)) if len(counts) == 1 else ", ".join(f"{v} in {n} cells" for v, n in counts.items())


def step_size_tables(steps: list[dict[str, Any]], labels: Labels, reps: int, k: str = "K", points: str = "several"
                     ) -> tuple[str, list[dict], dict[tuple, Estimate], dict[tuple, tuple[int, int]]]:
    """Markdown and CSV rows of the step-size sweep (Theorems 2-3): the non-monotone step rate per
    scenario x setting x eta factor c (IQM [CI] over seeds), and per scenario x method x bin of
    ``eta * L_seg`` the pooled rate (non-monotone steps / steps over settings, seeds and c), with the
    steps crossing the normaliser's clip (``CLIP``) as one more column when the rows count them; the
    estimates and the pooled ``(non-monotone, steps)`` counts for the figure. ``points``: the curvature
    samples per segment (``segment_points``), named in the text."""
    keys = (*DIAGNOSTIC_KEYS, "eta_factor")
    pooled_columns = (*STEP_BINS, CLIP) if steps and STEP_CLIP[0] in steps[0] else STEP_BINS
    for row in steps:
        for steps_column, rate_column in (("steps", "nonmonotone_rate"),
                                          *((f"steps_{name}", f"nonmonotone_rate_{name}") for name in pooled_columns)):
            if np.isnan(row[rate_column]) != (row[steps_column] == 0):
                raise ReportError(f"step_sizes.csv: {rate_column} is {row[rate_column]!r} with {steps_column} = "
                                  f"{row[steps_column]:g} (NaN exactly when no step was counted) in "
                                  f"{describe(STEP_KEYS, [row[key] for key in STEP_KEYS])}")
    rates = aggregate([row for row in steps if row["steps"] > 0], "nonmonotone_rate", keys, reps)
    pooled: dict[tuple, tuple[int, int]] = {}
    for row in steps:
        for name in pooled_columns:
            count = int(row[f"steps_{name}"])
            bad = round(row[f"nonmonotone_rate_{name}"] * count) if count else 0
            key = (row["scenario"], row["method"], name)
            old_bad, old_count = pooled.get(key, (0, 0))
            pooled[key] = (old_bad + bad, old_count + count)
    csv_rows = estimate_rows(rates, keys, "nonmonotone_rate")
    csv_rows += [{"scenario": scenario, "method": method, "eta_l_bin": name, "quantity": "pooled_nonmonotone_rate",
                  "nonmonotone_steps": bad, "steps": count, "rate": bad / count if count else float("nan")}
                 for (scenario, method, name), (bad, count) in pooled.items()]
    markdown = [(f"PGA on each policy's system loss g (K = {k} from the same states as the diagnostics) rerun with "
                 "eta = c / median L_eff; a step is non-monotone when it lowers g. Theorem 3: a projected "
                 "gradient step with eta * L_seg <= 2 (L_seg: the largest |v^T Hess g v| sampled at "
                 f"{points} points of the step's own segment) ascends, so the bins [0, 1] and (1, 2] should show "
                 "no non-monotone step"
                 + (". Steps whose segment crosses the observation normaliser's clip (a kink of g; the theorem "
                    "assumes g smooth on the segment) are counted apart, in the last column, and left out of the "
                    "bins" if CLIP in pooled_columns else "") + ".\n\n")]
    factors = sorted({row["eta_factor"] for row in steps})
    pooled_header = [f"eta L_seg in {b}" for b in bin_labels()] + (
        ["crossing the normaliser's clip (left out of the bins)"] if CLIP in pooled_columns else [])
    for scenario in unique(row["scenario"] for row in steps):
        body = [[labels(scenario, *cell)] + [fmt(rates.get((scenario, *cell, c))) for c in factors]
                for cell in labels.cells[scenario] if any((scenario, *cell, c) in rates for c in factors)]
        markdown.append(f"## {scenario}: non-monotone step rate by c = eta * median L_eff\n\n"
                        + markdown_table(["method", *(f"c = {c:g}" for c in factors)], body))
        body = []
        for method in labels.methods(scenario):
            counts = [pooled.get((scenario, method, name)) for name in pooled_columns]
            if any(counts):
                body.append([method] + [f"{bad / count:.3g} ({bad} of {count})" if count else "– (0 steps)"
                                        for bad, count in (c or (0, 0) for c in counts)])
        markdown.append(f"## {scenario}: non-monotone step rate by eta * L_seg (pooled over settings, seeds, c)\n\n"
                        + markdown_table(["method", *pooled_header], body))
    return "".join(markdown), csv_rows, rates, pooled


def bin_labels() -> list[str]:
    """``[0, 1]``, ``(1, 2]``, ``(2, inf]``: the bins of eta * L_seg (``ETA_L_BINS``; the first holds 0)."""
    return [f"{'[' if low == 0 else '('}{low:g}, {high:g}]" for low, high in ETA_L_BINS]


def step_size_figure(rates: dict[tuple, Estimate], pooled: dict[tuple, tuple[int, int]], labels: Labels,
                     scenario: str) -> Figure:
    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    methods = labels.methods(scenario)
    factors = sorted({key[-1] for key in rates if key[0] == scenario})
    for method_index, setting_index, cell in labels.indexed_settings(scenario):
        points = sorted((key[-1], e) for key, e in rates.items() if key[:-1] == (scenario, *cell))
        if points:
            left.plot([c for c, _ in points], [e.iqm for _, e in points], marker="o", markersize=3,
                      label=labels(scenario, *cell), color=style(method_index)["color"],
                      linestyle=("-", "--", ":", "-.")[setting_index % 4])
    left.set(xscale="log", xlabel="c = eta * median L_eff", ylabel="non-monotone step rate (IQM over seeds)",
             title=f"{scenario}: PGA step-size sweep")
    left.set_xticks(factors, [f"{c:g}" for c in factors])
    left.minorticks_off()
    left.legend(fontsize="x-small")
    bins = bin_labels()
    for index, method in enumerate(methods):
        counts = [pooled.get((scenario, method, name), (0, 0)) for name in STEP_BINS]
        if any(count for _, count in counts):
            right.plot(bins, [bad / count if count else np.nan for bad, count in counts], marker="o", label=method,
                       color=style(index)["color"])
    right.axvline(1.5, color="grey", linestyle="--", linewidth=1)
    right.set(xlabel="eta * L_seg (bin)", ylabel="non-monotone step rate (pooled)",
              title="Theorem 3: ascent guaranteed left of the dashed line")
    right.legend(fontsize="small")
    return fig


def learning_tables(evals: list[dict[str, Any]], labels: Labels, reps: int) -> tuple[str, list[dict]]:
    """Markdown and CSV rows of the nominal ratio to the scenario's reference (no attack) per scenario x
    setting: IQM [CI] over seeds, each seed's ratio, and how many seeds meet the scenario's
    ``learning_target`` (``envs.core``; a scenario without one shows "–"). The target is set for the
    default config and checks the ratio only (``bench/learning.py`` also requires no collapse)."""
    nominal = [row for row in evals if row["attack"] == "none"]
    estimates = aggregate(nominal, "ratio_to_reference", DIAGNOSTIC_KEYS, reps)
    csv_rows, markdown = [], []
    for scenario in unique(row["scenario"] for row in nominal):
        target = getattr(SCENARIOS.get(scenario), "learning_target", None)
        body = []
        for cell in labels.cells[scenario]:
            ratios = {row["seed"]: row["ratio_to_reference"] for row in nominal
                      if (row["scenario"], row["method"], row["reg_coef"], row["budget"]) == (scenario, *cell)}
            if not ratios:
                continue
            met = sum(meets_learning_target(scenario, r) for r in ratios.values()) if target else None
            body.append([labels(scenario, *cell), fmt(estimates.get((scenario, *cell))),
                         ", ".join(f"{seed}: {ratios[seed]:.4f}" for seed in sorted(ratios)),
                         "–" if met is None else f"{met} of {len(ratios)}"])
            csv_rows += [{"scenario": scenario, "method": cell[0], "reg_coef": cell[1], "budget": cell[2],
                          "seed": seed, "ratio_to_reference": ratio,
                          "target": "" if target is None else f"{target[0]} {target[1]:g}",
                          "meets_target": "" if target is None else meets_learning_target(scenario, ratio)}
                         for seed, ratio in sorted(ratios.items())]
        title = ratio_note(evals, scenario) + (f"; learning target {target[0]} {target[1]:g}, set for the default "
                                               "config, on the ratio only" if target else "")
        markdown.append(f"## {scenario} ({title})\n\n" + markdown_table(
            ["method", "nominal ratio to reference", "per seed (seed: ratio)", "seeds meeting the target"], body))
    return "".join(markdown), csv_rows


def save_figure(fig: Figure, path: pathlib.Path, title: str, provenance: Provenance) -> pathlib.Path:
    """PNG (Agg renderer) with the provenance in its metadata."""
    fig.savefig(path, dpi=120, bbox_inches="tight", metadata=provenance.png_metadata(title))
    return path


def style(index: int) -> dict[str, Any]:
    return {"color": f"C{index % 10}", "linestyle": ("-", "--", ":", "-.")[index // 10 % 4]}


def robustness_figure(estimates: dict, labels: Labels, scenario: str, attack: str, mode: str) -> Figure:
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for index, cell in enumerate(labels.cells[scenario]):
        points = sorted((key[-1], e) for key, e in estimates.items() if key[:-1] == (scenario, attack, mode, *cell))
        if points:
            eps = [p for p, _ in points]
            ax.plot(eps, [e.iqm for _, e in points], marker="o", label=labels(scenario, *cell), **style(index))
            ax.fill_between(eps, [e.lo for _, e in points], [e.hi for _, e in points],
                            color=style(index)["color"], alpha=0.15)
    ax.set(xlabel="shock budget ε", ylabel="return per agent (IQM, 95% CI)",
           title=f"{scenario}: {attack} attack, {mode} shock")
    ax.legend(fontsize="small")
    return fig


def setting_points(evals: list[dict[str, Any]], attack: str, mode: str) -> dict[tuple, dict[tuple, tuple]]:
    """Per (scenario, eps > 0, method, seed): ``{(reg_coef, budget): (robust return, nominal return)}``
    under ``attack``/``mode``, the nominal return being that of the same run at eps = 0."""
    rows = [row for row in evals if (row["attack"], row["mode"]) == (attack, mode)]
    nominal = {tuple(row[k] for k in CELL): row["return_per_agent"] for row in rows if row["eps"] == 0}
    points: dict[tuple, dict[tuple, tuple]] = {}
    for row in rows:
        cell = tuple(row[k] for k in CELL)
        if row["eps"] > 0 and cell in nominal:
            key = (row["scenario"], row["eps"], row["method"], row["seed"])
            points.setdefault(key, {})[(row["reg_coef"], row["budget"])] = (row["return_per_agent"], nominal[cell])
    return points


def tradeoff_tables(evals: list[dict[str, Any]], labels: Labels, attack: str, mode: str,
                    reps: int, points: dict[tuple, dict[tuple, tuple]] | None = None) -> tuple[str, list[dict]]:
    """Markdown and CSV rows of the comparison at matched robustness (``robustness.pareto``): per scenario
    and eps, Delta PoR of ``aajr`` against each global method (its front over its settings against the
    other's, per seed; IQM [CI] over the seeds whose fronts overlap); and Corollary 1's paired nominal
    difference ``R_aajr(0) - R_spectral(0)`` at equal (lambda, gamma > 0)."""
    points = setting_points(evals, attack, mode) if points is None else points
    markdown = [(f"Attack: `{attack}`, `{mode}` shock. ΔPoR(aajr, G) = mean over the robustness levels both fronts "
                 "reach of N_G(r) - N_aajr(r), the nominal return a method keeps at worst-case robust return r "
                 "(each method's non-dominated settings, interpolated linearly, per seed): < 0 means AAJR pays "
                 "less nominal return than G for the same robustness. n: seeds whose fronts overlap, of the "
                 "seeds with every setting of both methods.\n\n")]
    csv_rows: list[dict[str, Any]] = []
    body = []
    for scenario, eps in unique(key[:2] for key in points):
        methods = {key[2] for key in points if key[:2] == (scenario, eps)}
        if FOCUS not in methods:
            continue
        for other in (m for m in GLOBAL_METHODS if m in methods):
            # a seed's front needs every setting of both methods (an unfinished grid has seeds with only some)
            settings = {m: {(c, b) for name, c, b in labels.cells[scenario] if name == m} for m in (FOCUS, other)}
            seeds = sorted({key[3] for key in points if key[:3] == (scenario, eps, FOCUS)
                            and set(points[key]) == settings[FOCUS]}
                           & {key[3] for key in points if key[:3] == (scenario, eps, other)
                              and set(points[key]) == settings[other]})
            differences = []
            for seed in seeds:
                fronts = [pareto_front(*np.array(list(points[(scenario, eps, m, seed)].values())).T)
                          for m in (FOCUS, other)]
                differences.append(matched_por_difference(*fronts))
            valid = [d for d in differences if np.isfinite(d)]
            estimate = iqm_ci(np.array(valid), f"ΔPoR {scenario} ε={eps:g} {other}", reps) if valid else None
            body.append([scenario, f"{eps:g}", other, fmt(estimate), f"{len(valid)} of {len(seeds)}"])
            if estimate is not None:
                csv_rows.append({"scenario": scenario, "eps": eps, "method": FOCUS, "against": other,
                                 "quantity": "delta_por_matched", "iqm": estimate.iqm, "ci_low": estimate.lo,
                                 "ci_high": estimate.hi, "n": estimate.n})
    markdown.append("## ΔPoR at matched worst-case robustness\n\n" + (markdown_table(
        ["scenario", "ε", "against", "ΔPoR(aajr, G)", "n"], body) if body else
        f"Not computed: the grid needs `{FOCUS}` and one of {', '.join(GLOBAL_METHODS)}.\n\n"))
    nominal = [row for row in evals if (row["attack"], row["mode"]) == (attack, mode) and row["eps"] == 0]
    by_seed = {tuple(row[k] for k in CELL): row["return_per_agent"] for row in nominal}
    pairs = []
    for (scenario, method, coef, budget, seed), value in by_seed.items():
        twin = by_seed.get((scenario, COROLLARY_BASELINE, coef, budget, seed))
        if method == FOCUS and budget > 0 and twin is not None:
            pairs.append({"scenario": scenario, "reg_coef": coef, "budget": budget, "seed": seed,
                          "difference": value - twin})
    markdown.append(f"## Corollary 1: nominal return of {FOCUS} minus {COROLLARY_BASELINE} at equal hinge budget γ\n\n")
    if pairs:
        estimates = aggregate(pairs, "difference", ("scenario", "reg_coef", "budget"), reps)
        csv_rows += estimate_rows(estimates, ("scenario", "reg_coef", "budget"), "nominal_difference_equal_budget")
        markdown.append("R_aajr(0) - R_spectral(0), paired per seed, same λ and γ: > 0 means the directional budget "
                        "keeps more nominal return than the global one of the same size.\n\n" + markdown_table(
                            ["scenario", "λ", "γ", "difference"],
                            [[key[0], f"{key[1]:g}", f"{key[2]:g}", str(e)] for key, e in estimates.items()]))
    else:
        markdown.append(f"Not computed: the grid has no {FOCUS} and {COROLLARY_BASELINE} runs with the same hinge "
                        "budget γ > 0.\n\n")
    body, rows = paired_difference_tables(evals, labels, attack, mode, reps)
    markdown.append(f"## Paired differences: {FOCUS} minus each other method\n\n" + (
        f"R_{FOCUS}(ε) - R_other(ε), paired per seed, at ε = 0 (nominal) and under the `{attack}` attack at each "
        f"ε > 0: > 0 means {FOCUS} keeps more return. Each {FOCUS} setting is paired with the other method's "
        "setting of the same λ and γ, or with its only setting when it has one; n: seeds with both.\n\n"
        + markdown_table(["scenario", "ε", FOCUS, "against", "difference", "n"], body) if body else
        f"Not computed: the grid has no method to pair with {FOCUS}.\n\n"))
    return "".join(markdown), csv_rows + rows


def paired_partner(settings: Sequence[tuple[float, float]], coef: float, budget: float) -> tuple[float, float] | None:
    """The setting of another method that a ``FOCUS`` setting ``(coef, budget)`` is compared with: the same
    (lambda, gamma) when the method has it, else the method's only setting, else none."""
    if (coef, budget) in settings:
        return coef, budget
    return settings[0] if len(settings) == 1 else None


def paired_difference_tables(evals: list[dict[str, Any]], labels: Labels, attack: str, mode: str, reps: int
                             ) -> tuple[list[list[str]], list[dict[str, Any]]]:
    """Markdown rows and long CSV rows of ``R_aajr(eps) - R_other(eps)`` paired per seed (IQM [CI] over the
    seeds both cells have), for every ``FOCUS`` setting against every other method's ``paired_partner``,
    at eps = 0 and under ``attack``/``mode`` at each eps > 0."""
    returns = {(row["scenario"], row["eps"], row["method"], row["reg_coef"], row["budget"], row["seed"]):
               row["return_per_agent"] for row in evals if (row["attack"], row["mode"]) == (attack, mode)}
    seeds = sorted({key[5] for key in returns})
    pairs = []
    for scenario, eps in unique((key[0], key[1]) for key in returns):
        focus = [(c, b) for m, c, b in labels.cells[scenario] if m == FOCUS]
        for other in (m for m in labels.methods(scenario) if m != FOCUS):
            settings = [(c, b) for m, c, b in labels.cells[scenario] if m == other]
            for coef, budget in focus:
                partner = paired_partner(settings, coef, budget)
                if partner is None:
                    continue
                for seed in seeds:
                    mine = returns.get((scenario, eps, FOCUS, coef, budget, seed))
                    theirs = returns.get((scenario, eps, other, *partner, seed))
                    if mine is not None and theirs is not None:
                        pairs.append({"scenario": scenario, "eps": eps, "reg_coef": coef, "budget": budget,
                                      "against": labels(scenario, other, *partner), "difference": mine - theirs})
    keys = ("scenario", "eps", "reg_coef", "budget", "against")
    estimates = aggregate(pairs, "difference", keys, reps) if pairs else {}
    body = [[key[0], f"{key[1]:g}", labels(key[0], FOCUS, key[2], key[3]), key[4], str(e), str(e.n)]
            for key, e in estimates.items()]
    return body, estimate_rows(estimates, keys, "paired_difference", method=FOCUS)


def tradeoff_figure(points: dict[tuple, dict[tuple, tuple]], price: dict, labels: Labels, scenario: str,
                    attack: str) -> Figure:
    """Per eps > 0, nominal against robust return: per-seed points (``setting_points``), and per method a
    line through its settings' IQMs (sorted by nominal return), each labelled with its lambda / gamma."""
    grid = sorted(unique(key[1] for key in points if key[0] == scenario))
    fig = Figure(figsize=(4.5 * len(grid), 4), layout="constrained")
    for column, eps in enumerate(grid):
        ax = fig.add_subplot(1, len(grid), column + 1)
        for index, method in enumerate(labels.methods(scenario)):
            seeds = [value for key, settings in points.items() if key[:3] == (scenario, eps, method)
                     for value in settings.values()]
            if not seeds:
                continue
            color = style(index)["color"]
            ax.scatter([n for _, n in seeds], [r for r, _ in seeds], s=10, alpha=0.35, color=color)
            line = sorted((price["nominal_return"][(scenario, m, c, b, 0.0)].iqm,
                           price["robust_return"][(scenario, m, c, b, eps)].iqm,
                           labels(scenario, m, c, b)[len(m):].strip())
                          for m, c, b in labels.cells[scenario] if m == method
                          and (scenario, m, c, b, eps) in price["robust_return"]
                          and (scenario, m, c, b, 0.0) in price["nominal_return"])
            ax.plot([x for x, _, _ in line], [y for _, y, _ in line], marker="o", label=method, **style(index))
            for x, y, setting in line:  # which lambda / gamma each IQM point is
                if setting:
                    ax.annotate(setting, (x, y), xytext=(3, 3 - 7 * index), textcoords="offset points", fontsize=6,
                                color=color)  # methods offset apart: their points at one gamma cluster
        ax.set(xlabel="nominal return per agent (ε=0)", ylabel=f"robust return per agent (ε={eps:g})",
               title=f"{scenario}: ε={eps:g}, {attack} attack")
        ax.legend(fontsize="small")
    return fig


def amplification_figure(diags: list[dict[str, Any]], labels: Labels, scenario: str) -> Figure:
    fig = Figure(figsize=(5, 4))
    ax = fig.add_subplot()
    rows = [row for row in diags if row["scenario"] == scenario]
    for method_index, setting_index, cell in labels.indexed_settings(scenario):
        cell_rows = [row for row in rows if (row["method"], row["reg_coef"], row["budget"]) == cell]
        if cell_rows:
            ax.scatter([row["global_norm_mean"] for row in cell_rows], [row["jvp_norm_mean"] for row in cell_rows],
                       color=style(method_index)["color"], marker="osD^v<>"[setting_index % 7], s=20,
                       label=labels(scenario, *cell))
    top = max(max(row["global_norm_mean"], row["jvp_norm_mean"]) for row in rows)
    ax.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1, label="y = x")
    ax.set(xlabel="global ||J P||_2 over the shock channels (mean over states)",
           ylabel="directional ||J u|| (mean along PGA)",
           title=f"{scenario}: amplification per cell")
    ax.legend(fontsize="x-small", ncol=2)
    return fig


def normalised_score(row: dict[str, Any]) -> float:
    """The ratio to the scenario's reference made higher-is-better, 1 = the reference: the ratio itself
    where higher is better (fraction of the reference welfare); ``2 - ratio`` where it is a cost ratio
    (1 = optimal): one minus the excess cost over the optimum, linear, so IQMs and profiles keep their scale."""
    return row["ratio_to_reference"] if row["ratio_higher_is_better"] else 2.0 - row["ratio_to_reference"]


def headline_scores(evals: list[dict[str, Any]], attack: str, mode: str) -> dict[tuple, dict[int, float]]:
    """``{(scenario, eps, method, reg_coef, budget): {seed: normalised score}}`` under ``attack``/``mode``."""
    scores: dict[tuple, dict[int, float]] = {}
    for row in evals:
        if (row["attack"], row["mode"]) == (attack, mode):
            key = (row["scenario"], row["eps"], row["method"], row["reg_coef"], row["budget"])
            scores.setdefault(key, {})[row["seed"]] = normalised_score(row)
    return scores


def score_matrix(scores: dict[tuple, dict[int, float]], scenarios: Sequence[str], eps: float,
                 cells: Sequence[tuple]) -> np.ndarray | None:
    """seeds x scenarios x cells array of normalised scores over the seeds every (scenario, cell) has;
    None when a cell misses a scenario or no seed is common."""
    keys = [(scenario, eps, *cell) for scenario in scenarios for cell in cells]
    if any(key not in scores for key in keys):
        return None
    seeds = sorted(set.intersection(*(set(scores[key]) for key in keys)))
    if not seeds:
        return None
    return np.array([[[scores[(scenario, eps, *cell)][seed] for cell in cells] for scenario in scenarios]
                     for seed in seeds])


def improvement_tables(evals: list[dict[str, Any]], labels: Labels, attack: str, mode: str,
                       reps: int) -> tuple[str, list[dict], dict]:
    """Markdown and CSV rows of the normalised-score statistics under the headline attack: per scenario
    and eps, P(aajr > G) for every other setting G (rliable's, every pair of runs, and the paired
    per-seed win rate); over scenarios (tasks), the same and the IQM of the normalised score of every
    setting present in all scenarios. Also the data of the figures."""
    scores = headline_scores(evals, attack, mode)
    scenarios = unique(key[0] for key in scores)
    grid = sorted(unique(key[1] for key in scores))
    every = Labels([{**row, "scenario": ALL} for row in evals if row["scenario"] in scenarios])
    common = [cell for cell in every.cells[ALL] if all(cell in labels.cells[s] for s in scenarios)]
    markdown = [(f"Attack: `{attack}`, `{mode}` shock. Normalised score: `ratio_to_reference` where higher is "
                 "better, `2 - ratio` where it is a cost ratio (1 = the scenario's reference in both, higher is "
                 "better; `2 - ratio`: one minus the excess cost). P(X > Y): rliable's probability of improvement, over every pair of runs (ties 1/2), "
                 "averaged over tasks; paired: the fraction of seeds in which X beats Y. 95% CIs from one "
                 f"bootstrap of the seeds (within each task) that keeps a seed's pair together. n: scores per "
                 "method (seeds x tasks).\n\n")]
    csv_rows: list[dict[str, Any]] = []
    figures: dict[str, Any] = {"improvement": {}, "profiles": {}, "aggregate": {}, "labels": every}

    def compare(name: str, tasks: Sequence[str], eps: float, cell_labels: Labels, scope: str) -> list[list[str]]:
        cells = common if scope == ALL else labels.cells[scope]
        body = []
        for focus in (c for c in cells if c[0] == FOCUS):
            for other in (c for c in cells if c[0] != FOCUS):
                matrix = score_matrix(scores, tasks, eps, [focus, other])
                if matrix is None:
                    continue
                unpaired, paired = probability_of_improvement(
                    matrix[..., 0], matrix[..., 1], f"P({focus} > {other}) at {name} ε={eps:g}", reps)
                pair = (cell_labels(scope, *focus), cell_labels(scope, *other))
                body.append([name, f"{eps:g}", *pair, str(unpaired), str(paired), str(unpaired.n)])
                for quantity, e in (("probability_of_improvement", unpaired), ("paired_win_rate", paired)):
                    csv_rows.append({"scenario": name, "eps": eps, "method": focus[0], "reg_coef": focus[1],
                                     "budget": focus[2], "against": other[0], "against_reg_coef": other[1],
                                     "against_budget": other[2], "quantity": quantity, "iqm": e.iqm,
                                     "ci_low": e.lo, "ci_high": e.hi, "n": e.n})
                if scope == ALL:
                    figures["improvement"][(eps, f"{pair[0]} > {pair[1]}")] = (unpaired, paired)
        return body

    header = ["scenario", "ε", "X", "Y", "P(X > Y)", "paired", "n"]
    body = [row for scenario in scenarios for eps in grid for row in compare(scenario, [scenario], eps, labels, scenario)]
    markdown.append(f"## Probability of improvement of {FOCUS} per scenario\n\n" + (markdown_table(header, body)
                    if body else f"Not computed: the grid needs `{FOCUS}` and another method.\n\n"))
    body = [row for eps in grid for row in compare(ALL, scenarios, eps, every, ALL)]
    markdown.append(f"## Probability of improvement of {FOCUS} over all scenarios (tasks)\n\n"
                    + (markdown_table(header, body) if body else
                       f"Not computed: the grid needs `{FOCUS}` and another method in every scenario.\n\n"))
    rows = []
    for eps in grid:
        matrix = score_matrix(scores, scenarios, eps, common)
        if matrix is None:
            continue
        names = [f"normalised score of {every('all', *cell)} at ε={eps:g}" for cell in common]
        estimates = iqm_cis(matrix, names, reps)
        figures["profiles"][eps] = {every(ALL, *cell): matrix[..., i] for i, cell in enumerate(common)}
        for cell, estimate in zip(common, estimates):
            figures["aggregate"][(eps, every(ALL, *cell))] = estimate
            rows.append([every(ALL, *cell), f"{eps:g}", str(estimate)])
            csv_rows.append({"scenario": ALL, "eps": eps, "method": cell[0], "reg_coef": cell[1], "budget": cell[2],
                             "quantity": "normalised_score_iqm", "iqm": estimate.iqm, "ci_low": estimate.lo,
                             "ci_high": estimate.hi, "n": estimate.n})
    markdown.append("## Aggregate over scenarios: IQM of the normalised score\n\nIQM over scenarios x seeds, 95% CI "
                    "from the stratified bootstrap with the scenarios as tasks; settings present in every "
                    "scenario.\n\n" + (markdown_table(["method", "ε", "IQM [95% CI]"], rows) if rows else
                                       "Not computed: no setting has runs in every scenario.\n\n"))
    return "".join(markdown), csv_rows, figures


def improvement_figure(improvement: dict, attack: str) -> Figure:
    """Per eps, P(X > Y) and the paired win rate with their CIs, one row per pair ``"X > Y"`` of an aajr
    setting X and another setting Y."""
    grid = sorted(unique(eps for eps, _ in improvement))
    others = unique(other for _, other in improvement)
    fig = Figure(figsize=(3.2 * len(grid) + 1.5, 0.45 * len(others) + 1.6))
    for column, eps in enumerate(grid):
        ax = fig.add_subplot(1, len(grid), column + 1)
        for row, other in enumerate(others):
            if (eps, other) not in improvement:
                continue
            for shift, estimate, color, name in zip((-0.15, 0.15), improvement[(eps, other)], ("C0", "C1"),
                                                    ("P(X > Y), every pair of runs", "paired (per seed)")):
                # a segment with the point on it (error bars would need the point inside its interval)
                ax.plot([estimate.lo, estimate.hi], [row + shift] * 2, color=color, marker="|", markersize=8)
                ax.plot(estimate.iqm, row + shift, "o", color=color, label=name if row == 0 else None)
        ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.set(xlim=(-0.02, 1.02), yticks=range(len(others)), yticklabels=others if column == 0 else [],
               xlabel="probability", title=f"ε={eps:g}, {attack} attack")
        ax.invert_yaxis()
    fig.axes[0].legend(fontsize="small", loc="lower left")
    return fig


def profile_figure(profiles: dict[float, dict[str, np.ndarray]], reps: int) -> Figure:
    """Per eps, the score distribution of every setting (fraction of runs above tau), 95% CI bands."""
    grid = sorted(profiles)
    fig = Figure(figsize=(4.5 * len(grid), 4), layout="constrained")
    for column, eps in enumerate(grid):
        ax = fig.add_subplot(1, len(grid), column + 1)
        values = np.concatenate([v.ravel() for v in profiles[eps].values()])
        taus = np.linspace(values.min() - 1e-3, values.max() + 1e-3, 101)
        for index, (name, (profile, lo, hi)) in enumerate(performance_profiles(profiles[eps], taus, reps).items()):
            ax.plot(taus, profile, label=name, **style(index))
            ax.fill_between(taus, lo, hi, color=style(index)["color"], alpha=0.15)
        ax.set(xlabel="normalised score τ (1 = reference)", ylabel="fraction of runs with score > τ",
               title=f"ε={eps:g}", ylim=(-0.02, 1.02))
        ax.legend(fontsize="small")
    return fig


LEARNING_CURVE_COLUMNS = ("eval/return_per_agent", "charts/episodic_return")
CURVE_POINTS = 50


def read_cells(results_dir: pathlib.Path) -> dict[str, dict[str, Any] | None]:
    """The cell files ``results_dir/cells/*.json``, read once: ``{cell name: its content, or None when the
    file cannot be read or is not a JSON object}``, in name order."""
    cells: dict[str, dict[str, Any] | None] = {}
    for path in sorted((pathlib.Path(results_dir) / "cells").glob("*.json")):
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError):
            content = None
        cells[path.stem] = content if isinstance(content, dict) else None
    return cells


def learning_curves(results_dir: pathlib.Path, cells: dict[str, dict[str, Any] | None] | None = None
                    ) -> tuple[dict[tuple, dict[int, tuple]], str | None]:
    """Per (scenario, method, reg_coef, budget): ``{seed: (agent_steps, return)}`` from the run directories
    of the readable cells (``cells``: ``read_cells(results_dir)``, read here when None), and the column used:
    the periodic evaluation's ``eval/return_per_agent`` when every run has it, else the training
    ``charts/episodic_return``. Empty when no run has metrics."""
    frames = {}
    for name, content in (read_cells(results_dir) if cells is None else cells).items():
        metrics_csv = pathlib.Path(results_dir) / "runs" / name / "metrics.csv"
        if content is not None and "cell" in content and metrics_csv.is_file():
            cell = content["cell"]
            key = (cell["scenario"], cell["method"], float(cell["reg_coef"]), float(cell.get("budget", 0.0)))
            frames[(key, int(cell["seed"]))] = pd.read_csv(metrics_csv)
    column = next((c for c in LEARNING_CURVE_COLUMNS
                   if frames and all(c in f and f[c].notna().any() for f in frames.values())), None)
    curves: dict[tuple, dict[int, tuple]] = {}
    if column is None or any("charts/agent_steps" not in f for f in frames.values()):
        return {}, None
    for (key, seed), frame in frames.items():
        frame = frame[["charts/agent_steps", column]].dropna()
        curves.setdefault(key, {})[seed] = (frame["charts/agent_steps"].to_numpy(float), frame[column].to_numpy(float))
    return curves, column


def resample_curves(runs: dict[int, tuple], points: int = CURVE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """The runs' curves interpolated onto one grid of agent-steps over the range they all cover:
    ``(steps (points,), values (seeds, points))``."""
    start = max(steps[0] for steps, _ in runs.values())
    stop = min(steps[-1] for steps, _ in runs.values())
    grid = np.linspace(start, stop, points) if stop > start else np.array([stop])
    return grid, np.array([np.interp(grid, steps, values) for steps, values in runs.values()])


def learning_curve_figure(curves: dict[tuple, dict[int, tuple]], labels: Labels, scenario: str, column: str) -> Figure:
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for index, cell in enumerate(labels.cells[scenario]):
        runs = {seed: run for seed, run in curves.get((scenario, *cell), {}).items() if len(run[0])}
        if runs:
            steps, values = resample_curves(runs)
            ax.plot(steps, trim_mean(values, 0.25, axis=0), label=labels(scenario, *cell), **style(index))
            ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=style(index)["color"], alpha=0.15)
    ax.set(xlabel="agent-steps", ylabel=f"{column} (IQM over seeds; band: min-max)", title=f"{scenario}: learning curves")
    ax.legend(fontsize="small")
    return fig


def write_report(results_dir: str | pathlib.Path, reps: int = REPS, attack: str = HEADLINE_ATTACK,
                 mode: str = "shared") -> list[pathlib.Path]:
    """Write the tables, figures and index of ``results_dir`` into ``results_dir/report``; return
    the written paths. ``attack``/``mode``: the headline attack of the Price of Robustness and the
    Pareto view (default ``worst``: per seed, the lowest return over every attack evaluated)."""
    results_dir = pathlib.Path(results_dir)
    command = shlex.join(["python", "-m", "robustness.report", str(results_dir), "--reps", str(reps),
                          "--attack", attack, "--mode", mode])
    provenance = Provenance.read(results_dir, command, reps)
    evals = read_table(results_dir / "evaluations.csv", EVAL_KEYS, EVAL_VALUES)
    diags = read_table(results_dir / "diagnostics.csv", CELL, DIAGNOSTICS)
    labels = Labels(evals + diags)
    out = results_dir / "report"
    out.mkdir(exist_ok=True)
    written: list[pathlib.Path] = []

    def table(name: str, title: str, markdown: str, csv_rows: list[dict]) -> None:
        (out / f"{name}.md").write_text(f"# {title}\n\n{markdown}{provenance.footer()}")
        pd.DataFrame(csv_rows).to_csv(out / f"{name}.csv", index=False)
        written.extend([out / f"{name}.md", out / f"{name}.csv", provenance.sidecar(out / f"{name}.csv")])

    figures: list[tuple[str, pathlib.Path, str]] = []  # (scenario, path, caption)

    def figure(scenario: str, fig: Figure, name: str, caption: str) -> None:
        written.append(save_figure(fig, out / name, caption, provenance))
        figures.append((scenario, out / name, caption))

    markdown, csv_rows = learning_tables(evals, labels, reps)
    table("learning", "Learning quality: nominal ratio to the reference and the learning target", markdown, csv_rows)
    markdown, csv_rows, returns = robustness_tables(evals, labels, reps)
    table("robustness", "Robustness under attacks", markdown, csv_rows)
    for scenario, attack_, mode_ in unique(key[:3] for key in returns):
        figure(scenario, robustness_figure(returns, labels, scenario, attack_, mode_),
               f"robustness_{scenario}_{attack_}_{mode_}.png",
               f"{scenario}: return per agent vs shock budget ε under the {attack_} attack ({mode_} shock), "
               "IQM over seeds with 95% CI bands.")
    markdown, csv_rows = attack_tables(evals, labels, reps)
    table("attacks", "Attacks: budget use, worst case, gradient-masking warnings", markdown, csv_rows)
    markdown, csv_rows, price = price_tables(evals, labels, attack, mode, reps)
    table("price_of_robustness", "Price of Robustness", markdown, csv_rows)
    points = setting_points(evals, attack, mode)
    for scenario in unique(key[0] for key in price["robust_return"]):
        figure(scenario, tradeoff_figure(points, price, labels, scenario, attack), f"pareto_{scenario}.png",
               f"{scenario}: nominal return (ε=0) against robust return under the {attack} attack ({mode} shock), "
               "one panel per ε: small points are single runs (seed x setting), lines join each method's settings "
               "(IQM over seeds).")
    markdown, csv_rows = tradeoff_tables(evals, labels, attack, mode, reps, points)
    table("tradeoff", "Matched-robustness comparison and Corollary 1", markdown, csv_rows)
    markdown, csv_rows = diagnostics_tables(diags, labels, reps)
    table("diagnostics", "Theory diagnostics", markdown, csv_rows)
    for scenario in unique(row["scenario"] for row in diags):
        figure(scenario, amplification_figure(diags, labels, scenario), f"amplification_{scenario}.png",
               f"{scenario}: directional amplification ||J u|| along PGA trajectories vs the global ||J P||_2 over "
               "the shock channels at the same states, one point per trained policy (cell), a color per method and a "
               "marker per setting; dashed: y = x.")
    if (results_dir / "step_sizes.csv").is_file():
        steps = read_step_sizes(results_dir / "step_sizes.csv")
        markdown, csv_rows, rates, pooled = step_size_tables(steps, labels, reps, diag_steps(provenance.grid),
                                                             segment_points(results_dir / "diagnostics.csv"))
        table("step_sizes", "PGA step sizes and ascent (Theorems 2-3)", markdown, csv_rows)
        clip_note = (", steps crossing the normaliser's clip left out" if any(key[-1] == CLIP for key in pooled)
                     else "")
        for scenario in unique(row["scenario"] for row in steps):
            figure(scenario, step_size_figure(rates, pooled, labels, scenario), f"step_sizes_{scenario}.png",
                   f"{scenario}: left, the rate of PGA steps that lower the system loss against the step size "
                   "c = eta * median L_eff, one line per setting (IQM over seeds); right, the rate per bin of "
                   f"eta * L_seg pooled per method{clip_note} (dashed: eta * L_seg = 2).")
    markdown, csv_rows, data = improvement_tables(evals, labels, attack, mode, reps)
    table("improvement", "Probability of improvement and aggregate over scenarios", markdown, csv_rows)
    if data["improvement"]:
        figure(ALL, improvement_figure(data["improvement"], attack), "improvement.png",
               f"All scenarios as tasks, {attack} attack ({mode} shock), one panel per ε: probability that each "
               f"{FOCUS} setting X scores higher (normalised score) than each other setting Y, over every pair of runs (blue) and paired per seed "
               "(orange), with 95% CIs; dashed: 0.5.")
    if data["profiles"]:
        figure(ALL, profile_figure(data["profiles"], reps), "performance_profiles.png",
               f"All scenarios x seeds, {attack} attack ({mode} shock), one panel per ε: fraction of runs whose "
               "normalised score (1 = the scenario's reference) exceeds τ, with 95% CI bands; higher and further "
               "right is better.")
    cells = read_cells(results_dir)
    notes = [completeness_note(provenance.grid, evals), code_note(cells)]
    curves, column = learning_curves(results_dir, cells)
    for scenario in unique(key[0] for key in curves):
        figure(scenario, learning_curve_figure(curves, labels, scenario, column), f"learning_curves_{scenario}.png",
               f"{scenario}: {column} against agent-steps during training, IQM over seeds per method (band: the "
               "seeds' min and max).")
    if not curves:
        notes.append("Learning curves: not drawn, no run directory with a metrics.csv under runs/ (committed results "
                     "keep only cells/ and the CSVs; rerun the grid to get them).")
    else:
        drawn = sum(len(runs) for runs in curves.values())
        total = len(cells)
        if drawn < total:
            notes.append(f"Learning curves: drawn from {drawn} of the {total} cells, those with a metrics.csv under "
                         "runs/; the others' run directories are not here, so their IQMs cover fewer seeds.")
    written.append(write_index(out, provenance, figures, notes, tables={path.stem for path in written
                                                                         if path.suffix == ".md"}))
    return written


def completeness_note(grid: Any, evals: list[dict[str, Any]]) -> str:
    """How much of ``run.json``'s grid the results hold: cells done of the grid's, and the seeds with every
    setting done (a grid runs seed by seed, so an unfinished grid holds its first seeds whole)."""
    try:
        cells = grid_cells(BenchmarkConfig.from_dict(grid))
    except (KeyError, ConfigError):
        return "Completeness: run.json holds no grid to compare with."
    done = {tuple(row[key] for key in CELL) for row in evals}
    expected = {(c.scenario, c.method, c.reg_coef, c.budget, c.seed) for c in cells}
    seeds = unique(c.seed for c in cells)
    whole = [seed for seed in seeds if all(cell in done for cell in expected if cell[-1] == seed)]
    started = [seed for seed in seeds if seed not in whole and any(cell[-1] == seed for cell in done & expected)]
    state = "the whole grid" if len(done & expected) == len(expected) else "a partial grid, not finished"
    extra = len(done - expected)
    return (f"Completeness: {len(done & expected)} of the grid's {len(expected)} cells ({state}); seeds with every "
            f"setting: {', '.join(map(str, whole)) or 'none'}" + (f"; begun: {', '.join(map(str, started))}"
                                                                 if started else "")
            + (f"; {extra} cell(s) outside run.json's grid" if extra else "") + ".")


def code_note(cells: dict[str, dict[str, Any] | None]) -> str:
    """Which code versions (``agents.code_version``) made ``cells`` (``read_cells``), and how many cells each;
    cells made by code that did not record its version, and unreadable ones, are counted apart."""
    versions: dict[str, int] = {}
    for content in cells.values():
        version = UNREADABLE if content is None else content.get("code") or NOT_RECORDED
        versions[version] = versions.get(version, 0) + 1
    if not versions:
        return "Code: no cell files under cells/ to say which code made the results."
    words = {NOT_RECORDED: "without a record (made by code that does not record its version)",
             UNREADABLE: "whose file cannot be read"}
    parts = [f"{count} cell(s) {words.get(version, f'made with `{version}`')}"
             for version, count in sorted(versions.items(), key=lambda item: -item[1])]
    recorded = [version for version in versions if version not in words]
    mixed = " (more than one code version: compare them before pooling)" if len(recorded) > 1 else ""
    return "Code: " + "; ".join(parts) + mixed + "."


def write_index(out: pathlib.Path, provenance: Provenance, figures: list[tuple[str, pathlib.Path, str]],
                notes: Sequence[str] = (), tables: set[str] | None = None) -> pathlib.Path:
    """``index.md``: links to the tables (those named in ``tables``, the ones this report wrote; None: every
    one that exists), the figures with their captions, the provenance."""
    lines = ["# Robustness benchmark report\n\n## Tables\n\n"]
    for name, title in (("learning", "Learning quality: nominal ratio to the reference, seeds meeting the learning target"),
                        ("robustness", "Robustness: return and ratio to reference vs ε per attack and method"),
                        ("attacks", "Attacks: budget use, the worst attack per seed, gradient-masking warnings"),
                        ("price_of_robustness", "Price of Robustness: nominal return lost vs robust return gained"),
                        ("tradeoff", "ΔPoR at matched robustness (AAJR against each global method), Corollary 1, paired differences"),
                        ("diagnostics", "Theory diagnostics: amplification, budget, curvature, PGA stability"),
                        ("step_sizes", "PGA step-size sweep: non-monotone steps against eta * L_eff (Theorems 2-3)"),
                        ("improvement", f"Probability of improvement of {FOCUS} over each method (per scenario and "
                                        "over scenarios) and the IQM of the normalised score over scenarios")):
        if not (out / f"{name}.md").is_file() if tables is None else name not in tables:
            continue
        lines.append(f"- [{title}]({name}.md) ([CSV]({name}.csv), provenance: "
                     f"[{name}.provenance.json]({name}.provenance.json))\n")
    lines.append("\nCSV tables are long: key columns, then quantity, iqm, ci_low, ci_high, n (seeds); each has a "
                 "sidecar `<name>.provenance.json` with the commands. Figures carry them in their PNG metadata.\n")
    for scenario in unique(scenario for scenario, _, _ in figures):
        lines.append(f"\n## Figures: {'all scenarios' if scenario == ALL else scenario}\n")
        lines += [f"\n![{path.stem}]({path.name})\n\n*{caption}*\n" for s, path, caption in figures if s == scenario]
    lines += [f"\n{note}\n" for note in notes]
    path = out / "index.md"
    path.write_text("".join(lines) + provenance.footer())
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m robustness.report", description=(__doc__ or "").partition("\n")[0])  # no docstring under -OO
    parser.add_argument("results_dir", type=pathlib.Path, help="folder with evaluations.csv, diagnostics.csv, run.json")
    parser.add_argument("--reps", type=int, default=REPS, help="bootstrap replicates (default %(default)s)")
    parser.add_argument("--attack", default=HEADLINE_ATTACK,
                        help="headline attack of the Price of Robustness (default: worst, over every attack)")
    parser.add_argument("--mode", default="shared", help="its shock mode")
    args = parser.parse_args(argv)
    try:
        paths = write_report(args.results_dir, args.reps, args.attack, args.mode)
    except ReportError as error:
        raise SystemExit(f"error: {error}") from None
    for path in paths:
        print(path)


if __name__ == "__main__":
    main()
