"""Trade-off fronts and the matched-robustness Price-of-Robustness difference on constructed cases with
known answers."""

import numpy as np
import pytest

from robustness.pareto import matched_por_difference, nominal_at, pareto_front


def test_pareto_front_keeps_the_non_dominated_points_sorted_by_robustness():
    robust = [1.0, 2.0, 3.0, 2.5, 0.5, 3.0]
    nominal = [9.0, 8.0, 5.0, 4.0, 8.5, 5.0]  # (2.5, 4) is dominated by (3, 5); (0.5, 8.5) by (1, 9)
    front_r, front_n = pareto_front(robust, nominal)
    np.testing.assert_array_equal(front_r, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(front_n, [9.0, 8.0, 5.0])


def test_nominal_at_interpolates_inside_the_front_and_is_nan_outside():
    front = (np.array([0.0, 2.0]), np.array([10.0, 6.0]))
    np.testing.assert_allclose(nominal_at(front, [0.0, 1.0, 2.0]), [10.0, 8.0, 6.0])
    assert np.isnan(nominal_at(front, [-0.1, 2.1])).all()


def test_matched_por_difference_of_two_parallel_fronts_is_their_gap_on_the_overlap():
    # A: N = 10 - r on [0, 5]; B: N = 8 - r on [2, 6]; overlap [2, 5]; A keeps 2 more nominal return
    a = pareto_front(np.linspace(0, 5, 6), 10 - np.linspace(0, 5, 6))
    b = pareto_front(np.linspace(2, 6, 5), 8 - np.linspace(2, 6, 5))
    assert matched_por_difference(a, b) == pytest.approx(-2.0)  # PoR_A - PoR_B: A pays 2 less
    assert matched_por_difference(b, a) == pytest.approx(2.0)


def test_matched_por_difference_of_crossing_fronts_averages_over_the_overlap():
    # A: N = 10 - 2 r, B: N = 8 - r/2... on [0, 4]: N_B - N_A = -2 + 1.5 r, mean over [0, 4] = 1
    r = np.linspace(0, 4, 9)
    a, b = pareto_front(r, 10 - 2 * r), pareto_front(r, 8 - 0.5 * r)
    assert matched_por_difference(a, b, levels=4001) == pytest.approx(1.0, abs=1e-9)


def test_fronts_that_do_not_overlap_give_nan_and_single_points_compare_at_equal_robustness():
    a = pareto_front([0.0, 1.0], [5.0, 4.0])
    b = pareto_front([2.0, 3.0], [5.0, 4.0])
    assert np.isnan(matched_por_difference(a, b))
    assert matched_por_difference(pareto_front([1.0], [4.0]), pareto_front([1.0], [3.0])) == pytest.approx(-1.0)
