r"""The exact policy gradient (policy gradient theorem)."""

from __future__ import annotations

import numpy as np

from refpg.evaluation import prepare

__all__ = ["policy_gradient", "objective"]


def objective(mdp, policy, theta) -> float:
    r"""Exact :math:`J(\theta) = \rho \cdot V^{\pi_\theta}` ([Schulman2015] :math:`\eta`).

    Parameters
    ----------
    mdp : TabularMDP
    policy : TabularSoftmax or LogLinear
    theta : ndarray of shape ``policy.theta_shape``

    Returns
    -------
    float
    """
    return prepare(mdp, policy, theta)[2].J


def policy_gradient(mdp, policy, theta, *, evaluation=None) -> np.ndarray:
    r"""Exact :math:`\nabla_\theta J(\theta)` by the policy gradient theorem.

    .. math::
        \nabla_\theta J = \frac{1}{1-\gamma}\,
        \mathbb{E}_{s\sim d^\pi_\rho,\, a\sim\pi}\big[\nabla_\theta \log\pi_\theta(a|s)\, A^\pi(s,a)\big]

    For tabular softmax this is
    :math:`\partial J/\partial\theta_{s,a} = \frac{1}{1-\gamma} d(s)\pi(a|s)A(s,a)`
    ([Agarwal2021], Lemma C.1).

    Parameters
    ----------
    mdp : TabularMDP
    policy : TabularSoftmax or LogLinear
    theta : ndarray of shape ``policy.theta_shape``
    evaluation : Evaluation, optional
        ``evaluate(mdp, policy.probs(theta))``, to reuse its factorization;
        checked to match.

    Returns
    -------
    ndarray of shape ``policy.theta_shape``

    Notes
    -----
    For gamma = 1 the factor :math:`1/(1-\gamma)` is the expected episode
    length (see `refpg.evaluate`).

    References
    ----------
    [Sutton2000] Theorem 1; [Agarwal2021] Theorem 2.1 and Lemma C.1.
    """
    theta, pi, ev = prepare(mdp, policy, theta, evaluation)
    return gradient_from_evaluation(policy, theta, pi, ev)


def gradient_from_evaluation(policy, theta, pi, ev) -> np.ndarray:
    """The policy gradient theorem on already-validated pieces."""
    return policy.log_prob_vjp(theta, (ev.horizon * ev.d)[:, None] * pi * ev.A, pi)
