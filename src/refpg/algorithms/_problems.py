r"""The two kinds of problem the algorithms run on, behind one small protocol.

* ``"tabular"``: a `refpg.TabularMDP` with a `refpg.TabularSoftmax` or
  `refpg.LogLinear` policy; the exact pieces come from `refpg.evaluate`.
* ``"lqr"``: a `refpg.lqr.LQRSystem` with a `refpg.lqr.LinearGaussian`
  policy; the exact pieces come from `refpg.lqr` (closed forms through two
  Lyapunov equations).

`problem(mdp, policy, theta)` validates the pair and theta (theta_old) and
returns an object with what REINFORCE, NPG and TRPO need from the problem,
each at theta_old unless it takes a theta:

* ``J_old``, ``J(theta)``: the exact objective (reward side; an LQR gain that
  does not stabilise the discounted system has :math:`J = -\infty`);
* ``gradient()``, ``fvp(v)``, ``natural_gradient()``: the exact
  :math:`\nabla J`, :math:`F v` and the closed-form :math:`F^+\nabla J`;
* ``surrogate(theta)``: :math:`L_{old}(\theta) - J_{old}` of TRPO's surrogate;
* ``kl(theta)``: the mean :math:`KL(\pi_{old}\|\pi_\theta)` under :math:`d_{old}`;
* ``divergence(theta)``: mean and largest KL, range of the ratio (for `run`);
* ``sampled(rng, sample_config, data, fisher)``: a batch and its estimates of
  the gradient, surrogate, KL and Fisher product (sampled mode);
* ``reinforce_gradient(...)``: the REINFORCE estimate on sampled episodes.

The algorithm files keep the algorithms (conjugate gradient, step size, line
search, updates) and never ask which kind of problem they run on.
"""

from __future__ import annotations

import numpy as np

from refpg._validation import as_float_array, check_positive_int
from refpg.algorithms.common import (
    BatchPieces,
    SampleConfig,
    SampledData,
    batch_pieces,
    collect,
    horizon_estimate,
    sampled_data,
)
from refpg.errors import InvalidInputError, NonFiniteError, ShapeError
from refpg.estimators import _check_batch, reinforce_gradient_estimate
from refpg.evaluation import check_problem, policy_evaluation, prepare
from refpg.fisher import _fvp, natural_gradient
from refpg.gradient import gradient_from_evaluation
from refpg.kl import _categorical_kl, kl_divergence
from refpg.lqr import exact as lqr_exact
from refpg.lqr import sampling as lqr_sampling
from refpg.sampling import Batch, sample_episodes

__all__ = ["problem", "TabularProblem", "LQRProblem"]

#: Episodes sampled per REINFORCE step when neither n_episodes nor batch is given.
DEFAULT_EPISODES = 100


def problem(mdp, policy, theta, *, name: str = "theta"):
    """`TabularProblem` or `LQRProblem` at theta_old = theta, after validating all three."""
    kind = check_problem(mdp, policy)
    return (LQRProblem if kind == "lqr" else TabularProblem)(mdp, policy, theta, name=name)


