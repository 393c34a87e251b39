"""Import Gymnasium's toy-text MDPs (FrozenLake, CliffWalking, Taxi) as `TabularMDP`.

These environments carry their full dynamics in ``env.unwrapped.P``:
``P[s][a]`` is a list of ``(prob, next_state, reward, terminated)`` tuples, and
``step`` draws one of them. `from_gymnasium` turns that table into a validated
`refpg.TabularMDP` following docs/conventions.md. gymnasium is an optional
dependency (``pip install refpg[gym]``), imported only when called.
"""

from __future__ import annotations

import inspect
import numbers
import warnings

import numpy as np
import scipy.sparse as sp

from refpg._validation import PROB_ATOL, as_float_array, check_discount, check_distributions
from refpg.errors import InvalidInputError, NotADistributionError, RefpgWarning
from refpg.mdp import TabularMDP

__all__ = ["from_gymnasium"]

#: Above this many states P and r are stored sparse (the threshold of `gridworld`).
_DENSE_MAX_STATES = 2000

#: Constructor arguments shown in the MDP's name even when left at their default,
#: because they change the dynamics of the env that has them.
_HEADLINE_ARGS = ("map_name", "is_slippery", "is_rainy", "fickle_passenger")

#: Taxi arguments whose meaning changed from v3 to v4 (gymnasium 1.3 fixed them).
_TAXI_V4_ONLY = ("is_rainy", "fickle_passenger", "rainy_probability", "fickle_probability")


