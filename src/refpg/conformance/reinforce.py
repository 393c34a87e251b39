r"""`check_reinforce_estimator`: a REINFORCE gradient estimate, or a REINFORCE loss, against the exact gradient.

For the tabular softmax policy, the estimator of docs/conventions.md is

.. math::
    \hat g = \frac1M \sum_{m=1}^{M} \sum_t \gamma^t \nabla_\theta \log\pi(a_t|s_t)\,(G_t - b(s_t)),
    \qquad \frac{\partial \log\pi(a|s)}{\partial\theta[s', \cdot]} = 1[s' = s](e_a - \pi(\cdot|s)),

unbiased for :math:`\nabla J` [Williams1992] for any baseline that does not
depend on :math:`a_t`. Without :math:`\gamma^t` its mean is the
"gamma-free" vector of [Nota2020], not a gradient of J; with gamma = 1 on an
MDP where every episode ends it is the gradient of the undiscounted return.
refpg draws episodes on such an MDP, so no estimate is truncated unless the
kit cuts it on purpose (the second stage, at a declared time limit, where the
target is the gradient of the time-limited objective), and tests the mean of
the user's estimates against the exact target (a t-test per coordinate,
Bonferroni, declared alpha).

Real code mostly returns a *loss* to backpropagate rather than a gradient
(Spinning Up's simple policy gradient, ``-(logp * weights).mean()``): with
``convention="loss"`` the kit differentiates it and judges
:math:`-\partial\,\text{loss}/\partial\theta`. How the loss averages
(``normalization``: over episodes, over all the batch's steps, or not at
all) and which return it targets (``objective``) are declared; the kit knows
each batch's episode and step counts exactly, so every declaration is tested
exactly.

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

__all__ = ["check_reinforce_estimator", "gradient_estimate_of", "OBJECTIVES", "NORMALIZATIONS",
           "REINFORCE_CONVENTIONS"]

#: Targets of `check_reinforce_estimator`: the gradient of the discounted J (step t weighed by gamma^t),
#: of the undiscounted J (the function is passed gamma = 1), or the gamma^t-free vector.
OBJECTIVES = ("discounted", "undiscounted", "gamma_free")
#: What the estimate (or loss) is divided by: the batch's number of episodes, its number of steps (a
#: ``.mean()`` over every step of the batch), or nothing (a sum).
NORMALIZATIONS = ("per_episode", "per_step", "sum")
#: Calling conventions: the parameters each passes, by position. "refpg" returns the gradient estimate;
#: "loss" and "loss_padded" return a scalar loss whose -d/d theta is judged. "loss_padded" passes the
#: batch as time-major (T, E) arrays padded to a few bucketed lengths, so that a jitted JAX loss
#: compiles a bounded number of times.
REINFORCE_CONVENTIONS = {
    "refpg": ("theta", "episodes", "gamma"),
    "loss": ("theta", "episodes", "gamma"),
    "loss_padded": ("theta", "states", "actions", "rewards", "valid", "gamma"),
}
_LOSS_CONVENTIONS = ("loss", "loss_padded")
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
#: The second stage's episodes are cut after this many steps (a time limit, as Gymnasium's TimeLimit
#: does): about 15% of them on the test MDP. The function is not told which episodes were cut, as real
#: code is not when it treats a truncated episode as finished; the target is then the gradient of the
#: time-limited objective E[sum_{t < H} gamma^t r_t], which REINFORCE on the cut episodes estimates
#: without bias (`_time_limited_target`).
TIME_LIMIT = 8
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
#: ``loss_padded``: the batch's time axis is padded to the next power of two, at least this: stage 1
#: (50 episodes, the longest typically 15-40 steps) meets 2-3 lengths, stage 2 (cut at 8) one.
PAD_MIN = 8
#: A hint names another declaration only when its own mean test passes with room to spare: largest
#: |t| below this share of the threshold (a right declaration exceeds it about once in 10^4 checks).
_HINT_MARGIN = 0.75

UNBIASED = "reinforce_estimator.unbiased"
ROW_SUMS = "reinforce_estimator.row_sums_zero"
DIFFERENTIABLE = "reinforce_estimator.differentiable"


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
    from almost every batch. Every (s, a) ends the episode with probability
    at least 0.05, so the MDP is proper: with gamma = 1 the return is finite
    and the undiscounted gradient exists.
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


def _undiscounted(mdp) -> TabularMDP:
    """The test MDP with gamma = 1: proper, since every (s, a) ends the episode with probability >= 0.05."""
    return TabularMDP(mdp.P, mdp.r, mdp.rho, 1.0, terminal=mdp.terminal, name=f"{mdp.name}_undiscounted")


def _time_limited_target(mdp, policy, theta, gamma: float, weighted: bool, horizon: int) -> np.ndarray:
    r"""Exact mean of REINFORCE on episodes cut after `horizon` steps.

    .. math::
        \mathbb E\Big[\sum_{t<H} c^t \nabla\log\pi(a_t|s_t)\, G^H_t\Big]
        = \sum_{t<H} c^t \sum_{s,a} p_t(s)\,\pi(a|s)\,\nabla\log\pi(a|s)\,Q_{H-t}(s,a),

    :math:`G^H_t = \sum_{t \le k < H} \gamma^{k-t} r_k` the return left before the cut,
    :math:`p_t = \rho^\top P_\pi^t` the law of :math:`s_t` (terminal states absorb, with zero
    reward and so zero Q), :math:`Q_k = r + \gamma P V_{k-1}`, :math:`V_k = \sum_a \pi Q_k`,
    :math:`V_0 = 0`; c = gamma (`weighted`) or 1. With c = gamma it is the gradient of
    :math:`J_H = \mathbb E[\sum_{t<H}\gamma^t r_t]` (the policy gradient theorem on the time-indexed
    MDP [Sutton2000]); with c = 1 and gamma < 1, the gamma-free vector of the cut episodes [Nota2020].
    """
    pi = policy.probs(theta)
    P = np.asarray(mdp.P, dtype=np.float64)
    P_pi = np.einsum("sat,sa->st", P, pi)
    Q = [None] * (horizon + 1)
    V = np.zeros(mdp.n_states)
    for k in range(1, horizon + 1):
        Q[k] = mdp.r + gamma * np.einsum("sat,t->sa", P, V)
        V = np.einsum("sa,sa->s", pi, Q[k])
    p = np.asarray(mdp.rho, dtype=np.float64)
    c = gamma if weighted else 1.0
    W = np.zeros_like(pi)
    for t in range(horizon):
        W += c ** t * p[:, None] * pi * Q[horizon - t]
        p = p @ P_pi
    return policy.log_prob_vjp(theta, W, pi)


def _target(mdp, policy, theta, objective: str, horizon: int | None) -> np.ndarray:
    """The exact mean of a correct estimator under `objective`, on whole episodes or cut at `horizon`."""
    gamma = 1.0 if objective == "undiscounted" else mdp.gamma
    if horizon is not None:
        return _time_limited_target(mdp, policy, theta, gamma, objective != "gamma_free", horizon)
    if objective == "gamma_free":
        return gamma_free_gradient(mdp, policy, theta)
    return policy_gradient(mdp if objective == "discounted" else _undiscounted(mdp), policy, theta)


def _episodes(batch) -> list:
    return [(ep.states.astype(np.int64), ep.actions.astype(np.int64), ep.rewards.astype(np.float64))
            for ep in batch.episodes()]


def _stage_pool(mdp, pi, n: int, rng, horizon: int | None) -> tuple[list, np.ndarray]:
    """`n` episodes from rho, cut at `horizon` steps if given; and whether each was cut."""
    batch = sample_episodes(mdp, pi, n, rng=rng, max_episode_steps=horizon)
    return _episodes(batch), np.array([ep.truncated for ep in batch.episodes()], dtype=bool)


def _edge_batches(mdp) -> tuple:
    """Batches every check passes first, by construction, whatever the seed: each holds a region where
    correct code is easy to get wrong, and each episode has positive probability on the test MDP.

    * one episode of one step alone (work, then the episode ends: probability 0.05): standardising
      its returns, or the batch's, divides by a zero (with ddof=1, undefined) standard deviation;
    * a one-step episode with reward 0 (every return 0) beside one that visits state 1 twice;
    * one that stays in state 0 twice (continue, 0.05) and quits, beside one of `TIME_LIMIT` steps that
      has not ended (as a time limit leaves it).

    Two episodes at most, none longer than 8 steps: with ``loss_padded`` they share the shapes of the
    second stage's calls, (8, 2), and of a single episode, (8, 1), so a jitted loss compiles no more.
    """
    def episode(states, actions):
        s, a = np.array(states, dtype=np.int64), np.array(actions, dtype=np.int64)
        return s, a, mdp.r[s, a].astype(np.float64)

    cut = episode([1, 0] * (TIME_LIMIT // 2) + [1] * (TIME_LIMIT % 2), [0] * TIME_LIMIT)
    return (("one episode of one step", [episode([1], [0])]),
            ("a one-step episode with reward 0 and an episode that visits state 1 twice",
             [episode([1], [1]), episode([1, 0, 1], [1, 0, 0])]),
            (f"an episode that visits state 0 twice and one cut by a time limit of {TIME_LIMIT} steps",
             [episode([1, 0, 0], [0, 0, 1]), cut]))


def _bucket(longest: int) -> int:
    """The padded length of a batch whose longest episode has `longest` steps: a power of two >= PAD_MIN."""
    return max(PAD_MIN, 1 << max(0, longest - 1).bit_length())


def _padded(episodes, pad_state: int, length: int | None = None) -> tuple:
    """(states, actions, rewards, valid), each (T, E) time-major, column e the e-th episode from its step 0.

    Rows past an episode's end are padding, as in `refpg.sampling.Batch`: ``valid`` False, the terminal
    state, action 0 and reward 0. T is `length`, else `_bucket` of the longest episode.
    """
    T = _bucket(max(len(s) for s, _, _ in episodes)) if length is None else length
    E = len(episodes)
    states = np.full((T, E), pad_state, dtype=np.int64)
    actions = np.zeros((T, E), dtype=np.int64)
    rewards = np.zeros((T, E))
    valid = np.zeros((T, E), dtype=bool)
    for e, (s, a, r) in enumerate(episodes):
        n = len(s)
        states[:n, e], actions[:n, e], rewards[:n, e], valid[:n, e] = s, a, r, True
    return states, actions, rewards, valid


def _scale(normalization: str, episodes) -> float:
    """The factor that turns one call's estimate under `normalization` into the per-episode mean."""
    E = len(episodes)
    if normalization == "per_step":
        return sum(len(s) for s, _, _ in episodes) / E
    return 1.0 / E if normalization == "sum" else 1.0


