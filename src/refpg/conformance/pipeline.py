r"""`check_pipeline_gradient`: is the first gradient of a library's whole pipeline, on average, the policy gradient?

The library runs as it does in training: it builds its own vector env from the kit's ``make_env``
(refpg's `refpg.envs.TabularEnv` with a time limit), collects its own rollouts with its own policy and
critic (whose parameters the kit sets), computes its own advantages and its own loss, and returns
the FIRST gradient of its update: the first minibatch of the first epoch, where PPO's ratio is 1 and
its clipping inactive, before any gradient-norm clipping. Over many seeds, the mean of that gradient
must be the exact mean of a correct pipeline (`refpg.collection.expected_pipeline_gradient`):

.. math::
    \mathbb E[g_W] = -c\sum_s \nu(s)\sum_a \pi(a|s)\,A^\pi(s,a)\,\nabla_{W}\log\pi(a|s)
      \;-\; c\,c_e\sum_s\nu(s)\nabla_W H(\pi(\cdot|s)),

:math:`\nu` the law of a state drawn from the buffer (`refpg.collection.rollout_state_distribution`:
fresh environments, reset in the step an episode ends, by termination or the time limit),
:math:`A^\pi` the exact advantage, c the loss's reduction constant (1 for a mean over the
minibatch, its size for a sum) and :math:`c_e` the entropy coefficient. The kit sets the critic to
the exact :math:`V^\pi`: then GAE with the right flags is conditionally unbiased for
:math:`A^\pi` whatever lambda, and a truncation bootstrapped with the value of the final
observation stays unbiased, so the target does not depend on lambda or on the library's
critic loss. This is the policy gradient theorem's direction with the buffer's weighting
:math:`\nu`, not the discounted occupancy d: it equals :math:`-c(1-\gamma)\nabla J` only where
:math:`\nu = d` [Nota2020], and the report's ``target`` option says how far apart the two are on
the test MDP.

A collector that treats the time limit as a termination (no bootstrap at a truncation: CleanRL's
``next_done = np.logical_or(terminations, truncations)``, vwxyzjn/cleanrl#198; the bug SB3 fixed in
DLR-RM/stable-baselines3#633) has another exact mean, and so do the other known collector bugs of
`refpg.collection.COLLECTORS`: when the data fit one of them, the failure says so.

Advantage normalisation cannot be checked this way: dividing by the batch's own standard deviation
is not linear in the samples, so its mean has no closed form. The check refuses it; turn it off in
the pipeline for the check.
"""

from __future__ import annotations

import numbers
import time

import numpy as np

from refpg._validation import check_choice, check_positive_int, check_real
from refpg.collection import COLLECTORS, expected_pipeline_gradient, rollout_state_distribution
from refpg.conformance._harness import (BACKENDS, DTYPES, Backend, Outcome, Session, check_callable,
                                        check_signature, numerics_of_their_own)
from refpg.conformance.report import Report
from refpg.errors import InvalidInputError
from refpg.evaluation import policy_evaluation
from refpg.mdp import TabularMDP
from refpg.stats import DEFAULT_ALPHA, MeanTest, mean_test

__all__ = ["check_pipeline_gradient", "PIPELINE_CONVENTIONS", "REDUCTIONS", "pipeline_test_case",
           "PipelineCase", "N_SEEDS", "MIN_SEEDS", "MIN_STATE_SAMPLES"]

#: The calling convention: ``fn(make_env, params, n_steps, n_envs, gamma, gae_lambda, seed) -> grads``.
PIPELINE_CONVENTIONS = {
    "refpg": ("make_env", "params", "n_steps", "n_envs", "gamma", "gae_lambda", "seed"),
}
#: How the library's loss reduces over the minibatch: a mean (c = 1) or a sum (c = the minibatch's size).
REDUCTIONS = ("mean", "sum")
#: Seeds (calls) of a check, and the fewest accepted. The t-test estimates each coordinate's standard error
#: from the calls' spread, and a call's gradient is a little skewed (a first minibatch of 64 holds about 8
#: samples of the rarest state), which fattens one tail of t. Measured on 40,000 simulated checks of a correct
#: pipeline (bench/pipeline.py --proxy 40000 --seeds N), rejections over nominal at alpha = 1e-2, 1e-3, 1e-4:
#: 1.16, 1.45, 2.0 at 20 seeds; 1.05, 1.05, 2.0 at 50; 1.04, 1.22, 0.75 at 200 (the 1e-4 column rests on 3 to 8
#: rejections against a nominal 4, within Poisson noise).
N_SEEDS = 200
MIN_SEEDS = 50
#: The buffer of the test: T steps of N environments, episodes cut at 3 steps. T = 8 is not a multiple of
#: the limit, so the buffer's last step is often mid-episode (its bootstrap matters); about a third of the
#: steps are truncations.
N_STEPS = 8
N_ENVS = 32
MAX_EPISODE_STEPS = 3
GAE_LAMBDA = 0.95
#: A hint names an alternative only when its own mean test passes with room to spare.
_HINT_MARGIN = 0.75

