r"""Exact statements of policy-improvement theory: the performance-difference
lemma and TRPO's Theorem 1 lower bound."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refpg._deprecation import keyword_only_since
from refpg._validation import check_discount, check_probability_rows, check_real
from refpg.evaluation import check_mdp, policy_evaluation, prepare
from refpg.kl import kl_divergence
from refpg.surrogate import surrogate

__all__ = ["performance_difference", "TRPOBound", "trpo_bound", "trpo_constant"]


@keyword_only_since("pi_new", "pi_old")
def performance_difference(mdp, *, pi_new, pi_old) -> float:
    r"""Right-hand side of the performance-difference lemma.

    .. math::
        J(\pi') - J(\pi) = \frac{1}{1-\gamma}\,
        \mathbb{E}_{s\sim d^{\pi'}_\rho,\, a\sim\pi'}\big[A^{\pi}(s,a)\big]

    Parameters
    ----------
    mdp : TabularMDP
    pi_new : array_like, shape (S, A), keyword-only
        :math:`\pi'`, whose occupancy and actions the expectation is under;
        row-stochastic.
    pi_old : array_like, shape (S, A), keyword-only
        :math:`\pi`, whose advantages are averaged; row-stochastic.

    Both are keyword-only, as in every refpg function of two policies
    (docs/conventions.md, "Argument order"). The positional form
    ``performance_difference(mdp, pi_new, pi_old)`` means the same and
    still works, with a `refpg.errors.RefpgDeprecationWarning`.

    Returns
    -------
    float
        Equal to ``evaluate(mdp, pi_new).J - evaluate(mdp, pi_old).J``.

    Raises
    ------
    refpg.errors.InvalidInputError
        A table that is not row-stochastic or not of shape (S, A), naming
        `pi_new` or `pi_old`.

    References
    ----------
    [Kakade2002] Lemma 6.1; [Agarwal2021] Lemma 3.2.
    """
    check_mdp(mdp)
    shape = (mdp.n_states, mdp.n_actions)
    pi_new = check_probability_rows(pi_new, "pi_new", shape=shape)
    pi_old = check_probability_rows(pi_old, "pi_old", shape=shape)
    ev_new = policy_evaluation(mdp, pi_new)
    ev_old = policy_evaluation(mdp, pi_old)
    return float(ev_new.horizon * np.einsum("s,sa,sa->", ev_new.d, pi_new, ev_old.A))


def trpo_constant(max_abs_advantage: float, gamma: float) -> float:
    r""":math:`C = 4\epsilon\gamma/(1-\gamma)^2` ([Schulman2015] Theorem 1); inf for gamma = 1.

    `max_abs_advantage` (epsilon) must be a finite number >= 0 and `gamma`
    in [0, 1]; anything else raises `refpg.errors.InvalidInputError`.
    """
    max_abs_advantage = check_real(max_abs_advantage, "max_abs_advantage", low=0.0)
    gamma = check_discount(gamma, allow_one=True)
    if gamma >= 1.0:
        return float("inf")
    return 4.0 * max_abs_advantage * gamma / (1.0 - gamma) ** 2


class TRPOBound(NamedTuple):
    """Every term of TRPO's Theorem 1 for one pair of policies."""

    J: float
    """Exact J of the new policy."""
    J_old: float
    """Exact J of the old policy."""
    surrogate: float
    r""":math:`L_{old}(\pi)`."""
    max_kl: float
    r""":math:`D^{max}_{KL}(\pi_{old}, \pi)` over states with :math:`d_{old} > 0`."""
    epsilon: float
    r""":math:`\max_{s,a}|A_{old}(s,a)|`."""
    C: float
    r""":math:`4\epsilon\gamma/(1-\gamma)^2`; inf for gamma = 1."""
    lower_bound: float
    r""":math:`L_{old}(\pi) - C D^{max}_{KL}`, with :math:`C \cdot 0 = 0` even for C = inf;
    Theorem 1 says J >= lower_bound. Never NaN."""

    @property
    def slack(self) -> float:
        """J - lower_bound; non-negative when the theorem holds."""
        return self.J - self.lower_bound


@keyword_only_since("theta_old")
def trpo_bound(mdp, policy, theta, *, theta_old, evaluation_old=None) -> TRPOBound:
    r"""TRPO's Theorem 1 lower bound, term by term.

    .. math::
        J(\pi) \ge L_{\pi_{old}}(\pi) - C\, D^{max}_{KL}(\pi_{old}, \pi),\qquad
        C = \frac{4\epsilon\gamma}{(1-\gamma)^2},\quad \epsilon = \max_{s,a}|A_{old}(s,a)|

    Parameters
    ----------
    mdp : TabularMDP
    policy : TabularSoftmax or LogLinear
    theta : ndarray of shape ``policy.theta_shape``
        The new policy :math:`\pi`.
    theta_old : ndarray of shape ``policy.theta_shape``, keyword-only
        :math:`\pi_{old}`; the KL is :math:`D_{KL}(\pi_{old}\|\pi)`. Passed
        by position (the earlier form) it means the same, with a
        `refpg.errors.RefpgDeprecationWarning`.
    evaluation_old : Evaluation, optional

    Returns
    -------
    TRPOBound

    Raises
    ------
    refpg.errors.InvalidInputError
        A bad argument, named in the message.

    Notes
    -----
    For gamma = 1 the constant C is infinite, and the bound is read with the
    convention :math:`\infty \cdot 0 = 0`: it is :math:`L_{old}(\pi)` when
    ``max_kl == 0`` (pi equals pi_old on every state pi_old visits, and then
    J = J_old = L), and ``-inf`` (true but vacuous) when ``max_kl > 0``. The
    same convention holds for any gamma, so `lower_bound` is never NaN and
    `slack` is ``inf`` exactly when the bound is vacuous.

    The max KL is taken over states reachable under pi_old. Both
    parameterizations give every action positive probability, so the two
    policies reach the same states and the theorem's proof only visits those.

    References
    ----------
    [Schulman2015] Theorem 1, Eq. (9).
    """
    theta_old, pi_old, ev_old = prepare(mdp, policy, theta_old, evaluation_old, name="theta_old",
                                        evaluation_name="evaluation_old")
    theta = policy.validate_theta(theta, "theta")
    pi = policy.probs(theta)
    J = policy_evaluation(mdp, pi).J
    L = surrogate(mdp, policy, theta, theta_old=theta_old, evaluation_old=ev_old)
    max_kl = kl_divergence(mdp, policy, theta, theta_old=theta_old, reduction="max", evaluation_old=ev_old)
    eps = float(np.abs(ev_old.A).max())
    C = trpo_constant(eps, mdp.gamma)
    # C * 0 = 0 even for C = inf (gamma = 1): the bound is L, not NaN, when the policies agree.
    lower = L - C * max_kl if max_kl > 0 else L
    return TRPOBound(J=J, J_old=ev_old.J, surrogate=L, max_kl=max_kl, epsilon=eps, C=C, lower_bound=lower)
