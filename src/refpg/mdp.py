"""Finite Markov decision processes with validated, immutable arrays.

See docs/conventions.md, "Shapes and names". Transitions are stored either densely,
``P[s, a, s2]`` of shape (S, A, S), or as a `scipy.sparse` matrix of shape
(S*A, S) whose row ``s*A + a`` is ``P[s, a, :]``; the sparse form lets
gridworlds with 10^5 states fit in memory.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.linalg.blas import dgemv as _dgemv

from refpg._validation import (
    PROB_ATOL,
    RHO_ATOL,
    as_float_array,
    check_discount,
    check_distributions,
    check_shape,
)
from refpg.errors import (
    ImproperMDPError,
    InvalidInputError,
    NegativeEntryError,
    NonFiniteError,
    NotADistributionError,
    ShapeError,
    TerminalStateError,
)

__all__ = ["TabularMDP"]


class TabularMDP:
    r"""A finite discounted MDP :math:`(S, A, P, r, \rho, \gamma)`.

    Validated once, here; every array is copied and made read-only, so an
    MDP can be shared freely and never changes after construction.

    Parameters
    ----------
    P : array_like of shape (S, A, S), or scipy.sparse matrix of shape (S*A, S)
        ``P[s, a, s2] = Pr(s_{t+1} = s2 | s_t = s, a_t = a)``. Each
        ``P[s, a, :]`` must be a distribution (non-negative, sums to 1 within
        ``atol=1e-12``: a row off by delta moves ``sum(d)`` by up to
        ``gamma * delta / (1 - gamma)``, and the identities of
        docs/conventions.md hold to 1e-10). Sparse input is summed over duplicate entries.
    r : array_like of shape (S, A) or (S, A, S), or sparse (S*A, S)
        Expected reward ``r[s, a]``, or a transition reward ``r[s, a, s2]``
        which is kept for sampling and reduced to
        :math:`r(s,a) = \sum_{s'} P(s'|s,a)\, r(s,a,s')` for exact work.
    rho : array_like of shape (S,)
        Initial-state distribution: non-negative, sums to 1 within
        ``atol=1e-12``: ``sum(d) - 1`` equals ``sum(rho) - 1`` for every
        policy.
    gamma : float
        Discount in [0, 1); 1 is accepted only if the MDP is proper (every
        policy reaches a terminal state with probability one from every
        non-terminal state, reachable from `rho` or not, so that V is finite
        everywhere).
    terminal : array_like of bool, shape (S,), optional
        Terminal states: absorbing (``P[t, a, t] = 1``) with zero reward.
        Entering one ends an episode. Default: none.
    name : str, optional
        A label used in ``repr`` and reports.

    Raises
    ------
    refpg.errors.ShapeError, NonFiniteError, NegativeEntryError,
    NotADistributionError, InvalidDiscountError, ImproperMDPError,
    TerminalStateError
        With a message naming the argument and the offending entry.

    Examples
    --------
    >>> import numpy as np, refpg
    >>> P = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])
    >>> mdp = refpg.TabularMDP(P, r=[[1.0, 0.0], [2.0, 0.0]], rho=[1.0, 0.0], gamma=0.9)
    >>> mdp.n_states, mdp.n_actions
    (2, 2)
    """

    __slots__ = ("_P", "_r", "_r_sas", "_rho", "_gamma", "_terminal", "_name",
                 "_n_states", "_n_actions", "_frozen")

    def __init__(self, P, r, rho, gamma, terminal=None, *, name: str | None = None):
        if sp.issparse(P):
            P, S, A = _sparse_transitions(P)
        else:
            P = as_float_array(P, "P", ndim=3)
            S, A = P.shape[0], P.shape[1]
            check_shape(P, "P", shape=(S, A, S))
            if S == 0 or A == 0:
                raise ShapeError(f"P should have at least one state and one action, actual shape {P.shape}")
            check_distributions(P, "P")
            P = _readonly(P)
        self._P, self._n_states, self._n_actions = P, S, A

        self._r, self._r_sas = self._rewards(r)
        self._rho = _readonly(_distribution(rho, "rho", S, atol=RHO_ATOL))

        if terminal is None:
            term = np.zeros(S, dtype=bool)
        else:
            term = np.asarray(terminal)
            if term.dtype != bool:
                raise InvalidInputError(f"terminal should be a boolean array, actual dtype {term.dtype}")
            check_shape(term, "terminal", shape=(S,))
        self._terminal = _readonly(term)
        self._check_terminal_states()

        self._gamma = check_discount(gamma, allow_one=True)
        if self._gamma == 1.0:
            self._check_proper()
        self._name = name
        self._frozen = True

    # -- immutability -------------------------------------------------------
    def __setattr__(self, key, value):
        if getattr(self, "_frozen", False):
            raise AttributeError("TabularMDP is immutable; build a new one instead")
        object.__setattr__(self, key, value)

    def __copy__(self):
        return self  # immutable: a copy would be indistinguishable

    def __deepcopy__(self, memo):
        return self

    # -- construction helpers ----------------------------------------------
    def _rewards(self, r):
        S, A = self._n_states, self._n_actions
        if sp.issparse(r):
            # A copy, like every dense input: the caller's matrix must not alias ours.
            R = sp.csr_array(r, dtype=np.float64, copy=True)
            if R.ndim != 2 or R.shape != (S * A, S):
                raise ShapeError(f"r should have shape ({S * A}, {S}) as a sparse matrix, actual {R.shape}")
            R.sum_duplicates()
            _check_finite_sparse(R, "r", A)
            return _readonly(self._reduce(R)), _readonly_sparse(R)
        arr = as_float_array(r, "r")
        if arr.ndim == 2:
            check_shape(arr, "r", shape=(S, A))
            return _readonly(arr), None
        if arr.ndim == 3:
            check_shape(arr, "r", shape=(S, A, S))
            return _readonly(self._reduce(arr)), _readonly(arr)
        raise ShapeError(f"r should have shape ({S}, {A}) or ({S}, {A}, {S}), actual shape {arr.shape}")

    def _reduce(self, R):
        S, A = self._n_states, self._n_actions
        if sp.issparse(self._P):
            R2 = R if sp.issparse(R) else R.reshape(S * A, S)
            return np.asarray(self._P.multiply(R2).sum(axis=1)).reshape(S, A)
        if sp.issparse(R):
            R = R.toarray().reshape(S, A, S)
        return np.einsum("sat,sat->sa", self._P, R)

    def _check_terminal_states(self):
        A = self._n_actions
        for t in np.flatnonzero(self._terminal):
            for a in range(A):
                stay = self._P[t * A + a, t] if sp.issparse(self._P) else self._P[t, a, t]
                if abs(stay - 1.0) > PROB_ATOL:
                    raise TerminalStateError(
                        f"P[{t}, {a}, {t}] is {float(stay)!r} but state {t} is terminal; "
                        f"expected 1 (terminal states are absorbing) within atol={PROB_ATOL:g}")
                if self._r[t, a] != 0.0:
                    raise TerminalStateError(
                        f"r[{t}, {a}] is {float(self._r[t, a])!r} but state {t} is terminal; "
                        "expected 0 (terminal states give no reward)")
        starts = np.flatnonzero(self._terminal & (self._rho > 0))
        if starts.size:
            # Entering a terminal state ends an episode, so no episode can start in one
            # (Gymnasium's reset never returns one); a sampler would otherwise take a
            # step the exact side does not count.
            t = int(starts[0])
            raise TerminalStateError(
                f"rho[{t}] is {float(self._rho[t])!r} but state {t} is terminal; expected 0 "
                "(an episode cannot start in a terminal state)")

    def _check_proper(self):
        # Every non-terminal state, reachable or not: V must be finite on all of
        # them for every policy, or I - P_pi restricted to the non-terminal
        # states is singular and evaluation has no answer to give.
        bad = np.flatnonzero(self.trap_states())
        if bad.size:
            reach = self.reachable_states()
            first = next((s for s in bad if reach[s]), bad[0])
            where = "reachable from rho" if reach[first] else "unreachable from rho, but V must be finite there too"
            raise ImproperMDPError(
                f"gamma = 1 requires a proper MDP, but from state {first} ({where}) "
                f"some policy never reaches a terminal state ({bad.size} such states in all); "
                "use gamma < 1 or make those states terminal")

    # -- public properties -------------------------------------------------
    @property
    def n_states(self) -> int:
        """Number of states S."""
        return self._n_states

    @property
    def n_actions(self) -> int:
        """Number of actions A."""
        return self._n_actions

    @property
    def P(self):
        """Transitions: read-only (S, A, S) array or sparse (S*A, S) matrix."""
        return self._P

    @property
    def is_sparse(self) -> bool:
        """Whether transitions are stored as a sparse (S*A, S) matrix."""
        return sp.issparse(self._P)

    @property
    def r(self) -> np.ndarray:
        """Expected immediate reward r(s, a), shape (S, A)."""
        return self._r

    @property
    def transition_rewards(self):
        """The (S, A, S) (or sparse (S*A, S)) reward given, or None."""
        return self._r_sas

    @property
    def rho(self) -> np.ndarray:
        """Initial-state distribution, shape (S,)."""
        return self._rho

    @property
    def gamma(self) -> float:
        """Discount factor."""
        return self._gamma

    @property
    def terminal(self) -> np.ndarray:
        """Boolean mask of terminal states, shape (S,)."""
        return self._terminal

    @property
    def name(self) -> str | None:
        """Optional label."""
        return self._name

    def __repr__(self) -> str:
        kind = "sparse" if self.is_sparse else "dense"
        label = f"{self._name!r}, " if self._name else ""
        return (f"TabularMDP({label}S={self._n_states}, A={self._n_actions}, "
                f"gamma={self._gamma}, {kind}, terminal={int(self._terminal.sum())})")

    # -- small composable pieces ------------------------------------------
    def transition_rows(self):
        """Transitions as an (S*A, S) matrix (a reshaped view when dense)."""
        if self.is_sparse:
            return self._P
        S, A = self._n_states, self._n_actions
        return self._P.reshape(S * A, S)

    def dense_P(self) -> np.ndarray:
        """Transitions as a dense (S, A, S) array (a copy when sparse)."""
        if self.is_sparse:
            S, A = self._n_states, self._n_actions
            return self._P.toarray().reshape(S, A, S)
        return self._P

    def policy_transitions(self, pi: np.ndarray):
        r"""State-to-state matrix :math:`P_\pi[s, s'] = \sum_a \pi(a|s) P(s'|s, a)`.

        Dense (S, S) array for dense MDPs, sparse CSR for sparse ones.
        `pi` is trusted here; public callers validate it first.
        """
        S, A = self._n_states, self._n_actions
        if self.is_sparse:
            Pi = sp.csr_array((pi.ravel(), np.arange(S * A), np.arange(0, S * A + 1, A)),
                              shape=(S, S * A))
            return (Pi @ self._P).tocsr()
        # A batched (1, A) @ (A, S) product per state: no (S, A, S) temporary.
        return np.matmul(pi[:, None, :], self._P)[:, 0, :]

    def policy_rewards(self, pi: np.ndarray) -> np.ndarray:
        r""":math:`r_\pi[s] = \sum_a \pi(a|s) r(s, a)`, shape (S,)."""
        return np.einsum("sa,sa->s", pi, self._r)

    def action_values(self, V: np.ndarray) -> np.ndarray:
        r""":math:`Q = r + \gamma P V`, shape (S, A), for any state-value vector V."""
        S, A = self._n_states, self._n_actions
        if self.is_sparse:
            return self._r + self._gamma * (self._P @ V).reshape(S, A)
        # scipy's BLAS, not numpy's: the LU around this call runs in scipy's
        # OpenBLAS, and switching thread pools between libraries costs ms.
        PV = _dgemv(self._gamma, self._P.reshape(S * A, S).T, np.ascontiguousarray(V, dtype=np.float64), trans=1)
        return self._r + PV.reshape(S, A)

    def reachable_states(self, pi: np.ndarray | None = None, *, P_pi=None) -> np.ndarray:
        """States reached with positive probability from rho, at any time.

        Under `pi` if given (edges where ``P_pi > 0``; pass `P_pi` if it is
        already computed), else under any action. Exact: computed on the
        sparsity pattern, never by thresholding values.
        """
        if pi is None:
            S, A = self._n_states, self._n_actions
            # Any action: the union of supports, collapsed over actions.
            collapse = sp.csr_array((np.ones(S * A), (np.repeat(np.arange(S), A), np.arange(S * A))),
                                    shape=(S, S * A))
            adj = collapse @ sp.csr_array(self.transition_rows())
        else:
            adj = self.policy_transitions(pi) if P_pi is None else P_pi
        return reachable_from(adj, self._rho > 0)

    def is_proper(self, pi: np.ndarray | None = None) -> bool:
        """Whether episodes from rho end with probability one.

        With `pi`: under that policy (every state it reaches from rho can
        still reach a terminal state, which for a finite chain means
        absorption almost surely). Without: under every policy.
        """
        if pi is None:
            return not (self.trap_states() & self.reachable_states()).any()
        P_pi = self.policy_transitions(pi)
        reach = self.reachable_states(pi, P_pi=P_pi)
        can_end = reachable_from(sp.csr_array(P_pi).T.tocsr(), self._terminal)
        return bool(np.all(can_end[reach]))

    def trap_states(self) -> np.ndarray:
        """Non-terminal states from which some policy avoids termination forever.

        The largest set X of non-terminal states such that every s in X has
        an action whose successors all lie in X (a fixed point); a policy
        that plays those actions never terminates from X.
        """
        S, A = self._n_states, self._n_actions
        support = sp.csr_array(self.transition_rows())
        support.data = (support.data > 0).astype(np.float64)
        X = ~self._terminal
        while True:
            leaves = (support @ (~X).astype(np.float64)).reshape(S, A) > 0
            X_new = X & (~leaves).any(axis=1)
            if np.array_equal(X_new, X):
                return X
            X = X_new


def reachable_from(adj, sources: np.ndarray) -> np.ndarray:
    """Nodes reachable (in zero or more steps) from any source in the directed graph `adj`.

    `adj` is an (S, S) dense array or sparse matrix; an edge is a positive entry.
    """
    if sources.all():
        return sources.copy()
    if not sp.issparse(adj):
        # Dense: expand the frontier row by row; every node enters it once, so O(S^2) in all.
        reach = sources.copy()
        frontier = sources
        while True:
            new = (adj[frontier] > 0).any(axis=0)
            new &= ~reach
            if not new.any():
                return reach
            reach |= new
            frontier = new
    from scipy.sparse.csgraph import breadth_first_order

    adj = sp.csr_array(adj)
    S = adj.shape[0]
    src = np.flatnonzero(sources)
    if src.size == 0:
        return np.zeros(S, dtype=bool)
    if src.size == 1:
        graph, start = adj, int(src[0])
    else:
        # A virtual node S with an edge to every source: one search covers them all.
        graph = sp.csr_array((np.concatenate([adj.data, np.ones(src.size)]),
                              np.concatenate([adj.indices, src]),
                              np.concatenate([adj.indptr, [adj.indptr[-1] + src.size]])),
                             shape=(S + 1, S + 1))
        start = S
    order = breadth_first_order(int32_indices(graph), start, directed=True, return_predecessors=False)
    mask = np.zeros(graph.shape[0], dtype=bool)
    mask[order] = True
    return mask[:S]


def int32_indices(a):
    """The CSR/CSC array `a` with int32 index arrays, when its sizes fit in int32.

    `scipy.sparse.csgraph` (here `breadth_first_order`) and SuperLU (`splu`)
    work on C-int (int32) indices only. A sparse array built from NumPy index
    arrays (`np.arange`, `np.flatnonzero`, `np.concatenate` of them: int64)
    keeps int64 indices, and scipy 1.11 hands them on unconverted, so it
    refuses them ("Buffer dtype mismatch", "rowind and colptr must be of type
    cint"); later releases cast them themselves. Casting here works on every
    supported scipy. `a` itself is never modified; an array too large for
    int32 is returned as it is (only a scipy that takes int64 can use it).
    """
    i32 = np.int32
    if a.indices.dtype == i32 and a.indptr.dtype == i32:
        return a
    if max(*a.shape, a.nnz) > np.iinfo(i32).max:
        return a
    return type(a)((a.data, a.indices.astype(i32), a.indptr.astype(i32)), shape=a.shape)


def _sparse_transitions(P):
    P = sp.csr_array(P, dtype=np.float64, copy=True)
    if P.ndim != 2 or P.shape[0] == 0 or P.shape[1] == 0 or P.shape[0] % P.shape[1] != 0:
        raise ShapeError(
            f"sparse P should have shape (S*A, S) with S, A >= 1, actual shape {P.shape}")
    S = P.shape[1]
    A = P.shape[0] // S
    P.sum_duplicates()
    _check_finite_sparse(P, "P", A)
    if (P.data < 0).any():
        k = int(np.flatnonzero(P.data < 0)[0])
        raise NegativeEntryError(
            f"{_sparse_entry(P, k, A, 'P')} is {float(P.data[k])!r}; expected a probability >= 0")
    sums = np.asarray(P.sum(axis=1)).ravel()
    bad = np.abs(sums - 1.0) > PROB_ATOL  # data is finite here, so no sum is NaN
    if bad.any():
        s, a = divmod(int(np.flatnonzero(bad)[0]), A)
        raise NotADistributionError(
            f"P[{s}, {a}, :] sums to {float(sums[s * A + a])!r}; expected 1 within atol={PROB_ATOL:g}")
    # Stored zeros are not edges: reachability and the support are read off
    # the sparsity pattern.
    P.eliminate_zeros()
    return _readonly_sparse(P), S, A


def _sparse_entry(M, k: int, A: int, name: str) -> str:
    """Name the k-th stored entry of an (S*A, S) CSR matrix as ``name[s, a, s2]``."""
    row = int(np.searchsorted(M.indptr, k, side="right") - 1)
    s, a = divmod(row, A)
    return f"{name}[{s}, {a}, {int(M.indices[k])}]"


def _check_finite_sparse(M, name: str, A: int) -> None:
    """Raise `NonFiniteError` naming the first NaN or infinite stored entry as ``name[s, a, s2]``."""
    bad = ~np.isfinite(M.data)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise NonFiniteError(
            f"{_sparse_entry(M, k, A, name)} is {float(M.data[k])!r}; expected a finite number "
            f"({int(bad.sum())} non-finite entries in all)")


def _readonly_sparse(M):
    # The matrix is ours (the caller's was copied); lock its data and index
    # arrays so that neither we nor a caller holding mdp.P can change it.
    for arr in (M.data, M.indices, M.indptr):
        arr.flags.writeable = False
    return M


def _distribution(x, name: str, n: int, *, atol: float = PROB_ATOL) -> np.ndarray:
    arr = as_float_array(x, name, shape=(n,))
    check_distributions(arr, name, atol=atol)
    return arr


def _readonly(arr: np.ndarray) -> np.ndarray:
    # Always copy: the caller's array must stay writeable and must not alias ours.
    arr = np.array(arr, copy=True)
    arr.flags.writeable = False
    return arr
