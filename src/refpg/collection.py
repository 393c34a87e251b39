r"""Exact quantities of on-policy collection: the state law of a rollout buffer, and the mean first gradient.

A PPO or A2C library fills its buffer from N environments for T steps each.
Every environment starts fresh (:math:`s_0 \sim \rho`, no step taken yet) and
is reset as soon as an episode ends, in the same step, as SB3's
``DummyVecEnv`` and Gymnasium's vector envs with ``autoreset_mode=SAME_STEP``
do. An episode ends when it enters a terminal state (``terminated``) or when
it completes ``max_episode_steps`` steps (``truncated``, the time limit of
`refpg.envs.TabularEnv`; termination takes priority). The buffer's state at
time t is therefore a Markov chain over pairs (state, steps since the last
reset), and this module propagates that chain exactly:

.. math::
    p_t(s) = \Pr(s_t = s), \qquad \nu(s) = \frac1T \sum_{t<T} p_t(s),

the law of the state at step t of one environment, and :math:`\nu` the law
of the state of a sample drawn uniformly from the buffer (every environment
has the same law, so N does not enter).

**The mean first gradient.** With a critic V, the library computes GAE
([Schulman2016]) on the buffer,
:math:`\hat A_t = \delta_t + \gamma\lambda(1-\text{done}_t)\hat A_{t+1}`,
:math:`\delta_t = r_t + \gamma(1-\text{terminated}_t)V(s_{t+1}) - V(s_t)`,
a truncated step bootstrapping the value of its final observation and the
buffer's last step the value of the observation after it; then it
differentiates its loss on the first minibatch, where the PPO ratio is 1 and
clipping is inactive. For logits :math:`\theta_s = W_s + b` the mean of that
gradient, the minibatch a uniform draw of the buffer, is

.. math::
    \mathbb E[g_W]_{s,\cdot} = -c\,\Big(w(s,\cdot) - \pi(\cdot|s)\sum_a w(s,a)\Big)
      - c\,c_e\,\nu(s)\,\nabla_{\theta_s} H(\pi(\cdot|s)),
    \qquad \mathbb E[g_b] = \sum_s \mathbb E[g_W]_{s,\cdot},

    w(s,a) = \frac1T\sum_{t<T} \Pr(s_t=s, a_t=a)\;\mathbb E[\hat A_t \mid s_t=s, a_t=a],

c the constant of the loss's normalisation (1 for a mean over the
minibatch, its size for a sum) and :math:`c_e` the entropy coefficient.
With the exact critic :math:`V = V^\pi` of the MDP and the right flags,
:math:`\hat A_t` is conditionally unbiased for :math:`A^\pi(s_t, a_t)` for
every lambda (each later :math:`\delta` has mean zero given the past), so
:math:`w(s,a) = \nu(s)\pi(a|s)A^\pi(s,a)` and

.. math::
    \mathbb E[g_W] = -c\sum_s \nu(s)\sum_a \pi(a|s)\,A^\pi(s,a)\,\nabla\log\pi(a|s)
      \;(-\;c\,c_e \textstyle\sum_s \nu(s)\nabla H).

**Relation to the policy gradient.** docs/conventions.md writes
:math:`\nabla J = \frac1{1-\gamma}\sum_s d(s)\sum_a\pi A^\pi \nabla\log\pi`
with the discounted occupancy :math:`d(s) = (1-\gamma)\sum_t\gamma^t\Pr(s_t=s)`
of one episode from rho. The pipeline weighs states by :math:`\nu` instead:
every visit counts the same, however late in its episode, and episodes run
on across resets. Its mean gradient is :math:`-c(1-\gamma)\nabla J` only when
:math:`\nu = d`, e.g. when every step ends the episode with probability
:math:`1-\gamma` whatever the state, and T is long (:math:`\nu` tends to the
stationary law of the reset chain, which is then d). In general it is not
the gradient of any objective [Nota2020];
`refpg.conformance.pipeline.check_pipeline_gradient`
tests a library against this mean, and says so.

Wrong collectors have exact means too (`COLLECTORS`): the same recursion
with their flags and bootstrap values (`expected_advantage_weights`).
Everything is float64 and dense, O(T K S^2 A) for K = min(T,
max_episode_steps) age classes.

References
----------
[Schulman2016] (GAE); [Nota2020] (the state weighting of the usual
estimator); Pardo et al. (2018), Time limits in reinforcement learning,
ICML, arXiv:1712.00378 (bootstrap a truncation, never a termination).
"""

