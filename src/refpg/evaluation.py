r"""Exact policy evaluation: V, Q, A, the occupancy d and J in one call.

One LU factorization of :math:`M = I - \gamma P_\pi` serves both solves
(docs/conventions.md, "Exact quantities"):

* :math:`V = M^{-1} r_\pi`;
* :math:`d = (1-\gamma) M^{-\top} \rho` (the normalised discounted occupancy
  :math:`d^\pi_\rho(s) = (1-\gamma)\sum_t \gamma^t \Pr(s_t = s)`, [Agarwal2021]).

Dense MDPs call LAPACK's ``getrf``/``getrs`` (through `scipy.linalg.lapack`);
sparse ones `scipy.sparse.linalg.splu`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.linalg import lapack
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from refpg._validation import check_probability_rows, entry
from refpg.errors import EvaluationMismatchError, InvalidInputError, NonFiniteError, RefpgError, RefpgWarning
from refpg.mdp import TabularMDP, int32_indices
from refpg.policies import Parameterization

__all__ = ["Evaluation", "evaluate", "policy_evaluation"]


@dataclass(frozen=True, eq=False)
class Evaluation:
    r"""Every exact quantity of one policy on one MDP.

    Attributes
    ----------
    V : ndarray (S,)
        State values :math:`V^\pi = (I - \gamma P_\pi)^{-1} r_\pi`.
    Q : ndarray (S, A)
        :math:`Q^\pi = r + \gamma P V^\pi`.
    A : ndarray (S, A)
        Advantages :math:`A^\pi = Q^\pi - V^\pi`.
    d : ndarray (S,)
        Normalised occupancy :math:`d^\pi_\rho`; sums to 1; exactly 0 on
        states unreachable from rho under pi.
    J : float
        :math:`J = \rho \cdot V = \mathbb{E}[\sum_t \gamma^t r_t]` (unnormalised).
    horizon : float
        The normaliser H of d, so that :math:`J = H \sum_s d(s) r_\pi(s)`:
        :math:`1/(1-\gamma)` for gamma < 1, the expected episode length for
        gamma = 1 (see Notes of `evaluate`).
    pi : ndarray (S, A)
        The policy evaluated.
    support : ndarray of bool (S,)
        States with d(s) > 0, found on the sparsity pattern (exact).
    mdp : TabularMDP
        The MDP evaluated.

    Notes
    -----
    Immutable (assigning a field raises), and compared and hashed by identity:
    arrays have no single truth value, so a field-wise ``==`` could not answer,
    and an evaluation can key a cache.
    """

    V: np.ndarray
    Q: np.ndarray
    A: np.ndarray
    d: np.ndarray
    J: float
    horizon: float
    pi: np.ndarray
    support: np.ndarray
    mdp: TabularMDP

    @property
    def occupancy(self) -> np.ndarray:
        """Alias of `d`."""
        return self.d

    @property
    def visits(self) -> np.ndarray:
        r"""Unnormalised occupancy :math:`\rho_\pi = H d` (TRPO's :math:`\rho_\pi`)."""
        return self.horizon * self.d


def check_mdp(mdp) -> TabularMDP:
    """Refuse anything that is not a `TabularMDP`."""
    if not isinstance(mdp, TabularMDP):
        raise InvalidInputError(f"mdp should be a refpg.TabularMDP, actual {type(mdp).__name__}")
    return mdp


def check_policy(policy, mdp: TabularMDP) -> Parameterization:
    """Refuse a parameterization that is not one or does not fit `mdp`."""
    if not isinstance(policy, Parameterization):
        raise InvalidInputError(
            "policy should be a refpg parameterization (TabularSoftmax or LogLinear), "
            f"actual {type(policy).__name__}")
    if (policy.n_states, policy.n_actions) != (mdp.n_states, mdp.n_actions):
        raise InvalidInputError(
            f"policy has (n_states, n_actions) = ({policy.n_states}, {policy.n_actions}) "
            f"but mdp has ({mdp.n_states}, {mdp.n_actions})")
    return policy


#: The kinds of problem `check_problem` tells apart.
PROBLEM_KINDS = ("tabular", "lqr")


def check_problem(mdp, policy) -> str:
    """Which kind of problem (mdp, policy) is, after checking that the two fit together.

    Returns
    -------
    {"tabular", "lqr"}
        ``"tabular"`` for a `TabularMDP` with a `refpg.Parameterization` of its
        sizes, ``"lqr"`` for a `refpg.lqr.LQRSystem` with a
        `refpg.lqr.LinearGaussian` of its dimensions. The algorithms of
        `refpg.algorithms` run on both.

    Raises
    ------
    refpg.errors.InvalidInputError
        Anything else, naming the argument and what it should be.
    """
    # Imported here: refpg.lqr builds on this module.
    from refpg.lqr import LinearGaussian, LQRSystem

    if isinstance(mdp, LQRSystem):
        if not isinstance(policy, LinearGaussian):
            raise InvalidInputError(
                f"policy should be a refpg.lqr.LinearGaussian on an LQRSystem, actual {type(policy).__name__}")
        if (policy.state_dim, policy.action_dim) != (mdp.state_dim, mdp.action_dim):
            raise InvalidInputError(
                f"policy has (state_dim, action_dim) = ({policy.state_dim}, {policy.action_dim}) but the "
                f"system has ({mdp.state_dim}, {mdp.action_dim})")
        return "lqr"
    if not isinstance(mdp, TabularMDP):
        raise InvalidInputError(
            f"mdp should be a refpg.TabularMDP or a refpg.lqr.LQRSystem, actual {type(mdp).__name__}")
    if isinstance(policy, LinearGaussian):
        raise InvalidInputError(
            "policy should be a refpg parameterization (TabularSoftmax or LogLinear) on a TabularMDP, actual "
            "LinearGaussian (a linear-Gaussian policy acts on a refpg.lqr.LQRSystem)")
    check_policy(policy, mdp)
    return "tabular"


def evaluate(mdp: TabularMDP, pi) -> Evaluation:
    r"""Evaluate a policy exactly: V, Q, A, d and J from one factorization.

    .. math::
        V = (I - \gamma P_\pi)^{-1} r_\pi, \quad Q = r + \gamma P V, \quad
        A = Q - V, \quad d = (1-\gamma)(I - \gamma P_\pi)^{-\top}\rho, \quad
        J = \rho\cdot V.

    Parameters
    ----------
    mdp : TabularMDP
    pi : array_like, shape (S, A)
        Policy probabilities; every row a distribution (atol 1e-12).

    Returns
    -------
    Evaluation

    Raises
    ------
    refpg.errors.InvalidInputError
        If `pi` has the wrong shape, non-finite or negative entries, or rows
        that do not sum to 1 (the message names the row).

    Notes
    -----
    States unreachable from rho under pi get d(s) = 0 exactly: the support is
    computed on the sparsity pattern of :math:`P_\pi`, so no round-off of the
    solve can make an unreachable state look visited.

    For gamma = 1 (proper MDPs only) the occupancy is normalised visit counts
    over non-terminal states, :math:`d = \mu / H` with
    :math:`\mu = \rho_N (I - P_{NN})^{-1}` and :math:`H = \sum_s \mu(s)` the
    expected episode length; terminal states get d = 0 and V = 0. Every
    identity of docs/conventions.md then holds with :math:`1/(1-\gamma)` replaced
    by H. `support` then excludes the terminal states, so "d(s) > 0" and
    `support` agree for every gamma.

    Finite inputs whose values overflow float64 (rewards near 1e308 with
    gamma > 0, say) raise `refpg.errors.NonFiniteError` rather than return
    inf or NaN.

    References
    ----------
    [Agarwal2021] Section 2; [Schulman2015] Section 2 (:math:`\rho_\pi = d/(1-\gamma)`).

    Examples
    --------
    >>> import refpg
    >>> mdp = refpg.envs.bandit([1.0, 0.0])
    >>> float(refpg.evaluate(mdp, [[0.25, 0.75]]).J)
    0.25
    """
    check_mdp(mdp)
    pi = check_probability_rows(pi, "pi", shape=(mdp.n_states, mdp.n_actions))
    return policy_evaluation(mdp, pi)


def policy_evaluation(mdp: TabularMDP, pi: np.ndarray) -> Evaluation:
    """`evaluate` without input validation, for callers that built `pi` themselves."""
    S = mdp.n_states
    gamma = mdp.gamma
    P_pi = mdp.policy_transitions(pi)
    r_pi = mdp.policy_rewards(pi)
    rho = mdp.rho

    if gamma == 0.0:
        support = rho > 0
    else:
        support = mdp.reachable_states(pi, P_pi=P_pi)

    # Terminal states have V = 0 by definition and are left out of the solve:
    # their rows of I - gamma P_pi are 1 - gamma (1 + round-off), which is
    # singular for gamma near 1 even though the MDP is fine.
    terminal = mdp.terminal
    V = np.zeros(S)
    mu = np.zeros(S)
    if terminal.any():
        live = np.flatnonzero(~terminal)
        ends = np.flatnonzero(terminal)
        from_live = P_pi[live]
        if live.size:
            V[live], mu[live] = solve_pair(from_live[:, live], gamma, r_pi[live], rho[live], overwrite=True)
        if gamma < 1.0:
            # Mass entering a terminal state stays there forever: its visits
            # are (rho_T + gamma * inflow) / (1 - gamma).
            inflow = from_live[:, ends]
            mu[terminal] = (rho[terminal] + gamma * (inflow.T @ mu[live])) / (1.0 - gamma)
    else:
        # P_pi is not needed after this, so the dense solve may overwrite it.
        V, mu = solve_pair(P_pi, gamma, r_pi, rho, overwrite=True)
    if gamma == 1.0:
        # Terminal states are never visited in an episode (V = 0, d = 0 there);
        # the support must say so too, or a max over "d > 0" would include them.
        support = support & ~terminal
    horizon = 1.0 / (1.0 - gamma) if gamma < 1.0 else float(mu.sum())

    mu[~support] = 0.0
    d = mu / horizon  # horizon > 0: rho has mass on non-terminal states only
    if not np.isfinite(V).all():
        _check_finite_result(_values_without_nan(mdp, pi), "V", mdp)
    Q = mdp.action_values(V)
    _check_finite_result(Q, "Q", mdp)
    A = Q - V[:, None]
    J = float(rho @ V)
    if gamma < 1.0:
        _warn_if_ill_conditioned(d, mdp, pi, mu)
    return Evaluation(V=V, Q=Q, A=A, d=d, J=J, horizon=horizon, pi=pi, support=support, mdp=mdp)


#: How far from 1 a sum of probabilities normalised in float64 can be (a few
#: hundred terms of rounding, ~64 ulps): an input off by more than this was
#: accepted within PROB_ATOL, not computed to the last digit.
_ROUNDING = 64 * np.finfo(float).eps


def _input_deviation(mdp: TabularMDP, pi: np.ndarray, mu: np.ndarray) -> float:
    """The part of ``sum(d) - 1`` that the inputs' own sums put there, not the solve.

    With delta(s) = sum_s2 P_pi(s, s2) - 1 on the live states (the rows of P
    and pi are accepted within PROB_ATOL of 1), summing mu (I - gamma P_pi) =
    rho over the states gives ``(1 - gamma) sum(mu) - 1 = (sum(rho) - 1) +
    gamma * sum_live mu(s) delta(s)`` exactly (the terminal states' formula
    keeps their own inflow), and ``sum(d) = (1 - gamma) sum(mu)``. delta is
    taken from the rows of pi and P, ``(sum_a pi(a|s) - 1) + sum_a pi(a|s)
    (sum_s2 P(s2|s, a) - 1)``, since the solve may have overwritten P_pi.
    """
    S, A = mdp.n_states, mdp.n_actions
    live = ~mdp.terminal
    P_excess = np.asarray(mdp.transition_rows().sum(axis=1)).reshape(S, A) - 1.0
    row_excess = (pi.sum(axis=1) - 1.0) + np.einsum("sa,sa->s", pi, P_excess)
    rho_excess = float(mdp.rho.sum() - 1.0)
    if max(abs(rho_excess), float(np.abs(row_excess[live]).max(initial=0.0))) <= _ROUNDING:
        # Sums off by rounding only: the horizon amplifying perturbations that
        # small is what ill-conditioning means, so it is not blamed on the input.
        return 0.0
    return rho_excess + mdp.gamma * float(mu[live] @ row_excess[live])


def _warn_if_ill_conditioned(d: np.ndarray, mdp: TabularMDP, pi: np.ndarray, mu: np.ndarray) -> None:
    """Say so when d does not sum to 1 within 1e-10, and say why.

    Two causes, told apart by ``_input_deviation`` (computed only when d is
    off, so the common case costs one sum): rows of P and pi accepted within
    PROB_ATOL rather than to the last ulp, which a long horizon multiplies; or
    the solve's forward error. The LU solve is backward stable (Bellman
    residuals stay ~1e-16), but for gamma within ~1e-6 of 1 the condition
    number of I - gamma P_pi (up to ~1/(1-gamma)) makes its forward error
    exceed refpg's 1e-10 identities; sum(d) measures that for free.
    """
    total = float(d.sum())
    err = total - 1.0
    if abs(err) <= 1e-10:
        return
    gamma = mdp.gamma
    from_inputs = _input_deviation(mdp, pi, mu)
    head = f"d sums to 1 {'+' if err > 0 else '-'} {abs(err):.2g} at gamma = {gamma!r}: "
    if abs(from_inputs) > abs(err - from_inputs):
        why = (f"the rows of P_pi and rho sum to 1 within atol but not exactly, and the horizon 1/(1 - gamma) "
               f"turns that into {from_inputs:+.2g} on sum(d); exact values carry relative errors of about that "
               "size (probabilities normalised in float64 avoid it)")
    else:
        why = ("I - gamma P_pi is ill-conditioned, and exact values carry relative errors of about that size; "
               "a gamma further from 1 (or gamma = 1 with terminal states) avoids it")
    warnings.warn(head + why, RefpgWarning, stacklevel=4)


def _values_without_nan(mdp: TabularMDP, pi: np.ndarray) -> np.ndarray:
    """V solved again with r scaled down by a power of two (exactly), then scaled back.

    The scaled solve cannot overflow, so the product overflows to inf on the
    states whose value overflows and on no other: the plain solve's
    back-substitution spreads one overflow as NaN (0 * inf) over states
    whose values are finite, and the error would name the wrong state.
    """
    live = np.flatnonzero(~mdp.terminal)
    exponent = int(np.frexp(np.max(np.abs(mdp.r)))[1])
    r_pi = np.einsum("sa,sa->s", pi, np.ldexp(mdp.r, -exponent))
    P_pi = mdp.policy_transitions(pi)
    V = np.zeros(mdp.n_states)
    scaled, _ = solve_pair(P_pi[live][:, live], mdp.gamma, r_pi[live], mdp.rho[live])
    with np.errstate(over="ignore"):
        V[live] = np.ldexp(scaled, exponent)
    return V


def _check_finite_result(x: np.ndarray, name: str, mdp: TabularMDP) -> None:
    """Refuse a value that overflowed float64 although every input was finite."""
    bad = ~np.isfinite(x)
    if bad.any():
        idx = np.unravel_index(int(np.flatnonzero(bad)[0]), x.shape)
        raise NonFiniteError(
            f"{entry(name, idx)} is {float(x[idx])!r}: the exact values overflow float64 (max |r| = "
            f"{float(np.max(np.abs(mdp.r))):.3g}, gamma = {mdp.gamma}); rescale the rewards")


def solve_pair(P_pi, gamma, r_pi, rho, *, overwrite: bool = False):
    r"""Solve :math:`M V = r_\pi` and :math:`M^\top \mu = \rho` with one LU of
    :math:`M = I - \gamma P_\pi`; returns V and the unnormalised visits mu.

    With ``overwrite=True`` a dense `P_pi` is turned into M in place and
    factored without a copy.
    """
    n = P_pi.shape[0]
    if sp.issparse(P_pi):
        # int32 indices: scipy 1.11's SuperLU refuses int64 ones (see int32_indices).
        M = int32_indices((sp.identity(n, format="csc") - gamma * P_pi).tocsc())
        lu = spla.splu(M)
        return lu.solve(r_pi), lu.solve(rho, trans="T")
    M = P_pi if overwrite else P_pi.copy()
    M *= -gamma
    M.flat[:: n + 1] += 1.0
    # LAPACK works in Fortran order: M.T is an F-ordered view of M, so
    # factoring M^T needs no copy; V then comes from the transposed solve.
    # getrf/getrs directly rather than lu_factor/lu_solve: at S ~ 100 the
    # wrappers' argument handling costs as much as the two solves themselves.
    lu, piv, info = lapack.dgetrf(M.T, overwrite_a=1)
    if info > 0:
        # M is strictly diagonally dominant for gamma < 1, and nonsingular on
        # the live states of a proper MDP for gamma = 1; reaching this means
        # the MDP's own validation missed a case.
        raise RefpgError(
            f"I - gamma P_pi is singular (zero pivot at position {info - 1}); "
            "please report this MDP to refpg")
    V = lapack.dgetrs(lu, piv, r_pi, trans=1)[0]
    mu = lapack.dgetrs(lu, piv, rho, trans=0)[0]
    return V, mu


def prepare(mdp, policy, theta, evaluation=None, *, name: str = "theta", evaluation_name: str | None = None):
    """Validate (mdp, policy, theta) and return (theta, pi, evaluation).

    A precomputed `evaluation` is reused after checking it belongs to this MDP
    (the same object, or an equal one: see `mdp_difference`) and this exact
    policy, so a caller can share one factorization across the gradient, the
    Fisher matrix and the natural gradient. `name` and
    `evaluation_name` are the caller's names for theta and the evaluation,
    used in error messages (default "theta" and "evaluation").
    """
    ev_name = "evaluation" if evaluation_name is None else evaluation_name
    check_mdp(mdp)
    check_policy(policy, mdp)
    theta = policy.validate_theta(theta, name)
    pi = policy.probs(theta)
    if evaluation is None:
        return theta, pi, policy_evaluation(mdp, pi)
    if not isinstance(evaluation, Evaluation):
        raise InvalidInputError(
            f"{ev_name} should be a refpg.Evaluation, actual {type(evaluation).__name__}")
    if evaluation.mdp is not mdp:
        difference = mdp_difference(evaluation.mdp, mdp, f"{ev_name}.mdp")
        if difference is not None:
            raise EvaluationMismatchError(f"{ev_name} was computed on a different mdp: {difference}")
    if not np.array_equal(evaluation.pi, pi):
        k = np.unravel_index(int(np.argmax(np.abs(evaluation.pi - pi))), pi.shape)
        raise EvaluationMismatchError(
            f"{ev_name} was computed for another policy: {ev_name}.pi[{k[0]}, {k[1]}] is "
            f"{float(evaluation.pi[k])!r} but the policy of {name} gives {float(pi[k])!r}")
    return theta, pi, evaluation


def mdp_difference(other: TabularMDP, mdp: TabularMDP, other_name: str = "other") -> str | None:
    """The first thing in which `other` differs from `mdp`, or None when they are equal.

    Equal means the same sizes, gamma, storage (dense or sparse), rho,
    terminal states, r and P: an evaluation of one is then bit for bit an
    evaluation of the other. The answer reads ``"<other_name>.gamma is 0.5
    but mdp.gamma is 0.9"``, naming the first entry that differs.
    """
    if (other.n_states, other.n_actions) != (mdp.n_states, mdp.n_actions):
        return (f"{other_name} has (n_states, n_actions) = ({other.n_states}, {other.n_actions}) "
                f"but mdp has ({mdp.n_states}, {mdp.n_actions})")
    if other.gamma != mdp.gamma:
        return f"{other_name}.gamma is {other.gamma!r} but mdp.gamma is {mdp.gamma!r}"
    if other.is_sparse != mdp.is_sparse:
        storage = {True: "sparse", False: "dense"}
        return (f"{other_name} stores P {storage[other.is_sparse]} but mdp stores it "
                f"{storage[mdp.is_sparse]} (their solves round differently)")
    for name in ("rho", "terminal", "r"):
        a, b = getattr(other, name), getattr(mdp, name)
        if not np.array_equal(a, b):
            idx = np.unravel_index(int(np.flatnonzero(a != b)[0]), a.shape)
            return (f"{other_name}.{entry(name, idx)} is {a[idx].item()!r} "
                    f"but mdp.{entry(name, idx)} is {b[idx].item()!r}")
    a, b = other.transition_rows(), mdp.transition_rows()
    if mdp.is_sparse:
        row, col, _ = sp.find(a != b)
    else:
        row, col = np.nonzero(a != b)
    if row.size == 0:
        return None
    k = int(np.lexsort((col, row))[0])  # the first in (s, a, s2) order
    i, j = int(row[k]), int(col[k])
    where = f"P[{i // mdp.n_actions}, {i % mdp.n_actions}, {j}]"
    return f"{other_name}.{where} is {float(a[i, j])!r} but mdp.{where} is {float(b[i, j])!r}"