_OBJECTIVE_WHAT = {"discounted": "gradient of J", "undiscounted": "gradient of the undiscounted J (gamma = 1)",
                   "gamma_free": "gamma-free vector"}
_OBJECTIVE_WHY = {"discounted": "the returns are discounted and step t weighs gamma^t",
                  "undiscounted": "the returns are not discounted (gamma is ignored)",
                  "gamma_free": "the returns are discounted but step t does not weigh gamma^t"}
_NORMALIZATION_WHY = {"per_episode": "divided by the number of episodes",
                      "per_step": "divided by the batch's number of steps (a mean over all its steps)",
                      "sum": "summed, not divided"}


@numerics_of_their_own
def check_reinforce_estimator(fn, *, convention: str = "refpg", backend: str = "auto", dtype: str = "float64",
                              seed: int = 0, objective: str = "discounted", normalization: str = "per_episode",
                              alpha: float = DEFAULT_ALPHA, calls: int = CALLS,
                              episodes_per_call: int = EPISODES_PER_CALL) -> Report:
    r"""Check a REINFORCE estimator or loss for the tabular softmax policy: unbiased for its target.

    Parameters
    ----------
    fn : callable
        By `convention`:

        * ``"refpg"``: ``fn(theta, episodes, gamma) -> gradient estimate`` of
          shape (S, A); ``theta`` (S, A) are the logits of
          :math:`\pi = \mathrm{softmax}(\theta)` per state; ``episodes`` a list
          of ``(states, actions, rewards)`` arrays (int64, int64, float), each
          a whole episode from the start distribution to its end.
        * ``"loss"``: the same arguments, ``theta`` a torch tensor with
          ``requires_grad`` (or a JAX array); returns a scalar loss to
          *minimise*, and :math:`-\partial\,\text{loss}/\partial\theta` (torch
          autograd, or ``jax.grad``) is judged as the gradient estimate, e.g.
          ``-(logp * weights).mean()``.
        * ``"loss_padded"``: ``fn(theta, states, actions, rewards, valid,
          gamma) -> scalar loss``, the batch as time-major (T, E) arrays,
          column e the e-th episode from its first step; rows past its end are
          padding (``valid`` False, the terminal state, action 0, reward 0).
          T is a power of two >= 8, one per stage, so a jitted JAX loss
          meets 3 or 4 shapes in all (see Notes).
    convention : {"refpg", "loss", "loss_padded"}
    backend, dtype
        As in `check_gae` (theta and rewards follow the backend and dtype;
        states and actions are int64, int32 for float32 JAX). A loss needs a
        differentiable backend, torch or jax: ``"auto"`` picks jax for a
        function that returns JAX arrays, else torch.
    seed : int >= 0
        Seeds the episodes.
    objective : {"discounted", "undiscounted", "gamma_free"}
        The target: :math:`\nabla J` (the estimator must weigh step t by
        :math:`\gamma^t`), the gradient of the undiscounted return (the
        function is passed gamma = 1; the test MDP is proper, so it is
        finite), or `refpg.estimators.gamma_free_gradient` (the common form
        without :math:`\gamma^t`, [Nota2020]).
    normalization : {"per_episode", "per_step", "sum"}
        What the estimate (or loss) divides the batch's sum by: its number of
        episodes E (unbiased for the target as it is), its number of steps N
        (Spinning Up's ``.mean()`` over the steps), or nothing. Each call's
        estimate is multiplied by N / E or 1 / E respectively before the mean
        test: the kit knows both counts, so the test stays exact.
    alpha : float in (0, 1)
        Family-wise false-alarm rate of the mean test.
    calls, episodes_per_call : int
        ``calls`` independent batches of ``episodes_per_call`` episodes;
        ``calls >= 30`` and ``calls * episodes_per_call >= 2000`` (see Notes).
        A second stage always follows with 1,000 batches of 2 episodes cut at
        `TIME_LIMIT` steps, where a baseline fitted on the batch's own returns
        is visibly biased; each stage tests at alpha / 2.

    Returns
    -------
    Report
        ``reinforce_estimator.row_sums_zero`` (each row of a score-function
        estimate sums to exactly 0, since :math:`\sum_a \partial \log\pi(a|s)/\partial\theta[s,a'] = 0`;
        checked on every call), ``reinforce_estimator.unbiased``,
        ``reinforce_estimator.differentiable`` for a loss, and the generic ids.
        When a call stops at an earlier check (it raised, or its output is
        not finite), the mean test is listed as not run, with the reason.

    Raises
    ------
    refpg.errors.InvalidInputError
        A bad option, too few calls or episodes for the test to hold its
        level, or a loss on the NumPy backend.

    Notes
    -----
    Every check first passes the batches of `_edge_batches` (a one-step
    episode alone; one with reward 0; states visited twice in an episode; an
    episode cut by the time limit), then the two stages. The mean test, per
    stage of n calls: for each state s an episode can visit and each action
    but the last (the last entry of a row is minus the others,
    ``row_sums_zero``),

    .. math::
        t_{sa} = \frac{\bar g_{sa} - g^*_{sa}}{s_{sa}/\sqrt n}, \qquad
        \text{reject if } \max |t_{sa}| > F^{-1}_{t_{n-1}}\Big(1 - \frac{\alpha/2}{2k}\Big),

    k the number of tested entries. The Student-t quantile makes the level
    exact for normal per-call estimates; the estimates are skewed, and the
    minimum of 2,000 episodes per stage keeps the tail of t close to the t
    distribution's (by simulation, within noise of nominal down to 1e-5).
    Rows of states no episode can visit (the terminal state) are not
    random: every score-function estimate is exactly 0 there, and any
    other value fails. On failure, the same estimates are tested under
    every other objective and normalization, and those whose test passes
    clearly are named.

    With ``loss_padded``, each stage pads every call to one length T, the
    power of two >= 8 above the stage's longest episode: the arrays are
    (T, episodes_per_call) in stage 1 (T = 64 at seed 0), (8, 2) in stage 2
    and the edge batches, and (8, 1) or (T, 1) for one episode. A jitted JAX
    loss compiles once per shape met, 3 or 4 times per check, and so does
    the kit's ``jax.jit(jax.grad(fn))`` (`Session.input_gradient`). On the
    list layout of ``"loss"`` every batch is a new pytree: JAX differentiates
    it op by op, about 25 s per check, so a JAX loss belongs in
    ``"loss_padded"``.
    """
    check_callable(fn)
    check_choice(convention, "convention", tuple(REINFORCE_CONVENTIONS))
    check_choice(objective, "objective", OBJECTIVES)
    check_choice(normalization, "normalization", NORMALIZATIONS)
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
    is_loss = convention in _LOSS_CONVENTIONS
    if is_loss and backend == "numpy":
        raise InvalidInputError(
            f"backend should be 'torch' or 'jax' for convention={convention!r}, actual 'numpy': the kit judges "
            f"-d loss / d theta, and NumPy gives no gradient (use convention='refpg' for a function that "
            f"returns the gradient estimate itself)")
    signature_notes = check_signature(fn, "reinforce_estimator", convention, REINFORCE_CONVENTIONS)
    mdp, theta = _test_case()
    policy = TabularSoftmax(mdp.n_states, mdp.n_actions)
    pi = policy.probs(theta)
    gamma = 1.0 if objective == "undiscounted" else mdp.gamma
    pad_state = int(np.flatnonzero(mdp.terminal)[0])
    rng = np.random.default_rng(seed)
    opts = dict(objective=objective, normalization=normalization, alpha=alpha, calls=calls,
                episodes_per_call=per_call)

    # loss_padded: every call of a stage is padded to one length, that of the stage's longest episode
    # (bucketed), so a jitted loss compiles once per stage; None pads each call on its own.
    pad_to = {"length": None}

    def args_of(be, episodes):
        if convention == "loss_padded":
            longest = max(len(s) for s, _, _ in episodes)
            length = pad_to["length"] if pad_to["length"] is not None and pad_to["length"] >= longest else None
            s, a, r, valid = _padded(episodes, pad_state, length)
            return [("theta", be.round(theta)), ("states", s), ("actions", a), ("rewards", be.round(r)),
                    ("valid", valid), ("gamma", gamma)]
        eps = [(s, a, be.round(r)) for s, a, r in episodes]
        return [("theta", be.round(theta)), ("episodes", eps), ("gamma", gamma)]

    first = _episodes(sample_episodes(mdp, pi, 2, rng=np.random.default_rng(seed + 1)))

    def probe(be):
        s = Session("reinforce_estimator", fn, convention, be, max_examples=1, seed=seed, options=opts)
        return s.call(args_of(be, first))

    be, warn0 = resolve_backend(fn, backend, dtype, probe)
    if is_loss and not be.differentiable:
        # "auto" found that the function runs on NumPy arrays; a loss is judged by its gradient.
        be, warn0 = resolve_backend(fn, "torch", dtype, probe)
        warn0 = [f"backend='auto' chose torch: convention={convention!r} is judged by -d loss / d theta, which "
                 f"NumPy cannot give"]
    session = Session("reinforce_estimator", fn, convention, be, max_examples=calls, seed=seed,
                      options=opts, warnings=signature_notes + warn0)
    session.declare(*session.generic_ids())
    session.declare(ROW_SUMS, *((DIFFERENTIABLE,) if is_loss else ()), UNBIASED, tracked=True)

    def run(episodes):
        args = args_of(be, episodes)
        if convention == "loss_padded":
            inputs = {"theta": args[0][1], "pi (derived)": pi, "gamma": gamma,
                      **{name: value for name, value in args[1:5]}}
        else:
            inputs = {"theta": args[0][1], "pi (derived)": pi, "gamma": gamma,
                      "episodes (rows: states, actions, rewards)": _show_episodes(args[1][1])}
        call = session.call(args, grad_of="theta" if is_loss else None)
        outcomes = session.generic_outcomes(call, inputs)
        if call.error is not None:
            return None, outcomes
        if is_loss:
            g, more = _loss_gradient(session, call, inputs)
        else:
            g, more = session.output_array(call.output, "gradient estimate", (mdp.n_states, mdp.n_actions),
                                           inputs)
        outcomes += more
        if g is not None:
            rows = g.sum(axis=1)
            scale = float(np.max(np.abs(g), initial=0.0))
            what = "(-d loss / d theta).sum(axis=1)" if is_loss else "estimate.sum(axis=1)"
            o = session.compare(ROW_SUMS, what, rows, np.zeros_like(rows), inputs, scale=scale,
                                why="d log pi(a|s) / d theta[s, :] = onehot(a) - pi(.|s) sums to 0 over "
                                    "the actions, so every row of a score-function estimate sums to 0 "
                                    "(a missing -pi term breaks this)")
            if o is not None:
                outcomes.append(o)
        return g, outcomes

    def stopped(where, episodes, outcomes) -> Report:
        _record_smallest(session, run, episodes, outcomes)
        ids = ", ".join(sorted({o.check_id for o in outcomes}))
        session.not_run_because(UNBIASED, f"the mean test needs an estimate from every call, and {where} "
                                          f"stopped at {ids} (see there)")
        return session.report()

    for label, episodes in _edge_batches(mdp):
        _, outcomes = run(episodes)
        if outcomes:
            return stopped(f"the call on {label} (a batch every check passes first)", episodes, outcomes)

    visit = _visit_probabilities(mdp, pi)
    # Two stages, alpha/2 each: many episodes per call (power against a wrong target), then two per
    # call, cut at a time limit (a baseline computed from the batch's own returns is biased by
    # O(1/episodes per call)).
    stages = ((calls, per_call, None), (SMALL_CALLS, SMALL_EPISODES, TIME_LIMIT))
    results = []
    for number, (n_calls, size, horizon) in enumerate(stages, start=1):
        pool, _ = _stage_pool(mdp, pi, n_calls * size, rng, horizon)
        pad_to["length"] = _bucket(max(len(s) for s, _, _ in pool))
        raw, steps = [], []
        for k in range(n_calls):
            episodes = pool[k * size:(k + 1) * size]
            g, outcomes = run(episodes)
            if outcomes:
                return stopped(f"call {k + 1} of stage {number} ({n_calls} calls of {size} episodes)", episodes,
                               outcomes)
            raw.append(g)
            steps.append(sum(len(s) for s, _, _ in episodes))
        results.append((n_calls, size, horizon, np.array(raw), np.array(steps, dtype=np.float64)))
    session.ran(UNBIASED)
    mdp_inputs = {"theta": theta, "pi (derived)": pi, "gamma": gamma, "P (MDP)": mdp.P, "r (MDP)": mdp.r,
                  "rho (MDP)": mdp.rho, "terminal (MDP)": mdp.terminal}
    targets = {}

    def target(obj, horizon):
        if (obj, horizon) not in targets:
            targets[obj, horizon] = _target(mdp, policy, theta, obj, horizon)
        return targets[obj, horizon]

    def rescaled(raw, steps, size, norm):
        factor = steps / size if norm == "per_step" else np.full(len(steps), 1.0 / size if norm == "sum" else 1.0)
        return raw * factor[:, None, None]

    what = _OBJECTIVE_WHAT[objective]
    for stage, (n_calls, size, horizon, raw, steps) in enumerate(results):
        expected = target(objective, horizon)
        estimates = rescaled(raw, steps, size, normalization)
        cut = f" cut at {horizon} steps" if horizon else ""
        of = f"the exact {what}" + (f" of the {horizon}-step time-limited objective" if horizon else "")
        runs = f"{n_calls} calls of {size} episodes{cut}, seed {seed}"
        shown = ("the mean estimate" if normalization == "per_episode" else
                 f"the mean estimate x {'N / E' if normalization == 'per_step' else '1 / E'} "
                 f"(normalization={normalization!r}; N steps, E episodes per call)")
        bad = _never_visited_rows(estimates, expected, visit, be.tol)
        if bad is not None:
            i, value = bad
            session.record(Outcome(
                UNBIASED,
                f"the estimate [{i[0]}, {i[1]}] should be exactly {expected[i]:.6g} in every call, actual "
                f"{value:.6g} in some call ({runs}): no episode visits state {i[0]} "
                f"({'terminal' if mdp.terminal[i[0]] else 'unreachable'}), so no score term "
                f"d log pi(a|s) / d theta[{i[0]}, :] enters a correct estimate"
                + ("" if convention != "loss_padded" else
                   f" (padding rows carry state {pad_state}: is the loss masked with valid?)"),
                mdp_inputs, expected=expected, actual=estimates.mean(axis=0), where=i))
            break
        test = _mean_test(estimates, expected, visit, size, alpha / 2)
        if not test.rejected:
            continue
        i = test.worst
        hint = _declaration_hint(raw, steps, size, horizon, objective, normalization, visit, alpha / 2,
                                 target, rescaled)
        if not hint and stage == 1:
            hint = (f"; unbiased at {per_call} episodes per call but not at {size}: a bias of order "
                    f"1/(episodes per call) comes from a baseline computed from the same episodes, the "
                    f"episode's own return included (leave the episode out)")
        elif not hint:
            hint = _factor_hint(estimates, expected, visit, size, alpha / 2, mdp.gamma, what)
        if np.isfinite(test.z[i]):
            actual = (f"actual {test.mean[i]:.6g} +- {test.stderr[i]:.2g} (t = {test.z[i]:.1f}, |t| threshold "
                      f"{test.threshold:.2f} at family-wise alpha = {alpha:g} over 2 stages of "
                      f"{int(_tested(visit, expected.shape).sum())} entries; {runs})")
        else:
            actual = (f"actual {test.mean[i]:.6g} in every one of the {n_calls} calls (zero spread, although an "
                      f"episode visits state {i[0]} with probability {visit[i[0]]:.3g}, so a correct estimate "
                      f"varies from call to call; {runs})")
        session.record(Outcome(
            UNBIASED, f"{shown} [{i[0]}, {i[1]}] should be {expected[i]:.6g} ({of}), {actual}{hint}",
            mdp_inputs, expected=expected, actual=test.mean, where=i))
        break
    return session.report()