from __future__ import annotations

import types
from typing import NamedTuple

import numpy as np
from scipy.special import xlogy

from refpg._validation import (as_float_array, check_choice, check_discount, check_positive_int,
                               check_probability_rows, check_real)
from refpg.evaluation import check_mdp, policy_evaluation
from refpg.mdp import TabularMDP

__all__ = ["COLLECTORS", "PipelineGradient", "rollout_state_marginals", "rollout_state_distribution",
           "expected_advantage_weights", "expected_pipeline_gradient"]

#: Collectors with an exact mean, name -> what it does. "correct" is the contract; each other one is a
#: bug with a public thread (docs of `refpg.examples.pipeline_examples`).
COLLECTORS = types.MappingProxyType({
    "correct": "a truncated step bootstraps gamma V(final observation), a terminated one nothing; GAE is cut at "
               "every episode end; the buffer's last step bootstraps V(next observation)",
    "truncation_as_termination": "a truncated step bootstraps nothing, as a terminated one "
                                 "(done = terminated or truncated)",
    "truncation_bootstraps_reset": "a truncated step bootstraps V of the reset observation that the vector env "
                                   "returned, not of the episode's final observation",
    "truncation_bootstraps_current": "a truncated step bootstraps V(s_t), the value of the step's own state, not "
                                     "of its final observation",
    "last_step_not_bootstrapped": "the buffer's last step bootstraps 0 instead of V(s_T) when its episode goes on",
    "gae_across_episodes": "the bootstraps are right, but the GAE recursion is not cut at episode ends "
                           "(the advantage runs on into the next episode); with the exact critic its mean is "
                           "the correct one (every later delta has mean 0), so only another critic shows it",
})


class PipelineGradient(NamedTuple):
    """The exact mean first gradient of a pipeline (`expected_pipeline_gradient`)."""

    actor_w: np.ndarray
    """(S, A): the mean of d loss / d W, the logit table."""
    actor_b: np.ndarray
    """(A,): the mean of d loss / d b, a logit bias (the column sums of `actor_w`)."""
    state_distribution: np.ndarray
    """(S,): nu, the law of the state of a uniform draw from the buffer."""
    advantage_weights: np.ndarray
    """(S, A): w(s, a), the buffer average of Pr(s_t = s, a_t = a) E[A_hat_t | s, a]."""
    scale: float
    """c, the loss's normalisation constant the gradient is multiplied by."""


def _validate(mdp, pi, n_steps, max_episode_steps):
    mdp = check_mdp(mdp)
    pi = check_probability_rows(pi, "pi", shape=(mdp.n_states, mdp.n_actions))
    T = check_positive_int(n_steps, "n_steps")
    L = None if max_episode_steps is None else check_positive_int(max_episode_steps, "max_episode_steps")
    return mdp, pi, T, L


class _Chain(NamedTuple):
    """The (age, state) chain: K age classes; done / truncated after a step from age k into s'."""

    K: int
    next_age: np.ndarray   # (K,) the age after a step that does not end the episode
    done: np.ndarray       # (K, S) bool
    truncated: np.ndarray  # (K, S) bool


