r"""A Gymnasium environment for a `refpg.lqr.LQRSystem`, whose exact answers `refpg.lqr` gives.

`LQREnv` samples the linear-quadratic-Gaussian system of docs/conventions.md
with the env's own ``np_random`` (seeded by ``reset(seed=...)``):

.. math::
    x_0 \sim N(\mu_0, \Sigma_0),\qquad
    x_{t+1} = A x_t + B u_t + w_t,\ w_t \sim N(0, W),\qquad
    r_t = -(x_t^\top Q x_t + u_t^\top R u_t),

observations and actions in unbounded ``Box`` spaces of float64 vectors. An
episode never terminates; with ``max_episode_steps`` = H the H-th step is
``truncated``. Any agent that speaks the Gymnasium API can train on it, and
``env.unwrapped.system`` gives the exact cost, gradients and optimal gain
(`refpg.lqr.finite_horizon_cost` for the H-step objective,
`refpg.lqr.cost` for the discounted infinite-horizon one).

Importing this module registers ``"refpg/LQR-v0"``
(``gymnasium.make("refpg/LQR-v0", system=system, max_episode_steps=H)``;
Gymnasium's ``TimeLimit`` then applies H). gymnasium is an optional
dependency (``pip install refpg[gym]``); `refpg.envs` imports this module
only when `LQREnv` is used.

References
----------
[Fazel2018]; Towers et al. (2024), Gymnasium, arXiv:2407.17032.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

try:
    import gymnasium
    from gymnasium import spaces
    from gymnasium.envs.registration import EnvSpec
except ImportError as exc:  # pragma: no cover - exercised only without gymnasium
    raise ImportError("refpg.envs.LQREnv needs gymnasium, an optional dependency: pip install refpg[gym]") from exc

from refpg._validation import check_positive_int
from refpg.envs.gym_env import ResetNeededError
from refpg.errors import InvalidInputError, ShapeError
from refpg.lqr.sampling import psd_sqrt
from refpg.lqr.system import LQRSystem

__all__ = ["LQREnv", "LQR_ID", "register_lqr_env"]

#: ``gymnasium.make(LQR_ID, system=system)`` wraps any `refpg.lqr.LQRSystem` (no default time limit).
LQR_ID = "refpg/LQR-v0"
_ENTRY_POINT = "refpg.envs.lqr_env:LQREnv"


class LQREnv(gymnasium.Env):
    r"""Gymnasium environment sampling an `refpg.lqr.LQRSystem`: ``Box`` states (n,), ``Box`` actions (m,).

    ``reset`` draws :math:`x_0 = \mu_0 + \Sigma_0^{1/2} z` with
    :math:`z \sim N(0, I)` from ``self.np_random``; ``step(u)`` returns
    ``(x', reward, terminated, truncated, info)`` with

    * ``x'`` = :math:`A x + B u + W^{1/2} z'` (a new float64 array, shape (n,));
    * ``reward`` = :math:`-(x^\top Q x + u^\top R u)` at the current x (a Python float);
    * ``terminated`` always False (an LQR episode has no terminal state);
    * ``truncated`` = this step completes ``max_episode_steps`` steps since ``reset``;
    * ``info = {"cost": x^T Q x + u^T R u}``.

    Parameters
    ----------
    system : LQRSystem
        Kept as given (immutable); ``env.unwrapped.system`` returns it.
    max_episode_steps : int >= 1, optional
        The env's own time limit H; None (default) for none.
    render_mode : {None, "ansi"}, keyword-only
        ``"ansi"``: `render` returns one line of text with the current state.

    Raises
    ------
    refpg.errors.InvalidInputError
        If `system` is not an LQRSystem, `max_episode_steps` is not an
        integer >= 1, or `render_mode` is not supported.

    Notes
    -----
    The square roots :math:`\Sigma_0^{1/2}`, :math:`W^{1/2}` come from the
    eigendecomposition, so singular covariances (a deterministic start,
    W = 0) are fine. The action is checked (shape (m,), finite; float32 is
    accepted and widened), never clipped: the ``Box`` is unbounded, as the
    Gaussian policy's actions are.

    Stepping before ``reset``, or after a truncation by the env's own limit,
    raises `refpg.envs.ResetNeededError`. A directly constructed env carries
    a spec (id ``"refpg/LQR-v0"``) so that ``env.spec.make()`` rebuilds it
    and ``gymnasium.utils.env_checker.check_env`` can test it completely; the
    checker warns that the boxes are unbounded and the action box not
    normalised, which is the problem's nature, not a defect (and it refuses
    any env that truncates after one step, so check it with
    ``max_episode_steps`` >= 2 or None).

    Examples
    --------
    >>> import numpy as np
    >>> from refpg import lqr
    >>> from refpg.envs import LQREnv
    >>> env = LQREnv(lqr.random_system(0, 2, 1), max_episode_steps=3)
    >>> x, info = env.reset(seed=0)
    >>> x.shape, info
    ((2,), {})
    >>> x2, reward, terminated, truncated, info = env.step(np.zeros(1))
    >>> bool(reward <= 0), terminated, truncated
    (True, False, False)
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, system: LQRSystem = None, max_episode_steps: int | None = None, *,
                 render_mode: str | None = None):
        if system is None:  # gymnasium.make(LQR_ID) with no system: say what to pass, not a bare TypeError
            raise InvalidInputError(f"system should be a refpg.lqr.LQRSystem, actual none given: "
                                    f"gymnasium.make({LQR_ID!r}, system=refpg.lqr.LQRSystem(...)) or "
                                    f"LQREnv(system)")
        if not isinstance(system, LQRSystem):
            raise InvalidInputError(f"system should be a refpg.lqr.LQRSystem, actual {type(system).__name__}")
        limit = None if max_episode_steps is None else check_positive_int(max_episode_steps, "max_episode_steps")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise InvalidInputError(
                f"render_mode should be None or one of {self.metadata['render_modes']}, actual {render_mode!r}")
        self._system = system
        self._limit = limit
        self.render_mode = render_mode
        n, m = system.state_dim, system.action_dim
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(n,), dtype=np.float64)
        self.action_space = spaces.Box(-np.inf, np.inf, shape=(m,), dtype=np.float64)
        self._L0, self._Lw = psd_sqrt(system.Sigma0), psd_sqrt(system.W)
        self._state: np.ndarray | None = None
        self._elapsed = 0
        self._done = False
        self.spec = EnvSpec(id=LQR_ID, entry_point=_ENTRY_POINT, max_episode_steps=None, order_enforce=False,
                            disable_env_checker=True,
                            kwargs={"system": system, "max_episode_steps": limit, "render_mode": render_mode})

    @property
    def system(self) -> LQRSystem:
        """The system being sampled, for exact answers (``env.unwrapped.system``)."""
        return self._system

    @property
    def max_episode_steps(self) -> int | None:
        """The env's own time limit (None: none)."""
        return self._limit

    @property
    def state(self) -> np.ndarray | None:
        """A copy of the current state, None before the first reset."""
        return None if self._state is None else self._state.copy()

    @property
    def elapsed_steps(self) -> int:
        """Steps taken since the last reset."""
        return self._elapsed

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        r"""Start an episode: :math:`x_0 \sim N(\mu_0, \Sigma_0)`; returns ``(x0, {})``."""
        super().reset(seed=seed)
        if options is not None and not isinstance(options, Mapping):
            raise InvalidInputError(f"options should be a dict or None, actual {type(options).__name__}")
        if options:
            raise InvalidInputError(f"options should be empty or None (LQREnv takes none), actual keys "
                                    f"{sorted(options)}")
        s = self._system
        self._state = s.mu0 + self._L0 @ self.np_random.standard_normal(s.state_dim)
        self._elapsed, self._done = 0, False
        return self._state.copy(), {}

    def step(self, action):
        """Apply `action` in the current state; see the class docstring for the five returns."""
        if self._state is None:
            raise ResetNeededError("step() was called before reset(); call env.reset() first")
        if self._done:
            raise ResetNeededError(
                f"step() was called after the episode was truncated (after {self._elapsed} steps); "
                "call env.reset() to start a new one")
        u = self._check_action(action)
        s, x = self._system, self._state
        with np.errstate(over="ignore", invalid="ignore"):
            cost = float(x @ s.Q @ x + u @ s.R @ u)
            x2 = s.A @ x + s.B @ u + self._Lw @ self.np_random.standard_normal(s.state_dim)
        if not (np.isfinite(cost) and np.isfinite(x2).all()):
            # An infinite or NaN reward would poison every return computed from it, silently.
            raise InvalidInputError(
                f"the LQR step overflows float64 at step {self._elapsed} (max |x| = {float(np.abs(x).max()):.3g}, "
                f"max |action| = {float(np.abs(u).max()):.3g}): the actions or the policy make the state "
                f"grow without bound; use a stabilising policy, smaller actions or a time limit")
        self._elapsed += 1
        truncated = self._limit is not None and self._elapsed >= self._limit
        self._state, self._done = x2, truncated
        return x2.copy(), -cost, False, truncated, {"cost": cost}

    def render(self):
        """``"ansi"``: one line with the current state; None (with a warning) without a render mode."""
        if self.render_mode is None:
            gymnasium.logger.warn(
                "render() was called with render_mode=None; build the env with render_mode='ansi' "
                "to get the current state as text")
            return None
        if self._state is None:
            raise ResetNeededError("render() was called before reset(); call env.reset() first")
        return f"LQR: x = {np.array2string(self._state, precision=4)}, step {self._elapsed}\n"

    def _check_action(self, action) -> np.ndarray:
        m = self._system.action_dim
        try:
            u = np.asarray(action)
        except Exception as exc:
            raise InvalidInputError(f"action could not be converted to an array: {exc}") from None
        if u.dtype == bool or u.dtype.kind not in "iuf":
            raise InvalidInputError(f"action should be a real vector of shape ({m},), actual dtype {u.dtype}")
        if u.shape != (m,):
            raise ShapeError(f"action should have shape ({m},) (action_space {self.action_space}), "
                             f"actual shape {u.shape}")
        u = u.astype(np.float64)
        bad = ~np.isfinite(u)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InvalidInputError(f"action should be finite, actual action[{i}] = {float(u[i])!r}")
        return u


def register_lqr_env() -> None:
    """Register `LQR_ID` with Gymnasium (idempotent; called when this module is imported)."""
    old = gymnasium.registry.get(LQR_ID)
    if old is not None and old.entry_point == _ENTRY_POINT:
        return
    gymnasium.register(LQR_ID, entry_point=_ENTRY_POINT)


register_lqr_env()
