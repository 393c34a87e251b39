r"""Vectorized sampling of trajectories on a `TabularMDP`.

Two samplers, both time-major (T, N) and driven only by a seeded
`numpy.random.Generator` (same seed, same batch):

* `sample_steps`: N environments stepped T times each, with automatic reset
  when an episode ends (terminated, or truncated at `max_episode_steps`), as
  in SB3's and CleanRL's rollout buffers. A reset never leaks into a
  transition: ``next_states[t]`` is the true successor (the final
  observation), and the first state of the new episode is ``states[t + 1]``.
* `sample_episodes`: N complete episodes run side by side until each ends;
  rows after an episode's end are padding (``valid`` is False).

Transition rewards: the MDP's ``transition_rewards[s, a, s2]`` if it has
them, else the expected reward r(s, a) (a deterministic reward).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from refpg._validation import check_positive_int, check_probability_rows
from refpg.errors import ImproperMDPError, InvalidInputError
from refpg.evaluation import check_mdp

__all__ = ["Batch", "Episode", "Sampler", "sample_steps", "sample_episodes"]


class Episode(NamedTuple):
    """One episode (or the unfinished tail of one), arrays of length T_e."""

    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_states: np.ndarray
    log_probs: np.ndarray
    terminated: bool
    """The last transition entered a terminal state."""
    truncated: bool
    """The episode was cut by the time limit (the last next state is bootstrappable)."""

    @property
    def complete(self) -> bool:
        """Ended by termination or truncation (not cut by the end of the batch)."""
        return self.terminated or self.truncated


@dataclass(frozen=True, eq=False)
class Batch:
    """A time-major batch of transitions; every array has shape (T, N).

    Attributes
    ----------
    states, actions, next_states : int64 arrays
    rewards, log_probs : float64 arrays
        ``log_probs[t, n] = log pi(actions[t, n] | states[t, n])`` under the
        sampling policy.
    terminated, truncated : bool arrays
        Per transition, as in CONVENTIONS.md: ``terminated`` when
        ``next_states`` is terminal, ``truncated`` when the time limit cut
        the episode there (never both).
    step : int64 array
        Index of the transition within its episode (0 at an episode start),
        so ``gamma ** step`` is the discount weight of [Williams1992]'s
        estimator.
    valid : bool array
        False on padding rows (only `sample_episodes` pads).
    """

    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_states: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    log_probs: np.ndarray
    step: np.ndarray
    valid: np.ndarray

    @property
    def shape(self) -> tuple:
        """(T, N)."""
        return self.states.shape

    @property
    def dones(self) -> np.ndarray:
        """terminated | truncated."""
        return self.terminated | self.truncated

    def episodes(self, *, complete_only: bool = True) -> list[Episode]:
        """The batch as a list of episodes, environment by environment.

        Parameters
        ----------
        complete_only : bool
            Drop the unfinished tail of each environment's last episode.
        """
        out = []
        T, N = self.shape
        for n in range(N):
            valid = np.flatnonzero(self.valid[:, n])
            ends = [t for t in valid if self.terminated[t, n] or self.truncated[t, n]]
            start = 0
            bounds = []
            for e in ends:
                bounds.append((start, e + 1))
                start = e + 1
            if not complete_only and valid.size and start <= valid[-1]:
                bounds.append((start, valid[-1] + 1))
            for a, b in bounds:
                out.append(Episode(self.states[a:b, n], self.actions[a:b, n], self.rewards[a:b, n],
                                   self.next_states[a:b, n], self.log_probs[a:b, n],
                                   bool(self.terminated[b - 1, n]), bool(self.truncated[b - 1, n])))
        return out


class _Categorical:
    """Draw from many categorical rows at once by inverse CDF on one sorted key array.

    Row k's cumulative probabilities are stored as ``k + cumsum`` so one
    `searchsorted` on ``k + u`` serves every row; the index is clamped to the
    row so a cumulative sum that ends a hair below 1 cannot spill over.
    """

    def __init__(self, rows):
        rows = sp.csr_array(rows, copy=True)
        rows.eliminate_zeros()
        self.indptr, self.indices = rows.indptr, rows.indices
        n_rows = rows.shape[0]
        row_of = np.repeat(np.arange(n_rows), np.diff(rows.indptr))
        within = np.cumsum(rows.data) - np.repeat(np.concatenate([[0.0], np.cumsum(rows.data)])[rows.indptr[:-1]],
                                                  np.diff(rows.indptr))
        self.keys = row_of + within

    def draw(self, row: np.ndarray, u: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.keys, row + u, side="right")
        pos = np.clip(pos, self.indptr[row], self.indptr[row + 1] - 1)
        return self.indices[pos]


class Sampler:
    """Reusable sampler for one MDP and one policy (precomputes the CDFs).

    Parameters
    ----------
    mdp : TabularMDP
    pi : array_like, shape (S, A)
        Row-stochastic policy.
    """

    def __init__(self, mdp, pi):
        self.mdp = check_mdp(mdp)
        S, A = mdp.n_states, mdp.n_actions
        self.pi = check_probability_rows(pi, "pi", shape=(S, A))
        with np.errstate(divide="ignore"):
            self._log_pi = np.log(self.pi)
        self._policy = _Categorical(self.pi)
        self._transitions = _Categorical(mdp.transition_rows())
        self._start = _Categorical(mdp.rho[None, :])
        R = mdp.transition_rewards
        if R is None:
            self._reward = lambda s, a, s2: mdp.r[s, a]
        elif sp.issparse(R):
            R = sp.csr_array(R)
            self._reward = lambda s, a, s2: np.asarray(R[s * A + a, s2]).ravel()
        else:
            self._reward = lambda s, a, s2: R[s, a, s2]

    def _reset(self, rng, n):
        return self._start.draw(np.zeros(n, dtype=np.int64), rng.random(n))

    def _step(self, rng, s):
        A = self.mdp.n_actions
        a = self._policy.draw(s, rng.random(s.size))
        s2 = self._transitions.draw(s * A + a, rng.random(s.size))
        return a, s2, self._reward(s, a, s2), self._log_pi[s, a]

    def steps(self, n_envs: int, n_steps: int, *, rng, max_episode_steps: int | None = None) -> Batch:
        """See `sample_steps`."""
        N = check_positive_int(n_envs, "n_envs")
        T = check_positive_int(n_steps, "n_steps")
        limit = _check_limit(max_episode_steps)
        rng = _check_rng(rng)
        terminal = self.mdp.terminal
        out = _empty(T, N)
        s = self._reset(rng, N)
        k = np.zeros(N, dtype=np.int64)
        for t in range(T):
            a, s2, rew, logp = self._step(rng, s)
            term = terminal[s2]
            trunc = ~term & (k + 1 >= limit) if limit else np.zeros(N, dtype=bool)
            _store(out, t, s, a, rew, s2, term, trunc, logp, k)
            done = term | trunc
            k = np.where(done, 0, k + 1)
            s = s2.copy()
            if done.any():
                s[done] = self._reset(rng, int(done.sum()))
        return Batch(valid=np.ones((T, N), dtype=bool), **out)

    def episodes(self, n_episodes: int, *, rng, max_episode_steps: int | None = None) -> Batch:
        """See `sample_episodes`."""
        N = check_positive_int(n_episodes, "n_episodes")
        limit = _check_limit(max_episode_steps)
        rng = _check_rng(rng)
        if limit is None and not self.mdp.is_proper(self.pi):
            raise ImproperMDPError(
                "sample_episodes without max_episode_steps needs every episode to end: under this "
                "pi some episodes from rho never reach a terminal state")
        terminal = self.mdp.terminal
        rows = []
        s = self._reset(rng, N)
        alive = np.ones(N, dtype=bool)
        t = 0
        while alive.any():
            a, s2, rew, logp = self._step(rng, s)
            term = terminal[s2] & alive
            trunc = alive & ~term & (t + 1 >= limit) if limit else np.zeros(N, dtype=bool)
            rows.append((s, a, np.where(alive, rew, 0.0), s2, term, trunc, logp, alive.copy()))
            alive = alive & ~(term | trunc)
            s = s2
            t += 1
        cols = list(zip(*rows))
        T = len(rows)
        step = np.broadcast_to(np.arange(T)[:, None], (T, N)).copy()
        valid = np.stack(cols[7])
        return Batch(states=np.stack(cols[0]), actions=np.stack(cols[1]), rewards=np.stack(cols[2]),
                     next_states=np.stack(cols[3]), terminated=np.stack(cols[4]), truncated=np.stack(cols[5]),
                     log_probs=np.stack(cols[6]), step=np.where(valid, step, 0), valid=valid)


def sample_steps(mdp, pi, n_envs: int, n_steps: int, *, rng, max_episode_steps: int | None = None) -> Batch:
    """Step N environments T times each under pi, resetting when an episode ends.

    Parameters
    ----------
    mdp : TabularMDP
    pi : array_like, shape (S, A)
    n_envs, n_steps : int >= 1
        N and T.
    rng : numpy.random.Generator
        The only source of randomness; the same generator state gives the same batch.
    max_episode_steps : int, optional
        Time limit: the transition that completes this many steps of an
        episode is ``truncated`` (unless it terminates).

    Returns
    -------
    Batch
        Time-major (T, N). Each environment starts a fresh episode at t = 0;
        its last episode is usually unfinished (neither flag set at T - 1).
    """
    return Sampler(mdp, pi).steps(n_envs, n_steps, rng=rng, max_episode_steps=max_episode_steps)


def sample_episodes(mdp, pi, n_episodes: int, *, rng, max_episode_steps: int | None = None) -> Batch:
    """Run N independent episodes from rho to their end, side by side.

    Without `max_episode_steps` every episode must terminate (checked:
    otherwise `ImproperMDPError`), so estimates are free of truncation bias.

    Returns
    -------
    Batch
        (T, N) with T the longest episode; column n is episode n; rows past
        its end have ``valid`` False and zero reward.
    """
    return Sampler(mdp, pi).episodes(n_episodes, rng=rng, max_episode_steps=max_episode_steps)


def _empty(T, N):
    i = lambda: np.zeros((T, N), dtype=np.int64)
    b = lambda: np.zeros((T, N), dtype=bool)
    f = lambda: np.zeros((T, N))
    return dict(states=i(), actions=i(), rewards=f(), next_states=i(), terminated=b(), truncated=b(),
                log_probs=f(), step=i())


def _store(out, t, s, a, rew, s2, term, trunc, logp, k):
    out["states"][t], out["actions"][t], out["rewards"][t] = s, a, rew
    out["next_states"][t], out["terminated"][t], out["truncated"][t] = s2, term, trunc
    out["log_probs"][t], out["step"][t] = logp, k


def _check_limit(limit):
    return None if limit is None else check_positive_int(limit, "max_episode_steps")


def _check_rng(rng):
    if not isinstance(rng, np.random.Generator):
        raise InvalidInputError(
            f"rng should be a numpy.random.Generator (np.random.default_rng(seed)), actual {type(rng).__name__}")
    return rng