def _chain(mdp: TabularMDP, T: int, L: int | None) -> _Chain:
    # Ages beyond min(L, T) - 1 never occur within T steps; without a limit, age plays no role.
    K = 1 if L is None else min(L, T)
    ages = np.arange(K)
    limit = np.zeros(K, dtype=bool) if L is None else ages + 1 >= L
    term = mdp.terminal
    truncated = limit[:, None] & ~term[None, :]
    done = truncated | term[None, :]
    return _Chain(K, np.minimum(ages + 1, K - 1), done, truncated)


def _marginals(mdp, pi, T, chain) -> np.ndarray:
    """(T, K, S): Pr(s_t = s, steps since reset = k)."""
    P_pi = np.asarray(mdp.dense_P(), dtype=np.float64)
    P_pi = np.einsum("sa,sat->st", pi, P_pi)
    S = mdp.n_states
    p = np.zeros((T, chain.K, S))
    p[0, 0] = mdp.rho
    for t in range(T - 1):
        arriving = p[t] @ P_pi                      # (K, S'): mass entering s' from age k
        stay = np.where(chain.done, 0.0, arriving)
        np.add.at(p[t + 1], chain.next_age, stay)
        p[t + 1, 0] += np.where(chain.done, arriving, 0.0).sum() * mdp.rho
    return p


def rollout_state_marginals(mdp, pi, n_steps, max_episode_steps=None, *, by_age: bool = False) -> np.ndarray:
    r"""Exact :math:`p_t(s) = \Pr(s_t = s)` for t < T in one environment of a rollout buffer.

    .. math::
        p_0 = \rho \text{ at age } 0, \qquad
        p_{t+1}(k+1, s') \mathrel{+}= \sum_s p_t(k, s) P_\pi(s, s')\,[\text{not done}],\qquad
        p_{t+1}(0, \cdot) \mathrel{+}= \rho \sum_{k, s, s'} p_t(k, s) P_\pi(s, s')\,[\text{done}],

    k the steps since the last reset, "done" = s' terminal or k + 1 = max_episode_steps
    (the environment is reset in the same step, as SB3's ``DummyVecEnv`` does).

    Parameters
    ----------
    mdp : TabularMDP
    pi : array_like (S, A)
        The collecting policy; rows are distributions.
    n_steps : int >= 1
        T, the steps each environment takes.
    max_episode_steps : int >= 1 or None
        The time limit of `refpg.envs.TabularEnv`; None for none.
    by_age : bool
        Return the joint law over (age, state) instead.

    Returns
    -------
    ndarray (T, S), or (T, K, S) with `by_age`, K = min(T, max_episode_steps) (1 without a limit)

    Notes
    -----
    A state is never terminal at a step (an episode is reset as it enters one), so terminal
    states have :math:`p_t = 0`. References: [Nota2020] (why the undiscounted law matters).
    """
    mdp, pi, T, L = _validate(mdp, pi, n_steps, max_episode_steps)
    p = _marginals(mdp, pi, T, _chain(mdp, T, L))
    return p if by_age else p.sum(axis=1)


def rollout_state_distribution(mdp, pi, n_steps, max_episode_steps=None) -> np.ndarray:
    r"""Exact :math:`\nu(s) = \frac1T\sum_{t<T}\Pr(s_t = s)`: the state law of a uniform draw from the buffer.

    Not the discounted occupancy d of docs/conventions.md; see the module docstring
    ([Nota2020]). Parameters as in `rollout_state_marginals`; returns an (S,) distribution.
    """
    return rollout_state_marginals(mdp, pi, n_steps, max_episode_steps).mean(axis=0)


