"""Reporting of the robustness benchmark: IQM and bootstrap CIs (robustness.stats) and the tables,
figures and provenance written by robustness.report, on synthetic results with known values."""

import csv
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from rliable import metrics
from scipy.stats import trim_mean

from robustness import report, stats
from robustness.diagnostics import GAMMAS
from robustness.evaluate import worst_rows

REPS = 200
COMMAND = "python -m robustness.runner --preset smoke --out results/smoke"
SCENARIOS = {"routing": 0, "commons": 1}  # ratio_higher_is_better
SEEDS = (0, 1, 2, 3)
EPS = (0.0, 0.1, 0.2)
ATTACKS = (("system", "shared"), ("system", "per_agent"), ("random", "shared"), ("random_search", "shared"))
CELLS = (("ppo", 0.0), ("aajr", 0.1), ("aajr", 1.0), ("adv", 0.0))
NOISE = (0.0, 2.0, 0.5, 7.5)  # per seed: the IQM of 4 seeds trims the 0.0 and the 7.5
DROP = {"ppo": 20.0, "aajr": 5.0, "adv": 10.0}  # return lost per unit of eps


def nominal(scenario: str, method: str, coef: float, seed: int) -> float:
    """ppo's nominal return minus 1 for aajr lambda=0.1, minus 2 for lambda=1, minus 0.5 for adv
    (all exactly representable, so paired differences are exact)."""
    penalty = {("ppo", 0.0): 0.0, ("aajr", 0.1): 1.0, ("aajr", 1.0): 2.0, ("adv", 0.0): 0.5}[(method, coef)]
    return 10.0 * (1 + SCENARIOS[scenario]) + NOISE[seed] - penalty


WORST = (("worst", "shared"), ("worst", "per_agent"))
MASKED = ("aajr", 1.0)  # random search beats PGD on this cell only: the one masking warning


def attacked(scenario: str, method: str, coef: float, seed: int, attack: str, eps: float) -> float:
    scale = 0.25 if attack == "random" else 1.0
    masked = (attack == "random_search" and (method, coef) == MASKED and eps > 0) * (1.0 + 0.25 * seed)
    return nominal(scenario, method, coef, seed) - scale * DROP[method] * eps * (1 + seed) - masked


BUDGET_USE = {"none": 0.0, "system": 1.0, "random_search": 1.0, "random": 0.5}


def write_csv(path, rows):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def eval_rows():
    rows = []
    for scenario, higher in SCENARIOS.items():
        for method, coef in CELLS:
            for seed in SEEDS:
                cell = {"scenario": scenario, "method": method, "reg_coef": coef, "budget": 0.0, "seed": seed}
                grid = [("none", "-", 0.0)] + [(a, m, e) for a, m in ATTACKS for e in EPS]
                attacks = []
                for attack, mode, eps in grid:
                    ret = attacked(scenario, method, coef, seed, attack, eps)
                    attacks.append({"attack": attack, "mode": mode, "eps": eps, "return_per_agent": ret,
                                    "system_loss": -ret, "ratio_to_reference": ret / 30.0,
                                    "ratio_higher_is_better": higher, "budget_use": BUDGET_USE[attack] * (eps > 0),
                                    "worst_attack": "-"})
                rows += [{**cell, **row} for row in attacks + worst_rows(attacks)]
    return rows


def diag_rows():
    return [{"scenario": scenario, "method": method, "reg_coef": coef, "budget": 0.0, "seed": seed,
             "jvp_norm_mean": 0.5 + seed, "jvp_norm_max": 1.0 + seed, "global_norm_mean": 2.0 + seed,
             "global_norm_max": 3.0 + seed, "global_norm_all_mean": 4.0 + seed,
             **{f"frac_directional_only@{gamma:g}": 0.1 * seed for gamma in GAMMAS},
             "direction_participation_ratio": 3.0, "curvature_min": -0.1 * seed, "curvature_max": 0.2,
             "l_eff_median": 0.3, "nonmonotone_rate": 0.05, "eval_states": 256}
            for scenario in SCENARIOS for method, coef in CELLS for seed in SEEDS]


def make_results(path, evals=None, diags=None):
    path.mkdir(parents=True, exist_ok=True)
    write_csv(path / "evaluations.csv", eval_rows() if evals is None else evals)
    write_csv(path / "diagnostics.csv", diag_rows() if diags is None else diags)
    (path / "run.json").write_text(json.dumps({"command": COMMAND, "preset": "smoke", "config": {"seeds": 4}}))
    return path


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    results = make_results(tmp_path_factory.mktemp("results"))
    return results / "report", report.write_report(results, reps=REPS)


def read(out, name):
    return pd.read_csv(out / f"{name}.csv")


# ---------------------------------------------------------------- stats


def test_iqm_is_the_mean_of_the_middle_half():
    x = np.array([5.0, -3.0, 100.0, 2.0, 4.0, 1.0, 0.0, 3.0])
    estimate = stats.iqm_ci(x, reps=REPS)
    assert estimate.iqm == pytest.approx(trim_mean(x, 0.25)) == pytest.approx(np.mean([1.0, 2.0, 3.0, 4.0]))
    assert estimate.iqm == pytest.approx(metrics.aggregate_iqm(x[:, None]))
    assert estimate.lo <= estimate.iqm <= estimate.hi and estimate.n == 8


def test_runs_x_tasks_pools_the_runs_of_every_task():
    scores = np.random.default_rng(0).normal(size=(5, 3))
    estimate = stats.iqm_ci(scores, reps=REPS)
    assert estimate.iqm == pytest.approx(metrics.aggregate_iqm(scores))
    assert estimate.lo <= estimate.iqm <= estimate.hi and estimate.n == 15


