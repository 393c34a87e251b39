r"""Optimal values by exact policy iteration (the yardstick for "% of optimal")."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refpg._validation import check_positive_int
from refpg.evaluation import check_mdp, policy_evaluation

__all__ = ["OptimalSolution", "optimal_policy"]


class OptimalSolution(NamedTuple):
    """An optimal deterministic policy and its exact values."""

    pi: np.ndarray
    """(S, A) one-hot optimal policy."""
    V: np.ndarray
    """(S,) optimal state values V*."""
    Q: np.ndarray
    """(S, A) optimal action values Q*."""
    J: float
    """rho . V*."""
    iterations: int
    """Policy-iteration sweeps until the greedy policy was stable."""


def optimal_policy(mdp, *, max_iter: int = 10_000) -> OptimalSolution:
    r"""Solve :math:`V^* = \max_a [r + \gamma P V^*]` exactly by policy iteration.

    Each sweep evaluates the current deterministic policy with one LU solve
    and switches to the greedy action only where it improves Q by more than
    a relative 1e-12 (so ties never make it cycle). Terminates in finitely
    many sweeps with an optimal policy (Howard 1960; [Agarwal2021] Section 1).

    Parameters
    ----------
    mdp : TabularMDP
    max_iter : int
        Safety cap on sweeps.

    Returns
    -------
    OptimalSolution
    """
    check_mdp(mdp)
    max_iter = check_positive_int(max_iter, "max_iter")
    S, A = mdp.n_states, mdp.n_actions
    actions = np.zeros(S, dtype=np.int64)
    for it in range(1, max_iter + 1):
        pi = np.zeros((S, A))
        pi[np.arange(S), actions] = 1.0
        ev = policy_evaluation(mdp, pi)
        current = ev.Q[np.arange(S), actions]
        best = ev.Q.argmax(axis=1)
        gain = ev.Q[np.arange(S), best] - current
        improve = gain > 1e-12 * np.maximum(1.0, np.abs(current))
        if not improve.any():
            return OptimalSolution(pi=pi, V=ev.V, Q=ev.Q, J=ev.J, iterations=it)
        actions = np.where(improve, best, actions)
    raise RuntimeError(f"policy iteration did not converge in {max_iter} sweeps")
