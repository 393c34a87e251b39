"""Run any algorithm on any MDP for N iterations and record exact diagnostics.

Whatever the mode of the update itself, the history is measured with the
oracle: exact J after each iteration, exact mean and max KL(pi_old || pi_new),
and the exact range of pi_new / pi_old over (s, a) with d_old(s) > 0.
"""

from __future__ import annotations

import difflib
import inspect
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from refpg._validation import check_choice, check_positive_int
from refpg.algorithms.common import check_mode
from refpg.errors import InvalidInputError
from refpg.evaluation import check_mdp, check_policy, policy_evaluation
from refpg.kl import kl_divergence

__all__ = ["ALGORITHMS", "IterationRecord", "History", "run"]


def _step_functions():
    from refpg.algorithms.npg import npg_step
    from refpg.algorithms.ppo import ppo_update
    from refpg.algorithms.reinforce import reinforce_step
    from refpg.algorithms.trpo import trpo_step

    return {"reinforce": reinforce_step, "npg": npg_step, "trpo": trpo_step, "ppo": ppo_update}


#: Algorithm names accepted by `run`.
ALGORITHMS = ("reinforce", "npg", "trpo", "ppo")


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
        if name not in known:
            near = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise InvalidInputError(
                f"{name!r} is not an option of {algorithm!r}{hint} (its options: {', '.join(sorted(known))})")
    missing = [n for n in known if params[n].default is inspect.Parameter.empty and n not in options]
    if missing:
        raise InvalidInputError(f"{algorithm!r} needs the option(s) {', '.join(missing)}")


def run(algorithm: str, mdp, policy, theta0, *, n_iters: int, mode: str = "exact", seed: int = 0,
        **options) -> History:
    """Run `algorithm` for `n_iters` iterations from `theta0`.

    Parameters
    ----------
    algorithm : {"reinforce", "npg", "trpo", "ppo"}
    mdp : TabularMDP
    policy : TabularSoftmax or LogLinear
    theta0 : ndarray of shape ``policy.theta_shape``
    n_iters : int >= 1
    mode : {"exact", "sampled"}
    seed : int
        Seeds the one `numpy.random.Generator` that every sampled iteration
        draws from, so the same seed gives the same history.
    **options
        Passed to the algorithm's step function (`reinforce_step` needs
        ``lr``, `npg_step` ``eta``, `trpo_step` ``max_kl``, `ppo_update`
        its optimizer settings).

    Returns
    -------
    History
    """
    check_choice(algorithm, "algorithm", ALGORITHMS)
    check_mdp(mdp)
    check_policy(policy, mdp)
    check_mode(mode)
    n_iters = check_positive_int(n_iters, "n_iters")
    step = _step_functions()[algorithm]
    _check_options(algorithm, step, options)
    theta = policy.validate_theta(theta0, "theta0").copy()
    rng = np.random.default_rng(seed) if mode == "sampled" else None
    ev = policy_evaluation(mdp, policy.probs(theta))
    J0 = ev.J
    records, results = [], []
    for it in range(1, n_iters + 1):
        start = time.perf_counter()
        kwargs = dict(options)
        if mode == "sampled":
            kwargs["rng"] = rng
        res = step(mdp, policy, theta, mode=mode, **kwargs)
        seconds = time.perf_counter() - start
        new = np.asarray(res.theta)
        pi_new = policy.probs(new)
        ev_new = policy_evaluation(mdp, pi_new)
        logp_old, logp_new = policy.log_probs(theta), policy.log_probs(new)
        kl = kl_divergence(mdp, policy, new, theta_old=theta, reduction="none", evaluation_old=ev)
        visited = ev.support
        # From log-probabilities: finite even where pi_old has underflowed to 0.
        ratio = np.exp(logp_new[visited] - logp_old[visited])
        data, batch = getattr(res, "data", None), getattr(res, "batch", None)
        samples = (int(data.states.size) if data is not None
                   else int(batch.valid.sum()) if batch is not None else 0)
        records.append(IterationRecord(
            iteration=it, J=ev_new.J, J_before=ev.J, mean_kl=float(ev.d @ kl), max_kl=float(kl[visited].max()),
            ratio_min=float(ratio.min()), ratio_max=float(ratio.max()),
            step_norm=float(np.linalg.norm(new - theta)),
            accepted=getattr(res, "accepted", None), step_fraction=getattr(res, "step_fraction", None),
            samples=samples, seconds=seconds))
        results.append(res)
        theta, ev = new.copy(), ev_new
    return History(algorithm=algorithm, mode=mode, records=tuple(records), theta=theta, J0=J0,
                   results=tuple(results))
