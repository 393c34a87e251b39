r"""`check_trpo_step`: one TRPO update of a tabular softmax policy from a batch, against the oracle.

On a batch :math:`\{(s_i, a_i, \hat A_i)\}_{i=1}^n` with :math:`\pi_{old} = \mathrm{softmax}(\theta_{old})`
[Schulman2015], Eqs. (12)-(14), in sample form:

.. math::
    L(\theta) = \frac1n \sum_i \frac{\pi_\theta(a_i|s_i)}{\pi_{old}(a_i|s_i)} \hat A_i, \qquad
    \overline{KL}(\theta) = \frac1n \sum_i KL\big(\pi_{old}(\cdot|s_i) \,\|\, \pi_\theta(\cdot|s_i)\big),

a step must satisfy :math:`\overline{KL}(\theta_{new}) \le \delta` and
:math:`L(\theta_{new}) \ge L(\theta_{old})`, go along the natural gradient
:math:`F^+ \nabla L` (F the Hessian of the mean KL at theta_old, the batch
Fisher matrix), and leave theta_old unchanged when the line search rejects
every step.

Two conventions. ``"refpg"``: ``fn(theta_old, states, actions, advantages, max_kl)
-> theta_new``. ``"closure"``: ``fn(model, get_loss, get_kl, max_kl, damping)``,
the shape of ``trpo_step`` in ikostrikov/pytorch-trpo (Khrylx/PyTorch-RL builds the
same ``get_loss`` inside its ``trpo_step``, tianshou the same quantities inline in
its TRPO policy's ``learn``): the kit
passes a torch ``nn.Module`` whose one parameter ``logits`` is theta_old, a
``get_loss`` that returns :math:`-L(\theta)` on the batch, differentiable
through the module, and a ``get_kl`` that returns the per-sample
:math:`KL(\pi_{old}(\cdot|s_i)\,\|\,\pi_\theta(\cdot|s_i))` with pi_old detached;
the function updates the module in place, and the kit reads ``model.logits``
after the call.
"""

from __future__ import annotations

import functools

import numpy as np
from hypothesis import strategies as st

from refpg._validation import check_choice, check_positive_int, check_real
from refpg.conformance import _cases
from refpg.conformance._harness import (numerics_of_their_own, Outcome, Session, check_callable, check_signature,
                                        resolve_backend)
from refpg.conformance.report import Report
from refpg.errors import InvalidInputError

__all__ = ["check_trpo_step", "TRPO_CONVENTIONS", "line_search_end"]

MAX_KLS = (0.01, 0.1, 0.5)
#: The parameters each convention passes, in order.
_PARAMS = {"refpg": ("theta_old", "states", "actions", "advantages", "max_kl"),
           "closure": ("model", "get_loss", "get_kl", "max_kl", "damping")}
TRPO_CONVENTIONS = tuple(_PARAMS)
#: Cases drawn by each targeted scenario (a full step accepted, a backtracking one, a zero gradient):
#: each draws its region by construction, so a few cases suffice.
TARGETED_EXAMPLES = 10
#: Cases of the scenario where no step is acceptable: each is built so, and they differ only in the
#: number of actions, which one is rare, the other samples and max_kl.
HOPELESS_EXAMPLES = 25
#: Batch sizes a JAX function sees (with theta of shape (2, 3)): a jitted step compiles for two shapes.
JAX_SIZES = (4, 8)
#: Logit gap of the nearly impossible action in the rejection scenario: pi ~ 1e-26 there, so the
#: quadratic model of the KL is off by ~25 orders of magnitude and every step of a line search with
#: up to 30 halvings violates the KL constraint.
RARE_LOGIT = -60.0


# -- the oracle -----------------------------------------------------------------------------

def _softmax(theta):
    z = theta - theta.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def _log_softmax(theta):
    z = theta - theta.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def mean_kl(theta_old, theta, states) -> float:
    lo, ln = _log_softmax(theta_old)[states], _log_softmax(theta)[states]
    return float(np.mean(np.sum(np.exp(lo) * (lo - ln), axis=1)))


def surrogate(theta_old, theta, states, actions, adv) -> float:
    ratio = np.exp(_log_softmax(theta)[states, actions] - _log_softmax(theta_old)[states, actions])
    return float(np.mean(ratio * adv))


