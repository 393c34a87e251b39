"""Returns, GAE and TD(lambda) targets on time-major (T, N) rollouts.

Property tests draw rewards and values on a grid of multiples of 1/8, so that
sums stay exact or nearly so and tolerances can be tight; hand-computed cases
carry their arithmetic in a comment; the wrong estimators at the end show the
hand-computed cases would catch the classic truncation bugs.
"""

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from refpg import errors
from refpg.returns import discounted_returns, gae, lambda_returns

IDENTITY_RTOL = 1e-12


def assert_identity(actual, desired, err_msg=""):
    """Equal to rtol 1e-12, entries near zero held to 1e-12 of the largest magnitude."""
    desired = np.asarray(desired, dtype=float)
    scale = max(1.0, float(np.max(np.abs(desired), initial=0.0)))
    np.testing.assert_allclose(actual, desired, rtol=IDENTITY_RTOL,
                               atol=IDENTITY_RTOL * scale, err_msg=err_msg)


def raises(exc, msg):
    return pytest.raises(exc, match=re.escape(msg))


# -- strategies ---------------------------------------------------------------

GRID = st.integers(-40, 40).map(lambda k: k / 8)  # multiples of 1/8 in [-5, 5]
GAMMAS = st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0])
LAMS = st.sampled_from([0.0, 0.5, 0.95, 1.0])


@st.composite
def rollouts(draw, *, min_T=1, consistent=False):
    """(rewards, values, next_values, terminated, truncated) of shape (T, N).

    Shrinks towards short rollouts of one environment, zero rewards and values
    and no episode boundaries. With `consistent`, ``next_values[t] =
    values[t + 1]`` inside every episode, as for a critic evaluated once per
    state: the condition of Schulman et al.'s lambda = 1 identity.
    """
    T = draw(st.integers(min_T, 10))
    N = draw(st.integers(1, 3))
    rewards, values, next_values = (draw(arrays(np.float64, (T, N), elements=GRID))
                                    for _ in range(3))
    terminated, truncated = (draw(arrays(np.bool_, (T, N))) for _ in range(2))
    if consistent:
        inside = ~(terminated | truncated)
        inside[-1] = False
        next_values[inside] = values[1:][inside[:-1]]
    return rewards, values, next_values, terminated, truncated


def gae_by_summation(rewards, values, next_values, terminated, truncated, gamma, lam):
    """A_t = sum_{k=t}^{e} (gamma lam)^{k-t} delta_k, e the end of t's episode in the rollout.

    The closed form of [Schulman2016] Eq. (16) for one (t, n) at a time: an
    independent check on the vectorised backward recursion.
    """
    T, N = rewards.shape
    adv = np.zeros((T, N))
    for n in range(N):
        for t in range(T):
            k = t
            while True:
                boot = 0.0 if terminated[k, n] else gamma * next_values[k, n]
                adv[t, n] += (gamma * lam) ** (k - t) * (rewards[k, n] + boot - values[k, n])
                if terminated[k, n] or truncated[k, n] or k == T - 1:
                    break
                k += 1
    return adv


# -- identities ---------------------------------------------------------------

@given(rollouts(), GAMMAS)
def test_gae_with_lambda_zero_is_the_td_error_exactly(rollout, gamma):
    r, v, nv, term, trunc = rollout
    delta = r + gamma * np.where(term, 0.0, nv) - v
    np.testing.assert_array_equal(gae(r, v, nv, term, trunc, gamma, 0.0), delta)


@given(rollouts(consistent=True), GAMMAS)
def test_gae_with_lambda_one_is_bootstrapped_return_minus_value(rollout, gamma):
    r, v, nv, term, trunc = rollout
    G = discounted_returns(r, term, trunc, gamma, next_values=nv)
    assert_identity(gae(r, v, nv, term, trunc, gamma, 1.0), G - v)


@given(rollouts(), GAMMAS, LAMS)
def test_gae_equals_the_explicit_sum_over_each_episode(rollout, gamma, lam):
    assert_identity(gae(*rollout, gamma, lam), gae_by_summation(*rollout, gamma, lam))


