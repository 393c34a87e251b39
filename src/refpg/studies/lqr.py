r"""Policy gradients on an exact LQR: [Fazel2018]'s linear rates, the gamma^t-free gap, log_std collapse.

Everything is computed with `refpg.lqr` on one small system (`study_system`:
3 states, 2 actions, open loop unstable under the discount, one stabilising
initial gain K0, isotropic exploration noise). Three parts:

1. **Convergence from the same K0** ([Fazel2018]). Exact gradient descent on the
   cost (PG, :math:`K \leftarrow K - \eta\nabla_K C`), the exact natural gradient
   (NPG, :math:`K \leftarrow K - \eta F^{-1}\nabla_K C = K - \eta\,2\Psi E_K/(1-\gamma)`),
   Gauss-Newton (GN, :math:`K \leftarrow K - \eta H_{uu}^{-1} E_K`; :math:`\eta = 1` is
   policy iteration), TRPO built from `refpg.algorithms.conjugate_gradient`,
   `max_step_size` and `backtracking_line_search` on the exact gradient,
   Fisher-vector product, surrogate and mean KL, and PPO's clipped objective
   estimated by Monte Carlo (exact advantages, states and actions sampled from
   :math:`d_{old}\times\pi_{old}`). log_std is held at its initial value here, so
   that every method minimises the same function of K; `refpg.algorithms`'
   `trpo_step` and `ppo_update` train log_std too, so part 1 assembles the same
   updates in K from their public pieces, and part 3 calls them. The sub-optimality is
   computed without cancellation (`suboptimality`), so the curves reach
   :math:`10^{-30}`. The measured linear rates are set beside the rates that
   [Fazel2018]'s exact-gradient argument gives once carried to the discounted,
   noisy problem (`bound_rates`).
2. **The** :math:`\gamma^t`-**free direction** ([Nota2020]). On H-step episodes,
   the mean of REINFORCE without the :math:`\gamma^t` factor
   (`refpg.lqr.gamma_free_direction`) against :math:`\nabla C_H`
   (`refpg.lqr.finite_horizon_cost_gradient`), by cosine and relative norm gap,
   over gamma and H (`gamma_free_gap`); and the zeros in K of both directions,
   found by root finding (`fixed_points`), with their discounted sub-optimality. Exact.
3. **log_std collapse.** `refpg.algorithms.ppo_update` on (K, log_std)
   together, with no entropy bonus, from the same start and on the same random
   numbers as part 1's PPO: log_std, its exact gradient
   :math:`\partial C/\partial\,\mathrm{log\_std}_i = 2\sigma_i^2[H_{uu}]_{ii}/(1-\gamma)`,
   the score's scale :math:`\mathrm{tr}\,F_{KK} = \mathbb{E}\|\nabla_K\log\pi\|^2`
   and the exact KL per update; against `reinforce_step`, `npg_step` and
   `trpo_step` in exact mode on the same (K, log_std) (`full_parameter_runs`).

The rates of part 1 follow from two identities, both with discount and noise
(same :math:`\Psi` for K and K'; :math:`H = H_{uu}(K)`, :math:`E = E_K`):

.. math::
    C(K') - C(K) = \mathrm{tr}\big(\Sigma_{K'}[(K'-K)^\top H (K'-K) + 2(K'-K)^\top E]\big),\qquad
    C(K) - C(K^*) \le \|\Sigma_{K^*}\|\,\mathrm{tr}(E^\top H^{-1} E),

(the cost-difference lemma and gradient domination of [Fazel2018]; the first
with :math:`K = K^*` is `suboptimality`). With
:math:`\Sigma_{K'} \succeq \mu I`, :math:`\mu = \lambda_{min}(S_0 + \gamma N/(1-\gamma))`,
:math:`N = B\Psi B^\top + W`, a GN step of size :math:`\eta \le 1` contracts
:math:`C - C^*` by at least :math:`1 - (2\eta - \eta^2)\mu/\|\Sigma_{K^*}\|`, and the
step :math:`K \leftarrow K - \eta_F E_K` with
:math:`\eta_F = 1/(\|R\| + \gamma\|B\|^2 C(K_0)/\mu)` by at least
:math:`1 - \eta_F\,\mu\,\lambda_{min}(R)/\|\Sigma_{K^*}\|` (since
:math:`C \ge \mu\|P_K\|`, :math:`\eta_F \le 1/\|H_{uu}(K)\|` along a descending run).
With isotropic :math:`\Psi = \sigma^2 I` the exact natural gradient step of size
:math:`\eta` is that step with :math:`\eta_F = 2\eta\sigma^2/(1-\gamma)`.

References
----------
[Fazel2018] M. Fazel, R. Ge, S. Kakade, M. Mesbahi, Global convergence of policy gradient
methods for the linear quadratic regulator, ICML 2018, arXiv:1801.05039 (exact-gradient case;
undiscounted and noiseless there, discounted with process and exploration noise here).
[Nota2020] C. Nota, P. Thomas, Is the policy gradient a gradient? AAMAS 2020.
[Schulman2015] TRPO; [Schulman2017] PPO; [Kakade2001] natural gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refpg.studies._common import Progress, md_table, new_figure, prepare_out_dir, save_figure

__all__ = [
    "study_system",
    "suboptimality",
    "bound_rates",
    "Descent",
    "descent",
    "tuned_step",
    "linear_rate",
    "TRPORun",
    "trpo_descent",
    "PPORun",
    "ppo_descent",
    "FullRun",
    "full_parameter_runs",
    "gamma_free_gap",
    "FixedPoints",
    "fixed_points",
    "run",
]

#: Methods of `descent`: the step each takes (cost side, subtracted from K).
METHODS = ("pg", "npg", "gn")
#: The sub-optimality window of `linear_rate`, relative to the first value: rates are measured
#: between the first iterate below ``RATE_WINDOW[1]`` and the last above ``RATE_WINDOW[0]``.
RATE_WINDOW = (1e-20, 1e-1)
#: PPO's settings in parts 1 and 3: clip range, epochs per update (each one full-batch Adam step)
#: and Adam's learning rate.
PPO_CLIP, PPO_EPOCHS, PPO_LR = 0.2, 10, 0.01
#: TRPO's KL radius.
TRPO_MAX_KL = 0.01


# -- the system --------------------------------------------------------------------------------

def study_system():
    r"""The study's system, initial gain and initial log_std: ``(system, K0, log_std0)``.

    3 states, 2 actions, :math:`\gamma = 0.9`. A (standard normal entries,
    seed 3) is scaled so that :math:`\rho(\sqrt\gamma A) = 1.1`: the zero gain
    does not stabilise it. B has normal entries divided by :math:`\sqrt 3`;
    Q = I, R = I, W = 0.01 I, :math:`\mu_0 = 0`,
    :math:`\Sigma_0 = \mathrm{diag}(1, 0.1, 0.01)` (an ill-conditioned start, on
    which plain gradient descent is slow). K0 is the optimal gain of the same
    system with R replaced by 30 R: stabilising, and sub-optimal here.
    log_std0 = log 0.3 in both action dimensions (isotropic, so that the natural
    gradient is parallel to :math:`E_K` as in [Fazel2018]).
    """
    from refpg import lqr

    gamma, n, m = 0.9, 3, 2
    rng = np.random.default_rng(3)
    A = rng.standard_normal((n, n))
    A *= 1.1 / (np.sqrt(gamma) * float(np.abs(np.linalg.eigvals(A)).max()))
    B = rng.standard_normal((n, m)) / np.sqrt(n)
    parts = dict(A=A, B=B, Q=np.eye(n), W=0.01 * np.eye(n), mu0=np.zeros(n),
                 Sigma0=np.diag([1.0, 0.1, 0.01]), gamma=gamma)
    system = lqr.LQRSystem(R=np.eye(m), **parts)
    K0 = lqr.optimal_gain(lqr.LQRSystem(R=30.0 * np.eye(m), **parts)).K
    return system, K0, np.full(m, np.log(0.3))


def _with_gamma(system, gamma):
    from refpg import lqr

    return lqr.LQRSystem(system.A, system.B, system.Q, system.R, system.W, system.mu0, system.Sigma0, gamma)


def suboptimality(system, K, log_std, *, optimum=None) -> float:
    r""":math:`C(K) - C(K^*)` at the same log_std, without cancellation.

    .. math::
        C(K) - C(K^*) = \mathrm{tr}\big(\Sigma_K (K - K^*)^\top H_{uu}(K^*) (K - K^*)\big)

    (the cost-difference identity of [Fazel2018] at :math:`K^*`, where
    :math:`E_{K^*} = 0`; with discount and noise, :math:`\Sigma_K` the discounted
    second moment under K). The plain difference of the two costs loses every
    digit below about :math:`10^{-16} C`; this form keeps them.

    Parameters
    ----------
    system : refpg.lqr.LQRSystem
    K : array_like, shape (m, n)
        A stabilising gain.
    log_std : array_like, shape (m,)
    optimum : refpg.lqr.LQREvaluation, optional
        ``refpg.lqr.evaluate(system, K*, log_std)``, to save recomputing it.

    Returns
    -------
    float, >= 0
    """
    from refpg import lqr

    if optimum is None:
        optimum = lqr.evaluate(system, lqr.optimal_gain(system).K, log_std)
    D = np.asarray(K, dtype=np.float64) - optimum.K
    Sigma = lqr.second_moment(system, K, log_std)
    return float(np.sum((D.T @ optimum.Huu @ D) * Sigma))


def _mu(system, log_std):
    N = (system.B * np.exp(2.0 * np.asarray(log_std))) @ system.B.T + system.W
    g = system.gamma
    return float(np.linalg.eigvalsh(system.initial_second_moment + g / (1.0 - g) * N)[0])


def bound_rates(system, K0, log_std, gn_etas=(0.5, 1.0)) -> dict:
    r"""The contraction factors per step that the module docstring derives from [Fazel2018]'s argument.

    Returns
    -------
    dict
        ``mu`` (:math:`\lambda_{min}(S_0 + \gamma N/(1-\gamma))`), ``sigma_star_norm``
        (:math:`\|\Sigma_{K^*}\|_2`), ``npg_eta_fazel`` (:math:`\eta_F`), ``npg_eta``
        (the same step as a multiple of `refpg.lqr.natural_cost_gradient`, for an
        isotropic log_std), ``npg`` (its factor :math:`1 - \eta_F\mu\lambda_{min}(R)/\|\Sigma_{K^*}\|`)
        and ``gn`` (eta -> :math:`1 - (2\eta-\eta^2)\mu/\|\Sigma_{K^*}\|`).
    """
    from refpg import lqr

    log_std = np.asarray(log_std, dtype=np.float64)
    mu = _mu(system, log_std)
    K_star = lqr.optimal_gain(system).K
    s_norm = float(np.linalg.norm(lqr.second_moment(system, K_star, log_std), 2))
    C0 = lqr.cost(system, K0, log_std)
    eta_F = 1.0 / (np.linalg.norm(system.R, 2) + system.gamma * np.linalg.norm(system.B, 2) ** 2 * C0 / mu)
    psi = float(np.exp(2.0 * log_std.max()))
    return dict(mu=mu, sigma_star_norm=s_norm, npg_eta_fazel=float(eta_F),
                npg_eta=float(eta_F * (1.0 - system.gamma) / (2.0 * psi)),
                npg=float(1.0 - eta_F * mu * np.linalg.eigvalsh(system.R)[0] / s_norm),
                gn={float(e): float(1.0 - (2.0 * e - e * e) * mu / s_norm) for e in gn_etas})


# -- exact descent -------------------------------------------------------------------------------

class Descent(NamedTuple):
    """A run of `descent`: the iterates and their exact costs."""

    K: np.ndarray
    """Gains, (n_iters + 1, m, n)."""
    log_std: np.ndarray
    """log_std, (n_iters + 1, m) (constant unless trained)."""
    cost: np.ndarray
    """C(K_t, log_std_t), (n_iters + 1,)."""
    gap: np.ndarray
    """`suboptimality` of K_t at the initial log_std, (n_iters + 1,)."""


def _step(system, K, log_std, method, eta, train_log_std):
    from refpg import lqr

    if method == "pg":
        g = lqr.cost_gradient(system, K, log_std)
    elif method == "npg":
        g = lqr.natural_cost_gradient(system, K, log_std)
    else:
        ev = lqr.evaluate(system, K, log_std)
        return K - eta * np.linalg.solve(ev.Huu, ev.E), log_std
    return K - eta * g.K, (log_std - eta * g.log_std if train_log_std else log_std)


def descent(system, K0, log_std0, *, method: str, eta: float, n_iters: int,
            train_log_std: bool = False) -> Descent:
    r"""Exact descent on the discounted cost from (K0, log_std0).

    * ``"pg"``: :math:`K \leftarrow K - \eta\nabla_K C = K - 2\eta E_K\Sigma_K`;
    * ``"npg"``: :math:`K \leftarrow K - \eta (F^{-1}\nabla C)_K = K - 2\eta\Psi E_K/(1-\gamma)`;
    * ``"gn"``: :math:`K \leftarrow K - \eta H_{uu}^{-1} E_K` (:math:`\eta = 1`: policy iteration).

    With ``train_log_std`` (pg and npg only), log_std takes the same kind of step
    on :math:`\partial C/\partial\,\mathrm{log\_std}` (no entropy term).

    Returns
    -------
    Descent

    Raises
    ------
    refpg.errors.InvalidInputError
        A bad argument, or an iterate that does not stabilise the system
        (the message names the iteration and the spectral radius).

    References
    ----------
    [Fazel2018]; [Kakade2001].
    """
    from refpg import lqr
    from refpg._validation import as_float_array, check_choice, check_positive_int, check_real
    from refpg.errors import InvalidInputError

    check_choice(method, "method", METHODS)
    eta = check_real(eta, "eta", low=0.0, low_open=True)
    n_iters = check_positive_int(n_iters, "n_iters")
    if train_log_std and method == "gn":
        raise InvalidInputError("train_log_std=True needs method 'pg' or 'npg' (Gauss-Newton has no log_std step)")
    K = system.check_gain(as_float_array(K0, "K0", shape=(system.action_dim, system.state_dim)), "K0")
    log_std = as_float_array(log_std0, "log_std0", shape=(system.action_dim,))
    optimum = lqr.evaluate(system, lqr.optimal_gain(system).K, log_std)
    Ks, ls, costs, gaps = [K], [log_std], [lqr.cost(system, K, log_std)], [suboptimality(system, K, log_std0,
                                                                                         optimum=optimum)]
    for t in range(n_iters):
        K, log_std = _step(system, K, log_std, method, eta, train_log_std)
        radius = system.spectral_radius(K)
        if not radius < 1.0:
            raise InvalidInputError(f"{method} with eta={eta!r}: iterate {t + 1} does not stabilise the system "
                                    f"(spectral radius of sqrt(gamma) (A - B K) is {radius!r})")
        Ks.append(K)
        ls.append(log_std)
        costs.append(lqr.cost(system, K, log_std))
        gaps.append(suboptimality(system, K, log_std0, optimum=optimum))
    return Descent(K=np.array(Ks), log_std=np.array(ls), cost=np.array(costs), gap=np.array(gaps))


def tuned_step(system, K0, log_std0, *, method: str, n_iters: int, floor: float = RATE_WINDOW[0]):
    r"""The largest :math:`\eta = 2^{-k}` (k = -4, ..., 40) whose run descends at every step: ``(eta, Descent)``.

    A run qualifies when every iterate stabilises the system and the
    sub-optimality never rises, except below ``floor`` times its first value
    (the round-off floor of `suboptimality`, about :math:`10^{-30}` here).
    """
    from refpg.errors import InvalidInputError

    for k in range(-4, 41):
        eta = 2.0 ** -k
        try:
            res = descent(system, K0, log_std0, method=method, eta=eta, n_iters=n_iters)
        except InvalidInputError:
            continue
        g = res.gap
        if np.all((np.diff(g) <= 0.0) | (g[1:] <= floor * g[0])):
            return eta, res
    raise InvalidInputError(f"no step 2^-k, k in [-4, 40], makes {method} descend at every step")


def linear_rate(gaps, window=RATE_WINDOW) -> float:
    r"""The measured per-step contraction :math:`(g_b / g_a)^{1/(b-a)}` of a sub-optimality sequence.

    a is the first index with :math:`g \le` ``window[1]`` :math:`g_0`, b the last
    with :math:`g \ge` ``window[0]`` :math:`g_0`; NaN when b - a < 2 (too few
    steps inside the window to call the convergence linear, e.g. policy
    iteration, which is quadratic).
    """
    g = np.asarray(gaps, dtype=np.float64)
    lo, hi = window[0] * g[0], window[1] * g[0]
    below = np.flatnonzero(g <= hi)
    above = np.flatnonzero(g >= lo)
    if below.size == 0 or above.size == 0:
        return float("nan")
    a, b = int(below[0]), int(above[-1])
    if b - a < 2:
        return float("nan")
    return float((g[b] / g[a]) ** (1.0 / (b - a)))


# -- TRPO --------------------------------------------------------------------------------------------

class TRPORun(NamedTuple):
    """A run of `trpo_descent`."""

    K: np.ndarray
    """Gains, (n_iters + 1, m, n)."""
    gap: np.ndarray
    """`suboptimality` of each gain, (n_iters + 1,)."""
    kl: np.ndarray
    """Exact mean KL(pi_old || pi_new) of each step under the old occupancy (0 where none was accepted), (n_iters,)."""
    fraction: np.ndarray
    """Accepted fraction of the full step (0: none accepted), (n_iters,)."""
    cost_change: np.ndarray
    """Exact C(K_new) - C(K_old), (n_iters,)."""


def trpo_descent(system, K0, log_std, *, max_kl: float = TRPO_MAX_KL, n_iters: int) -> TRPORun:
    r"""Exact TRPO in K, log_std held fixed ([Schulman2015] Eq. 12, solved as in its Appendix C).

    Each step: g the exact :math:`\nabla_K J` (`refpg.lqr.policy_gradient`),
    s from `refpg.algorithms.conjugate_gradient` on the exact Fisher-vector
    product (`refpg.lqr.fisher_vector_product`, run to convergence: m n
    iterations), the full step from `refpg.algorithms.max_step_size`, and
    `refpg.algorithms.backtracking_line_search` on the exact surrogate
    (`refpg.lqr.surrogate`) and the exact mean KL (`refpg.lqr.kl_divergence`).
    The parameters are vec(K) only: the log_std entries of every tangent are 0.

    Raises
    ------
    refpg.errors.InvalidInputError
        An accepted step that does not stabilise the system.
    """
    from refpg import lqr
    from refpg.algorithms import backtracking_line_search, conjugate_gradient, max_step_size
    from refpg.errors import InvalidInputError

    pol = lqr.LinearGaussian.for_system(system)
    mn = system.action_dim * system.state_dim
    log_std = np.asarray(log_std, dtype=np.float64)
    optimum = lqr.evaluate(system, lqr.optimal_gain(system).K, log_std)

    def full(k):
        return np.concatenate([k, log_std])

    K = system.check_gain(np.asarray(K0, dtype=np.float64), "K0")
    Ks, gaps, kls, fracs, dC = [K], [suboptimality(system, K, log_std, optimum=optimum)], [], [], []
    for t in range(n_iters):
        theta_old = pol.pack(K, log_std)
        k_old = theta_old[:mn]
        g = lqr.policy_gradient(system, pol, theta_old)[:mn]

        def fvp(v, theta_old=theta_old):
            return lqr.fisher_vector_product(system, pol, theta_old, full(v))[:mn]

        cg = conjugate_gradient(fvp, g, max_iter=mn)
        beta = max_step_size(cg.x, fvp, max_kl)
        ls = backtracking_line_search(
            k_old, beta * cg.x,
            lambda k, theta_old=theta_old: lqr.surrogate(system, pol, full(k), theta_old=theta_old),
            lambda k, theta_old=theta_old: lqr.kl_divergence(system, pol, full(k), theta_old=theta_old),
            max_kl)
        K_new, _ = pol.unpack(full(ls.theta))
        radius = system.spectral_radius(K_new)
        if not radius < 1.0:
            raise InvalidInputError(f"TRPO step {t + 1} left the stabilising set (spectral radius {radius!r})")
        # The KL again, from its definition under the old second moment, not the line search's number.
        kl = lqr.mean_kl(K_old=K, log_std_old=log_std, K_new=K_new, log_std_new=log_std,
                         second_moment=(1.0 - system.gamma) * lqr.second_moment(system, K, log_std))
        dC.append(lqr.cost(system, K_new, log_std) - lqr.cost(system, K, log_std))
        K = K_new
        Ks.append(K)
        gaps.append(suboptimality(system, K, log_std, optimum=optimum))
        kls.append(kl)
        fracs.append(ls.fraction)
    return TRPORun(K=np.array(Ks), gap=np.array(gaps), kl=np.array(kls), fraction=np.array(fracs),
                   cost_change=np.array(dC))


# -- PPO by Monte Carlo -------------------------------------------------------------------------------

class PPORun(NamedTuple):
    """A run of `ppo_descent`; per-update arrays have length n_updates (+ 1 where the start is included)."""

    K: np.ndarray
    """Gains, (n_updates + 1, m, n)."""
    log_std: np.ndarray
    """(n_updates + 1, m)."""
    gap: np.ndarray
    """`suboptimality` of each gain at the initial log_std, (n_updates + 1,)."""
    cost: np.ndarray
    """Exact C(K_t, log_std_t), (n_updates + 1,)."""
    dC_dlog_std: np.ndarray
    r"""Exact :math:`\partial C/\partial\,\mathrm{log\_std}`, (n_updates + 1, m)."""
    score_scale: np.ndarray
    r"""The score's scale, (n_updates + 1,):
    :math:`\mathrm{tr}\,F_{KK} = \mathbb{E}_{d,\pi}\|\nabla_K\log\pi\|^2 = (1-\gamma)\mathrm{tr}(\Sigma_K)\,\mathrm{tr}(\Psi^{-1})`."""
    kl: np.ndarray
    """Exact mean KL(pi_old || pi_new) of each update under the old occupancy, (n_updates,)."""
    clip_fraction: np.ndarray
    """Fraction of the update's draws whose ratio ends outside [1 - eps, 1 + eps], (n_updates,)."""
    lclip: np.ndarray
    r"""Monte Carlo estimate of :math:`L^{CLIP}(\theta_{new}) - L^{CLIP}(\theta_{old})`, exact mode's objective
    (:math:`\frac{1}{1-\gamma}\mathbb{E}_{d_{old},\pi_{old}}[\min(rA, \mathrm{clip}(r)A)]`, which is 0 at
    theta_old), on draws independent of the update's (`refpg.lqr.clipped_surrogate_estimate`), (n_updates,)."""
    lclip_se: np.ndarray
    """Its standard error, (n_updates,)."""
    surrogate_gain: np.ndarray
    """Exact TRPO surrogate L_old(theta_new) - J(theta_old) (no clip), (n_updates,)."""
    J_gain: np.ndarray
    """Exact J(theta_new) - J(theta_old), (n_updates,)."""