class TabularProblem:
    """A finite MDP with a tabular-softmax or log-linear policy, at theta_old."""

    kind = "tabular"

    def __init__(self, mdp, policy, theta, *, name="theta", evaluation=None):
        theta_old, self.pi_old, self.ev_old = prepare(mdp, policy, theta, evaluation, name=name)
        # A private copy: results are frozen, the caller's array is not.
        self.theta_old = theta_old.copy()
        self.mdp, self.policy, self.gamma = mdp, policy, mdp.gamma
        self.J_old = self.ev_old.J
        self.log_pi_old = policy.log_probs(self.theta_old)
        self._last = None

    def J(self, theta) -> float:
        ev = policy_evaluation(self.mdp, self.policy.probs(theta))
        self._last = (np.array(theta, dtype=np.float64), ev)
        return ev.J

    def at(self, theta) -> "TabularProblem":
        """The problem at a new theta_old, reusing the evaluation of the last `J` call if it was there."""
        ev = None
        if self._last is not None and np.array_equal(self._last[0], theta):
            ev = self._last[1]
        return TabularProblem(self.mdp, self.policy, theta, evaluation=ev)

    def gradient(self) -> np.ndarray:
        return gradient_from_evaluation(self.policy, self.theta_old, self.pi_old, self.ev_old)

    def fvp(self, v) -> np.ndarray:
        return _fvp(self.policy, self.theta_old, self.pi_old, self.ev_old.d, v)

    def natural_gradient(self) -> np.ndarray:
        return natural_gradient(self.mdp, self.policy, self.theta_old, evaluation=self.ev_old)

    def surrogate(self, theta) -> float:
        ev = self.ev_old
        # L - J_old without the J_old term: the same differences, less round-off.
        return float(ev.horizon * np.einsum("s,sa,sa->", ev.d, self.policy.probs(theta), ev.A))

    def kl(self, theta) -> float:
        return float(self.ev_old.d @ _categorical_kl(self.log_pi_old, self.policy.log_probs(theta), self.pi_old))

    def divergence(self, theta) -> lqr_exact._Divergence:
        ev = self.ev_old
        kl = kl_divergence(self.mdp, self.policy, theta, theta_old=self.theta_old, reduction="none",
                           evaluation_old=ev)
        visited = ev.support
        # From log-probabilities: finite even where pi_old has underflowed to 0.
        ratio = np.exp(self.policy.log_probs(theta)[visited] - self.log_pi_old[visited])
        return lqr_exact._Divergence(float(ev.d @ kl), float(kl[visited].max()), float(ratio.min()),
                                     float(ratio.max()))

    def sampled(self, rng, sample_config, data, fisher) -> tuple[SampledData, BatchPieces]:
        data = sampled_data(self.mdp, self.policy, self.theta_old, self.log_pi_old, rng, sample_config, data)
        pieces = batch_pieces(self.policy, self.theta_old, self.pi_old, self.log_pi_old, data, fisher,
                              horizon_estimate(self.gamma, data))
        return data, pieces

    def reinforce_gradient(self, *, rng, n_episodes, batch, baseline, variant, max_episode_steps):
        mdp, policy = self.mdp, self.policy
        if isinstance(baseline, str):
            if baseline != "exact":
                raise InvalidInputError(f"baseline should be an array (S,), 'exact' or None, actual {baseline!r}")
            baseline = self.ev_old.V
        elif baseline is not None:
            baseline = as_float_array(baseline, "baseline", shape=(mdp.n_states,))
        if batch is None:
            n = DEFAULT_EPISODES if n_episodes is None else check_positive_int(n_episodes, "n_episodes")
            batch = sample_episodes(mdp, self.pi_old, n, rng=rng, max_episode_steps=max_episode_steps)
        else:
            _refuse_sampling_options(n_episodes, max_episode_steps)
            _check_tabular_batch_policy(batch, self.log_pi_old)
        gradient = reinforce_gradient_estimate(policy, self.theta_old, batch, mdp.gamma, variant=variant,
                                               baseline=baseline)
        return gradient, batch


def _refuse_sampling_options(n_episodes, max_episode_steps):
    if n_episodes is not None or max_episode_steps is not None:
        raise InvalidInputError("n_episodes and max_episode_steps describe sampling; they cannot "
                                "be combined with a given batch")


