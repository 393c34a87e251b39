r"""Exact KL divergences between two policies, per state, mean and max.

Direction: :math:`D_{KL}(\pi_{old}(\cdot|s) \,\|\, \pi(\cdot|s))` everywhere
([Schulman2015]; docs/conventions.md). Mean under :math:`d^{\pi_{old}}`; max over
states with :math:`d^{\pi_{old}}(s) > 0`.
"""

from __future__ import annotations

import numpy as np

from refpg._deprecation import keyword_only_since
from refpg._validation import check_choice, check_probability_rows
from refpg.evaluation import check_mdp, check_policy, prepare

__all__ = ["kl_divergence", "kl_gradient", "policy_kl"]

_REDUCTIONS = ("mean", "max", "none")


@keyword_only_since("pi_old", "pi_new")
def policy_kl(*, pi_old, pi_new) -> np.ndarray:
    r"""Per-state :math:`D_{KL}(\pi_{old}(\cdot|s)\,\|\,\pi_{new}(\cdot|s)) = \sum_a \pi_{old}(a|s)\,(\log\pi_{old}(a|s) - \log\pi_{new}(a|s))`.

    Parameters
    ----------
    pi_old : array_like, shape (S, A)
        The policy the expectation is under (first argument of the KL);
        row-stochastic.
    pi_new : array_like, shape (S, A)
        The second argument of the KL; row-stochastic.

    Both are keyword-only, as in every refpg function of two policies
    (docs/conventions.md, "Argument order"). The positional form
    ``policy_kl(pi_old, pi_new)`` means the same and still works, with a
    `refpg.errors.RefpgDeprecationWarning`.

    Returns
    -------
    ndarray (S,)
        Non-negative; ``inf`` where pi_new puts 0 on an action pi_old plays
        (the true value, not an error).

    Raises
    ------
    refpg.errors.InvalidInputError
        A table that is not 2-D, not row-stochastic, or of another shape
        than the other, naming `pi_old` or `pi_new`.

    References
    ----------
    [Schulman2015] Section 4.
    """
    # (S, A) for any S and A, but two axes: a 1-D or 3-D table is a mistake, not a batch.
    pi_old = check_probability_rows(pi_old, "pi_old", shape=(None, None))
    pi_new = check_probability_rows(pi_new, "pi_new", shape=pi_old.shape)
    with np.errstate(divide="ignore"):  # log 0 = -inf is the true value; the KL is then inf or 0 by design
        return _categorical_kl(np.log(pi_old), np.log(pi_new), pi_old)


def _categorical_kl(logp_old, logp_new, p_old):
    # Terms with p_old = 0 contribute 0 even where log p_old = -inf.
    with np.errstate(invalid="ignore"):
        terms = np.where(p_old > 0, p_old * (logp_old - logp_new), 0.0)
    return np.maximum(terms.sum(axis=-1), 0.0)


def _kl_pieces(mdp, policy, theta, theta_old, evaluation_old):
    theta_old, pi_old, ev_old = prepare(mdp, policy, theta_old, evaluation_old, name="theta_old",
                                        evaluation_name="evaluation_old")
    theta = policy.validate_theta(theta, "theta")
    logp_new = policy.log_probs(theta)
    per_state = _categorical_kl(policy.log_probs(theta_old), logp_new, pi_old)
    return theta, pi_old, ev_old, per_state


def _check_reduction(reduction):
    check_choice(reduction, "reduction", _REDUCTIONS)


