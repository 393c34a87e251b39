r"""A real Gymnasium environment backed by a `TabularMDP`, whose exact answer it carries.

`TabularEnv` samples the MDP of docs/conventions.md with the env's own
``np_random`` (seeded by ``reset(seed=...)``):

.. math::
    s_0 \sim \rho, \qquad s_{t+1} \sim P(\cdot \mid s_t, a_t), \qquad
    r_t = r(s_t, a_t, s_{t+1}) \text{ (transition rewards) or } r(s_t, a_t),

with ``terminated = terminal[s_{t+1}]``. Any agent that speaks the Gymnasium
API can train on it, and ``env.unwrapped.mdp`` gives the exact V, J and
gradients to compare against.

Two ways to limit the episode length, which differ in one detail:

* ``TabularEnv(mdp, max_episode_steps=N)``: the env's own limit, so the
  env is self-contained. The N-th step is ``truncated`` unless it also
  terminates: termination takes priority and the two flags are never both
  True (as in `refpg.sampling`).
* ``gymnasium.make("refpg/...-v0")``: the env is built with no limit of its
  own and Gymnasium's ``TimeLimit`` wrapper applies the registered
  ``max_episode_steps`` (override with ``gymnasium.make(id,
  max_episode_steps=N)``). ``TimeLimit`` sets ``truncated=True`` at the N-th
  step even when that step terminates, so both flags can be True at once.
  Either way GAE (docs/conventions.md) does not bootstrap a terminated step, so
  the learning signal is the same.

Importing this module registers the ids in `REGISTERED` and the generic
``"refpg/Tabular-v0"`` (``gymnasium.make("refpg/Tabular-v0", mdp=mdp)``); from
a fresh interpreter ``gymnasium.make("refpg.envs.gym_env:refpg/Chain-v0")``
imports it first. gymnasium is an optional dependency of refpg (``pip install
refpg[gym]``); `refpg.envs` imports this module only when it is used.

References
----------
Towers et al. (2024), Gymnasium: a standard interface for reinforcement
learning environments, arXiv:2407.17032 (the ``reset``/``step`` API).
"""

from __future__ import annotations

import numbers
import types
from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp

try:
    import gymnasium
    from gymnasium import spaces
    from gymnasium.envs.registration import EnvSpec
except ImportError as exc:  # pragma: no cover - exercised only without gymnasium
    raise ImportError(
        "refpg.envs.TabularEnv needs gymnasium, an optional dependency: pip install refpg[gym]") from exc

from refpg._validation import check_positive_int
from refpg.errors import InvalidInputError, RefpgError
from refpg.evaluation import check_mdp
from refpg.mdp import TabularMDP

__all__ = ["TabularEnv", "ResetNeededError", "register_envs", "make", "make_builtin",
           "REGISTERED", "GENERIC_ID"]

#: Registered ids -> (name in `refpg.envs.BUILTIN`, ``max_episode_steps`` of the
#: registration, applied by ``gymnasium.make`` as a ``TimeLimit``). FrozenLake's
#: limits are Gymnasium's own (FrozenLake-v1: 100, 8x8: 200); the MDPs that
#: never terminate get a limit of a few effective horizons 1/(1 - gamma)
#: (gamma^T <= 3e-5 at T = 100 for gamma = 0.9, T = 200 for gamma = 0.95); the
#: bandit (gamma = 0) is one pull.
REGISTERED = types.MappingProxyType({
    "refpg/TwoState-v0": ("two_state", 100),
    "refpg/Bandit-v0": ("bandit", 1),
    "refpg/Chain-v0": ("chain", 100),
    "refpg/Gridworld-v0": ("gridworld", 100),
    "refpg/Garnet-v0": ("garnet", 200),
    "refpg/FrozenLake-v0": ("frozen_lake", 100),
    "refpg/FrozenLake8x8-v0": ("frozen_lake_8x8", 200),
})

#: ``gymnasium.make(GENERIC_ID, mdp=mdp)`` wraps any TabularMDP (no default time limit).
GENERIC_ID = "refpg/Tabular-v0"

_ENTRY_POINT = "refpg.envs.gym_env:TabularEnv"
_BUILTIN_ENTRY_POINT = "refpg.envs.gym_env:make_builtin"