def _adam(theta, g, state, lr, b1=0.9, b2=0.999, eps=1e-8):
    # Kingma & Ba (2015), Algorithm 1, as refpg.algorithms.ppo_update and torch.optim.Adam take it.
    m, v, k = state
    k += 1
    m = b1 * m + (1.0 - b1) * g
    v = b2 * v + (1.0 - b2) * g * g
    return theta + lr * (m / (1.0 - b1 ** k)) / (np.sqrt(v / (1.0 - b2 ** k)) + eps), (m, v, k)


def _ppo_fixed_log_std(system, pol, theta_old, state, draw, *, epochs, lr, clip_eps):
    """One PPO update in K alone: `ppo_update`'s exact-mode steps with the log_std entries of the gradient zeroed."""
    from refpg import lqr
    from refpg.algorithms import PPOSamples, clipped_surrogate_gradient

    K, log_std = pol.unpack(theta_old)
    batch = PPOSamples(draw.states, draw.actions, pol.sample_log_probs(theta_old, draw.states, draw.actions),
                       -lqr.advantage(system, K, log_std, draw.states, draw.actions))
    theta = theta_old.copy()
    mn = system.action_dim * system.state_dim
    for _ in range(epochs):
        grad = clipped_surrogate_gradient(pol, theta, batch, clip_eps)
        grad[mn:] = 0.0
        theta, state = _adam(theta, grad, state, lr)
    return theta, state