def gradient_estimate_of(fn, convention: str, backend: str, theta, episodes, gamma: float, *,
                         dtype: str = "float64", normalization: str = "per_episode",
                         pad_state: int | None = None) -> np.ndarray:
    r"""One call's gradient estimate as the check judges it, outside a check (for tests and witnesses).

    ``"refpg"``: `fn`'s output; ``"loss"`` / ``"loss_padded"``: :math:`-\partial\,\text{loss}/\partial\theta`
    by torch autograd or ``jax.grad`` (the batch padded as the check pads it, to its own bucket). Then
    rescaled to the per-episode mean by `normalization` (times N / E for ``"per_step"``, 1 / E for
    ``"sum"``). `pad_state` is the state padding rows carry (default the last, the test MDP's terminal
    state). Returns an array of theta's shape in `dtype`.
    """
    check_choice(convention, "convention", tuple(REINFORCE_CONVENTIONS))
    check_choice(normalization, "normalization", NORMALIZATIONS)
    theta = np.asarray(theta, dtype=np.float64)
    episodes = [(np.asarray(s, dtype=np.int64), np.asarray(a, dtype=np.int64), np.asarray(r, dtype=np.float64))
                for s, a, r in episodes]
    if convention == "loss_padded":
        arrays = _padded(episodes, theta.shape[0] - 1 if pad_state is None else pad_state)
    if backend == "torch":
        import torch

        th = torch.tensor(theta.astype(dtype), requires_grad=convention != "refpg")
        if convention == "loss_padded":
            rest = [torch.from_numpy(x.astype(dtype) if x.dtype.kind == "f" else x) for x in arrays]
            out = fn(th, *rest, gamma)
        else:
            out = fn(th, [tuple(torch.from_numpy(x.astype(dtype) if x.dtype.kind == "f" else x) for x in ep)
                          for ep in episodes], gamma)
        g = out.detach().numpy() if convention == "refpg" else -torch.autograd.grad(out, th)[0].numpy()
    elif backend == "jax":
        import contextlib

        import jax
        import jax.numpy as jnp

        with jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext():
            conv = (lambda x: jnp.asarray(x.astype(dtype) if x.dtype.kind == "f" else
                                          x.astype(np.int64 if dtype == "float64" else np.int32)))
            th = conv(theta)
            if convention == "loss_padded":
                rest = [conv(x) for x in arrays]
                call = lambda t: fn(t, *rest, gamma)  # noqa: E731
            else:
                eps = [tuple(conv(x) for x in ep) for ep in episodes]
                call = lambda t: fn(t, eps, gamma)  # noqa: E731
            g = np.asarray(call(th) if convention == "refpg" else -jax.grad(lambda t: jnp.reshape(call(t), ()))(th))
    else:
        g = np.asarray(fn(theta.astype(dtype), [(s, a, r.astype(dtype)) for s, a, r in episodes], gamma))
    return g * _scale(normalization, episodes) if normalization != "per_episode" else g


