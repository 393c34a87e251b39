"""refpg study lqr: [Fazel2018]'s linear rates on an exact LQR, TRPO's exact trust region, the gamma^t-free
gap, log_std collapse under PPO; and the Monte Carlo sampler its PPO runs on."""

import numpy as np
import pytest
from scipy.stats import norm

from refpg import lqr
from refpg.errors import InvalidInputError
from refpg.studies import STUDIES
from refpg.studies import lqr as study
from tests.helpers import assert_study_outputs

FIGURES = ("convergence.png", "gamma_free_gap.png", "log_std_collapse.png")


def test_registered():
    assert STUDIES["lqr"] is study


def test_study_writes_figures_and_report(outputs):
    assert_study_outputs(*outputs("lqr"), FIGURES)
    out, _ = outputs("lqr")
    assert "Monte Carlo" in (out / "report.md").read_text()  # PPO's estimate is labelled as one


def test_natural_gradient_and_gauss_newton_converge_linearly_faster_than_the_gradient(outputs):
    _, h = outputs("lqr")
    r = h["rates"]
    assert 0.0 < r["GN, eta = 1/2"] < r["NPG (tuned)"] < r["PG"] < 1.0
    assert r["NPG (tuned)"] < r["PG"] - 0.1
    assert r["GN, eta = 1/2"] == pytest.approx(0.25, abs=0.01)   # (1 - eta)^2 near K*
    assert h["policy_iteration_steps_to_floor"] <= 6              # quadratic
    assert h["final_gap"]["NPG (tuned)"] < 1e-6 < h["final_gap"]["PG"]


def test_every_step_contracts_at_least_as_the_bound_says(outputs):
    _, h = outputs("lqr")
    for label, bound in h["bound_rates"].items():
        assert 0.0 < bound < 1.0
        assert h["worst_step_ratio"][label] <= bound, label


def test_trpo_every_step_within_the_exact_kl(outputs):
    _, h = outputs("lqr")
    kl = np.array(h["trpo_per_step"]["kl"])
    assert np.all(kl <= study.TRPO_MAX_KL * (1 + 1e-12))
    assert kl.max() > 0.5 * study.TRPO_MAX_KL    # the constraint is active somewhere
    assert h["trpo_cost_increases"] == 0
    assert h["final_gap"]["TRPO"] < 1e-6
    # The stall the report describes: 10 halvings of a KL-delta step cannot reach the improving steps.
    assert h["trpo_stall_step"] is not None and np.all(kl[h["trpo_stall_step"] - 1:] == 0.0)


def test_ppo_stalls_at_its_monte_carlo_floor_and_leaves_the_kl_radius(outputs):
    _, h = outputs("lqr")
    assert 1e-4 < h["final_gap"]["PPO (fixed log_std)"] < 0.1
    assert h["ppo_max_kl_over_delta"] > 1.0
    assert h["ppo_lclip_minus_surrogate_max_z"] < 5.0   # L^CLIP <= L^CPI, up to Monte Carlo error


def test_gamma_free_gap(outputs):
    _, h = outputs("lqr")
    gf = h["gamma_free"]
    gap = np.array(gf["rel_gap"])
    cos = np.array(gf["cosine"])
    assert gf["horizons"][0] == 1
    np.testing.assert_allclose(gap[:, 0], 0.0, atol=1e-14)       # one step: gamma^0 = 1
    assert np.all(gap[:, 1:] > 1e-5)                              # nonzero for every gamma < 1, H >= 2
    assert np.all(np.diff(gap[:, 1:], axis=0) < 0)                # shrinks as gamma -> 1
    assert np.all(np.diff(gap[:, 1:], axis=1) > 0)                # grows with H
    assert gap[gf["gammas"].index(0.999), gf["horizons"].index(10)] < 0.01
    assert np.all(cos > 0.9)
    fp = h["gamma_free_fixed_point_gap"]
    hs = sorted(fp)
    assert all(fp[a] > fp[b] > 0 for a, b in zip(hs, hs[1:]))    # its zero approaches K* as H grows