_KIND = "pipeline_gradient"
ROLLOUT = "pipeline_gradient.rollout"
ROW_SUMS = "pipeline_gradient.row_sums_zero"
UNOBSERVED = "pipeline_gradient.unobserved_state_zero"
BIAS = "pipeline_gradient.bias_gradient"
SEEDS = "pipeline_gradient.seeds_differ"
UNBIASED = "pipeline_gradient.unbiased"

#: Public threads of the collector bugs a failure can name.
_THREADS = {
    "truncation_as_termination": "CleanRL's ppo.py sets next_done = np.logical_or(terminations, truncations), "
                                 "vwxyzjn/cleanrl#198; fixed in SB3 by DLR-RM/stable-baselines3#633",
    "truncation_bootstraps_reset": "the auto-reset observation taken for the final one, "
                                   "Unity-Technologies/ml-agents#574",
    "truncation_bootstraps_current": "leggedrobotics/rsl_rl#151",
    "last_step_not_bootstrapped": "the value after the rollout taken as 0, as for a finished episode; the review "
                                  "of rohitg00/ai-engineering-from-scratch#54",
}


class PipelineCase:
    """The test case of `check_pipeline_gradient`: the MDP, the actor's logits and the exact critic.

    Attributes
    ----------
    mdp : TabularMDP
    logits : ndarray (S, A)
        ``actor_w + actor_b`` (the actor's bias, when it has one, is `ACTOR_BIAS`).
    pi : ndarray (S, A)
    values : ndarray (S,)
        The exact :math:`V^\\pi` (0 at the terminal state).
    """

    #: The bias the kit gives an actor that has one (actor_w = logits - ACTOR_BIAS).
    ACTOR_BIAS = np.array([0.25, -0.25])
    #: The bias the kit gives a critic that has one (critic_w = V - CRITIC_BIAS).
    CRITIC_BIAS = 1.0

    def __init__(self, mdp: TabularMDP, logits: np.ndarray):
        self.mdp = mdp
        self.logits = logits
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        self.pi = z / z.sum(axis=1, keepdims=True)
        self.values = policy_evaluation(mdp, self.pi).V

    def params(self, actor_bias: bool, critic_bias: bool) -> dict:
        """The parameters handed to the function: float64 arrays, a fresh copy per call."""
        out = {"actor_w": self.logits - (self.ACTOR_BIAS if actor_bias else 0.0),
               "critic_w": self.values - (self.CRITIC_BIAS if critic_bias else 0.0)}
        if actor_bias:
            out["actor_b"] = self.ACTOR_BIAS.copy()
        if critic_bias:
            out["critic_b"] = np.array(self.CRITIC_BIAS)
        return out