@given(rollouts(min_T=2), GAMMAS, LAMS, st.data())
def test_gae_is_unchanged_by_splitting_the_rollout_at_an_episode_boundary(rollout, gamma, lam, data):
    r, v, nv, term, trunc = rollout
    T, N = r.shape
    cut = data.draw(st.integers(0, T - 2), label="boundary row")
    kind = data.draw(arrays(np.bool_, N), label="terminated (else truncated) per column")
    term, trunc = term.copy(), trunc.copy()
    term[cut], trunc[cut] = kind, ~kind
    whole = gae(r, v, nv, term, trunc, gamma, lam)
    head = gae(r[:cut + 1], v[:cut + 1], nv[:cut + 1], term[:cut + 1], trunc[:cut + 1], gamma, lam)
    tail = gae(r[cut + 1:], v[cut + 1:], nv[cut + 1:], term[cut + 1:], trunc[cut + 1:], gamma, lam)
    # Exact: the recursion multiplies A_{t*+1} by 0 at the boundary either way.
    np.testing.assert_array_equal(np.concatenate([head, tail]), whole)


@given(rollouts(), GAMMAS, LAMS, st.data())
def test_gae_columns_are_independent_environments(rollout, gamma, lam, data):
    N = rollout[0].shape[1]
    k = data.draw(st.integers(0, N), label="columns in the first part")
    whole = gae(*rollout, gamma, lam)
    left = gae(*(a[:, :k] for a in rollout), gamma, lam)
    right = gae(*(a[:, k:] for a in rollout), gamma, lam)
    np.testing.assert_array_equal(np.concatenate([left, right], axis=1), whole)


@given(rollouts(), GAMMAS, LAMS)
def test_lambda_returns_are_gae_plus_values(rollout, gamma, lam):
    np.testing.assert_array_equal(lambda_returns(*rollout, gamma, lam),
                                  gae(*rollout, gamma, lam) + rollout[1])


@given(rollouts(), GAMMAS)
def test_discounted_returns_without_next_values_bootstrap_zero(rollout, gamma):
    r, _, nv, term, trunc = rollout
    np.testing.assert_array_equal(
        discounted_returns(r, term, trunc, gamma),
        discounted_returns(r, term, trunc, gamma, next_values=np.zeros_like(r)))


@given(rollouts(), GAMMAS, LAMS)
def test_one_dimensional_input_is_one_environment_and_keeps_its_shape(rollout, gamma, lam):
    col = [a[:, 0] for a in rollout]
    adv = gae(*col, gamma, lam)
    assert adv.shape == col[0].shape
    np.testing.assert_array_equal(adv, gae(*(a[:, :1] for a in rollout), gamma, lam)[:, 0])
    G = discounted_returns(col[0], col[3], col[4], gamma, next_values=col[2])
    assert G.shape == col[0].shape


def test_inputs_are_not_modified():
    rng = np.random.default_rng(0)
    r, v, nv = (rng.normal(size=(6, 3)) for _ in range(3))
    term, trunc = rng.random((6, 3)) < 0.3, rng.random((6, 3)) < 0.3
    given_arrays = (r, v, nv, term, trunc)
    before = [a.copy() for a in given_arrays]
    for a in given_arrays:
        a.flags.writeable = False  # a write would raise
    gae(r, v, nv, term, trunc, 0.9, 0.95)
    lambda_returns(r, v, nv, term, trunc, 0.9, 0.95)
    discounted_returns(r, term, trunc, 0.9)
    discounted_returns(r, term, trunc, 0.9, next_values=nv)
    for a, b in zip(given_arrays, before):
        np.testing.assert_array_equal(a, b)


def test_results_are_new_float64_arrays():
    r = np.ones((3, 2))
    adv = gae(r, r, r, np.zeros((3, 2), bool), np.zeros((3, 2), bool), 0.5, 0.5)
    assert adv.dtype == np.float64
    assert not np.shares_memory(adv, r)


# -- hand-computed cases --------------------------------------------------------

