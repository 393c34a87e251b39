r"""`check_reinforce_estimator`: a REINFORCE gradient estimate against the exact gradient.

For the tabular softmax policy, the estimator of docs/conventions.md is

.. math::
    \hat g = \frac1M \sum_{m=1}^{M} \sum_t \gamma^t \nabla_\theta \log\pi(a_t|s_t)\,(G_t - b(s_t)),
    \qquad \frac{\partial \log\pi(a|s)}{\partial\theta[s', \cdot]} = 1[s' = s](e_a - \pi(\cdot|s)),

unbiased for :math:`\nabla J` [Williams1992] for any baseline that does not
depend on :math:`a_t`. Without :math:`\gamma^t` its mean is the
"gamma-free" vector of [Nota2020], not a gradient of J. refpg draws episodes
on an MDP where every policy terminates, so no estimate is truncated, and tests
the mean of the user's estimates against the exact target (a t-test per
coordinate, Bonferroni, declared alpha).

The test MDP (`_test_case`) lets the action change the chance that the
episode ends. On an MDP where every (s, a) ends the episode with the same
probability, episode length is independent of the actions, so any term that
depends only on episode lengths has zero mean against the score function, and
bugs made of such terms pass: a reward-to-go that runs on into the next
episode of a concatenated batch, or a "baseline" built from the steps left.
"""

from __future__ import annotations

import numbers

import numpy as np

from refpg._validation import check_choice, check_positive_int, check_real
from refpg.conformance._harness import (numerics_of_their_own, Outcome, Session, check_callable, check_signature,
                                        resolve_backend)
from refpg.conformance.report import Report
from refpg.errors import InvalidInputError
from refpg.estimators import gamma_free_gradient
from refpg.gradient import policy_gradient
from refpg.mdp import TabularMDP
from refpg.policies import TabularSoftmax
from refpg.sampling import sample_episodes
from refpg.stats import DEFAULT_ALPHA, MeanTest, mean_test

__all__ = ["check_reinforce_estimator", "OBJECTIVES"]

#: Targets of `check_reinforce_estimator`: the gradient of the discounted J, or the gamma^t-free one.
OBJECTIVES = ("discounted", "gamma_free")
#: Episodes per call of the user's function, and calls. 200 x 50 = 10,000 episodes: on the test MDP,
#: over seeds 0-9, the weakest known bug (gamma^t G_0, i.e. gamma^(2t) on G_t) is 18-21 standard errors
#: off the gradient, a reward-to-go leaking into the next episode 27-30, gamma^(t+1) 36-40, the
#: gamma^t-free estimator 38-42, a steps-left baseline 72-78 (|t| threshold 5.34).
EPISODES_PER_CALL = 50
CALLS = 200
#: The second stage: 1,000 calls of 2 episodes, where a baseline fitted on the batch's own returns
#: shows its O(1/2) bias (a per-state mean of the batch's returns, own episode included, is 16-19
#: standard errors off; at 50 episodes per call it stays near 2, so the first stage passes it).
SMALL_CALLS = 1000
SMALL_EPISODES = 2
#: The fewest calls the first stage accepts. The test divides the mean by a standard error estimated
#: from the calls' own spread: with a handful of calls that estimate is itself noisy (hence the
#: Student-t threshold, 6.7 at 29 degrees of freedom against 5.2 for the normal) and, with 2 calls, a
#: state neither batch visited has zero spread.
MIN_CALLS = 30
#: The fewest episodes (calls x episodes_per_call) the first stage accepts, as many as the second
#: stage uses. The t-statistic of skewed estimates has a heavier tail on one side than the t
#: distribution: simulating the correct estimator on the test MDP (10^6 replications), the rate of
#: |t| beyond its 1e-4 and 1e-5 quantiles is ~1.5x nominal at 1,000 episodes (1,000 x 1 and 500 x 2),
#: within noise of nominal at 2,000 (1,000 x 2) and above (30 x 34 is already close at 1,000: skewness
#: shrinks with the episodes per call, as 1/sqrt(episodes)).
MIN_EPISODES = 2000


