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

    On a `refpg.lqr.LQRSystem` (`refpg.lqr.sample_steps`) the states and
    actions are vectors: ``states`` and ``next_states`` are float64
    (T, N, n) and ``actions`` float64 (T, N, m); every other array is (T, N).

    Attributes
    ----------
    states, actions, next_states : int64 arrays
    rewards, log_probs : float64 arrays
        ``log_probs[t, n] = log pi(actions[t, n] | states[t, n])`` under the
        sampling policy.
    terminated, truncated : bool arrays
        Per transition, as in docs/conventions.md: ``terminated`` when
        ``next_states`` is terminal, ``truncated`` when the time limit cut
        the episode there (never both).
    step : int64 array
        Index of the transition within its episode (0 at an episode start),
        so ``gamma ** step`` is the discount weight of [Williams1992]'s
        estimator; 0 on padding.
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
        return self.rewards.shape

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
    """Draw from many categorical rows at once.

    Small tables use Walker's alias method (one uniform, O(1) work per draw,
    Vose's construction); very large ones fall back to inverse CDF on rows
    padded to the largest support m (m comparisons per draw). Both are exact
    up to float64 rounding of the probabilities.
    """

    #: Row count up to which alias tables are built (their construction loops in Python).
    ALIAS_MAX_ROWS = 20_000

    def __init__(self, rows):
        rows = sp.csr_array(rows, copy=True)
        rows.eliminate_zeros()
        K = rows.shape[0]
        counts = np.diff(rows.indptr)
        self.m = m = int(counts.max())
        col = np.arange(rows.nnz) - np.repeat(rows.indptr[:-1], counts)
        row = np.repeat(np.arange(K), counts)
        succ = np.zeros((K, m), dtype=np.int64)
        succ[row, col] = rows.indices
        prob = np.zeros((K, m))
        prob[row, col] = rows.data
        if K <= self.ALIAS_MAX_ROWS:
            self.alias = True
            # Flat tables: a 1-D take is several times faster than 2-D fancy
            # indexing; `outcomes` holds the kept outcome at i and the alias at i + K*m.
            keep, first, second = _alias_tables(prob, succ, counts)
            self.keep = keep.ravel()
            self.outcomes = np.concatenate([first.ravel(), second.ravel()])
            self.alias_offset = K * m
        else:
            self.alias = False
            cum = np.cumsum(prob, axis=1)
            # The last real entry and the padding never compare <= u < 1.
            cum[np.arange(m)[None, :] >= (counts - 1)[:, None]] = np.inf
            self.cum, self.succ = cum, succ

    def draw(self, row: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One outcome per entry of `row`, from uniforms `u` in [0, 1)."""
        if self.alias:
            return self.draw_alias(row * self.m, u * self.m)
        j = (self.cum[row] <= u[:, None]).sum(axis=1)
        return self.succ[row, j]

    def draw_alias(self, offset: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Alias draw from ``offset = row * m`` and ``x = u * m``."""
        j = x.astype(np.int64)
        return self.draw_split(offset + j, x - j)

    def draw_split(self, idx: np.ndarray, frac: np.ndarray) -> np.ndarray:
        """Alias draw from column indices ``row * m + j`` and ``frac = u * m - j``.

        ``frac`` is again uniform on [0, 1) and independent of j, so one
        uniform serves both choices; hot loops split all uniforms at once.
        """
        return self.outcomes.take(np.where(frac < self.keep.take(idx), idx, idx + self.alias_offset))



def _alias_tables(prob, succ, counts):
    """Vose's alias tables: column j of row k keeps its own outcome with
    probability keep[k, j] and otherwise yields second[k, j]."""
    K, m = prob.shape
    keep = np.ones((K, m))
    first = succ.copy()
    second = succ.copy()
    scaled = prob * m
    for k in range(K):
        n = counts[k]
        q = scaled[k].copy()
        small = [j for j in range(m) if q[j] < 1.0]
        large = [j for j in range(m) if q[j] >= 1.0]
        while small and large:
            j, big = small.pop(), large[-1]
            keep[k, j] = q[j]
            second[k, j] = succ[k, big]
            q[big] -= 1.0 - q[j]
            if q[big] < 1.0:
                small.append(large.pop())
        # Leftovers are 1 up to rounding; padding columns (zero probability)
        # can only be left over if rounding starved them, so point them at a
        # real outcome rather than the padding's placeholder.
        for j in small + large:
            keep[k, j] = 1.0
            if j >= n:
                first[k, j] = succ[k, 0]
    return keep, first, second


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
        self._joint_cache = None
        R = mdp.transition_rewards
        if R is None:
            r_flat = mdp.r.ravel()
            self._reward = lambda s, a, s2: r_flat.take(s * A + a)
        elif sp.issparse(R):
            R = sp.csr_array(R)
            def sparse_reward(s, a, s2):
                rows, cols = np.ravel(s * A + a), np.ravel(s2)
                return np.asarray(R[rows, cols]).reshape(np.shape(s))

            self._reward = sparse_reward
        else:
            self._reward = lambda s, a, s2: R[s, a, s2]

    def _reset(self, rng, n):
        return self._start.draw(np.zeros(n, dtype=np.int64), rng.random(n))

    def _step(self, rng, s):
        A = self.mdp.n_actions
        u = rng.random((2, s.size))
        a = self._policy.draw(s, u[0])
        s2 = self._transitions.draw(s * A + a, u[1])
        return a, s2, self._reward(s, a, s2), self._log_pi[s, a]

    def _joint(self):
        """One categorical per state over codes ``a * S + s2`` (pi(a|s) P(s2|s, a)).

        Built on first use of `steps`: one draw per step instead of two.
        """
        if self._joint_cache is None:
            S, A = self.mdp.n_states, self.mdp.n_actions
            rows = sp.csr_array(self.mdp.transition_rows())
            scaled = sp.csr_array(rows.multiply(self.pi.reshape(-1, 1)))
            self._joint_cache = _Categorical(scaled.reshape((S, A * S)))
        return self._joint_cache

    def steps(self, n_envs: int, n_steps: int, *, rng, max_episode_steps: int | None = None) -> Batch:
        """See `sample_steps`."""
        N = check_positive_int(n_envs, "n_envs")
        T = check_positive_int(n_steps, "n_steps")
        limit = _check_limit(max_episode_steps)
        rng = _check_rng(rng)
        S, A = self.mdp.n_states, self.mdp.n_actions
        joint = self._joint()
        code_next = np.arange(A * S) % S
        code_ends = self.mdp.terminal[code_next]
        # The loop keeps only what the next step depends on; rewards, log
        # probabilities, flags and step counters are derived afterwards,
        # vectorised over (T, N).
        states = np.empty((T, N), dtype=np.int64)
        codes = np.empty((T, N), dtype=np.int64)
        step = np.empty((T, N), dtype=np.int64)
        truncated = np.zeros((T, N), dtype=bool)
        s = self._reset(rng, N)
        k = np.zeros(N, dtype=np.int64)
        U = rng.random((T, N))
        zeros = np.zeros(N, dtype=np.int64)
        # A deterministic start (FrozenLake, CliffWalking, gridworlds) needs no draw.
        support = np.flatnonzero(self.mdp.rho)
        fixed_start = int(support[0]) if support.size == 1 else None
        if joint.alias:
            # Hot path: carry row offsets s * m instead of s, and split all
            # uniforms into column and fraction once, outside the loop.
            m = joint.m
            U *= m
            cols = U.astype(np.int64)
            U -= cols
            next_offset = code_next * m
        else:
            m = 1
            next_offset = code_next
        s = s * m
        for t in range(T):
            c = joint.draw_split(s + cols[t], U[t]) if joint.alias else joint.draw(s, U[t])
            states[t], codes[t], step[t] = s, c, k
            done = code_ends.take(c)
            if limit:
                trunc = k >= limit - 1
                trunc &= ~done
                truncated[t] = trunc
                done |= trunc
            # Branch-free bookkeeping: masked assignments cost more than arithmetic here.
            k += 1
            k *= ~done
            s = next_offset.take(c)
            if done.any():
                if fixed_start is not None:
                    s[done] = fixed_start * m
                else:
                    s = np.where(done, self._start.draw(zeros, rng.random(N)) * m, s)
        if m > 1:
            states //= m
        actions = codes // S
        next_states = codes - actions * S
        return Batch(states=states, actions=actions, rewards=self._reward(states, actions, next_states),
                     next_states=next_states, terminated=self.mdp.terminal.take(next_states),
                     truncated=truncated, log_probs=self._log_pi.ravel().take(states * A + actions),
                     step=step, valid=np.ones((T, N), dtype=bool))

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


def _check_limit(limit):
    return None if limit is None else check_positive_int(limit, "max_episode_steps")


def _check_rng(rng):
    if not isinstance(rng, np.random.Generator):
        raise InvalidInputError(
            f"rng should be a numpy.random.Generator (np.random.default_rng(seed)), actual {type(rng).__name__}")
    return rng
