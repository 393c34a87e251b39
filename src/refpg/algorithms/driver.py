"""Run any algorithm on any MDP for N iterations and record exact diagnostics.

Whatever the mode of the update itself, the history is measured with the
oracle: exact J after each iteration, exact mean and max KL(pi_old || pi_new),
and the exact range of pi_new / pi_old over (s, a) with d_old(s) > 0.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from refpg._validation import check_choice, check_positive_int, did_you_mean
from refpg.algorithms._problems import problem
from refpg.algorithms.common import check_mode
from refpg.errors import InvalidInputError
from refpg.evaluation import check_problem

__all__ = ["ALGORITHMS", "IterationRecord", "History", "run"]


def _step_functions():
    from refpg.algorithms.npg import npg_step
    from refpg.algorithms.ppo import ppo_kl_penalty_update, ppo_update
    from refpg.algorithms.reinforce import reinforce_step
    from refpg.algorithms.trpo import trpo_step

    return {"reinforce": reinforce_step, "npg": npg_step, "trpo": trpo_step, "ppo": ppo_update,
            "ppo_kl_penalty": ppo_kl_penalty_update}


#: Algorithm names accepted by `run`, one per step function of `refpg.algorithms`.
ALGORITHMS = ("reinforce", "npg", "trpo", "ppo", "ppo_kl_penalty")

#: Step-function arguments that `run` refuses: each holds state that belongs
#: to one iteration (a batch collected under one theta, an optimiser state),
#: while `run` makes a new one every iteration.
_PER_ITERATION = {
    "data": "a batch collected under one theta; run collects a new batch every iteration (pass sample_config)",
    "batch": "a batch sampled under one theta; run samples new episodes every iteration (pass n_episodes)",
    "optimizer_state": "Adam's state of one update; run starts every update from zero moments",
}


class IterationRecord(NamedTuple):
    """One iteration of `run`, measured exactly."""

    iteration: int
    J: float
    """Exact J after the update."""
    J_before: float
    mean_kl: float
    """Exact KL(pi_old || pi_new) averaged under d_old."""
    max_kl: float
    """Max over states with d_old > 0."""
    ratio_min: float
    """min over (s, a) with d_old(s) > 0 of pi_new(a|s) / pi_old(a|s)."""
    ratio_max: float
    step_norm: float
    """||theta_new - theta_old||_2."""
    accepted: bool | None
    """Line-search outcome (TRPO); None where the algorithm has no line search."""
    step_fraction: float | None
    """Accepted fraction of the full TRPO step; None elsewhere."""
    samples: int
    """Transitions sampled this iteration (0 in exact mode)."""
    seconds: float
    """Wall time of the update."""


def _stopped(algorithm, it, n_iters, exc, history) -> InvalidInputError:
    """The error of a run refused at iteration `it` > 1: it names the iteration and carries the history of
    the iterations done as ``.history`` (theta0 itself was accepted)."""
    err = InvalidInputError(f"run({algorithm!r}) stopped at iteration {it} of {n_iters}: the parameters "
                            f"after iteration {it - 1} are refused: {exc} (theta0 was accepted; the "
                            f"{it - 1} iteration{'s' if it > 2 else ''} done are in this error's .history)")
    err.history = history
    return err


@dataclass(frozen=True, eq=False)
class History:
    """A run: the records and the final parameters."""

    algorithm: str
    mode: str
    records: tuple
    theta: np.ndarray
    """Parameters after the last iteration."""
    J0: float
    """Exact J at the start."""
    results: tuple = field(repr=False)
    """The algorithm's own result object of every iteration."""

    def column(self, name: str) -> np.ndarray:
        """One field of every record as an array, e.g. ``history.column("J")``."""
        return np.array([getattr(r, name) for r in self.records], dtype=float)

    @property
    def J(self) -> np.ndarray:
        """J at iterations 0..n (J0 first)."""
        return np.concatenate([[self.J0], self.column("J")])


