"""The k1, k2, k3 estimators of KL(pi_old || pi_new) [Schulman2020].

Expectations are exact sums over a categorical pi_old, never samples, so the
unbiasedness identities are deterministic and held to rtol 1e-12.
"""

import decimal
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

import refpg
from refpg import errors
from refpg.kl_estimators import importance_ratio, kl_k1, kl_k2, kl_k3, log_ratio

ESTIMATORS = (kl_k1, kl_k2, kl_k3)
IDENTITY_RTOL = 1e-12


def raises(exc, msg):
    return pytest.raises(exc, match=re.escape(msg))


def exact_categorical_kl(p_old, p_new):
    """sum_a p_old(a) log(p_old(a) / p_new(a)), for full-support p_old and p_new."""
    p_old, p_new = np.asarray(p_old, float), np.asarray(p_new, float)
    return float(np.sum(p_old * (np.log(p_old) - np.log(p_new))))


def expectation(estimator, logp_new, logp_old):
    """E_{a ~ pi_old}[k(a)] by summation over the actions."""
    return float(np.sum(np.exp(logp_old) * estimator(logp_new, logp_old)))


def k3_reference(x):
    """e^x - 1 - x to 50 significant digits, from the exact value of the float x."""
    with decimal.localcontext(decimal.Context(prec=50)):
        d = decimal.Decimal(float(x))
        return float(d.exp() - 1 - d)


# -- strategies ---------------------------------------------------------------

LOGPS = st.floats(-50.0, 0.0)
#: Log-ratios from huge to tiny, so that the series / expm1 switch at 0.5 and
#: the cancellation at tiny log r are both exercised.
OFFSETS = st.one_of(st.floats(-40.0, 40.0), st.floats(-1e-6, 1e-6), st.floats(-0.6, 0.6))
GRID_LOGITS = st.integers(-16, 16).map(lambda k: k / 8)


@st.composite
def logp_pairs(draw):
    """(logp_new, logp_old) of one shape; shrinks towards one sample with log r = 0."""
    shape = draw(array_shapes(min_dims=1, max_dims=2, max_side=6))
    old = draw(arrays(np.float64, shape, elements=LOGPS))
    new = old + draw(arrays(np.float64, shape, elements=OFFSETS))
    return new, old


@st.composite
def categorical_pairs(draw):
    """log pi_old, log pi_new over A in [2, 6] actions, softmax of logits on a 1/8 grid."""
    A = draw(st.integers(2, 6))
    z_old, z_new = (draw(arrays(np.float64, A, elements=GRID_LOGITS)) for _ in range(2))
    return refpg.log_softmax(z_old), refpg.log_softmax(z_new)


# -- per-sample properties ----------------------------------------------------------

@given(logp_pairs())
def test_k2_and_k3_are_nonnegative_on_every_sample(pair):
    assert np.all(kl_k2(*pair) >= 0)
    assert np.all(kl_k3(*pair) >= 0)


@given(logp_pairs())
def test_estimators_return_the_input_shape_and_agree_with_their_formulas(pair):
    new, old = pair
    x = new - old
    for k in ESTIMATORS:
        assert k(new, old).shape == new.shape
    np.testing.assert_array_equal(log_ratio(new, old), x)
    np.testing.assert_array_equal(importance_ratio(new, old), np.exp(x))
    np.testing.assert_array_equal(kl_k1(new, old), -x)
    # Not bit-for-bit: (x * x) / 2 and 0.5 * x * x round differently among subnormals.
    np.testing.assert_allclose(kl_k2(new, old), x * x / 2, rtol=1e-15, atol=1e-300)
    # The literal formula only where it does not cancel (|x| >= 0.5).
    big = np.abs(x) >= 0.5
    np.testing.assert_allclose(kl_k3(new, old)[big], (np.exp(x) - 1 - x)[big], rtol=1e-13)


@given(arrays(np.float64, array_shapes(min_dims=1, max_dims=2, max_side=6), elements=LOGPS))
def test_all_estimators_are_zero_when_the_policies_agree(logp):
    for k in ESTIMATORS:
        np.testing.assert_array_equal(k(logp, logp), 0.0)
    np.testing.assert_array_equal(importance_ratio(logp, logp), 1.0)


