r"""`check_kl_estimator`: a sample-based estimate of KL(pi_old || pi_new) from actions a ~ pi_old.

With :math:`r = \pi_{new}(a)/\pi_{old}(a)`, the estimators of [Schulman2020] are
:math:`k_1 = -\log r` (unbiased), :math:`k_2 = \tfrac12(\log r)^2` (biased,
>= 0) and :math:`k_3 = (r - 1) - \log r` (unbiased, >= 0). The check tests
what the user declares: unbiasedness statistically on categorical pairs whose
KL is known exactly (docs/conventions.md: declared false-alarm rate, fixed seed),
non-negativity and the zero at equal policies on Hypothesis-drawn inputs.

Two argument orders are in use. PPO code (SB3, CleanRL, TorchRL, rlax) passes
``(logp_new, logp_old)`` and estimates KL(pi_old || pi_new) on actions drawn
from pi_old. RLHF code (TRL's and verl's ``kl_penalty(logprob, ref_logprob)``,
OpenRLHF's ``compute_approx_kl(log_probs, log_probs_base)``) passes the
log-probability under the policy that drew the tokens first and the reference
second, and estimates KL(pi || pi_ref) on tokens drawn from pi: the same
quantity with the arguments the other way round (convention ``"rlhf"``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from hypothesis import strategies as st

from refpg._validation import check_choice, check_positive_int, check_real
from refpg.conformance import _cases
from refpg.conformance._harness import (numerics_of_their_own, BadOutput, Outcome, Session, check_callable,
                                        check_signature, resolve_backend)
from refpg.conformance.report import Report
from refpg.errors import InvalidInputError
from refpg.stats import DEFAULT_ALPHA, mean_test

__all__ = ["check_kl_estimator", "KL_PAIRS", "KL_CONVENTIONS"]

#: (pi_old, pi_new) pairs of the unbiasedness test, simplest first. Ratios stay within [1/7, 7] but in
#: the last pair, whose common action has log r = log(0.02) = -3.9: an estimator that clips the log-ratio
#: or mishandles a large absolute log-ratio is tested where it matters. Every estimator above has a bounded variance
#: on each pair, so the test's normal approximation is sound.
KL_PAIRS = (
    (np.array([0.5, 0.5]), np.array([0.6, 0.4])),
    (np.array([0.5, 0.5]), np.array([0.9, 0.1])),
    (np.array([0.2, 0.3, 0.5]), np.array([0.5, 0.3, 0.2])),
    (np.array([0.7, 0.2, 0.1]), np.array([0.1, 0.2, 0.7])),
    (np.array([0.25, 0.25, 0.25, 0.25]), np.array([0.1, 0.2, 0.3, 0.4])),
    (np.array([0.5, 0.5]), np.array([0.99, 0.01])),
)
SAMPLES_PER_PAIR = 20_000
#: A function that returns the mean of its batch is called on BATCHES batches of BATCH actions, the same
#: SAMPLES_PER_PAIR actions a per-sample estimator gets in one call: the mean of the batch means is the
#: mean of all samples, and their spread estimates its standard error, so Student's t-test on the
#: batch means has the power of the z-test on all samples but for the wider threshold of 399 degrees of
#: freedom (5.33 instead of 5.23 at the default alpha). 400 calls per pair instead of 2,000 batches of 10.
BATCH = 50
BATCHES = SAMPLES_PER_PAIR // BATCH
#: Batch sizes drawn for a JAX function (a jitted one compiles once per input shape), shrinking included.
JAX_SIZES = (1, 2, 4, 8)

#: The parameters each convention passes, in order. The PPO conventions all pass (logp_new, logp_old);
#: "rlhf" passes the sampling policy's log-probability first and the other policy's second.
_PARAMS = {**{c: ("logp_new", "logp_old") for c in ("refpg", "sb3", "cleanrl", "torchrl", "rlax")},
           "rlhf": ("logprob", "ref_logprob")}
KL_CONVENTIONS = tuple(_PARAMS)


class _Terms(NamedTuple):
    """How a convention names the two policies in messages (its own terms, never the kit's)."""

    sampler: str   # the policy the actions are drawn from
    other: str     # the other policy
    new_arg: str   # the argument that holds log pi_new (the kit's other policy)
    old_arg: str   # the argument that holds log pi_old (the kit's sampling policy)

    @property
    def kl(self) -> str:
        return f"KL({self.sampler} || {self.other})"

    @property
    def reverse(self) -> str:
        return f"KL({self.other} || {self.sampler})"

    @property
    def ratio(self) -> str:
        return f"r = {self.other} / {self.sampler}"


_TERMS = {c: _Terms("pi_old", "pi_new", "logp_new", "logp_old") for c in _PARAMS}
_TERMS["rlhf"] = _Terms("pi", "pi_ref", "ref_logprob", "logprob")


def _args(convention: str, new, old) -> list:
    """The (name, value) arguments of one call, in the convention's order."""
    if convention == "rlhf":
        return [("logprob", old), ("ref_logprob", new)]
    return [("logp_new", new), ("logp_old", old)]


def _kl(p, q) -> float:
    return float(np.sum(p * (np.log(p) - np.log(q))))


_LOGP = st.one_of(st.sampled_from([-1.0, -0.5, -2.0, 0.0]), st.floats(-6.0, 0.0))


def _samples(jax: bool, **columns):
    """Equal-length columns; for a JAX function only the sizes of `JAX_SIZES`."""
    if not jax:
        return _cases.samples(**columns)

    @st.composite
    def build(draw):
        n = draw(st.sampled_from(JAX_SIZES))
        return {name: np.array(draw(st.lists(elem, min_size=n, max_size=n)), dtype=np.float64)
                for name, elem in columns.items()}
    return build()


@st.composite
def _signed(draw, jax: bool):
    """Pairs of log-probabilities with, by construction, pi_new > pi_old at sample 0 (where k1 = -log r
    is negative) and pi_new < pi_old by a factor e^3 or more at sample 1 (a large |log r|); the other
    samples are free."""
    n = draw(st.sampled_from(JAX_SIZES[1:]) if jax else st.integers(2, 8))
    new = np.array(draw(st.lists(_LOGP, min_size=n, max_size=n)))
    old = np.array(draw(st.lists(_LOGP, min_size=n, max_size=n)))
    # Sample 0: pi_new > pi_old (the larger of the two drawn values is logp_new).
    hi, lo = max(new[0], old[0]), min(new[0], old[0])
    if hi == lo:
        hi, lo = (hi, hi - 1.0) if hi >= -5.0 else (hi + 1.0, hi)
    new[0], old[0] = hi, lo
    # Sample 1: pi_old / pi_new >= e^3, all within [-6, 0].
    hi, lo = max(new[1], old[1]), min(new[1], old[1])
    if hi - lo < 3.0:
        hi, lo = (hi, hi - 3.0) if hi >= -3.0 else (lo + 3.0, lo)
    new[1], old[1] = lo, hi
    return {"logp_new": new, "logp_old": old}


def _moves(case: dict, keys: tuple, jax: bool) -> list:
    """Smaller cases; for a JAX function a smaller size keeps the first samples, so shrinking visits
    only the sizes of `JAX_SIZES` (no new compilation per dropped sample)."""
    if not jax:
        return _cases.sample_moves(case, keys)
    n = len(case[keys[0]])
    out = [{**case, **{k: case[k][:m] for k in keys}} for m in JAX_SIZES if m < n]
    return out + [c for c in _cases.sample_moves(case, keys) if len(c[keys[0]]) == n]


@numerics_of_their_own
def check_kl_estimator(fn, *, convention: str = "refpg", backend: str = "auto", dtype: str = "float64",
                       max_examples: int = 100, seed: int = 0, unbiased: bool = True,
                       non_negative: bool = False, alpha: float = DEFAULT_ALPHA) -> Report:
    r"""Check an estimator of :math:`KL(\pi_{old}\,\|\,\pi_{new}) = \mathbb E_{a\sim\pi_{old}}[-\log r(a)]`.

    Parameters
    ----------
    fn : callable
        ``fn(logp_new, logp_old) -> estimates``: per-sample estimates of
        shape (n,), or their mean (a scalar), from n actions drawn from
        pi_old. SB3's and CleanRL's ``approx_kl`` return the mean of k3.
    convention : {"refpg", "sb3", "cleanrl", "torchrl", "rlax", "rlhf"}
        The PPO conventions all pass ``(logp_new, logp_old)``. ``"rlhf"``
        passes ``(logprob, ref_logprob)`` as TRL's and verl's ``kl_penalty``
        and OpenRLHF's ``compute_approx_kl`` take them: `logprob` is the
        log-probability under the policy pi that drew the samples (the kit's
        pi_old), `ref_logprob` under the reference pi_ref (the kit's pi_new),
        and the estimate is of :math:`KL(\pi\,\|\,\pi_{ref})`; there
        :math:`k_1` is ``logprob - ref_logprob`` and :math:`k_3` (verl's
        "low_var_kl") is :math:`e^{u} - 1 - u` with ``u = ref_logprob - logprob``.
    backend, dtype, max_examples, seed
        As in `check_gae`; `seed` also seeds the Monte Carlo samples. With
        backend="jax", the drawn cases have 1, 2, 4 or 8 samples only (shrinking
        too), and the unbiasedness test calls with 20,000 samples or batches of
        50: a jitted estimator compiles for at most six shapes.
    unbiased : bool
        Whether the estimator claims :math:`\mathbb E[\hat k] = KL` (k1, k3 do).
    non_negative : bool
        Whether it claims every estimate is >= 0 (k2, k3 do; k1 does not).
    alpha : float
        Family-wise false-alarm rate of the unbiasedness test (Bonferroni
        over the pairs of `KL_PAIRS`).

    Returns
    -------
    Report
        ``kl_estimator.zero_when_equal``, ``kl_estimator.non_negative`` (if
        declared), ``kl_estimator.unbiased`` (if declared: per pair of
        `KL_PAIRS`, a two-sided z-test on 20,000 per-sample estimates, or,
        for a function that returns the batch mean, Student's t-test on 400
        means of batches of 50), plus the generic ids. When the estimates
        fail but the same function with its two arguments swapped passes, the
        message says so and names the convention to pass.

    Notes
    -----
    The t-test on m batch means of size k has the power of the z-test on
    the m k samples (the same mean, the same standard error) except for the
    wider Student threshold; the normal approximation of either is at its
    best for the grand mean, whose skewness is that of all m k samples.
    """
    check_callable(fn)
    check_choice(convention, "convention", KL_CONVENTIONS)
    max_examples = check_positive_int(max_examples, "max_examples")
    seed = check_positive_int(seed, "seed", minimum=0)
    for name, flag in (("unbiased", unbiased), ("non_negative", non_negative)):
        if not isinstance(flag, (bool, np.bool_)):
            raise InvalidInputError(f"{name} should be True or False, actual {flag!r}")
    alpha = check_real(alpha, "alpha")
    if not 0.0 < alpha < 1.0:
        raise InvalidInputError(f"alpha should be in (0, 1), actual {alpha!r}")
    named = check_signature(fn, "kl_estimator", convention, _PARAMS)
    opts = dict(unbiased=bool(unbiased), non_negative=bool(non_negative), alpha=float(alpha))
    terms = _TERMS[convention]

    def probe(be):
        s = Session("kl_estimator", fn, convention, be, max_examples=1, seed=seed, options=opts)
        return s.call(_args(convention, np.array([-1.0, -0.5]), np.array([-0.5, -1.0])))

    be, warn0 = resolve_backend(fn, backend, dtype, probe)
    session = Session("kl_estimator", fn, convention, be, max_examples=max_examples, seed=seed,
                      options=opts, warnings=named + warn0)
    mode = {"per_sample": None}
    jax = be.name == "jax"

    def estimates(logp_new, logp_old, inputs, *, order=convention):
        """(estimates as float64 (n,) or a scalar, outcomes); `order` "refpg" or "rlhf" passes the
        arguments in that order (the other one tests the swapped order)."""
        call = session.call(_args(order, logp_new, logp_old))
        outcomes = session.generic_outcomes(call, inputs)
        if call.error is not None:
            return None, outcomes
        n = logp_new.size
        try:
            shape = be.to_numpy(call.output, "estimate").shape
        except BadOutput:
            shape = None  # `output_array` below says why
        if shape is not None and shape not in ((n,), ()):
            return None, outcomes + [Outcome(
                "kl_estimator.output_shape",
                f"estimate should have shape ({n},) (one estimate per sample) or () (their mean), actual "
                f"shape {shape}", inputs)]
        target = () if shape == () or shape is None and mode["per_sample"] is False else (n,)
        if shape in ((n,), ()) and mode["per_sample"] is None and n > 1:
            mode["per_sample"] = shape == (n,)
        out, more = session.output_array(call.output, "estimate", target, inputs)
        return out, outcomes + more

    def shown(new, old, **extra):
        """The inputs as the convention names them (what a counterexample shows)."""
        return {**dict(_args(convention, new, old)), **extra}

    def evaluate_zero(case):
        lp = be.round(case["logp"])
        inputs = shown(lp, lp)
        est, outcomes = estimates(lp, lp.copy(), inputs)
        if est is not None:
            o = session.compare("kl_estimator.zero_when_equal", "estimate", est, np.zeros_like(est), inputs,
                                why=f"{terms.other} = {terms.sampler}, so every estimate of {terms.kl} = 0 "
                                    f"should be 0")
            if o is not None:
                outcomes.append(o)
        return outcomes

    def evaluate_sign(case):
        new, old = be.round(case["logp_new"]), be.round(case["logp_old"])
        inputs = shown(new, old, **{"log ratio (derived)": new - old})
        est, outcomes = estimates(new, old, inputs)
        if est is not None:
            session.ran("kl_estimator.non_negative")
            neg = est < -be.tol * (1.0 + np.abs(new - old))
            if np.any(neg):
                i = int(np.flatnonzero(np.atleast_1d(neg))[0])
                value = float(np.atleast_1d(est)[i])
                where = (i,) if np.ndim(est) else None
                k1 = "logprob - ref_logprob" if convention == "rlhf" else "-log r"
                outcomes.append(Outcome(
                    "kl_estimator.non_negative",
                    f"estimate{[i] if where else ''} should be >= 0 (the estimator is declared "
                    f"non_negative=True), actual {value:.6g}; k1 = {k1} is negative whenever "
                    f"{terms.other}(a) > {terms.sampler}(a): declare non_negative=False or use "
                    f"k3 = (r - 1) - log r with {terms.ratio}",
                    inputs, expected=">= 0", actual=est, where=where))
        return outcomes

    session.declare(*session.generic_ids(), "kl_estimator.zero_when_equal")
    session.run_scenario(_samples(jax, logp=_LOGP), evaluate_zero, ("kl_estimator.zero_when_equal",),
                         moves=lambda c: _moves(c, ("logp",), jax))
    if non_negative:
        session.run_scenario(_signed(jax), evaluate_sign,
                             ("kl_estimator.non_negative",),
                             moves=lambda c: _moves(c, ("logp_new", "logp_old"), jax))
    if unbiased:
        session.declare("kl_estimator.unbiased", tracked=True)
        _unbiased(session, convention, estimates, shown, mode, seed, float(alpha))
    return session.report()


def _draws(estimates, new, old, pair, shown, mode, *, order):
    """The estimates the test averages, per-sample (n,) or BATCHES batch means; or (None, outcomes)."""
    if mode["per_sample"] is not False:
        first5 = {f"{name} (first 5)": v[:5] for name, v in shown(new, old).items()}
        est, outcomes = estimates(new, old, {**pair, **first5}, order=order)
        if est is not None and np.ndim(est) == 0:
            mode["per_sample"] = False
            est = None
        if outcomes or mode["per_sample"] is not False:
            return est, outcomes
    means = np.empty(BATCHES)
    for b in range(BATCHES):
        sl = slice(b * BATCH, (b + 1) * BATCH)
        est, outcomes = estimates(new[sl], old[sl], {**pair, **shown(new[sl], old[sl])}, order=order)
        if outcomes:
            return None, outcomes
        means[b] = float(est)
    return means, []


def _unbiased(session, convention, estimates, shown, mode, seed, alpha) -> None:
    """One test per pair on 20,000 draws from pi_old; report the simplest pair that rejects."""
    be, terms = session.backend, _TERMS[convention]
    rng = np.random.default_rng(seed)
    k = len(KL_PAIRS)
    for p_old, p_new in KL_PAIRS:
        actions = rng.choice(p_old.size, size=SAMPLES_PER_PAIR, p=p_old)
        new, old = be.round(np.log(p_new)[actions]), be.round(np.log(p_old)[actions])
        exact = _kl(p_old, p_new)
        pair = {terms.sampler: p_old, terms.other: p_new, f"exact {terms.kl}": exact}
        draws, outcomes = _draws(estimates, new, old, pair, shown, mode, order=convention)
        if outcomes:
            _stopped(session, outcomes)
            return
        per_sample = bool(mode["per_sample"])
        test = mean_test(draws[:, None], np.array([exact]), alpha=alpha / k, student=not per_sample)
        session.ran("kl_estimator.unbiased")
        if test.rejected:
            unit = "per-sample estimates of" if per_sample else f"means (Student's t) of batches of {BATCH}"
            stat = "z" if per_sample else "t"
            session.record(Outcome(
                "kl_estimator.unbiased",
                f"the mean estimate should be {terms.kl} = {exact:.6g} (declared unbiased), actual "
                f"{test.mean[0]:.6g} +- {test.stderr[0]:.2g} ({stat} = {test.z[0]:.1f}, |{stat}| threshold "
                f"{test.threshold:.2f} at family-wise alpha = {alpha:g} over {k} pairs; {test.n} {unit} "
                f"actions drawn from {terms.sampler} with seed {seed})"
                + _direction_hint(test, p_old, p_new, None if per_sample else BATCH, terms)
                + _swap_hint(estimates, new, old, pair, shown, mode, test, exact, alpha / k, convention),
                {**pair, "samples": SAMPLES_PER_PAIR}, expected=exact, actual=float(test.mean[0])))
            return


def _swap_hint(estimates, new, old, pair, shown, mode, test, exact, alpha, convention) -> str:
    """Say so when the same function with its two arguments swapped estimates the KL without bias:
    it takes them in the other order (or computes its ratio the other way round, which reads the same)."""
    other = "refpg" if convention == "rlhf" else "rlhf"
    before = dict(mode)
    draws, outcomes = _draws(estimates, new, old, pair, shown, mode, order=other)
    mode.update(before)
    if outcomes or draws is None or draws.ndim != 1 or draws.size != test.n:
        return ""
    swapped = mean_test(draws[:, None], np.array([exact]), alpha=alpha, student=draws.size == BATCHES)
    if swapped.rejected:
        return ""
    mine, theirs = _PARAMS[convention], _PARAMS[other]
    terms = _TERMS[convention]
    how = (", the log-probability of the sampling policy first, as TRL's and verl's kl_penalty and OpenRLHF's "
           "compute_approx_kl take them" if other == "rlhf" else ", as PPO code (SB3, CleanRL) does")
    return (f"; with its two arguments swapped the same function is consistent with {terms.kl} (mean "
            f"{swapped.mean[0]:.6g} +- {swapped.stderr[0]:.2g}): the argument order is swapped. If the function "
            f"takes ({', '.join(theirs)}){how}, pass convention={other!r} (refpg check: --convention {other}); "
            f"if it takes ({', '.join(mine)}), its log-ratio is the wrong way round (log r should be "
            f"log {terms.other} - log {terms.sampler})")


def _direction_hint(test, p_old, p_new, batch, terms) -> str:
    """Name the common bug whose exact mean the rejected estimates are consistent with, if one is:
    the reverse direction KL(pi_new || pi_old), a flipped sign, or (for batch means) a sum of the batch.
    Consistent means within the test's own threshold of standard errors."""
    exact, reverse = _kl(p_old, p_new), _kl(p_new, p_old)
    k1 = "logprob - ref_logprob" if terms.sampler == "pi" else "logp_old - logp_new"
    candidates = [(reverse, f"actual equals {terms.reverse} = {reverse:.6g}: the direction is swapped. "
                            f"This check, like PPO's approx_kl, estimates {terms.kl} = "
                            f"E_{terms.sampler}[(r - 1) - log r] with {terms.ratio}; "
                            f"E_{terms.sampler}[r log r - (r - 1)] is {terms.reverse}"),
                  (-exact, f"actual = -expected: the sign is flipped (k1 is -log r = {k1})")]
    if batch is not None:
        candidates.append((batch * exact, f"actual = n x expected with n = {batch}, the batch size: the "
                                          f"function sums the estimates where their mean belongs"))
    mean, stderr = float(test.mean[0]), float(test.stderr[0])
    for value, hint in candidates:
        if abs(mean - value) <= test.threshold * stderr:
            return f"; {hint}"
    return ""


def _stopped(session, outcomes) -> None:
    """Record the failures that stop the unbiasedness test (it needs a usable estimate from every call)."""
    for o in outcomes:
        session.record(o, shrunk=False)
    session.not_run_because("kl_estimator.unbiased",
                            f"the test needs a usable estimate from every call on its samples, and a call "
                            f"failed {', '.join(dict.fromkeys(o.check_id for o in outcomes))}")