def test_bootstrap_is_reproducible_and_leaves_numpy_global_state_alone():
    x = np.random.default_rng(1).normal(size=7)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first = stats.iqm_ci(x, reps=REPS)
    assert np.array_equal(np.random.get_state()[1], before)
    assert stats.iqm_ci(x, reps=REPS) == first
    assert stats.iqm_ci(x, reps=REPS, seed=1) != first


def test_one_seed_collapses_the_interval_to_the_point():
    assert stats.iqm_ci([3.25], reps=REPS) == stats.Estimate(3.25, 3.25, 3.25, 1)


def test_nan_is_refused_naming_the_cell():
    with pytest.raises(ValueError, match="routing/ppo"):
        stats.iqm_ci([1.0, np.nan, 2.0], cell="routing/ppo")
    rows = [{"scenario": "routing", "seed": 0, "x": 1.0}, {"scenario": "commons", "seed": 0, "x": np.nan}]
    with pytest.raises(ValueError, match="'x' at scenario=commons"):
        stats.aggregate(rows, "x", ["scenario"], reps=REPS)


def test_aggregate_groups_cells_with_different_numbers_of_runs():
    rows = [{"m": "a", "x": v} for v in (1.0, 2.0, 3.0, 4.0)] + [{"m": "b", "x": 7.0}]
    estimates = stats.aggregate(rows, "x", ["m"], reps=REPS)
    assert list(estimates) == [("a",), ("b",)]
    assert estimates[("a",)].iqm == pytest.approx(2.5) and estimates[("a",)].n == 4
    assert estimates[("b",)] == stats.Estimate(7.0, 7.0, 7.0, 1)


def test_differences_to_baseline_are_paired_and_checked():
    rows = [{"method": m, "seed": s, "x": 10.0 * s + d} for m, d in (("ppo", 0.0), ("a", -1.0)) for s in (0, 1)]
    paired = stats.differences_to_baseline(rows, "x", ["seed"], {"method": "ppo"})
    assert [row["x"] for row in paired] == [0.0, 0.0, -1.0, -1.0]
    with pytest.raises(ValueError, match="no baseline row.*seed=1"):
        stats.differences_to_baseline(rows[:1] + rows[2:], "x", ["seed"], {"method": "ppo"})
    with pytest.raises(ValueError, match="several baseline rows"):
        stats.differences_to_baseline(rows + rows[:1], "x", ["seed"], {"method": "ppo"})


# ---------------------------------------------------------------- report


def test_every_file_is_written(written):
    out, paths = written
    names = {path.name for path in paths}
    for table in ("learning", "robustness", "attacks", "price_of_robustness", "tradeoff", "diagnostics"):
        assert {f"{table}.md", f"{table}.csv", f"{table}.provenance.json"} <= names
    for scenario in SCENARIOS:
        assert {f"pareto_{scenario}.png", f"amplification_{scenario}.png"} <= names
        assert {f"robustness_{scenario}_{a}_{m}.png" for a, m in ATTACKS + WORST} <= names
    assert "index.md" in names
    assert all(path.is_file() and path.parent == out for path in paths)
    # 7 tables x (md, csv, sidecar), per scenario its figures, improvement.png, performance_profiles.png, index
    assert len(names) == len(paths) == 7 * 3 + 2 * (2 + len(ATTACKS + WORST)) + 2 + 1


def test_eps_zero_column_equals_the_nominal_values(written):
    out, _ = written
    table = read(out, "robustness")
    returns = table[(table.quantity == "return_per_agent") & (table.eps == 0)]
    assert len(returns) == len(SCENARIOS) * len(CELLS) * (len(ATTACKS) + 2)  # worst: shared and per_agent
    for row in returns.itertuples():
        expected = trim_mean([nominal(row.scenario, row.method, row.reg_coef, s) for s in SEEDS], 0.25)
        assert row.iqm == pytest.approx(expected)
    price = read(out, "price_of_robustness")
    price = price[price.quantity == "nominal_return"].set_index(["scenario", "method", "reg_coef"]).iqm
    system = returns[(returns.attack == "worst") & (returns["mode"] == "shared")]
    assert np.allclose(system.set_index(["scenario", "method", "reg_coef"]).iqm.sort_index(), price.sort_index())


def test_iqm_matches_a_hand_computation_and_every_ci_contains_it(written):
    out, _ = written
    table = read(out, "robustness")
    row = table[(table.scenario == "commons") & (table.method == "adv") & (table.attack == "random")
                & (table["mode"] == "shared") & (table.eps == 0.2) & (table.quantity == "return_per_agent")]
    values = [attacked("commons", "adv", 0.0, s, "random", 0.2) for s in SEEDS]
    assert row.iqm.item() == pytest.approx(trim_mean(values, 0.25))
    assert row.iqm.item() == pytest.approx(np.mean(sorted(values)[1:3]))
    assert (row.n == len(SEEDS)).all()
    ratio = table[(table.quantity == "ratio_to_reference")].iloc[0]
    assert ratio.iqm == pytest.approx(trim_mean(
        [attacked(ratio.scenario, ratio.method, ratio.reg_coef, s, ratio.attack, ratio.eps) / 30 for s in SEEDS], 0.25))
    for name in ("robustness", "attacks", "price_of_robustness", "diagnostics"):
        table = read(out, name)
        assert list(table.columns[-5:]) == ["quantity", "iqm", "ci_low", "ci_high", "n"]
        assert ((table.ci_low <= table.iqm + 1e-12) & (table.iqm <= table.ci_high + 1e-12)).all(), name