def _check_tabular_batch_policy(batch, log_pi):
    """Refuse a batch that was not sampled under the policy being updated."""
    S, A = log_pi.shape
    _check_batch(batch, S, A)
    s, a, logp = batch.states[batch.valid], batch.actions[batch.valid], batch.log_probs[batch.valid]
    if s.size == 0:
        raise InvalidInputError("batch holds no valid transition")
    gap = np.abs(log_pi[s, a] - logp)
    i = int(np.argmax(gap))
    if not gap[i] <= 1e-9:
        raise InvalidInputError(
            f"batch.log_probs of valid transition {i} is {logp[i]!r} but the policy of theta gives "
            f"log pi({a[i]}|{s[i]}) = {log_pi[s[i], a[i]]!r}; batch should be sampled under theta (atol=1e-09)")


def _check_log_probs(stored, expected, where, label, advice):
    gap = np.abs(expected - stored)
    i = int(np.argmax(gap))
    if not gap[i] <= 1e-9 * max(1.0, abs(float(expected[i]))):
        raise InvalidInputError(
            f"{label} {i} is {stored[i]!r} but the policy of theta gives {where(i)} = {expected[i]!r}; "
            f"{advice} (tolerance 1e-09 times max(1, |log pi|))")


class LQRProblem:
    """An `refpg.lqr.LQRSystem` with a `refpg.lqr.LinearGaussian` policy, at a stabilising theta_old."""

    kind = "lqr"

    def __init__(self, system, policy, theta, *, name="theta"):
        K, log_std, label = lqr_exact._theta(system, policy, theta, name)
        # Refuses a gain that does not stabilise the system, naming the spectral radius.
        self.ev_old = lqr_exact._evaluate(system, K, log_std, label)
        self.theta_old = policy.validate_theta(theta, name).copy()
        self.K_old, self.log_std_old = policy._split(self.theta_old)
        self.mdp, self.policy, self.gamma = system, policy, system.gamma
        self.J_old = -self.ev_old.cost
        #: Second moment of the normalised occupancy d_old: (1 - gamma) Sigma_K.
        self.M_old = (1.0 - system.gamma) * self.ev_old.Sigma

    def _split(self, theta):
        return self.policy._split(self.policy.validate_theta(theta))

    def at(self, theta) -> "LQRProblem":
        """The problem at a new theta_old."""
        return LQRProblem(self.mdp, self.policy, theta)

    def J(self, theta) -> float:
        K, log_std = self._split(theta)
        if not self.mdp.spectral_radius(K) < 1.0:
            return -np.inf
        return -lqr_exact._cost(self.mdp, K, log_std)

    def gradient(self) -> np.ndarray:
        g = lqr_exact._gradient(self.ev_old, self.gamma)
        return -self.policy._vec(g.K, g.log_std)

    def fvp(self, v) -> np.ndarray:
        # refpg.lqr.fisher_vector_product with Sigma_K computed once.
        return lqr_exact._fvp_under(self.policy, self.log_std_old, v, self.M_old)

    def natural_gradient(self) -> np.ndarray:
        g = lqr_exact._natural(self.mdp, self.K_old, self.log_std_old)
        return -self.policy._vec(g.K, g.log_std)

    def surrogate(self, theta) -> float:
        K, log_std = self._split(theta)
        return lqr_exact._surrogate_improvement(self.mdp, self.ev_old, K, log_std)

    def kl(self, theta) -> float:
        K, log_std = self._split(theta)
        return lqr_exact._kl_under(self.K_old, self.log_std_old, K, log_std, self.M_old)

    def kl_gradient(self, theta) -> np.ndarray:
        K, log_std = self._split(theta)
        return lqr_exact._kl_gradient_under(self.policy, self.K_old, self.log_std_old, K, log_std, self.M_old)

    def divergence(self, theta) -> lqr_exact._Divergence:
        K, log_std = self._split(theta)
        return lqr_exact._divergence(self.K_old, self.log_std_old, K, log_std, self.M_old)

    # -- sampled mode ---------------------------------------------------------------------
    def sampled(self, rng, sample_config, data, fisher) -> tuple[SampledData, BatchPieces]:
        data = lqr_sampled_data(self.mdp, self.policy, self.theta_old, rng, sample_config, data)
        return data, lqr_batch_pieces(self.policy, self.theta_old, data, fisher, horizon_estimate(self.gamma, data))

    def reinforce_gradient(self, *, rng, n_episodes, batch, baseline, variant, max_episode_steps):
        system, policy = self.mdp, self.policy
        if batch is None:
            if max_episode_steps is None:
                raise InvalidInputError(
                    "max_episode_steps is required to sample REINFORCE episodes on an LQRSystem (its "
                    "episodes never end); the estimate's mean is then the gradient of the H-step objective "
                    "(refpg.lqr.finite_horizon_cost_gradient)")
            n = DEFAULT_EPISODES if n_episodes is None else check_positive_int(n_episodes, "n_episodes")
            H = check_positive_int(max_episode_steps, "max_episode_steps")
            batch = lqr_sampling.sample_episodes(system, policy, self.theta_old, n, horizon=H, rng=rng)
        else:
            _refuse_sampling_options(n_episodes, max_episode_steps)
            _check_lqr_batch_policy(batch, policy, self.theta_old)
        values = None
        if isinstance(baseline, str):
            if baseline != "exact":
                raise InvalidInputError(f"baseline should be 'exact', a callable V(states) or None on an "
                                        f"LQRSystem, actual {baseline!r}")
            values = _finite_horizon_values(system, self.K_old, self.log_std_old, batch)
        elif callable(baseline):
            values = as_float_array(baseline(batch.states), "baseline(batch.states)", shape=batch.rewards.shape)
        elif baseline is not None:
            raise InvalidInputError(f"baseline should be 'exact', a callable V(states) (e.g. a "
                                    f"refpg.lqr.QuadraticValue) or None on an LQRSystem, actual "
                                    f"{type(baseline).__name__}")
        gradient = reinforce_gradient_estimate(policy, self.theta_old, batch, system.gamma, variant=variant,
                                               baseline=values)
        return gradient, batch