def _test_case():
    r"""The test MDP, "work, then continue or quit", and the logits theta at which the gradient is estimated.

    States 0 (the choice) and 1 (work) plus the terminal state 2; actions 0
    and 1; gamma = 0.7; every episode starts in state 1, rho = (0, 1, 0).

    ===========  ======  ======================================
    (s, a)       r(s,a)  P(. | s, a) over (0, 1, terminal)
    ===========  ======  ======================================
    (0, 0)       0.5     (0.05, 0.8,  0.15)   continue
    (0, 1)       0       (0,    0,    1)      quit
    (1, 0)       2       (0.85, 0.1,  0.05)   work well
    (1, 1)       0       (0.75, 0.2,  0.05)   work badly
    ===========  ======  ======================================

    theta = [[0.25, -0.75], [0.25, 0], [0, 0]]: pi(.|0) = (0.73, 0.27),
    pi(.|1) = (0.56, 0.44); the exact gradient is [[0.288, -0.288],
    [0.723, -0.723], [0, 0]]. The mean episode length is 5.0.

    Why this MDP: the action changes the chance that the episode ends (quit
    ends it for sure, continue with probability 0.15), so a term that depends
    on episode lengths correlates with the score function and biases the mean;
    on an MDP where every (s, a) ends the episode with the same probability it
    would not. It was chosen among random and locally improved 2-state MDPs
    on a 0.05 grid to maximise, at 10,000 episodes, the smallest
    standard-error distance of a set of known bugs (a reward-to-go leaking
    into the next episode, a steps-left baseline, no gamma^t, gamma^(t+1),
    gamma^(2t), G_{t+1} for G_t) and of a 20% scale error on each entry,
    so that both entries weigh in the constant-factor hint. State 1 is in
    every episode and state 0 in 94% of them, so every entry is estimated
    from almost every batch.
    """
    P = np.zeros((3, 2, 3))
    P[0, 0] = [0.05, 0.8, 0.15]
    P[0, 1] = [0.0, 0.0, 1.0]
    P[1, 0] = [0.85, 0.1, 0.05]
    P[1, 1] = [0.75, 0.2, 0.05]
    P[2, :, 2] = 1.0
    r = np.array([[0.5, 0.0], [2.0, 0.0], [0.0, 0.0]])
    mdp = TabularMDP(P, r, [0.0, 1.0, 0.0], 0.7, terminal=[False, False, True], name="work_continue_or_quit")
    theta = np.array([[0.25, -0.75], [0.25, 0.0], [0.0, 0.0]])
    return mdp, theta