def natural_direction(theta_old, states, actions, adv, damping=0.0):
    """(F + damping I)^+ g on the batch: (direction (S, A), g (S, A), F (SA, SA))."""
    S, A = theta_old.shape
    pi = _softmax(theta_old)
    n = states.size
    g = np.zeros((S, A))
    F = np.zeros((S * A, S * A))
    for s, a, w in zip(states, actions, adv):
        score = -pi[s].copy()
        score[a] += 1.0
        g[s] += w * score / n  # d ratio / d theta at theta_old is the score
        block = np.diag(pi[s]) - np.outer(pi[s], pi[s])
        F[s * A:(s + 1) * A, s * A:(s + 1) * A] += block / n
    M = F + damping * np.eye(S * A)
    d = (np.linalg.pinv(M, rcond=1e-12, hermitian=True) @ g.ravel()).reshape(S, A)
    return d, g, F


def oracle_accepts(theta_old, states, actions, adv, max_kl, damping=0.0, halvings=10) -> bool:
    """Whether the reference line search (10 halvings of the full natural step) accepts a step."""
    d, g, F = natural_direction(theta_old, states, actions, adv, damping)
    shs = float(d.ravel() @ F @ d.ravel())
    if shs <= 0 or not np.any(g):
        return False
    full = np.sqrt(2 * max_kl / shs) * d
    base = surrogate(theta_old, theta_old, states, actions, adv)
    for k in range(halvings):
        th = theta_old + 0.5 ** k * full
        if mean_kl(theta_old, th, states) <= max_kl and surrogate(theta_old, th, states, actions, adv) > base:
            return True
    return False


def line_search_end(theta_old, states, actions, adv, max_kl) -> str:
    r"""How a conjugate-gradient TRPO step's line search ends on a batch: "zero gradient", "full step"
    (accepted), "backtracked" (a halving of it accepted) or "rejected".

    The step of `refpg.examples.correct.trpo_step_numpy`: CG from 0 on the exact batch Fisher, the
    full step :math:`\sqrt{2\delta / s^\top F s}\, s`, then 10 halvings, each accepted when the mean KL
    is at most max_kl and the surrogate improves. The targeted scenarios are built to end one way each.
    """
    S, A = theta_old.shape
    states, actions = np.asarray(states, dtype=int), np.asarray(actions, dtype=int)
    n = states.size
    logp_old = _log_softmax(theta_old)
    pi_old = np.exp(logp_old)
    weight = np.bincount(states, minlength=S) / n
    g = np.zeros((S, A))
    np.add.at(g, (states, actions), adv)
    np.add.at(g, states, -adv[:, None] * pi_old[states])
    g /= n
    if not np.any(g):
        return "zero gradient"

    def fvp(v):
        return weight[:, None] * pi_old * (v - np.sum(pi_old * v, axis=1, keepdims=True))

    x, r, p = np.zeros_like(g), g.copy(), g.copy()
    rr = float(np.sum(r * r))
    for _ in range(g.size):
        Fp = fvp(p)
        pFp = float(np.sum(p * Fp))
        if rr <= 1e-20 * float(np.sum(g * g)) or not pFp > 0:
            break
        alpha = rr / pFp
        x, r = x + alpha * p, r - alpha * Fp
        rr_new = float(np.sum(r * r))
        p, rr = r + (rr_new / rr) * p, rr_new
    curvature = float(np.sum(x * fvp(x)))
    if not curvature > 0:
        return "rejected"
    full = np.sqrt(2 * max_kl / curvature) * x
    base = surrogate(theta_old, theta_old, states, actions, adv)
    for k in range(11):
        theta = theta_old + 0.5 ** k * full
        if mean_kl(theta_old, theta, states) <= max_kl and surrogate(theta_old, theta, states, actions, adv) > base:
            return "full step" if k == 0 else "backtracked"
    return "rejected"


def _centered(x):
    return x - x.mean(axis=1, keepdims=True)


def _damping_hint(step, theta_old, states, actions, adv, damping, min_cosine) -> str:
    """Name a common CG damping under which the step is along the natural gradient, if one is."""
    for other in (0.1, 0.01, 1e-3, 0.0):
        if other == damping:
            continue
        d = _centered(natural_direction(theta_old, states, actions, adv, other)[0])
        if np.linalg.norm(d) > 1e-12:
            cos = float(np.sum(step * d) / (np.linalg.norm(d) * np.linalg.norm(step)))
            if cos >= min_cosine:
                return (f"; the step is along (F + {other:g} I)^+ grad L (cosine {cos:.4f}): if the "
                        f"implementation damps the Fisher matrix, pass damping={other:g}")
    return ""