def _finite_horizon_values(system, K, log_std, batch):
    r"""The exact reward value of the steps left in each transition's episode, :math:`-(x^\top P_{H-t} x + q_{H-t})`.

    With L the length of the transition's (complete) episode and t its step,
    L - t steps remain, whose expected discounted cost from x is
    :math:`x^\top P^{(L)}_t x + q^{(L)}_t`; for a time-invariant system that is
    row :math:`H_{max} - (L - t)` of the recursion over the longest episode.
    Transitions of unfinished episodes get 0 (they are left out of REINFORCE).
    """
    from refpg.estimators import episode_ids

    ids, E = episode_ids(batch)
    keep = ids >= 0
    if E == 0:
        return np.zeros(batch.rewards.shape)
    lengths = np.bincount(ids[keep], minlength=E)
    remaining = np.where(keep, lengths[np.maximum(ids, 0)] - batch.step, 0)
    H = int(lengths.max())
    fh = lqr_exact._finite(system, K, log_std, H)[0]
    row = H - remaining
    P, q = fh.P[row], fh.q[row]
    values = -(np.einsum("...i,...ij,...j->...", batch.states, P, batch.states) + q)
    return np.where(keep, values, 0.0)


def _check_lqr_batch(batch, policy):
    if not isinstance(batch, Batch):
        raise InvalidInputError(f"batch should be a refpg.sampling.Batch, actual {type(batch).__name__}")
    T_N = batch.rewards.shape
    n, m = policy.state_dim, policy.action_dim
    for name, arr, d in (("states", batch.states, n), ("actions", batch.actions, m)):
        if np.shape(arr) != T_N + (d,):
            raise ShapeError(f"batch.{name} should have shape {T_N + (d,)} (batch.rewards is {T_N}) for a policy "
                             f"with state_dim={n}, action_dim={m}, actual shape {np.shape(arr)}")