def test_price_of_robustness_is_paired_against_ppo(written):
    out, _ = written
    table = read(out, "price_of_robustness")
    assert set(table.attack) == {"worst"} and set(table["mode"]) == {"shared"}
    price = table[table.quantity == "price_of_robustness"].set_index(["scenario", "method", "reg_coef"])
    for scenario in SCENARIOS:
        for cell, lost in ((("ppo", 0.0), 0.0), (("aajr", 0.1), 1.0), (("aajr", 1.0), 2.0), (("adv", 0.0), 0.5)):
            row = price.loc[(scenario, *cell)]
            assert row.iqm == row.ci_low == row.ci_high == lost  # the same difference for every seed
    gain = table[(table.quantity == "robust_gain") & (table.method == "aajr") & (table.reg_coef == 0.1)]
    for row in gain.itertuples():  # worst = system for both (random_search only lower for aajr λ=1): ppo - aajr
        # per seed is (20 - 5) eps (1 + seed) - 1
        expected = trim_mean([15.0 * row.eps * (1 + s) - 1.0 for s in SEEDS], 0.25)
        assert row.iqm == pytest.approx(expected)
    zero = table[(table.quantity == "robust_gain") & (table.method == "ppo")]
    assert (zero[["iqm", "ci_low", "ci_high"]] == 0).all().all()


def test_worst_rows_take_the_lowest_return_per_mode_and_eps():
    rows = [{"attack": "none", "mode": "-", "eps": 0.0, "return_per_agent": 5.0}]
    for attack, shared, per_agent in (("random", 4.0, 3.0), ("system", 2.0, 3.5), ("action", 2.5, 1.0)):
        rows += [{"attack": attack, "mode": "shared", "eps": 0.0, "return_per_agent": 5.0},
                 {"attack": attack, "mode": "shared", "eps": 0.1, "return_per_agent": shared},
                 {"attack": attack, "mode": "per_agent", "eps": 0.1, "return_per_agent": per_agent}]
    worst = {(row["mode"], row["eps"]): (row["worst_attack"], row["return_per_agent"]) for row in worst_rows(rows)}
    assert worst == {("shared", 0.0): ("none", 5.0), ("shared", 0.1): ("system", 2.0),
                     ("per_agent", 0.1): ("action", 1.0)}
    assert all(row["attack"] == "worst" for row in worst_rows(rows))


def test_attack_table_budget_use_worst_counts_and_the_one_masking_warning(written):
    out, _ = written
    table = read(out, "attacks")
    use = table[table.quantity == "budget_use"]
    assert set(use.attack) == {"system", "random", "random_search"}
    assert (use[use.attack == "random"].iqm == 0.5).all() and (use[use.attack == "system"].iqm == 1.0).all()
    gaps = table[table.quantity == "masking_gap"]
    assert set(zip(gaps.method, gaps.reg_coef)) == {MASKED} and set(gaps.eps) == {0.1, 0.2}
    assert len(gaps) == len(SCENARIOS) * 2 and (gaps.ci_high < 0).all()
    for row in gaps.itertuples():  # random_search - system per seed: -(1 + 0.25 seed)
        assert row.iqm == pytest.approx(trim_mean([-(1.0 + 0.25 * s) for s in SEEDS], 0.25))
    text = (out / "attacks.md").read_text()
    assert "| aajr λ=1 | random_search 4 | random_search 4 |" in text and "| ppo | system 4 | system 4 |" in text


def test_diagnostics_table(written):
    out, _ = written
    table = read(out, "diagnostics")
    assert set(table.quantity) == set(report.DIAGNOSTICS)  # extra columns (global_norm_max) are ignored
    jvp = table[(table.quantity == "jvp_norm_mean") & (table.scenario == "routing") & (table.method == "ppo")]
    assert jvp.iqm.item() == pytest.approx(trim_mean([0.5 + s for s in SEEDS], 0.25))


def test_markdown_shows_labels_directions_and_provenance(written):
    out, _ = written
    for path in out.glob("*.md"):
        text = path.read_text()
        assert COMMAND in text and "run.json" in text and "--reps 200" in text, path.name
    robustness = (out / "robustness.md").read_text()
    assert "aajr λ=0.1" in robustness and "aajr λ=1" in robustness and "| adv |" in robustness
    assert "lower is better" in robustness and "higher is better" in robustness
    index = (out / "index.md").read_text()
    for name in ("robustness.md", "attacks.md", "price_of_robustness.csv", "diagnostics.provenance.json",
                 "pareto_routing.png", "amplification_commons.png", "robustness_commons_random_shared.png"):
        assert f"({name})" in index


def test_csv_sidecars_and_png_metadata_record_the_command(written):
    out, paths = written
    for name in ("robustness", "price_of_robustness", "diagnostics"):
        sidecar = json.loads((out / f"{name}.provenance.json").read_text())
        assert sidecar["command"] == COMMAND and sidecar["preset"] == "smoke" and sidecar["file"] == f"{name}.csv"
    for path in (p for p in paths if p.suffix == ".png"):
        with Image.open(path) as image:
            assert image.text["Source"] == COMMAND and "run.json" in image.text["Comment"]


def test_report_is_reproducible(tmp_path):
    evals = [row for row in eval_rows() if row["scenario"] == "routing"]
    diags = [row for row in diag_rows() if row["scenario"] == "routing"]
    results = make_results(tmp_path / "results", evals, diags)
    report.write_report(results, reps=50)
    first = (results / "report" / "robustness.csv").read_text()
    report.main([str(results), "--reps", "50"])
    assert (results / "report" / "robustness.csv").read_text() == first