# One environment, gamma = lam = 0.5 (gamma lam = 0.25), a time limit at t = 1.
# next_values[1] = 8 is V of the final observation; values[2] = 2 is V of the
# first state after the reset, and must not be used at t = 1.
TRUNC = dict(
    rewards=np.array([1.0, 2.0, 3.0, 4.0]),
    values=np.array([2.0, 4.0, 2.0, 6.0]),
    next_values=np.array([4.0, 8.0, 6.0, 2.0]),
    terminated=np.array([False, False, False, False]),
    truncated=np.array([False, True, False, False]),
    gamma=0.5, lam=0.5,
)
# delta = r + 0.5 nv - v = [1 + 2 - 2, 2 + 4 - 4, 3 + 3 - 2, 4 + 1 - 6] = [1, 2, 4, -1]
# A3 = -1                        (end of rollout: bootstrapped inside delta_3)
# A2 = 4 + 0.25 * (-1) = 3.75
# A1 = 2                         (truncated: A2 does not flow back)
# A0 = 1 + 0.25 * 2 = 1.5
TRUNC_GAE = np.array([1.5, 2.0, 3.75, -1.0])

# One environment, gamma = lam = 0.5, termination at t = 1. next_values[1] = 10
# is the critic's (meaningless) value of the terminal observation: ignored.
TERM = dict(
    rewards=np.array([3.0, 1.0, 1.0]),
    values=np.array([2.0, 2.0, 2.0]),
    next_values=np.array([2.0, 10.0, 2.0]),
    terminated=np.array([False, True, False]),
    truncated=np.array([False, False, False]),
    gamma=0.5, lam=0.5,
)
# delta = [3 + 1 - 2, 1 + 0 - 2, 1 + 1 - 2] = [2, -1, 0]
# A2 = 0;  A1 = -1 (terminated: no bootstrap, no flow back);  A0 = 2 + 0.25 * (-1) = 1.75
TERM_GAE = np.array([1.75, -1.0, 0.0])


def test_gae_truncation_bootstraps_from_the_final_observation_and_stops_the_recursion():
    np.testing.assert_array_equal(gae(**TRUNC), TRUNC_GAE)


def test_gae_termination_does_not_bootstrap():
    np.testing.assert_array_equal(gae(**TERM), TERM_GAE)


def test_gae_both_cases_side_by_side_as_two_environments():
    # The termination case padded with a fourth step (r 0, V 0, nv 0, terminated):
    # its delta_3 = 0 and nothing flows back from it.
    pad = dict(rewards=0.0, values=0.0, next_values=0.0, terminated=True, truncated=False)
    args = {k: np.stack([TRUNC[k], np.append(TERM[k], pad[k])], axis=1) for k in pad}
    adv = gae(**args, gamma=0.5, lam=0.5)
    np.testing.assert_array_equal(adv, np.stack([TRUNC_GAE, np.append(TERM_GAE, 0.0)], axis=1))


def test_lambda_returns_hand_computed():
    # GAE + V = [1.5 + 2, 2 + 4, 3.75 + 2, -1 + 6]
    np.testing.assert_array_equal(lambda_returns(**TRUNC), [3.5, 6.0, 5.75, 5.0])


def test_discounted_returns_hand_computed_with_and_without_bootstrap():
    args = {k: TRUNC[k] for k in ("rewards", "terminated", "truncated", "gamma")}
    # With bootstrap: G3 = 4 + 0.5 * 2 = 5; G2 = 3 + 0.5 * 5 = 5.5;
    #   G1 = 2 + 0.5 * 8 = 6 (truncated); G0 = 1 + 0.5 * 6 = 4.
    np.testing.assert_array_equal(
        discounted_returns(**args, next_values=TRUNC["next_values"]), [4.0, 6.0, 5.5, 5.0])
    # Observed segments only: G3 = 4; G2 = 3 + 2 = 5; G1 = 2; G0 = 1 + 1 = 2.
    np.testing.assert_array_equal(discounted_returns(**args), [2.0, 2.0, 5.0, 4.0])
    # Termination: G2 = 1 + 0.5 * 2 = 2 (end of rollout); G1 = 1 (the 10 is ignored);
    # G0 = 3 + 0.5 * 1 = 3.5.
    args = {k: TERM[k] for k in ("rewards", "terminated", "truncated", "gamma")}
    np.testing.assert_array_equal(
        discounted_returns(**args, next_values=TERM["next_values"]), [3.5, 1.0, 2.0])