def _loss_gradient(session, call, inputs) -> tuple:
    r"""-d loss / d theta of a call that returned a loss, float64 (S, A); or the outcomes saying why not.

    The loss itself must be a finite scalar of the backend's dtype (the generic output checks); then
    its gradient (`Session.input_gradient`: torch autograd, or one jitted ``jax.grad`` per padded
    shape) must exist (``differentiable``) and be finite (``output_finite``).
    """
    loss, outcomes = session.output_array(call.output, "loss", (), inputs)
    if loss is None:
        theta_shape = tuple(getattr(call.user_args[0], "shape", ()))
        returned = tuple(getattr(call.output, "shape", ()))
        for o in outcomes:
            if o.check_id == "reinforce_estimator.output_shape" and returned == theta_shape:
                o.message += ("; an output of theta's shape is a gradient estimate: declare convention='refpg' "
                              "for a function that returns the estimate itself")
        return None, outcomes
    session.ran(DIFFERENTIABLE)
    grad, why = session.input_gradient(call, "theta")
    if grad is None:
        return None, outcomes + [Outcome(DIFFERENTIABLE, why, inputs, actual=float(loss))]
    g = -grad
    if not np.all(np.isfinite(g)):
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(g))[0])
        return None, outcomes + [Outcome(
            "reinforce_estimator.output_finite",
            f"-d loss / d theta{list(idx)} should be finite for finite inputs, actual {g[idx]} (the loss "
            f"itself is {float(loss):.6g})", inputs, actual=g, where=idx)]
    return g, outcomes