def _step_size_outcome(theta_old, new, states, actions, adv, max_kl, d, g, F, step_norm, inputs, damping):
    """The step must not be longer than the full step sqrt(2 max_kl / s^T F s) s, and must be the full
    step when every usual acceptance test accepts it (KL within max_kl, improvement at least half
    the linear prediction). s^T F s includes the damping, as in the Hessian-vector products of
    SB3-contrib and Spinning Up."""
    shs = float(d.ravel() @ F @ d.ravel()) + damping * float(d.ravel() @ d.ravel())
    if shs <= 0:
        return None
    full = np.sqrt(2 * max_kl / shs) * d
    full_norm = float(np.linalg.norm(_centered(full)))
    ratio = step_norm / full_norm
    gain = surrogate(theta_old, theta_old + full, states, actions, adv) - surrogate(theta_old, theta_old,
                                                                                   states, actions, adv)
    kl_full = mean_kl(theta_old, theta_old + full, states)
    linear = float(np.sum(g * full))
    clear = kl_full <= max_kl and gain >= 0.5 * linear
    if not (ratio > 1.05 or clear and ratio < 0.95):
        return None
    head = (f"the step's length should be {'that of' if clear else 'at most'} the full step "
            f"sqrt(2 max_kl / s^T F s) s, norm {full_norm:.6g}, actual norm {step_norm:.6g} (ratio {ratio:.3f})")
    passes = (f"the full step passes: its mean KL over the batch's states is {kl_full:.4g} <= max_kl = "
              f"{max_kl:g} and it improves the surrogate by {gain:.4g}, at least half its linear prediction "
              f"{linear:.4g}")
    backtracked = _backtracking_power(ratio) if clear and ratio < 0.95 else None
    if abs(ratio - np.sqrt(0.5)) <= 0.005:
        why = "0.707 means the 2 is missing from sqrt(2 max_kl / s^T F s)"
    elif backtracked is not None:
        why = (f"your line search backtracked although {passes}. The step is {backtracked} of the full step: a "
               f"stricter acceptance test (the max KL over states rather than the mean, a larger required "
               f"improvement) or a search that skips the full step shrinks it")
    else:
        why = "a missing square root or an extra factor" + (f"? ({passes})" if clear else "?")
    return Outcome("trpo_step.step_size", f"{head}; {why}", inputs, expected=theta_old + full, actual=new)


def _backtracking_power(ratio: float) -> str | None:
    """"0.5^2" if `ratio` is, within 1%, a power of a common line-search factor (0.5; 0.8 in Spinning Up
    and SB3-contrib), else None."""
    for factor in (0.5, 0.8):
        k = int(round(np.log(ratio) / np.log(factor)))
        if 1 <= k <= 30 and abs(factor ** k - ratio) <= 0.01 * ratio:
            return f"{factor:g}^{k}"
    return None


# -- cases ----------------------------------------------------------------------------------

_LOGITS = st.one_of(st.integers(-2, 2).map(float), st.floats(-2.0, 2.0))
_MAX_KL_CHOICES = st.sampled_from(MAX_KLS)  # built once, not per case (see _cases)


def _sizes(draw, jax: bool, low: int = 1):
    """(S, A, n) of a general batch; a JAX function sees theta (2, 3) and 4 or 8 samples only."""
    if jax:
        return 2, 3, draw(st.sampled_from(JAX_SIZES))
    return draw(st.integers(1, 3)), draw(st.integers(2, 3)), draw(st.integers(low, 8))


@st.composite
def _batches(draw, jax: bool = False, zero_advantages: bool = False):
    """Any batch; with `zero_advantages` every advantage is 0, so the surrogate's gradient is exactly 0
    (a batch whose rewards all equal their baseline): CG starts from b = 0, where r.r / p.Fp is 0/0."""
    S, A, n = _sizes(draw, jax)
    theta = np.array(draw(st.lists(_LOGITS, min_size=S * A, max_size=S * A))).reshape(S, A)
    states = np.array(draw(st.lists(st.integers(0, S - 1), min_size=n, max_size=n)), dtype=float)
    actions = np.array(draw(st.lists(st.integers(0, A - 1), min_size=n, max_size=n)), dtype=float)
    adv = (np.zeros(n) if zero_advantages else
           np.array(draw(st.lists(_cases.numbers(), min_size=n, max_size=n))))
    return {"theta_old": theta, "states": states, "actions": actions, "advantages": adv,
            "max_kl": draw(_MAX_KL_CHOICES)}


def _one_state(draw, jax: bool, logit, advantaged: float):
    """State 0 holds the batch: action 0, whose logit is `logit` above the others (0), with advantage
    `advantaged`, then 0 to 3 samples of other actions with advantage 0. A JAX function gets A = 3,
    4 samples and an unvisited state 1 of drawn logits (the shapes of `_batches`)."""
    A = 3 if jax else draw(st.integers(2, 3))
    extra = [1 + i % (A - 1) for i in range(3 if jax else draw(st.integers(0, 3)))]
    theta = np.zeros((2 if jax else 1, A))
    theta[0, 0] = logit
    if jax:
        theta[1] = draw(st.lists(_LOGITS, min_size=A, max_size=A))
    actions = np.array([0, *extra], dtype=float)
    adv = np.array([advantaged, *[0.0] * len(extra)])
    return {"theta_old": theta, "states": np.zeros(actions.size), "actions": actions, "advantages": adv,
            "max_kl": draw(_MAX_KL_CHOICES)}


