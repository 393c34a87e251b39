r"""Token trees: prompts and their responses as a finite MDP over prefixes.

See docs/conventions.md, "Sequences". A state is a prefix :math:`s_t = (x, y_{<t})`,
an action is a token, transitions are deterministic and gamma = 1. A
response ends when it emits EOS or reaches the maximum length L; every
complete response leads to one shared absorbing terminal state. The tree is
therefore a proper `refpg.TabularMDP` and every exact quantity of the tabular
core (J, the policy gradient, the Fisher matrix, NPG, TRPO, PPO) applies to it
unchanged. On top of it the tree lists its complete responses, padded to L,
so that sums over responses (and over groups of them) are vectorised.
"""

from __future__ import annotations

import itertools
import numbers
from typing import NamedTuple

import numpy as np

from refpg._validation import as_float_array, check_positive_int, check_real, entry
from refpg.errors import InvalidInputError, NonFiniteError, ProblemTooLargeError, ShapeError
from refpg.mdp import TabularMDP
from refpg.policies import LogLinear, TabularSoftmax, log_softmax

__all__ = ["TokenTree", "Responses", "MAX_PREFIXES"]

#: Refuse trees with more prefixes than this: the dense (S, V, S) transition
#: array of the MDP grows as the square of the prefix count.
MAX_PREFIXES = 4000


class Responses(NamedTuple):
    r"""Every complete response of every prompt, padded to the maximum length L.

    Attributes
    ----------
    prompt : ndarray of int, (K,)
        The prompt x of response k.
    tokens : ndarray of int, (K, L)
        :math:`y_{k,t}`; positions past the response's end hold EOS and are masked.
    states : ndarray of int, (K, L)
        The prefix :math:`s_{k,t}` (a state of the MDP) each token was emitted from;
        the terminal state past the end.
    mask : ndarray of bool, (K, L)
        True on the response's own tokens, ``t < length[k]``.
    length : ndarray of int, (K,)
        :math:`|y_k|`, counting the EOS token when the response emitted one.
    reward : ndarray of float, (K,)
        The outcome reward :math:`R(x, y_k)`.
    token_rewards : ndarray of float, (K, L)
        Per-token rewards (0 where masked, and everywhere if the tree has none).
    """

    prompt: np.ndarray
    tokens: np.ndarray
    states: np.ndarray
    mask: np.ndarray
    length: np.ndarray
    reward: np.ndarray
    token_rewards: np.ndarray

    @property
    def n_responses(self) -> int:
        """K, the number of complete responses over all prompts."""
        return int(self.prompt.shape[0])

    @property
    def total_reward(self) -> np.ndarray:
        r""":math:`R(x, y_k) + \sum_t` token rewards, (K,): the return of the episode."""
        return self.reward + self.token_rewards.sum(axis=1)

    def of_prompt(self, x: int) -> np.ndarray:
        """Indices k of the responses of prompt `x`."""
        return np.flatnonzero(self.prompt == x)


