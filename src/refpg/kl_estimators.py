r"""Per-sample estimators of :math:`D_{KL}(\pi_{old} \,\|\, \pi_{new})` from log-probabilities.

Samples are actions :math:`a \sim \pi_{old}(\cdot|s)` and
:math:`r = \pi_{new}(a|s) / \pi_{old}(a|s)` is the importance ratio
[Schulman2020]:

* ``k1 = -log r``: unbiased, but negative on every sample where pi_new
  puts more mass than pi_old, so its batch mean can be negative;
* ``k2 = (log r)^2 / 2``: non-negative and biased; its expectation is the
  second-order expansion of the KL, good while the policies are close;
* ``k3 = (r - 1) - log r``: unbiased and non-negative (``r - 1`` has mean 0
  under pi_old and ``x - 1 >= log x``).

Each function takes arrays ``logp_new`` and ``logp_old`` of one shape
(any shape; a (T, N) batch is typical) and returns the per-sample array of
that shape: the reduction (a mean over the batch) is the caller's.
Log-probabilities must be finite: a sample with ``logp_old = -inf`` cannot
have been drawn from pi_old, and ``logp_new = -inf`` makes k1 and k3 infinite
(the KL is then infinite too); both are refused rather than propagated as
inf or NaN. Log-densities of continuous actions are fine (they may be > 0).
"""

from __future__ import annotations

import math

import numpy as np

from refpg._validation import as_float_array
from refpg.errors import ShapeError

__all__ = ["importance_ratio", "kl_k1", "kl_k2", "kl_k3", "log_ratio"]


def _log_ratio(logp_new, logp_old) -> np.ndarray:
    new = as_float_array(logp_new, "logp_new")
    old = as_float_array(logp_old, "logp_old")
    if old.shape != new.shape:
        raise ShapeError(
            f"logp_old should have the shape of logp_new, {new.shape}, "
            f"actual shape {old.shape}")
    return new - old


def log_ratio(logp_new, logp_old) -> np.ndarray:
    r"""Per-sample :math:`\log r = \log\pi_{new}(a|s) - \log\pi_{old}(a|s)`.

    Parameters
    ----------
    logp_new, logp_old : array_like, one shape
        Finite log-probabilities (or log-densities) of the sampled actions,
        :math:`a \sim \pi_{old}`.

    Returns
    -------
    ndarray, float64, of the input shape

    Raises
    ------
    refpg.errors.ShapeError
        The shapes differ.
    refpg.errors.NonFiniteError
        A NaN or infinite log-probability, naming the entry.

    References
    ----------
    [Schulman2020]; [Schulman2017] Eq. (6) uses :math:`r_t(\theta)`.
    """
    return _log_ratio(logp_new, logp_old)


def importance_ratio(logp_new, logp_old) -> np.ndarray:
    r"""Per-sample :math:`r = \pi_{new}(a|s)/\pi_{old}(a|s) = \exp(\log\pi_{new} - \log\pi_{old})`.

    Parameters
    ----------
    logp_new, logp_old : array_like, one shape
        As in `log_ratio`.

    Returns
    -------
    ndarray, float64, of the input shape
        Positive; ``inf`` (with NumPy's overflow warning) where the log-ratio
        exceeds about 709.78, the true value being beyond float64.

    Raises
    ------
    refpg.errors.InvalidInputError
        As `log_ratio`.

    References
    ----------
    [Schulman2017] Eq. (6); [Schulman2020].
    """
    return np.exp(_log_ratio(logp_new, logp_old))


def kl_k1(logp_new, logp_old) -> np.ndarray:
    r"""Per-sample :math:`k_1 = -\log r`, unbiased for :math:`D_{KL}(\pi_{old}\|\pi_{new})`.

    .. math:: \mathbb{E}_{a\sim\pi_{old}}[k_1] = \sum_a \pi_{old}(a)
              \log\frac{\pi_{old}(a)}{\pi_{new}(a)} = D_{KL}(\pi_{old}\|\pi_{new})

    Parameters
    ----------
    logp_new, logp_old : array_like, one shape
        As in `log_ratio`.

    Returns
    -------
    ndarray, float64, of the input shape
        Negative wherever :math:`\pi_{new}(a) > \pi_{old}(a)`.

    Raises
    ------
    refpg.errors.InvalidInputError
        As `log_ratio`.

    References
    ----------
    [Schulman2020].
    """
    return -_log_ratio(logp_new, logp_old)


