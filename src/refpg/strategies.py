r"""Hypothesis strategies for finite MDPs, policies and parameters.

For property-based tests of refpg itself and of code checked against it::

    import numpy as np, refpg
    from hypothesis import given
    from refpg.strategies import mdp_policy_theta

    @given(mdp_policy_theta(max_states=4))
    def test_gradient_is_finite(case):
        mdp, policy, theta = case
        assert np.isfinite(refpg.policy_gradient(mdp, policy, theta)).all()

Design, after Hypothesis's ``guides/api-style.rst`` and
`hypothesis.extra.numpy`:

* Every argument is a plain value (an int, a float, an MDP, a policy), never
  a strategy. To vary one, draw it first:
  ``st.integers(2, 6).flatmap(lambda n: mdps(max_states=n))``, or
  ``mdps().flatmap(policies)``.
* Arguments are validated when the strategy is first used (by ``@given``,
  `hypothesis.find` or a ``draw``), as Hypothesis's own strategies are: a bad
  argument raises `hypothesis.errors.InvalidArgument` naming the argument,
  what was expected and the actual value, in the test that uses the strategy
  rather than at import time.
* Everything is built constructively, bottom-up: probabilities come from
  integer weights in 0..13 (a third of them 0) normalised per row; rewards,
  features and parameters from integer grids scaled into their range.
  Nothing is filtered or rejected, so no draw is wasted and no health check
  fires. The grids keep floats away from subnormals and huge exponents, yet
  produce the exact zeros, ties and deterministic rows that break careless
  code.
* Every docstring says what examples shrink towards: the smallest, most
  degenerate object (every transition to one state, zero rewards, zero
  parameters), so a failing example reduces to something readable.

All arrays are float64.
"""

from __future__ import annotations

import inspect
import math
import numbers

import numpy as np
import scipy.sparse as sp
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from refpg.mdp import TabularMDP
from refpg.policies import LogLinear, Parameterization, TabularSoftmax

__all__ = [
    "probability_vectors",
    "probability_matrices",
    "mdps",
    "tabular_softmax",
    "log_linear",
    "parameterizations",
    "thetas",
    "policies",
    "mdp_policy_theta",
    "KINDS",
]

# Probability weights are w = max(0, k - _WEIGHT_CUT), k in 0.._WEIGHT_MAX,
# before normalisation: weights 0..13, about a third of them exactly 0, so
# sparse rows, deterministic rows and unreachable states are common.
_WEIGHT_MAX = 20
_WEIGHT_CUT = 7
# Rewards are k / _REWARD_STEPS * reward_scale, k in -_REWARD_STEPS.._REWARD_STEPS.
_REWARD_STEPS = 100
# Features are k / _FEATURE_STEPS, k in -_FEATURE_STEPS.._FEATURE_STEPS.
_FEATURE_STEPS = 4
# Parameters are k / _THETA_STEPS * max_abs, k in -_THETA_STEPS.._THETA_STEPS.
_THETA_STEPS = 16
# Episodic MDPs: every non-terminal (s, a) terminates with probability
# q = k / 10, k in _TERMINATION_STEPS, so at least 0.1.
_TERMINATION_STEPS = (1, 5)
#: The names `parameterizations` accepts in `kinds`.
KINDS = ("tabular", "log_linear")


# -- argument validation ----------------------------------------------------

_FLATMAP_HINT = "e.g. st.integers(2, 6).flatmap(lambda n: mdps(max_states=n))"


def _not_a_strategy(value, name: str, hint: str = _FLATMAP_HINT) -> None:
    if isinstance(value, st.SearchStrategy):
        raise InvalidArgument(
            f"{name} should be a value, actual the strategy {value!r}; refpg's "
            f"strategies take values, so draw the value first, {hint}")