def test_trpo_on_log_std_spends_its_kl_there(outputs):
    _, h = outputs("lqr")
    assert h["trpo_full_log_std_kl_share"] > 0.5
    assert h["trpo_full_max_kl_over_delta"] <= 1.0 + 1e-12
    assert h["trpo_full_gain_gap_quarter"] > 5 * h["trpo_K_gain_gap_quarter"]
    drops = h["log_std_drop_per_step"]
    assert all(first > 0 and second > 0 for first, second in drops.values())
    first, second = drops["TRPO"]
    assert second > 0.8 * first                       # linear: a fixed KL moves log_std by a fixed amount
    for label in ("PG", "NPG", "PPO"):
        first, second = drops[label]
        assert second < 0.8 * first, label            # slows down as the gradient shrinks with sigma^2


def test_log_std_collapses_under_ppo(outputs):
    _, h = outputs("lqr")
    start, end = h["ppo_log_std"]
    assert h["ppo_log_std_falls_every_update"]
    assert end < start - 1.0
    assert end < h["pg_log_std_end"]
    g0, g1 = h["ppo_dC_dlog_std"]
    assert 0 < g1 < g0 * np.exp(2 * (end - start)) * 2   # shrinks about as sigma^2
    s0, s1 = h["ppo_score_scale"]
    assert s1 > 2 * s0


def test_suboptimality_is_the_cost_difference():
    system, K0, ls0 = study.study_system()
    K_star = lqr.optimal_gain(system).K
    C_star = lqr.cost(system, K_star, ls0)
    rng = np.random.default_rng(0)
    for K in (K0, 0.5 * (K0 + K_star), K_star + 0.05 * rng.standard_normal(K0.shape)):
        np.testing.assert_allclose(study.suboptimality(system, K, ls0), lqr.cost(system, K, ls0) - C_star,
                                   rtol=1e-10)
    assert study.suboptimality(system, K_star, ls0) < 1e-28


