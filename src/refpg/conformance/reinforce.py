r"""`check_reinforce_estimator`: a REINFORCE gradient estimate against the exact gradient.

For the tabular softmax policy, the estimator of CONVENTIONS.md is

.. math::
    \hat g = \frac1M \sum_{m=1}^{M} \sum_t \gamma^t \nabla_\theta \log\pi(a_t|s_t)\,(G_t - b(s_t)),
    \qquad \frac{\partial \log\pi(a|s)}{\partial\theta[s', \cdot]} = 1[s' = s](e_a - \pi(\cdot|s)),

unbiased for :math:`\nabla J` [Williams1992] for any baseline that does not
depend on :math:`a_t`. Without :math:`\gamma^t` its mean is the
"gamma-free" vector of [Nota2020], not a gradient of J. refpg draws episodes
on MDPs where every policy terminates, so no estimate is truncated, and tests
the mean of the user's estimates against the exact target (a z-test per
coordinate, Bonferroni, declared alpha).
"""

from __future__ import annotations

import numpy as np

from refpg._validation import check_choice, check_positive_int
from refpg.conformance._harness import (numerics_of_their_own, Outcome, Session, check_callable, resolve_backend)
from refpg.conformance.report import Report
from refpg.envs import high_signal
from refpg.errors import InvalidInputError
from refpg.estimators import gamma_free_gradient
from refpg.gradient import policy_gradient
from refpg.policies import TabularSoftmax
from refpg.sampling import sample_episodes
from refpg.stats import DEFAULT_ALPHA, mean_test

__all__ = ["check_reinforce_estimator", "OBJECTIVES"]

OBJECTIVES = ("discounted", "gamma_free")
#: Episodes per call of the user's function, and calls. 200 x 50 = 10,000 episodes: on the test MDP
#: the gamma^t-free estimator is ~19 standard errors off the gradient (threshold 5.2).
EPISODES_PER_CALL = 50
CALLS = 200
#: The second stage: 1,000 calls of 2 episodes, where a baseline fitted on the batch's own returns
#: shows its O(1/2) bias (an own-episode per-state mean is ~15 standard errors off).
SMALL_CALLS = 1000
SMALL_EPISODES = 2


def _test_case():
    """The MDP (2 states + terminal, 2 actions, gamma 0.8, mean episode length 4) and theta."""
    mdp = high_signal(2, 2, p_end=0.25, gamma=0.8, seed=0)
    theta = np.random.default_rng(12345).normal(scale=0.5, size=(mdp.n_states, mdp.n_actions))
    return mdp, theta


def _episodes(batch) -> list:
    return [(ep.states.astype(np.int64), ep.actions.astype(np.int64), ep.rewards.astype(np.float64))
            for ep in batch.episodes()]