_GAP_UP = st.one_of(st.integers(1, 3).map(float), st.floats(1.0, 3.0))
_GAP_DOWN = st.one_of(st.integers(2, 6).map(float), st.floats(2.0, 6.0))
_POSITIVE = st.sampled_from([1.0, 2.0, 0.5, 4.0])


@st.composite
def _full_step(draw, jax: bool = False):
    """The rewarded action is the likely one (pi_old > 1/2: logit 1 to 3 above the others), so the KL's
    cubic term is negative: the full natural step satisfies the constraint and is accepted."""
    return _one_state(draw, jax, draw(_GAP_UP), draw(_POSITIVE))


@st.composite
def _backtracking(draw, jax: bool = False):
    """The rewarded action is the unlikely one (logit 2 to 6 below the others): the full step, sized by
    the quadratic model to KL = max_kl, has a larger true KL, and the line search must halve it one to
    three times (tests/test_conformance_kl_trpo_conventions.py checks every such case)."""
    return _one_state(draw, jax, -draw(_GAP_DOWN), draw(_POSITIVE))


@st.composite
def _hopeless(draw, jax: bool = False):
    """One state; the only positive advantage is on an action with pi_old ~ e^-60, and every other
    advantage is 0 (or, with two actions, -1): every improving step raises the rare action's logit, whose
    KL the quadratic model underestimates by ~25 orders of magnitude, so no step can pass."""
    A = 3 if jax else draw(st.integers(2, 3))
    rare = draw(st.integers(0, A - 1))
    theta = np.zeros((2 if jax else 1, A))
    theta[0, rare] = RARE_LOGIT
    others = [a for a in range(A) if a != rare]
    extra = draw(st.lists(st.sampled_from(others), min_size=3 if jax else 0, max_size=3))
    actions = np.array([rare, *extra], dtype=float)
    # With three actions, a negative advantage on one of the likely ones would open a feasible step
    # between the two of them; with two, it pushes towards the rare action too.
    adv = np.array([1.0, *draw(st.lists(st.sampled_from([0.0, -1.0] if A == 2 else [0.0]), min_size=len(extra),
                                        max_size=len(extra)))])
    return {"theta_old": theta, "states": np.zeros(actions.size), "actions": actions, "advantages": adv,
            "max_kl": draw(_MAX_KL_CHOICES)}


def _moves(case, jax: bool = False, end: str | None = None):
    """Smaller cases: fewer samples, simpler numbers, a simpler max_kl. For a JAX function the batch
    keeps its shapes (8 samples may become their first 4); with `end`, only cases whose line search
    still ends so (`line_search_end`): shrinking stays in a targeted scenario's region."""
    if end is not None:
        return [c for c in _moves(case, jax) if line_search_end(*_oracle_batch(c)) == end]
    keys = ("states", "actions", "advantages")
    out = _cases.sample_moves(case, keys, {"max_kl": MAX_KLS})
    for (s, a), x in np.ndenumerate(case["theta_old"]):
        for y in _cases.simpler_numbers(float(x)):
            th = case["theta_old"].copy()
            th[s, a] = y
            out.append({**case, "theta_old": th})
    if not jax:
        return out
    n = case["states"].size
    return ([{**case, **{k: case[k][:m] for k in keys}} for m in JAX_SIZES if m < n]
            + [c for c in out if c["states"].size == n])


def _oracle_batch(case) -> tuple:
    return (case["theta_old"], case["states"].astype(int), case["actions"].astype(int), case["advantages"],
            case["max_kl"])


# -- the check ------------------------------------------------------------------------------