def test_descent_steps_are_the_stated_formulas():
    system, K0, ls0 = study.study_system()
    ev = lqr.evaluate(system, K0, ls0)
    psi = np.exp(2 * ls0)[:, None]
    for method, eta, step in (("pg", 0.01, 2 * ev.E @ ev.Sigma),
                              ("npg", 0.05, 2 * psi * ev.E / (1 - system.gamma)),
                              ("gn", 0.5, np.linalg.solve(ev.Huu, ev.E))):
        res = study.descent(system, K0, ls0, method=method, eta=eta, n_iters=1)
        np.testing.assert_allclose(res.K[1], K0 - eta * step, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(res.cost[1], lqr.cost(system, res.K[1], ls0), rtol=1e-12)
    pi = study.descent(system, K0, ls0, method="gn", eta=1.0, n_iters=8)
    np.testing.assert_allclose(pi.K[-1], lqr.optimal_gain(system).K, atol=1e-12)


def test_bad_input_is_refused():
    system, K0, ls0 = study.study_system()
    with pytest.raises(InvalidInputError, match="method"):
        study.descent(system, K0, ls0, method="sgd", eta=0.1, n_iters=1)
    with pytest.raises(InvalidInputError, match="eta"):
        study.descent(system, K0, ls0, method="pg", eta=0.0, n_iters=1)
    with pytest.raises(InvalidInputError, match="train_log_std"):
        study.descent(system, K0, ls0, method="gn", eta=0.5, n_iters=1, train_log_std=True)
    with pytest.raises(InvalidInputError, match="spectral radius"):
        study.descent(system, K0, ls0, method="pg", eta=16.0, n_iters=5)
    with pytest.raises(InvalidInputError, match="K0"):
        study.descent(system, K0[:, :2], ls0, method="pg", eta=0.1, n_iters=1)


# -- the Monte Carlo sampler of the PPO runs ---------------------------------------------------------

#: Declared false-alarm rate of the sampler test, Bonferroni over the 8 coordinates and the projection.
ALPHA = 1e-6
N_SAMPLES = 2 ** 17


def _gradient_z(system, K, log_std, x, u, *, advantage_scale=1.0):
    """z-scores of the sample policy gradient (1/(1-gamma)) A grad log pi against the exact one:
    per coordinate and along the exact gradient."""
    pol = lqr.LinearGaussian.for_system(system)
    theta = pol.pack(K, log_std)
    exact = lqr.policy_gradient(system, pol, theta)
    e = exact / np.linalg.norm(exact)
    adv = -lqr.advantage(system, K, log_std, x, u) * advantage_scale
    G = pol.sample_log_prob_jacobian(theta, x, u) * adv[:, None] / (1 - system.gamma)
    G = np.column_stack([G, G @ e])
    target = np.append(exact, exact @ e)
    return (G.mean(axis=0) - target) / (G.std(axis=0, ddof=1) / np.sqrt(len(G)))


def test_occupancy_draws_give_the_exact_policy_gradient():
    """On the PPO runs' draws (`refpg.lqr.sample_occupancy`) with exact advantages, the mean of
    (1/(1-gamma)) A grad log pi is the exact gradient: two-sided z-tests, alpha = 1e-6 over 9 statistics
    (Bonferroni), fixed seeds 0 and 1. The same test rejects a critic 10% too small and states shifted one
    step later in the episode."""
    system, K0, ls0 = study.study_system()
    pol = lqr.LinearGaussian.for_system(system)
    crit = norm.isf(ALPHA / (2 * (K0.size + ls0.size + 1)))
    for seed in (0, 1):
        draw = lqr.sample_occupancy(system, pol, pol.pack(K0, ls0), N_SAMPLES, rng=np.random.default_rng(seed))
        x, u = draw.states, draw.actions
        z = _gradient_z(system, K0, ls0, x, u)
        assert np.abs(z).max() < crit, z
    # Power: the same draws with a biased advantage, and the occupancy off by one step.
    assert np.abs(_gradient_z(system, K0, ls0, x, u, advantage_scale=0.9)).max() > crit
    rng = np.random.default_rng(2)
    x1 = (x @ (system.A - system.B @ K0).T + (np.exp(ls0) * rng.standard_normal(u.shape)) @ system.B.T
          + rng.standard_normal(x.shape) @ np.linalg.cholesky(system.W).T)
    u1 = -x1 @ K0.T + np.exp(ls0) * rng.standard_normal(u.shape)
    assert np.abs(_gradient_z(system, K0, ls0, x1, u1)).max() > crit


def test_ppo_in_K_alone_is_ppo_update_with_log_std_held():
    """The fixed-log_std update assembled from public pieces and `ppo_update` (which trains log_std too) draw
    the same samples from the same seed: after one Adam epoch their K agree; log_std moves only in the second."""
    system, K0, ls0 = study.study_system()
    fixed = study.ppo_descent(system, K0, ls0, n_updates=1, n_samples=256, train_log_std=False, epochs=1)
    trained = study.ppo_descent(system, K0, ls0, n_updates=1, n_samples=256, train_log_std=True, epochs=1)
    np.testing.assert_allclose(fixed.K[1], trained.K[1], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(fixed.log_std, np.broadcast_to(ls0, fixed.log_std.shape))
    assert np.all(trained.log_std[1] < ls0)
    longer = study.ppo_descent(system, K0, ls0, n_updates=3, n_samples=256, train_log_std=False)
    np.testing.assert_array_equal(longer.log_std, np.broadcast_to(ls0, longer.log_std.shape))


def test_exact_descent_with_log_std_is_reinforce_step_and_npg_step():
    """`descent` (the study's closed forms) and `refpg.algorithms` in exact mode take the same step on (K, log_std)."""
    from refpg.algorithms import npg_step, reinforce_step

    system, K0, ls0 = study.study_system()
    pol = lqr.LinearGaussian.for_system(system)
    theta = pol.pack(K0, ls0)
    for method, step in (("pg", lambda: reinforce_step(system, pol, theta, lr=0.01).theta),
                         ("npg", lambda: npg_step(system, pol, theta, eta=0.05).theta)):
        eta = 0.01 if method == "pg" else 0.05
        res = study.descent(system, K0, ls0, method=method, eta=eta, n_iters=1, train_log_std=True)
        np.testing.assert_allclose(pol.pack(res.K[1], res.log_std[1]), step(), rtol=1e-12, atol=1e-15)
