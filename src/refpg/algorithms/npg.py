r"""Natural policy gradient: one step, and Agarwal et al.'s convergence bound.

.. math:: \theta_{t+1} = \theta_t + \eta\, F(\theta_t)^+ \nabla_\theta J(\theta_t)

([Kakade2001]). For tabular softmax this is the multiplicative-weights
update :math:`\pi_{t+1}(a|s) \propto \pi_t(a|s)\exp(\eta A^{\pi_t}(s,a)/(1-\gamma))`
([Agarwal2021] Lemma 5.1), which improves V in every state (Lemma 5.2) and
converges at rate O(1/T) (Theorem 5.3, `npg_bound`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from refpg._validation import check_positive_int, check_real
from refpg.algorithms._problems import problem
from refpg.algorithms.common import (
    SampleConfig,
    SampledData,
    check_fisher,
    check_mode,
    check_sample_config,
    check_sampled_arguments,
)
from refpg.algorithms.trpo import CGResult, conjugate_gradient
from refpg.errors import InvalidInputError
from refpg.evaluation import check_mdp

__all__ = ["NPGResult", "npg_step", "npg_bound"]


@dataclass(frozen=True, eq=False)
class NPGResult:
    r"""Every intermediate quantity of one `npg_step`.

    Attributes
    ----------
    theta : ndarray
        theta_old + eta * direction.
    theta_old : ndarray
    eta : float
    gradient : ndarray
        The exact policy gradient (exact mode) or its batch estimate
        :math:`\hat g = \frac HM\sum_i \hat A_i\nabla\log\pi(a_i|s_i)`,
        H = 1/(1-gamma) (sampled mode; `npg_step` Notes).
    direction : ndarray
        The natural gradient: `refpg.natural_gradient` (exact mode with
        ``cg_iters=None`` and ``damping=0``; the minimum-norm
        :math:`F^+\nabla J`) or the CG solution of
        :math:`(F + \lambda I)x = g` (exact F and g otherwise in exact mode;
        their batch estimates in sampled mode).
    cg : CGResult or None
        The CG run; None when exact mode solved in closed form (tabular
        softmax) or by least squares (log-linear).
    J_before, J_after : float
        Exact J(theta_old) and J(theta), in both modes (refpg knows the MDP).
    mode : str
    data : SampledData or None
        The batch of sampled mode; None in exact mode.
    """

    theta: np.ndarray
    theta_old: np.ndarray
    eta: float
    gradient: np.ndarray
    direction: np.ndarray
    cg: CGResult | None
    J_before: float
    J_after: float
    mode: str
    data: SampledData | None


def npg_step(mdp, policy, theta, *, eta: float, mode: str = "exact", cg_iters: int | None = None,
             cg_rtol: float = 1e-10, damping: float = 0.0, fisher: str = "empirical", rng=None,
             sample_config: SampleConfig | None = None, data: SampledData | None = None) -> NPGResult:
    r"""One natural policy gradient step.

    .. math:: \theta = \theta_{old} + \eta\, F(\theta_{old})^+ \nabla_\theta J(\theta_{old})

    Parameters
    ----------
    mdp : TabularMDP or refpg.lqr.LQRSystem
    policy : TabularSoftmax or LogLinear; refpg.lqr.LinearGaussian on an LQRSystem
    theta : ndarray of shape ``policy.theta_shape``
        theta_old (on an LQRSystem, a stabilising gain).
    eta : float
        Step size, > 0.
    mode : {"exact", "sampled"}
        Exact: the natural gradient of `refpg.natural_gradient` (closed form
        :math:`(A - \bar A)/(1-\gamma)` on visited states for tabular softmax,
        minimum-norm least squares for log-linear), or conjugate gradient on
        the exact Fisher matrix when `cg_iters` or `damping` is given. On an
        LQR system the closed form is `refpg.lqr.natural_gradient`, in K
        :math:`-2\Psi E_K/(1-\gamma)` ([Fazel2018] Section 4), and F is
        `refpg.lqr.fisher_matrix` (used matrix-free).
        Sampled: conjugate gradient on a batch Fisher with the batch estimate
        of the policy gradient (Notes). Both are the same step: the sampled
        one estimates the exact one.
    cg_iters : int >= 1 or None, default None
        `conjugate_gradient`'s max_iter, in both modes. None: run CG until
        its residual test passes, at most ``policy.n_params`` iterations (in
        exact mode with ``damping=0``: the closed form, which is where that
        CG converges). Sampled mode refuses None together with
        ``damping=0`` (Notes).
    cg_rtol : float, default 1e-10
        `conjugate_gradient`'s rtol, in both modes.
    damping : float, default 0
        :math:`\lambda \ge 0`, solving :math:`(F + \lambda I)x = \nabla J`
        (exact mode) or :math:`(\hat F + \lambda I)x = \hat g` (sampled).
    fisher : {"empirical", "kl_hessian"}, default "empirical"
        Sampled mode's Fisher estimate, as in `trpo_step` (there the default
        is the KL Hessian, the TRPO paper's choice; here the empirical Fisher
        of [Kakade2001]). Both estimate the exact Fisher matrix, which exact
        mode uses whatever this says.
    rng, sample_config, data
        Sampled mode only, as in `trpo_step`.

    Returns
    -------
    NPGResult

    Raises
    ------
    refpg.errors.InvalidInputError
        On any bad argument (named in the message).

    Notes
    -----
    The minimum-norm natural gradient is 0 on states with
    :math:`d^{\pi}_\rho(s) = 0`, so the policy never changes where rho
    cannot lead; [Agarwal2021]'s closed form is stated for every state and
    agrees on the visited ones. V still rises everywhere (Lemma 5.2): the
    unvisited states keep their policy and lead only to states whose values rose.

    Sampled mode multiplies the batch mean
    :math:`\frac1M\sum_i \hat A_i\nabla\log\pi(a_i|s_i)` by the
    :math:`H = 1/(1-\gamma)` of the policy gradient theorem (for gamma = 1,
    by the batch's transitions per ended episode, consistent as n_steps grows; `refpg.algorithms.common.horizon_estimate`),
    so that :math:`\hat g` estimates :math:`\nabla J` and eta means the same
    step in both modes. Libraries that omit H take, for the same eta, a step
    :math:`(1-\gamma)` times as long: pass ``eta * (1 - gamma)`` to mimic one.
    The batch Fisher is singular and, once some :math:`\pi(a|s)` nears 0,
    nearly singular along directions where the batch gradient is pure
    sampling noise: its minimum-norm solve (CG run to convergence) then
    returns steps thousands of times the exact one. Sampled mode therefore
    needs ``cg_iters`` (truncated CG, as NPG and TRPO implementations run it)
    or ``damping > 0``, and refuses a call with neither.
    For tabular softmax the natural gradient is per state, so the batch's
    state distribution (the rollouts' visitation rather than
    :math:`d^{\pi}_\rho`) does not change the limit; for log-linear
    policies it does ([Nota2020]).

    References
    ----------
    [Kakade2001]; [Agarwal2021] Section 5.
    """
    mode = check_mode(mode)
    eta = check_real(eta, "eta", low=0.0, low_open=True)
    fisher = check_fisher(fisher)
    if cg_iters is not None:
        cg_iters = check_positive_int(cg_iters, "cg_iters")
    cg_rtol = check_real(cg_rtol, "cg_rtol", low=0.0)
    damping = check_real(damping, "damping", low=0.0)
    check_sampled_arguments(mode, rng, data, sample_config=sample_config)
    check_sample_config(sample_config, data)
    if mode == "sampled" and cg_iters is None and damping == 0.0:
        raise InvalidInputError(
            "npg_step(mode='sampled') needs a regularised solve: pass cg_iters (10 is what NPG and TRPO "
            "implementations use) or damping > 0; each means the same in exact mode. cg_iters=None with "
            "damping=0 asks for the minimum-norm solve of the batch Fisher, which estimates F^+ grad J but "
            "whose variance grows without bound as some pi(a|s) nears 0 (FrozenLake, 262,144 transitions a "
            "batch: a step of norm 2e3 by iteration 6 where the exact step is 3.7)")
    prob = problem(mdp, policy, theta)
    theta_old = prob.theta_old
    max_iter = policy.n_params if cg_iters is None else cg_iters
    if mode == "exact":
        gradient = prob.gradient()
        if cg_iters is None and damping == 0.0:
            direction = prob.natural_gradient()
            cg = None
        else:
            cg = conjugate_gradient(lambda v: prob.fvp(v) + damping * v, gradient, max_iter=max_iter,
                                    rtol=cg_rtol)
            direction = cg.x
    else:
        data, pieces = prob.sampled(rng, sample_config, data, fisher)
        gradient = pieces.gradient
        cg = conjugate_gradient(lambda v: pieces.fvp(v) + damping * v, gradient, max_iter=max_iter,
                                rtol=cg_rtol)
        direction = cg.x
    theta_new = theta_old + eta * direction
    return NPGResult(theta=theta_new, theta_old=theta_old, eta=eta, gradient=gradient, direction=direction,
                     cg=cg, J_before=prob.J_old, J_after=prob.J(theta_new), mode=mode, data=data)


def npg_bound(mdp, eta: float, T: int, *, reward_span: float | None = None) -> float:
    r"""[Agarwal2021] Theorem 5.3: the suboptimality of tabular softmax NPG after T steps.

    .. math::
        V^*(\rho) - V^{(T)}(\rho) \le \frac{\log|\mathcal A|}{\eta T} + \frac{R}{(1-\gamma)^2 T}

    for NPG started at theta = 0 (the uniform policy) with step size eta.

    Parameters
    ----------
    mdp : TabularMDP
    eta : float
        Step size, > 0.
    T : int
        Number of steps, >= 1.
    reward_span : float, optional
        R >= 0; default ``mdp.r.max() - mdp.r.min()`` (terminal states'
        zero rewards included).

    Returns
    -------
    float
        The bound; ``inf`` for gamma = 1.

    Notes
    -----
    The theorem assumes rewards in [0, 1] and has R = 1. Its proof uses the
    rewards only to bound :math:`V^{(T)}(d^*) - V^{(0)}(d^*) \le R/(1-\gamma)`,
    which holds for rewards in any interval of width R that contains 0 when
    the MDP has terminal states (where reward is 0). It holds for every rho
    and, with the minimum-norm natural gradient, for every starting state
    reachable from the rho NPG was run with (see `npg_step`).

    References
    ----------
    [Agarwal2021] Theorem 5.3.
    """
    check_mdp(mdp)
    eta = check_real(eta, "eta", low=0.0, low_open=True)
    T = check_positive_int(T, "T")
    if reward_span is None:
        R = float(mdp.r.max() - mdp.r.min())
    else:
        R = check_real(reward_span, "reward_span", low=0.0)
    if mdp.gamma >= 1.0:
        return float("inf")
    return math.log(mdp.n_actions) / (eta * T) + R / ((1.0 - mdp.gamma) ** 2 * T)