def ppo_descent(system, K0, log_std0, *, n_updates: int, n_samples: int, train_log_std: bool, seed: int = 0,
                epochs: int = PPO_EPOCHS, lr: float = PPO_LR, clip_eps: float = PPO_CLIP) -> PPORun:
    r"""PPO with exact advantages, its clipped objective estimated by Monte Carlo ([Schulman2017] Eq. 7).

    With ``train_log_std``, each update is `refpg.algorithms.ppo_update` in
    exact mode on the LQR: n_samples draws from :math:`d_{old}\times\pi_{old}`
    (`refpg.lqr.sample_occupancy`) with exact advantages, and `epochs`
    full-batch Adam steps on the sample mean of
    :math:`\min(rA, \mathrm{clip}(r, 1\pm\epsilon)A)`, no entropy bonus; one
    Adam state over the whole run, as libraries keep it. Without it, the same
    update in K alone (`ppo_update` has no way to hold log_std): the same
    draws, the gradient `refpg.algorithms.clipped_surrogate_gradient` with its
    log_std entries zeroed, the same Adam.

    Update k draws from ``numpy.random.default_rng([seed, k])``: two runs with
    the same seed draw the same random numbers (common random numbers),
    whatever they train. The clipped objective's gain is then estimated on
    independent draws, from ``[seed, k, 1]``.

    Returns
    -------
    PPORun

    Raises
    ------
    refpg.errors.InvalidInputError
        An update that leaves the stabilising set.
    """
    from refpg import lqr
    from refpg.algorithms import ppo_update
    from refpg.errors import InvalidInputError

    pol = lqr.LinearGaussian.for_system(system)
    g = system.gamma
    mn = system.action_dim * system.state_dim
    log_std0 = np.asarray(log_std0, dtype=np.float64)
    optimum = lqr.evaluate(system, lqr.optimal_gain(system).K, log_std0)
    theta = pol.pack(system.check_gain(np.asarray(K0, dtype=np.float64), "K0"), log_std0)
    state = (np.zeros_like(theta), np.zeros_like(theta), 0)
    rec = {k: [] for k in PPORun._fields}

    def record_policy(theta):
        K, ls = pol.unpack(theta)
        rec["K"].append(K)
        rec["log_std"].append(ls)
        rec["gap"].append(suboptimality(system, K, log_std0, optimum=optimum))
        rec["cost"].append(lqr.cost(system, K, ls))
        rec["dC_dlog_std"].append(lqr.cost_gradient(system, K, ls).log_std)
        rec["score_scale"].append(float(np.trace(lqr.fisher_matrix(system, pol, theta)[:mn, :mn])))

    record_policy(theta)
    for k in range(n_updates):
        theta_old = theta
        # ppo_update draws with lqr.sample_occupancy's order from the same seed: the same draws.
        draw = lqr.sample_occupancy(system, pol, theta_old, n_samples, rng=np.random.default_rng([seed, k]))
        if train_log_std:
            res = ppo_update(system, pol, theta_old, mode="exact", clip_eps=clip_eps, epochs=epochs, lr=lr,
                             rng=np.random.default_rng([seed, k]), monte_carlo_samples=n_samples,
                             optimizer_state=None if k == 0 else state)
            theta, state = res.theta, res.optimizer_state
        else:
            theta, state = _ppo_fixed_log_std(system, pol, theta_old, state, draw, epochs=epochs, lr=lr,
                                              clip_eps=clip_eps)
        logp_old = pol.sample_log_probs(theta_old, draw.states, draw.actions)
        r = np.exp(pol.sample_log_probs(theta, draw.states, draw.actions) - logp_old)
        frac = float(np.mean(np.abs(r - 1.0) > clip_eps))
        radius = system.spectral_radius(pol.unpack(theta)[0])
        if not radius < 1.0:
            raise InvalidInputError(f"PPO update {k + 1} left the stabilising set (spectral radius {radius!r})")
        rec["clip_fraction"].append(float(frac))
        est = lqr.clipped_surrogate_estimate(system, pol, theta, theta_old=theta_old, clip_eps=clip_eps,
                                             n_samples=n_samples, rng=np.random.default_rng([seed, k, 1]))
        rec["lclip"].append(est.value / (1.0 - g))
        rec["lclip_se"].append(est.stderr / (1.0 - g))
        J_old = lqr.objective(system, pol, theta_old)
        rec["surrogate_gain"].append(lqr.surrogate(system, pol, theta, theta_old=theta_old) - J_old)
        rec["J_gain"].append(lqr.objective(system, pol, theta) - J_old)
        rec["kl"].append(lqr.kl_divergence(system, pol, theta, theta_old=theta_old))
        record_policy(theta)
    return PPORun(**{k: np.array(v) for k, v in rec.items()})