class ResetNeededError(RefpgError, gymnasium.error.ResetNeeded):
    """`step` or `render` was called before `reset`, or `step` after the episode ended.

    Both a `refpg.errors.RefpgError` and Gymnasium's own ``ResetNeeded`` (which
    ``gymnasium.wrappers.OrderEnforcing`` raises for the same mistake).
    """


class TabularEnv(gymnasium.Env):
    r"""Gymnasium environment sampling a `TabularMDP`: Discrete(S) states, Discrete(A) actions.

    ``reset`` draws :math:`s_0 \sim \rho`; ``step(a)`` draws
    :math:`s' \sim P(\cdot|s, a)` by inverse CDF on one uniform from
    ``self.np_random`` and returns ``(s', reward, terminated, truncated, info)``:

    * ``reward`` = ``transition_rewards[s, a, s']`` if the MDP has
      transition rewards, else ``r[s, a]`` (a Python float);
    * ``terminated`` = ``terminal[s']``;
    * ``truncated`` = this step completes ``max_episode_steps`` steps since
      ``reset`` and does not terminate (termination takes priority);
    * ``info = {"prob": P[s, a, s']}``.

    Observations are Python ints in ``range(S)``. Sparse MDPs are sampled from
    the CSR row ``s*A + a`` directly, so a step costs O(successors of (s, a)),
    never O(S).

    Parameters
    ----------
    mdp : TabularMDP
        Kept as given (immutable); ``env.unwrapped.mdp`` returns it.
    max_episode_steps : int >= 1, optional
        The env's own time limit; None (default) for none. See the module
        docstring for how it differs from ``gymnasium.make``'s ``TimeLimit``.
    render_mode : {None, "ansi"}, keyword-only
        ``"ansi"``: `render` returns one line of text with the current state.

    Raises
    ------
    refpg.errors.InvalidInputError
        If `mdp` is not a TabularMDP, `max_episode_steps` is not an integer
        >= 1, or `render_mode` is not supported.

    Notes
    -----
    ``reset(options={"state": s})`` starts the episode in `s` instead of
    drawing from rho (no random number is used; ``info["prob"]`` is 1), e.g.
    to sample many transitions from one (s, a). Starting in a terminal state
    is allowed: the next step stays there, pays 0 and terminates.

    Stepping before ``reset`` or after the episode ended (terminated, or
    truncated by the env's own limit) raises `ResetNeededError`; Gymnasium's
    vector envs reset for you, so only hand-written loops meet it.

    A directly constructed env carries a spec (id ``"refpg/Tabular-v0"``,
    ``kwargs`` holding `mdp`) so that ``env.spec.make()`` rebuilds it and
    ``gymnasium.utils.env_checker.check_env`` can test every render mode.

    Examples
    --------
    >>> import refpg.envs as E
    >>> from refpg.envs.gym_env import TabularEnv
    >>> env = TabularEnv(E.two_state(), max_episode_steps=3)
    >>> env.reset(seed=0)
    (0, {'prob': 1.0})
    >>> env.step(1)
    (1, 0.0, False, False, {'prob': 1.0})
    >>> env.unwrapped.mdp.gamma
    0.9
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, mdp: TabularMDP, max_episode_steps: int | None = None, *,
                 render_mode: str | None = None):
        mdp = check_mdp(mdp)
        limit = None if max_episode_steps is None else check_positive_int(max_episode_steps, "max_episode_steps")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise InvalidInputError(
                f"render_mode should be None or one of {self.metadata['render_modes']}, actual {render_mode!r}")
        self._mdp = mdp
        self._limit = limit
        self.render_mode = render_mode
        S, A = mdp.n_states, mdp.n_actions
        self.observation_space = spaces.Discrete(S)
        self.action_space = spaces.Discrete(A)

        # P as CSR rows s*A + a (shared, read-only, when the MDP is sparse): the
        # sampler and the per-entry rewards index the same (indptr, indices, data).
        # An explicit zero entry is harmless: the inverse CDF never picks it.
        rows = sp.csr_array(mdp.transition_rows())
        self._indptr, self._successors, self._probs = rows.indptr, rows.indices, rows.data
        row_of = np.repeat(np.arange(S * A), np.diff(rows.indptr))
        R = mdp.transition_rewards
        if R is None:
            rewards = mdp.r.ravel()[row_of]
        elif sp.issparse(R):
            rewards = np.asarray(sp.csr_array(R)[row_of, rows.indices], dtype=np.float64).ravel()
        else:
            rewards = R.reshape(S * A, S)[row_of, rows.indices]
        self._rewards = rewards  # reward of each stored transition (s, a, s')
        self._start_states = np.flatnonzero(mdp.rho > 0)
        self._start_cdf = np.cumsum(mdp.rho[self._start_states])

        self._state: int | None = None
        self._elapsed = 0
        self._done = False
        # What gymnasium.make would record for the bare env (no wrappers), so
        # that env.spec.make() rebuilds it; make() replaces it with its own.
        self.spec = EnvSpec(id=GENERIC_ID, entry_point=_ENTRY_POINT, max_episode_steps=None,
                            order_enforce=False, disable_env_checker=True,
                            kwargs={"mdp": mdp, "max_episode_steps": limit, "render_mode": render_mode})

    # -- read-only attributes -------------------------------------------------
    @property
    def mdp(self) -> TabularMDP:
        """The MDP being sampled, for exact answers (``env.unwrapped.mdp``)."""
        return self._mdp

    @property
    def max_episode_steps(self) -> int | None:
        """The env's own time limit (None: none; ``gymnasium.make`` limits live in ``TimeLimit``)."""
        return self._limit

    @property
    def state(self) -> int | None:
        """The current state, None before the first reset."""
        return self._state

    @property
    def elapsed_steps(self) -> int:
        """Steps taken since the last reset."""
        return self._elapsed

    # -- the Gymnasium API ----------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode: s0 ~ rho (or ``options["state"]``); returns ``(s0, {"prob": ...})``."""
        super().reset(seed=seed)
        start = self._start_option(options)
        if start is None:
            k = _inverse_cdf(self._start_cdf, self.np_random.random())
            s0 = int(self._start_states[k])
            prob = float(self._mdp.rho[s0])
        else:
            s0, prob = start, 1.0
        self._state, self._elapsed, self._done = s0, 0, False
        return s0, {"prob": prob}

    def step(self, action):
        """Take `action` in the current state; see the class docstring for the five returns."""
        if self._state is None:
            raise ResetNeededError("step() was called before reset(); call env.reset() first")
        if self._done:
            raise ResetNeededError(
                f"step() was called after the episode ended (after {self._elapsed} steps); "
                "call env.reset() to start a new one")
        a = self._check_action(action)
        row = self._state * self._mdp.n_actions + a
        lo, hi = self._indptr[row], self._indptr[row + 1]
        k = lo + _inverse_cdf(np.cumsum(self._probs[lo:hi]), self.np_random.random())
        s2 = int(self._successors[k])
        self._elapsed += 1
        terminated = bool(self._mdp.terminal[s2])
        truncated = (not terminated) and self._limit is not None and self._elapsed >= self._limit
        self._state = s2
        self._done = terminated or truncated
        return s2, float(self._rewards[k]), terminated, truncated, {"prob": float(self._probs[k])}

    def render(self):
        """``"ansi"``: one line naming the current state; None (with a warning) without a render mode."""
        if self.render_mode is None:
            gymnasium.logger.warn(
                "render() was called with render_mode=None; build the env with render_mode='ansi' "
                "to get the current state as text")
            return None
        if self._state is None:
            raise ResetNeededError("render() was called before reset(); call env.reset() first")
        s = self._state
        label = self._mdp.name or "TabularMDP"
        flag = ", terminal" if self._mdp.terminal[s] else ""
        return f"{label}: state {s} of {self._mdp.n_states}, step {self._elapsed}{flag}\n"

    # -- validation -------------------------------------------------------------
    def _check_action(self, action) -> int:
        # Gymnasium's Discrete.contains admits Python bools; refuse them as the mistake they are.
        if isinstance(action, (bool, np.bool_)) or not self.action_space.contains(action):
            raise InvalidInputError(
                f"action should be an integer in [0, {self._mdp.n_actions}) "
                f"(action_space {self.action_space}), actual {action!r}")
        return int(action)

    def _start_option(self, options) -> int | None:
        if options is None:
            return None
        if not isinstance(options, Mapping):
            raise InvalidInputError(f"options should be a dict or None, actual {type(options).__name__}")
        unknown = sorted(set(options) - {"state"})
        if unknown:
            raise InvalidInputError(f"options should only hold the key 'state', actual extra keys {unknown}")
        if "state" not in options:
            return None
        s = options["state"]
        S = self._mdp.n_states
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, numbers.Integral) or not 0 <= s < S:
            raise InvalidInputError(f"options['state'] should be an integer in [0, {S}), actual {s!r}")
        return int(s)