# An environment that never terminates, reward 1 every step, a time limit of
# 8 steps, gamma = 0.98: V = sum_k 0.98^k = 1 / (1 - 0.98) = 50 in every state.
# Two episodes of 8 steps, truncated at t = 7 and t = 15.
TIME_LIMIT = dict(
    rewards=np.ones(16), values=np.full(16, 50.0), next_values=np.full(16, 50.0),
    terminated=np.zeros(16, bool), truncated=np.isin(np.arange(16), [7, 15]),
    gamma=0.98,
)
#: sum_{k<8} 0.98^k = (1 - 0.98^8) / 0.02 = 7.4618...: the return of an 8-step
#: episode with the time limit mistaken for termination.
EIGHT_STEP_RETURN = (1 - 0.98 ** 8) / (1 - 0.98)


@pytest.mark.parametrize("lam", [0.0, 0.95, 1.0])
def test_time_limit_bootstrap_makes_the_true_value_a_fixed_point(lam):
    # delta_t = 1 + 0.98 * 50 - 50 = 0 at every step (also in float64), so the
    # lambda-return target is V = 50 exactly, for every lambda.
    np.testing.assert_array_equal(lambda_returns(**TIME_LIMIT, lam=lam), np.full(16, 50.0))
    G = discounted_returns(TIME_LIMIT["rewards"], TIME_LIMIT["terminated"],
                           TIME_LIMIT["truncated"], 0.98, next_values=TIME_LIMIT["next_values"])
    assert_identity(G, np.full(16, 50.0))


def test_time_limit_as_termination_is_far_from_the_true_value():
    wrong = lambda_returns(**gae_truncation_as_termination_args(TIME_LIMIT), lam=1.0)
    assert_identity(wrong[0], EIGHT_STEP_RETURN)
    assert EIGHT_STEP_RETURN == pytest.approx(7.4618, abs=1e-4)
    assert 50.0 - wrong[0] > 40.0
    # So is the return of the observed segment, which is what the wrong target is.
    G = discounted_returns(TIME_LIMIT["rewards"], TIME_LIMIT["terminated"],
                           TIME_LIMIT["truncated"], 0.98)
    assert_identity(G[[0, 8]], [EIGHT_STEP_RETURN] * 2)


# -- power: wrong estimators fail the hand-computed cases --------------------------

def gae_truncation_as_termination_args(case):
    """The arguments of `case` with every truncation turned into a termination."""
    case = dict(case)
    case["terminated"] = case["terminated"] | case["truncated"]
    case["truncated"] = np.zeros_like(case["truncated"])
    return case


def gae_ignoring_truncation_args(case):
    """The arguments of `case` with truncation flags dropped (A flows across the reset)."""
    return dict(case, truncated=np.zeros_like(case["truncated"]))


def test_gae_with_truncation_as_termination_fails_the_truncation_case():
    wrong = gae(**gae_truncation_as_termination_args(TRUNC))
    # delta1 = 2 + 0 - 4 = -2 instead of 2: A1 is off by gamma * next_values[1] = 4.
    np.testing.assert_array_equal(wrong - TRUNC_GAE, [-1.0, -4.0, 0.0, 0.0])
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(wrong, TRUNC_GAE, rtol=0.1)


def test_gae_ignoring_truncation_fails_the_truncation_case():
    wrong = gae(**gae_ignoring_truncation_args(TRUNC))
    # A1 = 2 + 0.25 * 3.75 = 2.9375 instead of 2: the next episode leaks in.
    assert abs(wrong[1] - TRUNC_GAE[1]) == pytest.approx(0.9375)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(wrong, TRUNC_GAE, rtol=0.1)


# -- bad input: one case per test, each naming the argument ---------------------

def good(T=4, N=2):
    z = np.zeros((T, N))
    return dict(rewards=z, values=z, next_values=z, terminated=z.astype(bool),
                truncated=z.astype(bool), gamma=0.9, lam=0.95)