def from_gymnasium(env_or_id, *, gamma: float = 0.99, **kwargs) -> TabularMDP:
    r"""Build the `TabularMDP` of a Gymnasium toy-text env from its table ``P``.

    With :math:`\mathcal{P}_{sa}` the list ``env.unwrapped.P[s][a]`` of
    tuples :math:`(p_k, s'_k, r_k, d_k)`, duplicates of a successor are summed
    and their rewards averaged with weights :math:`p_k`:

    .. math::
        P(s'|s,a) = \sum_{k:\, s'_k = s'} p_k, \qquad
        r(s,a,s') = \frac{\sum_{k:\, s'_k = s'} p_k\, r_k}{P(s'|s,a)},

    so the expected reward :math:`r(s,a) = \sum_{s'} P(s'|s,a)\, r(s,a,s')`
    is exact. :math:`r(s,a,s')` is exactly gymnasium's reward whenever the
    duplicates agree on it. ``rho`` is ``env.unwrapped.initial_state_distrib``
    and a state is terminal iff transitions into it carry ``terminated=True``.

    Parameters
    ----------
    env_or_id : str or gymnasium.Env
        An env id, made with ``gymnasium.make(env_or_id, **kwargs)``, or an
        env already made (possibly wrapped; its ``unwrapped`` is read).
        Supported: ``FrozenLake-v1`` (``map_name="4x4"`` or ``"8x8"``,
        ``is_slippery``), ``FrozenLake8x8-v1``, ``CliffWalking-v1``,
        ``CliffWalkingSlippery-v1``, ``Taxi-v4`` (and ``Taxi-v3``, see Notes),
        and any env whose ``unwrapped`` has Discrete observation and action
        spaces (``start=0``), a table ``P`` and ``initial_state_distrib``.
    gamma : float, keyword-only
        Discount of the MDP, default 0.99; not passed to gymnasium. 1 is
        accepted only for a proper MDP (none of the supported envs is one).
    **kwargs
        Passed to ``gymnasium.make``; only with an env id.

    Returns
    -------
    TabularMDP
        Transitions and the (S, A, S) reward dense for S <= 2000, else as
        sparse (S*A, S) matrices; named like
        ``"FrozenLake-v1(map_name=4x4, is_slippery=True)"``.

    Raises
    ------
    ImportError
        If gymnasium is not installed.
    refpg.errors.InvalidInputError
        If the id cannot be made, `kwargs` come with an env already made, the
        env lacks any of the attributes above (all are named), an entry of
        ``P`` is malformed, or one state is entered both with
        ``terminated=True`` and ``terminated=False`` (both (s, a) are named).
    refpg.errors.NotADistributionError
        If some ``P[s][a]`` or ``initial_state_distrib`` does not sum to 1
        within ``atol=1e-12``.

    Warns
    -----
    refpg.errors.RefpgWarning
        If a made env has wrappers other than those ``gymnasium.make`` adds
        (they are ignored), or ``Taxi-v3`` is imported as ``Taxi-v4``.

    Notes
    -----
    **Terminal states are absorbing with zero reward** (docs/conventions.md):
    ``P[t, a, :] = e_t`` and ``r[t, a, :] = 0`` for every action, whatever
    gymnasium lists for them; the episode has ended there, so ``step`` never
    uses those rows (CliffWalking's, for instance, walk on from the goal at
    -1 per step).

    Terminality is read from the transitions an episode can take: from the
    states reachable from ``rho`` without a terminating transition. Others
    are never used by ``step`` and may disagree: in Taxi, moving the taxi
    after a delivery re-enters the delivered state with ``terminated=False``.
    Such states (Taxi's "passenger already delivered" states, CliffWalking's
    cliff cells) keep gymnasium's rows; they are unreachable from ``rho`` and
    do not affect J. A start state that is also entered with
    ``terminated=True`` is refused.

    **Rewards.** Where duplicates of one successor carry different rewards
    the MDP keeps their mean, so r(s, a) and every exact quantity are right
    but a sampler that pays ``r[s, a, s']`` does not reproduce the reward's
    variance. This happens in ``CliffWalkingSlippery-v1`` only: from the
    start state 36, slipping into the cliff (-100, back to 36) and bumping
    into the edge (-1, stay in 36) both lead to 36, so
    ``r[36, a, 36] = -50.5`` for a in {up, right, down}.

    Time limits (``max_episode_steps``) are not part of the MDP, which has an
    infinite discounted horizon. Taxi with ``fickle_passenger=True`` is
    refused: its ``step`` changes the destination outside ``P``. ``Taxi-v3``,
    deprecated in recent gymnasium, is imported as ``Taxi-v4`` with a
    warning when the installed gymnasium refuses it; v4 changed only the
    rainy and fickle variants, which are then refused for v3.

    The import trusts that ``step`` samples from ``P`` as the toy-text envs
    do; tests/test_gym_import.py checks it statistically.

    References
    ----------
    .. [Towers2024] Towers et al., Gymnasium: a standard interface for
       reinforcement learning environments. arXiv:2407.17032.

    Examples
    --------
    >>> import refpg
    >>> mdp = refpg.envs.from_gymnasium("FrozenLake-v1", is_slippery=False, gamma=0.99)
    >>> mdp.name, mdp.n_states, int(mdp.terminal.sum())
    ('FrozenLake-v1(map_name=4x4, is_slippery=False)', 16, 5)
    >>> round(refpg.optimal_policy(mdp).J, 12) == round(0.99 ** 5, 12)
    True
    """
    gamma = check_discount(gamma, allow_one=True)
    try:
        import gymnasium as gym
    except ImportError as exc:
        raise ImportError(
            "from_gymnasium needs gymnasium, an optional dependency: pip install refpg[gym]") from exc

    if isinstance(env_or_id, str):
        env = _make(gym, env_or_id, kwargs)
        try:
            return _import(gym, env, gamma)
        finally:
            env.close()
    if kwargs:
        raise InvalidInputError(
            f"keyword arguments {sorted(kwargs)} are passed to gymnasium.make, so they need an "
            f"env id; env_or_id is an env already made ({type(env_or_id).__name__})")
    if not isinstance(env_or_id, gym.Env):
        raise InvalidInputError(
            f"env_or_id should be a Gymnasium env id (str) or a gymnasium.Env, "
            f"actual {type(env_or_id).__name__}")
    _warn_on_wrappers(gym, env_or_id)
    return _import(gym, env_or_id, gamma)


