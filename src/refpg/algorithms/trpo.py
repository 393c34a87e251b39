r"""Trust region policy optimization: conjugate gradient, step size, line search, one step.

One TRPO step ([Schulman2015] Section 6 and Appendix C):

1. g = gradient of the surrogate at theta_old (the policy gradient);
2. s ~= F^{-1} g by conjugate gradient on Fisher-vector products;
3. the largest step along s allowed by the quadratic KL model,
   :math:`\beta = \sqrt{2\delta / s^\top F s}`;
4. a backtracking line search on :math:`\theta_{old} + \beta\, c^k s`,
   k = 0, 1, ..., accepting the first point that improves the objective and
   keeps the mean KL within delta.

Exact mode uses the exact surrogate, Fisher matrix and KL under
:math:`d^{\pi_{old}}`; sampled mode their batch estimates (see `trpo_step`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from refpg._validation import as_float_array, check_choice, check_positive_int, check_real
from refpg.algorithms._problems import problem
from refpg.algorithms.common import (
    FISHER_ESTIMATES,
    check_fisher,
    check_sample_config,
    check_sampled_arguments,
    SampleConfig,
    SampledData,
    check_mode,
)
from refpg.errors import InvalidInputError, NonPositiveCurvatureError, ShapeError

__all__ = [
    "CGResult",
    "conjugate_gradient",
    "NonPositiveCurvatureError",
    "max_step_size",
    "LineSearchTry",
    "LineSearchResult",
    "backtracking_line_search",
    "TRPOResult",
    "trpo_step",
    "LINE_SEARCH_OBJECTIVES",
    "FISHER_ESTIMATES",
]

#: Objectives the TRPO line search can test for improvement.
LINE_SEARCH_OBJECTIVES = ("surrogate", "true_J")


# -- conjugate gradient ----------------------------------------------------------

class CGResult(NamedTuple):
    r"""What `conjugate_gradient` did, iteration by iteration.

    At most one of `converged`, `nonpositive_curvature` and `nonfinite` is
    True; none is when the iteration budget ran out.
    """

    x: np.ndarray
    """The last iterate, in the shape of b; never NaN (x0 = 0 if no step was taken)."""
    residual_norms: tuple
    r""":math:`\|b - F x_k\|` for k = 0 .. iterations; the first is :math:`\|b\|`."""
    iterations: int
    """Number of iterates x_1, x_2, ... computed (updates of x)."""
    converged: bool
    """The last residual norm meets ``norm(b - F x) <= max(rtol * norm(b), atol)``."""
    nonpositive_curvature: bool
    r"""Stopped because a search direction p had :math:`p^\top F p \le 0`."""
    curvatures: tuple
    r""":math:`p_k^\top F p_k` for every search direction tried; when
    `nonpositive_curvature`, the last entry is the offending value."""
    nonfinite: bool
    """Stopped because the next iterate, search direction or an F-product was
    not finite (float64 overflow along a near-null direction of F, or an
    `fvp` that returns NaN); x is the last finite iterate."""
    tolerance: float
    """The threshold ``max(rtol * norm(b), atol)`` the residual was held to."""


def conjugate_gradient(fvp: Callable[[np.ndarray], np.ndarray], b, *, max_iter: int = 10,
                       rtol: float = 1e-10, atol: float = 0.0) -> CGResult:
    r"""Solve :math:`F x = b` for symmetric positive semidefinite F, given only :math:`v \mapsto F v`.

    Conjugate gradient from :math:`x_0 = 0` (Hestenes & Stiefel 1952), as
    TRPO uses it to approximate :math:`F^{-1} g` ([Schulman2015] Appendix C):

    .. math::
        \alpha_k = \frac{r_k^\top r_k}{p_k^\top F p_k},\quad
        x_{k+1} = x_k + \alpha_k p_k,\quad
        r_{k+1} = b - F x_{k+1},\quad
        p_{k+1} = r_{k+1} + \frac{r_{k+1}^\top r_{k+1}}{r_k^\top r_k} p_k.

    It stops as soon as

    ``norm(b - F x) <= max(rtol * norm(b), atol)``

    (the test of `scipy.sparse.linalg.cg`), after `max_iter` updates of x,
    on a direction with :math:`p^\top F p \le 0`, or when the next iterate
    would not be finite (each reported in the result, never by NaN).

    Parameters
    ----------
    fvp : callable
        ``fvp(v)`` returns F v for v of b's shape, as an array of b's shape.
    b : array_like, any shape
        Right-hand side; finite. Arrays are flattened for the inner products
        and x is returned in b's shape.
    max_iter : int, default 10
        Most updates of x, >= 1 (10 is TRPO's default).
    rtol, atol : float, default 1e-10 and 0
        Tolerances of the stopping test, >= 0.

    Returns
    -------
    CGResult

    Raises
    ------
    refpg.errors.InvalidInputError
        On a non-finite b, max_iter < 1, a negative tolerance, or an `fvp`
        whose output has the wrong shape (naming the iteration).

    Notes
    -----
    The residual is recomputed as :math:`b - F x_{k+1}` (two F-products per
    iteration) rather than updated recursively, so every entry of
    `residual_norms`, and `converged`, are the literal stopping test, not a
    recursion that drifts from it in floating point. In exact arithmetic
    both give the same iterates.

    On a singular PSD F with b in its range (as the Fisher matrix and the
    policy gradient always are) the iterates stay in range(F) and converge to
    the minimum-norm solution :math:`F^+ b`. A direction with
    :math:`p^\top F p \le 0` means F is not PSD (or round-off in a null
    direction): CG stops there rather than divide by it and returns the last
    good x.

    References
    ----------
    Hestenes & Stiefel (1952); [Schulman2015] Appendix C;
    Nocedal & Wright, Numerical Optimization, Algorithm 5.2.

    Examples
    --------
    >>> import numpy as np
    >>> F = np.array([[4.0, 1.0], [1.0, 3.0]])
    >>> res = conjugate_gradient(lambda v: F @ v, np.array([1.0, 2.0]))
    >>> res.converged, res.iterations
    (True, 2)
    >>> np.allclose(F @ res.x, [1.0, 2.0])
    True
    """
    if not callable(fvp):
        raise InvalidInputError(f"fvp should be a callable v -> F v, actual {type(fvp).__name__}")
    b = as_float_array(b, "b")
    max_iter = check_positive_int(max_iter, "max_iter")
    rtol = check_real(rtol, "rtol", low=0.0)
    atol = check_real(atol, "atol", low=0.0)
    shape = b.shape
    b_flat = b.ravel()

    def apply(v, k):
        with np.errstate(over="ignore", invalid="ignore"):
            out = np.asarray(fvp(v.reshape(shape)), dtype=np.float64)
        if out.shape != shape:
            raise ShapeError(f"fvp(v) should have shape {shape} (that of b), actual {out.shape} "
                             f"at iteration {k}")
        return out.ravel() if np.all(np.isfinite(out)) else None

    x = np.zeros_like(b_flat)
    r = b_flat.copy()
    rr = float(r @ r)
    b_norm = math.sqrt(rr)
    tol = max(rtol * b_norm, atol)
    norms = [b_norm]
    curvatures = []
    converged = b_norm <= tol
    nonpositive = nonfinite = False
    p = r.copy()
    k = 0
    while not converged and k < max_iter:
        Fp = apply(p, k)
        if Fp is None:
            nonfinite = True
            break
        pFp = float(p @ Fp)
        curvatures.append(pFp)
        if not pFp > 0.0:
            nonpositive = True
            break
        # A positive but tiny p^T F p (a near-null direction of an
        # ill-conditioned F) can push x past float64's range: stop there.
        with np.errstate(over="ignore", invalid="ignore"):
            x_new = x + (rr / pFp) * p
        Fx = apply(x_new, k + 1) if np.all(np.isfinite(x_new)) else None
        if Fx is None:
            nonfinite = True
            break
        x = x_new
        k += 1
        r = b_flat - Fx
        rr_new = float(r @ r)
        norms.append(math.sqrt(rr_new))
        converged = norms[-1] <= tol
        if converged:
            break
        with np.errstate(over="ignore", invalid="ignore"):
            p = r + (rr_new / rr) * p
        if not np.all(np.isfinite(p)):
            nonfinite = True
            break
        rr = rr_new
    return CGResult(x=x.reshape(shape), residual_norms=tuple(norms), iterations=k,
                    converged=bool(converged), nonpositive_curvature=nonpositive, nonfinite=nonfinite,
                    curvatures=tuple(curvatures), tolerance=tol)


# -- step size ---------------------------------------------------------------------

def max_step_size(direction, fvp_or_shs, max_kl: float, *, damping: float = 0.0) -> float:
    r"""Largest step along s allowed by the quadratic model of the mean KL.

    .. math::
        \beta = \sqrt{\frac{2\delta}{s^\top (F + \lambda I) s}},
        \qquad \tfrac12 (\beta s)^\top (F + \lambda I)(\beta s) = \delta

    ([Schulman2015] Appendix C), with :math:`\delta` = `max_kl` and
    :math:`\lambda` = `damping`.

    Parameters
    ----------
    direction : array_like
        The search direction s (usually the CG solution); finite.
    fvp_or_shs : callable or float
        Either ``fvp(v) -> F v`` (for v of s's shape) or the number
        :math:`s^\top F s` itself.
    max_kl : float
        :math:`\delta > 0`.
    damping : float, default 0
        :math:`\lambda \ge 0`, added as :math:`\lambda s^\top s`.

    Returns
    -------
    float
        beta > 0.

    Raises
    ------
    NonPositiveCurvatureError
        If :math:`s^\top(F + \lambda I)s \le 0` (e.g. s = 0, or s in the null
        space of F without damping): no finite step reaches the KL boundary,
        and the square root of a negative number is never taken. Also if it
        is positive but so small (subnormal) that beta overflows.
    refpg.errors.InvalidInputError
        On max_kl <= 0, damping < 0, or a non-finite input.
    """
    s = as_float_array(direction, "direction")
    max_kl = check_real(max_kl, "max_kl", low=0.0, low_open=True)
    damping = check_real(damping, "damping", low=0.0)
    if callable(fvp_or_shs):
        quad, beta, _ = _scaled_step(s, fvp_or_shs, max_kl, damping)
    elif isinstance(fvp_or_shs, numbers.Real) and not isinstance(fvp_or_shs, bool):
        shs = check_real(fvp_or_shs, "fvp_or_shs")
        # damping = 0 adds nothing, even where s^T s overflows to inf.
        quad = shs + damping * float(s.ravel() @ s.ravel()) if damping > 0 else shs
        beta = math.sqrt(2.0 * max_kl / quad) if quad > 0.0 else None
        if beta is not None and not math.isfinite(beta):
            beta = None
    else:
        raise InvalidInputError(
            "fvp_or_shs should be a callable v -> F v or the number s^T F s, "
            f"actual {type(fvp_or_shs).__name__}")
    if beta is None:
        why = ("the step would overflow float64" if quad > 0.0 else
               "no trust-region step exists along this direction")
        raise NonPositiveCurvatureError(
            f"s^T (F + damping I) s should be > 0, actual {quad!r} (damping = {damping!r}); {why}")
    return beta


def _scaled_step(s, fvp, max_kl, damping):
    r"""(quad, beta, full_step) with quad = :math:`s^\top(F+\lambda I)s`.

    Computed on u = s / max|s| so that a huge s (CG along a near-null
    direction of F) does not overflow: full_step = sqrt(2 delta / u^T(F+lam I)u) u.
    beta and full_step are None when the quadratic form is not positive, or
    so small that the step is not finite.
    """
    m = float(np.abs(s).max(initial=0.0))
    if m == 0.0:
        return 0.0, None, None
    u = s / m
    with np.errstate(over="ignore", invalid="ignore"):
        Fu = np.asarray(fvp(u), dtype=np.float64)
    if Fu.shape != s.shape:
        raise ShapeError(f"fvp(v) should have shape {s.shape} (that of direction), actual {Fu.shape}")
    q = float(u.ravel() @ Fu.ravel()) + damping * float(u.ravel() @ u.ravel())
    quad = q * m * m if math.isfinite(q) else q
    if not (q > 0.0 and math.isfinite(q)):
        return quad, None, None
    c = math.sqrt(2.0 * max_kl / q)
    if not math.isfinite(c):
        # q is subnormal: the model's KL boundary lies beyond float64's range.
        return quad, None, None
    return quad, c / m, c * u


# -- line search -------------------------------------------------------------------

class LineSearchTry(NamedTuple):
    """One candidate of `backtracking_line_search`."""

    fraction: float
    """c^k: the candidate is theta_old + fraction * full_step."""
    improvement: float
    """objective(candidate) - objective(theta_old)."""
    kl: float
    """KL(theta_old -> candidate) as measured by kl_fn."""
    accepted: bool


class LineSearchResult(NamedTuple):
    """Outcome of `backtracking_line_search`."""

    theta: np.ndarray
    """The accepted candidate, or theta_old itself (same values, float64) if none was."""
    accepted: bool
    fraction: float
    """Accepted fraction of the full step; 0.0 if none was accepted."""
    improvement: float
    """Improvement of the returned theta; 0.0 if none was accepted (it is theta_old)."""
    kl: float
    """KL of the returned theta; 0.0 if none was accepted."""
    trace: tuple
    """Every `LineSearchTry`, in order."""


def backtracking_line_search(theta_old, full_step, surrogate_fn: Callable[[np.ndarray], float],
                             kl_fn: Callable[[np.ndarray], float], max_kl: float, *,
                             shrink: float = 0.5, max_backtracks: int = 10) -> LineSearchResult:
    r"""TRPO's backtracking line search ([Schulman2015] Appendix C).

    Tries :math:`\theta_k = \theta_{old} + c^k \Delta`, k = 0, 1, ...,
    `max_backtracks`, with c = `shrink` and :math:`\Delta` = `full_step`,
    and accepts the first with

    .. math::
        L(\theta_k) - L(\theta_{old}) > 0 \quad\text{and}\quad
        \overline{D}_{KL}(\theta_{old}, \theta_k) \le \delta.

    Parameters
    ----------
    theta_old, full_step : array_like, same shape
        Finite.
    surrogate_fn : callable
        ``surrogate_fn(theta) -> float``, the objective L; its improvement is
        ``surrogate_fn(theta) - surrogate_fn(theta_old)``.
    kl_fn : callable
        ``kl_fn(theta) -> float``, the KL constraint's value at theta.
    max_kl : float
        :math:`\delta > 0`.
    shrink : float, default 0.5
        c in (0, 1).
    max_backtracks : int, default 10
        Number of shrinkings, >= 0; max_backtracks + 1 candidates in all.

    Returns
    -------
    LineSearchResult
        If no candidate is accepted, ``theta`` holds exactly the values of
        theta_old (a float64 copy: equal bit for bit), with improvement and
        KL 0.

    Raises
    ------
    refpg.errors.InvalidInputError
        On bad arguments (named in the message).

    Notes
    -----
    Improvement must be *strict*: a candidate that only ties the objective
    is no evidence of progress (at a stationary point every candidate ties
    up to round-off), and strictness makes every accepted step of
    ``trpo_step(..., line_search_objective="true_J")`` raise J. A NaN
    objective or KL is never accepted (both comparisons are False).
    Schulman's modular_rl additionally demands improvement above a fraction
    of the linear prediction; baselines accepts improvement >= 0 and
    KL <= 1.5 delta; this search is the paper's, stated above.

    References
    ----------
    [Schulman2015] Appendix C.
    """
    theta_old = as_float_array(theta_old, "theta_old")
    full_step = as_float_array(full_step, "full_step", shape=theta_old.shape)
    for fn, name in ((surrogate_fn, "surrogate_fn"), (kl_fn, "kl_fn")):
        if not callable(fn):
            raise InvalidInputError(f"{name} should be a callable theta -> float, actual {type(fn).__name__}")
    max_kl = check_real(max_kl, "max_kl", low=0.0, low_open=True)
    shrink = check_real(shrink, "shrink", low=0.0, high=1.0, low_open=True, high_open=True)
    max_backtracks = check_positive_int(max_backtracks, "max_backtracks", minimum=0)

    L_old = float(surrogate_fn(theta_old))
    trace = []
    for k in range(max_backtracks + 1):
        fraction = shrink ** k
        theta = theta_old + fraction * full_step
        improvement = float(surrogate_fn(theta)) - L_old
        kl = float(kl_fn(theta))
        ok = bool(improvement > 0.0 and kl <= max_kl)
        trace.append(LineSearchTry(fraction=fraction, improvement=improvement, kl=kl, accepted=ok))
        if ok:
            return LineSearchResult(theta=theta, accepted=True, fraction=fraction,
                                    improvement=improvement, kl=kl, trace=tuple(trace))
    return LineSearchResult(theta=theta_old.copy(), accepted=False, fraction=0.0, improvement=0.0,
                            kl=0.0, trace=tuple(trace))


# -- one TRPO step ----------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class TRPOResult:
    r"""Every intermediate quantity of one `trpo_step`.

    Attributes
    ----------
    theta : ndarray
        New parameters; exactly theta_old (bit for bit) when not `accepted`.
    theta_old : ndarray
        The parameters the step started from (float64).
    gradient : ndarray
        g: the exact policy gradient (exact mode) or its batch estimate, the
        batch surrogate's gradient
        :math:`\frac HM\sum_i \hat A_i \nabla\log\pi(a_i|s_i)`, H = 1/(1-gamma) (sampled).
    direction : ndarray
        s = the CG solution of :math:`(F + \lambda I) s = g`.
    cg : CGResult
    beta : float
        :math:`\sqrt{2\delta / s^\top(F+\lambda I)s}`; 0.0 when that quadratic
        form is not positive (then no step is tried, `line_search` is empty).
    full_step : ndarray
        beta * s, computed as :math:`\sqrt{2\delta/u^\top(F+\lambda I)u}\,u` with
        u = s / max|s|, so that a huge s (CG along a near-null direction of an
        ill-conditioned F) cannot overflow.
    step_fraction : float
        The accepted fraction of the full step, 0.0 if none.
    kl : float
        Mean KL(pi_old || pi_theta): under d^{pi_old} (exact mode) or over the
        batch's states (sampled mode); 0.0 if no step was accepted.
    surrogate_improvement : float
        :math:`L(\theta) - L(\theta_{old})` of the returned theta (exact or
        batch surrogate; reported even when the line search tested true J).
    accepted : bool
    line_search : tuple of LineSearchTry
        Every candidate tried, with the improvement of the objective the
        line search tested (surrogate or true J).
    J_before, J_after : float
        Exact J(theta_old), J(theta). Computed in both modes: refpg knows the
        MDP, so sampled mode reports the true progress too (its update never
        uses these numbers).
    mode : str
    data : SampledData or None
        The batch of sampled mode (collected, or the one passed in); None in
        exact mode, which uses no samples.
    """

    theta: np.ndarray
    theta_old: np.ndarray
    gradient: np.ndarray
    direction: np.ndarray
    cg: CGResult
    beta: float
    full_step: np.ndarray
    step_fraction: float
    kl: float
    surrogate_improvement: float
    accepted: bool
    line_search: tuple
    J_before: float
    J_after: float
    mode: str
    data: SampledData | None


def _check_objective(objective, mode):
    check_choice(objective, "line_search_objective", LINE_SEARCH_OBJECTIVES)
    if objective == "true_J" and mode != "exact":
        raise InvalidInputError(
            "line_search_objective='true_J' needs mode='exact' (the true J is not available "
            f"from samples), actual mode={mode!r}")
    return objective


def trpo_step(mdp, policy, theta, *, max_kl: float = 0.01, mode: str = "exact", cg_iters: int = 10,
              cg_rtol: float = 1e-10, damping: float = 0.0, shrink: float = 0.5,
              max_backtracks: int = 10, line_search_objective: str = "surrogate",
              fisher: str = "kl_hessian", rng=None, sample_config: SampleConfig | None = None,
              data: SampledData | None = None) -> TRPOResult:
    r"""One TRPO update ([Schulman2015] Eq. 12 solved as in Appendix C).

    .. math::
        \max_\theta\ L_{\theta_{old}}(\theta)\quad \text{s.t.}\quad
        \overline{D}_{KL}(\theta_{old}, \theta) \le \delta:\qquad
        s = \mathrm{CG}(F + \lambda I,\ g),\quad
        \theta = \theta_{old} + c^k \sqrt{\tfrac{2\delta}{s^\top (F+\lambda I) s}}\; s

    with k the first backtrack whose candidate passes
    `backtracking_line_search`.

    Parameters
    ----------
    mdp : TabularMDP or refpg.lqr.LQRSystem
    policy : TabularSoftmax or LogLinear; refpg.lqr.LinearGaussian on an LQRSystem
    theta : ndarray of shape ``policy.theta_shape``
        theta_old (on an LQRSystem, a stabilising gain).
    max_kl : float, default 0.01
        :math:`\delta > 0`.
    mode : {"exact", "sampled"}
        Exact: g = `refpg.policy_gradient`, F = exact Fisher under
        :math:`d^{\pi_{old}}`, L = `refpg.surrogate`, KL = mean KL under
        :math:`d^{\pi_{old}}` (`refpg.kl_divergence`). On an LQR system the
        four are the closed forms of `refpg.lqr` (`refpg.lqr.policy_gradient`,
        `refpg.lqr.fisher_vector_product`, `refpg.lqr.surrogate`,
        `refpg.lqr.kl_divergence`), so the line search tests the exact
        surrogate or J and the exact KL; a candidate gain that does not
        stabilise the system has J = -inf and is never accepted under
        "true_J". Sampled: the batch estimates of the same four (Notes).
    cg_iters : int, default 10
        `conjugate_gradient`'s max_iter.
    cg_rtol : float, default 1e-10
        `conjugate_gradient`'s rtol.
    damping : float, default 0
        :math:`\lambda \ge 0` added to F in CG and in the step size.
    shrink, max_backtracks
        As in `backtracking_line_search`.
    line_search_objective : {"surrogate", "true_J"}
        What the line search must improve. "true_J" (exact mode only) tests
        the exact :math:`J(\theta) - J(\theta_{old}) > 0` instead of the
        surrogate, which makes J monotone over iterations.
    fisher : {"kl_hessian", "empirical"}, default "kl_hessian"
        Sampled mode's F: the Hessian of the batch mean KL,
        :math:`\frac1M\sum_i \mathbb{E}_{a\sim\pi_{old}}[\nabla\log\pi\nabla\log\pi^\top](s_i)`
        (the paper's choice, Appendix C.1), or the empirical Fisher of the
        sampled actions, :math:`\frac1M\sum_i\nabla\log\pi(a_i|s_i)\nabla\log\pi(a_i|s_i)^\top`
        (`refpg.empirical_fisher_vector_product`). Ignored in exact mode.
    rng : numpy.random.Generator, optional
        Sampled mode: draws the batch (required unless `data` is given).
    sample_config : SampleConfig, optional
        Sampled mode: how to collect the batch (default ``SampleConfig()``).
    data : SampledData, optional
        Sampled mode: a batch already collected under theta, instead of rng.

    Returns
    -------
    TRPOResult

    Raises
    ------
    refpg.errors.InvalidInputError
        On any bad argument (named in the message); also for sampled-mode
        arguments in exact mode, "true_J" in sampled mode, sampled mode
        without rng or data, and data not collected under theta.

    Notes
    -----
    Sampled mode, with the batch's M transitions :math:`(s_i, a_i, \hat A_i)`
    (GAE advantages from `refpg.algorithms.collect`) and
    :math:`H = 1/(1-\gamma)` (`refpg.algorithms.common.horizon_estimate`):
    :math:`\hat L(\theta) = \frac HM\sum_i r_i(\theta)\hat A_i`,
    :math:`g = \frac HM\sum_i \hat A_i \nabla\log\pi_{old}(a_i|s_i)`, and the
    mean KL over the batch's states,
    :math:`\frac1M\sum_i D_{KL}(\pi_{old}(\cdot|s_i)\|\pi(\cdot|s_i))`
    (docs/conventions.md). With H, `gradient` and `surrogate_improvement`
    estimate their exact-mode values; libraries omit it, which changes no
    step (the step is normalised by beta and the line search only tests the
    sign of the improvement). The batch's states follow the rollouts'
    visitation, not :math:`d^{\pi_{old}}_\rho`, and never include a
    terminal state, whose mass the exact mean KL counts (docs/conventions.md,
    "MDPs and terminal states"): where the two distributions differ, so do
    the KL constraint and the step.

    If :math:`s^\top (F+\lambda I) s \le 0` (g = 0 at a stationary point, or
    CG stopped on non-positive curvature before its first update), or is so
    small that the full step would overflow float64, no step is tried:
    beta = 0, `line_search` is empty and theta = theta_old.

    References
    ----------
    [Schulman2015] Sections 4-6 and Appendix C.
    """
    mode = check_mode(mode)
    line_search_objective = _check_objective(line_search_objective, mode)
    fisher = check_fisher(fisher)
    max_kl = check_real(max_kl, "max_kl", low=0.0, low_open=True)
    damping = check_real(damping, "damping", low=0.0)
    cg_iters = check_positive_int(cg_iters, "cg_iters")
    cg_rtol = check_real(cg_rtol, "cg_rtol", low=0.0)
    shrink = check_real(shrink, "shrink", low=0.0, high=1.0, low_open=True, high_open=True)
    max_backtracks = check_positive_int(max_backtracks, "max_backtracks", minimum=0)
    check_sampled_arguments(mode, rng, data, sample_config=sample_config)
    check_sample_config(sample_config, data)
    prob = problem(mdp, policy, theta)
    theta_old = prob.theta_old
    if mode == "exact":
        gradient, fvp, surrogate_fn, kl_fn = prob.gradient(), prob.fvp, prob.surrogate, prob.kl
    else:
        data, pieces = prob.sampled(rng, sample_config, data, fisher)
        gradient, fvp, surrogate_fn, kl_fn = pieces.gradient, pieces.fvp, pieces.surrogate, pieces.kl

    def damped(v):
        return fvp(v) + damping * v

    cg = conjugate_gradient(damped, gradient, max_iter=cg_iters, rtol=cg_rtol)
    _, beta, full_step = _scaled_step(cg.x, damped, max_kl, 0.0)
    if beta is not None:
        objective = surrogate_fn if line_search_objective == "surrogate" else prob.J
        ls = backtracking_line_search(theta_old, full_step, objective, kl_fn, max_kl,
                                      shrink=shrink, max_backtracks=max_backtracks)
    else:
        beta, full_step = 0.0, np.zeros_like(cg.x)
        ls = LineSearchResult(theta=theta_old.copy(), accepted=False, fraction=0.0, improvement=0.0,
                              kl=0.0, trace=())
    if line_search_objective == "surrogate":
        improvement = ls.improvement
    else:
        improvement = surrogate_fn(ls.theta) - surrogate_fn(theta_old) if ls.accepted else 0.0
    J_after = prob.J(ls.theta) if ls.accepted else prob.J_old
    return TRPOResult(theta=ls.theta, theta_old=theta_old, gradient=gradient, direction=cg.x, cg=cg,
                      beta=beta, full_step=full_step, step_fraction=ls.fraction, kl=ls.kl,
                      surrogate_improvement=improvement, accepted=ls.accepted, line_search=ls.trace,
                      J_before=prob.J_old, J_after=J_after, mode=mode, data=data)