class FullRun(NamedTuple):
    """A run of `full_parameter_runs`: the library's exact steps on (K, log_std)."""

    log_std: np.ndarray
    """(n_iters + 1, m)."""
    cost: np.ndarray
    """Exact C, (n_iters + 1,)."""
    gap: np.ndarray
    """`suboptimality` of each gain at the initial log_std, (n_iters + 1,)."""
    kl: np.ndarray
    """Exact mean KL(pi_old || pi_new) of each step, (n_iters,)."""
    kl_log_std: np.ndarray
    r"""The log_std part of each step's KL, :math:`\frac12\sum_i(e^{d_i} - 1 - d_i)`,
    :math:`d = 2(\mathrm{log\_std}_{old} - \mathrm{log\_std}_{new})` (the rest is the K part), (n_iters,)."""
    fraction: np.ndarray
    """TRPO: the accepted fraction of each full step (0: none); NaN for PG and NPG, (n_iters,)."""


def full_parameter_runs(system, K0, log_std0, *, n_iters: int, lr: float, eta: float,
                        max_kl: float = TRPO_MAX_KL) -> dict:
    r"""Exact PG, NPG and TRPO on (K, log_std) together, through `refpg.algorithms`: label -> `FullRun`.

    ``"PG"``: `refpg.algorithms.reinforce_step` in exact mode
    (:math:`\theta \leftarrow \theta + \mathrm{lr}\,\nabla_\theta J`); ``"NPG"``:
    `refpg.algorithms.npg_step` (:math:`\theta \leftarrow \theta + \eta F^{-1}\nabla_\theta J`);
    ``"TRPO"``: `refpg.algorithms.trpo_step` (exact surrogate and KL, CG to
    convergence). No entropy term in any.
    """
    from refpg import lqr
    from refpg.algorithms import npg_step, reinforce_step, trpo_step

    pol = lqr.LinearGaussian.for_system(system)
    log_std0 = np.asarray(log_std0, dtype=np.float64)
    optimum = lqr.evaluate(system, lqr.optimal_gain(system).K, log_std0)
    def trpo(th):
        res = trpo_step(system, pol, th, max_kl=max_kl, cg_iters=pol.n_params)
        return res.theta, res.step_fraction

    steps = {"PG": lambda th: (reinforce_step(system, pol, th, lr=lr).theta, np.nan),
             "NPG": lambda th: (npg_step(system, pol, th, eta=eta).theta, np.nan),
             "TRPO": trpo}
    out = {}
    for label, step in steps.items():
        theta = pol.pack(K0, log_std0)
        thetas, kls, kls_log_std, fractions = [theta], [], [], []
        for _ in range(n_iters):
            new, fraction = step(theta)
            fractions.append(fraction)
            kls.append(lqr.kl_divergence(system, pol, new, theta_old=theta))
            # The same KL with K held at its old value: the log_std term alone (the two add up).
            same_K = np.concatenate([theta[:-system.action_dim], new[-system.action_dim:]])
            kls_log_std.append(lqr.kl_divergence(system, pol, same_K, theta_old=theta))
            theta = new
            thetas.append(theta)
        parts = [pol.unpack(th) for th in thetas]
        out[label] = FullRun(log_std=np.array([ls for _, ls in parts]),
                             cost=np.array([lqr.cost(system, K, ls) for K, ls in parts]),
                             gap=np.array([suboptimality(system, K, log_std0, optimum=optimum) for K, _ in parts]),
                             kl=np.array(kls), kl_log_std=np.array(kls_log_std), fraction=np.array(fractions))
    return out


# -- the gamma^t-free direction ------------------------------------------------------------------------