def _make(gym, env_id: str, kwargs: dict):
    """``gymnasium.make`` with its errors turned into refpg ones."""
    try:
        return gym.make(env_id, **kwargs)
    except gym.error.DeprecatedEnv as exc:
        if env_id != "Taxi-v3":
            raise InvalidInputError(f"env_or_id {env_id!r} is deprecated in gymnasium: {exc}") from exc
        given = sorted(set(kwargs) & set(_TAXI_V4_ONLY))
        if given:
            raise InvalidInputError(
                f"env_or_id 'Taxi-v3' with {given}: the installed gymnasium no longer provides "
                "Taxi-v3, and Taxi-v4 changed these variants; use 'Taxi-v4'") from exc
        warnings.warn(
            "Taxi-v3 is deprecated in the installed gymnasium; importing Taxi-v4, whose dynamics "
            "without is_rainy/fickle_passenger are those of v3", RefpgWarning, stacklevel=3)
        return gym.make("Taxi-v4", **kwargs)
    except gym.error.Error as exc:
        raise InvalidInputError(f"env_or_id {env_id!r} could not be made by gymnasium.make: {exc}") from exc
    except (TypeError, KeyError, ValueError) as exc:
        # A keyword the env's constructor does not take (TypeError), or a value it
        # does not know, e.g. FrozenLake's map_name="9x9" (KeyError).
        raise InvalidInputError(
            f"gymnasium.make({env_id!r}, **{kwargs!r}) failed: {type(exc).__name__}: {exc}") from exc


def _warn_on_wrappers(gym, env) -> None:
    from gymnasium.wrappers import OrderEnforcing, PassiveEnvChecker, RecordEpisodeStatistics, TimeLimit

    # What gymnasium.make adds, plus a pure observer; anything else may change
    # what the agent sees while P describes only the unwrapped env.
    benign = (TimeLimit, OrderEnforcing, PassiveEnvChecker, RecordEpisodeStatistics)
    others = []
    while isinstance(env, gym.Wrapper):
        if not isinstance(env, benign):
            others.append(type(env).__name__)
        env = env.env
    if others:
        warnings.warn(
            f"wrappers {others} are ignored: the MDP is built from env.unwrapped.P",
            RefpgWarning, stacklevel=3)


