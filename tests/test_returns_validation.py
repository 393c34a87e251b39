"""Every check at the boundary of `refpg.returns`, in each of its three functions.

Each refusal asserts the error class, the argument named and, where there is
one, the entry; each acceptance at the edge (gamma = 1, lam = 0 or 1, flags
of exactly 0 and 1) asserts the value returned, so that a check that is too
strict fails as well as one that is missing.
"""

import re

import numpy as np
import pytest

from refpg import errors
from refpg.returns import discounted_returns, gae, lambda_returns

T, N = 4, 2


def raises(exc, msg):
    return pytest.raises(exc, match=re.escape(msg))


def rollout(T=T, N=N):
    """A rollout with rewards 1 and values 0: every function has a known answer."""
    return dict(rewards=np.ones((T, N)), values=np.zeros((T, N)), next_values=np.zeros((T, N)),
                terminated=np.zeros((T, N), bool), truncated=np.zeros((T, N), bool))


def call(name, **overrides):
    """Call the function `name` on `rollout()` with gamma 0.5, lam 0.5, and `overrides`."""
    args = dict(rollout(), gamma=0.5, lam=0.5)
    args.update(overrides)
    if name == "gae":
        return gae(**args)
    if name == "lambda_returns":
        return lambda_returns(**args)
    return discounted_returns(args["rewards"], args["terminated"], args["truncated"],
                              args["gamma"], next_values=args["next_values"])


ALL = ["gae", "lambda_returns", "discounted_returns"]
WITH_LAM = ["gae", "lambda_returns"]
WITH_VALUES = ["gae", "lambda_returns"]


# -- gamma ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("gamma, msg", [
    (1.5, "gamma should be in [0, 1], actual 1.5"),
    (-0.1, "gamma should be in [0, 1], actual -0.1"),
    (float("nan"), "gamma should be in [0, 1], actual nan"),
    (float("inf"), "gamma should be in [0, 1], actual inf"),
    (True, "gamma should be a real number in [0, 1), actual True"),
    ("0.9", "gamma should be a real number in [0, 1), actual '0.9'"),
    (0.5 + 0j, "gamma should be a real number in [0, 1), actual (0.5+0j)"),
])
def test_bad_gamma_is_refused_naming_gamma(name, gamma, msg):
    with raises(errors.InvalidDiscountError, msg):
        call(name, gamma=gamma)


@pytest.mark.parametrize("name", ALL)
def test_gamma_one_and_zero_are_accepted(name):
    # Rewards 1, values 0, no flags, lam 1: the return of step t is T - t at
    # gamma 1 (the last row bootstraps next_values = 0), and 1 at gamma 0.
    # With values 0 the advantage, the lambda-return and the return coincide.
    steps_left = np.arange(T, 0, -1.0)[:, None] * np.ones((1, N))
    np.testing.assert_allclose(call(name, gamma=1.0, lam=1.0), steps_left, rtol=1e-15)
    np.testing.assert_allclose(call(name, gamma=0.0, lam=1.0), np.ones((T, N)), rtol=1e-15)


# -- lam ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", WITH_LAM)
@pytest.mark.parametrize("lam, msg", [
    (-0.1, "lam should be >= 0.0, actual -0.1"),
    (1.01, "lam should be <= 1.0, actual 1.01"),
])
def test_lam_outside_the_unit_interval_is_refused_naming_lam(name, lam, msg):
    with raises(errors.InvalidInputError, msg):
        call(name, lam=lam)


@pytest.mark.parametrize("name", WITH_LAM)
@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_lam_zero_and_one_are_accepted(name, lam):
    # gamma = 0.5, rewards 1, values 0: TD(0) target 1; Monte Carlo 2 - 0.5^(T-t-1).
    out = call(name, lam=lam)
    desired = np.ones(T) if lam == 0 else 2 - 0.5 ** np.arange(T - 1, -1, -1.0)
    np.testing.assert_allclose(out, desired[:, None] * np.ones((1, N)), rtol=1e-15)