@pytest.mark.parametrize("name, column", [("evaluations.csv", "return_per_agent"), ("diagnostics.csv", "l_eff_median")])
def test_missing_column_is_named(tmp_path, name, column):
    results = make_results(tmp_path)
    frame = pd.read_csv(results / name).drop(columns=column)
    frame.to_csv(results / name, index=False)
    with pytest.raises(ValueError, match=f"{name}: missing column.*{column}"):
        report.write_report(results, reps=REPS)


def test_nan_value_is_named_with_its_cell(tmp_path):
    evals = eval_rows()
    evals[5]["ratio_to_reference"] = float("nan")
    results = make_results(tmp_path, evals)
    cell = "scenario=routing, method=ppo, reg_coef=0.0, budget=0.0, seed=0, attack=system, mode=per_agent, eps=0.1"
    with pytest.raises(ValueError, match=f"evaluations.csv: column 'ratio_to_reference' is missing, NaN.*{cell}"):
        report.write_report(results, reps=REPS)
    diags = diag_rows()
    diags[0]["curvature_max"] = ""
    results = make_results(tmp_path, None, diags)
    with pytest.raises(ValueError, match="diagnostics.csv: column 'curvature_max'.*line 2 .scenario=routing"):
        report.write_report(results, reps=REPS)


def test_missing_baseline_and_missing_provenance_are_errors(tmp_path):
    results = make_results(tmp_path, [row for row in eval_rows() if row["method"] != "ppo"])
    with pytest.raises(ValueError, match="no baseline row .method=ppo."):
        report.write_report(results, reps=REPS)
    (results / "run.json").unlink()
    with pytest.raises(FileNotFoundError, match="run.json"):
        report.write_report(results, reps=REPS)


def test_tradeoff_table_recovers_a_constructed_gap_at_matched_robustness():
    """AAJR's front N = 15 - r and spectral's N = 14 - r on the same robustness range, shifted per seed:
    Delta PoR(aajr, spectral) = -1 in every seed; at equal (lambda, gamma) AAJR keeps 1 more nominal return."""
    settings = {("aajr", 0.1): (10.0, 5.0), ("aajr", 0.2): (8.0, 7.0),
                ("spectral", 0.1): (9.0, 5.0), ("spectral", 0.2): (7.0, 7.0)}  # (nominal, robust at eps 0.1)
    rows = []
    for seed in SEEDS:
        for (method, budget), (nominal_return, robust_return) in settings.items():
            cell = {"scenario": "routing", "method": method, "reg_coef": 1.0, "budget": budget, "seed": seed,
                    "attack": "worst", "mode": "shared"}
            rows += [{**cell, "eps": 0.0, "return_per_agent": nominal_return + seed},
                     {**cell, "eps": 0.1, "return_per_agent": robust_return + 0.5 * seed}]
    markdown, csv_rows = report.tradeoff_tables(rows, report.Labels(rows), "worst", "shared", reps=REPS)
    by_quantity = {(row["quantity"], row.get("against")): row for row in csv_rows}
    delta = by_quantity[("delta_por_matched", "spectral")]
    assert (delta["iqm"], delta["ci_low"], delta["ci_high"], delta["n"]) == pytest.approx((-1.0, -1.0, -1.0, 4))
    corollary = [row for row in csv_rows if row["quantity"] == "nominal_difference_equal_budget"]
    assert sorted(row["budget"] for row in corollary) == [0.1, 0.2]
    assert all(row["iqm"] == pytest.approx(1.0) for row in corollary)
    assert "| routing | 0.1 | spectral | -1 [-1, -1] | 4 of 4 |" in markdown
    # an unfinished seed (spectral gamma 0.2 missing in seed 3) is left out of the matched comparison: its
    # front would be one point, and the gap would come out as whatever that point says
    partial = [row for row in rows if (row["method"], row["budget"], row["seed"]) != ("spectral", 0.2, 3)]
    markdown, csv_rows = report.tradeoff_tables(partial, report.Labels(partial), "worst", "shared", reps=REPS)
    assert "| routing | 0.1 | spectral | -1 [-1, -1] | 3 of 3 |" in markdown


def test_worst_attack_counts_order_ties_as_the_rows_name_them():
    """Ties keep the rows' order, whatever the hash seed (a set's order of strings changes between runs)."""
    names = ["rollout", "learned", "random_search", "learned", "rollout", "system", "value", "spike", "action"]
    cell = ("ppo", 0.0, 0.0)
    for shift in range(len(names)):
        order = names[shift:] + names[:shift]
        rows = [{"scenario": "routing", "mode": "shared", "eps": 0.1, "method": "ppo", "reg_coef": 0.0,
                 "budget": 0.0, "worst_attack": name} for name in order]
        twice = [name for name in report.unique(order) if order.count(name) == 2]
        once = [name for name in report.unique(order) if order.count(name) == 1]
        expected = ", ".join([f"{name} 2" for name in twice] + [f"{name} 1" for name in once])
        assert report.worst_counts(rows, "routing", "shared", cell, 0.1) == expected


