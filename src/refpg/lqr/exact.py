r"""Exact quantities of the linear-quadratic-Gaussian problem (docs/conventions.md, "Linear-quadratic-Gaussian").

Two families, each labelled with the objective it belongs to:

* **Cost side**, in the LQR literature's terms, arguments ``(system, K, log_std)``:
  the expected discounted **cost** :math:`C = \mathbb{E}[\sum_t \gamma^t c_t]`
  over the infinite horizon and everything built on it (:math:`P_K`,
  :math:`q_K`, V, Q, the advantage, :math:`\Sigma_K`, :math:`E_K`,
  :math:`\nabla C`, the natural gradient of C, the optimal gain), the mean
  KL under a given state second moment, and the finite-horizon cost
  :math:`C_H = \mathbb{E}[\sum_{t<H} \gamma^t c_t]` with its gradient and the
  :math:`\gamma^t`-free direction that time-limited episodic code estimates.
  These are costs: smaller is better, and a gradient step *subtracts* them.
* **Reward side**, arguments ``(system, policy, theta)`` with a
  `refpg.lqr.LinearGaussian` policy and the flat theta, named as the tabular
  functions of `refpg` are: `objective` is :math:`J = -C`, `policy_gradient`
  is :math:`\nabla_\theta J`, `natural_gradient` is :math:`F^{-1}\nabla_\theta J`,
  `surrogate` is TRPO's :math:`L_{old}` in rewards; `fisher_matrix`,
  `fisher_vector_product`, `kl_divergence` and `kl_gradient` are the same in
  both. These are what an algorithm that maximises J ascends.

Every infinite-horizon quantity needs a gain that stabilises the discounted
system, :math:`\rho(\sqrt\gamma (A - BK)) < 1`; anything else is refused with
an error naming the spectral radius. The finite-horizon functions accept any
gain. Two Lyapunov (Stein) equations give everything:

.. math::
    P_K = Q + K^\top R K + \gamma A_K^\top P_K A_K,\qquad
    \Sigma_K = S_0 + \gamma A_K \Sigma_K A_K^\top + \frac{\gamma}{1-\gamma} N,

with :math:`A_K = A - BK`, :math:`N = B\Psi B^\top + W`,
:math:`\Psi = \mathrm{diag}(e^{2\,\mathrm{log\_std}})`. They are solved as the
series :math:`\sum_t a^t X a^{t\top}`, :math:`a = \sqrt\gamma A_K`, summed by
doubling (:math:`X \leftarrow X + a X a^\top`, :math:`a \leftarrow a^2`) until
:math:`\|a^{2^k}\|_F^2 \le 2^{-53}`, where every remaining term is below the
float64 resolution of the sum; reaching that also certifies the gain stable.
(Bartels-Stewart, `scipy.linalg.solve_discrete_lyapunov`, agrees to 1e-10
relative and is used where the powers of a grow past 1e250 before they decay.)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.linalg as sla

from refpg._deprecation import keyword_only_since
from refpg._validation import as_float_array, check_positive_int
from refpg.errors import InvalidInputError, ProblemTooLargeError, ShapeError
from refpg.fisher import DENSE_FISHER_MAX_PARAMS
from refpg.lqr.policy import LinearGaussian, _check_log_std_range
from refpg.lqr.system import LQRSystem, _check_psd, _symmetric, _unstable_gain_error

__all__ = [
    "LQREvaluation",
    "CostGradient",
    "OptimalGain",
    "FiniteHorizon",
    "evaluate",
    "value_matrix",
    "value_constant",
    "state_value",
    "action_value",
    "advantage",
    "second_moment",
    "cost",
    "cost_from_second_moment",
    "gain_error",
    "cost_gradient",
    "natural_cost_gradient",
    "optimal_gain",
    "HEWER_MAX_STEPS",
    "BOUNDARY_MARGIN",
    "state_kl",
    "mean_kl",
    "finite_horizon",
    "finite_horizon_cost",
    "finite_horizon_cost_gradient",
    "gamma_free_direction",
    "objective",
    "policy_gradient",
    "fisher_matrix",
    "fisher_vector_product",
    "natural_gradient",
    "surrogate",
    "surrogate_gradient",
    "kl_divergence",
    "kl_gradient",
]


# -- results ---------------------------------------------------------------------------------------

class CostGradient(NamedTuple):
    """A derivative of a cost with respect to the gain and the log standard deviations (cost side)."""

    K: np.ndarray
    """Derivative with respect to K, shape (m, n)."""
    log_std: np.ndarray
    """Derivative with respect to log_std, shape (m,)."""


class LQREvaluation(NamedTuple):
    """Every infinite-horizon cost-side quantity of one policy, from the two Lyapunov solves (`evaluate`)."""

    K: np.ndarray
    """The gain, (m, n)."""
    log_std: np.ndarray
    """The log standard deviations, (m,)."""
    P: np.ndarray
    r""":math:`P_K`, (n, n): the cost-to-go is :math:`x^\top P_K x + q_K`."""
    q: float
    r""":math:`q_K`, the noise part of the cost-to-go."""
    Sigma: np.ndarray
    r""":math:`\Sigma_K = \sum_t \gamma^t \mathbb{E}[x_t x_t^\top]`, (n, n)."""
    Huu: np.ndarray
    r""":math:`H_{uu} = R + \gamma B^\top P_K B`, (m, m)."""
    E: np.ndarray
    r""":math:`E_K = H_{uu} K - \gamma B^\top P_K A`, (m, n)."""
    cost: float
    r"""C, the expected discounted cost: :math:`\mathrm{tr}(P_K S_0) + q_K`."""


class OptimalGain(NamedTuple):
    """The optimal gain and its cost-to-go matrix (`optimal_gain`)."""

    K: np.ndarray
    r""":math:`K^* = \gamma (R + \gamma B^\top P^* B)^{-1} B^\top P^* A`, (m, n)."""
    P: np.ndarray
    r""":math:`P^* = P_{K^*}`, the stabilising solution of the discounted Riccati equation, (n, n)."""


class FiniteHorizon(NamedTuple):
    """The backward and forward recursions of the finite-horizon problem (`finite_horizon`)."""

    P: np.ndarray
    r""":math:`P_t`, (H + 1, n, n), from :math:`P_H = 0`: the cost-to-go from time t is :math:`x^\top P_t x + q_t`."""
    q: np.ndarray
    """:math:`q_t`, (H + 1,), with :math:`q_H = 0`."""
    S: np.ndarray
    r""":math:`S_t = \mathbb{E}[x_t x_t^\top]`, (H, n, n), for t = 0..H-1."""
    cost: float
    r""":math:`C_H = \mathrm{tr}(P_0 S_0) + q_0 = \mathbb{E}[\sum_{t<H}\gamma^t c_t]`."""


# -- validation and the shared kernels ------------------------------------------------------------

def _check_system(system) -> LQRSystem:
    if not isinstance(system, LQRSystem):
        raise InvalidInputError(f"system should be a refpg.lqr.LQRSystem, actual {type(system).__name__}")
    return system


def _log_std(system, log_std, name="log_std"):
    log_std = as_float_array(log_std, name, shape=(system.action_dim,))
    _check_log_std_range(log_std, name)
    return log_std


def _gain(system, K, name="K"):
    _check_system(system)
    return as_float_array(K, name, shape=(system.action_dim, system.state_dim))


def _gain_policy(system, K, log_std):
    K = _gain(system, K)
    return K, _log_std(system, log_std)


#: The doubling stops once ||a^(2^k)||_F^2 <= 2^-53: every term left is then below the
#: float64 resolution of the sum (the tail is a^(2^k) X a^(2^k)^T), and rho(a) < 1 is certified.
_TAIL = 2.0 ** -53
_MAX_DOUBLINGS = 64


def _doubling(a, sigma_q, p_q, name):
    r"""The two discounted Lyapunov sums of a stable a, by doubling (the squared Smith iteration).

    :math:`\Sigma = \sum_t a^t Q_\Sigma a^{t\top}` (``X = a X a^T + sigma_q``) and
    :math:`P = \sum_t a^{t\top} Q_P a^t` (``X = a^T X a + p_q``); either query may be None. After k steps
    the sums hold their first 2^k terms; the powers a^(2^k) are shared. The tail left out is
    :math:`a^{2^k} X a^{2^k\top}`, at most :math:`\|a^{2^k}\|_2^2 \|X\|_2`, hence the stopping rule,
    which also certifies the spectral radius of a below 1; a gain for which it fails is refused with
    that radius (computed then, by ``eigvals``). Three or five matrix products per step, about 9 steps
    at radius 0.9: several times faster than Bartels-Stewart (`scipy.linalg.solve_discrete_lyapunov`,
    0.6 ms at n = 50) up to n = 50.
    """
    S, P, b = sigma_q, p_q, a
    size = np.inf
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(_MAX_DOUBLINGS):
            if S is not None:
                S = S + b @ S @ b.T
            if P is not None:
                P = P + b.T @ P @ b
            b = b @ b
            size = float(np.vdot(b, b))
            if size <= _TAIL or not size < 1e250:
                break
    if not size <= _TAIL:
        radius = float(np.abs(np.linalg.eigvals(a)).max())
        if not radius < 1.0:
            raise _unstable_gain_error(name, radius)
        # Stable, yet the powers grew past 1e250 or would not shrink in 2^64 terms: leave it to LAPACK.
        S = None if sigma_q is None else sla.solve_discrete_lyapunov(a, sigma_q)
        P = None if p_q is None else sla.solve_discrete_lyapunov(a.T, p_q)
    return (None if S is None else 0.5 * (S + S.T)), (None if P is None else 0.5 * (P + P.T))


def _P(system, K, name="K"):
    A_K = system.A - system.B @ K
    return _doubling(np.sqrt(system.gamma) * A_K, None, system.Q + K.T @ system.R @ K, name)[1], A_K


def _noise(system, psi):
    return (system.B * psi) @ system.B.T + system.W


def _q(system, P, psi, N):
    g = system.gamma
    return float((np.diag(system.R) @ psi + g * np.sum(P * N)) / (1.0 - g))


def _sigma_q(system, N):
    g = system.gamma
    return system.initial_second_moment + (g / (1.0 - g)) * N


def _Sigma(system, A_K, N, name="K"):
    return _doubling(np.sqrt(system.gamma) * A_K, _sigma_q(system, N), None, name)[0]


def _evaluate(system, K, log_std, name="K"):
    psi = np.exp(2.0 * log_std)
    A_K = system.A - system.B @ K
    N = _noise(system, psi)
    Sigma, P = _doubling(np.sqrt(system.gamma) * A_K, _sigma_q(system, N), system.Q + K.T @ system.R @ K, name)
    q = _q(system, P, psi, N)
    Huu, E = _huu_E(system, P, K)
    return LQREvaluation(K=K, log_std=log_std, P=P, q=q, Sigma=Sigma, Huu=Huu, E=E,
                         cost=float(np.sum(P * system.initial_second_moment) + q))


def _cost(system, K, log_std, name="K"):
    psi = np.exp(2.0 * log_std)
    P = _P(system, K, name)[0]
    return float(np.sum(P * system.initial_second_moment) + _q(system, P, psi, _noise(system, psi)))


def _natural(system, K, log_std, name="K"):
    psi = np.exp(2.0 * log_std)
    Huu, E = _huu_E(system, _P(system, K, name)[0], K)
    h = 1.0 / (1.0 - system.gamma)
    return CostGradient(K=2.0 * h * psi[:, None] * E, log_std=h * psi * np.diag(Huu))


def _gradient(ev, gamma):
    psi = np.exp(2.0 * ev.log_std)
    return CostGradient(K=2.0 * ev.E @ ev.Sigma, log_std=2.0 * psi * np.diag(ev.Huu) / (1.0 - gamma))


def _huu_E(system, P, K):
    g = system.gamma
    BP = system.B.T @ P
    Huu = system.R + g * BP @ system.B
    return 0.5 * (Huu + Huu.T), Huu @ K - g * BP @ system.A


def _states(x, n, name="states"):
    x = as_float_array(x, name)
    if x.ndim < 1 or x.shape[-1] != n:
        raise ShapeError(f"{name} should have shape (..., {n}), actual shape {x.shape}")
    return x


def _quad(x, M):
    return np.einsum("...i,ij,...j->...", x, M, x)


# -- infinite horizon, cost side --------------------------------------------------------------------

def evaluate(system, K, log_std) -> LQREvaluation:
    r"""Every infinite-horizon cost-side quantity of :math:`\pi_K = N(-Kx, \Psi)`, from two Lyapunov solves.

    .. math::
        P_K = Q + K^\top R K + \gamma A_K^\top P_K A_K,\quad
        q_K = \frac{\mathrm{tr}(R\Psi) + \gamma\,\mathrm{tr}(P_K N)}{1-\gamma},\quad
        \Sigma_K = S_0 + \gamma A_K\Sigma_K A_K^\top + \frac{\gamma N}{1-\gamma},

    :math:`H_{uu} = R + \gamma B^\top P_K B`, :math:`E_K = H_{uu}K - \gamma B^\top P_K A`,
    :math:`C = \mathrm{tr}(P_K S_0) + q_K` (a cost; :math:`J = -C`).

    Parameters
    ----------
    system : LQRSystem
    K : array_like, shape (m, n)
        A gain that stabilises the discounted system.
    log_std : array_like, shape (m,)

    Returns
    -------
    LQREvaluation

    Raises
    ------
    refpg.errors.InvalidInputError
        A bad argument, or a gain with :math:`\rho(\sqrt\gamma A_K) \ge 1` (the message gives the radius).

    References
    ----------
    [Fazel2018] Section 2 (with discount and noise); docs/conventions.md, "Linear-quadratic-Gaussian".
    """
    K, log_std = _gain_policy(system, K, log_std)
    return _evaluate(system, K, log_std)


def value_matrix(system, K) -> np.ndarray:
    r""":math:`P_K`, the solution of :math:`P_K = Q + K^\top R K + \gamma A_K^\top P_K A_K` (cost side, discounted).

    The expected discounted cost from state x is :math:`x^\top P_K x + q_K`;
    :math:`P_K` does not depend on the exploration noise.

    Returns
    -------
    ndarray of shape (n, n), symmetric positive semidefinite

    References
    ----------
    [Fazel2018] Section 2.
    """
    return _P(system, _gain(system, K))[0]


def value_constant(system, K, log_std) -> float:
    r""":math:`q_K = [\mathrm{tr}(R\Psi) + \gamma\,\mathrm{tr}(P_K N)] / (1-\gamma)`, the noise part of the cost-to-go.

    The cost paid for exploring (:math:`\mathrm{tr}(R\Psi)` per step) and for
    the process and exploration noise driving the state
    (:math:`N = B\Psi B^\top + W`); cost side, discounted infinite horizon.

    References
    ----------
    docs/conventions.md, "Linear-quadratic-Gaussian".
    """
    K, log_std = _gain_policy(system, K, log_std)
    psi = np.exp(2.0 * log_std)
    return _q(system, _P(system, K)[0], psi, _noise(system, psi))


def state_value(system, K, log_std, states) -> np.ndarray:
    r"""Expected discounted cost from x: :math:`V_K(x) = x^\top P_K x + q_K` (a cost; the reward value is :math:`-V_K`).

    Parameters
    ----------
    system : LQRSystem
    K : array_like, shape (m, n)
    log_std : array_like, shape (m,)
    states : array_like, shape (..., n)

    Returns
    -------
    ndarray of the batch shape ``states.shape[:-1]``
    """
    K, log_std = _gain_policy(system, K, log_std)
    x = _states(states, system.state_dim)
    psi = np.exp(2.0 * log_std)
    P = _P(system, K)[0]
    return _quad(x, P) + _q(system, P, psi, _noise(system, psi))


def action_value(system, K, log_std, states, actions) -> np.ndarray:
    r"""Expected discounted cost after action u in state x, then :math:`\pi_K` (cost side).

    .. math::
        Q_K(x, u) = x^\top Q x + u^\top R u
        + \gamma\big[(Ax + Bu)^\top P_K (Ax + Bu) + \mathrm{tr}(P_K W) + q_K\big]

    Parameters
    ----------
    states : array_like, shape (..., n)
    actions : array_like, shape (..., m), the same batch shape

    Returns
    -------
    ndarray of the batch shape
    """
    K, log_std = _gain_policy(system, K, log_std)
    x = _states(states, system.state_dim)
    u = _states(actions, system.action_dim, "actions")
    if x.shape[:-1] != u.shape[:-1]:
        raise ShapeError(f"states and actions should have the same batch shape, actual {x.shape[:-1]} "
                         f"and {u.shape[:-1]}")
    psi = np.exp(2.0 * log_std)
    P = _P(system, K)[0]
    q = _q(system, P, psi, _noise(system, psi))
    y = x @ system.A.T + u @ system.B.T
    g = system.gamma
    return _quad(x, system.Q) + _quad(u, system.R) + g * (_quad(y, P) + np.sum(P * system.W) + q)


def advantage(system, K, log_std, states, actions) -> np.ndarray:
    r"""Cost advantage :math:`A_K(x, u) = Q_K(x, u) - V_K(x)`; :math:`\mathbb{E}_{u\sim\pi_K}[A_K(x, u)] = 0`.

    A cost: negative where u is better than the policy on average; the
    reward advantage is :math:`-A_K`.

    Returns
    -------
    ndarray of the batch shape
    """
    K, log_std = _gain_policy(system, K, log_std)
    return action_value(system, K, log_std, states, actions) - state_value(system, K, log_std, states)


def second_moment(system, K, log_std) -> np.ndarray:
    r"""Discounted state second moment :math:`\Sigma_K = \sum_{t\ge0}\gamma^t\,\mathbb{E}[x_t x_t^\top]`.

    .. math::
        \Sigma_K = S_0 + \gamma A_K \Sigma_K A_K^\top + \frac{\gamma}{1-\gamma} N,\qquad
        N = B\Psi B^\top + W

    Unnormalised (TRPO's visitation): the normalised occupancy has second
    moment :math:`(1-\gamma)\Sigma_K`.

    Returns
    -------
    ndarray of shape (n, n), symmetric positive semidefinite

    References
    ----------
    [Fazel2018] Section 2 (with discount and noise).
    """
    K, log_std = _gain_policy(system, K, log_std)
    psi = np.exp(2.0 * log_std)
    return _Sigma(system, system.A - system.B @ K, _noise(system, psi))


def cost(system, K, log_std) -> float:
    r"""Expected discounted cost :math:`C(K) = \mathrm{tr}(P_K S_0) + q_K`; the reward objective is :math:`J = -C`.

    Discounted, infinite horizon: :math:`C = \mathbb{E}[\sum_{t\ge0}\gamma^t (x_t^\top Q x_t + u_t^\top R u_t)]`.
    `cost_from_second_moment` computes the same number the other way.

    References
    ----------
    [Fazel2018] Section 2; docs/conventions.md, "Linear-quadratic-Gaussian".
    """
    K, log_std = _gain_policy(system, K, log_std)
    return _cost(system, K, log_std)


def cost_from_second_moment(system, K, log_std) -> float:
    r"""The same C as `cost`, from the state second moment: :math:`\mathrm{tr}((Q + K^\top R K)\Sigma_K) + \mathrm{tr}(R\Psi)/(1-\gamma)`.

    An independent route (the other Lyapunov equation), for cross-checks:
    the two agree to 1e-10 relative.
    """
    K, log_std = _gain_policy(system, K, log_std)
    psi = np.exp(2.0 * log_std)
    Sigma = _Sigma(system, system.A - system.B @ K, _noise(system, psi))
    return float(np.sum((system.Q + K.T @ system.R @ K) * Sigma) + np.diag(system.R) @ psi / (1.0 - system.gamma))


def gain_error(system, K) -> np.ndarray:
    r""":math:`E_K = (R + \gamma B^\top P_K B) K - \gamma B^\top P_K A`, shape (m, n).

    Zero exactly at the optimal gain; :math:`\nabla_K C = 2 E_K \Sigma_K`.

    References
    ----------
    [Fazel2018] Lemma 1 (with discount).
    """
    K = _gain(system, K)
    return _huu_E(system, _P(system, K)[0], K)[1]


def cost_gradient(system, K, log_std) -> CostGradient:
    r"""Gradient of the discounted cost C (cost side: descend it; :math:`\nabla J = -\nabla C`).

    .. math::
        \nabla_K C = 2 E_K \Sigma_K,\qquad
        \frac{\partial C}{\partial\,\mathrm{log\_std}_i} = \frac{2\sigma_i^2 [H_{uu}]_{ii}}{1-\gamma}

    Returns
    -------
    CostGradient
        ``K`` of shape (m, n), ``log_std`` of shape (m,).

    References
    ----------
    [Fazel2018] Lemma 1, with discount and noise; docs/conventions.md, "Linear-quadratic-Gaussian".
    """
    K, log_std = _gain_policy(system, K, log_std)
    return _gradient(_evaluate(system, K, log_std), system.gamma)


def natural_cost_gradient(system, K, log_std) -> CostGradient:
    r"""Natural gradient of the cost, :math:`F^{-1}\nabla C` with F of `fisher_matrix` (cost side).

    .. math::
        (F^{-1}\nabla C)_K = \frac{2\Psi E_K}{1-\gamma},\qquad
        (F^{-1}\nabla C)_{\mathrm{log\_std},i} = \frac{\sigma_i^2 [H_{uu}]_{ii}}{1-\gamma}

    Needs only :math:`P_K` (one Lyapunov solve): :math:`\Sigma_K` cancels.
    This solves :math:`F x = \nabla C` exactly for every stabilising K; it is
    the minimum-norm solution :math:`F^+\nabla C` whenever :math:`\Sigma_K` is
    nonsingular (always when :math:`\Sigma_0` or W is). Where
    :math:`\Sigma_K` is singular, the two differ only in how K acts on states
    that never occur.

    References
    ----------
    [Fazel2018] Section 4 (natural policy gradient); [Kakade2001].
    """
    K, log_std = _gain_policy(system, K, log_std)
    return _natural(system, K, log_std)


def _riccati_gain(system, Q):
    """A stabilising gain from scipy's Riccati solver for state cost Q, or None where it fails.

    scipy's solver balances the symplectic pencil first, which breaks down on
    some legitimate inputs (entries near the underflow threshold, a singular
    A); the unbalanced solve is tried next.
    """
    g = system.gamma
    a, b = np.sqrt(g) * system.A, np.sqrt(g) * system.B
    for balanced in (True, False):
        try:
            with np.errstate(all="ignore"):
                P = sla.solve_discrete_are(a, b, Q, system.R, balanced=balanced)
        except (np.linalg.LinAlgError, ValueError):
            continue
        if not np.isfinite(P).all():
            continue
        P = 0.5 * (P + P.T)
        K = g * np.linalg.solve(system.R + g * system.B.T @ P @ system.B, system.B.T @ P @ system.A)
        if np.isfinite(K).all() and system.spectral_radius(K) < 1.0:
            return K
    return None


#: Most policy-iteration (Hewer) steps `optimal_gain` takes; from scipy's Riccati solution it needs 1-3.
HEWER_MAX_STEPS = 200

#: `optimal_gain` refuses a limit gain whose spectral radius of sqrt(gamma) (A - B K) is within this of 1:
#: there the Riccati equation has no stabilising solution, and the infimum of the cost is not attained.
BOUNDARY_MARGIN = 1e-8


def optimal_gain(system) -> OptimalGain:
    r"""The optimal gain of the discounted problem, from `scipy.linalg.solve_discrete_are`.

    :math:`P^*` solves the Riccati equation of the scaled system
    :math:`(\sqrt\gamma A, \sqrt\gamma B, Q, R)` and
    :math:`K^* = \gamma (R + \gamma B^\top P^* B)^{-1} B^\top P^* A`, where
    :math:`E_{K^*} = 0`. It minimises C for every log_std (the noise does not
    change the optimal gain).

    Policy iteration (Hewer's method: :math:`P_K` by its Lyapunov equation,
    then :math:`K \leftarrow \gamma H_{uu}^{-1} B^\top P_K A`), of which
    :math:`K^*` is the fixed point, refines the solver's answer until the
    gain stops changing (:math:`\max|\Delta K| \le 10^{-14}\max(1, \max|K|)`, or a change below
    :math:`10^{-8}` of that scale that no longer shrinks: the round-off floor), so that
    :math:`E_{K^*}` computed from :math:`P_{K^*}` vanishes to round-off. Where
    scipy's solver fails on a stabilisable system (it balances the pencil
    first, which breaks down on, e.g., entries near the underflow threshold),
    the iteration starts instead from the solution for the state cost
    :math:`Q + \max(1, \|Q\|) I`, which is stabilising.

    Returns
    -------
    OptimalGain
        ``K`` (m, n) and ``P`` (n, n).

    Raises
    ------
    refpg.errors.InvalidInputError
        If (sqrt(gamma) A, sqrt(gamma) B) is not stabilisable (the message
        gives the uncontrollable eigenvalue, of modulus >= 1), or the
        Riccati equation has no stabilising solution (a mode of
        sqrt(gamma) A on the unit circle that Q does not see: the
        iteration then settles within `BOUNDARY_MARGIN` of the stability
        boundary, or not within `HEWER_MAX_STEPS` steps).

    References
    ----------
    [Fazel2018] Section 2; docs/conventions.md, "Linear-quadratic-Gaussian".
    """
    _check_system(system)
    g = system.gamma
    a, b = np.sqrt(g) * system.A, np.sqrt(g) * system.B
    n = system.state_dim
    for lam in np.linalg.eigvals(a):
        if abs(lam) >= 1.0:
            pbh = np.hstack([lam * np.eye(n) - a, b.astype(complex)])
            sv = np.linalg.svd(pbh, compute_uv=False)
            if sv[-1] <= max(pbh.shape) * np.finfo(float).eps * max(sv[0], 1.0):
                raise InvalidInputError(
                    f"(A, B) is not stabilisable under the discount: the mode of sqrt(gamma) A with eigenvalue "
                    f"{complex(lam):.6g} (|.| = {abs(lam):.6g} >= 1) is not controllable through B "
                    f"(smallest singular value of [lambda I - sqrt(gamma) A, sqrt(gamma) B] is {sv[-1]:.3g}); "
                    "no gain has a finite discounted cost")
    K = _riccati_gain(system, system.Q)
    if K is None:
        K = _riccati_gain(system, system.Q + max(1.0, float(np.abs(system.Q).max())) * np.eye(n))
    if K is None:
        raise InvalidInputError(
            "scipy.linalg.solve_discrete_are found no stabilising gain, with or without balancing, for Q "
            "or for Q + I; the discounted Riccati equation is too ill-conditioned to solve here")
    change = np.inf
    for _ in range(HEWER_MAX_STEPS):
        P = _P(system, K)[0]
        Huu = system.R + g * system.B.T @ P @ system.B
        K_new = system.check_gain(g * np.linalg.solve(Huu, system.B.T @ P @ system.A), "K*")
        previous, change = change, float(np.abs(K_new - K).max())
        K = K_new
        scale = max(1.0, float(np.abs(K).max()))
        # Newton steps shrink quadratically down to the round-off floor, then stop shrinking.
        if change <= 1e-14 * scale or (change <= 1e-8 * scale and change >= previous):
            radius = system.spectral_radius(K)
            if radius > 1.0 - BOUNDARY_MARGIN:
                # The infimum of C is approached on the stability boundary and not attained.
                raise InvalidInputError(
                    f"the discounted Riccati equation has no stabilising solution: policy iteration settles on "
                    f"a gain with spectral radius of sqrt(gamma) (A - B K) = {radius!r}, within "
                    f"{BOUNDARY_MARGIN:g} of 1 (a mode of sqrt(gamma) A on the unit circle not observed through Q)")
            return OptimalGain(K=K, P=_P(system, K)[0])
    raise InvalidInputError(
        f"policy iteration towards the optimal gain did not settle in {HEWER_MAX_STEPS} steps (last change "
        f"{change:.3g}, spectral radius of sqrt(gamma) (A - B K) {system.spectral_radius(K):.12g}): the discounted "
        "Riccati equation has no stabilising solution; a mode of sqrt(gamma) A on the unit circle is likely "
        "not observed through Q")


# -- KL ----------------------------------------------------------------------------------------------

def _kl_args(K_old, log_std_old, K_new, log_std_new):
    K_old = as_float_array(K_old, "K_old", ndim=2)
    K_new = as_float_array(K_new, "K_new", shape=K_old.shape)
    m = K_old.shape[0]
    log_std_old = as_float_array(log_std_old, "log_std_old", shape=(m,))
    log_std_new = as_float_array(log_std_new, "log_std_new", shape=(m,))
    _check_log_std_range(log_std_old, "log_std_old")
    _check_log_std_range(log_std_new, "log_std_new")
    return K_old, log_std_old, K_new, log_std_new


def _kl_constant(log_std_old, log_std_new):
    # tr(Psi_new^-1 Psi_old) - m + ln det Psi_new - ln det Psi_old, summed over action dimensions
    d = 2.0 * (log_std_old - log_std_new)
    return float(np.sum(np.expm1(d) - d))


def state_kl(states, *, K_old, log_std_old, K_new, log_std_new) -> np.ndarray:
    r"""Per-state :math:`KL(\pi_{old}(\cdot|x) \,\|\, \pi_{new}(\cdot|x))` of two linear-Gaussian policies.

    .. math::
        \tfrac12\Big[\mathrm{tr}(\Psi_{new}^{-1}\Psi_{old}) - m + \ln\frac{\det\Psi_{new}}{\det\Psi_{old}}
        + x^\top \Delta K^\top \Psi_{new}^{-1}\Delta K\, x\Big],\qquad \Delta K = K_{old} - K_{new}

    Summed over action dimensions. The policies are passed by name, old then
    new (docs/conventions.md, "Argument order").

    Parameters
    ----------
    states : array_like, shape (..., n)
    K_old, K_new : array_like, shape (m, n)
    log_std_old, log_std_new : array_like, shape (m,)

    Returns
    -------
    ndarray of the batch shape, non-negative

    References
    ----------
    [Schulman2015]; docs/conventions.md, "Linear-quadratic-Gaussian".
    """
    K_old, log_std_old, K_new, log_std_new = _kl_args(K_old, log_std_old, K_new, log_std_new)
    x = _states(states, K_old.shape[1])
    y = (x @ (K_old - K_new).T) * np.exp(-log_std_new)
    return 0.5 * (_kl_constant(log_std_old, log_std_new) + np.einsum("...i,...i->...", y, y))


def mean_kl(*, K_old, log_std_old, K_new, log_std_new, second_moment) -> float:
    r"""State-averaged :math:`KL(\pi_{old}\,\|\,\pi_{new})` under states of second moment M.

    .. math::
        \tfrac12\Big[\mathrm{tr}(\Psi_{new}^{-1}\Psi_{old}) - m + \ln\frac{\det\Psi_{new}}{\det\Psi_{old}}
        + \mathrm{tr}(\Delta K^\top \Psi_{new}^{-1}\Delta K\, M)\Big]

    The per-state KL is quadratic in x with no linear term, so its average
    depends on the state distribution only through :math:`M = \mathbb{E}[x x^\top]`.
    TRPO's mean KL under the normalised occupancy of the old policy is
    :math:`M = (1-\gamma)\Sigma_{K_{old}}` (`kl_divergence`).

    Parameters
    ----------
    K_old, K_new : array_like, shape (m, n)
    log_std_old, log_std_new : array_like, shape (m,)
    second_moment : array_like, shape (n, n)
        M, symmetric positive semidefinite (checked as `LQRSystem` checks Sigma0: a matrix that is not
        gives a negative or meaningless "KL", and is refused with its offending entry or eigenvalue).

    Returns
    -------
    float, non-negative
    """
    K_old, log_std_old, K_new, log_std_new = _kl_args(K_old, log_std_old, K_new, log_std_new)
    n = K_old.shape[1]
    M = _symmetric(as_float_array(second_moment, "second_moment", shape=(n, n)), "second_moment")
    _check_psd(M, "second_moment")
    D = (K_old - K_new) * np.exp(-log_std_new)[:, None]
    return 0.5 * (_kl_constant(log_std_old, log_std_new) + float(np.sum((D.T @ D) * M)))


# -- finite horizon ---------------------------------------------------------------------------------

def _finite(system, K, log_std, horizon):
    _check_system(system)
    K = as_float_array(K, "K", shape=(system.action_dim, system.state_dim))
    log_std = _log_std(system, log_std)
    H = check_positive_int(horizon, "horizon")
    g = system.gamma
    psi = np.exp(2.0 * log_std)
    A_K = system.A - system.B @ K
    N = _noise(system, psi)
    Qk = system.Q + K.T @ system.R @ K
    tr_RPsi = float(np.diag(system.R) @ psi)
    n = system.state_dim
    P = np.zeros((H + 1, n, n))
    q = np.zeros(H + 1)
    S = np.zeros((H, n, n))
    S[0] = system.initial_second_moment
    # An unstable gain may overflow over a long horizon: that is checked (and refused) below.
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(H - 1, -1, -1):
            Pt = Qk + g * A_K.T @ P[t + 1] @ A_K
            P[t] = 0.5 * (Pt + Pt.T)
            q[t] = tr_RPsi + g * (np.sum(P[t + 1] * N) + q[t + 1])
        for t in range(H - 1):
            St = A_K @ S[t] @ A_K.T + N
            S[t + 1] = 0.5 * (St + St.T)
        C = float(np.sum(P[0] * system.initial_second_moment) + q[0])
    if not (np.isfinite(P).all() and np.isfinite(S).all() and np.isfinite(C)):
        raise InvalidInputError(
            f"the finite-horizon recursion overflows float64 at horizon={H}: the gain makes the state grow "
            f"(spectral radius of A - B K is {float(np.abs(np.linalg.eigvals(A_K)).max())!r}); "
            "use a shorter horizon or a stabilising gain")
    return FiniteHorizon(P=P, q=q, S=S, cost=C), K, psi


def finite_horizon(system, K, log_std, horizon) -> FiniteHorizon:
    r"""The finite-horizon recursions (cost side): :math:`P_t, q_t` backward from :math:`P_H = 0`, :math:`S_t` forward.

    .. math::
        P_t = Q + K^\top R K + \gamma A_K^\top P_{t+1} A_K,\qquad
        q_t = \mathrm{tr}(R\Psi) + \gamma\,[\mathrm{tr}(P_{t+1} N) + q_{t+1}],\qquad
        S_{t+1} = A_K S_t A_K^\top + N

    The objective is the discounted cost of an episode cut after H steps,
    :math:`C_H = \mathbb{E}[\sum_{t=0}^{H-1}\gamma^t c_t] = \mathrm{tr}(P_0 S_0) + q_0`,
    which is what time-limited episodic code measures. Any gain is accepted
    (the horizon is finite); as H grows, :math:`P_0 \to P_K` and
    :math:`C_H \to C` for a stabilising gain.

    Parameters
    ----------
    system : LQRSystem
    K : array_like, shape (m, n)
    log_std : array_like, shape (m,)
    horizon : int
        H >= 1.

    Returns
    -------
    FiniteHorizon

    Raises
    ------
    refpg.errors.InvalidInputError
        A bad argument, or a recursion that overflows float64 (an
        unstable gain over a long horizon).
    """
    return _finite(system, K, log_std, horizon)[0]


def finite_horizon_cost(system, K, log_std, horizon) -> float:
    r""":math:`C_H = \mathbb{E}[\sum_{t=0}^{H-1}\gamma^t c_t] = \mathrm{tr}(P_0 S_0) + q_0` (cost side; see `finite_horizon`)."""
    return _finite(system, K, log_std, horizon)[0].cost


def _finite_direction(system, K, log_std, horizon, discounted):
    fh, K, psi = _finite(system, K, log_std, horizon)
    g = system.gamma
    gK = np.zeros_like(K)
    glog = np.zeros_like(psi)
    w = 1.0
    for t in range(fh.S.shape[0]):
        BP = system.B.T @ fh.P[t + 1]
        Ht = system.R + g * BP @ system.B
        Et = Ht @ K - g * BP @ system.A
        gK += w * 2.0 * Et @ fh.S[t]
        glog += w * 2.0 * psi * np.diag(Ht)
        if discounted:
            w *= g
    return CostGradient(K=gK, log_std=glog)


def finite_horizon_cost_gradient(system, K, log_std, horizon) -> CostGradient:
    r"""Gradient of the finite-horizon cost :math:`C_H` (cost side; descend it).

    .. math::
        \nabla_K C_H = 2\sum_{t=0}^{H-1}\gamma^t E_t S_t,\qquad
        \frac{\partial C_H}{\partial\,\mathrm{log\_std}_i} = 2\sigma_i^2\sum_{t=0}^{H-1}\gamma^t [H_t]_{ii},

    with :math:`H_t = R + \gamma B^\top P_{t+1} B` and
    :math:`E_t = H_t K - \gamma B^\top P_{t+1} A` from `finite_horizon`. It
    is the mean of REINFORCE with the :math:`\gamma^t` factor on H-step
    episodes, :math:`\sum_t \gamma^t \nabla\log\pi(u_t|x_t)\, G_t` with
    :math:`G_t = \sum_{k=t}^{H-1}\gamma^{k-t} c_k`.

    Returns
    -------
    CostGradient

    References
    ----------
    [Fazel2018] Lemma 1 (its finite-horizon form); [Williams1992].
    """
    return _finite_direction(system, K, log_std, horizon, discounted=True)


def gamma_free_direction(system, K, log_std, horizon) -> CostGradient:
    r"""The expectation of REINFORCE without the :math:`\gamma^t` factor on H-step episodes (cost side).

    .. math::
        \mathbb{E}\Big[\sum_{t=0}^{H-1}\nabla\log\pi(u_t|x_t)\, G_t\Big]:\qquad
        K\text{ part } 2\sum_{t=0}^{H-1} E_t S_t,\qquad
        \mathrm{log\_std}_i\text{ part } 2\sigma_i^2\sum_{t=0}^{H-1}[H_t]_{ii},

    with :math:`G_t = \sum_{k=t}^{H-1}\gamma^{k-t} c_k` (costs) and
    :math:`E_t, H_t` as in `finite_horizon_cost_gradient`. Most episodic code
    estimates this direction: it weights late states as much as early ones, so
    it is not :math:`\nabla C_H` and in general not the gradient of any
    function [Nota2020]. Only a finite horizon is offered: with noise, the
    undiscounted visits :math:`\sum_t S_t` grow without bound.

    Returns
    -------
    CostGradient

    References
    ----------
    [Nota2020] Section 4.
    """
    return _finite_direction(system, K, log_std, horizon, discounted=False)


# -- reward side, theta -------------------------------------------------------------------------------

def _theta(system, policy, theta, name="theta"):
    _check_system(system)
    if not isinstance(policy, LinearGaussian):
        raise InvalidInputError(f"policy should be a refpg.lqr.LinearGaussian, actual {type(policy).__name__}")
    if (policy.state_dim, policy.action_dim) != (system.state_dim, system.action_dim):
        raise ShapeError(
            f"policy has state_dim={policy.state_dim}, action_dim={policy.action_dim} but the system has "
            f"state_dim={system.state_dim}, action_dim={system.action_dim}")
    theta = policy.validate_theta(theta, name)
    K, log_std = policy._split(theta)
    return K, log_std, f"K (from {name})"


def objective(system, policy, theta) -> float:
    r"""The reward objective :math:`J(\theta) = -C(K)`, discounted, infinite horizon.

    Parameters
    ----------
    system : LQRSystem
    policy : LinearGaussian
    theta : ndarray of shape ``policy.theta_shape``

    Returns
    -------
    float
    """
    return -_cost(system, *_theta(system, policy, theta))


def policy_gradient(system, policy, theta) -> np.ndarray:
    r""":math:`\nabla_\theta J = -\nabla_\theta C`, packed like theta (reward side: ascend it).

    .. math::
        \nabla_\theta J = \frac{1}{1-\gamma}\mathbb{E}_{x\sim d,\,u\sim\pi}[\nabla\log\pi(u|x)\, A^{reward}(x,u)]
        = -\big(\mathrm{vec}(2E_K\Sigma_K),\ 2\sigma^2\odot\mathrm{diag}(H_{uu})/(1-\gamma)\big)

    References
    ----------
    [Fazel2018] Lemma 1; [Sutton2000].
    """
    g = _gradient(_evaluate(system, *_theta(system, policy, theta)), system.gamma)
    return -policy._vec(g.K, g.log_std)


def fisher_matrix(system, policy, theta) -> np.ndarray:
    r"""Fisher matrix under the normalised occupancy, in theta's order.

    .. math::
        F = \mathbb{E}_{x\sim d,\,u\sim\pi}[\nabla\log\pi\,\nabla\log\pi^\top]
        = \begin{pmatrix}(1-\gamma)\Sigma_K\otimes\Psi^{-1} & 0\\ 0 & 2I\end{pmatrix}

    (vec(K) column-major, then log_std). The same for costs and rewards.

    Returns
    -------
    ndarray of shape (n_params, n_params), symmetric positive semidefinite

    Raises
    ------
    refpg.errors.ProblemTooLargeError
        Above `refpg.fisher.DENSE_FISHER_MAX_PARAMS` parameters: use `fisher_vector_product`.

    References
    ----------
    [Kakade2001]; docs/conventions.md, "Linear-quadratic-Gaussian".
    """
    if policy.n_params > DENSE_FISHER_MAX_PARAMS:
        raise ProblemTooLargeError(
            f"fisher_matrix: policy has {policy.n_params} parameters, more than "
            f"DENSE_FISHER_MAX_PARAMS={DENSE_FISHER_MAX_PARAMS}; use fisher_vector_product")
    K, log_std, name = _theta(system, policy, theta)
    Sigma = _Sigma(system, system.A - system.B @ K, _noise(system, np.exp(2.0 * log_std)), name)
    m = system.action_dim
    F = np.zeros((policy.n_params, policy.n_params))
    mn = m * system.state_dim
    F[:mn, :mn] = (1.0 - system.gamma) * np.kron(Sigma, np.diag(np.exp(-2.0 * log_std)))
    F[mn:, mn:] = 2.0 * np.eye(m)
    return F


def fisher_vector_product(system, policy, theta, v) -> np.ndarray:
    r"""Matrix-free :math:`F v`: :math:`\big((1-\gamma)\,\mathrm{vec}(\Psi^{-1} V_K \Sigma_K),\ 2 v_{\mathrm{log\_std}}\big)`.

    Parameters
    ----------
    v : ndarray of shape ``policy.theta_shape``
        A tangent in theta, unpacked as :math:`(V_K, v_{\mathrm{log\_std}})`.

    References
    ----------
    [Kakade2001]; [Schulman2015] Appendix C.1.
    """
    K, log_std, name = _theta(system, policy, theta)
    v = as_float_array(v, "v", shape=policy.theta_shape)
    VK, vlog = policy._split(v)
    Sigma = _Sigma(system, system.A - system.B @ K, _noise(system, np.exp(2.0 * log_std)), name)
    return policy._vec((1.0 - system.gamma) * np.exp(-2.0 * log_std)[:, None] * (VK @ Sigma), 2.0 * vlog)


def natural_gradient(system, policy, theta) -> np.ndarray:
    r"""Natural gradient of the reward, :math:`F^{-1}\nabla_\theta J = -F^{-1}\nabla_\theta C`, packed like theta.

    .. math::
        -\Big(\mathrm{vec}\big(2\Psi E_K\big),\ \sigma^2\odot\mathrm{diag}(H_{uu})\Big)\big/(1-\gamma)

    See `natural_cost_gradient` for when this is the minimum-norm solution.

    References
    ----------
    [Kakade2001]; [Fazel2018] Section 4.
    """
    g = _natural(system, *_theta(system, policy, theta))
    return -policy._vec(g.K, g.log_std)


def _surrogate_pieces(system, policy, theta, theta_old):
    ev = _evaluate(system, *_theta(system, policy, theta_old, "theta_old"))
    theta = policy.validate_theta(theta, "theta")
    K, log_std = policy._split(theta)
    return K, log_std, ev


@keyword_only_since("theta_old")
def surrogate(system, policy, theta, *, theta_old) -> float:
    r"""TRPO's surrogate in rewards, exactly ([Schulman2015] Eq. 3, normalised form).

    .. math::
        L_{old}(\theta) = J_{old} + \frac{1}{1-\gamma}\mathbb{E}_{x\sim d_{old},\,u\sim\pi_\theta}[-A^{cost}_{old}(x,u)]
        = -C_{old} - \mathrm{tr}(D\,\Sigma_{old}) - \frac{\mathrm{tr}(H_{uu}(\Psi - \Psi_{old}))}{1-\gamma}

    with :math:`D = K^\top H_{uu} K - K_{old}^\top H_{uu} K_{old} - \gamma[A^\top P B\,\Delta + \Delta^\top B^\top P A]`,
    :math:`\Delta = K - K_{old}`, and :math:`P, H_{uu}, \Sigma` those of the old
    policy. theta need not be stabilising (only the old policy's occupancy is used).

    Parameters
    ----------
    theta : ndarray of shape ``policy.theta_shape``
        The new policy.
    theta_old : ndarray of shape ``policy.theta_shape``, keyword-only
        Where the surrogate is measured from (stabilising).

    Returns
    -------
    float
        Equals :math:`J(\theta_{old})` at theta = theta_old, where its gradient is :math:`\nabla J`.

    References
    ----------
    [Schulman2015] Eq. (3); [Kakade2002].
    """
    K, log_std, ev = _surrogate_pieces(system, policy, theta, theta_old)
    g = system.gamma
    Delta = K - ev.K
    APB = system.A.T @ ev.P @ system.B
    D = K.T @ ev.Huu @ K - ev.K.T @ ev.Huu @ ev.K - g * (APB @ Delta + Delta.T @ APB.T)
    dpsi = np.exp(2.0 * log_std) - np.exp(2.0 * ev.log_std)
    return -(ev.cost + float(np.sum(D * ev.Sigma)) + float(np.diag(ev.Huu) @ dpsi) / (1.0 - g))


@keyword_only_since("theta_old")
def surrogate_gradient(system, policy, theta, *, theta_old) -> np.ndarray:
    r"""Gradient in theta of `surrogate` (theta_old keyword-only, as there); reward side.

    .. math::
        -\Big(\mathrm{vec}\big(2(H_{uu}K - \gamma B^\top P A)\Sigma_{old}\big),\
        2\sigma^2\odot\mathrm{diag}(H_{uu})/(1-\gamma)\Big)

    with the old policy's :math:`P, H_{uu}, \Sigma`.
    """
    K, log_std, ev = _surrogate_pieces(system, policy, theta, theta_old)
    g = system.gamma
    gK = 2.0 * (ev.Huu @ K - g * system.B.T @ ev.P @ system.A) @ ev.Sigma
    glog = 2.0 * np.exp(2.0 * log_std) * np.diag(ev.Huu) / (1.0 - g)
    return -policy._vec(gK, glog)


def _kl_theta(system, policy, theta, theta_old):
    K_old, log_std_old, name = _theta(system, policy, theta_old, "theta_old")
    theta = policy.validate_theta(theta, "theta")
    K, log_std = policy._split(theta)
    Sigma = _Sigma(system, system.A - system.B @ K_old, _noise(system, np.exp(2.0 * log_std_old)), name)
    return K_old, log_std_old, K, log_std, (1.0 - system.gamma) * Sigma


@keyword_only_since("theta_old")
def kl_divergence(system, policy, theta, *, theta_old) -> float:
    r"""Mean :math:`KL(\pi_{old}\,\|\,\pi_\theta)` under the old policy's normalised occupancy.

    `mean_kl` with :math:`M = (1-\gamma)\Sigma_{K_{old}}`. Its Hessian in theta
    at theta_old is `fisher_matrix`. Only the mean exists: the per-state KL
    grows without bound in x, so there is no max over states.

    References
    ----------
    [Schulman2015] Section 4; docs/conventions.md, "KL divergences".
    """
    K_old, log_std_old, K, log_std, M = _kl_theta(system, policy, theta, theta_old)
    return mean_kl(K_old=K_old, log_std_old=log_std_old, K_new=K, log_std_new=log_std, second_moment=M)


@keyword_only_since("theta_old")
def kl_gradient(system, policy, theta, *, theta_old) -> np.ndarray:
    r"""Gradient in theta (the new policy) of `kl_divergence`, packed like theta.

    .. math::
        \nabla_K = -\Psi^{-1}(K_{old} - K) M,\qquad
        \partial_{\mathrm{log\_std}_i} = 1 - \frac{\sigma_{old,i}^2 + [(K_{old}-K) M (K_{old}-K)^\top]_{ii}}{\sigma_i^2}

    with :math:`M = (1-\gamma)\Sigma_{K_{old}}`.
    """
    K_old, log_std_old, K, log_std, M = _kl_theta(system, policy, theta, theta_old)
    inv_psi = np.exp(-2.0 * log_std)
    dK = K_old - K
    gK = -inv_psi[:, None] * (dK @ M)
    glog = 1.0 - (np.exp(2.0 * log_std_old) + np.einsum("ij,jk,ik->i", dK, M, dK)) * inv_psi
    return policy._vec(gK, glog)


# -- pieces for the algorithms (refpg.algorithms), on validated arguments -------------------------------

def _surrogate_improvement(system, ev, K, log_std) -> float:
    r""":math:`L_{old}(\theta) - J_{old}` of `surrogate`, without the :math:`J_{old}` term (less round-off)."""
    g = system.gamma
    Delta = K - ev.K
    APB = system.A.T @ ev.P @ system.B
    D = K.T @ ev.Huu @ K - ev.K.T @ ev.Huu @ ev.K - g * (APB @ Delta + Delta.T @ APB.T)
    dpsi = np.exp(2.0 * log_std) - np.exp(2.0 * ev.log_std)
    return -(float(np.sum(D * ev.Sigma)) + float(np.diag(ev.Huu) @ dpsi) / (1.0 - g))


def _kl_under(K_old, log_std_old, K, log_std, M) -> float:
    r"""`mean_kl` on validated arrays: :math:`\tfrac12[c + \mathrm{tr}(\Delta K^\top\Psi^{-1}\Delta K M)]`."""
    D = (K_old - K) * np.exp(-log_std)[:, None]
    return 0.5 * (_kl_constant(log_std_old, log_std) + float(np.sum((D.T @ D) * M)))


def _kl_gradient_under(policy, K_old, log_std_old, K, log_std, M) -> np.ndarray:
    """Gradient in the new theta of `_kl_under` (the formula of `kl_gradient` for any M)."""
    inv_psi = np.exp(-2.0 * log_std)
    dK = K_old - K
    gK = -inv_psi[:, None] * (dK @ M)
    glog = 1.0 - (np.exp(2.0 * log_std_old) + np.einsum("ij,jk,ik->i", dK, M, dK)) * inv_psi
    return policy._vec(gK, glog)


def _fvp_under(policy, log_std, v, M) -> np.ndarray:
    r""":math:`F v` for states of second moment M: :math:`(\mathrm{vec}(\Psi^{-1} V_K M),\ 2 v_{\mathrm{log\_std}})`.

    The Hessian at theta_old of `_kl_under` with that M, i.e. the Fisher
    matrix with the expectation over actions exact and over states given by M.
    """
    VK, vlog = policy._split(v)
    return policy._vec(np.exp(-2.0 * log_std)[:, None] * (VK @ M), 2.0 * vlog)


class _Divergence(NamedTuple):
    mean_kl: float
    max_kl: float
    ratio_min: float
    ratio_max: float


def _divergence(K_old, log_std_old, K, log_std, M) -> _Divergence:
    r"""Mean and largest KL, and the range of :math:`\pi_{new}(u|x)/\pi_{old}(u|x)`, over states of second moment M.

    Over the support of M (its range) and every action u. The gain change
    acts there iff :math:`\mathrm{tr}(\Delta K M \Delta K^\top) > 0`; then the
    per-state KL and the log-ratio, being unbounded in x, have supremum
    :math:`+\infty` (and the ratio infimum 0). Otherwise, per action
    dimension, :math:`\log r_i = -\tfrac12 z^2 (\sigma_{new}^{-2} - \sigma_{old}^{-2}) - \log(\sigma_{new}/\sigma_{old})`
    in :math:`z = u_i + K x`, extreme at z = 0 with value :math:`\log(\sigma_{old}/\sigma_{new})`:
    a maximum where the new policy is narrower (the ratio falls to 0 in the
    tails), a minimum where it is wider (the ratio grows without bound).
    """
    mean = _kl_under(K_old, log_std_old, K, log_std, M)
    dK = K_old - K
    moves = float(np.sum((dK @ M) * dK)) > 0.0
    if moves:
        return _Divergence(mean, np.inf, 0.0, np.inf)
    wider, narrower = log_std > log_std_old, log_std < log_std_old
    at_mean = float(np.exp(np.sum(log_std_old - log_std)))
    ratio_min = 0.0 if narrower.any() else at_mean
    ratio_max = np.inf if wider.any() else at_mean
    return _Divergence(mean, 0.5 * _kl_constant(log_std_old, log_std), ratio_min, ratio_max)
