"""Aggregation over seeds: interquartile mean (IQM) with stratified-bootstrap confidence intervals.

IQM of n scores sorted as x_(1) <= ... <= x_(n), the mean of the middle 50% of runs:

    IQM = 1 / (n - 2k) * sum_{i = k+1}^{n-k} x_(i),    k = floor(n / 4)

(``scipy.stats.trim_mean(x, 0.25)``, which is ``rliable.metrics.aggregate_iqm``). For a runs x tasks
array the runs of every task are pooled. With n < 4 nothing is trimmed (the plain mean).

95% confidence interval: stratified bootstrap (``rliable.library.get_interval_estimates``, percentile
method): a replicate resamples the runs (seeds) with replacement separately within each task,
and the interval is the 2.5% and 97.5% percentiles of the IQMs of ``reps`` replicates. With a
single run every replicate is that run: the interval collapses to the point.

Probability of improvement (Agarwal et al. 2021, ``rliable.metrics.probability_of_improvement``) of X
over Y on runs x tasks scores: per task, P(X > Y) over every pair of runs (ties count 1/2, the
Mann-Whitney U statistic over n_x * n_y), averaged over tasks; beside it the paired win rate, the
fraction of seeds in which X beats Y. Their CIs come from one bootstrap that resamples the seeds within
each task and keeps X's and Y's run of a seed together (``probability_of_improvement``).

Performance profile (score distribution, ``rliable.library.create_performance_profile``): at threshold
tau, the fraction of runs, all tasks pooled, whose score exceeds tau; CIs by the same stratified bootstrap.

Reproducibility: rliable 1.2 draws the resampling indices from NumPy's global generator (its
``random_state`` argument does not reach them), so every call seeds the global generator with
``seed`` and restores its previous state afterwards. Many cells bootstrapped in one call (a runs x
tasks x cells array) share the replicates' random stream: the result is a function of the input
array and the seed.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from rliable import library
from scipy.stats import trim_mean

from robustness import ReportError

CONFIDENCE = 0.95
REPS = 2000
BOOTSTRAP_SEED = 0


@dataclasses.dataclass(frozen=True)
class Estimate:
    """IQM of ``n`` scores and its confidence interval ``[lo, hi]``."""

    iqm: float
    lo: float
    hi: float
    n: int

    def __str__(self) -> str:
        return f"{self.iqm:.4g} [{self.lo:.4g}, {self.hi:.4g}]"


def pooled_iqm(scores: np.ndarray) -> np.ndarray:
    """IQM of each cell of a runs x tasks x cells array, runs and tasks pooled (one value per cell)."""
    scores = np.asarray(scores, dtype=float)
    return trim_mean(scores.reshape(-1, scores.shape[-1]), 0.25, axis=0)


def iqm_cis(scores: np.ndarray, cells: Sequence[str], reps: int = REPS, seed: int = BOOTSTRAP_SEED) -> list[Estimate]:
    """IQM and stratified-bootstrap CI of every cell of a runs x tasks x cells array, in one bootstrap.

    ``cells`` names the cells (in error messages): NaN or infinite scores are refused.
    """
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 3 or scores.shape[2] != len(cells) or scores.size == 0:
        raise ReportError(f"expected a non-empty runs x tasks x cells array for {len(cells)} cells, got {scores.shape}")
    bad = np.flatnonzero(~np.isfinite(scores).all(axis=(0, 1)))
    if bad.size:
        raise ReportError("NaN or infinite score in " + "; ".join(cells[i] for i in bad))
    with seeded_bootstrap(seed):
        points, intervals = library.get_interval_estimates(
            {"scores": scores}, pooled_iqm, reps=reps, confidence_interval_size=CONFIDENCE)
    n = scores.shape[0] * scores.shape[1]
    lows, highs = intervals["scores"]
    return [Estimate(float(p), float(lo), float(hi), n) for p, lo, hi in zip(points["scores"], lows, highs)]


@contextlib.contextmanager
def seeded_bootstrap(seed: int) -> Iterator[None]:
    """NumPy's global generator (rliable's bootstrap draws from it) seeded by ``seed``, restored afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def improvement_probabilities(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """P(X > Y) over every pair of runs and over the seeds (row i of ``x`` with row i of ``y``), ties
    counting 1/2, per task and averaged over tasks, of ``... x runs x tasks`` arrays (leading batch axes)."""
    def wins(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a > b) + 0.5 * (a == b)
    every_pair = wins(x[..., :, None, :], y[..., None, :, :]).mean(axis=(-3, -2, -1))
    return every_pair, wins(x, y).mean(axis=(-2, -1))


def probability_of_improvement(x: np.ndarray, y: np.ndarray, name: str = "P(X > Y)", reps: int = REPS,
                               seed: int = BOOTSTRAP_SEED) -> tuple[Estimate, Estimate]:
    """rliable's P(X > Y) (every pair of runs) and the paired win rate (the fraction of seeds in which X
    beats Y) of two runs x tasks arrays whose rows are the same seeds, ties counting 1/2.

    One bootstrap gives both CIs: a replicate resamples the seeds within each task and keeps X's and
    Y's run of a seed together (rliable's ``StratifiedBootstrap`` resamples every entry of an extra
    axis independently, so it cannot pair; its ``StratifiedIndependentBootstrap`` does not pair either).
    ``Estimate.iqm`` holds the probability; percentile interval, as everywhere here.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim == 1 and y.ndim == 1:
        x, y = x[:, None], y[:, None]
    if x.shape != y.shape or x.ndim != 2 or x.size == 0:
        raise ReportError(f"{name}: expected two runs x tasks arrays of the same shape (paired by seed), got "
                         f"{x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ReportError(f"NaN or infinite score in {name}")
    runs, tasks = x.shape
    indices = np.random.default_rng(seed).integers(0, runs, size=(reps, runs, tasks))
    columns = np.arange(tasks)
    replicates = improvement_probabilities(x[indices, columns], y[indices, columns])
    # the points from the replicates' own formula (rliable's equals it up to rounding, which could put a
    # point one ulp outside an interval that it bounds)
    points = improvement_probabilities(x, y)
    tail = 100 * (1 - CONFIDENCE) / 2
    unpaired, paired = (Estimate(float(point), *map(float, np.percentile(values, [tail, 100 - tail])), x.size)
                        for point, values in zip(points, replicates))
    return unpaired, paired


def performance_profiles(scores: Mapping[str, np.ndarray], taus: np.ndarray, reps: int = REPS,
                         seed: int = BOOTSTRAP_SEED) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Score distributions: per name, ``(profile, lo, hi)`` over ``taus``, ``profile[i]`` the fraction of
    the runs x tasks scores above ``taus[i]``, with stratified-bootstrap CIs."""
    arrays = {name: np.asarray(value, dtype=float).reshape(len(value), -1) for name, value in scores.items()}
    bad = [name for name, value in arrays.items() if value.size == 0 or not np.isfinite(value).all()]
    if bad:
        raise ReportError("empty, NaN or infinite scores in the performance profile of " + "; ".join(bad))
    with seeded_bootstrap(seed):
        profiles, intervals = library.create_performance_profile(
            arrays, np.asarray(taus, dtype=float), reps=reps, confidence_interval_size=CONFIDENCE)
    return {name: (np.asarray(profiles[name]), *np.asarray(intervals[name])) for name in arrays}


def iqm_ci(scores: np.ndarray, cell: str = "scores", reps: int = REPS, seed: int = BOOTSTRAP_SEED) -> Estimate:
    """IQM and CI of one cell: ``scores`` is a vector of runs (one task) or a runs x tasks array."""
    scores = np.asarray(scores, dtype=float)
    if scores.ndim == 1:
        scores = scores[:, None]
    if scores.ndim != 2:
        raise ReportError(f"{cell}: expected runs or runs x tasks scores, got shape {scores.shape}")
    return iqm_cis(scores[..., None], [cell], reps, seed)[0]


def describe(keys: Sequence[str], values: Sequence[Any]) -> str:
    """``"scenario=routing, method=ppo"``: a cell named by its keys."""
    return ", ".join(f"{key}={value}" for key, value in zip(keys, values))


def aggregate(rows: Sequence[Mapping[str, Any]], value: str, by: Sequence[str], reps: int = REPS,
              seed: int = BOOTSTRAP_SEED) -> dict[tuple, Estimate]:
    """IQM [CI] of ``row[value]`` over the rows (runs) of each cell, a cell being the rows that share
    the ``by`` keys; one task per cell. Keys of the result: the ``by`` values, in first-seen order."""
    cells: dict[tuple, list[float]] = {}
    for row in rows:
        cells.setdefault(tuple(row[key] for key in by), []).append(float(row[value]))
    by_runs: dict[int, list[tuple]] = {}
    for key, values in cells.items():  # cells with the same number of runs are bootstrapped together
        by_runs.setdefault(len(values), []).append(key)
    estimates = {}
    for keys in by_runs.values():
        scores = np.array([cells[key] for key in keys]).T[:, None, :]
        names = [f"{value!r} at {describe(by, key)}" for key in keys]
        estimates.update(zip(keys, iqm_cis(scores, names, reps, seed)))
    return {key: estimates[key] for key in cells}


def differences_to_baseline(rows: Sequence[Mapping[str, Any]], value: str, match: Sequence[str],
                            baseline: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Paired differences: every row with ``row[value] - base[value]``, where ``base`` is the one row
    that has the ``baseline`` items (e.g. method=ppo) and the same ``match`` keys (e.g. scenario and
    seed). Baseline rows get exactly 0. A missing or ambiguous baseline row is an error."""
    reference: dict[tuple, float] = {}
    for row in rows:
        if all(row[key] == item for key, item in baseline.items()):
            key = tuple(row[k] for k in match)
            if key in reference:
                raise ReportError(f"several baseline rows ({describe(list(baseline), list(baseline.values()))}) "
                                 f"at {describe(match, key)}: the baseline must be unique")
            reference[key] = float(row[value])
    paired = []
    for row in rows:
        key = tuple(row[k] for k in match)
        if key not in reference:
            raise ReportError(f"no baseline row ({describe(list(baseline), list(baseline.values()))}) at "
                             f"{describe(match, key)} to pair {describe(list(row), list(row.values()))} with")
        paired.append({**row, value: float(row[value]) - reference[key]})
    return paired