def test_paired_differences_pair_equal_budgets_or_a_single_setting():
    """AAJR at gamma 0.1 and 0.3 against smooth (the same two budgets), adv (one setting) and spectral (two
    other budgets: no partner); the per-seed differences are constructed: AAJR keeps 0.5 more nominal return
    than smooth at equal gamma and 1.5 more than adv, and 2 * gamma + seed more robust return than adv."""
    settings = {("aajr", 0.1): (10.0, 6.0), ("aajr", 0.3): (9.0, 7.0), ("smooth", 0.1): (9.5, 6.0),
                ("smooth", 0.3): (8.5, 7.0), ("adv", 0.0): (8.5, 6.0), ("spectral", 1.0): (9.0, 8.0),
                ("spectral", 3.0): (9.5, 5.0)}  # (nominal, robust at eps 0.1)
    rows = []
    for seed in SEEDS:
        for (method, budget), (nominal_return, robust_return) in settings.items():
            cell = {"scenario": "routing", "method": method, "reg_coef": 1.0 if budget else 0.0, "budget": budget,
                    "seed": seed, "attack": "worst", "mode": "shared"}
            extra = (2 * budget + seed) if method == "aajr" else 0.0
            rows += [{**cell, "eps": 0.0, "return_per_agent": nominal_return + seed},
                     {**cell, "eps": 0.1, "return_per_agent": robust_return + extra}]
    markdown, csv_rows = report.tradeoff_tables(rows, report.Labels(rows), "worst", "shared", reps=REPS)
    paired = {(row["eps"], row["budget"], row["against"]): row for row in csv_rows
              if row["quantity"] == "paired_difference"}
    assert set(paired) == {(eps, budget, against) for eps in (0.0, 0.1) for budget in (0.1, 0.3)
                           for against in (f"smooth γ={budget:g}", "adv")}  # spectral has no partner
    for budget in (0.1, 0.3):
        assert paired[(0.0, budget, f"smooth γ={budget:g}")]["iqm"] == pytest.approx(0.5)
        assert paired[(0.0, budget, "adv")]["iqm"] == pytest.approx(1.5 - (budget == 0.3))
        robust = paired[(0.1, budget, "adv")]  # 2 * gamma + seed over seeds 0-3: IQM of the middle two
        expected = 2 * budget + (1.5 if budget == 0.1 else 2.5)
        assert robust["iqm"] == pytest.approx(expected) and robust["n"] == len(SEEDS)
        assert robust["ci_low"] <= robust["iqm"] <= robust["ci_high"]
    assert "| routing | 0 | aajr γ=0.1 | smooth γ=0.1 | 0.5 [0.5, 0.5] | 4 |" in markdown
    missing = [row for row in rows if (row["method"], row["seed"]) != ("adv", 3)]
    _, csv_rows = report.tradeoff_tables(missing, report.Labels(missing), "worst", "shared", reps=REPS)
    assert {row["n"] for row in csv_rows if row["quantity"] == "paired_difference" and row["against"] == "adv"} == {3}


# ---------------------------------------------------------------- probability of improvement, profiles


def test_probability_of_improvement_known_answers():
    x = np.array([[3.0, 5.0], [4.0, 6.0], [5.0, 7.0]])  # seeds x tasks
    unpaired, paired = stats.probability_of_improvement(x + 1.0, x, reps=REPS)
    # every seed improves: paired = 1; over all 3 x 3 pairs per task: 6 wins, 2 ties, 1 loss -> 7/9
    assert paired.iqm == paired.lo == paired.hi == 1.0
    assert unpaired.iqm == pytest.approx(7 / 9) == pytest.approx(metrics.probability_of_improvement(x + 1, x))
    unpaired, paired = stats.probability_of_improvement(x + 10.0, x, reps=REPS)
    assert (unpaired.iqm, unpaired.lo, unpaired.hi, paired.iqm) == (1.0, 1.0, 1.0, 1.0)
    unpaired, paired = stats.probability_of_improvement(x, x, reps=REPS)
    assert unpaired.iqm == paired.iqm == 0.5 and unpaired.n == 6
    # one task where X wins every seed, one where it loses every seed: the average over tasks is 1/2
    mixed = x.copy()
    mixed[:, 1] -= 10.0
    assert stats.probability_of_improvement(mixed + 0.5, x, reps=REPS)[1].iqm == 0.5


def test_probability_of_improvement_refuses_unpaired_or_nan_scores():
    with pytest.raises(stats.ReportError, match="same shape"):
        stats.probability_of_improvement(np.zeros((3, 2)), np.zeros((4, 2)))
    with pytest.raises(stats.ReportError, match="NaN"):
        stats.probability_of_improvement(np.array([1.0, np.nan]), np.array([0.0, 0.0]))


