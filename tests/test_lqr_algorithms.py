"""REINFORCE, NPG, TRPO and PPO on the linear-quadratic-Gaussian system, through refpg.algorithms.

Exact mode is checked against updates computed by hand from refpg.lqr (the
closed forms of J, the gradient, E_K, the Fisher matrix, the KL), to 1e-10.
PPO's clipped objective has no closed form: its Monte Carlo estimate is
checked statistically (family-wise alpha = 1e-6, fixed seeds) against the
closed form that exists without clipping, and shown to reject wrong ones.
Sampled mode: the REINFORCE estimate is unbiased for the gradient of the
H-step objective with gamma^t (the same test rejects the gamma^t-free
direction), the empirical Fisher product for its own expectation.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

from refpg import lqr
from refpg import empirical_fisher_estimate, empirical_fisher_vector_product, reinforce_estimates
from refpg.algorithms import (
    SampleConfig,
    adapt_kl_coefficient,
    clipped_surrogate,
    clipped_surrogate_gradient,
    collect,
    exact_clipped_surrogate,
    npg_step,
    ppo_kl_penalty_update,
    ppo_update,
    reinforce_step,
    run,
    trpo_step,
)
from refpg.algorithms._problems import problem
from refpg.algorithms.ppo import batch_kl, batch_kl_gradient
from refpg.errors import InvalidInputError, ShapeError
from refpg.lqr import LinearGaussian, LQRSystem
from refpg.stats import mean_test
from tests.helpers import assert_identity
from tests.test_lqr import lqr_cases

#: Family-wise false-alarm rate of every statistical test in this file.
ALPHA = 1e-6

SYSTEM = LQRSystem(A=[[0.9, 0.3], [-0.2, 0.8]], B=[[0.0], [1.0]], Q=[[1.0, 0.2], [0.2, 0.5]], R=[[0.5]],
                   W=0.3 * np.eye(2), mu0=[1.0, -0.5], Sigma0=0.5 * np.eye(2), gamma=0.8)
POLICY = LinearGaussian.for_system(SYSTEM)
THETA = POLICY.pack([[0.3, 0.4]], [-0.2])


def z_threshold(k):
    """Two-sided normal threshold for k z-scores at family-wise ALPHA (Bonferroni), as refpg.stats.mean_test."""
    from scipy import stats

    return float(stats.norm.isf(ALPHA / (2 * k)))


# -- exact mode: hand-computed updates ---------------------------------------------------------------

@settings(max_examples=15, deadline=None)
@given(lqr_cases())
def test_exact_reinforce_steps_along_the_closed_form_gradient(case):
    system, K, log_std = case
    pol = LinearGaussian.for_system(system)
    theta = pol.pack(K, log_std)
    res = reinforce_step(system, pol, theta, lr=1e-3)
    g = lqr.cost_gradient(system, K, log_std)
    assert_identity(res.gradient, -pol.pack(g.K, g.log_std))
    assert_identity(res.theta, theta - 1e-3 * pol.pack(g.K, g.log_std))
    assert_identity(res.J_before, -lqr.cost(system, K, log_std))
    K1, s1 = pol.unpack(res.theta)
    expected = -lqr.cost(system, K1, s1) if system.spectral_radius(K1) < 1 else -np.inf
    assert_identity(res.J_after, expected)


@settings(max_examples=15, deadline=None)
@given(lqr_cases())
def test_exact_npg_steps_along_psi_times_the_gain_error(case):
    system, K, log_std = case
    pol = LinearGaussian.for_system(system)
    theta = pol.pack(K, log_std)
    g = system.gamma
    res = npg_step(system, pol, theta, eta=0.01)
    assert res.cg is None
    psi = np.exp(2 * log_std)
    E = lqr.gain_error(system, K)
    Huu = system.R + g * system.B.T @ lqr.value_matrix(system, K) @ system.B
    # in K: -2 Psi E_K / (1 - gamma); in log_std: -sigma^2 diag(H_uu) / (1 - gamma)
    by_hand = pol.pack(-2 * psi[:, None] * E / (1 - g), -psi * np.diag(Huu) / (1 - g))
    assert_identity(res.direction, by_hand)
    assert_identity(res.theta, theta + 0.01 * by_hand)
    # it solves F x = grad J with the exact Fisher matrix
    F = lqr.fisher_matrix(system, pol, theta)
    assert_identity(F @ res.direction, lqr.policy_gradient(system, pol, theta))


def test_exact_npg_by_conjugate_gradient_reaches_the_closed_form_and_damping_solves_the_damped_system():
    closed = npg_step(SYSTEM, POLICY, THETA, eta=0.1)
    cg = npg_step(SYSTEM, POLICY, THETA, eta=0.1, cg_iters=10)
    assert cg.cg.converged
    assert_identity(cg.direction, closed.direction)
    damped = npg_step(SYSTEM, POLICY, THETA, eta=0.1, cg_iters=10, damping=0.5)
    F = lqr.fisher_matrix(SYSTEM, POLICY, THETA)
    assert_identity(np.linalg.solve(F + 0.5 * np.eye(F.shape[0]), damped.gradient), damped.direction)


@settings(max_examples=15, deadline=None)
@given(lqr_cases())
def test_exact_trpo_respects_the_exact_kl_constraint_and_improves_exact_j(case):
    system, K, log_std = case
    pol = LinearGaussian.for_system(system)
    theta = pol.pack(K, log_std)
    max_kl = 1e-3
    for objective in ("surrogate", "true_J"):
        res = trpo_step(system, pol, theta, max_kl=max_kl, line_search_objective=objective, cg_iters=20)
        assert res.accepted
        kl = lqr.kl_divergence(system, pol, res.theta, theta_old=theta)
        assert_identity(res.kl, kl)
        assert kl <= max_kl * (1 + 1e-10)
        assert_identity(res.J_after, lqr.objective(system, pol, res.theta))
        L = lqr.surrogate(system, pol, res.theta, theta_old=theta) - lqr.objective(system, pol, theta)
        np.testing.assert_allclose(res.surrogate_improvement, L, rtol=1e-9, atol=1e-9 * abs(res.J_before))
        if objective == "true_J":
            assert res.J_after > res.J_before


def test_exact_trpo_step_is_the_hand_computed_one():
    res = trpo_step(SYSTEM, POLICY, THETA, max_kl=0.01, cg_iters=20)
    F = lqr.fisher_matrix(SYSTEM, POLICY, THETA)
    g = lqr.policy_gradient(SYSTEM, POLICY, THETA)
    s = np.linalg.solve(F, g)
    assert_identity(res.gradient, g)
    assert_identity(res.direction, s)
    assert_identity(res.beta, np.sqrt(2 * 0.01 / (s @ F @ s)))
    # s is the natural gradient, up to the round-off of 20 CG iterations
    assert_identity(s, lqr.natural_gradient(SYSTEM, POLICY, THETA))
    for trial in res.line_search:
        cand = THETA + trial.fraction * res.full_step
        assert_identity(trial.kl, lqr.kl_divergence(SYSTEM, POLICY, cand, theta_old=THETA))
    assert_identity(res.theta, THETA + res.step_fraction * res.full_step)


def test_exact_trpo_refuses_a_candidate_that_destabilises_the_system_under_true_j():
    # A trust region so large that the full step leaves the stabilising set: J = -inf there.
    res = trpo_step(SYSTEM, POLICY, THETA, max_kl=50.0, line_search_objective="true_J", cg_iters=20)
    first = res.line_search[0]
    K_full, _ = POLICY.unpack(THETA + res.full_step)
    assert SYSTEM.spectral_radius(K_full) >= 1
    assert first.improvement == -np.inf and not first.accepted
    assert res.accepted and res.J_after > res.J_before


def test_run_in_exact_mode_records_the_closed_forms():
    hist = run("npg", SYSTEM, POLICY, THETA, n_iters=3, eta=0.05)
    theta = THETA
    for rec, res in zip(hist.records, hist.results):
        assert_identity(rec.J, lqr.objective(SYSTEM, POLICY, res.theta))
        assert_identity(rec.mean_kl, lqr.kl_divergence(SYSTEM, POLICY, res.theta, theta_old=theta))
        # the gain moved: the per-state KL and the ratio are unbounded over the states
        assert rec.max_kl == np.inf and rec.ratio_min == 0.0 and rec.ratio_max == np.inf
        theta = res.theta
    assert np.all(np.diff(hist.J) > 0)


# -- PPO in exact mode: the clipped term by Monte Carlo ----------------------------------------------------

def test_the_monte_carlo_clipped_objective_is_unbiased_where_a_closed_form_exists_and_rejects_wrong_ones():
    g = SYSTEM.gamma
    K, log_std = POLICY.unpack(THETA)
    theta = POLICY.pack(K + [[0.05, -0.1]], log_std + 0.1)
    est = lqr.clipped_surrogate_estimate(SYSTEM, POLICY, theta, theta_old=THETA, clip_eps=None, n_samples=200_000,
                                         rng=np.random.default_rng(0))
    # Without clipping: (1 - gamma) (L_old(theta) - J_old), the normalised surrogate.
    exact = (1 - g) * (lqr.surrogate(SYSTEM, POLICY, theta, theta_old=THETA) - lqr.objective(SYSTEM, POLICY, THETA))
    z = abs(est.value - exact) / est.stderr
    threshold = z_threshold(1)
    assert z <= threshold, (est.value, exact, est.stderr)
    # power: the surrogate without the (1 - gamma) of the normalised occupancy, and with the cost sign
    for wrong in (exact / (1 - g), -exact):
        assert abs(est.value - wrong) / est.stderr > threshold
    # its gradient at theta_old estimates (1 - gamma) grad J, and not grad J
    at_old = lqr.clipped_surrogate_estimate(SYSTEM, POLICY, THETA, theta_old=THETA, clip_eps=0.2,
                                            n_samples=200_000, rng=np.random.default_rng(1))
    grad = lqr.policy_gradient(SYSTEM, POLICY, THETA)
    k = grad.size
    zs = np.abs(at_old.gradient - (1 - g) * grad) / at_old.gradient_stderr
    thr_k = z_threshold(k)
    assert zs.max() <= thr_k, zs
    assert (np.abs(at_old.gradient - grad) / at_old.gradient_stderr).max() > thr_k


def test_exact_ppo_on_lqr_labels_its_monte_carlo_surrogate_and_measures_everything_else_exactly():
    kw = dict(lr=0.01, epochs=3, monte_carlo_samples=4000)
    res = ppo_update(SYSTEM, POLICY, THETA, **kw)
    again = ppo_update(SYSTEM, POLICY, THETA, **kw)
    np.testing.assert_array_equal(res.theta, again.theta)  # deterministic: the draws are seeded
    assert res.monte_carlo_samples == 4000 and len(res.surrogate_stderr) == len(res.history) == 3
    assert all(se > 0 for se in res.surrogate_stderr)
    assert_identity(res.J_after, lqr.objective(SYSTEM, POLICY, res.theta))
    assert_identity(res.mean_kl, lqr.kl_divergence(SYSTEM, POLICY, res.theta, theta_old=THETA))
    assert_identity(res.history[-1].mean_kl, res.mean_kl)
    assert res.max_kl == np.inf and res.ratio_min == 0.0 and res.ratio_max == np.inf
    # the first Adam step is lr * sign of the Monte Carlo gradient at theta_old (|g| >> adam_eps)
    est = lqr.clipped_surrogate_estimate(SYSTEM, POLICY, THETA, theta_old=THETA, clip_eps=0.2, n_samples=4000,
                                         rng=np.random.default_rng(0))
    one = ppo_update(SYSTEM, POLICY, THETA, lr=0.01, epochs=1, monte_carlo_samples=4000)
    np.testing.assert_allclose(one.theta - THETA, 0.01 * np.sign(est.gradient), rtol=1e-6)
    # the same draws from another rng, given explicitly
    other = ppo_update(SYSTEM, POLICY, THETA, rng=np.random.default_rng(0), **kw)
    np.testing.assert_array_equal(other.theta, res.theta)


def test_exact_ppo_early_stopping_and_penalty_use_the_closed_form_kl():
    res = ppo_update(SYSTEM, POLICY, THETA, lr=0.05, epochs=20, target_kl=0.002, monte_carlo_samples=2000)
    assert res.stopped_early
    assert res.stop_kl > 1.5 * 0.002
    kl_before_stop = lqr.kl_divergence(SYSTEM, POLICY, res.theta, theta_old=THETA)
    assert_identity(res.stop_kl, kl_before_stop)
    pen = ppo_kl_penalty_update(SYSTEM, POLICY, THETA, beta=1.0, d_targ=0.01, lr=0.01, epochs=3,
                                monte_carlo_samples=2000)
    assert_identity(pen.kl, lqr.kl_divergence(SYSTEM, POLICY, pen.theta, theta_old=THETA))
    assert pen.beta == adapt_kl_coefficient(1.0, pen.kl, 0.01)


def test_the_exact_divergence_range_when_only_the_noise_changes():
    K, log_std = POLICY.unpack(THETA)
    narrower = POLICY.pack(K, log_std - 0.3)
    hist = run("reinforce", SYSTEM, POLICY, THETA, n_iters=1, lr=1e-12)
    assert hist.records[0].max_kl == np.inf  # the gain moved, however little
    div = problem(SYSTEM, POLICY, THETA).divergence(narrower)
    # log r = -z^2/2 (1/s_new^2 - 1/s_old^2) + 0.3: largest at z = 0, down to 0 in the tails
    assert div.ratio_min == 0.0
    assert_identity(div.ratio_max, np.exp(0.3))
    x = np.zeros((1, 2))
    u = -x @ K.T
    r0 = np.exp(POLICY.sample_log_probs(narrower, x, u) - POLICY.sample_log_probs(THETA, x, u))
    assert_identity(r0, [np.exp(0.3)])
    const = lqr.state_kl(np.zeros(2), K_old=K, log_std_old=log_std, K_new=K, log_std_new=log_std - 0.3)
    assert_identity(div.max_kl, const)
    assert_identity(div.mean_kl, const)
    wider = problem(SYSTEM, POLICY, THETA).divergence(POLICY.pack(K, log_std + 0.3))
    assert wider.ratio_max == np.inf
    assert_identity(wider.ratio_min, np.exp(-0.3))


# -- bad inputs ----------------------------------------------------------------------------------------

def test_bad_problem_pairs_and_unstable_gains_are_refused_clearly():
    import refpg

    tab = refpg.envs.two_state()
    with pytest.raises(InvalidInputError, match="policy should be a refpg.lqr.LinearGaussian on an LQRSystem"):
        npg_step(SYSTEM, refpg.TabularSoftmax(2, 2), np.zeros((2, 2)), eta=0.1)
    with pytest.raises(InvalidInputError, match="a linear-Gaussian policy acts on a refpg.lqr.LQRSystem"):
        trpo_step(tab, POLICY, THETA)
    with pytest.raises(InvalidInputError, match=r"\(state_dim, action_dim\) = \(3, 1\) but the system has \(2, 1\)"):
        reinforce_step(SYSTEM, LinearGaussian(3, 1), np.zeros(4), lr=0.1)
    with pytest.raises(InvalidInputError, match="mdp should be a refpg.TabularMDP or a refpg.lqr.LQRSystem"):
        run("npg", {}, POLICY, THETA, n_iters=1, eta=0.1)
    unstable = POLICY.pack([[0.0, -3.0]], [0.0])
    with pytest.raises(InvalidInputError, match="does not stabilise the system: the spectral radius"):
        trpo_step(SYSTEM, POLICY, unstable)
    with pytest.raises(ShapeError, match="theta should have shape"):
        ppo_update(SYSTEM, POLICY, np.zeros(5))


def test_options_that_do_not_apply_are_refused_with_the_reason():
    import refpg

    tab = refpg.envs.two_state()
    with pytest.raises(InvalidInputError, match="monte_carlo_samples is only used in exact mode on an LQRSystem"):
        ppo_update(tab, refpg.TabularSoftmax(2, 2), np.zeros((2, 2)), monte_carlo_samples=10)
    with pytest.raises(InvalidInputError, match="monte_carlo_samples is only used in exact mode"):
        ppo_update(SYSTEM, POLICY, THETA, mode="sampled", rng=np.random.default_rng(0), monte_carlo_samples=10)
    with pytest.raises(InvalidInputError, match="monte_carlo_samples should be"):
        ppo_update(SYSTEM, POLICY, THETA, monte_carlo_samples=1)
    with pytest.raises(InvalidInputError, match="no closed form on an LQRSystem.*clipped_surrogate_estimate"):
        exact_clipped_surrogate(SYSTEM, POLICY, THETA, theta_old=THETA, clip_eps=0.2)
    with pytest.raises(InvalidInputError, match="max_episode_steps is required"):
        reinforce_step(SYSTEM, POLICY, THETA, lr=0.1, mode="sampled", rng=np.random.default_rng(0))
    with pytest.raises(InvalidInputError, match="baseline should be 'exact', a callable"):
        reinforce_step(SYSTEM, POLICY, THETA, lr=0.1, mode="sampled", rng=np.random.default_rng(0),
                       max_episode_steps=5, baseline=np.zeros(2))
    with pytest.raises(InvalidInputError, match="theta is required on an LQRSystem"):
        collect(SYSTEM, POLICY, SampleConfig(), rng=np.random.default_rng(0))
    with pytest.raises(InvalidInputError, match="theta_old.*does not stabilise"):
        lqr.clipped_surrogate_estimate(SYSTEM, POLICY, THETA, theta_old=POLICY.pack([[0.0, -3.0]], [0.0]),
                                       clip_eps=0.2, n_samples=10, rng=np.random.default_rng(0))


# -- sampled mode --------------------------------------------------------------------------------------

H = 8
K0, LOG_STD0 = POLICY.unpack(THETA)


def _pack(g):
    return POLICY.pack(g.K, g.log_std)


def test_sampled_reinforce_is_unbiased_for_the_h_step_gradient_and_the_same_test_rejects_the_gamma_free_one():
    batch = lqr.sample_episodes(SYSTEM, POLICY, THETA, 20_000, horizon=H, rng=np.random.default_rng(0))
    g = SYSTEM.gamma
    grad_H = -_pack(lqr.finite_horizon_cost_gradient(SYSTEM, K0, LOG_STD0, H))  # rewards: minus the cost side
    free = -_pack(lqr.gamma_free_direction(SYSTEM, K0, LOG_STD0, H))
    est = reinforce_estimates(POLICY, THETA, batch, g)
    free_est = reinforce_estimates(POLICY, THETA, batch, g, discount_weighting=False)
    assert est.shape == (20_000, POLICY.n_params)
    result = mean_test(est, grad_H, alpha=ALPHA)
    assert not result.rejected, str(result)
    assert mean_test(est, free, alpha=ALPHA).rejected
    assert not mean_test(free_est, free, alpha=ALPHA).rejected
    assert mean_test(free_est, grad_H, alpha=ALPHA).rejected
    # nor is it the infinite-horizon gradient
    assert mean_test(est, lqr.policy_gradient(SYSTEM, POLICY, THETA), alpha=ALPHA).rejected
    # the exact baseline (the value of the steps left): still unbiased, and far less spread
    fh = lqr.finite_horizon(SYSTEM, K0, LOG_STD0, H)
    values = -(np.einsum("tni,tij,tnj->tn", batch.states, fh.P[:H], batch.states) + fh.q[:H, None])
    with_b = reinforce_estimates(POLICY, THETA, batch, g, baseline=values)
    assert not mean_test(with_b, grad_H, alpha=ALPHA).rejected
    assert np.all(with_b.std(axis=0) < 0.7 * est.std(axis=0))
    # reinforce_step's sampled gradient is that estimator's mean on its batch
    step = reinforce_step(SYSTEM, POLICY, THETA, lr=1e-3, mode="sampled", batch=batch, baseline="exact")
    assert_identity(step.gradient, with_b.mean(axis=0))
    assert_identity(step.theta, THETA + 1e-3 * step.gradient)
    assert_identity(step.J_after, lqr.objective(SYSTEM, POLICY, step.theta))
    drawn = reinforce_step(SYSTEM, POLICY, THETA, lr=1e-3, mode="sampled", rng=np.random.default_rng(1),
                           n_episodes=50, max_episode_steps=H)
    assert drawn.batch.shape == (H, 50) and drawn.batch.truncated[-1].all()


def test_the_empirical_fisher_product_is_unbiased_for_the_rollouts_visitation_not_the_occupancy():
    batch = lqr.sample_episodes(SYSTEM, POLICY, THETA, 100_000, horizon=H, rng=np.random.default_rng(2))
    v = np.array([0.5, -1.0, 0.3])
    jac = POLICY.sample_log_prob_jacobian(THETA, batch.states, batch.actions)  # (H, N, p)
    per_episode = np.einsum("tnp,tn->np", jac, jac @ v) / H  # the episodes are independent
    VK, vlog = POLICY.unpack(v)
    psi_inv = np.exp(-2 * LOG_STD0)[:, None]
    M_rollouts = lqr.finite_horizon(SYSTEM, K0, LOG_STD0, H).S.mean(axis=0)
    expected = POLICY.pack(psi_inv * (VK @ M_rollouts), 2 * vlog)
    result = mean_test(per_episode, expected, alpha=ALPHA)
    assert not result.rejected, str(result)
    # power: the Fisher under the discounted occupancy d (what exact mode uses; not what rollouts sample),
    # and a log_std block read as a log-variance's (I instead of 2 I)
    assert mean_test(per_episode, lqr.fisher_vector_product(SYSTEM, POLICY, THETA, v), alpha=ALPHA).rejected
    assert mean_test(per_episode, POLICY.pack(psi_inv * (VK @ M_rollouts), vlog), alpha=ALPHA).rejected
    # refpg's estimator is exactly that batch mean, through one sample JVP and one VJP
    assert_identity(empirical_fisher_vector_product(POLICY, THETA, batch, v), per_episode.mean(axis=0))
    F = empirical_fisher_estimate(POLICY, THETA, batch)
    assert_identity(F @ v, per_episode.mean(axis=0))


CONFIG = SampleConfig(n_envs=32, n_steps=32, max_episode_steps=16, critic="exact")


def _data(seed=0, config=CONFIG):
    return collect(SYSTEM, POLICY, config, rng=np.random.default_rng(seed), theta=THETA)


def test_collect_on_lqr_flattens_a_batch_with_gae_from_the_exact_or_a_fitted_quadratic_critic():
    data = _data()
    M = 32 * 32
    assert data.states.shape == (M, 2) and data.actions.shape == (M, 1) and data.advantages.shape == (M,)
    V = lqr.exact_value(SYSTEM, POLICY, THETA)
    assert_identity(data.values.P, V.P)
    assert_identity(data.returns - data.advantages, V(data.states))
    b = data.batch
    delta = b.rewards + SYSTEM.gamma * V(b.next_states) - V(b.states)
    lam_one = collect(SYSTEM, POLICY, SampleConfig(n_envs=4, n_steps=16, max_episode_steps=16, lam=0.0,
                                                   critic="exact"), rng=np.random.default_rng(0), theta=THETA)
    lb = lam_one.batch
    assert_identity(lam_one.advantages, (lb.rewards + SYSTEM.gamma * V(lb.next_states) - V(lb.states)).ravel())
    assert delta.shape == b.rewards.shape
    fitted = _data(config=SampleConfig(n_envs=32, n_steps=32, max_episode_steps=16, critic="batch"))
    assert isinstance(fitted.values, lqr.QuadraticValue)
    assert np.isfinite(fitted.advantages).all()


def test_sampled_trpo_and_npg_solve_with_the_batch_fisher_and_bound_the_exact_batch_kl():
    data = _data()
    M, g = data.advantages.size, SYSTEM.gamma
    jac = POLICY.sample_log_prob_jacobian(THETA, data.states, data.actions)
    grad = jac.T @ data.advantages / (M * (1 - g))
    M_hat = data.states.T @ data.states / M
    F_kl = np.zeros((3, 3))
    F_kl[:2, :2] = np.exp(-2 * LOG_STD0[0]) * M_hat
    F_kl[2, 2] = 2.0
    F_emp = jac.T @ jac / M
    for fisher, F in (("kl_hessian", F_kl), ("empirical", F_emp)):
        res = trpo_step(SYSTEM, POLICY, THETA, max_kl=0.01, mode="sampled", data=data, fisher=fisher)
        assert_identity(res.gradient, grad)
        assert_identity(res.direction, np.linalg.solve(F, grad))
        assert res.accepted and res.kl <= 0.01
        K1, s1 = POLICY.unpack(res.theta)
        per_state = lqr.state_kl(data.states, K_old=K0, log_std_old=LOG_STD0, K_new=K1, log_std_new=s1)
        assert_identity(res.kl, per_state.mean())
        assert_identity(res.J_after, lqr.objective(SYSTEM, POLICY, res.theta))
        npg = npg_step(SYSTEM, POLICY, THETA, eta=0.01, mode="sampled", data=data, fisher=fisher, cg_iters=10)
        assert_identity(npg.direction, np.linalg.solve(F, grad))


def test_sampled_ppo_on_lqr_steps_along_the_batch_clipped_gradient_and_measures_the_batch_kl():
    data = _data(1)
    samples = (data.states, data.actions, data.logp_old, data.advantages)
    g0 = clipped_surrogate_gradient(POLICY, THETA, samples, 0.2)
    jac = POLICY.sample_log_prob_jacobian(THETA, data.states, data.actions)
    assert_identity(g0, jac.T @ data.advantages / data.advantages.size)
    one = ppo_update(SYSTEM, POLICY, THETA, mode="sampled", data=data, epochs=1, optimizer="sgd", lr=1e-4)
    assert_identity(one.theta, THETA + 1e-4 * g0)
    res = ppo_update(SYSTEM, POLICY, THETA, mode="sampled", data=data, epochs=4, minibatch_size=256, lr=0.01,
                     rng=np.random.default_rng(0), penalty=0.5)
    K1, s1 = POLICY.unpack(res.theta)
    per_state = lqr.state_kl(data.states, K_old=K0, log_std_old=LOG_STD0, K_new=K1, log_std_new=s1)
    assert_identity(res.history[-1].mean_kl, per_state.mean())
    assert_identity(batch_kl(POLICY, res.theta, theta_old=THETA, states=data.states), per_state.mean())
    assert_identity(res.mean_kl, lqr.kl_divergence(SYSTEM, POLICY, res.theta, theta_old=THETA))
    assert res.surrogate_stderr is None and res.monte_carlo_samples is None
    # the penalty's gradient is the gradient of the batch KL
    from tests.helpers import central_difference

    fd = central_difference(lambda th: batch_kl(POLICY, th, theta_old=THETA, states=data.states), res.theta)
    np.testing.assert_allclose(batch_kl_gradient(POLICY, res.theta, theta_old=THETA, states=data.states), fd,
                               rtol=1e-6, atol=1e-9)
    sur = clipped_surrogate(POLICY, res.theta, samples, 0.2)
    fd = central_difference(lambda th: clipped_surrogate(POLICY, th, samples, None), res.theta, h=1e-4)
    np.testing.assert_allclose(clipped_surrogate_gradient(POLICY, res.theta, samples, None), fd, rtol=1e-6)
    assert np.isfinite(sur)


def test_run_in_sampled_mode_on_lqr_records_exact_diagnostics():
    hist = run("trpo", SYSTEM, POLICY, THETA, n_iters=3, mode="sampled", seed=0, max_kl=0.01,
               sample_config=CONFIG)
    assert [r.samples for r in hist.records] == [32 * 32] * 3
    theta = THETA
    for rec, res in zip(hist.records, hist.results):
        assert_identity(rec.J, lqr.objective(SYSTEM, POLICY, res.theta))
        assert_identity(rec.mean_kl, lqr.kl_divergence(SYSTEM, POLICY, res.theta, theta_old=theta))
        theta = res.theta
    again = run("trpo", SYSTEM, POLICY, THETA, n_iters=3, mode="sampled", seed=0, max_kl=0.01,
                sample_config=CONFIG)
    np.testing.assert_array_equal(again.theta, hist.theta)


def test_sampled_mode_refuses_a_batch_from_another_policy():
    data = _data()
    other = POLICY.pack(K0 + 0.1, LOG_STD0)
    with pytest.raises(InvalidInputError, match="data should be collected under theta"):
        trpo_step(SYSTEM, POLICY, other, mode="sampled", data=data)
    with pytest.raises(InvalidInputError, match="the batch must come from the policy of theta"):
        ppo_update(SYSTEM, POLICY, other, mode="sampled", data=data)
    batch = lqr.sample_episodes(SYSTEM, POLICY, THETA, 5, horizon=4, rng=np.random.default_rng(0))
    with pytest.raises(InvalidInputError, match="batch should be sampled under theta"):
        reinforce_step(SYSTEM, POLICY, other, lr=0.1, mode="sampled", batch=batch)
    with pytest.raises(ShapeError, match=r"data.states should have shape \(M, 2\)"):
        ppo_update(SYSTEM, POLICY, THETA, mode="sampled", data=(np.zeros((3, 3)), np.zeros((3, 1)),
                                                                np.zeros(3), np.zeros(3)))


def test_a_run_refused_midway_names_the_iteration_and_keeps_its_history():
    from refpg.algorithms import run
    system, policy = lqr.random_system(0, 3, 2), LinearGaussian(3, 2)
    theta0 = policy.pack(np.zeros((2, 3)), np.full(2, -0.5))
    with pytest.raises(InvalidInputError, match=r"stopped at iteration 3 of 3: .*spectral radius") as info:
        run("reinforce", system, policy, theta0, n_iters=3, lr=0.01)
    history = info.value.history
    assert len(history.records) == 2 and history.J[0] > -np.inf and history.J[-1] == -np.inf
