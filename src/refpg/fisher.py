r"""The exact Fisher information matrix and the natural gradient.

:math:`F(\theta) = \mathbb{E}_{s\sim d^\pi_\rho,\, a\sim\pi}[\nabla\log\pi\,\nabla\log\pi^\top]`
with the normalised occupancy d (docs/conventions.md), both matrix-free and dense.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla

from refpg._validation import check_real
from refpg.errors import ProblemTooLargeError
from refpg.evaluation import prepare
from refpg.gradient import gradient_from_evaluation
from refpg.policies import TabularSoftmax

__all__ = ["fisher_vector_product", "fisher_matrix", "natural_gradient", "DENSE_FISHER_MAX_PARAMS"]

#: Largest parameter count for which `fisher_matrix` builds a dense matrix.
DENSE_FISHER_MAX_PARAMS = 20_000


def fisher_vector_product(mdp, policy, theta, v, *, evaluation=None) -> np.ndarray:
    r"""Matrix-free Fisher-vector product :math:`F(\theta) v`.

    .. math::
        F v = \sum_s d(s) \sum_a \pi(a|s)\, \nabla\log\pi(a|s)\,
        \big(\nabla\log\pi(a|s)^\top v\big)

    Parameters
    ----------
    mdp : TabularMDP
    policy : TabularSoftmax or LogLinear
    theta, v : ndarray of shape ``policy.theta_shape``
    evaluation : Evaluation, optional
        Reused if given (checked to match theta).

    Returns
    -------
    ndarray of shape ``policy.theta_shape``

    References
    ----------
    [Kakade2001]; [Schulman2015] Appendix C.1.
    """
    theta, pi, ev = prepare(mdp, policy, theta, evaluation)
    v = policy.validate_theta(v, "v")
    return _fvp(policy, theta, pi, ev.d, v)


def _fvp(policy, theta, pi, d, v):
    u = policy.log_prob_jvp(theta, v, pi)
    return policy.log_prob_vjp(theta, d[:, None] * pi * u, pi)


def fisher_matrix(mdp, policy, theta, *, evaluation=None) -> np.ndarray:
    r"""Dense Fisher matrix :math:`F = J_{\log\pi}^\top \operatorname{diag}(d\,\pi) J_{\log\pi}`.

    Parameters
    ----------
    mdp : TabularMDP
    policy : TabularSoftmax or LogLinear
    theta : ndarray of shape ``policy.theta_shape``
    evaluation : Evaluation, optional

    Returns
    -------
    ndarray of shape (n_params, n_params)
        Indexed by the flattened (C-order) theta; symmetric positive semidefinite.

    Raises
    ------
    refpg.errors.ProblemTooLargeError
        If ``policy.n_params > DENSE_FISHER_MAX_PARAMS``: use
        `fisher_vector_product` instead.

    References
    ----------
    [Kakade2001]; [Agarwal2021] Section 5.
    """
    if policy.n_params > DENSE_FISHER_MAX_PARAMS:
        raise ProblemTooLargeError(
            f"fisher_matrix: policy has {policy.n_params} parameters, more than "
            f"DENSE_FISHER_MAX_PARAMS={DENSE_FISHER_MAX_PARAMS}; use fisher_vector_product")
    theta, pi, ev = prepare(mdp, policy, theta, evaluation)
    jac = policy.log_prob_jacobian(theta, pi)
    w = (ev.d[:, None] * pi).ravel()
    F = jac.T @ (w[:, None] * jac)
    # Symmetric by construction; averaging removes the last-bit asymmetry of the product.
    return 0.5 * (F + F.T)


def natural_gradient(mdp, policy, theta, *, evaluation=None, rcond: float | None = None) -> np.ndarray:
    r"""Minimum-norm natural gradient :math:`F^+ \nabla_\theta J`.

    Tabular softmax has the closed form ([Agarwal2021], Lemma 5.1 with the
    minimum-norm choice of the per-state constant)

    .. math::
        (F^+\nabla J)_{s,a} = \frac{A(s,a) - \tfrac{1}{|A|}\sum_b A(s,b)}{1-\gamma}
        \text{ if } d(s) > 0, \text{ else } 0.

    Log-linear policies solve :math:`F x = \nabla J` by least squares
    (`scipy.linalg.lstsq`, which returns the minimum-norm solution).

    Parameters
    ----------
    mdp : TabularMDP
    policy : TabularSoftmax or LogLinear
    theta : ndarray of shape ``policy.theta_shape``
    evaluation : Evaluation, optional
    rcond : float, optional
        Relative cut-off for small singular values of F in the least-squares
        solve (log-linear only), in [0, 1]; default machine precision times n_params.

    Returns
    -------
    ndarray of shape ``policy.theta_shape``

    Notes
    -----
    The closed form needs pi > 0 in every state with d > 0, which softmax
    guarantees in exact arithmetic; where a probability underflows to 0 in
    float64 (logit gaps beyond ~745) the closed form is still the limit of the
    exact natural gradient. Since the per-state constant does not change the
    policy, compare the policies that theta + eta * x gives, not raw theta.

    The log-linear solve treats singular values of F below ``rcond * max``
    as zero, so a state whose occupancy is below about ``rcond`` relative to
    the largest (e.g. d(s) ~ 1e-40 when gamma ~ 1e-38) is treated as
    unvisited there, while the tabular closed form still updates it.

    References
    ----------
    [Kakade2001]; [Agarwal2021] Lemma 5.1.
    """
    if rcond is not None:
        # scipy's lstsq quietly replaces a negative cond by its default; refuse instead.
        rcond = check_real(rcond, "rcond", low=0.0, high=1.0)
    theta, pi, ev = prepare(mdp, policy, theta, evaluation)
    if isinstance(policy, TabularSoftmax):
        centred = ev.A - ev.A.mean(axis=1, keepdims=True)
        return np.where(ev.support[:, None], ev.horizon * centred, 0.0)
    grad = gradient_from_evaluation(policy, theta, pi, ev)
    F = fisher_matrix(mdp, policy, theta, evaluation=ev)
    cond = rcond if rcond is not None else np.finfo(float).eps * policy.n_params
    x, *_ = sla.lstsq(F, grad.ravel(), cond=cond, check_finite=False)
    return x.reshape(policy.theta_shape)