def test_performance_profile_is_the_fraction_of_runs_above_tau():
    scores = {"a": np.array([[0.1, 0.5], [0.2, 0.9], [0.3, 0.7]]), "b": np.full((3, 2), 0.4)}
    taus = np.array([0.0, 0.25, 0.6, 1.0])
    profiles = stats.performance_profiles(scores, taus, reps=REPS)
    np.testing.assert_allclose(profiles["a"][0], [1.0, 4 / 6, 2 / 6, 0.0])  # 0.3 0.5 0.7 0.9 > 0.25; 0.7 0.9 > 0.6
    np.testing.assert_allclose(profiles["b"][0], [1.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(profiles["b"][1], profiles["b"][2])  # identical runs: the CI collapses
    assert np.all(profiles["a"][1] <= profiles["a"][0]) and np.all(profiles["a"][0] <= profiles["a"][2])


def test_normalised_score_is_higher_is_better_with_one_at_the_reference():
    welfare = {"ratio_to_reference": 0.8, "ratio_higher_is_better": 1}
    cost = {"ratio_to_reference": 1.25, "ratio_higher_is_better": 0}
    assert report.normalised_score(welfare) == 0.8 and report.normalised_score(cost) == 0.75
    assert report.normalised_score({**cost, "ratio_to_reference": 1.0}) == 1.0


def test_report_writes_improvement_tables_and_figures(written):
    out, paths = written
    names = {path.name for path in paths}
    assert {"improvement.md", "improvement.csv", "improvement.provenance.json", "improvement.png",
            "performance_profiles.png"} <= names
    table = read(out, "improvement")
    # routing is a cost scenario: 2 - ret/30 is higher for aajr λ=1 (lower return) than ppo in every seed at eps 0
    row = table[(table.scenario == "routing") & (table.eps == 0) & (table.reg_coef == 1.0) & (table.against == "ppo")
                & (table.quantity == "paired_win_rate")]
    assert row.iqm.tolist() == [1.0]
    commons = table[(table.scenario == "commons") & (table.eps == 0) & (table.against == "ppo")
                    & (table.quantity == "paired_win_rate")]
    assert commons.iqm.tolist() == [0.0, 0.0]
    aggregate = table[(table.scenario == "all") & (table.quantity == "normalised_score_iqm")]
    assert len(aggregate) == len(CELLS) * len(EPS) and set(aggregate.n) == {len(SEEDS) * len(SCENARIOS)}
    ppo0 = aggregate[(aggregate.method == "ppo") & (aggregate.eps == 0)].iqm.item()
    expected = [10.0 * (1 + SCENARIOS[s]) + NOISE[seed] for s in SCENARIOS for seed in SEEDS]
    scores = [e / 30 if SCENARIOS[s] else 2 - e / 30 for e, s in zip(expected, np.repeat(list(SCENARIOS), len(SEEDS)))]
    assert ppo0 == pytest.approx(trim_mean(scores, 0.25))
    index = (out / "index.md").read_text()
    assert "improvement.png" in index and "performance_profiles.png" in index and "[CSV](improvement.csv)" in index
    assert "Learning curves: not drawn" in index
    assert Image.open(out / "performance_profiles.png").info["Source"] == COMMAND
    assert (out / "improvement.md").read_text().rstrip().endswith("bootstrap seed 0).")


def write_run_dirs(results, eval_column):
    """cells/*.json and runs/<cell>/metrics.csv for every cell of the fixture: return = steps / 100 + seed."""
    for scenario in SCENARIOS:
        for method, coef in CELLS:
            for seed in SEEDS:
                name = f"{scenario}-{method}-lam{coef:g}-seed{seed}"
                (results / "cells").mkdir(exist_ok=True)
                (results / "cells" / f"{name}.json").write_text(json.dumps({
                    "cell": {"scenario": scenario, "method": method, "reg_coef": coef, "seed": seed, "budget": 0.0},
                    "training": {"agent_steps": 400}}))
                run = results / "runs" / name
                run.mkdir(parents=True, exist_ok=True)
                rows = [{"iteration": i, "charts/agent_steps": 100 * i, "charts/episodic_return": i + seed,
                         **({"eval/return_per_agent": -(i + seed)} if eval_column and i % 2 == 0 else {})}
                        for i in range(1, 5)]
                pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False)


@pytest.mark.parametrize("eval_column", [False, True])
def test_learning_curves_read_the_run_directories(tmp_path, eval_column):
    results = make_results(tmp_path / "results")
    write_run_dirs(results, eval_column)
    (results / "cells" / "broken.json").write_text("{broken")  # unreadable cell with a run: left out, no crash
    (results / "runs" / "broken").mkdir()
    (results / "runs" / "broken" / "metrics.csv").write_text("charts/agent_steps,charts/episodic_return\n1,2\n")
    curves, column = report.learning_curves(results)
    assert column == ("eval/return_per_agent" if eval_column else "charts/episodic_return")
    assert sum(len(runs) for runs in curves.values()) == len(list((results / "cells").glob("*.json"))) - 1
    steps, values = curves[("routing", "aajr", 0.1, 0.0)][3]
    assert steps.tolist() == ([200.0, 400.0] if eval_column else [100.0, 200.0, 300.0, 400.0])
    assert values.tolist() == ([-5.0, -7.0] if eval_column else [4.0, 5.0, 6.0, 7.0])
    grid, resampled = report.resample_curves(curves[("routing", "aajr", 0.1, 0.0)], points=3)
    assert grid.tolist() == ([200.0, 300.0, 400.0] if eval_column else [100.0, 250.0, 400.0])
    assert resampled.shape == (len(SEEDS), 3)
    labels = report.Labels(report.read_table(results / "evaluations.csv", report.EVAL_KEYS, report.EVAL_VALUES))
    fig = report.learning_curve_figure(curves, labels, "routing", column)
    assert len(fig.axes[0].lines) == len(CELLS)


def step_rows():
    """Per cell and c: 10 steps with eta*L_seg <= 1 (none non-monotone), 0 in (1, 2], and in (2, inf] 4
    steps of which c * (seed + 1) / 8 * 4 are non-monotone (0 steps: NaN rate, as the runner writes it)."""
    rows = []
    for scenario in SCENARIOS:
        for method, coef in CELLS:
            for seed in SEEDS:
                for c in (1.0, 2.0):
                    bad = int(c * (seed + 1) / 8 * 4)
                    rows.append({"scenario": scenario, "method": method, "reg_coef": coef, "budget": 0.0,
                                 "seed": seed, "eta_factor": c, "eta": c / 0.3, "steps": 14,
                                 "nonmonotone_rate": bad / 14,
                                 "steps_etaL_0_1": 10, "nonmonotone_rate_etaL_0_1": 0.0,
                                 "steps_etaL_1_2": 0, "nonmonotone_rate_etaL_1_2": "nan",
                                 "steps_etaL_2_inf": 4, "nonmonotone_rate_etaL_2_inf": bad / 4})
    return rows


def test_step_size_table_pools_counts_per_bin_and_rates_per_eta(tmp_path):
    results = make_results(tmp_path)
    write_csv(results / "step_sizes.csv", step_rows())
    paths = report.write_report(results, reps=REPS)
    assert results / "report" / "step_sizes.md" in paths and results / "report" / "step_sizes_routing.png" in paths
    table = read(results / "report", "step_sizes")
    rates = table[table.quantity == "nonmonotone_rate"]
    row = rates[(rates.scenario == "routing") & (rates.method == "ppo") & (rates.eta_factor == 2.0)].iloc[0]
    per_seed = [int(2.0 * (seed + 1) / 8 * 4) / 14 for seed in SEEDS]  # 1, 2, 3, 4 of 14
    assert row.iqm == pytest.approx(trim_mean(per_seed, 0.25)) and row.n == len(SEEDS)
    pooled = table[(table.quantity == "pooled_nonmonotone_rate") & (table.scenario == "commons")
                   & (table.method == "aajr")].set_index("eta_l_bin")
    bad = 2 * sum(int(c * (seed + 1) / 8 * 4) for c in (1.0, 2.0) for seed in SEEDS)  # two aajr settings
    assert pooled.loc["etaL_2_inf", "nonmonotone_steps"] == bad
    assert pooled.loc["etaL_2_inf", "steps"] == 2 * 2 * len(SEEDS) * 4
    assert pooled.loc["etaL_0_1", "rate"] == 0 and pooled.loc["etaL_1_2", "steps"] == 0
    assert np.isnan(pooled.loc["etaL_1_2", "rate"])
    markdown = (results / "report" / "step_sizes.md").read_text()
    assert f"{bad / 64:.3g} ({bad} of 64)" in markdown and "– (0 steps)" in markdown
    assert "clip" not in markdown and "clip" not in set(table.eta_l_bin.dropna())  # results without the clip count
    assert "step_sizes.md" in (results / "report" / "index.md").read_text()


def clip_step_rows():
    """``step_rows`` with 2 more steps per cell and c that cross the normaliser's clip, counted apart from
    the bins (``steps_clip``): one of them non-monotone for odd seeds."""
    rows = step_rows()
    for row in rows:
        clip_bad = row["seed"] % 2
        bad = round(row["nonmonotone_rate"] * row["steps"]) + clip_bad
        row.update(steps=16, nonmonotone_rate=bad / 16, steps_clip=2, nonmonotone_rate_clip=clip_bad / 2)
    return rows


def test_step_size_table_counts_the_steps_crossing_the_clip_in_a_column_apart(tmp_path):
    results = make_results(tmp_path)
    write_csv(results / "step_sizes.csv", clip_step_rows())
    report.write_report(results, reps=REPS)
    table = read(results / "report", "step_sizes")
    pooled = table[(table.quantity == "pooled_nonmonotone_rate") & (table.scenario == "commons")
                   & (table.method == "aajr")].set_index("eta_l_bin")
    clip_steps, clip_bad = 2 * 2 * len(SEEDS) * 2, 2 * 2 * 2  # two aajr settings, two c, one bad step per odd seed
    assert (pooled.loc["clip", "steps"], pooled.loc["clip", "nonmonotone_steps"]) == (clip_steps, clip_bad)
    bad = 2 * sum(int(c * (seed + 1) / 8 * 4) for c in (1.0, 2.0) for seed in SEEDS)  # the bins as without clip
    assert (pooled.loc["etaL_2_inf", "steps"], pooled.loc["etaL_2_inf", "nonmonotone_steps"]) == (64, bad)
    markdown = (results / "report" / "step_sizes.md").read_text()
    assert "crossing the normaliser's clip (left out of the bins) |" in markdown and "are counted apart" in markdown
    aajr = next(line for line in markdown.splitlines() if line.startswith("| aajr |") and "of 64" in line)
    assert aajr.endswith(f"| {bad / 64:.3g} ({bad} of 64) | 0.25 ({clip_bad} of {clip_steps}) |")
    assert "steps crossing the normaliser's clip left out" in (results / "report" / "index.md").read_text()
    rows = clip_step_rows()
    rows[3].update(steps_clip=0)  # a rate over no step
    write_csv(results / "step_sizes.csv", rows)
    labels = report.Labels(report.read_table(results / "evaluations.csv", report.EVAL_KEYS, report.EVAL_VALUES))
    with pytest.raises(report.ReportError, match="nonmonotone_rate_clip is 0.5 with steps_clip = 0"):
        report.step_size_tables(report.read_step_sizes(results / "step_sizes.csv"), labels, REPS)


def test_step_sizes_are_read_with_or_without_the_clip_count_but_not_both(tmp_path):
    path = tmp_path / "step_sizes.csv"
    write_csv(path, step_rows())
    assert not any("steps_clip" in row for row in report.read_step_sizes(path))
    write_csv(path, clip_step_rows())
    assert [row["steps_clip"] for row in report.read_step_sizes(path)] == [2] * len(step_rows())
    rows = clip_step_rows()
    for row in rows[5:]:  # cells merged from older code: the runner writes their clip columns empty
        del row["steps_clip"], row["nonmonotone_rate_clip"]
    write_csv(path, rows)
    with pytest.raises(report.ReportError, match=f"^step_sizes.csv: steps_clip is empty in {len(rows) - 5} of "
                                                 f"{len(rows)} rows \\(first: line 7\\): cells of code before"):
        report.read_step_sizes(path)


def test_step_size_table_refuses_a_bad_rate_and_is_optional(tmp_path):
    results = make_results(tmp_path)
    rows = step_rows()
    rows[3]["nonmonotone_rate_etaL_0_1"] = "oops"
    write_csv(results / "step_sizes.csv", rows)
    with pytest.raises(ValueError, match="step_sizes.csv: column 'nonmonotone_rate_etaL_0_1'.*'oops'"):
        report.write_report(results, reps=REPS)
    rows = step_rows()
    rows[3]["nonmonotone_rate_etaL_1_2"] = 0.0  # a rate over no step
    write_csv(results / "step_sizes.csv", rows)
    with pytest.raises(ValueError, match="nonmonotone_rate_etaL_1_2 is 0.0 with steps_etaL_1_2 = 0"):
        report.write_report(results, reps=REPS)
    write_csv(results / "step_sizes.csv", step_rows())
    report.write_report(results, reps=REPS)
    (results / "step_sizes.csv").unlink()
    report.write_report(results, reps=REPS)
    assert (results / "report" / "step_sizes.md").exists()  # a stale file of the earlier report
    assert "step_sizes.md" not in (results / "report" / "index.md").read_text()


def test_learning_table_counts_the_seeds_meeting_each_scenarios_target(written):
    """Nominal ratios are return / 30: routing (cost, target <= 1.05) meets it everywhere; commons
    (welfare, >= 0.90) only where the return reaches 27: seed 3 of ppo (20 + 7.5) and adv (20 + 7.5 - 0.5)."""
    out, _ = written
    table = read(out, "learning")
    for (scenario, method, coef), group in table.groupby(["scenario", "method", "reg_coef"]):
        expected = [nominal(scenario, method, coef, seed) / 30 >= 0.9 if scenario == "commons" else True
                    for seed in group.seed]
        assert list(group.meets_target) == expected
    assert ((table.scenario == "commons") & table.meets_target).sum() == 2
    markdown = (out / "learning.md").read_text()
    assert "learning target <= 1.05" in markdown and "learning target >= 0.9" in markdown
    assert "| ppo | " in markdown and "1 of 4 |" in markdown and "0 of 4 |" in markdown
    assert "0: 0.3333, 1: 0.4000, 2: 0.3500, 3: 0.5833" in markdown  # routing ppo: (10 + noise) / 30 per seed


def test_improvement_figure_draws_an_interval_that_excludes_its_point():
    """With two seeds a percentile bootstrap CI can miss its own point estimate (the corollary grid's
    paired win rate did); the figure draws it as it is instead of failing on negative error bars."""
    outside = stats.Estimate(1.0, 0.25, 0.75, 2)
    fig = report.improvement_figure({(0.1, "spectral γ=0.1"): (stats.Estimate(0.5, 0.2, 0.8, 2), outside)}, "worst")
    segments = [list(line.get_xdata()) for line in fig.axes[0].lines if line.get_marker() == "|"]
    assert segments == [[0.2, 0.8], [0.25, 0.75]]


def test_index_says_how_much_of_the_grid_the_results_hold(tmp_path):
    from robustness.runner import BenchmarkConfig

    grid = BenchmarkConfig(scenarios=("routing", "commons"), methods=("ppo", "aajr", "adv"), seeds=SEEDS,
                           reg_coefs=(0.1, 1.0))
    evals = [row for row in eval_rows() if (row["scenario"], row["method"], row["seed"]) != ("routing", "adv", 3)]
    results = make_results(tmp_path, evals)
    (results / "run.json").write_text(json.dumps({"command": COMMAND, "preset": "-", "config": grid.to_dict()}))
    report.write_report(results, reps=REPS)
    index = (results / "report" / "index.md").read_text()
    assert ("Completeness: 31 of the grid's 32 cells (a partial grid, not finished); seeds with every setting: "
            "0, 1, 2; begun: 3.") in index
    results = make_results(tmp_path)
    (results / "run.json").write_text(json.dumps({"command": COMMAND, "preset": "-", "config": grid.to_dict()}))
    report.write_report(results, reps=REPS)
    assert "32 of the grid's 32 cells (the whole grid); seeds with every setting: 0, 1, 2, 3." in (
        results / "report" / "index.md").read_text()


@pytest.mark.parametrize("name", ["routing", "commons", "compute"])
def test_learning_target_direction_follows_the_sign_of_the_reference_loss(name):
    """A welfare ratio (reference loss < 0: the loss is minus a welfare) must be at least its bound, a cost
    ratio at most: the direction of ``learning_target`` is what ``ratio_higher_is_better`` says."""
    import envs
    from agents.evaluate import TARGET_REFERENCE
    from envs.core import meets_learning_target
    from envs.vector import evaluate_policy

    scenario = envs.make_scenario(name, **envs.SCENARIOS[name].presets["small"])
    reference = TARGET_REFERENCE[name]
    loss = evaluate_policy(scenario, lambda state: scenario.reference_action(state, reference), 4, 0)["system_loss"]
    op, bound = envs.SCENARIOS[name].learning_target
    assert op == (">=" if loss < 0 else "<=")
    assert meets_learning_target(name, 1.0) and 0.5 < bound < 2.0


def test_segment_points_are_read_from_the_diagnostics(tmp_path):
    """The step-size table names the curvature samples per segment: the cells' record, or 4 for cells
    made before it was recorded; a mix is named value by value."""
    path = tmp_path / "diagnostics.csv"
    write_csv(path, diag_rows())
    assert report.segment_points(path) == "4"
    write_csv(path, [{**row, "segment_points": 16} for row in diag_rows()])
    assert report.segment_points(path) == "16"
    rows = [{**row, "segment_points": 16 if index >= 3 else ""} for index, row in enumerate(diag_rows())]
    write_csv(path, rows)
    assert report.segment_points(path) == f"4 in 3 cells, 16 in {len(rows) - 3} cells"
    results = make_results(tmp_path / "results", diags=[{**row, "segment_points": 16} for row in diag_rows()])
    write_csv(results / "step_sizes.csv", step_rows())
    report.write_report(results, reps=REPS)
    assert "sampled at 16 points of the step's own segment" in (results / "report" / "step_sizes.md").read_text()
