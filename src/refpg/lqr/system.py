r"""The linear-quadratic-Gaussian system, validated once (docs/conventions.md, "Linear-quadratic-Gaussian").

.. math::
    x_{t+1} = A x_t + B u_t + w_t,\quad w_t \sim N(0, W),\qquad
    c_t = x_t^\top Q x_t + u_t^\top R u_t,\qquad
    x_0 \sim (\mu_0, \Sigma_0),

with discount :math:`0 < \gamma < 1`. The reward is :math:`-c_t`. Only the
initial second moment :math:`S_0 = \Sigma_0 + \mu_0\mu_0^\top` enters the
exact quantities; `mu0` and `Sigma0` are kept apart for sampling.
"""

from __future__ import annotations

import numbers

import numpy as np

from refpg._validation import as_float_array, check_positive_int, entry
from refpg.errors import InvalidDiscountError, InvalidInputError, ShapeError

__all__ = ["LQRSystem", "random_system", "SYMMETRY_RTOL", "PSD_RTOL"]

#: Largest asymmetry accepted in Q, R, W and Sigma0, relative to the matrix's largest entry:
#: ``|M[i, j] - M[j, i]| <= SYMMETRY_RTOL * max|M|``. A matrix computed in float64 as
#: ``L @ L.T`` or ``(M + M.T) / 2`` passes; the symmetric part is what refpg stores (for Q and
#: R it defines the same quadratic form, for W and Sigma0 the same covariance up to rounding).
SYMMETRY_RTOL = 1e-12

#: Tolerance on eigenvalues, relative to the largest magnitude: a positive semidefinite
#: matrix may have a smallest eigenvalue down to ``-PSD_RTOL * max|eig|`` (round-off of a
#: singular covariance); R, which must be positive definite, needs one above ``+PSD_RTOL * max|eig|``.
PSD_RTOL = 1e-12


def _readonly(arr: np.ndarray) -> np.ndarray:
    arr = np.array(arr, dtype=np.float64, copy=True)
    arr.flags.writeable = False
    return arr


def _symmetric(M: np.ndarray, name: str) -> np.ndarray:
    """The symmetric part of M after checking M is symmetric within SYMMETRY_RTOL."""
    gap = np.abs(M - M.T)
    tol = SYMMETRY_RTOL * float(np.abs(M).max(initial=0.0))
    if (gap > tol).any():
        i, j = (int(k) for k in np.unravel_index(int(np.argmax(gap)), gap.shape))
        raise InvalidInputError(
            f"{name} should be symmetric, actual {entry(name, (i, j))} = {float(M[i, j])!r} != "
            f"{entry(name, (j, i))} = {float(M[j, i])!r} (tolerance {tol:.3g}, {SYMMETRY_RTOL:g} times max|{name}|)")
    return 0.5 * (M + M.T)


def _check_psd(M: np.ndarray, name: str, *, definite: bool = False) -> None:
    """Refuse a symmetric M that is not positive semidefinite (definite: positive definite)."""
    diag = np.diag(M)
    if (diag < 0).any():
        i = int(np.flatnonzero(diag < 0)[0])
        kind = "definite" if definite else "semidefinite"
        raise InvalidInputError(
            f"{name} should be positive {kind}, actual {entry(name, (i, i))} = {float(diag[i])!r} < 0 "
            "(a positive semidefinite matrix has a non-negative diagonal)")
    eig, vec = np.linalg.eigh(M)
    scale = float(np.abs(eig).max(initial=0.0))
    if definite:
        if eig[0] <= PSD_RTOL * scale or scale == 0.0:
            raise InvalidInputError(
                f"{name} should be positive definite, actual smallest eigenvalue {float(eig[0])!r} "
                f"(largest {scale!r}; expected > {PSD_RTOL:g} times the largest), eigenvector "
                f"{np.array2string(vec[:, 0], precision=4)}")
    elif eig[0] < -PSD_RTOL * scale:
        raise InvalidInputError(
            f"{name} should be positive semidefinite, actual smallest eigenvalue {float(eig[0])!r} "
            f"(expected >= -{PSD_RTOL:g} times the largest magnitude {scale!r}), eigenvector "
            f"{np.array2string(vec[:, 0], precision=4)}")


def _check_open_discount(gamma) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):
        raise InvalidDiscountError(f"gamma should be a real number in (0, 1), actual {gamma!r}")
    g = float(gamma)
    if not (np.isfinite(g) and 0.0 < g < 1.0):
        raise InvalidDiscountError(
            f"gamma should be in (0, 1), actual {g!r} (the discounted LQR needs 0 < gamma < 1)")
    return g


