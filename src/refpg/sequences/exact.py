r"""Exact targets on a token tree: J, the sequence KL, and their gradients.

See docs/conventions.md, "Sequences". Every quantity is an exact finite sum
over the tree's complete responses (or, equivalently, over its prefixes); the
tests check each against the tabular core, central finite differences and
torch autograd.
"""

from __future__ import annotations

import numpy as np

from refpg.errors import InvalidInputError
from refpg.evaluation import check_policy
from refpg.mdp import TabularMDP

__all__ = [
    "prefix_reach",
    "sequence_objective",
    "sequence_objective_gradient",
    "sequence_kl",
    "sequence_kl_gradient",
    "local_kl_gradient",
    "local_forward_kl_gradient",
    "regularized_objective",
    "regularized_objective_gradient",
    "penalty_mdp",
]


def _check_tree(tree):
    from refpg.sequences.tree import TokenTree

    if not isinstance(tree, TokenTree):
        raise InvalidInputError(f"tree should be a refpg.sequences.TokenTree, actual {type(tree).__name__}")
    return tree


def _pieces(tree, policy, theta):
    tree = _check_tree(tree)
    policy = check_policy(policy, tree.mdp)
    theta = policy.validate_theta(theta)
    return tree, policy, theta, policy.log_probs(theta)


def _response_probs(tree, log_pi) -> np.ndarray:
    """rho(x_k) pi(y_k | x_k), (K,): the probability of each complete response."""
    res = tree.responses
    return tree.prompt_probs[res.prompt] * np.exp(tree.response_log_probs(log_pi))


def prefix_reach(tree, policy, theta) -> np.ndarray:
    r"""Probability that a response passes through each state, (S,).

    For gamma = 1 on a tree this is the expected number of visits, the
    unnormalised occupancy of the tabular core (``Evaluation.visits``); it is 0
    on the terminal state, which is entered but never acted in.
    """
    tree, _, _, logp = _pieces(tree, policy, theta)
    return _reach(tree, np.exp(logp))


def _reach(tree, pi) -> np.ndarray:
    reach = np.zeros(tree.n_states)
    roots = tree.prefix_depth == 0
    reach[:tree.n_prefixes][roots] = tree.prompt_probs[tree.prefix_prompt[roots]]
    parent, last = tree.prefix_parent, tree.prefix_last
    for t in range(1, tree.max_length):
        at = np.flatnonzero(tree.prefix_depth == t)
        reach[at] = reach[parent[at]] * pi[parent[at], last[at]]
    return reach


def sequence_objective(tree, policy, theta) -> float:
    r"""Exact :math:`J(\theta) = \mathbb{E}_{x\sim\rho}\mathbb{E}_{y\sim\pi_\theta(\cdot|x)}[R(x, y)]`.

    Token rewards, if the tree has them, are added to R. Equal to
    ``refpg.objective(tree.mdp, policy, theta)`` (gamma = 1).

    Returns
    -------
    float

    References
    ----------
    docs/conventions.md, "Sequences".
    """
    tree, _, _, logp = _pieces(tree, policy, theta)
    return float(_response_probs(tree, logp) @ tree.responses.total_reward)


def _score_weighted(tree, policy, theta, logp, coef) -> np.ndarray:
    """sum_k P(y_k) sum_t coef[k, t] grad log pi(y_{k,t}|s_{k,t})."""
    P = _response_probs(tree, logp)
    return policy.log_prob_vjp(theta, tree.token_weights(P[:, None] * coef), np.exp(logp))


def sequence_objective_gradient(tree, policy, theta) -> np.ndarray:
    r""":math:`\nabla J = \mathbb{E}[R(x,y)\,\nabla\log\pi_\theta(y|x)]` (score function over whole responses).

    Equal to ``refpg.policy_gradient(tree.mdp, policy, theta)``; computed here
    over responses, independently of the tabular core, so that each checks the other.

    Returns
    -------
    ndarray of shape ``policy.theta_shape``

    References
    ----------
    [Williams1992]; docs/conventions.md, "Sequences".
    """
    tree, policy, theta, logp = _pieces(tree, policy, theta)
    res = tree.responses
    coef = np.where(res.mask, res.total_reward[:, None], 0.0)
    return _score_weighted(tree, policy, theta, logp, coef)


def _token_kl(tree, logp) -> np.ndarray:
    r""":math:`l_{k,t} = \log\pi_\theta - \log\pi_{ref}` at each response token, (K, L)."""
    return tree.token_log_probs(logp) - tree.token_log_probs(np.log(tree.ref_probs))


