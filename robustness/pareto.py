"""Trade-off fronts of nominal against robust return, and the Price-of-Robustness difference of two
methods at matched robustness (the comparison of Corollary 1).

A method run at several settings (lambdas and/or hinge budgets gamma) gives, per seed, points
``(robust return R(eps), nominal return R(0))``. Its **front** is the set of non-dominated points
(no other point has both a higher robust and a higher nominal return), sorted by robust return, and
linearly interpolated between them: ``N_m(r)``, the nominal return the method keeps at robustness r,
defined on ``[min r, max r]`` of its front.

Two methods A and B are compared at matched robustness: on the overlap ``[r_lo, r_hi]`` of their
fronts' ranges,

    Delta PoR(A, B) = mean_{r in [r_lo, r_hi]} ( N_B(r) - N_A(r) )  =  mean ( PoR_A(r) - PoR_B(r) )

(``PoR = R_ppo(0) - R(0)``, the same baseline for both, so it cancels): negative when A pays less
nominal return than B for the same robustness. The mean is over ``LEVELS`` evenly spaced levels; a
single-level overlap is that level; no overlap gives NaN (the fronts do not reach a common robustness).
"""

from __future__ import annotations

import numpy as np

LEVELS = 65  # robustness levels at which two fronts are compared


def pareto_front(robust: np.ndarray, nominal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The non-dominated points of ``(robust, nominal)`` (both maximised; duplicates once), sorted by
    robust return ascending (so nominal return descending)."""
    robust, nominal = np.asarray(robust, dtype=float), np.asarray(nominal, dtype=float)
    order = np.lexsort((-nominal, -robust))  # by robust descending, then nominal descending
    keep_r, keep_n = [], []
    best_nominal = -np.inf
    for index in order:
        if nominal[index] > best_nominal:  # no point with at least this robustness keeps more nominal return
            keep_r.append(robust[index])
            keep_n.append(nominal[index])
            best_nominal = nominal[index]
    return np.array(keep_r[::-1]), np.array(keep_n[::-1])


def nominal_at(front: tuple[np.ndarray, np.ndarray], levels: np.ndarray) -> np.ndarray:
    """``N(r)`` of a front at robustness ``levels`` (linear between its points; NaN outside its range)."""
    robust, nominal = front
    levels = np.asarray(levels, dtype=float)
    values = np.interp(levels, robust, nominal)
    return np.where((levels >= robust[0]) & (levels <= robust[-1]), values, np.nan)


def matched_por_difference(front_a: tuple[np.ndarray, np.ndarray], front_b: tuple[np.ndarray, np.ndarray],
                           levels: int = LEVELS) -> float:
    """``Delta PoR(A, B)`` of the module docstring: the mean of ``N_B(r) - N_A(r)`` over the overlap of the
    fronts' robustness ranges (NaN when they do not overlap)."""
    low = max(front_a[0][0], front_b[0][0])
    high = min(front_a[0][-1], front_b[0][-1])
    if not low <= high:
        return float("nan")
    grid = np.linspace(low, high, levels) if high > low else np.array([low])
    return float(np.mean(nominal_at(front_b, grid) - nominal_at(front_a, grid)))