class LQRSystem:
    r"""A discounted linear-quadratic-Gaussian control problem ([Fazel2018], with noise and discount).

    .. math::
        x_{t+1} = A x_t + B u_t + w_t,\ w_t \sim N(0, W);\qquad
        c(x, u) = x^\top Q x + u^\top R u;\qquad
        C = \mathbb{E}\Big[\sum_{t \ge 0} \gamma^t c(x_t, u_t)\Big]

    with :math:`x_0` of mean `mu0` and covariance `Sigma0`. The reward is
    :math:`-c`, so :math:`J = -C` (docs/conventions.md, "Linear-quadratic-Gaussian").
    Validated once, here; the arrays are copied and read-only.

    Parameters
    ----------
    A : array_like, shape (n, n)
        Dynamics; n >= 1.
    B : array_like, shape (n, m)
        Input matrix; m >= 1.
    Q : array_like, shape (n, n)
        State cost; symmetric positive semidefinite.
    R : array_like, shape (m, m)
        Action cost; symmetric positive definite.
    W : array_like, shape (n, n)
        Covariance of the process noise w; symmetric positive semidefinite.
    mu0 : array_like, shape (n,)
        Mean of the initial state.
    Sigma0 : array_like, shape (n, n)
        Covariance of the initial state; symmetric positive semidefinite.
    gamma : float
        Discount, 0 < gamma < 1.

    Raises
    ------
    refpg.errors.ShapeError, NonFiniteError, InvalidInputError, InvalidDiscountError
        Naming the argument and the offending entry, e.g.
        ``Q should be symmetric, actual Q[0, 1] = 1.0 != Q[1, 0] = 2.0``.

    Notes
    -----
    Symmetry is checked within `SYMMETRY_RTOL` and definiteness within
    `PSD_RTOL`; the symmetric part of each matrix is stored. Stabilisability
    of (A, B) is not required here: a gain is checked to stabilise the system
    where one is given (`check_gain`), and `refpg.lqr.optimal_gain` checks
    stabilisability before it solves the Riccati equation.

    Examples
    --------
    >>> import numpy as np
    >>> from refpg.lqr import LQRSystem
    >>> sys1 = LQRSystem(A=[[1.0]], B=[[1.0]], Q=[[1.0]], R=[[1.0]], W=[[0.1]],
    ...                  mu0=[0.0], Sigma0=[[1.0]], gamma=0.9)
    >>> sys1.state_dim, sys1.action_dim
    (1, 1)
    """

    __slots__ = ("_A", "_B", "_Q", "_R", "_W", "_mu0", "_Sigma0", "_S0", "_gamma", "_frozen")

    def __init__(self, A, B, Q, R, W, mu0, Sigma0, gamma):
        A = as_float_array(A, "A", ndim=2)
        n = A.shape[0]
        if n == 0 or A.shape != (n, n):
            raise ShapeError(f"A should be square with at least one row, actual shape {A.shape}")
        B = as_float_array(B, "B", ndim=2)
        if B.shape[0] != n or B.shape[1] == 0:
            raise ShapeError(f"B should have shape ({n}, m) with m >= 1 (A is {n} x {n}), actual shape {B.shape}")
        m = B.shape[1]
        Q = _symmetric(as_float_array(Q, "Q", shape=(n, n)), "Q")
        _check_psd(Q, "Q")
        R = _symmetric(as_float_array(R, "R", shape=(m, m)), "R")
        _check_psd(R, "R", definite=True)
        W = _symmetric(as_float_array(W, "W", shape=(n, n)), "W")
        _check_psd(W, "W")
        mu0 = as_float_array(mu0, "mu0", shape=(n,))
        Sigma0 = _symmetric(as_float_array(Sigma0, "Sigma0", shape=(n, n)), "Sigma0")
        _check_psd(Sigma0, "Sigma0")
        self._A, self._B, self._Q, self._R, self._W = (_readonly(M) for M in (A, B, Q, R, W))
        self._mu0, self._Sigma0 = _readonly(mu0), _readonly(Sigma0)
        self._S0 = _readonly(Sigma0 + np.outer(mu0, mu0))
        self._gamma = _check_open_discount(gamma)
        self._frozen = True

    def __setattr__(self, key, value):
        if getattr(self, "_frozen", False):
            raise AttributeError("LQRSystem is immutable; build a new one instead")
        object.__setattr__(self, key, value)

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __repr__(self) -> str:
        return f"LQRSystem(state_dim={self.state_dim}, action_dim={self.action_dim}, gamma={self._gamma})"

    # -- properties ----------------------------------------------------------
    @property
    def A(self) -> np.ndarray:
        """Dynamics matrix, (n, n)."""
        return self._A

    @property
    def B(self) -> np.ndarray:
        """Input matrix, (n, m)."""
        return self._B

    @property
    def Q(self) -> np.ndarray:
        """State cost, (n, n), symmetric positive semidefinite."""
        return self._Q

    @property
    def R(self) -> np.ndarray:
        """Action cost, (m, m), symmetric positive definite."""
        return self._R

    @property
    def W(self) -> np.ndarray:
        """Process-noise covariance, (n, n)."""
        return self._W

    @property
    def mu0(self) -> np.ndarray:
        """Initial-state mean, (n,)."""
        return self._mu0

    @property
    def Sigma0(self) -> np.ndarray:
        """Initial-state covariance, (n, n)."""
        return self._Sigma0

    @property
    def initial_second_moment(self) -> np.ndarray:
        r""":math:`S_0 = \Sigma_0 + \mu_0\mu_0^\top = \mathbb{E}[x_0 x_0^\top]`, (n, n)."""
        return self._S0

    @property
    def gamma(self) -> float:
        """Discount factor, in (0, 1)."""
        return self._gamma

    @property
    def state_dim(self) -> int:
        """n."""
        return self._A.shape[0]

    @property
    def action_dim(self) -> int:
        """m."""
        return self._B.shape[1]

    # -- gains -----------------------------------------------------------------
    def closed_loop(self, K) -> np.ndarray:
        r""":math:`A_K = A - B K`, (n, n), for a gain K of shape (m, n) (validated, not checked for stability)."""
        K = as_float_array(K, "K", shape=(self.action_dim, self.state_dim))
        return self._A - self._B @ K

    def spectral_radius(self, K) -> float:
        r"""Spectral radius of :math:`\sqrt\gamma\, A_K`; K stabilises the discounted system iff it is < 1."""
        return float(np.abs(np.linalg.eigvals(np.sqrt(self._gamma) * self.closed_loop(K))).max())

    def check_gain(self, K, name: str = "K") -> np.ndarray:
        r"""Return K as float64 after checking its shape, finiteness and that it stabilises the system.

        Raises
        ------
        refpg.errors.InvalidInputError
            If the spectral radius of :math:`\sqrt\gamma (A - B K)` is 1 or
            more: the discounted cost (and every exact quantity) is then infinite.
        """
        K = as_float_array(K, name, shape=(self.action_dim, self.state_dim))
        radius = float(np.abs(np.linalg.eigvals(np.sqrt(self._gamma) * (self._A - self._B @ K))).max())
        if not radius < 1.0:
            raise _unstable_gain_error(name, radius)
        return K