def _integer(value, name: str, *, min_value: int, min_why: str = "") -> int:
    _not_a_strategy(value, name)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise InvalidArgument(f"{name} should be an integer, actual {value!r}")
    if value < min_value:
        raise InvalidArgument(f"{name} should be >= {min_value}{min_why}, actual {value!r}")
    return int(value)


def _real(value, name: str, *, min_value: float | None = None, max_value: float | None = None,
          max_open: bool = False, max_why: str = "") -> float:
    _not_a_strategy(value, name)
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)
            or not math.isfinite(value)):
        raise InvalidArgument(f"{name} should be a finite real number, actual {value!r}")
    x = float(value)
    if min_value is not None and x < min_value:
        raise InvalidArgument(f"{name} should be >= {min_value}, actual {value!r}")
    if max_value is not None and (x > max_value or (max_open and x == max_value)):
        op = "<" if max_open else "<="
        raise InvalidArgument(f"{name} should be {op} {max_value}{max_why}, actual {value!r}")
    return x


def _boolean(value, name: str) -> bool:
    _not_a_strategy(value, name)
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidArgument(f"{name} should be True or False, actual {value!r}")
    return bool(value)


def _ordered(lo, hi, lo_name: str, hi_name: str) -> None:
    if lo > hi:
        raise InvalidArgument(
            f"{lo_name} should be <= {hi_name}, actual {lo_name}={lo!r} > {hi_name}={hi!r}")


def _mdp(mdp) -> TabularMDP:
    _not_a_strategy(mdp, "mdp", "e.g. mdps().flatmap(policies)")
    if not isinstance(mdp, TabularMDP):
        raise InvalidArgument(f"mdp should be a refpg.TabularMDP, actual {type(mdp).__name__}")
    return mdp


def _policy(policy) -> Parameterization:
    _not_a_strategy(policy, "policy", "e.g. parameterizations(mdp).flatmap(thetas)")
    if not isinstance(policy, Parameterization):
        raise InvalidArgument(
            "policy should be a refpg parameterization (TabularSoftmax or LogLinear), "
            f"actual {type(policy).__name__}")
    return policy


def _kinds(kinds) -> tuple:
    _not_a_strategy(kinds, "kinds", "e.g. st.sampled_from(KINDS).flatmap("
                    "lambda k: parameterizations(mdp, kinds=(k,)))")
    if isinstance(kinds, str) or not isinstance(kinds, (tuple, list)):
        raise InvalidArgument(
            f"kinds should be a tuple of names from {KINDS}, e.g. ('tabular',), actual {kinds!r}")
    if not kinds:
        raise InvalidArgument(f"kinds should name at least one of {KINDS}, actual {kinds!r}")
    for k in kinds:
        if k not in KINDS:
            raise InvalidArgument(
                f"kinds should hold only names from {KINDS}, actual {k!r} in {kinds!r}")
    if len(set(kinds)) != len(kinds):
        raise InvalidArgument(f"kinds should not repeat a name, actual {kinds!r}")
    return tuple(kinds)


def _features_range(min_features, max_features) -> tuple:
    lo = _integer(min_features, "min_features", min_value=1)
    hi = _integer(max_features, "max_features", min_value=1)
    _ordered(lo, hi, "min_features", "max_features")
    return lo, hi


def _lazy(name: str, build, /, *args, **kwargs) -> st.SearchStrategy:
    """The strategy ``build()`` returns, built (and so validated) on first use.

    The same contract as Hypothesis's own strategies: calling a strategy
    function never raises; using the strategy raises `InvalidArgument`.
    `args` and `kwargs` are the public call's arguments, shown in the repr.
    """
    def definition():
        return build()

    shown = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    # st.deferred shows this name in its repr until the strategy is resolved.
    definition.__name__ = definition.__qualname__ = f"{name}({', '.join(shown)})"
    return st.deferred(definition)


# -- building blocks ---------------------------------------------------------
#
# Composites throughout, never `.map`: every mapped draw opens a span with the
# same label, and Hypothesis's generator splices spans with equal labels into
# one another; a float span given an array's choices falls back to its
# simplest value, which made gamma = 0 in most examples.

