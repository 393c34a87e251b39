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
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from refpg._validation import check_choice, check_positive_int, check_real
from refpg.conformance import _cases
from refpg.conformance._harness import (numerics_of_their_own, Outcome, Session, check_callable, check_signature,
                                        resolve_backend)
from refpg.conformance.report import Report
from refpg.errors import InvalidInputError

__all__ = ["check_trpo_step"]

MAX_KLS = (0.01, 0.1, 0.5)
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


@st.composite
def _batches(draw):
    S = draw(st.integers(1, 3))
    A = draw(st.integers(2, 3))
    n = draw(st.integers(1, 8))
    theta = np.array(draw(st.lists(_LOGITS, min_size=S * A, max_size=S * A))).reshape(S, A)
    states = np.array(draw(st.lists(st.integers(0, S - 1), min_size=n, max_size=n)), dtype=float)
    actions = np.array(draw(st.lists(st.integers(0, A - 1), min_size=n, max_size=n)), dtype=float)
    adv = np.array(draw(st.lists(_cases.numbers(), min_size=n, max_size=n)))
    return {"theta_old": theta, "states": states, "actions": actions, "advantages": adv,
            "max_kl": draw(_MAX_KL_CHOICES)}


@st.composite
def _hopeless(draw):
    """One state; the action with positive advantage has pi_old ~ e^-60: no step can pass."""
    A = draw(st.integers(2, 3))
    rare = draw(st.integers(0, A - 1))
    theta = np.zeros((1, A))
    theta[0, rare] = RARE_LOGIT
    others = [a for a in range(A) if a != rare]
    extra = draw(st.lists(st.sampled_from(others), max_size=3))
    actions = np.array([rare, *extra], dtype=float)
    adv = np.array([1.0, *draw(st.lists(st.sampled_from([0.0, -1.0]), min_size=len(extra),
                                        max_size=len(extra)))])
    return {"theta_old": theta, "states": np.zeros(actions.size), "actions": actions, "advantages": adv,
            "max_kl": draw(_MAX_KL_CHOICES)}


def _moves(case):
    out = _cases.sample_moves(case, ("states", "actions", "advantages"), {"max_kl": MAX_KLS})
    for (s, a), x in np.ndenumerate(case["theta_old"]):
        for y in _cases.simpler_numbers(float(x)):
            th = case["theta_old"].copy()
            th[s, a] = y
            out.append({**case, "theta_old": th})
    return out


# -- the check ------------------------------------------------------------------------------

@numerics_of_their_own
def check_trpo_step(fn, *, convention: str = "refpg", backend: str = "auto", dtype: str = "float64",
                    max_examples: int = 100, seed: int = 0, damping: float = 0.0,
                    min_cosine: float = 0.99) -> Report:
    r"""Check one TRPO step for a tabular softmax policy on Hypothesis-drawn batches.

    Parameters
    ----------
    fn : callable
        ``fn(theta_old, states, actions, advantages, max_kl) -> theta_new``,
        theta of shape (S, A) (logits of :math:`\pi = \mathrm{softmax}(\theta)`
        per state), states and actions int64 (n,), advantages (n,).
    convention : {"refpg"}
    backend, dtype, max_examples, seed
        As in `check_gae`.
    damping : float >= 0
        The damping the implementation adds to the Fisher matrix (SB3-contrib's
        ``cg_damping``); the oracle's direction is :math:`(F + \text{damping}\,I)^+ \nabla L`.
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
        gradient, and not rejected when the reference line search accepts),
        ``trpo_step.step_size`` (never longer than the full step
        :math:`\sqrt{2\delta / s^T F s}\, s`, and equal to it when that step
        clearly passes the line search), ``trpo_step.unvisited_states_unchanged``
        (states not in the batch keep their policy),
        ``trpo_step.restores_theta_on_reject`` (when no step can satisfy the
        constraint, theta_old comes back unchanged), plus the generic ids.
    """
    check_callable(fn)
    check_choice(convention, "convention", ("refpg",))
    max_examples = check_positive_int(max_examples, "max_examples")
    seed = check_positive_int(seed, "seed", minimum=0)
    damping = check_real(damping, "damping")
    min_cosine = check_real(min_cosine, "min_cosine")
    if damping < 0:
        raise InvalidInputError(f"damping should be >= 0, actual {damping!r}")
    if not 0 < min_cosine <= 1:
        raise InvalidInputError(f"min_cosine should be in (0, 1], actual {min_cosine!r}")
    named = check_signature(fn, "trpo_step", convention,
                            {"refpg": ("theta_old", "states", "actions", "advantages", "max_kl")})
    opts = dict(damping=damping, min_cosine=min_cosine)

    def args_of(case, be):
        return [("theta_old", be.round(case["theta_old"])), ("states", case["states"].astype(np.int64)),
                ("actions", case["actions"].astype(np.int64)), ("advantages", be.round(case["advantages"])),
                ("max_kl", case["max_kl"])]

    def probe(be):
        s = Session("trpo_step", fn, convention, be, max_examples=1, seed=seed, options=opts)
        return s.call(args_of({"theta_old": np.zeros((1, 2)), "states": np.zeros(2), "actions": np.array([0., 1.]),
                               "advantages": np.array([1.0, -1.0]), "max_kl": 0.01}, be))

    be, warn0 = resolve_backend(fn, backend, dtype, probe)
    session = Session("trpo_step", fn, convention, be, max_examples=max_examples, seed=seed, options=opts,
                      warnings=named + warn0)

    def run(case):
        args = args_of(case, be)
        inputs = dict(args)
        theta_old = args[0][1]
        inputs["pi_old (derived)"] = _softmax(theta_old)
        call = session.call(args)
        outcomes = session.generic_outcomes(call, inputs)
        if call.error is not None:
            return None, outcomes, inputs, args
        new, more = session.output_array(call.output, "theta_new", theta_old.shape, inputs)
        return new, outcomes + more, inputs, args

    def evaluate(case):
        new, outcomes, inputs, args = run(case)
        if new is None:
            return outcomes
        theta_old, states, actions, adv, max_kl = (a for _, a in args)
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
        elif nd > 1e-12 and oracle_accepts(theta_old, states, actions, adv, max_kl, damping):
            session.ran("trpo_step.direction")
            outcomes.append(Outcome("trpo_step.direction",
                                    "the step should move theta along the natural gradient (the reference "
                                    "line search accepts one of its first 10 halvings), actual theta_new = "
                                    "theta_old", inputs, expected=theta_old + d, actual=new))
        return outcomes

    def evaluate_reject(case):
        new, outcomes, inputs, args = run(case)
        if new is None:
            return outcomes
        theta_old, states, actions, adv, max_kl = (a for _, a in args)
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
    session.run_scenario(_batches(), evaluate, moves=_moves)
    if "trpo_step.direction" in session.evaluated:
        session.not_run_because("trpo_step.step_size", "the step's length is judged only on steps along the "
                                                       "natural gradient, and no step was (see trpo_step.direction)")
    session.run_scenario(_hopeless(), evaluate_reject, ("trpo_step.restores_theta_on_reject",),
                         moves=lambda c: [{**c, "max_kl": v} for v in _cases.simpler_choices(c["max_kl"], MAX_KLS)])
    return session.report()
