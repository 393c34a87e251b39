r"""Sample-based policy-gradient estimators: REINFORCE and the empirical Fisher.

Every estimator takes a time-major `refpg.sampling.Batch` and returns an
estimate whose expectation is known exactly (`refpg.policy_gradient`,
`gamma_free_gradient`), so refpg's tests can check unbiasedness, and bias,
statistically.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from refpg._validation import as_float_array, check_choice, check_discount, entry
from refpg.errors import ImproperMDPError, InvalidInputError, ProblemTooLargeError, ShapeError
from refpg.evaluation import prepare, solve_pair
from refpg.fisher import DENSE_FISHER_MAX_PARAMS
from refpg.returns import discounted_returns
from refpg.sampling import Batch

__all__ = [
    "reinforce_estimates",
    "reinforce_gradient_estimate",
    "gamma_free_gradient",
    "empirical_fisher_estimate",
    "empirical_fisher_vector_product",
    "episode_ids",
]

_VARIANTS = ("reward_to_go", "total")


def episode_ids(batch: Batch) -> tuple[np.ndarray, int]:
    """Number the complete episodes of a batch.

    Returns
    -------
    ids : int64 array (T, N)
        Index of the complete episode each transition belongs to, or -1 for
        padding and for the unfinished tail of an environment's last episode.
    n_episodes : int
    """
    done = batch.terminated | batch.truncated
    before = np.cumsum(done, axis=0) - done          # episodes finished before t, per column
    per_col = done.sum(axis=0)
    offset = np.concatenate([[0], np.cumsum(per_col)[:-1]])
    ids = offset[None, :] + before
    ids = np.where((before < per_col[None, :]) & batch.valid, ids, -1)
    return ids, int(per_col.sum())


def reinforce_estimates(policy, theta, batch: Batch, gamma: float, *, variant: str = "reward_to_go",
                        discount_weighting: bool = True, baseline=None) -> np.ndarray:
    r"""Per-episode REINFORCE gradient estimates, one row per complete episode.

    With ``variant="reward_to_go"`` (docs/conventions.md):

    .. math::
        \hat g = \sum_t \gamma^t\, \nabla_\theta\log\pi_\theta(a_t|s_t)\,\big(G_t - b(s_t)\big),
        \qquad G_t = \sum_{k\ge t}\gamma^{k-t} r_k

    and with ``variant="total"`` ([Williams1992]'s form):
    :math:`\hat g = \sum_t \nabla_\theta\log\pi_\theta(a_t|s_t)\,(G_0 - b(s_t))`.
    Both are unbiased for :math:`\nabla J` when episodes are complete
    (terminated, never truncated) and b depends on the state only.

    Parameters
    ----------
    policy : TabularSoftmax, LogLinear or refpg.lqr.LinearGaussian
    theta : ndarray of shape ``policy.theta_shape``
        The parameters the batch was sampled with.
    batch : Batch
        Typically from `refpg.sampling.sample_episodes` (or
        `refpg.lqr.sample_episodes`, states (T, N, n) and actions (T, N, m)).
        Only complete episodes are used: on an LQR system every episode is
        cut by its time limit H, and the estimate is unbiased for the
        gradient of the H-step objective (`refpg.lqr.finite_horizon_cost_gradient`,
        with the sign of a reward), and without :math:`\gamma^t` for
        `refpg.lqr.gamma_free_direction`.
    gamma : float in [0, 1]
    variant : {"reward_to_go", "total"}
    discount_weighting : bool
        Include the :math:`\gamma^t` factor (reward-to-go only). Without it
        the estimator is biased for the discounted objective [Nota2020]; its
        exact expectation is `gamma_free_gradient`.
    baseline : array_like of shape (S,), optional
        State baseline b(s). It cannot depend on the action, by construction.
        For a linear-Gaussian policy, the baseline's value at every
        transition, shape (T, N) (a function of the state and the step only,
        which the caller guarantees).

    Returns
    -------
    ndarray of shape ``(n_episodes, *policy.theta_shape)``

    Notes
    -----
    A truncated episode makes the estimate biased (its tail is missing);
    refpg's tests use MDPs where every episode terminates, so no truncation
    bias is ever hidden inside a tolerance.

    On a `sample_steps` batch only the episodes that finish inside the batch
    are used, and those over-represent short episodes (an episode longer than
    the batch never finishes in it), so the mean is biased unless the batch
    is long compared with every episode. `sample_episodes` runs each episode
    to its end and has no such bias.

    References
    ----------
    [Williams1992]; [Sutton2000]; [Nota2020].
    """
    theta = policy.validate_theta(theta)
    gamma = check_discount(gamma, allow_one=True)
    check_choice(variant, "variant", _VARIANTS)
    if variant == "total" and not discount_weighting:
        raise InvalidInputError("discount_weighting=False applies to variant='reward_to_go' only")
    if _vector_policy(policy):
        _check_vector_batch(batch, policy)
        b_t = (np.zeros(batch.rewards.shape) if baseline is None
               else as_float_array(baseline, "baseline", shape=batch.rewards.shape))
    else:
        S, A = policy.n_states, policy.n_actions
        b = np.zeros(S) if baseline is None else as_float_array(baseline, "baseline", shape=(S,))
        _check_batch(batch, S, A)
        b_t = b[batch.states]

    ids, E = episode_ids(batch)
    G = discounted_returns(batch.rewards, batch.terminated, batch.truncated, gamma)
    if variant == "total":
        G0 = np.zeros(E)
        first = (batch.step == 0) & (ids >= 0)
        G0[ids[first]] = G[first]
        ret = np.where(ids >= 0, G0[np.maximum(ids, 0)], 0.0)
        weight = ret - b_t
    else:
        weight = G - b_t
        if discount_weighting:
            weight = weight * gamma ** batch.step
    # One gradient per complete episode; padding and unfinished tails (id -1) are left out.
    return policy.sample_log_prob_vjp(theta, np.where(ids >= 0, weight, 0.0), batch.states, batch.actions,
                                      segments=ids, n_segments=E)


def reinforce_gradient_estimate(policy, theta, batch: Batch, gamma: float, **kwargs) -> np.ndarray:
    r"""Mean over complete episodes of `reinforce_estimates` (same keywords).

    .. math:: \hat g = \frac{1}{E}\sum_{e=1}^{E} \hat g_e

    References
    ----------
    [Williams1992]; docs/conventions.md "REINFORCE".
    """
    est = reinforce_estimates(policy, theta, batch, gamma, **kwargs)
    if est.shape[0] == 0:
        raise InvalidInputError("batch holds no complete episode; sample more steps or use sample_episodes")
    return est.mean(axis=0)


def gamma_free_gradient(mdp, policy, theta, *, evaluation=None) -> np.ndarray:
    r"""Exact expectation of the REINFORCE estimator without the :math:`\gamma^t` factor.

    .. math::
        \mathbb{E}\Big[\sum_t \nabla\log\pi(a_t|s_t)\, G_t\Big]
        = \sum_s \mu_1(s) \sum_a \pi(a|s)\, \nabla\log\pi(a|s)\, A^\pi_\gamma(s,a),

    with :math:`\mu_1(s) = \sum_t \Pr(s_t = s)` the *undiscounted* expected
    visits. It differs from :math:`\nabla J = \sum_s \mu_\gamma(s)\ldots` by
    weighting late states too much; it is not the gradient of any function
    in general [Nota2020].

    Raises
    ------
    refpg.errors.ImproperMDPError
        If some episode never ends under the policy (mu_1 is infinite).

    References
    ----------
    [Nota2020] Section 4.
    """
    theta, pi, ev = prepare(mdp, policy, theta, evaluation)
    if not mdp.is_proper(pi):
        raise ImproperMDPError("gamma_free_gradient needs every episode to end under the policy")
    # mu_1 on live states solves mu = rho + P_NN^T mu: the visits of the chain with gamma = 1.
    live = np.flatnonzero(~mdp.terminal)
    P_pi = mdp.policy_transitions(pi)
    sub = P_pi[live][:, live] if sp.issparse(P_pi) else P_pi[np.ix_(live, live)]
    mu1 = np.zeros(mdp.n_states)
    mu1[live] = solve_pair(sub, 1.0, np.zeros(live.size), mdp.rho[live])[1]
    return policy.log_prob_vjp(theta, mu1[:, None] * pi * ev.A, pi)


def _vector_policy(policy) -> bool:
    """A policy on state and action vectors (refpg.lqr.LinearGaussian) rather than on a table."""
    from refpg.lqr import LinearGaussian

    return isinstance(policy, LinearGaussian)


def _check_vector_batch(batch, policy):
    """Refuse anything but a Batch of state vectors (T, N, n) and action vectors (T, N, m) for `policy`."""
    if not isinstance(batch, Batch):
        raise InvalidInputError(f"batch should be a refpg.sampling.Batch, actual {type(batch).__name__}")
    T_N = np.shape(batch.rewards)
    for name, arr, d in (("states", batch.states, policy.state_dim), ("actions", batch.actions, policy.action_dim)):
        if np.shape(arr) != T_N + (d,):
            raise ShapeError(f"batch.{name} should have shape {T_N + (d,)} (batch.rewards has shape {T_N}) for "
                             f"{policy!r}, actual shape {np.shape(arr)}")


def _counts(policy, batch):
    S, A = policy.n_states, policy.n_actions
    C = np.zeros((S, A))
    np.add.at(C, (batch.states[batch.valid], batch.actions[batch.valid]), 1.0)
    total = C.sum()
    if total == 0:
        raise InvalidInputError("batch holds no valid transition")
    return C / total


def empirical_fisher_estimate(policy, theta, batch: Batch) -> np.ndarray:
    r"""Empirical Fisher :math:`\hat F = \frac1M\sum_i \nabla\log\pi(a_i|s_i)\nabla\log\pi(a_i|s_i)^\top`.

    Over the batch's valid transitions (its state distribution, not d).

    Returns
    -------
    ndarray (n_params, n_params)

    References
    ----------
    [Kakade2001]; [Schulman2015] Section 6.
    """
    if policy.n_params > DENSE_FISHER_MAX_PARAMS:
        # First, like fisher_matrix: nothing else is worth checking for a matrix that will not be built.
        raise ProblemTooLargeError(
            f"empirical_fisher_estimate: {policy.n_params} parameters, more than "
            f"DENSE_FISHER_MAX_PARAMS={DENSE_FISHER_MAX_PARAMS}; use empirical_fisher_vector_product")
    theta = policy.validate_theta(theta)
    if _vector_policy(policy):
        X, U = _valid_samples(batch, policy)
        jac = policy.sample_log_prob_jacobian(theta, X, U)
        F = jac.T @ jac / X.shape[0]
        return 0.5 * (F + F.T)
    _check_batch(batch, policy.n_states, policy.n_actions)
    w = _counts(policy, batch).ravel()
    jac = policy.log_prob_jacobian(theta)
    F = jac.T @ (w[:, None] * jac)
    return 0.5 * (F + F.T)


def empirical_fisher_vector_product(policy, theta, batch: Batch, v) -> np.ndarray:
    r"""Matrix-free :math:`\hat F v`, as used by sampled TRPO and NPG.

    For a linear-Gaussian policy, one sample JVP and one sample VJP:
    :math:`\frac1M\sum_i \nabla\log\pi(u_i|x_i)\,(\nabla\log\pi(u_i|x_i)^\top v)`.
    """
    theta = policy.validate_theta(theta)
    v = policy.validate_theta(v, "v")
    if _vector_policy(policy):
        X, U = _valid_samples(batch, policy)
        return policy.sample_log_prob_vjp(theta, policy.sample_log_prob_jvp(theta, v, X, U) / X.shape[0], X, U)
    _check_batch(batch, policy.n_states, policy.n_actions)
    pi = policy.probs(theta)
    w = _counts(policy, batch)
    return policy.log_prob_vjp(theta, w * policy.log_prob_jvp(theta, v, pi), pi)


def _valid_samples(batch, policy):
    """The valid transitions' state and action vectors, (M, n) and (M, m), M >= 1."""
    _check_vector_batch(batch, policy)
    valid = np.asarray(batch.valid, dtype=bool)
    if not valid.any():
        raise InvalidInputError("batch holds no valid transition")
    return batch.states[valid], batch.actions[valid]


def _check_batch(batch, S, A):
    """Refuse anything but a Batch whose states and actions index a policy of S states and A actions.

    Names the first entry out of range (padding included: it is indexed too).
    """
    if not isinstance(batch, Batch):
        raise InvalidInputError(f"batch should be a refpg.sampling.Batch, actual {type(batch).__name__}")
    for name, arr, n in (("states", batch.states, S), ("actions", batch.actions, A)):
        bad = (arr < 0) | (arr >= n)
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise InvalidInputError(
                f"{entry('batch.' + name, idx)} is {int(arr[idx])} but the policy has {n} {name}; "
                f"expected 0 <= {name[:-1]} < {n}")