def _inverse_cdf(cdf: np.ndarray, u: float) -> int:
    """Index k with cdf[k-1] <= u * total < cdf[k]; zero-probability entries are never chosen."""
    # Scaling by the total keeps a row summing to 1 - 1e-12 from spilling past its end.
    k = int(np.searchsorted(cdf, u * cdf[-1], side="right"))
    return min(k, cdf.size - 1)


def make_builtin(name: str, max_episode_steps: int | None = None, *,
                 render_mode: str | None = None) -> TabularEnv:
    """`TabularEnv` on ``refpg.envs.BUILTIN[name]()``; the entry point of the registered ids.

    Raises
    ------
    refpg.errors.InvalidInputError
        If `name` is not a key of `refpg.envs.BUILTIN`.
    """
    from refpg.envs import BUILTIN  # here, not at the top: refpg.envs imports this module lazily

    if not isinstance(name, str) or name not in BUILTIN:
        raise InvalidInputError(f"name should be one of {sorted(BUILTIN)}, actual {name!r}")
    return TabularEnv(BUILTIN[name](), max_episode_steps, render_mode=render_mode)


# gymnasium.make reads an entry point's metadata to validate render_mode.
make_builtin.metadata = TabularEnv.metadata


def register_envs() -> None:
    """Register `GENERIC_ID` and the ids of `REGISTERED` with Gymnasium.

    Each builtin id is registered with entry point
    ``"refpg.envs.gym_env:make_builtin"``, ``kwargs={"name": ...}`` and its
    ``max_episode_steps``, so ``gymnasium.make`` applies its ``TimeLimit``
    while the env itself has no limit (no double limit). Idempotent: an id
    already registered with the same spec is left alone, so calling this
    again neither warns nor fails. Called when this module is imported.
    """
    wanted = [(GENERIC_ID, _ENTRY_POINT, None, {})]
    wanted += [(env_id, _BUILTIN_ENTRY_POINT, steps, {"name": name})
               for env_id, (name, steps) in REGISTERED.items()]
    for env_id, entry_point, steps, kwargs in wanted:
        old = gymnasium.registry.get(env_id)
        if (old is not None and old.entry_point == entry_point and old.kwargs == kwargs
                and old.max_episode_steps == steps):
            continue
        gymnasium.register(env_id, entry_point=entry_point, max_episode_steps=steps, kwargs=kwargs)


def make(env_id: str, /, **kwargs) -> gymnasium.Env:
    """``gymnasium.make`` of a refpg id, with or without the ``"refpg/"`` prefix.

    ``make("Chain-v0")`` is ``gymnasium.make("refpg/Chain-v0")``: wrapped in
    Gymnasium's checker, order enforcer and ``TimeLimit``; `kwargs` go to
    ``gymnasium.make`` (e.g. ``max_episode_steps``, ``render_mode``, and
    ``mdp`` for ``"Tabular-v0"``).

    Raises
    ------
    refpg.errors.InvalidInputError
        If `env_id` is not one of the ids this module registers.
    """
    known = [GENERIC_ID, *REGISTERED]
    full = env_id if isinstance(env_id, str) and env_id.startswith("refpg/") else f"refpg/{env_id}"
    if not isinstance(env_id, str) or full not in known:
        raise InvalidInputError(f"env_id should be one of {known} (the 'refpg/' prefix is optional), "
                                f"actual {env_id!r}")
    register_envs()
    return gymnasium.make(full, **kwargs)


register_envs()