def _unstable_gain_error(name: str, radius: float) -> InvalidInputError:
    """The error for a gain whose spectral radius of sqrt(gamma) A_K is `radius` >= 1."""
    return InvalidInputError(
        f"{name} does not stabilise the system: the spectral radius of sqrt(gamma) (A - B K) is "
        f"{radius!r}; expected < 1 (the discounted cost is infinite otherwise)")


def random_system(seed, state_dim: int, action_dim: int, *, gamma: float = 0.9,
                  radius: float = 0.9) -> LQRSystem:
    r"""A random LQR system whose zero gain is stabilising, for benchmarks and examples.

    A has standard normal entries scaled so that the spectral radius of
    :math:`\sqrt\gamma A` is `radius`; B has normal entries divided by
    :math:`\sqrt n`; :math:`Q = L L^\top / n + I`, :math:`R = M M^\top / m + I`,
    :math:`W = 0.1 I`, :math:`\mu_0 = 0`, :math:`\Sigma_0 = I`.

    Parameters
    ----------
    seed : int or numpy.random.Generator
    state_dim, action_dim : int
        n and m, at least 1.
    gamma : float
        Discount, in (0, 1).
    radius : float
        Spectral radius of :math:`\sqrt\gamma A`, in [0, 1).

    Returns
    -------
    LQRSystem
    """
    n = check_positive_int(state_dim, "state_dim")
    m = check_positive_int(action_dim, "action_dim")
    g = _check_open_discount(gamma)
    if isinstance(radius, bool) or not isinstance(radius, numbers.Real) or not 0.0 <= float(radius) < 1.0:
        raise InvalidInputError(f"radius should be a real number in [0, 1), actual {radius!r}")
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, n))
    rho = float(np.abs(np.linalg.eigvals(A)).max())
    A *= float(radius) / (np.sqrt(g) * rho) if rho > 0 else 0.0
    B = rng.standard_normal((n, m)) / np.sqrt(n)
    L = rng.standard_normal((n, n))
    M = rng.standard_normal((m, m))
    return LQRSystem(A, B, L @ L.T / n + np.eye(n), M @ M.T / m + np.eye(m), 0.1 * np.eye(n),
                     np.zeros(n), np.eye(n), g)