@st.composite
def _int_arrays(draw, shape: tuple, lo: int, hi: int) -> np.ndarray:
    """int64 arrays with entries in lo..hi; shrink towards the entry nearest 0."""
    # One draw per entry rather than hypothesis.extra.numpy.arrays: after an
    # `arrays` draw, the draws that follow (gamma!) came out as their simplest
    # value in most examples, as with `.map` above.
    elements = st.integers(lo, hi)
    return np.array([draw(elements) for _ in range(math.prod(shape))],
                    dtype=np.int64).reshape(shape)


def _on_grid(k: np.ndarray, steps: int, scale: float) -> np.ndarray:
    """``k / steps * scale`` as float64: |result| <= scale exactly, and no -0.0."""
    return (k / steps) * scale + 0.0


@st.composite
def _weights(draw, shape: tuple) -> np.ndarray:
    k = draw(_int_arrays(shape, 0, _WEIGHT_MAX))
    return np.maximum(k - _WEIGHT_CUT, 0).astype(np.float64)


@st.composite
def _distribution_rows(draw, n_rows: int, n_cols: int, fallback: int = 0) -> np.ndarray:
    """(n_rows, n_cols) rows of distributions; an all-zero weight row becomes e_fallback."""
    w = draw(_weights((n_rows, n_cols)))
    w[w.sum(axis=1) == 0, fallback] = 1.0
    return w / w.sum(axis=1, keepdims=True)


@st.composite
def _distribution_vector(draw, n: int, min_support: int) -> np.ndarray:
    w = draw(_weights((n,)))
    # Too few positive weights: the first zero weights become 1. A transform,
    # not a filter, so every draw is used; all zeros -> uniform on the first
    # min_support entries.
    need = min_support - np.count_nonzero(w)
    if need > 0:
        w[np.flatnonzero(w == 0)[:need]] = 1.0
    return w / w.sum()


@st.composite
def _rewards(draw, shape: tuple, scale: float) -> np.ndarray:
    return _on_grid(draw(_int_arrays(shape, -_REWARD_STEPS, _REWARD_STEPS)), _REWARD_STEPS, scale)


@st.composite
def _discounts(draw, lo: float, hi: float) -> float:
    if lo == hi:
        return lo
    # gamma = lo + u (hi - lo) with u in [0, 1], so gamma shrinks to lo exactly
    # (a plain floats(lo, hi) shrinks to the "simplest" float in range).
    u = draw(st.floats(0.0, 1.0, allow_subnormal=False))
    # About one example in eight gets max_gamma itself: gamma = 1 (proper
    # MDPs) is a code path of its own, and floats alone rarely reach 1. Both
    # draws always happen, else the shrinker would prefer the shorter
    # "gamma = max_gamma" branch to gamma = min_gamma.
    if draw(st.integers(0, 7)) == 7:
        return hi
    return min(hi, lo + u * (hi - lo))


@st.composite
def _mdps(draw, *, min_states, max_states, min_actions, max_actions, min_gamma,
          max_gamma, episodic, sparse, reward_scale) -> TabularMDP:
    S = draw(st.integers(min_states, max_states))
    A = draw(st.integers(min_actions, max_actions))
    # gamma and r before P: Hypothesis often fills the tail of an example with
    # the simplest choices, and gamma = 0 or r = 0 makes most identities trivial.
    gamma = draw(_discounts(min_gamma, max_gamma))
    terminal = np.zeros(S, dtype=bool)
    if episodic:
        live = S - 1  # states 0..S-2; S-1 is terminal
        r = np.zeros((S, A))
        r[:live] = draw(_rewards((live, A), reward_scale))
        k = draw(_int_arrays((live, A), *_TERMINATION_STEPS))
        D = draw(_distribution_rows(live * A, S, fallback=S - 1)).reshape(live, A, S)
        P = np.zeros((S, A, S))
        P[:live] = ((10 - k) / 10)[:, :, None] * D
        P[:live, :, S - 1] += k / 10
        P[S - 1, :, S - 1] = 1.0
        rho = np.zeros(S)
        rho[:live] = draw(_distribution_vector(live, 1))
        terminal[S - 1] = True
    else:
        r = draw(_rewards((S, A), reward_scale))
        P = draw(_distribution_rows(S * A, S)).reshape(S, A, S)
        rho = draw(_distribution_vector(S, 1))
    if sparse:
        P = sp.csr_array(P.reshape(S * A, S))
    return TabularMDP(P, r, rho, gamma, terminal)


