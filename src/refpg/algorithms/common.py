"""What every algorithm shares: its two modes and the sampled-mode data.

* Exact mode: expectations under d_old and pi_old with exact advantages
  (`refpg.evaluate`), i.e. the infinite-sample limit of each update.
* Sampled mode: a batch from `refpg.sampling`, advantages by GAE with a
  critic that is either the exact V (``critic="exact"``, which isolates the
  policy update's sampling error) or a tabular Monte Carlo critic fitted on
  the batch itself (``critic="batch"``: per-state mean of the lambda-returns
  computed with the previous critic, starting from zero).

On a `refpg.lqr.LQRSystem` the batch comes from `refpg.lqr.sample_steps`
(state and action vectors), the exact critic is the quadratic reward value
of `refpg.lqr.exact_value`, and the batch critic the least-squares quadratic
through the lambda-returns (`refpg.lqr.fit_quadratic_value`): the function
class the exact value belongs to, where a table over states cannot exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from refpg._validation import check_choice, check_positive_int, check_real
from refpg.errors import InvalidInputError, NonFiniteError
from refpg.evaluation import policy_evaluation
from refpg.kl import _categorical_kl
from refpg.returns import gae
from refpg.sampling import Batch, Sampler

__all__ = ["MODES", "SampleConfig", "SampledData", "collect", "check_mode"]

#: The two modes of every algorithm: exact expectations, or estimates from sampled episodes.
MODES = ("exact", "sampled")
CRITICS = ("exact", "batch")


def check_mode(mode: str) -> str:
    """Refuse anything but "exact" or "sampled"."""
    return check_choice(mode, "mode", MODES)


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
        Source of V for GAE (see module docstring; on an LQR system the
        exact quadratic value, or a quadratic fitted to the batch).
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
        check_choice(self.critic, "critic", CRITICS)


@dataclass(frozen=True, eq=False)
class SampledData:
    """One sampled-mode batch, flattened to its M valid transitions.

    Attributes
    ----------
    batch : Batch
        The raw time-major batch.
    states, actions : int64 (M,), or float64 (M, n) and (M, m)
        Integer states and actions on a TabularMDP; state and action vectors
        on an LQR system.
    logp_old : float64 (M,)
        log pi_old(a|s) of the sampling policy.
    advantages : float64 (M,)
        GAE(gamma, lam) advantages.
    returns : float64 (M,)
        lambda-returns (advantages + V(s)), the critic's regression target.
    values : float64 (S,), or refpg.lqr.QuadraticValue
        The critic V used: a table, or on an LQR system the quadratic
        :math:`V(x) = x^\top P x + c`.
    """

    batch: Batch
    states: np.ndarray
    actions: np.ndarray
    logp_old: np.ndarray
    advantages: np.ndarray
    returns: np.ndarray
    values: np.ndarray


def collect(mdp, pi, config: SampleConfig, *, rng, values=None, theta=None) -> SampledData:
    """Sample one batch under pi and compute its GAE advantages.

    Parameters
    ----------
    mdp : TabularMDP or refpg.lqr.LQRSystem
    pi : ndarray (S, A), or a refpg.lqr.LinearGaussian
        The policy's probabilities on a TabularMDP; on an LQRSystem the
        linear-Gaussian policy, whose parameters are `theta`.
    config : SampleConfig
    rng : numpy.random.Generator
    values : ndarray (S,) or refpg.lqr.QuadraticValue, optional
        The previous batch critic (``critic="batch"``); zero if None.
    theta : ndarray, keyword-only
        On an LQRSystem only (required there): the parameters of `pi`.

    Returns
    -------
    SampledData

    Notes
    -----
    On an LQRSystem the batch comes from `refpg.lqr.sample_steps` (float
    states and actions; episodes never terminate, so each is cut by
    ``config.max_episode_steps`` and GAE bootstraps there), the exact
    critic is the reward value :math:`-(x^\top P_K x + q_K)`
    (`refpg.lqr.exact_value`), and the batch critic is the least-squares
    quadratic :math:`x^\top P x + c` through the lambda-returns computed with
    the previous critic (`refpg.lqr.fit_quadratic_value`), the counterpart of
    the tabular per-state mean.
    """
    from refpg.lqr import LQRSystem

    if isinstance(mdp, LQRSystem):
        return _collect_lqr(mdp, pi, theta, config, rng, values)
    if theta is not None:
        raise InvalidInputError("theta is only used on an LQRSystem (with a LinearGaussian pi); on a TabularMDP "
                                "pi holds the probabilities")
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


def _collect_lqr(system, policy, theta, config, rng, values) -> SampledData:
    from refpg.evaluation import check_problem
    from refpg.lqr import sampling as lqr_sampling

    check_problem(system, policy)
    if theta is None:
        raise InvalidInputError("theta is required on an LQRSystem: collect(system, policy, config, rng=rng, "
                                "theta=theta)")
    if not isinstance(config, SampleConfig):
        raise InvalidInputError(f"config should be a refpg.algorithms.SampleConfig, actual {type(config).__name__}")
    batch = lqr_sampling.sample_steps(system, policy, theta, config.n_envs, config.n_steps, rng=rng,
                                      max_episode_steps=config.max_episode_steps)
    g, n = system.gamma, system.state_dim
    if config.critic == "exact":
        V = lqr_sampling.exact_value(system, policy, theta)
    else:
        if values is None:
            V0 = lqr_sampling.QuadraticValue(P=np.zeros((n, n)), c=0.0)
        elif isinstance(values, lqr_sampling.QuadraticValue):
            V0 = values
        else:
            raise InvalidInputError(f"values should be a refpg.lqr.QuadraticValue or None on an LQRSystem, "
                                    f"actual {type(values).__name__}")
        lam_ret = gae(batch.rewards, V0(batch.states), V0(batch.next_states), batch.terminated, batch.truncated,
                      g, config.lam) + V0(batch.states)
        V = lqr_sampling.fit_quadratic_value(batch.states.reshape(-1, n), lam_ret.ravel())
    v_now = V(batch.states)
    adv = gae(batch.rewards, v_now, V(batch.next_states), batch.terminated, batch.truncated, g, config.lam)
    v = batch.valid
    return SampledData(batch=batch, states=batch.states[v], actions=batch.actions[v],
                       logp_old=batch.log_probs[v], advantages=adv[v], returns=(adv + v_now)[v], values=V)


# -- shared by the sampled modes of TRPO, NPG and REINFORCE ------------------------

#: Fisher matrices sampled mode can use (see `refpg.algorithms.trpo_step`).
FISHER_ESTIMATES = ("kl_hessian", "empirical")


def check_sampled_arguments(mode, rng, data, *, data_name: str = "data", **others) -> None:
    """Refuse sampled-mode arguments in exact mode, and sampled mode with neither rng nor data.

    `others` are further sampled-only arguments (None when not given).
    """
    if mode == "exact":
        for name, value in {"rng": rng, data_name: data, **others}.items():
            if value is not None:
                raise InvalidInputError(f"{name} is only used in mode='sampled'; pass {name}=None "
                                        "in mode='exact'")
        return
    if data is None:
        if rng is None:
            raise InvalidInputError(
                f"rng is required in mode='sampled' (np.random.default_rng(seed)) unless {data_name} is given")
        if not isinstance(rng, np.random.Generator):
            raise InvalidInputError("rng should be a numpy.random.Generator (np.random.default_rng(seed)), "
                                    f"actual {type(rng).__name__}")
    elif rng is not None:
        raise InvalidInputError(f"pass either {data_name} or rng (to sample it), not both")


def check_sample_config(sample_config, data):
    if sample_config is None:
        return
    if not isinstance(sample_config, SampleConfig):
        raise InvalidInputError("sample_config should be a refpg.algorithms.SampleConfig, "
                                f"actual {type(sample_config).__name__}")
    if data is not None:
        raise InvalidInputError("sample_config describes how to collect data; it cannot be combined "
                                "with a given data")


def sampled_data(mdp, policy, theta, log_pi, rng, sample_config, data) -> SampledData:
    """Collect a batch under pi_theta, or check that `data` was collected under it."""
    if data is None:
        config = SampleConfig() if sample_config is None else sample_config
        return collect(mdp, np.exp(log_pi), config, rng=rng)
    if not isinstance(data, SampledData):
        raise InvalidInputError(f"data should be a refpg.algorithms.SampledData, actual {type(data).__name__}")
    S, A = policy.n_states, policy.n_actions
    if data.states.size == 0:
        raise InvalidInputError("data holds no transition")
    if data.states.max() >= S or data.actions.max() >= A:
        raise InvalidInputError(f"data has states up to {data.states.max()} and actions up to "
                                f"{data.actions.max()}, but the policy has {S} states and {A} actions")
    # The batch must come from the policy being updated, else the ratios and
    # the gradient are those of another step.
    gap = np.abs(log_pi[data.states, data.actions] - data.logp_old)
    i = int(np.argmax(gap))
    if not gap[i] <= 1e-9:
        raise InvalidInputError(
            f"data.logp_old[{i}] is {data.logp_old[i]!r} but the policy of theta gives "
            f"log pi({data.actions[i]}|{data.states[i]}) = {log_pi[data.states[i], data.actions[i]]!r}; "
            "data should be collected under theta (atol=1e-09)")
    if not np.all(np.isfinite(data.advantages)):
        raise NonFiniteError("data.advantages holds a non-finite value")
    return data


def horizon_estimate(gamma: float, data: SampledData) -> float:
    r"""The factor :math:`H` that turns a batch mean into an estimate of an exact-mode quantity.

    :math:`H = 1/(1-\gamma)` for gamma < 1, the factor of the policy gradient
    theorem ([Sutton2000]; docs/conventions.md). For gamma = 1 it is the
    expected episode length, estimated from the batch as its M transitions
    over the number of episodes that ended in it (terminated or cut by the
    time limit): the renewal-reward ratio. It is consistent as each
    environment's rollout (``n_steps``) grows, not as environments are added:
    every environment's unfinished last episode adds transitions and no end,
    so with rollouts a few episodes long H comes out high (n_steps = 64 on a
    chain whose episodes last 40 steps gives 64). Counting episodes begun
    instead would bias it low by the same mechanism.

    Raises
    ------
    refpg.errors.InvalidInputError
        For gamma = 1 when no episode ended in the batch: H cannot be
        estimated (make the rollouts longer than an episode).
    """
    if gamma < 1.0:
        return 1.0 / (1.0 - gamma)
    batch = data.batch
    ends = int(np.count_nonzero(batch.dones & batch.valid))
    if ends == 0:
        raise InvalidInputError(
            f"gamma = 1 and no episode ended in the batch's {data.states.size} transitions, so the horizon "
            f"H (the expected episode length) that scales the batch gradient cannot be estimated; make "
            f"sample_config.n_steps longer than an episode")
    return data.states.size / ends


class BatchPieces(NamedTuple):
    """Sampled-mode surrogate, gradient, KL and Fisher on one batch."""

    gradient: np.ndarray
    surrogate: Callable
    kl: Callable
    fvp: Callable


def batch_pieces(policy, theta_old, pi_old, log_pi_old, data: SampledData, fisher: str,
                 horizon: float = 1.0) -> BatchPieces:
    r"""The batch estimates of sampled mode.

    With M transitions :math:`(s_i, a_i, \hat A_i)`,
    :math:`r_i(\theta) = \pi_\theta(a_i|s_i) / \pi_{old}(a_i|s_i)` and H =
    `horizon` (`horizon_estimate`): surrogate
    :math:`\frac HM\sum_i r_i \hat A_i` and its gradient at theta_old
    :math:`\frac HM\sum_i \hat A_i\nabla\log\pi(a_i|s_i)` (with H =
    1/(1-gamma), differences of the first estimate those of `refpg.surrogate`
    and the second estimates :math:`\nabla J`), mean KL
    :math:`\frac1M\sum_i D_{KL}(\pi_{old}(\cdot|s_i)\|\pi(\cdot|s_i))`, and
    the Fisher matrix :math:`J^\top \mathrm{diag}(w) J` with weights w over (s, a).
    """
    S, A = pi_old.shape
    M = data.states.size
    W = np.zeros((S, A))
    np.add.at(W, (data.states, data.actions), data.advantages * (horizon / M))
    gradient = policy.log_prob_vjp(theta_old, W, pi_old)
    state_weight = np.bincount(data.states, minlength=S) / M
    if fisher == "kl_hessian":
        # Hessian of the batch mean KL at theta_old: exact expectation over actions.
        w = state_weight[:, None] * pi_old
    else:
        w = np.zeros((S, A))
        np.add.at(w, (data.states, data.actions), 1.0 / M)
    # Ratios against the policy's own log pi_old, so that the surrogate's
    # improvement at theta_old is exactly 0 (data.logp_old agrees to 1e-9).
    base = log_pi_old[data.states, data.actions]

    def surrogate(theta):
        ratio = np.exp(policy.log_probs(theta)[data.states, data.actions] - base)
        return float(horizon * np.mean(ratio * data.advantages))

    def kl(theta):
        return float(state_weight @ _categorical_kl(log_pi_old, policy.log_probs(theta), pi_old))

    def fvp(v):
        return policy.log_prob_vjp(theta_old, w * policy.log_prob_jvp(theta_old, v, pi_old), pi_old)

    return BatchPieces(gradient=gradient, surrogate=surrogate, kl=kl, fvp=fvp)


def check_fisher(fisher):
    return check_choice(fisher, "fisher", FISHER_ESTIMATES)