def _advantage_weights(mdp, pi, T, chain, p, gamma, lam, V, collector) -> np.ndarray:
    r"""(S, A) w(s, a), by the backward recursion of E[A_hat | age, state, action, h steps left]."""
    P = np.asarray(mdp.dense_P(), dtype=np.float64)
    rho, term = mdp.rho, mdp.terminal
    done, trunc = chain.done, chain.truncated
    live = np.where(term, 0.0, V)                       # a terminal observation's value never counts
    boot = np.broadcast_to(live, done.shape).copy()     # (K, S'): bootstrap of a step from age k into s'
    if collector in ("truncation_as_termination", "truncation_bootstraps_current"):
        boot[trunc] = 0.0
    elif collector == "truncation_bootstraps_reset":
        boot[trunc] = rho @ V
    cut = ~done if collector != "gae_across_episodes" else np.ones_like(done)
    base = mdp.r - V[:, None]                           # (S, A)
    boot_sa = gamma * np.einsum("sat,kt->ksa", P, boot)
    if collector == "truncation_bootstraps_current":
        boot_sa += gamma * V[None, :, None] * np.einsum("sat,kt->ksa", P, trunc.astype(np.float64))
    if collector == "last_step_not_bootstrapped":
        last = np.where(trunc, boot, 0.0)               # only a step that ends its episode keeps its bootstrap
        boot_last = gamma * np.einsum("sat,kt->ksa", P, last)
    w = np.zeros_like(mdp.r)
    Y = np.zeros((chain.K, mdp.n_states))               # E[A_hat_{t+1} | age, state] one step later
    for h in range(T):                                  # h steps of the buffer left after this one
        t = T - 1 - h
        after = np.where(done, rho @ Y[0], Y[chain.next_age])       # (K, S'): the next sample's mean
        X = base[None] + (boot_last if h == 0 and collector == "last_step_not_bootstrapped" else boot_sa)
        if h > 0:
            X = X + gamma * lam * np.einsum("sat,kt->ksa", P, np.where(cut, after, 0.0))
        w += np.einsum("ks,sa,ksa->sa", p[t], pi, X)
        Y = np.einsum("sa,ksa->ks", pi, X)
    return w / T


def _resolve(mdp, pi, T, L, gae_lambda, gamma, values, collector):
    lam = check_real(gae_lambda, "gae_lambda", low=0.0, high=1.0)
    gamma = mdp.gamma if gamma is None else check_discount(gamma, allow_one=True)
    check_choice(collector, "collector", tuple(COLLECTORS))
    if values is None:
        V = policy_evaluation(mdp, pi).V
    else:
        V = as_float_array(values, "values", shape=(mdp.n_states,))
    chain = _chain(mdp, T, L)
    return lam, gamma, V, chain


def expected_advantage_weights(mdp, pi, n_steps, max_episode_steps=None, *, gae_lambda: float = 0.95,
                               gamma: float | None = None, values=None, collector: str = "correct") -> np.ndarray:
    r"""Exact :math:`w(s,a) = \frac1T\sum_{t<T}\Pr(s_t=s,a_t=a)\,\mathbb E[\hat A_t\mid s_t=s,a_t=a]`.

    :math:`\hat A_t` is GAE(gamma, lambda) computed on the buffer by `collector`
    (`COLLECTORS`), with the critic `values`. The conditional mean comes from a
    backward recursion over the (age, state) chain of `rollout_state_marginals`,
    with h steps of the buffer left:

    .. math::
        X_h(k,s,a) = r(s,a) - V(s) + \gamma\sum_{s'}P(s'|s,a)\Big[B(k,s')
          + \lambda\,C(k,s')\,\bar X_{h-1}(\text{next}(k,s'))\Big],\qquad
        \bar X_h(k,s) = \sum_a \pi(a|s)X_h(k,s,a),

    :math:`\bar X_{-1} = 0`, B the value the step bootstraps (correct: V(s') unless s'
    is terminal), C whether the recursion goes on (correct: not done), and next(k, s')
    the next sample's (age, state): (k+1, s'), or (0, s_0 ~ rho) after a reset. With
    the exact critic and the correct collector :math:`X_h = A^\pi`, so
    :math:`w = \nu\,\pi\,A^\pi` for every lambda [Schulman2016].

    Parameters
    ----------
    mdp, pi, n_steps, max_episode_steps
        As in `rollout_state_marginals`.
    gae_lambda : float in [0, 1]
    gamma : float in [0, 1], optional
        The discount the library uses (default ``mdp.gamma``).
    values : array_like (S,), optional
        The critic (default the exact :math:`V^\pi` of `mdp`).
    collector : str
        A key of `COLLECTORS`.

    Returns
    -------
    ndarray (S, A)
    """
    mdp, pi, T, L = _validate(mdp, pi, n_steps, max_episode_steps)
    lam, gamma, V, chain = _resolve(mdp, pi, T, L, gae_lambda, gamma, values, collector)
    return _advantage_weights(mdp, pi, T, chain, _marginals(mdp, pi, T, chain), gamma, lam, V, collector)