def _visit_probabilities(mdp, pi) -> np.ndarray:
    r"""Per state s, the probability that an episode from rho visits s at least once.

    :math:`h_s(x)` = Pr(reach s | start at x) solves :math:`h_s(s) = 1`,
    :math:`h_s(\text{terminal}) = 0`, :math:`h_s(x) = \sum_y P_\pi(x, y) h_s(y)`
    elsewhere; the visit probability is :math:`\rho \cdot h_s` (0 for terminal states).
    """
    P_pi = np.asarray(mdp.policy_transitions(pi), dtype=np.float64)
    S = P_pi.shape[0]
    out = np.zeros(S)
    for s in np.flatnonzero(~mdp.terminal):
        free = ~mdp.terminal
        free[s] = False
        idx = np.flatnonzero(free)
        h = np.zeros(S)
        h[s] = 1.0
        if idx.size:
            h[idx] = np.linalg.solve(np.eye(idx.size) - P_pi[np.ix_(idx, idx)], P_pi[idx, s])
        out[s] = float(mdp.rho @ h)
    return out


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
    seed : int >= 0
        Seeds the episodes.
    objective : {"discounted", "gamma_free"}
        The target: :math:`\nabla J` (the estimator must weigh step t by
        :math:`\gamma^t`) or `refpg.estimators.gamma_free_gradient` (the
        common form without it, [Nota2020]).
    alpha : float in (0, 1)
        Family-wise false-alarm rate of the mean test.
    calls, episodes_per_call : int
        ``calls`` independent batches of ``episodes_per_call`` episodes;
        ``calls >= 30`` and ``calls * episodes_per_call >= 2000`` (see Notes).
        A second stage always follows with 1,000 batches of 2 episodes, where
        a baseline fitted on the batch's own returns is visibly biased; each
        stage tests at alpha / 2.

    Returns
    -------
    Report
        ``reinforce_estimator.row_sums_zero`` (each row of a score-function
        estimate sums to exactly 0, since :math:`\sum_a \partial \log\pi(a|s)/\partial\theta[s,a'] = 0`;
        checked on every call), ``reinforce_estimator.unbiased``, and the generic ids.

    Raises
    ------
    refpg.errors.InvalidInputError
        A bad option, or too few calls or episodes for the test to hold its level.

    Notes
    -----
    The mean test, per stage of n calls: for each state s an episode can
    visit and each action but the last (the last entry of a row is minus the
    others, ``row_sums_zero``),

    .. math::
        t_{sa} = \frac{\bar g_{sa} - g^*_{sa}}{s_{sa}/\sqrt n}, \qquad
        \text{reject if } \max |t_{sa}| > F^{-1}_{t_{n-1}}\Big(1 - \frac{\alpha/2}{2k}\Big),

    k the number of tested entries. The Student-t quantile makes the level
    exact for normal per-call estimates; the estimates are skewed, and the
    minimum of 2,000 episodes per stage keeps the tail of t close to the t
    distribution's (by simulation, within noise of nominal down to 1e-5).
    Rows of states no episode can visit (the terminal state) are not
    random: every score-function estimate is exactly 0 there, and any
    other value fails.
    """
    check_callable(fn)
    check_choice(convention, "convention", ("refpg",))
    check_choice(objective, "objective", OBJECTIVES)
    seed = check_positive_int(seed, "seed", minimum=0)
    alpha = check_real(alpha, "alpha", low=0.0, high=1.0, low_open=True, high_open=True)
    if isinstance(calls, numbers.Integral) and not isinstance(calls, bool) and calls < MIN_CALLS:
        raise InvalidInputError(
            f"calls should be >= {MIN_CALLS}, actual {calls}: the mean test estimates each entry's standard "
            f"error from the spread of the calls' estimates, which needs at least {MIN_CALLS} calls to be "
            f"reliable (with 2 calls, a state neither batch visited has zero spread)")
    calls = check_positive_int(calls, "calls", minimum=MIN_CALLS)
    per_call = check_positive_int(episodes_per_call, "episodes_per_call")
    if calls * per_call < MIN_EPISODES:
        raise InvalidInputError(
            f"calls * episodes_per_call should be >= {MIN_EPISODES}, actual {calls} * {per_call} = "
            f"{calls * per_call}: with fewer episodes the skewness of the estimates makes the mean test "
            f"raise false alarms more often than alpha")
    signature_notes = check_signature(fn, "reinforce_estimator", convention,
                                      {"refpg": ("theta", "episodes", "gamma")})
    mdp, theta = _test_case()
    policy = TabularSoftmax(mdp.n_states, mdp.n_actions)
    pi = policy.probs(theta)
    rng = np.random.default_rng(seed)
    opts = dict(objective=objective, alpha=alpha, calls=calls, episodes_per_call=per_call)

    def args_of(be, episodes):
        eps = [(s, a, be.round(r)) for s, a, r in episodes]
        return [("theta", be.round(theta)), ("episodes", eps), ("gamma", mdp.gamma)]

    first = _episodes(sample_episodes(mdp, pi, 2, rng=np.random.default_rng(seed + 1)))

    def probe(be):
        s = Session("reinforce_estimator", fn, convention, be, max_examples=1, seed=seed, options=opts)
        return s.call(args_of(be, first))

    be, warn0 = resolve_backend(fn, backend, dtype, probe)
    session = Session("reinforce_estimator", fn, convention, be, max_examples=calls, seed=seed,
                      options=opts, warnings=signature_notes + warn0)
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
    visit = _visit_probabilities(mdp, pi)
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
    mdp_inputs = {"theta": theta, "pi (derived)": pi, "gamma": mdp.gamma, "P (MDP)": mdp.P, "r (MDP)": mdp.r,
                  "rho (MDP)": mdp.rho, "terminal (MDP)": mdp.terminal}
    what = "gradient of J" if objective == "discounted" else "gamma-free vector"
    for stage, (n_calls, size, estimates) in enumerate(results):
        bad = _never_visited_rows(estimates, target, visit, be.tol)
        if bad is not None:
            i, value = bad
            session.record(Outcome(
                "reinforce_estimator.unbiased",
                f"the estimate [{i[0]}, {i[1]}] should be exactly {target[i]:.6g} in every call, actual "
                f"{value:.6g} in some call ({n_calls} calls of {size} episodes, seed {seed}): no episode "
                f"visits state {i[0]} ({'terminal' if mdp.terminal[i[0]] else 'unreachable'}), so no score "
                f"term d log pi(a|s) / d theta[{i[0]}, :] enters a correct estimate",
                mdp_inputs, expected=target, actual=estimates.mean(axis=0), where=i))
            break
        test = _mean_test(estimates, target, visit, size, alpha / 2)
        if not test.rejected:
            continue
        i = test.worst
        other_name = "gamma_free" if objective == "discounted" else "discounted"
        hint = ""
        if not _mean_test(estimates, other, visit, size, alpha / 2).rejected:
            hint = (f"; the estimates are consistent with objective={other_name!r} instead "
                    + ("(is the gamma^t factor missing?)" if objective == "discounted"
                       else "(the estimator weighs step t by gamma^t)"))
        elif stage == 1:
            hint = (f"; unbiased at {per_call} episodes per call but not at {size}: a bias of order "
                    f"1/(episodes per call) comes from a baseline computed from the same episodes, the "
                    f"episode's own return included (leave the episode out)")
        else:
            hint = _factor_hint(estimates, target, visit, size, alpha / 2, mdp.gamma, what)
        runs = f"{n_calls} calls of {size} episodes, seed {seed}"
        if np.isfinite(test.z[i]):
            actual = (f"actual {test.mean[i]:.6g} +- {test.stderr[i]:.2g} (t = {test.z[i]:.1f}, |t| threshold "
                      f"{test.threshold:.2f} at family-wise alpha = {alpha:g} over 2 stages of "
                      f"{int(_tested(visit, target.shape).sum())} entries; {runs})")
        else:
            actual = (f"actual {test.mean[i]:.6g} in every one of the {n_calls} calls (zero spread, although an "
                      f"episode visits state {i[0]} with probability {visit[i[0]]:.3g}, so a correct estimate "
                      f"varies from call to call; {runs})")
        session.record(Outcome(
            "reinforce_estimator.unbiased",
            f"the mean estimate [{i[0]}, {i[1]}] should be {target[i]:.6g} (the exact {what}), {actual}{hint}",
            mdp_inputs, expected=target, actual=test.mean, where=i))
        break
    return session.report()


def _tested(visit, shape) -> np.ndarray:
    """The entries the mean test covers: states an episode can visit, every action but the last.

    The last action's entry is minus the sum of the others (``row_sums_zero``, checked on every call
    before the test runs), so testing it too would count one hypothesis twice in the Bonferroni sum.
    """
    mask = np.zeros(shape, dtype=bool)
    mask[visit > 0, :-1] = True
    return mask


def _never_visited_rows(estimates, target, visit, tol):
    """The worst (index, value) where a state no episode visits has an estimate != its target, or None."""
    rows = visit == 0
    if not rows.any():
        return None
    err = np.abs(estimates[:, rows, :] - target[rows, :])
    allowed = tol * (1.0 + float(np.max(np.abs(target), initial=0.0)))
    if not np.any(err > allowed):
        return None
    k, r, a = np.unravel_index(int(np.argmax(err)), err.shape)
    return (int(np.flatnonzero(rows)[r]), int(a)), float(estimates[k, np.flatnonzero(rows)[r], a])


def _mean_test(estimates, target, visit, size, alpha) -> MeanTest:
    r"""One-sample t-tests of the calls' mean estimate against `target`, Bonferroni at family-wise `alpha`.

    Over the `_tested` entries only; the critical value is the
    :math:`1 - \alpha/(2k)` quantile of Student's t with n - 1 degrees of freedom.
    """
    n = estimates.shape[0]
    mask = _tested(visit, target.shape)
    k = max(1, int(mask.sum()))
    # Zero spread: all n estimates of an entry are identical, and t is undefined. That is not "exact":
    # it is a sample. It is evidence against the target only if a correct estimator would rarely
    # repeat one value n times. The value it repeats most is 0, on a batch that never visits the
    # entry's state s (no score term touches theta[s, :]); all n calls miss s with probability
    # (1 - v_s)^(size * n), v_s the chance that an episode visits s. If that is below the entry's
    # share of alpha, s was reachable enough that identical estimates mean a bug. (This takes as
    # given that a correct estimate of a visited state, which depends on the sampled actions and
    # rewards, does not repeat one value across n >= 30 batches; no correct estimator we know of
    # comes close.) If not (a rarely visited state, few calls), the entry gives no evidence either
    # way and its t is left at 0. The minimums on calls and
    # episodes, and a test MDP whose states are visited by most episodes, make the first case the
    # only one in practice: (1 - 0.94)^2000 < 1e-2400.
    with np.errstate(divide="ignore"):
        log_miss = size * n * np.log1p(-np.minimum(visit, 1.0))
    evidence = np.broadcast_to((log_miss < np.log(alpha / k))[:, None], target.shape)
    return mean_test(estimates, target, alpha=alpha, tested=mask, student=True, zero_spread_is_evidence=evidence)


def _factor_hint(estimates, target, visit, size, alpha, gamma, what) -> str:
    r"""A hint when the mean estimate is c x the target for one c across entries, else "".

    c is the weighted least-squares fit :math:`c = \sum_j w_j \bar g_j g^*_j / \sum_j w_j g^{*2}_j`,
    :math:`w_j = 1/\mathrm{se}_j^2`, over the tested entries. The fit counts as good when the mean test
    does not reject c x target, |c| >= 0.05 (an estimate near 0 is no factor's fault), and c x target
    is more than 5 standard errors from 0 on at least two entries: with one informative entry, any
    bias would fit some c.
    """
    mask = _tested(visit, target.shape)
    n = estimates.shape[0]
    mean = estimates.mean(axis=0)
    se = estimates.std(axis=0, ddof=1) / np.sqrt(n)
    use = mask & (se > 0)
    if use.sum() < 2:
        return ""
    w = 1.0 / se[use] ** 2
    t, m = target[use], mean[use]
    c = float(np.sum(w * m * t) / np.sum(w * t * t))
    if abs(c) < 0.05 or np.sum(np.abs(c * t) > 5 * se[use]) < 2:
        return ""
    if _mean_test(estimates, c * target, visit, size, alpha).rejected:
        return ""
    named = [(1.0 / (1.0 - gamma), "1/(1-gamma)"), (1.0 - gamma, "1-gamma"), (gamma, "gamma"),
             (float(size), f"{size}, the episodes per call"), (1.0 / size, f"1/{size}"),
             (-1.0, "-1: a flipped sign")]
    close = [name for value, name in named if abs(c / value - 1.0) < 0.03]
    which = f" (close to {close[0]})" if close else ""
    return (f"; every entry is about {c:.3g}{which} x the expected {what}: a missing or extra factor such "
            f"as 1/(1-gamma) or a sum instead of a mean over episodes?")


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
