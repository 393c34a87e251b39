r"""REINFORCE: gradient ascent with the exact or the Monte Carlo policy gradient.

.. math:: \theta_{t+1} = \theta_t + \alpha\, \hat\nabla_\theta J(\theta_t)

with :math:`\hat\nabla J` the exact gradient (exact mode) or [Williams1992]'s
estimator on complete episodes (sampled mode, `refpg.reinforce_gradient_estimate`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refpg._validation import check_real
# DEFAULT_EPISODES (episodes sampled per step when neither n_episodes nor batch is given) lives with the problems.
from refpg.algorithms._problems import DEFAULT_EPISODES, problem
from refpg.algorithms.common import check_mode, check_sampled_arguments
from refpg.errors import InvalidInputError
from refpg.sampling import Batch

__all__ = ["ReinforceResult", "reinforce_step", "DEFAULT_EPISODES"]


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

    Exact mode: :math:`\hat g = \nabla J` (`refpg.policy_gradient`; on an
    LQR system the closed form of `refpg.lqr.policy_gradient`). Sampled
    mode: the mean over complete episodes of

    .. math:: \hat g_e = \sum_t \gamma^t\, \nabla\log\pi(a_t|s_t)\,(G_t - b(s_t))

    (`refpg.reinforce_gradient_estimate`), unbiased for :math:`\nabla J`.

    Parameters
    ----------
    mdp : TabularMDP or refpg.lqr.LQRSystem
    policy : TabularSoftmax or LogLinear; refpg.lqr.LinearGaussian on an LQRSystem
    theta : ndarray of shape ``policy.theta_shape``
        On an LQRSystem, a gain that stabilises the discounted system.
    lr : float
        Step size alpha, > 0.
    mode : {"exact", "sampled"}
    rng : numpy.random.Generator
        Sampled mode: draws `n_episodes` episodes with `refpg.sample_episodes`
        (`refpg.lqr.sample_episodes` on an LQRSystem; required unless
        `batch` is given).
    n_episodes : int, optional
        Sampled mode: episodes to sample, default `DEFAULT_EPISODES` (100).
    batch : Batch, optional
        Sampled mode: a batch already sampled under theta, from
        `sample_episodes` or `sample_steps`; only its complete episodes are
        used (an unfinished tail is dropped).
    baseline : array_like (S,) or "exact", optional
        Sampled mode: state baseline b(s); "exact" uses the exact
        :math:`V^{\pi_{old}}`. Default none (b = 0). On an LQRSystem:
        "exact" (the exact value of the steps left in the episode,
        :math:`-(x^\top P_t x + q_t)` of `refpg.lqr.finite_horizon`), a
        callable ``b(states)`` of the states alone (e.g. a
        `refpg.lqr.QuadraticValue`), or None.
    variant : {"reward_to_go", "total"}
        Sampled mode: as in `refpg.reinforce_estimates`.
    max_episode_steps : int, optional
        Sampled mode: time limit for `sample_episodes`. Needed on MDPs where
        episodes need not end, at the price of truncation bias. Required on
        an LQRSystem (whose episodes never end): the estimate is then
        unbiased for the gradient of the H-step objective,
        :math:`-`\ `refpg.lqr.finite_horizon_cost_gradient`, not of the
        infinite-horizon J.

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
    prob = problem(mdp, policy, theta)
    theta_old = prob.theta_old
    if mode == "exact":
        gradient = prob.gradient()
    else:
        gradient, batch = prob.reinforce_gradient(rng=rng, n_episodes=n_episodes, batch=batch, baseline=baseline,
                                                  variant=variant, max_episode_steps=max_episode_steps)
    theta_new = theta_old + lr * gradient
    return ReinforceResult(theta=theta_new, theta_old=theta_old, lr=lr, gradient=gradient,
                           J_before=prob.J_old, J_after=prob.J(theta_new), mode=mode, batch=batch)