def pipeline_test_case() -> PipelineCase:
    r"""The MDP and policy every `check_pipeline_gradient` runs on.

    States 0, 1, 2 and the terminal state 3; two actions; gamma = 0.9; every episode starts in
    state 0.

    ===========  ======  =================================
    (s, a)       r(s,a)  P(. | s, a) over (0, 1, 2, 3)
    ===========  ======  =================================
    (0, 0)       3       (0,   1,   0,   0)
    (0, 1)       0.5     (0.4, 0.2, 0.3, 0.1)
    (1, 0)       1.4     (0,   0,   0.9, 0.1)
    (1, 1)       0.7     (1,   0,   0,   0)
    (2, 0)       -0.3    (0,   0,   0.9, 0.1)
    (2, 1)       -0.8    (0,   0.2, 0.7, 0.1)
    ===========  ======  =================================

    Logits [[1, -1], [-1, -1], [-1, 1], [0, 0]]: pi(0|.) = (0.88, 0.5, 0.12);
    V = (5.65, 3.35, -0.60, 0). With the default buffer (T = 8, N = 32, limit 3 steps)
    :math:`\nu` = (0.52, 0.35, 0.13, 0) while the discounted occupancy is
    d = (0.20, 0.20, 0.26, 0.34).

    Why this case: the actions lead to states of different values, so a wrong bootstrap at a
    truncation or at the buffer's end correlates with the action and biases the gradient; a third of
    the steps are truncations. It was chosen by a local search on a 0.1 grid (probabilities,
    rewards) and a 0.5 grid (logits, pi >= 0.1) to maximise the smallest standard-error distance,
    at 200 seeds, of the four collector bugs of `refpg.collection.COLLECTORS` that change the mean
    with an exact critic, for a loss over the whole buffer (simulated): truncation as termination
    114, the reset observation bootstrapped 81, V(s_t) bootstrapped 83, the buffer's last step not
    bootstrapped 98 (the threshold of the largest absolute t is 5.3). A first minibatch of 64 of
    the 256 samples doubles the standard errors: the bundled CleanRL-structured examples fail at
    t = -34 (truncation as termination) and -12 (the reset observation bootstrapped).
    """
    P = np.zeros((4, 2, 4))
    P[0, 0] = [0.0, 1.0, 0.0, 0.0]
    P[0, 1] = [0.4, 0.2, 0.3, 0.1]
    P[1, 0] = [0.0, 0.0, 0.9, 0.1]
    P[1, 1] = [1.0, 0.0, 0.0, 0.0]
    P[2, 0] = [0.0, 0.0, 0.9, 0.1]
    P[2, 1] = [0.0, 0.2, 0.7, 0.1]
    P[3, :, 3] = 1.0
    r = np.array([[3.0, 0.5], [1.4, 0.7], [-0.3, -0.8], [0.0, 0.0]])
    mdp = TabularMDP(P, r, [1.0, 0.0, 0.0, 0.0], 0.9, terminal=[False, False, False, True],
                     name="pipeline_test")
    return PipelineCase(mdp, np.array([[1.0, -1.0], [-1.0, -1.0], [-1.0, 1.0], [0.0, 0.0]]))


class _PipelineSession(Session):
    """A `Session` whose slow-check advice names this check's own knob, the number of seeds."""

    def _slow_warning(self) -> str | None:
        if self.user_seconds < self.slow_seconds:
            return None
        return (f"the function itself took {self.user_seconds:.1f} s of this check's "
                f"{time.perf_counter() - self.start:.1f} s ({self.calls} calls, "
                f"{1e3 * self.user_seconds / self.calls:.0f} ms each on average, slowest {self.slowest_call:.2f} s): "
                f"one whole collection and loss per seed; n_seeds (CLI: --option n_seeds=N, at least {MIN_SEEDS}) "
                f"shortens the check at the cost of power. A torch pipeline on a busy machine runs faster with "
                f"torch.set_num_threads(1)")


def _counting_env_factory(mdp: TabularMDP, limit: int, log: list):
    """``make_env`` for one call: each env it builds is a `TabularEnv` that counts its steps and resets."""
    from refpg.envs.gym_env import TabularEnv

    class _CountedTabularEnv(TabularEnv):
        def __init__(self):
            super().__init__(mdp, limit)
            self.steps = self.resets = self.ends = 0
            log.append(self)

        def reset(self, *, seed=None, options=None):
            self.resets += 1
            return super().reset(seed=seed, options=options)

        def step(self, action):
            out = super().step(action)
            self.steps += 1
            self.ends += bool(out[2] or out[3])
            return out

    _CountedTabularEnv.__name__ = _CountedTabularEnv.__qualname__ = "TabularEnv"

    def make_env():
        """A fresh refpg TabularEnv of the check's MDP and time limit."""
        return _CountedTabularEnv()

    return make_env


def _rollout_outcome(log: list, T: int, N: int, inputs: dict) -> Outcome | None:
    """Whether the function stepped exactly N envs built by make_env, T times each; else what it did."""
    stepped = [e for e in log if e.steps > 0]
    if not log:
        return Outcome(ROLLOUT, f"the function should build its {N} environments with make_env in this process "
                                f"and collect {T} steps from each, actual make_env was never called here (a "
                                f"subprocess vector env such as SB3's SubprocVecEnv steps them where the kit cannot "
                                f"count: use DummyVecEnv or gymnasium's SyncVectorEnv for the check)", inputs)
    counts = [e.steps for e in stepped]
    if len(stepped) == N and all(c == T for c in counts):
        return None
    hint = ""
    next_step = [e for e in stepped if e.steps < T and e.resets > 1 and e.steps + e.resets - 1 == T]
    if next_step:
        hint = ("; each short env was reset once in place of a step after every episode end: gymnasium >= 1.0 "
                "vector envs reset on the NEXT step by default (autoreset_mode NEXT_STEP), so the buffer holds "
                "transitions from a final observation to a reset one that no action caused; build the vector "
                "env with autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP and bootstrap truncations "
                "from infos['final_obs']")
    shown = counts if len(counts) <= 12 else counts[:12] + ["..."]
    return Outcome(ROLLOUT, f"the function should step {N} environments built by make_env {T} times each (n_envs, "
                            f"n_steps), actual {len(stepped)} stepped ({len(log)} built), steps per env {shown}"
                            f"{hint}", inputs)