@st.composite
def _log_linear(draw, mdp: TabularMDP, min_features: int, max_features: int) -> LogLinear:
    d = draw(st.integers(min_features, max_features))
    k = draw(_int_arrays((mdp.n_states, mdp.n_actions, d), -_FEATURE_STEPS, _FEATURE_STEPS))
    return LogLinear(_on_grid(k, _FEATURE_STEPS, 1.0))


def _parameterizations(mdp, kinds, min_features, max_features) -> st.SearchStrategy:
    return st.one_of([st.just(TabularSoftmax.for_mdp(mdp)) if kind == "tabular"
                      else _log_linear(mdp, min_features, max_features) for kind in kinds])


@st.composite
def _thetas(draw, policy: Parameterization, max_abs: float) -> np.ndarray:
    k = draw(_int_arrays(policy.theta_shape, -_THETA_STEPS, _THETA_STEPS))
    return _on_grid(k, _THETA_STEPS, max_abs)


@st.composite
def _policies(draw, n_states: int, n_actions: int, min_prob: float) -> np.ndarray:
    # max(0, .): A * (1/A) may round to just above 1.
    keep = max(0.0, 1.0 - n_actions * min_prob)
    return keep * draw(_distribution_rows(n_states, n_actions)) + min_prob


@st.composite
def _mdp_policy_theta(draw, mdp_strategy, kinds, min_features, max_features, max_abs):
    mdp = draw(mdp_strategy)
    policy = draw(_parameterizations(mdp, kinds, min_features, max_features))
    return mdp, policy, draw(_thetas(policy, max_abs))


# -- public strategies ---------------------------------------------------------

def probability_vectors(n: int, *, min_support: int = 1) -> st.SearchStrategy:
    r"""Probability vectors of length `n` with at least `min_support` positive entries.

    .. math:: p = w / \textstyle\sum_i w_i, \qquad w_i \in \{0, 1, \dots, 13\},

    where, if fewer than `min_support` weights are positive, the first zero
    weights are set to 1 (a deterministic repair of the draw, never a filter).

    Parameters
    ----------
    n : int
        Length, >= 1.
    min_support : int, default 1
        Least number of positive entries, in 1..n.

    Returns
    -------
    SearchStrategy of ndarray, shape (n,), float64
        Non-negative entries summing to 1 (within 1e-12); exact zeros are common.

    Raises
    ------
    hypothesis.errors.InvalidArgument
        On first use, if an argument is not an integer in its range.

    Notes
    -----
    Shrinks towards the uniform distribution on the first `min_support`
    entries: ``e_0`` for the default.

    Examples
    --------
    >>> from hypothesis import given
    >>> @given(probability_vectors(4, min_support=2))
    ... def test_support(p):
    ...     assert (p > 0).sum() >= 2
    """
    def build():
        m = _integer(n, "n", min_value=1)
        k = _integer(min_support, "min_support", min_value=1)
        _ordered(k, m, "min_support", "n")
        return _distribution_vector(m, k)

    return _lazy("probability_vectors", build, n, min_support=min_support)