def sequence_kl(tree, policy, theta) -> float:
    r"""Exact :math:`\mathbb{E}_x KL(\pi_\theta(\cdot|x) \| \pi_{ref}(\cdot|x)) = \mathbb{E}[\sum_t l_t]`.

    Returns
    -------
    float >= 0

    References
    ----------
    docs/conventions.md, "Sequences".
    """
    tree, _, _, logp = _pieces(tree, policy, theta)
    return float(max(_response_probs(tree, logp) @ _token_kl(tree, logp).sum(axis=1), 0.0))


def sequence_kl_gradient(tree, policy, theta) -> np.ndarray:
    r"""Exact :math:`\nabla KL_{seq} = \mathbb{E}[\sum_t \nabla\log\pi_t \sum_{t'\ge t} l_{t'}]`.

    The term :math:`\mathbb{E}[\sum_t \nabla l_t] = \mathbb{E}[\sum_t\nabla\log\pi_t]` vanishes,
    which leaves the policy gradient of the return-to-go of :math:`l`.

    Returns
    -------
    ndarray of shape ``policy.theta_shape``

    References
    ----------
    [TangMunos2025] Section 3; docs/conventions.md, "Sequences".
    """
    tree, policy, theta, logp = _pieces(tree, policy, theta)
    l = _token_kl(tree, logp)
    to_go = np.cumsum(l[:, ::-1], axis=1)[:, ::-1]
    return _score_weighted(tree, policy, theta, logp, np.where(tree.responses.mask, to_go, 0.0))


def local_kl_gradient(tree, policy, theta) -> np.ndarray:
    r"""The local gradient :math:`g_{loc} = \mathbb{E}[\sum_t l_t \nabla\log\pi_t]` (no future terms).

    :math:`= \sum_s \Pr(s)\sum_a \pi(a|s)\,(\log\pi(a|s) - \log\pi_{ref}(a|s))\,\nabla\log\pi(a|s)`:
    the expected gradient of k2 used as a loss.

    Returns
    -------
    ndarray of shape ``policy.theta_shape``

    References
    ----------
    [TangMunos2025]; [Shah2025]; docs/conventions.md, "Sequences".
    """
    tree, policy, theta, logp = _pieces(tree, policy, theta)
    pi = np.exp(logp)
    W = _reach(tree, pi)[:, None] * pi * (logp - np.log(tree.ref_probs))
    return policy.log_prob_vjp(theta, W, pi)


def local_forward_kl_gradient(tree, policy, theta) -> np.ndarray:
    r"""Local gradient of the forward KL: :math:`\sum_s \Pr(s)\,\nabla_\theta KL(\pi_{ref}(\cdot|s)\|\pi_\theta(\cdot|s))`.

    :math:`= -\sum_s \Pr(s)\sum_a \pi_{ref}(a|s)\nabla\log\pi_\theta(a|s)`, states
    weighted by the current policy: the expected gradient of k3 used as a loss.

    Returns
    -------
    ndarray of shape ``policy.theta_shape``

    References
    ----------
    [TangMunos2025]; [Shah2025]; docs/conventions.md, "Sequences".
    """
    tree, policy, theta, logp = _pieces(tree, policy, theta)
    pi = np.exp(logp)
    return policy.log_prob_vjp(theta, -_reach(tree, pi)[:, None] * tree.ref_probs, pi)


def regularized_objective(tree, policy, theta, beta: float) -> float:
    r""":math:`J(\theta) - \beta\,KL_{seq}(\theta)`, the KL-regularised objective of RLHF.

    References
    ----------
    [Ziegler2019]; docs/conventions.md, "Sequences".
    """
    beta = _beta(beta)
    return sequence_objective(tree, policy, theta) - beta * sequence_kl(tree, policy, theta)


def regularized_objective_gradient(tree, policy, theta, beta: float) -> np.ndarray:
    r""":math:`\nabla J - \beta\nabla KL_{seq}`."""
    beta = _beta(beta)
    return sequence_objective_gradient(tree, policy, theta) - beta * sequence_kl_gradient(tree, policy, theta)


def penalty_mdp(tree, table) -> TabularMDP:
    r"""The tree's MDP with reward ``table[s, a]`` in place of its own (the terminal row zeroed).

    ``refpg.policy_gradient(penalty_mdp(tree, l), policy, theta)`` with
    :math:`l = \log\pi_\theta - \log\pi_{ref}` held fixed is :math:`\nabla KL_{seq}`: the
    tabular core's route to the same number.
    """
    tree = _check_tree(tree)
    r = np.array(table, dtype=np.float64)
    r[tree.terminal_state] = 0.0
    m = tree.mdp
    return TabularMDP(m.P, r, m.rho, 1.0, m.terminal, name=f"{m.name} (penalty reward)")


def _beta(beta) -> float:
    from refpg._validation import check_real

    return check_real(beta, "beta")