def test_values_of_another_shape_than_rewards():
    with raises(errors.ShapeError, "values should have the shape of rewards, (4, 2), actual shape (4, 3)"):
        gae(**dict(good(), values=np.zeros((4, 3))))


def test_truncated_of_another_shape_than_rewards():
    with raises(errors.ShapeError, "truncated should have the shape of rewards, (4, 2), actual shape (3, 2)"):
        gae(**dict(good(), truncated=np.zeros((3, 2), bool)))


def test_column_against_one_dimensional_rewards_is_refused():
    with raises(errors.ShapeError, "next_values should have the shape of rewards, (4,), actual shape (4, 1)"):
        gae(**dict(good(), rewards=np.zeros(4), values=np.zeros(4), next_values=np.zeros((4, 1))))


def test_three_dimensional_rewards():
    with raises(errors.ShapeError, "rewards should have shape (T,) or (T, N), actual shape (4, 2, 1)"):
        gae(**dict(good(), rewards=np.zeros((4, 2, 1))))


def test_next_values_of_another_shape_in_discounted_returns():
    z = np.zeros((4, 2), bool)
    with raises(errors.ShapeError, "next_values should have the shape of rewards, (4, 2), actual shape (2, 4)"):
        discounted_returns(np.zeros((4, 2)), z, z, 0.9, next_values=np.zeros((2, 4)))


def test_nan_reward_names_the_entry():
    r = np.zeros((4, 2))
    r[2, 1] = np.nan
    with raises(errors.NonFiniteError, "rewards[2, 1] is nan; expected a finite number"):
        gae(**dict(good(), rewards=r))


def test_infinite_next_value_names_the_entry():
    nv = np.zeros((4, 2))
    nv[3, 0] = -np.inf
    with raises(errors.NonFiniteError, "next_values[3, 0] is -inf"):
        lambda_returns(**dict(good(), next_values=nv))


def test_half_a_flag_names_the_entry():
    term = np.zeros((4, 2))
    term[3, 1] = 0.5
    with raises(errors.InvalidInputError, "terminated[3, 1] is 0.5; expected a boolean"):
        gae(**dict(good(), terminated=term))


def test_integer_flag_of_two_names_the_entry():
    trunc = np.zeros(4, int)
    trunc[1] = 2
    with raises(errors.InvalidInputError, "truncated[1] is 2; expected a boolean"):
        discounted_returns(np.zeros(4), np.zeros(4, bool), trunc, 0.9)


def test_flags_of_exactly_zero_and_one_are_accepted_as_booleans():
    args = dict(TRUNC, terminated=TRUNC["terminated"].astype(float),
                truncated=TRUNC["truncated"].astype(int))
    np.testing.assert_array_equal(gae(**args), TRUNC_GAE)


def test_string_flags_are_refused():
    with raises(errors.InvalidInputError, "terminated should be a boolean array, actual dtype <U1"):
        gae(**dict(good(), terminated=np.full((4, 2), "n")))


def test_gamma_above_one():
    with raises(errors.InvalidDiscountError, "gamma should be in [0, 1], actual 1.5"):
        gae(**dict(good(), gamma=1.5))


def test_gamma_above_one_in_discounted_returns():
    z = np.zeros(3, bool)
    with raises(errors.InvalidDiscountError, "gamma should be in [0, 1], actual 1.5"):
        discounted_returns(np.zeros(3), z, z, 1.5)


def test_negative_lambda():
    with raises(errors.InvalidInputError, "lam should be >= 0.0, actual -0.1"):
        gae(**dict(good(), lam=-0.1))


def test_lambda_above_one():
    with raises(errors.InvalidInputError, "lam should be <= 1.0, actual 1.01"):
        lambda_returns(**dict(good(), lam=1.01))


def test_gamma_one_is_allowed_for_a_finite_rollout():
    assert_identity(gae(**dict(TERM, gamma=1.0, lam=1.0)),
                    # delta = [3 + 2 - 2, 1 - 2, 1 + 2 - 2] = [3, -1, 1]; A0 = 3 - 1 = 2
                    [2.0, -1.0, 1.0])
