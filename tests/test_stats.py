"""refpg.stats.mean_test, the statistical test every unbiasedness check rests on: its formulas term by term,
its exact-coordinate rule, its bad inputs, and its false-alarm rate measured (issue #14)."""

import re

import numpy as np
import pytest
from scipy import stats as st

from refpg import errors
from refpg.stats import DEFAULT_ALPHA, mean_test


def samples(n=40, shape=(3,), seed=0):
    return np.random.default_rng(seed).normal(size=(n, *shape))


def test_z_is_the_mean_difference_over_the_standard_error_with_ddof_1():
    X = samples()
    mu = np.array([0.1, -0.2, 0.0])
    res = mean_test(X, mu)
    se = X.std(axis=0, ddof=1) / np.sqrt(len(X))
    np.testing.assert_allclose(res.stderr, se, rtol=1e-15)
    np.testing.assert_allclose(res.z, (X.mean(axis=0) - mu) / se, rtol=1e-14)
    np.testing.assert_array_equal(res.mean, X.mean(axis=0))
    np.testing.assert_array_equal(res.expected, mu)
    assert res.n == 40 and res.alpha == DEFAULT_ALPHA == 1e-6


@pytest.mark.parametrize("student", [False, True])
def test_threshold_is_the_bonferroni_quantile_of_the_normal_by_default_or_of_student_t(student):
    X = samples(n=12, shape=(4,))
    res = mean_test(X, np.zeros(4), alpha=0.01, **({"student": True} if student else {}))
    tail = 0.01 / (2 * 4)
    assert res.threshold == pytest.approx(st.t.isf(tail, 11) if student else st.norm.isf(tail), rel=1e-14)


def test_only_the_tested_coordinates_count_in_bonferroni_and_the_others_get_z_zero():
    X = samples(shape=(4,))
    res = mean_test(X, np.full(4, 5.0), alpha=0.01, tested=[True, False, True, False])
    assert res.threshold == pytest.approx(st.norm.isf(0.01 / 4), rel=1e-14)
    assert res.z[1] == res.z[3] == 0.0 and abs(res.z[0]) > 10 and abs(res.z[2]) > 10
    none = mean_test(X, np.full(4, 5.0), alpha=0.01, tested=[False] * 4)
    assert not none.rejected and none.threshold == pytest.approx(st.norm.isf(0.01 / 2), rel=1e-14)  # k = max(1, 0)


def test_rejected_means_some_absolute_z_strictly_above_the_threshold():
    X = samples(n=200, shape=(2,))
    base = mean_test(X, np.zeros(2), alpha=0.05)
    se = base.stderr
    # Place mu so that coordinate 0's z is just below / just above the threshold, coordinate 1 at 0.
    for factor, rejected in [(0.999, False), (1.001, True)]:
        mu = X.mean(axis=0) - np.array([factor * base.threshold * se[0], 0.0])
        res = mean_test(X, mu, alpha=0.05)
        assert res.rejected is rejected, (factor, res)
        assert res.worst == (0,)
    low = mean_test(X, X.mean(axis=0) + np.array([0.0, 1.001 * base.threshold * se[1]]), alpha=0.05)
    assert low.rejected and low.worst == (1,) and low.z[1] < 0  # both tails


def test_a_coordinate_without_spread_is_exact_rejected_beyond_exact_atol_relative_to_max_1_mu():
    X = np.column_stack([np.full(10, 2.0), np.full(10, 300.0), np.arange(10.0)])
    mu = np.array([2.0 + 1.5e-12, 300.0 + 2e-10, 4.5])
    res = mean_test(X, mu)
    # |diff| 1.5e-12 > 1e-12 * max(1, 2) = 2e-12? no; 2e-10 > 1e-12 * 300 = 3e-10? no.
    assert not res.rejected and res.z[0] == res.z[1] == 0.0
    res = mean_test(X, mu, exact_atol=0.5e-12)
    assert res.rejected and np.isinf(res.z[0]) and res.z[0] < 0 and np.isinf(res.z[1]) and res.z[1] < 0
    assert res.z[2] == 0.0
    assert mean_test(X, [1.0, 300.0, 4.5], exact_atol=0.9).rejected is True  # |2 - 1| > 0.9 * max(1, 1)
    assert mean_test(X, [1.0, 300.0, 4.5], exact_atol=1.0).rejected is False  # not strictly beyond
    assert mean_test(X, [1.0, 300.0, 4.5], exact_atol=1.1).rejected is False