def _gradient_outcomes(session, g: np.ndarray, gb, case, inputs) -> list:
    """Deterministic properties of one call's gradient: rows sum to 0, the terminal row is 0, b = sum of W's rows."""
    out = []
    scale = float(np.max(np.abs(g), initial=0.0))
    o = session.compare(ROW_SUMS, "grad['actor_w'].sum(axis=1)", g.sum(axis=1), np.zeros(g.shape[0]), inputs,
                        scale=scale, why="any loss of pi(.|s) = softmax(logits(s)) is unchanged by adding a constant "
                                         "to the row of logits, so each row of d loss / d actor_w sums to 0")
    if o is not None:
        out.append(o)
    term = case.mdp.terminal
    o = session.compare(UNOBSERVED, "grad['actor_w'][terminal states]", g[term], np.zeros_like(g[term]), inputs,
                        scale=scale, why="an episode is reset in the step that enters a terminal state, so no "
                                         "sample of the buffer is at one and no loss term touches its logits")
    if o is not None:
        out.append(o)
    if gb is not None:
        o = session.compare(BIAS, "grad['actor_b']", gb, g.sum(axis=0), inputs, scale=scale,
                            why="logits(s) = actor_w[s] + actor_b on one-hot observations, so d loss / d actor_b "
                                "is the sum over states of d loss / d actor_w[s]")
        if o is not None:
            out.append(o)
    return out


#: The fewest samples of each live state the first minibatch must hold on average (B nu(s)). With fewer, a
#: call's gradient coordinate is a sum of a handful of terms, so skewed that the t-test's level is far from
#: alpha (measured: 1 false alarm in 20 checks at T = 3, N = 2, 20 seeds). bench/pipeline.py measures the
#: level at B = 64, where the rarest state has 8.2 on average.
MIN_STATE_SAMPLES = 5.0


def _mean_test(G: np.ndarray, expected: np.ndarray, mask: np.ndarray, alpha: float) -> MeanTest:
    r"""Student t per tested coordinate of actor_w, Bonferroni over them, family-wise `alpha`.

    A coordinate with the same value in every call fails if that value is not the target: with at least
    `MIN_STATE_SAMPLES` samples of its state per minibatch on average, a correct pipeline misses the state
    in all of 50 calls with probability about exp(-5 x 50)."""
    return mean_test(G, expected, alpha=alpha, tested=mask, student=True)


def _passes_clearly(test: MeanTest) -> bool:
    return not test.rejected and float(np.max(np.abs(test.z))) < _HINT_MARGIN * test.threshold


def _alternatives(case, T, L, lam, c, ent, B) -> list:
    """(label, expected actor_w) of the known mistakes a failure can name."""
    mdp, pi = case.mdp, case.pi

    def target(**kw):
        args = dict(gae_lambda=lam, scale=c, ent_coef=ent)
        args.update(kw)
        return expected_pipeline_gradient(mdp, pi, T, L, **args).actor_w

    out = []
    for name, thread in _THREADS.items():
        out.append((f"a collector where {COLLECTORS[name]} ({thread})", target(collector=name)))
    if mdp.gamma != 0.99:
        out.append((f"the library discounting with gamma = 0.99 (SB3's and CleanRL's default), not the gamma = "
                    f"{mdp.gamma:g} it was passed", target(gamma=0.99)))
    if ent == 0.0:
        out.append(("an entropy bonus of 0.01 in the loss (CleanRL's default ent_coef): declare ent_coef=0.01, or "
                    "set it to 0 in the pipeline", target(ent_coef=0.01)))
    else:
        out.append(("no entropy bonus in the loss: declare ent_coef=0.0", target(ent_coef=0.0)))
    if c == 1.0 and B > 1:
        out.append((f"a loss summed over the minibatch instead of averaged: declare reduction='sum' (c = {B}, the "
                    f"minibatch size)", target(scale=float(B))))
    elif c != 1.0:
        out.append(("a loss averaged over the minibatch: declare reduction='mean'", target(scale=1.0)))
    out.append(("the gradient of the objective to maximise, not of the loss: the sign is flipped (return d loss / "
                "d params)", -target()))
    return out