# -- shapes ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("arg", ["terminated", "truncated", "next_values"])
@pytest.mark.parametrize("shape", [(T, N + 1), (T - 1, N), (N, T), (T,), (T, N, 1)])
def test_an_array_of_another_shape_than_rewards_is_refused_naming_it(name, arg, shape):
    value = np.zeros(shape, bool if arg != "next_values" else float)
    if arg == "next_values" and len(shape) == 3:
        msg = f"next_values should have shape (T,) or (T, N), actual shape {shape}"
    else:
        msg = f"{arg} should have the shape of rewards, {(T, N)}, actual shape {shape}"
    with raises(errors.ShapeError, msg):
        call(name, **{arg: value})


@pytest.mark.parametrize("name", WITH_VALUES)
def test_values_of_another_shape_than_rewards_is_refused_naming_values(name):
    with raises(errors.ShapeError, f"values should have the shape of rewards, {(T, N)}, actual shape (4, 3)"):
        call(name, values=np.zeros((4, 3)))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("shape", [(), (T, N, 1)])
def test_rewards_of_neither_one_nor_two_axes_is_refused(name, shape):
    with raises(errors.ShapeError, f"rewards should have shape (T,) or (T, N), actual shape {shape}"):
        call(name, rewards=np.zeros(shape))


@pytest.mark.parametrize("name", ALL)
def test_ragged_flags_are_refused_naming_the_flag(name):
    with raises(errors.ShapeError, "truncated could not be converted to an array"):
        call(name, truncated=[[False, False], [False]] * 2)


# -- dtype and entries of the flags ---------------------------------------------------

@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("arg", ["terminated", "truncated"])
@pytest.mark.parametrize("value, dtype", [
    (np.full((T, N), "n"), "<U1"),
    (np.zeros((T, N), complex), "complex128"),
    (np.full((T, N), False, dtype=object), "object"),
])
def test_flags_of_a_non_numeric_dtype_are_refused_naming_the_flag_and_dtype(name, arg, value, dtype):
    with raises(errors.InvalidInputError, f"{arg} should be a boolean array, actual dtype {dtype}"):
        call(name, **{arg: value})


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("arg", ["terminated", "truncated"])
@pytest.mark.parametrize("bad", [0.5, -1.0, 2.0, float("nan")])
def test_a_flag_other_than_zero_or_one_names_the_flag_and_the_entry(name, arg, bad):
    flags = np.zeros((T, N))
    flags[2, 1] = bad
    flags[3, 0] = 7.0  # a later bad entry: the first one is named
    with raises(errors.InvalidInputError, f"{arg}[2, 1] is {bad!r}; expected a boolean"):
        call(name, **{arg: flags})


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int64, np.float32, np.float64])
def test_numeric_flags_of_exactly_zero_and_one_act_as_booleans(name, dtype):
    term = np.zeros((T, N), bool)
    term[1, 0] = True
    trunc = np.zeros((T, N), bool)
    trunc[2, 1] = True
    desired = call(name, terminated=term, truncated=trunc)
    np.testing.assert_array_equal(
        call(name, terminated=term.astype(dtype), truncated=trunc.astype(dtype)), desired)
    # The flags matter here: without them the answer differs.
    assert not np.array_equal(call(name), desired)


@pytest.mark.parametrize("name", ALL)
def test_one_dimensional_rollouts_return_one_dimensional_results(name):
    args = {k: v[:, 0] for k, v in rollout().items()}
    out = call(name, **args)
    assert out.shape == (T,)
    np.testing.assert_array_equal(out, call(name)[:, 0])


@pytest.mark.parametrize("name", ALL)
def test_validation_never_writes_to_the_inputs(name):
    args = rollout()
    args["rewards"] = np.random.default_rng(0).normal(size=(T, N))
    args["terminated"][1, 1] = True
    copies = {k: v.copy() for k, v in args.items()}
    call(name, **args)
    for k, v in args.items():
        np.testing.assert_array_equal(v, copies[k], err_msg=k)