def test_a_coordinate_without_spread_beyond_exact_atol_rejects_at_one_below_max_1_mu():
    X = np.column_stack([np.full(10, 0.5), np.arange(10.0)])
    assert mean_test(X, [0.5 + 2e-12, 4.5]).rejected  # max(1, 0.5) = 1: 2e-12 > 1e-12
    assert not mean_test(X, [0.5 + 0.5e-12, 4.5]).rejected


def test_zero_spread_is_evidence_only_where_declared():
    X = np.column_stack([np.full(10, 1.0), np.full(10, 1.0)])
    res = mean_test(X, [2.0, 2.0], zero_spread_is_evidence=[True, False])
    assert res.rejected and np.isinf(res.z[0]) and res.z[1] == 0.0
    assert not mean_test(X, [2.0, 2.0], zero_spread_is_evidence=[False, False]).rejected


def test_scalar_samples_and_matrix_coordinates():
    X = samples(n=30, shape=())
    assert mean_test(X, 0.0).z.shape == ()
    M = samples(n=30, shape=(2, 3))
    res = mean_test(M, np.zeros((2, 3)) + [[0, 0, 0], [0, 0, 9]])
    assert res.rejected and res.worst == (1, 2)
    assert "REJECTED" in str(res) and "(1, 2)" in str(res) and "over 6 coordinates, n=30" in str(res)
    assert "not rejected" in str(mean_test(M, M.mean(axis=0)))


@pytest.mark.parametrize("X", [np.zeros((1, 3)), np.zeros((0, 3)), np.float64(1.0)])
def test_fewer_than_two_samples_are_refused_naming_the_shape(X):
    with pytest.raises(errors.InvalidInputError, match=re.escape(f"samples should have shape (n, ...) with n >= 2, "
                                                                  f"actual shape {np.shape(X)}")):
        mean_test(X, np.zeros(np.shape(X)[1:]))


def test_two_samples_are_enough():
    assert mean_test(np.array([[0.0], [1.0]]), [0.5]).z[0] == 0.0


@pytest.mark.parametrize("alpha", [0.0, 1.0, 1.5, -0.1, float("nan")])
def test_alpha_outside_the_open_unit_interval_is_refused_naming_alpha(alpha):
    with pytest.raises(errors.InvalidInputError, match="alpha"):
        mean_test(samples(), np.zeros(3), alpha=alpha)


def test_expected_of_the_wrong_shape_is_refused_naming_expected():
    with pytest.raises(errors.ShapeError, match="expected"):
        mean_test(samples(), np.zeros(4))


def test_false_alarm_rate_is_at_most_alpha_and_the_same_test_has_power():
    # 4000 null replicates at alpha = 0.01 over 3 coordinates: the rejections are Binomial(4000, <= 0.01);
    # 62 or more has probability < 1e-3 even at exactly 0.01. A mean off by half a standard deviation is caught.
    rng = np.random.default_rng(2026)
    null = sum(mean_test(rng.normal(size=(100, 3)), np.zeros(3), alpha=0.01).rejected for _ in range(4000))
    assert null < 62, null
    assert st.binom.sf(61, 4000, 0.01) < 1e-3
    shifted = sum(mean_test(rng.normal(size=(100, 3)), [0.5, 0.0, 0.0], alpha=0.01).rejected for _ in range(200))
    assert shifted >= 190, shifted