def _check_options(algorithm: str, step, options: dict) -> None:
    """Refuse an option `step` does not take (a typo would be a TypeError from inside) or a missing one."""
    params = inspect.signature(step).parameters
    # Positional parameters and the ones run() passes itself are not options.
    own = {"mdp", "policy", "theta", "mode", "rng"}
    known = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in own]
    for name in options:
        if name == "rng":
            raise InvalidInputError("'rng' cannot be passed to run: run draws every sampled iteration from "
                                    "np.random.default_rng(seed); pass seed")
        if name in _PER_ITERATION and name in known:
            raise InvalidInputError(f"{name!r} cannot be passed to run: it is {_PER_ITERATION[name]}")
    known = [n for n in known if n not in _PER_ITERATION]
    for name in options:
        if name not in known:
            raise InvalidInputError(f"{name!r} is not an option of {algorithm!r}{did_you_mean(name, known)} "
                                    f"(its options: {', '.join(sorted(known))})")
    missing = [n for n in known if params[n].default is inspect.Parameter.empty and n not in options]
    if missing:
        raise InvalidInputError(f"{algorithm!r} needs the option(s) {', '.join(missing)}")


def run(algorithm: str, mdp, policy, theta0, *, n_iters: int, mode: str = "exact", seed: int = 0,
        **options) -> History:
    r"""Run `algorithm` for `n_iters` iterations from `theta0`, measuring every iteration exactly.

    Each iteration is one call of the algorithm's step function from the
    current theta: `reinforce_step`, `npg_step`, `trpo_step`, `ppo_update`,
    or `ppo_kl_penalty_update`, whose adapted coefficient ``beta`` is carried
    to the next iteration (``beta`` in `options` is the first one).

    Parameters
    ----------
    algorithm : {"reinforce", "npg", "trpo", "ppo", "ppo_kl_penalty"}
    mdp : TabularMDP or refpg.lqr.LQRSystem
    policy : TabularSoftmax or LogLinear; refpg.lqr.LinearGaussian on an LQRSystem
    theta0 : ndarray of shape ``policy.theta_shape``
    n_iters : int >= 1
    mode : {"exact", "sampled"}
    seed : int >= 0
        Seeds the one `numpy.random.Generator` that every sampled iteration
        draws from, so the same seed gives the same history. Exact mode
        draws nothing and ignores it.
    **options
        Keyword arguments of the step function (tables below). ``lr``
        (reinforce), ``eta`` (npg) and ``beta``, ``d_targ``
        (ppo_kl_penalty) are required. ``rng`` is run's own; ``data``,
        ``batch`` and ``optimizer_state`` belong to a single iteration and
        are refused.

    Returns
    -------
    History

    Raises
    ------
    refpg.errors.InvalidInputError
        Naming the argument: an unknown algorithm or option (with the closest
        option's name), a missing required option, an option the mode refuses
        (below), a bad value of any option (refused by the step function), a
        bad `n_iters`, `seed` or `theta0`.

    Notes
    -----
    **One step, two modes.** An option means the same step in both modes: the
    sampled step is computed from a batch by the estimators of the exact
    quantities, so with a large batch it approaches the exact step (the
    test suite measures this for every algorithm). Where an option cannot
    mean the same, one mode refuses it with an explanation. In the tables, g
    is the gradient, F the Fisher matrix, :math:`H = 1/(1-\gamma)` (for
    gamma = 1, the batch's transitions per ended episode, `horizon_estimate`), M the batch's transitions,
    and a hat marks a batch estimate.

    ``reinforce`` (`reinforce_step`):

    ============================== ======================================== ==========================================
    option                         exact                                    sampled
    ============================== ======================================== ==========================================
    lr                             theta += lr * grad J                     theta += lr * g-hat, the REINFORCE mean
                                                                            over episodes of sum_t gamma^t grad log pi
                                                                            (G_t - b): unbiased for grad J
    n_episodes, max_episode_steps  refused (nothing is sampled)             the episodes (100 by default); a time
                                                                            limit T costs O(gamma^T) bias
    baseline, variant              refused                                  estimator choices, every one unbiased
    ============================== ======================================== ==========================================

    ``npg`` (`npg_step`):

    ============================== ======================================== ==========================================
    option                         exact                                    sampled
    ============================== ======================================== ==========================================
    eta                            theta += eta * F^+ grad J                theta += eta * x-hat, (F-hat + damping I)
                                                                            x-hat = g-hat, g-hat = H/M sum_i A_i grad
                                                                            log pi_i
    cg_iters, cg_rtol              CG on the exact F (cg_iters=None with    CG on F-hat (cg_iters=None: until
                                   damping=0: the closed form, CG's limit)  converged, at most n_params iterations;
                                                                            refused with damping=0, as the min-norm
                                                                            solve of a batch Fisher is unstable:
                                                                            pass cg_iters=10 or damping > 0)
    damping                        solves (F + damping I) x = grad J        solves (F-hat + damping I) x = g-hat
    fisher                         F itself, the limit of both estimates    "empirical" or "kl_hessian" F-hat
    sample_config                  refused                                  batch shape, GAE lambda, critic
    ============================== ======================================== ==========================================

    ``trpo`` (`trpo_step`):

    ============================== ======================================== ==========================================
    option                         exact                                    sampled
    ============================== ======================================== ==========================================
    max_kl                         delta on the mean KL(pi_old || pi) under delta on the mean KL(pi_old || pi) over
                                   d_old                                    the batch's states
    cg_iters, cg_rtol, damping     CG on F + damping I, the exact F         CG on F-hat + damping I
    shrink, max_backtracks         line search on the exact surrogate       line search on the batch surrogate (H/M
                                                                            sum_i r_i A_i)
    line_search_objective          "surrogate" or "true_J"                  "surrogate"; "true_J" refused (J is not
                                                                            known from samples)
    fisher                         F itself                                 "kl_hessian" or "empirical" F-hat
    sample_config                  refused                                  as for npg
    ============================== ======================================== ==========================================

    ``ppo`` (`ppo_update`) and ``ppo_kl_penalty`` (`ppo_kl_penalty_update`):

    ============================== ======================================== ==========================================
    option                         exact                                    sampled
    ============================== ======================================== ==========================================
    lr, optimizer, adam_*, epochs  Adam or SGD ascent on                    the same on the batch mean of min(r A,
                                   exact_clipped_surrogate (under d_old x   clip(r) A), one step per minibatch: both
                                   pi_old, no H), one full-batch step per   per-sample objectives, without H
                                   epoch
    clip_eps                       the clip range                           the clip range
    minibatch_size                 refused (no samples)                     minibatches, reshuffled every epoch
    normalize_advantages           None or "batch" (moments under d_old x   None, "batch" or "minibatch"
                                   pi_old); "minibatch" refused
    norm_ddof                      ignored: every ddof has the same limit   ddof of the std
    norm_eps                       added to the std                         added to the std
    target_kl (ppo)                stop when the exact mean KL exceeds 1.5  stop when the minibatch's mean k3
                                   target_kl                                (unbiased for the KL) exceeds 1.5
                                                                            target_kl
    penalty (ppo), beta            beta * mean KL under d_old               beta * mean KL over the batch's states
    d_targ (ppo_kl_penalty)        adapts beta from the exact mean KL       adapts beta from the batch's mean KL
    sample_config                  refused                                  as for npg
    ============================== ======================================== ==========================================

    **On an LQR system** every record is exact too (`refpg.lqr`): J (-inf
    once a gain stops stabilising the system, after which the next
    iteration is refused with an `refpg.errors.InvalidInputError` that names
    it and carries the iterations done as ``.history``), the mean KL under :math:`d_{old}`, and the
    supremum of the per-state KL and range of the ratio over all states and
    actions (inf, 0 and inf as soon as the gain moves on the states
    :math:`d_{old}` reaches). Exact PPO's clipped term is the one quantity
    estimated, by Monte Carlo (`ppo_update`).

    **Where the limits still differ.** The batch's advantages are GAE
    estimates: unbiased only with ``SampleConfig(critic="exact")``; the
    default ``critic="batch"`` fits a Monte Carlo critic on the batch itself,
    which is biased. The batch's states follow the rollouts' visitation and
    never include a terminal state, while exact mode weighs states by
    :math:`d^{\pi_{old}}_\rho`, terminal states included for gamma < 1
    (docs/conventions.md, "MDPs and terminal states"). For REINFORCE and
    tabular NPG this changes nothing in the limit (REINFORCE discounts by
    :math:`\gamma^t`; tabular NPG is per state); for the KL of TRPO and PPO,
    PPO's gradient, and log-linear NPG it does, as in every library
    ([Nota2020]). The two modes then agree where the visitation is
    :math:`d^{\pi_{old}}_\rho`, e.g. when the next state does not depend
    on the state and action. Last, PPO's clipping acts on each sample's
    advantage estimate: :math:`\min(r\hat A, \mathrm{clip}(r)\hat A)` is
    linear in :math:`\hat A` on each side of 0 only, so once ratios leave
    :math:`[1-\epsilon, 1+\epsilon]` its mean differs from the exact mode's
    :math:`\min(rA, \mathrm{clip}(r)A)` wherever :math:`\hat A` can take
    both signs for one (s, a): the larger the advantage noise, the larger the
    gap (none with ``clip_eps=None``, nor while no ratio is clipped).

    References
    ----------
    [Williams1992]; [Kakade2001]; [Schulman2015]; [Schulman2017]; [Nota2020].
    """
    check_choice(algorithm, "algorithm", ALGORITHMS)
    check_problem(mdp, policy)
    check_mode(mode)
    n_iters = check_positive_int(n_iters, "n_iters")
    seed = check_positive_int(seed, "seed", minimum=0)
    step = _step_functions()[algorithm]
    _check_options(algorithm, step, options)
    theta = policy.validate_theta(theta0, "theta0").copy()
    rng = np.random.default_rng(seed) if mode == "sampled" else None
    prob = problem(mdp, policy, theta, name="theta0")
    J0 = prob.J_old
    records, results = [], []
    kwargs = dict(options)
    if mode == "sampled":
        kwargs["rng"] = rng
    for it in range(1, n_iters + 1):
        start = time.perf_counter()
        try:
            res = step(mdp, policy, theta, mode=mode, **kwargs)
        except InvalidInputError as exc:
            if it == 1:
                raise
            raise _stopped(algorithm, it, n_iters, exc, History(algorithm=algorithm, mode=mode, records=tuple(records),
                                                                 theta=theta, J0=J0, results=tuple(results))) from exc
        seconds = time.perf_counter() - start
        if algorithm == "ppo_kl_penalty":
            kwargs["beta"] = res.beta  # the adaptive coefficient, for the next update
        new = np.asarray(res.theta)
        div = prob.divergence(new)
        J_new = prob.J(new)
        inner = getattr(res, "update", res)  # ppo_kl_penalty wraps a PPOResult
        data, batch = getattr(inner, "data", None), getattr(inner, "batch", None)
        samples = (int(data.advantages.size) if data is not None
                   else int(batch.valid.sum()) if batch is not None else 0)
        records.append(IterationRecord(
            iteration=it, J=J_new, J_before=prob.J_old, mean_kl=div.mean_kl, max_kl=div.max_kl,
            ratio_min=div.ratio_min, ratio_max=div.ratio_max,
            step_norm=float(np.linalg.norm(new - theta)),
            accepted=getattr(res, "accepted", None), step_fraction=getattr(res, "step_fraction", None),
            samples=samples, seconds=seconds))
        results.append(res)
        theta = new.copy()
        if it < n_iters:
            # The next iteration starts here (an LQR gain that no longer stabilises is refused, naming its radius).
            try:
                prob = prob.at(theta)
            except InvalidInputError as exc:
                raise _stopped(algorithm, it + 1, n_iters, exc, History(
                    algorithm=algorithm, mode=mode, records=tuple(records), theta=theta, J0=J0,
                    results=tuple(results))) from exc
    return History(algorithm=algorithm, mode=mode, records=tuple(records), theta=theta, J0=J0,
                   results=tuple(results))