def probability_matrices(n_rows: int, n_cols: int) -> st.SearchStrategy:
    r"""(n_rows, n_cols) arrays whose every row is a probability distribution.

    .. math:: M_{ij} = w_{ij} / \textstyle\sum_k w_{ik}, \qquad w_{ij} \in \{0, 1, \dots, 13\},

    with a row of zero weights mapped to :math:`e_0` (a deterministic
    transform, never a filter). Exact zeros and deterministic rows are common.

    Parameters
    ----------
    n_rows, n_cols : int
        Shape, each >= 1.

    Returns
    -------
    SearchStrategy of ndarray, shape (n_rows, n_cols), float64
        Non-negative, every row summing to 1 (within 1e-12).

    Raises
    ------
    hypothesis.errors.InvalidArgument
        On first use, if `n_rows` or `n_cols` is not an integer >= 1.

    Notes
    -----
    Shrinks towards every row equal to :math:`e_0 = (1, 0, \dots, 0)`.

    Examples
    --------
    >>> from hypothesis import given
    >>> @given(probability_matrices(3, 2))
    ... def test_rows(M):
    ...     assert M.shape == (3, 2)
    """
    def build():
        rows = _integer(n_rows, "n_rows", min_value=1)
        cols = _integer(n_cols, "n_cols", min_value=1)
        return _distribution_rows(rows, cols)

    return _lazy("probability_matrices", build, n_rows, n_cols)