def test_k1_is_negative_where_pi_new_puts_more_mass():
    # pi_old(a) = 1/4, pi_new(a) = 1/2: r = 2, k1 = -log 2 < 0.
    k1 = kl_k1(np.log([0.5]), np.log([0.25]))
    np.testing.assert_allclose(k1, [-np.log(2.0)], rtol=1e-15)
    assert k1[0] < 0


def test_two_dimensional_batch_keeps_its_shape():
    old = np.log(np.full((3, 2), 0.25))
    new = np.log(np.array([[0.5, 0.25], [0.125, 0.25], [0.25, 0.75]]))
    for k in ESTIMATORS:
        assert k(new, old).shape == (3, 2)


# -- exact expectations over a categorical pi_old ------------------------------------

P_OLD = np.array([0.5, 0.3, 0.2])
P_NEW = np.array([0.2, 0.5, 0.3])


def test_k1_and_k3_are_unbiased_on_a_categorical_pair():
    logp_old, logp_new = np.log(P_OLD), np.log(P_NEW)
    kl = exact_categorical_kl(P_OLD, P_NEW)
    np.testing.assert_allclose(kl, refpg.policy_kl(pi_old=P_OLD[None], pi_new=P_NEW[None])[0], rtol=IDENTITY_RTOL)
    np.testing.assert_allclose(expectation(kl_k1, logp_new, logp_old), kl, rtol=IDENTITY_RTOL)
    np.testing.assert_allclose(expectation(kl_k3, logp_new, logp_old), kl, rtol=IDENTITY_RTOL)


def test_k2_is_biased_on_a_categorical_pair():
    logp_old, logp_new = np.log(P_OLD), np.log(P_NEW)
    kl = exact_categorical_kl(P_OLD, P_NEW)
    e_k2 = expectation(kl_k2, logp_new, logp_old)
    # ln(5/2) = 0.91629, ln(3/5) = -0.51083, ln(2/3) = -0.40547, so
    # KL = 0.5 * 0.91629 - 0.3 * 0.51083 - 0.2 * 0.40547 = 0.45815 - 0.15325 - 0.08109 = 0.22380;
    # E[k2] = (0.5 * 0.83959 + 0.3 * 0.26094 + 0.2 * 0.16440) / 2 = 0.53096 / 2 = 0.26548.
    np.testing.assert_allclose(kl, 0.22380, atol=1e-5)
    np.testing.assert_allclose(e_k2, 0.26548, atol=1e-5)
    assert abs(e_k2 - kl) > 0.1 * kl


@given(categorical_pairs())
def test_k1_and_k3_are_unbiased_on_random_categorical_pairs(pair):
    logp_old, logp_new = pair
    kl = exact_categorical_kl(np.exp(logp_old), np.exp(logp_new))
    for k in (kl_k1, kl_k3):
        np.testing.assert_allclose(expectation(k, logp_new, logp_old), kl,
                                   rtol=IDENTITY_RTOL, atol=1e-15, err_msg=k.__name__)


def test_k2_is_the_second_order_approximation_of_the_kl():
    # pi_new = softmax(z + eps d): E[k2] and KL both equal eps^2 Var_{pi_old}(d) / 2
    # + O(eps^3), so their relative difference is O(eps): it shrinks tenfold with eps.
    z = np.array([0.3, -1.0, 0.5, 0.0])
    d = np.array([1.0, -2.0, 0.5, 0.25])
    logp_old = refpg.log_softmax(z)
    p_old = np.exp(logp_old)
    half_fisher = 0.5 * (p_old @ d ** 2 - (p_old @ d) ** 2)
    rel = []
    for eps in (1e-2, 1e-3):
        logp_new = refpg.log_softmax(z + eps * d)
        kl = exact_categorical_kl(p_old, np.exp(logp_new))
        e_k2 = expectation(kl_k2, logp_new, logp_old)
        np.testing.assert_allclose(e_k2 / eps ** 2, half_fisher, rtol=5 * eps)
        rel.append(abs(e_k2 - kl) / kl)
    assert rel[1] < rel[0] / 5
    assert 1e-5 < rel[1] < 1e-2  # biased, but by a vanishing fraction


