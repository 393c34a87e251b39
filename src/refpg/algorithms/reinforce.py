r"""REINFORCE: gradient ascent with the exact or the Monte Carlo policy gradient.

.. math:: \theta_{t+1} = \theta_t + \alpha\, \hat\nabla_\theta J(\theta_t)

with :math:`\hat\nabla J` the exact gradient (exact mode) or [Williams1992]'s
estimator on complete episodes (sampled mode, `refpg.reinforce_gradient_estimate`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refpg._validation import as_float_array, check_positive_int, check_real
from refpg.algorithms.common import check_mode, check_sampled_arguments
from refpg.errors import InvalidInputError
from refpg.estimators import _check_batch, reinforce_gradient_estimate
from refpg.evaluation import policy_evaluation, prepare
from refpg.gradient import gradient_from_evaluation
from refpg.sampling import Batch, sample_episodes

__all__ = ["ReinforceResult", "reinforce_step", "DEFAULT_EPISODES"]

#: Episodes sampled per step when neither n_episodes nor batch is given.
DEFAULT_EPISODES = 100


@dataclass(frozen=True, eq=False)
class ReinforceResult:
    r"""One `reinforce_step`.

    Attributes
    ----------
    theta : ndarray
        theta_old + lr * gradient.
    theta_old : ndarray
    lr : float
    gradient : ndarray
        Exact :math:`\nabla J(\theta_{old})` (exact mode) or its REINFORCE
        estimate (sampled mode).
    J_before, J_after : float
        Exact J(theta_old) and J(theta), in both modes (refpg knows the MDP).
    mode : str
    batch : Batch or None
        The episodes of sampled mode (sampled, or the batch passed in); None
        in exact mode.
    """

    theta: np.ndarray
    theta_old: np.ndarray
    lr: float
    gradient: np.ndarray
    J_before: float
    J_after: float
    mode: str
    batch: Batch | None


def reinforce_step(mdp, policy, theta, *, lr: float, mode: str = "exact", rng=None,
                   n_episodes: int | None = None, batch: Batch | None = None, baseline=None,
                   variant: str = "reward_to_go", max_episode_steps: int | None = None) -> ReinforceResult:
    r"""One REINFORCE step, :math:`\theta = \theta_{old} + \alpha\,\hat g`.

    Exact mode: :math:`\hat g = \nabla J` (`refpg.policy_gradient`). Sampled
    mode: the mean over complete episodes of

    .. math:: \hat g_e = \sum_t \gamma^t\, \nabla\log\pi(a_t|s_t)\,(G_t - b(s_t))

    (`refpg.reinforce_gradient_estimate`), unbiased for :math:`\nabla J`.

    Parameters
    ----------
    mdp : TabularMDP
    policy : TabularSoftmax or LogLinear
    theta : ndarray of shape ``policy.theta_shape``
    lr : float
        Step size alpha, > 0.
    mode : {"exact", "sampled"}
    rng : numpy.random.Generator
        Sampled mode: draws `n_episodes` episodes with `refpg.sample_episodes`
        (required unless `batch` is given).
    n_episodes : int, optional
        Sampled mode: episodes to sample, default `DEFAULT_EPISODES` (100).
    batch : Batch, optional
        Sampled mode: a batch already sampled under theta, from
        `sample_episodes` or `sample_steps`; only its complete episodes are
        used (an unfinished tail is dropped).
    baseline : array_like (S,) or "exact", optional
        Sampled mode: state baseline b(s); "exact" uses the exact
        :math:`V^{\pi_{old}}`. Default none (b = 0).
    variant : {"reward_to_go", "total"}
        Sampled mode: as in `refpg.reinforce_estimates`.
    max_episode_steps : int, optional
        Sampled mode: time limit for `sample_episodes`. Needed on MDPs where
        episodes need not end, at the price of truncation bias.

    Returns
    -------
    ReinforceResult

    Raises
    ------
    refpg.errors.InvalidInputError
        On any bad argument (named in the message); sampled-mode arguments in
        exact mode; sampled mode without rng or batch; a batch not sampled
        under theta, or without a complete episode.
    refpg.errors.ImproperMDPError
        Sampling episodes without `max_episode_steps` on an MDP where some
        episode never ends.

    References
    ----------
    [Williams1992]; [Sutton2000].
    """
    mode = check_mode(mode)
    lr = check_real(lr, "lr", low=0.0, low_open=True)
    check_sampled_arguments(mode, rng, batch, data_name="batch", n_episodes=n_episodes,
                            baseline=baseline, max_episode_steps=max_episode_steps)
    if mode == "exact" and variant != "reward_to_go":
        raise InvalidInputError(f"variant is only used in mode='sampled', actual variant={variant!r}")
    theta_old, pi_old, ev_old = prepare(mdp, policy, theta)
    theta_old = theta_old.copy()
    if mode == "exact":
        gradient = gradient_from_evaluation(policy, theta_old, pi_old, ev_old)
    else:
        if isinstance(baseline, str):
            if baseline != "exact":
                raise InvalidInputError(f"baseline should be an array (S,), 'exact' or None, actual {baseline!r}")
            baseline = ev_old.V
        elif baseline is not None:
            baseline = as_float_array(baseline, "baseline", shape=(mdp.n_states,))
        if batch is None:
            n = DEFAULT_EPISODES if n_episodes is None else check_positive_int(n_episodes, "n_episodes")
            batch = sample_episodes(mdp, pi_old, n, rng=rng, max_episode_steps=max_episode_steps)
        else:
            if n_episodes is not None or max_episode_steps is not None:
                raise InvalidInputError("n_episodes and max_episode_steps describe sampling; they cannot "
                                        "be combined with a given batch")
            _check_batch_policy(batch, policy.log_probs(theta_old))
        gradient = reinforce_gradient_estimate(policy, theta_old, batch, mdp.gamma, variant=variant,
                                               baseline=baseline)
    theta_new = theta_old + lr * gradient
    J_after = policy_evaluation(mdp, policy.probs(theta_new)).J
    return ReinforceResult(theta=theta_new, theta_old=theta_old, lr=lr, gradient=gradient,
                           J_before=ev_old.J, J_after=J_after, mode=mode, batch=batch)


def _check_batch_policy(batch, log_pi):
    """Refuse a batch that was not sampled under the policy being updated."""
    S, A = log_pi.shape
    _check_batch(batch, S, A)
    s, a, logp = batch.states[batch.valid], batch.actions[batch.valid], batch.log_probs[batch.valid]
    if s.size == 0:
        raise InvalidInputError("batch holds no valid transition")
    gap = np.abs(log_pi[s, a] - logp)
    i = int(np.argmax(gap))
    if not gap[i] <= 1e-9:
        raise InvalidInputError(
            f"batch.log_probs of valid transition {i} is {logp[i]!r} but the policy of theta gives "
            f"log pi({a[i]}|{s[i]}) = {log_pi[s[i], a[i]]!r}; batch should be sampled under theta (atol=1e-09)")