def _check_lqr_batch_policy(batch, policy, theta):
    _check_lqr_batch(batch, policy)
    v = batch.valid
    if not v.any():
        raise InvalidInputError("batch holds no valid transition")
    expected = policy.sample_log_probs(theta, batch.states[v], batch.actions[v])
    _check_log_probs(batch.log_probs[v], expected, lambda i: f"log pi(u|x) of valid transition {i}",
                     "batch.log_probs of valid transition", "batch should be sampled under theta")


# -- sampled mode on an LQR system ------------------------------------------------------------------

def lqr_sampled_data(system, policy, theta, rng, sample_config, data) -> SampledData:
    """Collect a batch under pi_theta, or check that `data` was collected under it (LQR)."""
    if data is None:
        config = SampleConfig() if sample_config is None else sample_config
        return collect(system, policy, config, rng=rng, theta=theta)
    if not isinstance(data, SampledData):
        raise InvalidInputError(f"data should be a refpg.algorithms.SampledData, actual {type(data).__name__}")
    X, U = np.asarray(data.states), np.asarray(data.actions)
    n, m = policy.state_dim, policy.action_dim
    if X.ndim != 2 or X.shape[1] != n or X.shape[0] == 0 or U.shape != (X.shape[0], m):
        raise ShapeError(f"data.states and data.actions should have shapes (M, {n}) and (M, {m}) with M >= 1, "
                         f"actual {X.shape} and {U.shape}")
    expected = policy.sample_log_probs(theta, X, U)
    _check_log_probs(np.asarray(data.logp_old, dtype=float), expected, lambda i: f"log pi(u_{i}|x_{i})",
                     "data.logp_old of sample", "data should be collected under theta")
    if not np.all(np.isfinite(data.advantages)):
        raise NonFiniteError("data.advantages holds a non-finite value")
    return data


def lqr_batch_pieces(policy, theta_old, data: SampledData, fisher: str, horizon: float) -> BatchPieces:
    r"""The batch estimates of sampled mode for a linear-Gaussian policy, through its sample interface.

    With M samples :math:`(x_i, u_i, \hat A_i)` and H = `horizon`: gradient
    :math:`\frac HM\sum_i \hat A_i\nabla\log\pi(u_i|x_i)` (one
    ``sample_log_prob_vjp``); surrogate :math:`\frac HM\sum_i r_i\hat A_i`;
    mean KL over the batch's states, exactly per state (the Gaussian KL is
    quadratic in x, so its mean needs only :math:`\hat M = \frac1M\sum_i x_i x_i^\top`);
    Fisher product: the empirical
    :math:`\frac1M\sum_i\nabla\log\pi_i(\nabla\log\pi_i^\top v)` (a sample JVP
    then VJP), or the Hessian of the batch mean KL,
    :math:`(\mathrm{vec}(\Psi^{-1}V_K\hat M), 2v_{\mathrm{log\_std}})`.
    """
    X, U, adv = data.states, data.actions, data.advantages
    M = X.shape[0]
    K_old, log_std_old = policy._split(theta_old)
    gradient = policy.sample_log_prob_vjp(theta_old, adv * (horizon / M), X, U)
    base = policy.sample_log_probs(theta_old, X, U)
    M_hat = X.T @ X / M

    def surrogate(theta):
        ratio = np.exp(policy.sample_log_probs(theta, X, U) - base)
        return float(horizon * np.mean(ratio * adv))

    def kl(theta):
        K, log_std = policy._split(policy.validate_theta(theta))
        return lqr_exact._kl_under(K_old, log_std_old, K, log_std, M_hat)

    if fisher == "kl_hessian":
        def fvp(v):
            return lqr_exact._fvp_under(policy, log_std_old, v, M_hat)
    else:
        def fvp(v):
            return policy.sample_log_prob_vjp(theta_old, policy.sample_log_prob_jvp(theta_old, v, X, U) / M, X, U)

    return BatchPieces(gradient=gradient, surrogate=surrogate, kl=kl, fvp=fvp)