def mdps(*, min_states: int | None = None, max_states: int = 5, min_actions: int = 1,
         max_actions: int = 3, min_gamma: float = 0.0, max_gamma: float = 0.95,
         episodic: bool = False, sparse: bool = False,
         reward_scale: float = 1.0) -> st.SearchStrategy:
    r"""Finite MDPs, `refpg.TabularMDP`, of bounded size, built constructively.

    Continuing (default): ``P[s, a]`` are rows of `probability_matrices`,
    rewards :math:`r(s,a) = (k/100)\,c` with :math:`k \in \{-100..100\}` and
    :math:`c` = `reward_scale`, `rho` from `probability_vectors`, no terminal
    states, and :math:`\gamma = \gamma_{min} + u(\gamma_{max} - \gamma_{min})`,
    :math:`u \in [0, 1]`; about one example in eight has gamma = max_gamma
    exactly, so gamma = 1 is exercised whenever it is allowed.

    Episodic (``episodic=True``): the last state :math:`t = S-1` is terminal
    (absorbing, zero reward), :math:`\rho(t) = 0`, and every non-terminal
    (s, a) moves to it with probability at least :math:`q \ge 0.1`:

    .. math:: P(\cdot|s,a) = (1 - q_{sa})\,D_{sa} + q_{sa}\, e_t, \qquad
              q_{sa} \in \{0.1, 0.2, \dots, 0.5\},

    with :math:`D_{sa}` a drawn distribution over all S states. So every
    policy terminates with probability 1, the expected episode length is at
    most 10 from any state, ``mdp.trap_states()`` is all False, and gamma = 1
    is valid (allow it with ``max_gamma=1.0``).

    Parameters
    ----------
    min_states : int or None, default None
        Least number of states S, >= 1; >= 2 when episodic (a terminal state
        and a state to start in). None means 1, or 2 when episodic.
    max_states : int, default 5
        Most states, >= min_states.
    min_actions, max_actions : int, default 1 and 3
        Bounds on the number of actions A, 1 <= min_actions <= max_actions.
    min_gamma, max_gamma : float, default 0.0 and 0.95
        Bounds on the discount, 0 <= min_gamma <= max_gamma < 1; max_gamma
        may be 1.0 when episodic.
    episodic : bool, default False
        Build a proper MDP with one terminal state, the last, as above.
    sparse : bool, default False
        Store P as a `scipy.sparse.csr_array` of shape (S*A, S). Entries are
        still drawn one by one, as for a dense P, so keep S small (see Notes).
    reward_scale : float, default 1.0
        Rewards lie in [-reward_scale, reward_scale]; >= 0, finite.

    Returns
    -------
    SearchStrategy of TabularMDP

    Raises
    ------
    hypothesis.errors.InvalidArgument
        On first use, if an argument has the wrong type or is out of range,
        if a min_* exceeds its max_*, or if max_gamma >= 1 without episodic.

    Notes
    -----
    Shrinks towards the smallest MDP: S = min_states, A = min_actions, every
    transition to state 0 (to the terminal state when episodic), zero
    rewards, :math:`\rho = e_0`, gamma = min_gamma.

    An example takes about :math:`S^2 A` draws: at S = 30, A = 3 Hypothesis's
    ``large_base_example`` health check already fails. For large MDPs draw a
    seed for `refpg.envs.garnet` instead.

    Examples
    --------
    >>> import numpy as np, refpg
    >>> from hypothesis import given
    >>> @given(mdps(episodic=True, min_gamma=1.0, max_gamma=1.0))
    ... def test_proper_mdps_have_finite_values(mdp):
    ...     uniform = np.full((mdp.n_states, mdp.n_actions), 1 / mdp.n_actions)
    ...     assert np.isfinite(refpg.evaluate(mdp, uniform).J)
    """
    def build():
        ep = _boolean(episodic, "episodic")
        _boolean(sparse, "sparse")
        least = 2 if ep else 1
        why = " when episodic=True (a terminal state and a state to start in)" if ep else ""
        lo_s = least if min_states is None else _integer(min_states, "min_states",
                                                         min_value=least, min_why=why)
        hi_s = _integer(max_states, "max_states", min_value=least, min_why=why)
        _ordered(lo_s, hi_s, "min_states", "max_states")
        lo_a = _integer(min_actions, "min_actions", min_value=1)
        hi_a = _integer(max_actions, "max_actions", min_value=1)
        _ordered(lo_a, hi_a, "min_actions", "max_actions")
        gwhy = "" if ep else " unless episodic=True (gamma = 1 needs a proper MDP)"
        lo_g = _real(min_gamma, "min_gamma", min_value=0.0, max_value=1.0, max_open=not ep,
                     max_why=gwhy)
        hi_g = _real(max_gamma, "max_gamma", min_value=0.0, max_value=1.0, max_open=not ep,
                     max_why=gwhy)
        _ordered(lo_g, hi_g, "min_gamma", "max_gamma")
        scale = _real(reward_scale, "reward_scale", min_value=0.0)
        return _mdps(min_states=lo_s, max_states=hi_s, min_actions=lo_a, max_actions=hi_a,
                     min_gamma=lo_g, max_gamma=hi_g, episodic=ep, sparse=bool(sparse),
                     reward_scale=scale)

    return _lazy("mdps", build, min_states=min_states, max_states=max_states,
                 min_actions=min_actions, max_actions=max_actions, min_gamma=min_gamma,
                 max_gamma=max_gamma, episodic=episodic, sparse=sparse,
                 reward_scale=reward_scale)


def tabular_softmax(mdp: TabularMDP) -> st.SearchStrategy:
    r"""The tabular softmax parameterization sized for `mdp` (always the same one).

    :math:`\pi_\theta(a|s) \propto e^{\theta_{s,a}}`, theta of shape (S, A);
    see `refpg.TabularSoftmax`.

    Parameters
    ----------
    mdp : TabularMDP

    Returns
    -------
    SearchStrategy of TabularSoftmax

    Raises
    ------
    hypothesis.errors.InvalidArgument
        On first use, if `mdp` is not a `refpg.TabularMDP` (a strategy of
        MDPs included: use ``mdps().flatmap(tabular_softmax)``).

    Notes
    -----
    There is nothing to shrink: every example is
    ``TabularSoftmax(mdp.n_states, mdp.n_actions)``.
    """
    def build():
        return st.just(TabularSoftmax.for_mdp(_mdp(mdp)))

    return _lazy("tabular_softmax", build, mdp)