def _hint(G, mask, alpha, alternatives, expected) -> str:
    fits = [label for label, alt in alternatives if _passes_clearly(_mean_test(G, alt, mask, alpha))]
    if fits:
        return "; the gradients fit " + " or ".join(fits)
    # A common factor (normalised advantages divide by the batch's std; a missing or extra constant).
    mean = G.mean(axis=0)
    se = G.std(axis=0, ddof=1) / np.sqrt(G.shape[0])
    use = mask & (se > 0)
    if use.sum() >= 2:
        w = 1.0 / se[use] ** 2
        t, m = expected[use], mean[use]
        cf = float(np.sum(w * m * t) / np.sum(w * t * t))
        if abs(cf) >= 0.05 and np.sum(np.abs(cf * t) > 5 * se[use]) >= 2 and \
                not _mean_test(G, cf * expected, mask, alpha).rejected:
            return (f"; every coordinate is about {cf:.3g} x the expected one: a constant factor (a sum for a mean, "
                    f"a missing coefficient) or normalised advantages (divided by the batch's std: turn "
                    f"normalisation off for the check)")
    return ("; no known mistake fits (checked: truncations treated as terminations, the reset or current state "
            "bootstrapped, the last step not bootstrapped, gamma 0.99, an entropy bonus, a sum for a mean, a flipped "
            "sign, a constant factor); is advantage normalisation off, and is the first minibatch's gradient taken "
            "before any optimiser step?")


def _describe_target(case, c, nu) -> str:
    ev = policy_evaluation(case.mdp, case.pi)
    ours = (nu[:, None] * case.pi * ev.A).ravel()
    theirs = (ev.d[:, None] * case.pi * ev.A).ravel()
    cos = float(ours @ theirs / (np.linalg.norm(ours) * np.linalg.norm(theirs)))
    rel = float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))
    return (f"-c sum_s nu(s) sum_a pi A^pi grad log pi, c = {c:g}, nu = buffer state law "
            f"{np.array2string(nu, precision=3)} (not d = {np.array2string(ev.d, precision=3)}: against "
            f"-(1-gamma) c grad J, cosine {cos:.3f}, relative difference {rel:.2f})")


