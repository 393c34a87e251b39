r"""The exact TRPO surrogate :math:`L_{\pi_{old}}(\pi)` and its gradient."""

from __future__ import annotations

import numpy as np

from refpg._deprecation import keyword_only_since
from refpg.evaluation import prepare

__all__ = ["surrogate", "surrogate_gradient"]


def _pieces(mdp, policy, theta, theta_old, evaluation_old):
    theta_old, pi_old, ev_old = prepare(mdp, policy, theta_old, evaluation_old, name="theta_old",
                                        evaluation_name="evaluation_old")
    theta = policy.validate_theta(theta, "theta")
    return theta, policy.probs(theta), ev_old


@keyword_only_since("theta_old")
def surrogate(mdp, policy, theta, *, theta_old, evaluation_old=None) -> float:
    r"""Exact surrogate ([Schulman2015] Eq. 3, normalised form).

    .. math::
        L_{old}(\pi) = J(\pi_{old}) + \frac{1}{1-\gamma}
        \mathbb{E}_{s\sim d_{old},\, a\sim\pi_{old}}\Big[\frac{\pi(a|s)}{\pi_{old}(a|s)} A_{old}(s,a)\Big]
        = J(\pi_{old}) + \frac{1}{1-\gamma}\sum_s d_{old}(s)\sum_a \pi(a|s) A_{old}(s,a)

    Parameters
    ----------
    mdp : TabularMDP
    policy : TabularSoftmax or LogLinear
    theta : ndarray of shape ``policy.theta_shape``
        The point :math:`\pi = \pi_\theta` where the surrogate is evaluated.
    theta_old : ndarray of shape ``policy.theta_shape``, keyword-only
        :math:`\pi_{old}`, where it is measured from: its occupancy,
        advantages and J.
    evaluation_old : Evaluation, optional
        Exact evaluation of theta_old, reused if given.

    Returns
    -------
    float
        Equals J(theta_old) at theta = theta_old, and its gradient there
        equals the policy gradient.

    Raises
    ------
    refpg.errors.InvalidInputError
        A bad argument, named in the message.

    Notes
    -----
    ``surrogate(mdp, policy, theta, theta_old)`` (theta_old by position) is
    the earlier form: the same value, with a
    `refpg.errors.RefpgDeprecationWarning`.

    References
    ----------
    [Schulman2015] Eq. (3); [Kakade2002].
    """
    _, pi, ev_old = _pieces(mdp, policy, theta, theta_old, evaluation_old)
    return float(ev_old.J + ev_old.horizon * np.einsum("s,sa,sa->", ev_old.d, pi, ev_old.A))


@keyword_only_since("theta_old")
def surrogate_gradient(mdp, policy, theta, *, theta_old, evaluation_old=None) -> np.ndarray:
    r"""Gradient in theta of `surrogate` (theta_old keyword-only, as there).

    .. math::
        \nabla_\theta L_{old} = \frac{1}{1-\gamma}\sum_s d_{old}(s)\sum_a
        \pi_\theta(a|s)\, A_{old}(s,a)\, \nabla_\theta\log\pi_\theta(a|s)

    Returns
    -------
    ndarray of shape ``policy.theta_shape``

    References
    ----------
    [Schulman2015] Eq. (3).
    """
    theta, pi, ev_old = _pieces(mdp, policy, theta, theta_old, evaluation_old)
    return policy.log_prob_vjp(theta, (ev_old.horizon * ev_old.d)[:, None] * pi * ev_old.A, pi)