def log_linear(mdp: TabularMDP, *, min_features: int = 1,
               max_features: int = 4) -> st.SearchStrategy:
    r"""Log-linear parameterizations for `mdp`.

    :math:`\pi_\theta(a|s) \propto \exp(\phi(s,a)^\top\theta)`, with features
    :math:`\phi(s, a) \in \{-1, -3/4, \dots, 1\}^d` on a grid of step 1/4,
    so exact ties and zero features (hence singular Fisher matrices) are
    common. See `refpg.LogLinear`.

    Parameters
    ----------
    mdp : TabularMDP
    min_features, max_features : int, default 1 and 4
        Bounds on the feature dimension d, 1 <= min_features <= max_features.

    Returns
    -------
    SearchStrategy of LogLinear
        With ``features.shape == (S, A, d)`` and entries in [-1, 1].

    Raises
    ------
    hypothesis.errors.InvalidArgument
        On first use, if `mdp` is not a `refpg.TabularMDP` or the feature
        bounds are not integers with 1 <= min_features <= max_features.

    Notes
    -----
    Shrinks towards d = min_features and all-zero features (the uniform
    policy for every theta).
    """
    def build():
        m = _mdp(mdp)
        lo, hi = _features_range(min_features, max_features)
        return _log_linear(m, lo, hi)

    return _lazy("log_linear", build, mdp, min_features=min_features, max_features=max_features)


def parameterizations(mdp: TabularMDP, *, kinds: tuple = KINDS, min_features: int = 1,
                      max_features: int = 4) -> st.SearchStrategy:
    """Policy parameterizations for `mdp`: one of `tabular_softmax`, `log_linear`.

    Parameters
    ----------
    mdp : TabularMDP
    kinds : tuple of str, default ("tabular", "log_linear")
        Which parameterizations to draw: a non-empty tuple of distinct names
        from `KINDS`, in any order.
    min_features, max_features : int, default 1 and 4
        Passed to `log_linear` (validated even if "log_linear" is not in `kinds`).

    Returns
    -------
    SearchStrategy of TabularSoftmax or LogLinear

    Raises
    ------
    hypothesis.errors.InvalidArgument
        On first use, if `mdp` is not a `refpg.TabularMDP`, `kinds` is not a
        non-empty tuple of distinct known names, or the feature bounds are invalid.

    Notes
    -----
    Shrinks towards ``TabularSoftmax(S, A)`` if "tabular" is in `kinds`
    (whatever the order: it needs no draws, so it is the simplest), else
    towards the shrink target of `log_linear`.
    """
    def build():
        m = _mdp(mdp)
        ks = _kinds(kinds)
        lo, hi = _features_range(min_features, max_features)
        return _parameterizations(m, ks, lo, hi)

    return _lazy("parameterizations", build, mdp, kinds=kinds, min_features=min_features,
                 max_features=max_features)


def thetas(policy: Parameterization, *, max_abs: float = 3.0) -> st.SearchStrategy:
    r"""Parameters for `policy`: float64 arrays of shape ``policy.theta_shape``.

    .. math:: \theta_i = (k_i / 16)\, m, \qquad k_i \in \{-16, \dots, 16\},

    with m = `max_abs`, so :math:`|\theta_i| \le m` exactly, and equal
    entries (ties between actions) are common.

    Parameters
    ----------
    policy : TabularSoftmax or LogLinear
    max_abs : float, default 3.0
        Largest magnitude of an entry; finite, >= 0.

    Returns
    -------
    SearchStrategy of ndarray, shape ``policy.theta_shape``, float64

    Raises
    ------
    hypothesis.errors.InvalidArgument
        On first use, if `policy` is not a refpg parameterization or
        `max_abs` is not a finite real >= 0.

    Notes
    -----
    Shrinks towards theta = 0 (the uniform policy).
    """
    def build():
        p = _policy(policy)
        m = _real(max_abs, "max_abs", min_value=0.0)
        return _thetas(p, m)

    return _lazy("thetas", build, policy, max_abs=max_abs)


