r"""Proximal policy optimization ([Schulman2017]): clipped surrogate and adaptive KL penalty.

Three layers, each usable on its own:

1. **Per-sample** functions of log-probabilities, re-exported here from
   their home `refpg.losses.sample` (which the conformance kit's reference
   uses too): `ppo_clip_loss`, `ppo_clip_terms`, `ppo_clip_grad_logp`,
   `clip_fraction`, `ratio_outside_fraction`, `approx_kl`,
   `normalized_advantages`.
2. **In theta**, for a parameterization: the sample-mean objective
   `clipped_surrogate` on a batch of (state, action, logp_old, advantage)
   and its exact-mode counterpart `exact_clipped_surrogate` (expectation
   under :math:`d_{old}, \pi_{old}` with exact advantages), each with its
   analytic gradient built from ``policy.log_prob_vjp``; `batch_kl` for the
   penalty term of sampled mode.
3. **Updates**: `ppo_update` (clipped PPO, several epochs of Adam or SGD
   ascent on one batch) and `ppo_kl_penalty_update` (the adaptive-KL variant,
   [Schulman2017] Section 4), returning every intermediate quantity.

Sign convention: `ppo_clip_loss` and `ppo_clip_grad_logp` are the *loss*
:math:`-L^{CLIP}` as libraries minimise it; every other function returns the
*objective* :math:`L^{CLIP}` (to maximise) and its gradient, and the updates
ascend it. ``clip_eps=None`` (theta-level functions and updates only) means
no clipping: the plain importance-sampled surrogate :math:`L^{CPI}`
([Schulman2017] Eq. 6), used by the KL-penalty variant.

Scope: only the policy part of PPO, on any parameterization (and on an LQR
system). There is no value loss, entropy bonus or gradient-norm clipping
(SB3's and CleanRL's ``max_grad_norm``); the critic is fixed by
`SampleConfig.critic` when the batch is collected. The whole actor-critic
update as libraries run it (a linear actor and critic on one-hot
observations, GAE on the batch, minibatch normalisation, a clipped value
loss, the entropy bonus, global-norm clipping, one or two optimisers) is
`refpg.algorithms.actor_critic.actor_critic_update`, which
`refpg.conformance.check_update` compares a library's update with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from refpg._deprecation import keyword_only_since
from refpg._validation import as_float_array, check_choice, check_positive_int, check_real, entry
from refpg.algorithms.common import SampleConfig, SampledData, check_mode, collect
from refpg.errors import InvalidInputError, ShapeError
from refpg.algorithms._problems import LQRProblem
from refpg.evaluation import check_mdp, check_policy, check_problem, policy_evaluation, prepare
from refpg.kl import weighted_kl_gradient
from refpg.kl_estimators import kl_k3
# The sample level lives in refpg.losses.sample; its public names stay importable from here.
from refpg.losses.sample import (ClipTerms, _check_clip_eps, _normalize, _terms, approx_kl, clip_fraction,
                                 normalized_advantages, ppo_clip_grad_logp, ppo_clip_loss, ppo_clip_terms,
                                 ratio_outside_fraction)
from refpg.lqr import LinearGaussian, LQRSystem
from refpg.lqr import exact as lqr_exact
from refpg.lqr import sampling as lqr_sampling
from refpg.policies import Parameterization

__all__ = [
    "ClipTerms",
    "PPOSamples",
    "PPOEpoch",
    "PPOResult",
    "AdamState",
    "KLPenaltyResult",
    "ppo_clip_loss",
    "ppo_clip_terms",
    "ppo_clip_grad_logp",
    "clip_fraction",
    "ratio_outside_fraction",
    "approx_kl",
    "normalized_advantages",
    "clipped_surrogate",
    "clipped_surrogate_gradient",
    "exact_clipped_surrogate",
    "exact_clipped_surrogate_gradient",
    "batch_kl",
    "batch_kl_gradient",
    "ppo_update",
    "ppo_kl_penalty_update",
    "adapt_kl_coefficient",
    "OPTIMIZERS",
    "NORMALIZATIONS",
    "KL_STOP_FACTOR",
    "DEFAULT_MONTE_CARLO_SAMPLES",
    "MONTE_CARLO_SEED",
]

#: Values of ``optimizer`` in `ppo_update` and `ppo_kl_penalty_update`.
OPTIMIZERS = ("adam", "sgd")
#: Values of ``normalize_advantages``: none, once over the batch, or over each minibatch.
NORMALIZATIONS = (None, "batch", "minibatch")
#: Early stopping fires when the approximate KL exceeds this multiple of
#: target_kl, as in Stable-Baselines3's PPO (``1.5 * self.target_kl``).
KL_STOP_FACTOR = 1.5
#: The adaptive-KL rule of [Schulman2017] Section 4: beta is halved when
#: d < d_targ / 1.5 and doubled when d > 1.5 d_targ (the paper's constants).
KL_ADAPT_TOLERANCE = 1.5
KL_ADAPT_FACTOR = 2.0
#: data.logp_old must equal log pi_theta(a|s) to this relative tolerance: the
#: sampler stores log(exp(log_softmax)), a few ulps from policy.log_probs.
LOGP_OLD_RTOL = 1e-9


# -- theta layer: sampled batches -----------------------------------------------

class PPOSamples(NamedTuple):
    """A flat batch of M samples for the theta-level functions.

    A plain 4-tuple in this order, or a `refpg.algorithms.SampledData`, is
    accepted wherever a PPOSamples is.

    Attributes
    ----------
    states, actions : int array (M,)
    logp_old : float64 (M,)
        log pi_old(a|s) of the policy that collected the samples.
    advantages : float64 (M,)
    """

    states: np.ndarray
    actions: np.ndarray
    logp_old: np.ndarray
    advantages: np.ndarray


def _check_parameterization(policy):
    if not isinstance(policy, (Parameterization, LinearGaussian)):
        raise InvalidInputError(
            "policy should be a refpg parameterization (TabularSoftmax or LogLinear) or a "
            f"refpg.lqr.LinearGaussian, actual {type(policy).__name__}")
    return policy


def _gaussian(policy) -> bool:
    """Whether the policy acts on state and action vectors (the linear-Gaussian policy of an LQR system)."""
    return isinstance(policy, LinearGaussian)


def _index_array(x, name: str, n: int, size: int | None = None) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise InvalidInputError(f"{name} should be an integer array, actual dtype {arr.dtype}")
    if arr.ndim != 1 or arr.size == 0 or (size is not None and arr.size != size):
        want = "(M,) with M >= 1" if size is None else f"({size},)"
        raise ShapeError(f"{name} should have shape {want}, actual shape {arr.shape}")
    bad = (arr < 0) | (arr >= n)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidInputError(f"{entry(name, (i,))} is {int(arr[i])}; expected an integer in [0, {n})")
    return arr.astype(np.int64, copy=False)


def _vector_array(x, name: str, dim: int, size: int | None = None) -> np.ndarray:
    arr = as_float_array(x, name)
    if arr.ndim != 2 or arr.shape[1] != dim or arr.shape[0] == 0 or (size is not None and arr.shape[0] != size):
        want = f"(M, {dim}) with M >= 1" if size is None else f"({size}, {dim})"
        raise ShapeError(f"{name} should have shape {want}, actual shape {arr.shape}")
    return arr


def _check_samples(data, policy, name: str = "data") -> PPOSamples:
    if isinstance(data, SampledData):
        fields = (data.states, data.actions, data.logp_old, data.advantages)
    elif isinstance(data, tuple) and len(data) == 4:
        fields = tuple(data)
    else:
        raise InvalidInputError(
            f"{name} should be a refpg.algorithms.SampledData or a PPOSamples "
            f"(states, actions, logp_old, advantages), actual {type(data).__name__}")
    if _gaussian(policy):
        states = _vector_array(fields[0], f"{name}.states", policy.state_dim)
        M = states.shape[0]
        actions = _vector_array(fields[1], f"{name}.actions", policy.action_dim, M)
    else:
        states = _index_array(fields[0], f"{name}.states", policy.n_states)
        M = states.size
        actions = _index_array(fields[1], f"{name}.actions", policy.n_actions, M)
    logp_old = as_float_array(fields[2], f"{name}.logp_old", shape=(M,))
    adv = as_float_array(fields[3], f"{name}.advantages", shape=(M,))
    return PPOSamples(states, actions, logp_old, adv)


def _add_at(shape, states, actions, w) -> np.ndarray:
    """W[s, a] = sum of w_i over the samples i with (s_i, a_i) = (s, a)."""
    W = np.zeros(shape)
    np.add.at(W, (states, actions), w)
    return W


def _sampled_pieces(policy, theta, samples: PPOSamples, eps, *, grad: bool):
    if _gaussian(policy):
        # Through the sample-level interface: there is no table over continuous states.
        logp_i = policy.sample_log_probs(theta, samples.states, samples.actions)
        terms = _terms(logp_i - samples.logp_old, samples.advantages, eps)
        g = None
        if grad:
            with np.errstate(invalid="ignore"):
                w = np.where(terms.clipped | (samples.advantages == 0), 0.0, terms.ratio * samples.advantages)
            g = policy.sample_log_prob_vjp(theta, w / samples.advantages.size, samples.states, samples.actions)
        return terms, g
    logp = policy.log_probs(theta)
    terms = _terms(logp[samples.states, samples.actions] - samples.logp_old, samples.advantages, eps)
    g = None
    if grad:
        M = samples.states.size
        # d/dtheta of r_i A_i is r_i A_i grad log pi(a_i|s_i); clipped samples contribute 0.
        with np.errstate(invalid="ignore"):
            w = np.where(terms.clipped | (samples.advantages == 0), 0.0, terms.ratio * samples.advantages) / M
        W = _add_at(logp.shape, samples.states, samples.actions, w)
        g = policy.log_prob_vjp(theta, W, np.exp(logp))
    return terms, g


def clipped_surrogate(policy, theta, data, clip_eps) -> float:
    r"""Sample clipped surrogate :math:`L^{CLIP}(\theta)` on a batch ([Schulman2017] Eq. 7).

    .. math::
        L^{CLIP}(\theta) = \frac1M\sum_{i=1}^M \min\big(r_i(\theta) A_i,\
        \mathrm{clip}(r_i(\theta), 1-\epsilon, 1+\epsilon) A_i\big),
        \qquad r_i(\theta) = \frac{\pi_\theta(a_i|s_i)}{\pi_{old}(a_i|s_i)}

    Parameters
    ----------
    policy : TabularSoftmax, LogLinear or refpg.lqr.LinearGaussian
    theta : ndarray of shape ``policy.theta_shape``
    data : PPOSamples, 4-tuple or SampledData
        States, actions, logp_old (which defines pi_old) and advantages:
        integer states and actions (M,) for a tabular policy, state and
        action vectors (M, n) and (M, m) for a linear-Gaussian one.
    clip_eps : float > 0 or None
        None: no clipping, :math:`L^{CPI} = \frac1M\sum_i r_i A_i` (Eq. 6).

    Returns
    -------
    float
        The objective (to maximise); ``ppo_clip_loss`` is its negative.

    References
    ----------
    [Schulman2017] Eqs. (6)-(7).
    """
    policy = _check_parameterization(policy)
    theta = policy.validate_theta(theta)
    eps = _check_clip_eps(clip_eps, allow_none=True)
    terms, _ = _sampled_pieces(policy, theta, _check_samples(data, policy), eps, grad=False)
    return float(np.mean(terms.objective))


def clipped_surrogate_gradient(policy, theta, data, clip_eps) -> np.ndarray:
    r"""Gradient in theta of `clipped_surrogate`.

    .. math::
        \nabla_\theta L^{CLIP} = \sum_{s,a} W[s,a]\,\nabla_\theta\log\pi_\theta(a|s),
        \qquad W[s,a] = \frac1M \sum_{i:\,(s_i,a_i)=(s,a),\ i\ \text{not clipped}} r_i A_i

    (``np.add.at`` over the samples, then one ``policy.log_prob_vjp``; for a
    linear-Gaussian policy one ``policy.sample_log_prob_vjp`` with weights
    :math:`r_i A_i / M`); "clipped" as in `ClipTerms`, ratios on the boundary
    counting as unclipped.

    Parameters
    ----------
    policy, theta, data, clip_eps
        As in `clipped_surrogate`.

    Returns
    -------
    ndarray of shape ``policy.theta_shape``

    References
    ----------
    [Schulman2017] Eq. (7).
    """
    policy = _check_parameterization(policy)
    theta = policy.validate_theta(theta)
    eps = _check_clip_eps(clip_eps, allow_none=True)
    return _sampled_pieces(policy, theta, _check_samples(data, policy), eps, grad=True)[1]


def _check_states(states, policy) -> np.ndarray:
    if _gaussian(policy):
        return _vector_array(states, "states", policy.state_dim)
    return _index_array(states, "states", policy.n_states)


def _gaussian_batch_kl(policy, theta, theta_old, states) -> float:
    """Mean over `states` (M, n) of the exact per-state Gaussian KL(pi_old || pi_theta): quadratic in x."""
    K_old, log_std_old = policy._split(theta_old)
    K, log_std = policy._split(theta)
    return lqr_exact._kl_under(K_old, log_std_old, K, log_std, states.T @ states / states.shape[0])


def _gaussian_batch_kl_gradient(policy, theta, theta_old, states) -> np.ndarray:
    K_old, log_std_old = policy._split(theta_old)
    K, log_std = policy._split(theta)
    return lqr_exact._kl_gradient_under(policy, K_old, log_std_old, K, log_std, states.T @ states / states.shape[0])


def _state_kl(logp_old, logp, pi_old) -> np.ndarray:
    """Per-state KL(pi_old || pi) of full-support softmax rows; >= 0 after rounding."""
    return np.maximum(np.sum(pi_old * (logp_old - logp), axis=-1), 0.0)


@keyword_only_since("theta_old", "states")
def batch_kl(policy, theta, *, theta_old, states) -> float:
    r"""Exact per-state KL averaged over a batch's states.

    .. math::
        \overline{D}_{batch}(\theta) = \frac1M\sum_{i=1}^M
        D_{KL}\big(\pi_{old}(\cdot|s_i)\,\|\,\pi_\theta(\cdot|s_i)\big)

    The KL term of the penalty variant in sampled mode: the categorical KL is
    summed over actions exactly, only the states come from the batch. For a
    linear-Gaussian policy the per-state KL is the closed form of
    `refpg.lqr.state_kl` (exact over actions too), whose mean over the batch
    is `refpg.lqr.mean_kl` under the batch's second moment
    :math:`\frac1M\sum_i x_i x_i^\top`.

    Parameters
    ----------
    policy : TabularSoftmax, LogLinear or refpg.lqr.LinearGaussian
    theta : ndarray of shape ``policy.theta_shape``
        The new policy: the second argument of the KL.
    theta_old : ndarray of shape ``policy.theta_shape``, keyword-only
        The old policy: the first argument of the KL.
    states : int array (M,), or float array (M, n) for a linear-Gaussian policy; keyword-only

    The earlier positional form ``batch_kl(policy, theta, theta_old, states)``
    means the same, with a `refpg.errors.RefpgDeprecationWarning`.

    Returns
    -------
    float >= 0

    Raises
    ------
    refpg.errors.InvalidInputError
        A bad argument, named in the message.

    References
    ----------
    [Schulman2017] Eq. (8); [Schulman2015] Section 4 (KL direction).
    """
    policy = _check_parameterization(policy)
    theta = policy.validate_theta(theta)
    theta_old = policy.validate_theta(theta_old, "theta_old")
    s = _check_states(states, policy)
    if _gaussian(policy):
        return _gaussian_batch_kl(policy, theta, theta_old, s)
    logp_old = policy.log_probs(theta_old)
    return float(np.mean(_state_kl(logp_old, policy.log_probs(theta), np.exp(logp_old))[s]))


@keyword_only_since("theta_old", "states")
def batch_kl_gradient(policy, theta, *, theta_old, states) -> np.ndarray:
    r"""Gradient in theta of `batch_kl` (same arguments: theta_old and states keyword-only).

    .. math::
        \nabla_\theta \overline{D}_{batch} = -\sum_s \frac{n(s)}{M}\sum_a
        \pi_{old}(a|s)\,\nabla_\theta\log\pi_\theta(a|s),
        \qquad n(s) = \#\{i : s_i = s\}

    Returns
    -------
    ndarray of shape ``policy.theta_shape``

    References
    ----------
    [Schulman2015] Appendix C.
    """
    policy = _check_parameterization(policy)
    theta = policy.validate_theta(theta)
    theta_old = policy.validate_theta(theta_old, "theta_old")
    s = _check_states(states, policy)
    if _gaussian(policy):
        return _gaussian_batch_kl_gradient(policy, theta, theta_old, s)
    c = np.bincount(s, minlength=policy.n_states) / s.size
    return weighted_kl_gradient(policy, theta, c, policy.probs(theta_old))


# -- theta layer: exact mode ------------------------------------------------------

def _exact_pieces(policy, theta, logp_old, d, adv, eps, *, grad: bool):
    """Objective, clip mask, ratios and (optionally) the gradient, under d_old x pi_old."""
    logp = policy.log_probs(theta)
    pi, pi_old = np.exp(logp), np.exp(logp_old)
    with np.errstate(over="ignore"):  # only where pi_old underflowed; such pairs have weight 0
        terms = _terms(logp - logp_old, adv, eps)
    # pi_old r A = pi A: written so, the unclipped term stays finite where pi_old underflows.
    per_pair = pi * adv
    if eps is not None:
        per_pair = np.where(terms.clipped, pi_old * np.clip(terms.ratio, 1 - eps, 1 + eps) * adv, per_pair)
    value = float(np.einsum("s,sa->", d, per_pair))
    g = None
    if grad:
        g = policy.log_prob_vjp(theta, d[:, None] * np.where(terms.clipped, 0.0, pi * adv), pi)
    return value, terms, logp, g


def _exact_old(mdp, policy, theta, theta_old, clip_eps, evaluation_old):
    if isinstance(mdp, LQRSystem):
        raise InvalidInputError(
            "the clipped surrogate has no closed form on an LQRSystem (an expectation of a minimum of Gaussian "
            "ratios); refpg.lqr.clipped_surrogate_estimate computes it by Monte Carlo with a standard error")
    check_mdp(mdp)
    check_policy(policy, mdp)
    theta_old, pi_old, ev_old = prepare(mdp, policy, theta_old, evaluation_old, name="theta_old",
                                        evaluation_name="evaluation_old")
    theta = policy.validate_theta(theta)
    eps = _check_clip_eps(clip_eps, allow_none=True)
    return theta, policy.log_probs(theta_old), ev_old, eps


@keyword_only_since("theta_old", "clip_eps")
def exact_clipped_surrogate(mdp, policy, theta, *, theta_old, clip_eps, evaluation_old=None) -> float:
    r"""Exact clipped surrogate: the infinite-sample limit of `clipped_surrogate`.

    .. math::
        L^{CLIP}_{exact}(\theta) = \sum_s d_{old}(s)\sum_a \pi_{old}(a|s)\,
        \min\big(r A_{old}(s,a),\ \mathrm{clip}(r, 1-\epsilon, 1+\epsilon) A_{old}(s,a)\big),
        \qquad r = \frac{\pi_\theta(a|s)}{\pi_{old}(a|s)}

    with :math:`d_{old}` the normalised occupancy and :math:`A_{old}` the
    exact advantages of :math:`\pi_{old}` (docs/conventions.md: "Exact mode takes
    the expectation under d_old, pi_old").

    Parameters
    ----------
    mdp : TabularMDP
    policy : TabularSoftmax or LogLinear
    theta : ndarray of shape ``policy.theta_shape``
        The point where the surrogate is evaluated (:math:`\pi_\theta`).
    theta_old : ndarray of shape ``policy.theta_shape``, keyword-only
        :math:`\pi_{old}`, where it is measured from.
    clip_eps : float > 0 or None, keyword-only
        None: no clipping.
    evaluation_old : Evaluation, optional
        ``refpg.evaluate(mdp, policy.probs(theta_old))``, reused if given.

    The earlier positional form ``exact_clipped_surrogate(mdp, policy, theta,
    theta_old, clip_eps)`` means the same, with a
    `refpg.errors.RefpgDeprecationWarning`.

    Returns
    -------
    float

    Raises
    ------
    refpg.errors.InvalidInputError
        A bad argument, named in the message.

    Notes
    -----
    A per-sample expectation, with neither the :math:`1/(1-\gamma)` factor
    nor the offset :math:`J(\pi_{old})` of the TRPO surrogate: it is what the
    sample mean of `clipped_surrogate` estimates, so it is 0 at
    theta = theta_old (:math:`\sum_a \pi_{old} A_{old} = 0`) and its gradient
    there is :math:`(1-\gamma)\nabla J` (the expected episode length H
    replacing :math:`1/(1-\gamma)` for gamma = 1). Without clipping,
    :math:`L = (L_{old}(\pi) - J(\pi_{old}))(1-\gamma)` with
    :math:`L_{old}` = `refpg.surrogate`. A batch from `refpg.sampling`
    averages over transitions, i.e. over the undiscounted visitation of the
    rollouts rather than :math:`d_{old}`: this is the limit of an ideal
    sampler with :math:`s \sim d_{old}` (the mismatch of [Nota2020]).

    References
    ----------
    [Schulman2017] Eq. (7); [Schulman2015] Eq. (3).
    """
    theta, logp_old, ev_old, eps = _exact_old(mdp, policy, theta, theta_old, clip_eps, evaluation_old)
    return _exact_pieces(policy, theta, logp_old, ev_old.d, ev_old.A, eps, grad=False)[0]


@keyword_only_since("theta_old", "clip_eps")
def exact_clipped_surrogate_gradient(mdp, policy, theta, *, theta_old, clip_eps,
                                     evaluation_old=None) -> np.ndarray:
    r"""Gradient in theta of `exact_clipped_surrogate`.

    .. math::
        \nabla_\theta L^{CLIP}_{exact} = \sum_{s,a} d_{old}(s)\,\pi_\theta(a|s)\,A_{old}(s,a)\,
        1[(s,a)\ \text{not clipped}]\;\nabla_\theta\log\pi_\theta(a|s)

    using :math:`\pi_{old}\, r = \pi_\theta`; "clipped" as in `ClipTerms`.
    At theta = theta_old it is :math:`(1-\gamma)` times `refpg.policy_gradient`.

    Parameters
    ----------
    mdp, policy, theta, theta_old, clip_eps, evaluation_old
        As in `exact_clipped_surrogate` (theta_old and clip_eps keyword-only).

    Returns
    -------
    ndarray of shape ``policy.theta_shape``

    References
    ----------
    [Schulman2017] Eq. (7).
    """
    theta, logp_old, ev_old, eps = _exact_old(mdp, policy, theta, theta_old, clip_eps, evaluation_old)
    return _exact_pieces(policy, theta, logp_old, ev_old.d, ev_old.A, eps, grad=True)[3]


# -- optimisers -------------------------------------------------------------------

class AdamState(NamedTuple):
    """Adam's moments after t steps (pass it back to continue a run).

    Attributes
    ----------
    m, v : ndarray of shape ``policy.theta_shape``
        First and second moment estimates (not bias-corrected).
    t : int
        Number of steps taken.
    """

    m: np.ndarray
    v: np.ndarray
    t: int


def _adam_ascent(theta, g, state: AdamState, lr, beta1, beta2, eps):
    # torch.optim.Adam (refpg.optim.adam_step). AdamState keeps the moments of
    # the ascent gradient g, whereas torch's maximize=True would store those of
    # -g; a descent step on phi = -theta, whose gradient is g, is the same
    # ascent with g's moments (negation is exact in floating point).
    from refpg import optim  # here, so the optimiser module stays the one home of the step

    phi, st = optim.adam_step(-theta, g, optim.AdamState(state.m, state.v, state.t),
                              lr=lr, beta1=beta1, beta2=beta2, eps=eps, convention="torch")
    return -phi, AdamState(st.m, st.v, st.t)


def _check_optimizer_state(state, shape):
    if state is None:
        return AdamState(np.zeros(shape), np.zeros(shape), 0)
    if not isinstance(state, AdamState):
        raise InvalidInputError(f"optimizer_state should be an AdamState or None, actual {type(state).__name__}")
    m = as_float_array(state.m, "optimizer_state.m", shape=shape)
    v = as_float_array(state.v, "optimizer_state.v", shape=shape)
    if (v < 0).any():
        raise InvalidInputError("optimizer_state.v should be >= 0 (a second moment)")
    t = check_positive_int(state.t, "optimizer_state.t", minimum=0)
    return AdamState(m, v, t)


# -- updates ------------------------------------------------------------------------

class PPOEpoch(NamedTuple):
    """One epoch of `ppo_update`, measured on the full batch after its steps.

    Attributes
    ----------
    epoch : int
        1-based.
    n_updates : int
        Optimiser steps taken in this epoch (fewer than the minibatches if it
        stopped early; 0 if it stopped before its first step).
    objective : float
        The maximised objective, ``surrogate - penalty * mean_kl``.
    surrogate : float
        :math:`L^{CLIP}` (or :math:`L^{CPI}` without clipping) with the
        advantages as the optimiser saw them this epoch (normalised if asked;
        per minibatch of this epoch's partition for "minibatch").
    mean_kl : float
        Exact per-state KL(pi_old || pi_theta): averaged over the batch's
        states (sampled mode, `batch_kl`) or under d_old (exact mode).
    approx_kl : float
        Mean k3 over the batch (sampled); the exact mean KL (exact mode, the
        estimator's expectation).
    approx_kl_k1 : float
        Mean k1 = mean(-log r) (sampled); the exact mean KL (exact mode).
    clip_fraction : float
        As `clip_fraction` (sampled); the d_old x pi_old mass of clipped
        (s, a) pairs (exact); 0 without clipping.
    ratio_min, ratio_max : float
        Over the batch's samples (sampled); over (s, a) with d_old(s) > 0
        (exact).
    early_stopped : bool
        The KL check stopped the update in this epoch.
    """

    epoch: int
    n_updates: int
    objective: float
    surrogate: float
    mean_kl: float
    approx_kl: float
    approx_kl_k1: float
    clip_fraction: float
    ratio_min: float
    ratio_max: float
    early_stopped: bool


@dataclass(frozen=True, eq=False)
class PPOResult:
    """What `ppo_update` did.

    Attributes
    ----------
    theta, theta_old : ndarray
        Parameters after and before the update.
    mode : {"exact", "sampled"}
    history : tuple of PPOEpoch
        One record per epoch run.
    stopped_early : bool
    stop_kl : float or None
        The KL that triggered early stopping (> KL_STOP_FACTOR * target_kl).
    n_updates : int
        Optimiser steps in all.
    J_before, J_after : float
        Exact J of theta_old and theta (both modes: the MDP is known).
    mean_kl : float
        Exact :math:`\\sum_s d_{old}(s) D_{KL}(\\pi_{old}(\\cdot|s)\\|\\pi_\\theta(\\cdot|s))`.
    max_kl : float
        Exact max of the per-state KL over states with d_old(s) > 0.
    ratio_min, ratio_max : float
        Exact range of :math:`\\pi_\\theta(a|s)/\\pi_{old}(a|s)` over (s, a) with
        d_old(s) > 0 and pi_old(a|s) > 0.
    data : SampledData, PPOSamples or None
        The batch used (sampled mode).
    optimizer_state : AdamState or None
        Adam's state after the last step (None for SGD).
    surrogate_stderr : tuple of float or None
        Exact mode on an LQR system only: the clipped objective has no closed
        form there, so each epoch's ``surrogate`` (and ``clip_fraction``) is a
        **Monte Carlo estimate** over `monte_carlo_samples` draws from
        :math:`d_{old}\\times\\pi_{old}` with exact advantages; this is its
        standard error, one per epoch. None wherever the surrogate is exact
        (tabular exact mode) or a batch mean (sampled mode).
    monte_carlo_samples : int or None
        The number of those draws; None elsewhere.

    On an LQR system J, the KLs and the ratio range are exact in both modes:
    ``max_kl`` and the ratio range are the supremum and infimum over every
    state (the per-state KL grows without bound in x once the gain moves:
    ``max_kl`` is then inf, ``ratio_min`` 0 and ``ratio_max`` inf), and
    ``J_after`` is -inf for a gain that does not stabilise the system.
    """

    theta: np.ndarray
    theta_old: np.ndarray
    mode: str
    history: tuple
    stopped_early: bool
    stop_kl: float | None
    n_updates: int
    J_before: float
    J_after: float
    mean_kl: float
    max_kl: float
    ratio_min: float
    ratio_max: float
    data: object
    optimizer_state: AdamState | None
    surrogate_stderr: tuple | None = None
    monte_carlo_samples: int | None = None


def _check_betas(betas):
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise InvalidInputError(f"adam_betas should be a pair (beta1, beta2), actual {betas!r}")
    return tuple(check_real(b, f"adam_betas[{k}]", low=0.0, high=1.0, high_open=True)
                 for k, b in enumerate(betas))


class _Exact:
    """The exact-mode objective: d_old, pi_old, (normalised) A_old fixed at theta_old."""

    def __init__(self, policy, logp_old, ev_old, adv, eps, beta):
        self.policy, self.logp_old, self.d, self.adv = policy, logp_old, ev_old.d, adv
        self.pi_old = np.exp(logp_old)
        self.eps, self.beta = eps, beta
        self.support = ev_old.support[:, None] & (self.pi_old > 0)

    def kl_check(self, theta, idx):
        return float(self.d @ _state_kl(self.logp_old, self.policy.log_probs(theta), self.pi_old))

    def gradient(self, theta, idx, adv):
        _, _, logp, g = _exact_pieces(self.policy, theta, self.logp_old, self.d, adv, self.eps, grad=True)
        if self.beta:
            g = g - self.beta * weighted_kl_gradient(self.policy, theta, self.d, self.pi_old, np.exp(logp))
        return g

    def record(self, theta, adv):
        value, terms, logp, _ = _exact_pieces(self.policy, theta, self.logp_old, self.d, adv, self.eps, grad=False)
        kl = float(self.d @ _state_kl(self.logp_old, logp, self.pi_old))
        r = terms.ratio[self.support]
        frac = float(np.einsum("s,sa->", self.d, self.pi_old * terms.clipped))
        return value, kl, kl, kl, frac, float(r.min()), float(r.max())


class _LQRExact:
    """The exact-mode objective on an LQR system, at theta_old.

    The clipped term has no closed form: it is the mean over one fixed draw
    of M samples from d_old x pi_old (`refpg.lqr.sampling`) with their exact
    advantages, the same draw at every step (common random numbers), so the
    ascent follows one function of theta. The KL terms are the closed forms
    under d_old (`refpg.lqr.kl_divergence` and its gradient).
    """

    def __init__(self, lqr, sample, eps, beta):
        self.lqr, self.sample, self.eps, self.beta = lqr, sample, eps, beta
        self.stderr = []

    def kl_check(self, theta, idx):
        return self.lqr.kl(theta)

    def gradient(self, theta, idx, adv):
        g = self.sample.gradient(theta, adv, self.eps)
        if self.beta:
            g = g - self.beta * self.lqr.kl_gradient(theta)
        return g

    def record(self, theta, adv):
        terms = self.sample.terms(theta, adv, self.eps)
        self.stderr.append(float(np.std(terms.objective, ddof=1) / np.sqrt(self.sample.M)))
        kl = self.lqr.kl(theta)
        div = self.lqr.divergence(theta)
        return (float(np.mean(terms.objective)), kl, kl, kl, float(np.mean(terms.clipped)),
                div.ratio_min, div.ratio_max)


class _Sampled:
    """The sampled-mode objective on a fixed batch; pi_old = pi of theta_old.

    Tabular policies look their samples up in the table of log pi; a
    linear-Gaussian policy goes through its sample-level interface, and its
    per-state KL (exact over actions) is averaged over the batch's states in
    closed form.
    """

    def __init__(self, policy, theta_old, samples: PPOSamples, eps, beta):
        self.policy, self.samples, self.eps, self.beta = policy, samples, eps, beta
        self.theta_old = theta_old
        self.gaussian = _gaussian(policy)
        if not self.gaussian:
            self.logp_old_table = policy.log_probs(theta_old)
            self.pi_old = np.exp(self.logp_old_table)

    def _sub(self, idx, adv):
        s = self.samples
        return PPOSamples(s.states[idx], s.actions[idx], s.logp_old[idx], adv)

    def _logp(self, theta, states, actions):
        if self.gaussian:
            return self.policy.sample_log_probs(theta, states, actions)
        return self.policy.log_probs(theta)[states, actions]

    def kl_check(self, theta, idx):
        s = self.samples
        logp = self._logp(theta, s.states[idx], s.actions[idx])
        return float(np.mean(kl_k3(logp, s.logp_old[idx])))

    def gradient(self, theta, idx, adv):
        sub = self._sub(idx, adv)
        _, g = _sampled_pieces(self.policy, theta, sub, self.eps, grad=True)
        if self.beta:
            if self.gaussian:
                g = g - self.beta * _gaussian_batch_kl_gradient(self.policy, theta, self.theta_old, sub.states)
            else:
                c = np.bincount(sub.states, minlength=self.policy.n_states) / sub.states.size
                g = g - self.beta * weighted_kl_gradient(self.policy, theta, c, self.pi_old)
        return g

    def record(self, theta, adv):
        s = self.samples
        if self.gaussian:
            log_r = self.policy.sample_log_probs(theta, s.states, s.actions) - s.logp_old
            kl = _gaussian_batch_kl(self.policy, theta, self.theta_old, s.states)
        else:
            logp = self.policy.log_probs(theta)
            log_r = logp[s.states, s.actions] - s.logp_old
            kl = float(np.mean(_state_kl(self.logp_old_table, logp, self.pi_old)[s.states]))
        terms = _terms(log_r, adv, self.eps)
        return (float(np.mean(terms.objective)), kl, float(np.mean(kl_k3(log_r, np.zeros_like(log_r)))),
                float(np.mean(-log_r)), float(np.mean(terms.clipped)),
                float(terms.ratio.min()), float(terms.ratio.max()))


def _check_logp_old(samples: PPOSamples, expected, name="data"):
    err = np.abs(samples.logp_old - expected)
    bad = err > LOGP_OLD_RTOL * np.maximum(1.0, np.abs(expected))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        where = ("" if samples.states.ndim > 1 else
                 f" at (s, a) = ({samples.states[i]}, {samples.actions[i]})")
        raise InvalidInputError(
            f"{name}.logp_old[{i}] is {samples.logp_old[i]!r} but log pi_theta(a|s){where} is {expected[i]!r}; "
            f"expected equal within rtol={LOGP_OLD_RTOL:g}: the batch must come from the policy of theta")


#: Draws from d_old x pi_old that exact mode on an LQR system averages PPO's clipped term over (the
#: Monte Carlo standard error is reported in `PPOResult.surrogate_stderr`).
DEFAULT_MONTE_CARLO_SAMPLES = 100_000
#: The seed of those draws when no rng is given, so that exact mode is deterministic.
MONTE_CARLO_SEED = 0


def _run(mdp, policy, theta, *, mode, clip_eps, epochs, minibatch_size, optimizer, lr, adam_betas,
         adam_eps, normalize_advantages, norm_ddof, norm_eps, target_kl, rng, sample_config, data,
         penalty, optimizer_state, monte_carlo_samples) -> PPOResult:
    kind = check_problem(mdp, policy)
    theta_old = policy.validate_theta(theta).copy()
    check_mode(mode)
    eps = _check_clip_eps(clip_eps, allow_none=True)
    epochs = check_positive_int(epochs, "epochs")
    check_choice(optimizer, "optimizer", OPTIMIZERS)
    lr = check_real(lr, "lr", low=0.0, low_open=True)
    beta1, beta2 = _check_betas(adam_betas)
    adam_eps = check_real(adam_eps, "adam_eps", low=0.0, low_open=True)
    check_choice(normalize_advantages, "normalize_advantages", NORMALIZATIONS)
    ddof = check_positive_int(norm_ddof, "norm_ddof", minimum=0)
    norm_eps = check_real(norm_eps, "norm_eps", low=0.0)
    if target_kl is not None:
        target_kl = check_real(target_kl, "target_kl", low=0.0, low_open=True)
    beta = 0.0 if penalty is None else check_real(penalty, "penalty", low=0.0)
    if minibatch_size is not None:
        minibatch_size = check_positive_int(minibatch_size, "minibatch_size")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise InvalidInputError(
            f"rng should be a numpy.random.Generator (np.random.default_rng(seed)), actual {type(rng).__name__}")
    state = _check_optimizer_state(optimizer_state, theta_old.shape) if optimizer == "adam" else None
    if optimizer == "sgd" and optimizer_state is not None:
        raise InvalidInputError("optimizer_state is Adam's state; it should be None with optimizer='sgd'")
    if monte_carlo_samples is not None:
        if not (kind == "lqr" and mode == "exact"):
            raise InvalidInputError(
                "monte_carlo_samples is only used in exact mode on an LQRSystem (where the clipped objective "
                f"has no closed form), actual mode={mode!r} on a {type(mdp).__name__}")
        monte_carlo_samples = check_positive_int(monte_carlo_samples, "monte_carlo_samples", minimum=2)

    if kind == "lqr":
        lqr = LQRProblem(mdp, policy, theta_old)
        J_before = lqr.J_old
    else:
        logp_old = policy.log_probs(theta_old)
        pi_old = np.exp(logp_old)
        ev_old = policy_evaluation(mdp, pi_old)
        J_before = ev_old.J

    if mode == "exact":
        for name, value in (("minibatch_size", minibatch_size), ("data", data), ("sample_config", sample_config)):
            if value is not None:
                raise InvalidInputError(
                    f"{name} should be None in exact mode (full-batch ascent on the exact expectation; "
                    f"there are no samples or minibatches), actual {value!r}")
        if normalize_advantages == "minibatch":
            raise InvalidInputError(
                "normalize_advantages='minibatch' does not apply in exact mode (no minibatches); "
                "use None or 'batch'")
        if kind == "lqr":
            n_mc = DEFAULT_MONTE_CARLO_SAMPLES if monte_carlo_samples is None else monte_carlo_samples
            draw_rng = np.random.default_rng(MONTE_CARLO_SEED) if rng is None else rng
            sample = lqr_sampling._ClipSample(mdp, policy, theta_old, n_mc, draw_rng)
            adv = sample.advantages
            if normalize_advantages == "batch":
                # Moments under d_old x pi_old, estimated on the same draws.
                adv = _normalize(adv, 0, norm_eps, "the Monte Carlo advantages (normalize_advantages='batch')")
            problem = _LQRExact(lqr, sample, eps, beta)
        else:
            adv = ev_old.A
            if normalize_advantages == "batch":
                # The infinite-sample limit of batch normalisation: moments under d_old x pi_old
                # (the mean is 0 up to round-off; any ddof has the same limit).
                w = ev_old.d[:, None] * pi_old
                mu = float(np.sum(w * adv))
                denom = float(np.sqrt(np.sum(w * (adv - mu) ** 2))) + norm_eps
                if denom == 0.0:
                    raise InvalidInputError(
                        f"the exact advantages have zero spread under d_old x pi_old, so std + norm_eps is 0 "
                        f"with norm_eps={norm_eps!r}; expected norm_eps > 0")
                adv = (adv - mu) / denom
            problem = _Exact(policy, logp_old, ev_old, adv, eps, beta)
        M = None
        used = None
    else:
        if data is None:
            if rng is None:
                raise InvalidInputError(
                    "rng should be a numpy.random.Generator in sampled mode without data "
                    "(it draws the batch), actual None")
            config = SampleConfig() if sample_config is None else sample_config
            if not isinstance(config, SampleConfig):
                raise InvalidInputError(
                    f"sample_config should be a refpg.algorithms.SampleConfig, actual {type(config).__name__}")
            used = (collect(mdp, policy, config, rng=rng, theta=theta_old) if kind == "lqr"
                    else collect(mdp, pi_old, config, rng=rng))
        else:
            if sample_config is not None:
                raise InvalidInputError(
                    "sample_config should be None when data is given (it only configures collection)")
            used = data
        samples = _check_samples(used, policy)
        expected = (policy.sample_log_probs(theta_old, samples.states, samples.actions) if kind == "lqr"
                    else logp_old[samples.states, samples.actions])
        _check_logp_old(samples, expected)
        M = samples.advantages.size
        if minibatch_size is not None and rng is None:
            raise InvalidInputError(
                "rng should be a numpy.random.Generator when minibatch_size is set "
                "(it shuffles the minibatches each epoch), actual None")
        mb = M if minibatch_size is None else minibatch_size
        smallest = M - (M - 1) // mb * mb  # the last minibatch of perm[k:k+mb]
        if normalize_advantages == "minibatch" and smallest <= ddof:
            raise InvalidInputError(
                f"normalize_advantages='minibatch' with norm_ddof={ddof} needs more than {ddof} samples "
                f"in every minibatch, but minibatch_size={minibatch_size} on M={M} samples leaves a "
                f"minibatch of {smallest}: its standard deviation with ddof={ddof} is undefined (0/0)")
        adv = samples.advantages
        if normalize_advantages == "batch":
            adv = _normalize(adv, ddof, norm_eps, "the batch's advantages (normalize_advantages='batch')")
        samples = samples._replace(advantages=adv)
        problem = _Sampled(policy, theta_old, samples, eps, beta)

    theta_cur = theta_old.copy()
    history = []
    stop_kl = None
    n_total = 0
    for epoch in range(1, epochs + 1):
        if M is None:
            batches = [None]
        elif minibatch_size is None:
            batches = [np.arange(M)]  # full batch: no shuffle, no draw from rng
        else:
            perm = rng.permutation(M)
            batches = [perm[k:k + minibatch_size] for k in range(0, M, minibatch_size)]
        # Normalisation depends only on the partition, so the whole epoch's
        # advantages are fixed before any step (and recorded even if it stops).
        adv_epoch = adv.copy()
        if normalize_advantages == "minibatch":
            for idx in batches:
                adv_epoch[idx] = _normalize(adv[idx], ddof, norm_eps,
                                            "a minibatch's advantages (normalize_advantages='minibatch')")
        steps = 0
        stopped = False
        for idx in batches:
            if target_kl is not None:
                # Checked before each step on the current parameters, as SB3.
                kl_now = problem.kl_check(theta_cur, idx)
                if kl_now > KL_STOP_FACTOR * target_kl:
                    stop_kl, stopped = kl_now, True
                    break
            g = problem.gradient(theta_cur, idx, adv_epoch if idx is None else adv_epoch[idx])
            if optimizer == "adam":
                theta_cur, state = _adam_ascent(theta_cur, g, state, lr, beta1, beta2, adam_eps)
            else:
                theta_cur = theta_cur + lr * g
            steps += 1
        n_total += steps
        surrogate, kl, k3, k1, frac, rmin, rmax = problem.record(theta_cur, adv_epoch)
        history.append(PPOEpoch(epoch, steps, surrogate - beta * kl, surrogate, kl, k3, k1, frac,
                                rmin, rmax, stopped))
        if stopped:
            break

    common = dict(theta=theta_cur, theta_old=theta_old, mode=mode, history=tuple(history),
                  stopped_early=stop_kl is not None, stop_kl=stop_kl, n_updates=n_total, J_before=J_before,
                  data=used, optimizer_state=state)
    if kind == "lqr":
        div = lqr.divergence(theta_cur)
        stderr = tuple(problem.stderr) if isinstance(problem, _LQRExact) else None
        return PPOResult(**common, J_after=lqr.J(theta_cur), mean_kl=div.mean_kl, max_kl=div.max_kl,
                         ratio_min=div.ratio_min, ratio_max=div.ratio_max, surrogate_stderr=stderr,
                         monte_carlo_samples=problem.sample.M if stderr is not None else None)
    logp_new = policy.log_probs(theta_cur)
    per_state = _state_kl(logp_old, logp_new, pi_old)
    pairs = ev_old.support[:, None] & (pi_old > 0)
    with np.errstate(over="ignore"):
        ratios = np.exp(logp_new - logp_old)[pairs]
    return PPOResult(**common, J_after=policy_evaluation(mdp, np.exp(logp_new)).J,
                     mean_kl=float(ev_old.d @ per_state), max_kl=float(per_state[ev_old.support].max()),
                     ratio_min=float(ratios.min()), ratio_max=float(ratios.max()))


def ppo_update(mdp, policy, theta, *, mode: str = "exact", clip_eps=0.2, epochs: int = 10,
               minibatch_size: int | None = None, optimizer: str = "adam", lr: float = 3e-4,
               adam_betas=(0.9, 0.999), adam_eps: float = 1e-8, normalize_advantages=None,
               norm_ddof: int = 0, norm_eps: float = 1e-8, target_kl=None, rng=None,
               sample_config=None, data=None, penalty=None, optimizer_state=None,
               monte_carlo_samples: int | None = None) -> PPOResult:
    r"""One PPO update: several epochs of ascent on :math:`L^{CLIP}` from theta_old = theta.

    .. math::
        \theta \leftarrow \theta + \mathrm{step}\big(\nabla_\theta
        [L^{CLIP}(\theta) - \beta\,\overline{D}_{KL}(\pi_{old}\|\pi_\theta)]\big),
        \qquad \beta = \texttt{penalty}\ (0 \text{ if None})

    Sampled mode: the batch is ``collect(mdp, pi_old, sample_config, rng=rng)``
    (or `data`); each epoch draws ``rng.permutation(M)`` and steps once per
    minibatch ``perm[k:k+minibatch_size]`` (the last may be smaller), or once
    on the whole batch in index order if ``minibatch_size`` is None. Exact
    mode: one full-batch step per epoch on `exact_clipped_surrogate`.

    Parameters
    ----------
    mdp : TabularMDP or refpg.lqr.LQRSystem
    policy : TabularSoftmax, LogLinear, or refpg.lqr.LinearGaussian on an LQRSystem
    theta : ndarray of shape ``policy.theta_shape``
        The starting point, theta_old (on an LQRSystem a stabilising gain).
    mode : {"exact", "sampled"}
        On an LQRSystem, exact mode's clipped term is a Monte Carlo estimate
        (Notes); everything else it uses is exact.
    clip_eps : float > 0 or None
        None: no clipping (:math:`L^{CPI}`).
    epochs : int >= 1
    minibatch_size : int >= 1 or None
        Sampled mode only (None: full batch); a size >= M is one minibatch.
    optimizer : {"adam", "sgd"}
        SGD: :math:`\theta \leftarrow \theta + \eta g`. Adam ([Kingma & Ba
        2015], as ``torch.optim.Adam``, ascending):
        :math:`m_t = \beta_1 m_{t-1} + (1-\beta_1) g`,
        :math:`v_t = \beta_2 v_{t-1} + (1-\beta_2) g^2`,
        :math:`\hat m = m_t/(1-\beta_1^t)`, :math:`\hat v = v_t/(1-\beta_2^t)`,
        :math:`\theta \leftarrow \theta + \eta\,\hat m/(\sqrt{\hat v} + \epsilon)`;
        its first step is :math:`\eta\, g/(|g| + \epsilon)`.
    lr : float > 0
        :math:`\eta` (SB3's default 3e-4).
    adam_betas : (float, float) in [0, 1)
    adam_eps : float > 0
        1e-8 as torch and Kingma & Ba; SB3 and CleanRL use 1e-5.
    normalize_advantages : {None, "batch", "minibatch"}
        :math:`(A - \bar A)/(\mathrm{std}_{ddof}(A) + \epsilon)` over the
        whole batch once, or over each minibatch (as SB3 and CleanRL). In
        exact mode only "batch", with moments under :math:`d_{old}\times\pi_{old}`.
    norm_ddof : int >= 0
        ddof of the std (torch's ``std()``, used by SB3 and CleanRL, is 1).
        Ignored in exact mode (every ddof has the same infinite-sample limit).
    norm_eps : float >= 0
    target_kl : float > 0 or None
        Early stopping: before each step, if the approximate KL on the step's
        minibatch (mean k3; the exact mean KL in exact mode) exceeds
        ``KL_STOP_FACTOR * target_kl`` = 1.5 target_kl, the update stops (the
        step is not taken), as SB3's PPO. CleanRL instead compares the last
        minibatch's KL with target_kl itself, after each epoch.
    rng : numpy.random.Generator or None
        Needed in sampled mode to collect data or shuffle minibatches. Exact
        mode on a TabularMDP draws nothing; on an LQRSystem it draws its
        Monte Carlo sample from rng, or from
        ``np.random.default_rng(MONTE_CARLO_SEED)`` (seed 0) if None, so that
        exact mode is deterministic.
    sample_config : SampleConfig or None
        Sampled mode without data; default ``SampleConfig()``.
    data : SampledData, PPOSamples or None
        A fixed batch (sampled mode); its logp_old must be log pi_theta(a|s).
    penalty : float >= 0 or None
        :math:`\beta` of a KL penalty (see `ppo_kl_penalty_update`).
    optimizer_state : AdamState or None
        Continue Adam from an earlier update (libraries keep one optimizer
        across updates); None starts from zero moments.
    monte_carlo_samples : int >= 2 or None
        Exact mode on an LQRSystem only: the draws the clipped term is
        averaged over (default `DEFAULT_MONTE_CARLO_SAMPLES`, 100,000);
        refused elsewhere.

    Returns
    -------
    PPOResult

    Raises
    ------
    refpg.errors.InvalidInputError
        Naming the argument: clip_eps <= 0, epochs < 1, an unknown optimizer
        or normalize_advantages, minibatch_size / data / sample_config /
        "minibatch" normalisation in exact mode, a minibatch too small for
        norm_ddof (one sample with ddof = 1), a missing rng, a batch whose
        logp_old is not that of theta.

    Notes
    -----
    PPO does not keep every ratio inside :math:`[1-\epsilon, 1+\epsilon]`:
    clipping zeroes the gradient of a clipped sample's own term, but the
    other samples' unclipped terms still move the shared parameters
    ([Wang2019]). `PPOResult.ratio_min`/``ratio_max`` show by how much.

    **On an LQR system** (`refpg.lqr.LQRSystem` with a
    `refpg.lqr.LinearGaussian`), the expectation of
    :math:`\min(rA, \mathrm{clip}(r)A)` under :math:`d_{old}\times\pi_{old}`
    has no closed form. Exact mode therefore estimates it by **Monte Carlo**:
    one draw of M = `monte_carlo_samples` exact samples of
    :math:`d_{old}\times\pi_{old}` (`refpg.lqr.sample_occupancy`) with their
    exact advantages, held fixed over the epochs (its gradient is that of
    the same sample mean); each epoch's standard error is in
    `PPOResult.surrogate_stderr` (`refpg.lqr.clipped_surrogate_estimate`
    computes the same estimate on its own). The KL check, the KL penalty and
    every reported KL, J and ratio range are exact closed forms.
    Sampled mode collects episodes with `refpg.lqr.sample_steps` and GAE
    (`refpg.algorithms.collect`) and uses the policy's sample-level
    log-probabilities and vector-Jacobian products.

    Every option means the same update in both modes (the table in
    `refpg.algorithms.run`), with one limit that differs by nature: sampled
    mode clips each sample's advantage estimate, exact mode the exact
    advantage, and the mean of :math:`\min(r\hat A, \mathrm{clip}(r)\hat A)`
    is not :math:`\min(rA, \mathrm{clip}(r)A)` once a ratio is clipped at an
    (s, a) whose estimates take both signs.

    References
    ----------
    [Schulman2017] Algorithm 1 and Section 3; [Wang2019].
    """
    return _run(mdp, policy, theta, mode=mode, clip_eps=clip_eps, epochs=epochs, minibatch_size=minibatch_size,
                optimizer=optimizer, lr=lr, adam_betas=adam_betas, adam_eps=adam_eps,
                normalize_advantages=normalize_advantages, norm_ddof=norm_ddof, norm_eps=norm_eps,
                target_kl=target_kl, rng=rng, sample_config=sample_config, data=data, penalty=penalty,
                optimizer_state=optimizer_state, monte_carlo_samples=monte_carlo_samples)


def adapt_kl_coefficient(beta, kl, d_targ) -> float:
    r"""The adaptive KL coefficient rule of [Schulman2017] Section 4.

    .. math::
        \beta' = \begin{cases} \beta/2 & d < d_{targ}/1.5 \\
        2\beta & d > 1.5\, d_{targ} \\ \beta & \text{otherwise}\end{cases}

    Parameters
    ----------
    beta : float >= 0
    kl : float >= 0
        The measured mean KL d.
    d_targ : float > 0

    Returns
    -------
    float
        Both inequalities are strict: d exactly on a threshold keeps beta.

    References
    ----------
    [Schulman2017] Section 4.
    """
    beta = check_real(beta, "beta", low=0.0)
    kl = check_real(kl, "kl", low=0.0)
    d_targ = check_real(d_targ, "d_targ", low=0.0, low_open=True)
    if kl < d_targ / KL_ADAPT_TOLERANCE:
        return beta / KL_ADAPT_FACTOR
    if kl > d_targ * KL_ADAPT_TOLERANCE:
        return beta * KL_ADAPT_FACTOR
    return beta


@dataclass(frozen=True, eq=False)
class KLPenaltyResult:
    """What `ppo_kl_penalty_update` did.

    Attributes
    ----------
    theta : ndarray
        Parameters after the update.
    kl : float
        The measured d: exact mean KL under d_old (exact mode), or `batch_kl`
        over the batch's states (sampled mode), at the new theta.
    beta : float
        The coefficient for the next update, ``adapt_kl_coefficient(beta_old, kl, d_targ)``.
    beta_old : float
        The coefficient used in this update.
    update : PPOResult
        The inner update, with its per-epoch history.
    """

    theta: np.ndarray
    kl: float
    beta: float
    beta_old: float
    update: PPOResult


def ppo_kl_penalty_update(mdp, policy, theta, *, beta, d_targ, mode: str = "exact", clip_eps=None,
                          epochs: int = 10, minibatch_size: int | None = None, optimizer: str = "adam",
                          lr: float = 3e-4, adam_betas=(0.9, 0.999), adam_eps: float = 1e-8,
                          normalize_advantages=None, norm_ddof: int = 0, norm_eps: float = 1e-8, rng=None,
                          sample_config=None, data=None, optimizer_state=None,
                          monte_carlo_samples: int | None = None) -> KLPenaltyResult:
    r"""PPO with an adaptive KL penalty ([Schulman2017] Section 4, Eq. 8).

    .. math::
        L^{KLPEN}(\theta) = \hat{\mathbb{E}}\big[r(\theta) A\big]
        - \beta\, \overline{D}_{KL}(\pi_{old}\|\pi_\theta)

    maximised for `epochs` epochs as in `ppo_update` (``penalty=beta``, no
    clipping unless `clip_eps` is given); then
    :math:`d = \overline{D}_{KL}(\pi_{old}\|\pi_{\theta_{new}})` and
    ``beta = adapt_kl_coefficient(beta, d, d_targ)``.

    The KL term is exact per state (summed over actions): averaged over the
    batch's states in sampled mode (`batch_kl`, gradient `batch_kl_gradient`)
    and under :math:`d_{old}` in exact mode (`refpg.kl_divergence`), the
    measured d being the same quantity over the full batch.

    Parameters
    ----------
    beta : float >= 0
        The penalty coefficient for this update.
    d_targ : float > 0
        Target KL.
    mode, clip_eps, epochs, minibatch_size, optimizer, lr, adam_betas, adam_eps,
    normalize_advantages, norm_ddof, norm_eps, rng, sample_config, data, optimizer_state,
    monte_carlo_samples
        As in `ppo_update` (clip_eps defaults to None here).

    Returns
    -------
    KLPenaltyResult

    References
    ----------
    [Schulman2017] Section 4, Eq. (8).
    """
    beta = check_real(beta, "beta", low=0.0)
    d_targ = check_real(d_targ, "d_targ", low=0.0, low_open=True)
    result = _run(mdp, policy, theta, mode=mode, clip_eps=clip_eps, epochs=epochs, minibatch_size=minibatch_size,
                  optimizer=optimizer, lr=lr, adam_betas=adam_betas, adam_eps=adam_eps,
                  normalize_advantages=normalize_advantages, norm_ddof=norm_ddof, norm_eps=norm_eps,
                  target_kl=None, rng=rng, sample_config=sample_config, data=data, penalty=beta,
                  optimizer_state=optimizer_state, monte_carlo_samples=monte_carlo_samples)
    kl = result.history[-1].mean_kl
    return KLPenaltyResult(theta=result.theta, kl=kl, beta=adapt_kl_coefficient(beta, kl, d_targ),
                           beta_old=beta, update=result)