def _import(gym, env, gamma: float) -> TabularMDP:
    unwrapped = env.unwrapped
    label = _label(env)
    S, A = _check_interface(gym, unwrapped, label)
    rho = as_float_array(unwrapped.initial_state_distrib, "env.unwrapped.initial_state_distrib", shape=(S,))
    check_distributions(rho, "env.unwrapped.initial_state_distrib")

    row, nxt, prob, rew, done = _read_table(unwrapped.P, S, A)
    terminal = _terminal_states(row, nxt, prob, done, rho, S, A)

    # Zero-probability entries never happen; dropping them keeps P's support exact.
    keep = (prob > 0) & ~terminal[row // A]
    row, nxt, prob, rew = row[keep], nxt[keep], prob[keep], rew[keep]
    cell, inverse = np.unique(row * S + nxt, return_inverse=True)
    p_cell = np.bincount(inverse, weights=prob, minlength=cell.size)
    pr_cell = np.bincount(inverse, weights=prob * rew, minlength=cell.size)
    lo = np.full(cell.size, np.inf)
    hi = np.full(cell.size, -np.inf)
    np.minimum.at(lo, inverse, rew)
    np.maximum.at(hi, inverse, rew)
    # Where the duplicates agree, keep gymnasium's reward bit for bit.
    r_cell = np.where(lo == hi, lo, pr_cell / p_cell)

    t_rows = (np.flatnonzero(terminal)[:, None] * A + np.arange(A)).ravel()
    rows = np.concatenate([cell // S, t_rows])
    cols = np.concatenate([cell % S, t_rows // A])
    P = sp.csr_array((np.concatenate([p_cell, np.ones(t_rows.size)]), (rows, cols)), shape=(S * A, S))
    r = sp.csr_array((np.concatenate([r_cell, np.zeros(t_rows.size)]), (rows, cols)), shape=(S * A, S))
    if S <= _DENSE_MAX_STATES:
        P = P.toarray().reshape(S, A, S)
        r = r.toarray().reshape(S, A, S)
    return TabularMDP(P, r, rho, gamma, terminal, name=_mdp_name(env, unwrapped))


def _label(env) -> str:
    spec = getattr(env, "spec", None)
    return spec.id if spec is not None else type(env.unwrapped).__name__


def _check_interface(gym, unwrapped, label: str) -> tuple[int, int]:
    """Return (S, A) after checking every attribute the import reads."""
    problems = []
    sizes = []
    for attr in ("observation_space", "action_space"):
        space = getattr(unwrapped, attr, None)
        if not isinstance(space, gym.spaces.Discrete):
            problems.append(f"env.unwrapped.{attr} should be gymnasium.spaces.Discrete, actual {space!r}")
        elif int(space.start) != 0:
            problems.append(f"env.unwrapped.{attr} should start at 0, actual start={int(space.start)}")
        else:
            sizes.append(int(space.n))
    if getattr(unwrapped, "P", None) is None:
        problems.append("env.unwrapped has no transition table P "
                        "(P[s][a] = list of (prob, next_state, reward, terminated))")
    if getattr(unwrapped, "initial_state_distrib", None) is None:
        problems.append("env.unwrapped has no initial_state_distrib")
    if problems:
        raise InvalidInputError(
            f"{label} cannot be imported as a finite MDP: " + "; ".join(problems)
            + ". from_gymnasium reads toy-text envs such as FrozenLake, CliffWalking and Taxi")
    if getattr(unwrapped, "fickle_passenger", False):
        raise InvalidInputError(
            f"{label} with fickle_passenger=True cannot be imported: its step() changes the "
            "destination outside its table P, so P does not describe the dynamics")
    return sizes[0], sizes[1]


def _read_table(P, S: int, A: int):
    """Flatten ``P[s][a]`` into entry arrays (row = s*A + a, next, prob, reward, terminated).

    Entries stay in gymnasium's order, so the entries of row k are contiguous.
    Every entry is checked; row sums are checked before anything is changed.
    """
    row, nxt, prob, rew, done = [], [], [], [], []
    for s in range(S):
        try:
            P_s = P[s]
        except (KeyError, IndexError, TypeError):
            raise InvalidInputError(f"env.unwrapped.P has no entry for state {s} (S = {S})") from None
        for a in range(A):
            try:
                entries = P_s[a]
            except (KeyError, IndexError, TypeError):
                raise InvalidInputError(f"env.unwrapped.P[{s}] has no entry for action {a} (A = {A})") from None
            if len(entries) == 0:
                raise InvalidInputError(f"env.unwrapped.P[{s}][{a}] is empty; expected at least one transition")
            total = 0.0
            for k, entry in enumerate(entries):
                p, s2, reward, term = _check_entry(entry, f"env.unwrapped.P[{s}][{a}][{k}]", S)
                row.append(s * A + a)
                nxt.append(s2)
                prob.append(p)
                rew.append(reward)
                done.append(term)
                total += p
            if abs(total - 1.0) > PROB_ATOL:
                raise NotADistributionError(
                    f"env.unwrapped.P[{s}][{a}] has probabilities summing to {total!r}; "
                    f"expected 1 within atol={PROB_ATOL:g}")
    return (np.array(row, dtype=np.int64), np.array(nxt, dtype=np.int64),
            np.array(prob, dtype=np.float64), np.array(rew, dtype=np.float64),
            np.array(done, dtype=bool))


def _check_entry(entry, where: str, S: int):
    try:
        p, s2, reward, term = entry
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"{where} should be a tuple (prob, next_state, reward, terminated), actual {entry!r}") from None
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real) or not (np.isfinite(p) and p >= 0):
        raise InvalidInputError(f"{where}: prob should be a finite number >= 0, actual {p!r}")
    if isinstance(s2, (bool, np.bool_)) or not isinstance(s2, numbers.Integral) or not 0 <= s2 < S:
        raise InvalidInputError(f"{where}: next_state should be an integer in [0, {S}), actual {s2!r}")
    if isinstance(reward, (bool, np.bool_)) or not isinstance(reward, numbers.Real) or not np.isfinite(reward):
        raise InvalidInputError(f"{where}: reward should be a finite number, actual {reward!r}")
    if not isinstance(term, (bool, np.bool_)):
        raise InvalidInputError(f"{where}: terminated should be a bool, actual {term!r}")
    return float(p), int(s2), float(reward), bool(term)


def _terminal_states(row, nxt, prob, done, rho, S: int, A: int) -> np.ndarray:
    """States entered with ``terminated=True`` by transitions an episode can take.

    A search from the support of `rho` that follows only non-terminating
    transitions of positive probability visits exactly the states in which
    ``step`` is ever called; their transitions decide terminality.
    """
    starts = np.searchsorted(row, np.arange(S * A + 1))
    ends_by, goes_on_by = {}, {}   # next state -> first (s, a) entering it that way
    visited = rho > 0
    stack = list(np.flatnonzero(visited)[::-1])
    while stack:
        s = int(stack.pop())
        for a in range(A):
            for k in range(starts[s * A + a], starts[s * A + a + 1]):
                if prob[k] == 0:
                    continue
                s2 = int(nxt[k])
                if done[k]:
                    ends_by.setdefault(s2, (s, a))
                    continue
                goes_on_by.setdefault(s2, (s, a))
                if not visited[s2]:
                    visited[s2] = True
                    stack.append(s2)
    both = sorted(set(ends_by) & set(goes_on_by))
    if both:
        s2 = both[0]
        (s, a), (s_, a_) = ends_by[s2], goes_on_by[s2]
        raise InvalidInputError(
            f"env.unwrapped.P[{s}][{a}] enters state {s2} with terminated=True but "
            f"env.unwrapped.P[{s_}][{a_}] enters it with terminated=False; a state should be "
            f"terminal for every transition into it or for none ({len(both)} such states in all)")
    terminal = np.zeros(S, dtype=bool)
    terminal[list(ends_by)] = True
    bad = np.flatnonzero(terminal & (rho > 0))
    if bad.size:
        t = int(bad[0])
        s, a = ends_by[t]
        raise InvalidInputError(
            f"env.unwrapped.initial_state_distrib[{t}] is {float(rho[t])!r} but "
            f"env.unwrapped.P[{s}][{a}] enters state {t} with terminated=True; "
            "a start state should not be terminal")
    return terminal


def _mdp_name(env, unwrapped) -> str:
    """``id(k=v, ...)``: the arguments given to make, and the headline defaults."""
    spec = getattr(env, "spec", None)
    if spec is None:
        # Without a spec the constructor's arguments are unknown: name the class only.
        return type(unwrapped).__name__
    given = {k: v for k, v in (spec.kwargs or {}).items() if k != "render_mode"}
    try:
        params = inspect.signature(type(unwrapped).__init__).parameters
    except (TypeError, ValueError):
        params = {}
    shown = {}
    for k, param in params.items():
        if k in given:
            shown[k] = given.pop(k)
        elif k in _HEADLINE_ARGS and param.default is not inspect.Parameter.empty:
            shown[k] = param.default
    shown.update(given)
    if shown.get("desc") is not None:
        shown.pop("map_name", None)   # FrozenLake ignores map_name when desc is given
    args = ", ".join(f"{k}={v}" for k, v in shown.items())
    return f"{spec.id}({args})" if args else spec.id
