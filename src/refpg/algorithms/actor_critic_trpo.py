r"""TRPO's whole update of a linear actor-critic on a fixed batch, as sb3-contrib's ``TRPO.train()`` runs it.

`refpg.algorithms.trpo` is one TRPO step on an MDP (exact or sampled). A
library's ``train()`` wraps that step in more: GAE on its buffer, advantage
normalisation, one natural-gradient step of the actor with a line search,
then several epochs of minibatch regression of the critic. This module does
all of it in float64 and records every intermediate, so that a library's
TRPO update can be compared step by step (`refpg.conformance.check_update`
with ``algorithm="trpo"``). The problem class is the one of
`refpg.algorithms.actor_critic`: logits :math:`W_{s\cdot} + b`, values
:math:`w_s + c`, biases optional.

One update (`trpo_actor_critic_update`), on a batch of M = T N samples:

1. advantages :math:`\hat A` = GAE(gamma, lambda) and returns
   :math:`R = \hat A + V_{old}` (`refpg.algorithms.actor_critic.batch_advantages`),
   optionally normalised once over the batch,
   :math:`(\hat A - \mathrm{mean}) / (\mathrm{std}_{ddof=1} + 10^{-8})`;
2. the policy step on the actor's parameters :math:`\theta` (``actor_w`` and
   ``actor_b``), from :math:`\theta_{old}` ([Schulman2015] Eq. 14 and
   Appendix C):

   .. math::
       L(\theta) = \frac1M\sum_i \frac{\pi_\theta(a_i|s_i)}{\pi_{old}(a_i|s_i)}\hat A_i,\qquad
       g = \nabla_\theta L(\theta_{old}),\qquad
       F = \nabla^2_\theta\, \overline{D}_{KL}\big|_{\theta_{old}},

   :math:`s` = conjugate gradient on :math:`(F + \lambda I)s = g`,
   :math:`\beta = \sqrt{2\delta / s^\top (F + \lambda I) s}`, and the first
   of :math:`\theta_k = \theta_{old} + c^k\beta s`, k = 0, 1, ..., with
   :math:`\overline{D}_{KL}(\theta_k) < \delta` and
   :math:`L(\theta_k) > L(\theta_{old})`; none: :math:`\theta_{old}` is kept;
3. the critic: `UpdateConfig.n_critic_updates` epochs of minibatch steps of
   the configured optimiser on :math:`\frac1B\sum_i \ell(V(s_i), R_i)`
   (coefficient 1), the actor untouched.

:math:`\overline{D}_{KL}` is the mean over the batch's M samples of
:math:`KL(\pi_{old}(\cdot|s_i)\,\|\,\pi_\theta(\cdot|s_i))` (the paper's,
``kl_direction="old_new"``) or of :math:`KL(\pi_\theta\|\pi_{old})`
(sb3-contrib's ``kl_divergence(distribution, old_distribution)``,
``"new_old"``). Both have the same Hessian at :math:`\theta_{old}`, the
batch Fisher matrix, so the direction and :math:`\beta` do not depend on the
choice; only the line search's decisions do.

Every derivative is analytic: for the linear-logit actor the Fisher matrix is
exact (`batch_fisher_matrix`); the tests check it against finite differences
of the KL's gradient and against torch autograd's Hessian.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from refpg.algorithms.actor_critic import (ACParams, LossTerms, OptimizerState, StepRecord, UpdateConfig,
                                           UpdateResult, _one_step, _value_terms, batch_advantages, check_batch,
                                           check_order, check_params, clip_gradient, epoch_minibatches,
                                           epoch_samples, policy_tables)
from refpg.algorithms.trpo import LineSearchTry
from refpg.errors import InvalidInputError, ShapeError

__all__ = ["RESIDUAL_TOL", "CGTrace", "TRPOPolicyStep", "TRPOUpdateResult", "check_trpo_config", "actor_vector",
           "with_actor_vector", "batch_surrogate", "batch_mean_kl", "batch_fisher_matrix", "sb3_conjugate_gradient",
           "critic_loss", "critic_optimizer_step", "trpo_policy_step", "trpo_actor_critic_update",
           "exact_trpo_actor_critic_update"]

#: sb3-contrib's conjugate gradient stops once the squared residual norm is below this (``residual_tol``).
RESIDUAL_TOL = 1e-10


# -- configuration -------------------------------------------------------------------------------

def check_trpo_config(config: UpdateConfig) -> UpdateConfig:
    """Refuse the `UpdateConfig` fields that have no meaning in a TRPO update, naming them.

    TRPO minimises no entropy bonus and clips no value prediction (sb3-contrib
    has neither), normalises advantages over the batch only (the policy step
    is one step on the whole batch), computes GAE once, and bounds the step by
    `max_kl`: PPO's early stop `target_kl` is not TRPO's trust region
    (sb3-contrib names that ``target_kl``). ``n_epochs``, ``clip_range`` and
    ``vf_coef`` are not read (the critic's loss has coefficient 1).

    Raises
    ------
    refpg.errors.InvalidInputError
    """
    if not isinstance(config, UpdateConfig):
        raise InvalidInputError(f"config should be an UpdateConfig, actual {type(config).__name__}")
    if config.algorithm != "trpo":
        raise InvalidInputError(f"config.algorithm should be 'trpo', actual {config.algorithm!r}")
    if config.target_kl is not None:
        raise InvalidInputError(
            f"target_kl should be None for algorithm='trpo' (it is PPO's early stop), actual {config.target_kl!r}; "
            f"TRPO's trust region is max_kl (sb3-contrib's TRPO calls it target_kl)")
    if config.ent_coef != 0.0:
        raise InvalidInputError(f"ent_coef should be 0 for algorithm='trpo' (the surrogate has no entropy bonus), "
                                f"actual {config.ent_coef!r}")
    if config.clip_range_vf is not None:
        raise InvalidInputError(f"clip_range_vf should be None for algorithm='trpo' (the critic's regression "
                                f"clips nothing), actual {config.clip_range_vf!r}")
    if config.normalize_advantage == "minibatch":
        raise InvalidInputError("normalize_advantage should be None or 'batch' for algorithm='trpo' (the policy "
                                "step is one step on the whole batch), actual 'minibatch'")
    if config.advantages != "once":
        raise InvalidInputError(f"advantages should be 'once' for algorithm='trpo' (GAE before the policy step), "
                                f"actual {config.advantages!r}")
    return config


# -- the actor's flat parameter vector -----------------------------------------------------------

def actor_vector(params: ACParams) -> np.ndarray:
    """The actor's parameters as one flat vector: ``actor_w`` row-major, then ``actor_b`` if present."""
    return np.concatenate([getattr(params, n).ravel() for n in params.actor_names()])


def with_actor_vector(params: ACParams, theta: np.ndarray) -> ACParams:
    """`params` with the actor's tensors read from the flat vector `theta` (the layout of `actor_vector`)."""
    S, A = params.actor_w.shape
    theta = np.asarray(theta, dtype=np.float64)
    P = S * A + (A if params.actor_b is not None else 0)
    if theta.shape != (P,):
        raise ShapeError(f"theta should have shape ({P},), the actor's parameter count, actual {theta.shape}")
    b = None if params.actor_b is None else theta[S * A:].copy()
    return params._replace(actor_w=theta[:S * A].reshape(S, A).copy(), actor_b=b)


def _actor_flat_grad(params: ACParams, states: np.ndarray, dlogits: np.ndarray) -> np.ndarray:
    """Chain per-sample logit derivatives (B, A) to the flat actor vector: d/dW[s] sums the samples at s."""
    S, A = params.actor_w.shape
    gw = np.zeros((S, A))
    np.add.at(gw, states, dlogits)
    parts = [gw.ravel()] + ([dlogits.sum(axis=0)] if params.actor_b is not None else [])
    return np.concatenate(parts)


def _as_actor_params(params: ACParams, flat: np.ndarray) -> ACParams:
    """An ACParams-shaped gradient: the actor's from `flat`, zeros for the critic's tensors."""
    g = with_actor_vector(params, flat)
    return g._replace(critic_w=np.zeros_like(params.critic_w),
                      critic_b=None if params.critic_b is None else np.zeros_like(params.critic_b))


def _weights(n: int, weights) -> np.ndarray:
    return np.full(n, 1.0 / n) if weights is None else np.asarray(weights, dtype=np.float64)


# -- surrogate, KL and Fisher matrix on the batch --------------------------------------------------

def batch_surrogate(params: ACParams, samples: dict, advantages: np.ndarray, *,
                    weights: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    r"""TRPO's surrogate on the batch and its gradient in the actor's flat parameters.

    .. math::
        L(\theta) = \frac1M\sum_i r_i(\theta)\hat A_i,\quad r_i = e^{\log\pi_\theta(a_i|s_i) - \log\pi_{old,i}},
        \qquad \nabla_\theta L = \frac1M\sum_i r_i \hat A_i\,\nabla_\theta\log\pi_\theta(a_i|s_i)

    ([Schulman2015] Eq. 14, the importance-sampled form sb3-contrib
    maximises); :math:`\log\pi_{old,i}` is the batch's ``logp_old``.

    Parameters
    ----------
    params : ACParams
    samples : dict
        Flat (M,) "states", "actions", "logp_old".
    advantages : ndarray (M,)
        As the surrogate uses them (normalised if so configured).
    weights : ndarray (M,) or None
        Each sample's weight in the mean (None: 1/M).

    Returns
    -------
    (float, ndarray (P,))
        L and its gradient, in the layout of `actor_vector`.
    """
    s, a = samples["states"], samples["actions"]
    w = _weights(s.size, weights)
    logp_all, pi_all = policy_tables(params)
    ratio = np.exp(logp_all[s, a] - samples["logp_old"])
    coef = w * ratio * advantages
    # d log pi(a|s) / d logits = e_a - pi(.|s).
    dlogits = -coef[:, None] * pi_all[s]
    dlogits[np.arange(s.size), a] += coef
    return float(np.sum(coef)), _actor_flat_grad(params, s, dlogits)


def batch_mean_kl(params: ACParams, params_old: ACParams, states: np.ndarray, direction: str = "old_new", *,
                  weights: np.ndarray | None = None) -> float:
    r"""Mean KL between the old and the new policy over the batch's states.

    .. math::
        \overline{D}_{KL} = \frac1M\sum_i KL(\pi_{old}(\cdot|s_i)\,\|\,\pi_\theta(\cdot|s_i))
        \quad(\text{"old\_new", [Schulman2015] Eq. 12}), \text{ or } KL(\pi_\theta\|\pi_{old}) \text{ ("new\_old")}.

    A state counts once per sample it appears in, as a library's mean over its
    buffer counts it.
    """
    if direction not in ("old_new", "new_old"):
        raise InvalidInputError(f"direction should be 'old_new' or 'new_old', actual {direction!r}")
    w = _weights(states.size, weights)
    lp_new, p_new = policy_tables(params)
    lp_old, p_old = policy_tables(params_old)
    if direction == "old_new":
        per_state = np.sum(p_old * (lp_old - lp_new), axis=1)
    else:
        per_state = np.sum(p_new * (lp_new - lp_old), axis=1)
    return float(np.dot(w, per_state[states]))


def _logit_jacobians(params: ACParams) -> np.ndarray:
    """(S, A, P): d logits(s) / d theta for every state (a selector: W's row s and the bias)."""
    S, A = params.actor_w.shape
    P = S * A + (A if params.actor_b is not None else 0)
    J = np.zeros((S, A, P))
    eye = np.eye(A)
    for s in range(S):
        J[s, :, s * A:(s + 1) * A] = eye
        if params.actor_b is not None:
            J[s, :, S * A:] = eye
    return J


def batch_fisher_matrix(params: ACParams, states: np.ndarray, *, weights: np.ndarray | None = None) -> np.ndarray:
    r"""The Hessian of the batch's mean KL at :math:`\theta_{old}` = `params`: TRPO's Fisher matrix (P, P).

    .. math::
        F = \frac1M\sum_i J_{s_i}^\top\big(\mathrm{diag}\,\pi(\cdot|s_i) - \pi(\cdot|s_i)\pi(\cdot|s_i)^\top\big)J_{s_i}

    with :math:`J_s = \partial\,\mathrm{logits}(s)/\partial\theta`, exact for the
    linear-logit actor ([Schulman2015] Appendix C: the Hessian of the KL, in
    either direction, is the Fisher information of the softmax in its
    logits). F is singular: adding a constant to a state's logits changes
    nothing.
    """
    w = _weights(states.size, weights)
    _, pi = policy_tables(params)
    S = pi.shape[0]
    mass = np.zeros(S)
    np.add.at(mass, states, w)
    H = np.einsum("s,sa,ab->sab", mass, pi, np.eye(pi.shape[1])) - np.einsum("s,sa,sb->sab", mass, pi, pi)
    J = _logit_jacobians(params)
    return np.einsum("sap,sab,sbq->pq", J, H, J)


# -- conjugate gradient as sb3-contrib runs it ----------------------------------------------------

class CGTrace(NamedTuple):
    """What `sb3_conjugate_gradient` did."""

    x: np.ndarray
    """The solution estimate after the last update."""
    iterations: int
    """Updates of x taken."""
    residual_sq_norms: tuple
    r"""The recursively updated :math:`r_k^\top r_k`, k = 0 (:math:`b^\top b`), 1, ... as far as computed."""
    converged: bool
    """The last squared residual is below the tolerance."""


def sb3_conjugate_gradient(matrix: np.ndarray, b: np.ndarray, *, max_iter: int,
                           residual_tol: float = RESIDUAL_TOL) -> CGTrace:
    r"""Conjugate gradient on :math:`Ax = b` with sb3-contrib's iteration and stopping rule, from :math:`x_0 = 0`.

    .. math::
        \alpha_k = \frac{r_k^\top r_k}{p_k^\top A p_k},\ x_{k+1} = x_k + \alpha_k p_k,\
        r_{k+1} = r_k - \alpha_k A p_k,\ p_{k+1} = r_{k+1} + \frac{r_{k+1}^\top r_{k+1}}{r_k^\top r_k}p_k,

    returning at once when :math:`b^\top b <` `residual_tol`, after the
    `max_iter`-th update of x, or when :math:`r_{k+1}^\top r_{k+1} <`
    `residual_tol` (an absolute test on the squared norm, as sb3-contrib's
    ``conjugate_gradient_solver``). A direction with :math:`p^\top A p \le 0`
    (A singular, without damping) ends the iteration too.

    sb3-contrib starts from :math:`x_0 = 10^{-4}\,\mathcal N(0, I)` instead of
    0. With `max_iter` at least the dimension, CG from either start converges
    to :math:`A^{-1}b` (to the stopping rule's residual), so the two agree up
    to :math:`\|r\|/\lambda_{min}(A) < \sqrt{\text{residual\_tol}}/\lambda_{min}`;
    with fewer iterations the start shows in the result.
    """
    A = np.asarray(matrix, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    x = np.zeros_like(b)
    r = b.copy()
    rr = float(r @ r)
    norms = [rr]
    if rr < residual_tol:
        return CGTrace(x, 0, tuple(norms), True)
    p = r.copy()
    k = 0
    for i in range(max_iter):
        Ap = A @ p
        pAp = float(p @ Ap)
        if not pAp > 0.0:
            break
        alpha = rr / pAp
        x = x + alpha * p
        k += 1
        if i == max_iter - 1:
            break
        r = r - alpha * Ap
        rr_new = float(r @ r)
        norms.append(rr_new)
        if rr_new < residual_tol:
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    return CGTrace(x, k, tuple(norms), norms[-1] < residual_tol)


# -- the policy step -----------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class TRPOPolicyStep:
    r"""Everything about the policy step of one TRPO update.

    Attributes
    ----------
    actor_names : tuple of str
        The tensors of the flat vector, in `actor_vector`'s layout.
    theta_old : ndarray (P,)
    surrogate : float
        :math:`L(\theta_{old})` (:math:`\approx \mathrm{mean}(\hat A)`; the ratio is 1 up to rounding).
    gradient : ndarray (P,)
        g, the surrogate's gradient at :math:`\theta_{old}`.
    fisher : ndarray (P, P)
        F, the Hessian of the mean KL at :math:`\theta_{old}`.
    damping : float
        :math:`\lambda`.
    cg : CGTrace
        The conjugate gradient on :math:`(F + \lambda I)s = g`.
    direction : ndarray (P,)
        s, its result.
    exact_direction : ndarray (P,)
        The least-squares (minimum-norm) solution of :math:`(F+\lambda I)s = g`.
    quad : float
        :math:`s^\top (F + \lambda I) s`.
    step_size : float
        :math:`\beta = \sqrt{2\delta/\text{quad}}`; 0.0 when quad is 0 (g = 0: no step is tried).
    full_step : ndarray (P,)
        :math:`\beta s`.
    tries : tuple of refpg.algorithms.trpo.LineSearchTry
        Every candidate :math:`\theta_{old} + c^k\beta s` tried, with its
        improvement of L and its mean KL (`kl_direction`), and whether it was accepted.
    kl_direction : str
    accepted : bool
    coefficient : float
        :math:`c^k` of the accepted try; 0.0 if none.
    kl, improvement : float
        Of the accepted try; 0.0 if none.
    theta : ndarray (P,)
        The actor after the step (:math:`\theta_{old}` exactly when none was accepted).
    """

    actor_names: tuple
    theta_old: np.ndarray
    surrogate: float
    gradient: np.ndarray
    fisher: np.ndarray
    damping: float
    cg: CGTrace
    direction: np.ndarray
    exact_direction: np.ndarray
    quad: float
    step_size: float
    full_step: np.ndarray
    tries: tuple
    kl_direction: str
    accepted: bool
    coefficient: float
    kl: float
    improvement: float
    theta: np.ndarray


def trpo_policy_step(params: ACParams, samples: dict, advantages: np.ndarray, config: UpdateConfig, *,
                     weights: np.ndarray | None = None) -> TRPOPolicyStep:
    r"""TRPO's policy step from `params` on the batch (module docstring, step 2; [Schulman2015] Appendix C).

    .. math::
        \theta = \theta_{old} + c^k\sqrt{\frac{2\delta}{s^\top(F+\lambda I)s}}\;s,\qquad
        s = \mathrm{CG}(F + \lambda I,\ g),

    k the first try with :math:`\overline{D}_{KL} < \delta` and a strict
    improvement of L (sb3-contrib's test), :math:`\delta` = ``max_kl``,
    :math:`\lambda` = ``cg_damping``, c = ``line_search_shrinking_factor``,
    ``line_search_max_iter`` tries.

    Parameters
    ----------
    params : ACParams
        :math:`\theta_{old}` (and the critic, left as it is).
    samples : dict
        Flat (M,) "states", "actions", "logp_old".
    advantages : ndarray (M,)
        As the surrogate uses them.
    config : UpdateConfig
    weights : ndarray (M,) or None
        Each sample's weight in the surrogate's and the KL's means (None: 1/M).

    Returns
    -------
    TRPOPolicyStep
    """
    names = params.actor_names()
    theta0 = actor_vector(params)
    L0, g = batch_surrogate(params, samples, advantages, weights=weights)
    F = batch_fisher_matrix(params, samples["states"], weights=weights)
    lam = config.cg_damping
    Adamp = F + lam * np.eye(F.shape[0])
    cg = sb3_conjugate_gradient(Adamp, g, max_iter=config.cg_max_steps)
    s = cg.x
    exact = np.linalg.lstsq(Adamp, g, rcond=None)[0]
    quad = float(s @ Adamp @ s)
    tries, accepted, coef, kl_acc, imp_acc, theta = [], False, 0.0, 0.0, 0.0, theta0
    if quad > 0.0:
        beta = math.sqrt(2.0 * config.max_kl / quad)
        full = beta * s
        c = 1.0
        for _ in range(config.line_search_max_iter):
            cand = theta0 + c * full
            p_k = with_actor_vector(params, cand)
            L_k, _ = batch_surrogate(p_k, samples, advantages, weights=weights)
            kl = batch_mean_kl(p_k, params, samples["states"], config.kl_direction, weights=weights)
            ok = bool(kl < config.max_kl and L_k > L0)
            tries.append(LineSearchTry(fraction=c, improvement=L_k - L0, kl=kl, accepted=ok))
            if ok:
                accepted, coef, kl_acc, imp_acc, theta = True, c, kl, L_k - L0, cand
                break
            c *= config.line_search_shrinking_factor
    else:
        beta, full = 0.0, np.zeros_like(theta0)
    return TRPOPolicyStep(names, theta0, L0, g, F, lam, cg, s, exact, quad, beta, full, tuple(tries),
                          config.kl_direction, accepted, coef, kl_acc, imp_acc, theta)


# -- the critic ----------------------------------------------------------------------------------

def critic_loss(params: ACParams, samples: dict, returns: np.ndarray, config: UpdateConfig, *,
                weights: np.ndarray | None = None) -> LossTerms:
    r"""The critic's regression loss on a minibatch and its gradient (zero for the actor's tensors).

    .. math:: \mathcal L_V = \frac1B\sum_i \ell(V_w(s_i), R_i)

    with :math:`\ell` the config's `value_loss` (sb3-contrib: ``F.mse_loss``,
    :math:`(R - v)^2`) and coefficient 1: TRPO fits the critic by itself
    after the policy step ([Schulman2016] Section 5 fits it by its own
    regression too).

    Returns
    -------
    refpg.algorithms.actor_critic.LossTerms
        ``loss = value_loss``; ``policy_loss``, ``entropy``, ``clip_fraction``
        are 0 and ``approx_kl`` the actor's :math:`\mathrm{mean}((r-1)-\log r)`
        on the minibatch (for the record: the critic's step does not change it).
    """
    s = samples["states"]
    w = _weights(s.size, weights)
    v = params.critic_w[s] + (0.0 if params.critic_b is None else params.critic_b)
    loss_i, dl = _value_terms(v, returns, config.value_loss)
    dv = w * dl
    gcw = np.zeros_like(params.critic_w)
    np.add.at(gcw, s, dv)
    grad = ACParams(np.zeros_like(params.actor_w), None if params.actor_b is None else np.zeros_like(params.actor_b),
                    gcw, None if params.critic_b is None else np.asarray(dv.sum()))
    logp_all, _ = policy_tables(params)
    log_ratio = logp_all[s, samples["actions"]] - samples["logp_old"]
    approx_kl = float(np.dot(w, np.expm1(log_ratio) - log_ratio))
    value = float(np.dot(w, loss_i))
    return LossTerms(value, 0.0, value, 0.0, approx_kl, 0.0, grad)


def critic_optimizer_step(params: ACParams, grad: ACParams, state: OptimizerState | None,
                          config: UpdateConfig) -> tuple[ACParams, OptimizerState]:
    """One optimiser step on the critic's tensors only; the actor's tensors and optimiser state are untouched.

    sb3-contrib sets the actor's gradients to None before ``optimizer.step()``,
    so its one Adam over the whole policy steps (and keeps state for) the
    critic's tensors alone. The critic's learning rate is `critic_lr` if set,
    else `lr`.
    """
    state = OptimizerState(None, None) if state is None else state
    names = params.critic_names()
    lr = config.lr if config.critic_lr is None else config.critic_lr
    new, st = _one_step(tuple(getattr(params, n) for n in names), tuple(getattr(grad, n) for n in names),
                        state.critic, lr, config)
    return params.with_tensors(names, new), OptimizerState(state.actor, st)


# -- the update ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TRPOUpdateResult(UpdateResult):
    """`UpdateResult` of a TRPO update, with the policy step's details in `policy_step` (a `TRPOPolicyStep`).

    ``steps[0]`` is the policy step (epoch 0, minibatch 0, indices all M
    samples in order, ``loss`` = :math:`-L(\\theta_{old})`, ``grad`` =
    :math:`-g` for the actor and zeros for the critic, ``params`` after the
    line search); ``steps[1:]`` the critic's steps, epoch ``e + 1`` for the
    critic's pass e. ``stopped_early`` is always False.
    """

    policy_step: TRPOPolicyStep | None = None


def trpo_actor_critic_update(batch, params, config: UpdateConfig, *, order=None, rng=None,
                             optimizer_state: OptimizerState | None = None) -> TRPOUpdateResult:
    r"""One whole TRPO update of a linear actor-critic on a fixed batch, every step recorded.

    .. math::
        \theta \leftarrow \theta_{old} + c^k\sqrt{\tfrac{2\delta}{s^\top(F+\lambda I)s}}\,s,\quad
        s = \mathrm{CG}(F+\lambda I, \nabla L);\qquad
        (w, c) \leftarrow \mathrm{opt}(\nabla \mathcal L_V)\ \text{per critic minibatch}

    (module docstring; [Schulman2015] Eq. 14 and Appendix C, [Schulman2016]
    for GAE). `refpg.algorithms.actor_critic.actor_critic_update` dispatches
    ``algorithm="trpo"`` here.

    Parameters
    ----------
    batch : UpdateBatch or dict
    params : ACParams or dict
    config : UpdateConfig
        ``algorithm="trpo"``; the fields TRPO reads are ``gamma``,
        ``gae_lambda``, ``truncation``, ``normalize_advantage`` (None or
        "batch"), ``norm_ddof``, ``norm_eps``, ``norm_eps_on``, ``max_kl``,
        ``cg_max_steps``, ``cg_damping``, ``line_search_shrinking_factor``,
        ``line_search_max_iter``, ``kl_direction``, ``n_critic_updates``,
        ``minibatch_size``, ``value_loss``, ``max_grad_norm`` (clips the
        critic's gradient), the optimiser's, ``critic_lr`` and ``flatten``
        (`check_trpo_config` refuses the others when set).
    order : int array (n_critic_updates, M) or None
        Each critic epoch's permutation of the flat sample numbers; None draws
        ``rng.permutation(M)`` per epoch (when the critic has more than one
        minibatch per epoch).
    rng : numpy.random.Generator or None
    optimizer_state : OptimizerState or None
        Continue the critic's optimiser (its ``critic`` part) from an earlier update.

    Returns
    -------
    TRPOUpdateResult

    Raises
    ------
    refpg.errors.InvalidInputError, refpg.errors.ShapeError
        A malformed batch, params or order, a missing rng, a config field TRPO
        does not have.

    Notes
    -----
    The conjugate gradient starts from 0 (sb3-contrib: :math:`10^{-4}`
    Gaussian noise; see `sb3_conjugate_gradient`). With the default 15
    iterations and a problem of at most 15 actor parameters, both converge to
    the solve of :math:`(F+\lambda I)s = g` within the stopping rule. When
    :math:`g = 0` to the stopping rule, s = 0 and no step is tried (from its
    noise start, sb3-contrib would step to the trust region's edge along the
    noise, accepted if the surrogate happens to rise).
    """
    if not isinstance(config, UpdateConfig):
        raise InvalidInputError(f"config should be an UpdateConfig, actual {type(config).__name__}")
    check_trpo_config(config)
    params = check_params(params)
    S, A = params.actor_w.shape
    batch = check_batch(batch, S, A)
    T, N = batch.shape
    M = T * N
    n_epochs = config.n_critic_updates
    perms = _critic_order(config, M, order, rng)
    adv2, ret2 = batch_advantages(batch, config)
    flat, adv, ret = epoch_samples(batch, config)
    pstep = trpo_policy_step(params, flat, adv, config)
    after = with_actor_vector(params, pstep.theta)
    logp_all, pi = policy_tables(params)
    H = -np.sum(pi * logp_all, axis=1)[flat["states"]]
    log_ratio = logp_all[flat["states"], flat["actions"]] - flat["logp_old"]
    grad = _as_actor_params(params, -pstep.gradient)
    norm = float(np.linalg.norm(pstep.gradient))
    steps = [StepRecord(0, 0, np.arange(M), adv, ret, -pstep.surrogate, -pstep.surrogate, 0.0, float(np.mean(H)),
                        float(np.mean(np.expm1(log_ratio) - log_ratio)), 0.0, grad, norm, grad, after)]
    state, prev = optimizer_state, after
    for e in range(n_epochs):
        for j, idx in enumerate(epoch_minibatches(perms[e], config)):
            samples = {k: v[idx] for k, v in flat.items()}
            terms = critic_loss(prev, samples, ret[idx], config)
            clipped, gnorm = clip_gradient(terms.grad, config)
            prev, state = critic_optimizer_step(prev, clipped, state, config)
            steps.append(StepRecord(e + 1, j, idx.copy(), adv[idx], ret[idx], terms.loss, 0.0, terms.value_loss,
                                    0.0, terms.approx_kl, 0.0, terms.grad, gnorm, clipped, prev))
    state = OptimizerState(None, None) if state is None else state
    return TRPOUpdateResult(prev, adv2, ret2, tuple(steps), False, state, pstep)


def exact_trpo_actor_critic_update(mdp, params, config: UpdateConfig, *,
                                   optimizer_state: OptimizerState | None = None) -> TRPOUpdateResult:
    r"""The infinite-sample limit of `trpo_actor_critic_update`: every batch mean becomes an expectation.

    The samples are the pairs (s, a) with weight :math:`d^{\pi_{old}}_\rho(s)\,\pi_{old}(a|s)` (the MDP's
    normalised occupancy), each advantage its conditional mean
    `refpg.algorithms.actor_critic.exact_gae` :math:`\bar A(s, a)` and each return
    :math:`\bar A + V_{w_{old}}(s)`, as in `refpg.algorithms.actor_critic.exact_actor_critic_update`:

    .. math::
        L(\theta) = \mathbb E_{d\times\pi_{old}}[r\bar A],\quad
        F = \mathbb E_{s\sim d}\big[J_s^\top(\mathrm{diag}\,\pi - \pi\pi^\top)J_s\big],\quad
        \overline{D}_{KL} = \mathbb E_{s\sim d}[KL],

    then the same conjugate gradient, step size and line search, and
    `n_critic_updates` full-batch critic steps on
    :math:`\mathbb E[\ell(V_w(s), \bar R)]` ([Schulman2015] Eq. 14 and
    Appendix C). ``normalize_advantage="batch"`` uses the moments of
    :math:`\bar A` under the same weights. With ``gae_lambda=1``, the
    MDP's gamma and the exact critic, :math:`\bar A = A^\pi`, g is
    :math:`(1-\gamma)\nabla J`, F is `refpg.fisher.fisher_matrix`, and the step
    is `refpg.algorithms.trpo.trpo_step`'s exact one (the tests check it).

    Parameters
    ----------
    mdp : TabularMDP
    params : ACParams or dict
        ``actor_w`` of shape (S, A) of the MDP.
    config : UpdateConfig
        ``algorithm="trpo"``; ``minibatch_size`` must be None (no minibatches).
    optimizer_state : OptimizerState or None

    Returns
    -------
    TRPOUpdateResult
        ``advantages`` and ``returns`` are :math:`\bar A` and :math:`\bar R` (S, A); the steps' indices
        are the pairs s A + a with positive weight.
    """
    from refpg.algorithms.actor_critic import exact_gae
    from refpg.evaluation import check_mdp, policy_evaluation

    if not isinstance(config, UpdateConfig):
        raise InvalidInputError(f"config should be an UpdateConfig, actual {type(config).__name__}")
    check_trpo_config(config)
    if config.minibatch_size is not None:
        raise InvalidInputError(f"exact mode has no minibatches: minibatch_size should be None, actual "
                                f"{config.minibatch_size!r}")
    check_mdp(mdp)
    params = check_params(params)
    if params.actor_w.shape != (mdp.n_states, mdp.n_actions):
        raise ShapeError(f"params['actor_w'] should have shape (S, A) = ({mdp.n_states}, {mdp.n_actions}) of the "
                         f"MDP, actual {params.actor_w.shape}")
    logp_old, pi_old = policy_tables(params)
    ev = policy_evaluation(mdp, pi_old)
    adv2 = exact_gae(mdp, params, config, pi_old)
    ret2 = adv2 + params.state_values()[:, None]
    omega = ev.d[:, None] * pi_old
    s, a = np.nonzero(omega > 0)
    w = omega[s, a] / omega[s, a].sum()
    samples = {"states": s, "actions": a, "logp_old": logp_old[s, a], "values": params.state_values()[s]}
    adv, ret = adv2[s, a], ret2[s, a]
    if config.normalize_advantage == "batch":
        m = float(np.dot(w, adv))
        std = math.sqrt(float(np.dot(w, (adv - m) ** 2)))
        adv = (adv - m) / (max(std, config.norm_eps) if config.norm_eps_on == "clamp" else std + config.norm_eps)
    idx = s * mdp.n_actions + a
    pstep = trpo_policy_step(params, samples, adv, config, weights=w)
    after = with_actor_vector(params, pstep.theta)
    H = -np.sum(pi_old * logp_old, axis=1)[s]
    grad = _as_actor_params(params, -pstep.gradient)
    steps = [StepRecord(0, 0, idx, adv, ret, -pstep.surrogate, -pstep.surrogate, 0.0, float(np.dot(w, H)), 0.0,
                        0.0, grad, float(np.linalg.norm(pstep.gradient)), grad, after)]
    state, prev = optimizer_state, after
    for e in range(config.n_critic_updates):
        terms = critic_loss(prev, samples, ret, config, weights=w)
        clipped, gnorm = clip_gradient(terms.grad, config)
        prev, state = critic_optimizer_step(prev, clipped, state, config)
        steps.append(StepRecord(e + 1, 0, idx, adv, ret, terms.loss, 0.0, terms.value_loss, 0.0, terms.approx_kl,
                                0.0, terms.grad, gnorm, clipped, prev))
    state = OptimizerState(None, None) if state is None else state
    return TRPOUpdateResult(prev, adv2, ret2, tuple(steps), False, state, pstep)


def _critic_order(config: UpdateConfig, M: int, order, rng) -> np.ndarray:
    """(n_critic_updates, M) permutations: `order`, trivially (one minibatch per epoch), or drawn from `rng`."""
    n = config.n_critic_updates
    if order is not None:
        return check_order(order, n, M)
    if config.minibatch_size is None or config.minibatch_size >= M or n == 0:
        return np.tile(np.arange(M), (n, 1))
    if not isinstance(rng, np.random.Generator):
        raise InvalidInputError("rng should be a numpy.random.Generator when order is None and the critic's "
                                f"epochs have several minibatches, actual {type(rng).__name__}")
    return np.stack([rng.permutation(M) for _ in range(n)])