def policies(mdp: TabularMDP, *, min_prob: float = 0.0) -> st.SearchStrategy:
    r"""Policy probability tables pi of shape (S, A), e.g. for `refpg.evaluate`.

    .. math:: \pi = (1 - A\,p_{min})\, M + p_{min},

    with M from ``probability_matrices(S, A)``, so every entry is at least
    :math:`p_{min}` = `min_prob`; with the default 0, deterministic and
    partly deterministic policies are common.

    Parameters
    ----------
    mdp : TabularMDP
    min_prob : float, default 0.0
        Least probability of any action, in [0, 1/A]; 1/A gives the uniform policy.

    Returns
    -------
    SearchStrategy of ndarray, shape (S, A), float64
        Every row a distribution (within 1e-12), every entry >= min_prob.

    Raises
    ------
    hypothesis.errors.InvalidArgument
        On first use, if `mdp` is not a `refpg.TabularMDP` or `min_prob` is
        not a real number in [0, 1/A].

    Notes
    -----
    Shrinks towards always taking action 0, mixed with uniform:
    :math:`\pi(\cdot|s) = (1 - A p_{min}) e_0 + p_{min}`.
    """
    def build():
        m = _mdp(mdp)
        A = m.n_actions
        floor = _real(min_prob, "min_prob", min_value=0.0, max_value=1.0 / A,
                      max_why=f" (1/A for A = {A} actions)")
        return _policies(m.n_states, A, floor)

    return _lazy("policies", build, mdp, min_prob=min_prob)


def mdp_policy_theta(*, kinds: tuple = KINDS, min_features: int = 1, max_features: int = 4,
                     max_abs: float = 3.0, **mdp_kwargs) -> st.SearchStrategy:
    """Tuples ``(mdp, policy, theta)``: an MDP, a parameterization for it, and parameters.

    ``mdp`` from ``mdps(**mdp_kwargs)``, ``policy`` from
    ``parameterizations(mdp, kinds=kinds, min_features=..., max_features=...)``,
    ``theta`` from ``thetas(policy, max_abs=max_abs)``.

    Parameters
    ----------
    kinds, min_features, max_features
        As for `parameterizations`.
    max_abs : float, default 3.0
        As for `thetas`.
    **mdp_kwargs
        Keyword arguments of `mdps`; an unknown name raises TypeError at once.

    Returns
    -------
    SearchStrategy of tuple (TabularMDP, Parameterization, ndarray)

    Raises
    ------
    hypothesis.errors.InvalidArgument
        On first use, for any invalid argument, as the strategies above.

    Notes
    -----
    Shrinks towards the shrink target of `mdps`, that of `parameterizations`
    for it (tabular softmax if "tabular" is in `kinds`), and theta = 0.

    Examples
    --------
    >>> import numpy as np, refpg
    >>> from hypothesis import given
    >>> @given(mdp_policy_theta(episodic=True, max_gamma=1.0))
    ... def test_gradient_finite(case):
    ...     mdp, policy, theta = case
    ...     assert np.isfinite(refpg.policy_gradient(mdp, policy, theta)).all()
    """
    inspect.signature(mdps).bind(**mdp_kwargs)  # a misspelt name fails here, not later

    def build():
        ks = _kinds(kinds)
        lo, hi = _features_range(min_features, max_features)
        m = _real(max_abs, "max_abs", min_value=0.0)
        mdp_strategy = mdps(**mdp_kwargs)
        mdp_strategy.validate()
        return _mdp_policy_theta(mdp_strategy, ks, lo, hi, m)

    return _lazy("mdp_policy_theta", build, kinds=kinds, min_features=min_features,
                 max_features=max_features, max_abs=max_abs, **mdp_kwargs)