def gamma_free_gap(system, K, log_std, gammas, horizons) -> dict:
    r"""Cosine and relative gap of the :math:`\gamma^t`-free direction against :math:`\nabla C_H`, exactly.

    For each gamma (the system's A, B, Q, R, W and initial state with that
    discount) and horizon H: d = `refpg.lqr.gamma_free_direction`,
    :math:`g = \nabla C_H` (`refpg.lqr.finite_horizon_cost_gradient`), both over
    (vec K, log_std);

    .. math:: \cos = \frac{d\cdot g}{\|d\|\|g\|},\qquad \mathrm{gap} = \frac{\|d - g\|}{\|g\|}.

    Returns
    -------
    dict
        ``cosine`` and ``rel_gap``, arrays (len(gammas), len(horizons)); also
        ``cosine_K`` and ``rel_gap_K`` over vec K alone.

    References
    ----------
    [Nota2020]; [Williams1992].
    """
    from refpg import lqr

    out = {k: np.zeros((len(gammas), len(horizons))) for k in ("cosine", "rel_gap", "cosine_K", "rel_gap_K")}
    for i, gamma in enumerate(gammas):
        sys_g = _with_gamma(system, gamma)
        for j, H in enumerate(horizons):
            d = lqr.gamma_free_direction(sys_g, K, log_std, H)
            c = lqr.finite_horizon_cost_gradient(sys_g, K, log_std, H)
            for suffix, dv, cv in (("", np.concatenate([d.K.ravel(), d.log_std]),
                                    np.concatenate([c.K.ravel(), c.log_std])),
                                   ("_K", d.K.ravel(), c.K.ravel())):
                out["cosine" + suffix][i, j] = float(dv @ cv / (np.linalg.norm(dv) * np.linalg.norm(cv)))
                out["rel_gap" + suffix][i, j] = float(np.linalg.norm(dv - cv) / np.linalg.norm(cv))
    return out


class FixedPoints(NamedTuple):
    """Zeros in K (log_std fixed) of the gamma^t-free direction and of the H-step gradient (`fixed_points`)."""

    K_free: np.ndarray
    """K with the K part of `refpg.lqr.gamma_free_direction` zero, (m, n)."""
    K_H: np.ndarray
    r"""K with :math:`\nabla_K C_H = 0`, (m, n)."""
    residual_free: float
    """max |entry| of the gamma-free direction's K part at K_free."""
    residual_H: float
    r"""max |entry| of :math:`\nabla_K C_H` at K_H."""


def fixed_points(system, log_std, horizon: int) -> FixedPoints:
    r"""Where following the :math:`\gamma^t`-free direction, or :math:`\nabla C_H`, in K would stop.

    Both zeros are found by `scipy.optimize.root` (Powell's hybrid method)
    from :math:`K^*` and accepted when every entry of the direction there is
    below :math:`10^{-10} s`, :math:`s = \|H_{uu}(K^*)\|\max(1, \|K^*\|)\|\Sigma_{K^*}\|`
    (the scale of :math:`\nabla_K C = 2 E_K \Sigma_K`; checked, not assumed). The log_std part of
    either direction never vanishes (it is :math:`2\sigma_i^2\sum_t w_t[H_t]_{ii} > 0`), so
    the zeros are in K with log_std fixed.

    Raises
    ------
    refpg.errors.InvalidInputError
        If the root finder does not reach that residual.
    """
    import scipy.optimize as so

    from refpg import lqr
    from refpg.errors import InvalidInputError

    m, n = system.action_dim, system.state_dim
    K_star = lqr.optimal_gain(system).K
    ev = lqr.evaluate(system, K_star, log_std)
    scale = float(np.linalg.norm(ev.Huu, 2) * max(1.0, np.linalg.norm(K_star, 2)) * np.linalg.norm(ev.Sigma, 2))
    found = []
    for name, fn in (("gamma_free_direction", lqr.gamma_free_direction),
                     ("finite_horizon_cost_gradient", lqr.finite_horizon_cost_gradient)):
        def f(k, fn=fn):
            return fn(system, k.reshape(m, n), log_std, horizon).K.ravel()

        sol = so.root(f, K_star.ravel(), method="hybr", tol=1e-15)
        residual = float(np.abs(f(sol.x)).max())
        if not residual <= 1e-10 * scale:
            raise InvalidInputError(f"no zero of {name} found at horizon={horizon}: residual {residual:.3g} "
                                    f"after {sol.nfev} evaluations ({sol.message})")
        found += [sol.x.reshape(m, n), residual]
    return FixedPoints(K_free=found[0], K_H=found[2], residual_free=found[1], residual_H=found[3])


# -- the study ----------------------------------------------------------------------------------------

def _fmt(x, spec=".3g"):
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def _worst_ratio(gap) -> float:
    """The largest g_(t+1)/g_t while g_t is above 1e-14 g_0 (well above the round-off of `suboptimality`)."""
    g = np.asarray(gap)
    keep = g[:-1] > 1e-14 * g[0]
    return float(np.max(g[1:][keep] / g[:-1][keep]))


#: Labels of part 1's exact runs: label -> (method, eta or None for the tuned step).
EXACT_RUNS = {
    "PG": ("pg", None),
    "NPG (tuned)": ("npg", None),
    "NPG (Fazel step)": ("npg", "fazel"),
    "GN, eta = 1/2": ("gn", 0.5),
    "GN, eta = 1 (policy iteration)": ("gn", 1.0),
}


