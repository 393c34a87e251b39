"""Input validation shared by every public entry point.

Each helper raises a subclass of `refpg.errors.InvalidInputError` whose message
names the argument, the first offending entry, its value and what was
expected. Nothing here repairs input: it is accepted as given or refused.
"""

from __future__ import annotations

import difflib
import numbers
from typing import Sequence

import numpy as np

from refpg.errors import (
    InvalidDiscountError,
    InvalidInputError,
    NegativeEntryError,
    NonFiniteError,
    NotADistributionError,
    ShapeError,
)

#: Absolute tolerance for "sums to one" of every probability vector: the rows
#: of P and of a policy, and rho. An input's own deviation carries over to the
#: exact quantities: sum(d) - 1 = (sum(rho) - 1) + gamma * sum_s mu(s) delta(s),
#: with delta(s) the deviation of row s of P_pi and mu = d / (1 - gamma), so a
#: tolerance of 1e-9 let an accepted MDP break the 1e-10 identities of
#: docs/conventions.md by itself (by 1e-7 at gamma = 0.99). 1e-12 keeps that
#: below 1e-10 for horizons up to 100 while accepting anything normalised in
#: float64 (off by a few ulps); float32 probabilities (off by ~1e-7) were
#: refused before too.
PROB_ATOL = 1e-12

#: The tolerance for rho; the same as PROB_ATOL (kept as a name of its own
#: because sum(d) - 1 = sum(rho) - 1 exactly, whatever the policy).
RHO_ATOL = PROB_ATOL


def entry(name: str, index: Sequence[int], trailing: int = 0) -> str:
    """Render ``name[i, j, :]`` for an index followed by `trailing` colons."""
    parts = [str(int(i)) for i in index] + [":"] * trailing
    return f"{name}[{', '.join(parts)}]" if parts else name


def as_float_array(x, name: str, *, ndim: int | None = None,
                   shape: tuple | None = None) -> np.ndarray:
    """Convert `x` to a float64 array, checking shape and finiteness.

    `shape` may hold ``None`` for a free dimension. Booleans and complex
    numbers are refused rather than cast, because a cast would hide a mistake.
    """
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise ShapeError(f"{name} could not be converted to an array: {exc}") from None
    if arr.dtype == object or arr.dtype.kind not in "iuf":
        raise InvalidInputError(
            f"{name} should be a real numeric array, actual dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    check_shape(arr, name, ndim=ndim, shape=shape)
    check_finite(arr, name)
    return arr


def check_shape(arr: np.ndarray, name: str, *, ndim: int | None = None,
                shape: tuple | None = None) -> None:
    """Raise `ShapeError` unless `arr` has `ndim` dimensions and `shape`."""
    if shape is not None:
        ndim = len(shape)
    if ndim is not None and arr.ndim != ndim:
        expected = f"shape {_shape_str(shape)}" if shape is not None else f"{ndim} dimensions"
        raise ShapeError(
            f"{name} should have {expected}, actual shape {arr.shape}")
    if shape is not None:
        for k, (got, want) in enumerate(zip(arr.shape, shape)):
            if want is not None and got != want:
                raise ShapeError(
                    f"{name} should have shape {_shape_str(shape)}, actual shape "
                    f"{arr.shape} (axis {k} is {got}, expected {want})")


def _shape_str(shape: tuple) -> str:
    inner = ", ".join("*" if s is None else str(s) for s in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def check_finite(arr: np.ndarray, name: str) -> None:
    """Raise `NonFiniteError` naming the first NaN or infinite entry."""
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = np.unravel_index(int(np.flatnonzero(bad)[0]), arr.shape)
        raise NonFiniteError(
            f"{entry(name, idx)} is {float(arr[idx])!r}; expected a finite number "
            f"({int(bad.sum())} non-finite entries in all)")


def check_nonnegative(arr: np.ndarray, name: str) -> None:
    """Raise `NegativeEntryError` naming the first negative entry."""
    bad = arr < 0
    if bad.any():
        idx = np.unravel_index(int(np.flatnonzero(bad)[0]), arr.shape)
        raise NegativeEntryError(
            f"{entry(name, idx)} is {float(arr[idx])!r}; expected a probability >= 0")


def check_distributions(arr: np.ndarray, name: str, *, atol: float = PROB_ATOL) -> None:
    """Check that every slice ``arr[..., :]`` is a probability distribution."""
    check_nonnegative(arr, name)
    sums = arr.sum(axis=-1)
    bad = np.abs(sums - 1.0) > atol
    if np.any(bad):
        idx = np.unravel_index(int(np.flatnonzero(bad)[0]), np.shape(sums))
        total = float(np.asarray(sums)[idx])
        raise NotADistributionError(
            f"{entry(name, idx, trailing=1)} sums to {total!r}; expected 1 "
            f"within atol={atol:g}")


def check_probability_rows(x, name: str, *, shape: tuple) -> np.ndarray:
    """Convert and check an array whose last axis holds distributions."""
    arr = as_float_array(x, name, shape=shape)
    check_distributions(arr, name)
    return arr


def check_discount(gamma, name: str = "gamma", *, allow_one: bool = False) -> float:
    """Return gamma as a float after checking it lies in [0, 1) (or [0, 1])."""
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):
        raise InvalidDiscountError(
            f"{name} should be a real number in [0, 1), actual {gamma!r}")
    g = float(gamma)
    upper_ok = g <= 1.0 if allow_one else g < 1.0
    if not (np.isfinite(g) and g >= 0.0 and upper_ok):
        interval = "[0, 1]" if allow_one else "[0, 1)"
        raise InvalidDiscountError(f"{name} should be in {interval}, actual {g!r}")
    return g


def check_choice(value, name: str, choices):
    """Return `value` after checking it is one of `choices` (strings by equality, anything else by identity).

    Never ``value in choices``: that compares an array argument elementwise and
    dies with NumPy's "truth value of an array is ambiguous".
    """
    if not any(value is c or (isinstance(value, str) and value == c) for c in choices):
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        raise InvalidInputError(f"{name} should be one of {tuple(choices)}, actual {value!r}{hint}")
    return value


def did_you_mean(word, choices) -> str:
    """``"; did you mean 'x'?"`` for the string of `choices` closest to `word` (difflib's default
    cutoff), or ``""`` when none is close: the tail of every "should be one of" message."""
    close = difflib.get_close_matches(str(word), [c for c in choices if isinstance(c, str)], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_positive_int(n, name: str, *, minimum: int = 1) -> int:
    """Return `n` as an int after checking it is an integer >= `minimum`."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise InvalidInputError(f"{name} should be an integer, actual {n!r}")
    if n < minimum:
        raise InvalidInputError(f"{name} should be >= {minimum}, actual {n}")
    return int(n)


def check_real(x, name: str, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False) -> float:
    """Return `x` as a float after checking it is finite and in range."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or not np.isfinite(x):
        raise InvalidInputError(f"{name} should be a finite real number, actual {x!r}")
    x = float(x)
    if low is not None and (x < low or (low_open and x == low)):
        raise InvalidInputError(
            f"{name} should be {'>' if low_open else '>='} {low}, actual {x!r}")
    if high is not None and (x > high or (high_open and x == high)):
        raise InvalidInputError(
            f"{name} should be {'<' if high_open else '<='} {high}, actual {x!r}")
    return x