@numerics_of_their_own
def check_trpo_step(fn, *, convention: str = "refpg", backend: str = "auto", dtype: str = "float64",
                    max_examples: int = 100, seed: int = 0, damping: float = 0.0,
                    min_cosine: float = 0.99) -> Report:
    r"""Check one TRPO step for a tabular softmax policy on Hypothesis-drawn batches.

    Parameters
    ----------
    fn : callable
        Convention ``"refpg"``: ``fn(theta_old, states, actions, advantages,
        max_kl) -> theta_new``, theta of shape (S, A) (logits of
        :math:`\pi = \mathrm{softmax}(\theta)` per state), states and actions
        int64 (n,), advantages (n,).
        Convention ``"closure"``: ``fn(model, get_loss, get_kl, max_kl, damping)``
        as ikostrikov/pytorch-trpo's ``trpo_step``; its return value is ignored
        (pytorch-trpo returns the loss, Khrylx/PyTorch-RL a success flag), the
        new theta is ``model.logits`` after the call. See Notes.
    convention : {"refpg", "closure"}
    backend, dtype, max_examples, seed
        As in `check_gae`. "closure" runs on torch only. With backend="jax"
        ("refpg"), every case has theta of shape (2, 3) and 4 or 8 samples, and
        shrinking keeps those shapes: a jitted step compiles twice.
    damping : float >= 0
        The damping the implementation adds to the Fisher matrix (SB3-contrib's
        ``cg_damping``, pytorch-trpo's ``damping``); the oracle's direction is
        :math:`(F + \text{damping}\,I)^+ \nabla L`. Convention "closure"
        passes it to the function.
    min_cosine : float in (0, 1]
        Least cosine between the step and the oracle's direction, after
        removing each state's mean (a per-state constant does not change a
        softmax policy).

    Returns
    -------
    Report
        ``trpo_step.kl_constraint`` (mean KL over the batch's states <=
        max_kl), ``trpo_step.surrogate_improvement`` (L(theta_new) >=
        L(theta_old)), ``trpo_step.direction`` (the step is along the natural
        gradient, is not rejected when the reference line search accepts, and
        is zero when the gradient is), ``trpo_step.step_size`` (never longer than the full step
        :math:`\sqrt{2\delta / s^T F s}\, s`, and equal to it when that step
        clearly passes the line search), ``trpo_step.unvisited_states_unchanged``
        (states not in the batch keep their policy),
        ``trpo_step.restores_theta_on_reject`` (when no step can satisfy the
        constraint, theta_old comes back unchanged), for "closure"
        ``trpo_step.model_updated_in_place`` (the new parameters are in the
        model, not only returned), plus the generic ids.

    Notes
    -----
    Besides general batches, three scenarios draw by construction the cases
    that decide a line search: a batch whose full natural step is accepted,
    one whose full step violates the KL constraint so that the search must
    backtrack, and one whose advantages are all 0 (a zero gradient, where an
    unguarded conjugate gradient computes 0/0); a fourth has no acceptable
    step at all (theta must come back unchanged).

    Convention "closure" passes ``model``, a ``torch.nn.Module`` with one
    parameter ``logits`` = theta_old, shape (S, A), whose ``forward(states)``
    returns :math:`\log\pi(\cdot|s)` rows; ``get_loss(*args, **kwargs)``
    returning :math:`-\frac1n\sum_i e^{\log\pi(a_i|s_i) - \log\pi_{old}(a_i|s_i)} A_i`
    at the model's current parameters, without a graph when called as
    ``get_loss(True)`` or ``get_loss(volatile=True)`` (pytorch-trpo's line
    search calls ``f(True)``); ``get_kl(*args, **kwargs)`` returning the n
    per-sample :math:`KL(\pi_{old}(\cdot|s_i)\,\|\,\pi(\cdot|s_i))` with
    pi_old fixed, so that ``get_kl().mean()`` is the mean KL and its Hessian
    the Fisher matrix; `max_kl`; and `damping`. Every counterexample lists
    these and how often the function called each closure. A function that
    leaves the model unchanged but returns different parameters of the
    model's size fails ``trpo_step.model_updated_in_place`` and the
    returned parameters are judged by the other checks.
    """
    check_callable(fn)
    check_choice(convention, "convention", TRPO_CONVENTIONS)
    max_examples = check_positive_int(max_examples, "max_examples")
    seed = check_positive_int(seed, "seed", minimum=0)
    damping = check_real(damping, "damping")
    min_cosine = check_real(min_cosine, "min_cosine")
    if damping < 0:
        raise InvalidInputError(f"damping should be >= 0, actual {damping!r}")
    if not 0 < min_cosine <= 1:
        raise InvalidInputError(f"min_cosine should be in (0, 1], actual {min_cosine!r}")
    if convention == "closure" and backend not in ("auto", "torch"):
        raise InvalidInputError(f"backend should be 'torch' or 'auto' for convention 'closure' (the kit passes "
                                f"a torch nn.Module and torch closures), actual {backend!r}")
    named = check_signature(fn, "trpo_step", convention, _PARAMS)
    opts = dict(damping=damping, min_cosine=min_cosine)

    def args_of(case, be):
        return [("theta_old", be.round(case["theta_old"])), ("states", case["states"].astype(np.int64)),
                ("actions", case["actions"].astype(np.int64)), ("advantages", be.round(case["advantages"])),
                ("max_kl", case["max_kl"])]

    def probe(be):
        s = Session("trpo_step", fn, convention, be, max_examples=1, seed=seed, options=opts)
        return s.call(args_of({"theta_old": np.zeros((1, 2)), "states": np.zeros(2), "actions": np.array([0., 1.]),
                               "advantages": np.array([1.0, -1.0]), "max_kl": 0.01}, be))

    be, warn0 = resolve_backend(fn, "torch" if convention == "closure" else backend, dtype, probe)
    session = Session("trpo_step", fn, convention, be, max_examples=max_examples, seed=seed, options=opts,
                      warnings=named + warn0)
    jax = be.name == "jax"

    def run(case):
        """(theta_new as float64 or None, outcomes, inputs, the batch as the oracle reads it)."""
        args = args_of(case, be)
        batch = tuple(a for _, a in args)
        theta_old = batch[0]
        if convention == "closure":
            new, outcomes, inputs = _run_closure(session, batch, damping)
            return new, outcomes, inputs, batch
        inputs = dict(args)
        inputs["pi_old (derived)"] = _softmax(theta_old)
        call = session.call(args)
        outcomes = session.generic_outcomes(call, inputs)
        if call.error is not None:
            return None, outcomes, inputs, batch
        new, more = session.output_array(call.output, "theta_new", theta_old.shape, inputs)
        return new, outcomes + more, inputs, batch

    def evaluate(case):
        new, outcomes, inputs, batch = run(case)
        if new is None:
            return outcomes
        theta_old, states, actions, adv, max_kl = batch
        session.ran("trpo_step.kl_constraint", "trpo_step.surrogate_improvement",
                    "trpo_step.unvisited_states_unchanged")
        kl = mean_kl(theta_old, new, states)
        tol = be.tol
        if kl > max_kl * (1 + tol) + tol:
            outcomes.append(Outcome("trpo_step.kl_constraint",
                                    f"the mean KL(pi_old || pi_new) over the batch's states should be <= "
                                    f"max_kl = {max_kl:g}, actual {kl:.6g}; "
                                    + ("KL(pi_new || pi_old) is within max_kl: is the KL's direction reversed? "
                                       "TRPO constrains KL(pi_old || pi_new)"
                                       if mean_kl(new, theta_old, states) <= max_kl else
                                       "a line search must test the actual KL of each candidate, not only the "
                                       "quadratic model"),
                                    inputs, expected=f"<= {max_kl:g}", actual=new))
        base = surrogate(theta_old, theta_old, states, actions, adv)
        gain = surrogate(theta_old, new, states, actions, adv) - base
        scale = float(np.mean(np.abs(adv))) if adv.size else 0.0
        if gain < -tol * (1 + scale):
            outcomes.append(Outcome("trpo_step.surrogate_improvement",
                                    f"the surrogate L(theta_new) - L(theta_old) should be >= 0, actual "
                                    f"{gain:.6g} (L(theta_old) = {base:.6g}); is the step's sign right?",
                                    inputs, expected=">= 0", actual=new))
        step = _centered(new - theta_old)
        scale = tol * (1 + np.abs(theta_old).max())
        unvisited = np.setdiff1d(np.arange(theta_old.shape[0]), states)
        moved = [int(u) for u in unvisited if np.abs(step[u]).max() > scale]
        if moved:
            outcomes.append(Outcome("trpo_step.unvisited_states_unchanged",
                                    f"pi at states not in the batch should not change (the natural gradient is 0 "
                                    f"there), actual theta_new[{moved[0]}] - theta_old[{moved[0]}] = "
                                    f"{np.array2string(new[moved[0]] - theta_old[moved[0]], precision=4)} "
                                    f"(weight decay, or a step applied to every row?)",
                                    inputs, expected=theta_old, actual=new, where=(moved[0],)))
        d_raw, g, F = natural_direction(theta_old, states, actions, adv, damping)
        d = _centered(d_raw)
        nd, ns = np.linalg.norm(d), np.linalg.norm(step)
        if nd > 1e-12 and ns > scale:
            session.ran("trpo_step.direction")
            cos = float(np.sum(step * d) / (nd * ns))
            if cos < min_cosine:
                outcomes.append(Outcome("trpo_step.direction",
                                        f"the step theta_new - theta_old should be along the natural gradient "
                                        f"(F + {damping:g} I)^+ grad L (cosine >= {min_cosine:g} after removing "
                                        f"each state's mean), actual cosine {cos:.4f}"
                                        + _damping_hint(step, theta_old, states, actions, adv, damping, min_cosine),
                                        inputs, expected=theta_old + d * (ns / nd), actual=new))
            else:
                session.ran("trpo_step.step_size")
                o = _step_size_outcome(theta_old, new, states, actions, adv, max_kl, d_raw, g, F, ns, inputs,
                                       damping)
                if o is not None:
                    outcomes.append(o)
        elif not np.any(g) and ns > scale:
            session.ran("trpo_step.direction")
            outcomes.append(Outcome("trpo_step.direction",
                                    f"with a zero surrogate gradient (every advantage is 0 here) the step should "
                                    f"be zero, F^+ 0 = 0, actual a step of norm {ns:.4g} after removing each "
                                    f"state's mean", inputs, expected=theta_old, actual=new))
        elif nd > 1e-12 and oracle_accepts(theta_old, states, actions, adv, max_kl, damping):
            session.ran("trpo_step.direction")
            outcomes.append(Outcome("trpo_step.direction",
                                    "the step should move theta along the natural gradient (the reference "
                                    "line search accepts one of its first 10 halvings), actual theta_new = "
                                    "theta_old", inputs, expected=theta_old + d, actual=new))
        return outcomes

    def evaluate_reject(case):
        new, outcomes, inputs, batch = run(case)
        if new is None:
            return outcomes
        theta_old, states, actions, adv, max_kl = batch
        session.ran("trpo_step.restores_theta_on_reject")
        kl = mean_kl(theta_old, new, states)
        gain = surrogate(theta_old, new, states, actions, adv) - surrogate(theta_old, theta_old, states,
                                                                            actions, adv)
        acceptable = kl <= max_kl * (1 + be.tol) + be.tol and gain >= 0
        if not acceptable and not np.array_equal(new, theta_old):
            outcomes.append(Outcome("trpo_step.restores_theta_on_reject",
                                    f"when every step of the line search is rejected, theta_new should be "
                                    f"theta_old unchanged; actual a theta with mean KL {kl:.4g} > max_kl = "
                                    f"{max_kl:g} (pi_old of the action with A > 0 is ~1e-26, so the quadratic "
                                    f"model of the KL is useless and no halving of the full step satisfies the "
                                    f"constraint)", inputs, expected=theta_old, actual=new))
        return outcomes

    session.declare(*session.generic_ids())
    session.declare("trpo_step.kl_constraint", "trpo_step.surrogate_improvement", "trpo_step.direction",
                    "trpo_step.step_size", "trpo_step.unvisited_states_unchanged", tracked=True)
    if convention == "closure":
        session.declare("trpo_step.model_updated_in_place", tracked=True)
    moves = functools.partial(_moves, jax=jax)
    session.run_scenario(_batches(jax), evaluate, moves=moves)
    targeted = min(max_examples, TARGETED_EXAMPLES)
    for strategy, end in ((_full_step(jax), "full step"), (_backtracking(jax), "backtracked"),
                          (_batches(jax, zero_advantages=True), "zero gradient")):
        session.run_scenario(strategy, evaluate, max_examples=targeted,
                             moves=functools.partial(_moves, jax=jax, end=end))
    if "trpo_step.direction" in session.evaluated:
        session.not_run_because("trpo_step.step_size", "the step's length is judged only on steps along the "
                                                       "natural gradient, and no step was (see trpo_step.direction)")
    session.run_scenario(_hopeless(jax), evaluate_reject, ("trpo_step.restores_theta_on_reject",),
                         max_examples=min(max_examples, HOPELESS_EXAMPLES),
                         moves=lambda c: [{**c, "max_kl": v} for v in _cases.simpler_choices(c["max_kl"], MAX_KLS)])
    return session.report()


