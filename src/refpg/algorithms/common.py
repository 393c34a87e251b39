"""What every algorithm shares: its two modes and the sampled-mode data.

* Exact mode: expectations under d_old and pi_old with exact advantages
  (`refpg.evaluate`), i.e. the infinite-sample limit of each update.
* Sampled mode: a batch from `refpg.sampling`, advantages by GAE with a
  critic that is either the exact V (``critic="exact"``, which isolates the
  policy update's sampling error) or a tabular Monte Carlo critic fitted on
  the batch itself (``critic="batch"``: per-state mean of the lambda-returns
  computed with the previous critic, starting from zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refpg._validation import check_positive_int, check_real
from refpg.errors import InvalidInputError
from refpg.evaluation import policy_evaluation
from refpg.returns import gae
from refpg.sampling import Batch, Sampler

__all__ = ["MODES", "SampleConfig", "SampledData", "collect", "check_mode"]

MODES = ("exact", "sampled")
CRITICS = ("exact", "batch")


def check_mode(mode: str) -> str:
    """Refuse anything but "exact" or "sampled"."""
    if mode not in MODES:
        raise InvalidInputError(f"mode should be one of {MODES}, actual {mode!r}")
    return mode


@dataclass(frozen=True)
class SampleConfig:
    """How sampled mode collects data.

    Attributes
    ----------
    n_envs, n_steps : int
        Batch shape (T = n_steps, N = n_envs) of `refpg.sampling.sample_steps`.
    max_episode_steps : int or None
        Time limit (truncation, bootstrapped by GAE).
    lam : float
        GAE lambda.
    critic : {"exact", "batch"}
        Source of V for GAE (see module docstring).
    """

    n_envs: int = 64
    n_steps: int = 64
    max_episode_steps: int | None = 100
    lam: float = 0.95
    critic: str = "batch"

    def __post_init__(self):
        check_positive_int(self.n_envs, "n_envs")
        check_positive_int(self.n_steps, "n_steps")
        if self.max_episode_steps is not None:
            check_positive_int(self.max_episode_steps, "max_episode_steps")
        check_real(self.lam, "lam", low=0.0, high=1.0)
        if self.critic not in CRITICS:
            raise InvalidInputError(f"critic should be one of {CRITICS}, actual {self.critic!r}")


@dataclass(frozen=True, eq=False)
class SampledData:
    """One sampled-mode batch, flattened to its M valid transitions.

    Attributes
    ----------
    batch : Batch
        The raw time-major batch.
    states, actions : int64 (M,)
    logp_old : float64 (M,)
        log pi_old(a|s) of the sampling policy.
    advantages : float64 (M,)
        GAE(gamma, lam) advantages.
    returns : float64 (M,)
        lambda-returns (advantages + V(s)), the critic's regression target.
    values : float64 (S,)
        The critic V used.
    """

    batch: Batch
    states: np.ndarray
    actions: np.ndarray
    logp_old: np.ndarray
    advantages: np.ndarray
    returns: np.ndarray
    values: np.ndarray


def collect(mdp, pi, config: SampleConfig, *, rng, values=None) -> SampledData:
    """Sample one batch under pi and compute its GAE advantages.

    Parameters
    ----------
    mdp : TabularMDP
    pi : ndarray (S, A)
    config : SampleConfig
    rng : numpy.random.Generator
    values : ndarray (S,), optional
        The previous batch critic (``critic="batch"``); zeros if None.

    Returns
    -------
    SampledData
    """
    batch = Sampler(mdp, pi).steps(config.n_envs, config.n_steps, rng=rng,
                                   max_episode_steps=config.max_episode_steps)
    if config.critic == "exact":
        V = policy_evaluation(mdp, pi).V
    else:
        V0 = np.zeros(mdp.n_states) if values is None else np.asarray(values, dtype=float)
        lam_ret = gae(batch.rewards, V0[batch.states], V0[batch.next_states], batch.terminated,
                      batch.truncated, mdp.gamma, config.lam) + V0[batch.states]
        # Per-state mean of the lambda-returns; unvisited states keep the old value.
        total = np.bincount(batch.states.ravel(), lam_ret.ravel(), minlength=mdp.n_states)
        count = np.bincount(batch.states.ravel(), minlength=mdp.n_states)
        V = np.where(count > 0, total / np.maximum(count, 1), V0)
        V = np.where(mdp.terminal, 0.0, V)
    adv = gae(batch.rewards, V[batch.states], V[batch.next_states], batch.terminated, batch.truncated,
              mdp.gamma, config.lam)
    v = batch.valid
    return SampledData(batch=batch, states=batch.states[v], actions=batch.actions[v],
                       logp_old=batch.log_probs[v], advantages=adv[v], returns=(adv + V[batch.states])[v],
                       values=V)