@numerics_of_their_own
def check_reinforce_estimator(fn, *, convention: str = "refpg", backend: str = "auto", dtype: str = "float64",
                              seed: int = 0, objective: str = "discounted", alpha: float = DEFAULT_ALPHA,
                              calls: int = CALLS, episodes_per_call: int = EPISODES_PER_CALL) -> Report:
    r"""Check a REINFORCE estimator for the tabular softmax policy: unbiased for its target, rows sum to 0.

    Parameters
    ----------
    fn : callable
        ``fn(theta, episodes, gamma) -> gradient estimate`` of shape (S, A),
        the mean over the episodes; ``theta`` (S, A) are the logits of
        :math:`\pi = \mathrm{softmax}(\theta)` per state; ``episodes`` a list
        of ``(states, actions, rewards)`` arrays (int64, int64, float), each
        a whole episode from the start distribution to termination.
    convention : {"refpg"}
        The only convention: no library shares a REINFORCE signature.
    backend, dtype
        As in `check_gae` (theta and rewards follow the backend and dtype;
        states and actions are int64).
    seed : int
        Seeds the episodes.
    objective : {"discounted", "gamma_free"}
        The target: :math:`\nabla J` (the estimator must weigh step t by
        :math:`\gamma^t`) or `refpg.estimators.gamma_free_gradient` (the
        common form without it, [Nota2020]).
    alpha : float
        Family-wise false-alarm rate of the mean test.
    calls, episodes_per_call : int
        ``calls`` independent batches of ``episodes_per_call`` episodes. A
        second stage always follows with 1,000 batches of 2 episodes, where a
        baseline fitted on the batch's own returns is visibly biased; each
        stage tests at alpha / 2.

    Returns
    -------
    Report
        ``reinforce_estimator.row_sums_zero`` (each row of a score-function
        estimate sums to exactly 0, since :math:`\sum_a \partial \log\pi(a|s)/\partial\theta[s,a'] = 0`;
        checked on every call), ``reinforce_estimator.unbiased``, and the generic ids.
    """
    check_callable(fn)
    check_choice(convention, "convention", ("refpg",))
    check_choice(objective, "objective", OBJECTIVES)
    calls = check_positive_int(calls, "calls")
    per_call = check_positive_int(episodes_per_call, "episodes_per_call")
    if calls < 2:
        raise InvalidInputError(f"calls should be at least 2 for a mean test, actual {calls}")
    if not 0.0 < float(alpha) < 1.0:
        raise InvalidInputError(f"alpha should be in (0, 1), actual {alpha!r}")
    mdp, theta = _test_case()
    policy = TabularSoftmax(mdp.n_states, mdp.n_actions)
    pi = policy.probs(theta)
    rng = np.random.default_rng(seed)
    opts = dict(objective=objective, alpha=float(alpha), calls=calls, episodes_per_call=per_call)

    def args_of(be, episodes):
        eps = [(s, a, be.round(r)) for s, a, r in episodes]
        return [("theta", be.round(theta)), ("episodes", eps), ("gamma", mdp.gamma)]

    first = _episodes(sample_episodes(mdp, pi, 2, rng=np.random.default_rng(seed + 1)))

    def probe(be):
        s = Session("reinforce_estimator", fn, convention, be, max_examples=1, seed=seed, options=opts)
        return s.call(args_of(be, first))

    be, warn0 = resolve_backend(fn, backend, dtype, probe)
    session = Session("reinforce_estimator", fn, convention, be, max_examples=calls, seed=seed,
                      options=opts, warnings=warn0)
    session.declare(*session.generic_ids(), "reinforce_estimator.row_sums_zero")

    def run(episodes):
        args = args_of(be, episodes)
        inputs = {"theta": args[0][1], "pi (derived)": pi, "gamma": mdp.gamma,
                  "episodes (rows: states, actions, rewards)": _show_episodes(args[1][1])}
        call = session.call(args)
        outcomes = session.generic_outcomes(call, inputs)
        if call.error is not None:
            return None, outcomes
        g, more = session.output_array(call.output, "gradient estimate", (mdp.n_states, mdp.n_actions), inputs)
        outcomes += more
        if g is not None:
            rows = g.sum(axis=1)
            scale = float(np.max(np.abs(g), initial=0.0))
            o = session.compare("reinforce_estimator.row_sums_zero", "estimate.sum(axis=1)", rows,
                                np.zeros_like(rows), inputs, scale=scale,
                                why="d log pi(a|s) / d theta[s, :] = onehot(a) - pi(.|s) sums to 0 over "
                                    "the actions, so every row of a score-function estimate sums to 0 "
                                    "(a missing -pi term breaks this)")
            if o is not None:
                outcomes.append(o)
        return g, outcomes

    target = (policy_gradient(mdp, policy, theta) if objective == "discounted"
              else gamma_free_gradient(mdp, policy, theta))
    other = (gamma_free_gradient(mdp, policy, theta) if objective == "discounted"
             else policy_gradient(mdp, policy, theta))
    # Two stages, alpha/2 each: many episodes per call (power against a wrong target), then two per
    # call (a baseline computed from the batch's own returns is biased by O(1/episodes per call)).
    stages = ((calls, per_call), (SMALL_CALLS, SMALL_EPISODES))
    results = []
    for n_calls, size in stages:
        pool = _episodes(sample_episodes(mdp, pi, n_calls * size, rng=rng))
        estimates = []
        for k in range(n_calls):
            episodes = pool[k * size:(k + 1) * size]
            g, outcomes = run(episodes)
            if outcomes:
                _record_smallest(session, run, episodes, outcomes)
                return session.report()
            estimates.append(g)
        results.append((n_calls, size, np.array(estimates)))
    session.declare("reinforce_estimator.unbiased")  # declared only once it runs
    for stage, (n_calls, size, estimates) in enumerate(results):
        test = mean_test(estimates, target, alpha=float(alpha) / 2)
        if not test.rejected:
            continue
        i = test.worst
        other_name = "gamma_free" if objective == "discounted" else "discounted"
        hint = ""
        if not mean_test(estimates, other, alpha=float(alpha) / 2).rejected:
            hint = (f"; the estimates are consistent with objective={other_name!r} instead "
                    + ("(is the gamma^t factor missing?)" if objective == "discounted"
                       else "(the estimator weighs step t by gamma^t)"))
        elif stage == 1:
            hint = (f"; unbiased at {per_call} episodes per call but not at {size}: a bias of order "
                    f"1/(episodes per call) comes from a baseline computed from the same episodes, the "
                    f"episode's own return included (leave the episode out)")
        session.record(Outcome(
            "reinforce_estimator.unbiased",
            f"the mean estimate [{i[0]}, {i[1]}] should be {target[i]:.6g} (the exact "
            f"{'gradient of J' if objective == 'discounted' else 'gamma-free vector'}), actual "
            f"{test.mean[i]:.6g} +- {test.stderr[i]:.2g} (z = {test.z[i]:.1f}, |z| threshold "
            f"{test.threshold:.2f} at family-wise alpha = {alpha:g} over 2 stages of {target.size} entries; "
            f"{n_calls} calls of {size} episodes, seed {seed}){hint}",
            {"theta": theta, "pi (derived)": pi, "gamma": mdp.gamma, "P (MDP)": mdp.P, "r (MDP)": mdp.r,
             "rho (MDP)": mdp.rho, "terminal (MDP)": mdp.terminal},
            expected=target, actual=test.mean, where=i))
        break
    return session.report()


def _show_episodes(episodes) -> list:
    out = []
    for s, a, r in episodes:
        r = np.asarray(r.detach().cpu().numpy() if hasattr(r, "detach") else r, dtype=np.float64)
        out.append(np.stack([np.asarray(s, dtype=np.float64), np.asarray(a, dtype=np.float64), r]))
    return out


def _record_smallest(session, run, episodes, outcomes) -> None:
    """Report each failure on the shortest single episode that reproduces it, else on the batch."""
    order = sorted(range(len(episodes)), key=lambda k: len(episodes[k][0]))
    for o in outcomes:
        best = o
        for k in order[:10]:
            _, single = run([episodes[k]])
            hit = next((x for x in single if x.check_id == o.check_id), None)
            if hit is not None:
                best = hit
                break
        session.record(best)