def kl_k2(logp_new, logp_old) -> np.ndarray:
    r"""Per-sample :math:`k_2 = \tfrac12 (\log r)^2 \ge 0`, a biased KL estimate.

    .. math:: \mathbb{E}_{a\sim\pi_{old}}[k_2] = D_{KL}(\pi_{old}\|\pi_{new})
              + O(\|\log\pi_{new} - \log\pi_{old}\|^3)

    (both sides are :math:`\tfrac12` the Fisher quadratic form to second order).

    Parameters
    ----------
    logp_new, logp_old : array_like, one shape
        As in `log_ratio`.

    Returns
    -------
    ndarray, float64, of the input shape

    Raises
    ------
    refpg.errors.InvalidInputError
        As `log_ratio`.

    References
    ----------
    [Schulman2020].
    """
    x = _log_ratio(logp_new, logp_old)
    return 0.5 * x * x


#: Below this |log r|, k3 is summed from its Taylor series; above it,
#: expm1(x) - x loses at most a few ulps (it is over a fifth of |expm1(x)| there).
_K3_SERIES_BELOW = 0.5
#: 1/n! for n = 15, ..., 2, Horner order: the fewest terms for which the
#: truncation error (about 0.5^14 / 16! = 2.9e-18 at |x| = 0.5, relative to a
#: sum > 0.42) stays below 2^-56, an eighth of an ulp; one term fewer would
#: leave 0.5^13 / 15! = 9.3e-17, about two ulps (tests/test_kl_estimators.py).
_K3_COEFFS = tuple(1.0 / math.factorial(n) for n in range(15, 1, -1))


def kl_k3(logp_new, logp_old) -> np.ndarray:
    r"""Per-sample :math:`k_3 = (r - 1) - \log r \ge 0`, unbiased for :math:`D_{KL}(\pi_{old}\|\pi_{new})`.

    .. math:: \mathbb{E}_{a\sim\pi_{old}}[k_3] = \sum_a (\pi_{new}(a) - \pi_{old}(a))
              + D_{KL}(\pi_{old}\|\pi_{new}) = D_{KL}(\pi_{old}\|\pi_{new})

    Parameters
    ----------
    logp_new, logp_old : array_like, one shape
        As in `log_ratio`.

    Returns
    -------
    ndarray, float64, of the input shape
        Non-negative in floating point, not only in exact arithmetic.

    Raises
    ------
    refpg.errors.InvalidInputError
        As `log_ratio`.

    Notes
    -----
    With :math:`x = \log r`, :math:`k_3 = e^x - 1 - x`. The literal
    ``(r - 1) - log r`` cancels catastrophically for small x (at
    :math:`x = 10^{-10}` it is off by three orders of magnitude), and
    ``expm1(x) - x`` still loses about 7 of the 16 digits there (its rounding
    error is an ulp of x, the result is :math:`x^2/2`). So for
    :math:`|x| < 0.5` this sums :math:`x^2 \sum_{n \ge 2} x^{n-2}/n!` by
    Horner's rule (a product of :math:`x^2` and a sum > 0.39, hence >= 0), and
    above it uses ``expm1(x) - x``, which is >= 0 because expm1 is faithfully
    rounded and :math:`e^x - 1 \ge x`. Both are accurate to a few ulps.

    References
    ----------
    [Schulman2020].
    """
    x = _log_ratio(logp_new, logp_old)
    small = np.abs(x) < _K3_SERIES_BELOW
    xs = np.where(small, x, 0.0)
    poly = np.zeros_like(xs)
    for c in _K3_COEFFS:
        poly = poly * xs + c
    # np.where evaluates both branches; the large one only on |x| >= 0.5 so an
    # overflow warning is raised only where k3 really overflows.
    xl = np.where(small, 1.0, x)
    return np.where(small, xs * xs * poly, np.expm1(xl) - xl)