def _passes_clearly(test: MeanTest) -> bool:
    """Not rejected, and the largest |t| below `_HINT_MARGIN` x the threshold: no borderline call."""
    return not test.rejected and float(np.max(np.abs(test.z))) < _HINT_MARGIN * test.threshold


def _declaration_hint(raw, steps, size, horizon, objective, normalization, visit, alpha, target,
                      rescaled) -> str:
    """"; the estimates are unbiased under objective=..., normalization=..." when another declaration's
    mean test, on the same estimates, passes with room to spare (`_HINT_MARGIN`), else ""."""
    fits = []
    for obj in OBJECTIVES:
        for norm in NORMALIZATIONS:
            if (obj, norm) == (objective, normalization):
                continue
            expected = target(obj, horizon)
            estimates = rescaled(raw, steps, size, norm)
            if _passes_clearly(_mean_test(estimates, expected, visit, size, alpha)):
                fits.append((obj, norm))
    if not fits:
        return ""
    named = []
    for obj, norm in fits:
        changed = [f"{k}={v!r}" for k, v, old in (("objective", obj, objective),
                                                   ("normalization", norm, normalization)) if v != old]
        why = [w for w, k, old in ((_OBJECTIVE_WHY[obj], obj, objective),
                                   (_NORMALIZATION_WHY[norm], norm, normalization)) if k != old]
        named.append(f"{', '.join(changed)} ({'; '.join(why)})")
    return (f"; the same estimates are unbiased under {' or under '.join(named)}: declare that if it is what the "
            f"code means to compute, else fix the code")


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
    # A named factor is stated when the mean test against factor x target passes clearly (as the
    # declaration hints are), or, failing that, when the fitted c is within 3% of it.
    close = [name for value, name in named if _passes_clearly(_mean_test(estimates, value * target, visit, size,
                                                                          alpha))]
    close = close or [name for value, name in named if abs(c / value - 1.0) < 0.03]
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