@numerics_of_their_own
def check_pipeline_gradient(fn, *, convention: str = "refpg", backend: str = "auto", dtype: str = "float64",
                            seed: int = 0, n_seeds: int = N_SEEDS, n_steps: int = N_STEPS, n_envs: int = N_ENVS,
                            max_episode_steps: int = MAX_EPISODE_STEPS, gae_lambda: float = GAE_LAMBDA,
                            actor_bias: bool = False, critic_bias: bool = False, reduction: str = "mean",
                            minibatch_size: int = None, ent_coef: float = 0.0, normalize_advantage: bool = False,
                            alpha: float = DEFAULT_ALPHA) -> Report:
    r"""Check that a library's whole pipeline gives, on average, the exact first gradient of a correct one.

    Parameters
    ----------
    fn : callable
        ``fn(make_env, params, n_steps, n_envs, gamma, gae_lambda, seed) -> grads``:

        * ``make_env()`` returns a fresh `refpg.envs.TabularEnv` of the test MDP
          (`pipeline_test_case`) with its time limit; build the vector env from it
          (``DummyVecEnv([make_env] * n_envs)``, or gymnasium's ``SyncVectorEnv`` with
          ``autoreset_mode=SAME_STEP``), in this process: the kit counts the steps.
          Observations are ints (Discrete); the policy sees them one-hot.
        * ``params``: float64 arrays ``"actor_w"`` (S, A), ``"critic_w"`` (S,), and
          ``"actor_b"`` (A,), ``"critic_b"`` (scalar) when declared: logits(s) =
          actor_w[s] + actor_b, V(s) = critic_w[s] + critic_b (SB3 with ``net_arch=[]``:
          ``action_net.weight`` = actor_w.T, ``value_net.weight`` = critic_w[None]).
          The critic is the exact :math:`V^\pi`.
        * collect ``n_steps`` steps from each of ``n_envs`` envs, with discount ``gamma`` and
          GAE ``gae_lambda``, seeded by ``seed`` (envs and action sampling);
        * return the gradient of the FIRST minibatch of the first epoch, before any
          gradient clipping or optimiser step: a dict with ``"actor_w"`` (S, A) and, with
          `actor_bias`, ``"actor_b"`` (A,), each d loss / d param (NumPy, torch or JAX; other
          keys, such as the critic's, are ignored).
    convention : {"refpg"}
    backend : {"auto", "numpy", "torch", "jax"}
        Only a label for the report (the parameters are NumPy); "auto" names what the
        gradients come back as.
    dtype : {"float64", "float32"}
        The precision the pipeline computes in (SB3: float32); the gradients must have it.
    seed : int >= 0
        Seeds the seeds passed to the calls (``numpy.random.SeedSequence(seed)``, 31-bit).
    n_seeds : int >= 50
        Calls, one buffer each (`MIN_SEEDS`).
    n_steps, n_envs, max_episode_steps : int
        T, N and the time limit of the envs (defaults 8, 32, 3).
    gae_lambda : float in [0, 1]
        Passed to the function; the target does not depend on it.
    actor_bias, critic_bias : bool
        Whether the actor's logits and the critic have a bias (SB3's Linear layers do).
    reduction : {"mean", "sum"}
        How the loss reduces over the minibatch: c = 1 for a mean, c = the minibatch's size
        for a sum.
    minibatch_size : int, optional
        The size of the first minibatch (default: the whole buffer, T N); it matters only for
        ``reduction="sum"``, and for the hint that names a sum.
    ent_coef : float
        The pipeline's entropy coefficient (its loss subtracts ent_coef x mean entropy).
    normalize_advantage : bool
        Must be False (refused otherwise: see Raises).
    alpha : float in (0, 1)
        Family-wise false-alarm rate of the mean test.

    Returns
    -------
    Report
        ``pipeline_gradient.rollout`` (N envs from make_env, T steps each),
        ``pipeline_gradient.row_sums_zero``, ``pipeline_gradient.unobserved_state_zero``
        (the terminal state's row is 0), ``pipeline_gradient.bias_gradient`` (with
        `actor_bias`: d/d actor_b = the sum of the rows of d/d actor_w), checked on every
        call; ``pipeline_gradient.seeds_differ`` (no two seeds give the same gradient) and
        ``pipeline_gradient.unbiased`` (the mean test) over all calls; and the generic ids.
        The report's ``target`` option states what the mean is compared with and how it
        weighs states.

    Raises
    ------
    refpg.errors.InvalidInputError
        A bad option, fewer than `MIN_SEEDS` seeds, a first minibatch that would hold fewer than
        `MIN_STATE_SAMPLES` samples of some state on average, or ``normalize_advantage=True``.

    Notes
    -----
    The mean test, over the live states s and every action but the last (each row sums to 0):

    .. math::
        t_{sa} = \frac{\bar g_{sa} - \mathbb E[g]_{sa}}{s_{sa}/\sqrt n},\qquad
        \text{reject if } \max|t_{sa}| > F^{-1}_{t_{n-1}}\Big(1 - \frac{\alpha}{2k}\Big),

    k the number of tested coordinates. Student's t is exact for normal per-call gradients; these
    are means of a minibatch's samples, a little skewed, and the level measured on simulated
    correct pipelines is close to nominal at 50 seeds and more (`N_SEEDS`; bench/pipeline.py).
    On failure the same gradients are tested against the
    exact means of the known mistakes (`refpg.collection.COLLECTORS`, gamma 0.99, an entropy
    bonus, a sum for a mean, a flipped sign) and those that fit are named. GAE run across
    episode ends has the correct mean with an exact critic, so this check cannot see it.
    """
    check_callable(fn)
    check_choice(convention, "convention", tuple(PIPELINE_CONVENTIONS))
    check_choice(backend, "backend", BACKENDS)
    check_choice(dtype, "dtype", DTYPES)
    seed = check_positive_int(seed, "seed", minimum=0)
    if isinstance(n_seeds, numbers.Integral) and not isinstance(n_seeds, bool) and n_seeds < MIN_SEEDS:
        raise InvalidInputError(
            f"n_seeds should be >= {MIN_SEEDS}, actual {n_seeds}: the mean test estimates each coordinate's "
            f"standard error from the spread of the calls' gradients, and with fewer calls the skew of each call's "
            f"gradient moves the test's level away from alpha (bench/pipeline.py measures it)")
    n_seeds = check_positive_int(n_seeds, "n_seeds", minimum=MIN_SEEDS)
    T = check_positive_int(n_steps, "n_steps")
    N = check_positive_int(n_envs, "n_envs")
    L = check_positive_int(max_episode_steps, "max_episode_steps")
    lam = check_real(gae_lambda, "gae_lambda", low=0.0, high=1.0)
    for name, value in (("actor_bias", actor_bias), ("critic_bias", critic_bias),
                        ("normalize_advantage", normalize_advantage)):
        if not isinstance(value, (bool, np.bool_)):
            raise InvalidInputError(f"{name} should be True or False, actual {value!r}")
    if normalize_advantage:
        raise InvalidInputError(
            "normalize_advantage should be False for this check, actual True: normalising divides the advantages "
            "by the batch's own standard deviation, which is not linear in the samples, so the mean gradient has "
            "no exact value to test against. Turn normalisation off in the pipeline for the check (SB3: "
            "PPO(..., normalize_advantage=False); CleanRL: --norm-adv False); the advantages themselves are "
            "what the check is about, and normalisation is checked on a fixed batch by kind 'update'")
    check_choice(reduction, "reduction", REDUCTIONS)
    M = T * N
    B = M if minibatch_size is None else check_positive_int(minibatch_size, "minibatch_size")
    if B > M:
        raise InvalidInputError(f"minibatch_size should be <= n_steps * n_envs = {M}, actual {B}")
    ent = check_real(ent_coef, "ent_coef")
    case = pipeline_test_case()
    nu = rollout_state_distribution(case.mdp, case.pi, T, L)
    thin = [s for s in np.flatnonzero(nu > 0) if B * nu[s] < MIN_STATE_SAMPLES]
    if thin:
        raise InvalidInputError(
            f"the first minibatch should hold at least {MIN_STATE_SAMPLES:g} samples of every state on average, "
            f"actual {', '.join(f'{B * nu[s]:.1f} of state {s}' for s in thin)} (minibatch of {B} samples, state "
            f"law nu = {np.array2string(nu, precision=3)} for n_steps = {T}, max_episode_steps = {L}): with fewer, "
            f"each call's gradient is too skewed for the t-test to keep its level; raise n_envs (or the minibatch)")
    alpha = check_real(alpha, "alpha", low=0.0, high=1.0, low_open=True, high_open=True)
    c = 1.0 if reduction == "mean" else float(B)
    signature_notes = check_signature(fn, _KIND, convention, PIPELINE_CONVENTIONS)

    mdp = case.mdp
    S, A = mdp.n_states, mdp.n_actions
    expected = expected_pipeline_gradient(mdp, case.pi, T, L, gae_lambda=lam, scale=c, ent_coef=ent).actor_w
    seeds = [int(x) for x in np.random.SeedSequence(seed).generate_state(n_seeds, dtype=np.uint32) >> 1]
    opts = dict(n_seeds=n_seeds, n_steps=T, n_envs=N, max_episode_steps=L, gae_lambda=lam, actor_bias=actor_bias,
                critic_bias=critic_bias, reduction=reduction, minibatch_size=minibatch_size, ent_coef=ent,
                alpha=alpha, target=_describe_target(case, c, nu))
    session = _PipelineSession(_KIND, fn, convention, Backend("numpy" if backend == "auto" else backend, dtype),
                      max_examples=n_seeds, seed=seed, options=opts, warnings=signature_notes)
    session.declare(*session.generic_ids())
    session.declare(ROLLOUT, ROW_SUMS, UNOBSERVED, *((BIAS,) if actor_bias else ()), SEEDS, UNBIASED, tracked=True)
    base_inputs = {"P (MDP)": mdp.P, "r (MDP)": mdp.r, "rho (MDP)": mdp.rho, "terminal (MDP)": mdp.terminal,
                   "gamma": mdp.gamma, "pi (derived)": case.pi, "V (exact critic)": case.values,
                   "n_steps": T, "n_envs": N, "max_episode_steps": L, "gae_lambda": lam}

    grads = []
    for k, s_k in enumerate(seeds):
        log: list = []
        params = case.params(actor_bias, critic_bias)
        sent = {name: value.copy() for name, value in params.items()}
        inputs = {**base_inputs, "params": sent, "seed": s_k}
        call = session.call([("make_env", _counting_env_factory(mdp, L, log)), ("params", params), ("n_steps", T),
                             ("n_envs", N), ("gamma", mdp.gamma), ("gae_lambda", lam), ("seed", s_k)])
        outcomes = session.generic_outcomes(call, inputs)
        changed = [name for name in sent if not np.array_equal(np.asarray(params.get(name)), sent[name])]
        if changed:
            outcomes.append(Outcome(f"{_KIND}.input_mutated",
                                    f"the params arrays should be left unchanged, actual {', '.join(changed)} modified "
                                    f"in place (does the model share memory with them? copy them in)", inputs))
        g = None
        if call.error is None:
            session.ran(ROLLOUT)
            o = _rollout_outcome(log, T, N, inputs)
            if o is not None:
                outcomes.append(o)
            g, gb, more = _read_grads(session, call.output, S, A, actor_bias, inputs)
            outcomes += more
            if g is not None and k == 0 and backend == "auto":
                session.backend = Backend(_backend_of(call.output["actor_w"]), dtype)
            if g is not None and (gb is not None or not actor_bias):
                outcomes += _gradient_outcomes(session, g, gb, case, inputs)
        if outcomes:
            for o in outcomes:
                session.record(o)
            ids = ", ".join(sorted({o.check_id for o in outcomes}))
            for cid in (SEEDS, UNBIASED):
                session.not_run_because(cid, f"the mean test needs a gradient from every seed, and the call with "
                                             f"seed {s_k} (call {k + 1} of {n_seeds}) stopped at {ids} (see there)")
            return session.report()
        grads.append(g)

    G = np.array(grads)
    session.ran(UNBIASED)
    # With at least MIN_STATE_SAMPLES samples of every live state in a minibatch, a correct pipeline's gradient
    # takes so many values that two seeds giving the same one means the seed is not used.
    flat = G.reshape(n_seeds, -1)
    _, first, counts = np.unique(flat, axis=0, return_index=True, return_counts=True)
    if np.any(counts > 1):
        j = int(first[np.argmax(counts)])
        session.record(Outcome(SEEDS, f"the gradients of different seeds should differ, actual {int(counts.max())} of "
                                      f"the {n_seeds} calls returned the same gradient (first with seed {seeds[j]}): "
                                      f"does the function pass seed to the environments (reset(seed=...)) and to its "
                                      f"action sampling?", {**base_inputs, "seed": seeds[j]}, actual=G[j]))
        session.not_run_because(UNBIASED, "the mean test needs independent calls, and some seeds repeat a gradient "
                                          "(see pipeline_gradient.seeds_differ)")
        return session.report()
    session.ran(SEEDS)
    mask = np.zeros((S, A), dtype=bool)
    mask[nu > 0, :-1] = True
    test = _mean_test(G, expected, mask, alpha)
    if test.rejected:
        i = test.worst
        hint = _hint(G, mask, alpha, _alternatives(case, T, L, lam, c, ent, B), expected)
        session.record(Outcome(
            UNBIASED,
            f"the mean over {n_seeds} seeds of d loss / d actor_w[{i[0]}, {i[1]}] should be {expected[i]:.6g} (the "
            f"exact mean first gradient of a correct pipeline, -c sum_s nu(s) sum_a pi A^pi grad log pi with c = "
            f"{c:g}), actual {test.mean[i]:.6g} +- {test.stderr[i]:.2g} (t = {test.z[i]:.1f}, |t| threshold "
            f"{test.threshold:.2f} at family-wise alpha = {alpha:g} over {int(mask.sum())} coordinates){hint}",
            {**base_inputs, "nu (buffer state law)": nu, "seeds (first 3)": np.array(seeds[:3])},
            expected=expected, actual=test.mean, where=i))
    return session.report()