def _entropy_gradient(pi: np.ndarray) -> np.ndarray:
    r""":math:`\partial H(\mathrm{softmax}(\theta_s))/\partial\theta_{s,b} = -\pi_b(\log\pi_b + H)`, (S, A)."""
    log_pi = np.log(np.where(pi > 0, pi, 1.0))
    H = -xlogy(pi, pi).sum(axis=1, keepdims=True)
    return -pi * (log_pi + H)


def expected_pipeline_gradient(mdp, pi, n_steps, max_episode_steps=None, *, gae_lambda: float = 0.95,
                               gamma: float | None = None, values=None, collector: str = "correct",
                               scale: float = 1.0, ent_coef: float = 0.0) -> PipelineGradient:
    r"""Exact mean of a pipeline's first gradient, d loss / d (W, b), for logits :math:`W_s + b`.

    .. math::
        \mathbb E[g_W]_{s,\cdot} = -c\Big(w(s,\cdot) - \pi(\cdot|s)\sum_a w(s,a)\Big)
          - c\,c_e\,\nu(s)\nabla_{\theta_s}H(\pi(\cdot|s)),\qquad
        \mathbb E[g_b] = \sum_s \mathbb E[g_W]_{s,\cdot},

    w from `expected_advantage_weights`, :math:`\nu` from `rollout_state_distribution`:
    the loss :math:`-\frac{c}{|I|}\sum_{i\in I} r_i\hat A_i - c\,c_e\frac1{|I|}\sum_{i\in I}H_i`
    at ratio :math:`r_i = 1`, on a minibatch I drawn uniformly from the buffer
    (PPO's first minibatch, or A2C's whole batch). With the exact critic and the correct
    collector it is :math:`-c\sum_s\nu(s)\sum_a\pi A^\pi\nabla\log\pi`
    (minus the entropy term), which is :math:`-c(1-\gamma)\nabla J` only where
    :math:`\nu = d` ([Nota2020]; module docstring).

    Parameters
    ----------
    mdp, pi, n_steps, max_episode_steps, gae_lambda, gamma, values, collector
        As in `expected_advantage_weights`.
    scale : float
        c: 1 for a loss averaged over the minibatch, the minibatch's size for a sum.
    ent_coef : float
        :math:`c_e`, the coefficient of the entropy bonus (0: none).

    Returns
    -------
    PipelineGradient
    """
    mdp, pi, T, L = _validate(mdp, pi, n_steps, max_episode_steps)
    c = check_real(scale, "scale")
    ent = check_real(ent_coef, "ent_coef")
    lam, gamma, V, chain = _resolve(mdp, pi, T, L, gae_lambda, gamma, values, collector)
    p = _marginals(mdp, pi, T, chain)
    w = _advantage_weights(mdp, pi, T, chain, p, gamma, lam, V, collector)
    nu = p.sum(axis=1).mean(axis=0)
    g = -c * (w - pi * w.sum(axis=1, keepdims=True))
    if ent != 0.0:
        g = g - c * ent * nu[:, None] * _entropy_gradient(pi)
    return PipelineGradient(actor_w=g, actor_b=g.sum(axis=0), state_distribution=nu, advantage_weights=w,
                            scale=c)