# -- convention "closure" -------------------------------------------------------------------

_MODULE_CLASS: list = []


def _policy_class():
    """The torch module class the "closure" convention passes (built once, on first use: torch is
    imported only when that convention runs)."""
    if not _MODULE_CLASS:
        import torch

        class TabularSoftmaxPolicy(torch.nn.Module):
            r"""pi(.|s) = softmax(logits[s]); `logits` (S, A) is the kit's theta."""

            def __init__(self, theta):
                super().__init__()
                self.logits = torch.nn.Parameter(theta)

            def forward(self, states):
                return torch.log_softmax(self.logits, dim=1)[states]

        _MODULE_CLASS.append(TabularSoftmaxPolicy)
    return _MODULE_CLASS[0]


def _closures(theta_old, states, actions, adv, torch_dtype):
    """(model, get_loss, get_kl, a record of their calls) for one batch."""
    import contextlib

    import torch

    model = _policy_class()(torch.tensor(theta_old, dtype=torch_dtype))
    s = torch.as_tensor(states)
    a = torch.as_tensor(actions)
    A = torch.as_tensor(adv, dtype=torch_dtype)
    logp_old = torch.log_softmax(torch.tensor(theta_old, dtype=torch_dtype), dim=1)[s]  # a constant
    p_old = logp_old.exp()
    calls = {"get_loss": 0, "get_loss without a graph": 0, "get_kl": 0, "arguments": []}

    def note(name, args, kwargs):
        calls[name] += 1
        shown = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())])
        if shown and f"{name}({shown})" not in calls["arguments"]:
            calls["arguments"].append(f"{name}({shown})")

    def get_loss(*args, **kwargs):
        note("get_loss", args, kwargs)
        # pytorch-trpo's line search calls f(True) (volatile: no graph needed); anything else real code
        # passes is accepted and ignored.
        volatile = bool(kwargs.get("volatile", args[0] if args and isinstance(args[0], bool) else False))
        calls["get_loss without a graph"] += volatile
        with torch.no_grad() if volatile else contextlib.nullcontext():
            logp = model(s).gather(1, a[:, None])[:, 0]
            return -(torch.exp(logp - logp_old.gather(1, a[:, None])[:, 0]) * A).mean()

    def get_kl(*args, **kwargs):
        note("get_kl", args, kwargs)
        return (p_old * (logp_old - model(s))).sum(dim=1)

    return model, get_loss, get_kl, calls