class TokenTree:
    r"""Prompts, a vocabulary with EOS, a maximum length, rewards and a reference policy.

    Parameters
    ----------
    n_prompts : int
        Number of prompts x (the roots of the tree).
    vocab_size : int
        V >= 2 tokens, ``0 .. V-1``; one of them is EOS.
    max_length : int
        L >= 1: a response ends at EOS or after L tokens.
    reward : callable or array_like
        The outcome reward. Either ``reward(x, y) -> float`` with ``x`` an int and
        ``y`` a tuple of tokens (EOS included when emitted), or an array of shape
        (K,) in the order of `responses` (see `TokenTree.structure`).
    eos : int, default 0
        The EOS token.
    prompt_probs : array_like of shape (n_prompts,), optional
        :math:`\rho(x)`; uniform by default.
    token_reward : callable, optional
        ``token_reward(x, prefix, token) -> float``: a reward for emitting ``token``
        after ``prefix`` (a tuple), added to the outcome reward. Default none.
    ref_logits : callable or array_like, optional
        The reference policy :math:`\pi_{ref}`: ``ref_logits(x, prefix) -> (V,)`` logits,
        or an array of shape (S, V) of logits over the MDP's states (the terminal
        row is ignored). Default: uniform over the vocabulary.
    name : str, optional
        A label for reports.

    Attributes
    ----------
    mdp : TabularMDP
        The tree as a finite MDP: S = n_prefixes + 1 states (the last is the
        terminal state), V actions, deterministic P, gamma = 1.
    responses : Responses
        Every complete response, padded to L.
    ref_probs : ndarray (S, V)
        :math:`\pi_{ref}(a|s)`.
    prefix_prompt, prefix_depth, prefix_last : ndarray of int (n_prefixes,)
        The prompt, depth t (number of tokens emitted) and last token (-1 at a
        root) of each non-terminal state.

    Notes
    -----
    The tree holds :math:`n_{prompts} \sum_{t<L} (V-1)^t` prefixes; trees above
    `MAX_PREFIXES` are refused.

    References
    ----------
    docs/conventions.md, "Sequences"; [Liu2025] for the length bias these trees expose.
    """

    def __init__(self, n_prompts: int, vocab_size: int, max_length: int, reward, *, eos: int = 0,
                 prompt_probs=None, token_reward=None, ref_logits=None, name: str | None = None):
        X = check_positive_int(n_prompts, "n_prompts")
        V = check_positive_int(vocab_size, "vocab_size", minimum=2)
        L = check_positive_int(max_length, "max_length")
        if isinstance(eos, bool) or not isinstance(eos, numbers.Integral) or not 0 <= eos < V:
            raise InvalidInputError(f"eos should be a token in 0..{V - 1}, actual {eos!r}")
        eos = int(eos)
        n_prefix = X * sum((V - 1) ** t for t in range(L))
        if n_prefix > MAX_PREFIXES:
            raise ProblemTooLargeError(
                f"a tree of {X} prompts, vocab_size {V} and max_length {L} has {n_prefix} prefixes, "
                f"more than MAX_PREFIXES = {MAX_PREFIXES}; use fewer prompts, a smaller vocabulary or a "
                "shorter max_length")
        self.n_prompts, self.vocab_size, self.max_length, self.eos = X, V, L, eos
        self.name = name

        self._build_prefixes()
        S, N = self.n_states, self.n_prefixes
        self.terminal_state = N
        self._build_responses(reward, token_reward)

        rho = np.full(X, 1.0 / X) if prompt_probs is None else as_float_array(prompt_probs, "prompt_probs",
                                                                              shape=(X,))
        if (rho < 0).any() or abs(rho.sum() - 1.0) > 1e-12:
            bad = int(np.argmin(rho)) if (rho < 0).any() else None
            what = f"prompt_probs[{bad}] is {rho[bad]!r} < 0" if bad is not None else \
                f"prompt_probs sums to {rho.sum()!r}"
            raise InvalidInputError(f"{what}; expected a distribution over the {X} prompts")
        self.prompt_probs = _readonly(rho)
        self.ref_probs = _readonly(np.exp(self._ref_log_probs(ref_logits)))
        self.mdp = self._build_mdp()

    # -- structure ---------------------------------------------------------
    def _build_prefixes(self):
        X, V, L, eos = self.n_prompts, self.vocab_size, self.max_length, self.eos
        prompt, depth, last, parent, key = [], [], [], [], {}
        for x in range(X):
            for t in range(L):
                for tail in itertools.product([a for a in range(V) if a != eos], repeat=t):
                    key[(x, tail)] = len(prompt)
                    prompt.append(x)
                    depth.append(t)
                    last.append(tail[-1] if tail else -1)
                    parent.append(key[(x, tail[:-1])] if tail else -1)
        self._key = key
        self.prefix_prompt = _readonly(np.array(prompt, dtype=np.int64))
        self.prefix_depth = _readonly(np.array(depth, dtype=np.int64))
        self.prefix_last = _readonly(np.array(last, dtype=np.int64))
        self.prefix_parent = _readonly(np.array(parent, dtype=np.int64))
        self.n_prefixes = len(prompt)
        self.n_states = self.n_prefixes + 1
        nxt = np.full((self.n_prefixes, V), self.n_prefixes, dtype=np.int64)
        for (x, tail), s in key.items():
            if len(tail) + 1 < L:
                for a in range(V):
                    if a != eos:
                        nxt[s, a] = key[(x, tail + (a,))]
        self.next_state = _readonly(nxt)

    def prefix(self, s: int) -> tuple:
        """``(x, tokens)`` of non-terminal state `s`."""
        if not 0 <= int(s) < self.n_prefixes:
            raise InvalidInputError(f"s should be a non-terminal state in 0..{self.n_prefixes - 1}, actual {s!r}")
        toks = []
        while self.prefix_parent[s] >= 0:
            toks.append(int(self.prefix_last[s]))
            s = int(self.prefix_parent[s])
        return int(self.prefix_prompt[s]), tuple(reversed(toks))

    def state_of(self, x: int, prefix=()) -> int:
        """The state of prefix ``(x, prefix)``."""
        try:
            return self._key[(int(x), tuple(int(a) for a in prefix))]
        except KeyError:
            raise InvalidInputError(
                f"({x!r}, {tuple(prefix)!r}) is not a prefix of this tree (prompts 0..{self.n_prompts - 1}, "
                f"non-EOS tokens, length < {self.max_length})") from None

    def _build_responses(self, reward, token_reward):
        V, L, eos, N = self.vocab_size, self.max_length, self.eos, self.n_prefixes
        rows = []  # (x, tokens, states)
        for (x, tail), s in self._key.items():
            t = len(tail)
            enders = [eos] if t + 1 < L else list(range(V))
            for a in enders:
                toks = tail + (a,)
                states = [self._key[(x, toks[:j])] for j in range(len(toks))]
                rows.append((x, toks, states))
        rows.sort(key=lambda r: (r[0], len(r[1]), r[1]))
        K = len(rows)
        prompt = np.array([r[0] for r in rows], dtype=np.int64)
        length = np.array([len(r[1]) for r in rows], dtype=np.int64)
        tokens = np.full((K, L), eos, dtype=np.int64)
        states = np.full((K, L), N, dtype=np.int64)
        for k, (_, toks, st) in enumerate(rows):
            tokens[k, :len(toks)] = toks
            states[k, :len(st)] = st
        mask = np.arange(L)[None, :] < length[:, None]
        self._response_tuples = [(r[0], r[1]) for r in rows]

        if callable(reward):
            R = np.empty(K)
            for k, (x, toks, _) in enumerate(rows):
                R[k] = _real(reward(x, toks), f"reward({x}, {toks})")
        else:
            R = as_float_array(reward, "reward", shape=(K,))
        tr = np.zeros((K, L))
        self.token_reward_table = np.zeros((N + 1, V))
        if token_reward is not None:
            if not callable(token_reward):
                raise InvalidInputError(f"token_reward should be a callable (x, prefix, token) -> float, "
                                        f"actual {type(token_reward).__name__}")
            for (x, tail), s in self._key.items():
                for a in range(V):
                    self.token_reward_table[s, a] = _real(token_reward(x, tail, a),
                                                          f"token_reward({x}, {tail}, {a})")
            tr = np.where(mask, self.token_reward_table[states, tokens], 0.0)
        _readonly(self.token_reward_table)
        self.responses = Responses(*(_readonly(a) for a in (prompt, tokens, states, mask, length, R, tr)))

    def response(self, k: int) -> tuple:
        """``(x, y)`` of response `k`: its prompt and its tokens (EOS included when emitted)."""
        return self._response_tuples[int(k)]

    def _ref_log_probs(self, ref_logits) -> np.ndarray:
        S, V = self.n_states, self.vocab_size
        if ref_logits is None:
            return np.full((S, V), -np.log(V))
        if callable(ref_logits):
            z = np.zeros((S, V))
            for s in range(self.n_prefixes):
                x, tail = self.prefix(s)
                row = as_float_array(ref_logits(x, tail), f"ref_logits({x}, {tail})")
                if row.shape != (V,):
                    raise ShapeError(f"ref_logits({x}, {tail}) should have shape ({V},), actual {row.shape}")
                z[s] = row
        else:
            z = as_float_array(ref_logits, "ref_logits", shape=(S, V))
        logp = log_softmax(z)
        if not np.isfinite(logp).all():
            idx = tuple(int(i) for i in np.argwhere(~np.isfinite(logp))[0])
            raise NonFiniteError(f"{entry('ref_logits', idx)} gives log pi_ref = {logp[idx]!r}; the reference "
                                 "policy must give every token a positive probability (the KL is infinite otherwise)")
        return logp

    def _build_mdp(self) -> TabularMDP:
        S, V, N = self.n_states, self.vocab_size, self.n_prefixes
        P = np.zeros((S, V, S))
        P[np.arange(N)[:, None], np.arange(V)[None, :], self.next_state] = 1.0
        P[N, :, N] = 1.0
        r = self.token_reward_table.copy()
        res = self.responses
        last = res.length - 1
        # The outcome reward is paid on the transition that completes the response.
        r[res.states[np.arange(res.n_responses), last], res.tokens[np.arange(res.n_responses), last]] += res.reward
        rho = np.zeros(S)
        rho[[self._key[(x, ())] for x in range(self.n_prompts)]] = self.prompt_probs
        term = np.zeros(S, dtype=bool)
        term[N] = True
        return TabularMDP(P, r, rho, 1.0, term, name=self.name or repr(self))

    def __repr__(self) -> str:
        label = f"{self.name!r}, " if self.name else ""
        return (f"TokenTree({label}n_prompts={self.n_prompts}, vocab_size={self.vocab_size}, "
                f"max_length={self.max_length}, eos={self.eos}, responses={self.responses.n_responses})")

    # -- policies -----------------------------------------------------------
    def tabular_policy(self) -> TabularSoftmax:
        """Tabular softmax over prefixes: one logit per (prefix, token), theta of shape (S, V)."""
        return TabularSoftmax(self.n_states, self.vocab_size)

    def prefix_features(self) -> np.ndarray:
        r"""Features :math:`\psi(s)` of each state, shape (S, 2 + n_prompts + V + L).

        A bias, the prompt (one-hot), the last token (one-hot; none at a root),
        the depth (one-hot) and the depth over L. Prefixes that share a prompt,
        a last token or a depth share these entries, as a language model's
        hidden state shares structure across contexts. The terminal row is 0.
        """
        X, V, L, N = self.n_prompts, self.vocab_size, self.max_length, self.n_prefixes
        psi = np.zeros((self.n_states, 2 + X + V + L))
        rows = np.arange(N)
        psi[rows, 0] = 1.0
        psi[rows, 1 + self.prefix_prompt] = 1.0
        has_last = self.prefix_last >= 0
        psi[rows[has_last], 1 + X + self.prefix_last[has_last]] = 1.0
        psi[rows, 1 + X + V + self.prefix_depth] = 1.0
        psi[rows, 1 + X + V + L] = self.prefix_depth / L
        return psi

    def log_linear_policy(self, prefix_features=None) -> LogLinear:
        r"""Log-linear policy over (prefix features, token): :math:`\phi(s, a) = e_a \otimes \psi(s)`.

        Parameters
        ----------
        prefix_features : array_like of shape (S, m), optional
            :math:`\psi(s)`; `prefix_features` () by default.

        Returns
        -------
        LogLinear
            With ``d = V * m`` weights: token a's logit at prefix s is
            :math:`\theta_a \cdot \psi(s)`, shared across all prefixes.
        """
        psi = self.prefix_features() if prefix_features is None else as_float_array(
            prefix_features, "prefix_features", ndim=2)
        if psi.shape[0] != self.n_states:
            raise ShapeError(f"prefix_features should have {self.n_states} rows (one per state), "
                             f"actual shape {psi.shape}")
        V, m = self.vocab_size, psi.shape[1]
        phi = np.zeros((self.n_states, V, V * m))
        for a in range(V):
            phi[:, a, a * m:(a + 1) * m] = psi
        return LogLinear(phi)

    # -- responses under a policy --------------------------------------------
    def token_log_probs(self, log_pi) -> np.ndarray:
        r""":math:`\log\pi(y_{k,t}|s_{k,t})`, (K, L), 0 where masked.

        Parameters
        ----------
        log_pi : ndarray (S, V)
            Log-probabilities of a policy on the tree's MDP.
        """
        lp = as_float_array(log_pi, "log_pi", shape=(self.n_states, self.vocab_size))
        res = self.responses
        return np.where(res.mask, lp[res.states, res.tokens], 0.0)

    def response_log_probs(self, log_pi) -> np.ndarray:
        r""":math:`\log\pi(y_k|x_k) = \sum_t \log\pi(y_{k,t}|s_{k,t})`, (K,)."""
        return self.token_log_probs(log_pi).sum(axis=1)

    def response_table(self, pi) -> list:
        """Rows ``(x, y, pi(y|x), |y|, R)`` for every complete response, in `responses` order."""
        p = np.exp(self.response_log_probs(np.log(np.asarray(pi, dtype=np.float64))))
        res = self.responses
        return [(x, y, float(p[k]), int(res.length[k]), float(res.total_reward[k]))
                for k, (x, y) in enumerate(self._response_tuples)]

    def token_weights(self, coef) -> np.ndarray:
        r"""Scatter per-token coefficients onto the MDP's (S, V) table.

        ``W[s, a] = sum over (k, t) with s_{k,t} = s, y_{k,t} = a of coef[k, t]``
        (masked positions dropped), so that
        ``policy.log_prob_vjp(theta, W)`` is :math:`\sum_{k,t} c_{k,t} \nabla\log\pi(y_{k,t}|s_{k,t})`.
        `coef` may carry leading axes, (..., K, L).
        """
        res = self.responses
        coef = np.asarray(coef, dtype=np.float64)
        idx = (res.states * self.vocab_size + res.tokens)[res.mask]
        lead = coef.shape[:-2]
        flat = coef[..., res.mask].reshape(-1, idx.size)
        out = np.zeros((flat.shape[0], self.n_states * self.vocab_size))
        for i in range(flat.shape[0]):
            out[i] = np.bincount(idx, weights=flat[i], minlength=self.n_states * self.vocab_size)
        return out.reshape(*lead, self.n_states, self.vocab_size)


def _real(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not np.isfinite(float(v)):
        raise InvalidInputError(f"{what} returned {v!r}; expected a finite real number")
    return float(v)


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a