def _backend_of(x) -> str:
    module = type(x).__module__
    return "torch" if module.startswith("torch") else "jax" if module.startswith(("jax", "jaxlib")) else "numpy"


def _read_grads(session, out, S, A, actor_bias, inputs):
    """(actor_w (S, A) float64, actor_b (A,) or None, outcomes) from the function's dict."""
    shape_id = f"{_KIND}.output_shape"
    session.ran(shape_id)
    if not isinstance(out, dict):
        return None, None, [Outcome(shape_id, f"the output should be a dict of gradients {{'actor_w': (S, A)"
                                              f"{', ' + repr('actor_b') + ': (A,)' if actor_bias else ''}}} with S = "
                                              f"{S}, A = {A}, actual {type(out).__name__}", inputs)]
    wanted = ["actor_w"] + (["actor_b"] if actor_bias else [])
    missing = [k for k in wanted if k not in out]
    if missing:
        why = (" (actor_bias=True was declared: return the gradient of the actor's bias too)"
               if "actor_b" in missing else "")
        return None, None, [Outcome(shape_id, f"the output dict should hold {wanted}, actual keys "
                                              f"{sorted(map(str, out))}{why}", inputs)]
    if not actor_bias and "actor_b" in out:
        session.warn("the output has 'actor_b' but actor_bias=False was declared, so the kit set no bias: the "
                     "policy is the test's only if the pipeline's bias is 0; declare actor_bias=True to have it set "
                     "and its gradient checked")
    g, outcomes = session.output_array(out["actor_w"], "grad['actor_w']", (S, A), inputs)
    gb = None
    if actor_bias:
        gb, more = session.output_array(out["actor_b"], "grad['actor_b']", (A,), inputs)
        outcomes += more
    return g, gb, outcomes