def run(*, quick: bool = False, out_dir="analysis/lqr") -> dict:
    from refpg import lqr
    from refpg.algorithms import trpo_step

    out = prepare_out_dir(out_dir)
    T = 60 if quick else 200
    T_ppo = 40 if quick else 200
    n_samples = 1024 if quick else 8192
    gammas = (0.5, 0.9, 0.99, 0.999) if quick else (0.5, 0.7, 0.9, 0.95, 0.99, 0.999)
    horizons = (1, 2, 5, 10, 20, 50, 100) if quick else (1, 2, 3, 5, 10, 20, 50, 100, 200, 500)
    fp_horizons = (10, 100) if quick else (10, 20, 50, 100, 200, 500)
    system, K0, ls0 = study_system()
    opt = lqr.optimal_gain(system)
    C0, C_star = lqr.cost(system, K0, ls0), lqr.cost(system, opt.K, ls0)
    bounds = bound_rates(system, K0, ls0)
    progress = Progress("lqr: parts", 10)

    # -- part 1: exact descent, TRPO, PPO with log_std fixed
    runs, etas = {}, {}
    for k, (label, (method, eta)) in enumerate(EXACT_RUNS.items()):
        if eta is None:
            etas[label], runs[label] = tuned_step(system, K0, ls0, method=method, n_iters=T)
        else:
            etas[label] = bounds["npg_eta"] if eta == "fazel" else eta
            runs[label] = descent(system, K0, ls0, method=method, eta=etas[label], n_iters=T)
        progress.update(k + 1)
    trpo = trpo_descent(system, K0, ls0, max_kl=TRPO_MAX_KL, n_iters=T)
    progress.update(6)
    ppo_fixed = ppo_descent(system, K0, ls0, n_updates=T_ppo, n_samples=n_samples, train_log_std=False)
    progress.update(7)

    rates = {label: linear_rate(r.gap) for label, r in runs.items()}
    accepted = trpo.fraction > 0.0
    # A step that accepts nothing leaves K, and so every later step, unchanged.
    trpo_stall = None if accepted.all() else int(np.argmin(accepted))
    rates["TRPO"] = linear_rate(trpo.gap if trpo_stall is None else trpo.gap[:trpo_stall + 1])
    pi_steps = int(np.argmax(runs["GN, eta = 1 (policy iteration)"].gap <= RATE_WINDOW[0] * runs["PG"].gap[0]))
    worst = {label: _worst_ratio(runs[label].gap) for label in runs}
    bound = {"NPG (Fazel step)": bounds["npg"], "GN, eta = 1/2": bounds["gn"][0.5],
             "GN, eta = 1 (policy iteration)": bounds["gn"][1.0]}
    lclip_z = (ppo_fixed.lclip - ppo_fixed.surrogate_gain) / ppo_fixed.lclip_se

    fig, axes = new_figure(1, 2, figsize=(13, 4.6))
    ax = axes[0]
    colours = {"PG": "tab:red", "NPG (tuned)": "tab:blue", "NPG (Fazel step)": "tab:cyan",
               "GN, eta = 1/2": "tab:green", "GN, eta = 1 (policy iteration)": "tab:olive"}
    for label, r in runs.items():
        ax.semilogy(np.maximum(r.gap, 1e-32), color=colours[label], label=f"{label} (eta = {etas[label]:.3g})")
    ax.semilogy(trpo.gap, color="tab:purple", label=f"TRPO (delta = {TRPO_MAX_KL:g})")
    ax.semilogy(ppo_fixed.gap, color="tab:orange", label=f"PPO (eps = {PPO_CLIP}), Monte Carlo, N = {n_samples}")
    t = np.arange(T + 1)
    for label in ("NPG (Fazel step)", "GN, eta = 1/2"):
        ax.semilogy(t, runs[label].gap[0] * bound[label] ** t, ls=":", color=colours[label], lw=1)
    ax.set_ylim(1e-32, None)
    ax.set_xlabel("iteration")
    ax.set_ylabel("C(K) - C(K*)")
    ax.set_title("Sub-optimality from the same K0, log_std fixed (dotted: bounds)")
    ax.legend(fontsize=7)
    ax = axes[1]
    k_acc = np.flatnonzero(accepted) + 1
    ax.plot(k_acc, trpo.kl[accepted] / TRPO_MAX_KL, color="tab:purple", marker=".", ms=3,
            label="TRPO: exact mean KL / delta (accepted steps)")
    ax.plot(np.arange(1, T_ppo + 1), ppo_fixed.kl / TRPO_MAX_KL, color="tab:orange",
            label="PPO: exact mean KL / delta")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_title(f"KL(pi_old || pi_new) of each step, in units of delta = {TRPO_MAX_KL:g}")
    ax.legend(fontsize=7)
    save_figure(fig, out / "convergence.png")

    # -- part 2: the gamma^t-free direction
    gf = gamma_free_gap(system, K0, ls0, gammas, horizons)
    progress.update(8)
    fps = {H: fixed_points(system, ls0, H) for H in fp_horizons}
    fp_free = np.array([suboptimality(system, fps[H].K_free, ls0) for H in fp_horizons])
    fp_H = np.array([suboptimality(system, fps[H].K_H, ls0) for H in fp_horizons])
    fp_CH = np.array([lqr.finite_horizon_cost(system, fps[H].K_free, ls0, H)
                      - lqr.finite_horizon_cost(system, fps[H].K_H, ls0, H) for H in fp_horizons])
    vec = lambda c: np.concatenate([c.K.ravel(), c.log_std])  # noqa: E731
    grad_inf = vec(lqr.cost_gradient(system, K0, ls0))
    trunc_err = float(np.linalg.norm(vec(lqr.finite_horizon_cost_gradient(system, K0, ls0, horizons[-1]))
                                     - grad_inf) / np.linalg.norm(grad_inf))
    progress.update(9)
    fig, axes = new_figure(1, 3, figsize=(16, 4.4))
    for i, gamma in enumerate(gammas):
        axes[0].loglog(horizons[1:], gf["rel_gap"][i, 1:], marker="o", ms=3, label=f"gamma = {gamma}")
        axes[1].semilogx(horizons, gf["cosine"][i], marker="o", ms=3, label=f"gamma = {gamma}")
    axes[0].set_title("||d_free - grad C_H|| / ||grad C_H|| (0 at H = 1)")
    axes[1].set_title("cosine(d_free, grad C_H)")
    axes[0].legend(fontsize=7)
    axes[2].loglog(fp_horizons, fp_free, marker="o", label="zero of d_free")
    axes[2].loglog(fp_horizons, fp_H, marker="s", label="zero of grad_K C_H")
    axes[2].set_title(f"C(K) - C(K*) at the zeros in K (gamma = {system.gamma})")
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("horizon H")
    fig.suptitle("The gamma^t-free direction d_free against the gradient of the H-step discounted cost, at K0 (exact)")
    save_figure(fig, out / "gamma_free_gap.png")

    # -- part 3: log_std collapse (same seed as the fixed-log_std PPO run: the same random numbers)
    ppo_free = ppo_descent(system, K0, ls0, n_updates=T_ppo, n_samples=n_samples, train_log_std=True)
    full = full_parameter_runs(system, K0, ls0, n_iters=T_ppo, lr=etas["PG"], eta=etas["NPG (tuned)"])
    pg_free, npg_free, trpo_free = full["PG"], full["NPG"], full["TRPO"]
    progress.update(10)
    tail = slice(3 * T_ppo // 4, T_ppo)
    drop = -np.diff(ppo_free.log_std, axis=0)[tail]
    ppo_effective_step = float(np.mean(drop / ppo_free.dC_dlog_std[tail]))
    C_inf = lqr.cost(system, opt.K, np.full(system.action_dim, -30.0))

    fig, axes = new_figure(1, 3, figsize=(16, 4.4))
    u = np.arange(T_ppo + 1)
    axes[0].plot(u, ppo_free.log_std.mean(axis=1), color="tab:orange", label="PPO + Adam (Monte Carlo)")
    axes[0].plot(u, pg_free.log_std.mean(axis=1), color="tab:red", label=f"exact PG (eta = {etas['PG']:.3g})")
    axes[0].plot(u, npg_free.log_std.mean(axis=1), color="tab:blue",
                 label=f"exact NPG (eta = {etas['NPG (tuned)']:.3g})")
    axes[0].plot(u, trpo_free.log_std.mean(axis=1), color="tab:purple", label=f"exact TRPO (delta = {TRPO_MAX_KL:g})")
    axes[0].set_title("mean log_std, no entropy bonus")
    axes[0].legend(fontsize=7)
    axes[1].semilogy(u, ppo_free.dC_dlog_std.mean(axis=1), label="dC/dlog_std (exact, mean over dimensions)")
    axes[1].semilogy(u, ppo_free.score_scale, label="tr F_KK = E||grad_K log pi||^2 (exact)")
    axes[1].set_title("Along the PPO run")
    axes[1].legend(fontsize=7)
    axes[2].semilogy(u, ppo_fixed.gap, color="tab:orange", ls="--", label="PPO, log_std fixed")
    axes[2].semilogy(u, ppo_free.gap, color="tab:orange", label="PPO, log_std trained")
    axes[2].set_title("gain sub-optimality C(K) - C(K*) at log_std = log 0.3")
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("update")
    save_figure(fig, out / "log_std_collapse.png")

    # -- report
    rate_rows = []
    for label in list(runs) + ["TRPO"]:
        gap = trpo.gap if label == "TRPO" else runs[label].gap
        step = f"delta = {TRPO_MAX_KL:g}" if label == "TRPO" else f"{etas[label]:.4g}"
        rate = ("quadratic" if label.startswith("GN, eta = 1 ") else _fmt(rates[label], ".4f"))
        rate_rows.append([label, step, f"{gap[min(10, T)]:.3g}", f"{gap[-1]:.3g}", rate,
                          _fmt(worst.get(label), ".4f"), _fmt(bound.get(label), ".6f")])
    rate_rows.append([f"PPO (Monte Carlo, N = {n_samples})", f"Adam lr {PPO_LR}, eps {PPO_CLIP}",
                      f"{ppo_fixed.gap[min(10, T_ppo)]:.3g}", f"{ppo_fixed.gap[-1]:.3g} (after {T_ppo})",
                      "noise floor", "n/a", "n/a"])
    gf_rows = [[f"{gamma}"] + [f"{gf['rel_gap'][i, j]:.3g} / {gf['cosine'][i, j]:.4f}" for j in range(len(horizons))]
               for i, gamma in enumerate(gammas)]
    fp_rows = [[H, f"{fp_free[k]:.3g}", f"{fp_H[k]:.3g}", f"{fp_CH[k]:.3g}",
                f"{max(fps[H].residual_free, fps[H].residual_H):.1e}"] for k, H in enumerate(fp_horizons)]
    i09, j10 = gammas.index(0.9), horizons.index(10)
    ls_start, ls_end = float(ppo_free.log_std[0].mean()), float(ppo_free.log_std[-1].mean())
    dls_start, dls_end = float(ppo_free.dC_dlog_std[0].mean()), float(ppo_free.dC_dlog_std[-1].mean())
    collapse_rows = [[k, f"{ppo_free.log_std[k].mean():.3f}", f"{np.exp(ppo_free.log_std[k]).mean():.4f}",
                      f"{ppo_free.dC_dlog_std[k].mean():.4g}", f"{ppo_free.score_scale[k]:.4g}",
                      f"{ppo_free.cost[k]:.4f}", f"{ppo_free.gap[k]:.3g}", f"{ppo_fixed.gap[k]:.3g}",
                      f"{pg_free.log_std[k].mean():.3f}", f"{npg_free.log_std[k].mean():.3f}",
                      f"{trpo_free.log_std[k].mean():.3f}", f"{trpo_free.gap[k]:.3g}", f"{trpo.gap[k]:.3g}"]
                     for k in sorted({0, T_ppo // 4, T_ppo // 2, 3 * T_ppo // 4, T_ppo})]
    monotone = bool(np.all(np.diff(ppo_free.log_std, axis=0) < 0))
    trpo_ls_share = float(np.mean(trpo_free.kl_log_std / trpo_free.kl))
    trpo_fracs = sorted(set(trpo_free.fraction.tolist()))
    half, quarter = T_ppo // 2, T_ppo // 4
    # Mean fall of log_std per step over the first and the second half of each run.
    drop_rates = {label: (float((r.log_std[0] - r.log_std[half]).mean() / half),
                          float((r.log_std[half] - r.log_std[-1]).mean() / (T_ppo - half)))
                  for label, r in (("PPO", ppo_free), ("PG", pg_free), ("NPG", npg_free), ("TRPO", trpo_free))}
    pol = lqr.LinearGaussian.for_system(system)
    first_full_kl = trpo_step(system, pol, pol.pack(K0, ls0), max_kl=TRPO_MAX_KL,
                              cg_iters=pol.n_params).line_search[0].kl
    npg_rate, pg_rate, gn_rate, trpo_rate = (rates["NPG (tuned)"], rates["PG"], rates["GN, eta = 1/2"],
                                             rates["TRPO"])
    arr = lambda a: np.array2string(a, precision=4, suppress_small=True)  # noqa: E731
    stall_txt = ("every line search accepted a step" if trpo_stall is None else
                 f"from step {trpo_stall + 1} on, the line search accepts nothing and K stays put")
    report = f"""# Policy gradients on an exact LQR

`refpg study lqr` ({'quick' if quick else 'full'} mode). Everything but the PPO runs is exact
(`refpg.lqr`: closed forms through two Lyapunov equations). PPO's clipped objective has no
closed form, so it is estimated by **Monte Carlo** (labelled as such wherever it appears). The
advantages are exact, and states and actions are drawn from d_old x pi_old, N = {n_samples} per update.

The system (`refpg.studies.lqr.study_system`) has 3 states and 2 actions, with gamma = {system.gamma},
Q = I, R = I, W = 0.01 I, mu0 = 0 and Sigma0 = diag(1, 0.1, 0.01). Its open loop is unstable:
the spectral radius of sqrt(gamma) A is 1.1. log_std = log 0.3 in both dimensions.

```
A  = {arr(system.A)}
B  = {arr(system.B)}
K0 = {arr(K0)}
K* = {arr(opt.K)}
```

K0 is optimal for R = 30 I; the spectral radius of sqrt(gamma)(A - B K0) is {system.spectral_radius(K0):.4f}.
C(K0) = {C0:.6f} and C(K*) = {C_star:.6f}. The sub-optimality C(K) - C(K*) is computed as
tr(Sigma_K (K - K*)^T H_uu(K*) (K - K*)), the cost-difference identity at K*. That form keeps
its digits down to about 1e-31, where the plain difference stops at about 1e-15 C.

## 1. Convergence from the same K0 [Fazel2018]

log_std is held at log 0.3 for every method here, so all of them minimise the same C(K).
PG and "NPG (tuned)" use the largest step 2^-k that descends at every one of {T} steps.
"NPG (Fazel step)" takes K <- K - eta_F E_K with eta_F = 1/(||R|| + gamma ||B||^2 C(K0)/mu) =
{bounds['npg_eta_fazel']:.4g}; that is the exact natural gradient with eta = {bounds['npg_eta']:.4g}.
Here mu = lambda_min(S0 + gamma N/(1 - gamma)) = {bounds['mu']:.4g} and ||Sigma_K*|| = {bounds['sigma_star_norm']:.4g}.

The "bound" column is the per-step contraction that [Fazel2018]'s argument gives once carried
to the discounted, noisy problem (see the module docstring). "Worst ratio" is the largest
measured g_(t+1)/g_t. The measured rate is (g_b/g_a)^(1/(b-a)), taken between the first iterate
below 1e-1 g_0 and the last one above 1e-20 g_0 (for TRPO, before it stalls).

{md_table(["method", "step", "C - C* at 10", f"at {T}", "measured rate", "worst ratio", "bound"], rate_rows)}

Policy iteration (GN with eta = 1) reaches the round-off floor (1e-20 g_0) in {pi_steps} steps, so it
converges quadratically, not linearly. GN with eta = 1/2 contracts by {gn_rate:.4f} per step, close to
(1 - eta)^2 = 0.25: near K* a GN step shrinks K - K* by the factor 1 - eta, and C - C* is quadratic in K - K*.

**Headline.** From the same K0, the exact natural gradient converges linearly at {npg_rate:.4f} per step
and Gauss-Newton (eta = 1/2) at {gn_rate:.4f}. The plain gradient, at its best monotone step, manages
only {pg_rate:.4f}. This is [Fazel2018]'s ordering. Every NPG (Fazel step) and GN step contracts at
least as much as the bound requires: the worst measured ratios are {worst['NPG (Fazel step)']:.6f} <= {bound['NPG (Fazel step)']:.6f}
and {worst['GN, eta = 1/2']:.4f} <= {bound['GN, eta = 1/2']:.4f}. The bounds are loose.

TRPO (delta = {TRPO_MAX_KL:g}) uses the exact gradient, Fisher-vector products, surrogate and KL,
with CG run to convergence. The exact mean KL of every step is at most {trpo.kl.max():.6g}
({trpo.kl.max() / TRPO_MAX_KL:.6f} delta), and C rose at {int(np.sum(trpo.cost_change > 0))} of {T} steps.
Before it stalls it converges linearly at {trpo_rate:.4f} per step, faster than NPG at its fixed tuned
step: TRPO is the natural gradient with a step length chosen anew at every iteration. Then {stall_txt},
at sub-optimality {trpo.gap[-1]:.3g}. Each full step has KL exactly delta, so near K* the
improving steps are shorter than 2^-10 of it, and the paper's 10 halvings never reach them.

PPO (fixed log_std, Monte Carlo) brings the gain's sub-optimality from {ppo_fixed.gap[0]:.3g} down to
{ppo_fixed.gap.min():.3g} at best; after {T_ppo} updates it is {ppo_fixed.gap[-1]:.3g}. It levels off
and wanders at the Monte Carlo noise floor of N = {n_samples} draws per update. The exact mean KL of an update reaches {ppo_fixed.kl.max() / TRPO_MAX_KL:.3g} delta.
The clipped objective's gain is estimated by Monte Carlo on an independent batch, with a standard
error. It exceeds TRPO's exact unclipped surrogate gain by at most {lclip_z.max():.2f} standard errors
(median {np.median(lclip_z):.2f}), as expected since L^CLIP <= L^CPI sample by sample.

![convergence](convergence.png)

## 2. The gamma^t-free direction [Nota2020]

d_free = E[sum_t grad log pi(u_t|x_t) G_t] on H-step episodes, with no gamma^t factor. It is
compared with grad C_H, the gradient of the H-step discounted cost, both over (vec K, log_std)
at K0 (exact: `refpg.lqr.gamma_free_direction` and `refpg.lqr.finite_horizon_cost_gradient`).
Each entry is the relative gap ||d_free - grad C_H|| / ||grad C_H||, then the cosine.

{md_table(["gamma"] + [f"H = {H}" for H in horizons], gf_rows)}

At H = 1 the two coincide (a single step, and gamma^0 = 1). At fixed H the gap shrinks as gamma -> 1,
because gamma^t -> 1 for every t < H. At fixed gamma < 1 it grows with H without bound: the
undiscounted visits grow linearly in H, while grad C_H converges (at gamma = {system.gamma},
||grad C_{horizons[-1]} - grad C|| / ||grad C|| = {trunc_err:.2g}). The cosine stays near 1. In the
LQR the missing gamma^t mostly re-weights the states, and K* is optimal in every state
(E_K* = 0 makes every state-weighted gradient vanish). So the zero of d_free in K is close to K*,
and the small error left over comes from the last steps of each episode.

{md_table(["H", "C - C* at the zero of d_free", "C - C* at the zero of grad_K C_H",
           "C_H(zero of d_free) - C_H(zero of grad C_H)", "root residual"], fp_rows)}

**Headline.** At gamma = 0.9 and H = 10, the gamma^t-free direction differs from grad C_H by
{gf['rel_gap'][i09, j10]:.3g} in relative norm (cosine {gf['cosine'][i09, j10]:.4f}); at H = {horizons[-1]} it differs by
{gf['rel_gap'][i09, -1]:.3g} (cosine {gf['cosine'][i09, -1]:.4f}). The bias is mostly one of magnitude, in effect a
larger step. Following d_free to its zero costs {fp_free[0]:.3g} in C at H = {fp_horizons[0]} and {fp_free[-1]:.3g}
at H = {fp_horizons[-1]}.

![gamma-free gap](gamma_free_gap.png)

## 3. log_std collapse under PPO without an entropy bonus

Here every run trains (K, log_std) together and calls the algorithm code of `refpg.algorithms`
on the LQR. PPO is `ppo_update` in exact mode, which estimates the clipped objective by Monte
Carlo, on the same random numbers as part 1's fixed-log_std run: eps = {PPO_CLIP}, {PPO_EPOCHS}
full-batch Adam epochs per update, lr = {PPO_LR}. Beside it run exact gradient ascent
(`reinforce_step`, lr = {etas['PG']:.4g}), the exact natural gradient (`npg_step`, eta = {etas['NPG (tuned)']:.4g};
part 1's tuned steps) and exact TRPO (`trpo_step`, delta = {TRPO_MAX_KL:g}). None has an entropy term.

The cost's exact log_std gradient, 2 sigma_i^2 [H_uu]_ii / (1 - gamma), is positive at every K.
So every method lowers log_std, and the infimum of C is at sigma -> 0, where C(K*) = {C_inf:.4f}
(evaluated at log_std = -30).

{md_table(["update", "mean log_std", "mean sigma", "dC/dlog_std (exact)", "tr F_KK (exact)", "C (exact)",
           "gain gap, log_std trained", "gain gap, log_std fixed", "PG: mean log_std", "NPG: mean log_std",
           "TRPO: mean log_std", "TRPO: gain gap", "TRPO in K alone: gain gap"],
          collapse_rows)}

**Headline.** Over {T_ppo} PPO updates the mean log_std falls from {ls_start:.3f} to {ls_end:.3f}, so sigma goes
from {np.exp(ls_start):.3f} to {np.exp(ls_end):.4f}. It falls at {'every' if monotone else 'not every'} update in every
dimension. Its exact gradient shrinks with sigma^2 (from {dls_start:.3g} to {dls_end:.3g}). Over the last quarter
of the run, each PPO update still moves log_std by {ppo_effective_step:.3g} times that gradient: Adam
divides by the gradient's running scale. Exact PG, whose log_std step is lr = {etas['PG']:.3g} times the
gradient, ends at mean log_std {pg_free.log_std[-1].mean():.3f}; NPG, whose log_std step is also proportional to
sigma^2, at {npg_free.log_std[-1].mean():.3f}; TRPO at {trpo_free.log_std[-1].mean():.3f}.

Mean fall of log_std per step, first half of the run / second half:
{', '.join(f'{k} {a:.4f} / {b:.4f}' for k, (a, b) in drop_rates.items())}. PG, NPG and PPO slow down;
TRPO does not.

TRPO on (K, log_std) spends on average {100 * trpo_ls_share:.0f}% of each step's exact KL on log_std. The
log_std block of the Fisher matrix is 2I whatever sigma is, so a step of KL delta moves log_std by about
the same amount every time, and its log_std falls linearly. Its accepted fractions of the full step are
{', '.join(f'{f:g}' for f in trpo_fracs)}. The log_std part of the KL, (e^d - 1 - d)/2 with
d = 2 (log_std_old - log_std_new) > 0, is steeper than its quadratic model, so a full step overshoots
delta (its exact KL is {first_full_kl / TRPO_MAX_KL:.3f} delta at the first step) and the line search halves it.
With most of the KL going to log_std, its gain converges more slowly than part 1's TRPO in K alone
(gain gap {trpo_free.gap[quarter]:.3g} against {trpo.gap[quarter]:.3g} after {quarter} steps). Later its line search
never stalls, because lowering log_std always improves the surrogate, and the shrinking sigma makes the
same KL buy ever smaller K steps. After {T_ppo} steps its gain gap is {trpo_free.gap[-1]:.3g}, against
{trpo.gap[T_ppo]:.3g} for TRPO in K alone.

As sigma falls, the score's scale E||grad_K log pi||^2 = (1 - gamma) tr(Sigma_K) tr(Psi^-1) grows from
{ppo_free.score_scale[0]:.4g} to {ppo_free.score_scale[-1]:.4g}. Two consequences follow from the formulas:

- A per-sample gradient estimate whose advantage error does not depend on the action has its
  variance multiplied by that same factor.
- A mean-KL radius lets K move only in proportion to sigma: the KL of a change dK is
  1/2 tr(dK^T Psi^-1 dK M).

With exact advantages, as here, the Monte Carlo noise of the clipped-objective gradient itself
shrinks with sigma. That is why the trained-log_std run ends with a gain gap
{'below' if ppo_free.gap[-1] < ppo_fixed.gap[-1] else 'above'} the fixed-log_std run's ({ppo_free.gap[-1]:.3g} against {ppo_fixed.gap[-1]:.3g}).

![log_std collapse](log_std_collapse.png)
"""
    (out / "report.md").write_text(report)
    return {
        "C_K0": float(C0),
        "C_star": float(C_star),
        "steps": {k: float(v) for k, v in etas.items()},
        "rates": rates,
        "bound_rates": bound,
        "worst_step_ratio": worst,
        "policy_iteration_steps_to_floor": pi_steps,
        "final_gap": {**{k: float(r.gap[-1]) for k, r in runs.items()}, "TRPO": float(trpo.gap[-1]),
                      "PPO (fixed log_std)": float(ppo_fixed.gap[-1])},
        "trpo_per_step": {"kl": trpo.kl.tolist(), "fraction": trpo.fraction.tolist()},
        "trpo_max_kl_over_delta": float(trpo.kl.max() / TRPO_MAX_KL),
        "trpo_cost_increases": int(np.sum(trpo.cost_change > 0)),
        "trpo_stall_step": None if trpo_stall is None else trpo_stall + 1,
        "ppo_max_kl_over_delta": float(ppo_fixed.kl.max() / TRPO_MAX_KL),
        "ppo_min_gap_fixed_log_std": float(ppo_fixed.gap.min()),
        "ppo_lclip_minus_surrogate_max_z": float(lclip_z.max()),
        "gamma_free": {"gammas": list(gammas), "horizons": list(horizons), "rel_gap": gf["rel_gap"].tolist(),
                       "cosine": gf["cosine"].tolist()},
        "gamma_free_rel_gap_g0.9_H10": float(gf["rel_gap"][i09, j10]),
        "gamma_free_fixed_point_gap": dict(zip(fp_horizons, fp_free.tolist())),
        "grad_C_H_fixed_point_gap": dict(zip(fp_horizons, fp_H.tolist())),
        "ppo_log_std": (ls_start, ls_end),
        "ppo_log_std_falls_every_update": monotone,
        "ppo_dC_dlog_std": (dls_start, dls_end),
        "ppo_score_scale": (float(ppo_free.score_scale[0]), float(ppo_free.score_scale[-1])),
        "ppo_log_std_effective_step": ppo_effective_step,
        "pg_log_std_end": float(pg_free.log_std[-1].mean()),
        "npg_log_std_end": float(npg_free.log_std[-1].mean()),
        "trpo_log_std_end": float(trpo_free.log_std[-1].mean()),
        "trpo_full_max_kl_over_delta": float(trpo_free.kl.max() / TRPO_MAX_KL),
        "trpo_full_log_std_kl_share": trpo_ls_share,
        "trpo_full_gain_gap_end": float(trpo_free.gap[-1]),
        "trpo_full_gain_gap_quarter": float(trpo_free.gap[quarter]),
        "trpo_K_gain_gap_quarter": float(trpo.gap[quarter]),
        "log_std_drop_per_step": drop_rates,
        "ppo_gain_gap_end": {"fixed": float(ppo_fixed.gap[-1]), "trained": float(ppo_free.gap[-1])},
    }
