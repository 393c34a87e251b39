r"""Sampling the linear-quadratic-Gaussian system: rollouts, the discounted occupancy, Monte Carlo PPO.

* `sample_steps` and `sample_episodes`: N rollouts of :math:`\pi_\theta` side by
  side, vectorised over N, time-major, returned as a `refpg.sampling.Batch`
  whose states (T, N, n), next states (T, N, n) and actions (T, N, m) are
  float64; rewards :math:`-c_t`, log-probabilities, flags and step counters
  are (T, N) as on a finite MDP.
* `sample_occupancy`: independent draws :math:`x \sim d_\theta` (the normalised
  discounted occupancy), :math:`u \sim \pi_\theta(\cdot|x)`, exactly: a time
  :math:`t \sim \mathrm{Geometric}(1-\gamma)` and :math:`x_t` from its Gaussian law.
* `clipped_surrogate_estimate`: PPO's clipped objective under
  :math:`d_{old} \times \pi_{old}` with the exact advantages. It has no closed
  form, so this is a Monte Carlo estimate, returned with its standard error.
* `QuadraticValue` and `fit_quadratic_value`: a value function
  :math:`V(x) = x^\top P x + c` (the class the exact value belongs to), the
  batch critic of sampled-mode GAE.

Every function draws only from the `numpy.random.Generator` it is given: the
same generator state gives the same numbers.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refpg._validation import as_float_array, check_positive_int
from refpg.errors import InvalidInputError, ShapeError
from refpg.lqr.exact import _evaluate, _noise, _theta
from refpg.losses.sample import _check_clip_eps, _terms
from refpg.sampling import Batch

__all__ = [
    "sample_steps",
    "sample_episodes",
    "OccupancySample",
    "sample_occupancy",
    "MonteCarloEstimate",
    "clipped_surrogate_estimate",
    "QuadraticValue",
    "fit_quadratic_value",
    "exact_value",
    "psd_sqrt",
]


def _check_rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise InvalidInputError(
            f"rng should be a numpy.random.Generator (np.random.default_rng(seed)), actual {type(rng).__name__}")
    return rng


def psd_sqrt(M: np.ndarray) -> np.ndarray:
    r"""A square root L with :math:`L L^\top = M` for a symmetric positive semidefinite M.

    From the eigendecomposition (round-off negatives set to 0), so a singular
    covariance (W = 0, a deterministic start) is fine where Cholesky fails.
    The samplers draw :math:`\mu_0 + L_0 z` and :math:`L_W z` with it, and so
    does `refpg.envs.LQREnv`.

    Parameters
    ----------
    M : ndarray of shape (n, n)
        Symmetric positive semidefinite (not checked: the system's matrices already are).

    Returns
    -------
    ndarray of shape (n, n)
    """
    w, V = np.linalg.eigh(M)
    return V * np.sqrt(np.maximum(w, 0.0))


def _quad(x, M):
    return np.einsum("...i,ij,...j->...", x, M, x)


def _overflow_error(system, K, t):
    radius = float(np.abs(np.linalg.eigvals(system.A - system.B @ K)).max())
    return InvalidInputError(
        f"the rollout overflows float64 at step {t}: the gain makes the state grow (spectral radius of "
        f"A - B K is {radius!r}); use a shorter horizon or a stabilising gain")


# -- rollouts ---------------------------------------------------------------------------------------

def sample_steps(system, policy, theta, n_envs: int, n_steps: int, *, rng,
                 max_episode_steps: int | None = None) -> Batch:
    r"""Step N copies of the system T times under :math:`\pi_\theta`, resetting at the time limit.

    .. math::
        x_0 \sim N(\mu_0, \Sigma_0),\quad
        u_t = -K x_t + \sigma \odot \varepsilon_t,\quad
        x_{t+1} = A x_t + B u_t + w_t,\ w_t \sim N(0, W),\quad
        r_t = -(x_t^\top Q x_t + u_t^\top R u_t)

    An LQR episode never terminates; with `max_episode_steps` = H the step
    that completes H steps of an episode is ``truncated`` and the next row
    starts a fresh episode from :math:`N(\mu_0, \Sigma_0)` (``next_states`` holds
    the true successor, as in `refpg.sampling.sample_steps`).

    Parameters
    ----------
    system : LQRSystem
    policy : LinearGaussian
    theta : ndarray of shape ``policy.theta_shape``
        Any gain is accepted (the horizon is finite); a rollout that
        overflows float64 is refused.
    n_envs, n_steps : int >= 1
        N and T.
    rng : numpy.random.Generator
        Per step it draws the action noise (N, m), then the process noise
        (N, n), then the starts of the episodes that reset.
    max_episode_steps : int >= 1, optional
        The time limit H; None: one episode per environment, unfinished at T.

    Returns
    -------
    refpg.sampling.Batch
        ``states``, ``next_states`` (T, N, n) and ``actions`` (T, N, m),
        float64; ``rewards``, ``log_probs`` (T, N) float64; ``terminated``
        all False; ``truncated``; ``step`` (the index within the episode, so
        :math:`\gamma^{step}` is the discount weight); ``valid`` all True.

    Raises
    ------
    refpg.errors.InvalidInputError
        A bad argument (named), or a rollout that overflows float64.
    """
    K, log_std, _ = _theta(system, policy, theta)
    N = check_positive_int(n_envs, "n_envs")
    T = check_positive_int(n_steps, "n_steps")
    limit = None if max_episode_steps is None else check_positive_int(max_episode_steps, "max_episode_steps")
    rng = _check_rng(rng)
    theta = policy.validate_theta(theta)
    return _rollout(system, policy, theta, K, np.exp(log_std), N, T, limit, rng)


def _rollout(system, policy, theta, K, std, N, T, limit, rng) -> Batch:
    n, m = system.state_dim, system.action_dim
    L0, Lw = psd_sqrt(system.Sigma0), psd_sqrt(system.W)
    A, B = system.A, system.B
    states = np.empty((T, N, n))
    next_states = np.empty((T, N, n))
    actions = np.empty((T, N, m))
    step = np.empty((T, N), dtype=np.int64)
    truncated = np.zeros((T, N), dtype=bool)
    x = system.mu0 + rng.standard_normal((N, n)) @ L0.T
    k = np.zeros(N, dtype=np.int64)
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(T):
            u = -(x @ K.T) + std * rng.standard_normal((N, m))
            x2 = x @ A.T + u @ B.T + rng.standard_normal((N, n)) @ Lw.T
            states[t], actions[t], next_states[t], step[t] = x, u, x2, k
            k = k + 1
            if limit is not None:
                done = k >= limit
                truncated[t] = done
                if done.any():
                    idx = np.flatnonzero(done)
                    x2 = x2.copy()
                    x2[idx] = system.mu0 + rng.standard_normal((idx.size, n)) @ L0.T
                    k[idx] = 0
            x = x2
        rewards = -(_quad(states, system.Q) + _quad(actions, system.R))
    if not (np.isfinite(next_states).all() and np.isfinite(rewards).all()):
        bad = ~(np.isfinite(next_states).all(axis=(1, 2)) & np.isfinite(rewards).all(axis=1))
        raise _overflow_error(system, K, int(np.flatnonzero(bad)[0]))
    return Batch(states=states, actions=actions, rewards=rewards, next_states=next_states,
                 terminated=np.zeros((T, N), dtype=bool), truncated=truncated,
                 log_probs=policy.sample_log_probs(theta, states, actions), step=step,
                 valid=np.ones((T, N), dtype=bool))


def sample_episodes(system, policy, theta, n_episodes: int, *, horizon: int, rng) -> Batch:
    r"""N independent H-step episodes under :math:`\pi_\theta`, side by side: column n is episode n.

    The same as ``sample_steps(system, policy, theta, n_episodes, horizon,
    rng=rng, max_episode_steps=horizon)``: every episode starts at t = 0 and
    is truncated at t = H - 1. The mean of
    :math:`\sum_t \gamma^t r_t` over episodes estimates
    :math:`-C_H` (`refpg.lqr.finite_horizon_cost`), and REINFORCE on them
    estimates its gradient (`refpg.lqr.finite_horizon_cost_gradient`).

    Parameters
    ----------
    system : LQRSystem
    policy : LinearGaussian
    theta : ndarray of shape ``policy.theta_shape``
    n_episodes : int >= 1
    horizon : int >= 1, keyword-only
    rng : numpy.random.Generator, keyword-only

    Returns
    -------
    refpg.sampling.Batch
        Of shape (H, N), as `sample_steps` describes.
    """
    H = check_positive_int(horizon, "horizon")
    return sample_steps(system, policy, theta, n_episodes, H, rng=rng, max_episode_steps=H)


# -- the discounted occupancy -------------------------------------------------------------------------

class OccupancySample(NamedTuple):
    r"""Independent draws from :math:`d_\theta \times \pi_\theta` (`sample_occupancy`)."""

    states: np.ndarray
    """x, shape (M, n)."""
    actions: np.ndarray
    """u, shape (M, m)."""
    times: np.ndarray
    r"""The time t of each draw, int64 (M,), :math:`\Pr(t) = (1-\gamma)\gamma^t`."""


def sample_occupancy(system, policy, theta, n_samples: int, *, rng) -> OccupancySample:
    r"""Draw :math:`(x, u)` from the normalised discounted occupancy times the policy, exactly.

    .. math::
        d_\theta(x) = (1-\gamma)\sum_{t\ge0}\gamma^t p_t(x),\qquad
        p_t = N(m_t, C_t),\quad m_{t+1} = A_K m_t,\quad C_{t+1} = A_K C_t A_K^\top + N

    from :math:`m_0 = \mu_0`, :math:`C_0 = \Sigma_0`, with
    :math:`N = B\Psi B^\top + W`: draw :math:`t \sim \mathrm{Geometric}(1-\gamma)`
    (on 0, 1, ...), then :math:`x = m_t + C_t^{1/2} z`, then
    :math:`u = -Kx + \sigma\odot\varepsilon`. No rollout is truncated, so the
    draws have no horizon bias: :math:`\mathbb{E}[x x^\top] = (1-\gamma)\Sigma_K`
    (`refpg.lqr.second_moment`).

    Parameters
    ----------
    system : LQRSystem
    policy : LinearGaussian
    theta : ndarray of shape ``policy.theta_shape``
        A stabilising gain (the occupancy exists only then).
    n_samples : int >= 1
    rng : numpy.random.Generator, keyword-only
        Draws the times (M,), then z (M, n), then the action noise (M, m).

    Returns
    -------
    OccupancySample

    References
    ----------
    [Agarwal2021] Section 2 (the occupancy); [Schulman2015] Section 2.
    """
    K, log_std, name = _theta(system, policy, theta)
    system.check_gain(K, name)
    M = check_positive_int(n_samples, "n_samples")
    rng = _check_rng(rng)
    return _occupancy(system, K, np.exp(log_std), M, rng)


def _occupancy(system, K, std, M, rng) -> OccupancySample:
    n, m = system.state_dim, system.action_dim
    times = rng.geometric(1.0 - system.gamma, size=M).astype(np.int64) - 1
    z = rng.standard_normal((M, n))
    eps = rng.standard_normal((M, m))
    A_K = system.A - system.B @ K
    N = _noise(system, std * std)
    mean, cov = system.mu0.copy(), system.Sigma0.copy()
    x = np.empty((M, n))
    order = np.argsort(times, kind="stable")
    sorted_t = times[order]
    bounds = np.searchsorted(sorted_t, np.arange(int(sorted_t[-1]) + 2))
    for t in range(int(sorted_t[-1]) + 1):
        lo, hi = bounds[t], bounds[t + 1]
        if hi > lo:
            idx = order[lo:hi]
            x[idx] = mean + z[idx] @ psd_sqrt(cov).T
        mean = A_K @ mean
        cov = A_K @ cov @ A_K.T + N
        cov = 0.5 * (cov + cov.T)
    u = -(x @ K.T) + std * eps
    return OccupancySample(states=x, actions=u, times=times)


# -- PPO's clipped objective by Monte Carlo ---------------------------------------------------------

class MonteCarloEstimate(NamedTuple):
    r"""A Monte Carlo estimate of an expectation with no closed form, and its standard error."""

    value: float
    """The sample mean."""
    stderr: float
    r"""Its standard error, :math:`s / \sqrt{M}` (s the sample standard deviation, ddof = 1)."""
    gradient: np.ndarray
    """The gradient in theta of the sample mean (the same draws), packed like theta."""
    gradient_stderr: np.ndarray
    """The standard error of each entry of `gradient`."""
    n_samples: int
    """M, the number of independent draws."""


class _ClipSample:
    """A fixed draw from d_old x pi_old with its exact reward advantages; PPO's clipped terms on it.

    Common random numbers: every theta is measured on the same draws, so the
    estimate is a smooth (piecewise) function of theta that ascent can follow.
    """

    def __init__(self, system, policy, theta_old, M, rng):
        K, log_std, name = _theta(system, policy, theta_old, "theta_old")
        ev = _evaluate(system, K, log_std, name)
        self.policy, self.theta_old = policy, policy.validate_theta(theta_old, "theta_old")
        draw = _occupancy(system, K, np.exp(log_std), M, rng)
        self.states, self.actions, self.M = draw.states, draw.actions, M
        self.logp_old = policy.sample_log_probs(self.theta_old, self.states, self.actions)
        self.advantages = _reward_advantage(system, ev, self.states, self.actions)

    def terms(self, theta, adv, eps):
        logp = self.policy.sample_log_probs(theta, self.states, self.actions)
        with np.errstate(over="ignore"):
            return _terms(logp - self.logp_old, adv, eps)

    def gradient_weights(self, terms, adv):
        # d/dtheta of r A is r A grad log pi; a clipped sample's term is constant.
        with np.errstate(invalid="ignore"):
            return np.where(terms.clipped | (adv == 0), 0.0, terms.ratio * adv)

    def gradient(self, theta, adv, eps):
        w = self.gradient_weights(self.terms(theta, adv, eps), adv) / self.M
        return self.policy.sample_log_prob_vjp(theta, w, self.states, self.actions)


def _reward_advantage(system, ev, x, u):
    r"""The reward advantage :math:`-A^{cost}_K(x, u)` from an `LQREvaluation` (see `refpg.lqr.advantage`).

    :math:`A^{cost}(x,u) = Q_K(x,u) - V_K(x)`; the constant
    :math:`\gamma[\mathrm{tr}(P W) + q] - q` is written out once.
    """
    g = system.gamma
    y = x @ system.A.T + u @ system.B.T
    const = g * (float(np.sum(ev.P * system.W)) + ev.q) - ev.q
    cost_adv = _quad(x, system.Q) + _quad(u, system.R) + g * _quad(y, ev.P) - _quad(x, ev.P) + const
    return -cost_adv


def clipped_surrogate_estimate(system, policy, theta, *, theta_old, clip_eps, n_samples: int,
                               rng) -> MonteCarloEstimate:
    r"""PPO's clipped objective under :math:`d_{old}\times\pi_{old}` with exact advantages, by Monte Carlo.

    .. math::
        L^{CLIP}(\theta) = \mathbb{E}_{x\sim d_{old},\,u\sim\pi_{old}}\Big[
        \min\big(r A_{old}(x,u),\ \mathrm{clip}(r, 1-\epsilon, 1+\epsilon) A_{old}(x,u)\big)\Big],
        \qquad r = \frac{\pi_\theta(u|x)}{\pi_{old}(u|x)}

    with :math:`A_{old}` the exact reward advantage of the old policy
    (:math:`-`\ `refpg.lqr.advantage`). The expectation of a minimum of
    Gaussian ratios has no closed form, so this is **an estimate**: the mean
    over M independent draws of `sample_occupancy` (exact draws: no
    truncation or discretisation bias), returned with its standard error.
    It is the LQR counterpart of `refpg.algorithms.exact_clipped_surrogate`
    (no :math:`1/(1-\gamma)` and no :math:`J_{old}` term): its expectation is
    0 at theta = theta_old, where its gradient's expectation is
    :math:`(1-\gamma)\nabla_\theta J`.

    Parameters
    ----------
    system : LQRSystem
    policy : LinearGaussian
    theta : ndarray of shape ``policy.theta_shape``
        Where the objective is evaluated.
    theta_old : ndarray, keyword-only
        The old (stabilising) policy that defines :math:`d_{old}`, :math:`\pi_{old}` and :math:`A_{old}`.
    clip_eps : float > 0 or None, keyword-only
        None: no clipping (:math:`L^{CPI}`).
    n_samples : int >= 2, keyword-only
        M; the standard error falls as :math:`1/\sqrt M`.
    rng : numpy.random.Generator, keyword-only

    Returns
    -------
    MonteCarloEstimate
        The sample mean, its standard error, and the gradient of the same
        sample mean (the draws held fixed) with per-entry standard errors.

    References
    ----------
    [Schulman2017] Eq. (7); docs/conventions.md, "Exact quantities" (PPO clipped surrogate).
    """
    M = check_positive_int(n_samples, "n_samples", minimum=2)
    eps = _check_clip_eps(clip_eps, allow_none=True)
    rng = _check_rng(rng)
    K, _, name = _theta(system, policy, theta_old, "theta_old")
    system.check_gain(K, name)
    theta = policy.validate_theta(theta)
    sample = _ClipSample(system, policy, theta_old, M, rng)
    terms = sample.terms(theta, sample.advantages, eps)
    w = sample.gradient_weights(terms, sample.advantages)
    per_sample = policy.sample_log_prob_jacobian(theta, sample.states, sample.actions) * w[:, None]
    return MonteCarloEstimate(
        value=float(np.mean(terms.objective)), stderr=float(np.std(terms.objective, ddof=1) / np.sqrt(M)),
        gradient=per_sample.mean(axis=0), gradient_stderr=per_sample.std(axis=0, ddof=1) / np.sqrt(M),
        n_samples=M)


# -- value functions for GAE ------------------------------------------------------------------------

class QuadraticValue(NamedTuple):
    r"""A state-value function :math:`V(x) = x^\top P x + c` (rewards: the exact one has :math:`P = -P_K`, :math:`c = -q_K`)."""

    P: np.ndarray
    """(n, n), symmetric."""
    c: float

    def __call__(self, states) -> np.ndarray:
        """V at states of shape (..., n); the result has the batch shape."""
        return _quad(np.asarray(states, dtype=np.float64), self.P) + self.c


def exact_value(system, policy, theta) -> QuadraticValue:
    r"""The exact reward value of :math:`\pi_\theta`, :math:`V(x) = -(x^\top P_K x + q_K)` (discounted, infinite horizon).

    See `refpg.lqr.state_value` (the cost side).
    """
    K, log_std, name = _theta(system, policy, theta)
    ev = _evaluate(system, K, log_std, name)
    return QuadraticValue(P=-ev.P, c=-ev.q)


def _features(x):
    n = x.shape[-1]
    i, j = np.triu_indices(n)
    return np.concatenate([x[..., i] * x[..., j], np.ones(x.shape[:-1] + (1,))], axis=-1)


def fit_quadratic_value(states, targets) -> QuadraticValue:
    r"""Least-squares fit of :math:`V(x) = x^\top P x + c` to targets at states.

    .. math::
        \min_{P = P^\top,\, c}\ \sum_i \big(x_i^\top P x_i + c - y_i\big)^2

    over the :math:`n(n+1)/2 + 1` free coefficients (`numpy.linalg.lstsq`,
    minimum norm where the states do not determine them). The exact value of
    a linear-Gaussian policy is of this form, so on the lambda-returns of a
    batch this is the LQR's counterpart of the per-state mean that the
    tabular batch critic takes.

    Parameters
    ----------
    states : array_like, shape (M, n)
    targets : array_like, shape (M,)

    Returns
    -------
    QuadraticValue
    """
    x = as_float_array(states, "states", ndim=2)
    y = as_float_array(targets, "targets", shape=(x.shape[0],))
    if x.shape[0] == 0:
        raise ShapeError("states should hold at least one state, actual shape (0, n)")
    n = x.shape[1]
    coef, *_ = np.linalg.lstsq(_features(x), y, rcond=None)
    P = np.zeros((n, n))
    i, j = np.triu_indices(n)
    P[i, j] = coef[:-1]
    P = 0.5 * (P + P.T)
    return QuadraticValue(P=P, c=float(coef[-1]))
