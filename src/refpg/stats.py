r"""Statistical tests with a declared false-alarm rate (docs/conventions.md).

`mean_test` asks whether i.i.d. vector samples have a given mean: one
two-sided z-test per coordinate, Bonferroni-corrected so the family-wise
false-alarm rate is at most `alpha` (default 1e-6). The z-statistic uses the
sample standard deviation, so the level is asymptotic (central limit
theorem); refpg's tests use at least 10^4 samples of bounded-variance
estimators, where the normal tail is accurate far beyond the levels used.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refpg._validation import as_float_array, check_real
from refpg.errors import InvalidInputError

__all__ = ["MeanTest", "mean_test", "DEFAULT_ALPHA"]

#: Family-wise false-alarm rate of every statistical test in refpg.
DEFAULT_ALPHA = 1e-6


class MeanTest(NamedTuple):
    """Outcome of `mean_test`; ``str()`` explains it in one paragraph."""

    rejected: bool
    """True when some coordinate's :math:`|z|` exceeds the threshold."""
    alpha: float
    """Family-wise false-alarm rate."""
    threshold: float
    r"""Bonferroni critical value of :math:`|z|`: :math:`\Phi^{-1}(1 - \alpha / (2k))`."""
    z: np.ndarray
    """Per-coordinate z-statistics (shape of the mean)."""
    mean: np.ndarray
    """Sample mean."""
    expected: np.ndarray
    """Hypothesised mean."""
    stderr: np.ndarray
    """Standard error of the sample mean."""
    n: int
    """Number of samples."""

    @property
    def worst(self) -> tuple:
        """Index of the coordinate with the largest :math:`|z|`."""
        return tuple(int(i) for i in np.unravel_index(int(np.argmax(np.abs(self.z))), self.z.shape))

    def __str__(self) -> str:
        i = self.worst
        verdict = "REJECTED" if self.rejected else "not rejected"
        return (f"mean test {verdict} at family-wise alpha={self.alpha:g} over {self.z.size} coordinates, "
                f"n={self.n}: largest |z| = {abs(self.z[i]):.3g} at {i} (threshold {self.threshold:.3g}); "
                f"mean there {self.mean[i]:.6g} +- {self.stderr[i]:.2g}, expected {self.expected[i]:.6g}")


def mean_test(samples, expected, *, alpha: float = DEFAULT_ALPHA, exact_atol: float = 1e-12,
              tested=None, student: bool = False, zero_spread_is_evidence=None) -> MeanTest:
    r"""Test :math:`H_0: \mathbb{E}[X] = \mu` from i.i.d. samples of X.

    .. math::
        z_j = \frac{\bar X_j - \mu_j}{s_j/\sqrt{n}},\qquad
        \text{reject if } \max_j |z_j| > \Phi^{-1}\!\Big(1 - \frac{\alpha}{2k}\Big)

    Parameters
    ----------
    samples : array_like, shape (n, ...)
        One sample per row.
    expected : array_like, shape (...)
        The hypothesised mean mu.
    alpha : float in (0, 1)
        Family-wise false-alarm rate (Bonferroni over the k coordinates).
    exact_atol : float
        A coordinate whose samples are all equal is a deterministic quantity:
        rejected iff it differs from mu by more than
        ``exact_atol * max(1, |mu|)``.
    tested : array_like of bool, shape (...), optional
        The coordinates to test (default all); the others get z = 0 and do
        not count in the Bonferroni k.
    student : bool
        Use Student's t with n - 1 degrees of freedom for the threshold
        instead of the normal (exact for normal samples, safer for small n).
    zero_spread_is_evidence : array_like of bool, shape (...), optional
        Where identical samples that differ from mu count as a rejection
        (default everywhere, as above); elsewhere such a coordinate gets
        z = 0, for samples that may repeat one value by chance.

    Returns
    -------
    MeanTest
    """
    X = as_float_array(samples, "samples")
    if X.ndim < 1 or X.shape[0] < 2:
        raise InvalidInputError(f"samples should have shape (n, ...) with n >= 2, actual shape {X.shape}")
    mu = as_float_array(expected, "expected", shape=X.shape[1:])
    alpha = check_real(alpha, "alpha", low=0.0, high=1.0, low_open=True, high_open=True)
    n = X.shape[0]
    mean = X.mean(axis=0)
    se = X.std(axis=0, ddof=1) / np.sqrt(n)
    diff = mean - mu
    mask = np.ones(mu.shape, dtype=bool) if tested is None else np.asarray(tested, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(mask & (se > 0), diff / se, 0.0)
    exact_bad = mask & (se == 0) & (np.abs(diff) > exact_atol * np.maximum(1.0, np.abs(mu)))
    if zero_spread_is_evidence is not None:
        exact_bad &= np.asarray(zero_spread_is_evidence, dtype=bool)
    z = np.where(exact_bad, np.copysign(np.inf, diff), z)
    k = max(1, int(mask.sum()))
    tail = alpha / (2 * k)
    # Imported here: scipy.stats takes ~0.6 s to import, which every `refpg check` process (the
    # conformance kit imports this module) paid before any check needed a threshold.
    from scipy import stats as _st

    threshold = float(_st.t.isf(tail, n - 1) if student else _st.norm.isf(tail))
    return MeanTest(rejected=bool(np.any(np.abs(z) > threshold)), alpha=alpha, threshold=threshold,
                    z=np.asarray(z), mean=mean, expected=mu, stderr=se, n=n)