#: What the "closure" convention passes, as a counterexample shows it.
_PASSED = {
    "model (passed)": "TabularSoftmaxPolicy(nn.Module): one parameter logits = theta_old, forward(states) = "
                      "log_softmax(logits, dim=1)[states]",
    "get_loss (passed)": "() -> -mean_i exp(log pi(a_i|s_i) - log pi_old(a_i|s_i)) A_i at the model's current "
                         "logits, differentiable through them (no graph for get_loss(True) or volatile=True)",
    "get_kl (passed)": "() -> KL(pi_old(.|s_i) || pi(.|s_i)) per sample, shape (n,), pi_old fixed (detached)",
}


def _run_closure(session, batch, damping):
    """Call fn(model, get_loss, get_kl, max_kl, damping) and read the model's logits after the call:
    (theta_new as float64 or None, outcomes, inputs)."""
    import torch

    be = session.backend
    theta_old, states, actions, adv, max_kl = batch
    torch_dtype = torch.float64 if be.dtype == "float64" else torch.float32
    model, get_loss, get_kl, calls = _closures(theta_old, states, actions, adv, torch_dtype)
    inputs = {"theta_old": theta_old, "states": states, "actions": actions, "advantages": adv, "max_kl": max_kl,
              "damping": damping, **_PASSED, "pi_old (derived)": _softmax(theta_old)}
    call = session.call([("model", model), ("get_loss", get_loss), ("get_kl", get_kl), ("max_kl", max_kl),
                         ("damping", damping)])
    inputs["closure calls (derived)"] = (
        f"get_loss {calls['get_loss']} times ({calls['get_loss without a graph']} without a graph), get_kl "
        f"{calls['get_kl']} times" + (f"; arguments seen: {', '.join(calls['arguments'][:4])}"
                                      if calls["arguments"] else ""))
    outcomes = session.generic_outcomes(call, inputs)
    if call.error is not None:
        return None, outcomes, inputs
    logits = getattr(model, "logits", None)
    if not isinstance(logits, torch.Tensor):
        session.ran("trpo_step.output_dtype")
        return None, outcomes + [Outcome("trpo_step.output_dtype",
                                         f"model.logits should be a tensor after the call, actual "
                                         f"{type(logits).__name__}", inputs)], inputs
    new, more = session.output_array(logits.detach(), "model.logits after the call", theta_old.shape, inputs)
    outcomes += more
    if new is None:
        return None, outcomes, inputs
    session.ran("trpo_step.model_updated_in_place")
    returned = _returned_parameters(call.output, theta_old.shape)
    if returned is not None and np.array_equal(new, theta_old) and not np.array_equal(returned, theta_old):
        outcomes.append(Outcome(
            "trpo_step.model_updated_in_place",
            f"the function should update the model's parameters in place (the closure convention, as "
            f"pytorch-trpo's callers, reads them from the model after the call), actual model unchanged and "
            f"{returned.size} new parameters returned: set them, e.g. torch.nn.utils.vector_to_parameters("
            f"new, model.parameters()); the returned parameters are judged by the other checks",
            inputs, expected="model.logits changed in place", actual=returned))
        new = returned
    return new, outcomes, inputs


def _returned_parameters(out, shape) -> np.ndarray | None:
    """The return value as parameters of `shape`, if it is one tensor or array of that shape or its flat
    form (pytorch-trpo's flat parameter vector); None for anything else (a loss, a flag, a tuple)."""
    import torch

    if isinstance(out, torch.Tensor):
        arr = out.detach().cpu().numpy()
    elif isinstance(out, np.ndarray):
        arr = out
    else:
        return None
    if arr.dtype.kind != "f" or arr.shape not in (tuple(shape), (int(np.prod(shape)),)):
        return None
    return arr.astype(np.float64).reshape(shape)
