r"""`check_kl_estimator`: a sample-based estimate of KL(pi_old || pi_new) from actions a ~ pi_old.

With :math:`r = \pi_{new}(a)/\pi_{old}(a)`, the estimators of [Schulman2020] are
:math:`k_1 = -\log r` (unbiased), :math:`k_2 = \tfrac12(\log r)^2` (biased,
>= 0) and :math:`k_3 = (r - 1) - \log r` (unbiased, >= 0). The check tests
what the user declares: unbiasedness statistically on categorical pairs whose
KL is known exactly (docs/conventions.md: declared false-alarm rate, fixed seed),
non-negativity and the zero at equal policies on Hypothesis-drawn inputs.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from refpg._validation import check_choice, check_positive_int, check_real
from refpg.conformance import _cases
from refpg.conformance._harness import (numerics_of_their_own, BadOutput, Outcome, Session, check_callable,
                                        check_signature, resolve_backend)
from refpg.conformance.report import Report
from refpg.errors import InvalidInputError
from refpg.stats import DEFAULT_ALPHA, mean_test

__all__ = ["check_kl_estimator", "KL_PAIRS"]

#: (pi_old, pi_new) pairs of the unbiasedness test, simplest first. Ratios stay within [1/7, 7], so
#: every estimator above has a bounded variance and the z-test's normal approximation is sound.
KL_PAIRS = (
    (np.array([0.5, 0.5]), np.array([0.6, 0.4])),
    (np.array([0.5, 0.5]), np.array([0.9, 0.1])),
    (np.array([0.2, 0.3, 0.5]), np.array([0.5, 0.3, 0.2])),
    (np.array([0.7, 0.2, 0.1]), np.array([0.1, 0.2, 0.7])),
    (np.array([0.25, 0.25, 0.25, 0.25]), np.array([0.1, 0.2, 0.3, 0.4])),
)
SAMPLES_PER_PAIR = 20_000
#: Every convention passes (logp_new, logp_old); the names are accepted for uniformity.
KL_CONVENTIONS = ("refpg", "sb3", "cleanrl", "torchrl", "rlax")
BATCH = 10  # batch size when the function returns a batch mean


def _kl(p, q) -> float:
    return float(np.sum(p * (np.log(p) - np.log(q))))


_LOGP = st.one_of(st.sampled_from([-1.0, -0.5, -2.0, 0.0]), st.floats(-6.0, 0.0))


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
    convention : str
        Every convention of the kit shares this signature (all compute the
        log-ratio from the two log-probabilities); accepted for uniformity.
    backend, dtype, max_examples, seed
        As in `check_gae`; `seed` also seeds the Monte Carlo samples.
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
        declared), ``kl_estimator.unbiased`` (if declared: a two-sided z-test
        per pair, 20,000 samples each), plus the generic ids.
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
    named = check_signature(fn, "kl_estimator", convention,
                            {c: ("logp_new", "logp_old") for c in KL_CONVENTIONS})
    opts = dict(unbiased=bool(unbiased), non_negative=bool(non_negative), alpha=float(alpha))

    def probe(be):
        s = Session("kl_estimator", fn, convention, be, max_examples=1, seed=seed, options=opts)
        return s.call([("logp_new", np.array([-1.0, -0.5])), ("logp_old", np.array([-0.5, -1.0]))])

    be, warn0 = resolve_backend(fn, backend, dtype, probe)
    session = Session("kl_estimator", fn, convention, be, max_examples=max_examples, seed=seed,
                      options=opts, warnings=named + warn0)
    mode = {"per_sample": None}

    def estimates(logp_new, logp_old, inputs):
        """(estimates as float64 (n,) or a scalar, outcomes)."""
        args = [("logp_new", logp_new), ("logp_old", logp_old)]
        call = session.call(args)
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

    def evaluate_zero(case):
        lp = be.round(case["logp"])
        inputs = {"logp_new": lp, "logp_old": lp}
        est, outcomes = estimates(lp, lp.copy(), inputs)
        if est is not None:
            o = session.compare("kl_estimator.zero_when_equal", "estimate", est, np.zeros_like(est), inputs,
                                why="pi_new = pi_old, so every estimate of KL(pi_old || pi_new) = 0 "
                                    "should be 0")
            if o is not None:
                outcomes.append(o)
        return outcomes

    def evaluate_sign(case):
        new, old = be.round(case["logp_new"]), be.round(case["logp_old"])
        inputs = {"logp_new": new, "logp_old": old, "log ratio (derived)": new - old}
        est, outcomes = estimates(new, old, inputs)
        if est is not None:
            session.ran("kl_estimator.non_negative")
            neg = est < -be.tol * (1.0 + np.abs(new - old))
            if np.any(neg):
                i = int(np.flatnonzero(np.atleast_1d(neg))[0])
                value = float(np.atleast_1d(est)[i])
                where = (i,) if np.ndim(est) else None
                outcomes.append(Outcome(
                    "kl_estimator.non_negative",
                    f"estimate{[i] if where else ''} should be >= 0 (the estimator is declared "
                    f"non_negative=True), actual {value:.6g}; k1 = -log r is negative whenever "
                    f"pi_new(a) > pi_old(a): declare non_negative=False or use k3 = (r - 1) - log r",
                    inputs, expected=">= 0", actual=est, where=where))
        return outcomes

    session.declare(*session.generic_ids(), "kl_estimator.zero_when_equal")
    session.run_scenario(_cases.samples(logp=_LOGP), evaluate_zero, ("kl_estimator.zero_when_equal",),
                         moves=lambda c: _cases.sample_moves(c, ("logp",)))
    if non_negative:
        session.run_scenario(_cases.samples(logp_new=_LOGP, logp_old=_LOGP), evaluate_sign,
                             ("kl_estimator.non_negative",),
                             moves=lambda c: _cases.sample_moves(c, ("logp_new", "logp_old")))
    if unbiased:
        session.declare("kl_estimator.unbiased", tracked=True)
        _unbiased(session, be, estimates, mode, seed, float(alpha))
    return session.report()


def _unbiased(session, be, estimates, mode, seed, alpha) -> None:
    """One z-test per pair on 20,000 draws from pi_old; report the simplest pair that rejects."""
    rng = np.random.default_rng(seed)
    k = len(KL_PAIRS)
    for p_old, p_new in KL_PAIRS:
        actions = rng.choice(p_old.size, size=SAMPLES_PER_PAIR, p=p_old)
        new, old = be.round(np.log(p_new)[actions]), be.round(np.log(p_old)[actions])
        exact = _kl(p_old, p_new)
        pair = {"pi_old": p_old, "pi_new": p_new, "exact KL(pi_old || pi_new)": exact}
        if mode["per_sample"] is not False:
            est, outcomes = estimates(new, old, {**pair, "logp_new (first 5)": new[:5],
                                                 "logp_old (first 5)": old[:5]})
            if est is not None and np.ndim(est) == 0:
                mode["per_sample"] = False
                est = None
            if outcomes:
                _stopped(session, outcomes)
                return
            draws = est
        if mode["per_sample"] is False:
            means = []
            for b in range(0, SAMPLES_PER_PAIR, BATCH):
                est, outcomes = estimates(new[b:b + BATCH], old[b:b + BATCH],
                                          {**pair, "logp_new": new[b:b + BATCH], "logp_old": old[b:b + BATCH]})
                if outcomes:
                    _stopped(session, outcomes)
                    return
                means.append(float(est))
            draws = np.array(means)
        test = mean_test(draws[:, None], np.array([exact]), alpha=alpha / k)
        session.ran("kl_estimator.unbiased")
        if test.rejected:
            unit = "per-sample estimates" if mode["per_sample"] else f"means of batches of {BATCH}"
            session.record(Outcome(
                "kl_estimator.unbiased",
                f"the mean estimate should be KL(pi_old || pi_new) = {exact:.6g} (declared unbiased), actual "
                f"{test.mean[0]:.6g} +- {test.stderr[0]:.2g} (z = {test.z[0]:.1f}, |z| threshold "
                f"{test.threshold:.2f} at family-wise alpha = {alpha:g} over {k} pairs; {test.n} {unit} of "
                f"actions drawn from pi_old with seed {seed})"
                + _direction_hint(test, p_old, p_new, None if mode["per_sample"] else BATCH),
                {**pair, "samples": SAMPLES_PER_PAIR}, expected=exact, actual=float(test.mean[0])))
            return


def _direction_hint(test, p_old, p_new, batch) -> str:
    """Name the common bug whose exact mean the rejected estimates are consistent with, if one is:
    the reverse direction KL(pi_new || pi_old), a flipped sign, or (for batch means) a sum of the batch.
    Consistent means within the test's own threshold of standard errors."""
    exact, reverse = _kl(p_old, p_new), _kl(p_new, p_old)
    candidates = [(reverse, f"actual equals KL(pi_new || pi_old) = {reverse:.6g}: the direction is swapped. "
                            f"This check, like PPO's approx_kl, estimates KL(pi_old || pi_new) = "
                            f"E_old[(r - 1) - log r] with r = pi_new / pi_old; E_old[r log r - (r - 1)] "
                            f"is KL(pi_new || pi_old)"),
                  (-exact, "actual = -expected: the sign is flipped (k1 is -log r = logp_old - logp_new)")]
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