def test_k3_has_lower_variance_than_k1_for_close_policies():
    # The reason for k3 [Schulman2020]: same mean, variance O(eps^4) against O(eps^2).
    logp_old = np.log(P_OLD)
    logp_new = refpg.log_softmax(logp_old + 0.1 * np.array([1.0, -1.0, 0.5]))
    p = np.exp(logp_old)

    def variance(k):
        v = k(logp_new, logp_old)
        return float(p @ v ** 2 - (p @ v) ** 2)

    assert variance(kl_k3) < 0.1 * variance(kl_k1)


# -- accuracy of k3 for tiny log r --------------------------------------------------------

@pytest.mark.parametrize("x", [1e-10, -1e-10, 3e-13, -2.5e-8, 1e-4, -0.01, 0.3, -0.4999,
                               0.5, -0.5, 0.7, -2.0, 3.0, 30.0, -40.0])
def test_k3_matches_a_50_digit_reference(x):
    # logp_old = 0 makes log r exactly x.
    np.testing.assert_allclose(kl_k3(np.array([x]), np.zeros(1)), [k3_reference(x)], rtol=1e-15)


@pytest.mark.parametrize("x", [1e-10, -1e-10])
def test_k3_is_accurate_at_log_ratio_1e_minus_10(x):
    series = x ** 2 / 2 + x ** 3 / 6 + x ** 4 / 24  # the next term is 1e-52
    k3 = kl_k3(np.array([x]), np.zeros(1))
    np.testing.assert_allclose(k3, [series], rtol=1e-15)
    # Power: the literal (r - 1) - log r is wrong in the leading digit, and even
    # expm1(x) - x keeps only about 6 digits here.
    assert abs(((np.exp(x) - 1) - x) / series - 1) > 100
    assert abs((np.expm1(x) - x) / series - 1) > 1e-8


# -- accuracy of k3 to a few ulps, on both sides of the series / expm1 switch ------------

#: Measured: at most 2 ulps in the series branch and 3 in the expm1 branch
#: (expm1 is correctly rounded or nearly so in every libm NumPy uses).
K3_MAX_ULPS = 4
#: The series may lose to truncation no more than this, relative: 1/8 ulp.
K3_TRUNCATION_RTOL = 2.0 ** -56


def k3_grid(lo, hi, n):
    """n points of each sign in lo <= |x| < hi, the floats just inside both ends, and lo."""
    mags = np.concatenate([np.linspace(lo, hi, n, endpoint=False),
                           [lo, np.nextafter(lo, hi), np.nextafter(hi, lo)]])
    return np.concatenate([mags, -mags])


def assert_k3_within_ulps(x, max_ulps):
    """kl_k3 at log r = x against the 50-digit reference, in ulps of the reference."""
    actual = kl_k3(x, np.zeros_like(x))
    desired = np.array([k3_reference(xi) for xi in x])
    ulps = np.abs(actual - desired) / np.spacing(desired)
    worst = int(np.argmax(ulps))
    assert ulps[worst] <= max_ulps, (
        f"k3({x[worst]!r}) = {actual[worst]!r}, 50-digit reference {desired[worst]!r}: "
        f"{ulps[worst]} ulps, expected at most {max_ulps}")


def test_k3_is_within_a_few_ulps_for_log_ratios_from_one_half_to_one_and_a_half():
    # The expm1(x) - x branch. A series switched on above 0.5 (its 15 terms
    # are 5e-12 short at 1.4) fails here.
    assert_k3_within_ulps(k3_grid(0.5, 1.5, 2048), K3_MAX_ULPS)


def test_k3_is_within_a_few_ulps_for_log_ratios_below_one_half():
    # The series branch, densest near the switch where its truncation is largest.
    x = np.concatenate([k3_grid(0.25, 0.5, 1024), k3_grid(1e-3, 0.25, 256)])
    assert_k3_within_ulps(x, K3_MAX_ULPS)


def series_relative_error(coeffs, x):
    """|x^2 p(x) - (e^x - 1 - x)| / (e^x - 1 - x) in 50-digit arithmetic, p by Horner on `coeffs`.

    The float coefficients are exact in Decimal, so this is the truncation
    error of the series (and the rounding of 1/n!) with no rounding of the
    evaluation.
    """
    with decimal.localcontext(decimal.Context(prec=50)):
        d = decimal.Decimal(float(x))
        p = decimal.Decimal(0)
        for c in coeffs:
            p = p * d + decimal.Decimal(c)
        exact = d.exp() - 1 - d
        return float(abs(d * d * p - exact) / exact)


