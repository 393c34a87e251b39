"""Small canonical MDPs: two-state, bandit, chain, gridworld and Garnet."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from refpg._validation import as_float_array, check_choice, check_discount, check_positive_int, check_real
from refpg.errors import InvalidInputError
from refpg.mdp import TabularMDP

__all__ = ["two_state", "bandit", "chain", "gridworld", "garnet", "frozen_lake", "high_signal",
           "episodic_garnet"]


def two_state(gamma: float = 0.9) -> TabularMDP:
    r"""Two states, two actions: "stay" (a=0) and "switch" (a=1), deterministic.

    .. code-block:: text

        P[s, stay]   = e_s            r = [[1, 0],    rho = [1, 0]
        P[s, switch] = e_{1-s}             [2, 0]]

    Staying in state 0 pays 1, staying in state 1 pays 2, switching pays 0.
    Optimal (for gamma > 1/2): switch once, then stay in state 1.

    **Closed form.** Let :math:`p = \pi(\text{stay}|0)`, :math:`q = \pi(\text{stay}|1)`.
    Then :math:`P_\pi = \begin{pmatrix} p & 1-p\\ 1-q & q\end{pmatrix}`,
    :math:`r_\pi = (p,\ 2q)` and, with
    :math:`\Delta = (1-\gamma p)(1-\gamma q) - \gamma^2(1-p)(1-q)`,

    .. math::
        V(0) = \frac{(1-\gamma q)\,p + \gamma(1-p)\,2q}{\Delta},\qquad
        V(1) = \frac{\gamma(1-q)\,p + (1-\gamma p)\,2q}{\Delta}

    (Cramer's rule on :math:`(I-\gamma P_\pi)V = r_\pi`), J = V(0), and
    :math:`d = (1-\gamma)\,(1-\gamma q,\ \gamma(1-p))/\Delta` from
    :math:`(I-\gamma P_\pi)^\top d = (1-\gamma)\rho`.
    Optimal values: :math:`V^*(1) = 2/(1-\gamma)`,
    :math:`V^*(0) = \max(1/(1-\gamma),\ 2\gamma/(1-\gamma))`.

    Parameters
    ----------
    gamma : float in [0, 1)
    """
    gamma = check_discount(gamma)
    P = np.zeros((2, 2, 2))
    P[0, 0, 0] = P[1, 0, 1] = 1.0   # stay
    P[0, 1, 1] = P[1, 1, 0] = 1.0   # switch
    r = np.array([[1.0, 0.0], [2.0, 0.0]])
    return TabularMDP(P, r, [1.0, 0.0], gamma, name="two_state")


def two_state_values(p: float, q: float, gamma: float):
    """Closed-form (V, d) of `two_state` under pi(stay|0)=p, pi(stay|1)=q (see its docstring)."""
    delta = (1 - gamma * p) * (1 - gamma * q) - gamma ** 2 * (1 - p) * (1 - q)
    V0 = ((1 - gamma * q) * p + gamma * (1 - p) * 2 * q) / delta
    V1 = (gamma * (1 - q) * p + (1 - gamma * p) * 2 * q) / delta
    d = (1 - gamma) * np.array([1 - gamma * q, gamma * (1 - p)]) / delta
    return np.array([V0, V1]), d


def bandit(rewards) -> TabularMDP:
    r"""A multi-armed bandit: one state, gamma = 0, so :math:`J = \pi \cdot r`.

    Parameters
    ----------
    rewards : array_like, shape (A,)
        Expected reward of each arm.
    """
    r = as_float_array(rewards, "rewards", ndim=1)
    if r.size == 0:
        raise InvalidInputError("rewards should hold at least one arm, actual length 0")
    A = r.size
    return TabularMDP(np.ones((1, A, 1)), r[None, :], [1.0], 0.0, name=f"bandit({A})")


def chain(n: int, *, slip: float = 0.0, small_reward: float = 0.2,
          large_reward: float = 1.0, gamma: float = 0.9) -> TabularMDP:
    r"""The n-state chain (NChain; Strens 2000), a classic local optimum.

    States 0..n-1, start in 0. Action 0 ("forward") moves s -> s+1 with
    reward 0, and at the end stays in n-1 with reward `large_reward`.
    Action 1 ("back") returns to state 0 with reward `small_reward`. With
    probability `slip` the other action's transition happens instead.

    Parameters
    ----------
    n : int >= 2
    slip : float in [0, 1]
    small_reward, large_reward : float
    gamma : float in [0, 1)
    """
    n = check_positive_int(n, "n", minimum=2)
    slip = check_real(slip, "slip", low=0.0, high=1.0)
    gamma = check_discount(gamma)
    move = np.zeros((n, 2, n))
    reward = np.zeros((n, 2, n))
    for s in range(n):
        fwd = min(s + 1, n - 1)
        move[s, 0, fwd] = 1.0
        move[s, 1, 0] = 1.0
        if s == n - 1:
            reward[s, 0, fwd] = large_reward
        reward[s, 1, 0] = small_reward
    P = (1 - slip) * move + slip * move[:, ::-1, :]
    # Reward follows the transition that actually happened.
    eff = (1 - slip) * move * reward + slip * move[:, ::-1, :] * reward[:, ::-1, :]
    r = eff.sum(axis=2)
    rho = np.zeros(n)
    rho[0] = 1.0
    return TabularMDP(P, r, rho, gamma, name=f"chain({n})")


_MOVES = np.array([[-1, 0], [0, 1], [1, 0], [0, -1]])  # up, right, down, left


def gridworld(height: int, width: int, *, slip: float = 0.0, gamma: float = 0.99,
              sparse: bool | None = None) -> TabularMDP:
    r"""A height x width grid: start top-left, terminal goal bottom-right.

    Actions 0-3 move up, right, down, left; a move into a wall stays put.
    With probability `slip` the move goes in a uniformly random direction
    instead (so the intended one has probability 1 - slip + slip/4).
    Entering the goal pays 1 and ends the episode; every other step pays 0.
    State index ``row * width + col``.

    Parameters
    ----------
    height, width : int >= 1, with height * width >= 2
    slip : float in [0, 1]
    gamma : float in [0, 1)
    sparse : bool, optional
        Store P as a sparse (S*A, S) matrix; default when S > 2000.
    """
    H = check_positive_int(height, "height")
    W = check_positive_int(width, "width")
    if H * W < 2:
        raise InvalidInputError(f"gridworld needs at least 2 cells, actual height*width = {H * W}")
    slip = check_real(slip, "slip", low=0.0, high=1.0)
    gamma = check_discount(gamma)
    S, A = H * W, 4
    goal = S - 1
    rows, cols = np.divmod(np.arange(S), W)
    # dest[s, m]: the cell reached from s by move m.
    nr = np.clip(rows[:, None] + _MOVES[None, :, 0], 0, H - 1)
    nc = np.clip(cols[:, None] + _MOVES[None, :, 1], 0, W - 1)
    dest = nr * W + nc
    dest[goal, :] = goal
    # Mixture weights over the 4 moves for each intended action.
    mix = np.full((A, 4), slip / 4)
    mix[np.arange(A), np.arange(A)] += 1 - slip
    row_idx = np.repeat(np.arange(S * A), 4)
    col_idx = np.repeat(dest, A, axis=0).ravel()
    data = np.tile(mix, (S, 1)).ravel()
    P = sp.csr_array((data, (row_idx, col_idx)), shape=(S * A, S))
    P.sum_duplicates()
    reward = P.tocsc()[:, [goal]].toarray().reshape(S, A)
    reward[goal, :] = 0.0
    use_sparse = S > 2000 if sparse is None else bool(sparse)
    if not use_sparse:
        P = P.toarray().reshape(S, A, S)
    terminal = np.zeros(S, dtype=bool)
    terminal[goal] = True
    rho = np.zeros(S)
    rho[0] = 1.0
    return TabularMDP(P, reward, rho, gamma, terminal, name=f"gridworld({H}x{W}, slip={slip})")


def garnet(n_states: int, n_actions: int, branching: int, *, seed: int,
           gamma: float = 0.95, sparse: bool = False) -> TabularMDP:
    r"""A Garnet MDP G(S, A, b) ([Archibald1995], [Geist2014]).

    For each (s, a): b distinct successors drawn uniformly without
    replacement; their probabilities are the gaps between b - 1 uniform cut
    points of [0, 1] (sorted, with 0 and 1 added); the reward r(s, a) is
    uniform in [0, 1]. rho is uniform over states.

    Parameters
    ----------
    n_states, n_actions : int >= 1
    branching : int in [1, n_states]
    seed : int
        Seed of a `numpy.random.Generator` (PCG64); same seed, same MDP.
    gamma : float in [0, 1)
    sparse : bool
        Store P as a sparse (S*A, S) matrix.
    """
    S = check_positive_int(n_states, "n_states")
    A = check_positive_int(n_actions, "n_actions")
    b = check_positive_int(branching, "branching")
    if b > S:
        raise InvalidInputError(f"branching should be <= n_states = {S}, actual {b}")
    gamma = check_discount(gamma)
    rng = np.random.default_rng(seed)
    succ = _distinct_successors(rng, S * A, S, b)
    cuts = np.sort(rng.random((S * A, b - 1)), axis=1)
    probs = np.diff(np.concatenate([np.zeros((S * A, 1)), cuts, np.ones((S * A, 1))], axis=1), axis=1)
    r = rng.random((S, A))
    P = sp.csr_array((probs.ravel(), (np.repeat(np.arange(S * A), b), succ.ravel())), shape=(S * A, S))
    if not sparse:
        P = P.toarray().reshape(S, A, S)
    return TabularMDP(P, r, np.full(S, 1.0 / S), gamma, name=f"garnet({S}, {A}, {b}, seed={seed})")


def _distinct_successors(rng, rows: int, S: int, b: int) -> np.ndarray:
    """`rows` sets of b distinct states, each uniform among all b-subsets."""
    if 2 * b > S:
        # Dense regime: the first b entries of a uniform random permutation.
        return np.argsort(rng.random((rows, S)), axis=1)[:, :b]
    # Sparse regime: draw with replacement and redraw the rows holding a
    # repeat; conditioning on "no repeat" leaves the subset uniform.
    succ = rng.integers(0, S, size=(rows, b))
    while True:
        srt = np.sort(succ, axis=1)
        bad = np.flatnonzero((srt[:, 1:] == srt[:, :-1]).any(axis=1))
        if bad.size == 0:
            return succ
        succ[bad] = rng.integers(0, S, size=(bad.size, b))


FROZEN_LAKE_MAPS = {
    "4x4": ("SFFF", "FHFH", "FFFH", "HFFG"),
    "8x8": ("SFFFFFFF", "FFFFFFFF", "FFFHFFFF", "FFFFFHFF",
            "FFFHFFFF", "FHHFFFHF", "FHFFHFHF", "FFFHFFFG"),
}
# Gymnasium's FrozenLake action order: left, down, right, up.
_LAKE_MOVES = np.array([[0, -1], [1, 0], [0, 1], [-1, 0]])


def frozen_lake(map_name: str = "4x4", *, slippery: bool = True, success_rate: float = 1.0 / 3.0,
                gamma: float = 0.99, desc=None) -> TabularMDP:
    r"""FrozenLake, built without Gymnasium, identical to ``FrozenLake-v1``.

    Cells: S start, F frozen, H hole, G goal. Actions 0-3: left, down,
    right, up. When slippery the intended move happens with probability
    `success_rate` and each perpendicular one with (1 - success_rate)/2;
    moves into the border stay put. Entering G pays 1; G and H are terminal.
    State index ``row * ncol + col``. The tests check that this equals
    ``refpg.envs.from_gymnasium("FrozenLake-v1", ...)`` entry for entry.

    Parameters
    ----------
    map_name : {"4x4", "8x8"}
    slippery : bool
    success_rate : float in [0, 1]
    gamma : float in [0, 1)
    desc : sequence of str, optional
        A custom map; overrides `map_name`.
    """
    if desc is None:
        check_choice(map_name, "map_name", sorted(FROZEN_LAKE_MAPS))
        desc = FROZEN_LAKE_MAPS[map_name]
    rows = [str(row) for row in desc]
    if not rows or any(len(row) != len(rows[0]) for row in rows):
        raise InvalidInputError("desc should be a non-empty list of equal-length strings")
    grid = np.array([list(row) for row in rows])
    if not set(grid.ravel()) <= set("SFHG") or (grid == "S").sum() != 1:
        raise InvalidInputError("desc should use only S, F, H, G and hold exactly one S")
    success_rate = check_real(success_rate, "success_rate", low=0.0, high=1.0)
    gamma = check_discount(gamma)
    nrow, ncol = grid.shape
    S, A = nrow * ncol, 4
    flat = grid.ravel()
    terminal = (flat == "G") | (flat == "H")
    P = np.zeros((S, A, S))
    r = np.zeros((S, A, S))
    fail = (1.0 - success_rate) / 2.0
    for s in range(S):
        if terminal[s]:
            P[s, :, s] = 1.0
            continue
        row, col = divmod(s, ncol)
        for a in range(A):
            outcomes = [((a - 1) % 4, fail), (a, success_rate), ((a + 1) % 4, fail)] if slippery else [(a, 1.0)]
            for move, prob in outcomes:
                nr = min(max(row + _LAKE_MOVES[move, 0], 0), nrow - 1)
                nc = min(max(col + _LAKE_MOVES[move, 1], 0), ncol - 1)
                s2 = nr * ncol + nc
                P[s, a, s2] += prob
                r[s, a, s2] = float(flat[s2] == "G")
    rho = (flat == "S").astype(np.float64)
    return TabularMDP(P, r, rho, gamma, terminal,
                      name=f"frozen_lake({nrow}x{ncol}, slippery={slippery})")


def high_signal(n_states: int = 3, n_actions: int = 3, *, p_end: float = 0.5, gamma: float = 0.9,
                seed: int = 0) -> TabularMDP:
    r"""A small episodic MDP built for statistical tests of gradient estimators.

    States 0..n_states-1 plus one terminal state (the last index). From every
    non-terminal (s, a) the episode ends with probability `p_end`; otherwise
    the next state is drawn from a Dirichlet(1) row (seeded). The reward
    depends strongly on the action, :math:`r(s, a) = 1` iff
    :math:`a = s \bmod A`, and rho is uniform on the non-terminal states.

    Every policy terminates (episodes have mean length 1/p_end), so no
    estimate needs truncating, and the per-episode signal-to-noise ratio of
    REINFORCE is high (about 0.3-0.5 at theta = 0 with the defaults).

    Parameters
    ----------
    n_states, n_actions : int
        Non-terminal states and actions.
    p_end : float in (0, 1]
    gamma : float in [0, 1]
    seed : int

    Returns
    -------
    TabularMDP
        With ``n_states + 1`` states, the last one terminal.
    """
    n = check_positive_int(n_states, "n_states")
    A = check_positive_int(n_actions, "n_actions")
    rng = np.random.default_rng(seed)
    r = np.zeros((n, A))
    r[np.arange(n), np.arange(n) % A] = 1.0
    return _with_exit(rng.dirichlet(np.ones(n), size=(n, A)), r, np.full(n, 1.0 / n), p_end, gamma,
                      "high_signal")


def episodic_garnet(n_states: int = 5, n_actions: int = 3, branching: int = 2, *, seed: int = 0,
                    p_end: float = 0.2, gamma: float = 0.9) -> TabularMDP:
    r"""`garnet` plus one terminal state entered with probability `p_end` from every (s, a).

    .. math::
        P'(s'|s, a) = (1 - p_{end}) P(s'|s, a), \qquad P'(\text{end}|s, a) = p_{end}

    Every policy terminates, episodes have mean length 1/p_end, and no
    sampled estimate ever needs truncating [Archibald1995].

    Returns
    -------
    TabularMDP
        With ``n_states + 1`` states, the last one terminal; rho is the Garnet's.
    """
    base = garnet(n_states, n_actions, branching, seed=seed)
    return _with_exit(base.P, base.r, base.rho, p_end, gamma, "episodic_garnet")


def _with_exit(P, r, rho, p_end, gamma, name) -> TabularMDP:
    """The MDP (P, r, rho) with a terminal state appended, entered w.p. `p_end` from every (s, a)."""
    p_end = check_real(p_end, "p_end", low=0.0, high=1.0, low_open=True)
    n, A = r.shape
    S = n + 1
    P2 = np.zeros((S, A, S))
    P2[:-1, :, :-1] = (1 - p_end) * P
    P2[:-1, :, -1] = p_end
    P2[-1, :, -1] = 1.0
    terminal = np.zeros(S, dtype=bool)
    terminal[-1] = True
    return TabularMDP(P2, np.vstack([r, np.zeros((1, A))]), np.r_[rho, 0.0], gamma, terminal, name=name)