@keyword_only_since("theta_old")
def kl_divergence(mdp, policy, theta, *, theta_old, reduction: str = "mean", evaluation_old=None):
    r"""Exact :math:`D_{KL}(\pi_{\theta_{old}} \,\|\, \pi_\theta)`, mean or max over states.

    .. math::
        \overline{D}_{KL} = \sum_s d^{\pi_{old}}(s)\, D_{KL}(\pi_{old}(\cdot|s)\|\pi(\cdot|s)),
        \qquad
        D^{max}_{KL} = \max_{s:\, d^{\pi_{old}}(s) > 0} D_{KL}(\pi_{old}(\cdot|s)\|\pi(\cdot|s))

    Parameters
    ----------
    mdp : TabularMDP
    policy : TabularSoftmax or LogLinear
    theta : ndarray of shape ``policy.theta_shape``
        The new policy :math:`\pi_\theta`: the second argument of the KL.
    theta_old : ndarray of shape ``policy.theta_shape``, keyword-only
        The old policy :math:`\pi_{old}`: the first argument of the KL,
        whose occupancy weighs the states.
    reduction : {"mean", "max", "none"}
        "none" returns the per-state vector (S,).
    evaluation_old : Evaluation, optional
        Exact evaluation of theta_old, reused if given.

    Returns
    -------
    float, or ndarray (S,) for ``reduction="none"``

    Raises
    ------
    refpg.errors.InvalidInputError
        A bad argument, named in the message (`theta`, `theta_old`,
        `reduction`, `evaluation_old`).

    Notes
    -----
    ``kl_divergence(mdp, policy, theta, theta_old)`` (theta_old by position)
    is the earlier form: it computes the same thing and emits a
    `refpg.errors.RefpgDeprecationWarning`.

    References
    ----------
    [Schulman2015] Eqs. (9), (12).
    """
    check_mdp(mdp)
    check_policy(policy, mdp)
    _check_reduction(reduction)
    _, _, ev_old, per_state = _kl_pieces(mdp, policy, theta, theta_old, evaluation_old)
    if reduction == "none":
        return per_state
    if reduction == "mean":
        return float(ev_old.d @ per_state)
    return float(per_state[ev_old.support].max())


@keyword_only_since("theta_old")
def kl_gradient(mdp, policy, theta, *, theta_old, reduction: str = "mean", evaluation_old=None) -> np.ndarray:
    r"""Gradient in theta (the new policy) of the mean or max :math:`D_{KL}(\pi_{old}\|\pi_\theta)`.

    .. math::
        \nabla_\theta \overline{D}_{KL} = -\sum_s d^{\pi_{old}}(s) \sum_a
        \pi_{old}(a|s)\, \nabla_\theta \log\pi_\theta(a|s)

    For the max, the gradient of the maximising state's KL (a subgradient
    where several states tie; the first in index order is used). At
    theta = theta_old the mean-KL Hessian is the Fisher matrix.

    Parameters
    ----------
    mdp, policy, theta, theta_old, evaluation_old
        As in `kl_divergence`: theta is the new policy (differentiated),
        theta_old (keyword-only) the old one; the positional form still
        works with a `refpg.errors.RefpgDeprecationWarning`.
    reduction : {"mean", "max"}

    Returns
    -------
    ndarray of shape ``policy.theta_shape``

    References
    ----------
    [Schulman2015] Appendix C.
    """
    check_mdp(mdp)
    check_policy(policy, mdp)
    check_choice(reduction, "reduction", ("mean", "max"))
    theta, pi_old, ev_old, per_state = _kl_pieces(mdp, policy, theta, theta_old, evaluation_old)
    if reduction == "mean":
        w = ev_old.d
    else:
        idx = np.flatnonzero(ev_old.support)
        w = np.zeros(mdp.n_states)
        w[idx[np.argmax(per_state[idx])]] = 1.0
    return weighted_kl_gradient(policy, theta, w, pi_old)


def weighted_kl_gradient(policy, theta, w, pi_old, pi=None) -> np.ndarray:
    r""":math:`\nabla_\theta \sum_s w(s)\, D_{KL}(\pi_{old}(\cdot|s) \| \pi_\theta(\cdot|s))` on validated pieces.

    Computed as the vjp of the weights :math:`w(s)(\pi - \pi_{old})`, which
    equals :math:`-\sum_a w(s)\pi_{old}(a|s)\nabla\log\pi(a|s)` (the rows of
    :math:`\pi - \pi_{old}` sum to 0, so the softmax centring term drops out)
    and is exactly 0 at theta = theta_old. The form with :math:`-\pi_{old}`
    leaves the round-off of :math:`\sum_a \pi_{old}(a|s) - 1` (~1e-17), which
    Adam's :math:`g/\sqrt{v}` normalisation turns into O(lr) moves of rows
    that should not move.
    """
    if pi is None:
        pi = np.exp(policy.log_probs(theta))
    return policy.log_prob_vjp(theta, w[:, None] * (pi - pi_old), pi)