def test_k3_series_truncation_is_below_an_eighth_of_an_ulp_and_one_term_fewer_is_not():
    from refpg.kl_estimators import _K3_COEFFS, _K3_SERIES_BELOW

    # The truncation error grows with |x|: the worst case is just below the switch.
    edge = np.nextafter(_K3_SERIES_BELOW, 0.0)
    x = [edge, -edge, *np.linspace(0.4, edge, 64), *-np.linspace(0.4, edge, 64)]
    errs = [series_relative_error(_K3_COEFFS, xi) for xi in x]
    assert max(errs) < K3_TRUNCATION_RTOL, (max(errs), x[int(np.argmax(errs))])
    # Power: the same series one term shorter (Horner order, so the highest
    # power goes first) is off by about two ulps at the switch, 16 times the
    # tolerance; the check above would refuse it.
    truncated = _K3_COEFFS[1:]
    assert series_relative_error(truncated, edge) > 8 * K3_TRUNCATION_RTOL
    assert series_relative_error(truncated, -edge) > 8 * K3_TRUNCATION_RTOL


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("x", [-1e30, -1e300, 700.0])
def test_k3_of_a_huge_log_ratio_is_finite_and_warns_of_nothing(x):
    # The series is evaluated on every entry (np.where computes both branches);
    # entries outside its range must not reach it, or x^13 overflows with a
    # RuntimeWarning for a k3 that is finite.
    k3 = kl_k3(np.array([x]), np.zeros(1))
    np.testing.assert_allclose(k3, [k3_reference(x)], rtol=1e-15)


def test_ratio_beyond_float64_overflows_to_inf_with_a_warning():
    with pytest.warns(RuntimeWarning, match="overflow"):
        r = importance_ratio(np.array([800.0]), np.zeros(1))
    assert r[0] == np.inf


# -- inputs ------------------------------------------------------------------------------

def test_inputs_are_not_modified():
    new, old = np.log([[0.5, 0.1], [0.2, 0.3]]), np.log([[0.25, 0.2], [0.2, 0.6]])
    before = new.copy(), old.copy()
    new.flags.writeable = old.flags.writeable = False  # a write would raise
    for f in (log_ratio, importance_ratio, *ESTIMATORS):
        f(new, old)
    np.testing.assert_array_equal(new, before[0])
    np.testing.assert_array_equal(old, before[1])


def test_shapes_must_agree():
    with raises(errors.ShapeError, "logp_old should have the shape of logp_new, (3,), actual shape (2,)"):
        kl_k3(np.zeros(3), np.zeros(2))


def test_minus_infinite_log_probability_is_refused():
    # pi_new(a) = 0 on a sampled action: the KL is infinite; refused, not returned as inf.
    with raises(errors.NonFiniteError, "logp_new[1] is -inf; expected a finite number"):
        kl_k1(np.array([0.0, -np.inf]), np.zeros(2))


def test_nan_log_probability_names_the_entry():
    old = np.zeros((2, 2))
    old[1, 0] = np.nan
    with raises(errors.NonFiniteError, "logp_old[1, 0] is nan"):
        kl_k2(np.zeros((2, 2)), old)


def test_non_numeric_log_probabilities_are_refused():
    with raises(errors.InvalidInputError, "logp_new should be a real numeric array"):
        log_ratio(np.array(["a", "b"]), np.zeros(2))


def test_k3_switches_from_the_series_to_expm1_at_exactly_half():
    # The docs: the series below |log r| = 0.5, expm1(x) - x from 0.5 on. At +0.5 the two differ in the
    # last bit, so the switch point itself is observable.
    from refpg.kl_estimators import _K3_COEFFS

    def series(x):
        poly = 0.0
        for c in _K3_COEFFS:
            poly = poly * x + c
        return x * x * poly

    at = kl_k3(np.array([0.5, -0.5]), np.zeros(2))
    assert at.tolist() == [np.expm1(0.5) - 0.5, np.expm1(-0.5) + 0.5]
    assert series(0.5) != np.expm1(0.5) - 0.5  # the case the test is about
    below = np.nextafter(0.5, 0.0)
    assert kl_k3(np.array([below]), np.zeros(1))[0] == series(below)
